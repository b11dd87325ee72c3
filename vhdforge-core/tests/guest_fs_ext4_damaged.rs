//! Damaged ext file systems never panic, never allocate without bound and never hang the
//! reader: an ext4 image made by `mkfs.ext4 -d` (journal on, metadata checksums off so the
//! damage reaches the parsers instead of stopping at a checksum) is mutated — every 32-bit
//! superblock field set to extreme values, then random bytes of its metadata — and each
//! result is opened and walked completely through the `FileSystem` trait. Errors are fine;
//! a panic, a peak allocation over 64 MiB, or a walk that does not end is a failure.

#[path = "guest_fs_common/damaged.rs"]
mod damaged;

use damaged::MIB;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn mkfs(dir: &Path) -> Vec<u8> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
    for i in 0..40 {
        std::fs::write(tree.join(format!("a/file{i}")), vec![i as u8; i * 300]).unwrap();
    }
    std::fs::write(tree.join("a/b/c/big"), vec![7u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("../a/b/c/big", tree.join("a/link")).unwrap();
    std::os::unix::fs::symlink("x".repeat(200), tree.join("slow")).unwrap();
    let img = dir.join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 * MIB as u64)
        .unwrap();
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-O", "^metadata_csum", "-d"])
        .arg(&tree)
        .arg(&img)
        .status()
        .expect("oracle `mkfs.ext4` is required for this test; scripts/setup.sh installs it")
        .success();
    assert!(ok, "mkfs.ext4 failed");
    std::fs::read(&img).unwrap()
}

/// Open the image's bytes and walk everything (see `damaged::walk`); how many entries.
fn walk(data: Vec<u8>) -> usize {
    damaged::walk(Arc::from(vhdforge_core::open_bytes(data).unwrap()), 5000)
}

/// Run one damaged image; fail on panic, allocation over budget, or a slow walk.
fn check(case: &str, data: Vec<u8>) {
    damaged::check(case, || walk(data));
}

/// xorshift: reproducible damage.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn damaged_ext4_never_panics_allocates_without_bound_or_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let clean = mkfs(dir.path());
    // The intact image walks completely: the damage below is what makes the difference.
    assert!(walk(clean.clone()) > 45);

    // Every 32-bit superblock field (byte 1024 + 4k) to extreme values.
    for field in (0..0x200).step_by(4) {
        for v in [0u32, 1, 0x7FFF_FFFF, 0xFFFF_FFFF, 0x0001_0000] {
            let mut d = clean.clone();
            d[1024 + field..1024 + field + 4].copy_from_slice(&v.to_le_bytes());
            check(&format!("superblock +{field:#x} = {v:#x}"), d);
        }
    }

    // Fields that only together size an allocation: billions of block groups (one block
    // each), or a file system far larger than its volume.
    let combos: &[&[(usize, u32)]] = &[
        &[(0x04, 0xFFFF_FFFF), (0x20, 1)],
        &[(0x04, 0xFFFF_FFFF), (0x20, 8), (0x28, 8)],
        &[(0x04, 0x1000_0000), (0x20, 1), (0x18, 0)],
    ];
    for (i, combo) in combos.iter().enumerate() {
        let mut d = clean.clone();
        for &(field, v) in *combo {
            d[1024 + field..1024 + field + 4].copy_from_slice(&v.to_le_bytes());
        }
        check(&format!("superblock combination {i}"), d);
    }

    // The root directory's size raised to 16 TiB (i_size_high, inode 2 at its slot in the
    // first inode table): listing it must not walk four billion holes.
    let itable = u32::from_le_bytes(clean[4096 + 8..4096 + 12].try_into().unwrap()) as usize;
    let root_inode = itable * 4096 + 256;
    let mode = u16::from_le_bytes([clean[root_inode], clean[root_inode + 1]]);
    assert_eq!(
        mode & 0xF000,
        0x4000,
        "inode 2 is not where the test looks for it"
    );
    for size_high in [0x1u32, 0x1000, 0xFFFF_FFFF] {
        let mut d = clean.clone();
        d[root_inode + 0x6C..root_inode + 0x70].copy_from_slice(&size_high.to_le_bytes());
        check(&format!("root directory size_high {size_high:#x}"), d);
    }

    // The image cut short (a partial copy or download): a quarter, half, three quarters.
    for pct in [25, 50, 75] {
        let keep = clean.len() * pct / 100;
        check(&format!("truncated to {pct}%"), clean[..keep].to_vec());
    }

    // Random bytes of the metadata: where the clean image is not zero in its first 1 MiB
    // (superblock, descriptors, bitmaps, inode table, directories, extent nodes, journal head).
    let live: Vec<usize> = (0..MIB).filter(|&i| clean[i] != 0).collect();
    let mut rng = Rng(0x5EED_1E55_0DD5_EED5);
    for round in 0..400 {
        let mut d = clean.clone();
        let n = 1 + (rng.next() % 8) as usize;
        for _ in 0..n {
            let at = live[(rng.next() % live.len() as u64) as usize];
            d[at] = rng.next() as u8;
        }
        check(&format!("random round {round}"), d);
    }
}
