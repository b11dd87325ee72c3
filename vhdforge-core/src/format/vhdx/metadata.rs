//! The metadata region: its table and the known items
//! ([MS-VHDX] §2.6; docs/formats.md §2.7).
//!
//! The table (64 KiB at the region start) lists items by GUID; vhdforge reads the file
//! parameters, virtual disk size, page 83 id, sector sizes and, for differencing disks, the
//! parent locator. An unknown item marked required means the file cannot be read safely.

use super::guid;
use crate::error::{Error, ErrorKind, Result};
use crate::finding::Findings;
use crate::io::{read_vec, ReadAt};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `metadata`: the table signature.
pub const METADATA_SIGNATURE: &[u8; 8] = b"metadata";
/// Size of the table area at the start of the region.
pub const METADATA_TABLE_SIZE: u64 = 0x1_0000;
/// Most entries the table may hold.
pub const MAX_METADATA_ENTRIES: u16 = 2047;
/// Largest item the spec allows: 1 MiB.
pub const MAX_ITEM_LENGTH: u32 = 1 << 20;
/// Entry flag: the item is user metadata.
pub const FLAG_IS_USER: u32 = 1;
/// Entry flag: the item is virtual disk metadata.
pub const FLAG_IS_VIRTUAL_DISK: u32 = 2;
/// Entry flag: the item must be understood to open the file.
pub const FLAG_IS_REQUIRED: u32 = 4;
/// File parameters flag: blocks stay allocated (a "fixed" VHDX).
pub const LEAVE_BLOCK_ALLOCATED: u32 = 1;
/// File parameters flag: the disk is a differencing disk.
pub const HAS_PARENT: u32 = 2;
/// Largest virtual size [MS-VHDX] allows: 64 TiB.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Smallest and largest block size: 1 MiB and 256 MiB.
pub const BLOCK_SIZE_RANGE: (u32, u32) = (1 << 20, 256 << 20);

/// File Parameters item (CAA16737-FA36-4D43-B3B6-33F0AA44E76B).
pub const FILE_PARAMETERS_GUID: [u8; 16] = guid(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
/// Virtual Disk Size item (2FA54224-CD1B-4876-B211-5DBED83BF4B8).
pub const VIRTUAL_DISK_SIZE_GUID: [u8; 16] = guid(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
/// Virtual Disk ID / page 83 item (BECA12AB-B2E6-4523-93EF-C309E000C746).
pub const PAGE83_GUID: [u8; 16] = guid(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
/// Logical Sector Size item (8141BF1D-A96F-4709-BA47-F233A8FAAB5F).
pub const LOGICAL_SECTOR_SIZE_GUID: [u8; 16] = guid(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
/// Physical Sector Size item (CDA348C7-445D-4471-9CC9-E9885251C556).
pub const PHYSICAL_SECTOR_SIZE_GUID: [u8; 16] = guid(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
/// Parent Locator item (A8D35F2D-B30B-454D-ABF7-D3D84834AB0C).
pub const PARENT_LOCATOR_GUID: [u8; 16] = guid(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
/// Parent locator type of VHDX parents (B04AEFB7-D19E-4A81-B789-25B8E9445913).
pub const LOCATOR_TYPE_VHDX: [u8; 16] = guid(
    0xB04A_EFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);

/// Metadata table header as laid out on disk.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MetadataTableHeader {
    /// `metadata`.
    pub signature: [u8; 8],
    /// Zero.
    pub reserved: U16,
    /// Number of entries, at most 2047.
    pub entry_count: U16,
    /// Zeros.
    pub reserved2: [u8; 20],
}

const _: () = assert!(std::mem::size_of::<MetadataTableHeader>() == 32);

/// Metadata table entry as laid out on disk.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MetadataTableEntry {
    /// Which item.
    pub item_id: [u8; 16],
    /// Offset of the item from the region start; at least 64 KiB; 0 iff `length` is 0.
    pub offset: U32,
    /// Item length in bytes, at most 1 MiB.
    pub length: U32,
    /// Bit 0 `IsUser`, bit 1 `IsVirtualDisk`, bit 2 `IsRequired`.
    pub flags: U32,
    /// Zero.
    pub reserved: U32,
}

const _: () = assert!(std::mem::size_of::<MetadataTableEntry>() == 32);

/// Parent locator item header as laid out on disk.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ParentLocatorHeader {
    /// Locator type; vhdforge knows only the VHDX type.
    pub locator_type: [u8; 16],
    /// Zero.
    pub reserved: U16,
    /// Number of key/value entries that follow.
    pub key_value_count: U16,
}

const _: () = assert!(std::mem::size_of::<ParentLocatorHeader>() == 20);

/// One parent locator key/value entry as laid out on disk.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ParentLocatorEntry {
    /// Offset of the UTF-16LE key from the item start.
    pub key_offset: U32,
    /// Offset of the UTF-16LE value from the item start.
    pub value_offset: U32,
    /// Key length in bytes.
    pub key_length: U16,
    /// Value length in bytes.
    pub value_length: U16,
}

const _: () = assert!(std::mem::size_of::<ParentLocatorEntry>() == 12);

/// The parent locator's key/value pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParentLocator {
    /// Keys and values in file order.
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The validated metadata items.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// Payload block size in bytes.
    pub block_size: u32,
    /// Fixed VHDX: blocks stay allocated.
    pub leave_block_allocated: bool,
    /// Differencing disk.
    pub has_parent: bool,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// SCSI page 83 id, if the item is present.
    pub page83: Option<[u8; 16]>,
    /// Logical sector size (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size (512 or 4096).
    pub physical_sector_size: u32,
    /// The parent locator, for differencing disks.
    pub parent_locator: Option<ParentLocator>,
}

/// The metadata items vhdforge understands ([MS-VHDX] §2.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    FileParameters,
    VirtualDiskSize,
    Page83,
    LogicalSectorSize,
    PhysicalSectorSize,
    ParentLocator,
}

impl Item {
    const ALL: [Item; 6] = [
        Item::FileParameters,
        Item::VirtualDiskSize,
        Item::Page83,
        Item::LogicalSectorSize,
        Item::PhysicalSectorSize,
        Item::ParentLocator,
    ];

    /// The item's GUID as the table stores it.
    fn guid(self) -> [u8; 16] {
        match self {
            Item::FileParameters => FILE_PARAMETERS_GUID,
            Item::VirtualDiskSize => VIRTUAL_DISK_SIZE_GUID,
            Item::Page83 => PAGE83_GUID,
            Item::LogicalSectorSize => LOGICAL_SECTOR_SIZE_GUID,
            Item::PhysicalSectorSize => PHYSICAL_SECTOR_SIZE_GUID,
            Item::ParentLocator => PARENT_LOCATOR_GUID,
        }
    }

    /// The item's name in messages.
    fn name(self) -> &'static str {
        match self {
            Item::FileParameters => "file parameters",
            Item::VirtualDiskSize => "virtual disk size",
            Item::Page83 => "page 83",
            Item::LogicalSectorSize => "logical sector size",
            Item::PhysicalSectorSize => "physical sector size",
            Item::ParentLocator => "parent locator",
        }
    }

    /// The item with table GUID `id`, if vhdforge knows it.
    fn from_guid(id: &[u8; 16]) -> Option<Item> {
        Item::ALL.into_iter().find(|i| i.guid() == *id)
    }
}

/// The known items' bytes and file offsets, as the table lists them.
#[derive(Debug, Default)]
struct Items([Option<(Vec<u8>, u64)>; Item::ALL.len()]);

impl Items {
    fn get(&self, item: Item) -> Option<&(Vec<u8>, u64)> {
        self.0[item as usize].as_ref()
    }

    fn slot(&mut self, item: Item) -> &mut Option<(Vec<u8>, u64)> {
        &mut self.0[item as usize]
    }

    /// The first `size` bytes of `item` and its offset, or `None` when it is absent; an
    /// item shorter than `size` is an error.
    fn fixed<const N: usize>(&self, item: Item) -> Result<Option<([u8; N], u64)>> {
        match self.get(item) {
            None => Ok(None),
            Some((b, at)) => match b.get(..N).and_then(|p| <[u8; N]>::try_from(p).ok()) {
                Some(v) => Ok(Some((v, *at))),
                None => Err(Error::corrupt(
                    "vhdx.metadata.length",
                    *at,
                    format!(
                        "the {} item is {} bytes, expected {N}",
                        item.name(),
                        b.len()
                    ),
                )),
            },
        }
    }

    /// As [`Items::fixed`], for an item the file cannot be read without (`base` is the
    /// region's offset, where a missing item is reported).
    fn required<const N: usize>(&self, item: Item, base: u64) -> Result<([u8; N], u64)> {
        self.fixed(item)?.ok_or_else(|| {
            Error::corrupt(
                "vhdx.metadata.missing",
                base,
                format!("the required {} metadata item is missing", item.name()),
            )
        })
    }
}

/// Read and validate the metadata region at `region` (offset, length) of `src`.
#[allow(clippy::too_many_lines)] // the table checks, then each known item, in spec order
pub fn parse(src: &dyn ReadAt, region: (u64, u64), findings: &mut Findings) -> Result<Metadata> {
    let (base, region_len) = region;
    let table = read_vec(src, base, METADATA_TABLE_SIZE, METADATA_TABLE_SIZE).map_err(|e| {
        Error::corrupt(
            "vhdx.metadata.bounds",
            base,
            format!("cannot read the metadata table: {e}"),
        )
    })?;
    let (hdr, rest) = MetadataTableHeader::read_from_prefix(&table)
        .map_err(|_| Error::corrupt("vhdx.metadata.bounds", base, "short table"))?;
    if &hdr.signature != METADATA_SIGNATURE {
        return Err(Error::corrupt(
            "vhdx.metadata.signature",
            base,
            "the metadata region does not start with `metadata`",
        ));
    }
    let count = hdr.entry_count.get();
    if count > MAX_METADATA_ENTRIES {
        return Err(Error::corrupt(
            "vhdx.metadata.entries",
            base + 10,
            format!("{count} metadata entries, at most {MAX_METADATA_ENTRIES} allowed"),
        ));
    }
    let (entries, _) = <[MetadataTableEntry]>::ref_from_prefix_with_elems(rest, usize::from(count))
        .map_err(|_| {
            Error::corrupt(
                "vhdx.metadata.entries",
                base,
                "metadata entries do not fit the table",
            )
        })?;

    // Item bytes by known GUID, read one at a time: there are at most six, all small.
    let mut items = Items::default();
    for (i, e) in entries.iter().enumerate() {
        let at = base + 32 + 32 * i as u64;
        let id = uuid::Uuid::from_bytes_le(e.item_id);
        let (off, len, flags) = (e.offset.get(), e.length.get(), e.flags.get());
        let Some(item) = Item::from_guid(&e.item_id) else {
            if flags & FLAG_IS_REQUIRED != 0 {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "vhdx.metadata.unknown_required",
                    format!("metadata item {id} is marked required but vhdforge does not know it; refusing to read a disk it may misinterpret"),
                )
                .at(at));
            }
            continue;
        };
        if items.get(item).is_some() {
            return Err(Error::corrupt(
                "vhdx.metadata.duplicate",
                at,
                format!("metadata item {id} is listed twice"),
            ));
        }
        let end = u64::from(off) + u64::from(len);
        if len > MAX_ITEM_LENGTH
            || (len != 0 && u64::from(off) < METADATA_TABLE_SIZE)
            || end > region_len
        {
            return Err(Error::corrupt(
                "vhdx.metadata.bounds",
                at,
                format!("metadata item {id} at {off:#x} length {len:#x} must lie after the 64 KiB table, within the {region_len:#x}-byte region, and be at most 1 MiB"),
            ));
        }
        let bytes = read_vec(
            src,
            base + u64::from(off),
            u64::from(len),
            u64::from(MAX_ITEM_LENGTH),
        )
        .map_err(|e| {
            Error::corrupt(
                "vhdx.metadata.bounds",
                at,
                format!("cannot read metadata item {id}: {e}"),
            )
        })?;
        *items.slot(item) = Some((bytes, base + u64::from(off)));
    }

    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);

    let (fp, fp_at) = items.required::<8>(Item::FileParameters, base)?;
    let (block_size, fp_flags) = (u32_at(&fp, 0), u32_at(&fp, 4));
    if !block_size.is_power_of_two()
        || block_size < BLOCK_SIZE_RANGE.0
        || block_size > BLOCK_SIZE_RANGE.1
    {
        return Err(Error::corrupt(
            "vhdx.metadata.block_size",
            fp_at,
            format!("block size {block_size} is not a power of two between 1 MiB and 256 MiB"),
        ));
    }
    let (lss, lss_at) = items.required::<4>(Item::LogicalSectorSize, base)?;
    let logical_sector_size = u32_at(&lss, 0);
    if logical_sector_size != 512 && logical_sector_size != 4096 {
        return Err(Error::corrupt(
            "vhdx.metadata.sector_size",
            lss_at,
            format!("logical sector size {logical_sector_size}, expected 512 or 4096"),
        ));
    }
    let (pss, pss_at) = items.required::<4>(Item::PhysicalSectorSize, base)?;
    let physical_sector_size = u32_at(&pss, 0);
    if physical_sector_size != 512 && physical_sector_size != 4096 {
        return Err(Error::corrupt(
            "vhdx.metadata.sector_size",
            pss_at,
            format!("physical sector size {physical_sector_size}, expected 512 or 4096"),
        ));
    }
    let (vs, vs_at) = items.required::<8>(Item::VirtualDiskSize, base)?;
    let virtual_size = u64::from_le_bytes(vs);
    if virtual_size == 0
        || virtual_size % u64::from(logical_sector_size) != 0
        || virtual_size > MAX_VIRTUAL_SIZE
    {
        return Err(Error::corrupt(
            "vhdx.metadata.virtual_size",
            vs_at,
            format!("virtual size {virtual_size} must be a non-zero multiple of the {logical_sector_size}-byte logical sector and at most 64 TiB"),
        ));
    }
    let page83 = items.fixed::<16>(Item::Page83)?.map(|(g, _)| g);
    if page83.is_none() {
        findings.warning(
            "vhdx.metadata.page83",
            None,
            "the virtual disk id (page 83) metadata item is missing; Hyper-V requires it",
        );
    }
    let has_parent = fp_flags & HAS_PARENT != 0;
    let parent_locator = match (items.get(Item::ParentLocator), has_parent) {
        (Some((b, at)), true) => Some(parse_parent_locator(b, *at)?),
        (None, true) => {
            return Err(Error::corrupt(
                "vhdx.metadata.missing",
                base,
                "the disk is differencing (HasParent) but has no parent locator item",
            ));
        }
        (Some(_), false) => {
            findings.warning(
                "vhdx.metadata.parent_locator",
                None,
                "a parent locator is present but HasParent is clear; ignoring the locator",
            );
            None
        }
        (None, false) => None,
    };
    Ok(Metadata {
        block_size,
        leave_block_allocated: fp_flags & LEAVE_BLOCK_ALLOCATED != 0,
        has_parent,
        virtual_size,
        page83,
        logical_sector_size,
        physical_sector_size,
        parent_locator,
    })
}

/// Decode the parent locator item `b` found at file offset `at`.
pub fn parse_parent_locator(b: &[u8], at: u64) -> Result<ParentLocator> {
    let bad = |msg: String| Error::corrupt("vhdx.metadata.parent_locator", at, msg);
    let (hdr, rest) = ParentLocatorHeader::read_from_prefix(b).map_err(|_| {
        bad(format!(
            "parent locator is {} bytes, shorter than its header",
            b.len()
        ))
    })?;
    if hdr.locator_type != LOCATOR_TYPE_VHDX {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "vhdx.metadata.parent_locator",
            format!(
                "parent locator type {} is not the VHDX type {}",
                uuid::Uuid::from_bytes_le(hdr.locator_type),
                uuid::Uuid::from_bytes_le(LOCATOR_TYPE_VHDX)
            ),
        )
        .at(at));
    }
    let count = usize::from(hdr.key_value_count.get());
    let (kvs, _) =
        <[ParentLocatorEntry]>::ref_from_prefix_with_elems(rest, count).map_err(|_| {
            bad(format!(
                "{count} parent locator entries do not fit the {}-byte item",
                b.len()
            ))
        })?;
    let string = |off: u32, len: u16| -> Result<String> {
        let (off, len) = (off as usize, usize::from(len));
        let s = off
            .checked_add(len)
            .and_then(|end| b.get(off..end))
            .filter(|s| s.len() % 2 == 0);
        let s = s.ok_or_else(|| bad(format!("parent locator string at {off:#x} length {len} lies outside the item or has an odd length")))?;
        crate::format::utf16::exact_le(s).ok_or_else(|| {
            bad(format!(
                "parent locator string at {off:#x} is not valid UTF-16"
            ))
        })
    };
    let mut entries = Vec::with_capacity(count);
    for e in kvs {
        let key = string(e.key_offset.get(), e.key_length.get())?;
        let value = string(e.value_offset.get(), e.value_length.get())?;
        if entries.iter().any(|(k, _)| *k == key) {
            return Err(bad(format!("parent locator key `{key}` appears twice")));
        }
        entries.push((key, value));
    }
    Ok(ParentLocator { entries })
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // table-driven cases are tuples
mod tests {
    use super::*;

    fn locator(kv: &[(&str, &str)], ty: [u8; 16]) -> Vec<u8> {
        let mut b = ParentLocatorHeader {
            locator_type: ty,
            reserved: U16::new(0),
            key_value_count: U16::new(kv.len() as u16),
        }
        .as_bytes()
        .to_vec();
        let mut strings = Vec::new();
        let base = 20 + 12 * kv.len();
        let mut entries = Vec::new();
        for (k, v) in kv {
            let k16: Vec<u8> = k.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let v16: Vec<u8> = v.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let ko = base + strings.len();
            strings.extend_from_slice(&k16);
            let vo = base + strings.len();
            strings.extend_from_slice(&v16);
            entries.push(ParentLocatorEntry {
                key_offset: U32::new(ko as u32),
                value_offset: U32::new(vo as u32),
                key_length: U16::new(k16.len() as u16),
                value_length: U16::new(v16.len() as u16),
            });
        }
        for e in entries {
            b.extend_from_slice(e.as_bytes());
        }
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn parent_locator_cases() {
        let good = locator(
            &[
                ("parent_linkage", "{00000000-0000-0000-0000-000000000001}"),
                ("relative_path", ".\\p.vhdx"),
            ],
            LOCATOR_TYPE_VHDX,
        );
        let mut truncated = good.clone();
        truncated.truncate(40);
        let mut odd = good.clone();
        odd[28] = 3; // key length of entry 0 becomes odd
                     // (name, bytes, expected relative_path or error code)
        let cases: Vec<(&str, Vec<u8>, std::result::Result<Option<&str>, &str>)> = vec![
            ("well-formed", good, Ok(Some(".\\p.vhdx"))),
            ("no entries", locator(&[], LOCATOR_TYPE_VHDX), Ok(None)),
            (
                "unknown locator type",
                locator(&[], [1; 16]),
                Err("vhdx.metadata.parent_locator"),
            ),
            (
                "entries cut off",
                truncated,
                Err("vhdx.metadata.parent_locator"),
            ),
            (
                "odd string length",
                odd,
                Err("vhdx.metadata.parent_locator"),
            ),
            (
                "duplicate key",
                locator(&[("a", "1"), ("a", "2")], LOCATOR_TYPE_VHDX),
                Err("vhdx.metadata.parent_locator"),
            ),
            (
                "short header",
                vec![0; 10],
                Err("vhdx.metadata.parent_locator"),
            ),
        ];
        for (name, bytes, want) in cases {
            let got = parse_parent_locator(&bytes, 0);
            match want {
                Ok(rel) => assert_eq!(got.unwrap().get("relative_path"), rel, "{name}"),
                Err(code) => assert_eq!(got.unwrap_err().code(), code, "{name}"),
            }
        }
    }

    #[test]
    fn items_are_found_by_guid_and_named() {
        // Every known item is found by its own GUID, and only by it.
        for item in Item::ALL {
            assert_eq!(Item::from_guid(&item.guid()), Some(item), "{}", item.name());
        }
        // An unknown GUID (the parent locator type is not an item) is no item.
        assert_eq!(Item::from_guid(&LOCATOR_TYPE_VHDX), None);
        let mut items = Items::default();
        *items.slot(Item::VirtualDiskSize) = Some((vec![1, 0, 0, 0, 0, 0, 0, 0, 0xFF], 0x300));
        *items.slot(Item::LogicalSectorSize) = Some((vec![0, 2], 0x400));
        // (case, item, Ok(first bytes, offset) / Err(code, text))
        type Want = std::result::Result<([u8; 8], u64), (&'static str, &'static str)>;
        let cases: [(&str, Item, Want); 3] = [
            // A longer item yields its first bytes and where it is.
            (
                "present",
                Item::VirtualDiskSize,
                Ok(([1, 0, 0, 0, 0, 0, 0, 0], 0x300)),
            ),
            // A short item is an error naming the item, not a panic.
            (
                "short",
                Item::LogicalSectorSize,
                Err((
                    "vhdx.metadata.length",
                    "the logical sector size item is 2 bytes, expected 8",
                )),
            ),
            // A missing required item is named.
            (
                "missing",
                Item::FileParameters,
                Err((
                    "vhdx.metadata.missing",
                    "the required file parameters metadata item",
                )),
            ),
        ];
        for (name, item, want) in cases {
            match (want, items.required::<8>(item, 0x100)) {
                (Ok(v), Ok(got)) => assert_eq!(got, v, "{name}"),
                (Err((code, text)), Err(e)) => {
                    assert_eq!(e.code(), code, "{name}");
                    assert!(e.message().contains(text), "{name}: {e}");
                }
                (want, got) => panic!("{name}: expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn guids_match_reference_bytes() {
        // On-disk bytes from docs/formats.md §2.2.
        assert_eq!(FILE_PARAMETERS_GUID[..4], [0x37, 0x67, 0xa1, 0xca]);
        assert_eq!(
            PARENT_LOCATOR_GUID,
            [
                0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34,
                0xab, 0x0c
            ]
        );
        assert_eq!(
            LOCATOR_TYPE_VHDX[..8],
            [0xb7, 0xef, 0x4a, 0xb0, 0x9e, 0xd1, 0x81, 0x4a]
        );
    }
}
