//! Red team r3: the Linux preflight's `sshd_config` reader on a hostile guest.
//!
//! Each file is read up to 1 MiB and at most 128 files through `Include`, but every
//! directive kept its own copy of its file's path beside its text: an `sshd_config` that
//! includes itself and then holds half a million one-letter lines became 128 × 512 Ki
//! directives, several GiB, from 128 MiB of text. The whole preflight must stay under the
//! product's 256 MiB.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use fixtures::linux_tree::{build_disk, put, write, Distro, Layout};
use vhdforge_core::preflight::{run, OsChoice};
use vhdforge_core::OpenOptions;

/// Counts live heap bytes and their high-water mark; refuses to go past [`HARD_LIMIT`] so
/// that the hole, when present, fails this test (an allocation failure aborts it) instead
/// of exhausting the machine.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
const HARD_LIMIT: usize = 1 << 30;
const BUDGET: usize = 256 << 20;

// SAFETY: forwards to the system allocator; only counts sizes (and refuses past the limit,
// which the allocation contract allows: null means failure).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        if LIVE.load(Ordering::Relaxed) + layout.size() > HARD_LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_self_including_sshd_config_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let tree = write(dir.path(), Distro::Debian12);
    // Eight self-Includes, then one-letter keyword lines up to the 1 MiB read limit.
    let mut cfg = "Include /etc/ssh/sshd_config\n".repeat(8);
    cfg.push_str("PasswordAuthentication no\n");
    while cfg.len() < (1 << 20) - 2 {
        cfg.push_str("a\n");
    }
    put(&tree.root, "etc/ssh/sshd_config", &cfg);
    let disk = build_disk(dir.path(), &tree, Layout::default());

    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let report = run(&disk, &OpenOptions::default(), OsChoice::Auto).unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - base;
    assert!(
        peak < BUDGET,
        "preflight allocated {} MiB at its peak",
        peak >> 20
    );
    // The cut is said, at the place it happened.
    let cut = report
        .findings
        .iter()
        .find(|f| f.message.contains("SSH server's configuration"))
        .unwrap_or_else(|| panic!("no finding says the configuration was cut: {report:#?}"));
    assert_eq!(cut.code.as_str(), "guest.linux.unreadable");
    assert!(
        cut.evidence
            .as_deref()
            .is_some_and(|e| e.contains("/etc/ssh/sshd_config")),
        "{cut:?}"
    );
}

/// One finding per offending line, without bound: a `/etc/modprobe.d` file repeating
/// `blacklist udf` to its 1 MiB gave 75 000 findings (about 40 MiB), and the directory may
/// hold 4096 such files. The first findings of a code are kept, then one says how many more.
#[test]
fn findings_of_one_code_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let tree = write(dir.path(), Distro::Debian12);
    let line = "blacklist udf\n";
    put(
        &tree.root,
        "etc/modprobe.d/cis.conf",
        &line.repeat((1 << 20) / line.len()),
    );
    let disk = build_disk(dir.path(), &tree, Layout::default());
    let report = run(&disk, &OpenOptions::default(), OsChoice::Auto).unwrap();
    let udf: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.code.as_str() == "guest.linux.udf_disabled")
        .collect();
    assert!(!udf.is_empty(), "the udf line is still reported");
    assert!(udf.len() <= 33, "{} udf findings", udf.len());
    let more = udf.last().unwrap();
    let n = (1 << 20) / line.len() - 32;
    assert!(
        more.message.contains(&format!("{n} more finding(s)")),
        "{}",
        more.message
    );
}
