//! Is the internal log clean (`docs/guest-filesystems.md` §4.9)? The log is a ring of
//! 512-byte blocks, each stamped with the cycle (pass) in which it was written. The head is
//! where the cycle number drops; the last record before it must be a lone unmount record.
//! Anything else means the metadata on disk may be older than what the log holds, and
//! since nothing is replayed read-only, such a file system is refused, never read stale.

use super::{corrupt, XfsFs};
use crate::error::{Error, ErrorKind, Result};

/// Log record header magic.
const RECORD_MAGIC: u32 = 0xFEED_BABE;
/// Log basic block.
const BB_LEN: usize = 512;
const BB: u64 = BB_LEN as u64;
/// Op header client id of log-manager records.
const CLIENT_LOG: u8 = 0xAA;
/// Op header flag: this transaction is an unmount record.
const UNMOUNT_TRANS: u8 = 0x20;
/// Payload of an unmount record (written host-endian, so either byte order).
const UNMOUNT_MAGIC: u16 = 0x556E;
/// A record is at most 256 KiB of data plus its header blocks; searching further back for
/// the last header can only find an older record.
const MAX_RECORD_BLOCKS: u64 = 2 * 512 + 16;

fn dirty(why: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "guest.fs.xfs_dirty_log",
        format!(
            "XFS: the log was not cleanly unmounted ({why}), so the metadata on disk may be stale and vhdforge will not read it; mount the file system once (in the guest or a helper VM) so the log is replayed, or run `xfs_repair` on it"
        ),
    )
}

struct Log<'a> {
    fs: &'a XfsFs,
    at: u64,
    blocks: u64,
}

impl Log<'_> {
    fn block(&self, i: u64) -> Result<[u8; BB_LEN]> {
        let mut b = [0u8; BB_LEN];
        self.fs.read_at(&mut b, self.at + (i % self.blocks) * BB)?;
        Ok(b)
    }

    fn word(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// The cycle a block was written in: a header carries it after the magic, any other
    /// block in its first word.
    fn cycle(&self, i: u64) -> Result<u32> {
        let b = self.block(i)?;
        Ok(if Self::word(&b, 0) == RECORD_MAGIC {
            Self::word(&b, 4)
        } else {
            Self::word(&b, 0)
        })
    }
}

/// Refuse the file system unless its log ends with a clean unmount record.
pub fn check_clean(fs: &XfsFs) -> Result<()> {
    let geo = fs.geo();
    let (start, len) = geo.log;
    if len == 0 {
        return Err(corrupt("the superblock gives the internal log 0 blocks"));
    }
    let at = geo.fsblock_bytes(start, len, "the log start")?;
    let log = Log {
        fs,
        at,
        blocks: len * geo.block_bytes / BB,
    };
    let n = log.blocks;
    let c0 = log.cycle(0)?;
    if c0 == 0 {
        return Err(dirty("its first block was never written"));
    }
    let last = log.cycle(n - 1)?;
    // Blocks [0, head) carry cycle c0, blocks [head, n) the previous one.
    let head = if last == c0 {
        n
    } else if last == c0 - 1 {
        let (mut lo, mut hi) = (0u64, n - 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if log.cycle(mid)? == c0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    } else {
        return Err(dirty(&format!(
            "its first block is from cycle {c0} and its last from cycle {last}"
        )));
    };
    // The last record header before the head (the ring wraps).
    let mut back = 1u64;
    let (r, hdr) = loop {
        if back > MAX_RECORD_BLOCKS.min(n) {
            return Err(dirty("no record header near its head"));
        }
        let i = (head + n - back) % n;
        let b = log.block(i)?;
        if Log::word(&b, 0) == RECORD_MAGIC {
            break (i, b);
        }
        back += 1;
    };
    let version = Log::word(&hdr, 8);
    let data_len = u64::from(Log::word(&hdr, 12));
    let ops = Log::word(&hdr, 40);
    let h_size = u64::from(Log::word(&hdr, 320));
    let hdr_blocks = if version == 2 && h_size > 32768 {
        h_size.div_ceil(32768)
    } else {
        1
    };
    // The record must end exactly at the head, or the head search was misled.
    if ops != 1 || hdr_blocks + data_len.div_ceil(BB) != back {
        return Err(dirty(&format!(
            "its last record holds {ops} operations in {data_len} bytes"
        )));
    }
    let op = log.block(r + hdr_blocks)?;
    let payload = u16::from_be_bytes([op[12], op[13]]);
    if op[8] != CLIENT_LOG
        || op[9] & UNMOUNT_TRANS == 0
        || (payload != UNMOUNT_MAGIC && payload.swap_bytes() != UNMOUNT_MAGIC)
    {
        return Err(dirty("its last record is not an unmount record"));
    }
    Ok(())
}
