//! `vhdforge copy`: a page blob copied to another container, account or region, moving
//! only the source's page ranges (docs/azure-page-blob.md §1.1), so a sparse 1 TiB disk with
//! a few GiB of data costs a few GiB.
//!
//! - [`Via::Client`]: each range read (≤ 4 MiB pieces) and written with Put Page, through
//!   this machine: works across clouds and where the destination cannot reach the source.
//! - [`Via::Server`]: Put Page From URL, the destination service reads the source piece by
//!   piece; the source URL must carry a SAS the destination can use.
//! - [`Via::Async`]: the service's Copy Blob, polled until done; Ctrl-C aborts it.
//!
//! A destination is a new page blob of the source's length, or a managed-disk upload SAS
//! (never created; its size must match exactly, and ranges it holds that the source does not
//! are cleared first: two images on one disk must never mix). The two page lists are
//! compared at the end; `verify_full` also compares the data.

use crate::error::{Error, ErrorKind, Result};
use crate::progress::{Cancel, Progress};
use crate::remote::merge_ranges;
use crate::storage::blob::crc64_header;
use crate::storage::hosts::is_managed_disk_host;
use crate::storage::retry::{with_retries, RetryPolicy};
use crate::storage::{BlobClient, CredentialEnv, Failure, Integrity};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Largest Put Page (and Put Page From URL) the service accepts.
const PIECE: u64 = 4 << 20;

/// How the data travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Read here, Put Page there.
    Client,
    /// Put Page From URL.
    Server,
    /// Copy Blob, polled.
    Async,
}

/// What a copy does.
// Each bool is an independent command-line switch (as in `UploadOptions`).
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// How the data travels.
    pub via: Via,
    /// Replace an existing destination page blob.
    pub overwrite: bool,
    /// Requests in flight.
    pub concurrency: usize,
    /// Treat the destination as a managed-disk upload SAS whatever its host.
    pub managed_disk: bool,
    /// Compare the data of both blobs at the end, not only their page lists.
    pub verify_full: bool,
    /// Continue an interrupted copy into the existing destination: pieces it already holds
    /// are read back and compared, and only those that differ or are missing are written.
    pub resume: bool,
    /// `x-ms-version`.
    pub api_version: String,
    /// Credentials besides SAS in the URLs.
    pub credentials: CredentialEnv,
    /// Retries of each request.
    pub retry: RetryPolicy,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            via: Via::Client,
            overwrite: false,
            concurrency: 8,
            managed_disk: false,
            verify_full: false,
            resume: false,
            api_version: crate::upload::DEFAULT_API_VERSION.into(),
            credentials: CredentialEnv::default(),
            retry: RetryPolicy::default(),
        }
    }
}

/// What a copy did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CopyReport {
    /// Source and destination length.
    pub size: u64,
    /// Bytes in the source's page ranges (what was moved).
    pub bytes_copied: u64,
    /// Write requests made (Put Page / Put Page From URL; 0 for an async copy).
    pub requests: u64,
    /// Bytes cleared on a managed disk that held data where the source has none.
    pub stale_bytes_cleared: u64,
    /// With `resume`: bytes the destination already held, compared equal, not written.
    pub bytes_already_present: u64,
    /// Whether the destination was a managed disk.
    pub managed_disk: bool,
    /// The two page lists are equal (after joining adjacent ranges).
    pub ranges_equal: bool,
    /// With `verify_full`: every byte compared equal.
    pub identical: Option<bool>,
}

fn failed<'a>(op: &str, who: &'a BlobClient) -> impl FnOnce(Failure) -> Error + 'a {
    let op = op.to_string();
    move |f: Failure| f.into_error(&op, who.display())
}

fn cancelled(what: &str) -> Error {
    Error::new(
        ErrorKind::Interrupted,
        "copy.cancelled",
        format!("copy interrupted (Ctrl-C) {what}"),
    )
}

/// `ranges` cut into ≤ 4 MiB pieces.
fn pieces(ranges: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    for r in ranges {
        let mut s = r.start;
        while s < r.end {
            let e = (s + PIECE).min(r.end);
            out.push(s..e);
            s = e;
        }
    }
    out
}

/// What `a` covers that `b` does not (both merged).
fn difference(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    for r in a {
        let mut s = r.start;
        for x in b.iter().filter(|x| x.end > r.start && x.start < r.end) {
            if x.start > s {
                out.push(s..x.start);
            }
            s = s.max(x.end);
        }
        if s < r.end {
            out.push(s..r.end);
        }
    }
    out
}

/// Copy the page blob at `src` to `dest`.
#[allow(clippy::too_many_lines)] // the phases in order, each a few lines
pub async fn copy(
    src: &str,
    dest: &str,
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> Result<CopyReport> {
    let cancel = progress.cancel();
    let n = opts.concurrency.clamp(1, crate::upload::MAX_CONCURRENCY);
    let source = BlobClient::new(src, &opts.credentials, &opts.api_version, n)?;
    let target = BlobClient::new(dest, &opts.credentials, &opts.api_version, n)?;
    if source.base() == target.base() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "copy.same_blob",
            format!(
                "the source and the destination are the same blob ({})",
                source.display()
            ),
        ));
    }
    let retry = |f: &Failure| progress.retried(&f.summary());
    let props = with_retries(&opts.retry, &cancel, &retry, || source.head())
        .await
        .map_err(failed("reading the properties of", &source))?;
    if !props.blob_type.eq_ignore_ascii_case("PageBlob") {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "copy.source_type",
            format!(
                "{} is a {}, not a page blob; `vhdforge copy` copies VHDs in page blobs (check it with `vhdforge check URL`)",
                source.display(),
                if props.blob_type.is_empty() { "blob of unknown type" } else { &props.blob_type }
            ),
        ));
    }
    let size = props.size;
    // The source's answers size what is planned here (every 4 MiB piece is held in a list),
    // so they are checked before they are believed: a page blob is at most 8 TiB, and its
    // ranges lie inside it. A server claiming a range of 2^50 bytes would otherwise make
    // vhdforge allocate gigabytes of pieces and die.
    if size > crate::azure::MAX_PAGE_BLOB {
        return Err(Error::new(
            ErrorKind::Remote,
            "upload.protocol",
            format!(
                "{}: HEAD reports a page blob of {size} bytes, over the {}-byte page blob limit: the service's answer \
                 could not be understood (is the URL a Blob service?)",
                source.display(),
                crate::azure::MAX_PAGE_BLOB
            ),
        ));
    }
    let src_ranges = merge_ranges(
        with_retries(&opts.retry, &cancel, &retry, || source.page_ranges())
            .await
            .map_err(failed("listing the page ranges of", &source))?,
    );
    if let Some(r) = src_ranges.iter().find(|r| r.end > size) {
        return Err(Error::new(
            ErrorKind::Remote,
            "upload.protocol",
            format!(
                "{}: its page list holds pages {}-{} past its own length of {size} bytes: the service's answer could not \
                 be understood (is the URL a Blob service?)",
                source.display(),
                r.start,
                r.end - 1
            ),
        ));
    }
    let bytes: u64 = src_ranges.iter().map(|r| r.end - r.start).sum();
    let managed = opts.managed_disk || is_managed_disk_host(target.host());
    let mut stale_bytes_cleared = 0;
    // A managed disk and a resumed copy are written in place: never created, the size must
    // match, and what they hold outside the source's ranges is cleared.
    let in_place = managed || opts.resume;
    let mut held = Vec::new();
    if in_place {
        let d = with_retries(&opts.retry, &cancel, &retry, || target.head())
            .await
            .map_err(failed("reading the properties of", &target))?;
        if !managed && (d.size != size || !d.blob_type.eq_ignore_ascii_case("PageBlob")) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "copy.resume",
                format!(
                    "--resume: {} is a {} of {} bytes, not the {size}-byte page blob an interrupted copy of this                      source leaves; copy again with --overwrite",
                    target.display(),
                    d.blob_type,
                    d.size
                ),
            ));
        }
        if d.size != size {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "upload.size_mismatch",
                format!(
                    "the managed disk {} is {} bytes and the source {size}: create the disk with \
                     `az disk create --upload-type Upload --upload-size-bytes {size}`",
                    target.display(),
                    d.size
                ),
            ));
        }
        // The stale-data guard: whatever the disk holds outside the source's ranges would
        // survive the copy and mix two images.
        held = merge_ranges(
            with_retries(&opts.retry, &cancel, &retry, || target.page_ranges())
                .await
                .map_err(failed("listing the page ranges of", &target))?,
        );
        for r in difference(&held, &src_ranges) {
            with_retries(&opts.retry, &cancel, &retry, || {
                target.clear_pages(r.clone())
            })
            .await
            .map_err(failed("clearing stale pages of", &target))?;
            stale_bytes_cleared += r.end - r.start;
        }
        if stale_bytes_cleared > 0 {
            progress.note(&format!(
                "cleared {stale_bytes_cleared} bytes the destination held where the source has none"
            ));
        }
    }
    if cancel.is_cancelled() {
        return Err(cancelled("before any data was copied"));
    }
    progress.set_total(bytes);
    let (requests, bytes_already_present) = match opts.via {
        Via::Async => {
            if in_place {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "copy.via",
                    "--via async cannot write a managed-disk upload SAS nor resume (Copy Blob replaces the whole blob);                      use --via server or client",
                ));
            }
            run_async(&source, &target, opts, progress, &cancel).await?;
            (0, 0)
        }
        Via::Client | Via::Server => {
            if !in_place {
                with_retries(&opts.retry, &cancel, &retry, || {
                    target.create_page_blob(size, opts.overwrite)
                })
                .await
                .map_err(failed("creating", &target))?;
            }
            let from = if opts.via == Via::Server {
                Some(source.url_with_sas().ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        "copy.source_sas",
                        "--via server needs a SAS on the source URL (read permission): the destination \
                         service reads the source itself and cannot use this machine's account key; \
                         give one, or use --via client",
                    )
                })?)
            } else {
                None
            };
            // What the destination still holds of an earlier run (stale pages now cleared).
            let present = difference(&held, &difference(&held, &src_ranges));
            send_pieces(
                &source,
                &target,
                from,
                &src_ranges,
                &present,
                n,
                opts,
                progress,
                &cancel,
            )
            .await?
        }
    };
    let dest_ranges = merge_ranges(
        with_retries(&opts.retry, &cancel, &retry, || target.page_ranges())
            .await
            .map_err(failed("listing the page ranges of", &target))?,
    );
    let ranges_equal = dest_ranges == src_ranges;
    let identical = if opts.verify_full && ranges_equal {
        Some(compare(&source, &target, &src_ranges, opts, &cancel).await?)
    } else if opts.verify_full {
        Some(false)
    } else {
        None
    };
    Ok(CopyReport {
        size,
        bytes_copied: bytes,
        requests,
        stale_bytes_cleared,
        bytes_already_present,
        managed_disk: managed,
        ranges_equal,
        identical,
    })
}

/// Every piece of `ranges`, at most `n` in flight: read here and Put Page (`from` = None),
/// or Put Page From URL of `from`.
#[allow(clippy::too_many_arguments)]
async fn send_pieces(
    source: &BlobClient,
    target: &BlobClient,
    from: Option<String>,
    ranges: &[Range<u64>],
    present: &[Range<u64>],
    n: usize,
    opts: &CopyOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<(u64, u64)> {
    let from = from.map(Arc::new);
    let mut set = tokio::task::JoinSet::new();
    let mut requests = 0u64;
    let mut already = 0u64;
    let present: Arc<Vec<Range<u64>>> = Arc::new(present.to_vec());
    let mut first_error: Option<Error> = None;
    let mut todo = pieces(ranges).into_iter();
    loop {
        while set.len() < n && first_error.is_none() && !cancel.is_cancelled() {
            let Some(p) = todo.next() else { break };
            let (source, target, from) = (source.clone(), target.clone(), from.clone());
            let present = present.clone();
            let (policy, cancel) = (opts.retry.clone(), cancel.clone());
            set.spawn(async move {
                let len = p.end - p.start;
                // Resumed: a piece the destination holds whole is skipped when it equals
                // the source's (an interrupted run's Put Pages are whole or absent).
                if present.iter().any(|r| r.start <= p.start && p.end <= r.end) {
                    let a = with_retries(&policy, &cancel, &|_| {}, || source.get_range(p.clone()))
                        .await
                        .map_err(|f| f.into_error("reading", source.display()))?;
                    let b = with_retries(&policy, &cancel, &|_| {}, || target.get_range(p.clone()))
                        .await
                        .map_err(|f| f.into_error("reading back", target.display()))?;
                    if a == b {
                        return Ok((len, false));
                    }
                }
                let timeout = Duration::from_secs(60 + 30 * len.div_ceil(1 << 20));
                let r = if let Some(url) = &from {
                    with_retries(&policy, &cancel, &|_| {}, || {
                        target.put_page_from_url(p.clone(), url, p.clone(), timeout)
                    })
                    .await
                    .map_err(|f| f.into_error("copying (Put Page From URL) into", target.display()))
                } else {
                    let data =
                        with_retries(&policy, &cancel, &|_| {}, || source.get_range(p.clone()))
                            .await
                            .map_err(|f| f.into_error("reading", source.display()))?;
                    let crc = crc64_header(&data);
                    with_retries(&policy, &cancel, &|_| {}, || {
                        target.put_page(
                            p.start,
                            data.clone(),
                            Some((Integrity::Crc64, crc.clone())),
                            timeout,
                        )
                    })
                    .await
                    .map_err(|f| f.into_error("writing", target.display()))
                };
                r.map(|()| (len, true))
            });
        }
        let Some(done) = set.join_next().await else {
            break;
        };
        match done {
            Ok(Ok((len, written))) => {
                if written {
                    requests += 1;
                } else {
                    already += len;
                }
                progress.advance(len);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(Error::new(
                    ErrorKind::Io,
                    "copy.internal",
                    format!("a copy task failed: {e}"),
                ));
            }
        }
    }
    if cancel.is_cancelled() {
        return Err(cancelled(
            "while copying; the destination holds part of the data: run the same command with --overwrite to start again",
        ));
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok((requests, already)),
    }
}

/// Copy Blob, polled every half second; Ctrl-C aborts it.
async fn run_async(
    source: &BlobClient,
    target: &BlobClient,
    opts: &CopyOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<()> {
    // The service reads the source itself: with its SAS, or by URL alone in the same
    // account (the destination's key authorizes it there).
    let from = source
        .url_with_sas()
        .unwrap_or_else(|| source.base().to_string());
    let retry = |f: &Failure| progress.retried(&f.summary());
    let id = with_retries(&opts.retry, cancel, &retry, || {
        target.start_copy(&from, opts.overwrite)
    })
    .await
    .map_err(failed("starting Copy Blob into", target))?;
    let mut done = 0;
    loop {
        if cancel.is_cancelled() {
            let aborted = target.abort_copy(&id).await;
            return Err(match aborted {
                Ok(()) => cancelled("; the copy was aborted (Abort Copy Blob) and the destination left an empty blob"),
                Err(f) => cancelled(&format!(
                    "; aborting the copy failed ({}), it may still complete on the service",
                    f.summary()
                )),
            });
        }
        let st = with_retries(&opts.retry, cancel, &retry, || target.copy_state())
            .await
            .map_err(failed("polling the copy into", target))?;
        if let Some((c, _)) = st.progress {
            if c > done {
                progress.advance(c - done);
                done = c;
            }
        }
        match st.status.as_str() {
            "success" => return Ok(()),
            "pending" | "" => {}
            other => {
                return Err(Error::new(
                    ErrorKind::Remote,
                    "copy.failed",
                    format!(
                        "the service's copy into {} ended {other}: {}",
                        target.display(),
                        st.description.unwrap_or_default()
                    ),
                ))
            }
        }
        cancel.sleep(Duration::from_millis(500)).await;
    }
}

/// Both blobs' data over `ranges`, 4 MiB at a time.
async fn compare(
    source: &BlobClient,
    target: &BlobClient,
    ranges: &[Range<u64>],
    opts: &CopyOptions,
    cancel: &Cancel,
) -> Result<bool> {
    for p in pieces(ranges) {
        if cancel.is_cancelled() {
            return Err(cancelled("while comparing the data"));
        }
        let a = with_retries(&opts.retry, cancel, &|_| {}, || source.get_range(p.clone()))
            .await
            .map_err(failed("reading", source))?;
        let b = with_retries(&opts.retry, cancel, &|_| {}, || target.get_range(p.clone()))
            .await
            .map_err(failed("reading", target))?;
        if a != b {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_at_most_4_mib() {
        let p = pieces(&[0..512, 1 << 20..(1 << 20) + (9 << 20)]);
        assert_eq!(p.len(), 4);
        assert!(p.iter().all(|r| r.end - r.start <= PIECE));
        assert_eq!(p[3], (1 << 20) + (8 << 20)..(1 << 20) + (9 << 20));
    }

    #[test]
    fn stale_ranges_are_what_the_destination_has_beyond_the_source() {
        assert_eq!(
            difference(&[0..4096, 8192..16384], &[1024..2048, 8192..9216]),
            vec![0..1024, 2048..4096, 9216..16384]
        );
        assert!(difference(&[0..512, 4096..4608], &[0..1024, 4096..8192]).is_empty());
    }
}
