//! What `convert` may create and replace: temporaries are new files under names nobody can
//! plant in advance, an OUT that is a device (or a link to one) is refused even with
//! `--force`, `--in-place` refuses anything but a regular file before writing anything,
//! long OUT names work, a dangling link at OUT is named for what it is, and a live
//! temporary of a process in another PID namespace is not taken for an orphan.
//!
//! Device, loop-device and PID-namespace cases need root (CI runs as root); they fail, never skip, when
//! `mknod`, `losetup` or `unshare` is missing.

use assert_cmd::Command;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Output;

const MIB: u64 = 1 << 20;

fn vhdforge() -> Command {
    Command::cargo_bin("vhdforge").unwrap()
}

/// A sparse raw image of 21 MiB + 4 KiB with a little data (not Azure-ready: converting it
/// does real work).
fn raw_input(dir: &Path) -> PathBuf {
    let p = dir.join("in.raw");
    let mut f = std::fs::File::create(&p).unwrap();
    f.set_len(21 * MIB + 4096).unwrap();
    f.seek(SeekFrom::Start(MIB)).unwrap();
    f.write_all(&[0x5A; 8192]).unwrap();
    p
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_char_device(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p)
        .unwrap()
        .file_type()
        .is_char_device()
}

#[test]
fn links_planted_at_temporary_names_are_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let input = raw_input(dir.path());
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let out = dir.path().join("out.vhd");
    // The old names were `.out.vhd.vhdforge-partial-PID`: plant links for the next PIDs.
    let me = std::process::id();
    for pid in me..me + 64 {
        std::os::unix::fs::symlink(
            &victim,
            dir.path().join(format!(".out.vhd.vhdforge-partial-{pid}")),
        )
        .unwrap();
    }
    let o = vhdforge()
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 22 * MIB + 512);
    vhdforge().arg("check").arg(&out).assert().code(0);
}

#[test]
fn force_never_replaces_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let input = raw_input(dir.path());
    let fakenull = dir.path().join("fakenull");
    let st = std::process::Command::new("mknod")
        .arg(&fakenull)
        .args(["c", "1", "3"])
        .status()
        .expect("mknod is required for this test (coreutils)");
    assert!(st.success(), "mknod failed: this test needs root");
    let to_null = dir.path().join("to-null");
    std::os::unix::fs::symlink("/dev/null", &to_null).unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::create_dir(sub.join("in.vhd")).unwrap();
    for (out, what) in [
        (&fakenull, "is a character device"),
        (
            &to_null,
            "is a symbolic link to /dev/null (a character device)",
        ),
        // A directory OUT receives <input stem>.vhd (tests/isv.rs); a directory already
        // holding that name is refused like the device.
        (&sub, "is a directory"),
    ] {
        for force in [true, false] {
            let mut cmd = vhdforge();
            cmd.arg("convert");
            if force {
                cmd.arg("--force");
            }
            let o = cmd.arg(&input).arg(out).output().unwrap();
            assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
            let err = stderr(&o);
            assert!(err.contains(what), "{err}");
            assert!(err.contains("never replaces a device"), "{err}");
            assert!(!String::from_utf8_lossy(&o.stdout).contains("Azure-ready"));
        }
    }
    assert!(is_char_device(&fakenull), "the device node was replaced");
    assert_eq!(
        std::fs::read_link(&to_null).unwrap(),
        Path::new("/dev/null")
    );
    assert!(sub.join("in.vhd").is_dir());
    assert_eq!(names(dir.path()), ["fakenull", "in.raw", "sub", "to-null"]);
}

/// A loop device, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let o = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .expect("losetup is required for this test (util-linux)");
        assert!(
            o.status.success(),
            "losetup failed (this test needs root): {}",
            stderr(&o)
        );
        Loop(String::from_utf8(o.stdout).unwrap().trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn in_place_on_a_loop_device_is_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let backing = raw_input(dir.path());
    let before = std::fs::read(&backing).unwrap();
    let dev = Loop::attach(&backing);
    let journal = PathBuf::from(format!("{}.vhdforge-inplace", dev.0));
    let o = vhdforge()
        .args(["convert", "--in-place", &dev.0])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("is a block device"), "{err}");
    assert!(err.contains("regular files only"), "{err}");
    assert!(err.contains("Nothing was written"), "{err}");
    assert!(
        std::fs::symlink_metadata(&journal).is_err(),
        "{} was written",
        journal.display()
    );
    drop(dev);
    assert!(
        std::fs::read(&backing).unwrap() == before,
        "the device's content changed"
    );
    // A second run says the same (no journal left to claim the file changed).
    let o = vhdforge()
        .args(["convert", "--in-place"])
        .arg(&backing)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_250_byte_out_name_converts() {
    let dir = tempfile::tempdir().unwrap();
    let input = raw_input(dir.path());
    let name = format!("{}.vhd", "n".repeat(246));
    assert_eq!(name.len(), 250);
    let out = dir.path().join(&name);
    let o = vhdforge()
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    vhdforge().arg("check").arg(&out).assert().code(0);
    assert_eq!(names(dir.path()), ["in.raw".to_string(), name]);
}

#[test]
fn a_dangling_link_out_is_named_and_replaced_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let input = raw_input(dir.path());
    let out = dir.path().join("out.vhd");
    let nowhere = dir.path().join("nowhere.vhd");
    std::os::unix::fs::symlink(&nowhere, &out).unwrap();
    let o = vhdforge()
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(!err.contains("appeared"), "{err}");
    assert!(
        err.contains(&format!(
            "is a symbolic link to {}, which does not exist",
            nowhere.display()
        )),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_link(&out).unwrap(), nowhere);
    assert!(!nowhere.exists());
    // --force replaces the link itself: OUT becomes the image, nothing is created where
    // the link pointed.
    let o = vhdforge()
        .args(["convert", "--force"])
        .arg(&input)
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(&out)
        .unwrap()
        .file_type()
        .is_file());
    assert!(!nowhere.exists());
    vhdforge().arg("check").arg(&out).assert().code(0);
    assert_eq!(names(dir.path()), ["in.raw", "out.vhd"]);
}

#[test]
fn a_live_temporary_of_another_pid_namespace_is_left_alone() {
    // This test process plays a convert on the host, writing OUT's temporary; the convert
    // under test runs in a new PID namespace (a container sharing the folder), where no
    // process has this test's id. The name alone says "dead"; the lock says "alive".
    let dir = tempfile::tempdir().unwrap();
    let input = raw_input(dir.path());
    let out = dir.path().join("out.vhd");
    let me = std::process::id();
    let live = dir
        .path()
        .join(format!(".out.vhd.vhdforge-partial-{me}-0123456789abcdef"));
    let held = std::fs::File::create_new(&live).unwrap();
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor `held` owns; no memory is passed.
        let rc = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    }
    // One nobody holds, under the same id: the control, which must go, so the convert is
    // known to have looked and to have found the id dead in its namespace.
    let orphan = dir
        .path()
        .join(format!(".out.vhd.vhdforge-partial-{me}-fedcba9876543210"));
    std::fs::write(&orphan, b"left by a killed run").unwrap();
    let o = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(assert_cmd::cargo::cargo_bin("vhdforge"))
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .output()
        .expect("unshare (util-linux) runs the convert in a new PID namespace");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        live.exists(),
        "a temporary still held by a live process was removed"
    );
    assert!(!orphan.exists(), "the orphan of a dead process was left");
    vhdforge().arg("check").arg(&out).assert().code(0);
    drop(held);
}

#[test]
fn the_output_gets_a_new_files_usual_mode_though_written_owner_only() {
    // The temporary is created 0600 (nobody else may open, or lock, it while it is
    // written); the output then gets 0666 less the umask, as `cp` would give it.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let input = raw_input(dir.path());
    for (umask, mode) in [("022", 0o644), ("027", 0o640), ("077", 0o600)] {
        let out = dir.path().join(format!("out-{umask}.vhd"));
        let o = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("umask {umask} && exec \"$0\" convert \"$1\" \"$2\""),
            ])
            .arg(assert_cmd::cargo::cargo_bin("vhdforge"))
            .arg(&input)
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let got = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, mode, "umask {umask}: mode {got:o}");
    }
}
