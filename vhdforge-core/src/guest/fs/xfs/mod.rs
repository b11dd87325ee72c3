//! XFS v4 and v5, read-only, written for vhdforge (`docs/guest-filesystems.md` §4). One file
//! per on-disk structure: [`superblock`], [`log`] (is it clean?), [`inode`], [`bmap`]
//! (extent records and the bmbt), [`dir`] (short-form and data blocks), [`symlink`], and
//! [`file`] (streaming reads). This file ties them to the [`FileSystem`] trait.
//!
//! Every address comes from the disk, so every one is checked against the geometry before
//! it is read; no allocation is sized by a disk field without a cap; a log that is not
//! clean is refused, since the metadata on disk may then be stale and no replay is done.

mod bmap;
mod dir;
mod file;
mod inode;
mod log;
mod superblock;
mod symlink;

use std::sync::{Arc, Mutex};

use super::volume::{ReadRange, Volume};
use super::{show, DirEntry, FileId, FileReader, FileSystem, FileType, FsKind, Stat};
use crate::error::{Error, ErrorKind, Result};
use crate::io::usize_from;
use bmap::Extent;
use dir::Entry;
use inode::Inode;
use superblock::Geometry;

pub(crate) fn corrupt(message: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        "guest.fs.xfs_corrupt",
        format!("XFS: {message}"),
    )
}

pub(crate) fn unsupported(message: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "guest.fs.xfs_unsupported",
        format!("XFS: {message}"),
    )
}

/// Memory the directory cache may hold (names plus per-entry overhead): a path lookup
/// visits every directory on the path, so caching only one would re-read a big directory
/// for every name in it when its parent is looked up in between.
const CACHE_MAX_BYTES: usize = 16 << 20;
/// Directories kept in the cache at most.
const CACHE_MAX_DIRS: usize = 64;

/// Recently listed directories, most recent last: (inode, entries, bytes held).
type DirCache = Vec<(u64, Arc<Vec<Entry>>, usize)>;

/// An opened XFS file system.
pub struct XfsFs {
    vol: Volume,
    geo: Geometry,
    /// The last directory listed for a lookup: walking a big directory once per name in it
    /// would be quadratic.
    dir_cache: Mutex<DirCache>,
}

impl std::fmt::Debug for XfsFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "XfsFs(v{}, {:?})", self.geo.version, self.vol)
    }
}

impl XfsFs {
    /// Check the superblock and the log of the XFS on `volume` and read its root inode.
    pub fn open(volume: Volume) -> Result<XfsFs> {
        let mut sector = vec![0u8; 512];
        if volume.len() < 512 {
            return Err(corrupt(format!(
                "the volume has {} bytes, too small for a superblock",
                volume.len()
            )));
        }
        volume.read_at(&mut sector, 0)?;
        // The CRC covers the whole sector, whose size the superblock states (≤ 32 KiB).
        let sect = u16::from_be_bytes([sector[102], sector[103]]);
        if sect.is_power_of_two() && sect > 512 && u64::from(sect) <= volume.len() {
            sector = vec![0u8; usize::from(sect)];
            volume.read_at(&mut sector, 0)?;
        }
        let geo = superblock::parse(&sector, volume.len())?;
        let fs = XfsFs {
            vol: volume,
            geo,
            dir_cache: Mutex::new(Vec::new()),
        };
        log::check_clean(&fs)?;
        let root = fs.inode(fs.geo.rootino)?;
        if root.file_type != FileType::Directory {
            return Err(corrupt(format!(
                "the root inode {} is a {:?}, not a directory",
                fs.geo.rootino, root.file_type
            )));
        }
        Ok(fs)
    }

    pub(crate) fn geo(&self) -> &Geometry {
        &self.geo
    }

    /// `count` blocks from fsblock `fsb` (`count` × block size is at most a directory block,
    /// 64 KiB, for every caller).
    pub(crate) fn read_fsblocks(&self, fsb: u64, count: u64, what: &str) -> Result<Vec<u8>> {
        let at = self.geo.fsblock_bytes(fsb, count, what)?;
        let mut buf = vec![0u8; usize_from(count * self.geo.block_bytes)];
        self.vol.read_at(&mut buf, at)?;
        Ok(buf)
    }

    /// Read bytes at a volume offset (callers checked it with the geometry).
    pub(crate) fn read_at(&self, buf: &mut [u8], at: u64) -> Result<()> {
        self.vol.read_at(buf, at)
    }

    pub(crate) fn inode(&self, ino: u64) -> Result<Inode> {
        let at = self.geo.inode_bytes_at(ino)?;
        let mut buf = vec![0u8; usize_from(self.geo.inode_bytes)];
        self.vol.read_at(&mut buf, at)?;
        inode::parse(&self.geo, ino, &buf)
    }

    /// Read `buf.len()` bytes at byte `offset` of a fork mapped by `ext`; holes and
    /// unwritten extents read as zeros.
    pub(crate) fn read_mapped(&self, ext: &[Extent], offset: u64, buf: &mut [u8]) -> Result<()> {
        let bs = self.geo.block_bytes;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let fb = pos / bs;
            let within = pos % bs;
            let (run_bytes, src) = if let Some(e) = bmap::find(ext, fb) {
                let left = (e.file_block + e.blocks - fb) * bs - within;
                let src = (!e.unwritten).then(|| {
                    self.geo
                        .fsblock_bytes(e.fsblock, e.blocks, "an extent")
                        .map(|b| b + (fb - e.file_block) * bs + within)
                });
                (left, src)
            } else {
                // A hole up to the next extent (or to the end of what is asked).
                let i = ext.partition_point(|e| e.file_block <= fb);
                let left = ext
                    .get(i)
                    .map_or(u64::MAX, |n| (n.file_block - fb) * bs - within);
                (left, None)
            };
            let n = usize::try_from(run_bytes)
                .unwrap_or(usize::MAX)
                .min(buf.len() - done);
            match src {
                Some(at) => self.vol.read_at(&mut buf[done..done + n], at?)?,
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// The inode number `name` has in directory `dir`. Directories are cached whole for
    /// repeated lookups when small enough; a bigger one is searched as a stream, so memory
    /// stays bounded whatever a directory holds.
    fn find_in(&self, dir: &Inode, name: &[u8]) -> Result<Option<u64>> {
        if let Ok(mut c) = self.dir_cache.lock() {
            if let Some(i) = c.iter().position(|(ino, _, _)| *ino == dir.ino) {
                let hit = c.remove(i);
                let found = hit.1.iter().find(|e| e.name == name).map(|e| e.ino);
                c.push(hit);
                return Ok(found);
            }
        }
        let mut all = Vec::new();
        let mut bytes = 0usize;
        let mut cacheable = true;
        let mut found = None;
        dir::for_each(self, dir, &mut |e| {
            if found.is_none() && e.name == name {
                found = Some(e.ino);
            }
            if cacheable {
                bytes += e.name.len() + std::mem::size_of::<Entry>();
                if bytes > CACHE_MAX_BYTES / 2 {
                    cacheable = false;
                    all = Vec::new();
                } else {
                    all.push(e);
                }
            }
            // Without a cache to fill, stop at the name.
            cacheable || found.is_none()
        })?;
        if cacheable {
            if let Ok(mut c) = self.dir_cache.lock() {
                c.push((dir.ino, Arc::new(all), bytes));
                while c.len() > CACHE_MAX_DIRS
                    || c.iter().map(|(_, _, b)| b).sum::<usize>() > CACHE_MAX_BYTES
                {
                    c.remove(0);
                }
            }
        }
        Ok(found)
    }

    /// The inode at a resolved path (no symlink but possibly the last component).
    fn lookup(&self, path: &[u8]) -> Result<Inode> {
        let mut cur = self.inode(self.geo.rootino)?;
        let mut walked = 0usize;
        for name in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            walked += 1 + name.len();
            if cur.file_type != FileType::Directory {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "guest.fs.not_a_directory",
                    format!(
                        "{} is not a directory",
                        show(&path[..walked - 1 - name.len()])
                    ),
                ));
            }
            let Some(ino) = self.find_in(&cur, name)? else {
                return Err(super::not_found(path));
            };
            cur = self.inode(ino)?;
        }
        Ok(cur)
    }
}

impl FileSystem for XfsFs {
    fn kind(&self) -> FsKind {
        FsKind::Xfs
    }

    fn stat_resolved(&self, path: &[u8]) -> Result<Stat> {
        let ino = self.lookup(path)?;
        self.stat_of(&ino)
    }

    /// Each entry's inode is read by the number in the entry, not by walking the child's
    /// path from the root again.
    fn list_stat_resolved(
        &self,
        path: &[u8],
        f: &mut dyn FnMut(&[u8], Result<Stat>) -> bool,
    ) -> Result<()> {
        let d = self.lookup(path)?;
        if d.file_type != FileType::Directory {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "guest.fs.not_a_directory",
                format!("{} is not a directory", show(path)),
            ));
        }
        dir::for_each(self, &d, &mut |e| {
            let st = self.inode(e.ino).and_then(|i| self.stat_of(&i));
            f(&e.name, st)
        })
    }

    fn file_id_resolved(&self, path: &[u8]) -> Result<Option<FileId>> {
        Ok(Some(FileId {
            volume: 0,
            number: self.lookup(path)?.ino,
        }))
    }

    fn list_resolved(&self, path: &[u8], f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        let d = self.lookup(path)?;
        if d.file_type != FileType::Directory {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "guest.fs.not_a_directory",
                format!("{} is not a directory", show(path)),
            ));
        }
        let mut failed = None;
        dir::for_each(self, &d, &mut |e| {
            let file_type = match e.file_type {
                Some(t) => t,
                // v4 without ftype: the type is only in the inode.
                None => match self.inode(e.ino) {
                    Ok(i) => i.file_type,
                    Err(err) => {
                        failed = Some(err);
                        return false;
                    }
                },
            };
            f(DirEntry {
                name: e.name,
                file_type,
            })
        })?;
        failed.map_or(Ok(()), Err)
    }

    fn open_resolved(&self, path: &[u8]) -> Result<Box<dyn FileReader + '_>> {
        let ino = self.lookup(path)?;
        if ino.file_type != FileType::Regular {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "guest.fs.wrong_type",
                format!(
                    "{} is a {:?}, not a regular file",
                    show(path),
                    ino.file_type
                ),
            ));
        }
        Ok(Box::new(file::XfsFile::new(self, &ino)?))
    }
}

impl XfsFs {
    fn stat_of(&self, ino: &Inode) -> Result<Stat> {
        let link_target = if ino.file_type == FileType::Symlink {
            Some(symlink::target(self, ino)?)
        } else {
            None
        };
        Ok(Stat {
            file_type: ino.file_type,
            mode: ino.mode,
            uid: ino.uid,
            gid: ino.gid,
            size: ino.size,
            mtime: ino.mtime,
            link_target,
        })
    }
}

#[cfg(test)]
mod tests;
