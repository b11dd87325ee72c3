//! Parent resolution for differencing disks (VHD spec v1.0, "Parent Locator Entries";
//! docs/formats.md §1.9).
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
use crate::format::chain::{Candidate, Candidates};
use crate::format::utf16::{self, ByteOrder};
use crate::format::winpath;
use crate::io::{read_vec, ReadAt};
use std::path::Path;

/// Longest locator data read (a Windows long path is at most 32,767 UTF-16 units).
pub const MAX_LOCATOR_BYTES: u64 = 64 << 10;

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
    let dir = winpath::child_dir(child);
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
            relative.push(utf16::until_nul_lossy(&bytes, ByteOrder::Little));
        } else if code == PLATFORM_W2KU {
            absolute.push(utf16::until_nul_lossy(&bytes, ByteOrder::Little));
        } else {
            url.push(file_url_path(&bytes));
        }
    }
    let mut out = Candidates::default();
    for r in &relative {
        out.add(winpath::relative(&dir, r), "W2ru locator");
    }
    for a in &absolute {
        out.add(winpath::absolute_or_relative(&dir, a), "W2ku locator");
        out.add(
            winpath::file_name(a).map(|n| dir.join(n)),
            "W2ku locator's file name next to the child",
        );
    }
    for u in &url {
        out.add(winpath::absolute_or_relative(&dir, u), "MacX locator");
        out.add(
            winpath::file_name(u).map(|n| dir.join(n)),
            "MacX locator's file name next to the child",
        );
    }
    out.add(
        winpath::file_name(&header.parent_name()).map(|n| dir.join(n)),
        "header parent name next to the child",
    );
    out.into_vec()
}

/// The path of a `file://` URL (UTF-8, NUL padded; `%XX` escapes decoded, lossy).
pub fn file_url_path(bytes: &[u8]) -> String {
    let used = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = &bytes[..used];
    let text = text.strip_prefix(b"file://").unwrap_or(text);
    // A hex digit is below 16, so `h * 16 + l` below fits a byte.
    let hex = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let escape = (text[i] == b'%')
            .then(|| Some((hex(*text.get(i + 1)?)?, hex(*text.get(i + 2)?)?)))
            .flatten();
        if let Some((h, l)) = escape {
            out.push(h * 16 + l);
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
}
