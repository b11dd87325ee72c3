//! The dynamic disk header and its parent locator entries (VHD spec v1.0, "Dynamic Disk
//! Header Format"; docs/formats.md §1.7 and §1.9).
//!
//! 1024 bytes, big-endian, at the footer's `DataOffset` in dynamic and differencing disks. It
//! locates the BAT, gives the block size, and for differencing disks names the parent.

use super::footer::vhd_checksum;
use crate::error::{Error, Result};
use crate::finding::Findings;
use crate::io::ReadAt;
use zerocopy::big_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `cxsparse`: the dynamic header cookie.
pub const HEADER_COOKIE: &[u8; 8] = b"cxsparse";
/// Size of the dynamic disk header.
pub const HEADER_SIZE: usize = 1024;
/// Offset of the checksum field in the header.
pub const HEADER_CHECKSUM_OFFSET: usize = 36;
/// Header version 1.0.
pub const HEADER_VERSION: u32 = 0x0001_0000;
/// Number of parent locator entries.
pub const LOCATOR_COUNT: usize = 8;
/// Offset of the first parent locator entry in the header.
pub const LOCATORS_OFFSET: u64 = 576;
/// Size of one parent locator entry.
pub const LOCATOR_SIZE: usize = 24;
/// Offset of the parent Unicode name in the header.
pub const PARENT_NAME_OFFSET: u64 = 64;
/// Smallest block size accepted: one sector.
pub const MIN_BLOCK_SIZE: u32 = 512;

/// Platform code `W2ku`: absolute Windows path, UTF-16LE.
pub const PLATFORM_W2KU: [u8; 4] = *b"W2ku";
/// Platform code `W2ru`: Windows path relative to the child, UTF-16LE.
pub const PLATFORM_W2RU: [u8; 4] = *b"W2ru";
/// Platform code `MacX`: file URL, UTF-8 (written by Xen's blktap for Linux paths).
pub const PLATFORM_MACX: [u8; 4] = *b"MacX";

/// One parent locator entry (spec "Parent Locator Entry"; docs/formats.md §1.9).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ParentLocatorEntry {
    /// Platform code (`W2ku`, `W2ru`, `Wi2k`, `Wi2r`, `Mac `, `MacX`; zero = unused slot).
    pub platform_code: [u8; 4],
    /// Space reserved for the locator data: 512-byte sectors per the spec, bytes in some
    /// Microsoft files (see [`ParentLocatorEntry::data_space_bytes`]).
    pub platform_data_space: U32,
    /// Bytes of locator data actually used.
    pub platform_data_length: U32,
    /// Zero.
    pub reserved: U32,
    /// Absolute byte offset of the locator data in the child file.
    pub platform_data_offset: U64,
}

const _: () = assert!(std::mem::size_of::<ParentLocatorEntry>() == LOCATOR_SIZE);

impl ParentLocatorEntry {
    /// The reserved space in bytes, by blktap's rule (docs/formats.md §1.9): below 512 it
    /// counts sectors, otherwise it must be a byte count that is a multiple of 512.
    /// `None` when neither reading makes sense.
    pub fn data_space_bytes(&self) -> Option<u64> {
        let space = u64::from(self.platform_data_space.get());
        if space < 512 {
            Some(space * 512)
        } else if space % 512 == 0 {
            Some(space)
        } else {
            None
        }
    }
}

/// The dynamic disk header as laid out on disk.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DynamicDiskHeader {
    /// `cxsparse`.
    pub cookie: [u8; 8],
    /// Unused; all ones.
    pub data_offset: U64,
    /// Absolute byte offset of the BAT.
    pub table_offset: U64,
    /// 0x00010000.
    pub header_version: U32,
    /// Number of BAT entries; at least ceil(`CurrentSize` / `BlockSize`).
    pub max_table_entries: U32,
    /// Data bytes per block (power of two, default 2 MiB), excluding the sector bitmap.
    pub block_size: U32,
    /// One's complement of the byte sum with this field zeroed.
    pub checksum: U32,
    /// Differencing only: the parent footer's unique id.
    pub parent_unique_id: [u8; 16],
    /// Differencing only: parent modification time, seconds since 2000-01-01.
    pub parent_time_stamp: U32,
    /// Zero.
    pub reserved1: U32,
    /// Differencing only: parent file name, UTF-16 big-endian, NUL padded.
    pub parent_unicode_name: [u8; 512],
    /// Eight parent locator entries.
    pub parent_locators: [ParentLocatorEntry; LOCATOR_COUNT],
    /// Zeros.
    pub reserved2: [u8; 256],
}

const _: () = assert!(std::mem::size_of::<DynamicDiskHeader>() == HEADER_SIZE);

impl DynamicDiskHeader {
    /// The checksum the header should carry.
    pub fn compute_checksum(&self) -> u32 {
        vhd_checksum(self.as_bytes(), HEADER_CHECKSUM_OFFSET)
    }

    /// The parent Unicode name decoded from UTF-16BE up to the first NUL (lossy).
    pub fn parent_name(&self) -> String {
        crate::format::utf16::until_nul_lossy(
            &self.parent_unicode_name,
            crate::format::utf16::ByteOrder::Big,
        )
    }
}

/// A header that passed the checks reading cannot do without, plus where it is.
#[derive(Debug, Clone)]
pub struct ValidHeader {
    /// The raw header.
    pub header: DynamicDiskHeader,
    /// Its absolute file offset.
    pub offset: u64,
    /// Block size in bytes (a power of two ≥ 512).
    pub block_size: u64,
}

/// Read and check the dynamic disk header at `offset`. Returns `Err` when it cannot be
/// used at all (outside the file, wrong cookie, unusable block size); records lesser
/// problems (checksum, version) in `findings`.
pub fn read_header(
    src: &dyn ReadAt,
    offset: u64,
    data_end: u64,
    findings: &mut Findings,
) -> Result<ValidHeader> {
    let end = offset.checked_add(HEADER_SIZE as u64);
    if offset < 512 || end.is_none_or(|e| e > data_end) {
        return Err(Error::corrupt(
            "vhd.header.offset",
            16,
            format!(
                "footer data offset {offset:#x} does not leave room for the 1024-byte dynamic header between the footer copy at 0 and the trailing footer at {data_end:#x}"
            ),
        ));
    }
    let mut bytes = [0u8; HEADER_SIZE];
    src.read_exact_at(&mut bytes, offset)
        .map_err(|e| Error::io("cannot read the dynamic disk header", e).at(offset))?;
    // Infallible: the sizes match and the type is Unaligned.
    let header = DynamicDiskHeader::read_from_bytes(&bytes).unwrap_or_else(|_| unreachable!());
    if &header.cookie != HEADER_COOKIE {
        return Err(Error::corrupt(
            "vhd.header.cookie",
            offset,
            format!(
                "dynamic disk header cookie is {:?}, expected \"cxsparse\"",
                String::from_utf8_lossy(&header.cookie)
            ),
        ));
    }
    let stored = header.checksum.get();
    let computed = header.compute_checksum();
    if stored != computed {
        findings.error(
            "vhd.header.checksum",
            Some(offset + HEADER_CHECKSUM_OFFSET as u64),
            format!("dynamic disk header checksum is {stored:#010x}, but the header bytes sum to {computed:#010x}; the header is damaged"),
        );
    }
    let version = header.header_version.get();
    if version != HEADER_VERSION {
        findings.error(
            "vhd.header.version",
            Some(offset + 24),
            format!("dynamic disk header version is {version:#010x}, expected 0x00010000"),
        );
    }
    let block_size = header.block_size.get();
    if block_size < MIN_BLOCK_SIZE || !block_size.is_power_of_two() {
        return Err(Error::corrupt(
            "vhd.header.block_size",
            offset + 32,
            format!("block size is {block_size} bytes; expected a power of two of at least 512 (normally 2 MiB = 2097152)"),
        ));
    }
    Ok(ValidHeader {
        header,
        offset,
        block_size: u64::from(block_size),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_space_follows_blktap_rule() {
        let cases = [
            // Spec reading: a small value counts sectors.
            (1u32, Some(512u64)),
            // Microsoft tools sometimes store bytes: a multiple of 512 counts bytes.
            (512, Some(512)),
            (1024, Some(1024)),
            // Neither sectors nor whole sectors of bytes.
            (513, None),
            // Unused.
            (0, Some(0)),
        ];
        for (space, want) in cases {
            let mut e = ParentLocatorEntry::read_from_bytes(&[0u8; LOCATOR_SIZE]).unwrap();
            e.platform_data_space = U32::new(space);
            assert_eq!(e.data_space_bytes(), want, "space {space}");
        }
    }

    #[test]
    fn parent_name_stops_at_nul() {
        let mut h = DynamicDiskHeader::read_from_bytes(&[0u8; HEADER_SIZE]).unwrap();
        for (i, u) in "base.vhd".encode_utf16().enumerate() {
            h.parent_unicode_name[2 * i..2 * i + 2].copy_from_slice(&u.to_be_bytes());
        }
        h.parent_unicode_name[40] = b'x';
        assert_eq!(h.parent_name(), "base.vhd");
    }
}
