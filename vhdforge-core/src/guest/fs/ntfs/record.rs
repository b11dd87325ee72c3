//! Multi-sector records (update-sequence fixups), FILE records, their attributes and the
//! runlists of non-resident attributes (`docs/guest-filesystems.md` §6.3–§6.6). Everything
//! here works on one record already in memory, so every offset is checked against it.

use super::corrupt;
use crate::error::Result;

/// Attribute types read.
pub const AT_STANDARD_INFORMATION: u32 = 0x10;
pub const AT_ATTRIBUTE_LIST: u32 = 0x20;
/// `$VOLUME_NAME`: the volume label, UTF-16LE, resident, in `$Volume` (record 3).
pub const AT_VOLUME_NAME: u32 = 0x60;
pub const AT_DATA: u32 = 0x80;
pub const AT_INDEX_ROOT: u32 = 0x90;
pub const AT_INDEX_ALLOCATION: u32 = 0xA0;
pub const AT_REPARSE_POINT: u32 = 0xC0;
const AT_END: u32 = 0xFFFF_FFFF;

/// Attribute flags.
pub const ATTR_COMPRESSION_MASK: u16 = 0x00FF;
pub const ATTR_ENCRYPTED: u16 = 0x4000;

/// Runs one attribute may have: a badly fragmented multi-GiB file has tens of thousands;
/// 24 bytes each, so the cap keeps a hostile runlist under 7 MiB.
pub const MAX_RUNS: usize = 1 << 18;

pub fn u16_at(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2)
        .map_or(0, |x| u16::from_le_bytes([x[0], x[1]]))
}
pub fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map_or(0, |x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
}
pub fn u64_at(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8)
        .and_then(|x| x.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Check and undo the update-sequence fixups of a record with magic `magic` (`FILE` or
/// `INDX`) in place. The stride is always 512 bytes, whatever the sector size.
pub fn fixup(buf: &mut [u8], magic: [u8; 4], what: &dyn Fn() -> String) -> Result<()> {
    if buf.get(..4) != Some(magic.as_slice()) {
        return Err(corrupt(format!(
            "{} starts {:?}, expected {:?}{}",
            what(),
            String::from_utf8_lossy(buf.get(..4).unwrap_or_default()),
            String::from_utf8_lossy(&magic),
            if buf.get(..4) == Some(b"BAAD".as_slice()) {
                " (marked bad by chkdsk after a torn write)"
            } else {
                ""
            }
        )));
    }
    let ofs = usize::from(u16_at(buf, 4));
    let count = usize::from(u16_at(buf, 6));
    if count != 1 + buf.len() / 512 || ofs % 2 != 0 || ofs + 2 * count > 510 || ofs < 8 {
        return Err(corrupt(format!(
            "{} has an update sequence of {count} entries at {ofs}; a {}-byte record needs {} entries inside its first sector",
            what(),
            buf.len(),
            1 + buf.len() / 512
        )));
    }
    let usn = [buf[ofs], buf[ofs + 1]];
    for i in 1..count {
        let end = 512 * i;
        if buf[end - 2..end] != usn {
            return Err(corrupt(format!(
                "{} has a torn write: sector {} does not end with the update sequence number",
                what(),
                i - 1
            )));
        }
        let saved = [buf[ofs + 2 * i], buf[ofs + 2 * i + 1]];
        buf[end - 2..end].copy_from_slice(&saved);
    }
    Ok(())
}

/// One run of clusters: VCNs `[vcn, vcn + len)` live at LCN `lcn`, or are sparse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub vcn: u64,
    pub len: u64,
    pub lcn: Option<u64>,
}

/// An attribute as found in one FILE record.
#[derive(Debug, Clone)]
pub struct Attr {
    pub ty: u32,
    pub name: Vec<u16>,
    pub flags: u16,
    pub body: Body,
}

#[derive(Debug, Clone)]
pub enum Body {
    Resident(Vec<u8>),
    NonResident(NonResident),
}

#[derive(Debug, Clone)]
pub struct NonResident {
    pub lowest_vcn: u64,
    pub highest_vcn: u64,
    pub runs: Vec<Run>,
    pub compression_unit: u8,
    /// Valid only in the extent whose lowest VCN is 0.
    pub data_size: u64,
    pub initialized_size: u64,
}

/// A parsed FILE record.
#[derive(Debug, Clone)]
pub struct Record {
    pub sequence: u16,
    pub flags: u16,
    pub base: u64,
    pub attrs: Vec<Attr>,
}

pub const REC_IN_USE: u16 = 0x1;
pub const REC_DIRECTORY: u16 = 0x2;

/// Parse a fixed-up FILE record `buf` of record number `number`.
pub fn parse_record(buf: &[u8], number: u64, total_clusters: u64) -> Result<Record> {
    let what = || format!("FILE record {number}");
    let used = usize::try_from(u32_at(buf, 24)).unwrap_or(usize::MAX);
    if used > buf.len() || used < 48 {
        return Err(corrupt(format!(
            "{} says {used} bytes are in use in a {}-byte record",
            what(),
            buf.len()
        )));
    }
    let mut at = usize::from(u16_at(buf, 20));
    let mut attrs = Vec::new();
    loop {
        if at + 4 > used {
            return Err(corrupt(format!(
                "{}'s attributes run past its {used} used bytes without an end marker",
                what()
            )));
        }
        let ty = u32_at(buf, at);
        if ty == AT_END {
            break;
        }
        let len = usize::try_from(u32_at(buf, at + 4)).unwrap_or(usize::MAX);
        if len < 24 || len % 8 != 0 || at + len > used {
            return Err(corrupt(format!(
                "{} has an attribute (type {ty:#x}) of {len} bytes at offset {at}, which does not fit its {used} used bytes",
                what()
            )));
        }
        attrs.push(parse_attr(&buf[at..at + len], total_clusters).map_err(|e| {
            corrupt(format!(
                "{}, attribute type {ty:#x} at offset {at}: {}",
                what(),
                e.message()
            ))
        })?);
        at += len;
    }
    Ok(Record {
        sequence: u16_at(buf, 16),
        flags: u16_at(buf, 22),
        base: u64_at(buf, 32),
        attrs,
    })
}

fn parse_attr(a: &[u8], total_clusters: u64) -> Result<Attr> {
    let ty = u32_at(a, 0);
    let name_len = usize::from(a[9]);
    let name_ofs = usize::from(u16_at(a, 10));
    let name_bytes = a
        .get(name_ofs..name_ofs + 2 * name_len)
        .ok_or_else(|| corrupt("its name lies outside it"))?;
    let name = name_bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let flags = u16_at(a, 12);
    let body = if a[8] == 0 {
        let vlen = usize::try_from(u32_at(a, 16)).unwrap_or(usize::MAX);
        let vofs = usize::from(u16_at(a, 20));
        let v = vofs
            .checked_add(vlen)
            .and_then(|end| a.get(vofs..end))
            .ok_or_else(|| corrupt(format!("its {vlen}-byte value at {vofs} lies outside it")))?;
        Body::Resident(v.to_vec())
    } else {
        if a.len() < 64 {
            return Err(corrupt("a non-resident header shorter than 64 bytes"));
        }
        let lowest_vcn = u64_at(a, 16);
        let highest_vcn = u64_at(a, 24);
        let runs_ofs = usize::from(u16_at(a, 32));
        let runs = decode_runs(
            a.get(runs_ofs..)
                .ok_or_else(|| corrupt("its runlist lies outside it"))?,
            lowest_vcn,
            total_clusters,
        )?;
        let end = runs.last().map_or(lowest_vcn, |r| r.vcn + r.len);
        // An empty attribute has highest VCN -1 (end 0); otherwise the runs end after it.
        if end != highest_vcn.wrapping_add(1) && !(runs.is_empty() && highest_vcn == u64::MAX) {
            return Err(corrupt(format!(
                "its runs end at VCN {end}, but its highest VCN is {highest_vcn}"
            )));
        }
        let data_size = u64_at(a, 48);
        let initialized_size = u64_at(a, 56);
        if initialized_size > data_size && lowest_vcn == 0 {
            return Err(corrupt(format!(
                "{initialized_size} bytes initialized of {data_size}"
            )));
        }
        Body::NonResident(NonResident {
            lowest_vcn,
            highest_vcn,
            runs,
            compression_unit: a[34],
            data_size,
            initialized_size,
        })
    };
    Ok(Attr {
        ty,
        name,
        flags,
        body,
    })
}

/// Little-endian integer of `b.len()` (≤ 8) bytes with its top byte sign-extended.
fn signed(b: &[u8]) -> i64 {
    let mut v: i64 = if b.last().is_some_and(|&x| x & 0x80 != 0) {
        -1
    } else {
        0
    };
    for &x in b.iter().rev() {
        v = (v << 8) | i64::from(x);
    }
    v
}

/// Decode a runlist starting at `lowest_vcn`; each LCN must lie inside the volume.
pub fn decode_runs(b: &[u8], lowest_vcn: u64, total_clusters: u64) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    let mut at = 0usize;
    let mut vcn = lowest_vcn;
    let mut lcn: i64 = 0;
    loop {
        let h = *b
            .get(at)
            .ok_or_else(|| corrupt("the runlist has no end marker"))?;
        if h == 0 {
            break;
        }
        let (nl, nd) = (usize::from(h & 0x0F), usize::from(h >> 4));
        if nl == 0 || nl > 8 || nd > 8 {
            return Err(corrupt(format!("run header byte {h:#04x} is not valid")));
        }
        let len_b = b
            .get(at + 1..at + 1 + nl)
            .ok_or_else(|| corrupt("a run is cut off"))?;
        let len = u64::try_from(signed(len_b))
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| corrupt("a run has a length of zero or less"))?;
        let delta_b = b
            .get(at + 1 + nl..at + 1 + nl + nd)
            .ok_or_else(|| corrupt("a run is cut off"))?;
        let target = if nd == 0 {
            None
        } else {
            lcn = lcn
                .checked_add(signed(delta_b))
                .ok_or_else(|| corrupt("a run's cluster number overflows"))?;
            let l = u64::try_from(lcn)
                .ok()
                .filter(|&l| l.checked_add(len).is_some_and(|e| e <= total_clusters))
                .ok_or_else(|| {
                    corrupt(format!(
                        "a run of {len} clusters at LCN {lcn} lies outside the volume's {total_clusters} clusters"
                    ))
                })?;
            Some(l)
        };
        if runs.len() >= MAX_RUNS {
            return Err(corrupt(format!("more than {MAX_RUNS} runs")));
        }
        runs.push(Run {
            vcn,
            len,
            lcn: target,
        });
        vcn = vcn
            .checked_add(len)
            .filter(|&v| v < (1 << 62))
            .ok_or_else(|| corrupt("the runs' VCNs overflow"))?;
        at += 1 + nl + nd;
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_with_negative_deltas_and_sparse() {
        // 0x21: 1-byte length, 2-byte delta. 16 clusters at 0x1000; sparse 8; 4 at 0x1000-0x10.
        let b = [0x21, 16, 0x00, 0x10, 0x01, 8, 0x11, 4, 0xF0, 0];
        let r = decode_runs(&b, 0, 1 << 20).unwrap();
        assert_eq!(
            r,
            vec![
                Run {
                    vcn: 0,
                    len: 16,
                    lcn: Some(0x1000)
                },
                Run {
                    vcn: 16,
                    len: 8,
                    lcn: None
                },
                Run {
                    vcn: 24,
                    len: 4,
                    lcn: Some(0x0FF0)
                },
            ]
        );
        assert!(decode_runs(&b, 0, 0x1000).is_err(), "outside the volume");
        assert!(decode_runs(&[0x11, 1], 0, 100).is_err(), "cut off");
        assert!(decode_runs(&[0x01, 0, 0], 0, 100).is_err(), "zero length");
    }

    #[test]
    fn fixups_are_checked_and_undone() {
        let mut r = vec![0u8; 1024];
        r[..4].copy_from_slice(b"FILE");
        r[4] = 0x30;
        r[6] = 3;
        r[0x30..0x32].copy_from_slice(&[7, 0]);
        r[0x32..0x34].copy_from_slice(&[0xAA, 0xBB]);
        r[0x34..0x36].copy_from_slice(&[0xCC, 0xDD]);
        r[510..512].copy_from_slice(&[7, 0]);
        r[1022..1024].copy_from_slice(&[7, 0]);
        let mut torn = r.clone();
        fixup(&mut r, *b"FILE", &|| "t".into()).unwrap();
        assert_eq!(
            (&r[510..512], &r[1022..1024]),
            (&[0xAA, 0xBB][..], &[0xCC, 0xDD][..])
        );
        torn[1022] = 8;
        assert!(fixup(&mut torn, *b"FILE", &|| "t".into()).is_err());
    }
}
