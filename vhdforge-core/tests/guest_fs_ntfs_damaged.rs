//! Damaged NTFS never panics, never allocates without bound and never hangs the reader. A
//! small volume made by `mkntfs` and filled through ntfs-3g (a directory with INDX blocks,
//! nested directories, resident and non-resident files, a file with an attribute list, a
//! symlink) is mutated — every boot-sector field and every FILE record header word of the
//! metadata and first user records set to extreme values, the headers of its INDX blocks
//! likewise, then random bytes over the MFT and the index blocks — and each result is opened
//! and walked completely through the `FileSystem` trait. Errors are fine; a panic, a peak
//! allocation over 64 MiB, or a walk over 10 seconds is a failure.

#[path = "guest_fs_common/damaged.rs"]
mod damaged;

use damaged::MIB;
use fixtures::guest::{run, Mount};
use std::os::unix::fs::FileExt;
use std::path::Path;
use vhdforge_core::OpenOptions;

fn mkfs(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(12 * MIB as u64)
        .unwrap();
    run("mkntfs", &["-F", "-q", "-f", img.to_str().unwrap()]);
    let mnt = dir.join("mnt");
    let rw = Mount::ntfs_3g(&img, &mnt, "rw");
    let fill = || {
        std::fs::create_dir_all(mnt.join("a/b/c"))?;
        std::fs::create_dir(mnt.join("big"))?;
        for i in 0..40 {
            std::fs::write(mnt.join(format!("a/file{i}")), vec![i as u8; i * 300])?;
        }
        for i in 0..150 {
            std::fs::write(mnt.join(format!("big/entry-number-{i:04}")), b"")?;
        }
        std::fs::write(mnt.join("a/b/c/big"), vec![7u8; 300_000])?;
        for i in 0..24 {
            std::fs::hard_link(
                mnt.join("a/file1"),
                mnt.join(format!("a/b/link-{i:03}-{}", "x".repeat(80))),
            )?;
        }
        std::io::Result::Ok(())
    };
    let filled = fill();
    drop(rw);
    filled.unwrap();
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

/// Set `len` bytes at `at` to each extreme in turn, check, and restore them.
fn extremes(file: &std::fs::File, img: &Path, at: u64, len: usize, what: &str) {
    let mut saved = vec![0u8; len];
    file.read_exact_at(&mut saved, at).unwrap();
    for fill in [0x00u8, 0x80, 0xFF] {
        let mut v = vec![fill; len];
        if fill == 0x80 {
            // The most negative little-endian value.
            v.fill(0);
            v[len - 1] = 0x80;
        }
        file.write_all_at(&v, at).unwrap();
        check(img, &format!("{what} = {v:02x?}"));
    }
    file.write_all_at(&saved, at).unwrap();
}

#[test]
fn damaged_ntfs_never_panics_or_runs_away() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let intact = walk(&img);
    assert!(
        intact == 220,
        "the intact tree is not readable ({intact} entries)"
    );

    damaged::truncated_copies(&img, check);

    // Boot sector fields.
    for (at, len) in [(11u64, 2usize), (13, 1), (40, 8), (48, 8), (64, 1), (68, 1)] {
        extremes(&file, &img, at, len, &format!("boot byte {at}"));
    }

    let mut boot = [0u8; 512];
    file.read_exact_at(&mut boot, 0).unwrap();
    let cluster = u64::from(u16::from_le_bytes([boot[11], boot[12]])) * u64::from(boot[13]);
    let mft = u64::from_le_bytes(boot[48..56].try_into().unwrap()) * cluster;
    // FILE record headers: $MFT, the root, $UpCase and the first user records.
    for rec in [0u64, 5, 10, 64] {
        for (off, len) in [
            (4u64, 2usize),
            (6, 2),
            (20, 2),
            (22, 2),
            (24, 4),
            (32, 8),
            (44, 4),
        ] {
            extremes(
                &file,
                &img,
                mft + rec * 1024 + off,
                len,
                &format!("record {rec} +{off}"),
            );
        }
        // The first attribute's header: type, length, non-resident flag, name, offsets.
        let mut r = [0u8; 1024];
        file.read_exact_at(&mut r, mft + rec * 1024).unwrap();
        let first = u64::from(u16::from_le_bytes([r[20], r[21]]));
        for (off, len) in [
            (0u64, 4usize),
            (4, 4),
            (8, 1),
            (9, 1),
            (10, 2),
            (16, 4),
            (20, 2),
        ] {
            extremes(
                &file,
                &img,
                mft + rec * 1024 + first + off,
                len,
                &format!("record {rec} attr +{off}"),
            );
        }
    }

    // INDX blocks: found by magic on 4 KiB boundaries; their VCN and index header.
    let len = file.metadata().unwrap().len();
    let mut blocks = Vec::new();
    let mut magic = [0u8; 4];
    for at in (0..len).step_by(4096) {
        file.read_exact_at(&mut magic, at).unwrap();
        if &magic == b"INDX" {
            blocks.push(at);
        }
    }
    assert!(blocks.len() >= 2, "only {} INDX blocks", blocks.len());
    for &b in blocks.iter().take(2) {
        for (off, len) in [
            (16u64, 8usize),
            (24, 4),
            (28, 4),
            (32, 4),
            (36, 1),
            (64 + 8, 2),
            (64 + 12, 2),
        ] {
            extremes(&file, &img, b + off, len, &format!("INDX at {b} +{off}"));
        }
    }

    // Random bytes over the first MFT records and the index blocks (seeded, repeatable).
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut regions: Vec<(u64, u64)> = vec![(mft, 80 * 1024)];
    regions.extend(blocks.iter().map(|&b| (b, 4096)));
    for round in 0..60 {
        let (start, size) = regions[usize::try_from(next() % regions.len() as u64).unwrap()];
        let mut changed = Vec::new();
        for _ in 0..(1 + next() % 4) {
            let at = start + next() % size;
            let mut old = [0u8];
            file.read_exact_at(&mut old, at).unwrap();
            file.write_all_at(&[next() as u8], at).unwrap();
            changed.push((at, old[0]));
        }
        check(&img, &format!("random round {round} at {changed:?}"));
        for (at, old) in changed.into_iter().rev() {
            file.write_all_at(&[old], at).unwrap();
        }
    }
    assert_eq!(walk(&img), intact, "restored image reads as before");
}
