//! Parent resolution for differencing disks (VHD spec v1.0, "Parent Locator Entries";
//! formats.md §1.9).
//!
//! A differencing disk names its parent three ways: parent locators (`W2ru` relative path,
//! `W2ku` absolute Windows path, both UTF-16LE) and the header's parent Unicode name
//! (UTF-16BE). Candidates are tried in that order; an absolute Windows path is also tried
//! by its file name next to the child, so chains copied off a Windows host still open.
//! Xen's `MacX` locator (a UTF-8 file URL) is tried after the Windows ones.
//! The parent found must carry the unique id the child's header records.

use super::header::{
    DynamicDiskHeader, ParentLocatorEntry, LOCATORS_OFFSET, LOCATOR_SIZE, PLATFORM_MACX,
    PLATFORM_W2KU, PLATFORM_W2RU,
};
use crate::finding::Findings;
use crate::io::{read_vec, ReadAt};
use std::path::{Path, PathBuf};

/// Longest locator data read (a Windows long path is at most 32,767 UTF-16 units).
pub const MAX_LOCATOR_BYTES: u64 = 64 << 10;

/// Decode UTF-16LE bytes up to the first NUL (lossy; an odd last byte is dropped).
pub fn utf16le(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// The components of a Windows path (`\` or `/` separated), without empty and `.` parts.
fn windows_components(p: &str) -> Vec<&str> {
    p.split(['\\', '/'])
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

/// A Windows path relative to the child (`.\dir\base.vhd`, `..\base.vhd`) resolved
/// against the child's directory.
pub fn relative_candidate(child_dir: &Path, rel: &str) -> Option<PathBuf> {
    let parts = windows_components(rel);
    if parts.is_empty() {
        return None;
    }
    let mut p = child_dir.to_path_buf();
    for c in parts {
        p.push(c);
    }
    Some(p)
}

/// The file name of a Windows path (`C:\vms\base.vhd` → `base.vhd`).
pub fn windows_file_name(p: &str) -> Option<&str> {
    windows_components(p).last().copied().filter(|n| *n != "..")
}

/// Why a candidate was proposed, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The path to try.
    pub path: PathBuf,
    /// Where it came from (`W2ru locator`, `W2ku locator`, ...).
    pub source: &'static str,
}

/// Read the locator entries of a differencing header at `header_offset` and list the
/// parent paths to try, in order, without duplicates. Unusable locators are reported as
/// warnings (the next candidate may still work).
pub fn candidates(
    src: &dyn ReadAt,
    header: &DynamicDiskHeader,
    header_offset: u64,
    child: &Path,
    data_end: u64,
    findings: &mut Findings,
) -> Vec<Candidate> {
    let child_dir = child
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let child_dir = if child_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        child_dir
    };
    let mut relative = Vec::new();
    let mut absolute = Vec::new();
    let mut url = Vec::new();
    for (i, e) in header.parent_locators.iter().enumerate() {
        let code = e.platform_code;
        if code == [0; 4] {
            continue;
        }
        if code != PLATFORM_W2RU && code != PLATFORM_W2KU && code != PLATFORM_MACX {
            // Deprecated ANSI and Mac alias locators: Hyper-V writes W2ru/W2ku beside them.
            continue;
        }
        let at = header_offset + LOCATORS_OFFSET + (i * LOCATOR_SIZE) as u64;
        let Some(bytes) = read_locator(src, e, i, at, data_end, findings) else {
            continue;
        };
        if code == PLATFORM_W2RU {
            relative.push(utf16le(&bytes));
        } else if code == PLATFORM_W2KU {
            absolute.push(utf16le(&bytes));
        } else {
            url.push(file_url_path(&bytes));
        }
    }
    let mut out: Vec<Candidate> = Vec::new();
    let mut add = |path: PathBuf, source: &'static str| {
        if !out.iter().any(|c| c.path == path) {
            out.push(Candidate { path, source });
        }
    };
    for r in &relative {
        if let Some(p) = relative_candidate(&child_dir, r) {
            add(p, "W2ru locator");
        }
    }
    for a in &absolute {
        // The absolute path only means something on Windows.
        if cfg!(windows) {
            add(PathBuf::from(a), "W2ku locator");
        }
        if let Some(name) = windows_file_name(a) {
            add(
                child_dir.join(name),
                "W2ku locator's file name next to the child",
            );
        }
    }
    for u in &url {
        let p = Path::new(u);
        if p.is_absolute() {
            add(p.to_path_buf(), "MacX locator");
        } else if let Some(c) = relative_candidate(&child_dir, u) {
            add(c, "MacX locator");
        }
        if let Some(name) = windows_file_name(u) {
            add(
                child_dir.join(name),
                "MacX locator's file name next to the child",
            );
        }
    }
    let name = header.parent_name();
    if let Some(n) = windows_file_name(&name) {
        add(child_dir.join(n), "header parent name next to the child");
    }
    out
}

/// The path of a `file://` URL (UTF-8, NUL padded; `%XX` escapes decoded, lossy).
pub fn file_url_path(bytes: &[u8]) -> String {
    let used = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = &bytes[..used];
    let text = text.strip_prefix(b"file://").unwrap_or(text);
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let escape = (text[i] == b'%')
            .then(|| Some((hex(*text.get(i + 1)?)?, hex(*text.get(i + 2)?)?)))
            .flatten();
        if let Some((h, l)) = escape {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The data of one locator, or `None` (with a warning) when its entry is unusable.
fn read_locator(
    src: &dyn ReadAt,
    e: &ParentLocatorEntry,
    index: usize,
    at: u64,
    data_end: u64,
    findings: &mut Findings,
) -> Option<Vec<u8>> {
    let code = String::from_utf8_lossy(&e.platform_code).into_owned();
    let len = u64::from(e.platform_data_length.get());
    let offset = e.platform_data_offset.get();
    let Some(space) = e.data_space_bytes() else {
        findings.warning(
            "vhd.parent.locator",
            Some(at + 4),
            format!(
                "parent locator {index} ({code}) has data space {}, neither a sector count below 512 nor a multiple of 512 bytes; ignoring it",
                e.platform_data_space.get()
            ),
        );
        return None;
    };
    let problem = if len == 0 {
        Some("is empty".to_string())
    } else if len > space {
        Some(format!("uses {len} bytes but reserves only {space}"))
    } else if len > MAX_LOCATOR_BYTES {
        Some(format!(
            "is {len} bytes long, more than the {MAX_LOCATOR_BYTES}-byte limit for a path"
        ))
    } else if offset.checked_add(len).is_none_or(|end| end > data_end) || offset < 512 {
        Some(format!("data at {offset:#x} (+{len} bytes) lies outside the file's usable area (512..{data_end:#x})"))
    } else {
        None
    };
    if let Some(p) = problem {
        findings.warning(
            "vhd.parent.locator",
            Some(at),
            format!("parent locator {index} ({code}) {p}; ignoring it"),
        );
        return None;
    }
    match read_vec(src, offset, len, MAX_LOCATOR_BYTES) {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            findings.warning(
                "vhd.parent.locator",
                Some(offset),
                format!("cannot read parent locator {index} ({code}): {err}; ignoring it"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_paths_resolve() {
        let dir = Path::new("/images/chain");
        let cases: [(&str, Option<&str>); 5] = [
            // Hyper-V's usual relative locator.
            (".\\base.vhd", Some("/images/chain/base.vhd")),
            // A parent one directory up.
            ("..\\base.vhd", Some("/images/chain/../base.vhd")),
            // Subdirectory with forward slashes.
            ("./sub/base.vhd", Some("/images/chain/sub/base.vhd")),
            // Doubled separators are harmless.
            ("sub\\\\base.vhd", Some("/images/chain/sub/base.vhd")),
            // Nothing to resolve.
            (".\\", None),
        ];
        for (rel, want) in cases {
            assert_eq!(
                relative_candidate(dir, rel),
                want.map(PathBuf::from),
                "{rel}"
            );
        }
        assert_eq!(
            windows_file_name("C:\\VMs\\disks\\base.vhd"),
            Some("base.vhd")
        );
        assert_eq!(windows_file_name("\\\\?\\C:\\b.vhd"), Some("b.vhd"));
        assert_eq!(windows_file_name("C:\\"), Some("C:"));
        assert_eq!(windows_file_name(".."), None);
    }

    #[test]
    fn file_urls_decode() {
        let cases: [(&[u8], &str); 3] = [
            // blktap's relative form, NUL padded.
            (b"file://./base.vhd\0\0", "./base.vhd"),
            // Absolute, with an escaped space.
            (b"file:///srv/my%20vms/base.vhd", "/srv/my vms/base.vhd"),
            // A stray percent sign stays as it is.
            (b"file://50%.vhd", "50%.vhd"),
        ];
        for (url, want) in cases {
            assert_eq!(file_url_path(url), want);
        }
    }

    #[test]
    fn utf16le_stops_at_nul() {
        let mut b: Vec<u8> = ".\\p.vhd"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        b.extend_from_slice(&[0, 0, b'x', 0]);
        assert_eq!(utf16le(&b), ".\\p.vhd");
    }
}
