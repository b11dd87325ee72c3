//! ext2/3/4 through the `ext4-view` crate (read-only, journal replayed in memory, checksums
//! verified). This file adapts a [`Volume`] to its reader, checks the superblock fields that
//! size allocations before the crate sees them, bounds what the crate would read whole
//! (symlink targets), and maps its errors to ours (`docs/guest-filesystems.md` §2).

use ext4_view::{Ext4, Ext4Error, Ext4Read};

use super::ext4_inode::{FileMap, InodeWalk, Run};
use super::volume::{ReadRange, Volume};
use super::{
    child, show, DirEntry, FileId, FileReader, FileSystem, FileType, FsKind, Stat, Timestamp,
    MAX_PATH_BYTES,
};
use crate::error::{Error, ErrorKind, Result};
use crate::io::usize_from;

/// Superblock: 1024 bytes at byte 1024 of the volume.
const SB_OFFSET: u64 = 1024;
const SB_LEN: usize = 1024;
const MAGIC: u16 = 0xEF53;
/// Group-descriptor tables larger than this are refused: a 16 TiB file system with 4 KiB
/// blocks needs 8 MiB, so only a damaged superblock asks for more.
const MAX_DESCRIPTOR_TABLE_BYTES: u64 = 32 << 20;
/// `INCOMPAT_64BIT`: descriptors are `s_desc_size` bytes instead of 32.
const INCOMPAT_64BIT: u32 = 0x80;

pub(super) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(super) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(super) fn corrupt(message: String) -> Error {
    Error::new(ErrorKind::Corrupt, "guest.fs.ext4_corrupt", message)
}

/// The superblock fields that decide how much the crate allocates, and whether the file
/// system fits in its volume, checked before it is loaded.
fn precheck(vol: &Volume) -> Result<()> {
    let mut sb = [0u8; SB_LEN];
    if vol.len() < SB_OFFSET + SB_LEN as u64 {
        return Err(corrupt(format!(
            "the volume has {} bytes, too small for an ext superblock at byte 1024",
            vol.len()
        )));
    }
    vol.read_at(&mut sb, SB_OFFSET)?;
    let magic = le16(&sb, 0x38);
    if magic != MAGIC {
        return Err(corrupt(format!(
            "ext superblock magic is {magic:#06x}, expected 0xef53"
        )));
    }
    let log_block = le32(&sb, 0x18);
    if log_block > 6 {
        return Err(corrupt(format!(
            "s_log_block_size is {log_block}: blocks would be 1024 << {log_block} bytes; ext allows 1 KiB to 64 KiB (0 to 6)"
        )));
    }
    let block_size = 1024u64 << log_block;
    let incompat = le32(&sb, 0x60);
    let blocks = if incompat & INCOMPAT_64BIT != 0 {
        u64::from(le32(&sb, 0x04)) | (u64::from(le32(&sb, 0x150)) << 32)
    } else {
        u64::from(le32(&sb, 0x04))
    };
    let fs_bytes = blocks.saturating_mul(block_size);
    if fs_bytes > vol.len() {
        return Err(corrupt(format!(
            "the file system claims {blocks} blocks of {block_size} bytes ({fs_bytes} bytes) but its volume has {} bytes: the partition or image was truncated, or the superblock is damaged",
            vol.len()
        )));
    }
    let per_group = u64::from(le32(&sb, 0x20));
    // A group's block bitmap is one block, so a group holds at most 8 × block_size blocks.
    if per_group == 0 || per_group > 8 * block_size {
        return Err(corrupt(format!(
            "s_blocks_per_group is {per_group}; with {block_size}-byte blocks it must be 1 to {}",
            8 * block_size
        )));
    }
    let desc_size = if incompat & INCOMPAT_64BIT != 0 {
        u64::from(le16(&sb, 0xFE))
    } else {
        32
    };
    let groups = blocks.div_ceil(per_group);
    let table = groups.saturating_mul(desc_size.max(32));
    if table > MAX_DESCRIPTOR_TABLE_BYTES {
        return Err(corrupt(format!(
            "{groups} block groups of {desc_size}-byte descriptors need {table} bytes of tables, over the {MAX_DESCRIPTOR_TABLE_BYTES}-byte limit: the superblock is damaged"
        )));
    }
    Ok(())
}

/// Bytes fetched at once when the crate reads sequentially.
const READ_AHEAD_BYTES: usize = 1 << 20;

/// The crate reads through this: positional reads of the owned volume, with read-ahead.
///
/// `ext4-view` reads file data one block per call, so `cat` of a 1 GiB file would be 262 144
/// reads of 4 KiB through the image — a system call each on a raw disk, a BAT lookup each in
/// a VHDX. When a read starts where the previous one ended, the next [`READ_AHEAD_BYTES`]
/// are fetched in one call and later reads are copied from memory. Random reads (inode
/// tables, directory blocks during `ls -R`) go straight through, so metadata walks never pay
/// for bytes they do not use. The volume never changes under a reader, so the copy cannot go
/// stale.
struct Source {
    vol: Volume,
    /// Bytes read ahead, from volume offset `ahead_at`.
    ahead: Vec<u8>,
    ahead_at: u64,
    /// Where the previous read ended.
    next: u64,
}

impl Source {
    fn new(vol: Volume) -> Source {
        Source {
            vol,
            ahead: Vec::new(),
            ahead_at: 0,
            next: u64::MAX,
        }
    }

    fn read_through(&mut self, start_byte: u64, dst: &mut [u8]) -> Result<()> {
        let in_ahead = start_byte
            .checked_sub(self.ahead_at)
            .and_then(|off| usize::try_from(off).ok())
            .filter(|&off| {
                off.checked_add(dst.len())
                    .is_some_and(|end| end <= self.ahead.len())
            });
        let sequential = start_byte == self.next;
        self.next = start_byte.saturating_add(dst.len() as u64);
        if let Some(off) = in_ahead {
            dst.copy_from_slice(&self.ahead[off..off + dst.len()]);
            return Ok(());
        }
        let left = self.vol.len().saturating_sub(start_byte);
        if !sequential || dst.len() >= READ_AHEAD_BYTES || left < dst.len() as u64 {
            // Out-of-range reads reach the volume, which names the range in its error.
            return self.vol.read_at(dst, start_byte);
        }
        let len = usize::try_from(left.min(READ_AHEAD_BYTES as u64)).unwrap_or(READ_AHEAD_BYTES);
        self.ahead.resize(len, 0);
        if self.vol.read_at(&mut self.ahead, start_byte).is_err() {
            // The bytes after the block may be unreadable (a damaged VHDX block) while the
            // block itself is not: only the read asked for decides.
            self.ahead.clear();
            return self.vol.read_at(dst, start_byte);
        }
        self.ahead_at = start_byte;
        dst.copy_from_slice(&self.ahead[..dst.len()]);
        Ok(())
    }
}

impl Ext4Read for Source {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.read_through(start_byte, dst).map_err(Into::into)
    }
}

/// Our error for one of the crate's, keeping an I/O error of ours as it was.
fn map_err(e: Ext4Error, path: &[u8]) -> Error {
    let p = show(path);
    match e {
        Ext4Error::Io(inner) => match inner.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => Error::new(ErrorKind::Io, "guest.fs.io", format!("reading {p}: {other}")),
        },
        Ext4Error::NotFound => super::not_found(path),
        Ext4Error::NotADirectory => Error::new(
            ErrorKind::InvalidInput,
            "guest.fs.not_a_directory",
            format!("{p} is not a directory"),
        ),
        Ext4Error::IsADirectory | Ext4Error::IsASpecialFile | Ext4Error::NotASymlink => Error::new(
            ErrorKind::InvalidInput,
            "guest.fs.wrong_type",
            format!("{p} is not of the type this operation needs ({e})"),
        ),
        Ext4Error::TooManySymlinks => Error::new(
            ErrorKind::InvalidInput,
            "guest.fs.symlink_loop",
            format!("too many symbolic links resolving {p}"),
        ),
        Ext4Error::NotAbsolute | Ext4Error::MalformedPath | Ext4Error::PathTooLong => Error::new(
            ErrorKind::InvalidInput,
            "guest.fs.bad_path",
            format!("{p} is not a valid guest path ({e})"),
        ),
        Ext4Error::Encrypted => Error::new(
            ErrorKind::Unsupported,
            "guest.fs.encrypted",
            format!("{p} is encrypted (fscrypt); vhdforge cannot read it without the key"),
        ),
        Ext4Error::Incompatible(i) => Error::new(
            ErrorKind::Unsupported,
            "guest.fs.ext4_unsupported",
            format!("this ext file system uses a feature vhdforge cannot read: {i}"),
        ),
        Ext4Error::Corrupt(c) => corrupt(format!("reading {p}: the file system is damaged: {c}; `e2fsck -n` in the guest shows the damage")),
        other => corrupt(format!("reading {p}: {other}")),
    }
}

/// An opened ext2/3/4 file system.
pub struct Ext4Fs {
    fs: Ext4,
    /// Inode numbers, which the crate does not expose ([`FileSystem::file_id_resolved`]),
    /// and extent maps; `None` when its geometry check failed (the crate decides then).
    walk: Option<InodeWalk>,
}

impl std::fmt::Debug for Ext4Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ext4Fs({})", self.fs.uuid())
    }
}

impl Ext4Fs {
    /// Load the superblock, group descriptors and journal of the ext file system on `volume`.
    pub fn open(volume: Volume) -> Result<Ext4Fs> {
        precheck(&volume)?;
        let walk = InodeWalk::new(volume.clone()).ok();
        let fs = Ext4::load(Box::new(Source::new(volume))).map_err(|e| map_err(e, b"/"))?;
        Ok(Ext4Fs { fs, walk })
    }
}

fn file_type(t: ext4_view::FileType) -> FileType {
    match t {
        ext4_view::FileType::BlockDevice => FileType::BlockDevice,
        ext4_view::FileType::CharacterDevice => FileType::CharDevice,
        ext4_view::FileType::Directory => FileType::Directory,
        ext4_view::FileType::Fifo => FileType::Fifo,
        ext4_view::FileType::Socket => FileType::Socket,
        ext4_view::FileType::Symlink => FileType::Symlink,
        ext4_view::FileType::Regular => FileType::Regular,
    }
}

impl FileSystem for Ext4Fs {
    fn kind(&self) -> FsKind {
        FsKind::Ext
    }

    fn stat_resolved(&self, path: &[u8]) -> Result<Stat> {
        let md = self
            .fs
            .symlink_metadata(path)
            .map_err(|e| map_err(e, path))?;
        self.stat_of(path, &md)
    }

    fn list_resolved(&self, path: &[u8], f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        let entries = self.fs.read_dir(path).map_err(|e| map_err(e, path))?;
        for entry in entries {
            let entry = entry.map_err(|e| map_err(e, path))?;
            let name = entry.file_name();
            let name: &[u8] = name.as_ref();
            if name == b"." || name == b".." {
                continue;
            }
            let ft = entry.file_type().map_err(|e| map_err(e, path))?;
            if !f(DirEntry {
                name: name.to_vec(),
                file_type: file_type(ft),
            }) {
                break;
            }
        }
        Ok(())
    }

    /// Each entry's inode is read through the entry (one cached inode-table read) rather
    /// than by walking the child's path from the root again.
    fn list_stat_resolved(
        &self,
        path: &[u8],
        f: &mut dyn FnMut(&[u8], Result<Stat>) -> bool,
    ) -> Result<()> {
        let entries = self.fs.read_dir(path).map_err(|e| map_err(e, path))?;
        for entry in entries {
            let entry = entry.map_err(|e| map_err(e, path))?;
            let name = entry.file_name();
            let name: &[u8] = name.as_ref();
            if name == b"." || name == b".." {
                continue;
            }
            let st = entry
                .metadata()
                .map_err(|e| map_err(e, &child(path, name)))
                .and_then(|md| self.stat_of(&child(path, name), &md));
            if !f(name, st) {
                break;
            }
        }
        Ok(())
    }

    /// The crate opens the file (it checks the type, encryption and the inode's checksum);
    /// its data is then read through this module's own extent map when that is safe
    /// ([`InodeWalk::file_runs`]): the crate hands data out one block per call, through its
    /// block cache, which made `cat` of 1 GiB run at 0.4× the kernel's speed.
    fn open_resolved(&self, path: &[u8]) -> Result<Box<dyn FileReader + '_>> {
        let file = self.fs.open(path).map_err(|e| map_err(e, path))?;
        if let Some(fast) = self.extent_reader(path, file.metadata())? {
            return Ok(Box::new(fast));
        }
        Ok(Box::new(Ext4File {
            file,
            path: path.to_vec(),
        }))
    }

    /// The inode number, from this module's own walk of the directories (see
    /// `ext4_inode.rs`). A walk that fails where the crate succeeded (a directory only in
    /// the journal, inline data) gives no identity rather than an error: the listing the
    /// crate can make is still right, it only loses its cycle check there.
    fn file_id_resolved(&self, path: &[u8]) -> Result<Option<FileId>> {
        let Some(walk) = &self.walk else {
            return Ok(None);
        };
        Ok(walk.lookup(path, false).ok().flatten().map(|ino| FileId {
            volume: 0,
            number: u64::from(ino),
        }))
    }
}

impl Ext4Fs {
    /// A reader over the file's extents, or `None` to read through the crate (any doubt:
    /// the walk failed, the journal needs replaying, the file is not extent-mapped, or the
    /// inode at home differs from the crate's in size, mode or owner). The walk verifies
    /// the inode's and every extent tree block's checksum, as the crate does on its path. A damaged extent tree is an error, not a
    /// reason to hand the file to the crate: the crate walks the same tree without bounding
    /// its work, and a tree whose index entries name one node many times kept it busy for
    /// days (red team r3).
    fn extent_reader(&self, path: &[u8], md: &ext4_view::Metadata) -> Result<Option<ExtentFile>> {
        let Some(walk) = self.walk.as_ref() else {
            return Ok(None);
        };
        let Some(ino) = walk.lookup(path, true).ok().flatten() else {
            return Ok(None);
        };
        let (f, runs) = match walk.file_runs(ino) {
            Ok(FileMap::Runs(f, runs)) => (f, runs),
            Err(e) if e.code() == "guest.fs.ext4_corrupt" => {
                return Err(corrupt(format!(
                    "reading {}: the file system is damaged: {}; `e2fsck -n` in the guest shows the damage",
                    show(path),
                    e.message()
                )))
            }
            Err(e) if e.code() == "guest.fs.ext4_unsupported" => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    e.code(),
                    format!("reading {}: {}", show(path), e.message()),
                ))
            }
            Ok(FileMap::Crate) | Err(_) => return Ok(None),
        };
        // The walk found this inode by a linear scan of the directories; the crate by their
        // hash index. Only when both agree on what the file is are its extents read here.
        let same = f.size == md.len()
            && f.mode & 0o7777 == md.mode() & 0o7777
            && f.uid == md.uid()
            && f.gid == md.gid();
        Ok(same.then(|| ExtentFile {
            vol: walk.volume().clone(),
            block_bytes: walk.block_bytes(),
            size: f.size,
            runs,
            pos: 0,
            path: path.to_vec(),
        }))
    }

    /// Our stat from the crate's metadata of the file at `path`.
    fn stat_of(&self, path: &[u8], md: &ext4_view::Metadata) -> Result<Stat> {
        let ft = file_type(md.file_type());
        let link_target = if ft == FileType::Symlink {
            // The crate reads a target whole; refuse sizes no Linux path can have first.
            if md.len() > MAX_PATH_BYTES as u64 {
                return Err(corrupt(format!(
                    "the symlink {} claims a {}-byte target; targets are at most {MAX_PATH_BYTES} bytes",
                    show(path),
                    md.len()
                )));
            }
            let t = self.fs.read_link(path).map_err(|e| map_err(e, path))?;
            Some(t.as_ref().to_vec())
        } else {
            None
        };
        let m = md.modified();
        Ok(Stat {
            file_type: ft,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: md.len(),
            mtime: Timestamp {
                seconds: m.seconds(),
                nanoseconds: m.nanoseconds(),
            },
            link_target,
        })
    }
}

/// A regular file read by its extent map: each read is one positional read of the volume
/// for as much of the caller's buffer as one extent covers; holes and unwritten extents are
/// zeros.
struct ExtentFile {
    vol: Volume,
    block_bytes: u64,
    size: u64,
    runs: Vec<Run>,
    pos: u64,
    path: Vec<u8>,
}

impl FileReader for ExtentFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let bs = self.block_bytes;
        let want = (self.size - self.pos).min(buf.len() as u64);
        let lb = self.pos / bs;
        let i = self.runs.partition_point(|r| r.logical + r.len <= lb);
        let n = match self.runs.get(i) {
            Some(r) if r.logical <= lb => {
                let n = ((r.logical + r.len) * bs - self.pos).min(want);
                let n_usize = usize_from(n);
                match r.physical {
                    Some(p) => {
                        let at = (p + (lb - r.logical))
                            .checked_mul(bs)
                            .and_then(|b| b.checked_add(self.pos % bs))
                            .ok_or_else(|| {
                                corrupt(format!(
                                    "{}: an extent starts at block {p}, past any disk",
                                    show(&self.path)
                                ))
                            })?;
                        self.vol.read_at(&mut buf[..n_usize], at)?;
                    }
                    None => buf[..n_usize].fill(0),
                }
                n
            }
            next => {
                // A hole up to the next extent or the end of the file.
                let end = next.map_or(self.size, |r| (r.logical * bs).min(self.size));
                let n = (end - self.pos).min(want);
                buf[..usize_from(n)].fill(0);
                n
            }
        };
        self.pos += n;
        Ok(usize_from(n))
    }

    fn seek(&mut self, offset: u64) -> Result<()> {
        self.pos = offset.min(self.size);
        Ok(())
    }
}

struct Ext4File {
    file: ext4_view::File,
    path: Vec<u8>,
}

impl FileReader for Ext4File {
    fn size(&self) -> u64 {
        self.file.metadata().len()
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        // The crate returns at most one block per call; fill what the caller asked for.
        let file = &mut self.file;
        let mut done = 0;
        while done < buf.len() {
            let n = file
                .read_bytes(&mut buf[done..])
                .map_err(|e| map_err(e, &self.path))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    fn seek(&mut self, offset: u64) -> Result<()> {
        self.file
            .seek_to(offset)
            .map_err(|e| map_err(e, &self.path))
    }
}

#[cfg(test)]
mod read_ahead_tests {
    use super::*;
    use crate::{DiskImage, Extent, Finding, ImageInfo};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// An image that counts the reads it is asked for.
    #[derive(Debug)]
    struct Counting(Box<dyn DiskImage>, AtomicUsize);

    impl DiskImage for Counting {
        fn info(&self) -> &ImageInfo {
            self.0.info()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.read_at(buf, offset)
        }
        fn extents(&self, start: u64, length: u64, out: &mut Vec<Extent>) -> Result<()> {
            self.0.extents(start, length, out)
        }
        fn findings(&self) -> &[Finding] {
            self.0.findings()
        }
    }

    fn source(len: usize) -> (Source, Arc<Counting>, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
        let img = Arc::new(Counting(
            crate::open_bytes(data.clone()).unwrap(),
            AtomicUsize::new(0),
        ));
        let dyn_img: Arc<dyn DiskImage> = img.clone();
        (Source::new(Volume::whole(dyn_img)), img, data)
    }

    #[test]
    fn sequential_block_reads_are_fetched_a_mebibyte_at_a_time() {
        // 4 MiB + a partial block: the last window is short and the last read ends the volume.
        let len = (4 << 20) + 1000;
        let (mut src, img, data) = source(len);
        let mut at = 0;
        let mut buf = [0u8; 4096];
        while at < len {
            let n = buf.len().min(len - at);
            src.read_through(at as u64, &mut buf[..n]).unwrap();
            assert_eq!(&buf[..n], &data[at..at + n], "at {at}");
            at += n;
        }
        // One read for the first block (not yet known to be sequential), then one per MiB;
        // without read-ahead this would be 1025.
        let reads = img.1.load(Ordering::Relaxed);
        assert!(reads <= 7, "{reads} reads");
    }

    #[test]
    fn random_reads_go_through_and_stay_exact() {
        let (mut src, img, data) = source(3 << 20);
        // (offset, length): a jump back into the read-ahead copy must be served from it,
        // a jump elsewhere must read exactly what it asks.
        let cases: [(usize, usize); 7] = [
            (8192, 4096),
            (12_288, 4096), // sequential: fetches [12288, 12288 + 1 MiB)
            (20_000, 300),  // inside the copy
            (2 << 20, 512), // far away: straight through
            (1 << 20, 4096),
            ((3 << 20) - 100, 100), // the last bytes
            ((3 << 20) - 100, 100), // again, from the copy or not, the same bytes
        ];
        for (off, n) in cases {
            let mut buf = vec![0u8; n];
            src.read_through(off as u64, &mut buf).unwrap();
            assert_eq!(buf, &data[off..off + n], "{off}+{n}");
        }
        assert!(img.1.load(Ordering::Relaxed) <= cases.len());
        // Past the end: an error, not a short or padded read.
        let mut buf = [0u8; 200];
        assert!(src.read_through((3 << 20) - 100, &mut buf).is_err());
    }
}
