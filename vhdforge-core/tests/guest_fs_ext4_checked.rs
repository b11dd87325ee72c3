//! The ext4 extent fast path (`guest/fs/ext4_inode.rs`) trusts nothing it has not checked:
//! extent tree blocks are verified against their `metadata_csum` tail with the kernel's seed
//! (derived from the UUID, or stored with `metadata_csum_seed`), every extent is bounded
//! as the kernel's `ext4_ext_check` bounds it, and unwritten (preallocated) extents read as
//! zeros as the kernel reads them. e2fsprogs (`mkfs.ext4`, `debugfs`, `e2fsck`, `tune2fs`)
//! makes the images and confirms each damage is what the test says; the kernel (a loop
//! mount) is the oracle for unwritten extents.

use fixtures::guest::{run, Mount};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use vhdforge_core::guest::fs::{self, Volume};

const BS: usize = 4096;

/// `/sparse`: 40 one-block pieces with a hole after each, so its 40 extents need a tree
/// block (depth 1); `/small`: one extent in the inode.
fn tree(dir: &Path) -> Vec<u8> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let mut sparse = vec![0u8; 80 * BS];
    for i in 0..40 {
        sparse[i * 2 * BS..(i * 2 + 1) * BS].fill(i as u8 + 1);
    }
    // Written with holes: mke2fs -d copies data only.
    let f = std::fs::File::create(tree.join("sparse")).unwrap();
    f.set_len(sparse.len() as u64).unwrap();
    for i in 0..40u64 {
        use std::os::unix::fs::FileExt;
        f.write_all_at(&vec![i as u8 + 1; BS], i * 2 * BS as u64)
            .unwrap();
    }
    std::fs::write(tree.join("small"), b"hello\n".repeat(1000)).unwrap();
    sparse
}

/// An ext4 image of `size_mib` MiB holding [`tree`], made with `-O features`, in a file of
/// `file_mib` MiB (bigger when the test needs bytes after the file system).
fn mkfs(dir: &Path, features: &str, size_mib: u64, file_mib: u64) -> std::path::PathBuf {
    let img = dir.join("fs.img");
    let _ = std::fs::remove_file(&img);
    std::fs::File::create(&img)
        .unwrap()
        .set_len(file_mib << 20)
        .unwrap();
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-O",
            features,
            "-d",
            dir.join("tree").to_str().unwrap(),
            img.to_str().unwrap(),
            &format!("{size_mib}M"),
        ],
    );
    img
}

/// `cat` through vhdforge.
fn cat(data: Vec<u8>, path: &str) -> vhdforge_core::Result<Vec<u8>> {
    let image: Arc<dyn vhdforge_core::DiskImage> =
        Arc::from(vhdforge_core::open_bytes(data).unwrap());
    let fs = fs::open(Volume::whole(image))?;
    let mut f = fs.open(path.as_bytes())?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The inode number and extent tree leaf block of `path` (`debugfs ex`: level 0 of 1
/// names the leaf).
fn inode_and_leaf(img: &Path, path: &str) -> (u64, u64) {
    let stat = run(
        "debugfs",
        &["-R", &format!("stat {path}"), img.to_str().unwrap()],
    );
    let ino: u64 = stat
        .split("Inode: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no inode number in {stat}"));
    let ex = run(
        "debugfs",
        &["-R", &format!("ex {path}"), img.to_str().unwrap()],
    );
    let root = ex
        .lines()
        .find(|l| l.trim_start().starts_with("0/ 1"))
        .unwrap_or_else(|| panic!("{path} has no depth-1 tree: {ex}"));
    // " 0/ 1   1/  1     0 -    78  1556             79"
    let words: Vec<&str> = root.split_whitespace().collect();
    let leaf = words[words.len() - 2].parse().unwrap();
    (ino, leaf)
}

/// The `e2fsck -fn` report (it exits non-zero on damage; only the text matters here).
fn e2fsck(img: &Path) -> String {
    let out = std::process::Command::new("e2fsck")
        .args(["-fn"])
        .arg(img)
        .output()
        .expect("oracle `e2fsck` (e2fsprogs) is required for this test");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

#[test]
fn extent_block_checksums_are_verified_with_the_kernels_seed() {
    let dir = tempfile::tempdir().unwrap();
    let want = tree(dir.path());
    // (features, a new UUID?) — the seed derived from the UUID, and the seed stored in the
    // superblock after the UUID changed (a seed derived from the new UUID would be wrong).
    for (features, new_uuid) in [("metadata_csum", false), ("metadata_csum", true)] {
        let img = mkfs(dir.path(), features, 32, 32);
        if new_uuid {
            run(
                "tune2fs",
                &[
                    "-O",
                    "metadata_csum_seed",
                    "-U",
                    "random",
                    img.to_str().unwrap(),
                ],
            );
        }
        let (ino, leaf) = inode_and_leaf(&img, "/sparse");
        let clean = std::fs::read(&img).unwrap();
        // The clean image reads exactly: the seed and the checksummed range are the kernel's.
        assert_eq!(
            sha(&cat(clean.clone(), "/sparse").unwrap()),
            sha(&want),
            "{features} new uuid {new_uuid}"
        );
        // Move the first extent's physical start by one block: a plausible extent, so only
        // the checksum tells (e2fsck agrees it is a checksum mismatch).
        let mut d = clean;
        let at = leaf as usize * BS + 12 + 8;
        d[at] = d[at].wrapping_add(1);
        std::fs::write(&img, &d).unwrap();
        let report = e2fsck(&img);
        assert!(
            report.contains("checksum does not match extent"),
            "e2fsck does not see an extent checksum error: {report}"
        );
        let e = match cat(d, "/sparse") {
            Ok(b) => panic!("a damaged extent block read as {} bytes of data", b.len()),
            Err(e) => e,
        };
        assert_eq!(e.code(), "guest.fs.ext4_corrupt", "{e}");
        let m = e.to_string();
        assert!(
            m.contains(&format!("inode {ino}'s extent tree block {leaf}"))
                && m.contains("checksum"),
            "{m}"
        );
    }
}

/// Rewrite 16 bits at `at`.
fn put16(d: &mut [u8], at: usize, v: u16) {
    d[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn extents_the_kernel_would_refuse_are_errors_not_data() {
    let dir = tempfile::tempdir().unwrap();
    let want = tree(dir.path());
    // No checksums, so the damage reaches the bounds checks; a 16 MiB file system in a
    // 32 MiB file, so a block past the file system's end is still inside the volume.
    let img = mkfs(dir.path(), "^metadata_csum", 16, 32);
    let (ino, leaf) = inode_and_leaf(&img, "/sparse");
    let clean = std::fs::read(&img).unwrap();
    assert_eq!(sha(&cat(clean.clone(), "/sparse").unwrap()), sha(&want));
    let leaf_at = leaf as usize * BS;
    let first = leaf_at + 12;
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    // A block past s_blocks_count (4096) but inside the 32 MiB volume, which holds a
    // marker there: reading it would print bytes that are not the file's.
    let mut d = clean.clone();
    d[6000 * BS..6001 * BS].fill(0xEE);
    d[first + 8..first + 12].copy_from_slice(&6000u32.to_le_bytes());
    cases.push(("past the end", d, "maps blocks 6000+1"));
    // eh_entries (40) above eh_max: the kernel refuses the node.
    let mut d = clean.clone();
    put16(&mut d, leaf_at + 4, 39);
    cases.push(("entries over max", d, "40 entries of at most 39"));
    // eh_max 0.
    let mut d = clean.clone();
    put16(&mut d, leaf_at + 2, 0);
    put16(&mut d, leaf_at + 4, 0);
    cases.push(("max zero", d, "0 entries of at most 0"));
    // A zero-length extent.
    let mut d = clean.clone();
    put16(&mut d, first + 4, 0);
    cases.push(("zero length", d, "maps 0 blocks"));
    // The second extent moved onto the first one's logical block: overlap.
    let mut d = clean.clone();
    d[first + 12..first + 16].copy_from_slice(&0u32.to_le_bytes());
    cases.push(("overlap", d, "overlap or are out of order"));
    // The leaf's first extent no longer starts where its index entry says (logical 0).
    let mut d = clean.clone();
    d[first..first + 4].copy_from_slice(&1u32.to_le_bytes());
    cases.push(("first entry", d, "but its parent's index entry says 0"));
    // An unwritten extent of 32767 blocks (ee_len 0xFFFF) from logical block 0: it
    // overlaps the next one and runs past the file system.
    let mut d = clean.clone();
    put16(&mut d, first + 4, 0xFFFF);
    cases.push(("huge unwritten", d, "maps blocks"));
    // Depth 6 in the root (inode i_block + 6).
    let mut d = clean.clone();
    let stat = run("debugfs", &["-R", "imap /sparse", img.to_str().unwrap()]);
    let nums: Vec<u64> = stat
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter_map(|w| {
            w.strip_prefix("0x")
                .map_or_else(|| w.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        })
        .collect();
    // "Inode 13 is part of block group 0\n\tlocated at block 35, offset 0x0c00"
    let inode_at = (nums[nums.len() - 2] as usize) * BS + nums[nums.len() - 1] as usize;
    assert_eq!(
        u16::from_le_bytes([d[inode_at + 0x28], d[inode_at + 0x29]]),
        0xF30A
    );
    put16(&mut d, inode_at + 0x28 + 6, 6);
    // (The crate refuses this one first, as it opens the file.)
    cases.push(("depth 6", d, "depth"));
    for (name, d, says) in cases {
        let r = cat(d, "/sparse");
        let e = match r {
            Ok(b) => panic!(
                "{name}: read {} bytes (same as the file: {})",
                b.len(),
                b == want
            ),
            Err(e) => e,
        };
        assert_eq!(e.code(), "guest.fs.ext4_corrupt", "{name}: {e}");
        let m = e.to_string();
        assert!(m.contains(says), "{name}: {m}");
        assert!(m.contains(&format!("inode {ino}")), "{name}: {m}");
    }
}

/// Set `INCOMPAT_RECOVER` (the journal needs replaying) and fix the superblock checksum.
fn set_recover(d: &mut [u8]) {
    let sb = &mut d[1024..2048];
    let f = u32::from_le_bytes(sb[0x60..0x64].try_into().unwrap()) | 0x4;
    sb[0x60..0x64].copy_from_slice(&f.to_le_bytes());
    fix_sb_csum(d);
}

/// Recompute the superblock checksum (crc32c of its first 1020 bytes, at 0x3FC).
fn fix_sb_csum(d: &mut [u8]) {
    let sb = &mut d[1024..2048];
    // ext4 stores the crc32c register without the final inversion.
    let c = !(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &sb[..0x3FC]) as u32);
    sb[0x3FC..0x400].copy_from_slice(&c.to_le_bytes());
}

#[test]
fn unwritten_extents_read_as_zeros_as_the_kernel_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tree")).unwrap();
    let img = mkfs(dir.path(), "metadata_csum", 32, 32);
    let mnt = dir.path().join("mnt");
    {
        let _m = Mount::typed(&img, &mnt, "ext4", "loop");
        // Stale bytes on free blocks: a file full of 0xAB, deleted; the preallocation
        // that follows likely takes the same blocks, which the kernel does not zero.
        std::fs::write(mnt.join("stale"), vec![0xABu8; 4 << 20]).unwrap();
        run("sync", &[]);
        std::fs::remove_file(mnt.join("stale")).unwrap();
        run("sync", &[]);
        let p = mnt.join("prealloc");
        run("fallocate", &["-l", "4M", p.to_str().unwrap()]);
        // One written block in the middle splits the unwritten extent in three.
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0x5A; BS], 1 << 20).unwrap();
        f.sync_all().unwrap();
        // Preallocated past the size, which must not show.
        run(
            "fallocate",
            &["-n", "-o", "4M", "-l", "1M", p.to_str().unwrap()],
        );
    }
    let kernel = {
        let _m = Mount::typed(&img, &mnt, "ext4", "loop,ro");
        std::fs::read(mnt.join("prealloc")).unwrap()
    };
    assert_eq!(kernel.len(), 4 << 20);
    assert!(kernel.contains(&0x5A));
    let ex = run("debugfs", &["-R", "ex /prealloc", img.to_str().unwrap()]);
    assert!(
        ex.contains("Uninit"),
        "fallocate made no unwritten extent: {ex}"
    );
    let clean = std::fs::read(&img).unwrap();
    assert_eq!(sha(&cat(clean.clone(), "/prealloc").unwrap()), sha(&kernel));
    // With a journal to replay, the crate would read the file, and it reads unwritten
    // blocks as data (the stale 0xAB): refused by name instead.
    let mut d = clean;
    set_recover(&mut d);
    match cat(d, "/prealloc") {
        Ok(b) => assert_eq!(
            sha(&b),
            sha(&kernel),
            "wrong bytes with a journal to replay"
        ),
        Err(e) => {
            assert_eq!(e.code(), "guest.fs.ext4_unsupported", "{e}");
            assert!(e.to_string().contains("preallocated"), "{e}");
        }
    }
}

/// The physical blocks of `path` in logical order (`debugfs blocks`).
fn blocks_of(img: &Path, path: &str) -> Vec<usize> {
    run(
        "debugfs",
        &["-R", &format!("blocks {path}"), img.to_str().unwrap()],
    )
    .split_whitespace()
    .map(|w| w.parse().unwrap())
    .collect()
}

#[test]
fn a_name_found_in_a_damaged_directory_leaf_is_not_trusted() {
    // With checksums the renamed leaf fails its own; without, the name is there twice.
    for features in ["metadata_csum", "^metadata_csum"] {
        name_in_a_damaged_leaf(features);
    }
}

fn name_in_a_damaged_leaf(features: &str) {
    // An htree directory of 2000 files of equal size, mode and owner, each holding its own
    // name. The crate finds a name through the hash index and reads only the leaf the hash
    // leads to; the inode walk scans the leaves in order. A name written into an earlier
    // leaf (whose checksum then fails) was found there first, and the fast path read that
    // entry's file: another file's bytes under the asked name.
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("h")).unwrap();
    for i in 0..2000 {
        let n = format!("f{i:04}");
        std::fs::write(tree.join("h").join(&n), &n).unwrap();
    }
    let img = mkfs(dir.path(), features, 32, 32);
    // mke2fs -d writes linear directories; `e2fsck -D` indexes them (exit 1: "changed").
    let st = std::process::Command::new("e2fsck")
        .args(["-fyD"])
        .arg(&img)
        .output()
        .expect("oracle `e2fsck` (e2fsprogs) is required for this test");
    assert!(
        st.status.code().is_some_and(|c| c <= 1),
        "e2fsck -fyD: {st:?}"
    );
    let stat = run("debugfs", &["-R", "stat /h", img.to_str().unwrap()]);
    assert!(
        stat.contains("Flags: 0x81000"),
        "/h is not an htree: {stat}"
    );
    let blocks = blocks_of(&img, "/h");
    assert!(blocks.len() > 4, "{blocks:?}");
    let mut d = std::fs::read(&img).unwrap();
    let block = |d: &[u8], b: usize| d[b * BS..(b + 1) * BS].to_vec();
    // Leaves: blocks whose first entry is one of the files (`debugfs blocks` also lists the
    // index root, whose first entry is ".", and any extent tree block).
    let leaves: Vec<usize> = blocks
        .iter()
        .copied()
        .filter(|&b| {
            let x = block(&d, b);
            x[0..4] != [0; 4] && x[6] == 5 && x[8] == b'f'
        })
        .collect();
    assert!(leaves.len() >= 2, "{leaves:?} of {blocks:?}");
    // The asked name: the first entry of the last leaf; an earlier leaf's first entry is
    // renamed to it.
    let asked = String::from_utf8(block(&d, leaves[leaves.len() - 1])[8..13].to_vec()).unwrap();
    let early = leaves[0];
    let victim = String::from_utf8(block(&d, early)[8..13].to_vec()).unwrap();
    assert_ne!(victim, asked);
    d[early * BS + 8..early * BS + 13].copy_from_slice(asked.as_bytes());
    std::fs::write(&img, &d).unwrap();
    let report = e2fsck(&img);
    if features == "metadata_csum" {
        assert!(report.contains("checksum"), "{features}: e2fsck: {report}");
    } else {
        assert!(
            report.contains("HTREE") || report.contains("Duplicate"),
            "{features}: e2fsck: {report}"
        );
    }
    match cat(d, &format!("/h/{asked}")) {
        Ok(b) => assert_eq!(
            String::from_utf8_lossy(&b),
            asked,
            "{features}: read {victim}'s bytes for {asked}"
        ),
        Err(e) => assert_eq!(e.code(), "guest.fs.ext4_corrupt", "{features}: {e}"),
    }
}

#[test]
fn odd_inode_sizes_are_left_to_the_crate_without_a_panic() {
    // s_inode_size 129..=255 is no size mkfs makes (the kernel wants a power of two); the
    // inode walk (which `ls -R` uses for identities) must refuse it, not slice an inode's
    // checksum fields past its end. The superblock checksum is fixed so the crate loads it.
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let img = mkfs(dir.path(), "metadata_csum", 32, 32);
    let clean = std::fs::read(&img).unwrap();
    for size in [129u16, 130, 131, 200, 255] {
        let mut d = clean.clone();
        d[1024 + 0x58..1024 + 0x5A].copy_from_slice(&size.to_le_bytes());
        fix_sb_csum(&mut d);
        let r = std::panic::catch_unwind(move || {
            let image: Arc<dyn vhdforge_core::DiskImage> =
                Arc::from(vhdforge_core::open_bytes(d).unwrap());
            let Ok(fs) = fs::open(Volume::whole(image)) else {
                return;
            };
            let _ = fs.file_id_resolved(b"/small");
            let _ = fs.open(b"/small").map(|mut f| f.read(&mut [0u8; 64]));
        });
        assert!(r.is_ok(), "s_inode_size {size}: panicked");
    }
}
