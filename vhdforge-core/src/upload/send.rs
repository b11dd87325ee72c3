//! The send phase: a reader thread reads each planned piece once (mapped from the source
//! file when it is one stored range of one regular file, else with `pread`; see
//! `docs/upload-io.md` for the `SIGBUS` guard and the `upload.source_changed` checks),
//! tests its pages for zero and coalesces the non-zero ones into Put Page requests as it
//! goes (the exact plan is made here, not in an earlier pass over the data: issue 16),
//! fills bounded buffers in plan order (CRC-64 or MD5 per request, the whole-stream MD5
//! when asked; all computed a cache-sized step at a time right after the step is read, see
//! `STEP`); up to N Put Pages in flight, retried with backoff, N cut on throttling (AIMD);
//! a piece is recorded in the journal once every request carrying its bytes completed;
//! then the footer page, last (docs/azure-page-blob.md).

use super::journal::{self, Journal};
use super::plan::{normalize, subtract, StreamCoalescer, PAGE};
use super::{Cancel, Progress, UploadOptions};
use crate::azure::FixedVhdLayout;
use crate::error::{Error, ErrorKind, Result};
use crate::format::vhd::footer::FOOTER_SIZE;
use crate::image::{layer_file, Allocation, DiskImage, Extent};
use crate::io::usize_from;
use crate::platform::mapped::{LossFlag, Mapping};
use crate::storage::blob::{crc64_header, md5_header};
use crate::storage::{BlobClient, Class, Failure, Integrity};
use base64::Engine as _;
use bytes::Bytes;
use md5::Digest;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Zero source for whole-stream MD5 over gaps.
static ZEROS: [u8; 64 << 10] = [0u8; 64 << 10];

/// `bytes` in MiB, to scale a timeout with a request's size.
// Precision beyond 2^52 bytes does not matter to a timeout (requests are at most 4 MiB).
#[allow(clippy::cast_precision_loss)]
fn mib_f64(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// Additive-increase / multiplicative-decrease limit on requests in flight.
#[derive(Debug)]
struct Aimd {
    max: f64,
    /// The current limit, and when it was last cut (`None`: never, so the first 503 cuts).
    state: Mutex<(f64, Option<Instant>)>,
}

impl Aimd {
    fn new(max: usize) -> Self {
        // A limit is at most MAX_CONCURRENCY; saturating keeps the conversion exact.
        let max = f64::from(u32::try_from(max.max(1)).unwrap_or(u32::MAX));
        Aimd {
            max,
            state: Mutex::new((max, None)),
        }
    }
    // The limit stays within [1, max] (a small whole-ish number), so the cast neither
    // truncates anything that matters nor meets a negative value; dropping the fraction is
    // the point.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn limit(&self) -> usize {
        self.state.lock().map_or(1, |s| s.0 as usize).max(1)
    }
    /// Throttled: cut to 70 %, at most once per half second (one burst of 503s is one signal).
    fn throttled(&self) {
        if let Ok(mut s) = self.state.lock() {
            if s.1
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(500))
            {
                s.0 = (s.0 * 0.7).max(1.0);
                s.1 = Some(Instant::now());
            }
        }
    }
    /// Success: grow by about one request per round trip of the whole window.
    fn success(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.0 = (s.0 + 1.0 / s.0).min(self.max);
        }
    }
}

/// Shared state of the senders.
struct Ctx {
    client: BlobClient,
    /// The sequence number every Put Page is conditional on (page blobs vhdforge created).
    seq: Option<u64>,
    image: Arc<dyn DiskImage>,
    azure: FixedVhdLayout,
    opts: UploadOptions,
    progress: Arc<dyn Progress>,
    /// The progress's token, fetched once.
    cancel: Cancel,
    aimd: Aimd,
    retries: AtomicU64,
    sent_bytes: AtomicU64,
    requests: AtomicU64,
    /// Ranges cleared because the source is zero where the destination held pages.
    cleared: AtomicU64,
    /// Which pieces are complete (journal) — shared by the reader and the driver.
    pieces: Mutex<PieceTracker>,
    /// The source's files and whether pieces are read through mappings.
    files: SourceFiles,
}

/// The source's files as the send phase found them: per chain layer, the length of its file
/// when it is a regular file the image reads straight from (else `None`: that layer is
/// never mapped, nor checked), and, when pieces are mapped (`docs/upload-io.md`), the flag
/// every mapping of this upload raises when its file lost pages.
struct SourceFiles {
    sizes: Vec<Option<u64>>,
    /// Per layer, what its file's `stat` said at the start (see [`Stamp`]).
    stamps: Vec<Option<Stamp>>,
    lost: Option<Arc<LossFlag>>,
}

/// A file's length and times: a file truncated to nothing and grown back to its old length
/// (or rewritten in place, or hole-punched) keeps its length, and its mapped pages read
/// again, as the new bytes, without a `SIGBUS`; only its modification and status-change
/// times tell that the upload read part old, part new.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    changed_ns: i128,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let changed_ns = {
            use std::os::unix::fs::MetadataExt;
            i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
        };
        #[cfg(not(unix))]
        let changed_ns = 0;
        Stamp {
            len: m.len(),
            modified: m.modified().ok(),
            changed_ns,
        }
    }
}

impl SourceFiles {
    /// The files of `image`'s chain; mappings when `map` and this platform allows them.
    fn new(image: &dyn DiskImage, map: bool) -> SourceFiles {
        let mut sizes = Vec::new();
        let mut stamps = Vec::new();
        let mut cur = Some(image);
        while let Some(i) = cur {
            let meta = i
                .own_file()
                .and_then(|f| f.metadata().ok())
                .filter(std::fs::Metadata::is_file);
            sizes.push(meta.as_ref().map(std::fs::Metadata::len));
            stamps.push(meta.as_ref().map(Stamp::of));
            cur = i.parent();
        }
        let map = map
            && cfg!(target_os = "linux")
            && std::env::var_os("VHDFORGE_UPLOAD_PREAD").is_none()
            && sizes.iter().any(Option::is_some);
        SourceFiles {
            sizes,
            stamps,
            lost: map.then(|| Arc::new(LossFlag::default())),
        }
    }

    /// True when a file's length or times are no longer those at the start: it was written
    /// to during the upload, which then read part of it old and part new.
    fn rewritten(&self, image: &dyn DiskImage) -> bool {
        self.stamps.iter().enumerate().any(|(layer, stamp)| {
            let (Some(stamp), Ok(layer)) = (stamp, u32::try_from(layer)) else {
                return false;
            };
            layer_file(image, layer)
                .and_then(|f| f.metadata().ok())
                .is_none_or(|m| Stamp::of(&m) != *stamp)
        })
    }

    /// True when a mapped file lost pages, or (`stat`) a file is now shorter than at the
    /// start. The kernel's own copy of a mapping's lost pages into the socket fails with
    /// `EFAULT` and raises no signal, and a `pread` past the new end fails, so failures
    /// check the lengths too.
    fn cut(&self, image: &dyn DiskImage, stat: bool) -> bool {
        if self.lost.as_ref().is_some_and(|l| l.is_raised()) {
            return true;
        }
        stat && self.shrunk(image)
    }

    /// True when a file is now shorter than at the start.
    fn shrunk(&self, image: &dyn DiskImage) -> bool {
        self.sizes.iter().enumerate().any(|(layer, size)| {
            let (Some(size), Ok(layer)) = (size, u32::try_from(layer)) else {
                return false;
            };
            layer_file(image, layer)
                .and_then(|f| f.metadata().ok())
                .is_some_and(|m| m.len() < *size)
        })
    }

    /// True when a layer's file no longer answers `stat` (a file system that shut down
    /// after an I/O error answers `EIO`).
    fn unstatable(&self, image: &dyn DiskImage) -> bool {
        self.stamps.iter().enumerate().any(|(layer, stamp)| {
            stamp.is_some()
                && u32::try_from(layer)
                    .ok()
                    .and_then(|l| layer_file(image, l))
                    .is_none_or(|f| f.metadata().is_err())
        })
    }

    /// Why the source's bytes can no longer be trusted, once [`SourceFiles::cut`] said so:
    /// - a file is shorter than at the start: it was cut short;
    /// - else, when every file still answers `stat`, a file's times moved: it was cut short
    ///   and grown back, or rewritten (a mapping's pages vanished in between);
    /// - else a mapped page raised `SIGBUS` because the kernel could not read it in: an I/O
    ///   error, reported as one rather than as a change nobody made. A file system that shut
    ///   down after an I/O error fails `stat` too, which must not read as "times moved".
    fn loss_error(&self, image: &dyn DiskImage) -> Error {
        let path = &image.info().path;
        if self.shrunk(image) {
            return source_cut(path);
        }
        let dead = self.unstatable(image);
        if !dead && self.rewritten(image) {
            return source_rewritten(
                path,
                Some("pages mapped from it vanished, then its times moved: it was cut short and grown back, or rewritten"),
            );
        }
        let how = if dead {
            "its file system no longer answers `stat` either"
        } else {
            "its length and times show no change"
        };
        Error::new(
            ErrorKind::Io,
            "io",
            format!(
                "part of {} could not be read while it was being uploaded: the kernel failed to \
                 bring its pages in (an I/O error from the disk or file system; `dmesg` says \
                 more), and {how}; nothing read after that was sent or journaled as sent: \
                 check the disk, then re-run with --resume to continue",
                path.display()
            ),
        )
    }
}

impl Ctx {
    fn integrity(&self) -> Integrity {
        if self.opts.md5_per_request {
            Integrity::Md5
        } else {
            Integrity::Crc64
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        crate::storage::retry::backoff(&self.opts.retry, attempt)
    }

    fn timeout_for(&self, len: u64) -> Duration {
        self.opts.request_timeout + self.opts.timeout_per_mib.mul_f64(mib_f64(len))
    }

    /// Piece `r` mapped from its file, when it is one stored range of one regular file
    /// inside what that file held at the start; else `None` (read it with `pread`).
    fn map_piece(&self, r: &Range<u64>) -> Option<Mapping> {
        let lost = self.files.lost.as_ref()?;
        if r.end > self.azure.source_size {
            return None;
        }
        let len = r.end - r.start;
        let mut map = Vec::new();
        self.azure
            .disk_extents(self.image.as_ref(), r.start, len, &mut map)
            .ok()?;
        let [Extent {
            allocation: Allocation::Data { layer, file_offset },
            ..
        }] = map.as_slice()
        else {
            return None;
        };
        let size = (*self.files.sizes.get(usize::try_from(*layer).ok()?)?)?;
        if file_offset.checked_add(len)? > size {
            return None;
        }
        let file = layer_file(self.image.as_ref(), *layer)?;
        match Mapping::map(file, *file_offset, usize::try_from(len).ok()?, lost) {
            Ok(mapping) => mapping,
            Err(e) => {
                tracing::debug!("cannot map {len} bytes at {file_offset:#x} (read instead): {e}");
                None
            }
        }
    }

    /// The clear error when the source was cut short under the upload, or a mapping of it
    /// lost pages (see [`SourceFiles::cut`]; `stat`: also compare the files' lengths).
    fn check_source(&self, stat: bool) -> Result<()> {
        if self.files.cut(self.image.as_ref(), stat) {
            return Err(self.files.loss_error(self.image.as_ref()));
        }
        Ok(())
    }

    /// Read stream bytes `range` (disk area or footer).
    fn read(&self, range: &Range<u64>) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; usize_from(range.end - range.start)];
        if range.start >= self.azure.disk_size {
            buf.copy_from_slice(&self.azure.footer_bytes());
        } else {
            self.azure
                .read_disk(self.image.as_ref(), &mut buf, range.start)?;
        }
        Ok(buf)
    }
}

/// The source file was cut short (or lost pages) while the upload read it.
fn source_cut(path: &std::path::Path) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        "upload.source_changed",
        format!(
            "{} changed size while it was being read (something truncated or rewrote it during \
             the upload); nothing read after the change was sent or journaled as sent: re-run \
             after nothing writes to it",
            path.display()
        ),
    )
}

/// The source file was written to (same length) while the upload read it.
fn source_rewritten(path: &std::path::Path, what: Option<&str>) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        "upload.source_changed",
        format!(
            "{} was written to while it was being uploaded ({}): the blob may hold part of \
             each version or miss data planned as a hole, so its footer was not written and \
             it is not a valid VHD: re-run after nothing writes to it",
            path.display(),
            what.unwrap_or("its modification or status-change time moved")
        ),
    )
}

fn integrity_value(kind: Integrity, data: &[u8]) -> (Integrity, String) {
    match kind {
        Integrity::Crc64 => (kind, crc64_header(data)),
        Integrity::Md5 => (kind, md5_header(data)),
    }
}

/// Send one Put Page (a clear when `body` is `None`), retrying what can be retried.
async fn send_one(
    ctx: Arc<Ctx>,
    range: Range<u64>,
    mut body: Option<Bytes>,
    mut integ: Option<(Integrity, String)>,
) -> Result<Range<u64>> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let res = ctx
            .client
            .put_page_if_sequence(
                range.clone(),
                body.clone(),
                integ.clone(),
                ctx.seq,
                ctx.timeout_for(range.end - range.start),
            )
            .await;
        let failure = match res {
            Ok(()) => {
                ctx.aimd.success();
                return Ok(range);
            }
            Err(f) => f,
        };
        // A body mapped from a file cut short meanwhile fails to send (EFAULT): say so.
        ctx.check_source(true)?;
        let class = failure.class();
        if class == Class::Fatal || attempt >= ctx.opts.retry.max_attempts {
            let op = if class == Class::Fatal {
                "Put Page to".to_string()
            } else {
                format!("Put Page to (gave up after {attempt} attempts)")
            };
            if ctx.seq.is_some() && matches!(failure, Failure::Status { status: 412, .. }) {
                return Err(foreign_write(ctx.client.display()));
            }
            let e = failure.into_error(&op, ctx.client.display());
            return Err(if class == Class::Checksum {
                checksum_gave_up(e)
            } else {
                e
            });
        }
        ctx.retries.fetch_add(1, Ordering::Relaxed);
        ctx.progress.retried(&describe(&failure));
        let delay = ctx.backoff(attempt);
        crate::storage::retry::log_retry(&failure, attempt, delay);
        match class {
            Class::Throttle => {
                ctx.aimd.throttled();
                tracing::info!(
                    in_flight_limit = ctx.aimd.limit(),
                    "throttled: fewer requests in flight"
                );
            }
            Class::Checksum if body.is_some() => {
                // The body may have been corrupted in our memory: read it again from disk.
                let c = ctx.clone();
                let r = range.clone();
                let data = tokio::task::spawn_blocking(move || c.read(&r))
                    .await
                    .map_err(|e| {
                        Error::new(
                            ErrorKind::Io,
                            "upload.internal",
                            format!("reader task failed: {e}"),
                        )
                    })??;
                integ = integ.map(|i| integrity_value(i.0, &data));
                body = Some(Bytes::from(data));
            }
            _ => {}
        }
        if !ctx.cancel.sleep(delay).await {
            return Err(cancelled());
        }
    }
}

pub(super) fn describe(f: &Failure) -> String {
    f.summary()
}

/// One request handed from the reader to the senders.
struct Chunk {
    range: Range<u64>,
    /// `None`: clear the range (the source is zero where the destination lists pages).
    body: Option<Bytes>,
    integ: Option<(Integrity, String)>,
    /// The pieces (indexes into the plan) whose bytes this request carries.
    pieces: Vec<usize>,
}

/// Which pieces are complete: read, and every request carrying their bytes acknowledged.
/// A piece completes only then, so the journal never calls a piece done while part of it
/// is still in flight or not yet sent.
#[derive(Debug, Default)]
struct PieceTracker {
    /// Piece → (its range, requests in flight carrying it, fully read and handed over).
    open: std::collections::HashMap<usize, (Range<u64>, u32, bool)>,
    /// Pieces completed since the driver last looked.
    completed: Vec<Range<u64>>,
}

impl PieceTracker {
    fn carried(&mut self, piece: usize, range: &Range<u64>) {
        self.open
            .entry(piece)
            .or_insert((range.clone(), 0, false))
            .1 += 1;
    }
    /// The reader will hand over nothing more of `piece`.
    fn handed_over(&mut self, piece: usize, range: &Range<u64>) {
        let e = self.open.entry(piece).or_insert((range.clone(), 0, false));
        e.2 = true;
        if e.1 == 0 {
            self.completed.push(range.clone());
            self.open.remove(&piece);
        }
    }
    fn acknowledged(&mut self, piece: usize) {
        if let Some(e) = self.open.get_mut(&piece) {
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 && e.2 {
                let r = e.0.clone();
                self.completed.push(r);
                self.open.remove(&piece);
            }
        }
    }
}

/// What the reader hands over, in order.
struct Handover<'a> {
    ctx: &'a Ctx,
    pieces: &'a [Range<u64>],
    tx: &'a tokio::sync::mpsc::Sender<Chunk>,
    /// Pieces fully read whose last bytes sit in the coalescer's pending request.
    waiting: Vec<usize>,
    /// Pieces the pending request carries.
    pending_pieces: Vec<usize>,
    /// The receiver is gone (error or cancel).
    closed: bool,
}

impl Handover<'_> {
    fn send(&mut self, chunk: Chunk) {
        if self.closed {
            return;
        }
        if let Ok(mut t) = self.ctx.pieces.lock() {
            for &p in &chunk.pieces {
                t.carried(p, &self.pieces[p]);
            }
        }
        if self.tx.blocking_send(chunk).is_err() {
            self.closed = true;
        }
    }
    /// Hand over the `emitted` requests as slices of the pieces `held`; each lists `piece`
    /// when given (listing one too many only delays a piece's completion, never hastens it).
    fn requests(
        &mut self,
        emitted: &mut Vec<Emitted>,
        held: &std::collections::VecDeque<(Range<u64>, Bytes)>,
        piece: Option<usize>,
    ) {
        for (req, integ) in emitted.drain(..) {
            if let Some(i) = piece {
                self.carries(i);
            }
            let body = body_for(&req, held);
            self.request(req, body, integ);
        }
    }
    /// The pending request carries bytes of `piece`.
    fn carries(&mut self, piece: usize) {
        if self.pending_pieces.last() != Some(&piece) {
            self.pending_pieces.push(piece);
        }
    }
    /// Hand over request `range` with its `body` and the digest of that body.
    fn request(&mut self, range: Range<u64>, body: Bytes, integ: (Integrity, String)) {
        let pieces = std::mem::take(&mut self.pending_pieces);
        self.send(Chunk {
            range,
            body: Some(body),
            integ: Some(integ),
            pieces,
        });
        // Whatever waited for that request is now wholly handed over.
        for p in std::mem::take(&mut self.waiting) {
            self.handed_over(p);
        }
    }
    /// Clear the zero pages of piece `i` (its non-zero `runs` excluded) that the
    /// destination lists (`present`: a reused or resumed blob). No request of this run
    /// writes non-zero bytes there, so the order does not matter.
    fn clear_zero_pages(&mut self, i: usize, runs: &[Range<u64>], present: &[Range<u64>]) {
        if present.is_empty() {
            return;
        }
        let zero = subtract(std::slice::from_ref(&self.pieces[i]), runs);
        for c in subtract(&zero, &subtract(&zero, present)) {
            self.ctx.cleared.fetch_add(1, Ordering::Relaxed);
            self.send(Chunk {
                range: c,
                body: None,
                integ: None,
                pieces: vec![i],
            });
        }
    }
    fn handed_over(&self, p: usize) {
        if let Ok(mut t) = self.ctx.pieces.lock() {
            t.handed_over(p, &self.pieces[p]);
        }
    }
}

/// Most piece buffers kept for reuse. Reusing them spares the kernel zeroing fresh pages
/// for every piece (a tenth of the client's CPU before); more than this are in use only
/// while that many requests are queued or in flight, and are then freed.
const POOL_MAX: usize = 2 * super::MAX_CONCURRENCY + 4;

/// Piece buffers handed back when the last request slicing them is done.
#[derive(Clone, Default)]
struct Pool(Arc<Mutex<Vec<Vec<u8>>>>);

impl Pool {
    fn take(&self, len: usize) -> Vec<u8> {
        let mut b = self
            .0
            .lock()
            .ok()
            .and_then(|mut v| v.pop())
            .unwrap_or_default();
        b.resize(len, 0);
        b
    }
}

/// A piece's bytes, shared by the requests sliced from it without copying.
struct Pooled {
    buf: Vec<u8>,
    pool: Pool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Ok(mut v) = self.pool.0.lock() {
            if v.len() < POOL_MAX {
                v.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// Ask the CPU to fetch `bytes` into its caches ahead of the scan: a mapped step comes
/// straight from memory (a `pread` copy used to bring it in), and the zero test, which
/// looks at the start of each sector, would otherwise wait on each cache line in turn.
#[inline]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch is only a hint; it never faults and reads nothing we use.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// A piece's bytes while it is scanned: mapped from its file, or read into a pooled buffer.
enum Piece {
    Mapped(Mapping),
    Read(Vec<u8>),
}

impl Piece {
    fn bytes(&self) -> &[u8] {
        match self {
            Piece::Mapped(m) => m.as_ref(),
            Piece::Read(b) => b,
        }
    }
    /// The piece's bytes `[0, end)`, with `[from, end)` read first into a buffer (the piece
    /// starts at stream offset `start`) or, mapped and when `fetch` says so, fetched into the
    /// caches.
    fn fill(
        &mut self,
        ctx: &Ctx,
        start: u64,
        from: usize,
        end: usize,
        fetch: bool,
    ) -> Result<&[u8]> {
        if let Piece::Mapped(m) = self {
            if fetch {
                prefetch(&m.as_ref()[from..end]);
            }
        }
        if let Piece::Read(buf) = self {
            let read =
                ctx.azure
                    .read_disk(ctx.image.as_ref(), &mut buf[from..end], start + from as u64);
            // A read past a new, shorter end: say what happened, not just "end of file".
            if let Err(e) = read {
                ctx.check_source(true)?;
                return Err(e);
            }
        }
        Ok(&self.bytes()[..end])
    }
    /// Whether the step at stream offset `at` is brought in by its speculative CRC-64 pass
    /// instead of a prefetch ([`RunningDigest::speculate`]): a mapped step that data runs
    /// up to (`pending` ends at `at`), inside a dense region. Where the stream before it
    /// was zero (an allocated but empty region of a fixed VHD or raw file is mostly that),
    /// the step is likely zero too and a CRC of it would be wasted; it is prefetched and
    /// tested as before.
    fn speculates(&self, pending: Option<&Range<u64>>, at: u64) -> bool {
        matches!(self, Piece::Mapped(_)) && pending.is_some_and(|p| p.end == at)
    }
    /// The piece as the owner of the requests sliced from it: a mapping stays mapped (and
    /// guarded) until the last of them is dropped, a buffer then goes back to `pool`.
    fn into_bytes(self, pool: &Pool) -> Bytes {
        match self {
            Piece::Mapped(m) => Bytes::from_owner(m),
            Piece::Read(buf) => Bytes::from_owner(Pooled {
                buf,
                pool: pool.clone(),
            }),
        }
    }
}

/// The body of request `range` from the pieces read (`held`, in order): a slice of one
/// piece when it lies inside one (most requests: no copy), else the pieces' bytes copied
/// into zeros (a request bridging from one piece into the next).
fn body_for(range: &Range<u64>, held: &std::collections::VecDeque<(Range<u64>, Bytes)>) -> Bytes {
    if let Some((r, b)) = held
        .iter()
        .find(|(r, _)| r.start <= range.start && range.end <= r.end)
    {
        return b.slice(usize_from(range.start - r.start)..usize_from(range.end - r.start));
    }
    let mut v = vec![0u8; usize_from(range.end - range.start)];
    for (r, b) in held {
        let (s, e) = (r.start.max(range.start), r.end.min(range.end));
        if s < e {
            v[usize_from(s - range.start)..usize_from(e - range.start)]
                .copy_from_slice(&b[usize_from(s - r.start)..usize_from(e - r.start)]);
        }
    }
    Bytes::from(v)
}

/// Bytes read in a step of a piece: the zero test and the request digests run over each
/// step right after it was read, while it is still in the CPU's cache (L2 is 1–2 MiB per
/// core on current x86 servers), so each byte comes from memory once for them rather than
/// once per pass over a 4 MiB piece (issue 16: those passes were a quarter of the CPU).
const STEP: usize = 256 << 10;

/// Where the bytes of the output stream come from while a piece is being read: the pieces
/// read before (`held`, in order) and the part of the current piece read so far; anything
/// else inside a request is a bridged zero gap.
struct Sources<'a> {
    held: &'a std::collections::VecDeque<(Range<u64>, Bytes)>,
    current: Option<(u64, &'a [u8])>,
}

impl Sources<'_> {
    /// Call `f` with the stream bytes `range`, in order, in slices.
    fn each(&self, range: Range<u64>, f: &mut dyn FnMut(&[u8])) {
        let current = self
            .current
            .map(|(start, b)| (start..start + b.len() as u64, b));
        let held = self.held.iter().map(|(r, b)| (r.clone(), b.as_ref()));
        let mut pos = range.start;
        for (r, b) in held.chain(current) {
            if pos >= range.end {
                return;
            }
            if r.end <= pos {
                continue;
            }
            if r.start > pos {
                let gap_end = r.start.min(range.end);
                zeros(gap_end - pos, f);
                pos = gap_end;
                if pos >= range.end {
                    return;
                }
            }
            let end = r.end.min(range.end);
            f(&b[usize_from(pos - r.start)..usize_from(end - r.start)]);
            pos = end;
        }
        if pos < range.end {
            zeros(range.end - pos, f);
        }
    }
}

/// Call `f` with `n` zero bytes, in slices.
fn zeros(mut n: u64, f: &mut dyn FnMut(&[u8])) {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64);
        f(&ZEROS[..usize_from(k)]);
        n -= k;
    }
}

/// The digest of the request being built, fed as its bytes are read (see [`STEP`]) so the
/// request's integrity header is ready, without another pass, when it is emitted.
struct RunningDigest {
    kind: Integrity,
    /// The request `[start, pos)` the digest covers so far.
    start: u64,
    pos: u64,
    crc: crc_fast::Digest,
    md5: md5::Md5,
    /// The CRC-64 of a mapped step taken before its zero test (see [`Self::speculate`]).
    spec: Option<Speculation>,
    /// Speculations used (tests check that dense data does use them).
    #[cfg(test)]
    adopted: u32,
}

/// The CRC-64 state of the request starting at `start` once it covers the stream bytes up
/// to `end`, computed ahead from its state at `from`.
struct Speculation {
    start: u64,
    from: u64,
    end: u64,
    crc: crc_fast::Digest,
}

impl RunningDigest {
    fn new(kind: Integrity) -> Self {
        RunningDigest {
            kind,
            start: u64::MAX,
            pos: u64::MAX,
            crc: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme),
            md5: md5::Md5::new(),
            spec: None,
            #[cfg(test)]
            adopted: 0,
        }
    }

    /// Digest the mapped step `bytes` at stream offset `at` before its zero test, guessing
    /// which request it belongs to: the pending one when it ends at `at` and has room for
    /// the whole step, else one starting at `at`. On dense data the guess holds and the
    /// CRC pass is what brings the step from memory (streamed: the CPU's own prefetchers
    /// keep up with it), so the zero test then runs on cached bytes and no second CRC pass
    /// is needed; a wrong guess costs one CRC pass over cached bytes.
    fn speculate(&mut self, at: u64, bytes: &[u8], pending: Option<&Range<u64>>) {
        let end = at + bytes.len() as u64;
        let (start, mut crc) = match pending {
            Some(p)
                if p.end == at
                    && self.start == p.start
                    && self.pos == at
                    && end - p.start <= super::plan::MAX_PUT_PAGE =>
            {
                (p.start, self.crc)
            }
            _ => (at, crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme)),
        };
        crc.update(bytes);
        self.spec = Some(Speculation {
            start,
            from: at,
            end,
            crc,
        });
    }

    /// Use or drop the step's speculation once its zero test is done: the pending request
    /// `pending` is then what the step's bytes belong to.
    fn settle(&mut self, pending: Option<&Range<u64>>, src: &Sources<'_>) {
        if let Some(p) = pending {
            self.cover(p, src, false);
        }
        self.spec = None;
    }

    /// Cover the request starting at `req.start` up to `req.end`: a request starting
    /// elsewhere than the one covered so far (or ending before it: never expected, but the
    /// digest must then cover exactly `req`) starts a new digest.
    fn advance(&mut self, req: &Range<u64>, src: &Sources<'_>) {
        self.cover(req, src, true);
    }

    /// [`Self::advance`]; with `defer`, a request that so far ends inside the step a
    /// speculation covers is left as it is until it ends or the step does.
    fn cover(&mut self, req: &Range<u64>, src: &Sources<'_>, defer: bool) {
        if self.start != req.start || self.pos > req.end {
            self.start = req.start;
            self.pos = req.start;
            self.crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
            self.md5 = md5::Md5::new();
        }
        if let Some(s) = &self.spec {
            if self.kind == Integrity::Crc64 && s.start == req.start && s.from == self.pos {
                if req.end >= s.end {
                    self.crc = s.crc;
                    self.pos = s.end;
                    self.spec = None;
                    #[cfg(test)]
                    {
                        self.adopted += 1;
                    }
                } else if defer {
                    return;
                }
            }
        }
        if req.end > self.pos {
            let (kind, crc, md5) = (self.kind, &mut self.crc, &mut self.md5);
            src.each(self.pos..req.end, &mut |b| match kind {
                Integrity::Crc64 => crc.update(b),
                Integrity::Md5 => md5.update(b),
            });
            self.pos = req.end;
        }
    }

    /// The integrity header of the whole request `req`, which is now complete.
    fn finish(&mut self, req: &Range<u64>, src: &Sources<'_>) -> (Integrity, String) {
        self.cover(req, src, false);
        // A speculation for this request that went past its end is of no use now.
        if self.spec.as_ref().is_some_and(|s| s.start == req.start) {
            self.spec = None;
        }
        // The next request starts a new digest.
        self.start = u64::MAX;
        let value = match self.kind {
            Integrity::Crc64 => {
                base64::engine::general_purpose::STANDARD.encode(self.crc.finalize().to_le_bytes())
            }
            Integrity::Md5 => base64::engine::general_purpose::STANDARD
                .encode(std::mem::take(&mut self.md5).finalize()),
        };
        (self.kind, value)
    }
}

/// A request that can no longer grow, with the digest of its body.
type Emitted = (Range<u64>, (Integrity, String));

/// Test the pages of the step of the current piece that starts at `at` (it ends where
/// `src.current` does) for zero, add its non-zero runs to `runs` (a run going on across
/// the step's edge stays one run) and to the coalescer, and feed the pending request's
/// digest while the step is in cache; requests that can no longer grow go to `emitted`.
fn scan_step(
    src: &Sources<'_>,
    at: u64,
    runs: &mut Vec<Range<u64>>,
    coalescer: &mut StreamCoalescer,
    digest: &mut RunningDigest,
    emitted: &mut Vec<Emitted>,
) {
    let Some((start, cur)) = src.current else {
        return;
    };
    let step = &cur[usize_from(at - start)..];
    let first = runs.len();
    crate::sparse::for_each_nonzero_run(step, at, PAGE, |s, l| {
        let e = (s + l).div_ceil(PAGE) * PAGE;
        match runs.last_mut() {
            Some(last) if last.end == s => last.end = e,
            _ => runs.push(s..e),
        }
    });
    // The runs this step added, or the part it added to the one before.
    for run in &runs[first.saturating_sub(1)..] {
        let (s, e) = (run.start.max(at), run.end);
        if s >= e {
            continue;
        }
        coalescer.add(s, e, &mut |req| {
            let integ = digest.finish(&req, src);
            emitted.push((req, integ));
        });
        if let Some(p) = coalescer.pending() {
            digest.advance(p, src);
        }
    }
    digest.settle(coalescer.pending(), src);
}

/// End the pending request (at a piece this run skips, or the end) into `emitted`.
fn flush_pending(
    coalescer: &mut StreamCoalescer,
    digest: &mut RunningDigest,
    held: &std::collections::VecDeque<(Range<u64>, Bytes)>,
    emitted: &mut Vec<Emitted>,
) {
    let src = Sources {
        held,
        current: None,
    };
    coalescer.flush(&mut |req| {
        let integ = digest.finish(&req, &src);
        emitted.push((req, integ));
    });
}

/// The reader: reads each piece to send once, in plan order; tests its pages for zero;
/// coalesces the non-zero ones into requests ([`StreamCoalescer`]: the same requests the
/// exact plan had); clears pages the destination lists where the source is zero (`present`
/// non-empty: a reused or resumed blob); feeds the whole-stream MD5 (zeros for gaps) when
/// asked. `todo[i]` says whether `pieces[i]` must be sent.
fn reader(
    ctx: &Ctx,
    pieces: &[Range<u64>],
    todo: &[bool],
    present: &[Range<u64>],
    whole_md5: bool,
    tx: &tokio::sync::mpsc::Sender<Chunk>,
) -> Result<Option<String>> {
    let mut md5 = whole_md5.then(md5::Md5::new);
    let mut pos = 0u64;
    let mut out = Handover {
        ctx,
        pieces,
        tx,
        waiting: Vec::new(),
        pending_pieces: Vec::new(),
        closed: false,
    };
    let mut coalescer = StreamCoalescer::new(ctx.opts.bridge_bytes);
    let pool = Pool::default();
    // The pieces the pending request may still take bytes from.
    let mut held: std::collections::VecDeque<(Range<u64>, Bytes)> =
        std::collections::VecDeque::new();
    let mut runs: Vec<Range<u64>> = Vec::new();
    let mut digest = RunningDigest::new(ctx.integrity());
    let crc64 = ctx.integrity() == Integrity::Crc64;
    // Requests that can no longer grow, with their digests, to hand over once the piece
    // whose bytes they slice is wholly read.
    let mut emitted: Vec<Emitted> = Vec::new();
    for (i, (r, &send)) in pieces.iter().zip(todo).enumerate() {
        if ctx.cancel.is_cancelled() || out.closed {
            return Ok(None);
        }
        if !send {
            // A request never spans a piece this run does not send.
            flush_pending(&mut coalescer, &mut digest, &held, &mut emitted);
            out.requests(&mut emitted, &held, None);
            held.clear();
            if md5.is_none() {
                continue;
            }
        }
        let len = usize_from(r.end - r.start);
        // A piece that is one range of one file is mapped (no copy out of the page cache);
        // anything else, and pieces read only for the whole-stream MD5, is read into a
        // pooled buffer.
        let mut piece = match send.then(|| ctx.map_piece(r)).flatten() {
            Some(m) => Piece::Mapped(m),
            None => Piece::Read(pool.take(len)),
        };
        runs.clear();
        // Go through the piece a step at a time and do everything that looks at the bytes
        // before the next step evicts them: the whole-stream MD5, the zero test, the
        // coalescing and the digests of the requests (see STEP). The requests are handed
        // over once the whole piece is scanned, as slices of it.
        let mut off = 0usize;
        while off < len {
            let step_end = (off + STEP).min(len);
            let at = r.start + off as u64;
            let speculate = send && crc64 && piece.speculates(coalescer.pending(), at);
            let bytes = piece.fill(ctx, r.start, off, step_end, !speculate)?;
            if speculate {
                digest.speculate(at, &bytes[off..step_end], coalescer.pending());
            }
            if let Some(m) = md5.as_mut() {
                zeros(at - pos, &mut |b| m.update(b));
                m.update(&bytes[off..step_end]);
                pos = r.start + step_end as u64;
            }
            if send {
                let src = Sources {
                    held: &held,
                    current: Some((r.start, bytes)),
                };
                scan_step(
                    &src,
                    at,
                    &mut runs,
                    &mut coalescer,
                    &mut digest,
                    &mut emitted,
                );
            }
            off = step_end;
        }
        if !send {
            continue;
        }
        // Bytes a mapping lost read as zeros: none of this piece's requests may go out.
        ctx.check_source(false)?;
        held.push_back((r.clone(), piece.into_bytes(&pool)));
        out.clear_zero_pages(i, &runs, present);
        // Any request emitted while adding this piece's runs may carry its bytes.
        out.requests(&mut emitted, &held, Some(i));
        if !runs.is_empty() && coalescer.pending().is_some() {
            out.carries(i);
        }
        match coalescer.pending() {
            Some(p) => {
                let from = p.start;
                held.retain(|(r, _)| r.end > from);
            }
            None => held.clear(),
        }
        if coalescer.pending().is_some() && out.pending_pieces.last() == Some(&i) {
            out.waiting.push(i);
        } else {
            out.handed_over(i);
        }
    }
    flush_pending(&mut coalescer, &mut digest, &held, &mut emitted);
    out.requests(&mut emitted, &held, None);
    if ctx.cancel.is_cancelled() || out.closed {
        return Ok(None);
    }
    Ok(md5.map(|mut m| {
        zeros(ctx.azure.disk_size - pos, &mut |b| m.update(b));
        m.update(ctx.azure.footer_bytes());
        base64::engine::general_purpose::STANDARD.encode(m.finalize())
    }))
}

pub(super) struct JournalState {
    path: PathBuf,
    journal: Journal,
    /// Requests whose Put Page returned success (this run's and the journal's earlier ones).
    done: Vec<Range<u64>>,
    last_write: Instant,
    /// Rewrite the journal at most this often (each rewrite is fsynced).
    interval: Duration,
}

impl JournalState {
    /// What changed in the source or one of its parents since this run's journal described
    /// them (at the start of the upload, before its plan); `None` when nothing did.
    fn source_change(&self) -> Option<String> {
        std::iter::once(&self.journal.source)
            .chain(&self.journal.parents)
            .find_map(|then| {
                match super::journal::SourceIdentity::of(std::path::Path::new(&then.path)) {
                    Ok(now) => then.change(&now),
                    Err(e) => Some(e.to_string()),
                }
            })
    }

    /// A journal at `path` starting from `journal`, with `done` already completed.
    pub(super) fn new(
        path: PathBuf,
        journal: Journal,
        done: Vec<Range<u64>>,
        interval: Duration,
    ) -> Self {
        JournalState {
            path,
            journal,
            done,
            last_write: Instant::now(),
            interval,
        }
    }
    fn record(&mut self, r: Range<u64>) {
        self.done.push(r);
    }
    fn due(&self) -> bool {
        self.last_write.elapsed() >= self.interval
    }
    /// Where the journal is.
    pub(super) fn path(&self) -> &std::path::Path {
        &self.path
    }
    pub(super) fn flush(&mut self) -> Result<()> {
        // An ordinary flush happens with requests in flight: no ETag vouches for it.
        self.journal.clean_stop_etag = None;
        self.write()
    }

    /// The journal of a run stopping cleanly (no request of it in flight any more), with
    /// the blob's current `ETag`: while the blob keeps that `ETag` nobody wrote to it, so a
    /// `--resume` may trust the done ranges without reading them back. Best effort: when
    /// the `ETag` cannot be read the journal is written without one (resume then re-checks).
    async fn clean_stop(&mut self, client: &BlobClient) -> Result<()> {
        let etag = tokio::time::timeout(Duration::from_secs(30), client.head())
            .await
            .ok()
            .and_then(std::result::Result::ok)
            .and_then(|p| p.etag);
        self.journal.clean_stop_etag = etag;
        self.write()
    }

    fn write(&mut self) -> Result<()> {
        self.done = normalize(std::mem::take(&mut self.done));
        self.journal.done = self.done.iter().map(|r| (r.start, r.end)).collect();
        self.last_write = Instant::now();
        journal::store(&self.path, &self.journal)
    }
}

/// 412 on a write conditional on this upload's sequence number: the blob is not the one
/// this upload created.
/// Put Page kept failing its integrity check: the last failure stays the cause.
fn checksum_gave_up(e: Error) -> Error {
    e.context("upload.checksum", "the data keeps arriving corrupted")
}

pub(super) fn foreign_write(shown: &str) -> Error {
    Error::new(
        ErrorKind::Remote,
        "upload.precondition",
        format!(
            "{shown} was replaced or re-marked by someone else during the upload (its sequence \
             number is no longer this upload's); nothing more was written: find out who else \
             writes there, then upload again with --overwrite"
        ),
    )
}

/// Interrupted on request; the engine's resume hint says whether --resume can continue.
pub(super) fn cancelled() -> Error {
    Error::new(
        ErrorKind::Interrupted,
        "upload.cancelled",
        "interrupted on request (Ctrl-C)",
    )
}

/// What the send phase works on.
pub(super) struct SendInput {
    pub client: BlobClient,
    pub image: Arc<dyn DiskImage>,
    pub azure: FixedVhdLayout,
    /// The options, concurrency already clamped.
    pub opts: UploadOptions,
    pub progress: Arc<dyn Progress>,
    pub seq: Option<u64>,
    /// The plan's pieces ([`super::plan::PiecePlan`]).
    pub pieces: Vec<Range<u64>>,
    /// `todo[i]`: `pieces[i]` must be sent in this run.
    pub todo: Vec<bool>,
    /// What the destination listed before this run (empty for a blob this run created):
    /// zero pages of the source inside it are cleared.
    pub present: Vec<Range<u64>>,
}

/// What the send phase did.
pub(super) struct Sent {
    pub bytes: u64,
    pub requests: u64,
    /// Ranges inside pieces cleared because the source is zero there.
    pub cleared: u64,
    pub retries: u64,
    /// Whole-stream MD5 (base64) when asked for.
    pub md5: Option<String>,
}

/// Send every data request still to do, journaling each completion, then the footer.
pub(super) async fn send_all(input: SendInput, jstate: &mut JournalState) -> Result<Sent> {
    let concurrency = input.opts.concurrency;
    let files = SourceFiles::new(input.image.as_ref(), input.opts.map_source);
    let ctx = Arc::new(Ctx {
        client: input.client,
        seq: input.seq,
        image: input.image,
        azure: input.azure,
        opts: input.opts,
        cancel: input.progress.cancel(),
        progress: input.progress,
        aimd: Aimd::new(concurrency),
        retries: AtomicU64::new(0),
        sent_bytes: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        cleared: AtomicU64::new(0),
        pieces: Mutex::new(PieceTracker::default()),
        files,
    });
    let md5 = send_data(&ctx, input.pieces, input.todo, input.present, jstate).await?;
    if ctx.cancel.is_cancelled() {
        let _ = jstate.clean_stop(&ctx.client).await;
        return Err(cancelled());
    }
    jstate.flush()?;
    // Every check so far looks for a source cut short; one rewritten to the same length
    // (truncated and grown back, written in place) would otherwise end as a valid VHD
    // holding part of each version. The footer is what makes the blob usable: not on that.
    // The files as the journal found them, before the plan was made (a write into a
    // range planned as a hole would otherwise be missing from the blob), by path (a file
    // put in the source's place), parents too.
    let change = jstate.source_change();
    if ctx.files.rewritten(ctx.image.as_ref()) || change.is_some() {
        let _ = jstate.clean_stop(&ctx.client).await;
        return Err(source_rewritten(&ctx.image.info().path, change.as_deref()));
    }
    if let Err(e) = send_footer(&ctx).await {
        let _ = jstate.clean_stop(&ctx.client).await;
        return Err(e);
    }
    Ok(Sent {
        bytes: ctx.sent_bytes.load(Ordering::Relaxed),
        requests: ctx.requests.load(Ordering::Relaxed),
        cleared: ctx.cleared.load(Ordering::Relaxed),
        retries: ctx.retries.load(Ordering::Relaxed),
        md5,
    })
}

/// The data pipeline: at most `concurrency` buffers queued plus `concurrency` in flight,
/// each ≤ 4 MiB, so memory is bounded whatever the disk size. On any failure what completed
/// is kept in the journal for --resume (a failure to write it must not hide the cause).
async fn send_data(
    ctx: &Arc<Ctx>,
    pieces: Vec<Range<u64>>,
    todo: Vec<bool>,
    present: Vec<Range<u64>>,
    jstate: &mut JournalState,
) -> Result<Option<String>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(ctx.opts.concurrency);
    let reader_task = {
        let ctx = ctx.clone();
        let whole = ctx.opts.content_md5;
        tokio::task::spawn_blocking(move || reader(&ctx, &pieces, &todo, &present, whole, &tx))
    };
    let mut outcome = drive(ctx, rx, jstate).await;
    if outcome.is_ok() {
        // The reader handed its last pieces over just before it closed the channel.
        outcome = record_completed(ctx, jstate);
    }
    let read = reader_task.await;
    // Past `drive`, no request of this run is in flight: a stop here is a clean one.
    if let Err(e) = outcome {
        let _ = jstate.clean_stop(&ctx.client).await;
        return Err(e);
    }
    match read {
        Ok(Ok(m)) => Ok(m),
        // A read failure (source vanished, I/O error): keep what was sent for --resume.
        Ok(Err(e)) => {
            let _ = jstate.clean_stop(&ctx.client).await;
            Err(e)
        }
        Err(e) => {
            let _ = jstate.clean_stop(&ctx.client).await;
            Err(Error::new(
                ErrorKind::Io,
                "upload.internal",
                format!("reader task failed: {e}"),
            ))
        }
    }
}

/// Hand chunks to senders (no more than the AIMD limit in flight) and record completions,
/// until the reader is done and every request has completed, or something fails.
async fn drive(
    ctx: &Arc<Ctx>,
    mut rx: tokio::sync::mpsc::Receiver<Chunk>,
    jstate: &mut JournalState,
) -> Result<()> {
    type Done = (Result<Range<u64>>, Vec<usize>, bool);
    let mut set: JoinSet<Done> = JoinSet::new();
    let mut open = true;
    let outcome = loop {
        if ctx.cancel.is_cancelled() {
            break Err(cancelled());
        }
        if let Err(e) = record_completed(ctx, jstate) {
            break Err(e);
        }
        if !open && set.is_empty() {
            break Ok(());
        }
        let full = set.len() >= ctx.aimd.limit();
        tokio::select! {
            chunk = rx.recv(), if open && !full => match chunk {
                Some(c) => {
                    let ctx = ctx.clone();
                    let clear = c.body.is_none();
                    set.spawn(async move {
                        (send_one(ctx, c.range, c.body, c.integ).await, c.pieces, clear)
                    });
                }
                None => open = false,
            },
            Some(res) = set.join_next(), if !set.is_empty() => {
                let (r, pieces, clear) = match res {
                    Ok((Ok(r), pieces, clear)) => (r, pieces, clear),
                    Ok((Err(e), _, _)) => break Err(e),
                    Err(e) => break Err(Error::new(ErrorKind::Io, "upload.internal", format!("send task failed: {e}"))),
                };
                if !clear {
                    ctx.sent_bytes.fetch_add(r.end - r.start, Ordering::Relaxed);
                    ctx.requests.fetch_add(1, Ordering::Relaxed);
                }
                if let Ok(mut t) = ctx.pieces.lock() {
                    for p in pieces {
                        t.acknowledged(p);
                    }
                }
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    };
    if outcome.is_err() {
        set.abort_all();
        // Wait until every aborted request has really ended, so the clean-stop ETag read
        // after this is not overtaken by one of ours. (A request the server still applies
        // after an abort changes the ETag, which only makes --resume re-check: safe.)
        while set.join_next().await.is_some() {}
    }
    // Dropping the receiver stops a reader blocked on a full channel.
    drop(rx);
    outcome
}

/// Journal the pieces completed since the last look, then report them: with a zero
/// interval a reported piece is durably recorded.
fn record_completed(ctx: &Ctx, jstate: &mut JournalState) -> Result<()> {
    // Acknowledged is not enough when a mapping lost pages: what was sent may hold zeros
    // the file never had, so nothing more is journaled.
    ctx.check_source(false)?;
    let done = match ctx.pieces.lock() {
        Ok(mut t) => std::mem::take(&mut t.completed),
        Err(_) => return Ok(()),
    };
    if done.is_empty() {
        return Ok(());
    }
    let lens: Vec<u64> = done.iter().map(|r| r.end - r.start).collect();
    for r in done {
        jstate.record(r);
    }
    if jstate.due() {
        jstate.flush()?;
    }
    // One report per piece, as there was one per request before pieces.
    for len in lens {
        ctx.progress.advance(len);
    }
    Ok(())
}

/// Every data page is in: only now the footer, which makes the blob a valid VHD.
async fn send_footer(ctx: &Arc<Ctx>) -> Result<()> {
    let footer = ctx.azure.footer_bytes();
    let range = ctx.azure.disk_size..ctx.azure.output_size();
    let integ = integrity_value(ctx.integrity(), &footer);
    send_one(
        ctx.clone(),
        range,
        Some(Bytes::copy_from_slice(&footer)),
        Some(integ),
    )
    .await?;
    ctx.sent_bytes
        .fetch_add(FOOTER_SIZE as u64, Ordering::Relaxed);
    ctx.requests.fetch_add(1, Ordering::Relaxed);
    ctx.progress.advance(FOOTER_SIZE as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn checksum_give_up_keeps_the_last_failure() {
        let last = Error::new(
            ErrorKind::Remote,
            "upload.http",
            "Put Page to d failed: HTTP 400 Md5Mismatch",
        )
        .with_source(std::io::Error::other("body"));
        let before = last.to_string();
        let e = checksum_gave_up(last);
        // Its own code (the resume hint looks for it), the cause's kind, the cause whole.
        assert_eq!(
            (e.code().as_str(), e.kind()),
            ("upload.checksum", ErrorKind::Remote)
        );
        let cause = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<Error>())
            .map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some(before.as_str()));
        assert_eq!(
            e.to_string(),
            format!("the data keeps arriving corrupted: {before}")
        );
    }

    /// Bytes 0..n of a pattern that has no zero page.
    fn pattern(seed: u8, n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    #[test]
    fn running_digest_fed_in_steps_equals_the_digest_of_the_body() {
        // Two pieces read before (one with a gap between them, a bridged zero gap), and a
        // current piece read in part; requests spanning all of that, fed as the reader feeds
        // them: a bit at a time, then finished.
        let mut held = std::collections::VecDeque::new();
        held.push_back((0..4096u64, Bytes::from(pattern(1, 4096))));
        held.push_back((8192..12288u64, Bytes::from(pattern(2, 4096))));
        let current = pattern(3, 8192);
        let cur_start = 16384u64;
        for kind in [Integrity::Crc64, Integrity::Md5] {
            for (req, steps) in [
                (512..12288u64, vec![1024u64, 4096, 9000]),
                (1024..20480, vec![4096, 8192, 16384, 16896]),
                (12288..24576, vec![]),
                (16384..24576, vec![16384, 20480]),
            ] {
                let mut d = RunningDigest::new(kind);
                for end in steps {
                    let src = Sources {
                        held: &held,
                        current: Some((
                            cur_start,
                            &current[..usize_from(end - cur_start.min(end)).min(8192)],
                        )),
                    };
                    d.advance(&(req.start..end.max(req.start)), &src);
                }
                let src = Sources {
                    held: &held,
                    current: Some((cur_start, &current)),
                };
                let got = d.finish(&req, &src);
                let mut all = held.clone();
                all.push_back((cur_start..cur_start + 8192, Bytes::from(current.clone())));
                let body = body_for(&req, &all);
                assert_eq!(got, integrity_value(kind, &body), "{kind:?} {req:?}");
                // A finished digest starts afresh for the next request, even at the same start.
                let again = d.finish(&req, &src);
                assert_eq!(again, got);
            }
        }
    }

    /// The requests and digests the reader's scan makes of `pieces` (stream offset, bytes;
    /// in order, maybe with gaps), going through each piece `step` bytes at a time, with
    /// or without the speculative CRC pass of mapped pieces; and how many speculations
    /// were used.
    fn scan_stream(
        pieces: &[(u64, Vec<u8>)],
        step: usize,
        speculate: bool,
        bridge: u64,
    ) -> (Vec<Emitted>, u32) {
        let mut held = std::collections::VecDeque::new();
        let mut coalescer = StreamCoalescer::new(bridge);
        let mut digest = RunningDigest::new(Integrity::Crc64);
        let (mut runs, mut emitted) = (Vec::new(), Vec::new());
        for (start, bytes) in pieces {
            runs.clear();
            let mut off = 0;
            while off < bytes.len() {
                let end = (off + step).min(bytes.len());
                let at = start + off as u64;
                let src = Sources {
                    held: &held,
                    current: Some((*start, &bytes[..end])),
                };
                if speculate {
                    digest.speculate(at, &bytes[off..end], coalescer.pending());
                }
                scan_step(
                    &src,
                    at,
                    &mut runs,
                    &mut coalescer,
                    &mut digest,
                    &mut emitted,
                );
                off = end;
            }
            let range = *start..start + bytes.len() as u64;
            held.push_back((range, Bytes::from(bytes.clone())));
            match coalescer.pending() {
                Some(p) => {
                    let from = p.start;
                    held.retain(|(r, _)| r.end > from);
                }
                None => held.clear(),
            }
        }
        flush_pending(&mut coalescer, &mut digest, &held, &mut emitted);
        (emitted, digest.adopted)
    }

    /// Bytes of `pages` 512-byte pages, each zero or not as `rng` says (`dense` in 16
    /// pages hold data).
    fn pages(rng: &mut u64, pages: usize, dense: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(pages * 512);
        for _ in 0..pages {
            *rng = rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let seed = (*rng >> 33) as u8;
            if (*rng >> 60) < dense {
                v.extend(pattern(seed, 512));
            } else {
                v.extend([0u8; 512]);
            }
        }
        v
    }

    #[test]
    fn speculative_crc_gives_the_requests_and_digests_of_the_plain_scan() {
        // Dense and sparse data, pieces with gaps between them and unaligned to the 4 MiB
        // request cap (so requests end inside steps), steps of several sizes: the requests
        // and their CRC-64s must be the same with and without the speculation, and each
        // must be the CRC-64 of the request's body.
        let mut rng = 7u64;
        for (dense, step, layout) in [
            (
                16,
                64 << 10,
                vec![(0u64, 4096usize), (4096, 4096), (8192, 4096)],
            ),
            (16, 256 << 10, vec![(512, 8200), (9000, 3000)]),
            (14, 32 << 10, vec![(0, 2048), (2048, 2048), (6000, 4096)]),
            (8, 4096, vec![(0, 512), (600, 1024), (1700, 300)]),
            (1, 16 << 10, vec![(0, 4096), (4096, 4096)]),
            (0, 16 << 10, vec![(0, 1024)]),
        ] {
            let pieces: Vec<(u64, Vec<u8>)> = layout
                .iter()
                .map(|&(start_page, n)| (start_page * 512 + 512, pages(&mut rng, n, dense)))
                .collect();
            for bridge in [0u64, 64 << 10] {
                let (plain, _) = scan_stream(&pieces, step, false, bridge);
                let (spec, adopted) = scan_stream(&pieces, step, true, bridge);
                assert_eq!(spec, plain, "dense {dense} step {step} bridge {bridge}");
                if dense == 16 {
                    assert!(adopted > 0, "dense data used no speculation");
                }
                let all: std::collections::VecDeque<(Range<u64>, Bytes)> = pieces
                    .iter()
                    .map(|(s, b)| (*s..s + b.len() as u64, Bytes::from(b.clone())))
                    .collect();
                for (req, integ) in &spec {
                    assert!(req.end - req.start <= super::super::plan::MAX_PUT_PAGE);
                    let body = body_for(req, &all);
                    assert_eq!(integ, &integrity_value(Integrity::Crc64, &body), "{req:?}");
                }
            }
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn lost_pages_are_reported_as_what_the_file_shows() {
        // The guard raises the loss flag for a truncation and for an I/O error alike; the
        // error then says which, from the file: shorter, times moved, or neither.
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("d.raw");
        std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
        let image = crate::open(&raw, &crate::OpenOptions::default()).unwrap();
        let files = SourceFiles::new(image.as_ref(), true);
        assert!(!files.cut(image.as_ref(), true));
        files.lost.as_ref().unwrap().raise_for_test();
        assert!(files.cut(image.as_ref(), false));
        // Nothing changed the file: a read error.
        let e = files.loss_error(image.as_ref());
        assert_eq!(e.code(), "io", "{e}");
        assert!(e.message().contains("could not be read"), "{e}");
        assert!(e.message().contains("I/O error"), "{e}");
        // Same length, times moved: cut short and grown back, or rewritten.
        let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        let e = files.loss_error(image.as_ref());
        assert_eq!(e.code(), "upload.source_changed", "{e}");
        assert!(e.message().contains("was written to"), "{e}");
        // Shorter: cut short.
        f.set_len(4096).unwrap();
        let e = files.loss_error(image.as_ref());
        assert_eq!(e.code(), "upload.source_changed", "{e}");
        assert!(e.message().contains("changed size"), "{e}");
    }

    #[test]
    fn only_images_read_straight_from_their_file_are_mapped() {
        use fixtures::vhdx::{self as fvhdx, VhdxSpec};
        let dir = tempfile::tempdir().unwrap();
        let content = fixtures::raw::disk_with_regions(4 << 20, &[(0, 8192)], 3);
        let raw = dir.path().join("d.raw");
        std::fs::write(&raw, &content).unwrap();
        let clean = fvhdx::build(
            &VhdxSpec::dynamic(1 << 20, uuid::Uuid::from_u128(1)),
            &content,
        );
        let mut dirty = clean.clone();
        fvhdx::make_dirty(&mut dirty, uuid::Uuid::from_u128(2), None);
        let open = |p: &std::path::Path| crate::open(p, &crate::OpenOptions::default()).unwrap();
        // (case, image, layers with a file to map)
        let cases: [(&str, Box<dyn DiskImage>, Vec<bool>); 4] = [
            // The file is the disk.
            ("raw file", open(&raw), vec![true]),
            // Payload blocks are ranges of the file.
            (
                "clean vhdx",
                open(&fvhdx::write_file(dir.path(), "c.vhdx", &clean.bytes)),
                vec![true],
            ),
            // Read through the log replayed in memory: the file's bytes are not the disk's.
            (
                "dirty vhdx",
                open(&fvhdx::write_file(dir.path(), "d.vhdx", &dirty.bytes)),
                vec![false],
            ),
            // Memory has no file.
            (
                "memory",
                crate::open_bytes(content.clone()).unwrap(),
                vec![false],
            ),
        ];
        for (name, image, want) in cases {
            let files = SourceFiles::new(image.as_ref(), true);
            let got: Vec<bool> = files.sizes.iter().map(Option::is_some).collect();
            assert_eq!(got, want, "{name}");
            // Mappings are made on Linux only.
            let mapped = want.contains(&true) && cfg!(target_os = "linux");
            assert_eq!(files.lost.is_some(), mapped, "{name}");
            // Switched off: nothing is mapped, the files are still watched for a cut.
            let off = SourceFiles::new(image.as_ref(), false);
            assert!(off.lost.is_none(), "{name}");
            assert!(!off.cut(image.as_ref(), true), "{name}");
        }
    }

    #[test]
    fn aimd_cuts_on_throttle_and_recovers() {
        let a = Aimd::new(8);
        assert_eq!(a.limit(), 8);
        // One burst of 503s is one signal: cut to 70 % once.
        a.throttled();
        a.throttled();
        assert_eq!(a.limit(), 5);
        // Never below one request in flight.
        for _ in 0..20 {
            a.state.lock().unwrap().1 = None;
            a.throttled();
        }
        assert_eq!(a.limit(), 1);
        // Successes grow it back gradually, up to the configured maximum and no further.
        for _ in 0..3 {
            a.success();
        }
        assert!((2..=3).contains(&a.limit()), "{}", a.limit());
        for _ in 0..1000 {
            a.success();
        }
        assert_eq!(a.limit(), 8);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = super::super::RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for (attempt, lo, hi) in [(1, 50, 100), (2, 100, 200), (3, 200, 400), (10, 500, 1000)] {
            let d = crate::storage::retry::backoff(&p, attempt).as_millis();
            assert!((lo..=hi).contains(&d), "attempt {attempt}: {d} ms");
        }
    }

    /// Red team rt7: random page layouts built to put request boundaries inside steps
    /// (requests starting at odd pages, zero gaps around the bridge, pieces with gaps or
    /// touching, pages whose first word is zero): the speculative scan must give the plain
    /// scan's requests and, for each, the CRC-64 of its body.
    #[test]
    fn rt7_speculation_holds_on_random_hostile_layouts() {
        let mut rng = 0x5eed_u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n.max(1)
        };
        let mut adopted_total = 0u32;
        for case in 0..40 {
            let bridge = [0u64, 512, 4096, 64 << 10, 1 << 20][usize_from(next(5))];
            let step = [4096usize, 64 << 10, 256 << 10, 256 << 10][usize_from(next(4))];
            let npieces = 1 + next(4);
            let mut pieces: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut at = next(16) * 512;
            for _ in 0..npieces {
                let pages = usize_from(1 + next(3 * 8192 + 200));
                let mut v = Vec::with_capacity(pages * 512);
                let mode = next(6);
                let mut p = 0;
                while p < pages {
                    // A run of pages of one kind, lengths around the bridge and the step.
                    let k = [1, 8, 127, 128, 129, 512, 2048][usize_from(next(7))];
                    let run = usize_from(1 + next(k)).min(pages - p);
                    let zero = match mode {
                        0 => false,
                        1 => next(16) == 0,
                        2 => next(2) == 0,
                        _ => next(4) != 0,
                    };
                    for _ in 0..run {
                        let mut page = [0u8; 512];
                        if !zero {
                            match next(4) {
                                // First word zero, data later.
                                0 => page[8 + usize_from(next(504))] = 1 + next(255) as u8,
                                1 => page[511] = 0x80,
                                _ => page.copy_from_slice(&pattern(next(256) as u8, 512)),
                            }
                        }
                        v.extend_from_slice(&page);
                    }
                    p += run;
                }
                pieces.push((at, v));
                at += (pages as u64) * 512 + [0, 0, 512, 64 << 10, 3 << 20][usize_from(next(5))];
            }
            let (plain, _) = scan_stream(&pieces, step, false, bridge);
            let (spec, adopted) = scan_stream(&pieces, step, true, bridge);
            adopted_total += adopted;
            assert_eq!(spec, plain, "case {case} step {step} bridge {bridge}");
            let all: std::collections::VecDeque<(Range<u64>, Bytes)> = pieces
                .iter()
                .map(|(s, b)| (*s..s + b.len() as u64, Bytes::from(b.clone())))
                .collect();
            let mut covered = 0u64;
            for (req, integ) in &spec {
                assert!(req.end - req.start <= super::super::plan::MAX_PUT_PAGE);
                let body = body_for(req, &all);
                assert_eq!(
                    integ,
                    &integrity_value(Integrity::Crc64, &body),
                    "case {case} {req:?}"
                );
                covered += req.end - req.start;
            }
            // Every non-zero page is in a request (requests are sorted and disjoint).
            for (s, b) in &pieces {
                for (i, page) in b.chunks(512).enumerate() {
                    if page.iter().any(|&x| x != 0) {
                        let o = s + (i as u64) * 512;
                        let k = spec.partition_point(|(r, _)| r.end <= o);
                        assert!(
                            spec.get(k).is_some_and(|(r, _)| r.contains(&o)),
                            "case {case}: page {o} lost"
                        );
                    }
                }
            }
            assert!(covered > 0 || pieces.iter().all(|(_, b)| b.iter().all(|&x| x == 0)));
        }
        assert!(adopted_total > 20, "only {adopted_total} speculations used");
    }
}
