//! The metadata-area header and the circular buffer holding the VG's text metadata
//! (docs/guest-partitions.md §4.3–4.4).

use super::lvm_crc;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The metadata-area magic (16 bytes, leading space).
pub const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
/// The only `mda_header` version.
pub const MDA_VERSION: u32 = 1;
/// Size of the header; the ring of text starts right after it.
pub const MDA_HEADER_SIZE: u64 = 512;
/// `raw_locn` flag: this area is ignored by LVM.
pub const RAW_LOCN_IGNORED: u32 = 1;

/// The fixed part of the 512-byte metadata-area header.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MdaHeader {
    /// LVM CRC of bytes 4..512.
    pub checksum: U32,
    /// [`MDA_MAGIC`].
    pub magic: [u8; 16],
    /// 1.
    pub version: U32,
    /// Byte offset of this header in the PV (must equal where it was read).
    pub start: U64,
    /// Size of the whole area in bytes, header included.
    pub size: U64,
    /// Slot 0: the committed metadata.
    pub committed: RawLocn,
}

/// Where one copy of the text metadata is in the ring.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawLocn {
    /// Offset of the text from the area's start.
    pub offset: U64,
    /// Text length in bytes.
    pub size: U64,
    /// LVM CRC of the text.
    pub checksum: U32,
    /// [`RAW_LOCN_IGNORED`] and reserved bits.
    pub flags: U32,
}

const _: () = assert!(std::mem::size_of::<MdaHeader>() == 64);
const _: () = assert!(std::mem::size_of::<RawLocn>() == 24);

/// Check a header read at `at`; the reason it is unusable otherwise.
pub fn check(bytes: &[u8; 512], at: u64) -> Result<MdaHeader, String> {
    let (h, _) = MdaHeader::read_from_prefix(bytes).map_err(|_| "short header".to_string())?;
    if &h.magic != MDA_MAGIC {
        return Err(format!("no metadata-area magic at byte {at:#x}"));
    }
    let computed = lvm_crc(&bytes[4..]);
    if computed != h.checksum.get() {
        return Err(format!(
            "metadata-area header at {at:#x} has checksum {:#010x}, its bytes give {computed:#010x}",
            h.checksum.get()
        ));
    }
    if h.version.get() != MDA_VERSION {
        return Err(format!(
            "metadata-area version {} (expected {MDA_VERSION})",
            h.version.get()
        ));
    }
    if h.start.get() != at {
        return Err(format!(
            "metadata-area header at {at:#x} says it is at {:#x}",
            h.start.get()
        ));
    }
    Ok(h)
}

/// Where the committed text lies: one or two `(offset from area start, length)` pieces, the
/// second when the text wraps past the ring's end back to just after the header.
pub fn text_pieces(h: &MdaHeader) -> Result<Vec<(u64, u64)>, String> {
    let area = h.size.get();
    let (off, len) = (h.committed.offset.get(), h.committed.size.get());
    if area <= MDA_HEADER_SIZE || off < MDA_HEADER_SIZE || off >= area {
        return Err(format!(
            "metadata text at offset {off} is outside its {area}-byte area"
        ));
    }
    if len > area - MDA_HEADER_SIZE {
        return Err(format!(
            "metadata text of {len} bytes does not fit its {area}-byte area"
        ));
    }
    let first = len.min(area - off);
    let mut pieces = vec![(off, first)];
    if first < len {
        pieces.push((MDA_HEADER_SIZE, len - first));
    }
    Ok(pieces)
}
