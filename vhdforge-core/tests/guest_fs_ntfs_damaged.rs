//! Damaged NTFS never panics, never allocates without bound and never hangs the reader. A
//! small volume made by `mkntfs` and filled through ntfs-3g (a directory with INDX blocks,
//! nested directories, resident and non-resident files, a file with an attribute list, a
//! symlink) is mutated — every boot-sector field and every FILE record header word of the
//! metadata and first user records set to extreme values, the headers of its INDX blocks
//! likewise, then random bytes over the MFT and the index blocks — and each result is opened
//! and walked completely through the `FileSystem` trait. Errors are fine; a panic, a peak
//! allocation over 64 MiB, or a walk over 10 seconds is a failure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vhdforge_core::guest::fs::{self, FileType, Volume};
use vhdforge_core::OpenOptions;

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
const ALLOC_BUDGET: usize = 64 * MIB;
const WALK_LIMIT: Duration = Duration::from_secs(10);

fn run(program: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("oracle `{program}` is required for this test and could not be run ({e}); scripts/setup.sh installs it")
        });
    assert!(
        out.status.success(),
        "`{program}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mkfs(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(12 * MIB as u64)
        .unwrap();
    run(
        "mkntfs",
        &["-F".as_ref(), "-q".as_ref(), "-f".as_ref(), img.as_os_str()],
    );
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run("ntfs-3g", &[img.as_os_str(), mnt.as_os_str()]);
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
    let _ = Command::new("umount").arg(&mnt).status();
    filled.unwrap();
    img
}

/// Open and walk everything, reading every file (at most 1 MiB each). Returns how many
/// entries were seen.
fn walk(img: &Path) -> usize {
    let image: Arc<dyn vhdforge_core::DiskImage> =
        Arc::from(vhdforge_core::open(img, &OpenOptions::default()).unwrap());
    let Ok(fs) = fs::open(Volume::whole(image)) else {
        return 0;
    };
    let start = Instant::now();
    let mut seen = 0;
    let mut todo = vec![b"/".to_vec()];
    let mut buf = vec![0u8; 64 << 10];
    while let Some(path) = todo.pop() {
        assert!(start.elapsed() < WALK_LIMIT, "walk did not end");
        seen += 1;
        if seen > 10_000 {
            break;
        }
        let Ok(st) = fs.lstat(&path) else { continue };
        match st.file_type {
            FileType::Directory => {
                let _ = fs.list(&path, &mut |e| {
                    let mut c = if path == b"/" {
                        Vec::new()
                    } else {
                        path.clone()
                    };
                    c.push(b'/');
                    c.extend_from_slice(&e.name);
                    todo.push(c);
                    todo.len() < 20_000
                });
            }
            FileType::Regular => {
                if let Ok(mut f) = fs.open(&path) {
                    let mut total = 0;
                    while let Ok(n) = f.read(&mut buf) {
                        total += n;
                        if n == 0 || total >= MIB {
                            break;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    seen
}

fn check(img: &Path, what: &str) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let t = Instant::now();
    walk(img);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert!(peak < ALLOC_BUDGET, "{what}: peak allocation {peak} bytes");
    assert!(t.elapsed() < WALK_LIMIT, "{what}: took {:?}", t.elapsed());
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
