//! Red team rt13 of 01f8e91 and 94461d5. Temporaries: see the last test (a watcher's shared
//! flock). Free space (94461d5): a write that fails with `EDQUOT` (a user quota:
//! `statvfs` knows nothing of it) becomes `convert.no_space`, whose message then computes
//! its figures from `statvfs` alone. With gigabytes free on the file system, the message
//! says the output "needs up to" a few MiB "but only" gigabytes "were free", and that
//! "freeing 0 more bytes is enough": its figures contradict the refusal, and the advice
//! (free 0 bytes) cannot help. Quota is simulated with `strace -e inject` (as rt12 did for
//! NFS); a missing `strace` fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("vhdforge")
}

fn number_after(text: &str, pre: &str) -> Option<u64> {
    let at = text.find(pre)? + pre.len();
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A sparse 21 MiB raw disk with 64 KiB of data at 1 MiB.
fn raw_input(dir: &Path) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let p = dir.join("in.raw");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(21 * MIB).unwrap();
    f.write_all_at(&[0x5A; 65536], MIB).unwrap();
    p
}

/// `convert --no-clone` whose first `pwrite64` fails with `errno` (a quota, say).
fn convert_with_failing_write(errno: &str) -> (Option<i32>, String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let input = raw_input(dir.path());
    let out = dir.path().join("out.vhd");
    let o = Command::new("timeout")
        .arg("120")
        .args(["strace", "-f", "-qq", "-o", "/dev/null"])
        .args(["-e", "trace=pwrite64"])
        .args(["-e", &format!("inject=pwrite64:error={errno}:when=1")])
        .arg(bin())
        .args(["convert", "--allow-any-size", "--no-clone"])
        .arg(&input)
        .arg(&out)
        .output()
        .expect("timeout and strace run the convert (is strace installed?)");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!out.exists(), "{err}");
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "in.raw")
        .collect();
    left.sort();
    (o.status.code(), err, left)
}

fn check_figures(errno: &str) {
    let (code, err, left) = convert_with_failing_write(errno);
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("not enough free space"),
        "{errno} is not reported as a shortage (did strace run the convert?): {err}"
    );
    assert_eq!(left, Vec::<String>::new(), "left behind: {err}");
    let need = number_after(&err, "needs up to ").expect("a need in the message");
    let free = number_after(&err, "but only ").expect("free bytes in the message");
    let short = number_after(&err, "freeing ").expect("how much to free");
    assert!(
        need > free && short > 0,
        "a write refused with {errno} is reported as a shortage whose own figures say it fits: \
         needs {need} bytes, {free} free, free {short} more: {err}"
    );
}

/// MEDIUM (message): a user quota (EDQUOT) with plenty of space on the file system.
#[test]
fn a_quota_refusal_is_not_reported_with_figures_that_say_it_fits() {
    check_figures("EDQUOT");
}

/// Unmounts a bind mount on drop.
struct Bind(PathBuf);
impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// MEDIUM (data loss, needs an input named like a temporary): `remove_orphans` spares the
/// convert's own inputs (`keep`) by comparing canonical paths. The same folder reached
/// through two mounts (a bind mount; a container given one host folder as both `/in` and
/// `/out`) has two canonical paths, so the input, non-empty, old and unlocked, is deleted
/// as an orphan of OUT while it is being converted. Comparing device and inode would not
/// be fooled. (A hard link would lose only a name; a bind mount loses the file.)
#[test]
fn an_input_reached_through_a_bind_mount_is_not_removed_as_an_orphan() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let name = ".out.vhd.vhdforge-partial-1-0123456789abcdef";
    let input = a.join(name);
    let f = std::fs::File::create(&input).unwrap();
    f.set_len(21 * MIB).unwrap();
    f.write_all_at(b"the user's only copy", MIB).unwrap();
    // Older than any grace period.
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
        .unwrap();
    drop(f);
    let st = Command::new("mount")
        .arg("--bind")
        .arg(&a)
        .arg(&b)
        .status()
        .expect("mount runs (is it installed? root?)");
    assert!(st.success(), "mount --bind failed");
    let bind = Bind(b.clone());
    let o = Command::new("timeout")
        .arg("120")
        .arg(bin())
        .args(["convert", "--allow-any-size", "--no-clone"])
        .arg(b.join(name))
        .arg(a.join("out.vhd"))
        .output()
        .unwrap();
    drop(bind);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(
        input.exists(),
        "the convert's own input, reached through a bind mount of OUT's folder, was deleted as \
         an orphan temporary: {err}"
    );
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The watcher, in C (a Rust watcher built for tests is too slow to win as often): blocked
/// in `read` on inotify, woken by the creation, it opens the new file read-only (what any
/// user may do with a 0644 file in a shared folder) and takes a shared lock, kept for good.
const WATCHER_C: &str = r#"
#include <sys/inotify.h>
#include <sys/file.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int in = inotify_init1(IN_CLOEXEC);
    if (in < 0 || inotify_add_watch(in, argv[1], IN_CREATE) < 0) return 1;
    char ready[4096];
    snprintf(ready, sizeof ready, "%s/ready", argv[1]);
    close(open(ready, O_CREAT | O_WRONLY, 0644));
    char buf[65536];
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        for (char *p = buf; n > 0 && p < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)p;
            if (e->len) {
                char path[4096];
                snprintf(path, sizeof path, "%s/%s", argv[1], e->name);
                int fd = open(path, O_RDONLY);
                if (fd >= 0 && flock(fd, LOCK_SH | LOCK_NB) != 0) close(fd);
            }
            p += sizeof *e + e->len;
        }
    }
}
"#;

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// MEDIUM (denial of service by any local user; garbage left for good). 01f8e91's `hold`
/// waits up to 2 s for the lock on a new temporary, then gives the name up *and leaves the
/// empty file there*; after 8 names the convert fails. Any user who can read the new
/// temporary (0644 under the usual umask, in a shared sticky folder such as /tmp) can take
/// a shared `flock` on it with a read-only descriptor, and an inotify watcher wins the race
/// between `create_new` and `hold`'s `flock` often (run as `nobody`: 11 wins in 10 converts,
/// one convert took 12 s). Each win costs 2 s and leaves an empty root-owned temporary the
/// watcher keeps locked, so `remove_orphans` never removes it. Someone else's lock does not
/// threaten a temporary (held files are never removed; a remover's exclusive lock then
/// unlink is told apart by the inode check after the wait), so giving up the name is not
/// needed. Needs `cc`; a missing compiler fails the test.
#[test]
fn a_shared_lock_won_in_the_creation_race_neither_costs_time_nor_leaves_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.vhd");
    let tools = tempfile::tempdir().unwrap();
    let src = tools.path().join("watcher.c");
    let exe = tools.path().join("watcher");
    std::fs::write(&src, WATCHER_C).unwrap();
    let st = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("cc runs (is a C compiler installed?)");
    assert!(st.success(), "cc failed");
    let watcher = Kill(Command::new(&exe).arg(dir.path()).spawn().unwrap());
    let ready = dir.path().join("ready");
    let t0 = Instant::now();
    while !ready.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the watcher did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::remove_file(&ready).unwrap();
    let input = raw_input(tools.path());
    let mut slow = Vec::new();
    let mut failed = 0;
    for _ in 0..12 {
        let started = Instant::now();
        let o = Command::new("timeout")
            .arg("120")
            .arg(bin())
            .args(["convert", "--allow-any-size", "--no-clone", "--force"])
            .arg(&input)
            .arg(&target)
            .output()
            .unwrap();
        if !o.status.success() {
            failed += 1;
        }
        if started.elapsed() > Duration::from_millis(1500) {
            slow.push(started.elapsed());
        }
    }
    drop(watcher);
    let left: Vec<String> = names(dir.path())
        .into_iter()
        .filter(|n| n != "out.vhd")
        .collect();
    assert!(
        slow.is_empty() && failed == 0 && left.is_empty(),
        "a watcher's shared flock: {failed} of 12 converts failed, slow ones took {slow:?}, \
         left behind (locked by the watcher, so never removed): {left:?}"
    );
}
