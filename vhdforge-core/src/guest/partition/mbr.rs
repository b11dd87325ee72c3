//! The master boot record and the extended-partition chain (docs/guest-partitions.md §1).
//!
//! Sector 0 holds four 16-byte partition records and the `55 AA` signature. An extended
//! record starts a chain of extended boot records (EBRs), each an MBR-shaped sector whose
//! data record is relative to that EBR and whose link record is relative to the start of
//! the primary extended partition. The chain is untrusted: it is followed with a loop
//! check, a link limit and a cap on the number of logical partitions.

use super::types::{is_mbr_extended, PartitionKind, PartitionType, MBR_GPT_PROTECTIVE};
use super::{Partition, Role, Window, CODE_EBR_CHAIN, CODE_OUTSIDE_EXTENDED, CODE_TOO_MANY};
use crate::error::Result;
use crate::finding::Findings;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The boot signature at bytes 510–511 of an MBR or EBR.
pub const BOOT_SIGNATURE: u16 = 0xAA55;
/// Boot indicator of the active partition.
pub const ACTIVE: u8 = 0x80;
/// Links followed without finding a data partition before the chain is declared broken
/// (the Linux kernel's guard).
pub const MAX_EMPTY_LINKS: u32 = 100;
/// Logical partitions read at most: Linux numbers partitions up to 256, primaries take 1–4.
pub const MAX_LOGICAL: u32 = 252;

/// One 16-byte partition record.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MbrRecord {
    /// 0x80 active, 0x00 inactive; any other value means the sector is not a partition table.
    pub boot_indicator: u8,
    /// CHS address of the first sector (obsolete; ignored).
    pub start_chs: [u8; 3],
    /// Partition type; 0 = empty.
    pub partition_type: u8,
    /// CHS address of the last sector (obsolete; ignored).
    pub end_chs: [u8; 3],
    /// First sector: absolute in the MBR, relative to the EBR (data) or to the extended
    /// partition's start (link) in an EBR.
    pub start_lba: U32,
    /// Number of sectors; 0 = empty.
    pub sectors: U32,
}

const _: () = assert!(std::mem::size_of::<MbrRecord>() == 16);

/// A master (or extended) boot record sector, first 512 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MasterBootRecord {
    /// Boot code (BIOS jumps here); not interpreted.
    pub boot_code: [u8; 440],
    /// Disk signature; MBR `PARTUUID`s are built from it.
    pub disk_signature: U32,
    /// Usually zero (copy-protect marker on some systems).
    pub reserved: U16,
    /// The four partition records.
    pub records: [MbrRecord; 4],
    /// `55 AA`.
    pub boot_signature: U16,
}

const _: () = assert!(std::mem::size_of::<MasterBootRecord>() == 512);

impl MbrRecord {
    fn is_empty(&self) -> bool {
        self.partition_type == 0 || self.sectors.get() == 0
    }
}

/// A sector 0 that is a plausible partition table.
#[derive(Debug, Clone)]
pub struct Mbr {
    /// The disk signature.
    pub signature: u32,
    /// The four records as stored.
    pub records: [MbrRecord; 4],
}

impl Mbr {
    /// Any record announces a GPT (protective or hybrid MBR).
    pub fn is_protective_or_hybrid(&self) -> bool {
        self.records
            .iter()
            .any(|r| !r.is_empty() && r.partition_type == MBR_GPT_PROTECTIVE)
    }

    /// A GPT announcement next to real records.
    pub fn is_hybrid(&self) -> bool {
        self.is_protective_or_hybrid()
            && self
                .records
                .iter()
                .any(|r| !r.is_empty() && r.partition_type != MBR_GPT_PROTECTIVE)
    }
}

fn read_sector(disk: &Window<'_>, lba: u64, sector_size: u32) -> Result<Option<MasterBootRecord>> {
    let Some(off) = lba.checked_mul(u64::from(sector_size)) else {
        return Ok(None);
    };
    if off.checked_add(512).is_none_or(|end| end > disk.len()) {
        return Ok(None);
    }
    let mut b = [0u8; 512];
    disk.read_at(&mut b, off)?;
    Ok(MasterBootRecord::read_from_bytes(&b).ok())
}

/// Read sector 0 as an MBR. `None` when there is no `55 AA`, or when a boot indicator is
/// neither 0x00 nor 0x80: Linux then does not take the sector as a partition table (it is
/// typically a file system's boot sector).
pub fn read_mbr(disk: &Window<'_>, sector_size: u32) -> Result<Option<Mbr>> {
    let Some(m) = read_sector(disk, 0, sector_size)? else {
        return Ok(None);
    };
    if m.boot_signature.get() != BOOT_SIGNATURE
        || m.records.iter().any(|r| r.boot_indicator & !ACTIVE != 0)
    {
        return Ok(None);
    }
    Ok(Some(Mbr {
        signature: m.disk_signature.get(),
        records: m.records,
    }))
}

fn partition(
    number: u32,
    start_lba: u64,
    sectors: u64,
    rec: &MbrRecord,
    role: Role,
    signature: u32,
    sector_size: u32,
) -> Partition {
    let ss = u64::from(sector_size);
    Partition {
        number,
        // LBAs are u32 here, so the products fit in u64; saturate anyway on principle.
        start_bytes: start_lba.saturating_mul(ss),
        size_bytes: sectors.saturating_mul(ss),
        partition_type: PartitionType::Mbr(rec.partition_type),
        kind: PartitionKind::of_mbr(rec.partition_type),
        role,
        name: None,
        partuuid: format!("{signature:08x}-{number:02x}"),
        active: rec.boot_indicator == ACTIVE,
        attributes: 0,
    }
}

/// The partitions of an MBR disk: primaries (numbered by slot), then the logicals of each
/// extended partition (numbered from 5).
pub fn partitions(
    disk: &Window<'_>,
    sector_size: u32,
    mbr: &Mbr,
    findings: &mut Findings,
) -> Result<Vec<Partition>> {
    let mut out = Vec::new();
    let mut next_logical = 5u32;
    for (slot, rec) in (1u32..).zip(mbr.records.iter()) {
        if rec.is_empty() {
            continue;
        }
        let start = u64::from(rec.start_lba.get());
        let sectors = u64::from(rec.sectors.get());
        let extended = is_mbr_extended(rec.partition_type);
        let role = if extended {
            Role::Extended
        } else {
            Role::Primary
        };
        out.push(partition(
            slot,
            start,
            sectors,
            rec,
            role,
            mbr.signature,
            sector_size,
        ));
        if extended {
            walk_extended(
                disk,
                sector_size,
                mbr.signature,
                start,
                sectors,
                &mut next_logical,
                &mut out,
                findings,
            )?;
        }
    }
    Ok(out)
}

/// Follow one extended partition's EBR chain, as Linux does: in each EBR take every data
/// record (slots 3 and 4 only when inside the link and the extended partition), then follow
/// the first link record.
#[allow(clippy::too_many_arguments)]
fn walk_extended(
    disk: &Window<'_>,
    sector_size: u32,
    signature: u32,
    ext_start: u64,
    ext_sectors: u64,
    next_logical: &mut u32,
    out: &mut Vec<Partition>,
    findings: &mut Findings,
) -> Result<()> {
    let ss = u64::from(sector_size);
    let ext_end = ext_start + ext_sectors;
    let mut ebr_lba = ext_start;
    let mut ebr_sectors = ext_sectors;
    let mut visited: Vec<u64> = Vec::new();
    let mut empty_links = 0u32;
    loop {
        empty_links += 1;
        if empty_links > MAX_EMPTY_LINKS {
            findings.warning(
                CODE_EBR_CHAIN,
                Some(ebr_lba.saturating_mul(ss)),
                format!("the extended-partition chain has more than {MAX_EMPTY_LINKS} links without a partition; the rest is ignored"),
            );
            return Ok(());
        }
        // The chain is bounded by MAX_LOGICAL data records and MAX_EMPTY_LINKS empty links,
        // so `visited` stays small and the linear search is fine.
        if visited.contains(&ebr_lba) {
            findings.warning(
                CODE_EBR_CHAIN,
                Some(ebr_lba.saturating_mul(ss)),
                format!("the extended-partition chain loops back to sector {ebr_lba}; the chain is followed no further"),
            );
            return Ok(());
        }
        visited.push(ebr_lba);
        let Some(ebr) = read_sector(disk, ebr_lba, sector_size)? else {
            findings.warning(
                CODE_EBR_CHAIN,
                Some(ebr_lba.saturating_mul(ss)),
                format!("the extended-partition chain points to sector {ebr_lba}, beyond the disk; logical partitions after it are missing"),
            );
            return Ok(());
        };
        if ebr.boot_signature.get() != BOOT_SIGNATURE {
            // A freshly created empty extended partition has no EBR yet: not worth a warning.
            if ebr_lba != ext_start {
                findings.warning(
                    CODE_EBR_CHAIN,
                    Some(ebr_lba.saturating_mul(ss)),
                    format!("the extended boot record at sector {ebr_lba} has no 55 AA signature; logical partitions after it are missing"),
                );
            }
            return Ok(());
        }
        for (i, rec) in ebr.records.iter().enumerate() {
            if rec.is_empty() || is_mbr_extended(rec.partition_type) {
                continue;
            }
            let rel = u64::from(rec.start_lba.get());
            let sectors = u64::from(rec.sectors.get());
            let start = ebr_lba + rel;
            // Slots 3 and 4 are only trusted when they stay inside this link and the
            // extended partition (the kernel's rule: they are otherwise often garbage).
            if i >= 2 && (rel + sectors > ebr_sectors || start + sectors > ext_end) {
                continue;
            }
            if *next_logical > 4 + MAX_LOGICAL {
                findings.warning(
                    CODE_TOO_MANY,
                    Some(ebr_lba.saturating_mul(ss)),
                    format!("more than {MAX_LOGICAL} logical partitions; the rest are ignored"),
                );
                return Ok(());
            }
            if start < ext_start || start + sectors > ext_end {
                findings.warning(
                    CODE_OUTSIDE_EXTENDED,
                    Some(start.saturating_mul(ss)),
                    format!(
                        "logical partition {} (sectors {start}..{}) lies outside its extended partition (sectors {ext_start}..{ext_end})",
                        *next_logical,
                        start + sectors
                    ),
                );
            }
            out.push(partition(
                *next_logical,
                start,
                sectors,
                rec,
                Role::Logical,
                signature,
                sector_size,
            ));
            *next_logical += 1;
            empty_links = 0;
        }
        let Some(link) = ebr
            .records
            .iter()
            .find(|r| r.sectors.get() != 0 && is_mbr_extended(r.partition_type))
        else {
            return Ok(());
        };
        ebr_lba = ext_start + u64::from(link.start_lba.get());
        ebr_sectors = u64::from(link.sectors.get());
    }
}
