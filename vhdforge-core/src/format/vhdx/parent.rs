//! Finding and opening the parent of a differencing VHDX ([MS-VHDX] §2.6.2.6; docs/formats.md §2.7).
//!
//! The parent locator names the parent by `DataWriteGuid` (`parent_linkage`) and by paths.
//! vhdforge tries `relative_path` (relative to the child's folder), then
//! `absolute_win32_path`, then that path's file name next to the child, and accepts the
//! first regular file whose identity matches the linkage (or `parent_linkage2`). The search
//! itself is the one VHD uses ([`crate::format::chain`]): paths resolve by
//! [`crate::format::winpath`], candidates are probed for their identity before a full open.

use super::metadata::ParentLocator;
use crate::error::{Error, ErrorKind, Result};
use crate::finding::Findings;
use crate::format::chain::{Candidate, Candidates, Found, ParentSearch};
use crate::format::{winpath, OpenContext};
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

/// The paths to try, in order, for `locator` of the child at `child`.
pub fn candidates(
    locator: &ParentLocator,
    child: &Path,
    findings: &mut Findings,
) -> Vec<Candidate> {
    let dir = winpath::child_dir(child);
    let mut out = Candidates::default();
    if let Some(rel) = locator.get("relative_path") {
        out.add(winpath::relative(&dir, rel), "relative_path");
    }
    if let Some(abs) = locator.get("absolute_win32_path") {
        out.add(
            winpath::absolute_or_relative(&dir, abs),
            "absolute_win32_path",
        );
        out.add(
            winpath::file_name(abs).map(|n| dir.join(n)),
            "absolute_win32_path's file name next to the child",
        );
    }
    if let Some(vol) = locator.get("volume_path") {
        findings.info("vhdx.parent.volume_path", None, format!("the parent locator's volume_path {vol} is not tried (Windows volume GUID paths only resolve on the host that wrote them)"));
    }
    out.into_vec()
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
    let search = ParentSearch {
        expected: linkage,
        also_accepted: locator.get("parent_linkage2").and_then(parse_linkage),
        identity_name: "DataWriteGuid",
        mismatch_code: crate::Code::new("vhdx.parent.mismatch"),
        missing_code: crate::Code::new("vhdx.parent.missing"),
    };
    let Found { image, path } = search.run(&candidates(locator, child, findings), ctx)?;
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
    Ok(Parent {
        image,
        path,
        linkage,
    })
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
            let got: Vec<PathBuf> = candidates(&loc, child, &mut Findings::default())
                .into_iter()
                .map(|c| c.path)
                .collect();
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
