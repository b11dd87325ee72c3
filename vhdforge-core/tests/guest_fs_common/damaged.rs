//! The harness of the damaged-file-system tests (`guest_fs_*_damaged.rs`): a counting
//! global allocator, a bounded walk of everything a damaged volume shows, and the check
//! that one damaged image was walked without a panic, within the allocation budget and in
//! bounded time. A test binary that includes this module counts every allocation it makes.
#![allow(dead_code)] // each test binary uses part of it

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vhdforge_core::guest::fs::{self, FileType, Volume};
use vhdforge_core::DiskImage;

/// Counts live heap bytes and their high-water mark.
pub struct Counting;
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

pub const MIB: usize = 1 << 20;
/// Most a walk of one damaged image may have allocated at once, over what was live before.
pub const ALLOC_BUDGET: usize = 64 * MIB;
/// Longest a walk of one damaged image may take.
pub const WALK_LIMIT: Duration = Duration::from_secs(10);

/// Open `image` as a file system and walk everything it shows: list every directory, stat
/// every symlink's target, read every regular file (at most 1 MiB each). A damaged
/// directory can name an ancestor, so the walk visits at most `limit` entries, as any
/// consumer must bound it. Returns how many entries it visited (0 when the volume did not
/// open); errors end that branch of the walk.
pub fn walk(image: Arc<dyn DiskImage>, limit: usize) -> usize {
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
        if seen > limit {
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
                    todo.len() < 2 * limit
                });
            }
            FileType::Regular => {
                if let Ok(mut f) = fs.open(&path) {
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

/// Run `walk` on one damaged image (`case` names it in a failure): it must not panic, its
/// peak allocation must stay under [`ALLOC_BUDGET`] and it must end within [`WALK_LIMIT`].
pub fn check(case: &str, walk: impl FnOnce() -> usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let start = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(walk));
    let elapsed = start.elapsed();
    assert!(r.is_ok(), "{case}: the reader panicked");
    let used = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert!(used < ALLOC_BUDGET, "{case}: peak allocation {used} bytes");
    assert!(elapsed < WALK_LIMIT, "{case}: walk took {elapsed:?}");
}

/// Call `check(copy, case)` on copies of `img` cut to 25, 50 and 75 % of its length (a
/// partial copy or download), on a 512-byte boundary; the copy is removed afterwards.
pub fn truncated_copies(img: &std::path::Path, mut check: impl FnMut(&std::path::Path, &str)) {
    let cut = img.with_extension("cut");
    let len = std::fs::metadata(img).unwrap().len();
    for pct in [25u64, 50, 75] {
        std::fs::copy(img, &cut).unwrap();
        let keep = len * pct / 100 / 512 * 512;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&cut)
            .unwrap()
            .set_len(keep)
            .unwrap();
        check(&cut, &format!("truncated to {pct}%"));
    }
    std::fs::remove_file(&cut).unwrap();
}
