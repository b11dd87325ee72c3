//! [`GuestTree`]: several file systems of one guest seen as the guest sees them — the root
//! with `/boot`, `/boot/efi` and others mounted on it — so a check can read `/boot/grub2/grub.cfg`
//! without knowing that `/boot` is its own partition.
//!
//! It is a [`FileSystem`] itself: path resolution (written once, in `fs/mod.rs`) walks one
//! component at a time through `stat_resolved`, so a path or a symlink crosses a mount point
//! exactly as it does in the kernel, and an absolute symlink target starts again at the guest's
//! root rather than at the root of the volume that holds the link.

use crate::error::Result;
use crate::guest::fs::{DirEntry, FileId, FileReader, FileSystem, FsKind, Stat};

/// A root file system with others mounted on it.
pub struct GuestTree {
    /// (mount point without a trailing slash, `/` for the root; file system), longest first.
    mounts: Vec<(Vec<u8>, Box<dyn FileSystem>)>,
}

impl std::fmt::Debug for GuestTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let points: Vec<_> = self
            .mounts
            .iter()
            .map(|(p, fs)| format!("{} ({})", String::from_utf8_lossy(p), fs.kind()))
            .collect();
        write!(f, "GuestTree[{}]", points.join(", "))
    }
}

impl GuestTree {
    /// A tree holding only `root`.
    pub fn new(root: Box<dyn FileSystem>) -> GuestTree {
        GuestTree {
            mounts: vec![(b"/".to_vec(), root)],
        }
    }

    /// Mount `fs` at the absolute path `at` (later mounts at the same point hide earlier
    /// ones, as in the kernel). The mount point need not exist in the file system below: a
    /// guest's fstab is the authority, and a missing directory is the check's business.
    pub fn mount(&mut self, at: &[u8], fs: Box<dyn FileSystem>) {
        let mut point: Vec<u8> = at.to_vec();
        while point.len() > 1 && point.last() == Some(&b'/') {
            point.pop();
        }
        if point.first() != Some(&b'/') {
            point.insert(0, b'/');
        }
        // Insert before any mount of equal or shorter length, so the newest of equal points
        // is found first and longer (deeper) points stay ahead of shorter ones.
        let at = self
            .mounts
            .iter()
            .position(|(p, _)| p.len() <= point.len())
            .unwrap_or(self.mounts.len());
        self.mounts.insert(at, (point, fs));
    }

    /// The mount points, deepest first.
    pub fn mount_points(&self) -> impl Iterator<Item = &[u8]> {
        self.mounts.iter().map(|(p, _)| p.as_slice())
    }

    /// Which file system holds the resolved path `path`, and the path inside it.
    fn route(&self, path: &[u8]) -> (&dyn FileSystem, Vec<u8>) {
        let (_, fs, inner) = self.route_indexed(path);
        (fs, inner)
    }

    /// [`route`](Self::route) with the index of the mount, which tells file systems apart
    /// in a [`FileId`].
    fn route_indexed(&self, path: &[u8]) -> (usize, &dyn FileSystem, Vec<u8>) {
        for (i, (point, fs)) in self.mounts.iter().enumerate() {
            if point.as_slice() == b"/" {
                return (i, fs.as_ref(), path.to_vec());
            }
            if path == point.as_slice() {
                return (i, fs.as_ref(), b"/".to_vec());
            }
            if path.starts_with(point) && path.get(point.len()) == Some(&b'/') {
                return (i, fs.as_ref(), path[point.len()..].to_vec());
            }
        }
        // The root is always there; `new` puts it in and nothing removes it.
        let (_, root) = self.mounts.last().expect("a tree always has its root");
        (self.mounts.len() - 1, root.as_ref(), path.to_vec())
    }
}

impl FileSystem for GuestTree {
    fn kind(&self) -> FsKind {
        self.mounts
            .last()
            .map_or(FsKind::Unknown, |(_, fs)| fs.kind())
    }

    fn stat_resolved(&self, path: &[u8]) -> Result<Stat> {
        let (fs, inner) = self.route(path);
        fs.stat_resolved(&inner)
    }

    fn list_resolved(&self, path: &[u8], f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        let (fs, inner) = self.route(path);
        fs.list_resolved(&inner, f)
    }

    fn open_resolved(&self, path: &[u8]) -> Result<Box<dyn FileReader + '_>> {
        let (fs, inner) = self.route(path);
        fs.open_resolved(&inner)
    }

    // `list_stat_resolved` keeps the provided form: each child is stat'ed through `route`,
    // so an entry that is a mount point shows the mounted root, as in the kernel.

    fn file_id_resolved(&self, path: &[u8]) -> Result<Option<FileId>> {
        let (i, fs, inner) = self.route_indexed(path);
        Ok(fs.file_id_resolved(&inner)?.map(|id| FileId {
            volume: u32::try_from(i).unwrap_or(u32::MAX),
            ..id
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::fs::{FileType, Timestamp};

    /// A file system with one directory `/` holding the given files, each whose content is
    /// its own tag — enough to see which mount answered.
    /// (path, type, symlink target).
    type FakeFile = (&'static [u8], FileType, Option<&'static [u8]>);

    struct Fake {
        tag: &'static str,
        files: Vec<FakeFile>,
    }

    impl FileSystem for Fake {
        fn kind(&self) -> FsKind {
            FsKind::Ext
        }
        fn stat_resolved(&self, path: &[u8]) -> Result<Stat> {
            let (ft, target) = if path == b"/" {
                (FileType::Directory, None)
            } else {
                let f = self
                    .files
                    .iter()
                    .find(|f| f.0 == path)
                    .ok_or_else(|| crate::guest::fs::not_found(path))?;
                (f.1, f.2.map(<[u8]>::to_vec))
            };
            Ok(Stat {
                file_type: ft,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: Timestamp {
                    seconds: 0,
                    nanoseconds: 0,
                },
                link_target: target,
            })
        }
        fn list_resolved(&self, _: &[u8], _: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
            Ok(())
        }
        fn open_resolved(&self, _: &[u8]) -> Result<Box<dyn FileReader + '_>> {
            Ok(Box::new(crate::guest::fs::MemFile(
                self.tag.as_bytes().to_vec(),
                0,
            )))
        }
    }

    fn read(t: &GuestTree, p: &[u8]) -> String {
        let mut r = t.open(p).unwrap();
        let mut b = [0u8; 16];
        let n = r.read(&mut b).unwrap();
        String::from_utf8(b[..n].to_vec()).unwrap()
    }

    #[test]
    fn paths_and_symlinks_cross_mount_points() {
        let root = Fake {
            tag: "root",
            files: vec![
                (b"/boot", FileType::Directory, None),
                (b"/grub.cfg", FileType::Symlink, Some(b"/boot/grub.cfg")),
                (b"/etc", FileType::Directory, None),
            ],
        };
        let boot = Fake {
            tag: "boot",
            files: vec![
                (b"/grub.cfg", FileType::Regular, None),
                (b"/efi", FileType::Directory, None),
                // An absolute target inside /boot means the guest's root, not boot's.
                (b"/up", FileType::Symlink, Some(b"/etc")),
            ],
        };
        let esp = Fake {
            tag: "esp",
            files: vec![(b"/grub.cfg", FileType::Regular, None)],
        };
        let mut t = GuestTree::new(Box::new(root));
        // Mounted out of order: the deeper point still wins for its paths.
        t.mount(b"/boot/efi/", Box::new(esp));
        t.mount(b"/boot", Box::new(boot));
        assert_eq!(read(&t, b"/boot/grub.cfg"), "boot");
        assert_eq!(read(&t, b"/boot/efi/grub.cfg"), "esp");
        assert_eq!(read(&t, b"/grub.cfg"), "boot");
        assert_eq!(t.resolve(b"/boot/up", true).unwrap(), b"/etc");
        assert_eq!(t.stat(b"/boot/efi").unwrap().file_type, FileType::Directory);
        assert!(t.stat(b"/bootx/grub.cfg").is_err());
        let points: Vec<_> = t.mount_points().collect();
        assert_eq!(points, [&b"/boot/efi"[..], b"/boot", b"/"]);
    }
}
