//! A GPT partition entry (docs/guest-partitions.md §2.2).

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of the defined part of an entry; larger entry sizes only add reserved bytes.
pub const ENTRY_SIZE: usize = 128;
/// Attribute bit 0: required by the platform.
pub const ATTR_REQUIRED: u64 = 1 << 0;
/// Attribute bit 2: legacy BIOS bootable (what BIOS boot code of a GPT disk looks for).
pub const ATTR_LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;

/// One GPT entry as laid out on disk.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct GptEntry {
    /// Partition type GUID (first three fields little-endian); all zero = unused slot.
    pub type_guid: [u8; 16],
    /// Unique partition GUID: Linux's `PARTUUID`.
    pub unique_guid: [u8; 16],
    /// First LBA.
    pub starting_lba: U64,
    /// Last LBA, inclusive.
    pub ending_lba: U64,
    /// Attribute bits: 0 required, 1 no block-IO protocol, 2 legacy BIOS bootable,
    /// 48–63 defined by the partition type.
    pub attributes: U64,
    /// Name, 36 UTF-16LE code units, NUL-terminated when shorter.
    pub name: [u8; 72],
}

const _: () = assert!(std::mem::size_of::<GptEntry>() == ENTRY_SIZE);

impl GptEntry {
    /// An unused slot.
    pub fn is_unused(&self) -> bool {
        self.type_guid == [0; 16]
    }
}
