//! GUID partition table: choosing a valid copy (primary, else backup) and reading its
//! entries (docs/guest-partitions.md §2).
//!
//! A copy is used only when its header and its entry array both pass their CRC-32 and every
//! bound: a half-valid table would invent partitions. The entry array is capped at
//! [`MAX_ENTRY_ARRAY_BYTES`] whatever the header says.

pub mod entry;
pub mod header;

use super::types::{PartitionKind, PartitionType};
use super::{
    guid_le, Partition, Role, Window, CODE_GPT_BACKUP_INVALID, CODE_GPT_BACKUP_MISPLACED,
    CODE_GPT_BACKUP_USED, CODE_GPT_INVALID, CODE_INVALID_RANGE, CODE_OUTSIDE_USABLE,
};
use crate::error::Result;
use crate::finding::Findings;
use crate::format::utf16::{until_nul_lossy, ByteOrder};
use entry::{GptEntry, ENTRY_SIZE};
use header::{GptHeader, HEADER_CRC_OFFSET, MIN_HEADER_SIZE, SIGNATURE};
use uuid::Uuid;
use zerocopy::FromBytes;

/// Largest entry array read (8,192 entries of 128 bytes; real tables use 16 KiB).
pub const MAX_ENTRY_ARRAY_BYTES: u64 = 1 << 20;
/// Largest entry size accepted (a bound, not a spec value: the spec allows any 128 × 2^n).
pub const MAX_ENTRY_SIZE: u32 = 4096;

/// CRC-32 (IEEE 802.3, as zlib) of `bytes`.
#[allow(clippy::cast_possible_truncation)] // CRC-32 is 32 bits wide: the u64 always fits
pub fn crc32(bytes: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32IsoHdlc, bytes) as u32
}

/// CRC-32 of `bytes` with the four bytes at `field` taken as zero.
#[allow(clippy::cast_possible_truncation)] // CRC-32 is 32 bits wide: the u64 always fits
fn crc32_zeroed(bytes: &[u8], field: usize) -> u32 {
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32IsoHdlc);
    d.update(&bytes[..field]);
    d.update(&[0u8; 4]);
    d.update(&bytes[field + 4..]);
    d.finalize() as u32
}

/// A validated GPT copy.
#[derive(Debug, Clone)]
pub struct Gpt {
    /// The disk GUID.
    pub disk_guid: Uuid,
    /// The LBA of the header used.
    pub header_lba: u64,
    /// Its partitions, in entry order.
    pub partitions: Vec<Partition>,
}

/// A header and entry array that passed every check, not yet turned into partitions.
struct Copy {
    header: GptHeader,
    lba: u64,
    array: Vec<u8>,
}

/// Why a copy was rejected, in words for a finding; `header_ok` when only the array failed
/// (the header's `AlternateLBA` can then be trusted to find the other copy).
struct Rejected {
    reason: String,
    header_ok: Option<GptHeader>,
}

fn rejected(reason: String) -> Rejected {
    Rejected {
        reason,
        header_ok: None,
    }
}

/// Read and check the header at `lba` and its entry array.
fn read_copy(
    disk: &Window<'_>,
    lba: u64,
    sector_size: u32,
) -> Result<std::result::Result<Copy, Rejected>> {
    let ss = u64::from(sector_size);
    let sectors = disk.len() / ss;
    if lba >= sectors {
        return Ok(Err(rejected(format!(
            "LBA {lba} is beyond the disk's {sectors} sectors"
        ))));
    }
    let sector = disk.read_vec(lba * ss, ss, 4096)?;
    let Ok((header, _)) = GptHeader::read_from_prefix(&sector) else {
        return Ok(Err(rejected(
            "the sector is too short for a GPT header".into(),
        )));
    };
    if &header.signature != SIGNATURE {
        return Ok(Err(rejected(format!(
            "no `EFI PART` signature at LBA {lba}"
        ))));
    }
    let size = header.header_size.get();
    if size < MIN_HEADER_SIZE || size > sector_size {
        return Ok(Err(rejected(format!(
            "header size {size} is outside {MIN_HEADER_SIZE}..={sector_size}"
        ))));
    }
    let computed = crc32_zeroed(&sector[..size as usize], HEADER_CRC_OFFSET);
    if computed != header.header_crc32.get() {
        return Ok(Err(rejected(format!(
            "header CRC-32 is {:#010x} but its {size} bytes hash to {computed:#010x}",
            header.header_crc32.get()
        ))));
    }
    if header.my_lba.get() != lba {
        return Ok(Err(rejected(format!(
            "header at LBA {lba} says it is at LBA {}",
            header.my_lba.get()
        ))));
    }
    // From here the header is authentic; only its contents can be wrong.
    let bad = |reason: String| {
        Ok(Err(Rejected {
            reason,
            header_ok: Some(header),
        }))
    };
    let (first, last) = (header.first_usable_lba.get(), header.last_usable_lba.get());
    if first > last || last >= sectors {
        return bad(format!(
            "usable range {first}..={last} is empty or beyond the disk's {sectors} sectors"
        ));
    }
    let esize = header.size_of_partition_entry.get();
    if (esize as usize) < ENTRY_SIZE || esize > MAX_ENTRY_SIZE || !esize.is_power_of_two() {
        return bad(format!(
            "entry size {esize} is not 128 × 2^n (at most {MAX_ENTRY_SIZE})"
        ));
    }
    let count = header.number_of_partition_entries.get();
    let array_len = u64::from(count) * u64::from(esize);
    if array_len > MAX_ENTRY_ARRAY_BYTES {
        return bad(format!(
            "{count} entries of {esize} bytes make a {array_len}-byte array; vhdforge reads at most {MAX_ENTRY_ARRAY_BYTES}"
        ));
    }
    let array_lba = header.partition_entry_lba.get();
    let array_end_lba = array_lba.saturating_add(array_len.div_ceil(ss));
    if array_lba == 0 || array_end_lba > sectors {
        return bad(format!(
            "entry array at LBA {array_lba} ({array_len} bytes) is not inside the disk"
        ));
    }
    if array_lba <= last && array_end_lba > first && array_len > 0 {
        return bad(format!(
            "entry array at LBA {array_lba}..{array_end_lba} overlaps the usable range {first}..={last}"
        ));
    }
    let array = disk.read_vec(array_lba * ss, array_len, MAX_ENTRY_ARRAY_BYTES)?;
    let computed = crc32(&array);
    if computed != header.partition_entry_array_crc32.get() {
        return bad(format!(
            "entry array CRC-32 is {:#010x} but its {array_len} bytes hash to {computed:#010x}",
            header.partition_entry_array_crc32.get()
        ));
    }
    Ok(Ok(Copy { header, lba, array }))
}

/// Find a valid GPT: the primary at LBA 1, else the backup. `announced` is true when a
/// protective MBR promised a GPT (then finding none is an error; otherwise it was a probe).
pub fn read_gpt(
    disk: &Window<'_>,
    sector_size: u32,
    announced: bool,
    findings: &mut Findings,
) -> Result<Option<Gpt>> {
    let ss = u64::from(sector_size);
    let sectors = disk.len() / ss;
    if sectors < 3 {
        if announced {
            findings.error(
                CODE_GPT_INVALID,
                Some(0),
                format!("the MBR announces a GPT but the disk has only {sectors} sectors"),
            );
        }
        return Ok(None);
    }
    let last_lba = sectors - 1;
    let copy = match read_copy(disk, 1, sector_size)? {
        Ok(primary) => {
            check_backup(disk, sector_size, &primary.header, last_lba, findings)?;
            primary
        }
        Err(primary_fault) => {
            let mut candidates = Vec::with_capacity(2);
            if let Some(h) = primary_fault.header_ok {
                candidates.push(h.alternate_lba.get());
            }
            if !candidates.contains(&last_lba) {
                candidates.push(last_lba);
            }
            let mut found = None;
            let mut faults = vec![format!("primary (LBA 1): {}", primary_fault.reason)];
            for lba in candidates {
                match read_copy(disk, lba, sector_size)? {
                    Ok(c) => {
                        found = Some(c);
                        break;
                    }
                    Err(r) => faults.push(format!("backup (LBA {lba}): {}", r.reason)),
                }
            }
            let Some(backup) = found else {
                if announced {
                    findings.error(
                        CODE_GPT_INVALID,
                        Some(ss),
                        format!(
                            "the MBR announces a GPT but neither copy is valid: {}; no partition can be trusted (gdisk's recovery menu may rebuild it)",
                            faults.join("; ")
                        ),
                    );
                }
                return Ok(None);
            };
            findings.warning(
                CODE_GPT_BACKUP_USED,
                Some(ss),
                format!(
                    "the primary GPT is damaged ({}); the backup at LBA {} was used. Repair with `sgdisk -e` or gdisk's recovery menu before relying on the disk",
                    primary_fault.reason, backup.lba
                ),
            );
            backup
        }
    };
    let partitions = entries(&copy, sector_size, sectors, findings);
    Ok(Some(Gpt {
        disk_guid: guid_le(copy.header.disk_guid),
        header_lba: copy.lba,
        partitions,
    }))
}

fn check_backup(
    disk: &Window<'_>,
    sector_size: u32,
    primary: &GptHeader,
    last_lba: u64,
    findings: &mut Findings,
) -> Result<()> {
    let ss = u64::from(sector_size);
    let alt = primary.alternate_lba.get();
    if alt != last_lba {
        findings.warning(
            CODE_GPT_BACKUP_MISPLACED,
            Some(ss),
            format!(
                "the primary GPT puts its backup at LBA {alt}, but the disk's last LBA is {last_lba} (the disk was resized?); run `sgdisk -e` in the guest to move it"
            ),
        );
    }
    if let Err(r) = read_copy(disk, alt, sector_size)? {
        findings.warning(
            CODE_GPT_BACKUP_INVALID,
            alt.checked_mul(ss),
            format!(
                "the backup GPT is not usable ({}); the primary is fine. `sgdisk -e` rewrites the backup",
                r.reason
            ),
        );
    }
    Ok(())
}

fn entries(copy: &Copy, sector_size: u32, sectors: u64, findings: &mut Findings) -> Vec<Partition> {
    let ss = u64::from(sector_size);
    let h = &copy.header;
    let esize = h.size_of_partition_entry.get() as usize;
    let (first, last) = (h.first_usable_lba.get(), h.last_usable_lba.get());
    let mut out = Vec::new();
    for (number, raw) in (1u32..).zip(copy.array.chunks_exact(esize)) {
        let Ok((e, _)) = GptEntry::read_from_prefix(raw) else {
            continue;
        };
        if e.is_unused() {
            continue;
        }
        let (start, end) = (e.starting_lba.get(), e.ending_lba.get());
        let entry_offset =
            (h.partition_entry_lba.get() * ss).saturating_add(u64::from(number - 1) * esize as u64);
        if end < start {
            findings.error(
                CODE_INVALID_RANGE,
                Some(entry_offset),
                format!("GPT entry {number} ends at LBA {end}, before its start {start}; the entry is ignored"),
            );
            continue;
        }
        if (start < first || end > last) && end < sectors {
            findings.warning(
                CODE_OUTSIDE_USABLE,
                Some(entry_offset),
                format!(
                    "partition {number} (LBA {start}..={end}) is outside the usable range {first}..={last}; it may overwrite the GPT"
                ),
            );
        }
        let type_guid = guid_le(e.type_guid);
        out.push(Partition {
            number,
            start_bytes: start.saturating_mul(ss),
            // end ≥ start, so end − start + 1 cannot underflow; it may overflow only at u64::MAX.
            size_bytes: (end - start).saturating_add(1).saturating_mul(ss),
            partition_type: PartitionType::Gpt(type_guid),
            kind: PartitionKind::of_gpt(type_guid),
            role: Role::Gpt,
            name: Some(until_nul_lossy(&e.name, ByteOrder::Little)),
            partuuid: guid_le(e.unique_guid).to_string(),
            active: false,
            attributes: e.attributes.get(),
        });
    }
    out
}
