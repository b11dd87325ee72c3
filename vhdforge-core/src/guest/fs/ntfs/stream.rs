//! The content of one attribute (resident bytes, or runs of clusters merged from all its
//! extents), read piece by piece: nothing is held but the runs, so a file of any size is
//! streamed in constant memory.

use super::record::{Attr, Body, Run, ATTR_COMPRESSION_MASK, ATTR_ENCRYPTED, MAX_RUNS};
use super::{corrupt, NtfsFs};
use crate::error::Result;
use crate::guest::fs::volume::ReadRange;
use crate::io::usize_from;

#[derive(Debug, Clone)]
pub struct Stream {
    resident: Option<Vec<u8>>,
    runs: Vec<Run>,
    pub size: u64,
    initialized: u64,
    /// Attribute flags of the first extent (compression, encryption, sparse).
    pub flags: u16,
}

impl Stream {
    /// Join the extents of one attribute (same type and name, possibly from several
    /// records). `None` when there is no such attribute.
    pub fn from_attrs(mut parts: Vec<&Attr>) -> Result<Option<Stream>> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        if let Body::Resident(v) = &first.body {
            if parts.len() != 1 {
                return Err(corrupt(format!(
                    "attribute type {:#x} is resident but has {} instances",
                    first.ty,
                    parts.len()
                )));
            }
            return Ok(Some(Stream {
                resident: Some(v.clone()),
                runs: Vec::new(),
                size: v.len() as u64,
                initialized: v.len() as u64,
                flags: first.flags,
            }));
        }
        let vcn = |a: &Attr| match &a.body {
            Body::NonResident(n) => Some(n.lowest_vcn),
            Body::Resident(_) => None,
        };
        if parts.iter().any(|a| vcn(a).is_none()) {
            return Err(corrupt(
                "an attribute is resident in one record and not in another",
            ));
        }
        parts.sort_by_key(|a| vcn(a));
        let mut runs: Vec<Run> = Vec::new();
        let (mut size, mut initialized, mut flags) = (0, 0, 0);
        let mut next_vcn = 0u64;
        for a in &parts {
            let Body::NonResident(n) = &a.body else {
                continue;
            };
            if n.lowest_vcn != next_vcn {
                return Err(corrupt(format!(
                    "an extent of attribute type {:#x} starts at VCN {}, expected {next_vcn} (extents missing or overlapping)",
                    a.ty, n.lowest_vcn
                )));
            }
            if n.lowest_vcn == 0 {
                size = n.data_size;
                initialized = n.initialized_size;
                flags = a.flags;
                if a.flags & ATTR_COMPRESSION_MASK != 0 && n.compression_unit == 0 {
                    return Err(corrupt("a compressed attribute without a compression unit"));
                }
            }
            if runs.len() + n.runs.len() > MAX_RUNS {
                return Err(corrupt(format!(
                    "more than {MAX_RUNS} runs in one attribute"
                )));
            }
            runs.extend_from_slice(&n.runs);
            next_vcn = n.highest_vcn.wrapping_add(1);
        }
        Ok(Some(Stream {
            resident: None,
            runs,
            size,
            initialized,
            flags,
        }))
    }

    /// A file without an unnamed $DATA reads as empty.
    pub fn empty() -> Stream {
        Stream {
            resident: Some(Vec::new()),
            runs: Vec::new(),
            size: 0,
            initialized: 0,
            flags: 0,
        }
    }

    pub fn is_compressed(&self) -> bool {
        self.flags & ATTR_COMPRESSION_MASK != 0
    }

    pub fn is_encrypted(&self) -> bool {
        self.flags & ATTR_ENCRYPTED != 0
    }

    /// Bytes the clusters of the runs cover.
    pub fn mapped_bytes(&self, cluster: u64) -> u64 {
        self.runs
            .last()
            .map_or(0, |r| (r.vcn + r.len).saturating_mul(cluster))
    }

    /// Read `buf.len()` bytes at `offset`, which must lie within the size. Sparse runs and
    /// bytes past the initialized size read as zeros.
    pub fn read_at(&self, fs: &NtfsFs, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                corrupt(format!(
                    "a read of {} bytes at {offset} goes past the attribute's {} bytes",
                    buf.len(),
                    self.size
                ))
            })?;
        if let Some(v) = &self.resident {
            buf.copy_from_slice(&v[usize_from(offset)..usize_from(end)]);
            return Ok(());
        }
        if self.is_compressed() || self.is_encrypted() {
            return Err(corrupt("a compressed or encrypted attribute read as plain"));
        }
        let cluster = fs.geo.cluster;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let left = buf.len() - done;
            if pos >= self.initialized {
                buf[done..].fill(0);
                break;
            }
            let vcn = pos / cluster;
            let i = self.runs.partition_point(|r| r.vcn + r.len <= vcn);
            let run = self.runs.get(i).filter(|r| r.vcn <= vcn).ok_or_else(|| {
                corrupt(format!(
                    "no run maps byte {pos} of an attribute of {} bytes",
                    self.size
                ))
            })?;
            // VCNs come from the disk: a run far past any real file must not overflow.
            let run_end = (run.vcn + run.len).checked_mul(cluster).ok_or_else(|| {
                corrupt(format!(
                    "a run at VCN {} lies past any byte offset",
                    run.vcn
                ))
            })?;
            let n = usize_from((run_end - pos).min(self.initialized - pos).min(left as u64));
            let part = &mut buf[done..done + n];
            match run.lcn {
                None => part.fill(0),
                Some(lcn) => {
                    let at = (lcn + (vcn - run.vcn)) * cluster + pos % cluster;
                    fs.vol.read_at(part, at)?;
                }
            }
            done += n;
        }
        Ok(())
    }

    /// The whole content, for small metadata (the caller bounds `size` first).
    pub fn read_all(&self, fs: &NtfsFs, cap: u64, what: &str) -> Result<Vec<u8>> {
        if self.size > cap {
            return Err(corrupt(format!(
                "{what} is {} bytes, more than the {cap} accepted",
                self.size
            )));
        }
        let mut v = vec![0u8; usize_from(self.size)];
        self.read_at(fs, 0, &mut v)?;
        Ok(v)
    }
}
