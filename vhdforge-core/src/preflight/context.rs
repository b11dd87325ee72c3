//! [`Ctx`]: what every guest check reads through — the guest's tree, which volume each
//! mount point is (for evidence), bounded reads and listings, and the findings so far.
//!
//! Guest files are hostile input: a file is read only up to [`MAX_FILE_BYTES`], a
//! directory listed only up to [`MAX_DIR_ENTRIES`] names, and any text shown in evidence
//! is cut short and has its control characters escaped (a crafted line must not rewrite
//! the user's terminal).

use crate::finding::{Code, Severity};
use crate::guest::fs::{self, DirEntry, FileSystem, FileType, Stat};
use crate::guest::GuestTree;
use crate::preflight::{codes, GuestFinding};

/// Largest guest file read into memory (config files are a few KiB; the cap bounds memory
/// whatever the guest holds).
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Most names taken from one guest directory.
pub const MAX_DIR_ENTRIES: usize = 4096;
/// Longest piece of guest text put into evidence.
const MAX_SHOWN: usize = 160;
/// Most findings of one code a check may add. Several checks report each offending line
/// (`blacklist udf`, a static address, ...), and a guest can repeat such a line half a million
/// times in each of thousands of files: without a bound the findings alone took gigabytes. The
/// first ones are kept, then one finding says how many more there were.
pub const MAX_FINDINGS_PER_CODE: usize = 32;

/// The guest as the checks see it.
pub struct Ctx<'a> {
    /// The root with its fstab mounts.
    pub tree: &'a GuestTree,
    /// (mount point, volume name), deepest first.
    mounts: Vec<(Vec<u8>, String)>,
    /// What the checks found.
    pub findings: Vec<GuestFinding>,
    /// Findings added per code through [`Ctx::push`], and the index of the "more" finding
    /// once [`MAX_FINDINGS_PER_CODE`] was reached.
    per_code: std::collections::HashMap<Code, (usize, Option<usize>)>,
}

impl<'a> Ctx<'a> {
    /// A context over `tree`, whose mount points hold the named volumes.
    pub fn new(tree: &'a GuestTree, mut mounts: Vec<(Vec<u8>, String)>) -> Ctx<'a> {
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Ctx {
            tree,
            mounts,
            findings: Vec::new(),
            per_code: std::collections::HashMap::new(),
        }
    }

    /// The volume holding `path` (by mount point; symlinks are not followed here).
    pub fn volume_of(&self, path: &[u8]) -> &str {
        for (point, name) in &self.mounts {
            if point.as_slice() == b"/"
                || path == point.as_slice()
                || (path.starts_with(point) && path.get(point.len()) == Some(&b'/'))
            {
                return name;
            }
        }
        "?"
    }

    /// Evidence naming `path` with its volume: `volume vg/root: /etc/fstab`.
    pub fn at(&self, path: &[u8]) -> String {
        format!("volume {}: {}", self.volume_of(path), shown(path))
    }

    /// Evidence naming a line of `path`: `volume 1: /etc/fstab line 3: …`.
    pub fn at_line(&self, path: &[u8], number: usize, line: &[u8]) -> String {
        format!(
            "{} line {number}: {}",
            self.at(path),
            shown(line.trim_ascii())
        )
    }

    /// Add a finding.
    pub fn push(
        &mut self,
        severity: Severity,
        code: Code,
        message: impl Into<String>,
        evidence: String,
        fix: impl Into<String>,
    ) {
        let seen = self.per_code.entry(code).or_insert((0, None));
        seen.0 += 1;
        if seen.0 > MAX_FINDINGS_PER_CODE {
            let more = seen.0 - MAX_FINDINGS_PER_CODE;
            let text = format!(
                "{more} more finding(s) of this kind were not listed (only the first {MAX_FINDINGS_PER_CODE} are)"
            );
            // (The index stays valid: findings are only taken out when the checks are done.)
            match seen.1.and_then(|i| self.findings.get_mut(i)) {
                Some(f) if f.code == code => f.message = text,
                _ => {
                    seen.1 = Some(self.findings.len());
                    self.findings.push(GuestFinding::new(
                        severity,
                        code,
                        text,
                        None,
                        Some(fix.into()),
                    ));
                }
            }
            return;
        }
        self.findings.push(GuestFinding::new(
            severity,
            code,
            message,
            Some(evidence),
            Some(fix.into()),
        ));
    }

    fn unreadable(&mut self, path: &[u8], e: &crate::Error) {
        let evidence = self.at(path);
        self.findings.push(GuestFinding::new(
            Severity::Warning,
            codes::UNREADABLE,
            format!(
                "{} could not be read ({}: {}), so the checks that need it were skipped",
                shown(path),
                e.code(),
                e.message()
            ),
            Some(evidence),
            None,
        ));
    }

    /// `stat` (symlinks followed); `None` when it does not exist or cannot be resolved.
    pub fn stat(&self, path: &[u8]) -> Option<Stat> {
        self.tree.stat(path).ok()
    }

    /// `lstat`; `None` when it does not exist.
    pub fn lstat(&self, path: &[u8]) -> Option<Stat> {
        self.tree.lstat(path).ok()
    }

    /// True when `path` is (or leads by symlinks to) a regular file.
    pub fn is_file(&self, path: &[u8]) -> bool {
        self.stat(path)
            .is_some_and(|s| s.file_type == FileType::Regular)
    }

    /// The first [`MAX_FILE_BYTES`] of the regular file `path`; `None` when it is absent or
    /// not a regular file. A read error is reported as a warning and gives `None`.
    pub fn read(&mut self, path: &[u8]) -> Option<Vec<u8>> {
        self.read_capped(path, MAX_FILE_BYTES)
    }

    /// The first `cap` bytes of `path`, as [`Ctx::read`].
    pub fn read_capped(&mut self, path: &[u8], cap: usize) -> Option<Vec<u8>> {
        match read_file(self.tree, path, cap) {
            Ok(x) => x,
            Err(e) => {
                self.unreadable(path, &e);
                None
            }
        }
    }

    /// Up to [`MAX_DIR_ENTRIES`] entries of the directory `path`, sorted by name (as
    /// `glob` and `run-parts` order them); empty when it is absent.
    pub fn list(&mut self, path: &[u8]) -> Vec<DirEntry> {
        let mut out = Vec::new();
        let r = self.tree.list(path, &mut |e| {
            out.push(e);
            out.len() < MAX_DIR_ENTRIES
        });
        match r {
            Ok(()) => {}
            Err(e) if fs::is_not_found(&e) || e.code() == "guest.fs.not_a_directory" => {}
            Err(e) => self.unreadable(path, &e),
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// Read at most `cap` bytes of the regular file `path`.
pub(crate) fn read_file(
    fs: &dyn FileSystem,
    path: &[u8],
    cap: usize,
) -> crate::Result<Option<Vec<u8>>> {
    let st = match fs.stat(path) {
        Ok(s) => s,
        Err(e) if fs::is_not_found(&e) || e.code() == "guest.fs.not_a_directory" => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    if st.file_type != FileType::Regular {
        return Ok(None);
    }
    let mut r = fs.open(path)?;
    let want = usize::try_from(r.size()).unwrap_or(usize::MAX).min(cap);
    let mut buf = vec![0u8; want];
    let mut done = 0;
    while done < want {
        let n = r.read(&mut buf[done..])?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(Some(buf))
}

/// Guest bytes as shown to the user: lossy UTF-8, control, bidirectional and invisible
/// format characters escaped (`\u{202e}`), cut at
/// [`MAX_SHOWN`] characters.
pub fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX_SHOWN {
            out.push('…');
            break;
        }
        // Bidi controls and invisible characters too (`guest::text`): evidence quoting a
        // guest line must show what the line holds, not what it makes a terminal draw.
        if crate::guest::text::must_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The lines of a text file, numbered from 1, with `#` comments and blank lines skipped
/// and surrounding whitespace trimmed.
pub fn config_lines(text: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_ascii()))
        .filter(|(_, l)| !l.is_empty() && l[0] != b'#')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_text_cannot_drive_a_terminal_and_is_short() {
        assert_eq!(shown(b"a\x1b[2Jb"), "a\\u{1b}[2Jb");
        let long = vec![b'x'; 1000];
        assert_eq!(shown(&long).chars().count(), MAX_SHOWN + 1);
        assert_eq!(shown(b"\xff"), "\u{fffd}");
        // A right-to-left override would make the evidence read as another line.
        assert_eq!(
            shown("a\u{202E}b\u{200B}".as_bytes()),
            "a\\u{202e}b\\u{200b}"
        );
    }

    #[test]
    fn config_lines_skip_comments_and_blanks_but_keep_numbers() {
        let l: Vec<_> = config_lines(b"# c\n\n  a b \n#x\nc").collect();
        assert_eq!(l, [(3, &b"a b"[..]), (5, b"c")]);
    }
}
