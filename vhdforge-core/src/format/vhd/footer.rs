//! The VHD hard disk footer (VHD spec v1.0, "Hard Disk Footer Format"; docs/formats.md §1.2–1.6).
//!
//! 512 bytes, big-endian, at the end of every VHD (and copied to offset 0 of dynamic and
//! differencing disks). This file owns the raw layout, its checksum, the spec's CHS
//! geometry algorithm and the builder for the fixed-disk footers vhdforge writes.

use zerocopy::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `conectix`: the footer cookie.
pub const COOKIE: &[u8; 8] = b"conectix";
/// Size of the footer.
pub const FOOTER_SIZE: usize = 512;
/// Features: the reserved bit that must always be set.
pub const FEATURE_RESERVED: u32 = 0x2;
/// Features: temporary disk (candidate for deletion on shutdown).
pub const FEATURE_TEMPORARY: u32 = 0x1;
/// File format version 1.0.
pub const FORMAT_VERSION: u32 = 0x0001_0000;
/// Data offset of a fixed disk: all ones (the spec's 32-bit spelling is accepted on read).
pub const FIXED_DATA_OFFSET: u64 = u64::MAX;
/// Disk type: fixed.
pub const DISK_TYPE_FIXED: u32 = 2;
/// Disk type: dynamic.
pub const DISK_TYPE_DYNAMIC: u32 = 3;
/// Disk type: differencing.
pub const DISK_TYPE_DIFFERENCING: u32 = 4;
/// Creator application vhdforge writes.
///
/// `win ` is what Hyper-V writes. Every reader in docs/formats.md §1.4 takes the size of a
/// `win ` disk from `CurrentSize` (qemu 10 and older qemu 7.2 alike, libvhdi, Azure), which an
/// unknown tag like `vhdf` would not guarantee with older qemu: so we claim `win `.
pub const CREATOR_APP: &[u8; 4] = b"win ";
/// Creator version written (10.0, like current Hyper-V).
pub const CREATOR_VERSION: u32 = 0x000A_0000;
/// Creator host OS `Wi2k`.
pub const CREATOR_HOST_WINDOWS: &[u8; 4] = b"Wi2k";
/// Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC).
pub const VHD_EPOCH_UNIX: u64 = 946_684_800;

/// The hard disk footer as laid out on disk.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct HardDiskFooter {
    /// `conectix`.
    pub cookie: [u8; 8],
    /// Bit 0 temporary, bit 1 reserved (must be 1).
    pub features: U32,
    /// 0x00010000.
    pub file_format_version: U32,
    /// Absolute offset of the dynamic disk header; all ones for fixed disks.
    pub data_offset: U64,
    /// Seconds since 2000-01-01 00:00:00 UTC.
    pub time_stamp: U32,
    /// Four ASCII bytes naming the creating application.
    pub creator_application: [u8; 4],
    /// Creating application version, major.minor 16:16.
    pub creator_version: U32,
    /// `Wi2k` or `Mac `.
    pub creator_host_os: [u8; 4],
    /// Size in bytes at creation.
    pub original_size: U64,
    /// Current virtual size in bytes; the size vhdforge trusts.
    pub current_size: U64,
    /// Cylinders.
    pub cylinders: U16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
    /// 2 fixed, 3 dynamic, 4 differencing.
    pub disk_type: U32,
    /// One's complement of the byte sum with this field zeroed.
    pub checksum: U32,
    /// Unique id (raw 16 bytes).
    pub unique_id: [u8; 16],
    /// 1 when the VM was saved with this disk attached.
    pub saved_state: u8,
    /// Zeros.
    pub reserved: [u8; 427],
}

const _: () = assert!(std::mem::size_of::<HardDiskFooter>() == FOOTER_SIZE);

/// Offset of the checksum field in the footer.
pub const CHECKSUM_OFFSET: usize = 64;

/// The VHD checksum: one's complement of the sum of all bytes, the 4 bytes at
/// `checksum_offset` counted as zero (spec "Checksum"; shared by footer and dynamic header).
pub fn vhd_checksum(bytes: &[u8], checksum_offset: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(checksum_offset..checksum_offset + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// Spec CHS geometry (cylinders, heads, sectors per track) of a disk of `size` bytes
/// (VHD spec appendix "CHS Calculation"; docs/formats.md §1.5). It rounds down.
#[allow(clippy::cast_possible_truncation)] // capped at 65535 × 16 × 255 sectors: every part fits
pub fn chs_geometry(size: u64) -> (u16, u8, u8) {
    let mut ts = size / 512;
    if ts > 65535 * 16 * 255 {
        ts = 65535 * 16 * 255;
    }
    let (spt, heads, cth);
    if ts >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = ts / spt;
    } else {
        let mut s = 17;
        let mut c = ts / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = ts / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = ts / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    let cylinders = cth / heads;
    (cylinders as u16, heads as u8, spt as u8)
}

impl HardDiskFooter {
    /// View 512 bytes as a footer (no validation).
    pub fn from_bytes(bytes: &[u8; FOOTER_SIZE]) -> HardDiskFooter {
        // Infallible: the sizes match and the type is Unaligned.
        HardDiskFooter::read_from_bytes(bytes).unwrap_or_else(|_| unreachable!())
    }

    /// The footer's bytes.
    pub fn to_bytes(&self) -> [u8; FOOTER_SIZE] {
        let mut out = [0u8; FOOTER_SIZE];
        out.copy_from_slice(self.as_bytes());
        out
    }

    /// The checksum the footer should carry.
    pub fn compute_checksum(&self) -> u32 {
        vhd_checksum(self.as_bytes(), CHECKSUM_OFFSET)
    }

    /// A footer for a fixed disk of `size` bytes, as vhdforge writes it: features 0x2,
    /// version 1.0, data offset all ones, creator `win ` on `Wi2k`, spec CHS of the size,
    /// `CurrentSize` = `OriginalSize` = `size`, the given unique id and time stamp
    /// (seconds since 2000-01-01), saved state 0, checksum set.
    pub fn new_fixed(size: u64, unique_id: [u8; 16], time_stamp: u32) -> HardDiskFooter {
        let (c, h, s) = chs_geometry(size);
        let mut f = HardDiskFooter {
            cookie: *COOKIE,
            features: U32::new(FEATURE_RESERVED),
            file_format_version: U32::new(FORMAT_VERSION),
            data_offset: U64::new(FIXED_DATA_OFFSET),
            time_stamp: U32::new(time_stamp),
            creator_application: *CREATOR_APP,
            creator_version: U32::new(CREATOR_VERSION),
            creator_host_os: *CREATOR_HOST_WINDOWS,
            original_size: U64::new(size),
            current_size: U64::new(size),
            cylinders: U16::new(c),
            heads: h,
            sectors_per_track: s,
            disk_type: U32::new(DISK_TYPE_FIXED),
            checksum: U32::new(0),
            unique_id,
            saved_state: 0,
            reserved: [0; 427],
        };
        f.checksum = U32::new(f.compute_checksum());
        f
    }
}

/// Disk type: none (reserved, invalid).
pub const DISK_TYPE_NONE: u32 = 0;
/// The geometry qemu writes with `force_size` as a "use `CurrentSize`" marker (docs/formats.md §1.4).
pub const CHS_MAX: (u16, u8, u8) = (65535, 16, 255);
/// Largest dynamic/differencing disk Hyper-V and Virtual PC accept: 2040 GiB (docs/formats.md §1.8).
pub const MAX_SPARSE_SIZE: u64 = 0xFF00_0000 * 512;

/// A footer as found in a file: the bytes, where they start and how long the footer is
/// (512, or 511 for pre-2004 Virtual PC images whose last reserved byte is missing).
#[derive(Debug, Clone, Copy)]
pub struct FooterAt {
    /// The footer (a 511-byte footer is padded with one zero byte).
    pub footer: HardDiskFooter,
    /// Absolute offset of the first footer byte.
    pub offset: u64,
    /// 512 or 511.
    pub size: u32,
}

impl HardDiskFooter {
    /// True when the cookie is `conectix`.
    pub fn cookie_ok(&self) -> bool {
        &self.cookie == COOKIE
    }

    /// True when the stored checksum matches the bytes.
    pub fn checksum_ok(&self) -> bool {
        self.checksum.get() == self.compute_checksum()
    }

    /// The creator application as printable text: non-printable bytes become `\xNN`, and
    /// trailing NULs are dropped (`wa\0\0` prints as `wa`).
    pub fn creator_printable(&self) -> String {
        let app = &self.creator_application;
        let used = app.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        app[..used]
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b).to_string()
                } else {
                    format!("\\x{b:02x}")
                }
            })
            .collect()
    }

    /// Bytes the CHS geometry describes (C × H × S × 512).
    pub fn chs_bytes(&self) -> u64 {
        u64::from(self.cylinders.get())
            * u64::from(self.heads)
            * u64::from(self.sectors_per_track)
            * 512
    }
}

/// Check a footer's fields, recording what is wrong at `at` (the footer's file offset).
/// The cookie and the disk type are checked by the caller, which must stop on them.
pub fn validate_footer(f: &HardDiskFooter, at: u64, findings: &mut crate::finding::Findings) {
    let stored = f.checksum.get();
    let computed = f.compute_checksum();
    if stored != computed {
        findings.error(
            "vhd.footer.checksum",
            Some(at + CHECKSUM_OFFSET as u64),
            format!("footer checksum is {stored:#010x}, but the footer bytes sum to {computed:#010x}; the footer is damaged (qemu refuses such files)"),
        );
    }
    let features = f.features.get();
    if features & FEATURE_RESERVED == 0 || features & !(FEATURE_RESERVED | FEATURE_TEMPORARY) != 0 {
        findings.warning(
            "vhd.footer.features",
            Some(at + 8),
            format!("footer features are {features:#010x}; expected the reserved bit 0x2 set and no bits other than 0x1 and 0x2"),
        );
    }
    let version = f.file_format_version.get();
    if version >> 16 != FORMAT_VERSION >> 16 {
        findings.error(
            "vhd.footer.version",
            Some(at + 12),
            format!("footer file format version is {version:#010x}; only major version 1 (0x00010000) is defined"),
        );
    } else if version != FORMAT_VERSION {
        findings.warning(
            "vhd.footer.version",
            Some(at + 12),
            format!("footer file format version is {version:#010x}, expected 0x00010000"),
        );
    }
    match f.saved_state {
        0 => {}
        1 => findings.warning(
            "vhd.footer.saved_state",
            Some(at + 84),
            "the virtual machine was saved (hibernated) with this disk attached, so its contents may be inconsistent; boot the VM and shut it down cleanly before converting or uploading",
        ),
        other => findings.warning("vhd.footer.saved_state", Some(at + 84), format!("footer saved-state byte is {other}; expected 0 or 1")),
    }
    let size = f.current_size.get();
    if size % 512 != 0 {
        findings.warning(
            "vhd.footer.size_unaligned",
            Some(at + 48),
            format!("current size {size} is not a whole number of 512-byte sectors"),
        );
    }
    let chs = (f.cylinders.get(), f.heads, f.sectors_per_track);
    if matches!(&f.creator_application, b"vpc " | b"qemu")
        && chs != CHS_MAX
        && f.chs_bytes() != size
    {
        findings.info(
            "vhd.footer.chs_size",
            Some(at + 56),
            format!(
                "creator {:?} with geometry {}/{}/{} ({} bytes) but current size {size}: vhdforge uses the current size, while qemu reads such a file as {} bytes",
                f.creator_printable(),
                chs.0,
                chs.1,
                chs.2,
                f.chs_bytes(),
                f.chs_bytes()
            ),
        );
    }
}

/// Find the trailing footer: the cookie at `len − 512`, else at `len − 511` (docs/formats.md §1.6).
/// `None` when neither place holds the cookie.
pub fn find_trailing_footer(src: &dyn crate::io::ReadAt) -> std::io::Result<Option<FooterAt>> {
    let len = src.size();
    #[allow(clippy::cast_possible_truncation)] // FOOTER_SIZE is 512
    let sizes = [FOOTER_SIZE as u32, FOOTER_SIZE as u32 - 1];
    for size in sizes {
        let Some(offset) = len.checked_sub(u64::from(size)) else {
            continue;
        };
        let mut bytes = [0u8; FOOTER_SIZE];
        src.read_exact_at(&mut bytes[..size as usize], offset)?;
        let footer = HardDiskFooter::from_bytes(&bytes);
        if footer.cookie_ok() {
            return Ok(Some(FooterAt {
                footer,
                offset,
                size,
            }));
        }
    }
    Ok(None)
}

/// Seconds since the VHD epoch for "now" (saturating; 0 before 2000).
pub fn vhd_timestamp_now() -> u32 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(unix.saturating_sub(VHD_EPOCH_UNIX)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_reference_table() {
        // Sizes and CHS from docs/formats.md §1.5.
        let mib = 1u64 << 20;
        let cases = [
            (100 * mib, (1003, 12, 17)),
            (1024 * mib, (2080, 16, 63)),
            (5 * 1024 * mib, (10402, 16, 63)),
            (30 * 1024 * mib, (62415, 16, 63)),
            (127 * 1024 * mib, (65278, 16, 255)),
            (128 * 1024 * mib, (65535, 16, 255)),
            (2040 * 1024 * mib, (65535, 16, 255)),
        ];
        for (size, chs) in cases {
            assert_eq!(chs_geometry(size), chs, "size {size}");
        }
    }

    #[test]
    fn checksum_matches_qemu_footer() {
        // The qem2 footer decoded in docs/formats.md §4.2: stored checksum 0xFFFFE656.
        let hex = "636f6e6563746978000000020001000\
0ffffffffffffffff329c21b371656d3200050003\
5769326b00000000064000000000000006400000ffff10ff00000002ffffe656\
43b55bba09954d969cd6274f33055e2e00";
        let mut bytes = [0u8; 512];
        let raw: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        bytes[..raw.len()].copy_from_slice(&raw);
        let f = HardDiskFooter::from_bytes(&bytes);
        assert_eq!(f.checksum.get(), 0xFFFF_E656);
        assert_eq!(f.compute_checksum(), 0xFFFF_E656);
    }

    #[test]
    fn fixed_footer_round_trips() {
        let f = HardDiskFooter::new_fixed(30 << 30, [7; 16], 1234);
        let b = f.to_bytes();
        let g = HardDiskFooter::from_bytes(&b);
        assert_eq!(&g.cookie, COOKIE);
        assert_eq!(g.current_size.get(), 30 << 30);
        assert_eq!(g.compute_checksum(), g.checksum.get());
        assert_eq!(
            (g.cylinders.get(), g.heads, g.sectors_per_track),
            (62415, 16, 63)
        );
    }
}
