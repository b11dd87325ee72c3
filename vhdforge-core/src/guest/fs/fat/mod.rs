//! FAT12/16/32, read-only (`docs/guest-filesystems.md` §5): the EFI system partition
//! (`EFI/*/grub.cfg`), and old or small data volumes.
//!
//! [`bpb`] checks the geometry, [`dir`] decodes directory entries and long names; this file
//! follows cluster chains and serves the [`FileSystem`] trait. FAT has no owners, modes or
//! links: every entry is owned by uid/gid 0, directories are `0o755` and files `0o644`
//! (`0o555`/`0o444` with the read-only attribute), which is what Linux shows when mounted
//! with `uid=0,gid=0,fmask=0133,dmask=0022`. Lookup is case-insensitive, as on Windows.
//!
//! Damage never loops or allocates without bound: a chain is followed at most as far as the
//! file's size needs (a directory at most 65 536 entries, the format's limit), a chain that
//! ends early, leaves the data area or reaches a free cluster is an error naming it.

mod bpb;
mod dir;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::volume::{ReadRange, Volume};
use super::{show, DirEntry, FileId, FileReader, FileSystem, FileType, FsKind, Stat, Timestamp};
use crate::error::{Error, ErrorKind, Result};
use bpb::{FatType, Geometry};
use dir::{Decoder, Entry, Step, ENTRY_BYTES};

/// A directory holds at most 65 536 entries (2 MiB), the FAT specification's limit.
const MAX_DIR_BYTES: u64 = 65_536 * ENTRY_BYTES as u64;
/// The FAT is read in pieces of this size, one cached (chains are mostly sequential).
const FAT_CHUNK_BYTES: u64 = 64 << 10;

fn corrupt(message: String) -> Error {
    Error::new(ErrorKind::Corrupt, "guest.fs.fat_corrupt", message)
}

/// An opened FAT file system.
pub struct FatFs {
    vol: Volume,
    geo: Geometry,
    kind: FsKind,
    /// One cached piece of the first FAT: (piece index, bytes).
    fat_cache: Mutex<Option<(u64, Vec<u8>)>>,
    /// The last directory read, by its canonical path, for the lookups `ls` makes after a
    /// listing: entries and a case-folded name index.
    dir_cache: Mutex<Option<(Vec<u8>, Arc<Listing>)>>,
}

impl std::fmt::Debug for FatFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FatFs({:?}, {:?})", self.geo.fat_type, self.vol)
    }
}

/// A directory's entries, with a case-insensitive index.
struct Listing {
    entries: Vec<Entry>,
    by_folded: HashMap<String, usize>,
}

/// Where a directory's entries are: the fixed FAT12/16 root region, or a cluster chain.
#[derive(Clone, Copy)]
enum DirLoc {
    RootRegion(u64, u64),
    Chain(u32),
}

fn fold(name: &str) -> String {
    name.to_lowercase()
}

impl FatFs {
    /// Check the boot sector of the FAT file system on `volume`.
    pub fn open(volume: Volume) -> Result<FatFs> {
        let mut bs = [0u8; 512];
        if volume.len() < 512 {
            return Err(corrupt(format!(
                "the volume has {} bytes, too small for a FAT boot sector",
                volume.len()
            )));
        }
        volume.read_at(&mut bs, 0)?;
        let geo = Geometry::parse(&bs, volume.len())?;
        let kind = match geo.fat_type {
            FatType::Fat12 => FsKind::Fat12,
            FatType::Fat16 => FsKind::Fat16,
            FatType::Fat32 => FsKind::Fat32,
        };
        Ok(FatFs {
            vol: volume,
            geo,
            kind,
            fat_cache: Mutex::new(None),
            dir_cache: Mutex::new(None),
        })
    }

    /// One byte of the first FAT.
    fn fat_byte(&self, at: u64) -> Result<u8> {
        let chunk = at / FAT_CHUNK_BYTES;
        let mut cache = self
            .fat_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.as_ref().is_none_or(|(c, _)| *c != chunk) {
            let start = chunk * FAT_CHUNK_BYTES;
            let len = FAT_CHUNK_BYTES.min(self.geo.fat_bytes - start);
            let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
            self.vol.read_at(&mut buf, self.geo.fat_offset + start)?;
            *cache = Some((chunk, buf));
        }
        let (_, buf) = cache.as_ref().expect("filled above");
        Ok(buf[usize::try_from(at % FAT_CHUNK_BYTES).unwrap_or(0)])
    }

    /// The FAT entry of data cluster `c` (checked to be one), normalized: `None` at the end
    /// of a chain, else the next cluster, checked.
    fn next(&self, c: u32) -> Result<Option<u32>> {
        let c64 = u64::from(c);
        let (raw, end_min, bad) = match self.geo.fat_type {
            FatType::Fat12 => {
                let at = c64 + c64 / 2;
                let v = u32::from(self.fat_byte(at)?) | (u32::from(self.fat_byte(at + 1)?) << 8);
                let v = if c & 1 == 1 { v >> 4 } else { v & 0xFFF };
                (v, 0xFF8, 0xFF7)
            }
            FatType::Fat16 => {
                let at = c64 * 2;
                let v = u32::from(self.fat_byte(at)?) | (u32::from(self.fat_byte(at + 1)?) << 8);
                (v, 0xFFF8, 0xFFF7)
            }
            FatType::Fat32 => {
                let at = c64 * 4;
                let mut v = 0u32;
                for i in 0..4 {
                    v |= u32::from(self.fat_byte(at + i)?) << (8 * i);
                }
                (v & 0x0FFF_FFFF, 0x0FFF_FFF8, 0x0FFF_FFF7)
            }
        };
        if raw >= end_min {
            return Ok(None);
        }
        if raw == bad {
            return Err(corrupt(format!(
                "cluster {c} leads to a cluster marked bad: the data there is lost"
            )));
        }
        if !self.geo.is_data_cluster(raw) {
            return Err(corrupt(format!(
                "the FAT entry of cluster {c} is {raw:#x}, which is {}: the chain is broken (`fsck.fat -n` shows it)",
                if raw == 0 { "a free cluster" } else { "outside the data area" }
            )));
        }
        Ok(Some(raw))
    }

    fn check_cluster(&self, c: u32, what: &[u8]) -> Result<()> {
        if self.geo.is_data_cluster(c) {
            Ok(())
        } else {
            Err(corrupt(format!(
                "{} starts at cluster {c}; valid clusters are 2 to {}",
                show(what),
                self.geo.cluster_count + 1
            )))
        }
    }

    /// Read a directory's raw entries, bounded by the format's 65 536-entry limit.
    fn read_dir(&self, loc: DirLoc, path: &[u8]) -> Result<Listing> {
        let mut entries = Vec::new();
        let mut decoder = Decoder::default();
        let mut buf = vec![0u8; usize::try_from(self.geo.cluster_bytes).unwrap_or(0)];
        let mut total = 0u64;
        let mut each = |bytes: &[u8], entries: &mut Vec<Entry>| -> bool {
            for e in bytes.chunks_exact(ENTRY_BYTES) {
                match decoder.step(e) {
                    Step::End => return false,
                    Step::Skip => {}
                    Step::Entry(x) => entries.push(x),
                }
            }
            true
        };
        match loc {
            DirLoc::RootRegion(off, len) => {
                let mut region = vec![0u8; usize::try_from(len).unwrap_or(0)];
                self.vol.read_at(&mut region, off)?;
                each(&region, &mut entries);
            }
            DirLoc::Chain(first) => {
                self.check_cluster(first, path)?;
                let mut c = first;
                loop {
                    total += self.geo.cluster_bytes;
                    if total > MAX_DIR_BYTES + self.geo.cluster_bytes {
                        return Err(corrupt(format!(
                            "the directory {} goes on past {MAX_DIR_BYTES} bytes (65 536 entries, FAT's limit): its cluster chain loops or is damaged",
                            show(path)
                        )));
                    }
                    self.vol.read_at(&mut buf, self.geo.cluster_offset(c))?;
                    if !each(&buf, &mut entries) {
                        break;
                    }
                    match self.next(c)? {
                        Some(n) => c = n,
                        None => break,
                    }
                }
            }
        }
        let mut by_folded = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            // The first of two names that fold alike wins, as a lookup on Windows would.
            by_folded.entry(fold(&e.name)).or_insert(i);
        }
        Ok(Listing { entries, by_folded })
    }

    fn root_loc(&self) -> DirLoc {
        match self.geo.root_region {
            Some((off, len)) => DirLoc::RootRegion(off, len),
            None => DirLoc::Chain(self.geo.root_cluster),
        }
    }

    /// The listing of the directory at canonical `path` (cached: the last one).
    fn listing(&self, path: &[u8]) -> Result<Arc<Listing>> {
        {
            let cache = self
                .dir_cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((p, l)) = cache.as_ref() {
                if p == path {
                    return Ok(Arc::clone(l));
                }
            }
        }
        let loc = if path == b"/" {
            self.root_loc()
        } else {
            let e = self.lookup(path)?;
            if !e.is_dir {
                return Err(not_a_directory(path));
            }
            if e.first_cluster == 0 {
                // A ".." entry pointing at a FAT32 root stores 0; other directories never do.
                return Err(corrupt(format!(
                    "the directory {} has no first cluster",
                    show(path)
                )));
            }
            DirLoc::Chain(e.first_cluster)
        };
        let l = Arc::new(self.read_dir(loc, path)?);
        *self
            .dir_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((path.to_vec(), Arc::clone(&l)));
        Ok(l)
    }

    /// The entry at canonical `path` (not the root).
    fn lookup(&self, path: &[u8]) -> Result<Entry> {
        let split = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
        let parent: &[u8] = if split == 0 { b"/" } else { &path[..split] };
        let name = &path[split + 1..];
        let Ok(name) = std::str::from_utf8(name) else {
            return Err(super::not_found(path));
        };
        let l = self.listing(parent)?;
        match l.by_folded.get(&fold(name)) {
            Some(&i) => Ok(l.entries[i].clone()),
            None => Err(super::not_found(path)),
        }
    }

    /// The size Linux reports for a directory: its clusters × the cluster size.
    fn dir_size(&self, first: u32) -> Result<u64> {
        if !self.geo.is_data_cluster(first) {
            return Ok(0);
        }
        let mut n = 1u64;
        let mut c = first;
        while let Some(next) = self.next(c)? {
            n += 1;
            if n * self.geo.cluster_bytes > MAX_DIR_BYTES + self.geo.cluster_bytes {
                return Err(corrupt(format!(
                    "a directory's cluster chain from cluster {first} goes on past FAT's 65 536-entry limit: it loops or is damaged"
                )));
            }
            c = next;
        }
        Ok(n * self.geo.cluster_bytes)
    }
}

fn not_a_directory(path: &[u8]) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "guest.fs.not_a_directory",
        format!("{} is not a directory", show(path)),
    )
}

impl FileSystem for FatFs {
    fn kind(&self) -> FsKind {
        self.kind
    }

    fn stat_resolved(&self, path: &[u8]) -> Result<Stat> {
        let zero = Timestamp {
            seconds: 0,
            nanoseconds: 0,
        };
        if path == b"/" {
            let size = match self.geo.root_region {
                Some((_, len)) => len,
                None => self.dir_size(self.geo.root_cluster)?,
            };
            return Ok(Stat {
                file_type: FileType::Directory,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size,
                mtime: zero,
                link_target: None,
            });
        }
        let e = self.lookup(path)?;
        let (file_type, size, mode) = if e.is_dir {
            (FileType::Directory, self.dir_size(e.first_cluster)?, 0o755)
        } else {
            (FileType::Regular, u64::from(e.size), 0o644)
        };
        Ok(Stat {
            file_type,
            mode: if e.read_only { mode & !0o222 } else { mode },
            uid: 0,
            gid: 0,
            size,
            mtime: Timestamp {
                seconds: dir::unix_seconds(e.mdate, e.mtime),
                nanoseconds: 0,
            },
            link_target: None,
        })
    }

    fn list_resolved(&self, path: &[u8], f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        let l = self.listing(path)?;
        for e in &l.entries {
            let keep = f(DirEntry {
                name: e.name.as_bytes().to_vec(),
                file_type: if e.is_dir {
                    FileType::Directory
                } else {
                    FileType::Regular
                },
            });
            if !keep {
                break;
            }
        }
        Ok(())
    }

    /// FAT has no inode numbers; a directory's first cluster is its identity (no two
    /// directories share one on an undamaged volume, and a loop back to an ancestor on a
    /// damaged one names the ancestor's cluster). Cluster 0 means the root, as it does in a
    /// `..` entry. An empty file has no cluster, so no identity.
    fn file_id_resolved(&self, path: &[u8]) -> Result<Option<FileId>> {
        let root = FileId {
            volume: 0,
            number: u64::from(self.geo.root_cluster),
        };
        if path.iter().all(|&b| b == b'/') {
            return Ok(Some(root));
        }
        let e = self.lookup(path)?;
        Ok(match e.first_cluster {
            0 if e.is_dir => Some(root),
            0 => None,
            c => Some(FileId {
                volume: 0,
                number: u64::from(c),
            }),
        })
    }

    fn open_resolved(&self, path: &[u8]) -> Result<Box<dyn FileReader + '_>> {
        if path == b"/" {
            return Err(wrong_type(path));
        }
        let e = self.lookup(path)?;
        if e.is_dir {
            return Err(wrong_type(path));
        }
        if e.size > 0 {
            self.check_cluster(e.first_cluster, path)?;
        }
        Ok(Box::new(FatFile {
            fs: self,
            path: path.to_vec(),
            first: e.first_cluster,
            size: u64::from(e.size),
            pos: 0,
            at: None,
        }))
    }
}

fn wrong_type(path: &[u8]) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "guest.fs.wrong_type",
        format!("{} is a directory, not a regular file", show(path)),
    )
}

/// A regular file: its chain is followed as it is read, never further than its size needs.
struct FatFile<'a> {
    fs: &'a FatFs,
    path: Vec<u8>,
    first: u32,
    size: u64,
    pos: u64,
    /// (index of the cluster in the chain, cluster number) last reached.
    at: Option<(u64, u32)>,
}

impl FatFile<'_> {
    /// The cluster holding chain index `want`, walking forward from the last one reached
    /// (or from the start when seeking back).
    fn cluster(&mut self, want: u64) -> Result<u32> {
        let (mut i, mut c) = match self.at {
            Some((i, c)) if i <= want => (i, c),
            _ => (0, self.first),
        };
        while i < want {
            match self.fs.next(c)? {
                Some(n) => c = n,
                None => {
                    return Err(corrupt(format!(
                        "{} is {} bytes but its cluster chain ends after {} clusters of {} bytes: the file system is damaged (`fsck.fat -n` shows it)",
                        show(&self.path),
                        self.size,
                        i + 1,
                        self.fs.geo.cluster_bytes
                    )))
                }
            }
            i += 1;
        }
        self.at = Some((i, c));
        Ok(c)
    }
}

impl FileReader for FatFile<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let cs = self.fs.geo.cluster_bytes;
        let mut done = 0usize;
        while done < buf.len() && self.pos < self.size {
            let c = self.cluster(self.pos / cs)?;
            let within = self.pos % cs;
            let n = (cs - within)
                .min(self.size - self.pos)
                .min((buf.len() - done) as u64);
            let n_usize = usize::try_from(n).unwrap_or(0);
            self.fs.vol.read_at(
                &mut buf[done..done + n_usize],
                self.fs.geo.cluster_offset(c) + within,
            )?;
            done += n_usize;
            self.pos += n;
        }
        Ok(done)
    }

    fn seek(&mut self, offset: u64) -> Result<()> {
        self.pos = offset.min(self.size);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
