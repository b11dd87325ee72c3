//! Partition tables: MBR (with the extended/logical chain), protective MBR and GPT
//! (docs/guest-partitions.md).
//!
//! [`partitions`] reads whatever table the disk holds and reports every partition the way
//! Linux numbers it, plus findings for anything odd (a damaged primary GPT, overlapping or
//! out-of-disk partitions, a looping extended chain). Only I/O failures are `Err`: a damaged
//! table is a finding, never a panic, and never a partition invented from garbage.

pub mod gpt;
pub mod mbr;
pub mod types;

use super::Window;
use crate::error::Result;
use crate::finding::{Finding, Findings};
use crate::image::DiskImage;
use serde::Serialize;
pub use types::{PartitionKind, PartitionType};
use uuid::Uuid;

/// No partition table was recognised (the disk may hold a bare file system).
pub const CODE_NONE: &str = "guest.partition.none";
/// The primary GPT (header or entry array) is damaged; the backup at the disk's end was used.
pub const CODE_GPT_BACKUP_USED: &str = "guest.partition.gpt_backup_used";
/// The primary GPT is good but the backup is damaged or missing.
pub const CODE_GPT_BACKUP_INVALID: &str = "guest.partition.gpt_backup_invalid";
/// The backup GPT is not on the disk's last sector (the disk was grown without moving it).
pub const CODE_GPT_BACKUP_MISPLACED: &str = "guest.partition.gpt_backup_misplaced";
/// Neither GPT copy is valid: no partition can be trusted.
pub const CODE_GPT_INVALID: &str = "guest.partition.gpt_invalid";
/// A GPT but no protective MBR record.
pub const CODE_GPT_NO_PROTECTIVE_MBR: &str = "guest.partition.gpt_no_protective_mbr";
/// A hybrid MBR: the protective record shares the MBR with real partitions.
pub const CODE_HYBRID_MBR: &str = "guest.partition.hybrid_mbr";
/// A GPT entry whose last sector precedes its first.
pub const CODE_INVALID_RANGE: &str = "guest.partition.invalid_range";
/// A partition extends past the end of the disk.
pub const CODE_BEYOND_DISK: &str = "guest.partition.beyond_disk";
/// A GPT partition lies outside the header's usable range.
pub const CODE_OUTSIDE_USABLE: &str = "guest.partition.outside_usable";
/// Two partitions share sectors.
pub const CODE_OVERLAP: &str = "guest.partition.overlap";
/// An extended-partition chain is broken (missing signature, loop, too many links).
pub const CODE_EBR_CHAIN: &str = "guest.partition.ebr_chain";
/// A logical partition lies outside its extended partition.
pub const CODE_OUTSIDE_EXTENDED: &str = "guest.partition.outside_extended";
/// More partitions than vhdforge reads (the rest are ignored).
pub const CODE_TOO_MANY: &str = "guest.partition.too_many";

/// Which kind of table the disk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// No partition table recognised.
    None,
    /// A DOS/MBR table (possibly with logical partitions).
    Mbr,
    /// A GUID partition table.
    Gpt,
}

/// How an MBR partition is recorded; GPT partitions are all `Gpt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// One of the four records of the MBR.
    Primary,
    /// A primary record holding the extended-partition chain (not a volume itself).
    Extended,
    /// A partition in the extended chain (numbered from 5).
    Logical,
    /// A GPT entry.
    Gpt,
}

/// Hyper-V VM generation the boot layout suggests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Generation {
    /// BIOS boot: an MBR disk, or a GPT disk with a BIOS boot partition and no ESP.
    #[serde(rename = "1")]
    Gen1,
    /// UEFI boot: a GPT disk with an EFI system partition.
    #[serde(rename = "2")]
    Gen2,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// The number Linux gives it (`sda<N>`): MBR slots 1–4, logicals from 5, GPT entry index + 1.
    pub number: u32,
    /// First byte on the disk.
    pub start_bytes: u64,
    /// Length in bytes.
    pub size_bytes: u64,
    /// The type as stored (MBR byte or GPT type GUID).
    #[serde(rename = "type")]
    pub partition_type: PartitionType,
    /// What the type says it holds.
    pub kind: PartitionKind,
    /// How the table records it.
    pub role: Role,
    /// GPT partition name (UTF-16 in the entry; empty when unnamed); `None` on MBR.
    pub name: Option<String>,
    /// `PARTUUID` as Linux spells it: the GPT unique GUID (lower case), or
    /// `<disk signature>-<number>` in hex on MBR.
    pub partuuid: String,
    /// MBR boot indicator 0x80 (the "active" partition BIOS boot code starts).
    pub active: bool,
    /// GPT attribute bits (bit 0 required, bit 2 legacy BIOS bootable, 48–63 type-specific); 0 on MBR.
    pub attributes: u64,
}

impl Partition {
    /// One past the last byte.
    pub fn end_bytes(&self) -> u64 {
        self.start_bytes.saturating_add(self.size_bytes)
    }

    /// The partition's bytes as a window on `image`; fails when it runs past the disk.
    pub fn window<'a>(&self, image: &'a dyn DiskImage) -> Result<Window<'a>> {
        Window::new(image, self.start_bytes, self.size_bytes)
    }
}

/// Everything found in a disk's partition table.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionTable {
    /// The table kind.
    pub scheme: Scheme,
    /// Logical sector size the table was read with (LBAs are in these units).
    pub sector_size: u32,
    /// MBR disk signature as `0x` + 8 hex digits, or the GPT disk GUID (lower case).
    pub disk_id: Option<String>,
    /// The partitions in table order (MBR: primaries, then logicals; GPT: entry order).
    pub partitions: Vec<Partition>,
    /// The VM generation the boot layout suggests, when it suggests one.
    pub generation: Option<Generation>,
    /// What was odd or damaged.
    pub findings: Vec<Finding>,
}

impl PartitionTable {
    /// The partition Linux numbers `number`.
    pub fn get(&self, number: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == number)
    }
}

/// Read the partition table of `image` (any format vhdforge opens).
///
/// Errors only when the disk cannot be read; a missing or damaged table is reported in
/// [`PartitionTable::findings`].
pub fn partitions(image: &dyn DiskImage) -> Result<PartitionTable> {
    let sector_size = image.info().logical_sector_size;
    // Only 512 and 4096 exist in VHD/VHDX; anything else would be a bug upstream, but keep
    // LBA arithmetic sane regardless.
    let sector_size = if sector_size == 4096 { 4096 } else { 512 };
    partitions_in(&Window::whole(image), sector_size)
}

/// [`partitions`] on a window with an explicit logical sector size.
pub fn partitions_in(disk: &Window<'_>, sector_size: u32) -> Result<PartitionTable> {
    let mut findings = Findings::default();
    let mut table = PartitionTable {
        scheme: Scheme::None,
        sector_size,
        disk_id: None,
        partitions: Vec::new(),
        generation: None,
        findings: Vec::new(),
    };
    let mbr = mbr::read_mbr(disk, sector_size)?;
    let protective = mbr.as_ref().is_some_and(mbr::Mbr::is_protective_or_hybrid);
    // A GPT is read when the MBR announces one, and probed when there is no MBR at all
    // (some tools write a GPT without the protective record).
    if protective || mbr.is_none() {
        if let Some(g) = gpt::read_gpt(disk, sector_size, protective, &mut findings)? {
            if let Some(m) = &mbr {
                if m.is_hybrid() {
                    findings.info(
                        CODE_HYBRID_MBR,
                        Some(0),
                        "the MBR holds a GPT protective record and other partitions (a hybrid MBR); the GPT is used, as Linux does",
                    );
                }
            } else {
                findings.warning(
                    CODE_GPT_NO_PROTECTIVE_MBR,
                    Some(0),
                    "a GPT was found but sector 0 holds no MBR with a protective (0xEE) record; firmware and Windows may not see the partitions",
                );
            }
            table.scheme = Scheme::Gpt;
            table.disk_id = Some(g.disk_guid.to_string());
            table.partitions = g.partitions;
        } else if protective {
            // read_gpt recorded why; the protective record alone is no partition.
            table.scheme = Scheme::Gpt;
        }
    } else if let Some(m) = mbr {
        table.scheme = Scheme::Mbr;
        table.disk_id = Some(format!("0x{:08x}", m.signature));
        table.partitions = mbr::partitions(disk, sector_size, &m, &mut findings)?;
    }
    if table.scheme == Scheme::None {
        findings.info(
            CODE_NONE,
            None,
            "no MBR or GPT partition table: the disk holds no partitions (it may be a bare file system)",
        );
    }
    check_layout(&table.partitions, disk.len(), &mut findings);
    table.generation = generation(&table);
    table.findings = findings.0;
    Ok(table)
}

/// Partitions that run past the disk or share sectors. Extended containers are skipped for
/// the overlap test: their logicals lie inside them by design.
fn check_layout(parts: &[Partition], disk_len: u64, findings: &mut Findings) {
    for p in parts {
        if p.start_bytes
            .checked_add(p.size_bytes)
            .is_none_or(|end| end > disk_len)
        {
            findings.error(
                CODE_BEYOND_DISK,
                Some(p.start_bytes),
                format!(
                    "partition {} covers bytes {:#x}..{:#x} but the disk has only {disk_len:#x} bytes; the image may be truncated",
                    p.number,
                    p.start_bytes,
                    p.end_bytes()
                ),
            );
        }
    }
    let mut spans: Vec<&Partition> = parts
        .iter()
        .filter(|p| p.role != Role::Extended && p.size_bytes > 0)
        .collect();
    spans.sort_by_key(|p| (p.start_bytes, p.number));
    // After sorting by start, any overlap shows between a partition and the furthest-reaching
    // one before it: linear, whatever the count.
    let mut reach: Option<&Partition> = None;
    for p in spans {
        if let Some(r) = reach {
            if p.start_bytes < r.end_bytes() {
                findings.error(
                    CODE_OVERLAP,
                    Some(p.start_bytes),
                    format!(
                        "partitions {} ({:#x}..{:#x}) and {} ({:#x}..{:#x}) share sectors; writing one would corrupt the other",
                        r.number,
                        r.start_bytes,
                        r.end_bytes(),
                        p.number,
                        p.start_bytes,
                        p.end_bytes()
                    ),
                );
            }
        }
        if reach.is_none_or(|r| p.end_bytes() > r.end_bytes()) {
            reach = Some(p);
        }
    }
}

fn generation(t: &PartitionTable) -> Option<Generation> {
    let has = |k: PartitionKind| t.partitions.iter().any(|p| p.kind == k);
    match t.scheme {
        // Gen2 VMs boot only by UEFI from GPT; an MBR disk can only boot in Gen1.
        Scheme::Mbr if !t.partitions.is_empty() => Some(Generation::Gen1),
        Scheme::Gpt if has(PartitionKind::EfiSystem) => Some(Generation::Gen2),
        Scheme::Gpt if has(PartitionKind::BiosBoot) => Some(Generation::Gen1),
        _ => None,
    }
}

/// GUIDs on disk store their first three fields little-endian.
pub(crate) fn guid_le(b: [u8; 16]) -> Uuid {
    Uuid::from_bytes_le(b)
}

#[cfg(test)]
mod tests;
