//! Parallel, zero-skipping, resumable page-blob upload (`docs/azure-page-blob.md`).
//!
//! The uploader always sends the byte stream the converter would write ([`FixedVhdLayout`]):
//! the disk area, then the 512-byte footer. An Azure-ready fixed VHD keeps its own footer,
//! so it is uploaded byte for byte; anything else is converted on the fly.
//!
//! Flow (phases in `engine.rs`): journal and resume checks (`resume.rs`) → plan ([`plan`]:
//! the pieces the metadata shows as data; nothing read) → prepare the destination
//! (`destination.rs`: create the page blob, or for managed disks check its size; clear an
//! old footer page and stale pages outside the pieces) → the send pipeline (`send.rs`): a
//! reader thread reads each piece once, tests each 512-byte page for zero, coalesces the
//! non-zero ones into requests (clearing zero pages a reused destination lists) and fills
//! bounded buffers in plan order (CRC-64 per request, whole-stream MD5) →
//! up to N Put Pages in flight, retried with backoff, N cut on throttling (AIMD) → the
//! footer page last → optional whole-blob Content-MD5. A journal allows `--resume`.
//!
//! Error codes (all [`crate::ErrorKind::Remote`] unless noted):
//!
//! | code | meaning |
//! |---|---|
//! | `upload.url` | DEST is not a usable blob URL, plain http to a non-loopback host, a name Azure's rules refuse, or a SAS cut at `&` (InvalidInput) |
//! | `upload.credentials` | no credentials, or a malformed key / connection string (InvalidInput) |
//! | `upload.auth` | 403: bad signature, expired or foreign SAS, wrong key, clock skew |
//! | `upload.permission` | 403 AuthorizationPermissionMismatch: the SAS lacks write (w) |
//! | `upload.not_found` | 404: container missing while creating (add --create-container), or blob missing while reading it back (upload it first) |
//! | `upload.exists` | 409 BlobAlreadyExists: use --overwrite or --resume |
//! | `upload.conflict` | other 409 (not a page blob, lease …) |
//! | `upload.precondition` | 412: the blob was replaced during the upload (sequence number), or another condition |
//! | `upload.range` | 413/416: page range refused (destination too small) |
//! | `upload.size_mismatch` | destination size ≠ output size (managed disk: says the right --upload-size-bytes) |
//! | `upload.managed_disk` | an operation a managed-disk SAS forbids was asked for (--content-md5) |
//! | `upload.too_large` | more than 8 TiB for a page blob (Unsupported) |
//! | `upload.redirect` | a 3xx answer: redirects are never followed (the SAS must not go elsewhere) |
//! | `upload.http` | any other HTTP error |
//! | `upload.protocol` | an answer that could not be understood |
//! | `upload.transport` | no answer after all retries (connection, timeout, TLS) |
//! | `upload.checksum` | the body kept arriving corrupted (Md5/Crc64Mismatch after all retries) |
//! | `upload.resume` | --resume refused: no journal, the source, a parent of it, the plan or the blob changed, or the source is not a regular file (InvalidInput) |
//! | `upload.journal` | the journal cannot be read or written (Corrupt/Io) |
//! | `upload.cancelled` | interrupted on request (Ctrl-C) in any phase of upload or verify (Interrupted); the message says whether --resume continues |
//! | `upload.source_changed` | the source changed size while it was being opened or read: an Azure-ready VHD shrank, or the file was cut short (or written to: its times moved) under the upload (Corrupt) |
//! | `upload.internal`, `verify.internal` | a worker task panicked or was cancelled (Io) |

mod destination;
mod engine;
pub mod journal;
pub mod plan;
mod resume;
mod send;
mod verify;

pub use crate::progress::{Cancel, CancelOnly, NoProgress, Progress};
pub use crate::storage::retry::RetryPolicy;
pub use crate::storage::{CredentialEnv, Integrity, Redacted};
pub use engine::{dry_run, upload, DryRun};
pub use verify::{verify, verify_with, Compared, VerifyOptions, VerifyReport};

use crate::azure::{FixedVhdLayout, FooterSource, Policy};
use crate::error::{Error, Result};
use crate::format::vhd::footer::{find_trailing_footer, FOOTER_SIZE};
use crate::image::{DiskImage, DiskType, Format};
use crate::io::{FileSource, ReadAt};
use crate::{OpenOptions, Severity};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The x-ms-version vhdforge pins (accepted by Azure and Azurite 3.37).
pub const DEFAULT_API_VERSION: &str = "2021-08-06";

/// Most requests in flight (upload) or pieces read back at once (`verify --full`). Each
/// holds up to two 4 MiB buffers, so this keeps either under 128 MiB of buffers, inside
/// the 256 MiB every command stays under; 16 requests of 4 MiB in flight already exceed
/// what one page blob accepts per second.
pub const MAX_CONCURRENCY: usize = 16;

/// What an upload does.
// Each bool is an independent command-line switch; grouping them into enums would only
// rename the flags the CLI maps one to one.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Put Pages in flight at most (connections).
    pub concurrency: usize,
    /// Replace an existing blob (storage accounts only).
    pub overwrite: bool,
    /// Create the container first when it does not exist (storage accounts only).
    pub create_container: bool,
    /// Continue an interrupted upload.
    pub resume: bool,
    /// Set the whole-blob Content-MD5 at the end (storage accounts only).
    pub content_md5: bool,
    /// Per-request Content-MD5 instead of x-ms-content-crc64.
    pub md5_per_request: bool,
    /// x-ms-version to send.
    pub api_version: String,
    /// Treat the destination as a managed-disk upload SAS whatever its host.
    pub managed_disk: bool,
    /// Zero gaps shorter than this are sent as zeros inside a request.
    pub bridge_bytes: u64,
    /// Retries.
    pub retry: RetryPolicy,
    /// Client timeout of a request with no body; a Put Page gets `timeout_per_mib` more per MiB.
    pub request_timeout: Duration,
    /// Extra client timeout per MiB of body.
    pub timeout_per_mib: Duration,
    /// Where the resume journal lives (default: next to the source, or the per-user state
    /// directory when the source's folder is read-only or the source is a device).
    pub state_dir: Option<PathBuf>,
    /// Rewrite (and fsync) the journal at most this often while sending. Completions since
    /// the last rewrite are sent again after a crash; zero records every completion.
    pub journal_interval: Duration,
    /// Conversion policy for sources that are not Azure-ready VHDs.
    pub policy: Policy,
    /// Credentials besides a SAS in the URL.
    pub credentials: CredentialEnv,
    /// How to open the source.
    pub open: OpenOptions,
    /// Read pieces that are one range of one regular file through a guarded read-only
    /// mapping instead of `pread` (Linux; `docs/upload-io.md`). The environment variable
    /// `VHDFORGE_UPLOAD_PREAD=1` turns it off as well, so both paths can be compared.
    pub map_source: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            concurrency: 8,
            overwrite: false,
            create_container: false,
            resume: false,
            content_md5: false,
            md5_per_request: false,
            api_version: DEFAULT_API_VERSION.into(),
            managed_disk: false,
            bridge_bytes: plan::DEFAULT_BRIDGE,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
            timeout_per_mib: Duration::from_secs(15),
            state_dir: None,
            journal_interval: Duration::from_secs(1),
            policy: Policy::default(),
            credentials: CredentialEnv::default(),
            open: OpenOptions::default(),
            map_source: true,
        }
    }
}

/// What the planner decided, shown before sending (as a [`Progress::note`] line).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PlanSummary {
    /// Output stream length (disk area + footer) = destination size.
    pub bytes_total: u64,
    /// Bytes the plan sends in this run (data requests left to do + footer).
    pub bytes_to_send: u64,
    /// Bytes never sent because they are zero.
    pub bytes_skipped: u64,
    /// Bytes a resumed upload finds already at the destination.
    pub bytes_already_present: u64,
    /// Put Page requests to send in this run (footer included).
    pub requests: u64,
}

/// The `--json` summary of an upload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UploadSummary {
    /// Output stream length = destination size.
    pub bytes_total: u64,
    /// Body bytes of successful requests in this run (retries not counted twice).
    pub bytes_sent: u64,
    /// Zero bytes never sent.
    pub bytes_skipped: u64,
    /// Bytes found already uploaded (resume).
    pub bytes_already_present: u64,
    /// Successful Put Page requests in this run.
    pub requests: u64,
    /// Retried attempts.
    pub retries: u64,
    /// Destination ranges cleared before sending because they held data where the source
    /// is zero (a reused managed disk, a resumed blob).
    pub stale_ranges_cleared: u64,
    /// Wall time.
    pub seconds: f64,
    /// The destination, redacted.
    pub destination: String,
    /// Whole-stream MD5 (base64) when computed.
    pub content_md5: Option<String>,
    /// True when the destination was a managed disk.
    pub managed_disk: bool,
}

/// A source opened for upload: the image and the output stream's shape.
#[derive(Debug)]
pub struct UploadSource {
    /// The image.
    pub image: Arc<dyn DiskImage>,
    /// The output's shape; its footer is what is sent last.
    pub azure: FixedVhdLayout,
    /// True when the source is an Azure-ready fixed VHD sent byte for byte (own footer).
    pub as_is: bool,
}

impl UploadSource {
    /// Open `path`; an Azure-ready fixed VHD keeps its footer, anything else gets a new one
    /// per `policy` (whose unique id and time stamp, if set, are used).
    pub fn open(path: &Path, open: &OpenOptions, policy: &Policy) -> Result<UploadSource> {
        let image: Arc<dyn DiskImage> = Arc::from(crate::open(path, open)?);
        Self::from_image(image, path, policy)
    }

    /// As [`UploadSource::open`], for an image already opened from `path`.
    pub fn from_image(
        image: Arc<dyn DiskImage>,
        path: &Path,
        policy: &Policy,
    ) -> Result<UploadSource> {
        let info = image.info();
        let ready = info.format == Format::Vhd
            && info.disk_type == DiskType::Fixed
            && !crate::azure::readiness(info)
                .iter()
                .any(|f| f.severity == Severity::Error);
        if ready {
            let file = FileSource::open(path).map_err(|e| {
                Error::io(format!("cannot open {}", path.display()), e).in_file(path)
            })?;
            // Readiness guarantees file length = size + 512; checked again for a file that
            // changed under us.
            let footer = find_trailing_footer(&file)
                .map_err(|e| Error::io("cannot read the VHD footer", e).in_file(path))?
                .filter(|t| t.size as usize == FOOTER_SIZE)
                .ok_or_else(|| {
                    Error::corrupt(
                        "upload.source_changed",
                        file.size().saturating_sub(FOOTER_SIZE as u64),
                        "the file no longer ends with a 512-byte VHD footer",
                    )
                    .in_file(path)
                })?
                .footer;
            let azure = FixedVhdLayout::new(
                path,
                info.virtual_size,
                info.logical_sector_size,
                FooterSource::Existing(Box::new(footer)),
                policy,
            )?;
            return Ok(UploadSource {
                image,
                azure,
                as_is: true,
            });
        }
        let azure = FixedVhdLayout::for_image(image.as_ref(), policy)?;
        Ok(UploadSource {
            image,
            azure,
            as_is: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Finding;
    use crate::format::vhd::footer::HardDiskFooter;
    use crate::image::{Allocation, Extent, ImageInfo};
    use std::io::Write;

    /// A stand-in for the VHD reader: the first `virtual_size` bytes of a file, declared
    /// as a fixed VHD.
    #[derive(Debug)]
    struct FakeFixedVhd {
        info: ImageInfo,
        data: Vec<u8>,
    }

    impl DiskImage for FakeFixedVhd {
        fn info(&self) -> &ImageInfo {
            &self.info
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            let o = offset as usize;
            buf.copy_from_slice(&self.data[o..o + buf.len()]);
            Ok(())
        }
        fn extents(&self, start: u64, length: u64, out: &mut Vec<Extent>) -> Result<()> {
            out.push(Extent {
                start,
                length,
                allocation: Allocation::Data {
                    layer: 0,
                    file_offset: start,
                },
            });
            Ok(())
        }
        fn findings(&self) -> &[Finding] {
            &[]
        }
    }

    fn fake(dir: &Path, virtual_size: u64) -> (PathBuf, Arc<dyn DiskImage>, [u8; FOOTER_SIZE]) {
        let footer = HardDiskFooter::new_fixed(virtual_size, [9; 16], 1234).to_bytes();
        let path = dir.join("fixed.vhd");
        let mut f = std::fs::File::create(&path).unwrap();
        let data = vec![0x5a; virtual_size as usize];
        f.write_all(&data).unwrap();
        f.write_all(&footer).unwrap();
        let info = ImageInfo {
            path: path.clone(),
            format: Format::Vhd,
            disk_type: DiskType::Fixed,
            virtual_size,
            logical_sector_size: 512,
            physical_sector_size: 512,
            block_size: None,
            file_size: virtual_size + FOOTER_SIZE as u64,
            identifier: None,
            parent: None,
            parent_identifier: None,
            vhd_footer_size: Some(512),
            creator: None,
        };
        (path, Arc::new(FakeFixedVhd { info, data }), footer)
    }

    #[test]
    fn azure_ready_vhd_is_sent_as_is_and_others_are_converted() {
        let dir = tempfile::tempdir().unwrap();
        // Azure-ready (20 MiB, whole MiB): its own footer, byte for byte, no padding.
        let (path, image, footer) = fake(dir.path(), 20 << 20);
        let policy = Policy {
            unique_id: Some([1; 16]),
            ..Policy::default()
        };
        let s = UploadSource::from_image(image, &path, &policy).unwrap();
        assert!(s.as_is);
        assert_eq!(s.azure.footer_bytes(), footer);
        assert_eq!(s.azure.output_size(), (20 << 20) + 512);
        // Not a whole MiB: not Azure-ready, so converted (padded, vhdforge's footer with the policy's id).
        let (path, image, _) = fake(dir.path(), (20 << 20) + 4096);
        let s = UploadSource::from_image(image, &path, &policy).unwrap();
        assert!(!s.as_is);
        assert_eq!(s.azure.disk_size, 21 << 20);
        assert_eq!(s.azure.footer.unique_id, [1; 16]);
    }

    #[test]
    fn an_as_is_source_must_still_end_with_a_footer() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy::default();
        // (case, what the file's last 512 bytes become after it was opened, footer kept?)
        type Change = fn(&mut Vec<u8>);
        let cases: [(&str, Change, bool); 3] = [
            // Unchanged: the file's own footer.
            ("unchanged", |_| {}, true),
            // Overwritten with zeros: no `conectix` cookie, so not sent as a footer.
            ("zeroed", |f| f.fill(0), false),
            // A 511-byte footer now (the cookie one byte later): not the 512-byte footer sent.
            ("511 bytes", |f| f.copy_within(..511, 1), false),
        ];
        for (name, change, kept) in cases {
            let (path, image, footer) = fake(dir.path(), 20 << 20);
            let mut bytes = std::fs::read(&path).unwrap();
            let at = bytes.len() - FOOTER_SIZE;
            let mut tail = bytes[at..].to_vec();
            change(&mut tail);
            bytes[at..].copy_from_slice(&tail);
            std::fs::write(&path, &bytes).unwrap();
            match UploadSource::from_image(image, &path, &policy) {
                Ok(s) if kept => assert_eq!(s.azure.footer_bytes(), footer, "{name}"),
                Err(e) if !kept => assert_eq!(e.code(), "upload.source_changed", "{name}: {e}"),
                Ok(_) => panic!("{name}: sent a footer the file no longer has"),
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }
}
