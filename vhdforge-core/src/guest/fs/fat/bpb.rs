//! The FAT boot sector's BIOS parameter block (`docs/guest-filesystems.md` §5.1): the
//! geometry every other structure is found by, checked against the volume before use.
//!
//! The FAT type is decided by the cluster count alone (fewer than 4085 clusters: FAT12,
//! fewer than 65525: FAT16, else FAT32), as the specification and Linux do; the type string
//! in the boot sector is only a label.

use super::corrupt;
use crate::error::Result;

/// Which FAT variant, by cluster count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    /// 12-bit FAT entries, packed two in three bytes.
    Fat12,
    /// 16-bit FAT entries.
    Fat16,
    /// 32-bit FAT entries, of which the low 28 bits are the cluster.
    Fat32,
}

/// Byte offsets of the BPB fields used (all little-endian).
mod at {
    pub const BYTES_PER_SECTOR: usize = 11;
    pub const SECTORS_PER_CLUSTER: usize = 13;
    pub const RESERVED_SECTORS: usize = 14;
    pub const NUM_FATS: usize = 16;
    pub const ROOT_ENTRIES: usize = 17;
    pub const TOTAL_SECTORS_16: usize = 19;
    pub const FAT_SIZE_16: usize = 22;
    pub const TOTAL_SECTORS_32: usize = 32;
    /// FAT32 only: sectors per FAT.
    pub const FAT_SIZE_32: usize = 36;
    /// FAT32 only: first cluster of the root directory.
    pub const ROOT_CLUSTER: usize = 44;
    /// The boot-sector signature `55 AA`.
    pub const SIGNATURE: usize = 510;
}

/// Fewest clusters of a FAT16 and of a FAT32 volume.
const FAT16_MIN_CLUSTERS: u64 = 4085;
const FAT32_MIN_CLUSTERS: u64 = 65525;
/// FAT32 cluster numbers are 28 bits; 0x0FFFFFF7 and up are reserved values.
const FAT32_MAX_CLUSTERS: u64 = 0x0FFF_FFF5;

/// The validated geometry.
#[derive(Debug, Clone)]
pub struct Geometry {
    /// FAT12, FAT16 or FAT32.
    pub fat_type: FatType,
    /// Bytes per cluster (sector size × sectors per cluster, at most 256 KiB here).
    pub cluster_bytes: u64,
    /// Volume offset of the first FAT.
    pub fat_offset: u64,
    /// Length of one FAT in bytes.
    pub fat_bytes: u64,
    /// FAT12/16: volume offset and length of the fixed root directory region.
    pub root_region: Option<(u64, u64)>,
    /// FAT32: the root directory's first cluster.
    pub root_cluster: u32,
    /// Volume offset of cluster 2, the first data cluster.
    pub data_offset: u64,
    /// Number of data clusters: valid cluster numbers are `2..cluster_count + 2`.
    pub cluster_count: u64,
}

fn u16_at(s: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([s[o], s[o + 1]])
}
fn u32_at(s: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]])
}

/// Where the root directory is: FAT32's first root cluster (checked), or FAT12/16's fixed
/// region of `root_entries` entries at `region_offset`.
fn root_location(
    s: &[u8; 512],
    fat_type: FatType,
    cluster_count: u64,
    root_entries: u64,
    region_offset: u64,
) -> Result<(Option<(u64, u64)>, u32)> {
    if fat_type == FatType::Fat32 {
        let c = u32_at(s, at::ROOT_CLUSTER) & 0x0FFF_FFFF;
        if c < 2 || u64::from(c) >= cluster_count + 2 {
            return Err(corrupt(format!(
                "the root directory starts at cluster {c}; valid clusters are 2 to {}",
                cluster_count + 1
            )));
        }
        return Ok((None, c));
    }
    if root_entries == 0 {
        return Err(corrupt(format!(
            "a {} volume with no root directory entries",
            if fat_type == FatType::Fat12 {
                "FAT12"
            } else {
                "FAT16"
            }
        )));
    }
    Ok((Some((region_offset, root_entries * 32)), 0))
}

impl Geometry {
    /// Parse and check the 512-byte boot sector `s` of a volume of `volume_len` bytes.
    pub fn parse(s: &[u8; 512], volume_len: u64) -> Result<Geometry> {
        if s[at::SIGNATURE..at::SIGNATURE + 2] != [0x55, 0xAA] {
            return Err(corrupt(format!(
                "the FAT boot sector ends in {:02x} {:02x}, expected the signature 55 aa",
                s[510], s[511]
            )));
        }
        let sector = u64::from(u16_at(s, at::BYTES_PER_SECTOR));
        if !matches!(sector, 512 | 1024 | 2048 | 4096) {
            return Err(corrupt(format!(
                "bytes per sector is {sector}; FAT allows 512, 1024, 2048 or 4096"
            )));
        }
        let per_cluster = u64::from(s[at::SECTORS_PER_CLUSTER]);
        if per_cluster == 0 || !per_cluster.is_power_of_two() {
            return Err(corrupt(format!(
                "sectors per cluster is {per_cluster}; FAT allows a power of two from 1 to 128"
            )));
        }
        let reserved = u64::from(u16_at(s, at::RESERVED_SECTORS));
        if reserved == 0 {
            return Err(corrupt(
                "the reserved sector count is 0; the boot sector itself is reserved, so it is at least 1".into(),
            ));
        }
        let fats = u64::from(s[at::NUM_FATS]);
        if !(1..=4).contains(&fats) {
            return Err(corrupt(format!(
                "the volume claims {fats} FATs; expected 1 to 4 (usually 2)"
            )));
        }
        let total = match u16_at(s, at::TOTAL_SECTORS_16) {
            0 => u64::from(u32_at(s, at::TOTAL_SECTORS_32)),
            n => u64::from(n),
        };
        let fat_sectors = match u16_at(s, at::FAT_SIZE_16) {
            0 => u64::from(u32_at(s, at::FAT_SIZE_32)),
            n => u64::from(n),
        };
        if fat_sectors == 0 || total == 0 {
            return Err(corrupt(format!(
                "the FAT size ({fat_sectors} sectors) or the total size ({total} sectors) is 0"
            )));
        }
        let root_entries = u64::from(u16_at(s, at::ROOT_ENTRIES));
        let root_sectors = (root_entries * 32).div_ceil(sector);
        let data_sector = reserved + fats * fat_sectors + root_sectors;
        let fs_bytes = total * sector;
        if fs_bytes > volume_len {
            return Err(corrupt(format!(
                "the FAT file system claims {total} sectors of {sector} bytes ({fs_bytes} bytes) but its volume has {volume_len} bytes: the partition or image was truncated, or the boot sector is damaged"
            )));
        }
        let Some(data_sectors) = total.checked_sub(data_sector) else {
            return Err(corrupt(format!(
                "the FATs and root directory end at sector {data_sector}, past the {total} sectors of the file system"
            )));
        };
        let cluster_count = data_sectors / per_cluster;
        let fat_type = if cluster_count < FAT16_MIN_CLUSTERS {
            FatType::Fat12
        } else if cluster_count < FAT32_MIN_CLUSTERS {
            FatType::Fat16
        } else {
            FatType::Fat32
        };
        if cluster_count > FAT32_MAX_CLUSTERS {
            return Err(corrupt(format!(
                "{cluster_count} clusters is more than FAT32's {FAT32_MAX_CLUSTERS}"
            )));
        }
        let fat_bytes = fat_sectors * sector;
        let entry_bits: u64 = match fat_type {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        };
        let needed = ((cluster_count + 2) * entry_bits).div_ceil(8);
        if needed > fat_bytes {
            return Err(corrupt(format!(
                "a FAT of {fat_bytes} bytes cannot map {cluster_count} clusters ({needed} bytes needed)"
            )));
        }
        let (root_region, root_cluster) = root_location(
            s,
            fat_type,
            cluster_count,
            root_entries,
            (reserved + fats * fat_sectors) * sector,
        )?;
        Ok(Geometry {
            fat_type,
            cluster_bytes: per_cluster * sector,
            fat_offset: reserved * sector,
            fat_bytes,
            root_region,
            root_cluster,
            data_offset: data_sector * sector,
            cluster_count,
        })
    }

    /// True when `c` names a data cluster.
    pub fn is_data_cluster(&self, c: u32) -> bool {
        c >= 2 && u64::from(c) < self.cluster_count + 2
    }

    /// Volume offset of data cluster `c` (checked with [`Geometry::is_data_cluster`]).
    pub fn cluster_offset(&self, c: u32) -> u64 {
        self.data_offset + (u64::from(c) - 2) * self.cluster_bytes
    }
}
