//! The resume journal: a small JSON file next to the source (or in a state directory)
//! recording which Put Page requests completed, keyed by the destination (without any
//! secret) and the source's identity (path, size, mtime, footer unique id, plan hash).
//!
//! It is rewritten atomically (temp file + rename) every few seconds, not per request and
//! without fsync: after a crash the destination's Get Page Ranges is the authority on what
//! arrived; the journal proves the source is still the same and keeps the footer identity.

use super::redact::without_query;
use crate::error::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Journal format version.
const VERSION: u32 = 1;

/// Largest journal accepted when loading (a plan of millions of ranges is still far below).
const MAX_JOURNAL_BYTES: u64 = 256 << 20;

/// What identifies the source file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIdentity {
    /// Canonical path.
    pub path: String,
    /// File length in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u128,
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
        Ok(SourceIdentity {
            path: canon.display().to_string(),
            size: meta.len(),
            mtime_ns,
        })
    }
}

/// The journal's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    /// Format version.
    pub version: u32,
    /// Destination URL without query (no secrets).
    pub destination: String,
    /// The source when the upload started.
    pub source: SourceIdentity,
    /// Footer unique id (hex) of the output stream.
    pub footer_unique_id: String,
    /// Footer time stamp of the output stream.
    pub footer_time_stamp: u32,
    /// Digest of the plan (requests and footer).
    pub plan_hash: String,
    /// Completed data requests, merged, `[start, end)`.
    pub done: Vec<(u64, u64)>,
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
    let key: String = Sha256::digest(without_query(dest).as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = source
        .file_name()
        .map_or_else(|| "source".into(), |n| n.to_string_lossy().into_owned());
    let file = format!("{name}.vhdforge-upload-{key}.json");
    match state_dir {
        Some(d) => d.join(file),
        None => source.parent().unwrap_or(Path::new(".")).join(file),
    }
}

/// The per-user state directory (`$XDG_STATE_HOME/vhdforge`, else
/// `~/.local/state/vhdforge`), created if needed; used when the source is not a regular file.
pub fn default_state_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .or_else(|| std::env::var_os("LOCALAPPDATA").map(PathBuf::from))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "upload.journal",
                "no state directory (HOME unset): pass --state-dir",
            )
        })?;
    let dir = base.join("vhdforge");
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::io(
            format!("cannot create the state directory {}", dir.display()),
            e,
        )
    })?;
    Ok(dir)
}

/// Load a journal; `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<Journal>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::io(
                format!("cannot read the resume journal {}", path.display()),
                e,
            ))
        }
    };
    if meta.len() > MAX_JOURNAL_BYTES {
        return Err(Error::new(
            ErrorKind::Corrupt,
            "upload.journal",
            format!(
                "resume journal {} is {} bytes, more than any plan needs; delete it",
                path.display(),
                meta.len()
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::io(
            format!("cannot read the resume journal {}", path.display()),
            e,
        )
    })?;
    let j: Journal = serde_json::from_str(&text)
        .map_err(|e| Error::new(ErrorKind::Corrupt, "upload.journal", format!("resume journal {} is unreadable ({e}); delete it and upload again with --overwrite", path.display())))?;
    if j.version != VERSION {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "upload.journal",
            format!(
                "resume journal {} has version {}, expected {VERSION}",
                path.display(),
                j.version
            ),
        ));
    }
    Ok(Some(j))
}

/// Write the journal atomically (no fsync: see the module docs).
pub fn store(path: &Path, j: &Journal) -> Result<()> {
    let tmp = path.with_extension("json.tmp-vhdforge");
    let text = serde_json::to_vec(j).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            "upload.journal",
            format!("cannot encode the journal: {e}"),
        )
    })?;
    std::fs::write(&tmp, text).map_err(|e| {
        Error::io(
            format!("cannot write the resume journal {}", tmp.display()),
            e,
        )
    })?;
    std::fs::rename(&tmp, path).map_err(|e| {
        Error::io(
            format!("cannot write the resume journal {}", path.display()),
            e,
        )
    })
}

/// A new journal.
pub fn new(
    dest: &str,
    source: SourceIdentity,
    footer_unique_id: [u8; 16],
    footer_time_stamp: u32,
    plan_hash: String,
) -> Journal {
    Journal {
        version: VERSION,
        destination: without_query(dest).to_string(),
        source,
        footer_unique_id: footer_unique_id
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        footer_time_stamp,
        plan_hash,
        done: Vec::new(),
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
            [7; 16],
            5,
            "h".into(),
        );
        j.done = vec![(0, 512)];
        store(&p1, &j).unwrap();
        let back = load(&p1).unwrap().unwrap();
        assert_eq!(back.source, id);
        assert_eq!(back.done_ranges(), vec![0..512]);
        assert_eq!(parse_unique_id(&back.footer_unique_id), Some([7; 16]));
        assert!(!std::fs::read_to_string(&p1).unwrap().contains("SECRET"));
        // Garbage is a clear error, not a panic.
        std::fs::write(&p1, b"{not json").unwrap();
        assert_eq!(load(&p1).unwrap_err().code(), "upload.journal");
        assert!(load(&dir.path().join("none.json")).unwrap().is_none());
    }
}
