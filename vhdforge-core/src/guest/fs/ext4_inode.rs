//! ext2/3/4 inode numbers, which the `ext4-view` crate uses but does not expose: a path is
//! walked here from the root inode (2) through the directories' on-disk entries, so `ls -R`
//! can give each directory an identity (`docs/guest-filesystems.md` §2). Only what the walk
//! needs is read — the superblock's geometry, one group descriptor and one inode per step,
//! and the directory's blocks (extent tree or ext2/3 block map) — each bounded by the
//! volume and by the directory's size.
//!
//! The journal is not replayed here (the crate replays it for everything else), so a
//! directory that exists only in a not yet checkpointed transaction is not found: the caller
//! then has no identity for it, which only costs `ls -R` its cycle check for that directory.

use super::ext4::{corrupt, le16, le32};
use super::volume::{ReadRange, Volume};
use crate::error::Result;

const SB_OFFSET: u64 = 1024;
const ROOT_INO: u32 = 2;
/// `INCOMPAT_FILETYPE`: a directory entry's name length is one byte, its type the next.
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_64BIT: u32 = 0x80;
/// `INCOMPAT_RECOVER`: the journal holds transactions not yet written in place, so the
/// metadata at its home location may be stale.
const INCOMPAT_RECOVER: u32 = 0x4;
/// `i_flags`: fscrypt-encrypted contents.
const ENCRYPT_FL: u32 = 0x800;
const S_IFREG: u16 = 0x8000;
/// A file mapped by more extents than this is read through the crate instead (the map is
/// held in memory: 24 bytes an extent).
const MAX_RUNS: usize = 1 << 16;
/// `i_flags`: the inode maps its blocks with an extent tree.
const EXTENTS_FL: u32 = 0x8_0000;
/// `i_flags`: the data is inside the inode (small directories on `inline_data` file systems).
const INLINE_DATA_FL: u32 = 0x1000_0000;
const EXTENT_MAGIC: u16 = 0xF30A;
/// The kernel's extent trees are at most 5 levels deep.
const MAX_EXTENT_DEPTH: u16 = 5;
/// Most extent tree blocks one map may read. The depth check alone does not bound the walk:
/// every index entry of every level may name the same block, and with leaves that hold no
/// extent [`MAX_RUNS`] is never reached (4 · 340⁴ reads with 4 KiB blocks). A real tree of
/// at most [`MAX_RUNS`] extents has fewer blocks than extents plus its index blocks.
const MAX_TREE_BLOCKS: usize = 2 * MAX_RUNS;
/// Directories larger than this are not walked (the kernel's `largedir` limit is 4 GiB, but
/// real ones hold at most a few tens of MiB; the walk must stay bounded on a damaged size).
const MAX_DIR_BYTES: u64 = 1 << 30;
const S_IFMT: u16 = 0xF000;
const S_IFDIR: u16 = 0x4000;

/// The geometry needed to find an inode and read a directory.
pub(super) struct InodeWalk {
    vol: Volume,
    block_bytes: u64,
    inodes_count: u32,
    inodes_per_group: u32,
    inode_bytes: u64,
    desc_bytes: u64,
    descriptors_at: u64,
    incompat: u32,
}

/// A run of a file's blocks: `len` blocks from logical block `logical`, at physical block
/// `physical`, or reading as zeros when `physical` is `None` (unwritten).
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    pub logical: u64,
    pub physical: Option<u64>,
    pub len: u64,
}

/// The fields of an inode the walk uses.
struct RawInode {
    mode: u16,
    flags: u32,
    size: u64,
    /// `i_block`: the extent tree root or the block map.
    map: [u8; 60],
}

impl InodeWalk {
    /// Read the geometry from the superblock (already checked by the reader's precheck).
    pub(super) fn new(vol: Volume) -> Result<InodeWalk> {
        let mut sb = [0u8; 1024];
        vol.read_at(&mut sb, SB_OFFSET)?;
        let log_block = le32(&sb, 0x18).min(6);
        let block_bytes = 1024u64 << log_block;
        let incompat = le32(&sb, 0x60);
        let inode_bytes = if le32(&sb, 0x4C) == 0 {
            128
        } else {
            u64::from(le16(&sb, 0x58))
        };
        let desc_bytes = if incompat & INCOMPAT_64BIT != 0 {
            u64::from(le16(&sb, 0xFE)).max(32)
        } else {
            32
        };
        let inodes_per_group = le32(&sb, 0x28);
        if inodes_per_group == 0 || inode_bytes < 128 || inode_bytes > block_bytes {
            return Err(corrupt(format!(
                "s_inodes_per_group {inodes_per_group}, s_inode_size {inode_bytes}: the superblock is damaged"
            )));
        }
        Ok(InodeWalk {
            vol,
            block_bytes,
            inodes_count: le32(&sb, 0x00),
            inodes_per_group,
            inode_bytes,
            desc_bytes,
            descriptors_at: (u64::from(le32(&sb, 0x14)) + 1) * block_bytes,
            incompat,
        })
    }

    fn inode(&self, ino: u32) -> Result<RawInode> {
        if ino == 0 || ino > self.inodes_count {
            return Err(corrupt(format!(
                "a directory entry names inode {ino}; the file system has inodes 1 to {}",
                self.inodes_count
            )));
        }
        let group = u64::from((ino - 1) / self.inodes_per_group);
        let index = u64::from((ino - 1) % self.inodes_per_group);
        let mut desc = [0u8; 64];
        let dlen = usize::try_from(self.desc_bytes.min(64)).unwrap_or(32);
        self.vol.read_at(
            &mut desc[..dlen],
            self.descriptors_at + group * self.desc_bytes,
        )?;
        let mut table = u64::from(le32(&desc, 0x08));
        if dlen >= 64 {
            table |= u64::from(le32(&desc, 0x28)) << 32;
        }
        let at = table
            .checked_mul(self.block_bytes)
            .and_then(|t| t.checked_add(index * self.inode_bytes))
            .ok_or_else(|| corrupt(format!("inode {ino}'s table lies past any disk")))?;
        let mut raw = [0u8; 128];
        self.vol.read_at(&mut raw, at)?;
        let mut map = [0u8; 60];
        map.copy_from_slice(&raw[0x28..0x64]);
        Ok(RawInode {
            mode: le16(&raw, 0x00),
            flags: le32(&raw, 0x20),
            size: u64::from(le32(&raw, 0x04)) | (u64::from(le32(&raw, 0x6C)) << 32),
            map,
        })
    }

    /// The inode number of the resolved path `path`, or `None` when a component is not
    /// found or a directory on the way stores its entries inline.
    pub(super) fn lookup(&self, path: &[u8]) -> Result<Option<u32>> {
        let mut ino = ROOT_INO;
        for name in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let dir = self.inode(ino)?;
            if dir.mode & S_IFMT != S_IFDIR || dir.flags & INLINE_DATA_FL != 0 {
                return Ok(None);
            }
            match self.find(&dir, name)? {
                Some(next) => ino = next,
                None => return Ok(None),
            }
        }
        Ok(Some(ino))
    }

    /// The block size in bytes.
    pub(super) fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    /// The volume read from.
    pub(super) fn volume(&self) -> &Volume {
        &self.vol
    }

    /// The extent map of the regular file `ino` (sorted, not overlapping) and its size, for
    /// reading its data in large pieces; `None` when the crate should read it instead: the
    /// journal needs replaying (the map at home could be stale), or the file is inline,
    /// encrypted, block-mapped (ext2/3) or mapped by more than [`MAX_RUNS`] extents.
    pub(super) fn file_runs(&self, ino: u32) -> Result<Option<(u64, Vec<Run>)>> {
        if self.incompat & INCOMPAT_RECOVER != 0 {
            return Ok(None);
        }
        let f = self.inode(ino)?;
        if f.mode & S_IFMT != S_IFREG
            || f.flags & (INLINE_DATA_FL | ENCRYPT_FL) != 0
            || f.flags & EXTENTS_FL == 0
        {
            return Ok(None);
        }
        let mut runs = Vec::new();
        if !self.extent_runs(&f.map, None, &mut 0, &mut runs)? {
            return Ok(None);
        }
        // Logical order, no overlap: what the kernel writes, and what a reader that binary
        // searches the map needs.
        for w in runs.windows(2) {
            if w[0].logical + w[0].len > w[1].logical {
                return Err(corrupt(format!(
                    "inode {ino}'s extents overlap or are out of order (blocks {}+{} then {})",
                    w[0].logical, w[0].len, w[1].logical
                )));
            }
        }
        Ok(Some((f.size, runs)))
    }

    /// Collect the leaf extents under `node`; `false` when there are more than [`MAX_RUNS`].
    /// `blocks` counts the tree blocks read so far (at most [`MAX_TREE_BLOCKS`]).
    fn extent_runs(
        &self,
        node: &[u8],
        depth: Option<u16>,
        blocks: &mut usize,
        out: &mut Vec<Run>,
    ) -> Result<bool> {
        let magic = le16(node, 0);
        let entries = usize::from(le16(node, 2));
        let d = le16(node, 6);
        if magic != EXTENT_MAGIC
            || 12 + entries * 12 > node.len()
            || d > MAX_EXTENT_DEPTH
            || depth.is_some_and(|want| want != d)
        {
            return Err(corrupt(format!(
                "an extent tree node has magic {magic:#06x}, {entries} entries, depth {d} (expected 0xf30a, entries fitting the node, a depth one less than its parent's)"
            )));
        }
        for i in 0..entries {
            let e = &node[12 + i * 12..24 + i * 12];
            if d == 0 {
                if out.len() >= MAX_RUNS {
                    return Ok(false);
                }
                let mut len = u64::from(le16(e, 4));
                let uninit = len > 32_768;
                if uninit {
                    len -= 32_768;
                }
                let start = u64::from(le32(e, 8)) | (u64::from(le16(e, 6)) << 32);
                if len > 0 {
                    out.push(Run {
                        logical: u64::from(le32(e, 0)),
                        physical: (!uninit).then_some(start),
                        len,
                    });
                }
            } else {
                let child = u64::from(le32(e, 4)) | (u64::from(le16(e, 8)) << 32);
                *blocks += 1;
                if *blocks > MAX_TREE_BLOCKS {
                    return Err(corrupt(format!(
                        "an extent tree reaches more than {MAX_TREE_BLOCKS} tree blocks (block {child} again and again: index entries name the same node more than once)"
                    )));
                }
                let mut block = vec![0u8; usize::try_from(self.block_bytes).unwrap_or(4096)];
                let at = child
                    .checked_mul(self.block_bytes)
                    .ok_or_else(|| corrupt(format!("extent block {child} lies past any disk")))?;
                self.vol.read_at(&mut block, at)?;
                if !self.extent_runs(&block, Some(d - 1), blocks, out)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Search a directory's blocks for `name`. A linear scan finds every entry in hashed
    /// (htree) directories too: their index blocks look like one empty entry.
    fn find(&self, dir: &RawInode, name: &[u8]) -> Result<Option<u32>> {
        if dir.size > MAX_DIR_BYTES {
            return Err(corrupt(format!(
                "a directory claims {} bytes, over the {MAX_DIR_BYTES}-byte limit",
                dir.size
            )));
        }
        let blocks = dir.size.div_ceil(self.block_bytes);
        let mut buf = vec![0u8; usize::try_from(self.block_bytes).unwrap_or(4096)];
        let mut found = None;
        let mut visit = |physical: u64| -> Result<bool> {
            let at = physical
                .checked_mul(self.block_bytes)
                .ok_or_else(|| corrupt(format!("directory block {physical} lies past any disk")))?;
            self.vol.read_at(&mut buf, at)?;
            found = self.scan_block(&buf, name)?;
            Ok(found.is_none())
        };
        let mut left = blocks;
        if dir.flags & EXTENTS_FL != 0 {
            let mut runs = Vec::new();
            if !self.extent_runs(&dir.map, None, &mut 0, &mut runs)? {
                return Err(corrupt(format!(
                    "a directory is mapped by more than {MAX_RUNS} extents"
                )));
            }
            'runs: for r in runs {
                for k in 0..r.len {
                    if left == 0 {
                        break 'runs;
                    }
                    left -= 1;
                    // An unwritten extent reads as zeros: no entries in it.
                    if let Some(p) = r.physical {
                        if !visit(p + k)? {
                            break 'runs;
                        }
                    }
                }
            }
        } else {
            self.block_map(&dir.map, &mut left, &mut visit)?;
        }
        Ok(found)
    }

    fn scan_block(&self, b: &[u8], name: &[u8]) -> Result<Option<u32>> {
        let mut off = 0usize;
        while off + 8 <= b.len() {
            let ino = le32(b, off);
            let rec_len = usize::from(le16(b, off + 4));
            let name_len = if self.incompat & INCOMPAT_FILETYPE != 0 {
                usize::from(b[off + 6])
            } else {
                usize::from(le16(b, off + 6))
            };
            if rec_len < 8 || off + rec_len > b.len() || name_len > rec_len - 8 {
                return Err(corrupt(format!(
                    "a directory entry at byte {off} of its block has rec_len {rec_len} and name_len {name_len}; it must fit the {}-byte block",
                    b.len()
                )));
            }
            if ino != 0 && &b[off + 8..off + 8 + name_len] == name {
                return Ok(Some(ino));
            }
            off += rec_len;
        }
        Ok(None)
    }

    /// Visit the blocks of an ext2/3 block map: 12 direct, then single, double and triple
    /// indirect blocks of 32-bit block numbers (0 is a hole).
    fn block_map(
        &self,
        map: &[u8; 60],
        left: &mut u64,
        visit: &mut dyn FnMut(u64) -> Result<bool>,
    ) -> Result<bool> {
        for i in 0..15usize {
            let level = i.saturating_sub(11);
            let b = u64::from(le32(map, i * 4));
            if *left == 0 {
                return Ok(false);
            }
            if !self.indirect(b, level, left, visit)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn indirect(
        &self,
        block: u64,
        level: usize,
        left: &mut u64,
        visit: &mut dyn FnMut(u64) -> Result<bool>,
    ) -> Result<bool> {
        if level == 0 {
            *left = left.saturating_sub(1);
            return if block == 0 { Ok(true) } else { visit(block) };
        }
        if block == 0 {
            // A hole: the blocks it would map are skipped, and count as read.
            let span = (self.block_bytes / 4).saturating_pow(u32::try_from(level).unwrap_or(3));
            *left = left.saturating_sub(span);
            return Ok(*left > 0);
        }
        let mut ptrs = vec![0u8; usize::try_from(self.block_bytes).unwrap_or(4096)];
        let at = block
            .checked_mul(self.block_bytes)
            .ok_or_else(|| corrupt(format!("indirect block {block} lies past any disk")))?;
        self.vol.read_at(&mut ptrs, at)?;
        for p in ptrs.chunks_exact(4) {
            if *left == 0 {
                return Ok(false);
            }
            if !self.indirect(u64::from(le32(p, 0)), level - 1, left, visit)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
