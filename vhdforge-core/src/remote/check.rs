//! `check URL` / `info URL`: the blob's type and length from HEAD, its written ranges from
//! Get Page Ranges, and its content (footer, first sector, headers) read with ranged GETs
//! through [`BlobSource`] by the same parsers and the same Azure rules ([`crate::azure`])
//! as a file, so a blob and the file it came from get the same verdict.

use super::source::BlobSource;
use crate::error::{Error, ErrorKind, Result};
use crate::finding::{Finding, Severity};
use crate::image::{DiskType, Format};
use crate::progress::Cancel;
use crate::storage::retry::{with_retries, RetryPolicy};
use crate::storage::{BlobClient, BlobProps, CredentialEnv};
use crate::{azure, format, Inspection, OpenOptions};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// How to reach the blob.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Credentials besides a SAS in the URL.
    pub credentials: CredentialEnv,
    /// `x-ms-version`.
    pub api_version: String,
    /// Retries of each request.
    pub retry: RetryPolicy,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            credentials: CredentialEnv::default(),
            api_version: crate::upload::DEFAULT_API_VERSION.into(),
            retry: RetryPolicy::default(),
        }
    }
}

/// What `info URL` reports: the file report ([`Inspection`]) plus what only a blob has.
#[derive(Debug, Clone)]
pub struct RemoteInspection {
    /// The URL, secrets redacted.
    pub url: String,
    /// `x-ms-blob-type` (`PageBlob`, `BlockBlob`, `AppendBlob`).
    pub blob_type: String,
    /// The blob's length in bytes.
    pub blob_size: u64,
    /// Bytes in written page ranges (`None` for a blob that is not a page blob).
    pub stored_bytes: Option<u64>,
    /// The report, as for a file; `allocated_bytes` is the page ranges' total.
    pub inspection: Inspection,
}

/// Sorted ranges with overlapping and adjacent ones joined (Azurite never merges them,
/// Azure may or may not: two lists are compared in this form).
pub fn merge_ranges(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

fn rt() -> Result<Arc<tokio::runtime::Runtime>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(|e| Error::io("cannot start the async runtime", e))
}

/// Judge the blob at `url` as `check FILE` judges a file. Reads only: HEAD, Get Page
/// Ranges, and ranged GETs of what the parsers need (the footer, the first sector, the
/// headers and tables of a VHD or VHDX uploaded as is). Must not be called from inside an
/// async runtime (it runs its own).
pub fn inspect_blob(url: &str, opts: &RemoteOptions) -> Result<RemoteInspection> {
    let client = BlobClient::new(url, &opts.credentials, &opts.api_version, 2)?;
    let display = client.display().to_string();
    let rt = rt()?;
    let cancel = Cancel::never();
    let props: BlobProps = rt
        .block_on(with_retries(&opts.retry, &cancel, &|_| {}, || {
            client.head()
        }))
        .map_err(|f| f.into_error("reading the properties of", &display))?;
    let page_blob = props.blob_type.eq_ignore_ascii_case("PageBlob");
    let mut findings = Vec::new();
    let ranges = if page_blob {
        let r = rt
            .block_on(with_retries(&opts.retry, &cancel, &|_| {}, || {
                client.page_ranges()
            }))
            .map_err(|f| f.into_error("listing the page ranges of", &display))?;
        Some(merge_ranges(r))
    } else {
        let kind = if props.blob_type.is_empty() {
            "a blob of unknown type (no x-ms-blob-type)".to_string()
        } else {
            format!("a {}", props.blob_type)
        };
        findings.push(Finding::new(
            Severity::Error,
            "remote.blob_type",
            None,
            format!(
                "the blob is {kind}; Azure creates disks and images only from a page blob. Upload the VHD again \
                 as a page blob: `vhdforge upload disk.vhd URL` (with azcopy: --blob-type PageBlob; with az: \
                 `az storage blob upload --type page`)"
            ),
        ));
        None
    };
    let stored = ranges
        .as_ref()
        .map(|r| r.iter().map(|x| x.end - x.start).sum());
    if props.size == 0 {
        findings.push(Finding::new(
            Severity::Error,
            "remote.empty",
            None,
            "the blob is empty (length 0): nothing was uploaded to it; upload the VHD again",
        ));
        return Ok(finish(display, props, stored, None, None, findings));
    }
    let src = Arc::new(BlobSource::new(
        client,
        rt,
        props.size,
        ranges,
        opts.retry.clone(),
    ));
    let open_opts = OpenOptions {
        follow_parents: false,
        ..OpenOptions::default()
    };
    let mut ctx = format::OpenContext::new(&open_opts);
    let detected = format::detect(src.as_ref()).ok();
    let info = match format::open_source(src.clone(), Path::new(&display), &mut ctx) {
        Ok(image) => {
            findings.extend(image.findings().iter().cloned());
            Some(image.info().clone())
        }
        // A read that failed on the network is the tool's failure, not the blob's.
        Err(e) if e.kind() == ErrorKind::Io || e.kind() == ErrorKind::Remote => {
            return Err(e);
        }
        Err(e) => {
            findings.push(Finding::from(&e));
            None
        }
    };
    if let Some(i) = &info {
        if !(i.format == Format::Vhd && i.disk_type == DiskType::Fixed) {
            let what = match (i.format, i.disk_type) {
                (Format::Raw, _) => "a raw disk (no VHD footer at the end)".to_string(),
                (Format::Vhdx, t) => format!("a {t} VHDX"),
                (Format::Vhd, t) => format!("a {t} VHD"),
            };
            findings.push(Finding::new(
                Severity::Error,
                "remote.not_converted",
                None,
                format!(
                    "the blob holds {what}, copied byte for byte: it was uploaded without converting. Upload the \
                     source again with `vhdforge upload SOURCE URL --overwrite` (it converts on the fly), or \
                     `vhdforge convert` it first"
                ),
            ));
        }
    }
    Ok(finish(display, props, stored, info, detected, findings))
}

fn finish(
    url: String,
    props: BlobProps,
    stored: Option<u64>,
    info: Option<crate::ImageInfo>,
    detected: Option<Format>,
    mut findings: Vec<Finding>,
) -> RemoteInspection {
    let readable = info.is_some()
        && !findings
            .iter()
            .any(|f| f.severity == Severity::Error && !f.code.as_str().starts_with("remote."));
    if let Some(i) = &info {
        findings.extend(azure::readiness(i));
    }
    let azure_ready = info.is_some() && !findings.iter().any(|f| f.severity == Severity::Error);
    RemoteInspection {
        url,
        blob_type: props.blob_type,
        blob_size: props.size,
        stored_bytes: stored,
        inspection: Inspection {
            detected_format: info.as_ref().map(|i| i.format).or(detected),
            info,
            allocated_bytes: stored,
            findings,
            azure_ready,
            readable,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::merge_ranges;

    #[test]
    fn ranges_merge_when_touching_or_overlapping() {
        assert_eq!(
            merge_ranges(vec![
                1024..2048,
                0..512,
                512..1024,
                4096..4608,
                4000..4100,
                9..9
            ]),
            vec![0..2048, 4000..4608]
        );
    }
}
