//! The LVM2 physical-volume label and PV header (docs/guest-partitions.md §4.1–4.2).
//!
//! One of the first four 512-byte sectors of a PV starts with `LABELONE`; the PV header
//! follows in the same sector and lists the data area (where extents start) and the
//! metadata areas, each terminated by an all-zero entry.

use super::lvm_crc;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `LABELONE`.
pub const LABEL_ID: &[u8; 8] = b"LABELONE";
/// `LVM2 001`: the label type of text-format PVs.
pub const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
/// Sectors searched for the label.
pub const LABEL_SCAN_SECTORS: u64 = 4;

/// The 32-byte label header at the start of the label sector.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct LabelHeader {
    /// `LABELONE`.
    pub id: [u8; 8],
    /// The sector this label is in (0–3); a copy found elsewhere is stale.
    pub sector_xl: U64,
    /// LVM CRC of bytes 20..512 of the sector.
    pub crc_xl: U32,
    /// Offset of the PV header in the sector (normally 32).
    pub offset_xl: U32,
    /// `LVM2 001`.
    pub label_type: [u8; 8],
}

/// Start of the PV header: its UUID and size, then the area lists.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PvHeader {
    /// The PV UUID: 32 ASCII characters without dashes.
    pub pv_uuid: [u8; 32],
    /// Size of the PV in bytes as LVM recorded it.
    pub device_size: U64,
}

/// One `disk_locn`: an area of the PV in bytes; `{0, 0}` ends a list.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DiskLocn {
    /// Byte offset from the PV start.
    pub offset: U64,
    /// Size in bytes; 0 for the data area means "to the end of the PV".
    pub size: U64,
}

const _: () = assert!(std::mem::size_of::<LabelHeader>() == 32);
const _: () = assert!(std::mem::size_of::<PvHeader>() == 40);
const _: () = assert!(std::mem::size_of::<DiskLocn>() == 16);

/// A validated label.
#[derive(Debug, Clone)]
pub struct Label {
    /// The sector it was found in.
    pub sector: u64,
    /// The PV UUID in LVM's dashed 6-4-4-4-4-4-6 spelling.
    pub pv_uuid: String,
    /// Recorded PV size in bytes.
    pub device_size: u64,
    /// Data areas (the first one's offset is `pe_start`).
    pub data_areas: Vec<(u64, u64)>,
    /// Metadata areas.
    pub metadata_areas: Vec<(u64, u64)>,
}

/// LVM writes the 32-character UUID with dashes after 6, 10, 14, 18, 22 and 26 characters.
pub fn dashed_uuid(raw: &[u8]) -> String {
    let mut s = String::with_capacity(38);
    for (i, &c) in raw.iter().enumerate() {
        if matches!(i, 6 | 10 | 14 | 18 | 22 | 26) {
            s.push('-');
        }
        s.push(if c.is_ascii_graphic() {
            char::from(c)
        } else {
            '?'
        });
    }
    s
}

/// Parse the label in `sector` (the 512 bytes of sector `index`); `None` when it is not a
/// valid LVM2 label.
pub fn parse(sector: &[u8; 512], index: u64) -> Option<Label> {
    let (h, _) = LabelHeader::read_from_prefix(sector).ok()?;
    if &h.id != LABEL_ID || h.sector_xl.get() != index || &h.label_type != LABEL_TYPE {
        return None;
    }
    if lvm_crc(&sector[20..]) != h.crc_xl.get() {
        return None;
    }
    let off = h.offset_xl.get() as usize;
    let rest = sector.get(off..)?;
    let (pv, mut rest) = PvHeader::read_from_prefix(rest).ok()?;
    // Two lists, each ended by {0,0}; both must fit in the sector.
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        loop {
            let (l, r) = DiskLocn::read_from_prefix(rest).ok()?;
            rest = r;
            if l.offset.get() == 0 && l.size.get() == 0 {
                break;
            }
            list.push((l.offset.get(), l.size.get()));
        }
    }
    let [data_areas, metadata_areas] = lists;
    Some(Label {
        sector: index,
        pv_uuid: dashed_uuid(&pv.pv_uuid),
        device_size: pv.device_size.get(),
        data_areas,
        metadata_areas,
    })
}
