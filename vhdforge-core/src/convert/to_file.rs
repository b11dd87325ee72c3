//! Convert an image into a new Azure-ready fixed VHD file.
//!
//! Pipeline: the allocation map names the data pieces (holes and zero blocks are never
//! read), rayon workers read each piece, test it for zero page by page and write only the
//! non-zero pages with positional writes into a sparse temporary file next to the output;
//! the footer goes last, the file is flushed, then renamed into place. Cost grows with the
//! data in the image, not its virtual size.
//!
//! Before that, unless `--no-clone`, the clone pass ([`super::clone`]) shares every
//! block-aligned stored extent into the output when the file system can (XFS reflink,
//! btrfs, `ReFS`); only what it leaves is read and copied as above.

use super::clone::{split_pieces, Cloner, Copying};
use super::Policy;
use crate::azure::FixedVhdLayout;
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::{self, FileKind, Occupant, PersistError, Replace, TempFile};
use crate::image::stored_bytes;
use crate::image::DiskImage;
use crate::io::{pwrite_all, usize_from};
use crate::platform::clone::Refusal;
use crate::progress::Progress;
use crate::sparse::{data_pieces, scan_pieces};
use serde::Serialize;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Bytes read per work item; also the largest write.
const PIECE: u64 = 4 << 20;
/// The virtual disk is cloned and copied this much at a time, so the lists of one slice's
/// pieces stay small however fragmented the map is (a hostile map can store every other
/// sector: one piece per KiB).
const SLICE: u64 = 256 << 20;
/// Zero-test and write granularity: the file system block size of common file systems,
/// so every skipped page is a real hole.
const PAGE: u64 = 4096;
/// Tag of the temporary output's name (`.OUT.vhdforge-partial-PID-RANDOM`).
const TEMP_TAG: &str = "partial";

/// How to convert.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// What beyond Azure's rules is allowed.
    pub policy: Policy,
    /// Replace an existing output file.
    pub force: bool,
    /// Worker threads (0 = rayon's default, one per core).
    pub threads: usize,
    /// Never share blocks with the source (`--no-clone`): copy every data byte.
    pub no_clone: bool,
}

/// What a conversion did.
#[derive(Debug, Clone, Serialize)]
pub struct ConvertReport {
    /// Virtual size of the source.
    pub virtual_size: u64,
    /// Length of the output file (disk + footer).
    pub output_size: u64,
    /// Non-zero bytes written (copied).
    pub data_bytes_written: u64,
    /// Bytes shared with the source by block cloning instead of copied (zero pages inside
    /// cloned ranges included: they share the source's blocks).
    pub data_bytes_cloned: u64,
    /// Bytes of the source's virtual disk neither copied nor cloned because they are zero
    /// (by metadata or content); the padding is counted apart, in `padded_bytes`.
    pub zero_bytes_skipped: u64,
    /// Zero bytes added to reach a whole MiB.
    pub padded_bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Every file the image reads from: the image itself and its parents.
fn chain_paths(image: &dyn DiskImage) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = Some(image);
    while let Some(i) = cur {
        out.push(i.info().path.clone());
        cur = i.parent();
    }
    out
}

/// Convert `image` into an Azure-ready fixed VHD at `out`.
pub fn convert_to_file(
    image: &dyn DiskImage,
    out: &Path,
    opts: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<ConvertReport> {
    let started = Instant::now();
    let plan = FixedVhdLayout::for_image(image, &opts.policy)?;
    check_output_for(image, out, opts.force)?;
    let data_upper_bound = stored_bytes(image, 0..plan.source_size)?;

    // The chain's own files are kept even when named like a stale temporary of OUT.
    fsutil::remove_orphans(out, TEMP_TAG, &chain_paths(image));
    // Removed again on any error or interruption (drop), so OUT's name only ever holds a
    // complete, checked image.
    let tmp = TempFile::beside(out, TEMP_TAG).map_err(|e| {
        Error::io(
            format!("cannot create a temporary file beside {}", out.display()),
            e,
        )
    })?;
    let file = tmp.file();
    let tmp_path = tmp.path().to_path_buf();
    // Before sizing: on Windows only a sparse file's extension takes no clusters.
    fsutil::mark_sparse(file);
    file.set_len(plan.output_size()).map_err(|e| {
        Error::io(
            format!("cannot size the new output for {}", out.display()),
            e,
        )
    })?;

    progress.set_total(data_upper_bound);
    let (mut cloner, copying) = if opts.no_clone {
        (None, Some(Copying::Asked))
    } else {
        Cloner::new(image, file).map_or_else(|why| (None, Some(why)), |c| (Some(c), None))
    };
    let mut space = SpaceChecks::new(out, image, copying);
    if copying.is_some() {
        space.before_copy(0, 0..plan.source_size, Some(data_upper_bound))?;
    }
    let pool = worker_pool(opts.threads)?;
    let (mut data_bytes_cloned, mut data_bytes_written, mut start) = (0, 0, 0);
    while start < plan.source_size {
        // A slice with nothing stored reads nothing, so only here is a Ctrl-C noticed on a
        // huge sparse disk before every slice's map was walked.
        if progress.is_cancelled() {
            return Err(interrupted());
        }
        let slice = start..plan.source_size.min(start + SLICE);
        start = slice.end;
        let pieces = match &mut cloner {
            Some(c) => {
                let done = c.run(image, file, slice.clone(), progress)?;
                data_bytes_cloned += done.cloned;
                if let Some(r) = c.exhausted() {
                    space.copying = Some(Copying::Refused(r));
                }
                space.elsewhere = c.elsewhere();
                split_pieces(&done.leftover, PIECE)
            }
            None => data_pieces(image, slice.clone(), PIECE)?,
        };
        // Only now is it known how much of this slice may take new space.
        let needed = pieces.iter().map(|r| r.end - r.start).sum();
        let rest = slice.end..plan.source_size;
        let exact = space.before_copy(needed, rest.clone(), None)?;
        if space.settled {
            // The rest is a plain copy, and all of it fits.
            cloner = None;
        }
        let copied = Copied::default();
        let result = write_data(&pool, image, file, &pieces, out, progress, exact, &copied);
        let (written, done) = (copied.written.into_inner(), copied.done.into_inner());
        data_bytes_written += written;
        if let Err(e) = result {
            return Err(if e.code() == "convert.no_space" {
                let left = needed.saturating_sub(done);
                space.shortage(data_bytes_written, left, rest, refusal(&e))?
            } else {
                e
            });
        }
    }
    pwrite_all(file, &plan.footer_bytes(), plan.disk_size).map_err(|e| {
        Error::io(
            format!("cannot write the new output for {}", out.display()),
            e,
        )
    })?;
    if progress.is_cancelled() {
        return Err(interrupted());
    }
    self_check(&tmp_path, out, &opts.policy)?;
    put_in_place(tmp, out, opts.force)?;
    Ok(ConvertReport {
        virtual_size: plan.source_size,
        output_size: plan.output_size(),
        data_bytes_written,
        data_bytes_cloned,
        zero_bytes_skipped: plan
            .source_size
            .saturating_sub(data_bytes_written)
            .saturating_sub(data_bytes_cloned),
        padded_bytes: plan.padding(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Give the complete, checked temporary `tmp` the name `out` (replacing a file there only
/// with `force`).
fn put_in_place(tmp: TempFile, out: &Path, force: bool) -> Result<()> {
    // Written owner-only; the output gets a new file's usual mode.
    tmp.open_up().map_err(|e| {
        Error::io(
            format!(
                "cannot set the mode of the new output for {}",
                out.display()
            ),
            e,
        )
    })?;
    // The file is flushed by persist before it is renamed; the folder after.
    let replace = if force {
        Replace::RegularFile
    } else {
        Replace::Never
    };
    tmp.persist(out, replace).map_err(|e| match e {
        PersistError::Exists(occupant) => Error::new(
            ErrorKind::InvalidInput,
            "convert.output_exists",
            format!(
                "{} appeared while converting ({occupant}); nothing was written to it. Pass --force to replace it",
                out.display()
            ),
        ),
        PersistError::NotReplaceable(occupant) => not_a_file(out, &occupant),
        PersistError::Io(e) => Error::io(format!("cannot put the output in place as {}", out.display()), e),
    })?;
    Ok(())
}

/// The error of a cancelled conversion.
fn interrupted() -> Error {
    Error::new(
        ErrorKind::Interrupted,
        "interrupted",
        "conversion interrupted; no output was written",
    )
}

/// The worker threads of `write_data` (`threads` 0: one per core).
fn worker_pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                "convert.threads",
                "cannot start worker threads",
            )
            .with_source(e)
        })
}

/// What one slice's copy did so far: read by the caller after an error too.
#[derive(Default)]
struct Copied {
    /// Bytes written (non-zero pages) of the pieces done.
    written: AtomicU64,
    /// Stored bytes of the pieces done (a piece is done once all its pages are written).
    done: AtomicU64,
}

/// The error a piece's copy stops with when the output's file system has no room for it
/// (the check said so, or a write was `refused`); the caller turns it into the full report
/// ([`SpaceChecks::shortage`]).
fn ran_short(refused: Option<std::io::Error>) -> Error {
    let e = Error::new(
        ErrorKind::InvalidInput,
        "convert.no_space",
        "the output's file system has no room for the next piece",
    );
    match refused {
        Some(io) => e.with_source(io),
        None => e,
    }
}

/// The write error inside a [`ran_short`] error, if a write was refused.
fn refusal(e: &Error) -> Option<&std::io::Error> {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>())
}

/// Read `pieces`, write their non-zero pages into `file` at the same offsets (in parallel;
/// the file was sized beforehand, so skipped pages read as zeros), count into `copied`.
/// With `exact`, each piece's non-zero bytes are checked against the free space before they
/// are written. A write that finds the file system full ends the same way ([`ran_short`]).
#[allow(clippy::too_many_arguments)]
fn write_data(
    pool: &rayon::ThreadPool,
    image: &dyn DiskImage,
    file: &File,
    pieces: &[std::ops::Range<u64>],
    out: &Path,
    progress: &dyn Progress,
    exact: bool,
    copied: &Copied,
) -> Result<()> {
    pool.install(|| {
        scan_pieces(
            pieces,
            PAGE,
            |buf, at| {
                if progress.is_cancelled() {
                    return Err(interrupted());
                }
                image.read_at(buf, at)
            },
            |piece, data, runs| {
                let need: u64 = runs.iter().map(|r| r.end - r.start).sum();
                if exact && need > 0 && !fits(out, need) {
                    return Err(ran_short(None));
                }
                for run in runs {
                    let at = usize_from(run.start - piece.start);
                    let len = usize_from(run.end - run.start);
                    pwrite_all(file, &data[at..at + len], run.start).map_err(|e| {
                        if crate::platform::is_out_of_space(&e) {
                            return ran_short(Some(e));
                        }
                        Error::io(
                            format!("cannot write the new output for {}", out.display()),
                            e,
                        )
                        .at(run.start)
                    })?;
                }
                // Counted once the whole piece is written, so the two counts agree.
                copied.written.fetch_add(need, Ordering::Relaxed);
                copied
                    .done
                    .fetch_add(piece.end - piece.start, Ordering::Relaxed);
                start_writeback(file, piece.start, piece.end - piece.start);
                progress.advance(piece.end - piece.start);
                Ok(())
            },
        )
    })?;
    Ok(())
}

/// The output at `tmp` must pass `check` before it gets its name `out`: every structural
/// finding, and every Azure rule the policy does not waive (an output outside the size range
/// the user allowed is still the right output).
fn self_check(tmp: &Path, out: &Path, policy: &Policy) -> Result<()> {
    let failed = |what: String| {
        Error::new(
            ErrorKind::Corrupt,
            "convert.self_check",
            format!("the converted image failed its own check ({what}); nothing was written to {}. Please report this", out.display()),
        )
    };
    // The temporary's name is never shown: the context names OUT.
    let check = crate::inspect_quick(tmp, &crate::OpenOptions::default()).map_err(|e| {
        e.without_file().context(
            "convert.self_check",
            format!(
                "the converted image could not be checked; nothing was written to {}",
                out.display()
            ),
        )
    })?;
    // Structural findings come first in `check.findings`; `readable` says none was an error.
    let (Some(info), true) = (&check.info, check.readable) else {
        let first = check
            .findings
            .iter()
            .find(|f| f.severity == crate::Severity::Error)
            .map_or_else(|| "it could not be read".to_string(), ToString::to_string);
        return Err(failed(first));
    };
    match crate::azure::assess(info)
        .into_iter()
        .find(|b| b.severity == crate::Severity::Error && !policy.allows(b.rule))
    {
        Some(breach) => Err(failed(crate::Finding::from(breach).to_string())),
        None => Ok(()),
    }
}

/// Ask the kernel to start writing this range to disk now, without waiting, so the final
/// flush finds little left to do and disk writes overlap the rest of the conversion.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: a hint on a descriptor we own; no memory is passed. Failure only loses the hint.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Every check on OUT that needs no data: it is not the input or one of its parents, its
/// folder exists, and it is new (or `force` and a regular file or link). Called before any
/// data is read, and by a dry run; messages name OUT, never the temporary file.
pub fn check_output_for(image: &dyn DiskImage, out: &Path, force: bool) -> Result<()> {
    // First: `convert X X` must say that OUT is the input, not that it exists.
    if let Some(p) = chain_paths(image).iter().find(|p| same_file(p, out)) {
        let what = if *p == image.info().path {
            "the input image"
        } else {
            "a parent of the input image"
        };
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "convert.output_is_input",
            format!("OUT is the input: {} is {what}; choose another output (use --in-place to convert raw and fixed VHD inputs where they lie)", out.display()),
        ));
    }
    check_output_folder(out)?;
    check_output(out, force)
}

/// The folder OUT goes into must exist and be a folder: otherwise the failure would come
/// only when the temporary file is created, naming that internal file.
fn check_output_folder(out: &Path) -> Result<()> {
    let folder = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let problem = match std::fs::metadata(folder) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => "is not a directory",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
        Err(e) => {
            return Err(Error::io(
                format!(
                    "cannot look at {}, the folder for {}",
                    folder.display(),
                    out.display()
                ),
                e,
            ))
        }
    };
    Err(Error::new(
        ErrorKind::InvalidInput,
        "convert.output_dir",
        format!(
            "the output's directory {} {problem}; create it first (mkdir -p {}) or name an output in an existing directory",
            folder.display(),
            folder.display()
        ),
    ))
}

/// Refuse up front an OUT that cannot or may not be replaced, so nothing is computed for an
/// output that would be refused at the end.
fn check_output(out: &Path, force: bool) -> Result<()> {
    let occupant =
        Occupant::of(out).map_err(|e| Error::io(format!("cannot look at {}", out.display()), e))?;
    if occupant.is_vacant() {
        return Ok(());
    }
    if !occupant.is_replaceable() {
        return Err(not_a_file(out, &occupant));
    }
    if force {
        return Ok(());
    }
    let msg = match (&occupant.link_to, occupant.kind) {
        (Some(to), FileKind::Missing) => format!(
            "{} is a symbolic link to {}, which does not exist; vhdforge never writes through a link. \
             Pass --force to replace the link itself with the output, or remove it",
            out.display(),
            to.display()
        ),
        (Some(to), _) => format!(
            "{} already exists ({occupant}); pass --force to replace the link itself ({} is not touched)",
            out.display(),
            to.display()
        ),
        (None, _) => format!(
            "{} already exists; pass --force to replace it",
            out.display()
        ),
    };
    Err(Error::new(
        ErrorKind::InvalidInput,
        "convert.output_exists",
        msg,
    ))
}

/// The error for an OUT that is a device, directory, pipe or socket (or a link to one):
/// a disk image must never take its place, whatever the flags.
fn not_a_file(out: &Path, occupant: &Occupant) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "convert.output_not_file",
        format!(
            "{} is {occupant}; the output must be a regular file, and vhdforge never replaces a device, \
             directory, pipe or socket (not even with --force). Name a new file for the output",
            out.display()
        ),
    )
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Bytes left free beside `needed` bytes of new data, for the file system's own records
/// (extent trees grow with the data): a copy never fills the file system beyond this.
fn margin(needed: u64) -> u64 {
    if needed == 0 {
        0
    } else {
        needed / 64 + (1 << 20)
    }
}

/// Whether `needed` bytes of new data fit in the output's folder (yes when the system does
/// not say).
fn fits(out: &Path, needed: u64) -> bool {
    free_space(out).is_none_or(|avail| avail >= needed + margin(needed))
}

/// The free-space checks of one convert.
///
/// The allocation map gives only an upper bound of what a copy writes: it counts written
/// zeros (a thick disk copied without its holes) as stored, and zero pages are never
/// written. So a bound that fits settles it, and a bound that does not fit refuses nothing:
/// - as soon as the rest of the disk is known to be a plain copy (from the start with
///   `--no-clone` or a replayed log; once nothing more can be cloned otherwise:
///   [`Cloner::exhausted`]) the whole rest's bound is checked once; if it fits, nothing more
///   is checked, and if not, a warning says the output may not fit;
/// - then each slice's bound is checked before its copy, and a slice whose bound does not
///   fit is copied with each piece's exact need (its non-zero pages) checked before the
///   piece is written ([`write_data`]).
///
/// A shortage ([`SpaceChecks::shortage`]) thus stops the convert only when the next piece
/// really does not fit, with [`margin`] left free; a file system that fills anyway (another
/// program writing) ends the same way. Nothing is left under OUT's name either way.
struct SpaceChecks<'a> {
    out: &'a Path,
    image: &'a dyn DiskImage,
    /// Why the rest of the disk is a plain copy, once that is known.
    copying: Option<Copying>,
    /// Some layer lies on another file system ([`Cloner::elsewhere`]).
    elsewhere: bool,
    /// The whole rest was checked since `copying` became known.
    rest_checked: bool,
    /// The whole rest fits: nothing more to check.
    settled: bool,
}

impl<'a> SpaceChecks<'a> {
    fn new(out: &'a Path, image: &'a dyn DiskImage, copying: Option<Copying>) -> Self {
        SpaceChecks {
            out,
            image,
            copying,
            elsewhere: false,
            rest_checked: false,
            settled: false,
        }
    }

    /// Before copying a slice that stores up to `needed` bytes, with `rest` after it (its
    /// stored bytes `rest_stored`, when counted): whether each piece of the slice must be
    /// checked before it is written. Sets `settled` when the whole rest was found to fit.
    fn before_copy(
        &mut self,
        needed: u64,
        rest: std::ops::Range<u64>,
        rest_stored: Option<u64>,
    ) -> Result<bool> {
        if self.settled {
            return Ok(false);
        }
        if self.copying.is_some() && !self.rest_checked {
            self.rest_checked = true;
            let rest_stored = match rest_stored {
                Some(r) => r,
                None => stored_bytes(self.image, rest.clone())?,
            };
            if fits(self.out, needed + rest_stored) {
                self.settled = true;
                return Ok(false);
            }
            let what = if rest.start == 0 && needed == 0 {
                "the disk"
            } else {
                "the rest of the disk"
            };
            tracing::warn!(
                "{} may not fit: {}, and {what} stores up to {} bytes, more than the {} bytes free \
                 (less {} left for the file system's own records). Zero pages are not copied, so it \
                 may still fit; each piece is checked before it is written, and a shortage stops the \
                 conversion with nothing left under that name",
                self.out.display(),
                self.why().0,
                needed + rest_stored,
                free_space(self.out).unwrap_or(0),
                margin(needed + rest_stored),
            );
        }
        Ok(!fits(self.out, needed))
    }

    /// The error of a shortage found after `copied` bytes were written, when what is left
    /// (`left` stored bytes of the current slice, and `rest` after it) did not fit, or the
    /// file system `refused` a write as full.
    fn shortage(
        &self,
        copied: u64,
        left: u64,
        rest: std::ops::Range<u64>,
        refused: Option<&std::io::Error>,
    ) -> Result<Error> {
        let later = left + stored_bytes(self.image, rest)?;
        let avail = free_space(self.out).unwrap_or(0);
        // The copied bytes are freed again with the temporary: what was free at the start.
        // A refused write says what the free space does not (a quota, thin provisioning):
        // only what was written could be.
        let quota = refused.is_some_and(crate::platform::is_over_quota);
        let (was_free, could) = match refused {
            Some(io) if quota => (
                copied,
                format!("could be written: the user's disk quota is exceeded ({io})"),
            ),
            // Refused although the file system shows room enough for what was left.
            Some(io) if avail >= later + margin(later) => (
                copied,
                format!(
                    "could be written: the file system refused more ({io}) although it shows \
                     {avail} bytes free, so a quota or thin provisioning may be the limit"
                ),
            ),
            Some(io) => (avail + copied, format!("were free ({io})")),
            None => (avail + copied, "were free".to_string()),
        };
        let total = copied + later;
        let want = total + margin(total);
        let short = want.saturating_sub(was_free);
        let (why, other) = self.why();
        Ok(Error::new(
            ErrorKind::InvalidInput,
            "convert.no_space",
            format!(
                "not enough free space for {}: {why}, and the output needs up to {want} bytes of free space: \
                 up to {total} bytes of new data ({copied} copied before it ran short and freed again now, \
                 at most {later} more) and {} left free for the file system's own records, but only {was_free} \
                 bytes {could}. Zero pages are not written, so less may do; freeing {short} more bytes is \
                 enough. Or {other}",
                self.out.display(),
                margin(total),
            ),
        ))
    }

    /// Why the data must be copied, and where else the output could go.
    fn why(&self) -> (String, &'static str) {
        // Moving the output beside the input helps only when some layer is known to lie
        // elsewhere, and only if that file system clones at all (ext4 or tmpfs do not): the
        // advice says so rather than promise sharing there, and is not given to an output
        // already beside its input whose data is copied for being unaligned.
        let beside_input = "write the output on the file system that holds the input, \
             if that one can share blocks (XFS with reflink, btrfs, ReFS)";
        let out = self.out.display();
        match self.copying {
            Some(Copying::Asked) => (
                "cloning is off (--no-clone), so the data is copied".to_string(),
                "write the output on a file system with more room; without --no-clone, an output \
                 beside the input on a file system that shares blocks (XFS with reflink, btrfs, ReFS) \
                 needs no new space for aligned data",
            ),
            Some(Copying::ReplayedLog) => (
                "the input is read through a VHDX log replayed in memory, so its data must be copied"
                    .to_string(),
                "write the output on a file system with more room",
            ),
            Some(Copying::Refused(Refusal::Unsupported)) => (
                format!("the file system of {out} cannot share blocks between files, so the data must be copied"),
                "write the output on a file system that clones (XFS with reflink, btrfs, ReFS), or one with more room",
            ),
            Some(Copying::Refused(Refusal::OtherFileSystem)) => (
                "the input lies on another file system, so its blocks cannot be shared and the data must be copied"
                    .to_string(),
                beside_input,
            ),
            None if self.elsewhere => (
                "what could not be cloned must be copied (the input, or part of it, lies on another file system)"
                    .to_string(),
                beside_input,
            ),
            None => (
                "what could not be cloned (data not aligned to the file system's blocks, or refused by it) must be copied"
                    .to_string(),
                "write the output on a file system with more room",
            ),
        }
    }
}

/// Bytes free for new data in the output's folder, when the system says.
fn free_space(out: &Path) -> Option<u64> {
    crate::platform::free_bytes(fsutil::folder_of(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::vhd::footer::HardDiskFooter;

    fn fixed_vhd(dir: &Path, name: &str, size: u64, damage_checksum: bool) -> PathBuf {
        let p = dir.join(name);
        let mut data = vec![0u8; size as usize];
        let mut footer = HardDiskFooter::new_fixed(size, [4; 16], 9).to_bytes();
        if damage_checksum {
            footer[64] ^= 0xff;
        }
        data.extend_from_slice(&footer);
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn the_self_check_waives_only_what_the_policy_allows() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.vhd");
        let any_size = Policy {
            allow_any_size: true,
            ..Policy::default()
        };
        // (what, file, policy, passes)
        let small = fixed_vhd(dir.path(), "small.vhd", 2 << 20, false);
        let ok = fixed_vhd(dir.path(), "ok.vhd", 21 << 20, false);
        let damaged = fixed_vhd(dir.path(), "damaged.vhd", 2 << 20, true);
        let cases: &[(&str, &Path, &Policy, bool)] = &[
            ("Azure-ready", &ok, &Policy::default(), true),
            ("too small, no waiver", &small, &Policy::default(), false),
            ("too small, --allow-any-size", &small, &any_size, true),
            // A structural error is never waived, whatever the size policy.
            ("bad footer checksum", &damaged, &any_size, false),
        ];
        for &(what, file, policy, passes) in cases {
            match self_check(file, &out, policy) {
                Ok(()) => assert!(passes, "{what}: passed"),
                Err(e) => {
                    assert!(!passes, "{what}: {e}");
                    assert_eq!(e.code(), "convert.self_check", "{what}");
                }
            }
        }
    }

    #[test]
    fn a_self_check_that_cannot_open_keeps_the_cause() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        let e = self_check(
            &dir.path().join("gone"),
            &dir.path().join("o"),
            &Policy::default(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "convert.self_check");
        let cause = e
            .source()
            .and_then(|s| s.downcast_ref::<Error>())
            .expect("the open error is kept as the source");
        assert_eq!(cause.kind(), ErrorKind::Io, "{e}");
        // The hidden temporary is never named (rt12); OUT is.
        assert!(!e.to_string().contains("gone"), "{e}");
        assert!(e.to_string().contains("/o:"), "{e}");
    }
}
