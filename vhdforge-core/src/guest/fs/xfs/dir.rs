//! XFS version-2 directories (`docs/guest-filesystems.md` §4.6). Names live in two places
//! only: the short-form directory inside the inode, and the data blocks of the directory's
//! "data space" (file bytes below 32 GiB). Block, leaf and node directories all keep their
//! names in data blocks; their leaf and free-index blocks (above 32 GiB) only speed up
//! lookups, so this reader never reads them and walks the data blocks instead.

use super::bmap;
use super::inode::{ForkFormat, Inode};
use super::{corrupt, XfsFs};
use crate::error::Result;
use crate::format::vhdx::crc32c_zeroed;
use crate::guest::fs::FileType;
use crate::io::usize_from;

/// `XD2B`: v4 single-block directory.
const XD2B: u32 = 0x5844_3242;
/// `XDB3`: v5 single-block directory.
const XDB3: u32 = 0x5844_4233;
/// `XD2D`: v4 data block of a leaf or node directory.
const XD2D: u32 = 0x5844_3244;
/// `XDD3`: v5 data block.
const XDD3: u32 = 0x5844_4433;
/// v4 data block header: magic and three best-free (offset, length) pairs.
const HDR_V4: usize = 16;
/// v5 data block header: magic, crc, blkno, lsn, uuid, owner, best-free, pad.
const HDR_V5: usize = 64;
/// Offset of the v5 data block CRC.
const CRC_OFFSET: usize = 4;
/// Offset of the v5 disk address of the block (512-byte units).
const BLKNO_OFFSET: usize = 8;
/// Offset of the v5 owner inode number.
const OWNER_OFFSET: usize = 40;
/// Offset of the v5 file-system UUID.
const UUID_OFFSET: usize = 24;
/// Directory data space ends at 32 GiB; leaf and free-index blocks lie above.
const DATA_SPACE_BYTES: u64 = 1 << 35;
/// Marks an unused region in a data block.
const FREE_TAG: u16 = 0xFFFF;

/// One name of a directory.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Raw name bytes.
    pub name: Vec<u8>,
    /// Inode number.
    pub ino: u64,
    /// Type from the entry (`ftype` feature); `None` when only the inode knows.
    pub file_type: Option<FileType>,
}

fn ftype(code: u8) -> Option<FileType> {
    Some(match code {
        1 => FileType::Regular,
        2 => FileType::Directory,
        3 => FileType::CharDevice,
        4 => FileType::BlockDevice,
        5 => FileType::Fifo,
        6 => FileType::Socket,
        7 => FileType::Symlink,
        _ => return None,
    })
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes([
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
        b[at + 4],
        b[at + 5],
        b[at + 6],
        b[at + 7],
    ])
}

/// Call `f` for every name in directory `d` (without `.` and `..`), in on-disk order, until
/// it returns `false`.
pub fn for_each(fs: &XfsFs, d: &Inode, f: &mut dyn FnMut(Entry) -> bool) -> Result<()> {
    match d.format {
        ForkFormat::Local => short_form(fs, d, f),
        ForkFormat::Extents | ForkFormat::Btree => data_blocks(fs, d, f),
        ForkFormat::Device => Err(corrupt(format!(
            "directory inode {} has a device data fork",
            d.ino
        ))),
    }
}

/// The short-form directory in the inode: a header with the parent, then packed entries
/// (name length, offset tag, name, [file type], 4- or 8-byte inode number).
#[allow(clippy::many_single_char_names)] // `d` the directory, `f` the callback, as in the other readers
fn short_form(fs: &XfsFs, d: &Inode, f: &mut dyn FnMut(Entry) -> bool) -> Result<()> {
    let ino = d.ino;
    let bad = |what: &str| {
        corrupt(format!(
            "short-form directory inode {ino}: {what}; the directory is damaged"
        ))
    };
    let size = usize::try_from(d.size).unwrap_or(usize::MAX);
    if size > d.fork.len() || size < 6 {
        return Err(bad(&format!(
            "size {} does not fit its {}-byte data fork",
            d.size,
            d.fork.len()
        )));
    }
    let b = &d.fork[..size];
    let count = usize::from(b[0]);
    let i8count = b[1];
    let ino_len = if i8count != 0 { 8 } else { 4 };
    let mut p = 2 + ino_len;
    let has_ftype = fs.geo().has_ftype;
    for _ in 0..count {
        if p + 3 > b.len() {
            return Err(bad("entries run past its size"));
        }
        let namelen = usize::from(b[p]);
        let name_at = p + 3;
        let after = name_at + namelen + usize::from(has_ftype) + ino_len;
        if namelen == 0 || after > b.len() {
            return Err(bad("an entry runs past its size"));
        }
        let name = b[name_at..name_at + namelen].to_vec();
        let t = if has_ftype {
            ftype(b[name_at + namelen])
        } else {
            None
        };
        let at = after - ino_len;
        let e_ino = if ino_len == 8 {
            be64(b, at)
        } else {
            u64::from(be32(b, at))
        };
        p = after;
        if !f(Entry {
            name,
            ino: e_ino,
            file_type: t,
        }) {
            return Ok(());
        }
    }
    Ok(())
}

/// Walk the data blocks of a block, leaf or node directory.
fn data_blocks(fs: &XfsFs, d: &Inode, f: &mut dyn FnMut(Entry) -> bool) -> Result<()> {
    let geo = fs.geo();
    let ext = bmap::extents(fs, d)?;
    let dbs = geo.dir_block_bytes;
    let limit = d.size.min(DATA_SPACE_BYTES);
    // Distinct directory blocks need distinct file-system blocks: more than fit in the file
    // system means a damaged map, and bounds the work whatever it claims.
    let mut budget = geo.fs_bytes / dbs + 1;
    let mut next_dblock = 0u64;
    let mut buf = vec![0u8; usize_from(dbs)];
    for e in &ext {
        let start = e.file_block * geo.block_bytes;
        if start >= limit {
            break;
        }
        let end = ((e.file_block + e.blocks) * geo.block_bytes).min(limit);
        let first = (start / dbs).max(next_dblock);
        let last = (end - 1) / dbs;
        for db in first..=last {
            if budget == 0 {
                return Err(corrupt(format!(
                    "directory inode {} maps more directory blocks than the file system holds",
                    d.ino
                )));
            }
            budget -= 1;
            fs.read_mapped(&ext, db * dbs, &mut buf)?;
            // v5 blocks record the disk address (512-byte units) of their first block.
            let daddr = match bmap::find(&ext, db * dbs / geo.block_bytes) {
                Some(x) => {
                    let fb = db * dbs / geo.block_bytes - x.file_block;
                    geo.fsblock_bytes(x.fsblock, x.blocks, "an extent")? / 512
                        + fb * (geo.block_bytes / 512)
                }
                None => u64::MAX,
            };
            if !data_block(fs, d.ino, db, daddr, &buf, f)? {
                return Ok(());
            }
        }
        next_dblock = last + 1;
    }
    Ok(())
}

/// Parse one data block; `Ok(false)` when `f` asked to stop.
fn data_block(
    fs: &XfsFs,
    ino: u64,
    db: u64,
    daddr: u64,
    b: &[u8],
    f: &mut dyn FnMut(Entry) -> bool,
) -> Result<bool> {
    let geo = fs.geo();
    let v5 = geo.version == 5;
    let bad = |what: String| {
        corrupt(format!(
            "directory inode {ino}, data block {db}: {what}; the directory is damaged"
        ))
    };
    let magic = be32(b, 0);
    let (single, data) = if v5 { (XDB3, XDD3) } else { (XD2B, XD2D) };
    if magic != single && magic != data {
        return Err(bad(format!(
            "magic {magic:#010x}, expected {single:#010x} or {data:#010x}"
        )));
    }
    let hdr = if v5 { HDR_V5 } else { HDR_V4 };
    if v5 {
        let want = crc32c_zeroed(b, CRC_OFFSET);
        let got = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if want != got {
            return Err(bad(format!(
                "CRC {got:#010x}, its contents give {want:#010x}"
            )));
        }
        if be64(b, OWNER_OFFSET) != ino
            || b[UUID_OFFSET..UUID_OFFSET + 16] != geo.meta_uuid
            || be64(b, BLKNO_OFFSET) != daddr
        {
            return Err(bad(
                "it names another owner, file system or disk address".into()
            ));
        }
    }
    let mut end = b.len();
    if magic == single {
        // Tail: leaf entry count and stale count; the leaf entries sit before it.
        let count = be32(b, b.len() - 8) as usize;
        let leaf = count.saturating_mul(8).saturating_add(8);
        if leaf > b.len() - hdr {
            return Err(bad(format!("the tail claims {count} leaf entries")));
        }
        end = b.len() - leaf;
    }
    let has_ftype = geo.has_ftype;
    let mut p = hdr;
    // The smallest region, free or used, is 8 bytes; a used entry at least 16.
    while p + 8 <= end {
        if be16(b, p) == FREE_TAG {
            let len = usize::from(be16(b, p + 2));
            if len < 8 || len % 8 != 0 || p + len > end {
                return Err(bad(format!("a free region of {len} bytes at {p}")));
            }
            p += len;
            continue;
        }
        if p + 16 > end {
            return Err(bad(format!("an entry at {p} runs past the block")));
        }
        let e_ino = be64(b, p);
        let namelen = usize::from(b[p + 8]);
        let size = (11 + namelen + usize::from(has_ftype)).next_multiple_of(8);
        if namelen == 0 || p + size > end {
            return Err(bad(format!("an entry at {p} runs past the block")));
        }
        let name = &b[p + 9..p + 9 + namelen];
        let t = if has_ftype {
            ftype(b[p + 9 + namelen])
        } else {
            None
        };
        p += size;
        if name == b"." || name == b".." {
            continue;
        }
        if !f(Entry {
            name: name.to_vec(),
            ino: e_ino,
            file_type: t,
        }) {
            return Ok(false);
        }
    }
    Ok(true)
}
