//! `verify`: does the destination hold exactly the stream an upload of this source sends?
//!
//! Always: size, footer (byte-equal for an as-is VHD; equal except unique id, time stamp
//! and checksum for a source converted on the fly), every non-zero page of the source
//! listed in the destination's page ranges, and no listed page outside the upload plan.
//! With `full`: every listed range is read back and compared byte for byte (pages outside
//! the ranges read as zero, and the coverage check proves the source is zero there).

use super::client::with_retries;
use super::client::BlobClient;
use super::plan::{self, subtract, MAX_PUT_PAGE};
use super::{CredentialEnv, RetryPolicy, UploadSource, DEFAULT_API_VERSION};
use crate::convert::Policy;
use crate::error::{Error, ErrorKind, Result};
use crate::format::vhd::footer::{HardDiskFooter, COOKIE, FOOTER_SIZE};
use crate::OpenOptions;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::task::JoinSet;

/// Differences listed at most (the count is always exact).
const MAX_LISTED: usize = 20;

/// What `verify` does.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Read every written range back and compare bytes.
    pub full: bool,
    /// x-ms-version to send.
    pub api_version: String,
    /// Parallel reads with `full`.
    pub concurrency: usize,
    /// The bridge the upload used (gaps it may have sent as zeros).
    pub bridge_bytes: u64,
    /// Credentials besides a SAS in the URL.
    pub credentials: CredentialEnv,
    /// How to open the source.
    pub open: OpenOptions,
    /// Retries of the reads.
    pub retry: RetryPolicy,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            full: false,
            api_version: DEFAULT_API_VERSION.into(),
            concurrency: 8,
            bridge_bytes: plan::DEFAULT_BRIDGE,
            credentials: CredentialEnv::default(),
            open: OpenOptions::default(),
            retry: RetryPolicy::default(),
        }
    }
}

/// One difference.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Difference {
    /// Byte offset in the output stream.
    pub offset: u64,
    /// What differs.
    pub what: String,
}

/// The verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    /// True when nothing differs.
    pub identical: bool,
    /// The destination, redacted.
    pub destination: String,
    /// Expected destination size.
    pub bytes_total: u64,
    /// Bytes read back and compared (`full`).
    pub bytes_compared: u64,
    /// Number of differences found.
    pub difference_count: u64,
    /// The first differences.
    pub differences: Vec<Difference>,
    /// True when bytes were compared (`full`), false for the metadata check.
    pub full: bool,
}

impl VerifyReport {
    fn differ(&mut self, offset: u64, what: String) {
        self.identical = false;
        self.difference_count += 1;
        if self.differences.len() < MAX_LISTED {
            self.differences.push(Difference { offset, what });
        }
    }
}

/// Compare the blob at `dest` with what uploading `source` sends.
pub async fn verify(source: &Path, dest: &str, opts: VerifyOptions) -> Result<VerifyReport> {
    let client = BlobClient::new(
        dest,
        &opts.credentials,
        &opts.api_version,
        opts.concurrency.max(1),
    )?;
    let shown = client.display().to_string();
    // Whatever the upload was allowed to send is what is compared: no size/sector policy here.
    let policy = Policy {
        allow_any_size: true,
        allow_4k_sectors: true,
        ..Policy::default()
    };
    let src = UploadSource::open(source, &opts.open, &policy)?;
    let azure = src.azure.clone();
    let output_size = azure.output_size();
    let mut report = VerifyReport {
        identical: true,
        destination: shown.clone(),
        bytes_total: output_size,
        bytes_compared: 0,
        difference_count: 0,
        differences: Vec::new(),
        full: opts.full,
    };
    let quiet = |_: &super::client::Failure| {};
    let policy = &opts.retry;
    let props = with_retries(policy, &quiet, || client.head())
        .await
        .map_err(|f| f.into_error("reading the properties of", &shown))?;
    if props.size != output_size {
        report.differ(
            0,
            format!(
                "the destination is {} bytes; this source uploads as {output_size} bytes",
                props.size
            ),
        );
        return Ok(report);
    }

    // Footer.
    let got = with_retries(policy, &quiet, || {
        client.get_range(azure.disk_size..output_size)
    })
    .await
    .map_err(|f| f.into_error("reading the footer of", &shown))?;
    let mut got_arr = [0u8; FOOTER_SIZE];
    got_arr.copy_from_slice(&got);
    let want = azure.footer_bytes();
    if src.as_is {
        if got_arr != want {
            report.differ(
                azure.disk_size,
                "the footer differs from the source VHD's footer".into(),
            );
        }
    } else {
        let got_footer = HardDiskFooter::from_bytes(&got_arr);
        let mut expect = azure.footer;
        expect.unique_id = got_footer.unique_id;
        expect.time_stamp = got_footer.time_stamp;
        expect.checksum = zerocopy::byteorder::big_endian::U32::new(0);
        expect.checksum = zerocopy::byteorder::big_endian::U32::new(expect.compute_checksum());
        if &got_footer.cookie != COOKIE {
            report.differ(
                azure.disk_size,
                "the last 512 bytes are not a VHD footer (no `conectix` cookie)".into(),
            );
        } else if expect.to_bytes() != got_arr {
            report.differ(
                azure.disk_size,
                format!(
                    "the footer differs from the one vhdforge writes for this source (current size {} vs {}, disk type {} vs 2)",
                    got_footer.current_size.get(),
                    azure.disk_size,
                    got_footer.disk_type.get()
                ),
            );
        }
    }

    // Page ranges against the plan.
    let present = plan::normalize(
        with_retries(policy, &quiet, || client.page_ranges())
            .await
            .map_err(|f| f.into_error("listing the page ranges of", &shown))?,
    );
    let (exact, bridged) = {
        let image = src.image.clone();
        let az = azure.clone();
        let bridge = opts.bridge_bytes;
        tokio::task::spawn_blocking(move || -> Result<_> {
            let mut plans = plan::plan_requests_multi(
                image.as_ref(),
                &az,
                &[0, bridge],
                &AtomicBool::new(false),
            )?;
            let bridged = plans.pop().unwrap_or_else(|| unreachable!());
            let exact = plans.pop().unwrap_or_else(|| unreachable!());
            Ok((exact, bridged))
        })
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                "verify.internal",
                format!("planner failed: {e}"),
            )
        })??
    };
    for r in subtract(&exact.requests, &present) {
        report.differ(
            r.start,
            format!(
                "source data at {}..{} is missing at the destination (no pages written there)",
                r.start, r.end
            ),
        );
    }
    let footer_range = azure.disk_size..output_size;
    if !plan::is_covered(footer_range.start, footer_range.end, &present) {
        report.differ(footer_range.start, "the footer page is not written".into());
    }
    let outside = subtract(
        &subtract(&present, &bridged.requests),
        std::slice::from_ref(&footer_range),
    );
    if !opts.full {
        for r in &outside {
            report.differ(r.start, format!("the destination holds pages at {}..{} where the source is zero (use --full to compare bytes)", r.start, r.end));
        }
        return Ok(report);
    }

    // Full: read every written range back, in ≤ 4 MiB pieces, a few at a time.
    let pieces: Vec<Range<u64>> = present
        .iter()
        .filter(|r| r.start < azure.disk_size)
        .flat_map(|r| {
            let end = r.end.min(azure.disk_size);
            (r.start..end)
                .step_by(MAX_PUT_PAGE as usize)
                .map(move |s| s..(s + MAX_PUT_PAGE).min(end))
        })
        .collect();
    let image = src.image.clone();
    let az = Arc::new(azure.clone());
    let mut set: JoinSet<Result<(u64, Option<u64>)>> = JoinSet::new();
    let mut iter = pieces.into_iter();
    loop {
        while set.len() < opts.concurrency.max(1) {
            let Some(p) = iter.next() else { break };
            let client = client.clone();
            let image = image.clone();
            let az = az.clone();
            let shown = shown.clone();
            let policy = opts.retry.clone();
            set.spawn(async move {
                let remote = with_retries(&policy, &|_| {}, || client.get_range(p.clone()))
                    .await
                    .map_err(|f| f.into_error("reading", &shown))?;
                let r2 = p.clone();
                let first_diff = tokio::task::spawn_blocking(move || -> Result<Option<u64>> {
                    let mut local = vec![0u8; (r2.end - r2.start) as usize];
                    az.read_disk(image.as_ref(), &mut local, r2.start)?;
                    Ok(local
                        .iter()
                        .zip(remote.iter())
                        .position(|(a, b)| a != b)
                        .map(|i| r2.start + i as u64))
                })
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Io,
                        "verify.internal",
                        format!("compare task failed: {e}"),
                    )
                })??;
                Ok((p.end - p.start, first_diff))
            });
        }
        let Some(res) = set.join_next().await else {
            break;
        };
        let (len, diff) = res.map_err(|e| {
            Error::new(
                ErrorKind::Io,
                "verify.internal",
                format!("compare task failed: {e}"),
            )
        })??;
        report.bytes_compared += len;
        if let Some(at) = diff {
            report.differ(
                at,
                format!(
                    "bytes differ from offset {at} (first difference in the 4 MiB piece there)"
                ),
            );
        }
    }
    report.differences.sort_by_key(|d| d.offset);
    Ok(report)
}
