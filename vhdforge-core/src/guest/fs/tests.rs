//! The shared path resolver, on an in-memory file system: symlinks stay inside the volume,
//! loops end, `..` stops at the root.

use std::collections::BTreeMap;

use super::*;

/// Canonical path → (type, symlink target).
struct Fake(BTreeMap<Vec<u8>, (FileType, Vec<u8>)>);

impl Fake {
    fn new(entries: &[(&str, FileType, &str)]) -> Fake {
        let mut m = BTreeMap::new();
        m.insert(b"/".to_vec(), (FileType::Directory, Vec::new()));
        for (p, t, target) in entries {
            m.insert(p.as_bytes().to_vec(), (*t, target.as_bytes().to_vec()));
        }
        Fake(m)
    }
}

impl FileSystem for Fake {
    fn kind(&self) -> FsKind {
        FsKind::Ext
    }
    fn stat_resolved(&self, path: &[u8]) -> Result<Stat> {
        let (t, target) = self.0.get(path).ok_or_else(|| not_found(path))?;
        Ok(Stat {
            file_type: *t,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: target.len() as u64,
            mtime: Timestamp {
                seconds: 0,
                nanoseconds: 0,
            },
            link_target: (*t == FileType::Symlink).then(|| target.clone()),
        })
    }
    fn list_resolved(&self, _: &[u8], _: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        Ok(())
    }
    fn open_resolved(&self, path: &[u8]) -> Result<Box<dyn FileReader + '_>> {
        Err(not_found(path))
    }
}

#[test]
fn resolution_table() {
    use FileType::{Directory as D, Regular as R, Symlink as L};
    let fs = Fake::new(&[
        ("/etc", D, ""),
        ("/etc/passwd", R, ""),
        ("/lib", L, "usr/lib"),
        ("/usr", D, ""),
        ("/usr/lib", D, ""),
        ("/usr/lib/os-release", R, ""),
        ("/etc/os-release", L, "../usr/lib/os-release"),
        ("/abs", L, "/etc/passwd"),
        // A target climbing above the root stays at the root, as in a chroot.
        ("/escape", L, "../../../../etc/passwd"),
        ("/loop1", L, "/loop2"),
        ("/loop2", L, "loop1"),
        ("/self", L, "self/x"),
        ("/dangling", L, "/nowhere"),
    ]);
    let ok: &[(&str, bool, &str)] = &[
        ("/", true, "/"),
        ("//etc/./passwd", true, "/etc/passwd"),
        ("/etc/../etc/passwd", true, "/etc/passwd"),
        ("/..", true, "/"),
        ("/lib/os-release", true, "/usr/lib/os-release"),
        ("/etc/os-release", true, "/usr/lib/os-release"),
        // Not following the last component keeps the link itself.
        ("/etc/os-release", false, "/etc/os-release"),
        ("/abs", true, "/etc/passwd"),
        ("/escape", true, "/etc/passwd"),
        ("/dangling", false, "/dangling"),
    ];
    for (path, follow, want) in ok {
        let got = fs.resolve(path.as_bytes(), *follow).unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            *want,
            "{path} follow={follow}"
        );
    }
    let bad: &[(&str, &str)] = &[
        ("etc/passwd", "guest.fs.not_absolute"),
        ("/loop1", "guest.fs.symlink_loop"),
        ("/self", "guest.fs.symlink_loop"),
        ("/dangling", "guest.fs.not_found"),
        ("/etc/passwd/x", "guest.fs.not_a_directory"),
        ("/nope/x", "guest.fs.not_found"),
    ];
    for (path, code) in bad {
        let e = fs.resolve(path.as_bytes(), true).unwrap_err();
        assert_eq!(e.code(), *code, "{path}: {e}");
    }
    let long = format!("/{}", "a/".repeat(3000));
    assert_eq!(
        fs.resolve(long.as_bytes(), true).unwrap_err().code(),
        "guest.fs.path_too_long"
    );
}
