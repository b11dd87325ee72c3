//! `verify`: does the destination hold exactly the stream an upload of this source sends?
//!
//! Always: size, footer (byte-equal for an as-is VHD; equal except unique id, time stamp
//! and checksum for a source converted on the fly), every non-zero page of the source
//! listed in the destination's page ranges, and no listed page outside the upload plan.
//! That is a layout check: a blob whose pages hold other data of the same shape passes it,
//! which is why the report names what it compared ([`Compared`]).
//! With `full`: every listed range is read back and compared byte for byte (pages outside
//! the ranges read as zero, and the coverage check proves the source is zero there).

use super::plan::{self, subtract, MAX_PUT_PAGE};
use super::{
    Cancel, CredentialEnv, NoProgress, Progress, RetryPolicy, UploadSource, DEFAULT_API_VERSION,
};
use crate::convert::Policy;
use crate::error::{Error, ErrorKind, Result};
use crate::format::vhd::footer::{HardDiskFooter, COOKIE, FOOTER_SIZE};
use crate::io::usize_from;
use crate::storage::retry::with_retries;
use crate::storage::BlobClient;
use crate::OpenOptions;
use std::ops::Range;
use std::path::Path;
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
    /// True only when the data was read back and compared byte for byte (`full`) and
    /// nothing differs. Without `full` it is always false: a layout check cannot prove
    /// two disks identical (see `layout_matches`).
    pub identical: bool,
    /// True when the size, the footer and the page map match what uploading the source
    /// produces (what the plain check compares); says nothing about the data itself.
    pub layout_matches: bool,
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
    /// What was compared: `layout` (size, footer, page map: the data itself was not read)
    /// or `bytes` (`full`). Only `bytes` proves the destination holds the source's data.
    pub compared: Compared,
}

/// How deep a verification went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compared {
    /// Size, footer and the page map against the plan; no data read back.
    Layout,
    /// The above, and every written range read back and compared byte for byte.
    Bytes,
}

impl VerifyReport {
    /// Whether the check found nothing different in what it compared: the verdict behind
    /// the exit status (`identical` with `full`, `layout_matches` without).
    #[must_use]
    pub fn passed(&self) -> bool {
        if self.full {
            self.identical
        } else {
            self.layout_matches
        }
    }

    /// A difference in size, footer or page map.
    fn differ(&mut self, offset: u64, what: String) {
        self.layout_matches = false;
        self.differ_in_data(offset, what);
    }

    /// A difference in the data read back (`full`); the layout may still match.
    fn differ_in_data(&mut self, offset: u64, what: String) {
        self.identical = false;
        self.difference_count += 1;
        if self.differences.len() < MAX_LISTED {
            self.differences.push(Difference { offset, what });
        }
    }
}

/// Compare the blob at `dest` with what uploading `source` sends.
pub async fn verify(source: &Path, dest: &str, opts: VerifyOptions) -> Result<VerifyReport> {
    verify_with(source, dest, opts, Arc::new(NoProgress)).await
}

/// [`verify`] reporting to `progress`: with `full`, the total is the bytes read back and
/// compared; its cancellation token stops every phase (listing, retries, reading).
pub async fn verify_with(
    source: &Path,
    dest: &str,
    opts: VerifyOptions,
    progress: Arc<dyn Progress>,
) -> Result<VerifyReport> {
    let cancel = progress.cancel();
    super::engine::until_cancelled(verify_inner(source, dest, opts, progress, &cancel), &cancel)
        .await
}

async fn verify_inner(
    source: &Path,
    dest: &str,
    opts: VerifyOptions,
    progress: Arc<dyn Progress>,
    cancel: &Cancel,
) -> Result<VerifyReport> {
    let client = BlobClient::new(
        dest,
        &opts.credentials,
        &opts.api_version,
        opts.concurrency.clamp(1, super::MAX_CONCURRENCY),
    )?;
    let shown = client.display().to_string();
    // Whatever the upload was allowed to send is what is compared: no size/sector policy here.
    let policy = Policy {
        allow_any_size: true,
        allow_4k_sectors: true,
        ..Policy::default()
    };
    let src = UploadSource::open(source, &opts.open, &policy)?;
    let output_size = src.azure.output_size();
    let mut report = VerifyReport {
        // Becomes true only once every byte has been compared (below).
        identical: false,
        layout_matches: true,
        destination: shown.clone(),
        bytes_total: output_size,
        bytes_compared: 0,
        difference_count: 0,
        differences: Vec::new(),
        full: opts.full,
        compared: if opts.full {
            Compared::Bytes
        } else {
            Compared::Layout
        },
    };
    let props = with_retries(&opts.retry, cancel, &quiet, || client.head())
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
    check_footer(&client, &src, &opts, cancel, &mut report).await?;
    let present = check_page_map(&client, &src, &opts, cancel, &mut report).await?;
    if opts.full {
        report.identical = report.layout_matches;
        compare_bytes(
            &client,
            &src,
            &opts,
            &present,
            progress.as_ref(),
            cancel,
            &mut report,
        )
        .await?;
        report.differences.sort_by_key(|d| d.offset);
    }
    Ok(report)
}

/// Retries of a verification are not reported.
fn quiet(_: &crate::storage::Failure) {}

/// The footer: byte-equal for an as-is VHD; for a converted source equal except unique id,
/// time stamp and checksum (each upload of a conversion may pick its own).
async fn check_footer(
    client: &BlobClient,
    src: &UploadSource,
    opts: &VerifyOptions,
    cancel: &Cancel,
    report: &mut VerifyReport,
) -> Result<()> {
    let azure = &src.azure;
    let got = with_retries(&opts.retry, cancel, &quiet, || {
        client.get_range(azure.disk_size..azure.output_size())
    })
    .await
    .map_err(|f| f.into_error("reading the footer of", client.display()))?;
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
        return Ok(());
    }
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
    Ok(())
}

/// The page map against the plan: every non-zero page of the source listed, the footer page
/// listed, and (without `full`) nothing listed outside what an upload sends. Returns the
/// listed ranges.
async fn check_page_map(
    client: &BlobClient,
    src: &UploadSource,
    opts: &VerifyOptions,
    cancel: &Cancel,
    report: &mut VerifyReport,
) -> Result<Vec<Range<u64>>> {
    let present = plan::normalize(
        with_retries(&opts.retry, cancel, &quiet, || client.page_ranges())
            .await
            .map_err(|f| f.into_error("listing the page ranges of", client.display()))?,
    );
    let (exact, bridged) = plan_both(src, opts.bridge_bytes, cancel.clone()).await?;
    for r in subtract(&exact.requests, &present) {
        report.differ(
            r.start,
            format!(
                "source data at {}..{} is missing at the destination (no pages written there)",
                r.start, r.end
            ),
        );
    }
    let footer_range = src.azure.disk_size..src.azure.output_size();
    if !plan::is_covered(footer_range.start, footer_range.end, &present) {
        report.differ(footer_range.start, "the footer page is not written".into());
    }
    if !opts.full {
        let outside = subtract(
            &subtract(&present, &bridged.requests),
            std::slice::from_ref(&footer_range),
        );
        for r in &outside {
            report.differ(r.start, format!("the destination holds pages at {}..{} where the source is zero (use --full to compare bytes)", r.start, r.end));
        }
    }
    Ok(present)
}

/// The plan without bridging (what must be there) and with the upload's bridge (what may).
async fn plan_both(
    src: &UploadSource,
    bridge: u64,
    cancel: Cancel,
) -> Result<(plan::DataPlan, plan::DataPlan)> {
    let image = src.image.clone();
    let az = src.azure.clone();
    tokio::task::spawn_blocking(move || -> Result<_> {
        let mut plans = plan::plan_requests_multi(image.as_ref(), &az, &[0, bridge], &cancel)?;
        let bridged = plans.pop().unwrap_or_else(|| unreachable!());
        let exact = plans.pop().unwrap_or_else(|| unreachable!());
        Ok((exact, bridged))
    })
    .await
    .map_err(|e| internal("planner", &e))?
}

fn internal(what: &str, e: &tokio::task::JoinError) -> Error {
    Error::new(
        ErrorKind::Io,
        "verify.internal",
        format!("{what} failed: {e}"),
    )
}

/// Read every written range of the disk area back, in ≤ 4 MiB pieces, a few at a time, and
/// compare it with the source (pages outside the ranges read as zero, and the page-map check
/// proves the source is zero there).
async fn compare_bytes(
    client: &BlobClient,
    src: &UploadSource,
    opts: &VerifyOptions,
    present: &[Range<u64>],
    progress: &dyn Progress,
    cancel: &Cancel,
    report: &mut VerifyReport,
) -> Result<()> {
    let disk_size = src.azure.disk_size;
    progress.set_total(
        present
            .iter()
            .filter(|r| r.start < disk_size)
            .map(|r| r.end.min(disk_size) - r.start)
            .sum(),
    );
    let mut pieces = present
        .iter()
        .filter(|r| r.start < disk_size)
        .flat_map(|r| {
            let end = r.end.min(disk_size);
            (r.start..end)
                .step_by(usize_from(MAX_PUT_PAGE))
                .map(move |s| s..(s + MAX_PUT_PAGE).min(end))
        });
    let az = Arc::new(src.azure.clone());
    let mut set: JoinSet<Result<(u64, Option<u64>)>> = JoinSet::new();
    loop {
        if cancel.is_cancelled() {
            // Dropping the set aborts the reads in flight.
            return Err(super::send::cancelled());
        }
        while set.len() < opts.concurrency.clamp(1, super::MAX_CONCURRENCY) {
            let Some(p) = pieces.next() else { break };
            set.spawn(compare_piece(
                client.clone(),
                src.image.clone(),
                az.clone(),
                opts.retry.clone(),
                cancel.clone(),
                p,
            ));
        }
        let Some(res) = set.join_next().await else {
            break;
        };
        let (len, diff) = res.map_err(|e| internal("compare task", &e))??;
        report.bytes_compared += len;
        progress.advance(len);
        if let Some(at) = diff {
            report.differ_in_data(
                at,
                format!(
                    "bytes differ from offset {at} (first difference in the 4 MiB piece there)"
                ),
            );
        }
    }
    Ok(())
}

/// Read one piece back and find its first byte that differs from the source.
/// Returns the piece's length and that offset. (Also how `--resume` proves done ranges.)
pub(super) async fn compare_piece(
    client: BlobClient,
    image: Arc<dyn crate::image::DiskImage>,
    az: Arc<crate::azure::FixedVhdLayout>,
    policy: RetryPolicy,
    cancel: Cancel,
    p: Range<u64>,
) -> Result<(u64, Option<u64>)> {
    let remote = with_retries(&policy, &cancel, &quiet, || client.get_range(p.clone()))
        .await
        .map_err(|f| f.into_error("reading", client.display()))?;
    let r2 = p.clone();
    let first_diff = tokio::task::spawn_blocking(move || -> Result<Option<u64>> {
        let mut local = vec![0u8; usize_from(r2.end - r2.start)];
        az.read_disk(image.as_ref(), &mut local, r2.start)?;
        Ok(local
            .iter()
            .zip(remote.iter())
            .position(|(a, b)| a != b)
            .map(|i| r2.start + i as u64))
    })
    .await
    .map_err(|e| internal("compare task", &e))??;
    Ok((p.end - p.start, first_diff))
}
