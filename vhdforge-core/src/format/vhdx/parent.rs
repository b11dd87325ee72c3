//! Finding and opening the parent of a differencing VHDX ([MS-VHDX] §2.6.2.6; formats.md §2.7).
//!
//! The parent locator names the parent by DataWriteGuid (`parent_linkage`) and by paths.
//! vhdforge tries `relative_path` (relative to the child's folder), then
//! `absolute_win32_path`, then that path's file name next to the child, and accepts the
//! first regular file whose identity matches the linkage. Candidates are probed for their
//! identity first ([`crate::format::probe_parent`]) and only a match is fully opened,
//! through [`crate::format::open_candidate`], which guards against loops, over-long chains
//! and more opens than a chain needs.

use super::metadata::ParentLocator;
use crate::error::{Error, ErrorKind, Result};
use crate::finding::Findings;
use crate::format::{not_followed, open_candidate, probe_parent, OpenContext};
use crate::image::DiskImage;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The opened parent.
pub struct Parent {
    /// The parent image.
    pub image: Box<dyn DiskImage>,
    /// The path it was opened from.
    pub path: PathBuf,
    /// The identity the child links to.
    pub linkage: Uuid,
}

/// A Windows path from a locator as a path on this system.
fn native(p: &str) -> PathBuf {
    if cfg!(windows) {
        PathBuf::from(p)
    } else {
        PathBuf::from(p.replace('\\', "/"))
    }
}

/// The file name at the end of a Windows or POSIX path.
fn file_name(p: &str) -> Option<&str> {
    p.rsplit(['\\', '/']).next().filter(|s| !s.is_empty())
}

/// The paths to try, in order, for `locator` of the child at `child`.
pub fn candidates(locator: &ParentLocator, child: &Path, findings: &mut Findings) -> Vec<PathBuf> {
    let dir = child.parent().unwrap_or(Path::new("."));
    let mut out: Vec<PathBuf> = Vec::new();
    if let Some(rel) = locator.get("relative_path") {
        out.push(dir.join(native(rel)));
    }
    if let Some(abs) = locator.get("absolute_win32_path") {
        // `C:\...` means nothing off Windows; a `\\?\` prefix never does here either.
        let is_drive = abs.len() >= 2 && abs.as_bytes()[1] == b':';
        if cfg!(windows) || !(is_drive || abs.starts_with("\\\\")) {
            out.push(native(abs));
        }
        if let Some(name) = file_name(abs) {
            out.push(dir.join(name));
        }
    }
    if let Some(vol) = locator.get("volume_path") {
        findings.info("vhdx.parent.volume_path", None, format!("the parent locator's volume_path {vol} is not tried (Windows volume GUID paths only resolve on the host that wrote them)"));
    }
    let mut unique = Vec::new();
    for p in out {
        if !unique.contains(&p) {
            unique.push(p);
        }
    }
    unique
}

fn parse_linkage(s: &str) -> Option<Uuid> {
    Uuid::parse_str(s.trim().trim_start_matches('{').trim_end_matches('}')).ok()
}

/// Find, open and check the parent of the child at `child` whose logical sector size is
/// `sector_size`.
pub fn open(
    locator: &ParentLocator,
    child: &Path,
    sector_size: u32,
    ctx: &mut OpenContext<'_>,
    findings: &mut Findings,
) -> Result<Parent> {
    let raw = locator.get("parent_linkage").ok_or_else(|| {
        Error::new(
            ErrorKind::Corrupt,
            "vhdx.parent.linkage",
            "the parent locator has no parent_linkage, so the parent cannot be identified",
        )
    })?;
    let linkage = parse_linkage(raw).ok_or_else(|| {
        Error::new(
            ErrorKind::Corrupt,
            "vhdx.parent.linkage",
            format!("parent_linkage `{raw}` is not a GUID"),
        )
    })?;
    let linkage2 = locator.get("parent_linkage2").and_then(parse_linkage);
    let paths = candidates(locator, child, findings);
    if !ctx.opts.follow_parents {
        // Refused before the file system is probed (in-memory and fuzzing opens).
        let named = paths
            .first()
            .cloned()
            .unwrap_or_else(|| PathBuf::from("(no parent path recorded)"));
        return Err(not_followed(&named));
    }
    let mut tried = Vec::new();
    let mut mismatch = None;
    for path in paths {
        // Only the identity is read first: a full open may recurse into a whole chain, and
        // a decoy path per level must not make the search exponential.
        let probe = match probe_parent(&path) {
            Ok(p) => p,
            Err(e) => {
                // Missing, not a regular file (FIFO, device) or unreadable: skipped.
                tried.push(e.message().to_string());
                continue;
            }
        };
        let id = probe.identity;
        if id != Some(linkage) && (id.is_none() || id != linkage2) {
            tried.push(format!(
                "{} (identity {})",
                path.display(),
                id.map_or("none".into(), |u| u.to_string())
            ));
            mismatch.get_or_insert((path, id));
            continue;
        }
        let image = open_candidate(probe, ctx)?;
        if image.info().logical_sector_size != sector_size {
            return Err(Error::new(
                ErrorKind::Parent,
                "vhdx.parent.sector_size",
                format!(
                    "parent {} has {}-byte logical sectors but the child has {sector_size}-byte ones",
                    path.display(),
                    image.info().logical_sector_size
                ),
            ));
        }
        return Ok(Parent {
            image,
            path,
            linkage,
        });
    }
    if let Some((path, id)) = mismatch {
        return Err(Error::new(
            ErrorKind::Parent,
            "vhdx.parent.mismatch",
            format!(
                "parent {} has DataWriteGuid {} but the child links to {linkage}: the parent changed after the child was made (tried: {})",
                path.display(),
                id.map_or("none".into(), |u| u.to_string()),
                tried.join("; ")
            ),
        ));
    }
    Err(Error::new(
        ErrorKind::Parent,
        "vhdx.parent.missing",
        format!(
            "cannot find the parent {linkage} of this differencing disk; tried: {}",
            if tried.is_empty() {
                "no usable path in the parent locator".to_string()
            } else {
                tried.join("; ")
            }
        ),
    ))
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // table-driven cases are tuples
mod tests {
    use super::*;

    #[test]
    fn candidate_paths() {
        let child = Path::new("/vms/child.vhdx");
        // (name, locator entries, expected candidates)
        let cases: Vec<(&str, Vec<(&str, &str)>, Vec<&str>)> = vec![
            (
                "relative with backslashes",
                vec![("relative_path", ".\\sub\\p.vhdx")],
                vec!["/vms/./sub/p.vhdx"],
            ),
            (
                "relative up a level",
                vec![("relative_path", "..\\p.vhdx")],
                vec!["/vms/../p.vhdx"],
            ),
            (
                "drive path: only its file name next to the child",
                vec![("absolute_win32_path", "C:\\VMs\\p.vhdx")],
                vec!["/vms/p.vhdx"],
            ),
            (
                "relative then absolute basename, duplicates removed",
                vec![
                    ("relative_path", "p.vhdx"),
                    ("absolute_win32_path", "\\\\?\\D:\\x\\p.vhdx"),
                ],
                vec!["/vms/p.vhdx"],
            ),
            (
                "volume path is skipped",
                vec![("volume_path", "\\\\?\\Volume{1}\\p.vhdx")],
                vec![],
            ),
        ];
        for (name, kv, want) in cases {
            let loc = ParentLocator {
                entries: kv
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            };
            let got = candidates(&loc, child, &mut Findings::default());
            let want: Vec<PathBuf> = want.iter().map(PathBuf::from).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn linkage_forms() {
        let u = Uuid::parse_str("12345678-9abc-def0-1234-56789abcdef0").unwrap();
        assert_eq!(
            parse_linkage("{12345678-9ABC-DEF0-1234-56789ABCDEF0}"),
            Some(u)
        );
        assert_eq!(
            parse_linkage("12345678-9abc-def0-1234-56789abcdef0"),
            Some(u)
        );
        assert_eq!(parse_linkage("{nonsense}"), None);
    }
}
