//! `vhdforge bench`: how fast this machine can fill a page blob, and what limits it.
//!
//! A sparse fixed VHD is generated in memory (nothing is read from disk, so the figures are
//! the network's and the service's), and uploaded once per concurrency step into a new blob
//! of the destination container, through the same [`BlobClient`] Put Page requests, retry
//! policy and backoff as `upload`. Each step records throughput, request latencies, the
//! throttling and error answers, retries and the client's CPU time; the sweep ends with a
//! verdict (client-, network- or service-bound), the `--concurrency` to use and the time a
//! typical disk would take. Every blob it creates is deleted again unless asked to keep them.

// Statistics: byte counts, request counts and latencies become f64 rates and percentiles,
// where 52 bits of mantissa are far more than any figure shown needs.
#![allow(clippy::cast_precision_loss)]
// run_step is one measured loop (setup, senders, tally) that reads best in one piece, with
// the step's inputs passed explicitly rather than bundled for the call site's sake.
#![allow(
    clippy::too_many_arguments,
    clippy::too_many_lines,
    clippy::similar_names
)]

mod svg;

pub use svg::plot_svg;

use crate::error::{Error, ErrorKind, Result};
use crate::progress::Cancel;
use crate::storage::retry::with_retries;
use crate::storage::{BlobClient, CredentialEnv, Failure, RetryPolicy};
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Throttled answers (503/429) above this share of a step's requests: the service is the
/// limit, and `auto` stops raising concurrency.
pub const THROTTLE_THRESHOLD: f64 = 0.02;

/// `auto` stops when a step is less than this much faster than the previous one.
const MIN_GAIN: f64 = 0.10;

/// The steps `auto` tries, in order (each doubling; 16 is the most `upload` uses).
const AUTO_STEPS: &[usize] = &[1, 2, 4, 8, 16];

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Virtual size of the synthetic disk (rounded up to a MiB).
    pub size: u64,
    /// Share of the disk holding data, 0–1 (the rest is zeros, never sent).
    pub data_fraction: f64,
    /// Concurrency steps; empty means `auto`.
    pub concurrency: Vec<usize>,
    /// Bytes per Put Page (512-aligned, at most 4 MiB).
    pub request_size: u64,
    /// Keep the blobs instead of deleting them.
    pub keep: bool,
    /// x-ms-version.
    pub api_version: String,
    /// Credentials besides a SAS in the URL.
    pub credentials: CredentialEnv,
    /// Retries (the same policy as `upload`).
    pub retry: RetryPolicy,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            size: 8 * GIB,
            data_fraction: 0.25,
            concurrency: Vec::new(),
            request_size: 4 * MIB,
            keep: false,
            api_version: crate::upload::DEFAULT_API_VERSION.into(),
            credentials: CredentialEnv::default(),
            retry: RetryPolicy::default(),
        }
    }
}

/// One concurrency step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// Requests in flight.
    pub concurrency: usize,
    /// Data bytes sent (successful requests).
    pub bytes: u64,
    /// Wall time of the step.
    pub seconds: f64,
    /// Throughput.
    pub mib_per_s: f64,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Latency percentiles of successful requests (milliseconds, retries included).
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 503 answers.
    pub status_503: u64,
    /// 429 answers.
    pub status_429: u64,
    /// 500 answers.
    pub status_500: u64,
    /// Retried attempts (any cause).
    pub retries: u64,
    /// Client CPU seconds (user + system) per GiB sent; null where not measured.
    pub cpu_seconds_per_gib: Option<f64>,
    /// Share of the machine's CPUs busy during the step, 0–1; null where not measured.
    pub cpu_share: Option<f64>,
}

impl Step {
    /// Throttled answers over successful requests.
    #[must_use]
    pub fn throttle_rate(&self) -> f64 {
        let ok = self.requests_per_s * self.seconds;
        if ok <= 0.0 {
            return 0.0;
        }
        (self.status_503 + self.status_429) as f64 / ok
    }
}

/// The result of a sweep.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// The container, redacted.
    pub destination: String,
    /// Synthetic disk size.
    pub size: u64,
    /// Data bytes per step.
    pub data_bytes: u64,
    /// Bytes per request.
    pub request_size: u64,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// `client`, `network` or `service`.
    pub verdict: String,
    /// Why.
    pub reason: String,
    /// The `--concurrency` for `upload`.
    pub recommended_concurrency: usize,
    /// Projected upload time of a 30 GiB disk holding 8 GiB of data, seconds.
    pub projected_seconds_30g_8g: f64,
    /// Blobs left behind (`--keep`), redacted URLs.
    pub kept: Vec<String>,
}

fn bad(msg: String) -> Error {
    Error::new(ErrorKind::InvalidInput, "bench.options", msg)
}

/// The container client for `dest` (a container URL, optionally with a SAS).
fn container_client(dest: &str, opts: &BenchOptions, conns: usize) -> Result<BlobClient> {
    let mut url = reqwest::Url::parse(dest).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            "upload.url",
            format!("{} is not a container URL ({e}); expected https://ACCOUNT.blob.core.windows.net/CONTAINER[?SAS]", crate::storage::redact(dest)),
        )
    })?;
    // A placeholder blob name makes it a blob URL the shared client accepts; only its
    // container is used.
    url.path_segments_mut()
        .map_err(|()| bad("DEST cannot be a base URL".into()))?
        .pop_if_empty()
        .push("vhdforge-bench-placeholder");
    let c = BlobClient::new(url.as_str(), &opts.credentials, &opts.api_version, conns)?;
    Ok(c.container())
}

/// The data chunks of the synthetic disk: `request_size` pieces spread evenly so that
/// `fraction` of the disk holds data (the zero pieces are skipped, as `upload` skips them).
fn data_chunks(disk: u64, request: u64, fraction: f64) -> Vec<u64> {
    let n = disk.div_ceil(request);
    let mut out = Vec::new();
    let mut acc = 0.0f64;
    for i in 0..n {
        acc += fraction;
        if acc >= 1.0 - 1e-9 {
            acc -= 1.0;
            out.push(i * request);
        }
    }
    out
}

/// Process CPU time (user + system), where the platform reports it.
fn cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        // SAFETY: getrusage only writes the struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut ru) } != 0 {
            return None;
        }
        let tv = |t: libc::timeval| {
            Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
                + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
        };
        Some(tv(ru.ru_utime) + tv(ru.ru_stime))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    s503: u64,
    s429: u64,
    s500: u64,
    retries: u64,
}

/// Run one step: a new blob, every data chunk and the footer sent with `conc` in flight.
async fn run_step(
    container: &BlobClient,
    name: &str,
    conc: usize,
    output_size: u64,
    chunks: &Arc<Vec<u64>>,
    payload: &Bytes,
    opts: &BenchOptions,
    cancel: &Cancel,
) -> Result<Step> {
    let blob = container.child(name);
    let shown = blob.display().to_string();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let quiet = |_: &Failure| {};
    with_retries(&opts.retry, cancel, &quiet, || {
        blob.create_page_blob(output_size, false)
    })
    .await
    .map_err(|f| f.into_error("creating the bench blob", &shown))?;
    let cpu0 = cpu_time();
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (blob, chunks, payload, tally, next, cancel, retry) = (
            blob.clone(),
            chunks.clone(),
            payload.clone(),
            tally.clone(),
            next.clone(),
            cancel.clone(),
            opts.retry.clone(),
        );
        let disk_end = output_size - 512;
        tasks.spawn(async move {
            let mut sent = 0u64;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // The last "chunk" is the footer page, sent after the data as upload does.
                let (start, body) = match chunks.get(i) {
                    Some(&s) => {
                        let len = payload
                            .len()
                            .min(usize::try_from(disk_end - s).unwrap_or(usize::MAX));
                        (s, payload.slice(..len))
                    }
                    None if i == chunks.len() => (disk_end, payload.slice(..512)),
                    None => return Ok::<u64, Failure>(sent),
                };
                let t0 = Instant::now();
                let count = |f: &Failure| {
                    let mut t = tally
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    t.retries += 1;
                    if let Failure::Status { status, .. } = f {
                        match status {
                            503 => t.s503 += 1,
                            429 => t.s429 += 1,
                            500 => t.s500 += 1,
                            _ => {}
                        }
                    }
                };
                let len = body.len() as u64;
                with_retries(&retry, &cancel, &count, || {
                    blob.put_page(start, body.clone(), None, Duration::from_secs(120))
                })
                .await?;
                sent += len;
                tally
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .latencies_ms
                    .push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        });
    }
    let mut bytes = 0u64;
    let mut failed = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(b)) => bytes += b,
            Ok(Err(f)) => {
                failed.get_or_insert(f);
                tasks.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                failed.get_or_insert(Failure::network(format!("a sender task failed: {e}")));
            }
        }
    }
    if cancel.is_cancelled() {
        return Err(Error::new(
            ErrorKind::Interrupted,
            "upload.cancelled",
            "interrupted on request (Ctrl-C); the bench blobs are deleted",
        ));
    }
    if let Some(f) = failed {
        return Err(f.into_error("writing pages of the bench blob", &shown));
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-6);
    let cpu = cpu0
        .zip(cpu_time())
        .map(|(a, b)| b.saturating_sub(a).as_secs_f64());
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    let mut t = std::mem::take(
        &mut *tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    t.latencies_ms.sort_by(f64::total_cmp);
    let requests = t.latencies_ms.len() as f64;
    Ok(Step {
        concurrency: conc,
        bytes,
        seconds,
        mib_per_s: bytes as f64 / MIB as f64 / seconds,
        requests_per_s: requests / seconds,
        p50_ms: percentile(&t.latencies_ms, 0.50),
        p95_ms: percentile(&t.latencies_ms, 0.95),
        p99_ms: percentile(&t.latencies_ms, 0.99),
        status_503: t.s503,
        status_429: t.s429,
        status_500: t.s500,
        retries: t.retries,
        cpu_seconds_per_gib: cpu.map(|c| c / (bytes.max(1) as f64 / GIB as f64)),
        cpu_share: cpu.map(|c| (c / seconds / cpus).min(1.0)),
    })
}

/// The verdict, its reason and the recommended concurrency from the steps.
#[must_use]
pub fn judge(steps: &[Step]) -> (String, String, usize) {
    let Some(best) = steps
        .iter()
        .max_by(|a, b| a.mib_per_s.total_cmp(&b.mib_per_s))
    else {
        return ("none".into(), "no step ran".into(), 1);
    };
    // The smallest concurrency within 5 % of the best: more only adds load.
    let rec = steps
        .iter()
        .filter(|s| s.mib_per_s >= best.mib_per_s * 0.95)
        .map(|s| s.concurrency)
        .min()
        .unwrap_or(best.concurrency);
    let throttled = steps
        .iter()
        .find(|s| s.throttle_rate() > THROTTLE_THRESHOLD);
    if let Some(t) = throttled {
        return (
            "service".into(),
            format!(
                "the service throttled {:.1}% of requests at concurrency {} (503/429): more connections will not help; \
                 a destination in another storage account (or a managed disk) would",
                t.throttle_rate() * 100.0,
                t.concurrency
            ),
            rec,
        );
    }
    if best.cpu_share.is_some_and(|c| c > 0.7) {
        return (
            "client".into(),
            format!(
                "this machine's CPUs were {:.0}% busy at the best step: a faster or less loaded client would go faster",
                best.cpu_share.unwrap_or(0.0) * 100.0
            ),
            rec,
        );
    }
    (
        "network".into(),
        format!(
            "throughput levels off at {:.1} MiB/s without throttling and with CPUs to spare: the network path is the limit",
            best.mib_per_s
        ),
        rec,
    )
}

/// Run the sweep against the container `dest`.
pub async fn run(
    dest: &str,
    opts: &BenchOptions,
    cancel: &Cancel,
    on_step: &(dyn Fn(&Step) + Sync),
) -> Result<BenchReport> {
    if opts.request_size == 0 || opts.request_size % 512 != 0 || opts.request_size > 4 * MIB {
        return Err(bad(format!(
            "--request-size {} is not a multiple of 512 bytes up to 4 MiB (a Put Page's limit)",
            opts.request_size
        )));
    }
    if !(opts.data_fraction > 0.0 && opts.data_fraction <= 1.0) {
        return Err(bad("--data must be above 0% and at most 100%".into()));
    }
    let disk = opts.size.div_ceil(MIB).max(1) * MIB;
    let output_size = disk + 512;
    if let Some(&c) = opts
        .concurrency
        .iter()
        .find(|&&c| c == 0 || c > crate::upload::MAX_CONCURRENCY)
    {
        return Err(bad(format!(
            "--concurrency {c}: each step must be 1 to {}",
            crate::upload::MAX_CONCURRENCY
        )));
    }
    let container = container_client(dest, opts, crate::upload::MAX_CONCURRENCY)?;
    // A container that does not exist yet is created (an existing one is fine); a SAS that
    // may not create containers fails here harmlessly, and the blob creation that follows
    // then says what is wrong.
    let _ = container.create_container().await;
    let chunks = Arc::new(data_chunks(disk, opts.request_size, opts.data_fraction));
    let data_bytes: u64 = chunks
        .iter()
        .map(|&s| opts.request_size.min(disk - s))
        .sum();
    // Incompressible bytes, generated once and shared by every request.
    let payload = {
        use rand::RngCore;
        let mut b = vec![0u8; usize::try_from(opts.request_size).unwrap_or(0)];
        rand::thread_rng().fill_bytes(&mut b);
        Bytes::from(b)
    };
    let tag: u32 = rand::random();
    let plan: Vec<usize> = if opts.concurrency.is_empty() {
        AUTO_STEPS.to_vec()
    } else {
        opts.concurrency.clone()
    };
    let auto = opts.concurrency.is_empty();
    let mut steps: Vec<Step> = Vec::new();
    let mut created: Vec<BlobClient> = Vec::new();
    let mut outcome = Ok(());
    for &c in &plan {
        let name = format!("vhdforge-bench-{tag:08x}-c{c}.vhd");
        created.push(container.child(&name));
        match run_step(
            &container,
            &name,
            c,
            output_size,
            &chunks,
            &payload,
            opts,
            cancel,
        )
        .await
        {
            Ok(s) => {
                on_step(&s);
                let stop = auto
                    && (s.throttle_rate() > THROTTLE_THRESHOLD
                        || steps
                            .last()
                            .is_some_and(|p| s.mib_per_s < p.mib_per_s * (1.0 + MIN_GAIN)));
                steps.push(s);
                if stop {
                    break;
                }
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    // Clean up, Ctrl-C or not (a fresh token: the run's own may be cancelled).
    let mut kept = Vec::new();
    let mut cleanup_failed = None;
    for b in &created {
        if opts.keep && outcome.is_ok() {
            kept.push(b.display().to_string());
        } else if let Err(f) = with_retries(
            &RetryPolicy::default(),
            &Cancel::never(),
            &|_: &Failure| {},
            || b.delete(),
        )
        .await
        {
            cleanup_failed.get_or_insert(f.into_error("deleting the bench blob", b.display()));
        }
    }
    outcome?;
    if let Some(e) = cleanup_failed {
        return Err(e);
    }
    let (verdict, reason, rec) = judge(&steps);
    let best = steps
        .iter()
        .map(|s| s.mib_per_s)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    Ok(BenchReport {
        destination: container.display().to_string(),
        size: disk,
        data_bytes,
        request_size: opts.request_size,
        steps,
        verdict,
        reason,
        recommended_concurrency: rec,
        projected_seconds_30g_8g: 8.0 * 1024.0 / best,
        kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_spread_the_data_share() {
        let c = data_chunks(100 * MIB, 4 * MIB, 0.25);
        assert_eq!(c.len(), 6); // 25 requests of 4 MiB, one in four
        assert_eq!(c[0], 12 * MIB);
        assert_eq!(data_chunks(8 * MIB, 4 * MIB, 1.0).len(), 2);
    }

    fn step(c: usize, mib: f64, s503: u64, cpu: f64) -> Step {
        Step {
            concurrency: c,
            bytes: 0,
            seconds: 10.0,
            mib_per_s: mib,
            requests_per_s: 10.0,
            p50_ms: 1.0,
            p95_ms: 2.0,
            p99_ms: 3.0,
            status_503: s503,
            status_429: 0,
            status_500: 0,
            retries: s503,
            cpu_seconds_per_gib: None,
            cpu_share: Some(cpu),
        }
    }

    #[test]
    fn verdicts() {
        let flat = [
            step(1, 50.0, 0, 0.1),
            step(2, 90.0, 0, 0.1),
            step(4, 92.0, 0, 0.1),
        ];
        assert_eq!(judge(&flat), ("network".into(), judge(&flat).1, 2));
        let throttled = [step(1, 50.0, 0, 0.1), step(2, 60.0, 20, 0.1)];
        assert_eq!(judge(&throttled).0, "service");
        let busy = [step(1, 50.0, 0, 0.9)];
        assert_eq!(judge(&busy).0, "client");
        assert!((percentile(&[1.0, 2.0, 3.0, 4.0], 0.5) - 2.0).abs() < 1e-9);
        assert!((percentile(&[1.0, 2.0, 3.0, 4.0], 0.99) - 4.0).abs() < 1e-9);
    }
}
