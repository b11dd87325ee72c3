//! Damaged XFS never panics, never allocates without bound and never hangs the reader. A
//! v4 file system (no CRCs, so damage reaches the parsers instead of stopping at a
//! checksum) is built by `mkfs.xfs -p` with short-form, block and node directories, local
//! and remote symlinks and a multi-extent file, then mutated — every 32-bit word of the
//! superblock set to extreme values, then random bytes of its metadata sectors — and each
//! result is opened and walked completely through the `FileSystem` trait. Errors are fine;
//! a panic, a peak allocation over 64 MiB, or a walk over 10 seconds is a failure. A v5
//! file system gets the random damage too, which its CRCs and self-describing headers
//! must turn into errors.
//!
//! mkfs.xfs 6.1 makes file systems under 300 MB only for its own test suite, which it
//! recognises by `TEST_DIR`, `TEST_DEV` and `QA_CHECK_FS` in the environment; a 50 MiB one
//! keeps each walk short. Three AGs make `agblocks` no power of two.

#[path = "guest_fs_common/damaged.rs"]
mod damaged;

use damaged::MIB;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use vhdforge_core::OpenOptions;

fn mkfs(dir: &Path, options: &[&str]) -> std::path::PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
    std::fs::create_dir_all(tree.join("big")).unwrap();
    for i in 0..40 {
        std::fs::write(tree.join(format!("a/file{i}")), vec![i as u8; i * 300]).unwrap();
    }
    for i in 0..600 {
        std::fs::write(tree.join(format!("big/entry-number-{i:04}")), b"").unwrap();
    }
    std::fs::write(tree.join("a/b/c/big"), vec![7u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("../a/b/c/big", tree.join("a/link")).unwrap();
    std::os::unix::fs::symlink("x".repeat(400), tree.join("remote")).unwrap();
    let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\n");
    fn add(p: &Path, depth: usize, out: &mut String) {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        for e in v {
            let name = e.file_name().unwrap().to_str().unwrap().to_string();
            let pad = " ".repeat(depth);
            let md = std::fs::symlink_metadata(&e).unwrap();
            if md.is_dir() {
                out.push_str(&format!("{pad}{name} d--755 0 0\n"));
                add(&e, depth + 1, out);
                out.push_str(&format!("{pad}$\n"));
            } else if md.file_type().is_symlink() {
                let t = std::fs::read_link(&e).unwrap();
                out.push_str(&format!("{pad}{name} l--777 0 0 {}\n", t.display()));
            } else {
                out.push_str(&format!("{pad}{name} ---644 0 0 {}\n", e.display()));
            }
        }
    }
    add(&tree, 1, &mut proto);
    proto.push_str("$\n");
    std::fs::write(dir.join("proto"), proto).unwrap();
    let img = dir.join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(50 * MIB as u64)
        .unwrap();
    let out = Command::new("mkfs.xfs")
        .args(["-q", "-f", "-d", "agcount=3"])
        .args(options)
        .arg("-p")
        .arg(dir.join("proto"))
        .arg(&img)
        .env("TEST_DIR", dir)
        .env("TEST_DEV", &img)
        .env("QA_CHECK_FS", "1")
        .output()
        .expect("oracle `mkfs.xfs` is required for this test; scripts/setup.sh installs it");
    assert!(
        out.status.success(),
        "mkfs.xfs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// Open the image and walk everything (see `damaged::walk`); how many entries.
fn walk(img: &Path) -> usize {
    let image = vhdforge_core::open(img, &OpenOptions::default()).unwrap();
    damaged::walk(image.into(), 10_000)
}

fn check(img: &Path, what: &str) {
    damaged::check(what, || walk(img));
}

#[test]
fn damaged_xfs_v4_and_v5_never_panic_or_run_away() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &["-m", "crc=0"]);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    // The intact file system walks completely.
    assert!(walk(&img) > 640, "the intact tree is not readable");

    // Every superblock word, set to extremes one at a time.
    let mut sb = vec![0u8; 512];
    file.read_exact_at(&mut sb, 0).unwrap();
    for off in (0..264).step_by(4) {
        for v in [0u32, 0x8000_0000, u32::MAX] {
            file.write_all_at(&v.to_be_bytes(), off).unwrap();
            check(&img, &format!("sb word {off} = {v:#x}"));
        }
        file.write_all_at(&sb[off as usize..off as usize + 4], off)
            .unwrap();
    }

    damaged::truncated_copies(&img, check);

    mutate_metadata(&file, &img, 150);
    // One test, not two: the allocation counter is process-wide.
    damaged_v5();
}

/// `rounds` times: damage 1 to 4 random bytes of one metadata sector, walk, restore.
fn mutate_metadata(file: &std::fs::File, img: &Path, rounds: usize) {
    // Metadata sectors: non-zero and not uniform (file data here is one repeated byte).
    let mut meta = Vec::new();
    let mut chunk = vec![0u8; MIB];
    let len = std::fs::metadata(img).unwrap().len() as usize;
    for at in (0..len).step_by(MIB) {
        file.read_exact_at(&mut chunk, at as u64).unwrap();
        for (i, c) in chunk.chunks(512).enumerate() {
            if c.iter().any(|&b| b != c[0]) {
                meta.push(at + i * 512);
            }
        }
    }
    assert!(meta.len() > 20, "only {} metadata sectors", meta.len());
    let mut x = 0x1234_5678_9ABC_DEF1u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..rounds {
        let sector = meta[(rnd() % meta.len() as u64) as usize];
        let mut saved = [0u8; 512];
        file.read_exact_at(&mut saved, sector as u64).unwrap();
        let mut damaged = saved;
        for _ in 0..1 + rnd() % 4 {
            let at = (rnd() % 512) as usize;
            damaged[at] = rnd() as u8;
        }
        file.write_all_at(&damaged, sector as u64).unwrap();
        check(img, &format!("round {round}, sector at {sector:#x}"));
        file.write_all_at(&saved, sector as u64).unwrap();
    }
}

/// v5: the same damage must be caught by CRCs and self-describing headers, never panic.
fn damaged_v5() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &[]);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    assert!(walk(&img) > 640, "the intact tree is not readable");
    mutate_metadata(&file, &img, 60);
}
