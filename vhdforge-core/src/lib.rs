//! vhdforge-core: read, validate and convert VHD, VHDX and raw disk images into the fixed
//! VHDs Azure accepts, and upload them as page blobs.
//!
//! Start with [`open`] (strict: any structural error is an `Err`) or [`inspect`] (lenient:
//! everything found is reported as [`Finding`]s).

#![warn(missing_docs)]
#![warn(clippy::pedantic)]
// Every error carries a stable code (`Error::code`) listed in README.md's error table; a
// per-function `# Errors` section would repeat that table.
#![allow(clippy::missing_errors_doc)]
// Most candidates are getters and constructors whose result nobody can ignore by accident;
// `#[must_use]` is written by hand where dropping the result would be a bug.
#![allow(clippy::must_use_candidate)]
// Unit tests build their inputs from small constants and index arrays with loop counters; the
// library proper (checked in the non-test build) gets these lints in full.
#![cfg_attr(
    test,
    allow(
        clippy::cast_possible_truncation,
        clippy::many_single_char_names,
        clippy::items_after_statements
    )
)]

pub mod azure;
#[cfg(feature = "upload")]
pub mod bench;
pub mod convert;
#[cfg(feature = "upload")]
pub mod copy;
pub mod error;
pub mod finding;
pub mod format;
pub mod fsutil;
pub mod guest;
pub mod image;
pub mod io;
pub mod listing;
pub mod platform;
pub mod preflight;
pub mod progress;
#[cfg(feature = "upload")]
pub mod remote;
pub mod sparse;
#[cfg(feature = "upload")]
pub mod storage;
#[cfg(feature = "upload")]
pub mod upload;

pub use error::{Error, ErrorKind, Result};
pub use finding::{codes, Code, Finding, Findings, Severity};
pub use format::OpenOptions;
pub use image::{Allocation, DiskImage, DiskType, Extent, Format, ImageInfo};

use std::path::Path;

/// Open an image for reading. Fails on any error-severity structural finding (bad
/// checksums, out-of-range offsets, missing parents ...), so what opens reads correctly.
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Box<dyn DiskImage>> {
    let image = format::open_path(path, opts)?;
    if let Some(f) = image
        .findings()
        .iter()
        .find(|f| f.severity == Severity::Error)
    {
        return Err(Error::new(ErrorKind::Corrupt, f.code, f.message.clone())
            .in_file(path)
            .at_opt(f.offset));
    }
    Ok(image)
}

/// Open an image held in memory (tests, fuzzing). Parents are not followed: a differencing
/// image fails with `parent.not_followed`. Findings are kept (lenient), not turned into errors.
pub fn open_bytes(data: Vec<u8>) -> Result<Box<dyn DiskImage>> {
    let opts = OpenOptions {
        follow_parents: false,
        ..OpenOptions::default()
    };
    let mut ctx = format::OpenContext::new(&opts);
    let src: std::sync::Arc<dyn io::ReadAt> =
        std::sync::Arc::new(io::MemSource::named(data, "<memory>"));
    format::open_source(src, Path::new("<memory>"), &mut ctx)
}

impl Error {
    fn at_opt(self, offset: Option<u64>) -> Self {
        match offset {
            Some(o) => self.at(o),
            None => self,
        }
    }
}

/// Everything `info` and `check` report about an image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// What the image is; `None` when it could not be parsed at all.
    pub info: Option<ImageInfo>,
    /// The format its signatures name, known even when parsing failed.
    pub detected_format: Option<Format>,
    /// Virtual bytes backed by stored data per the metadata (through the chain).
    pub allocated_bytes: Option<u64>,
    /// Structural findings, then Azure-readiness findings.
    pub findings: Vec<Finding>,
    /// No error findings: the file can be uploaded to Azure as it is.
    pub azure_ready: bool,
    /// No structural error findings: the file reads correctly (it may still need converting).
    pub readable: bool,
}

/// Inspect an image leniently: parse what can be parsed and report every finding.
/// Fails only when the file cannot be opened or read at all.
pub fn inspect(path: &Path, opts: &OpenOptions) -> Result<Inspection> {
    inspect_impl(path, opts, true)
}

/// [`inspect`] without `allocated_bytes`, which walks the whole allocation map: the
/// structure and readiness verdict only, in time independent of the disk size.
pub fn inspect_quick(path: &Path, opts: &OpenOptions) -> Result<Inspection> {
    inspect_impl(path, opts, false)
}

fn inspect_impl(path: &Path, opts: &OpenOptions, with_allocation: bool) -> Result<Inspection> {
    // Surface "cannot open" as an error, not as a finding.
    io::FileSource::open(path).map_err(|e| Error::io("cannot open", e).in_file(path))?;
    let mut findings = Vec::new();
    let (info, allocated_bytes) = match format::open_path(path, opts) {
        Ok(image) => {
            findings.extend(image.findings().iter().cloned());
            let allocated = match with_allocation
                .then(|| image::allocated_bytes(image.as_ref()))
                .transpose()
            {
                Ok(a) => a,
                Err(e) => {
                    findings.push(Finding::from(&e));
                    None
                }
            };
            (Some(image.info().clone()), allocated)
        }
        Err(e) if e.kind() == ErrorKind::Io && e.code() == codes::IO_OPEN => return Err(e),
        Err(e) => {
            findings.push(Finding::from(&e));
            (None, None)
        }
    };
    let detected_format = match &info {
        Some(i) => Some(i.format),
        None => io::FileSource::open(path)
            .ok()
            .and_then(|src| format::detect(&src).ok()),
    };
    let readable = !findings.iter().any(|f| f.severity == Severity::Error);
    if let Some(i) = &info {
        findings.extend(azure::readiness(i));
    }
    let azure_ready = info.is_some() && !findings.iter().any(|f| f.severity == Severity::Error);
    Ok(Inspection {
        info,
        detected_format,
        allocated_bytes,
        findings,
        azure_ready,
        readable,
    })
}
