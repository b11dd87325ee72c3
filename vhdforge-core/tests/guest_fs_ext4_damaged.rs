//! Damaged ext file systems never panic, never allocate without bound and never hang the
//! reader: an ext4 image made by `mkfs.ext4 -d` (journal on, metadata checksums off so the
//! damage reaches the parsers instead of stopping at a checksum) is mutated — every 32-bit
//! superblock field set to extreme values, then random bytes of its metadata — and each
//! result is opened and walked completely through the `FileSystem` trait. Errors are fine;
//! a panic, a peak allocation over 64 MiB, or a walk that does not end is a failure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vhdforge_core::guest::fs::{self, FileType, Volume};

/// Counts live heap bytes and their high-water mark.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MIB: usize = 1 << 20;
/// Allocation allowed on top of the image bytes while opening and walking one file system.
const ALLOC_BUDGET: usize = 64 * MIB;

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

/// Open and walk everything, reading every file to its end (at most 1 MiB each, the caller
/// streams). Returns how many entries were seen; errors end the walk.
fn walk(data: Vec<u8>) -> usize {
    let image: Arc<dyn vhdforge_core::DiskImage> =
        Arc::from(vhdforge_core::open_bytes(data).unwrap());
    let Ok(fs) = fs::open(Volume::whole(image)) else {
        return 0;
    };
    let mut seen = 0;
    let mut todo = vec![b"/".to_vec()];
    // A damaged directory can name an ancestor: cap the walk, as any consumer must.
    while let Some(path) = todo.pop() {
        seen += 1;
        if seen > 5000 {
            break;
        }
        let Ok(st) = fs.lstat(&path) else { continue };
        match st.file_type {
            FileType::Directory => {
                let _ = fs.list(&path, &mut |e| {
                    let mut child = if path == b"/" {
                        Vec::new()
                    } else {
                        path.clone()
                    };
                    child.push(b'/');
                    child.extend_from_slice(&e.name);
                    todo.push(child);
                    todo.len() < 5000
                });
            }
            FileType::Regular => {
                if let Ok(mut f) = fs.open(&path) {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut total = 0;
                    while total < MIB {
                        match f.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => total += n,
                        }
                    }
                }
            }
            FileType::Symlink => {
                let _ = fs.stat(&path);
            }
            _ => {}
        }
    }
    seen
}

/// Run one damaged image; fail on panic, allocation over budget, or a slow walk.
fn check(case: &str, data: Vec<u8>) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let start = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| walk(data)));
    let elapsed = start.elapsed();
    assert!(r.is_ok(), "{case}: the reader panicked");
    let used = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert!(used < ALLOC_BUDGET, "{case}: peak allocation {used} bytes");
    assert!(
        elapsed < Duration::from_secs(10),
        "{case}: walk took {elapsed:?}"
    );
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
