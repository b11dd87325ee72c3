//! Azure's rules for uploaded VHDs (formats.md §3) and the readiness findings they produce.
//!
//! Hard rules (errors): fixed VHD, CurrentSize a whole number of MiB, file length =
//! CurrentSize + 512 with the footer last, 20 MiB ≤ size ≤ 32 TiB, 512-byte sectors.
//! Soft rules (warnings, "marketplace profile"): page-blob cap, Hyper-V's 2040 GiB OS-disk
//! limit, the Marketplace OS-disk range.

use crate::finding::{Finding, Findings};
use crate::image::{DiskType, Format, ImageInfo};

/// One MiB.
pub const MIB: u64 = 1 << 20;
/// One GiB.
pub const GIB: u64 = 1 << 30;
/// Smallest virtual size Azure accepts.
pub const MIN_VIRTUAL_SIZE: u64 = 20 * MIB;
/// Largest managed-disk upload (virtual size).
pub const MAX_VIRTUAL_SIZE: u64 = 32 << 40;
/// Largest page blob.
pub const MAX_PAGE_BLOB: u64 = 8 << 40;
/// Above this, OS disks hit Hyper-V limits.
pub const OS_DISK_SOFT_LIMIT: u64 = 2040 * GIB;
/// Marketplace OS-disk range (Partner Center FAQ copies; re-check before relying on it).
pub const MARKETPLACE_OS_MIN: u64 = 30 * GIB;
/// Marketplace OS-disk maximum.
pub const MARKETPLACE_OS_MAX: u64 = 1023 * GIB;

/// `size` rounded up to a whole MiB, or `None` on overflow.
pub fn round_up_mib(size: u64) -> Option<u64> {
    size.checked_add(MIB - 1).map(|s| s / MIB * MIB)
}

/// Findings about whether the image, as it stands, is what Azure accepts.
pub fn readiness(info: &ImageInfo) -> Vec<Finding> {
    let mut f = Findings::default();
    let size = info.virtual_size;
    let is_fixed_vhd = info.format == Format::Vhd && info.disk_type == DiskType::Fixed;
    if !is_fixed_vhd {
        let what = match (info.format, info.disk_type) {
            (Format::Raw, _) => "a raw image".to_string(),
            (Format::Vhdx, t) => format!("a {t} VHDX"),
            (Format::Vhd, t) => format!("a {t} VHD"),
        };
        f.error(
            "azure.not_fixed_vhd",
            None,
            format!("this is {what}; Azure accepts only a fixed VHD. Run `vhdforge convert` to produce one{}",
                if info.format == Format::Raw || is_fixed_vhd { " (or `vhdforge convert --in-place`)" } else { "" }),
        );
    }
    if info.logical_sector_size != 512 {
        f.error(
            "azure.sector_size",
            None,
            format!(
                "logical sector size is {} bytes; a VHD has 512-byte sectors, so converting would change what the guest sees \
                 (partition tables, file systems). Rebuild the disk with 512-byte sectors, or convert with --allow-4k-sectors if you know the guest copes",
                info.logical_sector_size
            ),
        );
    }
    if size % MIB != 0 {
        let up = round_up_mib(size).unwrap_or(u64::MAX);
        let msg = format!("virtual size {size} bytes is not a whole number of MiB (Azure requires it); the next whole size is {up} bytes (+{} bytes)", up - size);
        if is_fixed_vhd {
            f.error(
                "azure.size_unaligned",
                None,
                format!(
                    "{msg}. Run `vhdforge convert --in-place` (or convert to a new file) to pad it"
                ),
            );
        } else {
            f.info(
                "azure.size_unaligned",
                None,
                format!("{msg}; `vhdforge convert` pads it"),
            );
        }
    }
    let target = round_up_mib(size).unwrap_or(u64::MAX);
    if target < MIN_VIRTUAL_SIZE {
        f.error("azure.too_small", None, format!("virtual size {size} bytes is below Azure's minimum of 20 MiB ({MIN_VIRTUAL_SIZE} bytes)"));
    }
    if target > MAX_VIRTUAL_SIZE {
        f.error("azure.too_large", None, format!("virtual size {size} bytes is above Azure's maximum of 32 TiB ({MAX_VIRTUAL_SIZE} bytes)"));
    } else if target > MAX_PAGE_BLOB {
        f.warning("azure.page_blob_limit", None, format!("virtual size {size} bytes is above the 8 TiB page-blob limit: upload it straight to a managed disk"));
    }
    if target > OS_DISK_SOFT_LIMIT && target <= MAX_VIRTUAL_SIZE {
        f.warning(
            "azure.os_disk_limit",
            None,
            format!("virtual size {} GiB is above 2040 GiB: fine for a data disk, but OS disks that large fail (Hyper-V limit)", size / GIB),
        );
    }
    if (MIN_VIRTUAL_SIZE..=MAX_VIRTUAL_SIZE).contains(&target)
        && !(MARKETPLACE_OS_MIN..=MARKETPLACE_OS_MAX).contains(&target)
    {
        f.warning(
            "marketplace.os_disk_size",
            None,
            format!("virtual size is {}; Marketplace OS disks must be 30–1023 GiB (Windows: 30–250 GiB)", crate::progress::format_bytes(size)),
        );
    }
    if is_fixed_vhd {
        if info.vhd_footer_size == Some(511) {
            f.error("azure.footer_511", Some(info.file_size.saturating_sub(511)), "the footer is the 511-byte kind of pre-2004 Virtual PC images; Azure needs a 512-byte footer. Run `vhdforge convert --in-place`");
        }
        let want = size.checked_add(512);
        if want != Some(info.file_size) && info.vhd_footer_size == Some(512) {
            f.error(
                "azure.file_length",
                None,
                format!("file length is {} bytes; a fixed VHD of {size} bytes must be exactly {} bytes (data + 512-byte footer, footer last)",
                    info.file_size, size.saturating_add(512)),
            );
        }
    }
    f.0
}
