//! The XFS inode (`docs/guest-filesystems.md` §4.3): the v1/v2 core (100 bytes) or v3 core
//! (176 bytes, v5 file systems, with CRC and self-describing inode number), followed by
//! the data fork. This file checks the core and returns what the reader needs: type,
//! owners, size, mtime (classic or bigtime) and the data fork's bytes and format.

use zerocopy::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::superblock::Geometry;
use super::{corrupt, unsupported};
use crate::error::Result;
use crate::format::vhdx::crc32c_zeroed;
use crate::guest::fs::{FileType, Timestamp};
use crate::io::usize_from;

/// `IN`.
const MAGIC: u16 = 0x494E;
/// Core size of v1/v2 inodes.
const CORE_V2: usize = 100;
/// Core size of v3 inodes.
const CORE_V3: usize = 176;
/// Offset of the v3 inode CRC32C (little-endian).
const CRC_OFFSET: usize = 100;
/// `di_flags`: the file's data is on the realtime device.
const FLAG_REALTIME: u16 = 0x1;
/// `di_flags2`: timestamps are 64-bit nanosecond counters.
const FLAG2_BIGTIME: u64 = 0x8;
/// `di_flags2`: the data extent count is the 64-bit `di_big_nextents`.
const FLAG2_NREXT64: u64 = 0x10;
/// Bigtime counters start 2^31 seconds before the Unix epoch.
const BIGTIME_EPOCH_OFFSET: i64 = 1 << 31;

/// The inode core as laid out on disk (v3 fields after `next_unlinked`).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawInodeCore {
    /// `IN`.
    pub magic: U16,
    /// File type (`S_IFMT`) and permission bits.
    pub mode: U16,
    /// 1, 2 or 3 (3 on v5 file systems).
    pub version: u8,
    /// Data fork format: 0 device, 1 local, 2 extents, 3 B-tree.
    pub format: u8,
    /// Link count of v1 inodes.
    pub onlink: U16,
    /// Owner uid.
    pub uid: U32,
    /// Owner gid.
    pub gid: U32,
    /// Link count (v2/v3).
    pub nlink: U32,
    /// Project id, low half.
    pub projid_lo: U16,
    /// Project id, high half.
    pub projid_hi: U16,
    /// 64-bit data extent count with `nrext64` (else padding and flush counter).
    pub big_nextents: U64,
    /// Access time: be32 seconds, be32 ns (or one be64 ns counter with bigtime).
    pub atime: [u8; 8],
    /// Modification time, same encoding.
    pub mtime: [u8; 8],
    /// Inode change time, same encoding.
    pub ctime: [u8; 8],
    /// Size in bytes.
    pub size: U64,
    /// Blocks allocated, including B-tree blocks.
    pub nblocks: U64,
    /// Extent size hint.
    pub extsize: U32,
    /// Data extent count (32-bit; the attr extent count with `nrext64`).
    pub nextents: U32,
    /// Attr extent count (16-bit, without `nrext64`).
    pub anextents: U16,
    /// Attr fork offset in 8-byte units from the literal area; 0 = no attr fork.
    pub forkoff: u8,
    /// Attr fork format.
    pub aformat: u8,
    /// DMAPI event mask.
    pub dmevmask: U32,
    /// DMAPI state.
    pub dmstate: U16,
    /// Flags (0x1 realtime, ...).
    pub flags: U16,
    /// Generation number.
    pub gen: U32,
    /// Unlinked-list pointer.
    pub next_unlinked: U32,
    /// v3: CRC32C of the inode with this field zeroed (little-endian).
    pub crc: [u8; 4],
    /// v3: change counter.
    pub changecount: U64,
    /// v3: log sequence number of the last write.
    pub lsn: U64,
    /// v3: more flags (0x8 bigtime, 0x10 nrext64).
    pub flags2: U64,
    /// v3: copy-on-write extent size hint.
    pub cowextsize: U32,
    /// v3: padding.
    pub pad2: [u8; 12],
    /// v3: creation time.
    pub crtime: [u8; 8],
    /// v3: this inode's own number (catches misdirected reads).
    pub ino: U64,
    /// v3: file-system (meta) UUID.
    pub uuid: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<RawInodeCore>() == CORE_V3);

/// Data fork formats (`di_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkFormat {
    /// Device number only (special files).
    Device,
    /// Data in the inode (short-form directories, short symlinks).
    Local,
    /// An array of extent records in the inode.
    Extents,
    /// The root of a bmbt in the inode.
    Btree,
}

/// A checked inode.
#[derive(Debug, Clone)]
pub struct Inode {
    /// Inode number.
    pub ino: u64,
    /// File type.
    pub file_type: FileType,
    /// Permission bits.
    pub mode: u16,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// Data fork format.
    pub format: ForkFormat,
    /// Data extent records claimed by the core.
    pub nextents: u64,
    /// The data fork's bytes (literal area up to the attr fork).
    pub fork: Vec<u8>,
}

fn file_type(mode: u16) -> Option<FileType> {
    Some(match mode & 0o170_000 {
        0o100_000 => FileType::Regular,
        0o040_000 => FileType::Directory,
        0o120_000 => FileType::Symlink,
        0o020_000 => FileType::CharDevice,
        0o060_000 => FileType::BlockDevice,
        0o010_000 => FileType::Fifo,
        0o140_000 => FileType::Socket,
        _ => return None,
    })
}

fn timestamp(raw: [u8; 8], bigtime: bool) -> Timestamp {
    if bigtime {
        let ns = u64::from_be_bytes(raw);
        Timestamp {
            // u64::MAX / 10^9 < 2^35: the seconds always fit an i64.
            seconds: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX) - BIGTIME_EPOCH_OFFSET,
            nanoseconds: (ns % 1_000_000_000) as u32,
        }
    } else {
        let s = i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let ns = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
        Timestamp {
            seconds: i64::from(s),
            nanoseconds: ns.min(999_999_999),
        }
    }
}

/// Check the `inode_bytes` bytes of inode `ino` and extract what the reader uses.
#[allow(clippy::too_many_lines)] // one check per on-disk field, in on-disk order
pub fn parse(geo: &Geometry, ino: u64, bytes: &[u8]) -> Result<Inode> {
    let Ok((core, _)) = RawInodeCore::read_from_prefix(bytes) else {
        return Err(corrupt(format!("inode {ino} is truncated")));
    };
    if core.magic.get() != MAGIC {
        return Err(corrupt(format!(
            "inode {ino} has magic {:#06x}, expected {MAGIC:#06x} (`IN`): the directory entry or the inode is damaged",
            core.magic.get()
        )));
    }
    let v5 = geo.version == 5;
    let core_len = match (v5, core.version) {
        (true, 3) => CORE_V3,
        (false, 1 | 2) => CORE_V2,
        (_, v) => {
            return Err(corrupt(format!(
                "inode {ino} is version {v}; a v{} file system uses {}",
                geo.version,
                if v5 { "3" } else { "1 or 2" }
            )))
        }
    };
    if v5 {
        let want = crc32c_zeroed(bytes, CRC_OFFSET);
        let got = u32::from_le_bytes(core.crc);
        if want != got {
            return Err(corrupt(format!(
                "inode {ino} has CRC {got:#010x}, its contents give {want:#010x}: the inode is damaged"
            )));
        }
        if core.ino.get() != ino || core.uuid != geo.meta_uuid {
            return Err(corrupt(format!(
                "inode {ino} records itself as inode {} of another file system: a misdirected read or a damaged inode",
                core.ino.get()
            )));
        }
    }
    let mode = core.mode.get();
    let file_type = file_type(mode).ok_or_else(|| {
        corrupt(format!(
            "inode {ino} has mode {mode:#o}, which is no file type"
        ))
    })?;
    if core.flags.get() & FLAG_REALTIME != 0 {
        return Err(unsupported(format!(
            "inode {ino} keeps its data on the realtime device, which is not part of this volume"
        )));
    }
    let format = match core.format {
        0 => ForkFormat::Device,
        1 => ForkFormat::Local,
        2 => ForkFormat::Extents,
        3 => ForkFormat::Btree,
        f => {
            return Err(corrupt(format!(
                "inode {ino} has data fork format {f}; expected 0 to 3"
            )))
        }
    };
    let fits = match file_type {
        FileType::Regular => matches!(format, ForkFormat::Extents | ForkFormat::Btree),
        FileType::Directory | FileType::Symlink => format != ForkFormat::Device,
        _ => format == ForkFormat::Device,
    };
    if !fits {
        return Err(corrupt(format!(
            "inode {ino} is a {file_type:?} with data fork format {format:?}, which XFS never writes"
        )));
    }
    let flags2 = if v5 { core.flags2.get() } else { 0 };
    let literal = usize_from(geo.inode_bytes) - core_len;
    let fork_len = if core.forkoff == 0 {
        literal
    } else {
        usize::from(core.forkoff) * 8
    };
    if fork_len > literal {
        return Err(corrupt(format!(
            "inode {ino} puts its attribute fork at {fork_len} bytes, past the {literal}-byte literal area"
        )));
    }
    let nextents = if flags2 & FLAG2_NREXT64 != 0 {
        core.big_nextents.get()
    } else {
        u64::from(core.nextents.get())
    };
    let size = core.size.get();
    if size > i64::MAX as u64 {
        return Err(corrupt(format!(
            "inode {ino} claims a size of {size} bytes"
        )));
    }
    Ok(Inode {
        ino,
        file_type,
        mode: mode & 0o7777,
        uid: core.uid.get(),
        gid: core.gid.get(),
        size,
        mtime: timestamp(core.mtime, flags2 & FLAG2_BIGTIME != 0),
        format,
        nextents,
        fork: bytes[core_len..core_len + fork_len].to_vec(),
    })
}
