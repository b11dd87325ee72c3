//! Conversion of any readable image into an Azure-ready fixed VHD.
//!
//! [`AzurePlan`] decides the output's shape (size rounded up to a whole MiB, the footer);
//! the converter and the uploader both produce exactly that byte stream: the virtual disk,
//! zero padding, then the 512-byte footer.

use crate::azure::{round_up_mib, MAX_VIRTUAL_SIZE, MIN_VIRTUAL_SIZE};
use crate::error::{Error, ErrorKind, Result};
use crate::format::vhd::footer::{vhd_timestamp_now, HardDiskFooter, FOOTER_SIZE};
use crate::image::{DiskImage, Extent};

mod in_place;
mod to_file;

pub use in_place::{convert_in_place, journal_path_for, InPlaceReport};
pub use to_file::{check_output_for, convert_to_file, ConvertOptions, ConvertReport};

/// What the user allows beyond Azure's rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Convert 4096-byte-sector images although the guest will then see 512-byte sectors.
    pub allow_4k_sectors: bool,
    /// Produce images outside Azure's 20 MiB – 32 TiB range.
    pub allow_any_size: bool,
    /// Unique id for the footer (default: a fresh random one).
    pub unique_id: Option<[u8; 16]>,
    /// Footer time stamp in seconds since 2000-01-01 (default: now).
    pub time_stamp: Option<u32>,
}

/// The disk size Azure gets for `source_size` bytes of disk: rounded up to a whole MiB,
/// and refused outside 20 MiB – 32 TiB unless the policy allows any size.
pub fn disk_size_for(source_size: u64, policy: &Policy) -> Result<u64> {
    let disk_size = round_up_mib(source_size).ok_or_else(|| {
        Error::new(
            ErrorKind::Unsupported,
            "convert.too_large",
            format!("size {source_size} cannot be rounded up to a whole MiB"),
        )
    })?;
    if !policy.allow_any_size && !(MIN_VIRTUAL_SIZE..=MAX_VIRTUAL_SIZE).contains(&disk_size) {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "convert.size_out_of_range",
            format!(
                "the disk would be {disk_size} bytes, outside Azure's range of {MIN_VIRTUAL_SIZE} bytes (20 MiB) to {MAX_VIRTUAL_SIZE} bytes (32 TiB); \
                 pass --allow-any-size to convert anyway"
            ),
        ));
    }
    Ok(disk_size)
}

/// The shape of the Azure-ready fixed VHD made from an image.
#[derive(Debug, Clone)]
pub struct AzurePlan {
    /// The source's virtual size.
    pub source_size: u64,
    /// The output's virtual size: the source size rounded up to a whole MiB.
    pub disk_size: u64,
    /// The footer to write last.
    pub footer: HardDiskFooter,
}

impl AzurePlan {
    /// Plan the output for `image`, refusing what Azure would refuse unless `policy` allows it.
    pub fn new(image: &dyn DiskImage, policy: &Policy) -> Result<AzurePlan> {
        let info = image.info();
        if info.logical_sector_size != 512 && !policy.allow_4k_sectors {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "convert.sector_size",
                format!(
                    "{} has {}-byte logical sectors; a VHD always has 512-byte sectors, so the guest would see different LBAs \
                     (GPT, file systems). Rebuild the disk with 512-byte sectors, or pass --allow-4k-sectors if the guest copes",
                    info.path.display(),
                    info.logical_sector_size
                ),
            ));
        }
        let source_size = info.virtual_size;
        let disk_size = disk_size_for(source_size, policy)?;
        let unique_id = policy
            .unique_id
            .unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes());
        let time_stamp = policy.time_stamp.unwrap_or_else(vhd_timestamp_now);
        Ok(AzurePlan {
            source_size,
            disk_size,
            footer: HardDiskFooter::new_fixed(disk_size, unique_id, time_stamp),
        })
    }

    /// Bytes of zero padding added after the source's data.
    pub fn padding(&self) -> u64 {
        self.disk_size - self.source_size
    }

    /// Length of the output file: disk + footer.
    pub fn output_size(&self) -> u64 {
        self.disk_size + FOOTER_SIZE as u64
    }

    /// The footer's bytes.
    pub fn footer_bytes(&self) -> [u8; FOOTER_SIZE] {
        self.footer.to_bytes()
    }

    /// Read bytes of the output's disk area `[0, disk_size)`: the source, then zeros.
    pub fn read_disk(&self, image: &dyn DiskImage, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        crate::image::check_virtual_range(self.disk_size, offset, len)?;
        let inside = self.source_size.saturating_sub(offset).min(len) as usize;
        if inside > 0 {
            image.read_at(&mut buf[..inside], offset)?;
        }
        buf[inside..].fill(0);
        Ok(())
    }

    /// The allocation of the output's disk area `[start, start + length)`: the source's map,
    /// with the padding `Unallocated`.
    pub fn disk_extents(
        &self,
        image: &dyn DiskImage,
        start: u64,
        length: u64,
        out: &mut Vec<Extent>,
    ) -> Result<()> {
        crate::image::check_virtual_range(self.disk_size, start, length)?;
        let end = start + length;
        let inside_end = end.min(self.source_size);
        if inside_end > start {
            image.extents(start, inside_end - start, out)?;
        }
        let pad_start = start.max(self.source_size);
        if end > pad_start {
            crate::image::push_extent(
                out,
                Extent {
                    start: pad_start,
                    length: end - pad_start,
                    allocation: crate::image::Allocation::Unallocated,
                },
            );
        }
        Ok(())
    }
}
