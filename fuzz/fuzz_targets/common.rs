// Shared bodies of the fuzz targets. Any panic, hang or huge allocation is a bug; errors
// are fine. Not every target uses every helper.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use vhdforge_core::guest::fs::{
    DirEntry, FileReader, FileSystem, FileType, FsKind, Stat, Timestamp, Volume,
};
use vhdforge_core::image::DiskImage;

/// Open the bytes, then exercise the read and map paths a little.
pub fn exercise(data: Vec<u8>) {
    let Ok(img) = vhdforge_core::open_bytes(data) else {
        return;
    };
    let size = img.info().virtual_size;
    let mut v = Vec::new();
    let _ = img.extents(0, size.min(1 << 40), &mut v);
    let mut buf = vec![0u8; 64 << 10];
    for off in [0, size / 2, size.saturating_sub(buf.len() as u64)] {
        let n = (size - off.min(size)).min(buf.len() as u64) as usize;
        let _ = img.read_at(&mut buf[..n], off);
    }
}

/// The bytes as an in-memory disk image, as the parsers see a real one.
pub fn image(data: &[u8]) -> Option<Arc<dyn DiskImage>> {
    vhdforge_core::open_bytes(data.to_vec()).ok().map(Arc::from)
}

/// The bytes as a whole-disk volume.
pub fn volume(data: &[u8]) -> Option<Volume> {
    image(data).map(Volume::whole)
}

/// Walk `fs` from the root: list directories (bounded depth and count), stat every entry,
/// resolve links, read the start and end of every regular file. What the preflight checks
/// and `ls`/`cat` do with a guest volume.
pub fn walk(fs: &dyn FileSystem) {
    let mut budget = 2000usize;
    let mut stack: Vec<(Vec<u8>, usize)> = vec![(b"/".to_vec(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let mut names = Vec::new();
        let _ = fs.list(&dir, &mut |e| {
            names.push(e);
            names.len() < 256
        });
        for e in names {
            if budget == 0 {
                return;
            }
            budget -= 1;
            let path = if dir == b"/" {
                [b"/".as_slice(), &e.name].concat()
            } else {
                [dir.as_slice(), b"/", &e.name].concat()
            };
            let Ok(st) = fs.lstat(&path) else { continue };
            match st.file_type {
                FileType::Directory if depth < 8 => stack.push((path, depth + 1)),
                FileType::Regular => read_some(fs, &path),
                FileType::Symlink => {
                    let _ = fs.resolve(&path, true);
                    let _ = fs.stat(&path);
                }
                _ => {}
            }
        }
    }
}

fn read_some(fs: &dyn FileSystem, path: &[u8]) {
    let Ok(mut f) = fs.open(path) else { return };
    let size = f.size();
    let mut buf = [0u8; 4096];
    for _ in 0..4 {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if f.seek(size.saturating_sub(4096)).is_ok() {
        let _ = f.read(&mut buf);
    }
}

/// A file read from memory, as a guest file would be read through a file system.
pub struct MemFile {
    data: Vec<u8>,
    pos: usize,
}

impl MemFile {
    pub fn new(data: &[u8]) -> MemFile {
        MemFile {
            data: data.to_vec(),
            pos: 0,
        }
    }
}

impl FileReader for MemFile {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read(&mut self, buf: &mut [u8]) -> vhdforge_core::Result<usize> {
        let n = buf.len().min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
    fn seek(&mut self, offset: u64) -> vhdforge_core::Result<()> {
        self.pos = offset.min(self.data.len() as u64) as usize;
        Ok(())
    }
}

/// A file system of a few regular files held in memory (directories implied by the
/// paths), for the boot-configuration readers, which take a guest file system.
pub struct MemFs(pub BTreeMap<Vec<u8>, Vec<u8>>);

impl MemFs {
    fn is_dir(&self, path: &[u8]) -> bool {
        path == b"/"
            || self
                .0
                .keys()
                .any(|k| k.starts_with(path) && k.get(path.len()) == Some(&b'/'))
    }
}

fn not_found() -> vhdforge_core::Error {
    vhdforge_core::Error::new(
        vhdforge_core::ErrorKind::InvalidInput,
        vhdforge_core::Code::new("guest.fs.not_found"),
        "no such file",
    )
}

impl FileSystem for MemFs {
    fn kind(&self) -> FsKind {
        FsKind::Ext
    }
    fn stat_resolved(&self, path: &[u8]) -> vhdforge_core::Result<Stat> {
        let (file_type, size) = match self.0.get(path) {
            Some(d) => (FileType::Regular, d.len() as u64),
            None if self.is_dir(path) => (FileType::Directory, 0),
            None => return Err(not_found()),
        };
        Ok(Stat {
            file_type,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime: Timestamp {
                seconds: 0,
                nanoseconds: 0,
            },
            link_target: None,
        })
    }
    fn list_resolved(
        &self,
        path: &[u8],
        f: &mut dyn FnMut(DirEntry) -> bool,
    ) -> vhdforge_core::Result<()> {
        if !self.is_dir(path) {
            return Err(not_found());
        }
        let prefix = if path == b"/" {
            b"/".to_vec()
        } else {
            [path, b"/"].concat()
        };
        let mut seen = std::collections::BTreeSet::new();
        for k in self.0.keys().filter(|k| k.starts_with(&prefix)) {
            let rest = &k[prefix.len()..];
            let (name, file_type) = match rest.iter().position(|&b| b == b'/') {
                Some(i) => (&rest[..i], FileType::Directory),
                None => (rest, FileType::Regular),
            };
            if seen.insert(name.to_vec())
                && !f(DirEntry {
                    name: name.to_vec(),
                    file_type,
                })
            {
                break;
            }
        }
        Ok(())
    }
    fn open_resolved(&self, path: &[u8]) -> vhdforge_core::Result<Box<dyn FileReader + '_>> {
        self.0
            .get(path)
            .map(|d| Box::new(MemFile::new(d)) as Box<dyn FileReader>)
            .ok_or_else(not_found)
    }
}

/// Split `data` into up to `n` pieces at the separator byte 0xFF (the fuzzer learns it),
/// so one input can fill several files.
pub fn pieces(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = data.splitn(n, |&b| b == 0xFF).collect();
    v.resize(n, &[]);
    v
}
