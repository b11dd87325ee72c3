//! ext2/3/4 inode numbers, which the `ext4-view` crate uses but does not expose: a path is
//! walked here from the root inode (2) through the directories' on-disk entries, so `ls -R`
//! can give each directory an identity (`docs/guest-filesystems.md` §2). Only what the walk
//! needs is read — the superblock's geometry, one group descriptor and one inode per step,
//! and the directory's blocks (extent tree or ext2/3 block map) — each bounded by the
//! volume and by the directory's size.
//!
//! Every inode read here has its checksum verified, and every extent tree block its tail
//! checksum, when the file system has `metadata_csum` (the kernel's seeds: §2.3); every
//! extent is bounds-checked as the kernel's `ext4_ext_check` does before any data is read
//! through it, so a damaged tree is an error naming the inode and block, never wrong bytes.
//!
//! The journal is not replayed here (the crate replays it for everything else), so a
//! directory that exists only in a not yet checkpointed transaction is not found: the caller
//! then has no identity for it, which only costs `ls -R` its cycle check for that directory.

use super::ext4::{corrupt, le16, le32};
use super::volume::{ReadRange, Volume};
use crate::error::{Error, ErrorKind, Result};

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
/// `RO_COMPAT_METADATA_CSUM`: inodes, extent blocks and the rest carry crc32c checksums.
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
/// `INCOMPAT_CSUM_SEED`: the checksum seed is stored in `s_checksum_seed` (so the UUID can
/// change without rewriting every checksum) instead of derived from the UUID.
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
/// An extent's `ee_len` above this marks it unwritten (preallocated): it maps
/// `ee_len - 32768` blocks that read as zeros.
const EXT_INIT_MAX_LEN: u16 = 32_768;
/// Logical blocks are 32-bit: an extent may not reach past block 2³² − 1.
const EXT_MAX_BLOCKS: u64 = 0xFFFF_FFFF;
/// The extent node header and each entry (index or leaf) are 12 bytes.
const EXTENT_ENTRY_BYTES: usize = 12;
/// `ext4_inode`: `l_i_checksum_lo` (in the 128-byte base) and `i_checksum_hi` (in the
/// extra part, present when `i_extra_isize` reaches it).
const INODE_CSUM_LO: usize = 0x7C;
const INODE_EXTRA_ISIZE: usize = 0x80;
const INODE_CSUM_HI: usize = 0x82;
const GOOD_OLD_INODE_BYTES: usize = 128;

/// crc32c as the kernel's `ext4_chksum` computes it: the running value is the seed, no
/// final inversion. (Reflected Castagnoli polynomial.)
fn crc32c_raw(mut crc: u32, bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i: u32 = 0;
        while i < 256 {
            let mut c = i;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i as usize] = c;
            i += 1;
        }
        t
    };
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

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
    /// `s_blocks_count`: no extent may reach past it.
    blocks_count: u64,
    /// `s_first_data_block`: the superblock's block; extents start after it.
    first_data_block: u64,
    /// The file system's checksum seed, when it has `metadata_csum`.
    csum_seed: Option<u32>,
}

/// An extent tree being walked: whose, how far, and what it mapped so far.
struct Tree {
    ino: u32,
    csum_seed: Option<u32>,
    /// Tree blocks read so far (at most [`MAX_TREE_BLOCKS`]).
    blocks: usize,
    runs: Vec<Run>,
    /// More than [`MAX_RUNS`] extents: the rest were checked but not kept.
    past_limit: bool,
    /// Some extent, kept or not, is unwritten.
    any_unwritten: bool,
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
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
pub(super) struct RawInode {
    ino: u32,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    flags: u32,
    pub size: u64,
    /// `i_block`: the extent tree root or the block map.
    map: [u8; 60],
    /// The seed of this inode's extent block checksums (fs seed, inode number,
    /// generation), when the file system has `metadata_csum`.
    csum_seed: Option<u32>,
}

/// What [`InodeWalk::file_runs`] decided for a regular file.
pub(super) enum FileMap {
    /// Read it through this map: its inode and its (sorted, checked) extents.
    Runs(RawInode, Vec<Run>),
    /// Read it through the crate (block map, inline, encrypted, or a journal to replay
    /// and no preallocated extent at home).
    Crate,
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
        // As the kernel: a power of two from 128 to the block size (so an inode larger than
        // 128 bytes holds `i_extra_isize` and `i_checksum_hi`).
        if inodes_per_group == 0
            || inode_bytes < 128
            || inode_bytes > block_bytes
            || !inode_bytes.is_power_of_two()
        {
            return Err(corrupt(format!(
                "s_inodes_per_group {inodes_per_group}, s_inode_size {inode_bytes}: the superblock is damaged"
            )));
        }
        let blocks_count = if incompat & INCOMPAT_64BIT != 0 {
            u64::from(le32(&sb, 0x04)) | (u64::from(le32(&sb, 0x150)) << 32)
        } else {
            u64::from(le32(&sb, 0x04))
        };
        // The kernel's seed: `s_checksum_seed` when the feature says it is stored, else
        // crc32c(~0, s_uuid). Checked against e2fsprogs-made images (the tests change the
        // UUID with tune2fs to tell the two apart).
        let csum_seed = (le32(&sb, 0x64) & RO_COMPAT_METADATA_CSUM != 0).then(|| {
            if incompat & INCOMPAT_CSUM_SEED != 0 {
                le32(&sb, 0x270)
            } else {
                crc32c_raw(!0, &sb[0x68..0x78])
            }
        });
        Ok(InodeWalk {
            vol,
            block_bytes,
            inodes_count: le32(&sb, 0x00),
            inodes_per_group,
            inode_bytes,
            desc_bytes,
            descriptors_at: (u64::from(le32(&sb, 0x14)) + 1) * block_bytes,
            incompat,
            blocks_count,
            first_data_block: u64::from(le32(&sb, 0x14)),
            csum_seed,
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
        // The whole on-disk inode (at most a block, checked in `new`): the checksum covers it.
        let mut raw = vec![0u8; usize_of(self.inode_bytes)];
        self.vol.read_at(&mut raw, at)?;
        let mut map = [0u8; 60];
        map.copy_from_slice(&raw[0x28..0x64]);
        let csum_seed = match self.csum_seed {
            Some(fs_seed) => {
                let seed = crc32c_raw(
                    crc32c_raw(fs_seed, &ino.to_le_bytes()),
                    &raw[0x64..0x68], // i_generation
                );
                check_inode_csum(ino, seed, &raw, at)?;
                Some(seed)
            }
            None => None,
        };
        Ok(RawInode {
            ino,
            mode: le16(&raw, 0x00),
            uid: u32::from(le16(&raw, 0x02)) | (u32::from(le16(&raw, 0x78)) << 16),
            gid: u32::from(le16(&raw, 0x18)) | (u32::from(le16(&raw, 0x7A)) << 16),
            flags: le32(&raw, 0x20),
            size: u64::from(le32(&raw, 0x04)) | (u64::from(le32(&raw, 0x6C)) << 32),
            map,
            csum_seed,
        })
    }

    /// The inode number of the resolved path `path`, or `None` when a component is not
    /// found or a directory on the way stores its entries inline.
    ///
    /// `unique`: every directory on the way is scanned whole, and a name found twice in one
    /// is an error. The crate finds a name through an htree directory's hash index, which
    /// reads one leaf; this walk scans the leaves in order. They can disagree only when a
    /// directory holds the name twice (damage a checksum may not catch: `^metadata_csum`),
    /// so a caller that reads a file's data by this walk's answer asks for `unique`.
    pub(super) fn lookup(&self, path: &[u8], unique: bool) -> Result<Option<u32>> {
        let mut ino = ROOT_INO;
        for name in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let dir = self.inode(ino)?;
            if dir.mode & S_IFMT != S_IFDIR || dir.flags & INLINE_DATA_FL != 0 {
                return Ok(None);
            }
            match self.find(&dir, name, unique)? {
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

    /// The extent map of the regular file `ino` (sorted, not overlapping, every extent
    /// checked), for reading its data in large pieces; [`FileMap::Crate`] when the crate
    /// should read it instead: the file is inline, encrypted or block-mapped (ext2/3), or
    /// the journal needs replaying (the map at home could be stale).
    ///
    /// The crate reads an unwritten (preallocated) extent's blocks as data — whatever the
    /// disk held before — where the kernel reads zeros. So a file is never handed to it
    /// while its tree at home holds an unwritten extent: a journal to replay then makes
    /// the file an error, and so does one with more than [`MAX_RUNS`] extents (too many to
    /// hold here) among which one is unwritten.
    pub(super) fn file_runs(&self, ino: u32) -> Result<FileMap> {
        let f = self.inode(ino)?;
        if f.mode & S_IFMT != S_IFREG
            || f.flags & (INLINE_DATA_FL | ENCRYPT_FL) != 0
            || f.flags & EXTENTS_FL == 0
        {
            return Ok(FileMap::Crate);
        }
        let mut tree = Tree {
            ino,
            csum_seed: f.csum_seed,
            blocks: 0,
            runs: Vec::new(),
            past_limit: false,
            any_unwritten: false,
        };
        let walked = self.extent_runs(&f.map, None, None, &mut tree);
        if self.incompat & INCOMPAT_RECOVER != 0 {
            // Whatever the home tree says, the crate replays the journal and reads what
            // it finds; only a visible unwritten extent is reason not to let it.
            if walked.is_ok() && tree.any_unwritten {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "guest.fs.ext4_unsupported",
                    format!(
                        "inode {ino} has preallocated (unwritten) extents and the journal holds transactions not yet written in place; vhdforge cannot read it exactly. Boot the guest once (or run `e2fsck` on the file system) to replay the journal"
                    ),
                ));
            }
            return Ok(FileMap::Crate);
        }
        walked?;
        if tree.past_limit {
            if !tree.any_unwritten {
                return Ok(FileMap::Crate);
            }
            return Err(Error::new(
                ErrorKind::Unsupported,
                "guest.fs.ext4_unsupported",
                format!(
                    "inode {ino} is mapped by more than {MAX_RUNS} extents, some of them preallocated (unwritten); vhdforge reads such files only up to {MAX_RUNS} extents. `e4defrag` in the guest merges them"
                ),
            ));
        }
        // Logical order, no overlap: what the kernel writes, and what a reader that binary
        // searches the map needs.
        for w in tree.runs.windows(2) {
            if w[0].logical + w[0].len > w[1].logical {
                return Err(corrupt(format!(
                    "inode {ino}'s extents overlap or are out of order (blocks {}+{} then {})",
                    w[0].logical, w[0].len, w[1].logical
                )));
            }
        }
        let runs = std::mem::take(&mut tree.runs);
        Ok(FileMap::Runs(f, runs))
    }

    /// The bounds the kernel's `ext4_inode_block_valid` puts on `count` blocks from
    /// `start`: after the superblock's block, within `s_blocks_count`.
    fn check_blocks(&self, ino: u32, what: &str, start: u64, count: u64) -> Result<()> {
        if start <= self.first_data_block
            || start
                .checked_add(count)
                .is_none_or(|end| end > self.blocks_count)
        {
            return Err(corrupt(format!(
                "inode {ino}'s {what} maps blocks {start}+{count}; the file system's blocks are {} to {}",
                self.first_data_block + 1,
                self.blocks_count.saturating_sub(1)
            )));
        }
        Ok(())
    }

    /// Collect the leaf extents under `node` into `tree`, checking each node as the
    /// kernel's `ext4_ext_check` does: magic, `eh_entries <= eh_max <=` what the node
    /// holds, the depth, the tail checksum of a tree block, index entries in order, each
    /// child's first entry at its index entry's logical block, and every extent inside the
    /// file system. `node_block` is the tree block `node` came from (`None`: the root in
    /// the inode, which the inode checksum covers); `first` the logical block the parent's
    /// index entry says the node starts at.
    fn extent_runs(
        &self,
        node: &[u8],
        node_block: Option<u64>,
        first: Option<(u16, u64)>,
        tree: &mut Tree,
    ) -> Result<()> {
        let ino = tree.ino;
        let here = || match node_block {
            Some(b) => format!("inode {ino}'s extent tree block {b}"),
            None => format!("inode {ino}'s extent tree root (in the inode)"),
        };
        let magic = le16(node, 0);
        let entries = usize::from(le16(node, 2));
        let max = usize::from(le16(node, 4));
        let d = le16(node, 6);
        let fits = (node.len() - EXTENT_ENTRY_BYTES) / EXTENT_ENTRY_BYTES;
        if magic != EXTENT_MAGIC
            || max == 0
            || max > fits
            || entries > max
            || d > MAX_EXTENT_DEPTH
            || first.is_some_and(|(want, _)| want != d)
        {
            return Err(corrupt(format!(
                "{} has magic {magic:#06x}, {entries} entries of at most {max}, depth {d} (expected 0xf30a, entries <= max <= {fits}, a depth {})",
                here(),
                first.map_or_else(|| format!("of at most {MAX_EXTENT_DEPTH}"), |(w, _)| format!("of {w}, one less than its parent's"))
            )));
        }
        if let (Some(block), Some(seed)) = (node_block, tree.csum_seed) {
            // `ext4_extent_tail` follows the `eh_max` slots; it fits any block (a power of
            // two of at least 1 KiB leaves 4 bytes after the last whole slot).
            let tail = EXTENT_ENTRY_BYTES + EXTENT_ENTRY_BYTES * max;
            if tail + 4 > node.len() {
                return Err(corrupt(format!("{} has no room for its checksum", here())));
            }
            let stored = le32(node, tail);
            let computed = crc32c_raw(seed, &node[..tail]);
            if stored != computed {
                return Err(corrupt(format!(
                    "inode {ino}'s extent tree block {block} fails its checksum (stored {stored:#010x}, computed {computed:#010x}): the block is damaged"
                )));
            }
        }
        let mut prev: Option<u64> = None;
        for i in 0..entries {
            let e = &node[12 + i * 12..24 + i * 12];
            let logical = u64::from(le32(e, 0));
            if i == 0 {
                if let Some((_, want)) = first {
                    if logical != want {
                        return Err(corrupt(format!(
                            "{} starts at logical block {logical}, but its parent's index entry says {want}",
                            here()
                        )));
                    }
                }
            }
            if d == 0 {
                self.leaf_extent(e, i, tree, &here)?;
            } else {
                if prev.is_some_and(|p| p >= logical) {
                    return Err(corrupt(format!(
                        "{}: index entries out of order (logical block {logical} after {})",
                        here(),
                        prev.unwrap_or(0)
                    )));
                }
                prev = Some(logical);
                let child = u64::from(le32(e, 4)) | (u64::from(le16(e, 8)) << 32);
                tree.blocks += 1;
                if tree.blocks > MAX_TREE_BLOCKS {
                    return Err(corrupt(format!(
                        "inode {ino}'s extent tree reaches more than {MAX_TREE_BLOCKS} tree blocks (block {child} again and again: index entries name the same node more than once)"
                    )));
                }
                self.check_blocks(ino, "extent tree index", child, 1)?;
                let mut block = vec![0u8; usize_of(self.block_bytes)];
                // `check_blocks` keeps `child` inside the file system, which fits its volume.
                self.vol
                    .read_at(&mut block, child.saturating_mul(self.block_bytes))?;
                self.extent_runs(&block, Some(child), Some((d - 1, logical)), tree)?;
            }
        }
        Ok(())
    }

    /// Check one leaf extent (`e`, entry `i` of its node) and keep it in `tree`.
    fn leaf_extent(
        &self,
        e: &[u8],
        i: usize,
        tree: &mut Tree,
        here: &dyn Fn() -> String,
    ) -> Result<()> {
        let logical = u64::from(le32(e, 0));
        let raw_len = le16(e, 4);
        let (len, unwritten) = if raw_len > EXT_INIT_MAX_LEN {
            (u64::from(raw_len - EXT_INIT_MAX_LEN), true)
        } else {
            (u64::from(raw_len), false)
        };
        let start = u64::from(le32(e, 8)) | (u64::from(le16(e, 6)) << 32);
        if len == 0 || logical + len > EXT_MAX_BLOCKS {
            return Err(corrupt(format!(
                "{}: extent {i} maps {len} blocks from logical block {logical} (ee_len {raw_len}); an extent maps 1 or more blocks below block {EXT_MAX_BLOCKS}",
                here()
            )));
        }
        self.check_blocks(
            tree.ino,
            &format!("extent at logical block {logical}"),
            start,
            len,
        )?;
        tree.any_unwritten |= unwritten;
        if tree.runs.len() >= MAX_RUNS {
            tree.past_limit = true;
            return Ok(());
        }
        tree.runs.push(Run {
            logical,
            physical: (!unwritten).then_some(start),
            len,
        });
        Ok(())
    }

    /// Search a directory's blocks for `name`. A linear scan finds every entry in hashed
    /// (htree) directories too: their index blocks look like one empty entry.
    fn find(&self, dir: &RawInode, name: &[u8], unique: bool) -> Result<Option<u32>> {
        if dir.size > MAX_DIR_BYTES {
            return Err(corrupt(format!(
                "a directory claims {} bytes, over the {MAX_DIR_BYTES}-byte limit",
                dir.size
            )));
        }
        let blocks = dir.size.div_ceil(self.block_bytes);
        let mut buf = vec![0u8; usize::try_from(self.block_bytes).unwrap_or(4096)];
        let mut found = None;
        let mut hits = 0usize;
        let mut visit = |physical: u64| -> Result<bool> {
            let at = physical
                .checked_mul(self.block_bytes)
                .ok_or_else(|| corrupt(format!("directory block {physical} lies past any disk")))?;
            self.vol.read_at(&mut buf, at)?;
            let before = hits;
            self.scan_block(&buf, name, &mut hits, &mut found)?;
            if hits > before {
                if let Some(seed) = dir.csum_seed {
                    check_dirent_tail(dir.ino, physical, seed, &buf)?;
                }
            }
            Ok(if unique { hits < 2 } else { hits == 0 })
        };
        let mut left = blocks;
        if dir.flags & EXTENTS_FL != 0 {
            let mut tree = Tree {
                ino: dir.ino,
                csum_seed: dir.csum_seed,
                blocks: 0,
                runs: Vec::new(),
                past_limit: false,
                any_unwritten: false,
            };
            self.extent_runs(&dir.map, None, None, &mut tree)?;
            if tree.past_limit {
                return Err(corrupt(format!(
                    "directory inode {} is mapped by more than {MAX_RUNS} extents",
                    dir.ino
                )));
            }
            'runs: for r in tree.runs {
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
        if hits > 1 {
            return Err(corrupt(format!(
                "directory inode {} holds the name {} more than once",
                dir.ino,
                super::show(name)
            )));
        }
        Ok(found)
    }

    /// Count the entries of `b` named `name` in `hits`; the first one's inode in `found`.
    fn scan_block(
        &self,
        b: &[u8],
        name: &[u8],
        hits: &mut usize,
        found: &mut Option<u32>,
    ) -> Result<()> {
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
                *hits += 1;
                found.get_or_insert(ino);
            }
            off += rec_len;
        }
        Ok(())
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

/// The kernel's `ext4_inode_csum_verify`: crc32c over the whole inode with the two
/// checksum fields counted as zeros; only the low 16 bits are stored (and compared)
/// when the inode is 128 bytes or its extra part stops short of `i_checksum_hi`.
fn check_inode_csum(ino: u32, seed: u32, raw: &[u8], at: u64) -> Result<()> {
    let mut c = crc32c_raw(seed, &raw[..INODE_CSUM_LO]);
    c = crc32c_raw(c, &[0, 0]);
    c = crc32c_raw(c, &raw[INODE_CSUM_LO + 2..GOOD_OLD_INODE_BYTES]);
    let mut has_hi = false;
    // (`new` admits only 128 or a power of two from 256: the extra fields are there.)
    if raw.len() >= INODE_CSUM_HI + 2 {
        c = crc32c_raw(c, &raw[GOOD_OLD_INODE_BYTES..INODE_CSUM_HI]);
        let extra = usize::from(le16(raw, INODE_EXTRA_ISIZE));
        let mut rest = INODE_CSUM_HI;
        if GOOD_OLD_INODE_BYTES + extra >= INODE_CSUM_HI + 2 {
            c = crc32c_raw(c, &[0, 0]);
            rest += 2;
            has_hi = true;
        }
        c = crc32c_raw(c, &raw[rest..]);
    }
    let mut stored = u32::from(le16(raw, INODE_CSUM_LO));
    if has_hi {
        stored |= u32::from(le16(raw, INODE_CSUM_HI)) << 16;
    } else {
        c &= 0xFFFF;
    }
    if stored != c {
        return Err(corrupt(format!(
            "inode {ino} (at byte {at} of the volume) fails its checksum: stored {stored:#010x}, computed {c:#010x}"
        )));
    }
    Ok(())
}

/// The kernel's `ext4_dirblock_csum_verify` for the leaf block where a name was found: an
/// `ext4_dir_entry_tail` in its last 12 bytes (inode 0, `rec_len` 12, `name_len` 0, type
/// 0xDE) holding crc32c(the directory's seed, the block before the tail). Only a block that
/// yields a match is checked (htree index blocks, which hold no names, carry another tail):
/// the crate finds a name through the hash index and never reads the other leaves, so an
/// unverified match in a damaged leaf could name another file than the crate opened.
fn check_dirent_tail(dir_ino: u32, block: u64, seed: u32, b: &[u8]) -> Result<()> {
    let t = b.len() - 12;
    let is_tail = le32(b, t) == 0 && le16(b, t + 4) == 12 && b[t + 6] == 0 && b[t + 7] == 0xDE;
    let computed = crc32c_raw(seed, &b[..t]);
    if !is_tail || le32(b, t + 8) != computed {
        return Err(corrupt(format!(
            "directory inode {dir_ino}'s block {block} fails its checksum (no valid ext4_dir_entry_tail, or stored {:#010x} where {computed:#010x} was computed)",
            le32(b, t + 8)
        )));
    }
    Ok(())
}
