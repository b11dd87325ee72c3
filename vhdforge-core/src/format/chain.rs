//! Differencing chains: finding a child's parent among the paths it records, and reading
//! through a parent that may be smaller than the child (docs/formats.md §1.9, §2.7).
//!
//! VHD and VHDX record their parents differently (locators and a unique id; a key/value
//! locator and a `DataWriteGuid`) but search for them the same way, here: candidates are
//! tried in order, each is first probed for its identity alone
//! ([`crate::format::probe_parent`], a few KiB) and only one carrying an accepted identity is
//! fully opened ([`crate::format::open_candidate`], which may recurse into a whole chain).
//! Decoy paths therefore cost one probe each, which keeps the search linear in the chain
//! length; the open budget of [`OpenContext`] bounds the rest. Loops, over-long chains and
//! "parents not followed" stop the search at once; a candidate that is missing, not a
//! regular file, of another identity or that fails to open lets the next one try.

use crate::error::{Error, ErrorKind, Result};
use crate::format::{not_followed, open_candidate, probe_parent, OpenContext};
use crate::image::DiskImage;
use std::fmt;
use std::path::PathBuf;
use uuid::Uuid;

/// A path to try as the parent, and where the child recorded it (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The path to try.
    pub path: PathBuf,
    /// Where it came from (`W2ru locator`, `relative_path`, ...).
    pub source: &'static str,
}

/// Candidates in the order they were recorded, each path once (the first source wins).
#[derive(Debug, Default)]
pub struct Candidates(Vec<Candidate>);

impl Candidates {
    /// Add `path` (when there is one) unless it is already listed.
    pub fn add(&mut self, path: Option<PathBuf>, source: &'static str) {
        if let Some(path) = path {
            if !self.0.iter().any(|c| c.path == path) {
                self.0.push(Candidate { path, source });
            }
        }
    }

    /// The candidates, in order.
    pub fn into_vec(self) -> Vec<Candidate> {
        self.0
    }
}

/// What the child expects of its parent, and how the format names what went wrong.
#[derive(Debug, Clone)]
pub struct ParentSearch {
    /// The identity the child links to.
    pub expected: Uuid,
    /// Another identity also accepted (a VHDX's `parent_linkage2`).
    pub also_accepted: Option<Uuid>,
    /// The format's word for the identity (`unique id`, `DataWriteGuid`).
    pub identity_name: &'static str,
    /// The error code when the first failure was a parent of another identity.
    pub mismatch_code: crate::Code,
    /// The error code when no candidate was a usable file.
    pub missing_code: crate::Code,
}

/// The parent found.
#[derive(Debug)]
pub struct Found {
    /// The opened parent.
    pub image: Box<dyn DiskImage>,
    /// The path it was opened from.
    pub path: PathBuf,
}

/// Why a candidate was passed over.
#[derive(Debug)]
enum Rejection {
    /// Missing, not a regular file, or unreadable (the probe's error names the path).
    Unusable(Error),
    /// A disk image of another identity (`None`: raw, which has none).
    OtherIdentity(Option<Uuid>),
    /// The right identity, but the full open failed.
    OpenFailed(Error),
}

/// One candidate passed over.
#[derive(Debug)]
struct Tried<'a> {
    candidate: &'a Candidate,
    rejection: Rejection,
}

/// `Some(id)` as its text, `None` as `none`.
fn id_text(id: Option<Uuid>) -> String {
    id.map_or_else(|| "none".to_string(), |u| u.to_string())
}

impl fmt::Display for Tried<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Candidate { path, source } = self.candidate;
        match &self.rejection {
            Rejection::Unusable(e) => write!(f, "{} ({source})", e.message()),
            Rejection::OtherIdentity(id) => {
                write!(
                    f,
                    "{} ({source}: identity {})",
                    path.display(),
                    id_text(*id)
                )
            }
            Rejection::OpenFailed(e) => write!(f, "{} ({source}: {e})", path.display()),
        }
    }
}

/// Errors that end the whole search: they would end it for every other candidate too.
fn ends_the_search(e: &Error) -> bool {
    use crate::finding::codes::{PARENT_CHAIN_TOO_DEEP, PARENT_LOOP, PARENT_NOT_FOLLOWED};
    [PARENT_LOOP, PARENT_NOT_FOLLOWED, PARENT_CHAIN_TOO_DEEP].contains(&e.code())
}

impl ParentSearch {
    fn accepts(&self, id: Option<Uuid>) -> bool {
        id.is_some() && (id == Some(self.expected) || id == self.also_accepted)
    }

    /// Open the first candidate that is a regular file carrying an accepted identity.
    /// Fails naming every path tried, with the code of the first real failure (another
    /// identity, or a parent that failed to open), else [`ParentSearch::missing_code`].
    pub fn run(&self, candidates: &[Candidate], ctx: &mut OpenContext<'_>) -> Result<Found> {
        if !ctx.opts.follow_parents {
            // Refused before the file system is even probed (in-memory and fuzzing opens).
            let named = candidates.first().map_or_else(
                || PathBuf::from("(no parent path recorded)"),
                |c| c.path.clone(),
            );
            return Err(not_followed(&named));
        }
        let mut tried = Vec::new();
        for c in candidates {
            let rejection = match probe_parent(&c.path) {
                Err(e) => Rejection::Unusable(e),
                Ok(probe) if !self.accepts(probe.identity) => {
                    Rejection::OtherIdentity(probe.identity)
                }
                Ok(probe) => match open_candidate(probe, ctx) {
                    Ok(image) => {
                        return Ok(Found {
                            image,
                            path: c.path.clone(),
                        })
                    }
                    Err(e) if ends_the_search(&e) => return Err(e),
                    Err(e) => Rejection::OpenFailed(e),
                },
            };
            tried.push(Tried {
                candidate: c,
                rejection,
            });
        }
        Err(self.failure(&tried))
    }

    /// The error for a search that found nothing, after trying `tried`.
    fn failure(&self, tried: &[Tried<'_>]) -> Error {
        let list = tried
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let first = tried
            .iter()
            .find(|t| !matches!(t.rejection, Rejection::Unusable(_)));
        let (kind, code, message) = match first {
            Some(Tried {
                candidate: c,
                rejection: Rejection::OtherIdentity(found),
            }) => (
                ErrorKind::Parent,
                self.mismatch_code,
                format!(
                    "the parent found at {} ({}) has {} {}, but this differencing disk expects {}; it is not this disk's parent, or it changed after this disk was made",
                    c.path.display(),
                    c.source,
                    self.identity_name,
                    id_text(*found),
                    self.expected
                ),
            ),
            Some(Tried {
                candidate: c,
                rejection: Rejection::OpenFailed(e),
            }) => (
                ErrorKind::Parent,
                e.code(),
                format!(
                    "cannot open the parent {} ({}): {e}",
                    c.path.display(),
                    c.source
                ),
            ),
            _ => {
                let list = if tried.is_empty() {
                    "none (no usable parent path is recorded)"
                } else {
                    &list
                };
                return Error::new(
                    ErrorKind::Parent,
                    self.missing_code,
                    format!(
                        "the parent disk ({} {}) of this differencing disk was not found; paths tried: {list}",
                        self.identity_name, self.expected
                    ),
                );
            }
        };
        if tried.len() > 1 {
            return Error::new(kind, code, format!("{message}; paths tried: {list}"));
        }
        Error::new(kind, code, message)
    }
}

/// How many of the `len` bytes at virtual offset `start` lie inside a parent of
/// `parent_size` bytes: a parent smaller than its child (the child was grown after it was
/// made) reads as zeros past its end, so only this prefix is looked up in the parent.
pub fn inside_parent(parent_size: u64, start: u64, len: u64) -> u64 {
    parent_size.saturating_sub(start).min(len)
}

/// Fill `buf` with the parent's bytes at virtual offset `offset`, zeros past its end.
pub fn read_parent(parent: &dyn DiskImage, buf: &mut [u8], offset: u64) -> Result<()> {
    let inside = inside_parent(parent.info().virtual_size, offset, buf.len() as u64);
    // `inside` is at most `buf.len()`, so it fits a usize.
    let (from_parent, past_end) = buf.split_at_mut(usize::try_from(inside).unwrap_or(0));
    if !from_parent.is_empty() {
        parent.read_at(from_parent, offset)?;
    }
    past_end.fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::OpenOptions;
    use crate::image::Format;
    use fixtures::vhd::{fixed_vhd, refresh_footer_checksum, FooterOptions};

    const MIB: usize = 1 << 20;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// A 1 MiB fixed VHD with unique id `n` whose bytes are all `fill`.
    fn vhd(n: u128, fill: u8) -> Vec<u8> {
        let o = FooterOptions {
            unique_id: *id(n).as_bytes(),
            ..FooterOptions::default()
        };
        fixed_vhd(&vec![fill; MIB], &o, false)
    }

    /// A VHD with unique id `n` whose probe succeeds but whose full open fails (disk type 5
    /// is reserved).
    fn unopenable_vhd(n: u128) -> Vec<u8> {
        let mut v = vhd(n, 0);
        let f = v.len() - 512;
        v[f + 60..f + 64].copy_from_slice(&5u32.to_be_bytes());
        refresh_footer_checksum(&mut v[f..]);
        v
    }

    fn search() -> ParentSearch {
        ParentSearch {
            expected: id(1),
            also_accepted: Some(id(2)),
            identity_name: "unique id",
            mismatch_code: crate::Code::new("test.mismatch"),
            missing_code: crate::Code::new("test.missing"),
        }
    }

    #[test]
    fn search_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("good.vhd"), vhd(1, 0xAB)).unwrap();
        std::fs::write(d.join("alt.vhd"), vhd(2, 0xCD)).unwrap();
        std::fs::write(d.join("other.vhd"), vhd(9, 0)).unwrap();
        std::fs::write(d.join("broken.vhd"), unopenable_vhd(1)).unwrap();
        std::fs::write(d.join("raw.img"), vec![0u8; MIB]).unwrap();
        std::fs::create_dir(d.join("dir.vhd")).unwrap();
        // (case, candidate file names, Ok(file opened) or Err((code, texts in the message)))
        type Want = std::result::Result<&'static str, (&'static str, Vec<&'static str>)>;
        let cases: Vec<(&str, Vec<&str>, Want)> = vec![
            // The first matching candidate is opened.
            ("match", vec!["good.vhd", "alt.vhd"], Ok("good.vhd")),
            // Missing files and folders are skipped.
            (
                "skip unusable",
                vec!["none.vhd", "dir.vhd", "good.vhd"],
                Ok("good.vhd"),
            ),
            // Other identities (raw has none) are skipped.
            (
                "skip others",
                vec!["other.vhd", "raw.img", "good.vhd"],
                Ok("good.vhd"),
            ),
            // The second accepted identity counts as a match.
            ("also accepted", vec!["alt.vhd"], Ok("alt.vhd")),
            // A match that fails to open lets a later candidate try.
            (
                "broken then good",
                vec!["broken.vhd", "good.vhd"],
                Ok("good.vhd"),
            ),
            // Only another identity: the mismatch code, naming what was found and expected.
            (
                "mismatch",
                vec!["other.vhd"],
                Err((
                    "test.mismatch",
                    vec![
                        "other.vhd",
                        "00000000-0000-0000-0000-000000000009",
                        "00000000-0000-0000-0000-000000000001",
                    ],
                )),
            ),
            // The first real failure sets the code; every path tried is listed.
            (
                "mismatch first",
                vec!["none.vhd", "other.vhd", "broken.vhd"],
                Err((
                    "test.mismatch",
                    vec!["none.vhd: not found", "broken.vhd", "paths tried"],
                )),
            ),
            // A match that fails to open keeps its own code.
            (
                "open failure",
                vec!["broken.vhd", "raw.img"],
                Err((
                    "vhd.footer.disk_type",
                    vec!["cannot open the parent", "raw.img (test: identity none)"],
                )),
            ),
            // Nothing usable: the missing code, naming why each path was refused.
            (
                "missing",
                vec!["none.vhd", "dir.vhd"],
                Err((
                    "test.missing",
                    vec!["none.vhd: not found", "a directory, not a disk image"],
                )),
            ),
            // No candidate at all.
            (
                "no candidates",
                vec![],
                Err(("test.missing", vec!["none (no usable parent path"])),
            ),
        ];
        for (name, files, want) in cases {
            let candidates: Vec<Candidate> = files
                .iter()
                .map(|f| Candidate {
                    path: d.join(f),
                    source: "test",
                })
                .collect();
            let opts = OpenOptions::default();
            let mut ctx = OpenContext::new(&opts);
            let got = search().run(&candidates, &mut ctx);
            match (want, got) {
                (Ok(file), Ok(found)) => {
                    assert_eq!(found.path, d.join(file), "{name}");
                    assert_eq!(found.image.info().format, Format::Vhd, "{name}");
                    // Only the match was fully opened; the rest were probed.
                    assert_eq!(
                        ctx.opened,
                        1 + usize::from(name == "broken then good"),
                        "{name}"
                    );
                }
                (Err((code, texts)), Err(e)) => {
                    assert_eq!(e.code(), code, "{name}: {e}");
                    for t in texts {
                        assert!(e.message().contains(t), "{name}: {t:?} not in {e}");
                    }
                }
                (want, got) => panic!("{name}: expected {want:?}, got {:?}", got.map(|f| f.path)),
            }
        }
    }

    #[test]
    fn not_following_parents_probes_nothing() {
        let opts = OpenOptions {
            follow_parents: false,
            ..OpenOptions::default()
        };
        // (case, candidates, path named in the refusal)
        let cases: Vec<(&str, Vec<Candidate>, &str)> = vec![
            // The first candidate is named, though it does not exist (nothing is probed).
            (
                "named",
                vec![Candidate {
                    path: PathBuf::from("/nonexistent/base.vhd"),
                    source: "test",
                }],
                "/nonexistent/base.vhd",
            ),
            // Without candidates the refusal still says what happened.
            ("none", vec![], "(no parent path recorded)"),
        ];
        for (name, candidates, named) in cases {
            let mut ctx = OpenContext::new(&opts);
            let e = search().run(&candidates, &mut ctx).unwrap_err();
            assert_eq!(e.code(), "parent.not_followed", "{name}");
            assert!(e.message().contains(named), "{name}: {e}");
            assert_eq!(ctx.opened, 0, "{name}");
        }
    }

    #[test]
    fn candidates_keep_the_first_source() {
        let mut c = Candidates::default();
        // A path listed twice keeps its first source; a `None` path adds nothing.
        c.add(Some(PathBuf::from("/a")), "first");
        c.add(None, "nothing");
        c.add(Some(PathBuf::from("/b")), "second");
        c.add(Some(PathBuf::from("/a")), "again");
        let got: Vec<(PathBuf, &str)> = c
            .into_vec()
            .into_iter()
            .map(|c| (c.path, c.source))
            .collect();
        assert_eq!(
            got,
            vec![
                (PathBuf::from("/a"), "first"),
                (PathBuf::from("/b"), "second")
            ]
        );
    }

    #[test]
    fn inside_parent_cases() {
        // (parent size, start, length, bytes read from the parent)
        let cases = [
            // Same size: everything comes from the parent.
            (100, 0, 100, 100),
            // The range straddles a smaller parent's end.
            (100, 90, 20, 10),
            // Entirely past the end: all zeros.
            (100, 100, 20, 0),
            (100, 150, 20, 0),
            // Entirely inside.
            (100, 10, 20, 20),
            // An empty range.
            (100, 50, 0, 0),
            // Extreme offsets do not overflow.
            (u64::MAX, u64::MAX - 1, u64::MAX, 1),
        ];
        for (psize, start, len, want) in cases {
            assert_eq!(
                inside_parent(psize, start, len),
                want,
                "{psize} {start} {len}"
            );
        }
    }

    #[test]
    fn read_parent_zero_fills_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.vhd");
        std::fs::write(&p, vhd(1, 0x5A)).unwrap();
        let parent = crate::open(&p, &OpenOptions::default()).unwrap();
        let end = MIB as u64;
        // (offset, length, bytes expected from the parent before the zeros)
        let cases = [
            // Inside the parent.
            (0, 512, 512),
            // Straddling its end.
            (end - 100, 300, 100),
            // Past it: zeros only, and the parent is not asked to read beyond its size.
            (end, 512, 0),
            (end + 4096, 512, 0),
        ];
        for (offset, len, inside) in cases {
            let mut buf = vec![0xFFu8; len];
            read_parent(parent.as_ref(), &mut buf, offset).unwrap();
            assert!(buf[..inside].iter().all(|&b| b == 0x5A), "{offset}");
            assert!(buf[inside..].iter().all(|&b| b == 0), "{offset}");
        }
    }
}
