//! One measured step: every data request of the synthetic disk, then its footer page, sent
//! with a fixed number of requests in flight.
//!
//! Each request is what `upload` sends for the same bytes: a fresh buffer (upload's reader
//! reads each request into one), its `x-ms-content-crc64` ([`crc64_header`]), the same Put
//! Page builder ([`BlobClient::put_page_if_sequence`], conditional on the sequence number of
//! a blob the bench created), upload's timeout for the request's size, and the shared retry
//! loop ([`with_retries`]: the same classes of failure retried, the same backoff with
//! jitter). One difference, on purpose: upload cuts its requests in flight when throttled
//! (AIMD), while a step keeps its concurrency fixed, so that each step measures that one
//! concurrency and its 503/429 count shows where upload would start cutting.

use super::plan::SyntheticDisk;
use super::stats::{cpu_time, Latencies};
use super::target::StepBlob;
use super::{BenchOptions, Step, GIB, MIB};
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Cancel;
use crate::storage::blob::crc64_header;
use crate::storage::retry::with_retries;
use crate::storage::{Failure, Integrity};
use bytes::Bytes;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// After Ctrl-C, how long requests in flight may take to finish before they are dropped
/// (a blob in a container is deleted afterwards, so a write landing late does no harm).
const CANCEL_GRACE: Duration = Duration::from_millis(600);

#[derive(Default)]
struct Tally {
    latencies: Latencies,
    s503: u64,
    s429: u64,
    s500: u64,
    retries: u64,
}

/// What every sender of a step shares.
struct Shared {
    blob: StepBlob,
    disk: SyntheticDisk,
    /// Random bytes the request bodies are copied from.
    payload: Bytes,
    /// The footer page, sent last.
    footer: Bytes,
    /// The next request to take: data requests `0..n`, then `n` is the footer.
    next: AtomicU64,
    /// Set when a request failed for good: no sender starts another.
    failed: AtomicBool,
    tally: Mutex<Tally>,
    opts: BenchOptions,
    cancel: Cancel,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.cancel.is_cancelled() || self.failed.load(Ordering::Relaxed)
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Upload's client timeout for a request of `len` bytes.
    fn timeout_for(&self, len: u64) -> Duration {
        #[allow(clippy::cast_precision_loss)] // at most 4 MiB
        let mib = len as f64 / MIB as f64;
        self.opts.request_timeout + self.opts.timeout_per_mib.mul_f64(mib)
    }

    /// Request `i`'s range and body, or `None` past the footer. The footer goes only after
    /// every data request has completed, as upload sends it (`wait_for_data`).
    fn request(&self, i: u64) -> Option<(Range<u64>, Bytes)> {
        let n = self.disk.data_requests();
        match i.cmp(&n) {
            std::cmp::Ordering::Less => {
                let r = self.disk.data_request(i);
                let len = usize::try_from(r.end - r.start).unwrap_or(0);
                // A buffer of its own, as upload's reader fills one per request.
                Some((r, Bytes::from(self.payload[..len].to_vec())))
            }
            std::cmp::Ordering::Equal => Some((self.disk.footer(), self.footer.clone())),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// Count what a retried attempt ran into.
    fn retried(&self, f: &Failure) {
        let mut t = self.tally();
        t.retries += 1;
        if let Failure::Status { status, .. } = f {
            match status {
                503 => t.s503 += 1,
                429 => t.s429 += 1,
                500 => t.s500 += 1,
                _ => {}
            }
        }
    }

    /// Put one page range as upload does, retried with the shared policy.
    async fn put(&self, range: Range<u64>, body: Bytes) -> std::result::Result<(), Failure> {
        let integrity = (Integrity::Crc64, crc64_header(&body));
        let timeout = self.timeout_for(range.end - range.start);
        let on_retry = |f: &Failure| self.retried(f);
        with_retries(&self.opts.retry, &self.cancel, &on_retry, || {
            self.blob.client.put_page_if_sequence(
                range.clone(),
                Some(body.clone()),
                Some(integrity.clone()),
                self.blob.seq,
                timeout,
            )
        })
        .await
    }
}

/// One sender: takes the next request until none is left, the step failed or was stopped.
async fn sender(sh: Arc<Shared>, done: Arc<AtomicU64>) -> std::result::Result<u64, Failure> {
    let mut sent = 0u64;
    let n = sh.disk.data_requests();
    loop {
        if sh.stopped() {
            return Ok(sent);
        }
        let i = sh.next.fetch_add(1, Ordering::Relaxed);
        let Some((range, body)) = sh.request(i) else {
            return Ok(sent);
        };
        if i == n {
            // The footer: only once every data request is in.
            while done.load(Ordering::Acquire) < n {
                if sh.stopped() {
                    return Ok(sent);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let len = range.end - range.start;
        let t0 = Instant::now();
        sh.put(range, body).await?;
        sh.tally().latencies.record(t0.elapsed());
        sent += len;
        if i < n {
            done.fetch_add(1, Ordering::Release);
        }
    }
}

/// Send the whole synthetic disk to `blob` with `conc` requests in flight and measure it.
/// On Ctrl-C no new request starts; requests in flight finish, and when `wait_in_flight` is
/// false (a blob that is deleted afterwards) they are dropped after a short grace.
pub(super) async fn run_step(
    blob: StepBlob,
    disk: &SyntheticDisk,
    conc: usize,
    payload: &Bytes,
    footer: &Bytes,
    opts: &BenchOptions,
    cancel: &Cancel,
    wait_in_flight: bool,
) -> Result<Step> {
    let shown = blob.client.display().to_string();
    let sh = Arc::new(Shared {
        blob,
        disk: disk.clone(),
        payload: payload.clone(),
        footer: footer.clone(),
        next: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        tally: Mutex::new(Tally::default()),
        opts: opts.clone(),
        cancel: cancel.clone(),
    });
    let done = Arc::new(AtomicU64::new(0));
    let cpu_start = cpu_time();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conc {
        tasks.spawn(sender(sh.clone(), done.clone()));
    }
    let mut bytes = 0u64;
    let mut failed = None;
    let stop = async {
        cancel.cancelled().await;
        tokio::time::sleep(CANCEL_GRACE).await;
    };
    tokio::pin!(stop);
    loop {
        let r = tokio::select! {
            r = tasks.join_next() => r,
            () = &mut stop, if !wait_in_flight => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        };
        match r {
            None => break,
            Some(Ok(Ok(b))) => bytes += b,
            Some(Ok(Err(f))) => {
                failed.get_or_insert(f);
                // The others stop at their next request (no new one starts).
                if !wait_in_flight {
                    tasks.abort_all();
                }
                sh.failed.store(true, Ordering::Relaxed);
            }
            Some(Err(e)) if e.is_cancelled() => {}
            Some(Err(e)) => {
                failed.get_or_insert(Failure::network(format!("a sender task failed: {e}")));
            }
        }
    }
    if cancel.is_cancelled() {
        return Err(Error::new(
            ErrorKind::Interrupted,
            "upload.cancelled",
            "interrupted on request (Ctrl-C)",
        ));
    }
    if let Some(f) = failed {
        return Err(f.into_error("writing pages of the bench blob", &shown));
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-6);
    let cpu = cpu_start
        .zip(cpu_time())
        .map(|(a, b)| b.saturating_sub(a).as_secs_f64());
    #[allow(clippy::cast_precision_loss)]
    let (cpus, gib) = (
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64,
        bytes.max(1) as f64 / GIB as f64,
    );
    let t = std::mem::take(&mut *sh.tally());
    #[allow(clippy::cast_precision_loss)]
    let (mib, requests) = (bytes as f64 / MIB as f64, t.latencies.count() as f64);
    Ok(Step {
        concurrency: conc,
        bytes,
        seconds,
        mib_per_s: mib / seconds,
        requests_per_s: requests / seconds,
        p50_ms: t.latencies.percentile(0.50),
        p95_ms: t.latencies.percentile(0.95),
        p99_ms: t.latencies.percentile(0.99),
        status_503: t.s503,
        status_429: t.s429,
        status_500: t.s500,
        retries: t.retries,
        cpu_seconds_per_gib: cpu.map(|c| c / gib),
        cpu_share: cpu.map(|c| (c / seconds / cpus).min(1.0)),
    })
}
