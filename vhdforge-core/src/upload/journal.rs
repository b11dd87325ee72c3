//! The resume journal: a small JSON file next to the source (or in a state directory)
//! recording which Put Page requests completed, keyed by the destination (without any
//! secret), the identity of every file of the source's chain (path, size, mtime, and on
//! Unix device, inode and ctime), the footer identity and the plan hash.
//!
//! The journal is the only authority on what this upload sent: the destination's page
//! list cannot tell this upload's pages from an earlier upload's (a reused managed disk, a
//! blob written from another source). So a range enters the journal only after its Put
//! Page returned success, and each rewrite is durable (temp file, fsync, rename, fsync of
//! the folder) before it counts. Completions since the last rewrite may be lost in a crash;
//! they are simply sent again.

use crate::error::{Error, ErrorKind, Result};
use crate::io::hex_lower;
use crate::storage::redact::without_query;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Journal format version (2: identity of every file of the chain, durable rewrites;
/// 3: identity of the destination blob).
const VERSION: u32 = 3;

/// Longest part of the source's file name kept in the journal's name; a longer name is cut
/// there and followed by a hash of the whole name, so the journal's name (and its temp
/// file's) stays well under the 255-byte limit of common file systems.
const MAX_NAME_PREFIX: usize = 96;

/// Largest journal accepted when loading: a plan of a million ranges is about 40 MiB of
/// JSON, and the whole journal is held in memory while parsed (the 256 MiB budget).
const MAX_JOURNAL_BYTES: u64 = 64 << 20;

/// What identifies one file of the source (the top image or a parent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIdentity {
    /// Canonical path.
    pub path: String,
    /// File length in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u128,
    /// Device number (Unix; 0 elsewhere): a file replaced by another one at the same path.
    pub dev: u64,
    /// Inode number (Unix; 0 elsewhere).
    pub ino: u64,
    /// Status-change time, nanoseconds since the Unix epoch (Unix; 0 elsewhere): catches
    /// a write whose mtime was set back (`touch -r`, a restore keeping times).
    pub ctime_ns: i128,
}

impl SourceIdentity {
    /// Identity of the file at `path`.
    pub fn of(path: &Path) -> Result<SourceIdentity> {
        let canon = path
            .canonicalize()
            .map_err(|e| Error::io(format!("cannot resolve {}", path.display()), e))?;
        let meta = std::fs::metadata(&canon)
            .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        #[cfg(unix)]
        let (dev, ino, ctime_ns) = {
            use std::os::unix::fs::MetadataExt;
            (
                meta.dev(),
                meta.ino(),
                i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            )
        };
        #[cfg(not(unix))]
        let (dev, ino, ctime_ns) = (0, 0, 0);
        Ok(SourceIdentity {
            path: canon.display().to_string(),
            size: meta.len(),
            mtime_ns,
            dev,
            ino,
            ctime_ns,
        })
    }

    /// What differs between `self` (recorded) and `now`, for a refusal message; `None`
    /// when they are the same.
    pub fn change(&self, now: &SourceIdentity) -> Option<String> {
        if self == now {
            return None;
        }
        let mut what = Vec::new();
        if self.path != now.path {
            what.push(format!("path {} → {}", self.path, now.path));
        }
        if self.size != now.size {
            what.push(format!("{} → {} bytes", self.size, now.size));
        }
        if self.mtime_ns != now.mtime_ns {
            what.push(format!("mtime {} → {} ns", self.mtime_ns, now.mtime_ns));
        }
        if (self.dev, self.ino) != (now.dev, now.ino) {
            what.push("replaced by another file (device/inode differ)".to_string());
        }
        if self.ctime_ns != now.ctime_ns {
            what.push(format!("ctime {} → {} ns", self.ctime_ns, now.ctime_ns));
        }
        Some(format!("{}: {}", now.path, what.join(", ")))
    }
}

/// What identifies the destination blob this upload writes: a blob deleted and recreated
/// (another `upload --overwrite`, `az storage blob upload`) gets a new creation time, and a
/// page blob vhdforge creates carries a random sequence number that only this upload's
/// journal knows. Neither changes when pages are written, so a run killed between a
/// completed request and its journal write still resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobIdentity {
    /// `x-ms-creation-time` as the service reported it (None when it reports none).
    pub creation_time: Option<String>,
    /// The random `x-ms-blob-sequence-number` set at creation (page blobs vhdforge created;
    /// None for managed disks, which must not be given properties).
    pub sequence_number: Option<u64>,
}

impl BlobIdentity {
    /// What differs between `self` (recorded) and `now`; `None` when nothing proves a change.
    pub fn change(&self, now: &BlobIdentity) -> Option<String> {
        let mut what = Vec::new();
        if self.creation_time.is_some() && self.creation_time != now.creation_time {
            what.push(format!(
                "created {} then, {} now",
                self.creation_time.as_deref().unwrap_or("?"),
                now.creation_time.as_deref().unwrap_or("(not reported)")
            ));
        }
        if self.sequence_number.is_some() && self.sequence_number != now.sequence_number {
            what.push(format!(
                "sequence number {} then, {} now",
                self.sequence_number.unwrap_or(0),
                now.sequence_number
                    .map_or_else(|| "(none)".to_string(), |n| n.to_string())
            ));
        }
        (!what.is_empty()).then(|| what.join(", "))
    }

    /// True when the service gave nothing to tie a journal to this blob.
    pub fn is_unknown(&self) -> bool {
        self.creation_time.is_none() && self.sequence_number.is_none()
    }
}

/// Identity of every parent of `image`, nearest first (empty for a non-differencing image).
pub fn parent_identities(image: &dyn crate::image::DiskImage) -> Result<Vec<SourceIdentity>> {
    let mut out = Vec::new();
    let mut cur = image.parent();
    while let Some(p) = cur {
        out.push(SourceIdentity::of(&p.info().path)?);
        cur = p.parent();
    }
    Ok(out)
}

/// The journal's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    /// Format version.
    pub version: u32,
    /// Destination URL without query (no secrets).
    pub destination: String,
    /// The source (top file) when the upload started.
    pub source: SourceIdentity,
    /// Its parents when the upload started, nearest first (differencing sources).
    pub parents: Vec<SourceIdentity>,
    /// Footer unique id (hex) of the output stream.
    pub footer_unique_id: String,
    /// Footer time stamp of the output stream.
    pub footer_time_stamp: u32,
    /// Digest of the plan (requests and footer).
    pub plan_hash: String,
    /// The destination blob the recorded ranges were written to.
    pub blob: BlobIdentity,
    /// Data requests this upload completed (Put Page returned success), merged, `[start, end)`.
    pub done: Vec<(u64, u64)>,
    /// The blob's `ETag` read at a clean stop (Ctrl-C or an error, once no request of this
    /// run was in flight any more). The `ETag` changes on every write, so when `--resume`
    /// finds the same one, nobody wrote to the blob since and `done` is trusted; otherwise
    /// (or when the run was killed and none was recorded) every done range is read back
    /// and compared before it counts. Absent in journals of earlier releases.
    #[serde(default)]
    pub clean_stop_etag: Option<String>,
}

impl Journal {
    /// Completed ranges.
    pub fn done_ranges(&self) -> Vec<Range<u64>> {
        // From a file: sort and merge before anyone binary-searches it.
        super::plan::normalize(self.done.iter().map(|&(s, e)| s..e).collect())
    }
}

/// Where the journal for uploading `source` to `dest` lives.
pub fn path_for(source: &Path, dest: &str, state_dir: Option<&Path>) -> PathBuf {
    let key = hex_lower(&Sha256::digest(without_query(dest).as_bytes())[..8]);
    let name = source
        .file_name()
        .map_or_else(|| "source".into(), |n| n.to_string_lossy().into_owned());
    let name = bounded_name(&name);
    let file = format!("{name}.vhdforge-upload-{key}.json");
    match state_dir {
        Some(d) => d.join(file),
        None => source.parent().unwrap_or(Path::new(".")).join(file),
    }
}

/// `name` when it is short; otherwise its first [`MAX_NAME_PREFIX`] bytes (at a character
/// boundary) and a hash of the whole name, so distinct long names keep distinct journals.
fn bounded_name(name: &str) -> String {
    if name.len() <= MAX_NAME_PREFIX {
        return name.to_string();
    }
    let mut cut = MAX_NAME_PREFIX;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = hex_lower(&Sha256::digest(name.as_bytes())[..8]);
    format!("{}~{hash}", &name[..cut])
}

/// Check, before anything is sent, that the journal at `path` can be written: a file with a
/// longer name than the journal's is created exclusively in its folder, written and removed.
/// An existing journal is left alone (a mistaken run without --resume must not destroy it).
pub fn probe_writable(path: &Path) -> Result<()> {
    use std::io::Write;
    let suffix: u64 = rand::random();
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".probe-{suffix:016x}"));
    let probe = path.with_file_name(name);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut f| f.write_all(b"{}"));
    let _ = std::fs::remove_file(&probe);
    result.map_err(|e| {
        Error::new(
            ErrorKind::Io,
            "upload.journal",
            format!(
                "cannot write the resume journal {} ({e}); nothing was sent and the destination \
                 was not touched: pass --state-dir with an existing writable folder",
                path.display()
            ),
        )
    })
}

/// Where the per-user state directory is (`$XDG_STATE_HOME/vhdforge`, else
/// `~/.local/state/vhdforge`; on Windows `%LOCALAPPDATA%\\vhdforge`), without creating it
/// (see [`crate::platform::state_dir_from`]).
pub fn state_dir_location() -> Option<PathBuf> {
    crate::platform::state_dir()
}

/// The per-user state directory ([`state_dir_location`]), created if needed; used when the
/// source is not a regular file or its folder is read-only.
pub fn default_state_dir() -> Result<PathBuf> {
    let dir = state_dir_location().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            "upload.journal",
            "no per-user state directory (HOME, or LOCALAPPDATA on Windows, is unset): pass --state-dir",
        )
    })?;
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::io(
            format!("cannot create the state directory {}", dir.display()),
            e,
        )
    })?;
    Ok(dir)
}

/// Load a journal; `Ok(None)` when there is none.
///
/// The journal decides which pages are not sent again, so only one this user (or
/// `also_owner`, the source's owner) wrote is believed: a link, a pipe, a file of another
/// user or one others may write is refused, and at most [`MAX_JOURNAL_BYTES`] are read
/// (see [`crate::fsutil::read_trusted_small_file`]).
pub fn load(path: &Path, also_owner: Option<u32>) -> Result<Option<Journal>> {
    let Some(bytes) = crate::fsutil::read_trusted_small_file(
        path,
        "the resume journal",
        "upload.journal",
        MAX_JOURNAL_BYTES,
        also_owner,
    )?
    else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    let j: Journal = serde_json::from_str(&text)
        .map_err(|e| Error::new(ErrorKind::Corrupt, "upload.journal", format!("resume journal {} is unreadable ({e}); delete it and upload again with --overwrite", path.display())))?;
    if j.version != VERSION {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "upload.journal",
            format!(
                "resume journal {} has version {}, expected {VERSION} (written by another vhdforge release); delete it and upload again with --overwrite",
                path.display(),
                j.version
            ),
        ));
    }
    Ok(Some(j))
}

/// Write the journal atomically and durably: temp file, fsync, rename over the old one,
/// fsync of the folder (Unix). When this returns `Ok`, the recorded ranges survive a crash
/// or power loss; a crash before leaves the previous journal intact.
pub fn store(path: &Path, j: &Journal) -> Result<()> {
    use crate::fsutil::{PersistError, Replace, TempFile};
    use std::io::Write;
    let text = serde_json::to_vec(j).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            "upload.journal",
            format!("cannot encode the journal: {e}"),
        )
    })?;
    let werr = |e| {
        Error::io(
            format!("cannot write the resume journal {}", path.display()),
            e,
        )
    };
    // A new file under a random name (a link planted beside the journal is never
    // followed), flushed, renamed over the previous journal, folder flushed.
    let tmp = TempFile::beside(path, "journal").map_err(werr)?;
    crate::fsutil::restrict_to_owner(tmp.file()).map_err(werr)?;
    tmp.file().write_all(&text).map_err(werr)?;
    tmp.persist(path, Replace::RegularFile)
        .map_err(|e| match e {
            PersistError::Io(e) => werr(e),
            e => Error::new(
                ErrorKind::Io,
                "upload.journal",
                format!(
                    "cannot write the resume journal {}: {e}; move it away or pass --state-dir",
                    path.display()
                ),
            ),
        })
}

/// True when a new file can be created in `dir` (probed by creating and removing one:
/// permission bits say nothing about a read-only mount, ACLs or root).
fn accepts_new_file(dir: &Path) -> bool {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let probe = dir.join(format!(".vhdforge-probe-{}-{nanos}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            true
        }
        Err(_) => false,
    }
}

/// The places a journal for `source` → `dest` may be: `state_dir` alone when given;
/// otherwise next to the source (when the source is a regular file) and in the per-user
/// state directory `fallback` (when there is one).
pub fn candidates(
    source: &Path,
    dest: &str,
    state_dir: Option<&Path>,
    fallback: Option<&Path>,
) -> Vec<PathBuf> {
    if let Some(d) = state_dir {
        return vec![path_for(source, dest, Some(d))];
    }
    let mut out = Vec::new();
    if std::fs::metadata(source).is_ok_and(|m| m.is_file()) {
        out.push(path_for(source, dest, None));
    }
    if let Some(d) = fallback {
        out.push(path_for(source, dest, Some(d)));
    }
    out
}

/// Where a new journal goes: `state_dir` when given; next to the source when it is a
/// regular file whose folder accepts a new file (a read-only folder, a device node's /dev
/// do not); otherwise the per-user state directory from `fallback`.
pub fn choose_path(
    source: &Path,
    dest: &str,
    state_dir: Option<&Path>,
    fallback: impl FnOnce() -> Result<PathBuf>,
) -> Result<PathBuf> {
    if let Some(d) = state_dir {
        return Ok(path_for(source, dest, Some(d)));
    }
    let beside = path_for(source, dest, None);
    let folder = beside.parent().unwrap_or(Path::new("."));
    let folder = if folder.as_os_str().is_empty() {
        Path::new(".")
    } else {
        folder
    };
    if std::fs::metadata(source).is_ok_and(|m| m.is_file()) && accepts_new_file(folder) {
        return Ok(beside);
    }
    Ok(path_for(source, dest, Some(&fallback()?)))
}

/// The existing journal among `candidates` to resume from: the most recently written one
/// (an older one elsewhere is a leftover of an earlier run). `None` when there is none.
pub fn find_existing(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates
        .iter()
        .filter_map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok(), p))
        })
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p.clone())
}

/// A new journal.
pub fn new(
    dest: &str,
    source: SourceIdentity,
    parents: Vec<SourceIdentity>,
    footer_unique_id: [u8; 16],
    footer_time_stamp: u32,
    plan_hash: String,
) -> Journal {
    Journal {
        version: VERSION,
        destination: without_query(dest).to_string(),
        source,
        parents,
        footer_unique_id: hex_lower(&footer_unique_id),
        footer_time_stamp,
        plan_hash,
        blob: BlobIdentity::default(),
        done: Vec::new(),
        clean_stop_etag: None,
    }
}

/// Parse a hex unique id from a journal.
pub fn parse_unique_id(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("disk.raw");
        std::fs::write(&src, b"x").unwrap();
        let id = SourceIdentity::of(&src).unwrap();
        // Same destination with different SAS: same journal (the key ignores the query).
        let p1 = path_for(&src, "https://a/c/b?sig=1", None);
        assert_eq!(p1, path_for(&src, "https://a/c/b?sig=2", None));
        assert_ne!(p1, path_for(&src, "https://a/c/other", None));
        let mut j = new(
            "https://a/c/b?sig=SECRET",
            id.clone(),
            vec![id.clone()],
            [7; 16],
            5,
            "h".into(),
        );
        j.done = vec![(0, 512)];
        store(&p1, &j).unwrap();
        let back = load(&p1, None).unwrap().unwrap();
        assert_eq!(back.source, id);
        assert_eq!(back.parents, vec![id.clone()]);
        assert_eq!(back.done_ranges(), vec![0..512]);
        assert_eq!(parse_unique_id(&back.footer_unique_id), Some([7; 16]));
        assert!(!std::fs::read_to_string(&p1).unwrap().contains("SECRET"));
        // Garbage is a clear error, not a panic.
        std::fs::write(&p1, b"{not json").unwrap();
        assert_eq!(load(&p1, None).unwrap_err().code(), "upload.journal");
        assert!(load(&dir.path().join("none.json"), None).unwrap().is_none());
        // The journal vhdforge wrote is the owner's alone, whatever the umask.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::remove_file(&p1).unwrap();
            store(&p1, &j).unwrap();
            let mode = std::fs::metadata(&p1).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// A resume journal another user planted (it decides which pages are skipped) or one
    /// at which a link or FIFO was put is refused, with the reason.
    #[cfg(unix)]
    #[test]
    fn planted_links_fifos_and_foreign_journals_are_refused() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test chowns a file to nobody: run it as root (CI does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("s.raw");
        std::fs::write(&src, b"x").unwrap();
        let id = SourceIdentity::of(&src).unwrap();
        let j = new("https://a/c/b", id, Vec::new(), [7; 16], 5, "h".into());
        let p = dir.path().join("j.json");
        store(&p, &j).unwrap();
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; 65534 is `nobody`.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
        let e = load(&p, None).unwrap_err();
        assert_eq!(e.code(), "upload.journal");
        assert!(e.to_string().contains("owned by user id 65534"), "{e}");
        // ... unless that user owns the source (root resuming their upload).
        assert!(load(&p, Some(65534)).unwrap().is_some());
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
        assert!(load(&p, None)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
        std::fs::remove_file(&p).unwrap();
        // SAFETY: as above; mkfifo has no other memory effects.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(load(&p, None)
            .unwrap_err()
            .to_string()
            .contains("named pipe"));
    }

    #[test]
    fn identity_notices_changes_that_keep_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("base.vhd");
        std::fs::write(&p, b"0123456789").unwrap();
        let before = SourceIdentity::of(&p).unwrap();
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        assert_eq!(before.change(&SourceIdentity::of(&p).unwrap()), None);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Rewritten in place, same size, mtime put back: only ctime tells (Unix).
        std::fs::write(&p, b"0123456780").unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        let now = SourceIdentity::of(&p).unwrap();
        assert_eq!((now.size, now.mtime_ns), (before.size, before.mtime_ns));
        if cfg!(unix) {
            let what = before.change(&now).expect("ctime must differ");
            assert!(what.contains("ctime"), "{what}");
        }
        // Replaced by another file (new inode), same size and mtime.
        let other = dir.path().join("other");
        std::fs::write(&other, b"0123456789").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&other)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let before = SourceIdentity::of(&p).unwrap();
        std::fs::rename(&other, &p).unwrap();
        let now = SourceIdentity::of(&p).unwrap();
        if cfg!(unix) {
            let what = before.change(&now).expect("inode must differ");
            assert!(what.contains("device/inode"), "{what}");
        }
    }

    #[test]
    fn journal_place_falls_back_and_resume_finds_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let src = dir.path().join("disk.raw");
        std::fs::write(&src, b"x").unwrap();
        let dest = "https://a/c/b";
        let fallback = || Ok(state.clone());
        // Writable folder: next to the source.
        let beside = path_for(&src, dest, None);
        assert_eq!(choose_path(&src, dest, None, fallback).unwrap(), beside);
        // An explicit state directory wins.
        assert_eq!(
            choose_path(&src, dest, Some(&state), || unreachable!()).unwrap(),
            path_for(&src, dest, Some(&state))
        );
        // A source that is not a regular file (here a directory, like /dev for a device).
        assert_eq!(
            choose_path(dir.path(), dest, None, fallback).unwrap(),
            path_for(dir.path(), dest, Some(&state))
        );
        // A folder that refuses new files even to root (procfs): the state directory.
        #[cfg(target_os = "linux")]
        {
            assert!(!accepts_new_file(Path::new("/proc/self")));
            let ro = Path::new("/proc/self/status");
            assert_eq!(
                choose_path(ro, dest, None, fallback).unwrap(),
                path_for(ro, dest, Some(&state))
            );
        }
        // Resume looks in both places and takes the newest journal.
        let places = candidates(&src, dest, None, Some(&state));
        assert_eq!(
            places,
            vec![beside.clone(), path_for(&src, dest, Some(&state))]
        );
        assert_eq!(find_existing(&places), None);
        std::fs::write(&places[1], b"{}").unwrap();
        assert_eq!(find_existing(&places).as_ref(), Some(&places[1]));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&places[0], b"{}").unwrap();
        assert_eq!(find_existing(&places).as_ref(), Some(&places[0]));
    }

    #[test]
    fn long_source_names_get_bounded_journal_names() {
        let dest = "https://a/c/b";
        let long = |c: &str| PathBuf::from("/d").join(format!("{}.raw", c.repeat(246)));
        // (case, source, expected file name length bound, name kept whole)
        let short = PathBuf::from("/d/disk.raw");
        let cases = [
            // Short names are unchanged, so journals of earlier releases are still found.
            ("short", short, 60, true),
            // 250 bytes: the name used to exceed the 255-byte limit with its suffixes.
            ("250 bytes", long("n"), 160, false),
            // Multi-byte characters: cut at a character boundary, never inside one.
            ("multi-byte", long("é"), 160, false),
        ];
        for (name, src, bound, whole) in cases {
            let p = path_for(&src, dest, None);
            let file = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(file.len() <= bound, "{name}: {} bytes", file.len());
            let stem = src.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(file.starts_with(&stem), whole, "{name}");
        }
        // Two long names that share their first bytes keep distinct journals.
        let a = PathBuf::from(format!("/d/{}a.raw", "n".repeat(200)));
        let b = PathBuf::from(format!("/d/{}b.raw", "n".repeat(200)));
        assert_ne!(path_for(&a, dest, None), path_for(&b, dest, None));
    }

    #[test]
    fn probe_refuses_a_missing_folder_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing").join("j.json");
        let e = probe_writable(&missing).unwrap_err();
        assert_eq!(e.code(), "upload.journal");
        assert!(e.to_string().contains("--state-dir"), "{e}");
        // A writable folder passes, and the probe leaves nothing behind (nor a journal).
        let ok = dir.path().join("j.json");
        probe_writable(&ok).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
