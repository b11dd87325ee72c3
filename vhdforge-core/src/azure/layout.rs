//! The fixed-VHD layout every output of vhdforge has: the virtual disk, zero padding up to a
//! whole MiB, then the 512-byte footer (`docs/formats.md §1.1`, `§7`). The converter writes
//! it, in-place conversion completes a file to it, the uploader streams it.

use super::policy::Policy;
use super::rules::{round_up_mib, sector_rule, size_rule, MAX_VIRTUAL_SIZE, MIN_VIRTUAL_SIZE};
use crate::error::{Error, ErrorKind, Result};
use crate::format::vhd::footer::{vhd_timestamp_now, HardDiskFooter, FOOTER_SIZE};
use crate::image::{DiskImage, Extent};
use std::path::Path;

/// Where the layout's footer comes from.
#[derive(Debug, Clone)]
pub enum FooterSource {
    /// A new footer for the rounded size. Its unique id is `unique_id` when given (an
    /// in-place repair keeps the disk's identity), else the policy's, else a fresh random
    /// one; its time stamp the policy's, else now.
    New {
        /// The identity to keep, if any.
        unique_id: Option<[u8; 16]>,
    },
    /// The footer of an Azure-ready fixed VHD, sent byte for byte.
    Existing(Box<HardDiskFooter>),
}

/// Private, so no code outside this file can build a layout without the rules applied.
#[derive(Debug, Clone, Copy)]
struct Sealed;

/// The shape of the Azure-ready fixed VHD made from a disk of `source_size` bytes.
#[derive(Debug, Clone)]
pub struct FixedVhdLayout {
    /// The source's virtual size.
    pub source_size: u64,
    /// The output's virtual size: the source size rounded up to a whole MiB.
    pub disk_size: u64,
    /// The footer to write last.
    pub footer: HardDiskFooter,
    _sealed: Sealed,
}

impl FixedVhdLayout {
    /// The layout for a disk of `source_size` bytes with `logical_sector_size`-byte sectors
    /// read from `path`, refusing what Azure would refuse unless `policy` waives it.
    pub fn new(
        path: &Path,
        source_size: u64,
        logical_sector_size: u32,
        footer: FooterSource,
        policy: &Policy,
    ) -> Result<FixedVhdLayout> {
        if sector_rule(logical_sector_size).is_some_and(|r| !policy.allows(r)) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "convert.sector_size",
                format!(
                    "{} has {logical_sector_size}-byte logical sectors; a VHD always has 512-byte sectors, so the guest would see different LBAs \
                     (GPT, file systems). Rebuild the disk with 512-byte sectors, or pass --allow-4k-sectors if the guest copes",
                    path.display(),
                ),
            ));
        }
        let disk_size = round_up_mib(source_size).ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                "convert.too_large",
                format!("size {source_size} cannot be rounded up to a whole MiB"),
            )
        })?;
        if size_rule(disk_size).is_some_and(|r| !policy.allows(r)) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "convert.size_out_of_range",
                format!(
                    "the disk would be {disk_size} bytes, outside Azure's range of {MIN_VIRTUAL_SIZE} bytes (20 MiB) to {MAX_VIRTUAL_SIZE} bytes (32 767 GiB); \
                     pass --allow-any-size to convert anyway"
                ),
            ));
        }
        let footer = match footer {
            FooterSource::Existing(f) => *f,
            FooterSource::New { unique_id } => HardDiskFooter::new_fixed(
                disk_size,
                unique_id
                    .or(policy.unique_id)
                    .unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes()),
                policy.time_stamp.unwrap_or_else(vhd_timestamp_now),
            ),
        };
        Ok(FixedVhdLayout {
            source_size,
            disk_size,
            footer,
            _sealed: Sealed,
        })
    }

    /// The layout for `image` with a new footer ([`FixedVhdLayout::new`]).
    pub fn for_image(image: &dyn DiskImage, policy: &Policy) -> Result<FixedVhdLayout> {
        let info = image.info();
        Self::new(
            &info.path,
            info.virtual_size,
            info.logical_sector_size,
            FooterSource::New { unique_id: None },
            policy,
        )
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
        let inside = self.source_size.saturating_sub(offset).min(len);
        let inside = crate::io::usize_from(inside);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::MIB;

    fn layout(size: u64, sectors: u32, policy: &Policy) -> Result<FixedVhdLayout> {
        FixedVhdLayout::new(
            Path::new("d.raw"),
            size,
            sectors,
            FooterSource::New { unique_id: None },
            policy,
        )
    }

    #[test]
    fn sizes_round_up_and_the_range_is_enforced_unless_waived() {
        let strict = Policy::default();
        let any = Policy {
            allow_any_size: true,
            ..Policy::default()
        };
        // (what, source size, code without a waiver, disk size)
        let cases: &[(&str, u64, Option<&str>, u64)] = &[
            ("whole MiB", 21 * MIB, None, 21 * MIB),
            ("a byte over rounds up", 21 * MIB + 1, None, 22 * MIB),
            ("the maximum", MAX_VIRTUAL_SIZE, None, MAX_VIRTUAL_SIZE),
            (
                "a byte over the maximum",
                MAX_VIRTUAL_SIZE + 1,
                Some("convert.size_out_of_range"),
                MAX_VIRTUAL_SIZE + MIB,
            ),
            (
                "under the minimum",
                MIN_VIRTUAL_SIZE - 1,
                None,
                MIN_VIRTUAL_SIZE,
            ),
            (
                "a MiB under the minimum",
                MIN_VIRTUAL_SIZE - MIB,
                Some("convert.size_out_of_range"),
                MIN_VIRTUAL_SIZE - MIB,
            ),
        ];
        for &(what, size, code, disk) in cases {
            match (layout(size, 512, &strict), code) {
                (Ok(l), None) => {
                    assert_eq!(l.disk_size, disk, "{what}");
                    assert_eq!(l.padding(), disk - size, "{what}");
                    assert_eq!(l.output_size(), disk + 512, "{what}");
                    assert_eq!(l.footer.current_size.get(), disk, "{what}");
                }
                (Err(e), Some(c)) => assert_eq!(e.code(), c, "{what}: {e}"),
                (r, _) => panic!("{what}: {r:?}"),
            }
            assert_eq!(layout(size, 512, &any).unwrap().disk_size, disk, "{what}");
        }
        let e = layout(u64::MAX, 512, &any).unwrap_err();
        assert_eq!(e.code(), "convert.too_large");
    }

    #[test]
    fn sectors_other_than_512_need_the_waiver() {
        let e = layout(21 * MIB, 4096, &Policy::default()).unwrap_err();
        assert_eq!(e.code(), "convert.sector_size");
        assert!(e.message().contains("d.raw has 4096-byte"), "{e}");
        let ok = Policy {
            allow_4k_sectors: true,
            ..Policy::default()
        };
        assert!(layout(21 * MIB, 4096, &ok).is_ok());
    }

    #[test]
    fn footer_identity_comes_from_the_source_then_the_policy() {
        let policy = Policy {
            unique_id: Some([7; 16]),
            time_stamp: Some(99),
            ..Policy::default()
        };
        let new = |id| {
            FixedVhdLayout::new(
                Path::new("d"),
                21 * MIB,
                512,
                FooterSource::New { unique_id: id },
                &policy,
            )
            .unwrap()
            .footer
        };
        assert_eq!(new(None).unique_id, [7; 16]);
        assert_eq!(new(Some([3; 16])).unique_id, [3; 16]);
        assert_eq!(new(None).time_stamp.get(), 99);
        // An existing footer is kept byte for byte.
        let f = HardDiskFooter::new_fixed(21 * MIB, [5; 16], 1);
        let l = FixedVhdLayout::new(
            Path::new("d"),
            21 * MIB,
            512,
            FooterSource::Existing(Box::new(f)),
            &policy,
        )
        .unwrap();
        assert_eq!(l.footer_bytes(), f.to_bytes());
    }
}
