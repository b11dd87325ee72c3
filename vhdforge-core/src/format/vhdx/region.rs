//! The region table ([MS-VHDX] §2.2.3; docs/formats.md §2.5).
//!
//! 64 KiB at 192 KiB with an identical copy at 256 KiB, CRC-32C over the whole 64 KiB. It
//! locates the BAT and metadata regions. qemu and libvhdi read only copy 1; vhdforge falls
//! back to copy 2 with a warning, which loses nothing since both must be identical.

use super::{crc32c_zeroed, guid, MIB};
use crate::error::{Error, ErrorKind, Result};
use crate::finding::Findings;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `regi`: the region table signature.
pub const REGION_SIGNATURE: &[u8; 4] = b"regi";
/// Offset of region table 1.
pub const REGION_TABLE1_OFFSET: u64 = 0x3_0000;
/// Offset of region table 2.
pub const REGION_TABLE2_OFFSET: u64 = 0x4_0000;
/// Size of a region table (all of it is checksummed).
pub const REGION_TABLE_SIZE: usize = 0x1_0000;
/// Offset of the checksum field in the table header.
pub const REGION_CHECKSUM_OFFSET: usize = 4;
/// Most entries a table may hold.
pub const MAX_REGION_ENTRIES: u32 = 2047;
/// Entry flag: the region must be understood to open the file.
pub const REGION_REQUIRED: u32 = 1;
/// GUID of the BAT region (2DC27766-F623-4200-9D64-115E9BFD4A08), on-disk bytes.
pub const BAT_REGION_GUID: [u8; 16] = guid(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
/// GUID of the metadata region (8B7CA206-4790-4B9A-B8FE-575F050F886E), on-disk bytes.
pub const METADATA_REGION_GUID: [u8; 16] = guid(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);

/// Region table header as laid out on disk.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RegionTableHeader {
    /// `regi`.
    pub signature: [u8; 4],
    /// CRC-32C over the 64 KiB table with this field zeroed.
    pub checksum: U32,
    /// Number of valid entries, at most 2047.
    pub entry_count: U32,
    /// Zero.
    pub reserved: U32,
}

const _: () = assert!(std::mem::size_of::<RegionTableHeader>() == 16);

/// Region table entry as laid out on disk.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RegionTableEntry {
    /// Which region (BAT, metadata, or something this reader may not know).
    pub guid: [u8; 16],
    /// Byte offset, a multiple of 1 MiB, at least 1 MiB.
    pub file_offset: U64,
    /// Byte length, a multiple of 1 MiB.
    pub length: U32,
    /// Bit 0: required; the rest reserved.
    pub flags: U32,
}

const _: () = assert!(std::mem::size_of::<RegionTableEntry>() == 32);

/// Where the BAT and metadata live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regions {
    /// BAT region offset and length.
    pub bat: (u64, u64),
    /// Metadata region offset and length.
    pub metadata: (u64, u64),
}

fn parse_copy(
    bytes: &[u8],
    table_offset: u64,
) -> std::result::Result<Vec<RegionTableEntry>, String> {
    let Some(bytes) = bytes.get(..REGION_TABLE_SIZE) else {
        return Err("region table is short".into());
    };
    let (hdr, rest) = RegionTableHeader::read_from_prefix(bytes)
        .map_err(|_| "region table is short".to_string())?;
    if &hdr.signature != REGION_SIGNATURE {
        return Err(format!(
            "region table at {table_offset:#x} does not start with `regi`"
        ));
    }
    let computed = crc32c_zeroed(bytes, REGION_CHECKSUM_OFFSET);
    if computed != hdr.checksum.get() {
        return Err(format!(
            "region table at {table_offset:#x} has CRC-32C {:#010x}, but its 64 KiB hash to {computed:#010x}",
            hdr.checksum.get()
        ));
    }
    let count = hdr.entry_count.get();
    if count > MAX_REGION_ENTRIES {
        return Err(format!("region table at {table_offset:#x} claims {count} entries, at most {MAX_REGION_ENTRIES} fit"));
    }
    let (entries, _) = <[RegionTableEntry]>::ref_from_prefix_with_elems(rest, count as usize)
        .map_err(|_| format!("region table at {table_offset:#x}: {count} entries do not fit"))?;
    Ok(entries.to_vec())
}

/// Parse the region tables from the 64 KiB copies `t1` and `t2`, falling back to copy 2 when
/// copy 1 is damaged, and check every entry against the rules of §2.5. `log` is the log's
/// offset and length from the header (regions must not overlap it).
pub fn parse(t1: &[u8], t2: &[u8], log: (u64, u64), findings: &mut Findings) -> Result<Regions> {
    let (entries, table_offset) = match parse_copy(t1, REGION_TABLE1_OFFSET) {
        Ok(e) => (e, REGION_TABLE1_OFFSET),
        Err(m1) => match parse_copy(t2, REGION_TABLE2_OFFSET) {
            Ok(e) => {
                findings.warning(
                    "vhdx.region.checksum",
                    Some(REGION_TABLE1_OFFSET),
                    format!("{m1}; using the copy at {REGION_TABLE2_OFFSET:#x}"),
                );
                (e, REGION_TABLE2_OFFSET)
            }
            Err(m2) => {
                return Err(Error::corrupt(
                    "vhdx.region.checksum",
                    REGION_TABLE1_OFFSET,
                    format!("no valid region table: {m1}; {m2}"),
                ))
            }
        },
    };
    let mut bat = None;
    let mut metadata = None;
    // Everything that occupies file space, for the overlap check: (name, offset, length).
    let mut spans: Vec<(String, u64, u64)> = vec![("the header section".into(), 0, MIB)];
    if log.1 != 0 {
        spans.push(("the log".into(), log.0, log.1));
    }
    for (i, e) in entries.iter().enumerate() {
        let at = table_offset + 16 + 32 * i as u64;
        let (off, len) = (e.file_offset.get(), u64::from(e.length.get()));
        let name = if e.guid == BAT_REGION_GUID {
            "BAT"
        } else if e.guid == METADATA_REGION_GUID {
            "metadata"
        } else {
            if e.flags.get() & REGION_REQUIRED != 0 {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "vhdx.region.unknown_required",
                    format!("region {} is marked required but vhdforge does not know it; refusing to read a disk it may misinterpret", uuid::Uuid::from_bytes_le(e.guid)),
                )
                .at(at));
            }
            "unknown"
        };
        if off % MIB != 0
            || len % MIB != 0
            || len == 0
            || off < MIB
            || off.checked_add(len).is_none()
        {
            return Err(Error::corrupt(
                "vhdx.region.bounds",
                at,
                format!("{name} region at {off:#x} length {len:#x}: offset and length must be non-zero multiples of 1 MiB, outside the first MiB"),
            ));
        }
        let slot = match name {
            "BAT" => Some(&mut bat),
            "metadata" => Some(&mut metadata),
            _ => None,
        };
        if let Some(slot) = slot {
            if slot.replace((off, len)).is_some() {
                return Err(Error::corrupt(
                    "vhdx.region.duplicate",
                    at,
                    format!("the region table lists the {name} region twice"),
                ));
            }
        }
        spans.push((format!("the {name} region"), off, len));
    }
    if let Some((a, b)) = first_overlap(&spans) {
        return Err(Error::corrupt(
            "vhdx.region.overlap",
            table_offset,
            format!(
                "{} ({:#x}+{:#x}) overlaps {} ({:#x}+{:#x})",
                a.0, a.1, a.2, b.0, b.1, b.2
            ),
        ));
    }
    let missing = |what: &str| {
        Error::corrupt(
            "vhdx.region.missing",
            table_offset,
            format!("the region table has no {what} region"),
        )
    };
    Ok(Regions {
        bat: bat.ok_or_else(|| missing("BAT"))?,
        metadata: metadata.ok_or_else(|| missing("metadata"))?,
    })
}

/// Something occupying file space: (name, offset, length).
pub type Span<T> = (T, u64, u64);

/// The first pair of spans that overlap, if any.
pub fn first_overlap<T: Clone>(spans: &[Span<T>]) -> Option<(Span<T>, Span<T>)> {
    let mut sorted: Vec<_> = spans.to_vec();
    sorted.sort_by_key(|s| s.1);
    sorted
        .windows(2)
        .find(|w| w[0].1.saturating_add(w[0].2) > w[1].1)
        .map(|w| (w[0].clone(), w[1].clone()))
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // table-driven cases are tuples
mod tests {
    use super::*;

    fn table(entries: &[([u8; 16], u64, u32, u32)]) -> Vec<u8> {
        let mut t = vec![0u8; REGION_TABLE_SIZE];
        t[..4].copy_from_slice(REGION_SIGNATURE);
        t[8..12].copy_from_slice(&(entries.len() as u32).to_le_bytes());
        for (i, (g, off, len, flags)) in entries.iter().enumerate() {
            let e = RegionTableEntry {
                guid: *g,
                file_offset: U64::new(*off),
                length: U32::new(*len),
                flags: U32::new(*flags),
            };
            t[16 + 32 * i..48 + 32 * i].copy_from_slice(e.as_bytes());
        }
        let c = crc32c_zeroed(&t, REGION_CHECKSUM_OFFSET);
        t[4..8].copy_from_slice(&c.to_le_bytes());
        t
    }

    const M: u32 = MIB as u32;
    const LOG: (u64, u64) = (MIB, MIB);

    #[test]
    fn region_rules() {
        let other = [9u8; 16];
        // (name, entries, expected Ok(bat offset) or error code)
        let cases: Vec<(
            &str,
            Vec<([u8; 16], u64, u32, u32)>,
            std::result::Result<u64, &str>,
        )> = vec![
            (
                "qemu layout with Required=0 is accepted",
                vec![
                    (BAT_REGION_GUID, 2 * MIB, M, 0),
                    (METADATA_REGION_GUID, 3 * MIB, M, 0),
                ],
                Ok(2 * MIB),
            ),
            (
                "required flags set",
                vec![
                    (BAT_REGION_GUID, 2 * MIB, M, 1),
                    (METADATA_REGION_GUID, 3 * MIB, M, 1),
                ],
                Ok(2 * MIB),
            ),
            (
                "unknown optional region is ignored",
                vec![
                    (other, 8 * MIB, M, 0),
                    (BAT_REGION_GUID, 2 * MIB, M, 1),
                    (METADATA_REGION_GUID, 3 * MIB, M, 1),
                ],
                Ok(2 * MIB),
            ),
            (
                "unknown required region is refused",
                vec![
                    (other, 8 * MIB, M, 1),
                    (BAT_REGION_GUID, 2 * MIB, M, 1),
                    (METADATA_REGION_GUID, 3 * MIB, M, 1),
                ],
                Err("vhdx.region.unknown_required"),
            ),
            (
                "BAT overlapping metadata",
                vec![
                    (BAT_REGION_GUID, 2 * MIB, 2 * M, 1),
                    (METADATA_REGION_GUID, 3 * MIB, M, 1),
                ],
                Err("vhdx.region.overlap"),
            ),
            (
                "BAT overlapping the log",
                vec![
                    (BAT_REGION_GUID, MIB, M, 1),
                    (METADATA_REGION_GUID, 3 * MIB, M, 1),
                ],
                Err("vhdx.region.overlap"),
            ),
            (
                "BAT inside the header section",
                vec![
                    (BAT_REGION_GUID, 0, M, 1),
                    (METADATA_REGION_GUID, 3 * MIB, M, 1),
                ],
                Err("vhdx.region.bounds"),
            ),
            (
                "unaligned metadata",
                vec![
                    (BAT_REGION_GUID, 2 * MIB, M, 1),
                    (METADATA_REGION_GUID, 3 * MIB + 4096, M, 1),
                ],
                Err("vhdx.region.bounds"),
            ),
            (
                "missing metadata",
                vec![(BAT_REGION_GUID, 2 * MIB, M, 1)],
                Err("vhdx.region.missing"),
            ),
            (
                "BAT twice",
                vec![
                    (BAT_REGION_GUID, 2 * MIB, M, 1),
                    (BAT_REGION_GUID, 4 * MIB, M, 1),
                    (METADATA_REGION_GUID, 3 * MIB, M, 1),
                ],
                Err("vhdx.region.duplicate"),
            ),
        ];
        for (name, entries, want) in cases {
            let t = table(&entries);
            let got = parse(&t, &t, LOG, &mut Findings::default());
            match want {
                Ok(off) => assert_eq!(got.unwrap().bat.0, off, "{name}"),
                Err(code) => assert_eq!(got.unwrap_err().code(), code, "{name}"),
            }
        }
    }

    #[test]
    fn falls_back_to_copy_two() {
        let good = table(&[
            (BAT_REGION_GUID, 2 * MIB, M, 1),
            (METADATA_REGION_GUID, 3 * MIB, M, 1),
        ]);
        let mut bad = good.clone();
        bad[40] ^= 0x10;
        let mut f = Findings::default();
        let r = parse(&bad, &good, LOG, &mut f).unwrap();
        assert_eq!(r.metadata, (3 * MIB, MIB));
        assert_eq!(f.0.len(), 1);
        assert_eq!(f.0[0].code, "vhdx.region.checksum");
        assert_eq!(f.0[0].severity, crate::Severity::Warning);
        assert_eq!(
            parse(&bad, &bad, LOG, &mut f).unwrap_err().code(),
            "vhdx.region.checksum"
        );
    }
}
