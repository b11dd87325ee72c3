//! `vhdforge bench`: how fast this machine can fill a page blob, and what limits it.
//!
//! A sparse fixed VHD is generated in memory ([`plan`]: nothing is read from disk, so the
//! figures are the network's and the service's) and sent once per concurrency step
//! ([`step`]: upload's Put Page requests, CRC-64, timeouts, retry policy and backoff) into
//! the destination ([`target`]): a new blob per step in a container, or the user's empty
//! managed disk. Each step records throughput, request latencies, the throttling and error
//! answers, retries and the client's CPU time ([`stats`]); the sweep ends with a verdict
//! (client-, network- or service-bound), the `--concurrency` to use and the time a typical
//! disk would take. Whatever the outcome, Ctrl-C included, the bench then deletes its blobs
//! or clears its pages from the disk, unless asked to keep them.

// Statistics: byte counts and request counts become f64 rates, where 52 bits of mantissa
// are far more than any figure shown needs.
#![allow(clippy::cast_precision_loss)]
// run_step is one measured loop whose inputs are passed explicitly rather than bundled for
// the call site's sake.
#![allow(clippy::too_many_arguments)]

mod plan;
mod stats;
mod step;
mod svg;
mod target;

pub use svg::plot_svg;

use crate::error::{Error, ErrorKind, Result};
use crate::format::vhd::footer::HardDiskFooter;
use crate::progress::Cancel;
use crate::storage::{CredentialEnv, RetryPolicy};
use bytes::Bytes;
use plan::SyntheticDisk;
use std::time::Duration;
use target::Target;

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
    /// Virtual size of the synthetic disk: rounded up to a MiB in a container (default
    /// 8 GiB); on a managed disk it must be the disk's own (its size less the footer), which
    /// is also the default.
    pub size: Option<u64>,
    /// Share of the disk holding data, 0–1 (the rest is zeros, never sent).
    pub data_fraction: f64,
    /// Concurrency steps; empty means `auto`.
    pub concurrency: Vec<usize>,
    /// Bytes per Put Page (512-aligned, at most 4 MiB).
    pub request_size: u64,
    /// Keep the blobs instead of deleting them (leave the pages on a managed disk).
    pub keep: bool,
    /// Treat DEST as a managed-disk upload SAS whatever its host.
    pub managed_disk: bool,
    /// x-ms-version.
    pub api_version: String,
    /// Credentials besides a SAS in the URL.
    pub credentials: CredentialEnv,
    /// Retries (the same policy as `upload`).
    pub retry: RetryPolicy,
    /// Client timeout of a request with no body (upload's).
    pub request_timeout: Duration,
    /// Extra client timeout per MiB of body (upload's).
    pub timeout_per_mib: Duration,
}

impl Default for BenchOptions {
    fn default() -> Self {
        let upload = crate::upload::UploadOptions::default();
        BenchOptions {
            size: None,
            data_fraction: 0.25,
            concurrency: Vec::new(),
            request_size: 4 * MIB,
            keep: false,
            managed_disk: false,
            api_version: upload.api_version,
            credentials: CredentialEnv::default(),
            retry: upload.retry,
            request_timeout: upload.request_timeout,
            timeout_per_mib: upload.timeout_per_mib,
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
    /// The container or managed disk, redacted.
    pub destination: String,
    /// True when DEST was a managed disk (written in place, then cleared).
    pub managed_disk: bool,
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
    /// Blobs left behind, or the managed disk left holding the bench's pages (`--keep`),
    /// redacted URLs.
    pub kept: Vec<String>,
}

pub(crate) fn bad(msg: String) -> Error {
    Error::new(ErrorKind::InvalidInput, "bench.options", msg)
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

/// The options a sweep cannot run with, before anything is sent.
fn check_options(opts: &BenchOptions) -> Result<()> {
    if opts.request_size == 0 || opts.request_size % 512 != 0 || opts.request_size > 4 * MIB {
        return Err(bad(format!(
            "--request-size {} is not a multiple of 512 bytes up to 4 MiB (a Put Page's limit)",
            opts.request_size
        )));
    }
    if !(opts.data_fraction > 0.0 && opts.data_fraction <= 1.0) {
        return Err(bad("--data must be above 0% and at most 100%".into()));
    }
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
    Ok(())
}

/// What a sweep did: the steps measured, the blob names it used (created or not), and how
/// it ended.
struct Sweep {
    steps: Vec<Step>,
    names: Vec<String>,
    outcome: Result<()>,
}

/// The concurrency steps, one after the other, until the plan or `auto` ends them, or one
/// fails or is interrupted.
async fn sweep(
    target: &Target,
    disk: &SyntheticDisk,
    payload: &Bytes,
    footer: &Bytes,
    opts: &BenchOptions,
    cancel: &Cancel,
    on_step: &(dyn Fn(&Step) + Sync),
) -> Sweep {
    let tag: u32 = rand::random();
    let auto = opts.concurrency.is_empty();
    let plan: Vec<usize> = if auto {
        AUTO_STEPS.to_vec()
    } else {
        opts.concurrency.clone()
    };
    let mut steps: Vec<Step> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut outcome = Ok(());
    for (i, &c) in plan.iter().enumerate() {
        // The step's index too: `--concurrency 4,4` measures twice, into two blobs.
        let name = format!("vhdforge-bench-{tag:08x}-{i}-c{c}.vhd");
        // Recorded before the blob is created: a create that reached the service although
        // its answer did not is deleted too.
        names.push(name.clone());
        let result = match target.step_blob(&name, disk, &opts.retry, cancel).await {
            Ok(blob) => {
                // A managed disk is cleared afterwards: a write still in flight then could
                // land after the clearing, so those are waited for; a blob is deleted, and a
                // late write to a deleted blob fails.
                let wait = target.is_managed_disk();
                step::run_step(blob, disk, c, payload, footer, opts, cancel, wait).await
            }
            Err(e) => Err(e),
        };
        match result {
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
    Sweep {
        steps,
        names,
        outcome,
    }
}

/// Run the sweep against `dest`: a container URL, or a managed disk's upload SAS.
pub async fn run(
    dest: &str,
    opts: &BenchOptions,
    cancel: &Cancel,
    on_step: &(dyn Fn(&Step) + Sync),
) -> Result<BenchReport> {
    check_options(opts)?;
    let target = Target::resolve(dest, opts, crate::upload::MAX_CONCURRENCY)?;
    // Nothing has been written yet: a refusal here (a managed disk of another size, or one
    // holding data) leaves nothing to clean up.
    let disk_size = target.prepare(opts.size, &opts.retry, cancel).await?;
    let disk = SyntheticDisk::new(disk_size, opts.request_size, opts.data_fraction);
    // Incompressible bytes, generated once; each request copies its body from them.
    let payload = {
        use rand::RngCore;
        let mut b = vec![0u8; usize::try_from(opts.request_size).unwrap_or(0)];
        rand::thread_rng().fill_bytes(&mut b);
        Bytes::from(b)
    };
    // A real fixed-VHD footer, so a kept blob is a valid (random) disk.
    let footer =
        Bytes::copy_from_slice(&HardDiskFooter::new_fixed(disk_size, rand::random(), 0).to_bytes());
    let Sweep {
        steps,
        names,
        outcome,
    } = sweep(&target, &disk, &payload, &footer, opts, cancel, on_step).await;
    let keep = opts.keep && outcome.is_ok();
    let cleaned = if keep {
        Ok(())
    } else {
        target.clean_up(&names, &disk).await
    };
    let kept = match (&target, keep) {
        (_, false) => Vec::new(),
        (Target::ManagedDisk(_), true) => vec![target.display().to_string()],
        (Target::Container(c), true) => names
            .iter()
            .map(|n| c.child(n).display().to_string())
            .collect(),
    };
    match (outcome, cleaned) {
        // Interrupted or failed: say so, and what the clean-up did.
        (Err(e), Ok(())) => {
            let done = if target.is_managed_disk() {
                "the bench's pages were cleared from the disk"
            } else {
                "the bench blobs were deleted"
            };
            let code = e.code();
            return Err(e.context(code, format!("the bench stopped; {done}")));
        }
        (Err(e), Err(c)) => {
            let code = c.code();
            return Err(e.context(code, c.to_string()));
        }
        (Ok(()), Err(c)) => return Err(c),
        (Ok(()), Ok(())) => {}
    }
    let (verdict, reason, rec) = judge(&steps);
    let best = steps
        .iter()
        .map(|s| s.mib_per_s)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    Ok(BenchReport {
        destination: target.display().to_string(),
        managed_disk: target.is_managed_disk(),
        size: disk_size,
        data_bytes: disk.data_bytes(),
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
    }
}
