//! The GPT header (UEFI spec, "GUID Partition Table Disk Layout"; docs/guest-partitions.md §2.1).
//!
//! The primary header sits at LBA 1, the backup normally at the disk's last LBA. Each is
//! protected by a CRC-32 over `HeaderSize` bytes with the CRC field zeroed, and names the
//! LBA of its own entry array and that array's CRC-32.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `EFI PART`.
pub const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Smallest header: the defined fields.
pub const MIN_HEADER_SIZE: u32 = 92;
/// Offset of `HeaderCRC32` inside the header.
pub const HEADER_CRC_OFFSET: usize = 16;

/// A GPT header as laid out on disk (the defined 92 bytes; the rest of the sector is reserved).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct GptHeader {
    /// `EFI PART`.
    pub signature: [u8; 8],
    /// 0x00010000 for every GPT written so far.
    pub revision: U32,
    /// Bytes covered by the header CRC: at least 92, at most one logical sector.
    pub header_size: U32,
    /// CRC-32 (IEEE) of `header_size` bytes with this field zeroed.
    pub header_crc32: U32,
    /// Must be zero.
    pub reserved: U32,
    /// The LBA holding this header (1 for the primary).
    pub my_lba: U64,
    /// The LBA of the other copy (normally the disk's last LBA for the primary, 1 for the backup).
    pub alternate_lba: U64,
    /// First LBA a partition may use.
    pub first_usable_lba: U64,
    /// Last LBA a partition may use (inclusive).
    pub last_usable_lba: U64,
    /// Disk GUID (first three fields little-endian).
    pub disk_guid: [u8; 16],
    /// First LBA of this copy's entry array (2 for the primary; last usable + 1 for the backup).
    pub partition_entry_lba: U64,
    /// Entries in the array (usually 128); unused entries have an all-zero type GUID.
    pub number_of_partition_entries: U32,
    /// Bytes per entry: 128 × 2^n.
    pub size_of_partition_entry: U32,
    /// CRC-32 (IEEE) of exactly `number × size` bytes of the entry array.
    pub partition_entry_array_crc32: U32,
}

const _: () = assert!(std::mem::size_of::<GptHeader>() == MIN_HEADER_SIZE as usize);
