//! The base block (`docs/guest-registry.md` §2): the first 4096 bytes of a hive file and the
//! first 512 bytes of each of its logs. Raw layout, the XOR checksum, then [`BaseBlock`], the
//! checked view the rest of the reader uses.

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::corrupt;
use crate::error::Result;

/// `regf`.
pub const SIGNATURE: [u8; 4] = *b"regf";
/// Bytes of the base block in a primary file; hive-bin offsets count from here.
pub const BASE_BLOCK_BYTES: usize = 4096;
/// Bytes of the base block copy at the start of a log, and the bytes the checksum covers + 4.
pub const LOG_HEADER_BYTES: usize = 512;
/// Offset of the checksum: the XOR of the 127 little-endian u32 before it.
const CHECKSUM_OFFSET: usize = 508;

/// File type of a primary hive file.
pub const FILE_TYPE_PRIMARY: u32 = 0;
/// File types of old-format logs (`DIRT` bitmap): Windows NT to Windows 8.
pub const FILE_TYPE_LOG_OLD: [u32; 2] = [1, 2];
/// File type of a new-format log (`HvLE` entries), Windows 8.1 and later.
pub const FILE_TYPE_LOG_NEW: u32 = 6;

/// The first 512 bytes of a base block, as laid out on disk (little-endian).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawBaseBlock {
    /// `regf`.
    pub signature: [u8; 4],
    /// Bumped when a write starts.
    pub primary_sequence: U32,
    /// Set equal to the primary sequence when the write completes; unequal means dirty.
    pub secondary_sequence: U32,
    /// FILETIME of the last write (not maintained since Windows 8.1).
    pub last_written: [u8; 8],
    /// Major version: 1.
    pub major_version: U32,
    /// Minor version: 3 to 6 (1.1 and 1.2 used another cell layout).
    pub minor_version: U32,
    /// 0 primary file, 1 or 2 old-format log, 6 new-format log.
    pub file_type: U32,
    /// 1 (direct memory load).
    pub file_format: U32,
    /// Offset of the root `nk` cell, relative to the hive bins data.
    pub root_cell_offset: U32,
    /// Bytes of hive bins data (a multiple of 4096).
    pub hive_bins_data_size: U32,
    /// Clustering factor (1).
    pub clustering_factor: U32,
    /// UTF-16LE file name, for debugging only.
    pub file_name: [u8; 64],
    /// Resource manager and log identifiers, flags and other Vista+ fields, unused here.
    pub reserved: [u8; 396],
    /// XOR of the 127 u32 before it (0xFFFFFFFF written as 0xFFFFFFFE, 0 as 1).
    pub checksum: U32,
}

const _: () = assert!(size_of::<RawBaseBlock>() == LOG_HEADER_BYTES);

/// The checksum a base block should carry: XOR of the first 127 u32, with the two results
/// Windows remaps (0xFFFFFFFF → 0xFFFFFFFE, 0 → 1).
pub fn checksum(block: &[u8]) -> u32 {
    let x = block[..CHECKSUM_OFFSET]
        .chunks_exact(4)
        .fold(0u32, |acc, w| {
            acc ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]])
        });
    match x {
        0xFFFF_FFFF => 0xFFFF_FFFE,
        0 => 1,
        x => x,
    }
}

/// Write the checksum of the first 508 bytes of `block` into it.
pub fn set_checksum(block: &mut [u8]) {
    let c = checksum(block);
    block[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4].copy_from_slice(&c.to_le_bytes());
}

/// The base block fields the reader uses, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseBlock {
    /// Primary sequence number.
    pub primary_sequence: u32,
    /// Secondary sequence number.
    pub secondary_sequence: u32,
    /// Minor version (3 to 6).
    pub minor_version: u32,
    /// File type (0 primary, 1/2/6 logs).
    pub file_type: u32,
    /// Root key cell offset (relative to the hive bins data).
    pub root_cell_offset: u32,
    /// Bytes of hive bins data.
    pub hive_bins_data_size: u32,
    /// Whether the stored checksum matches.
    pub checksum_ok: bool,
}

impl BaseBlock {
    /// The sequence numbers differ: a write was interrupted (or the logs hold newer data).
    pub fn sequences_differ(&self) -> bool {
        self.primary_sequence != self.secondary_sequence
    }
}

/// Parse and check the first 512 bytes of `bytes` as a base block. The checksum is reported,
/// not enforced (a bad checksum makes the hive dirty, `docs/guest-registry.md` §2); the
/// signature, version and format are enforced since nothing else can be read without them.
pub fn parse(bytes: &[u8], what: &str) -> Result<BaseBlock> {
    let Some(head) = bytes.get(..LOG_HEADER_BYTES) else {
        return Err(corrupt(
            0,
            format!(
                "{what} has {} bytes, fewer than the {LOG_HEADER_BYTES} of a base block",
                bytes.len()
            ),
        ));
    };
    let raw = RawBaseBlock::read_from_bytes(head).map_err(|_| corrupt(0, "base block"))?;
    if raw.signature != SIGNATURE {
        return Err(corrupt(
            0,
            format!(
                "{what} starts with {:02x?}, not the `regf` signature of a registry hive",
                raw.signature
            ),
        ));
    }
    let (major, minor) = (raw.major_version.get(), raw.minor_version.get());
    if major != 1 || !(3..=6).contains(&minor) {
        return Err(super::unsupported(format!(
            "{what} is registry format version {major}.{minor}; only 1.3 to 1.6 (Windows NT 4 and later) are read"
        )));
    }
    if raw.file_format.get() != 1 {
        return Err(super::unsupported(format!(
            "{what} has file format {}, expected 1 (direct memory load)",
            raw.file_format.get()
        )));
    }
    let size = raw.hive_bins_data_size.get();
    if size % 4096 != 0 {
        return Err(corrupt(
            40,
            format!("{what} says its hive bins hold {size} bytes, which is not a multiple of 4096"),
        ));
    }
    Ok(BaseBlock {
        primary_sequence: raw.primary_sequence.get(),
        secondary_sequence: raw.secondary_sequence.get(),
        minor_version: minor,
        file_type: raw.file_type.get(),
        root_cell_offset: raw.root_cell_offset.get(),
        hive_bins_data_size: size,
        checksum_ok: checksum(head) == raw.checksum.get(),
    })
}
