//! Red team of 4e3fb76 (temporaries are flock-held; `remove_orphans` skips held ones) with
//! real `vhdforge convert` processes in another PID namespace.
//!
//! Failing now (real bugs):
//! - `TempFile::beside` creates the temporary (`O_CREAT | O_EXCL`) and only then takes its
//!   `flock`: in between, a live convert's temporary is held by nobody, and a host
//!   `remove_orphans` removes it (the container's convert then fails after all its work).
//!   `strace` delays the victim's `flock` to widen the window deterministically.
//! - `held()` counts only `EWOULDBLOCK` as held: any other failure of the lock test (on NFS a
//!   read-only descriptor cannot take an exclusive flock: `EBADF`) reads as "nobody holds it".
//! - An orphan whose name carries a pid that is live in the remover's namespace (pid 1: a
//!   container's entrypoint) is never removed, though no lock holds it.
//!
//! - Free space (a60f2db): with --no-clone on an XFS with 512 KiB free, a disk storing 4 KiB
//!   is refused ("needs up to 4096 bytes ... only 524288 bytes are left free; 528448 more
//!   bytes are needed": its own figures say it fits), and an empty disk is warned about
//!   ("stores up to 0 bytes, more than the 524288 bytes free").
//!
//! Holding up: the lock lasts through the final flush, link and rename (with and without
//! `--force`); a SIGSTOPped convert of another namespace keeps its temporary against a host
//! convert, and then refuses to replace the host's OUT; a killed one's orphan is removed.
//!
//! Needs root, `unshare`, `strace` (CI runs as root); a missing tool fails the test.

#[path = "../../vhdforge-core/tests/loop_mount/mod.rs"]
mod loop_mount;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("vhdforge")
}

/// A sparse raw image of 21 MiB with a little data.
fn raw_input(dir: &Path) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let p = dir.join("in.raw");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(21 * MIB).unwrap();
    f.write_all_at(&[0x5A; 8192], MIB).unwrap();
    p
}

/// A process id free on the host whose successor is free too, below `pid_max`.
fn free_host_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (max / 2..max - 10)
        .rev()
        .find(|p| (0..12).all(|d| !Path::new(&format!("/proc/{}", p + d)).exists()))
        .expect("a free pid")
}

/// Kills the child's process group on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `vhdforge convert` (plus `args`) in a new PID namespace under an id no host process
/// has, with `strace` holding each `syscalls` call for 3 s; once its temporary has existed
/// for `settle`, run the host's `remove_orphans` for the same OUT. Returns whether the
/// temporary survived that, the convert's exit code and stderr, and whether OUT exists.
fn race(syscalls: &str, args: &[&str], settle: Duration) -> (bool, Option<i32>, String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let input = raw_input(dir.path());
    let out = dir.path().join("out.vhd");
    let last = free_host_pid();
    // In the new namespace: sh (pid 1) sets the next id, then becomes strace, whose child,
    // the convert, gets an id just above `last`: one no host process has.
    let script = format!(
        "echo {last} > /proc/sys/kernel/ns_last_pid && exec strace -f -qq -o /dev/null \
         -e trace={syscalls} -e inject={syscalls}:delay_enter=3000000 \"$0\" convert {} \"$1\" \"$2\"",
        args.join(" ")
    );
    let child = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "sh",
            "-c",
            &script,
        ])
        .arg(bin())
        .arg(&input)
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) runs the convert in a new PID namespace");
    let mut child = Child(child);
    // strace forks a helper or two first: the convert's id is a little above `last`.
    let prefix = ".out.vhd.vhdforge-partial-";
    let started = Instant::now();
    let temp = loop {
        let found = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with(prefix));
        if let Some(n) = found {
            break dir.path().join(n);
        }
        if let Some(st) = child.0.try_wait().unwrap() {
            let o = std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap())
                .wait_with_output()
                .unwrap();
            panic!(
                "the convert ended ({st}) before its temporary appeared: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no temporary {prefix}* appeared (is strace installed?)"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let pid = temp.file_name().unwrap().to_str().unwrap()[prefix.len()..]
        .split('-')
        .next()
        .unwrap()
        .to_string();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "setup: id {pid} is live on the host"
    );
    std::thread::sleep(settle);
    // The host's convert of the same OUT starts: it removes orphans first.
    let was_there = temp.exists();
    vhdforge_core::fsutil::remove_orphans(&out, "partial", &[]);
    assert!(
        was_there,
        "setup: the temporary was gone before the host looked"
    );
    let survived = temp.exists();
    // Let the victim finish, bounded.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the convert never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (survived, o.status.code(), err, out.exists())
}

#[test]
fn a_live_temporary_is_not_removed_before_its_lock_is_taken() {
    let (survived, code, err, _) = race("flock", &[], Duration::ZERO);
    assert!(
        survived,
        "the live temporary of a convert in another PID namespace was removed (created, \
         not yet locked); that convert then ended with {code:?}: {err}"
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn the_lock_is_held_through_the_final_flush_and_link_without_force() {
    // linkat (Replace::Never) is held 3 s; fsync before it too.
    let (survived, code, err, out) = race("fsync,linkat", &[], Duration::from_millis(1500));
    assert!(survived, "removed during persist: {code:?} {err}");
    assert_eq!(code, Some(0), "{err}");
    assert!(out);
}

#[test]
fn the_lock_is_held_through_the_final_flush_and_rename_with_force() {
    let (survived, code, err, out) = race(
        "fsync,rename,renameat,renameat2",
        &["--force"],
        Duration::from_millis(1500),
    );
    assert!(survived, "removed during persist: {code:?} {err}");
    assert_eq!(code, Some(0), "{err}");
    assert!(out);
}

/// `held()` opens the temporary read-only and counts only `EWOULDBLOCK` as "held"; any other
/// failure of the lock test reads as "nobody holds it". On NFS (flock(2): "in order to place
/// an exclusive lock, the file must be opened for writing") the read-only exclusive flock
/// fails with `EBADF`, so every live temporary of a convert on another host or in another
/// PID namespace is taken for an orphan and removed: the shared folder this guard is for.
/// No NFS server here: `strace` makes the remover's flock fail as NFS's does.
#[test]
fn a_lock_that_cannot_be_tested_is_not_taken_for_no_lock() {
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
    let o = Command::new("timeout")
        .args(["120", "unshare", "--pid", "--fork", "--mount-proc"])
        .args(["strace", "-f", "-qq", "-o", "/dev/null"])
        .args(["-e", "trace=flock", "-e", "inject=flock:error=EBADF"])
        .arg(bin())
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .output()
        .expect("timeout, unshare and strace run the convert");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        live.exists(),
        "a temporary held by a live process was removed because the lock test failed \
         (EBADF, as on NFS for a read-only descriptor)"
    );
    drop(held);
}

/// A 200 MiB raw disk of data (a debug build takes a second or more to convert it).
fn big_input(dir: &Path) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let input = dir.join("big.raw");
    let f = std::fs::File::create(&input).unwrap();
    for i in 0..50u64 {
        f.write_all_at(&fixtures::raw::pattern(i, 4 << 20), i * 4 * MIB)
            .unwrap();
    }
    input
}

/// The temporaries of `out.vhd` in `dir`.
fn temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".out.vhd.vhdforge-partial-"))
        .collect()
}

/// The first child (host id) of process `pid`.
fn first_child(pid: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(c) = c.split_whitespace().next() {
            return c.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no child of {pid}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Start `vhdforge convert --no-clone IN OUT` in a new PID namespace, as its pid 1 (a
/// container's entrypoint) or under an id no host process has; wait for its temporary.
/// Returns the unshare child, the convert's host id and its temporary's name.
fn start_victim(input: &Path, out: &Path, as_pid1: bool) -> (Child, u32, String) {
    let dir = out.parent().unwrap();
    let last = free_host_pid();
    let script = if as_pid1 {
        "exec \"$0\" convert --allow-any-size --no-clone \"$1\" \"$2\"".to_string()
    } else {
        format!(
            "echo {last} > /proc/sys/kernel/ns_last_pid && \
             \"$0\" convert --allow-any-size --no-clone \"$1\" \"$2\""
        )
    };
    let child = Child(
        Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "sh",
                "-c",
            ])
            .arg(&script)
            .arg(bin())
            .arg(input)
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let sh = first_child(child.0.id());
    let host_pid = if as_pid1 { sh } else { first_child(sh) };
    let started = Instant::now();
    loop {
        if let Some(t) = temps(dir).pop() {
            return (child, host_pid, t);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no temporary");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A host convert of `input` to `out`, which must succeed.
fn host_convert(input: &Path, out: &Path) {
    let host = Command::new("timeout")
        .arg("120")
        .arg(bin())
        .args(["convert", "--allow-any-size", "--no-clone"])
        .arg(input)
        .arg(out)
        .output()
        .unwrap();
    assert_eq!(
        host.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&host.stderr)
    );
}

/// Two real converts of one OUT: one in a new PID namespace under an id the host does not
/// have, stopped (SIGSTOP) while its temporary is being written, and one on the host. The
/// host's leaves the stopped one's temporary alone and writes OUT; the resumed one then
/// refuses to replace OUT, removing its temporary.
#[test]
fn a_stopped_convert_in_another_namespace_keeps_its_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let input = big_input(dir.path());
    let out = dir.path().join("out.vhd");
    let (mut victim, host_pid, t) = start_victim(&input, &out, false);
    // SAFETY: a signal to the convert this test started.
    assert_eq!(unsafe { libc::kill(host_pid as i32, libc::SIGSTOP) }, 0);
    host_convert(&input, &out);
    assert_eq!(
        temps(dir.path()),
        [t],
        "the stopped convert's temporary was removed"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(host_pid as i32, libc::SIGCONT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    let st = loop {
        if let Some(st) = victim.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the resumed convert never ended");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !st.success(),
        "the resumed convert replaced OUT without --force"
    );
    assert!(
        temps(dir.path()).is_empty(),
        "the resumed convert left its temporary"
    );
    assert_out_is(&out, &input);
}

/// A convert in a container killed (SIGKILL) mid-way leaves a temporary nobody holds; the
/// next convert of that OUT on the host must remove it. `as_pid1`: the convert was the
/// container's entrypoint, pid 1 there; the host's pid 1 is always alive, so the name alone
/// says "live", and in the container the next run is pid 1 itself (its own id is skipped).
/// Nobody ever removes that orphan (as large as the data written), though no lock holds it.
fn killed_victim_orphan_is_removed(as_pid1: bool) {
    let dir = tempfile::tempdir().unwrap();
    let input = big_input(dir.path());
    let out = dir.path().join("out.vhd");
    let (_victim, host_pid, t) = start_victim(&input, &out, as_pid1);
    // SAFETY: a signal to the convert this test started.
    assert_eq!(unsafe { libc::kill(host_pid as i32, libc::SIGKILL) }, 0);
    while Path::new(&format!("/proc/{host_pid}/exe")).exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    host_convert(&input, &out);
    assert_out_is(&out, &input);
    assert!(
        temps(dir.path()).is_empty(),
        "the killed convert's orphan {t} (nobody holds it) was left (as pid 1: {as_pid1})"
    );
}

#[test]
fn a_killed_convert_of_another_namespace_leaves_no_orphan() {
    killed_victim_orphan_is_removed(false);
}

#[test]
fn a_killed_container_entrypoint_convert_leaves_no_orphan() {
    killed_victim_orphan_is_removed(true);
}

/// OUT holds the raw disk `disk` then a footer, and passes `check`.
fn assert_out_is(out: &Path, disk: &Path) {
    let check = Command::new(bin()).arg("check").arg(out).output().unwrap();
    assert!(check.status.success(), "OUT is not a good image");
    let o = std::fs::read(out).unwrap();
    let d = std::fs::read(disk).unwrap();
    assert_eq!(&o[..d.len()], &d[..], "OUT differs from the disk");
    assert_eq!(&o[o.len() - 512..o.len() - 504], b"conectix");
}

/// The first number after `pre` in `text`.
fn number_after(text: &str, pre: &str) -> Option<u64> {
    let at = text.find(pre)? + pre.len();
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `vhdforge convert --no-clone` of a 21 MiB raw disk storing `data` bytes onto an XFS
/// with 512 KiB free: exit code and stderr.
fn no_clone_onto_half_a_mib(data: usize) -> (Option<i32>, String) {
    use std::os::unix::fs::FileExt;
    let src = tempfile::tempdir().unwrap();
    let input = src.path().join("in.raw");
    let f = std::fs::File::create(&input).unwrap();
    f.set_len(21 * MIB).unwrap();
    if data > 0 {
        f.write_all_at(&vec![0x5A; data], MIB).unwrap();
    }
    drop(f);
    let m = loop_mount::Mounted::new("xfs");
    loop_mount::leave_free(&m.at, MIB / 2);
    let out = m.at.join("out.vhd");
    let o = Command::new("timeout")
        .arg("120")
        .arg(bin())
        .args(["convert", "--allow-any-size", "--no-clone"])
        .arg(&input)
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    if o.status.success() {
        assert!(out.exists());
    } else {
        assert!(!out.exists(), "{err}");
    }
    assert_eq!(
        loop_mount::others(&m.at, &["out.vhd", "ballast"]),
        Vec::<String>::new()
    );
    (o.status.code(), err)
}

#[test]
fn a_refusal_for_space_is_backed_by_its_own_figures() {
    let (code, err) = no_clone_onto_half_a_mib(4096);
    if code != Some(0) {
        let need = number_after(&err, "needs up to ").expect("a need in the message");
        let free = number_after(&err, "but only ").expect("free bytes in the message");
        assert!(
            need > free,
            "4 KiB of data with 512 KiB free was refused, and the message says it needs \
             {need} bytes with {free} free: {err}"
        );
    }
}

#[test]
fn an_empty_disk_is_not_warned_about_as_if_it_might_not_fit() {
    let (code, err) = no_clone_onto_half_a_mib(0);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        !err.contains("may not fit"),
        "a disk storing nothing was warned about: {err}"
    );
}
