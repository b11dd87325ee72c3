//! Which file system (or other content) a volume holds, by the signatures the formats put at
//! fixed offsets (`docs/guest-filesystems.md` §1). Only signatures are trusted here: a label or
//! UUID is decoded when it sits next to the magic, nothing is followed.
//!
//! Every known signature is probed, not just the first that matches: two signatures on one
//! volume (a file system made over an old one without wiping) are reported as ambiguous, as
//! libblkid does, rather than guessed.

use serde::Serialize;
use std::fmt::Write as _;

use super::volume::ReadRange;
use crate::error::Result;

/// What a volume holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FsKind {
    /// ext2, ext3 or ext4 (one superblock format; the features tell them apart).
    Ext,
    /// XFS, v4 or v5.
    Xfs,
    /// FAT12.
    Fat12,
    /// FAT16.
    Fat16,
    /// FAT32 (EFI system partitions).
    Fat32,
    /// exFAT.
    Exfat,
    /// NTFS.
    Ntfs,
    /// A BitLocker-encrypted volume (`-FVE-FS-`; NTFS inside, unreadable without its keys).
    BitLocker,
    /// Linux swap space (`SWAPSPACE2`, or a hibernation image in it).
    Swap,
    /// A LUKS1 or LUKS2 encrypted volume.
    Luks,
    /// btrfs.
    Btrfs,
    /// An LVM2 physical volume.
    LvmPv,
    /// No known signature.
    Unknown,
    /// Several signatures: which one is live cannot be told from the bytes alone.
    Ambiguous,
}

impl std::fmt::Display for FsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FsKind::Ext => "ext2/3/4",
            FsKind::Xfs => "XFS",
            FsKind::Fat12 => "FAT12",
            FsKind::Fat16 => "FAT16",
            FsKind::Fat32 => "FAT32",
            FsKind::Exfat => "exFAT",
            FsKind::Ntfs => "NTFS",
            FsKind::BitLocker => "BitLocker",
            FsKind::Swap => "swap",
            FsKind::Luks => "LUKS",
            FsKind::Btrfs => "btrfs",
            FsKind::LvmPv => "LVM2 PV",
            FsKind::Unknown => "unknown",
            FsKind::Ambiguous => "ambiguous",
        })
    }
}

/// The result of [`identify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// What was found; `Ambiguous` when `candidates` holds more than one kind.
    pub kind: FsKind,
    /// Every kind whose signature matched (one entry unless ambiguous; none if unknown).
    pub candidates: Vec<FsKind>,
    /// The volume label, when the format stores one next to its magic and it is set.
    pub label: Option<String>,
    /// The volume UUID (or FAT/NTFS serial) as Linux prints it in `/dev/disk/by-uuid`.
    pub uuid: Option<String>,
}

/// ext superblock: 1024 bytes at byte 1024; magic 0xEF53 at 0x38 (§1.1).
const EXT_SB: u64 = 1024;
const EXT_MAGIC_AT: usize = 0x38;
const EXT_UUID_AT: usize = 0x68;
const EXT_LABEL_AT: usize = 0x78;
/// XFS superblock at byte 0: `XFSB`, uuid at 32, label (12 bytes) at 108.
const XFS_MAGIC: &[u8] = b"XFSB";
/// LUKS header at byte 0: `LUKS\xba\xbe`, UUID string (40 bytes) at 168.
const LUKS_MAGIC: &[u8] = b"LUKS\xba\xbe";
/// btrfs superblock at 64 KiB: magic at +0x40, fsid at +0x20, label (256 bytes) at +0x12B.
const BTRFS_SB: u64 = 0x10000;
const BTRFS_MAGIC: &[u8] = b"_BHRfS_M";
/// swap: the magic ends the first page; pages are 4 KiB to 64 KiB, so probe each size.
const SWAP_PAGE_SIZES: [u64; 5] = [4096, 8192, 16384, 32768, 65536];
const SWAP_MAGICS: [&[u8]; 5] = [
    b"SWAPSPACE2",
    b"SWAP-SPACE",
    b"S1SUSPEND\0",
    b"S2SUSPEND\0",
    b"LINHIB0001",
];
/// LVM2 label: `LABELONE` in one of sectors 0–3, `LVM2 001` at +24.
const LVM_LABEL: &[u8] = b"LABELONE";
const LVM_TYPE: &[u8] = b"LVM2 001";

/// One matching signature: kind, label, UUID.
type Match = (FsKind, Option<String>, Option<String>);

/// Identify the content of `vol` by its signatures. I/O errors are returned; a volume too
/// small for a probe simply does not match it.
pub fn identify(vol: &dyn ReadRange) -> Result<Identity> {
    let head = read_up_to(vol, 0, 4096)?;
    let mut found: Vec<Match> = Vec::new();

    let ext = read_up_to(vol, EXT_SB, 1024)?;
    if ext.len() == 1024 && ext[EXT_MAGIC_AT..EXT_MAGIC_AT + 2] == [0x53, 0xEF] {
        found.push((
            FsKind::Ext,
            text(&ext[EXT_LABEL_AT..EXT_LABEL_AT + 16]),
            Some(uuid_string(&ext[EXT_UUID_AT..EXT_UUID_AT + 16])),
        ));
    }
    if head.starts_with(XFS_MAGIC) && head.len() >= 120 {
        found.push((
            FsKind::Xfs,
            text(&head[108..120]),
            Some(uuid_string(&head[32..48])),
        ));
    }
    if head.starts_with(LUKS_MAGIC) && head.len() >= 208 {
        found.push((FsKind::Luks, None, text(&head[168..208])));
    }
    let btrfs = read_up_to(vol, BTRFS_SB, 0x12B + 256)?;
    if btrfs.len() == 0x12B + 256 && &btrfs[0x40..0x48] == BTRFS_MAGIC {
        found.push((
            FsKind::Btrfs,
            text(&btrfs[0x12B..0x12B + 256]),
            Some(uuid_string(&btrfs[0x20..0x30])),
        ));
    }
    if let Some(swap) = probe_swap(vol)? {
        found.push(swap);
    }
    for sector in 0..4usize {
        let s = sector * 512;
        if head.len() >= s + 512
            && &head[s..s + 8] == LVM_LABEL
            && &head[s + 24..s + 32] == LVM_TYPE
        {
            // The PV UUID starts the PV header, at the offset the label gives (normally 32).
            let off = u32::from_le_bytes([head[s + 20], head[s + 21], head[s + 22], head[s + 23]]);
            let uuid = usize::try_from(off)
                .ok()
                .filter(|&o| o + 32 <= 512)
                .and_then(|o| text(&head[s + o..s + o + 32]))
                .map(|u| lvm_uuid(&u));
            found.push((FsKind::LvmPv, None, uuid));
            break;
        }
    }
    if head.len() >= 512 {
        if let Some(fat) = probe_boot_sector(&head[..512]) {
            found.push(fat);
        }
    }

    Ok(match found.len() {
        0 => Identity {
            kind: FsKind::Unknown,
            candidates: Vec::new(),
            label: None,
            uuid: None,
        },
        1 => {
            let (kind, label, uuid) = found.remove(0);
            Identity {
                kind,
                candidates: vec![kind],
                label,
                uuid,
            }
        }
        _ => Identity {
            kind: FsKind::Ambiguous,
            candidates: found.iter().map(|f| f.0).collect(),
            label: None,
            uuid: None,
        },
    })
}

/// Up to `len` bytes at `offset`, fewer (possibly none) when the volume ends first.
fn read_up_to(vol: &dyn ReadRange, offset: u64, len: u64) -> Result<Vec<u8>> {
    let n = vol.len().saturating_sub(offset).min(len);
    let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0)];
    if n > 0 {
        vol.read_at(&mut buf, offset)?;
    }
    Ok(buf)
}

fn probe_swap(vol: &dyn ReadRange) -> Result<Option<Match>> {
    for page in SWAP_PAGE_SIZES {
        let tail = read_up_to(vol, page - 10, 10)?;
        if tail.len() == 10 && SWAP_MAGICS.contains(&tail.as_slice()) {
            // The swap header (version 1) holds uuid at 1036 and label at 1052.
            let info = read_up_to(vol, 1036, 32)?;
            let (uuid, label) = if info.len() == 32 && tail == b"SWAPSPACE2" {
                let uuid = Some(&info[..16])
                    .filter(|u| u.iter().any(|&b| b != 0))
                    .map(uuid_string);
                (uuid, text(&info[16..32]))
            } else {
                (None, None)
            };
            return Ok(Some((FsKind::Swap, label, uuid)));
        }
    }
    Ok(None)
}

/// NTFS, exFAT and FAT share the boot-sector shape; FAT has no magic, so its BIOS parameter
/// block must be self-consistent before it counts.
fn probe_boot_sector(s: &[u8]) -> Option<Match> {
    let u16_at = |o: usize| u16::from_le_bytes([s[o], s[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]]);
    if &s[3..11] == b"NTFS    " {
        // The 64-bit serial at 0x48; Linux shows it as 16 hex digits, high byte first.
        let serial = u64::from_le_bytes(s[0x48..0x50].try_into().ok()?);
        return Some((FsKind::Ntfs, None, Some(format!("{serial:016X}"))));
    }
    if &s[3..11] == b"-FVE-FS-" {
        return Some((FsKind::BitLocker, None, None));
    }
    if &s[3..11] == b"EXFAT   " {
        let serial = u32_at(0x64);
        return Some((FsKind::Exfat, None, Some(fat_serial(serial))));
    }
    if s[510..512] != [0x55, 0xAA] {
        return None;
    }
    let bytes_per_sector = u16_at(11);
    let sectors_per_cluster = s[13];
    let reserved = u16_at(14);
    let fats = s[16];
    let root_entries = u16_at(17);
    let total = if u16_at(19) != 0 {
        u32::from(u16_at(19))
    } else {
        u32_at(32)
    };
    let fat_size = if u16_at(22) != 0 {
        u32::from(u16_at(22))
    } else {
        u32_at(36)
    };
    let sane = matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        && sectors_per_cluster.is_power_of_two()
        && reserved > 0
        && (1..=4).contains(&fats)
        && fat_size > 0
        && total > 0
        && (s[21] == 0xF0 || s[21] >= 0xF8);
    if !sane {
        return None;
    }
    let root_sectors = (u32::from(root_entries) * 32).div_ceil(u32::from(bytes_per_sector));
    let first_data =
        u64::from(reserved) + u64::from(fats) * u64::from(fat_size) + u64::from(root_sectors);
    let clusters = u64::from(total).checked_sub(first_data)? / u64::from(sectors_per_cluster);
    // Cluster-count thresholds decide the FAT type, whatever the type string says.
    let (kind, id_at) = if clusters < 4085 {
        (FsKind::Fat12, 39)
    } else if clusters < 65525 {
        (FsKind::Fat16, 39)
    } else {
        (FsKind::Fat32, 67)
    };
    let label = text(&s[id_at + 4..id_at + 15]).filter(|l| l != "NO NAME");
    Some((kind, label, Some(fat_serial(u32_at(id_at)))))
}

/// A FAT volume id the way Linux prints it: `XXXX-XXXX`, high word first.
fn fat_serial(v: u32) -> String {
    format!("{:04X}-{:04X}", v >> 16, v & 0xFFFF)
}

/// A 16-byte UUID stored in byte order (ext, XFS, btrfs, swap) in its usual text form.
fn uuid_string(b: &[u8]) -> String {
    let h = b.iter().fold(String::with_capacity(32), |mut h, x| {
        // Writing to a String cannot fail.
        let _ = write!(h, "{x:02x}");
        h
    });
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// LVM's 32-character PV UUID with dashes after characters 6, 10, 14, 18, 22 and 26.
fn lvm_uuid(u: &str) -> String {
    if u.len() != 32 || !u.is_ascii() {
        return u.to_string();
    }
    [
        &u[0..6],
        &u[6..10],
        &u[10..14],
        &u[14..18],
        &u[18..22],
        &u[22..26],
        &u[26..32],
    ]
    .join("-")
}

/// A NUL- or space-padded label; `None` when empty or not text.
fn text(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = std::str::from_utf8(&b[..end]).ok()?.trim_end_matches(' ');
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<u8>);
    impl ReadRange for Mem {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            let o = offset as usize;
            buf.copy_from_slice(&self.0[o..o + buf.len()]);
            Ok(())
        }
    }

    fn vol(len: usize, patches: &[(usize, &[u8])]) -> Mem {
        let mut v = vec![0u8; len];
        for (at, bytes) in patches {
            v[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        Mem(v)
    }

    #[test]
    fn signatures_table() {
        let cases: Vec<(Mem, FsKind)> = vec![
            // ext: magic at absolute byte 1080.
            (
                vol(8192, &[(1080, &[0x53, 0xEF]), (1024 + 0x78, b"root")]),
                FsKind::Ext,
            ),
            (vol(8192, &[(0, b"XFSB"), (108, b"data")]), FsKind::Xfs),
            (vol(8192, &[(0, b"LUKS\xba\xbe\0\x02")]), FsKind::Luks),
            // swap on a 4 KiB-page machine and on a 64 KiB-page one.
            (vol(8192, &[(4086, b"SWAPSPACE2")]), FsKind::Swap),
            (vol(70000, &[(65526, b"SWAPSPACE2")]), FsKind::Swap),
            (vol(0x10400, &[(0x10040, b"_BHRfS_M")]), FsKind::Btrfs),
            (
                vol(8192, &[(512, b"LABELONE"), (512 + 24, b"LVM2 001")]),
                FsKind::LvmPv,
            ),
            (
                vol(8192, &[(3, b"NTFS    "), (510, &[0x55, 0xAA])]),
                FsKind::Ntfs,
            ),
            // Zeros, and a lone 55 AA without a sane BPB, are nothing.
            (vol(8192, &[]), FsKind::Unknown),
            (vol(8192, &[(510, &[0x55, 0xAA])]), FsKind::Unknown),
            // Too small for any probe: unknown, not an error.
            (vol(100, &[]), FsKind::Unknown),
            // XFS made over an old ext4 without wiping: both magics survive.
            (
                vol(8192, &[(0, b"XFSB"), (1080, &[0x53, 0xEF])]),
                FsKind::Ambiguous,
            ),
        ];
        for (i, (v, want)) in cases.iter().enumerate() {
            assert_eq!(identify(v).unwrap().kind, *want, "case {i}");
        }
        let id = identify(&cases[0].0).unwrap();
        assert_eq!(id.label.as_deref(), Some("root"));
    }

    #[test]
    fn fat_type_follows_the_cluster_count() {
        // A 64 MiB FAT32 as mkfs.fat -F 32 lays it out: 512-byte sectors, 1 sector/cluster.
        let mut s = vec![0u8; 8192];
        s[11..13].copy_from_slice(&512u16.to_le_bytes());
        s[13] = 1;
        s[14..16].copy_from_slice(&32u16.to_le_bytes());
        s[16] = 2;
        s[21] = 0xF8;
        s[32..36].copy_from_slice(&131_072u32.to_le_bytes());
        s[36..40].copy_from_slice(&1009u32.to_le_bytes());
        s[67..71].copy_from_slice(&0x1234_ABCDu32.to_le_bytes());
        s[71..82].copy_from_slice(b"EFI        ");
        s[510] = 0x55;
        s[511] = 0xAA;
        let id = identify(&Mem(s)).unwrap();
        assert_eq!(id.kind, FsKind::Fat32);
        assert_eq!(id.uuid.as_deref(), Some("1234-ABCD"));
        assert_eq!(id.label.as_deref(), Some("EFI"));
    }
}
