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
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img).unwrap().set_len(bytes).unwrap();
        match fs {
            "xfs" => run("mkfs.xfs", &["-q", "-m", "reflink=1", s(&img)]),
            "btrfs" => run("mkfs.btrfs", &["-q", s(&img)]),
            "ext4" => run("mkfs.ext4", &["-q", "-F", s(&img)]),
            _ => panic!("no such test file system: {fs}"),
        }
        let at = dir.path().join("mnt");
        std::fs::create_dir(&at).unwrap();
        run("mount", &["-t", fs, "-o", "loop", s(&img), s(&at)]);
        Mounted { at, _dir: dir }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Another test's child process, between its fork and exec, briefly holds copies of
        // this test's descriptors, which makes umount answer "target is busy": retry, then
        // detach lazily so the loop device is never left behind.
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(&self.at)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}
