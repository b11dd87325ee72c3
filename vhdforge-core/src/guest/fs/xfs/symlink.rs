//! XFS symlink targets (`docs/guest-filesystems.md` §4.7): in the inode (local format) when
//! they fit, else in blocks mapped by extents; on v5 each such block starts with an `XSLM`
//! header (offset, byte count, CRC, owner) before its share of the target.

use super::inode::{ForkFormat, Inode};
use super::{bmap, corrupt, XfsFs};
use crate::error::Result;
use crate::format::vhdx::crc32c_zeroed;
use crate::io::usize_from;

/// XFS never stores a longer target.
pub const MAX_TARGET: u64 = 1024;
/// `XSLM`.
const XSLM: u32 = 0x5853_4C4D;
/// Bytes of the v5 remote symlink header.
const HDR_V5: usize = 56;
/// Offset of its CRC.
const CRC_OFFSET: usize = 12;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The target of symlink inode `s`.
pub fn target(fs: &XfsFs, s: &Inode) -> Result<Vec<u8>> {
    let ino = s.ino;
    if s.size == 0 || s.size > MAX_TARGET {
        return Err(corrupt(format!(
            "symlink inode {ino} has a {}-byte target; XFS stores 1 to {MAX_TARGET} bytes",
            s.size
        )));
    }
    let len = usize_from(s.size);
    if s.format == ForkFormat::Local {
        return s.fork.get(..len).map(<[u8]>::to_vec).ok_or_else(|| {
            corrupt(format!(
                "symlink inode {ino}: a {len}-byte target does not fit its {}-byte fork",
                s.fork.len()
            ))
        });
    }
    let ext = bmap::extents(fs, s)?;
    let geo = fs.geo();
    if geo.version == 4 {
        let mut out = vec![0u8; len];
        fs.read_mapped(&ext, 0, &mut out)?;
        return Ok(out);
    }
    let bs = usize_from(geo.block_bytes);
    let mut out = Vec::with_capacity(len);
    let mut block = vec![0u8; bs];
    let mut fb = 0u64;
    while out.len() < len {
        fs.read_mapped(&ext, fb * geo.block_bytes, &mut block)?;
        let offset = be32(&block, 4) as usize;
        let bytes = be32(&block, 8) as usize;
        let crc_ok = crc32c_zeroed(&block, CRC_OFFSET)
            == u32::from_le_bytes([block[12], block[13], block[14], block[15]]);
        let owner = u64::from_be_bytes(block[32..40].try_into().unwrap_or([0; 8]));
        if be32(&block, 0) != XSLM
            || !crc_ok
            || owner != ino
            || block[16..32] != geo.meta_uuid
            || offset != out.len()
            || bytes == 0
            || bytes > bs - HDR_V5
            || offset + bytes > len
        {
            return Err(corrupt(format!(
                "symlink inode {ino}: remote block {fb} has a bad XSLM header (magic, CRC, owner or range {offset}+{bytes} of {len})"
            )));
        }
        out.extend_from_slice(&block[HDR_V5..HDR_V5 + bytes]);
        fb += 1;
    }
    Ok(out)
}
