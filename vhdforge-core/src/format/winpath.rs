//! Parent paths as differencing disks record them (docs/formats.md §1.9, §2.7), turned into
//! paths on this system.
//!
//! Hyper-V writes Windows paths (`.\base.vhd`, `C:\VMs\base.vhdx`, `\\?\D:\x\base.vhdx`);
//! Xen and qemu write POSIX ones. Both VHD and VHDX resolve them with these three rules:
//! a relative path is taken from the child's folder (with `\` and `/` both separators), an
//! absolute path is used as it is unless it names a drive or a UNC share, which only mean
//! something on the Windows host that wrote them, and any path's file name can be looked
//! for next to the child, so chains copied off that host still open.

use std::path::{Path, PathBuf};

/// The components of `p` (`\` or `/` separated), without empty and `.` parts.
fn components(p: &str) -> impl Iterator<Item = &str> {
    p.split(['\\', '/']).filter(|c| !c.is_empty() && *c != ".")
}

/// True for `C:...` (drive) and `\\server\...`, `\\?\...` (UNC and device) paths.
fn is_windows_volume_path(p: &str) -> bool {
    let b = p.as_bytes();
    let drive = b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':';
    drive || p.starts_with("\\\\") || p.starts_with("//")
}

/// `parts` appended to `base`; `None` when there are none (the path named only a folder).
fn join_components<'a>(base: PathBuf, parts: impl Iterator<Item = &'a str>) -> Option<PathBuf> {
    let mut out = base;
    let mut any = false;
    for c in parts {
        out.push(c);
        any = true;
    }
    any.then_some(out)
}

/// A path relative to the child (`.\dir\base.vhd`, `..\base.vhd`) resolved against the
/// child's folder `child_dir`. A leading separator is ignored: a relative locator is
/// relative whatever its spelling.
fn append_relative(child_dir: &Path, p: &str) -> Option<PathBuf> {
    join_components(child_dir.to_path_buf(), components(p))
}

/// A relative locator resolved against the child's folder. On Windows the way Hyper-V does
/// it: lexically, `..` taking away the folder before it ([`windows_join`]), which also works
/// under a `\\?\` child path, where the system itself would not interpret `..`. Elsewhere
/// the parts are appended and the file system resolves `..`.
pub fn relative(child_dir: &Path, p: &str) -> Option<PathBuf> {
    if cfg!(windows) {
        if let Some(base) = child_dir.to_str() {
            return windows_join(base, p).map(PathBuf::from);
        }
    }
    append_relative(child_dir, p)
}

/// Split a Windows path into its root and the rest: `C:\`, `\\server\share\`,
/// `\\?\C:\`, `\\?\UNC\server\share\`, `\` (the current drive), `C:` (drive-relative) or
/// nothing (relative). `/` counts as `\`.
fn split_windows_root(p: &str) -> (String, &str) {
    let is_sep = |c: u8| c == b'\\' || c == b'/';
    let b = p.as_bytes();
    // Extended-length and device paths: `\\?\` or `\\.\` then a drive or `UNC\server\share`.
    if b.len() >= 4
        && is_sep(b[0])
        && is_sep(b[1])
        && (b[2] == b'?' || b[2] == b'.')
        && is_sep(b[3])
    {
        let rest = &p[4..];
        let prefix = format!("\\\\{}\\", &p[2..3]);
        if rest.get(..3).is_some_and(|u| u.eq_ignore_ascii_case("UNC"))
            && rest.as_bytes().get(3).copied().is_some_and(is_sep)
        {
            let (share, tail) = unc_share(&rest[4..]);
            return (format!("{prefix}UNC\\{share}\\"), tail);
        }
        let (root, tail) = split_windows_root(rest);
        return (format!("{prefix}{root}"), tail);
    }
    if b.len() >= 2 && is_sep(b[0]) && is_sep(b[1]) {
        let (share, tail) = unc_share(&p[2..]);
        return (format!("\\\\{share}\\"), tail);
    }
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        if b.len() >= 3 && is_sep(b[2]) {
            return (format!("{}\\", &p[..2]), &p[3..]);
        }
        return (p[..2].to_string(), &p[2..]);
    }
    if !b.is_empty() && is_sep(b[0]) {
        return ("\\".to_string(), &p[1..]);
    }
    (String::new(), p)
}

/// `server\share` (with `\` between) and what follows it, of a UNC path without its `\\`.
fn unc_share(p: &str) -> (String, &str) {
    let mut parts = p.splitn(3, ['\\', '/']);
    let server = parts.next().unwrap_or("");
    let share = parts.next().unwrap_or("");
    (format!("{server}\\{share}"), parts.next().unwrap_or(""))
}

/// `rel` (a relative locator) appended to the Windows folder `base` the way Windows
/// combines paths (`PathCchCombine`): `.` is dropped, `..` removes the component before it
/// but never the root (drive, share, `\\?\` prefix); a relative base keeps leading `..`s.
/// The result uses `\`. `None` when `rel` names only a folder.
pub fn windows_join(base: &str, rel: &str) -> Option<String> {
    let (root, rest) = split_windows_root(base);
    let mut parts: Vec<&str> = components(rest).collect();
    let mut named_file = false;
    for c in components(rel) {
        named_file = true;
        if c == ".." {
            match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                // At the root `..` stays at the root, as on Windows.
                _ if !root.is_empty() => {}
                _ => parts.push(c),
            }
        } else {
            parts.push(c);
        }
    }
    named_file.then(|| format!("{root}{}", parts.join("\\")))
}

/// The extended-length (`\\?\`) form of an absolute Windows path, which Windows takes
/// beyond `MAX_PATH` (260) characters: `C:\x` → `\\?\C:\x`, `\\server\share\x` →
/// `\\?\UNC\server\share\x`. `.` and `..` are resolved first and `/` becomes `\`: the system
/// does neither for such paths. `None` for a path already in that form, or not absolute
/// (relative, `\x` on the current drive, drive-relative `C:x`).
pub fn extended_length(abs: &str) -> Option<String> {
    let (root, rest) = split_windows_root(abs);
    let b = root.as_bytes();
    let plain = if root.starts_with("\\\\?\\") || root.starts_with("\\\\.\\") {
        return None;
    } else if let Some(unc) = root.strip_prefix("\\\\") {
        format!("\\\\?\\UNC\\{unc}")
    } else if b.len() == 3 && b[1] == b':' {
        format!("\\\\?\\{root}")
    } else {
        return None;
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in components(rest) {
        if c == ".." {
            parts.pop();
        } else {
            parts.push(c);
        }
    }
    Some(format!("{plain}{}", parts.join("\\")))
}

/// A path that may be absolute: a POSIX-rooted path (`/srv/base.vhd`, or `\srv\base.vhd`)
/// from the root, a relative one from `child_dir`. Drive and UNC paths give `None` except on
/// Windows, where every absolute path is used as it is.
pub fn absolute_or_relative(child_dir: &Path, p: &str) -> Option<PathBuf> {
    if cfg!(windows) && Path::new(p).is_absolute() {
        return Some(PathBuf::from(p));
    }
    if is_windows_volume_path(p) {
        return None;
    }
    if p.starts_with(['/', '\\']) {
        return join_components(PathBuf::from("/"), components(p));
    }
    relative(child_dir, p)
}

/// The file name at the end of a Windows or POSIX path (`C:\vms\base.vhd` → `base.vhd`);
/// `None` when the path ends in `..` or names only a drive.
pub fn file_name(p: &str) -> Option<&str> {
    components(p)
        .last()
        .filter(|n| *n != ".." && !(n.len() == 2 && is_windows_volume_path(n)))
}

/// The folder a child's relative parent paths start from (`.` for a bare file name).
pub fn child_dir(child: &Path) -> PathBuf {
    match child.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = "/images/chain";

    #[test]
    fn relative_paths() {
        // (path as recorded, expected)
        let cases: [(&str, Option<&str>); 7] = [
            // Hyper-V's usual relative locator.
            (".\\base.vhd", Some("/images/chain/base.vhd")),
            // A parent one directory up (kept as `..`: the file system resolves it).
            ("..\\base.vhd", Some("/images/chain/../base.vhd")),
            // Subdirectory with forward slashes.
            ("./sub/base.vhd", Some("/images/chain/sub/base.vhd")),
            // Doubled separators are harmless.
            ("sub\\\\base.vhd", Some("/images/chain/sub/base.vhd")),
            // A leading separator does not make a relative locator absolute.
            ("\\sub\\base.vhd", Some("/images/chain/sub/base.vhd")),
            // Only a folder: nothing to try.
            (".\\", None),
            // Empty.
            ("", None),
        ];
        for (p, want) in cases {
            assert_eq!(relative(Path::new(DIR), p), want.map(PathBuf::from), "{p}");
        }
    }

    #[cfg(not(windows))]
    #[test]
    fn absolute_or_relative_paths() {
        // (path as recorded, expected on a POSIX host)
        let cases: [(&str, Option<&str>); 7] = [
            // A drive path names another host's volume.
            ("C:\\VMs\\base.vhdx", None),
            // So do extended-length and UNC paths.
            ("\\\\?\\D:\\x\\base.vhdx", None),
            ("\\\\server\\share\\base.vhd", None),
            // A POSIX absolute path (a Xen file URL's path) is used as it is.
            ("/srv/my vms/base.vhd", Some("/srv/my vms/base.vhd")),
            // A rooted Windows path is taken from the root.
            ("\\srv\\base.vhd", Some("/srv/base.vhd")),
            // A relative one from the child's folder.
            ("./base.vhd", Some("/images/chain/base.vhd")),
            // The root alone is no file.
            ("/", None),
        ];
        for (p, want) in cases {
            assert_eq!(
                absolute_or_relative(Path::new(DIR), p),
                want.map(PathBuf::from),
                "{p}"
            );
        }
    }

    #[test]
    fn file_names() {
        // (path as recorded, expected file name)
        let cases: [(&str, Option<&str>); 7] = [
            // Drive path.
            ("C:\\VMs\\disks\\base.vhd", Some("base.vhd")),
            // Extended-length path.
            ("\\\\?\\C:\\b.vhd", Some("b.vhd")),
            // POSIX path.
            ("/srv/base.vhd", Some("base.vhd")),
            // Trailing separator: the last named component.
            ("C:\\VMs\\base.vhd\\", Some("base.vhd")),
            // A bare drive is no file name.
            ("C:\\", None),
            // Nor is a parent directory.
            ("..", None),
            // Nor nothing.
            ("", None),
        ];
        for (p, want) in cases {
            assert_eq!(file_name(p), want, "{p}");
        }
    }

    #[test]
    fn child_dirs() {
        // (child path, folder its relative parents start from)
        let cases = [
            // The usual case.
            ("/vms/child.vhd", "/vms"),
            // A bare file name: the current folder.
            ("child.vhd", "."),
            // A relative folder stays relative.
            ("sub/child.vhd", "sub"),
        ];
        for (child, want) in cases {
            assert_eq!(child_dir(Path::new(child)), PathBuf::from(want), "{child}");
        }
    }

    #[test]
    fn windows_join_resolves_like_hyper_v() {
        // (child's folder, relative locator, expected)
        let cases: [(&str, &str, Option<&str>); 12] = [
            // Drive letter, Hyper-V's `.\` locator.
            (r"C:\VMs\web", r".\base.vhdx", Some(r"C:\VMs\web\base.vhdx")),
            // `..` removes the folder before it (lexically, as PathCchCombine does).
            (
                r"C:\VMs\web",
                r"..\base\base.vhdx",
                Some(r"C:\VMs\base\base.vhdx"),
            ),
            // Never above the drive's root.
            (r"C:\VMs", r"..\..\..\base.vhd", Some(r"C:\base.vhd")),
            // UNC: the share is the root, `..` stops there.
            (
                r"\\nas\vms\web",
                r"..\..\base.vhd",
                Some(r"\\nas\vms\base.vhd"),
            ),
            // Extended-length child folders: `..` resolved here, the system would not.
            (
                r"\\?\D:\deep\web",
                r"..\base.vhdx",
                Some(r"\\?\D:\deep\base.vhdx"),
            ),
            (
                r"\\?\UNC\nas\vms\web",
                r"..\base.vhdx",
                Some(r"\\?\UNC\nas\vms\base.vhdx"),
            ),
            // Forward slashes and doubled separators are separators.
            (
                "C:/VMs//web",
                "./sub//base.vhd",
                Some(r"C:\VMs\web\sub\base.vhd"),
            ),
            // A relative child folder keeps leading `..`s.
            (r"..\vms", r"..\..\base.vhd", Some(r"..\..\base.vhd")),
            (".", r".\base.vhd", Some("base.vhd")),
            // Current-drive root.
            (r"\VMs", r"..\base.vhd", Some(r"\base.vhd")),
            // Only a folder: nothing to open.
            (r"C:\VMs", r".\", None),
            (r"C:\VMs", "", None),
        ];
        for (base, rel, want) in cases {
            assert_eq!(windows_join(base, rel).as_deref(), want, "{base} + {rel}");
        }
    }

    #[test]
    fn extended_length_paths() {
        let long = format!(r"C:\{}\base.vhdx", "d".repeat(300));
        let cases: [(&str, Option<String>); 7] = [
            (r"C:\VMs\base.vhdx", Some(r"\\?\C:\VMs\base.vhdx".into())),
            // A UNC path takes the UNC form.
            (
                r"\\nas\vms\base.vhdx",
                Some(r"\\?\UNC\nas\vms\base.vhdx".into()),
            ),
            // `.`/`..` and `/` are resolved first: the system does not for `\\?\` paths.
            (r"C:\VMs\.\x\..\b/c.vhd", Some(r"\\?\C:\VMs\b\c.vhd".into())),
            // Beyond MAX_PATH: the reason this exists.
            (long.as_str(), Some(format!(r"\\?\{long}"))),
            // Already extended: unchanged.
            (r"\\?\C:\VMs\base.vhdx", None),
            // Not absolute: nothing to extend.
            (r"VMs\base.vhdx", None),
            ("C:base.vhdx", None),
        ];
        for (p, want) in cases {
            assert_eq!(extended_length(p), want, "{p}");
        }
    }

    #[test]
    fn odd_roots_never_panic() {
        // Multi-byte characters right after the prefix, truncated prefixes.
        for p in [r"\\?\ÜNC\x", r"\\?\", r"\\", "é:", r"\\?\UN", r"\\.\C:"] {
            let _ = windows_join(p, r"..\x");
            let _ = extended_length(p);
        }
    }
}
