//! ext2/3/4 through the `ext4-view` crate (read-only, journal replayed in memory, checksums
//! verified). This file adapts a [`Volume`] to its reader, checks the superblock fields that
//! size allocations before the crate sees them, bounds what the crate would read whole
//! (symlink targets), and maps its errors to ours (`docs/guest-filesystems.md` §2).

use ext4_view::{Ext4, Ext4Error, Ext4Read};

use super::volume::{ReadRange, Volume};
use super::{
    show, DirEntry, FileReader, FileSystem, FileType, FsKind, Stat, Timestamp, MAX_PATH_BYTES,
};
use crate::error::{Error, ErrorKind, Result};

/// Superblock: 1024 bytes at byte 1024 of the volume.
const SB_OFFSET: u64 = 1024;
const SB_LEN: usize = 1024;
const MAGIC: u16 = 0xEF53;
/// Group-descriptor tables larger than this are refused: a 16 TiB file system with 4 KiB
/// blocks needs 8 MiB, so only a damaged superblock asks for more.
const MAX_DESCRIPTOR_TABLE_BYTES: u64 = 32 << 20;
/// `INCOMPAT_64BIT`: descriptors are `s_desc_size` bytes instead of 32.
const INCOMPAT_64BIT: u32 = 0x80;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn corrupt(message: String) -> Error {
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

/// The crate reads through this: positional reads of the owned volume.
struct Source(Volume);

impl Ext4Read for Source {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.0.read_at(dst, start_byte).map_err(Into::into)
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
        let fs = Ext4::load(Box::new(Source(volume))).map_err(|e| map_err(e, b"/"))?;
        Ok(Ext4Fs { fs })
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

    fn open_resolved(&self, path: &[u8]) -> Result<Box<dyn FileReader + '_>> {
        let file = self.fs.open(path).map_err(|e| map_err(e, path))?;
        Ok(Box::new(Ext4File {
            file,
            path: path.to_vec(),
        }))
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
