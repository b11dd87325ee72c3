//! Read-only mappings of file ranges, guarded against `SIGBUS` (Linux), for the uploader's
//! hot path: the bytes go from the page cache to the socket without a copy into our memory
//! (`docs/upload-io.md`).
//!
//! A mapped file that another process truncates while we read it makes every access to the
//! lost pages raise `SIGBUS`, which by default kills the process. The guard is a process-wide
//! handler, installed once on first use, that knows our live mappings through a fixed table
//! of atomics ([`SLOTS`]): for a fault inside one of them it maps anonymous zero pages over
//! the rest of that mapping, raises the mapping's loss flag and returns, so the access
//! retries and reads zeros; the uploader sees the flag and fails instead of sending them.
//! Faults anywhere else go to the handler that was there before (Rust's own stack-overflow
//! handler, or the default action), so nothing else changes behaviour.
//!
//! Elsewhere [`Mapping::map`] always answers `None` and callers read with `pread`.

use std::fs::File;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Raised (for good) when any mapping made with it lost pages: the file shrank (or, on some
/// file systems, had a hole punched) under it, or the kernel could not read a page in (an
/// I/O error also arrives as `SIGBUS`), and the zeros now there are not the file's.
#[derive(Debug, Default)]
pub struct LossFlag(AtomicBool);

impl LossFlag {
    /// True once a mapping made with this flag lost pages.
    pub fn is_raised(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Raise it as the guard does, for tests of what the uploader then reports.
    #[cfg(all(test, target_os = "linux"))]
    pub(crate) fn raise_for_test(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

#[cfg(target_os = "linux")]
pub use linux::Mapping;

#[cfg(not(target_os = "linux"))]
pub use other::Mapping;

#[cfg(target_os = "linux")]
mod linux {
    use super::{Arc, File, LossFlag};
    use std::io;
    use std::os::unix::io::AsRawFd;
    use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
    use std::sync::OnceLock;

    /// Live mappings the guard knows at most. A mapping that finds no free slot is not made
    /// (the caller reads with `pread`): an unguarded mapping could kill the process.
    const SLOTS_MAX: usize = 256;

    /// One registered mapping: `[start, end)` of our address space and the flag to raise.
    /// `start == 0` means free. Only atomics: the signal handler reads them without locks.
    pub(super) struct Slot {
        /// Odd while the slot is being filled or emptied; bumped before and after each. The
        /// handler reads `start` and `end` between two equal even values, so it never
        /// pairs one mapping's start with the next one's end (a slot emptied and filled
        /// again between its two loads would give a range over memory that is not ours).
        seq: AtomicUsize,
        /// 0 while free or being filled/emptied; set last when registering, cleared first
        /// when unregistering.
        start: AtomicUsize,
        end: AtomicUsize,
        flag: AtomicPtr<LossFlag>,
        /// Owned by a mapping (set before `start`, cleared after).
        pub(super) taken: std::sync::atomic::AtomicBool,
    }

    #[allow(clippy::declare_interior_mutable_const)] // only used to build the array below
    const FREE: Slot = Slot {
        seq: AtomicUsize::new(0),
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        flag: AtomicPtr::new(std::ptr::null_mut()),
        taken: std::sync::atomic::AtomicBool::new(false),
    };

    pub(super) static SLOTS: [Slot; SLOTS_MAX] = [FREE; SLOTS_MAX];

    /// The `SIGBUS` action in place before ours, to pass foreign faults on to.
    struct Previous(libc::sigaction);
    // SAFETY: a plain C struct of function pointers and flags, written once before the
    // handler is installed and only read afterwards.
    unsafe impl Sync for Previous {}
    unsafe impl Send for Previous {}

    static PREVIOUS: OnceLock<Previous> = OnceLock::new();
    /// Whether the handler is in place (false: it could not be installed; never map).
    static INSTALLED: OnceLock<bool> = OnceLock::new();

    fn page_size() -> usize {
        static PAGE: OnceLock<usize> = OnceLock::new();
        // SAFETY: sysconf takes no pointers.
        *PAGE.get_or_init(|| {
            usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
                .ok()
                .filter(|p| p.is_power_of_two())
                .unwrap_or(4096)
        })
    }

    /// Install the handler once; true when it is in place.
    fn install() -> bool {
        *INSTALLED.get_or_init(|| {
            // SAFETY: sigaction with a null new action only reads the current one into `old`.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &raw mut old) } != 0 {
                return false;
            }
            // Known before ours runs, so a foreign fault always finds where to go.
            let _ = PREVIOUS.set(Previous(old));
            // SAFETY: a zeroed sigaction is a valid empty one; we fill handler, mask, flags.
            let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
            new.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            // SAFETY: sa_mask is ours to initialise; sigaction copies `new`.
            unsafe {
                libc::sigemptyset(&raw mut new.sa_mask);
                libc::sigaction(libc::SIGBUS, &raw const new, std::ptr::null_mut()) == 0
            }
        })
    }

    /// The `SIGBUS` handler. Async-signal-safe: atomics, `mmap` and `sigaction` only.
    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
        // A SIGBUS sent by a process (`kill`, `sigqueue`: si_code <= 0) has no fault
        // address; the field read as one holds the sender's pid and uid (or what a sender
        // chose), so it must never pick one of our mappings to zero.
        let addr = if info.is_null() || unsafe { (*info).si_code } <= 0 {
            0
        } else {
            unsafe { (*info).si_addr() as usize }
        };
        if addr != 0 && rescue(addr) {
            return;
        }
        pass_on(sig, info, ctx);
    }

    /// Map zeros over `addr`'s page and the rest of its mapping when `addr` lies in one of
    /// ours; true when the faulting access can now retry.
    fn rescue(addr: usize) -> bool {
        let Some((slot, end)) = find(addr) else {
            return false;
        };
        {
            let page = addr & !(page_size() - 1);
            // Everything past a truncation is gone, so the rest of the mapping is replaced
            // in one call rather than one fault per page.
            // SAFETY: [page, end) lies inside a mapping we own and keep until its slot is
            // freed; MAP_FIXED replaces exactly those pages with private zero pages.
            let r = unsafe {
                libc::mmap(
                    page as *mut libc::c_void,
                    end - page,
                    libc::PROT_READ,
                    libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if r == libc::MAP_FAILED {
                return false;
            }
            let flag = slot.flag.load(Ordering::Acquire);
            if !flag.is_null() {
                // SAFETY: the flag is kept alive by the mapping that registered this slot,
                // which unregisters (clearing `start`) before dropping it.
                unsafe { (*flag).0.store(true, Ordering::Release) };
            }
            true
        }
    }

    /// The registered mapping `addr` lies in: its slot and end. A slot changing while it is
    /// read (its sequence moved) is not the faulting mapping's — a mapping being accessed
    /// is not being dropped — so it is skipped.
    pub(super) fn find(addr: usize) -> Option<(&'static Slot, usize)> {
        for (i, slot) in SLOTS.iter().enumerate() {
            let seq = slot.seq.load(Ordering::Acquire);
            if seq % 2 == 1 {
                continue;
            }
            let start = slot.start.load(Ordering::Acquire);
            if start == 0 || addr < start {
                continue;
            }
            #[cfg(test)]
            super::tests::between_loads(i);
            #[cfg(not(test))]
            let _ = i;
            let end = slot.end.load(Ordering::Acquire);
            std::sync::atomic::fence(Ordering::Acquire);
            if slot.seq.load(Ordering::Relaxed) != seq || addr >= end {
                continue;
            }
            return Some((slot, end));
        }
        None
    }

    /// True while `SIGBUS` is still handled by [`on_sigbus`]. Whoever handles a foreign
    /// `SIGBUS` puts the default action back (Rust's runtime does, and so does
    /// [`pass_on`]): for a fault the process then dies, but a `kill -BUS` it survives, and
    /// a mapping made after that would be unguarded — its truncation would kill us.
    fn guarding() -> bool {
        // SAFETY: sigaction with a null new action only reads the current one.
        let mut cur: libc::sigaction = unsafe { std::mem::zeroed() };
        let read = unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &raw mut cur) };
        read == 0 && cur.sa_sigaction == on_sigbus as *const () as libc::sighandler_t
    }

    /// A fault that is not ours: what would have happened without us.
    fn pass_on(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        let prev = PREVIOUS.get().map(|p| p.0);
        match prev {
            Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
                if p.sa_flags & libc::SA_SIGINFO != 0 {
                    // SAFETY: the previous handler was installed with SA_SIGINFO, so it has
                    // this signature.
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        unsafe { std::mem::transmute(p.sa_sigaction) };
                    f(sig, info, ctx);
                } else {
                    // SAFETY: as above, a plain handler.
                    let f: extern "C" fn(libc::c_int) =
                        unsafe { std::mem::transmute(p.sa_sigaction) };
                    f(sig);
                }
            }
            _ => {
                // Back to the default action and return: the faulting access runs again and
                // the fault ends the process as it would have without us (ignoring a
                // synchronous SIGBUS would only loop).
                // SAFETY: a zeroed sigaction with SIG_DFL (0) is the default action.
                unsafe {
                    let mut dfl: libc::sigaction = std::mem::zeroed();
                    dfl.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(sig, &raw const dfl, std::ptr::null_mut());
                }
            }
        }
    }

    /// Publish `[start, end)` and its flag in slot `i` (taken by the caller).
    pub(super) fn register(i: usize, start: usize, end: usize, flag: *const LossFlag) {
        let s = &SLOTS[i];
        s.seq.fetch_add(1, Ordering::AcqRel);
        s.flag.store(flag.cast_mut(), Ordering::Release);
        s.end.store(end, Ordering::Release);
        s.start.store(start, Ordering::Release);
        s.seq.fetch_add(1, Ordering::AcqRel);
    }

    /// Withdraw slot `i`'s range (it stays taken until its caller frees it).
    pub(super) fn unregister(i: usize) {
        let s = &SLOTS[i];
        s.seq.fetch_add(1, Ordering::AcqRel);
        s.start.store(0, Ordering::Release);
        s.end.store(0, Ordering::Release);
        s.flag.store(std::ptr::null_mut(), Ordering::Release);
        s.seq.fetch_add(1, Ordering::AcqRel);
    }

    /// A read-only mapping of a file range, registered with the guard while it lives.
    pub struct Mapping {
        /// Page-aligned base and length of the whole mapping.
        base: *mut libc::c_void,
        map_len: usize,
        /// Where the requested bytes start inside it, and how many.
        skip: usize,
        len: usize,
        slot: usize,
        flag: Arc<LossFlag>,
    }

    // SAFETY: the mapping is read-only memory owned by this value; any thread may read it
    // and the one dropping it unmaps it.
    unsafe impl Send for Mapping {}
    unsafe impl Sync for Mapping {}

    impl std::fmt::Debug for Mapping {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Mapping({} bytes)", self.len)
        }
    }

    impl Mapping {
        /// Map `len` bytes of `file` at `offset` read-only, pages faulted in up front.
        /// `Ok(None)` when the guard cannot cover it (no handler or no longer ours, every
        /// slot taken, empty range): the caller reads with `pread` instead. A fault on pages the file lost
        /// later reads zeros and raises `flag`.
        pub fn map(
            file: &File,
            offset: u64,
            len: usize,
            flag: &Arc<LossFlag>,
        ) -> io::Result<Option<Mapping>> {
            if len == 0 || !install() || !guarding() {
                return Ok(None);
            }
            let page = page_size();
            let skip = usize::try_from(offset % page as u64).unwrap_or(0);
            let (Ok(at), Some(map_len)) = (
                libc::off_t::try_from(offset - skip as u64),
                len.checked_add(skip),
            ) else {
                return Ok(None);
            };
            let Some(slot) = SLOTS.iter().position(|s| {
                s.taken
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            }) else {
                return Ok(None);
            };
            // SAFETY: a fresh read-only shared mapping of a descriptor we hold; the kernel
            // picks the address. No MAP_POPULATE: when a page cannot be read in (an I/O
            // error), the kernel's populate loop retries it for ever inside this call (seen
            // on Linux 6.18), where a plain fault raises SIGBUS, which the guard turns into a
            // clean error (docs/upload-io.md).
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    file.as_raw_fd(),
                    at,
                )
            };
            if base == libc::MAP_FAILED {
                let e = io::Error::last_os_error();
                SLOTS[slot].taken.store(false, Ordering::Release);
                return Err(e);
            }
            register(
                slot,
                base as usize,
                base as usize + map_len,
                Arc::as_ptr(flag),
            );
            Ok(Some(Mapping {
                base,
                map_len,
                skip,
                len,
                slot,
                flag: flag.clone(),
            }))
        }

        /// True when this mapping (or another made with its flag) lost pages.
        pub fn lost(&self) -> bool {
            self.flag.is_raised()
        }
    }

    impl AsRef<[u8]> for Mapping {
        fn as_ref(&self) -> &[u8] {
            // SAFETY: [base + skip, base + skip + len) is mapped readable for our lifetime;
            // pages the file loses are replaced by zeros (never unmapped) by the guard.
            unsafe { std::slice::from_raw_parts(self.base.cast::<u8>().add(self.skip), self.len) }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // Unregister before unmapping: the address range may be reused at once.
            unregister(self.slot);
            let s = &SLOTS[self.slot];
            // SAFETY: exactly the mapping made in `map`, unmapped once.
            unsafe { libc::munmap(self.base, self.map_len) };
            s.taken.store(false, Ordering::Release);
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod other {
    use super::{Arc, File, LossFlag};
    use std::io;

    /// No mappings here: the uploader reads with `pread`.
    #[derive(Debug)]
    pub struct Mapping(std::convert::Infallible);

    impl Mapping {
        /// Always `None`: read with `pread`.
        #[allow(clippy::unnecessary_wraps)] // the Linux version's signature
        pub fn map(
            _file: &File,
            _offset: u64,
            _len: usize,
            _flag: &Arc<LossFlag>,
        ) -> io::Result<Option<Mapping>> {
            Ok(None)
        }

        /// Never made, so never lost.
        pub fn lost(&self) -> bool {
            match self.0 {}
        }
    }

    impl AsRef<[u8]> for Mapping {
        fn as_ref(&self) -> &[u8] {
            match self.0 {}
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::io::AsRawFd;

    /// The slot table is process-wide: the test that fills it must not starve the other.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_truncated_mapping_reads_zeros_and_raises_the_flag_instead_of_killing_us() {
        let _one = ONE_AT_A_TIME.lock();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("src.raw");
        let mut f = File::create(&p).unwrap();
        f.write_all(&vec![0xA5u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let file = File::open(&p).unwrap();
        let flag = Arc::new(LossFlag::default());
        // An unaligned offset: the mapping starts on the page before it.
        let m = Mapping::map(&file, 1000, 600_000, &flag).unwrap().unwrap();
        assert!(m.as_ref().iter().all(|&b| b == 0xA5));
        assert!(!m.lost());
        // Another writer cuts the file to 64 KiB: everything past it is gone.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(64 << 10)
            .unwrap();
        let bytes = m.as_ref();
        // Still the file's bytes before the cut, zeros after; and we are still alive.
        let cut = (64 << 10) - 1000;
        assert!(bytes[..cut].iter().all(|&b| b == 0xA5));
        assert!(
            bytes[cut..].iter().all(|&b| b == 0),
            "lost pages read zeros"
        );
        assert!(m.lost(), "the loss is flagged");
        // A mapping made with another flag is not blamed.
        let other = Arc::new(LossFlag::default());
        let m2 = Mapping::map(&file, 0, 4096, &other).unwrap().unwrap();
        assert!(m2.as_ref().iter().all(|&b| b == 0xA5));
        assert!(!m2.lost());
        drop((m, m2));
    }

    /// Run `test` (this module's test of that name) alone in a child process, where it may
    /// die of a signal, and return how the child ended (bounded: 60 s).
    fn in_child(test: &str) -> std::process::ExitStatus {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("platform::mapped::tests::{test}"),
                "--test-threads=1",
                "--nocapture",
            ])
            .env("VHDFORGE_MAPPED_CHILD", test)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{test}: the child hung (a SIGBUS looping in the handler?)");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn is_child(test: &str) -> bool {
        std::env::var_os("VHDFORGE_MAPPED_CHILD").is_some_and(|v| v == test)
    }

    /// A file of `len` bytes of 0xA5 in `dir`, opened for reading.
    fn source(dir: &std::path::Path, len: usize) -> (std::path::PathBuf, File) {
        let p = dir.join("src.raw");
        std::fs::write(&p, vec![0xA5u8; len]).unwrap();
        let f = File::open(&p).unwrap();
        (p, f)
    }

    fn cut(p: &std::path::Path, to: u64) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(to)
            .unwrap();
    }

    #[test]
    fn a_fault_outside_our_mappings_still_kills_with_sigbus() {
        use std::os::unix::process::ExitStatusExt;
        const ME: &str = "a_fault_outside_our_mappings_still_kills_with_sigbus";
        if !is_child(ME) {
            let st = in_child(ME);
            assert_eq!(st.signal(), Some(libc::SIGBUS), "{st:?}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (p, file) = source(dir.path(), 1 << 20);
        // The guard is in place (and one mapping of ours is live)...
        let flag = Arc::new(LossFlag::default());
        let ours = Mapping::map(&file, 0, 1 << 20, &flag).unwrap().unwrap();
        // ...but this mapping is not ours: its lost page must fault as without the guard.
        // SAFETY: a fresh read-only shared mapping of a descriptor we hold.
        let theirs = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                1 << 20,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(theirs, libc::MAP_FAILED);
        cut(&p, 4096);
        // SAFETY: inside the mapping; the page past the end raises SIGBUS, which must kill.
        let b = unsafe { std::ptr::read_volatile(theirs.cast::<u8>().add(512 << 10)) };
        eprintln!("read {b} from a lost page and lived: {}", ours.lost());
        std::process::exit(0);
    }

    #[test]
    fn a_sigbus_sent_by_another_process_does_not_leave_mappings_unguarded() {
        use std::os::unix::process::ExitStatusExt;
        const ME: &str = "a_sigbus_sent_by_another_process_does_not_leave_mappings_unguarded";
        if !is_child(ME) {
            let st = in_child(ME);
            assert!(st.success(), "{st:?} (signal {:?})", st.signal());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (p, file) = source(dir.path(), 1 << 20);
        let flag = Arc::new(LossFlag::default());
        drop(Mapping::map(&file, 0, 4096, &flag).unwrap().unwrap());
        // `kill -BUS` (no fault address): whoever handles it last puts the default action
        // back (Rust's runtime does, for any SIGBUS that is not a stack overflow)...
        // SAFETY: raising a signal in our own thread.
        unsafe { libc::raise(libc::SIGBUS) };
        // ...so a mapping made now is either not made (read with pread) or still guarded:
        // its truncation must not kill the upload.
        if let Some(m) = Mapping::map(&file, 0, 1 << 20, &flag).unwrap() {
            cut(&p, 4096);
            assert!(m.as_ref()[(512 << 10)..].iter().all(|&b| b == 0));
            assert!(m.lost());
        }
        std::process::exit(0);
    }

    /// The slot whose next read by the handler finds it emptied and filled again between
    /// its `start` and `end` loads, and the range then registered there.
    static TEAR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);
    static TEAR_TO: [std::sync::atomic::AtomicUsize; 2] = [
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    ];

    /// Called by the handler's lookup between its loads of a slot's `start` and `end`.
    pub(super) fn between_loads(i: usize) {
        use std::sync::atomic::Ordering::SeqCst;
        if TEAR.compare_exchange(i, usize::MAX, SeqCst, SeqCst).is_ok() {
            // The mapping there is dropped and another one, elsewhere, takes its slot.
            linux::unregister(i);
            let (s, e) = (TEAR_TO[0].load(SeqCst), TEAR_TO[1].load(SeqCst));
            linux::register(i, s, e, std::ptr::null());
        }
    }

    #[test]
    fn a_slot_refilled_while_the_handler_reads_it_is_not_taken_for_the_faulting_mapping() {
        use std::sync::atomic::Ordering::SeqCst;
        let _one = ONE_AT_A_TIME.lock();
        // Two free slots, i < j, holding made-up ranges (the lookup only compares numbers):
        // N at 256 MiB in i, M at 512 MiB in j; the fault is in M.
        let take = || {
            linux::SLOTS
                .iter()
                .position(|s| {
                    s.taken
                        .compare_exchange(false, true, SeqCst, SeqCst)
                        .is_ok()
                })
                .unwrap()
        };
        let (i, j) = (take(), take());
        assert!(i < j);
        let (n, m, len) = (0x1000_0000usize, 0x2000_0000usize, 4 << 20);
        linux::register(i, n, n + len, std::ptr::null());
        linux::register(j, m, m + len, std::ptr::null());
        let addr = m + 100;
        assert_eq!(linux::find(addr).map(|(_, e)| e), Some(m + len));
        // While the handler is between N's start and end, N is dropped and P registered in
        // its slot at 384 MiB..768 MiB: N's start with P's end would cover M and far past
        // it (zeros mapped over memory that is not ours).
        TEAR_TO[0].store(0x1800_0000, SeqCst);
        TEAR_TO[1].store(0x3000_0000, SeqCst);
        TEAR.store(i, SeqCst);
        let found = linux::find(addr).map(|(s, e)| (std::ptr::from_ref(s), e));
        assert_eq!(
            TEAR.load(SeqCst),
            usize::MAX,
            "the slot was torn during the lookup"
        );
        // The slot that changed under the lookup is skipped: the answer is M's own range,
        // never N's start with P's end.
        assert_eq!(
            found,
            Some((std::ptr::from_ref(&linux::SLOTS[j]), m + len)),
            "slot {i} (torn) or {j} (M)"
        );
        for k in [i, j] {
            linux::unregister(k);
            linux::SLOTS[k].taken.store(false, SeqCst);
        }
    }

    #[test]
    fn slots_are_freed_on_drop_and_a_full_table_means_no_mapping() {
        let _one = ONE_AT_A_TIME.lock();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![1u8; 8192]).unwrap();
        let file = File::open(&p).unwrap();
        let flag = Arc::new(LossFlag::default());
        // Other tests may hold a few slots meanwhile: fill until the table says no.
        let mut held = Vec::new();
        while let Some(m) = Mapping::map(&file, 0, 8192, &flag).unwrap() {
            held.push(m);
            assert!(held.len() <= 256, "more mappings than slots");
        }
        assert!(held.len() >= 200, "{}", held.len());
        drop(held);
        let again = Mapping::map(&file, 4096, 4096, &flag).unwrap();
        assert_eq!(again.unwrap().as_ref(), &[1u8; 4096][..]);
        assert!(Mapping::map(&file, 0, 0, &flag).unwrap().is_none());
    }
}
