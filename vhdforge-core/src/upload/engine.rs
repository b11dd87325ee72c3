//! The upload engine: the phases in order, data flowing forward.
//!
//! 1. resume ([`super::resume`]): where the journal lives, that it can be written, and on
//!    `--resume` that source, plan and blob are still the interrupted upload's;
//! 2. open and plan ([`super::plan`]): the output stream's shape, the 8 TiB page-blob limit
//!    (before reading anything), then the pieces the allocation map shows as data (nothing
//!    is read: the exact zero test runs in the send phase, so each data byte is read once);
//! 3. destination ([`super::destination`]): create or check the blob, clear its footer page
//!    and stale pages;
//! 4. send ([`super::send`]): read each piece once, zero-test and coalesce it into Put Page
//!    requests, the bounded pipeline, the footer last, then the optional MD5.

use super::destination::{self, Destination, Target};
use super::journal::{self, Journal, SourceIdentity};
use super::plan::{self, PiecePlan};
use super::resume::{self, JournalPlace};
use super::send::{self, JournalState, SendInput};
use super::{Cancel, PlanSummary, Progress, UploadOptions, UploadSource, UploadSummary};
use crate::error::{Error, ErrorKind, Result};
use crate::finding::codes;
use crate::format::vhd::footer::FOOTER_SIZE;
use crate::storage::retry::with_retries;
use crate::storage::{BlobClient, Failure};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Upload `source` to the blob at `dest` (a URL, possibly with a SAS).
pub async fn upload(
    source: &Path,
    dest: &str,
    opts: UploadOptions,
    progress: Arc<dyn Progress>,
) -> Result<UploadSummary> {
    let mut journal_at = None;
    let cancel = progress.cancel();
    let outcome = {
        // Boxed: the whole upload's state machine is ~16 KiB (more on Windows), too big to
        // move around on the stack by value (clippy::large_futures).
        let inner = Box::pin(upload_inner(source, dest, opts, progress, &mut journal_at));
        until_cancelled(inner, &cancel).await
    };
    outcome.map_err(|e| with_resume_hint(e, journal_at.as_deref()))
}

/// How long a cancelled phase may take to stop by itself (the send phase flushes its
/// journal) before it is abandoned where it stands.
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_millis(600);

/// Run `op`, but once `cancel` is set give it [`CANCEL_GRACE`] to wind down and then drop
/// it: a request hanging on a slow connection or a 30 s timeout must not hold a Ctrl-C up.
/// A remote failure of a cancelled `op` is reported as "interrupted" (a transport error seen
/// because we stopped retrying is not the cause). Shared with verify.
pub(super) async fn until_cancelled<T>(
    op: impl std::future::Future<Output = Result<T>>,
    cancel: &Cancel,
) -> Result<T> {
    let stopped = async {
        cancel.cancelled().await;
        tokio::time::sleep(CANCEL_GRACE).await;
    };
    let r = tokio::select! {
        r = op => r,
        () = stopped => Err(send::cancelled()),
    };
    match r {
        // Only a remote failure can be an artefact of stopping (retries cut short); a local
        // refusal (size, resume checks) stays what it is.
        Err(e) if cancel.is_cancelled() && e.kind() == ErrorKind::Remote => {
            tracing::info!("stopped on request; the last failure was: {e}");
            Err(send::cancelled())
        }
        r => r,
    }
}

/// Say whether `--resume` can help after `e`: only when a journal exists (`journal`), which
/// is not the case when the upload failed before its first journal write (e.g. the blob
/// could never be created), where --resume would be refused.
fn with_resume_hint(e: Error, journal: Option<&Path>) -> Error {
    let transient = [codes::UPLOAD_TRANSPORT, codes::UPLOAD_CHECKSUM].contains(&e.code())
        || e.kind() == ErrorKind::Interrupted;
    // A blob replaced under the upload: --resume would (rightly) be refused.
    let replaced = e.code() == codes::UPLOAD_PRECONDITION;
    let hint = match journal {
        // Stopped on request: there is nothing to fix first.
        Some(p) if e.kind() == ErrorKind::Interrupted => format!(
            "the journal {} keeps what was sent: run the same command with --resume to send only what is missing",
            p.display()
        ),
        Some(p) if !replaced && (transient || e.kind() == ErrorKind::Remote) => format!(
            "the journal {} keeps what was sent: fix the cause, then run the same command with --resume to send only what is missing",
            p.display()
        ),
        None if transient => {
            "nothing was sent and no journal was written: run the same command again (without --resume)".to_string()
        }
        _ => return e,
    };
    // The failure stays the cause (its path, offset and own cause included); the code stays
    // too, so scripts see the same code with or without the hint.
    let code = e.code();
    e.context(code, format!("the upload stopped; {hint}"))
}

/// What `upload --dry-run` reports: the plan of a fresh upload, made without contacting the
/// destination or writing a journal.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryRun {
    /// Always true: marks the JSON as a plan, not a result.
    pub dry_run: bool,
    /// The resolved blob URL, secrets redacted.
    pub destination: String,
    /// The destination's size: what `az disk create --upload-size-bytes` needs.
    pub upload_size_bytes: u64,
    /// Bytes the upload would send (non-zero pages, bridged gaps, the footer).
    pub bytes_to_send: u64,
    /// Zero bytes it would skip.
    pub bytes_skipped: u64,
    /// Put Page requests it would make (footer included).
    pub requests: u64,
    /// True when DEST is a managed-disk upload SAS.
    pub managed_disk: bool,
}

/// Plan an upload of `source` to `dest` as [`upload`] would, checking the destination URL,
/// the credentials and the source, but without any request, journal or write.
pub async fn dry_run(
    source: &Path,
    dest: &str,
    opts: UploadOptions,
    progress: Arc<dyn Progress>,
) -> Result<DryRun> {
    let cancel = progress.cancel();
    until_cancelled(dry_run_inner(source, dest, opts, cancel.clone()), &cancel).await
}

async fn dry_run_inner(
    source: &Path,
    dest: &str,
    opts: UploadOptions,
    cancel: Cancel,
) -> Result<DryRun> {
    let client = checked_client(dest, &opts)?;
    let managed = is_managed_disk(&client, &opts)?;
    let opened = open_source(source, &opts, None, managed)?;
    // Nothing is sent, so reading the data here costs no second pass: the dry run gives
    // the exact numbers (the upload itself announces an upper bound and counts as it reads).
    let src = &opened.src;
    let (image, az, bridge) = (src.image.clone(), src.azure.clone(), opts.bridge_bytes);
    let exact = tokio::task::spawn_blocking(move || {
        plan::plan_requests_multi(image.as_ref(), &az, &[bridge], &cancel).map(|mut v| v.remove(0))
    })
    .await
    .map_err(|e| planner_failed(&e))??;
    let p = PlanSummary {
        bytes_total: src.azure.output_size(),
        bytes_to_send: exact.bytes + FOOTER_SIZE as u64,
        bytes_skipped: src.azure.disk_size - exact.bytes,
        bytes_already_present: 0,
        requests: exact.requests.len() as u64 + 1,
    };
    Ok(DryRun {
        dry_run: true,
        destination: client.display().to_string(),
        upload_size_bytes: p.bytes_total,
        bytes_to_send: p.bytes_to_send,
        bytes_skipped: p.bytes_skipped,
        requests: p.requests,
        managed_disk: managed,
    })
}

/// The client for `dest`, after the checks that need no request: Azure's naming rules and
/// a SAS cut short by the shell (before the client, whose own errors would be vaguer).
fn checked_client(dest: &str, opts: &UploadOptions) -> Result<BlobClient> {
    if let Ok(url) = crate::storage::auth::expand_destination(dest, &opts.credentials) {
        crate::storage::names::check_destination(&url, &crate::storage::redact(&url))?;
    }
    BlobClient::new(dest, &opts.credentials, &opts.api_version, opts.concurrency)
}

/// Which of `requests` must be sent (`todo[i]` for `requests[i]`): all on a fresh upload;
/// on `--resume`, those the old journal does not record as done, plus any done one whose
/// data the blob no longer holds.
async fn requests_todo(
    client: &BlobClient,
    src: &UploadSource,
    opts: &UploadOptions,
    old: Option<&Journal>,
    dest: &Destination,
    requests: &[std::ops::Range<u64>],
    progress: &dyn Progress,
) -> Result<Vec<bool>> {
    let journal_done = old.map(Journal::done_ranges).unwrap_or_default();
    let todo = resume::requests_to_send(requests, opts.resume, &journal_done);
    resume::prove_done(
        client,
        src,
        opts,
        old,
        dest.etag.as_deref(),
        requests,
        todo,
        progress,
    )
    .await
}

/// Set the whole blob's Content-MD5 once every page is in place.
async fn set_content_md5(t: &Target<'_>, md5: &str) -> Result<()> {
    with_retries(&t.opts.retry, t.cancel, t.on_retry, || {
        t.client.set_content_md5(md5)
    })
    .await
    .map_err(|f| f.into_error("setting Content-MD5 of", t.shown))
}

/// The upload proper; sets `journal_at` once a journal exists on disk for this upload.
async fn upload_inner(
    source: &Path,
    dest: &str,
    mut opts: UploadOptions,
    progress: Arc<dyn Progress>,
    journal_at: &mut Option<PathBuf>,
) -> Result<UploadSummary> {
    let started = Instant::now();
    opts.concurrency = opts.concurrency.clamp(1, super::MAX_CONCURRENCY);
    let client = checked_client(dest, &opts)?;
    let shown = client.display().to_string();
    let managed = is_managed_disk(&client, &opts)?;
    let place = resume::locate(source, client.base(), &opts)?;
    if place.old.is_some() {
        *journal_at = Some(place.path.clone());
    }
    let opened = open_source(source, &opts, place.old.as_ref(), managed)?;
    let src = &opened.src;
    let planned = plan_upload(src, place.old.as_ref(), progress.cancel()).await?;

    let pre_retries = AtomicU64::new(0);
    let cancel = progress.cancel();
    let on_retry = |f: &Failure| {
        pre_retries.fetch_add(1, Ordering::Relaxed);
        progress.retried(&send::describe(f));
    };
    let target = Target {
        client: &client,
        shown: &shown,
        managed,
        output_size: src.azure.output_size(),
        disk_size: src.azure.disk_size,
        opts: &opts,
        on_retry: &on_retry,
        cancel: &cancel,
    };
    let dest = destination::prepare(&target).await?;
    resume::check_blob(place.old.as_ref(), &dest.blob, &shown, progress.as_ref())?;
    let requests = &planned.data.pieces;
    let todo = requests_todo(
        &client,
        src,
        &opts,
        place.old.as_ref(),
        &dest,
        requests,
        progress.as_ref(),
    )
    .await?;
    let stale_cleared =
        destination::clear_before_sending(&target, &dest, requests, progress.as_ref()).await?;
    let summary_plan = summarize(src, &planned.data, &todo);
    progress.note(&plan_line(&summary_plan));
    progress.set_total(summary_plan.bytes_to_send);

    let mut jstate = start_journal(&client, &opts, &place, &opened, &planned, &dest, &todo)?;
    *journal_at = Some(jstate.path().to_path_buf());
    let sent = send::send_all(
        SendInput {
            client: client.clone(),
            image: src.image.clone(),
            azure: src.azure.clone(),
            opts: opts.clone(),
            progress: progress.clone(),
            seq: dest.seq,
            pieces: planned.data.pieces,
            todo,
            present: dest.present,
        },
        &mut jstate,
    )
    .await?;
    if let Some(m) = &sent.md5 {
        set_content_md5(&target, m).await?;
    }
    // Done: the journal has served its purpose.
    let _ = std::fs::remove_file(jstate.path());
    let retries = sent.retries + pre_retries.load(Ordering::Relaxed);
    let stale = stale_cleared + sent.cleared;
    Ok(finished(
        &target,
        &summary_plan,
        sent,
        retries,
        stale,
        started,
    ))
}

/// What a completed upload reports.
fn finished(
    t: &Target<'_>,
    plan: &PlanSummary,
    sent: send::Sent,
    retries: u64,
    stale_ranges_cleared: u64,
    started: Instant,
) -> UploadSummary {
    // The plan gave upper bounds; what was skipped is known now that every piece was read.
    let skipped = plan
        .bytes_total
        .saturating_sub(plan.bytes_already_present)
        .saturating_sub(sent.bytes);
    UploadSummary {
        bytes_total: plan.bytes_total,
        bytes_sent: sent.bytes,
        bytes_skipped: skipped,
        bytes_already_present: plan.bytes_already_present,
        requests: sent.requests,
        retries,
        stale_ranges_cleared,
        seconds: started.elapsed().as_secs_f64(),
        destination: t.shown.to_string(),
        content_md5: sent.md5,
        managed_disk: t.managed,
    }
}

/// True for a managed-disk upload SAS (by host, or `--managed-disk`); refuses options such a
/// SAS cannot honour.
fn is_managed_disk(client: &BlobClient, opts: &UploadOptions) -> Result<bool> {
    let managed = opts.managed_disk || crate::storage::hosts::is_managed_disk_host(client.host());
    if managed && opts.content_md5 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "upload.managed_disk",
            "--content-md5 is not possible on a managed-disk upload SAS (no property writes are allowed there); use `vhdforge verify --full` instead",
        ));
    }
    Ok(managed)
}

/// Open the source (on resume with the interrupted upload's footer identity), check its
/// parents against the journal, and refuse a page blob over 8 TiB before any data is read.
fn open_source(
    source: &Path,
    opts: &UploadOptions,
    old: Option<&Journal>,
    managed: bool,
) -> Result<Opened> {
    let policy = resume::policy_for(&opts.policy, old);
    let src = UploadSource::open(source, &opts.open, &policy)?;
    let parents = journal::parent_identities(src.image.as_ref())?;
    resume::check_parents(old, &parents)?;
    let output_size = src.azure.output_size();
    if !managed && output_size > crate::azure::MAX_PAGE_BLOB {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "upload.too_large",
            format!(
                "this image uploads as {output_size} bytes, more than the 8 TiB a page blob holds; \
                 upload it straight to a managed disk (az disk create --upload-type Upload --upload-size-bytes {output_size})"
            ),
        ));
    }
    Ok(Opened { src, parents })
}

/// The source, opened and checked.
struct Opened {
    src: UploadSource,
    /// Identity of every parent, nearest first (for the journal).
    parents: Vec<SourceIdentity>,
}

/// The requests to send and the digest that ties a journal to them.
struct Planned {
    data: PiecePlan,
    hash: String,
}

/// Plan the pieces to read (from the allocation map only: nothing is read here) and, on
/// resume, check the plan is the interrupted upload's.
async fn plan_upload(
    src: &UploadSource,
    old: Option<&Journal>,
    cancel: crate::progress::Cancel,
) -> Result<Planned> {
    let image = src.image.clone();
    let az = src.azure.clone();
    let data = tokio::task::spawn_blocking(move || plan::plan_pieces(image.as_ref(), &az, &cancel))
        .await
        .map_err(|e| planner_failed(&e))??;
    let hash = data.hash(&src.azure.footer_bytes());
    resume::check_plan(old, &hash)?;
    Ok(Planned { data, hash })
}

fn planner_failed(e: &tokio::task::JoinError) -> Error {
    Error::new(
        ErrorKind::Io,
        "upload.internal",
        format!("planner failed: {e}"),
    )
}

/// The line that announces the plan before anything is sent: upper bounds from the
/// allocation map (zero pages inside data are found, and skipped, as they are read).
fn plan_line(p: &PlanSummary) -> String {
    use crate::progress::format_bytes;
    let mut s = format!(
        "plan: send at most {} ({} pieces of data, zero pages in them skipped as read); skip {} the allocation map shows empty",
        format_bytes(p.bytes_to_send),
        p.requests - 1,
        format_bytes(p.bytes_skipped)
    );
    if p.bytes_already_present > 0 {
        s.push_str("; ");
        s.push_str(&format_bytes(p.bytes_already_present));
        s.push_str(" already uploaded");
    }
    s
}

/// What the plan sends in this run, for the progress display and the summary: upper
/// bounds (a piece's zero pages are skipped as it is read).
fn summarize(src: &UploadSource, data: &PiecePlan, todo: &[bool]) -> PlanSummary {
    let send_bytes: u64 = data
        .pieces
        .iter()
        .zip(todo)
        .filter(|(_, &t)| t)
        .map(|(r, _)| r.end - r.start)
        .sum();
    let send_requests = todo.iter().filter(|&&t| t).count() as u64;
    PlanSummary {
        bytes_total: src.azure.output_size(),
        bytes_to_send: send_bytes + FOOTER_SIZE as u64,
        bytes_skipped: src.azure.disk_size - data.bytes,
        bytes_already_present: data.bytes - send_bytes,
        requests: send_requests + 1,
    }
}

/// Write this run's journal (source, plan, blob identity, what is already done) before the
/// first data page, and remove a leftover journal for the same upload in the other place,
/// which would only confuse a later --resume.
fn start_journal(
    client: &BlobClient,
    opts: &UploadOptions,
    place: &JournalPlace,
    opened: &Opened,
    planned: &Planned,
    dest: &Destination,
    todo: &[bool],
) -> Result<JournalState> {
    let azure = &opened.src.azure;
    let mut j = journal::new(
        client.base(),
        place.identity.clone(),
        opened.parents.clone(),
        azure.footer.unique_id,
        azure.footer.time_stamp.get(),
        planned.hash.clone(),
    );
    j.blob = dest.blob.clone();
    let done = planned
        .data
        .pieces
        .iter()
        .zip(todo)
        .filter(|(_, &t)| !t)
        .map(|(r, _)| r.clone())
        .collect();
    let mut jstate = JournalState::new(place.path.clone(), j, done, opts.journal_interval);
    jstate.flush()?;
    for other in &place.candidates {
        if other != jstate.path() {
            let _ = std::fs::remove_file(other);
        }
    }
    Ok(jstate)
}

#[cfg(test)]
mod tests {
    use super::resume::source_changed;
    use super::send::cancelled;
    use super::*;

    #[test]
    fn resume_hint_only_when_a_journal_exists() {
        let j = Path::new("/tmp/x.json");
        // With a cause of its own, which the hint must not drop (issue 8).
        let transport = || {
            Error::new(ErrorKind::Remote, "upload.transport", "no answer")
                .with_source(std::io::Error::other("connection reset by peer"))
        };
        let cases: [(&str, Error, Option<&Path>, Option<&str>); 6] = [
            // Creation never succeeded: no journal, so --resume would be refused.
            (
                "transport, no journal",
                transport(),
                None,
                Some("without --resume"),
            ),
            // Data was being sent: the journal exists, --resume continues.
            (
                "transport, journal",
                transport(),
                Some(j),
                Some("with --resume"),
            ),
            // Interrupted before the first journal write.
            (
                "cancel, no journal",
                cancelled(),
                None,
                Some("without --resume"),
            ),
            // A fatal answer before anything was sent gets no resume talk.
            (
                "auth, no journal",
                Error::new(ErrorKind::Remote, "upload.auth", "403"),
                None,
                None,
            ),
            // A local refusal is not about resuming.
            ("resume refused", source_changed("x"), Some(j), None),
            // The blob was replaced during the upload: resuming into it is refused too.
            ("blob replaced", send::foreign_write("d"), Some(j), None),
        ];
        for (name, e, journal, want) in cases {
            let code = e.code();
            let before = e.to_string();
            let out = with_resume_hint(e, journal);
            assert_eq!(out.code(), code, "{name}");
            let text = out.to_string();
            match want {
                Some(w) => {
                    assert!(text.contains(w), "{name}: {text}");
                    // The failure is kept whole as the cause, not copied into a new message.
                    let cause = std::error::Error::source(&out)
                        .and_then(|s| s.downcast_ref::<Error>())
                        .map(ToString::to_string);
                    assert_eq!(cause.as_deref(), Some(before.as_str()), "{name}");
                    assert!(text.ends_with(&before), "{name}: {text}");
                }
                None => assert_eq!(text, before, "{name}"),
            }
            if journal.is_none() {
                assert!(!text.contains("with --resume"), "{name}: {text}");
            }
        }
    }
}
