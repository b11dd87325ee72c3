//! The NTFS boot sector (`docs/guest-filesystems.md` §6.1): the geometry every other address
//! is computed from, so each field is checked before it is used.

use super::{corrupt, unsupported};
use crate::error::{Error, ErrorKind, Result};

/// Largest cluster Windows makes (2 MiB, since Windows 10 1903).
const MAX_CLUSTER: u64 = 2 << 20;

/// What the boot sector says about the volume.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub cluster: u64,
    pub total_clusters: u64,
    pub mft_lcn: u64,
    /// Bytes per FILE record (1024 or 4096).
    pub record: u64,
}

impl Geometry {
    /// The byte range of `count` clusters from `lcn`, checked to lie inside the volume.
    pub fn cluster_bytes(&self, lcn: u64, count: u64) -> Result<(u64, u64)> {
        match lcn.checked_add(count) {
            Some(end) if end <= self.total_clusters => {
                Ok((lcn * self.cluster, count * self.cluster))
            }
            _ => Err(corrupt(format!(
                "clusters {lcn}..+{count} lie past the end of the volume ({} clusters)",
                self.total_clusters
            ))),
        }
    }
}

/// The code for a volume that is encrypted and cannot be read without its keys.
pub const ENCRYPTED: &str = "guest.fs.encrypted";

pub fn bitlocker() -> Error {
    Error::new(
        ErrorKind::Unsupported,
        ENCRYPTED,
        "the volume is encrypted with BitLocker (its boot sector says -FVE-FS-); its files cannot be read without the recovery key. Decrypt it inside the guest (`manage-bde -off C:`) and convert again",
    )
}

/// Parse the boot sector `s` (512 bytes) of a volume of `volume_len` bytes.
pub fn parse(s: &[u8], volume_len: u64) -> Result<Geometry> {
    if s.len() < 512 {
        return Err(corrupt("the volume is smaller than one boot sector"));
    }
    if &s[3..11] == b"-FVE-FS-" {
        return Err(bitlocker());
    }
    if &s[3..11] != b"NTFS    " {
        return Err(corrupt(format!(
            "the boot sector's OEM id is {:?}, expected \"NTFS    \"",
            String::from_utf8_lossy(&s[3..11])
        )));
    }
    let u64_at = |o: usize| u64::from_le_bytes(s[o..o + 8].try_into().unwrap_or([0; 8]));
    let sector = u64::from(u16::from_le_bytes([s[11], s[12]]));
    if !(256..=4096).contains(&sector) || !sector.is_power_of_two() {
        return Err(corrupt(format!(
            "{sector} bytes per sector; expected a power of two from 256 to 4096"
        )));
    }
    let spc = s[13];
    let sectors_per_cluster: u64 = match spc {
        1..=128 if spc.is_power_of_two() => u64::from(spc),
        // Large clusters: the byte is the negative power of two (0xF4 → 2^12 sectors).
        244..=255 => 1u64 << (256 - u32::from(spc)),
        _ => {
            return Err(corrupt(format!(
                "sectors per cluster byte is {spc:#x}; expected 1–128 (a power of two) or 0xF4–0xFF"
            )))
        }
    };
    let cluster = sector * sectors_per_cluster;
    if cluster > MAX_CLUSTER {
        return Err(unsupported(format!(
            "clusters of {cluster} bytes; Windows makes at most 2 MiB"
        )));
    }
    let total_sectors = u64_at(40);
    if total_sectors.saturating_mul(sector) > volume_len {
        return Err(corrupt(format!(
            "the boot sector counts {total_sectors} sectors of {sector} bytes, more than the {volume_len}-byte volume holds"
        )));
    }
    let total_clusters = total_sectors * sector / cluster;
    let mft_lcn = u64_at(48);
    if mft_lcn >= total_clusters {
        return Err(corrupt(format!(
            "the MFT starts at cluster {mft_lcn}, past the {total_clusters} clusters of the volume"
        )));
    }
    // Signed: positive = clusters, otherwise 2^-n bytes.
    let raw = i8::from_le_bytes([s[64]]);
    let record = if raw > 0 {
        u64::try_from(raw).unwrap_or(0) * cluster
    } else if raw > -32 {
        1u64 << u32::from(raw.unsigned_abs())
    } else {
        0
    };
    if !matches!(record, 1024 | 2048 | 4096) {
        return Err(unsupported(format!(
            "FILE records of {record} bytes (byte 64 = {raw}); NTFS uses 1024 or 4096"
        )));
    }
    Ok(Geometry {
        cluster,
        total_clusters,
        mft_lcn,
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector() -> Vec<u8> {
        let mut s = vec![0u8; 512];
        s[3..11].copy_from_slice(b"NTFS    ");
        s[11..13].copy_from_slice(&512u16.to_le_bytes());
        s[13] = 8;
        s[40..48].copy_from_slice(&2047u64.to_le_bytes());
        s[48..56].copy_from_slice(&4u64.to_le_bytes());
        s[64] = 0xF6;
        s[510] = 0x55;
        s[511] = 0xAA;
        s
    }

    #[test]
    fn geometry_and_both_negative_encodings() {
        let g = parse(&sector(), 1 << 20).unwrap();
        assert_eq!((g.cluster, g.record, g.total_clusters), (4096, 1024, 255));
        let mut s = sector();
        s[13] = 0xF4; // 4096 sectors of 512 bytes = 2 MiB clusters
        s[40..48].copy_from_slice(&((64u64 << 20) / 512).to_le_bytes());
        let g = parse(&s, 64 << 20).unwrap();
        assert_eq!(g.cluster, 2 << 20);
        s[13] = 0xF3;
        assert_eq!(
            parse(&s, 64 << 20).unwrap_err().code(),
            "guest.fs.ntfs_corrupt"
        );
    }

    #[test]
    fn bitlocker_is_named() {
        let mut s = sector();
        s[3..11].copy_from_slice(b"-FVE-FS-");
        assert_eq!(parse(&s, 1 << 20).unwrap_err().code(), ENCRYPTED);
    }

    #[test]
    fn bad_fields_are_errors() {
        for (at, v) in [(11usize, 3u8), (13, 3), (64, 0x80), (64, 3), (48, 0xFF)] {
            let mut s = sector();
            s[at] = v;
            if at == 48 {
                s[48..56].fill(0xFF);
            }
            assert!(parse(&s, 1 << 20).is_err(), "byte {at} = {v}");
        }
        assert!(parse(&sector(), 4096).is_err());
    }
}
