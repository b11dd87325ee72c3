//! The destination phase: create the page blob (or, for a managed disk or `--resume`, check
//! the existing one), learn what it already holds and what identifies it, then clear what
//! must not survive: the footer page first, then data where the source is zero.

use super::journal::BlobIdentity;
use super::plan::{normalize, subtract};
use super::{Cancel, Progress, UploadOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::storage::retry::with_retries;
use crate::storage::{BlobClient, Failure};
use std::ops::Range;

/// What the destination phase works on.
pub(super) struct Target<'a> {
    pub client: &'a BlobClient,
    /// The destination, redacted.
    pub shown: &'a str,
    pub managed: bool,
    /// Destination size: disk area + footer.
    pub output_size: u64,
    /// Where the footer page starts.
    pub disk_size: u64,
    pub opts: &'a UploadOptions,
    /// Called before each retry of a request.
    pub on_retry: &'a (dyn Fn(&Failure) + Sync),
    /// Stops retries and their backoff sleeps.
    pub cancel: &'a Cancel,
}

/// The destination as found (or made).
pub(super) struct Destination {
    /// Ranges it lists as written before this run.
    pub present: Vec<Range<u64>>,
    /// What ties a journal to this blob.
    pub blob: BlobIdentity,
    /// The sequence number every write is conditional on (page blobs only; a managed disk
    /// must not be given properties).
    pub seq: Option<u64>,
    /// The blob's `ETag` before this run wrote anything (existing blobs only): equal to a
    /// journal's clean-stop `ETag`, it proves nobody wrote to the blob since.
    pub etag: Option<String>,
}

/// Create the blob, or check the existing one (managed disk, `--resume`).
pub(super) async fn prepare(t: &Target<'_>) -> Result<Destination> {
    if t.managed || t.opts.resume {
        existing(t).await
    } else {
        create(t).await
    }
}

/// An existing destination: a page blob of exactly the output size.
async fn existing(t: &Target<'_>) -> Result<Destination> {
    let policy = &t.opts.retry;
    let props = with_retries(policy, t.cancel, t.on_retry, || t.client.head())
        .await
        .map_err(|f| f.into_error("reading the properties of", t.shown))?;
    if !props.blob_type.is_empty() && !props.blob_type.eq_ignore_ascii_case("PageBlob") {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "upload.conflict",
            format!("{} is a {} blob, not a page blob", t.shown, props.blob_type),
        ));
    }
    size_check(t, props.size)?;
    let present = normalize(
        with_retries(policy, t.cancel, t.on_retry, || t.client.page_ranges())
            .await
            .map_err(|f| f.into_error("listing the page ranges of", t.shown))?,
    );
    // A managed disk's sequence number is not ours to rely on (vhdforge never sets it).
    let seq = if t.managed {
        None
    } else {
        props.sequence_number
    };
    Ok(Destination {
        present,
        blob: BlobIdentity {
            creation_time: props.creation_time,
            sequence_number: seq,
        },
        seq,
        etag: props.etag,
    })
}

fn size_check(t: &Target<'_>, size: u64) -> Result<()> {
    if size == t.output_size {
        return Ok(());
    }
    let output_size = t.output_size;
    let hint = if t.managed {
        format!("create the disk with --upload-size-bytes {output_size} (this image's disk area {} bytes + 512-byte footer)", t.disk_size)
    } else {
        "upload to a new blob, or pass --overwrite to recreate it at the right size".to_string()
    };
    Err(Error::new(
        ErrorKind::InvalidInput,
        "upload.size_mismatch",
        format!(
            "{} is {size} bytes but this image needs exactly {output_size} bytes; {hint}",
            t.shown
        ),
    ))
}

/// A new page blob carrying a random sequence number: every Put Page is conditional on it,
/// so a blob recreated by anyone else fails this upload's writes (412) instead of mixing.
async fn create(t: &Target<'_>) -> Result<Destination> {
    let policy = &t.opts.retry;
    if t.opts.create_container {
        let container = t.client.container();
        with_retries(policy, t.cancel, t.on_retry, || {
            container.create_container()
        })
        .await
        .map_err(|f| f.into_error("creating the container", container.display()))?;
    }
    // Never 0 (what other tools leave), and below 2^53: Azurite keeps the number as a
    // JavaScript double, so larger values come back rounded (Azure allows up to 2^63 - 1).
    let seq = rand::random::<u64>() % ((1 << 53) - 1) + 1;
    // A retried create whose first attempt did arrive finds the blob existing: accept it
    // when it is ours (size, sequence number) and has no pages yet.
    let mut tried = false;
    with_retries(policy, t.cancel, t.on_retry, || {
        let again = std::mem::replace(&mut tried, true);
        let client = t.client;
        let (size, overwrite) = (t.output_size, t.opts.overwrite);
        async move {
            match client
                .create_page_blob_sequenced(size, overwrite, seq)
                .await
            {
                Err(Failure::Status {
                    status: 409, code, ..
                }) if again && code == "BlobAlreadyExists" => {
                    let props = client.head().await?;
                    let pages = client.page_ranges().await?;
                    if props.size == size && props.sequence_number == Some(seq) && pages.is_empty()
                    {
                        Ok(())
                    } else {
                        Err(Failure::Status {
                            status: 409,
                            code,
                            message: String::new(),
                        })
                    }
                }
                other => other,
            }
        }
    })
    .await
    .map_err(|f| f.into_error("creating", t.shown))?;
    // No Get Blob Properties here: a write-only SAS (`cw`) may not read them. The sequence
    // number is this blob's identity; a resume reads the creation time anyway.
    Ok(Destination {
        present: Vec::new(),
        blob: BlobIdentity {
            creation_time: None,
            sequence_number: Some(seq),
        },
        seq: Some(seq),
        etag: None,
    })
}

/// Before any data page is sent: clear the footer page when the destination holds one (an
/// earlier image's footer would make a half-written blob look like a valid VHD), then the
/// pages that hold data where the source is zero (a reused managed disk, a resumed blob
/// whose earlier data differs). Returns how many stale ranges were cleared.
pub(super) async fn clear_before_sending(
    t: &Target<'_>,
    dest: &Destination,
    requests: &[Range<u64>],
    progress: &dyn Progress,
) -> Result<u64> {
    let footer = t.disk_size..t.output_size;
    if !subtract(std::slice::from_ref(&footer), &dest.present).eq(std::slice::from_ref(&footer)) {
        clear(t, dest.seq, footer, "clearing the old footer page of").await?;
    }
    let stale = subtract(&dest.present, requests);
    let stale = subtract(&stale, std::slice::from_ref(&(t.disk_size..u64::MAX)));
    for r in &stale {
        clear(t, dest.seq, r.clone(), "clearing stale pages of").await?;
    }
    if !stale.is_empty() {
        progress.note(&format!(
            "cleared {} stale range(s) at the destination where the source is zero",
            stale.len()
        ));
    }
    Ok(stale.len() as u64)
}

async fn clear(t: &Target<'_>, seq: Option<u64>, range: Range<u64>, what: &str) -> Result<()> {
    with_retries(&t.opts.retry, t.cancel, t.on_retry, || {
        t.client.put_page_if_sequence(
            range.clone(),
            None,
            None,
            seq,
            std::time::Duration::from_secs(60),
        )
    })
    .await
    .map_err(|f| {
        if seq.is_some() && matches!(f, Failure::Status { status: 412, .. }) {
            super::send::foreign_write(t.shown)
        } else {
            f.into_error(what, t.shown)
        }
    })
}
