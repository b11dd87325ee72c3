//! Azure's rules for uploaded VHDs (`docs/formats.md §3`, `docs/azure-page-blob.md §6`), each a
//! typed [`Rule`], and the readiness findings they produce.
//!
//! Hard rules (errors): fixed VHD, `CurrentSize` a whole number of MiB, file length =
//! `CurrentSize` + 512 with the footer last, 20 MiB ≤ size ≤ 32 767 GiB, 512-byte sectors.
//! Soft rules (warnings, "marketplace profile"): page-blob cap, Hyper-V's 2040 GiB OS-disk
//! limit, the Marketplace OS-disk range.
//!
//! The same rule functions ([`size_rule`], [`sector_rule`]) decide what `check` reports and
//! what `convert`, `convert --in-place` and `upload` refuse, so the two can never disagree.

use crate::finding::{Finding, Severity};
use crate::image::{DiskType, Format, ImageInfo};

/// One MiB.
pub const MIB: u64 = 1 << 20;
/// One GiB.
pub const GIB: u64 = 1 << 30;
/// Smallest virtual size Azure accepts.
pub const MIN_VIRTUAL_SIZE: u64 = 20 * MIB;
/// Largest managed-disk upload (virtual size): the documented upload maximum is
/// 35 183 298 347 520 bytes = 32 767 GiB + the 512-byte footer (`docs/formats.md §3`),
/// 1 GiB below the "32 TiB" it is often rounded to.
pub const MAX_VIRTUAL_SIZE: u64 = 32_767 * GIB;
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

/// One of Azure's rules. The finding codes ([`Rule::code`]) stay the stable public form;
/// code inside vhdforge decides on the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// Only a fixed VHD is accepted.
    NotFixedVhd,
    /// Sectors must be 512 bytes.
    SectorSize,
    /// The virtual size must be a whole number of MiB.
    SizeUnaligned,
    /// Below [`MIN_VIRTUAL_SIZE`].
    TooSmall,
    /// Above [`MAX_VIRTUAL_SIZE`].
    TooLarge,
    /// Above the 8 TiB page-blob cap (a managed disk still takes it).
    PageBlobLimit,
    /// Above 2040 GiB: fine for a data disk, not for an OS disk.
    OsDiskLimit,
    /// Outside the Marketplace OS-disk range.
    MarketplaceOsDiskSize,
    /// The 511-byte footer of pre-2004 Virtual PC images.
    Footer511,
    /// File length is not `CurrentSize` + 512.
    FileLength,
}

impl Rule {
    /// The finding code this rule reports under.
    pub fn code(self) -> &'static str {
        match self {
            Rule::NotFixedVhd => "azure.not_fixed_vhd",
            Rule::SectorSize => "azure.sector_size",
            Rule::SizeUnaligned => "azure.size_unaligned",
            Rule::TooSmall => "azure.too_small",
            Rule::TooLarge => "azure.too_large",
            Rule::PageBlobLimit => "azure.page_blob_limit",
            Rule::OsDiskLimit => "azure.os_disk_limit",
            Rule::MarketplaceOsDiskSize => "marketplace.os_disk_size",
            Rule::Footer511 => "azure.footer_511",
            Rule::FileLength => "azure.file_length",
        }
    }
}

/// The size rule broken by a disk of `disk_size` bytes (already whole MiB), if any.
pub fn size_rule(disk_size: u64) -> Option<Rule> {
    if disk_size < MIN_VIRTUAL_SIZE {
        Some(Rule::TooSmall)
    } else if disk_size > MAX_VIRTUAL_SIZE {
        Some(Rule::TooLarge)
    } else {
        None
    }
}

/// The sector rule broken by `logical_sector_size`, if any.
pub fn sector_rule(logical_sector_size: u32) -> Option<Rule> {
    (logical_sector_size != 512).then_some(Rule::SectorSize)
}

/// A rule an image breaks, with how bad that is for this image and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breach {
    /// The rule.
    pub rule: Rule,
    /// Error: Azure refuses the image as it stands; warning/info: worth knowing.
    pub severity: Severity,
    /// What was found, what Azure expects, what to do.
    pub message: String,
    /// Byte offset in the file, when the breach is about one place.
    pub offset: Option<u64>,
}

impl From<Breach> for Finding {
    fn from(b: Breach) -> Finding {
        Finding::new(b.severity, b.rule.code(), b.offset, b.message)
    }
}

/// Every Azure rule the image, as it stands, breaks.
#[allow(clippy::too_many_lines)] // one short block per rule, in the README's order
pub fn assess(info: &ImageInfo) -> Vec<Breach> {
    let mut out = Vec::new();
    let mut push = |rule: Rule, severity: Severity, offset: Option<u64>, message: String| {
        out.push(Breach {
            rule,
            severity,
            message,
            offset,
        });
    };
    let size = info.virtual_size;
    let is_fixed_vhd = info.format == Format::Vhd && info.disk_type == DiskType::Fixed;
    if !is_fixed_vhd {
        let what = match (info.format, info.disk_type) {
            (Format::Raw, _) => "a raw image".to_string(),
            (Format::Vhdx, t) => format!("a {t} VHDX"),
            (Format::Vhd, t) => format!("a {t} VHD"),
        };
        let in_place = if info.format == Format::Raw {
            " (or `vhdforge convert --in-place`)"
        } else {
            ""
        };
        push(
            Rule::NotFixedVhd,
            Severity::Error,
            None,
            format!("this is {what}; Azure accepts only a fixed VHD. Run `vhdforge convert` to produce one{in_place}"),
        );
    }
    if let Some(rule) = sector_rule(info.logical_sector_size) {
        push(
            rule,
            Severity::Error,
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
            push(
                Rule::SizeUnaligned,
                Severity::Error,
                None,
                format!(
                    "{msg}. Run `vhdforge convert --in-place` (or convert to a new file) to pad it"
                ),
            );
        } else {
            push(
                Rule::SizeUnaligned,
                Severity::Info,
                None,
                format!("{msg}; `vhdforge convert` pads it"),
            );
        }
    }
    let target = round_up_mib(size).unwrap_or(u64::MAX);
    match size_rule(target) {
        Some(Rule::TooSmall) => push(
            Rule::TooSmall,
            Severity::Error,
            None,
            format!("virtual size {size} bytes is below Azure's minimum of 20 MiB ({MIN_VIRTUAL_SIZE} bytes)"),
        ),
        Some(rule) => push(
            rule,
            Severity::Error,
            None,
            format!("virtual size {size} bytes is above Azure's maximum of 32 767 GiB ({MAX_VIRTUAL_SIZE} bytes)"),
        ),
        None => {}
    }
    if target <= MAX_VIRTUAL_SIZE && target > MAX_PAGE_BLOB {
        push(
            Rule::PageBlobLimit,
            Severity::Warning,
            None,
            format!("virtual size {size} bytes is above the 8 TiB page-blob limit: upload it straight to a managed disk"),
        );
    }
    if target > OS_DISK_SOFT_LIMIT && target <= MAX_VIRTUAL_SIZE {
        push(
            Rule::OsDiskLimit,
            Severity::Warning,
            None,
            format!("virtual size {} GiB is above 2040 GiB: fine for a data disk, but OS disks that large fail (Hyper-V limit)", size / GIB),
        );
    }
    if size_rule(target).is_none() && !(MARKETPLACE_OS_MIN..=MARKETPLACE_OS_MAX).contains(&target) {
        push(
            Rule::MarketplaceOsDiskSize,
            Severity::Warning,
            None,
            format!("virtual size is {}; Marketplace OS disks must be 30–1023 GiB (Windows: 30–250 GiB)", crate::progress::format_bytes(size)),
        );
    }
    if is_fixed_vhd {
        if info.vhd_footer_size == Some(511) {
            push(
                Rule::Footer511,
                Severity::Error,
                Some(info.file_size.saturating_sub(511)),
                "the footer is the 511-byte kind of pre-2004 Virtual PC images; Azure needs a 512-byte footer. Run `vhdforge convert --in-place`".into(),
            );
        }
        let want = size.checked_add(512);
        if want != Some(info.file_size) && info.vhd_footer_size == Some(512) {
            push(
                Rule::FileLength,
                Severity::Error,
                None,
                format!("file length is {} bytes; a fixed VHD of {size} bytes must be exactly {} bytes (data + 512-byte footer, footer last)",
                    info.file_size, size.saturating_add(512)),
            );
        }
    }
    out
}

/// Findings about whether the image, as it stands, is what Azure accepts.
pub fn readiness(info: &ImageInfo) -> Vec<Finding> {
    assess(info).into_iter().map(Finding::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixed_vhd(virtual_size: u64) -> ImageInfo {
        ImageInfo {
            path: PathBuf::from("t.vhd"),
            format: Format::Vhd,
            disk_type: DiskType::Fixed,
            virtual_size,
            logical_sector_size: 512,
            physical_sector_size: 512,
            block_size: None,
            file_size: virtual_size + 512,
            identifier: None,
            parent: None,
            parent_identifier: None,
            vhd_footer_size: Some(512),
            creator: None,
        }
    }

    fn rules(info: &ImageInfo, severity: Severity) -> Vec<Rule> {
        assess(info)
            .into_iter()
            .filter(|b| b.severity == severity)
            .map(|b| b.rule)
            .collect()
    }

    #[test]
    fn the_maximum_is_32767_gib_not_32_tib() {
        // docs/formats.md §3: upload size ≤ 35 183 298 347 520 bytes = 32 767 GiB + 512.
        assert_eq!(MAX_VIRTUAL_SIZE + 512, 35_183_298_347_520);
        let cases: &[(&str, u64, Option<Rule>)] = &[
            ("exactly the maximum", MAX_VIRTUAL_SIZE, None),
            (
                "one MiB above the maximum",
                MAX_VIRTUAL_SIZE + MIB,
                Some(Rule::TooLarge),
            ),
            ("the loose \"32 TiB\"", 32 << 40, Some(Rule::TooLarge)),
            ("exactly the minimum", MIN_VIRTUAL_SIZE, None),
            (
                "one MiB below the minimum",
                MIN_VIRTUAL_SIZE - MIB,
                Some(Rule::TooSmall),
            ),
        ];
        for &(what, size, want) in cases {
            assert_eq!(size_rule(size), want, "{what}");
            let errors = rules(&fixed_vhd(size), Severity::Error);
            assert_eq!(errors, want.into_iter().collect::<Vec<_>>(), "{what}");
        }
    }

    #[test]
    fn readiness_findings_carry_the_rule_codes() {
        // A 4Kn dynamic VHDX of 30 GiB + 1 byte: not fixed, sectors, unaligned (info).
        let mut info = fixed_vhd(30 * GIB + 1);
        info.format = Format::Vhdx;
        info.disk_type = DiskType::Dynamic;
        info.logical_sector_size = 4096;
        let got: Vec<(Severity, &str)> = readiness(&info)
            .iter()
            .map(|f| (f.severity, f.code.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Severity::Error, "azure.not_fixed_vhd"),
                (Severity::Error, "azure.sector_size"),
                (Severity::Info, "azure.size_unaligned"),
            ]
        );
        // Above the page-blob cap and the OS-disk limit, within the maximum: warnings only.
        let big = fixed_vhd(9 << 40);
        assert_eq!(rules(&big, Severity::Error), []);
        assert_eq!(
            rules(&big, Severity::Warning),
            [
                Rule::PageBlobLimit,
                Rule::OsDiskLimit,
                Rule::MarketplaceOsDiskSize
            ]
        );
        // A fixed VHD whose file is a page too long.
        let mut long = fixed_vhd(30 * GIB);
        long.file_size += 512;
        assert_eq!(rules(&long, Severity::Error), [Rule::FileLength]);
    }
}
