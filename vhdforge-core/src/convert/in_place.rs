//! In-place conversion: raw image → fixed VHD, or a misaligned/damaged fixed VHD → an
//! Azure-ready one, by touching only the end of the file. O(1) whatever the size.
//!
//! Crash safety: before changing anything, the original length and the last 1 KiB of the
//! file (everything this operation may overwrite) are saved to a small journal beside the
//! file (`FILE.vhdforge-inplace`) and flushed. If the run is interrupted, the next run finds
//! the journal, restores the file exactly as it was, and starts over.

use super::Policy;
use crate::azure::{FixedVhdLayout, FooterSource};
use crate::error::{Error, ErrorKind, Result};
use crate::format::vhd::footer::{
    find_trailing_footer, FooterAt, HardDiskFooter, DISK_TYPE_FIXED, FEATURE_RESERVED,
    FIXED_DATA_OFFSET, FOOTER_SIZE, FORMAT_VERSION,
};
use crate::fsutil::{self, PersistError, Replace, TempFile};
use crate::image::Format;
use crate::io::{hex_lower, pwrite_all, usize_from, FileSource, ReadAt};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bytes at the end of the file saved in the journal (covers any old footer).
const SAVED_TAIL: u64 = 1024;

/// Largest in-place journal read: its fields and a hex copy of [`SAVED_TAIL`] bytes fit
/// far below this.
const MAX_JOURNAL_BYTES: u64 = 64 * 1024;

/// The user owning `path` (whose journal root may apply), when it can be known.
fn owner_of(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| m.uid())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}
const JOURNAL_MAGIC: &str = "vhdforge-inplace v2";

/// What an in-place conversion did to the file (`--json`: `converted`, `repaired`,
/// `unchanged`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InPlaceAction {
    /// A raw image became a fixed VHD.
    Converted,
    /// A fixed VHD's size or footer was fixed up.
    Repaired,
    /// Already Azure-ready; nothing was written.
    Unchanged,
}

impl InPlaceAction {
    /// The word used in JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            InPlaceAction::Converted => "converted",
            InPlaceAction::Repaired => "repaired",
            InPlaceAction::Unchanged => "unchanged",
        }
    }
}

impl std::fmt::Display for InPlaceAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an in-place conversion did.
#[derive(Debug, Clone, Serialize)]
pub struct InPlaceReport {
    /// What was done.
    pub action: InPlaceAction,
    /// What the file was.
    pub input_format: Format,
    /// Bytes of disk data the file held before.
    pub virtual_size: u64,
    /// The disk size now (whole MiB).
    pub disk_size: u64,
    /// Length of the file now.
    pub output_size: u64,
    /// Zero bytes added to reach a whole MiB.
    pub padded_bytes: u64,
    /// Whether an interrupted earlier run was rolled back first.
    pub recovered_interrupted_run: bool,
    /// Notes on what was wrong with the old footer, if anything.
    pub notes: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// The journal path for `path`.
pub fn journal_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{name}.vhdforge-inplace"))
}

/// Turn the raw image or fixed VHD at `path` into an Azure-ready fixed VHD in place.
/// `force` rewrites the footer even when the file is already Azure-ready.
pub fn convert_in_place(path: &Path, policy: &Policy, force: bool) -> Result<InPlaceReport> {
    let started = Instant::now();
    // Before anything is read or written, the journal included: a device cannot grow to
    // take a footer, and a pipe cannot be rolled back.
    let id = regular_file_id(path)?;
    let journal = journal_path_for(path);
    // `symlink_metadata`: a link at the journal's name, even a dangling one, is something
    // to refuse (in `rollback`), not to overlook.
    let recovered = if std::fs::symlink_metadata(&journal).is_ok() {
        rollback(path, &journal)?
    } else {
        false
    };

    let src = FileSource::open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e).in_file(path))?;
    let len = src.size();
    let format = crate::format::detect(&src)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let mut notes = Vec::new();
    let (data_len, old_footer) = match format {
        Format::Vhdx => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "inplace.unsupported_format",
                format!("{} is a VHDX; --in-place works on raw images and fixed VHDs only. Run `vhdforge convert IN OUT` instead", path.display()),
            ))
        }
        Format::Raw => (len, None),
        Format::Vhd => {
            let (data_len, footer) = read_fixed_footer(&src, path)?;
            (data_len, Some(footer))
        }
    };

    if let Some(f) = &old_footer {
        // With a valid checksum the footer's CurrentSize is what every reader (and `convert`)
        // takes as the disk size; in place we may only pad, never drop data, so a size that
        // disagrees with the data is for `convert IN OUT` to settle.
        let current = f.current_size.get();
        if f.checksum.get() == f.compute_checksum() && current != data_len {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "inplace.size_mismatch",
                format!(
                    "{}: the footer says the disk is {current} bytes but the file holds {data_len} bytes of data; \
                     in place vhdforge only pads and appends, so run `vhdforge convert IN OUT` (it uses the footer's size)",
                    path.display()
                ),
            ));
        }
        notes = footer_problems(f, data_len, len);
    }
    // Keep a repaired disk's identity; a raw image gets a fresh one. Both raw images and
    // VHDs have 512-byte sectors.
    let unique_id = old_footer
        .as_ref()
        .map(|f| f.unique_id)
        .filter(|id| id.iter().any(|&b| b != 0));
    let plan = FixedVhdLayout::new(path, data_len, 512, FooterSource::New { unique_id }, policy)?;
    let disk_size = plan.disk_size;
    if old_footer.is_some() && notes.is_empty() && !force {
        return Ok(InPlaceReport {
            action: InPlaceAction::Unchanged,
            input_format: format,
            virtual_size: data_len,
            disk_size: data_len,
            output_size: len,
            padded_bytes: 0,
            recovered_interrupted_run: recovered,
            notes: vec!["already an Azure-ready fixed VHD; nothing to do (use --force to rewrite the footer)".into()],
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    drop(src);

    write_journal(path, &journal, len, plan.output_size())?;
    let file = open_for_write(path, &id)?;
    let io_err = |what: &str, e| Error::io(format!("cannot {what} {}", path.display()), e);
    file.set_len(plan.output_size())
        .map_err(|e| io_err("resize", e))?;
    // An old footer now inside the disk area must read as zero padding.
    let stale_end = len.min(disk_size);
    if stale_end > data_len {
        let zeros = vec![0u8; usize_from(stale_end - data_len)];
        pwrite_all(&file, &zeros, data_len).map_err(|e| io_err("write", e))?;
    }
    pwrite_all(&file, &plan.footer_bytes(), disk_size).map_err(|e| io_err("write", e))?;
    file.sync_all().map_err(|e| io_err("flush", e))?;
    drop(file);
    std::fs::remove_file(&journal)
        .map_err(|e| Error::io(format!("cannot remove {}", journal.display()), e))?;
    // Should the removal not survive a crash, the next run finds the file at the journal's
    // target length, rolls back and redoes the same work: no harm, so no error.
    let _ = fsutil::sync_dir_of(path);
    Ok(InPlaceReport {
        action: if format == Format::Raw {
            InPlaceAction::Converted
        } else {
            InPlaceAction::Repaired
        },
        input_format: format,
        virtual_size: data_len,
        disk_size,
        output_size: plan.output_size(),
        padded_bytes: plan.padding(),
        recovered_interrupted_run: recovered,
        notes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Find the footer of what must be a fixed VHD; returns the data length and the footer.
fn read_fixed_footer(src: &FileSource, path: &Path) -> Result<(u64, HardDiskFooter)> {
    let found = find_trailing_footer(src)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    if let Some(FooterAt {
        footer: f, offset, ..
    }) = found
    {
        if f.disk_type.get() != DISK_TYPE_FIXED {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "inplace.not_fixed",
                format!(
                    "{} is a VHD of disk type {} (not fixed); --in-place works on raw images and fixed VHDs only. Run `vhdforge convert IN OUT` instead",
                    path.display(),
                    f.disk_type.get()
                ),
            ));
        }
        return Ok((offset, f));
    }
    Err(Error::new(
        ErrorKind::Unsupported,
        "inplace.not_fixed",
        format!("{} is a dynamic or differencing VHD (footer copy at offset 0); run `vhdforge convert IN OUT` instead", path.display()),
    ))
}

/// What keeps an existing fixed-VHD footer from being Azure-ready (empty: nothing).
fn footer_problems(f: &HardDiskFooter, data_len: u64, file_len: u64) -> Vec<String> {
    let mut p = Vec::new();
    if file_len - data_len != FOOTER_SIZE as u64 {
        p.push("the footer is 511 bytes (pre-2004 Virtual PC); rewriting a 512-byte footer".into());
    }
    if f.checksum.get() != f.compute_checksum() {
        p.push(format!(
            "footer checksum is {:#010x}, expected {:#010x}",
            f.checksum.get(),
            f.compute_checksum()
        ));
    }
    if f.current_size.get() != data_len {
        p.push(format!("footer CurrentSize is {} bytes but the file holds {data_len} bytes of data; using {data_len}", f.current_size.get()));
    }
    if data_len % crate::azure::MIB != 0 {
        p.push(format!(
            "disk size {data_len} is not a whole number of MiB; padding with zeros"
        ));
    }
    if f.features.get() & FEATURE_RESERVED == 0
        || f.file_format_version.get() != FORMAT_VERSION
        || f.data_offset.get() & 0xFFFF_FFFF != FIXED_DATA_OFFSET & 0xFFFF_FFFF
    {
        p.push("footer features/version/data offset fields are not the standard values".into());
    }
    if f.saved_state != 0 {
        p.push("footer saved-state flag was set (the VM was saved, not shut down): the guest may not be consistent".into());
    }
    p
}

/// The identity of a file: device and inode on unix (so a journal is never applied to a
/// different file that took the name), nothing elsewhere.
fn file_id(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
    Ok(id_of(&meta))
}

fn id_of(meta: &std::fs::Metadata) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        format!("{}:{}", meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        String::new()
    }
}

/// The identity of `path` ([`file_id`]) after making sure it is a regular file (or a link
/// to one): in place means growing the file and appending a footer, which a block or
/// character device, a pipe or a directory cannot take, and failing half-way there would
/// leave a journal for something that can never be rolled back.
fn regular_file_id(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e).in_file(path))?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "inplace.not_regular_file",
            format!(
                "{} is {}; --in-place works on regular files only (it grows the file to a whole MiB and appends a footer). \
                 Nothing was written. To make an Azure-ready VHD of it, run `vhdforge convert {} OUT.vhd`",
                path.display(),
                fsutil::FileKind::of_metadata(&meta).describe(),
                path.display()
            ),
        ));
    }
    Ok(id_of(&meta))
}

/// Open `path` for writing, making sure through the open descriptor that it is still the
/// regular file identified as `id` (not something swapped in since it was checked).
fn open_for_write(path: &Path, id: &str) -> Result<File> {
    let mut o = OpenOptions::new();
    o.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Never wait on a FIFO swapped in meanwhile: it is refused below.
        o.custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC);
    }
    let file = o
        .open(path)
        .map_err(|e| Error::io(format!("cannot open {} for writing", path.display()), e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
    if !meta.is_file() || id_of(&meta) != id {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "inplace.not_regular_file",
            format!(
                "{} was replaced by {} while being converted; nothing was written to it",
                path.display(),
                fsutil::FileKind::of_metadata(&meta).describe()
            ),
        ));
    }
    Ok(file)
}

fn write_journal(path: &Path, journal: &Path, len: u64, target_len: u64) -> Result<()> {
    let src = FileSource::open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let tail_len = len.min(SAVED_TAIL);
    let mut tail = vec![0u8; tail_len as usize];
    src.read_exact_at(&mut tail, len - tail_len)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let hex = hex_lower(&tail);
    let id = file_id(path)?;
    let text =
        format!("{JOURNAL_MAGIC}\nfile={id}\nlength={len}\ntarget={target_len}\ntail={hex}\n");
    let werr = |e| Error::io(format!("cannot write {}", journal.display()), e);
    let tmp = TempFile::beside(journal, "inplace-journal").map_err(werr)?;
    fsutil::restrict_to_owner(tmp.file()).map_err(werr)?;
    {
        use std::io::Write;
        tmp.file().write_all(text.as_bytes()).map_err(werr)?;
    }
    // Flushed, renamed (a stale link at the journal's name is replaced, never followed),
    // folder flushed: the journal is durable before the file is touched.
    tmp.persist(journal, Replace::RegularFile)
        .map_err(|e| match e {
            PersistError::Io(e) => werr(e),
            e => Error::new(
                ErrorKind::InvalidInput,
                "inplace.journal",
                format!(
                    "cannot write the in-place journal {}: {e}; move it away and run again",
                    journal.display()
                ),
            ),
        })?;
    Ok(())
}

/// Undo an interrupted in-place run described by `journal`. Returns true when done.
///
/// The journal is applied only to the file it was written for (same device and inode) and
/// only while the file is in a state that run could have left (its original length, or the
/// length it was extending to); anything else means the file changed since, and rolling
/// back would destroy data, so it is refused.
fn rollback(path: &Path, journal: &Path) -> Result<bool> {
    let refuse = |code: &'static str, why: String| {
        Error::new(
            ErrorKind::Corrupt,
            code,
            format!(
                "{} records an interrupted in-place conversion of {}, but {why}; it was not applied. \
                 If the file is as you want it, delete the journal and run again",
                journal.display(),
                path.display()
            ),
        )
    };
    let bad = |why: &str| refuse("inplace.journal", format!("the journal is damaged ({why})"));
    // Only a journal this user or the image's owner wrote, that nobody else may write, is
    // applied: it says which bytes to put back, so a planted one would rewrite the image.
    // It is a few KiB; a link, pipe or anything large is refused before reading.
    let bytes = fsutil::read_trusted_small_file(
        journal,
        "the in-place journal",
        "inplace.journal",
        MAX_JOURNAL_BYTES,
        owner_of(path),
    )?
    .ok_or_else(|| bad("it vanished while being read"))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut fields = std::collections::HashMap::new();
    let mut lines = text.lines();
    if lines.next() != Some(JOURNAL_MAGIC) {
        return Err(bad("unknown header"));
    }
    for l in lines {
        if let Some((k, v)) = l.split_once('=') {
            fields.insert(k, v);
        }
    }
    let num = |k: &str| {
        fields
            .get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| bad(&format!("no {k}")))
    };
    let len = num("length")?;
    let target = num("target")?;
    let id = fields
        .get("file")
        .copied()
        .ok_or_else(|| bad("no file identity"))?;
    let hex = fields.get("tail").copied().ok_or_else(|| bad("no tail"))?;
    if hex.len() % 2 != 0 || hex.len() as u64 > 2 * SAVED_TAIL || (hex.len() / 2) as u64 > len {
        return Err(bad("tail has the wrong length"));
    }
    let tail: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad("tail is not hex"))?;
    if file_id(path)? != id {
        return Err(refuse(
            "inplace.journal_stale",
            "the file at that path is not the file it was written for".into(),
        ));
    }
    let now = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?
        .len();
    if now != len && now != target {
        return Err(refuse(
            "inplace.journal_stale",
            format!("the file is now {now} bytes, not {len} (before) or {target} (after) as an interrupted run would leave it"),
        ));
    }
    let file = open_for_write(path, id)?;
    file.set_len(len)
        .map_err(|e| Error::io(format!("cannot resize {}", path.display()), e))?;
    pwrite_all(&file, &tail, len - tail.len() as u64)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    file.sync_all()
        .map_err(|e| Error::io(format!("cannot flush {}", path.display()), e))?;
    std::fs::remove_file(journal)
        .map_err(|e| Error::io(format!("cannot remove {}", journal.display()), e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_file(dir: &Path, size: u64) -> PathBuf {
        let p = dir.join("d.raw");
        let mut data = vec![0u8; size as usize];
        for (i, b) in data.iter_mut().enumerate().step_by(4099) {
            *b = (i % 251) as u8 | 1;
        }
        std::fs::write(&p, &data).unwrap();
        p
    }

    #[test]
    fn interrupted_run_is_rolled_back_and_redone() {
        let dir = tempfile::tempdir().unwrap();
        let size = 21 * crate::azure::MIB + 1234;
        let p = raw_file(dir.path(), size);
        let original = std::fs::read(&p).unwrap();
        // Simulate a crash after the journal was written and the file was half modified:
        // extended, with garbage where the footer goes and no footer.
        write_journal(
            &p,
            &journal_path_for(&p),
            size,
            22 * crate::azure::MIB + 512,
        )
        .unwrap();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(22 * crate::azure::MIB + 512).unwrap();
        pwrite_all(&f, &[0xAB; 100], 22 * crate::azure::MIB).unwrap();
        drop(f);
        let r = convert_in_place(&p, &Policy::default(), false).unwrap();
        assert!(r.recovered_interrupted_run);
        assert_eq!(r.action, InPlaceAction::Converted);
        assert_eq!(r.disk_size, 22 * crate::azure::MIB);
        let now = std::fs::read(&p).unwrap();
        assert_eq!(now.len() as u64, 22 * crate::azure::MIB + 512);
        assert_eq!(&now[..original.len()], &original[..], "data changed");
        assert!(
            now[original.len()..22 * crate::azure::MIB as usize]
                .iter()
                .all(|&b| b == 0),
            "padding not zero"
        );
        let footer = HardDiskFooter::from_bytes(now[now.len() - 512..].try_into().unwrap());
        assert_eq!(footer.current_size.get(), 22 * crate::azure::MIB);
        assert_eq!(footer.checksum.get(), footer.compute_checksum());
        assert!(!journal_path_for(&p).exists());
    }

    #[test]
    fn stale_journal_is_refused_and_the_file_kept() {
        // A journal from an earlier run, then the file changed (grew, new data): applying
        // the journal would truncate it. It must be refused, the file untouched.
        let dir = tempfile::tempdir().unwrap();
        let p = raw_file(dir.path(), 21 * crate::azure::MIB);
        write_journal(
            &p,
            &journal_path_for(&p),
            21 * crate::azure::MIB,
            21 * crate::azure::MIB + 512,
        )
        .unwrap();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(40 * crate::azure::MIB).unwrap();
        pwrite_all(&f, &[0x55; 4096], 35 * crate::azure::MIB).unwrap();
        drop(f);
        let before = std::fs::read(&p).unwrap();
        let e = convert_in_place(&p, &Policy::default(), false).unwrap_err();
        assert_eq!(e.code(), "inplace.journal_stale", "{e}");
        assert!(std::fs::read(&p).unwrap() == before, "file changed");

        // The same name now belongs to another file (replaced): refused too.
        let other = dir.path().join("other.raw");
        std::fs::write(&other, vec![1u8; 21 << 20]).unwrap();
        write_journal(
            &other,
            &journal_path_for(&p),
            21 * crate::azure::MIB,
            21 * crate::azure::MIB + 512,
        )
        .unwrap();
        let e = convert_in_place(&p, &Policy::default(), false).unwrap_err();
        assert_eq!(e.code(), "inplace.journal_stale", "{e}");
    }

    #[test]
    fn fixed_vhd_whose_footer_size_disagrees_is_left_to_convert() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.vhd");
        let mut data = vec![0u8; 24 << 20];
        data[100] = 1;
        data.extend_from_slice(&HardDiskFooter::new_fixed(21 << 20, [3; 16], 5).to_bytes());
        std::fs::write(&p, &data).unwrap();
        let e = convert_in_place(&p, &Policy::default(), false).unwrap_err();
        assert_eq!(e.code(), "inplace.size_mismatch");
        assert!(std::fs::read(&p).unwrap() == data);
    }

    #[test]
    fn small_ready_looking_vhd_is_not_called_ready() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.vhd");
        let mut data = vec![0u8; 2 << 20];
        data.extend_from_slice(&HardDiskFooter::new_fixed(2 << 20, [3; 16], 5).to_bytes());
        std::fs::write(&p, &data).unwrap();
        let e = convert_in_place(&p, &Policy::default(), false).unwrap_err();
        assert_eq!(e.code(), "convert.size_out_of_range");
    }

    #[test]
    fn damaged_journal_is_an_error_and_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = raw_file(dir.path(), 21 * crate::azure::MIB);
        std::fs::write(journal_path_for(&p), "something else\n").unwrap();
        let e = convert_in_place(&p, &Policy::default(), false).unwrap_err();
        assert_eq!(e.code(), "inplace.journal");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 21 * crate::azure::MIB);
    }

    #[cfg(unix)]
    #[test]
    fn links_planted_at_the_journal_names_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let p = raw_file(dir.path(), 21 * crate::azure::MIB);
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        // The journal's old fixed temporary name, and what a guesser of the new one knows.
        let journal = journal_path_for(&p);
        for planted in [
            journal.with_extension("vhdforge-inplace-new"),
            dir.path().join(format!(
                ".d.raw.vhdforge-inplace.vhdforge-inplace-journal-{}",
                std::process::id()
            )),
        ] {
            std::os::unix::fs::symlink(&victim, planted).unwrap();
        }
        let r = convert_in_place(&p, &Policy::default(), false).unwrap();
        assert_eq!(r.action, InPlaceAction::Converted);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!journal.exists());
        // A link at the journal's own name reads as a damaged journal: refused, the file
        // it points to neither applied nor changed.
        let q = dir.path().join("e.raw");
        std::fs::write(&q, vec![7u8; 21 << 20]).unwrap();
        std::os::unix::fs::symlink(&victim, journal_path_for(&q)).unwrap();
        let e = convert_in_place(&q, &Policy::default(), false).unwrap_err();
        assert_eq!(e.code(), "inplace.journal", "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::metadata(&q).unwrap().len(), 21 << 20);
    }

    #[cfg(unix)]
    #[test]
    fn anything_but_a_regular_file_is_refused_before_a_journal_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo has no other memory effects.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let link = dir.path().join("null");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        for (p, kind) in [
            (&fifo, "a named pipe"),
            (&sub, "a directory"),
            (&link, "a character device"),
        ] {
            let e = convert_in_place(p, &Policy::default(), false).unwrap_err();
            assert_eq!(e.code(), "inplace.not_regular_file", "{e}");
            assert!(e.to_string().contains(kind), "{e}");
            assert!(!journal_path_for(p).exists(), "journal written for {kind}");
        }
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["null", "pipe", "sub"]);
    }

    #[test]
    fn actions_keep_their_json_words() {
        for (action, word) in [
            (InPlaceAction::Converted, "converted"),
            (InPlaceAction::Repaired, "repaired"),
            (InPlaceAction::Unchanged, "unchanged"),
        ] {
            assert_eq!(serde_json::to_value(action).unwrap(), word);
            assert_eq!(action.to_string(), word);
        }
    }

    #[test]
    fn a_repaired_vhd_keeps_its_identity_and_an_unchanged_one_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.vhd");
        // 21 MiB + 1000 bytes of data with a footer claiming exactly that: padded, id kept.
        let size = 21 * crate::azure::MIB + 1000;
        let mut data = vec![1u8; size as usize];
        data.extend_from_slice(&HardDiskFooter::new_fixed(size, [6; 16], 5).to_bytes());
        std::fs::write(&p, &data).unwrap();
        let r = convert_in_place(&p, &Policy::default(), false).unwrap();
        assert_eq!(r.action, InPlaceAction::Repaired);
        let now = std::fs::read(&p).unwrap();
        let footer = HardDiskFooter::from_bytes(now[now.len() - 512..].try_into().unwrap());
        assert_eq!(footer.unique_id, [6; 16]);
        assert_eq!(footer.current_size.get(), 22 * crate::azure::MIB);
        let r = convert_in_place(&p, &Policy::default(), false).unwrap();
        assert_eq!(r.action, InPlaceAction::Unchanged);
        assert!(std::fs::read(&p).unwrap() == now);
    }

    #[test]
    fn dynamic_or_vhdx_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.vhdx");
        let mut data = vec![0u8; 2 << 20];
        data[..8].copy_from_slice(b"vhdxfile");
        std::fs::write(&p, &data).unwrap();
        let e = convert_in_place(&p, &Policy::default(), false).unwrap_err();
        assert_eq!(e.code(), "inplace.unsupported_format");
        assert_eq!(std::fs::read(&p).unwrap(), data);
    }

    /// Red team, issue 7: in a world-writable folder another user plants a journal naming
    /// root's image (right inode, length and target, a tail of their choosing); root's
    /// `convert --in-place` must refuse it, not "roll back" the image to those bytes.
    #[cfg(unix)]
    #[test]
    fn a_journal_owned_by_another_user_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test chowns a file to nobody: run it as root (CI does)"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let size = 21 * crate::azure::MIB;
        let p = raw_file(dir.path(), size);
        let before = std::fs::read(&p).unwrap();
        let journal = journal_path_for(&p);
        write_journal(&p, &journal, size, size + 512).unwrap();
        // What `nobody` writes: the same fields, a tail of 0x41.
        let text = std::fs::read_to_string(&journal).unwrap();
        let tail_at = text.find("tail=").unwrap();
        let planted = format!("{}tail={}\n", &text[..tail_at], "41".repeat(1024));
        std::fs::write(&journal, planted).unwrap();
        let c = std::ffi::CString::new(journal.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; 65534 is `nobody`.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
        let e = convert_in_place(&p, &Policy::default(), false).unwrap_err();
        assert_eq!(e.code(), "inplace.journal", "{e}");
        assert!(e.to_string().contains("owned by user id 65534"), "{e}");
        assert!(
            std::fs::read(&p).unwrap() == before,
            "the image was changed"
        );
        // Owned by root but writable by others: just as untrustworthy.
        // SAFETY: as above.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 0, 0) }, 0);
        std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = convert_in_place(&p, &Policy::default(), false).unwrap_err();
        assert!(e.to_string().contains("mode 0666"), "{e}");
        assert!(
            std::fs::read(&p).unwrap() == before,
            "the image was changed"
        );
    }

    /// A link to an endless device, or a FIFO, at the journal's name: refused at once
    /// (the read is never attempted, so neither memory nor time runs away).
    #[cfg(unix)]
    #[test]
    fn a_journal_that_is_a_link_to_dev_zero_or_a_fifo_is_refused_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let p = raw_file(dir.path(), 21 * crate::azure::MIB);
        let journal = journal_path_for(&p);
        std::os::unix::fs::symlink("/dev/zero", &journal).unwrap();
        let t = Instant::now();
        let e = convert_in_place(&p, &Policy::default(), false).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::fs::remove_file(&journal).unwrap();
        let c = std::ffi::CString::new(journal.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo has no other memory effects.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = convert_in_place(&p, &Policy::default(), false).unwrap_err();
        assert!(e.to_string().contains("named pipe"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
    }
}
