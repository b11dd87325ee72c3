//! The resume phase: where this upload's journal lives, whether it can be written, and on
//! `--resume` whether the interrupted upload's journal still vouches for the destination:
//! the same source (every file of its chain), the same plan, the same blob.
//!
//! Everything here runs before the destination is touched, so a refusal leaves it as it was.

use super::journal::{self, BlobIdentity, Journal, SourceIdentity};
use super::plan::is_covered;
use super::{Progress, UploadOptions};
use crate::convert::Policy;
use crate::error::{Error, ErrorKind, Result};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where the journal is, and what an interrupted upload left in it.
pub(super) struct JournalPlace {
    /// The journal this run writes (on resume: the one it continues).
    pub path: PathBuf,
    /// The interrupted upload's journal (`--resume` only).
    pub old: Option<Journal>,
    /// Every place a journal for this source and destination may be (leftovers of earlier
    /// runs elsewhere are removed once this run's journal is written).
    pub candidates: Vec<PathBuf>,
    /// The source file now.
    pub identity: SourceIdentity,
}

/// Find (on resume) or choose the journal, check it can be written, and on resume check
/// the source file is the one the journal describes.
pub(super) fn locate(source: &Path, base: &str, opts: &UploadOptions) -> Result<JournalPlace> {
    if opts.resume {
        refuse_non_regular(source)?;
    }
    let identity = SourceIdentity::of(source)?;
    let fallback = journal::state_dir_location();
    let (path, old) = if opts.resume {
        let places =
            journal::candidates(source, base, opts.state_dir.as_deref(), fallback.as_deref());
        let Some(p) = journal::find_existing(&places) else {
            let shown: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "upload.resume",
                format!("--resume: no journal for this source and destination (looked for {}), so nothing proves what was sent; upload again without --resume (with --overwrite if the blob exists)", shown.join(" and ")),
            ));
        };
        let j = journal::load(&p, owner_of(source))?;
        (p, j)
    } else {
        let p = journal::choose_path(
            source,
            base,
            opts.state_dir.as_deref(),
            journal::default_state_dir,
        )?;
        (p, None)
    };
    if let Some(what) = old.as_ref().and_then(|j| j.source.change(&identity)) {
        return Err(source_changed(&what));
    }
    journal::probe_writable(&path)?;
    let candidates =
        journal::candidates(source, base, opts.state_dir.as_deref(), fallback.as_deref());
    Ok(JournalPlace {
        path,
        old,
        candidates,
        identity,
    })
}

/// The user owning `source`: a journal that user wrote may be resumed by another (root).
fn owner_of(source: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(source).ok().map(|m| m.uid())
    }
    #[cfg(not(unix))]
    {
        let _ = source;
        None
    }
}

/// A device, pipe or other non-regular source has no size, times or inode that change when
/// its content does (a loop device's node keeps its times while the file behind it is
/// rewritten), so nothing could prove it unchanged since the interrupted upload.
fn refuse_non_regular(source: &Path) -> Result<()> {
    let meta = std::fs::metadata(source)
        .map_err(|e| Error::io(format!("cannot stat {}", source.display()), e).in_file(source))?;
    if meta.is_file() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::InvalidInput,
        "upload.resume",
        format!(
            "--resume refused: {} is not a regular file (a device or pipe), so vhdforge cannot tell \
             whether its content changed since the interrupted upload; upload it again from the \
             start with --overwrite, or copy it to a file and upload that",
            source.display()
        ),
    ))
}

/// The conversion policy: on resume, the interrupted upload's footer identity, so a source
/// converted on the fly yields the same footer (and plan hash) again.
pub(super) fn policy_for(base: &Policy, old: Option<&Journal>) -> Policy {
    let mut policy = base.clone();
    if let Some(j) = old {
        policy.unique_id = journal::parse_unique_id(&j.footer_unique_id);
        policy.time_stamp = Some(j.footer_time_stamp);
    }
    policy
}

/// A differencing source is only as unchanged as its parents.
pub(super) fn check_parents(old: Option<&Journal>, parents: &[SourceIdentity]) -> Result<()> {
    let Some(j) = old else { return Ok(()) };
    if j.parents.len() != parents.len() {
        return Err(source_changed(&format!(
            "the chain had {} parent(s), now {}",
            j.parents.len(),
            parents.len()
        )));
    }
    match j.parents.iter().zip(parents).find_map(|(a, b)| a.change(b)) {
        Some(what) => Err(source_changed(&format!("parent {what}"))),
        None => Ok(()),
    }
}

/// The plan must be the interrupted upload's: the journal's ranges are ranges of that plan.
pub(super) fn check_plan(old: Option<&Journal>, plan_hash: &str) -> Result<()> {
    match old {
        Some(j) if j.plan_hash != plan_hash => Err(Error::new(
            ErrorKind::InvalidInput,
            "upload.resume",
            "--resume refused: the source's content or footer differs from the interrupted upload's (plan hash changed); upload again with --overwrite",
        )),
        _ => Ok(()),
    }
}

/// The destination must be the blob the journal's ranges were written to: a blob recreated
/// since (another upload with --overwrite) holds other data under the same name. When the
/// service reports nothing to compare, say that only `verify --full` can vouch for the data.
pub(super) fn check_blob(
    old: Option<&Journal>,
    now: &BlobIdentity,
    shown: &str,
    progress: &dyn Progress,
) -> Result<()> {
    let Some(j) = old else { return Ok(()) };
    if let Some(what) = j.blob.change(now) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "upload.resume",
            format!(
                "--resume refused: {shown} is not the blob the interrupted upload wrote ({what}); \
                 someone replaced it, so the journal says nothing about its content: upload \
                 again from the start with --overwrite"
            ),
        ));
    }
    if j.blob.is_unknown() {
        progress.note(
            "the destination reports no creation time, so the journal cannot prove it is the \
             same blob: run `vhdforge verify --full` after this upload",
        );
    }
    Ok(())
}

/// `--resume` refused because a file of the source changed (`what`).
pub(super) fn source_changed(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "upload.resume",
        format!(
            "--resume refused: the source changed since the interrupted upload ({what}); \
             upload again from the start with --overwrite"
        ),
    )
}

/// Which planned pieces this run sends. Without resume, all of them. On resume, all but
/// those the journal records as completed by this upload (`journal_done`), which
/// [`prove_done`] then reads back and compares with the source before trusting them.
/// Destination pages alone never count: they may hold an earlier upload's or another
/// source's data. (A piece's first or last page may be zero and never sent, so the
/// destination's listing cannot vouch for a piece; the comparison does.)
pub(super) fn requests_to_send(
    requests: &[Range<u64>],
    resume: bool,
    journal_done: &[Range<u64>],
) -> Vec<bool> {
    requests
        .iter()
        .map(|r| !(resume && is_covered(r.start, r.end, journal_done)))
        .collect()
}

/// Most ranges read back at once when proving done ranges: each holds up to 4 MiB read
/// and 4 MiB of source, so this bounds that phase to 64 MiB whatever `--concurrency` is.
const PROVE_CONCURRENCY: usize = 8;

/// On `--resume`, make sure every request the journal calls done really is at the
/// destination before it is skipped.
///
/// Every request marked done is read back (≤ 4 MiB each, a few at a time) and compared
/// with the source: only those that match stay skipped, the rest are sent again, and
/// `progress` says how much was re-checked and how much differed. Nothing cheaper proves
/// it: the blob's `ETag` changes on every write, but a foreign write made *while* the
/// interrupted upload ran is followed by that upload's own writes, so the `ETag` recorded at
/// its clean stop can match the blob and still hide foreign data in done ranges (a second
/// red-team pass did exactly that). The `ETag` only says, in the note, whether the blob
/// changed after the stop.
#[allow(clippy::too_many_arguments)]
pub(super) async fn prove_done(
    client: &crate::storage::BlobClient,
    src: &super::UploadSource,
    opts: &UploadOptions,
    old: Option<&Journal>,
    etag_now: Option<&str>,
    requests: &[Range<u64>],
    mut todo: Vec<bool>,
    progress: &dyn Progress,
) -> Result<Vec<bool>> {
    let Some(j) = old else { return Ok(todo) };
    if !opts.resume || !todo.contains(&false) {
        return Ok(todo);
    }
    let listed: Vec<usize> = (0..requests.len()).filter(|&i| !todo[i]).collect();
    let mut done = listed.into_iter();
    let az = std::sync::Arc::new(src.azure.clone());
    let cancel = progress.cancel();
    let mut set = tokio::task::JoinSet::new();
    let (mut checked, mut differed) = (0u64, 0u64);
    loop {
        while set.len() < PROVE_CONCURRENCY.min(opts.concurrency.max(1)) {
            let Some(i) = done.next() else { break };
            let fut = super::verify::compare_piece(
                client.clone(),
                src.image.clone(),
                az.clone(),
                opts.retry.clone(),
                cancel.clone(),
                requests[i].clone(),
            );
            set.spawn(async move { (i, fut.await) });
        }
        let Some(res) = set.join_next().await else {
            break;
        };
        let (i, outcome) = res.map_err(|e| {
            Error::new(
                ErrorKind::Io,
                "upload.internal",
                format!("re-check task failed: {e}"),
            )
        })?;
        let (len, diff) = outcome?;
        checked += len;
        if diff.is_some() {
            differed += len;
            todo[i] = true;
        }
    }
    let why = match j.clean_stop_etag.as_deref() {
        Some(e) if Some(e) != etag_now => {
            "the destination was written to since the interrupted upload stopped (its ETag changed)"
        }
        Some(_) => "only the data itself shows that nobody else wrote to the destination",
        None => {
            "the interrupted upload did not stop cleanly, so nothing vouches for the destination"
        }
    };
    progress.note(&format!(
        "{why}: {} re-checked, {} differed and will be sent again",
        crate::progress::format_bytes(checked),
        crate::progress::format_bytes(differed)
    ));
    Ok(todo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_sends_all_but_what_the_journal_records() {
        const K: u64 = 1024;
        let requests = [0..4 * K, 8 * K..12 * K, 16 * K..20 * K];
        let all = 0..1 << 20;
        /// Name, resume, journal-completed ranges, expected to-send flags.
        type Case = (&'static str, bool, Vec<Range<u64>>, [bool; 3]);
        #[rustfmt::skip]
        #[allow(clippy::single_range_in_vec_init)]
        let cases: [Case; 4] = [
            // A fresh upload sends everything, whatever the journal says.
            ("fresh", false, vec![all.clone()], [true; 3]),
            // Nothing journaled: all sent (a reused disk's own pages never count).
            ("nothing journaled", true, vec![], [true; 3]),
            // Journal-completed: left to prove_done's comparison.
            ("journal", true, vec![0..4 * K, 16 * K..20 * K], [false, true, false]),
            // The journal covers only part of a piece: the whole piece is sent.
            ("partial journal", true, vec![0..2 * K], [true; 3]),
        ];
        for (name, resume, journal_done, want) in cases {
            assert_eq!(
                requests_to_send(&requests, resume, &journal_done),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn blob_identity_changes_refuse_resume() {
        let created = |t: &str, seq: Option<u64>| BlobIdentity {
            creation_time: Some(t.into()),
            sequence_number: seq,
        };
        let t1 = "Mon, 30 Nov 2026 07:00:00 GMT";
        let t2 = "Mon, 30 Nov 2026 07:00:01 GMT";
        // (case, recorded, now, refused)
        let cases = [
            // The same blob after writes: creation time and sequence number do not move.
            (
                "same blob",
                created(t1, Some(7)),
                created(t1, Some(7)),
                false,
            ),
            // Recreated within the same second by another vhdforge: the sequence number tells.
            (
                "recreated, same second",
                created(t1, Some(7)),
                created(t1, Some(9)),
                true,
            ),
            // Recreated by a tool that sets no sequence number.
            (
                "recreated elsewhere",
                created(t1, Some(7)),
                created(t2, Some(0)),
                true,
            ),
            // A managed disk (no sequence number recorded) that keeps its creation time.
            (
                "managed, same",
                created(t1, None),
                created(t1, Some(0)),
                false,
            ),
            // The service stopped reporting the creation time: not the same proof, refused.
            (
                "time vanished",
                created(t1, None),
                BlobIdentity::default(),
                true,
            ),
        ];
        for (name, then, now, refused) in cases {
            assert_eq!(then.change(&now).is_some(), refused, "{name}");
        }
    }
}
