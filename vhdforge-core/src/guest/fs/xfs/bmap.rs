//! The data fork's block map (`docs/guest-filesystems.md` §4.4–4.5): packed 128-bit extent
//! records, either in the inode (extents format) or in the leaves of a bmbt whose root is
//! in the inode (B-tree format). The whole map of a fork is collected into a sorted list of
//! [`Extent`]s, capped at [`MAX_EXTENTS`], with the tree's depth and block count bounded.

use zerocopy::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::inode::{ForkFormat, Inode};
use super::superblock::Geometry;
use super::{corrupt, XfsFs};
use crate::error::Result;
use crate::format::vhdx::crc32c_zeroed;

/// `BMAP`: v4 bmbt block.
const BMAP_MAGIC: u32 = 0x424D_4150;
/// `BMA3`: v5 bmbt block.
const BMA3_MAGIC: u32 = 0x424D_4133;
/// v4 long-pointer B-tree block header bytes.
const HDR_V4: usize = 24;
/// v5 long-pointer B-tree block header bytes.
const HDR_V5: usize = 72;
/// Offset of the v5 block CRC.
const CRC_OFFSET: usize = 64;
/// Deepest bmbt accepted: a file with 2^64 blocks needs fewer levels than this.
const MAX_LEVELS: u16 = 10;
/// Most extents one fork may have (about 32 MiB of memory for the list); a real file with
/// more is refused rather than read with unbounded memory.
pub const MAX_EXTENTS: usize = 1 << 20;

/// One mapped run of a fork, in file-system blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First file block.
    pub file_block: u64,
    /// First fsblock (AG-encoded).
    pub fsblock: u64,
    /// Length in blocks.
    pub blocks: u64,
    /// Preallocated, never written: reads as zeros.
    pub unwritten: bool,
}

/// One extent record as stored: two big-endian words.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawExtent {
    /// Bit 63 unwritten; bits 62–9 start offset (file block); bits 8–0 high bits of the start block.
    pub l0: U64,
    /// Bits 63–21 low bits of the start block; bits 20–0 block count.
    pub l1: U64,
}

impl RawExtent {
    fn decode(&self) -> Extent {
        let (l0, l1) = (self.l0.get(), self.l1.get());
        Extent {
            unwritten: l0 >> 63 != 0,
            file_block: (l0 >> 9) & ((1 << 54) - 1),
            fsblock: ((l0 & 0x1FF) << 43) | (l1 >> 21),
            blocks: l1 & 0x1F_FFFF,
        }
    }
}

/// The header of a long-pointer B-tree block (the v5 fields follow for `BMA3`).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawBtreeBlockHeader {
    /// `BMAP` or `BMA3`.
    pub magic: U32,
    /// 0 for a leaf.
    pub level: U16,
    /// Records (leaf) or keys/pointers (node) in use.
    pub numrecs: U16,
    /// Left sibling fsblock (all ones: none).
    pub leftsib: U64,
    /// Right sibling fsblock.
    pub rightsib: U64,
    /// v5: this block's disk address in 512-byte units.
    pub blkno: U64,
    /// v5: last write's log sequence number.
    pub lsn: U64,
    /// v5: file-system UUID.
    pub uuid: [u8; 16],
    /// v5: owning inode.
    pub owner: U64,
    /// v5: CRC32C with this field zeroed (little-endian).
    pub crc: [u8; 4],
    /// v5: padding.
    pub pad: U32,
}

const _: () = assert!(std::mem::size_of::<RawBtreeBlockHeader>() == HDR_V5);

fn records(bytes: &[u8], n: usize) -> impl Iterator<Item = Extent> + '_ {
    bytes
        .chunks_exact(16)
        .take(n)
        .filter_map(|c| RawExtent::read_from_bytes(c).ok())
        .map(|r| r.decode())
}

fn be64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_be_bytes(s.try_into().unwrap_or([0; 8])))
}

/// The extents of `inode`'s data fork, sorted, non-overlapping, checked against the
/// geometry; empty for a local or device fork.
pub fn extents(fs: &XfsFs, inode: &Inode) -> Result<Vec<Extent>> {
    let ino = inode.ino;
    let mut out = Vec::new();
    match inode.format {
        ForkFormat::Local | ForkFormat::Device => return Ok(out),
        ForkFormat::Extents => {
            let fit = inode.fork.len() / 16;
            let n = usize::try_from(inode.nextents).unwrap_or(usize::MAX);
            if n > fit {
                return Err(corrupt(format!(
                    "inode {ino} claims {n} extents in a data fork that holds {fit}"
                )));
            }
            out.extend(records(&inode.fork, n));
        }
        ForkFormat::Btree => {
            let f = &inode.fork;
            if f.len() < 4 {
                return Err(corrupt(format!("inode {ino}'s bmbt root is truncated")));
            }
            let level = u16::from_be_bytes([f[0], f[1]]);
            let numrecs = usize::from(u16::from_be_bytes([f[2], f[3]]));
            let maxrecs = (f.len() - 4) / 16;
            if level == 0 || level > MAX_LEVELS || numrecs == 0 || numrecs > maxrecs {
                return Err(corrupt(format!(
                    "inode {ino}'s bmbt root has level {level} and {numrecs} pointers (at most {maxrecs}, levels 1 to {MAX_LEVELS})"
                )));
            }
            // Pointers start after room for maxrecs keys, not numrecs.
            let ptrs: Vec<u64> = (0..numrecs)
                .map(|i| be64(f, 4 + maxrecs * 8 + i * 8))
                .collect();
            let mut budget = MAX_EXTENTS;
            for p in ptrs {
                walk(fs, ino, p, level - 1, &mut out, &mut budget)?;
            }
        }
    }
    if out.len() > MAX_EXTENTS {
        return Err(too_many(ino));
    }
    check(fs.geo(), ino, &out)?;
    Ok(out)
}

fn too_many(ino: u64) -> crate::error::Error {
    corrupt(format!(
        "inode {ino} maps more than {MAX_EXTENTS} extents; vhdforge refuses to hold a larger map"
    ))
}

/// Visit the bmbt block at `fsb`, expected at `level`, appending leaf records to `out`.
/// `budget` bounds the blocks visited, so a cycle in damaged pointers ends.
fn walk(
    fs: &XfsFs,
    ino: u64,
    fsb: u64,
    level: u16,
    out: &mut Vec<Extent>,
    budget: &mut usize,
) -> Result<()> {
    if *budget == 0 {
        return Err(too_many(ino));
    }
    *budget -= 1;
    let geo = fs.geo();
    let block = fs.read_fsblocks(fsb, 1, "a bmbt pointer")?;
    let v5 = geo.version == 5;
    let (want_magic, hdr) = if v5 {
        (BMA3_MAGIC, HDR_V5)
    } else {
        (BMAP_MAGIC, HDR_V4)
    };
    let Ok((h, _)) = RawBtreeBlockHeader::read_from_prefix(&block) else {
        return Err(corrupt(format!(
            "inode {ino}'s bmbt block {fsb:#x} is truncated"
        )));
    };
    if h.magic.get() != want_magic {
        return Err(corrupt(format!(
            "inode {ino}'s bmbt block {fsb:#x} has magic {:#010x}, expected {want_magic:#010x}",
            h.magic.get()
        )));
    }
    if v5 {
        let want = crc32c_zeroed(&block, CRC_OFFSET);
        // The block records its own disk address (512-byte units): a misdirected read
        // shows there even when the CRC of the wrong block is fine.
        let daddr = geo.fsblock_bytes(fsb, 1, "a bmbt pointer")? / 512;
        if want != u32::from_le_bytes(h.crc)
            || h.owner.get() != ino
            || h.uuid != geo.meta_uuid
            || h.blkno.get() != daddr
        {
            return Err(corrupt(format!(
                "inode {ino}'s bmbt block {fsb:#x} fails its CRC or names another owner or address: the block is damaged"
            )));
        }
    }
    let n = usize::from(h.numrecs.get());
    let maxrecs = (block.len() - hdr) / 16;
    if h.level.get() != level || n == 0 || n > maxrecs {
        return Err(corrupt(format!(
            "inode {ino}'s bmbt block {fsb:#x} is level {} with {n} records; expected level {level} and 1 to {maxrecs} records",
            h.level.get()
        )));
    }
    if level == 0 {
        if out.len() + n > MAX_EXTENTS {
            return Err(too_many(ino));
        }
        out.extend(records(&block[hdr..], n));
        return Ok(());
    }
    for i in 0..n {
        let p = be64(&block, hdr + maxrecs * 8 + i * 8);
        walk(fs, ino, p, level - 1, out, budget)?;
    }
    Ok(())
}

/// Sorted by file block, no overlap, every run inside one AG of the file system.
fn check(geo: &Geometry, ino: u64, ext: &[Extent]) -> Result<()> {
    let mut next = 0u64;
    for e in ext {
        // Offsets past 2^63 bytes are beyond any XFS file; refusing them here keeps every
        // later byte computation on this map free of overflow.
        let end_bytes = (e.file_block + e.blocks)
            .checked_mul(geo.block_bytes)
            .filter(|&b| i64::try_from(b).is_ok());
        if end_bytes.is_none() {
            return Err(corrupt(format!(
                "inode {ino}'s extent at file block {} ({} blocks) lies beyond the largest file XFS allows",
                e.file_block, e.blocks
            )));
        }
        if e.blocks == 0 || e.file_block < next {
            return Err(corrupt(format!(
                "inode {ino}'s extent at file block {} ({} blocks) is empty or overlaps the previous one: the block map is damaged",
                e.file_block, e.blocks
            )));
        }
        geo.fsblock_bytes(e.fsblock, e.blocks, "an extent")?;
        next = e.file_block + e.blocks;
    }
    Ok(())
}

/// The extent holding file block `fb`, if any (`ext` sorted).
pub fn find(ext: &[Extent], fb: u64) -> Option<&Extent> {
    let i = ext.partition_point(|e| e.file_block <= fb);
    ext[..i].last().filter(|e| fb < e.file_block + e.blocks)
}
