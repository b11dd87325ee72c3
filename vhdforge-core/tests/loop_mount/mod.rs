//! A file system in an image file, loop-mounted for a test (CI runs as root), and the tool
//! runner those tests share. Used by the clone tests of core and of the CLI.

// Each test binary uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Run a tool that must succeed; a missing one fails the test (never skips it).
pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("{cmd} is required for this test (scripts/setup.sh installs it): {e}")
    });
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A path as the `&str` a command line takes.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A 512 MiB file system (`xfs` with reflink, `btrfs` or `ext4`) in an image file,
/// loop-mounted at `at`; unmounted on drop (`-o loop` releases the loop device with it).
pub struct Mounted {
    pub at: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mounted {
    pub fn new(fs: &str) -> Mounted {
        Mounted::sized(fs, 512 << 20)
    }

    /// The same, `bytes` large.
    pub fn sized(fs: &str, bytes: u64) -> Mounted {
        match fs {
            "xfs" => Mounted::made_by("xfs", "mkfs.xfs", &["-q", "-m", "reflink=1"], bytes),
            "btrfs" => Mounted::made_by("btrfs", "mkfs.btrfs", &["-q"], bytes),
            "ext4" => Mounted::made_by("ext4", "mkfs.ext4", &["-q", "-F"], bytes),
            _ => panic!("no such test file system: {fs}"),
        }
    }

    /// A file system of type `kind`, `bytes` large, made by `mkfs` with `args` (the image
    /// path is appended).
    pub fn made_by(kind: &str, mkfs: &str, args: &[&str], bytes: u64) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img).unwrap().set_len(bytes).unwrap();
        let mut a = args.to_vec();
        a.push(s(&img));
        run(mkfs, &a);
        let at = dir.path().join("mnt");
        std::fs::create_dir(&at).unwrap();
        run("mount", &["-t", kind, "-o", "loop", s(&img), s(&at)]);
        Mounted { at, _dir: dir }
    }
}

/// Unmount `at`. Another test's child process, between its fork and exec, briefly holds
/// copies of this test's descriptors, which makes umount answer "target is busy": retry,
/// then detach lazily so the loop device is never left behind.
pub fn umount(at: &Path) {
    for _ in 0..50 {
        let ok = Command::new("umount")
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = Command::new("umount").arg("-l").arg(at).status();
}

impl Drop for Mounted {
    fn drop(&mut self) {
        umount(&self.at);
    }
}

/// `out` holds the raw disk `disk` (compared 4 MiB at a time, so no test holds a whole
/// disk), zero padding up to the footer, and a VHD footer last.
pub fn assert_same_disk(out: &Path, disk: &Path, what: &str) {
    use std::os::unix::fs::FileExt;
    const MIB: u64 = 1 << 20;
    let (o, d) = (
        std::fs::File::open(out).unwrap(),
        std::fs::File::open(disk).unwrap(),
    );
    let (olen, dlen) = (o.metadata().unwrap().len(), d.metadata().unwrap().len());
    assert_eq!(olen % MIB, 512, "{what}: output not whole MiB + footer");
    assert!(olen >= dlen + 512, "{what}: output shorter than the disk");
    let mut a = vec![0u8; 4 << 20];
    let mut b = vec![0u8; 4 << 20];
    let mut at = 0;
    while at < olen - 512 {
        let n = usize::try_from((4 * MIB).min(olen - 512 - at)).unwrap();
        o.read_exact_at(&mut a[..n], at).unwrap();
        let in_disk = usize::try_from(dlen.saturating_sub(at).min(n as u64)).unwrap();
        d.read_exact_at(&mut b[..in_disk], at).unwrap();
        b[in_disk..n].fill(0);
        if let Some(p) = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y) {
            let bad = at + p as u64;
            panic!(
                "{what}: output differs from the disk at byte {bad:#x} (256 MiB slice edge {:#x})",
                bad >> 28 << 28
            );
        }
        at += n as u64;
    }
    let mut footer = [0u8; 512];
    o.read_exact_at(&mut footer, olen - 512).unwrap();
    assert_eq!(&footer[..8], b"conectix", "{what}: no footer last");
}

/// Files in `dir` other than `keep` (and `lost+found`).
pub fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !keep.contains(&n.as_str()) && n != "lost+found")
        .collect()
}

/// Free bytes of the file system at `at`, as `statfs` reports them to unprivileged users.
pub fn free_bytes(at: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "-c", "%a %S", s(at)])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    v[0] * v[1]
}

/// Fill the file system at `at` with a file `ballast` until about `free` bytes are left.
pub fn leave_free(at: &Path, free: u64) {
    let fill = free_bytes(at).saturating_sub(free);
    run(
        "fallocate",
        &["-l", &fill.to_string(), s(&at.join("ballast"))],
    );
}
