//! The XFS superblock (`docs/guest-filesystems.md` §4.1): sector 0 of allocation group 0.
//! Raw layout, then the checks that make every later address computation safe (geometry
//! consistent with itself and with the volume), then [`Geometry`], the validated view the
//! rest of the reader uses.

use zerocopy::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{corrupt, unsupported};
use crate::error::Result;
use crate::format::vhdx::crc32c_zeroed;
use crate::io::usize_from;

/// `XFSB`.
pub const MAGIC: u32 = 0x5846_5342;
/// Bytes of the superblock structure read (the fields up to `sb_meta_uuid`).
pub const SB_STRUCT_BYTES: usize = 264;
/// Offset of the v5 CRC32C (little-endian) inside the superblock sector.
const CRC_OFFSET: usize = 224;

/// v4 `versionnum`: version-2 directories (required).
const VERSION_DIRV2: u16 = 0x2000;
/// v4 `versionnum`: `features2` is valid.
const VERSION_MOREBITS: u16 = 0x8000;
/// `features2`: directory entries carry a file type.
const FEATURES2_FTYPE: u32 = 0x200;
/// `features2`: metadata CRCs (set on v5 only).
const FEATURES2_CRC: u32 = 0x100;

/// v5 incompatible features this reader handles, and what each is called in xfsprogs.
const INCOMPAT_KNOWN: &[(u32, &str, bool)] = &[
    (0x1, "ftype", true),
    (0x2, "sparse inodes", true),
    (0x4, "meta_uuid", true),
    (0x8, "bigtime", true),
    (0x10, "needsrepair", false),
    (0x20, "nrext64", true),
    (0x40, "exchange-range", true),
    (0x80, "parent pointers", true),
    (0x100, "metadir", false),
    (0x200, "zoned", false),
    (0x400, "zone gaps", false),
];
/// v5 incompatible feature: the file type is in directory entries.
pub const INCOMPAT_FTYPE: u32 = 0x1;
/// v5 incompatible feature: `xfs_repair` must run first.
const INCOMPAT_NEEDSREPAIR: u32 = 0x10;

/// The superblock as laid out on disk (big-endian; the CRC is little-endian).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawSuperblock {
    /// `XFSB`.
    pub magicnum: U32,
    /// File-system block size in bytes, a power of two from 512 to 65536.
    pub blocksize: U32,
    /// Blocks in the data device.
    pub dblocks: U64,
    /// Blocks in the realtime device.
    pub rblocks: U64,
    /// Realtime extents.
    pub rextents: U64,
    /// File-system UUID.
    pub uuid: [u8; 16],
    /// First block of the internal log (an AG-encoded fsblock); 0 for an external log.
    pub logstart: U64,
    /// Inode number of the root directory.
    pub rootino: U64,
    /// Realtime bitmap inode.
    pub rbmino: U64,
    /// Realtime summary inode.
    pub rsumino: U64,
    /// Realtime extent size in blocks.
    pub rextsize: U32,
    /// Blocks per allocation group (the last AG may be shorter).
    pub agblocks: U32,
    /// Number of allocation groups.
    pub agcount: U32,
    /// Realtime bitmap blocks.
    pub rbmblocks: U32,
    /// Blocks of the internal log.
    pub logblocks: U32,
    /// Low nibble: 4 or 5; v4 feature bits above.
    pub versionnum: U16,
    /// Sector size in bytes.
    pub sectsize: U16,
    /// Inode size in bytes (256 to 2048).
    pub inodesize: U16,
    /// Inodes per block.
    pub inopblock: U16,
    /// Label, NUL-padded.
    pub fname: [u8; 12],
    /// log2(blocksize).
    pub blocklog: u8,
    /// log2(sectsize).
    pub sectlog: u8,
    /// log2(inodesize).
    pub inodelog: u8,
    /// log2(inopblock).
    pub inopblog: u8,
    /// ceil(log2(agblocks)): bits of an AG-relative block number.
    pub agblklog: u8,
    /// log2(rextents).
    pub rextslog: u8,
    /// Non-zero while mkfs is still writing: the file system is unusable.
    pub inprogress: u8,
    /// Max % of space for inodes.
    pub imax_pct: u8,
    /// Allocated inodes (summary counter).
    pub icount: U64,
    /// Free inodes (summary counter).
    pub ifree: U64,
    /// Free data blocks (summary counter).
    pub fdblocks: U64,
    /// Free realtime extents.
    pub frextents: U64,
    /// User quota inode.
    pub uquotino: U64,
    /// Group quota inode.
    pub gquotino: U64,
    /// Quota flags.
    pub qflags: U16,
    /// Misc flags.
    pub flags: u8,
    /// Shared version number.
    pub shared_vn: u8,
    /// Inode chunk alignment in blocks.
    pub inoalignmt: U32,
    /// Stripe unit in blocks.
    pub unit: U32,
    /// Stripe width in blocks.
    pub width: U32,
    /// log2(directory block size / block size).
    pub dirblklog: u8,
    /// log2(log sector size).
    pub logsectlog: u8,
    /// Log sector size.
    pub logsectsize: U16,
    /// Log stripe unit.
    pub logsunit: U32,
    /// More v4 feature bits (`FTYPE` 0x200, `CRC` 0x100, ...).
    pub features2: U32,
    /// Copy of `features2` written by old kernels at a misaligned offset.
    pub bad_features2: U32,
    /// v5 compatible features.
    pub features_compat: U32,
    /// v5 read-only-compatible features (free-space and rmap trees: irrelevant to reading).
    pub features_ro_compat: U32,
    /// v5 incompatible features: a reader must know every bit set.
    pub features_incompat: U32,
    /// v5 log-incompatible features (set while the log holds such items).
    pub features_log_incompat: U32,
    /// CRC32C of the sector with this field zeroed (little-endian).
    pub crc: [u8; 4],
    /// Sparse inode chunk alignment.
    pub spino_align: U32,
    /// Project quota inode.
    pub pquotino: U64,
    /// Last write sequence number.
    pub lsn: U64,
    /// UUID stamped in metadata when `meta_uuid` is set.
    pub meta_uuid: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<RawSuperblock>() == SB_STRUCT_BYTES);

/// The checked facts every other structure is read with.
#[derive(Debug, Clone)]
pub struct Geometry {
    /// 4 or 5.
    pub version: u8,
    /// Block size in bytes.
    pub block_bytes: u64,
    /// Inode size in bytes.
    pub inode_bytes: u64,
    /// log2 of inodes per block.
    pub inopblog: u8,
    /// Blocks per AG.
    pub agblocks: u64,
    /// Bits of an AG-relative block number.
    pub agblklog: u8,
    /// Number of AGs.
    pub agcount: u64,
    /// Directory block size in bytes.
    pub dir_block_bytes: u64,
    /// Directory entries carry the file type.
    pub has_ftype: bool,
    /// The UUID v5 metadata blocks carry (`meta_uuid` or `uuid`).
    pub meta_uuid: [u8; 16],
    /// Root directory inode.
    pub rootino: u64,
    /// Internal log start (fsblock) and length in blocks.
    pub log: (u64, u64),
    /// Bytes of the data device.
    pub fs_bytes: u64,
}

fn pow2_log(v: u64) -> Option<u8> {
    // trailing_zeros of a u64 is at most 64.
    v.is_power_of_two()
        .then(|| u8::try_from(v.trailing_zeros()).ok())
        .flatten()
}

/// Check the sector-0 bytes (`sector` is `sectsize` bytes, or at least 512) of a volume of
/// `volume_len` bytes and return its geometry.
#[allow(clippy::too_many_lines)] // one check per on-disk field, in on-disk order
pub fn parse(sector: &[u8], volume_len: u64) -> Result<Geometry> {
    let Ok((sb, _)) = RawSuperblock::read_from_prefix(sector) else {
        return Err(corrupt(format!(
            "the volume's first sector has {} bytes, too few for an XFS superblock",
            sector.len()
        )));
    };
    if sb.magicnum.get() != MAGIC {
        return Err(corrupt(format!(
            "superblock magic is {:#010x}, expected {MAGIC:#010x} (`XFSB`)",
            sb.magicnum.get()
        )));
    }
    let version = (sb.versionnum.get() & 0xF) as u8;
    if version != 4 && version != 5 {
        return Err(unsupported(format!(
            "superblock version {version}; vhdforge reads XFS v4 and v5"
        )));
    }
    if sb.inprogress != 0 {
        return Err(corrupt(
            "the superblock says mkfs.xfs never finished (sb_inprogress is set); the file system is unusable",
        ));
    }
    let block_bytes = u64::from(sb.blocksize.get());
    if !(512..=65536).contains(&block_bytes) || pow2_log(block_bytes) != Some(sb.blocklog) {
        return Err(corrupt(format!(
            "block size {block_bytes} with blocklog {}: expected a power of two from 512 to 65536 matching its log",
            sb.blocklog
        )));
    }
    let sect = u64::from(sb.sectsize.get());
    if !(512..=32768).contains(&sect) || pow2_log(sect) != Some(sb.sectlog) || sect > block_bytes {
        return Err(corrupt(format!(
            "sector size {sect} with sectlog {}: expected a power of two from 512 to the block size ({block_bytes})",
            sb.sectlog
        )));
    }
    if version == 5 {
        if sector.len() < usize_from(sect) {
            return Err(corrupt("superblock sector short"));
        }
        let want = crc32c_zeroed(&sector[..usize_from(sect)], CRC_OFFSET);
        let got = u32::from_le_bytes(sb.crc);
        if want != got {
            return Err(corrupt(format!(
                "superblock CRC is {got:#010x}, its contents give {want:#010x}: the superblock is damaged; `xfs_repair -n` in the guest shows more"
            )));
        }
    }
    let inode_bytes = u64::from(sb.inodesize.get());
    let min_inode = if version == 5 { 512 } else { 256 };
    if !(min_inode..=2048).contains(&inode_bytes)
        || pow2_log(inode_bytes) != Some(sb.inodelog)
        || inode_bytes > block_bytes
        || u64::from(sb.inopblock.get()) != block_bytes / inode_bytes
        || u32::from(sb.inopblog) + u32::from(sb.inodelog) != u32::from(sb.blocklog)
    {
        return Err(corrupt(format!(
            "inode size {inode_bytes} (log {}), {} per block (log {}) with {block_bytes}-byte blocks: expected a power of two from {min_inode} to 2048 that divides the block",
            sb.inodelog,
            sb.inopblock.get(),
            sb.inopblog
        )));
    }
    let agblocks = u64::from(sb.agblocks.get());
    let agcount = u64::from(sb.agcount.get());
    let agblklog = sb.agblklog;
    // ceil(log2(agblocks)), as mkfs.xfs computes it.
    let want_agblklog = if agblocks <= 1 {
        0
    } else {
        // agblocks is a u32 widened, so this is at most 32.
        u8::try_from(64 - (agblocks - 1).leading_zeros()).unwrap_or(u8::MAX)
    };
    if agblocks < 8 || agcount == 0 || agblklog != want_agblklog {
        return Err(corrupt(format!(
            "allocation groups of {agblocks} blocks (agblklog {agblklog}, expected {want_agblklog}), {agcount} of them: the geometry is impossible"
        )));
    }
    let dblocks = sb.dblocks.get();
    if dblocks > agcount * agblocks || dblocks <= (agcount - 1) * agblocks {
        return Err(corrupt(format!(
            "{dblocks} data blocks do not fit {agcount} allocation groups of {agblocks} blocks (the last one partial)"
        )));
    }
    let fs_bytes = dblocks.saturating_mul(block_bytes);
    if fs_bytes > volume_len {
        return Err(corrupt(format!(
            "the file system claims {dblocks} blocks of {block_bytes} bytes ({fs_bytes} bytes) but its volume has {volume_len} bytes: the partition or image was truncated, or the superblock is damaged"
        )));
    }
    let dir_block_bytes = block_bytes << sb.dirblklog.min(16);
    if sb.dirblklog > 16 || dir_block_bytes > 65536 {
        return Err(corrupt(format!(
            "directory blocks of {block_bytes} << {} bytes; XFS allows at most 65536",
            sb.dirblklog
        )));
    }
    let has_ftype = if version == 5 {
        let inc = sb.features_incompat.get();
        check_incompat(inc)?;
        inc & INCOMPAT_FTYPE != 0
    } else {
        let v = sb.versionnum.get();
        if v & VERSION_DIRV2 == 0 {
            return Err(unsupported(format!(
                "versionnum {v:#06x} lacks version-2 directories; vhdforge reads only those (every XFS since 2002)"
            )));
        }
        let f2 = if v & VERSION_MOREBITS != 0 {
            sb.features2.get()
        } else {
            0
        };
        if f2 & FEATURES2_CRC != 0 {
            return Err(corrupt(format!(
                "a v4 superblock with the v5 CRC bit in features2 ({f2:#x}): the version and features disagree"
            )));
        }
        f2 & FEATURES2_FTYPE != 0
    };
    if sb.logstart.get() == 0 {
        return Err(unsupported(
            "the log is on an external device, which is not in this volume, so whether it is clean cannot be known",
        ));
    }
    let meta_uuid = if version == 5 && sb.features_incompat.get() & 0x4 != 0 {
        sb.meta_uuid
    } else {
        sb.uuid
    };
    Ok(Geometry {
        version,
        block_bytes,
        inode_bytes,
        inopblog: sb.inopblog,
        agblocks,
        agblklog,
        agcount,
        dir_block_bytes,
        has_ftype,
        meta_uuid,
        rootino: sb.rootino.get(),
        log: (sb.logstart.get(), u64::from(sb.logblocks.get())),
        fs_bytes,
    })
}

/// Refuse every incompatible feature this reader does not handle, by name.
fn check_incompat(inc: u32) -> Result<()> {
    if inc & INCOMPAT_NEEDSREPAIR != 0 {
        return Err(corrupt(
            "the superblock has the needsrepair flag: an xfs_repair was interrupted; run `xfs_repair` in the guest",
        ));
    }
    let mut known = 0u32;
    let mut refused = Vec::new();
    for &(bit, name, ok) in INCOMPAT_KNOWN {
        known |= bit;
        if inc & bit != 0 && !ok {
            refused.push(name.to_string());
        }
    }
    if inc & !known != 0 {
        refused.push(format!("unknown bits {:#x}", inc & !known));
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(unsupported(format!(
            "this XFS uses incompatible features vhdforge cannot read: {}",
            refused.join(", ")
        )))
    }
}

impl Geometry {
    /// Byte offset in the volume of `count` blocks from fsblock `fsb`, all within one AG and
    /// inside the file system, or an error naming `what`.
    #[allow(clippy::similar_names)] // `agno`/`agbno` are XFS's own names
    pub fn fsblock_bytes(&self, fsb: u64, count: u64, what: &str) -> Result<u64> {
        let agno = fsb >> self.agblklog;
        let agbno = fsb & ((1u64 << self.agblklog) - 1);
        let end = agbno.checked_add(count);
        if agno >= self.agcount || end.is_none_or(|e| e > self.agblocks) {
            return Err(corrupt(format!(
                "{what} points at block {fsb:#x} (AG {agno}, block {agbno}, {count} blocks) outside the {} allocation groups of {} blocks",
                self.agcount, self.agblocks
            )));
        }
        let byte = (agno * self.agblocks + agbno) * self.block_bytes;
        if byte + count * self.block_bytes > self.fs_bytes {
            return Err(corrupt(format!(
                "{what} points at block {fsb:#x}, past the end of the file system"
            )));
        }
        Ok(byte)
    }

    /// Byte offset in the volume of inode `ino`.
    #[allow(clippy::similar_names)] // `agno`/`agbno` are XFS's own names
    pub fn inode_bytes_at(&self, ino: u64) -> Result<u64> {
        let shift = u32::from(self.agblklog) + u32::from(self.inopblog);
        let agno = ino.checked_shr(shift).unwrap_or(0);
        let agbno = (ino >> self.inopblog) & ((1u64 << self.agblklog) - 1);
        let slot = ino & ((1u64 << self.inopblog) - 1);
        if ino == 0 || agno >= self.agcount || agbno >= self.agblocks {
            return Err(corrupt(format!(
                "inode number {ino} lies outside the file system ({} allocation groups of {} blocks)",
                self.agcount, self.agblocks
            )));
        }
        let byte = (agno * self.agblocks + agbno) * self.block_bytes + slot * self.inode_bytes;
        if byte + self.inode_bytes > self.fs_bytes {
            return Err(corrupt(format!(
                "inode number {ino} lies past the end of the file system"
            )));
        }
        Ok(byte)
    }
}
