//! VHDX ([MS-VHDX] v1; docs/formats.md §2): fixed, dynamic and differencing disks with 512- or
//! 4096-byte logical sectors.
//!
//! Opening reads only metadata: the header section, the log when it must be replayed, the
//! region table, the metadata items and the BAT (whole in one call when it fits the chain's
//! memory budget, else paged on demand). Reads then map virtual ranges through the BAT and
//! fetch each run of stored bytes with one positional read, so many threads can read one
//! image without a shared lock.
//!
//! Finding and error codes: `vhdx.signature`, `vhdx.truncated`; `vhdx.header.{signature,
//! checksum,sequence,version,log}`; `vhdx.region.{checksum,bounds,duplicate,overlap,missing,
//! unknown_required}`; `vhdx.metadata.{bounds,signature,entries,duplicate,length,missing,
//! unknown_required,block_size,sector_size,virtual_size,page83,parent_locator}`;
//! `vhdx.bat.{size,bounds,state,offset,overlap,reserved}`; `vhdx.log.{replayed,empty,
//! truncated,invalid,too_large,bounds}`; `vhdx.parent.{linkage,missing,mismatch,sector_size,
//! volume_path}`; `vhdx.sector_size_4k`.

pub mod bat;
pub mod header;
pub mod log;
pub mod metadata;
pub mod parent;
pub mod region;

use crate::error::{Error, Result};
use crate::finding::{Finding, Findings};
use crate::format::chain::read_parent;
use crate::format::OpenContext;
use crate::image::{
    check_virtual_range, push_extent, resolve_through_parent, Allocation, DiskImage, DiskType,
    Extent, Format, ImageInfo,
};
use crate::io::{read_vec, usize_from, ReadAt};
use bat::{Bat, Block, Geometry};
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

/// `vhdxfile`: the file type identifier at offset 0.
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
/// One MiB: the alignment of every region, log and block.
pub const MIB: u64 = 1 << 20;
/// The header section read at open: identifier, both headers, both region tables.
const HEADER_AREA: u64 = 0x5_0000;

/// CRC-32C (Castagnoli, the iSCSI CRC) of `bytes`.
// crc_fast returns every CRC widened to u64; a CRC-32 always fits in the low 32 bits.
#[allow(clippy::cast_possible_truncation)]
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

/// CRC-32C of `bytes` with the 4-byte checksum field at `field` counted as zero, as every
/// VHDX checksum is defined.
// crc_fast returns every CRC widened to u64; a CRC-32 always fits in the low 32 bits.
#[allow(clippy::cast_possible_truncation)]
pub fn crc32c_zeroed(bytes: &[u8], field: usize) -> u32 {
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    let field_end = (field + 4).min(bytes.len());
    let field = field.min(bytes.len());
    d.update(&bytes[..field]);
    d.update(&[0u8; 4][..field_end - field]);
    d.update(&bytes[field_end..]);
    d.finalize() as u32
}

/// The on-disk (Microsoft mixed-endian) bytes of a GUID written `d1-d2-d3-d4`.
pub const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

/// The `DataWriteGuid` (identity) of the VHDX in `src`, from the header [`VhdxImage::open`]
/// would choose (two 4 KiB reads), so parent candidates can be told apart before a full
/// open. The full open also picks the header before any log replay, so none is needed here.
pub fn identity(src: &dyn ReadAt) -> Result<Uuid> {
    let size = header::HEADER_SIZE as u64;
    let read = |at: u64| {
        read_vec(src, at, size, size).map_err(|e| {
            Error::corrupt(
                "vhdx.truncated",
                at,
                format!("cannot read the VHDX header at {at:#x}: {e}"),
            )
        })
    };
    let (h1, h2) = (read(header::HEADER1_OFFSET)?, read(header::HEADER2_OFFSET)?);
    let hdr = header::choose(&h1, &h2, &mut Findings::default())?;
    Ok(Uuid::from_bytes_le(hdr.data_write_guid))
}

/// An open VHDX.
pub struct VhdxImage {
    /// The file, with replayed log pages laid over it when the log was dirty.
    src: Arc<dyn ReadAt>,
    info: ImageInfo,
    findings: Vec<Finding>,
    bat: Bat,
    parent: Option<Box<dyn DiskImage>>,
}

impl std::fmt::Debug for VhdxImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxImage")
            .field("info", &self.info)
            .field("parent", &self.parent)
            .finish_non_exhaustive()
    }
}

/// Open a VHDX from `src` (whose file is `path`).
pub fn open(
    src: Arc<dyn ReadAt>,
    path: &Path,
    ctx: &mut OpenContext<'_>,
) -> Result<Box<dyn DiskImage>> {
    Ok(Box::new(VhdxImage::open(src, path, ctx)?))
}

impl VhdxImage {
    /// Open, replay the log in memory if needed, validate, and open the parent of a
    /// differencing disk.
    pub fn open(src: Arc<dyn ReadAt>, path: &Path, ctx: &mut OpenContext<'_>) -> Result<VhdxImage> {
        let file_size = src.size();
        let mut findings = Findings::default();
        let head = read_vec(src.as_ref(), 0, HEADER_AREA, HEADER_AREA).map_err(|e| {
            Error::corrupt(
                "vhdx.truncated",
                0,
                format!("a VHDX starts with a {HEADER_AREA:#x}-byte header section but {e}"),
            )
        })?;
        if &head[..8] != FILE_SIGNATURE {
            return Err(Error::corrupt(
                "vhdx.signature",
                0,
                "the file does not start with `vhdxfile`",
            ));
        }
        let h1 = usize_from(header::HEADER1_OFFSET);
        let h2 = usize_from(header::HEADER2_OFFSET);
        let hdr = header::choose(
            &head[h1..h1 + header::HEADER_SIZE],
            &head[h2..h2 + header::HEADER_SIZE],
            &mut findings,
        )?;
        let log_span = (hdr.log_offset.get(), u64::from(hdr.log_length.get()));

        // Replay before trusting anything the log may cover (region tables, metadata, BAT).
        let (data, replayed) = replay_log(src, &hdr, log_span, &mut findings)?;
        // The log may have rewritten the region tables: re-read them through the overlay.
        let tables = if replayed {
            read_vec(data.as_ref(), 0, HEADER_AREA, HEADER_AREA)
                .map_err(|e| Error::corrupt("vhdx.truncated", 0, e.to_string()))?
        } else {
            head
        };
        let (t1, t2) = (
            usize_from(region::REGION_TABLE1_OFFSET),
            usize_from(region::REGION_TABLE2_OFFSET),
        );
        let regions = region::parse(
            &tables[t1..t1 + region::REGION_TABLE_SIZE],
            &tables[t2..t2 + region::REGION_TABLE_SIZE],
            log_span,
            &mut findings,
        )?;
        drop(tables);
        let md = metadata::parse(data.as_ref(), regions.metadata, &mut findings)?;
        let geometry = Geometry::new(
            md.block_size,
            md.logical_sector_size,
            md.virtual_size,
            md.has_parent,
        );
        // Payload may not overlap any structure the headers and region table place.
        let forbidden = [
            ("the header section", 0, MIB),
            ("the BAT", regions.bat.0, regions.bat.1),
            (
                "the metadata region",
                regions.metadata.0,
                regions.metadata.1,
            ),
            ("the log", log_span.0, log_span.1),
        ];
        let bat = Bat::load(
            &data,
            regions.bat,
            geometry,
            md.has_parent,
            data.size(),
            &forbidden,
            &mut ctx.tables,
            &mut findings,
        )?;
        if md.logical_sector_size == 4096 {
            findings.warning(
                "vhdx.sector_size_4k",
                None,
                "the disk has 4096-byte logical sectors; it cannot become a 512-byte-sector VHD without changing what the guest sees (partition table LBAs, file system sector size)",
            );
        }

        let parent = open_parent(&md, path, ctx, &mut findings)?;
        let info = image_info(path, file_size, &md, &hdr, parent.as_ref());
        Ok(VhdxImage {
            src: data,
            info,
            findings: findings.0,
            bat,
            parent: parent.map(|p| p.image),
        })
    }

    /// This layer's own allocation of `[start, start + length)`: `Unallocated` where the
    /// parent (or nothing) supplies the bytes.
    fn own_extents(&self, start: u64, length: u64, out: &mut Vec<Extent>) -> Result<()> {
        let g = &self.bat.geometry;
        let end = start + length;
        let mut pos = start;
        while pos < end {
            let i = pos / g.block_size;
            let in_block = pos % g.block_size;
            let n = (g.block_size - in_block).min(end - pos);
            let alloc = |a| Extent {
                start: pos,
                length: n,
                allocation: a,
            };
            match self.bat.block(i)? {
                Block::NotPresent => push_extent(out, alloc(Allocation::Unallocated)),
                Block::Zero => push_extent(out, alloc(Allocation::Zero)),
                Block::Present(off) => push_extent(out, alloc(Allocation::Data { layer: 0, file_offset: off + in_block })),
                Block::Partial { bitmap, data } => self.partial_extents(bitmap, data, pos, in_block, n, out)?,
                Block::Invalid => {
                    return Err(Error::corrupt(
                        "vhdx.bat.state",
                        self.bat.offset + g.payload_index(i) * 8,
                        format!("payload block {i} has an invalid BAT entry (see the findings); its data cannot be read"),
                    ))
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// Extents of `n` bytes at `pos` (`in_block` into a `PARTIALLY_PRESENT` block): sectors
    /// whose bitmap bit is 1 (LSB-first) are stored here, the rest come from the parent.
    fn partial_extents(
        &self,
        bitmap: u64,
        data: u64,
        pos: u64,
        in_block: u64,
        n: u64,
        out: &mut Vec<Extent>,
    ) -> Result<()> {
        let ss = self.bat.geometry.sector_size;
        let first = in_block / ss;
        let last = (in_block + n - 1) / ss;
        let mut bits = vec![0u8; usize_from(last / 8 - first / 8 + 1)];
        self.src
            .read_exact_at(&mut bits, bitmap + first / 8)
            .map_err(|e| {
                Error::io(
                    format!("cannot read the sector bitmap of {}", self.src.name()),
                    e,
                )
                .at(bitmap + first / 8)
            })?;
        let block_start = pos - in_block;
        for s in first..=last {
            let k = s - (first / 8) * 8;
            let present = bits[usize_from(k / 8)] >> (k % 8) & 1 == 1;
            let s_start = (s * ss).max(in_block);
            let s_end = ((s + 1) * ss).min(in_block + n);
            let allocation = if present {
                Allocation::Data {
                    layer: 0,
                    file_offset: data + s_start,
                }
            } else {
                Allocation::Unallocated
            };
            push_extent(
                out,
                Extent {
                    start: block_start + s_start,
                    length: s_end - s_start,
                    allocation,
                },
            );
        }
        Ok(())
    }
}

/// Replay the log of `src` in memory when the header names one. Returns what to read the rest
/// of the image through (the overlay, or `src` itself) and whether a replay happened.
fn replay_log(
    src: Arc<dyn ReadAt>,
    hdr: &header::Header,
    log_span: (u64, u64),
    findings: &mut Findings,
) -> Result<(Arc<dyn ReadAt>, bool)> {
    if !hdr.has_log() {
        return Ok((src, false));
    }
    let Some(r) = log::replay(src.as_ref(), log_span, hdr.log_guid)? else {
        findings.info(
            "vhdx.log.empty",
            Some(log_span.0),
            "the header names a log but it holds no valid entry sequence; nothing to replay",
        );
        return Ok((src, false));
    };
    findings.info(
        "vhdx.log.replayed",
        Some(log_span.0),
        format!(
            "dirty log replayed in memory ({} entries up to sequence {}); the file was not modified",
            r.entries, r.head_sequence
        ),
    );
    Ok((Arc::new(log::Overlay::new(src, r)), true))
}

/// What `open` reports about the image: its type from the metadata flags, its sizes, and its
/// identity and its parent's.
fn image_info(
    path: &Path,
    file_size: u64,
    md: &metadata::Metadata,
    hdr: &header::Header,
    parent: Option<&parent::Parent>,
) -> ImageInfo {
    let disk_type = if md.has_parent {
        DiskType::Differencing
    } else if md.leave_block_allocated {
        DiskType::Fixed
    } else {
        DiskType::Dynamic
    };
    ImageInfo {
        path: path.to_path_buf(),
        format: Format::Vhdx,
        disk_type,
        virtual_size: md.virtual_size,
        logical_sector_size: md.logical_sector_size,
        physical_sector_size: md.physical_sector_size,
        block_size: Some(u64::from(md.block_size)),
        file_size,
        identifier: Some(Uuid::from_bytes_le(hdr.data_write_guid)),
        parent: parent.map(|p| p.path.clone()),
        parent_identifier: parent.map(|p| p.linkage),
        vhd_footer_size: None,
        creator: None,
    }
}

/// The parent of a differencing disk, its findings copied into `findings` prefixed with its
/// path; `None` for a disk without a parent.
fn open_parent(
    md: &metadata::Metadata,
    path: &Path,
    ctx: &mut OpenContext<'_>,
    findings: &mut Findings,
) -> Result<Option<parent::Parent>> {
    let (Some(loc), true) = (&md.parent_locator, md.has_parent) else {
        return Ok(None);
    };
    let p = parent::open(loc, path, md.logical_sector_size, ctx, findings)?;
    let prefix = p.path.display().to_string();
    for f in p.image.findings() {
        findings.0.push(Finding {
            message: format!("{prefix}: {}", f.message),
            ..f.clone()
        });
    }
    Ok(Some(p))
}

impl DiskImage for VhdxImage {
    fn info(&self) -> &ImageInfo {
        &self.info
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_virtual_range(self.info.virtual_size, offset, buf.len() as u64)?;
        let mut map = Vec::new();
        self.own_extents(offset, buf.len() as u64, &mut map)?;
        for e in map {
            let dst = &mut buf[usize_from(e.start - offset)..usize_from(e.end() - offset)];
            match (e.allocation, &self.parent) {
                // Contiguous blocks were merged by push_extent: one pread per stored run.
                (Allocation::Data { file_offset, .. }, _) => {
                    self.src.read_exact_at(dst, file_offset).map_err(|err| {
                        Error::io(
                            format!(
                                "cannot read {} at file offset {file_offset:#x}",
                                self.src.name()
                            ),
                            err,
                        )
                        .at(file_offset)
                    })?;
                }
                (Allocation::Unallocated, Some(p)) => read_parent(p.as_ref(), dst, e.start)?,
                _ => dst.fill(0),
            }
        }
        Ok(())
    }

    fn extents(&self, start: u64, length: u64, out: &mut Vec<Extent>) -> Result<()> {
        check_virtual_range(self.info.virtual_size, start, length)?;
        let mut own = Vec::new();
        self.own_extents(start, length, &mut own)?;
        resolve_through_parent(&own, self.parent.as_deref(), out)
    }

    fn findings(&self) -> &[Finding] {
        &self.findings
    }

    fn own_file(&self) -> Option<&std::fs::File> {
        self.src.as_file()
    }

    fn parent(&self) -> Option<&dyn DiskImage> {
        self.parent.as_deref()
    }
}

#[cfg(test)]
mod tests;
