//! The VHDX header section: file type identifier and the two headers
//! ([MS-VHDX] §2.2.1–2.2.2; docs/formats.md §2.1, §2.4).
//!
//! Two 4 KiB headers sit at 64 KiB and 128 KiB. Each is protected by a CRC-32C over its
//! first 4 KiB; the current header is the valid one with the greater sequence number.

use super::{crc32c_zeroed, MIB};
use crate::error::{Error, ErrorKind, Result};
use crate::finding::Findings;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `head`: the header signature.
pub const HEADER_SIGNATURE: &[u8; 4] = b"head";
/// Offset of header 1.
pub const HEADER1_OFFSET: u64 = 0x1_0000;
/// Offset of header 2.
pub const HEADER2_OFFSET: u64 = 0x2_0000;
/// Bytes covered by the header checksum (the header structure, not its 64 KiB slot).
pub const HEADER_SIZE: usize = 4096;
/// Offset of the checksum field inside the header.
pub const HEADER_CHECKSUM_OFFSET: usize = 4;
/// The only header `Version` defined by [MS-VHDX] v1.
pub const HEADER_VERSION: u16 = 1;
/// The only `LogVersion` defined.
pub const LOG_VERSION: u16 = 0;

/// A VHDX header as laid out on disk.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Header {
    /// `head`.
    pub signature: [u8; 4],
    /// CRC-32C over the 4 KiB header with this field zeroed.
    pub checksum: U32,
    /// Higher is newer; picks the current header.
    pub sequence_number: U64,
    /// Changes on the first write of each open session.
    pub file_write_guid: [u8; 16],
    /// Changes whenever guest-visible data changes; differencing children link to it.
    pub data_write_guid: [u8; 16],
    /// Identifies the valid log entries; all zero when there is no log to replay.
    pub log_guid: [u8; 16],
    /// Must be 0.
    pub log_version: U16,
    /// Must be 1.
    pub version: U16,
    /// Log size in bytes, a multiple of 1 MiB.
    pub log_length: U32,
    /// Log offset in bytes, a multiple of 1 MiB, at least 1 MiB.
    pub log_offset: U64,
    /// Zeros.
    pub reserved: [u8; 4016],
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER_SIZE);

impl Header {
    /// The log GUID is non-zero: the log may hold metadata updates that must be replayed.
    pub fn has_log(&self) -> bool {
        self.log_guid != [0; 16]
    }
}

/// Why one header copy is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Defect {
    Signature,
    Checksum { stored: u32, computed: u32 },
}

fn check(bytes: &[u8]) -> std::result::Result<Header, Defect> {
    let bytes = bytes.get(..HEADER_SIZE).ok_or(Defect::Signature)?;
    let header = Header::read_from_bytes(bytes).map_err(|_| Defect::Signature)?;
    if &header.signature != HEADER_SIGNATURE {
        return Err(Defect::Signature);
    }
    let computed = crc32c_zeroed(bytes, HEADER_CHECKSUM_OFFSET);
    if computed != header.checksum.get() {
        return Err(Defect::Checksum {
            stored: header.checksum.get(),
            computed,
        });
    }
    Ok(header)
}

fn describe(d: Defect, offset: u64) -> (&'static str, String) {
    match d {
        Defect::Signature => ("vhdx.header.signature", format!("header at {offset:#x} does not start with `head`")),
        Defect::Checksum { stored, computed } => (
            "vhdx.header.checksum",
            format!("header at {offset:#x} has CRC-32C {stored:#010x}, but its 4 KiB hash to {computed:#010x}"),
        ),
    }
}

/// Choose the current header from the two 4 KiB copies (`h1` at 64 KiB, `h2` at 128 KiB).
///
/// One bad copy is a warning; both bad is an error. Equal sequence numbers are accepted only
/// when the two blocks are byte-identical (`Disk2vhd` writes such pairs; qemu accepts them too).
pub fn choose(h1: &[u8], h2: &[u8], findings: &mut Findings) -> Result<Header> {
    let c1 = check(h1);
    let c2 = check(h2);
    let header = match (c1, c2) {
        (Ok(a), Ok(b)) => {
            let (sa, sb) = (a.sequence_number.get(), b.sequence_number.get());
            if sa > sb {
                a
            } else if sb > sa {
                b
            } else if h1.get(..HEADER_SIZE) == h2.get(..HEADER_SIZE) {
                a
            } else {
                return Err(Error::corrupt(
                    "vhdx.header.sequence",
                    HEADER2_OFFSET,
                    format!("both headers are valid but differ and carry the same sequence number {sa}; cannot tell which is current"),
                ));
            }
        }
        (Ok(a), Err(d)) => {
            let (code, msg) = describe(d, HEADER2_OFFSET);
            findings.warning(code, Some(HEADER2_OFFSET), format!("{msg}; using header 1"));
            a
        }
        (Err(d), Ok(b)) => {
            let (code, msg) = describe(d, HEADER1_OFFSET);
            findings.warning(code, Some(HEADER1_OFFSET), format!("{msg}; using header 2"));
            b
        }
        (Err(d1), Err(d2)) => {
            let (code, m1) = describe(d1, HEADER1_OFFSET);
            let (_, m2) = describe(d2, HEADER2_OFFSET);
            return Err(Error::corrupt(
                code,
                HEADER1_OFFSET,
                format!("no valid VHDX header: {m1}; {m2}"),
            ));
        }
    };
    validate(&header, findings)?;
    Ok(header)
}

/// Field checks on the chosen header.
fn validate(h: &Header, findings: &mut Findings) -> Result<()> {
    if h.version.get() != HEADER_VERSION {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "vhdx.header.version",
            format!(
                "VHDX header version is {}, only version {HEADER_VERSION} is defined",
                h.version.get()
            ),
        ));
    }
    if h.log_version.get() != LOG_VERSION {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "vhdx.header.version",
            format!(
                "VHDX log version is {}, only version {LOG_VERSION} is defined",
                h.log_version.get()
            ),
        ));
    }
    let (off, len) = (h.log_offset.get(), u64::from(h.log_length.get()));
    if off % MIB != 0 || len % MIB != 0 || (len != 0 && off < MIB) {
        let msg = format!("log at {off:#x} length {len:#x}: both must be multiples of 1 MiB, outside the first MiB");
        if h.has_log() {
            return Err(Error::corrupt("vhdx.header.log", HEADER1_OFFSET, msg));
        }
        findings.warning("vhdx.header.log", None, msg);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // table-driven cases are tuples
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    fn header(seq: u64) -> Vec<u8> {
        let mut h = Header::new_zeroed();
        h.signature = *HEADER_SIGNATURE;
        h.sequence_number = U64::new(seq);
        h.version = U16::new(1);
        h.log_offset = U64::new(MIB);
        h.log_length = U32::new(MIB as u32);
        let mut b = h.as_bytes().to_vec();
        let c = crc32c_zeroed(&b, HEADER_CHECKSUM_OFFSET);
        b[4..8].copy_from_slice(&c.to_le_bytes());
        b
    }

    #[test]
    fn chooses_current_header() {
        let bad = {
            let mut b = header(9);
            b[100] ^= 1;
            b
        };
        let mut other_same_seq = header(5);
        other_same_seq[200] = 1;
        let c = crc32c_zeroed(&other_same_seq, HEADER_CHECKSUM_OFFSET);
        other_same_seq[4..8].copy_from_slice(&c.to_le_bytes());
        // (h1, h2, expected sequence or error code, warnings expected)
        let cases: Vec<(
            &str,
            Vec<u8>,
            Vec<u8>,
            std::result::Result<u64, &str>,
            usize,
        )> = vec![
            ("higher second wins", header(1), header(2), Ok(2), 0),
            ("higher first wins", header(7), header(3), Ok(7), 0),
            (
                "bad first falls back with a warning",
                bad.clone(),
                header(2),
                Ok(2),
                1,
            ),
            (
                "bad second falls back with a warning",
                header(1),
                bad.clone(),
                Ok(1),
                1,
            ),
            (
                "both bad is an error",
                bad.clone(),
                bad.clone(),
                Err("vhdx.header.checksum"),
                0,
            ),
            (
                "identical headers with equal sequence (Disk2VHD) are accepted",
                header(4),
                header(4),
                Ok(4),
                0,
            ),
            (
                "different headers with equal sequence are refused",
                header(5),
                other_same_seq,
                Err("vhdx.header.sequence"),
                0,
            ),
            (
                "zero block has no signature",
                vec![0; 4096],
                vec![0; 4096],
                Err("vhdx.header.signature"),
                0,
            ),
        ];
        for (name, h1, h2, want, warnings) in cases {
            let mut f = Findings::default();
            let got = choose(&h1, &h2, &mut f);
            match want {
                Ok(seq) => assert_eq!(got.unwrap().sequence_number.get(), seq, "{name}"),
                Err(code) => assert_eq!(got.unwrap_err().code(), code, "{name}"),
            }
            assert_eq!(f.0.len(), warnings, "{name}: {:?}", f.0);
        }
    }

    #[test]
    fn version_must_be_one() {
        let mut h = header(1);
        h[66] = 2;
        let c = crc32c_zeroed(&h, HEADER_CHECKSUM_OFFSET);
        h[4..8].copy_from_slice(&c.to_le_bytes());
        let e = choose(&h, &h, &mut Findings::default()).unwrap_err();
        assert_eq!(e.code(), "vhdx.header.version");
        assert_eq!(e.kind(), ErrorKind::Unsupported);
    }
}
