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
pub fn relative(child_dir: &Path, p: &str) -> Option<PathBuf> {
    join_components(child_dir.to_path_buf(), components(p))
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
}
