//! Red team of the one free-space rule (a60f2db) and of the flock-held temporaries (4e3fb76).
//!
//! Free space: a thick disk (every byte written, almost all of it zeros) needs almost no new
//! space, as zero pages are never copied. The commit says such a disk is no longer refused
//! up front; yet each 256 MiB slice is still checked against its *stored* bytes (written
//! zeros included) before its copy, so on a file system with less than a slice free the
//! convert is refused although the output fits many times over.
//!
//! Temporaries: planted files of every kind at temporary-looking names must neither hang
//! `remove_orphans` nor be followed, and what it removes must be only the name.
//!
//! File systems are loop-mounted (CI runs as root); a missing tool fails the test.

mod loop_mount;

use loop_mount::{assert_same_disk, free_bytes, leave_free, others, run, s, Mounted};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};
use vhdforge_core::convert::{convert_to_file, ConvertOptions, Policy};
use vhdforge_core::progress::NoProgress;
use vhdforge_core::DiskImage;

const MIB: u64 = 1 << 20;

fn opts(no_clone: bool) -> ConvertOptions {
    ConvertOptions {
        policy: Policy {
            unique_id: Some([3; 16]),
            time_stamp: Some(777),
            allow_any_size: true,
            ..Policy::default()
        },
        no_clone,
        ..ConvertOptions::default()
    }
}

fn open(p: &Path) -> Box<dyn DiskImage> {
    vhdforge_core::open(p, &Default::default()).unwrap()
}

/// A thick raw disk of `size` bytes: every byte written (zeros), with `data` bytes of a
/// pattern at 1 MiB and at the last MiB.
fn thick_raw(path: &Path, size: u64, data: u64) {
    let f = File::create(path).unwrap();
    let zeros = vec![0u8; usize::try_from(4 * MIB).unwrap()];
    let mut at = 0;
    while at < size {
        let n = (4 * MIB).min(size - at);
        f.write_all_at(&zeros[..usize::try_from(n).unwrap()], at)
            .unwrap();
        at += n;
    }
    let pat = fixtures::raw::pattern(7, usize::try_from(data).unwrap());
    f.write_all_at(&pat, MIB).unwrap();
    f.write_all_at(&pat[..usize::try_from(MIB).unwrap()], size - MIB)
        .unwrap();
    f.sync_all().unwrap();
    // Really thick: the file system stores every byte (no hole anywhere).
    let blocks = std::os::unix::fs::MetadataExt::blocks(&f.metadata().unwrap());
    assert!(blocks * 512 >= size, "the thick disk has holes");
}

/// Convert a 320 MiB thick disk holding 9 MiB of data onto a file system with about
/// `free` bytes free; the output fits many times over and must be converted exactly.
fn thick_disk_fits(fs: &str, free: u64, no_clone: bool) {
    let src = tempfile::tempdir().unwrap();
    let disk = src.path().join("thick.raw");
    thick_raw(&disk, 320 * MIB, 8 * MIB);
    let m = Mounted::sized(fs, 512 * MIB);
    leave_free(&m.at, free);
    let avail = free_bytes(&m.at);
    assert!(
        avail > 40 * MIB && avail < 250 * MIB,
        "setup: {avail} bytes free"
    );
    let out = m.at.join("out.vhd");
    let what = format!("{fs}, {avail} bytes free, no_clone {no_clone}");
    match convert_to_file(open(&disk).as_ref(), &out, &opts(no_clone), &NoProgress) {
        Ok(r) => {
            assert_eq!(r.data_bytes_written, 9 * MIB, "{what}");
            assert_same_disk(&out, &disk, &what);
        }
        Err(e) => panic!(
            "{what}: a thick disk whose output needs 9 MiB was refused ({}): {e}",
            e.code()
        ),
    }
    assert_eq!(others(&m.at, &["out.vhd", "ballast"]), Vec::<String>::new());
}

#[test]
fn a_thick_disk_with_little_data_fits_with_no_clone_onto_ext4_with_150_mib_free() {
    thick_disk_fits("ext4", 150 * MIB, true);
}

#[test]
fn a_thick_disk_with_little_data_fits_onto_ext4_with_150_mib_free() {
    // ext4 cannot clone: the rest is a copy from the first slice on.
    thick_disk_fits("ext4", 150 * MIB, false);
}

#[test]
fn a_thick_disk_with_little_data_fits_with_no_clone_onto_xfs_with_150_mib_free() {
    thick_disk_fits("xfs", 150 * MIB, true);
}

#[test]
fn a_thick_disk_that_truly_does_not_fit_is_refused_cleanly() {
    // Control: every byte is data (no zero page), 320 MiB onto 150 MiB free.
    let src = tempfile::tempdir().unwrap();
    let disk = src.path().join("full.raw");
    let f = File::create(&disk).unwrap();
    let mut at = 0;
    while at < 320 * MIB {
        f.write_all_at(&fixtures::raw::pattern(at, 4 << 20), at)
            .unwrap();
        at += 4 * MIB;
    }
    drop(f);
    let m = Mounted::sized("ext4", 256 * MIB);
    leave_free(&m.at, 150 * MIB);
    let out = m.at.join("out.vhd");
    let e = convert_to_file(open(&disk).as_ref(), &out, &opts(true), &NoProgress)
        .expect_err("320 MiB of data was converted onto 150 MiB");
    assert_eq!(e.code(), "convert.no_space", "{e}");
    let msg = e.to_string();
    assert!(!msg.contains("vhdforge-partial"), "temp name leaked: {msg}");
    assert_eq!(others(&m.at, &["ballast"]), Vec::<String>::new());
}

/// `remove_orphans` over a folder of planted non-regular files at temporary-looking names
/// of a dead id, in a child with a deadline: it must return quickly (a FIFO or a device is
/// never opened in a blocking way), follow no link and remove only names.
#[test]
fn planted_specials_at_orphan_names_neither_hang_nor_reach_their_targets() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.vhd");
    // An id no process has: beyond pid_max.
    let dead = 4_194_305u32;
    let name = |tag: &str| {
        dir.path()
            .join(format!(".out.vhd.vhdforge-partial-{dead}-{tag}"))
    };
    let precious = dir.path().join("precious");
    std::fs::write(&precious, b"keep me").unwrap();
    run("mkfifo", &[s(&name("fifo0000000000"))]);
    run("mknod", &[s(&name("tty00000000000")), "c", "5", "0"]);
    std::os::unix::fs::symlink(&precious, name("link0000000000")).unwrap();
    std::fs::hard_link(&precious, name("hard0000000000")).unwrap();
    std::fs::create_dir(name("dir00000000000")).unwrap();
    std::fs::write(name("dir00000000000").join("inside"), b"x").unwrap();
    // A FIFO that a writer holds open, and a tty: an open without O_NONBLOCK would block.
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let o2 = out.clone();
    std::thread::spawn(move || {
        vhdforge_core::fsutil::remove_orphans(&o2, "partial", &[]);
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("remove_orphans hung on a planted special file");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
    // Names of a dead id are gone (the directory stays: not a file).
    for t in [
        "fifo0000000000",
        "tty00000000000",
        "link0000000000",
        "hard0000000000",
    ] {
        assert!(
            std::fs::symlink_metadata(name(t)).is_err(),
            "{t}: orphan name left"
        );
    }
    assert!(name("dir00000000000").join("inside").exists());
}

/// Fills the output's file system at the first progress report: free space vanishes while
/// the convert runs, after the whole rest was found to fit.
struct FillAtFirstAdvance {
    at: std::path::PathBuf,
    filled: std::sync::atomic::AtomicBool,
}

impl vhdforge_core::progress::Progress for FillAtFirstAdvance {
    fn advance(&self, _bytes: u64) {
        if !self.filled.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // Whatever fallocate manages, in smaller and smaller files (btrfs reports
            // more free space than one file can take): the file system ends full.
            let mut fill = free_bytes(&self.at);
            let mut n = 0;
            while fill >= 64 << 10 {
                let ok = std::process::Command::new("fallocate")
                    .args(["-l", &fill.to_string()])
                    .arg(self.at.join(format!("filler{n}")))
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    n += 1;
                } else {
                    let _ = std::fs::remove_file(self.at.join(format!("filler{n}")));
                    fill /= 2;
                }
            }
        }
    }
}

fn space_vanishes_mid_way(fs: &str) {
    let src = tempfile::tempdir().unwrap();
    let disk = src.path().join("data.raw");
    // 300 MiB, every byte data: two slices, the second 44 MiB.
    let f = File::create(&disk).unwrap();
    let mut at = 0;
    while at < 300 * MIB {
        f.write_all_at(&fixtures::raw::pattern(at + 1, 4 << 20), at)
            .unwrap();
        at += 4 * MIB;
    }
    drop(f);
    let m = Mounted::sized(fs, 1024 * MIB);
    let out = m.at.join("out.vhd");
    let p = FillAtFirstAdvance {
        at: m.at.clone(),
        filled: false.into(),
    };
    let r = convert_to_file(open(&disk).as_ref(), &out, &opts(true), &p);
    assert!(p.filled.load(std::sync::atomic::Ordering::SeqCst));
    let e = r.expect_err("converted onto a full file system");
    let msg = format!("{e:#}");
    eprintln!("{fs}: {msg}");
    assert!(
        !msg.contains("vhdforge-partial"),
        "{fs}: the temporary's name leaked: {msg}"
    );
    assert!(!out.exists(), "{fs}: something is under OUT: {msg}");
    let left: Vec<String> = others(&m.at, &[])
        .into_iter()
        .filter(|n| !n.starts_with("filler"))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "{fs}: {msg}");
}

#[test]
fn free_space_vanishing_mid_way_on_ext4_ends_clean() {
    space_vanishes_mid_way("ext4");
}

#[test]
fn free_space_vanishing_mid_way_on_btrfs_ends_clean() {
    space_vanishes_mid_way("btrfs");
}

#[test]
fn a_1_tib_sparse_disk_with_1_mib_of_data_fits_in_20_mib_with_no_clone() {
    let src = tempfile::tempdir().unwrap();
    let disk = src.path().join("huge.raw");
    let f = File::create(&disk).unwrap();
    f.set_len(1 << 40).unwrap();
    f.write_all_at(&fixtures::raw::pattern(9, 1 << 20), (1 << 40) - (1 << 20))
        .unwrap();
    drop(f);
    let m = Mounted::sized("xfs", 512 * MIB);
    leave_free(&m.at, 20 * MIB);
    let out = m.at.join("out.vhd");
    let started = Instant::now();
    let r = convert_to_file(open(&disk).as_ref(), &out, &opts(true), &NoProgress)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.data_bytes_written, MIB);
    assert!(started.elapsed() < Duration::from_secs(300));
    let o = File::open(&out).unwrap();
    let mut tail = vec![0u8; 1 << 20];
    o.read_exact_at(&mut tail, (1 << 40) - (1 << 20)).unwrap();
    assert_eq!(tail, fixtures::raw::pattern(9, 1 << 20));
}
