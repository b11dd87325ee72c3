//! VHD: fixed, dynamic and differencing disks (VHD spec v1.0; formats.md §1).
//!
//! One file per on-disk structure: [`footer`] (hard disk footer, checksum, CHS),
//! [`header`] (dynamic disk header, parent locator entries), [`bat`] (block allocation
//! table, sector bitmaps) and [`parent`] (finding a differencing disk's parent). This file
//! puts them together into [`VhdImage`], the [`DiskImage`] every VHD opens as.
//!
//! Opening is lenient: anything that does not stop reading altogether is recorded as a
//! finding, and [`crate::open`] turns error findings into an `Err`. What stops reading (no
//! footer anywhere, an unknown disk type, no dynamic header, an unreadable BAT) is an `Err`
//! right away.
//!
//! Finding and error codes: `vhd.footer.{cookie,checksum,disk_type,features,version,
//! saved_state,size_unaligned,chs_size,data_offset,size_mismatch,size_over_2040gib,
//! using_copy,copy_mismatch}`; `vhd.truncated`; `vhd.header.{offset,cookie,checksum,version,
//! block_size}`; `vhd.bat.{too_large,out_of_bounds,overlap,too_small,entry_out_of_bounds,
//! entry_overlap,entry_shared,entry_invalid}`; `vhd.parent.{locator,missing,id_mismatch}`;
//! and, from [`open_parent`], `parent.{loop,not_followed,chain_too_deep,missing}`.

pub mod bat;
pub mod footer;
pub mod header;
pub mod parent;

use crate::error::{Error, ErrorKind, Result};
use crate::finding::{Finding, Findings};
use crate::format::{open_candidate, open_parent, probe_parent, raw::map_file_region, OpenContext};
use crate::image::{
    check_virtual_range, push_extent, resolve_through_parent, Allocation, DiskImage, DiskType,
    Extent, Format, ImageInfo,
};
use crate::io::ReadAt;
use bat::{Bat, BlockLocation, SECTOR};
use footer::{
    find_trailing_footer, validate_footer, FooterAt, HardDiskFooter, DISK_TYPE_DIFFERENCING,
    DISK_TYPE_DYNAMIC, DISK_TYPE_FIXED, FIXED_DATA_OFFSET, FOOTER_SIZE, MAX_SPARSE_SIZE,
};
use header::{read_header, HEADER_SIZE};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// A VHD opened for reading.
#[derive(Debug)]
pub struct VhdImage {
    src: Arc<dyn ReadAt>,
    info: ImageInfo,
    findings: Vec<Finding>,
    layout: Layout,
}

/// How virtual bytes map to the file.
#[derive(Debug)]
enum Layout {
    /// Virtual byte `x` is file byte `x`.
    Fixed,
    /// Blocks through the BAT; `parent` is set for differencing disks whose parent opened.
    /// Without it (`parent_problem` says why, and an error finding was recorded) reads of
    /// parent-backed ranges fail and the map leaves them `Unallocated`.
    Sparse {
        bat: Bat,
        differencing: bool,
        parent: Option<Box<dyn DiskImage>>,
        parent_problem: Option<String>,
    },
}

/// Open a VHD of any type from `src` (whose file is `path`).
pub fn open(
    src: Arc<dyn ReadAt>,
    path: &Path,
    ctx: &mut OpenContext<'_>,
) -> Result<Box<dyn DiskImage>> {
    Ok(Box::new(VhdImage::open(src, path, ctx)?))
}

/// The footer copy at offset 0, when the file is long enough to have one.
fn read_footer_copy(src: &dyn ReadAt) -> Result<Option<HardDiskFooter>> {
    if src.size() < 2 * FOOTER_SIZE as u64 {
        return Ok(None);
    }
    let mut bytes = [0u8; FOOTER_SIZE];
    src.read_exact_at(&mut bytes, 0)
        .map_err(|e| Error::io("cannot read the footer copy at offset 0", e).at(0))?;
    Ok(Some(HardDiskFooter::from_bytes(&bytes)))
}

/// The unique id of the VHD in `src`, from the footer [`VhdImage::open`] would read with
/// (two 512-byte reads), so parent candidates can be told apart before a full open.
pub fn identity(src: &dyn ReadAt) -> Result<Uuid> {
    let (footer, _) = choose_footer(src, &mut Findings::default())?;
    Ok(Uuid::from_bytes(footer.unique_id))
}

fn is_sparse(f: &HardDiskFooter) -> bool {
    matches!(
        f.disk_type.get(),
        DISK_TYPE_DYNAMIC | DISK_TYPE_DIFFERENCING
    )
}

/// Pick the footer to read with: the trailing one normally; the copy at offset 0 of a
/// dynamic/differencing disk when the trailing one is missing or fails its checksum.
/// Returns the footer to read with and the trailing footer's place (if there is one).
fn choose_footer(
    src: &dyn ReadAt,
    findings: &mut Findings,
) -> Result<(HardDiskFooter, Option<FooterAt>)> {
    let len = src.size();
    let trailing =
        find_trailing_footer(src).map_err(|e| Error::io("cannot read the VHD footer", e))?;
    let copy = read_footer_copy(src)?;
    let usable_copy = copy.filter(|c| c.cookie_ok() && c.checksum_ok() && is_sparse(c));
    match (trailing, usable_copy) {
        (Some(t), copy) => {
            validate_footer(&t.footer, t.offset, findings);
            if !t.footer.checksum_ok() {
                // Only a copy of the same disk type stands in: a fixed disk has no copy, and
                // its data may well begin with some other VHD's footer.
                if let Some(c) = copy.filter(|c| c.disk_type == t.footer.disk_type) {
                    findings.info(
                        "vhd.footer.using_copy",
                        Some(0),
                        "reading with the intact footer copy at offset 0 instead of the damaged trailing footer",
                    );
                    return Ok((c, Some(t)));
                }
            }
            Ok((t.footer, Some(t)))
        }
        (None, Some(c)) => {
            findings.error(
                "vhd.footer.cookie",
                Some(len.saturating_sub(FOOTER_SIZE as u64)),
                "no \"conectix\" footer at the end of the file (it is damaged or the file was truncated); reading with the intact copy at offset 0, but Hyper-V and Azure need the trailing footer",
            );
            validate_footer(&c, 0, findings);
            Ok((c, None))
        }
        (None, None) => Err(Error::corrupt(
            "vhd.footer.cookie",
            len.saturating_sub(FOOTER_SIZE as u64),
            format!(
                "no \"conectix\" cookie at {} or {} bytes before the end of the file, and no intact dynamic-disk footer copy at offset 0; this is not a readable VHD",
                FOOTER_SIZE,
                FOOTER_SIZE - 1
            ),
        )),
    }
}

impl VhdImage {
    /// Open a VHD of any type, resolving parents of differencing disks through `ctx`.
    pub fn open(src: Arc<dyn ReadAt>, path: &Path, ctx: &mut OpenContext<'_>) -> Result<VhdImage> {
        let len = src.size();
        let mut findings = Findings::default();
        let (footer, trailing) = choose_footer(src.as_ref(), &mut findings)?;
        let footer_at = trailing.map_or(len.saturating_sub(FOOTER_SIZE as u64), |t| t.offset);
        let disk_type = match footer.disk_type.get() {
            DISK_TYPE_FIXED => DiskType::Fixed,
            DISK_TYPE_DYNAMIC => DiskType::Dynamic,
            DISK_TYPE_DIFFERENCING => DiskType::Differencing,
            other => {
                return Err(Error::corrupt(
                    "vhd.footer.disk_type",
                    footer_at + 60,
                    format!("disk type is {other}; only 2 (fixed), 3 (dynamic) and 4 (differencing) are defined (0, 1, 5 and 6 are reserved)"),
                ))
            }
        };
        let current_size = footer.current_size.get();
        let mut info = ImageInfo {
            path: path.to_path_buf(),
            format: Format::Vhd,
            disk_type,
            virtual_size: current_size,
            logical_sector_size: 512,
            physical_sector_size: 512,
            block_size: None,
            file_size: len,
            identifier: Some(Uuid::from_bytes(footer.unique_id)),
            parent: None,
            parent_identifier: None,
            vhd_footer_size: trailing.map(|t| t.size),
            creator: Some(footer.creator_printable()),
        };
        let layout = if disk_type == DiskType::Fixed {
            // Fixed disks only ever reach here with a trailing footer (the offset-0 copy is
            // only used for sparse disks); its start is the end of the data.
            let data_len = footer_at;
            let data_offset = footer.data_offset.get();
            if data_offset != FIXED_DATA_OFFSET && data_offset != u64::from(u32::MAX) {
                findings.warning(
                    "vhd.footer.data_offset",
                    Some(footer_at + 16),
                    format!("a fixed disk's data offset should be all ones; found {data_offset:#x} (ignored)"),
                );
            }
            if current_size > data_len {
                findings.error(
                    "vhd.truncated",
                    Some(footer_at),
                    format!(
                        "the footer says the disk is {current_size} bytes but the file holds only {data_len} bytes of data before the footer; the file was truncated. Only the first {data_len} bytes are readable"
                    ),
                );
                info.virtual_size = data_len;
            } else if current_size < data_len {
                findings.warning(
                    "vhd.footer.size_mismatch",
                    Some(footer_at + 48),
                    format!("the file holds {data_len} bytes of data before the footer but the current size is {current_size}; the extra {} bytes are ignored", data_len - current_size),
                );
            }
            Layout::Fixed
        } else {
            Self::open_sparse(
                &src,
                path,
                ctx,
                &footer,
                trailing,
                footer_at,
                &mut info,
                &mut findings,
            )?
        };
        Ok(VhdImage {
            src,
            info,
            findings: findings.0,
            layout,
        })
    }

    /// The dynamic/differencing part of [`VhdImage::open`].
    #[allow(clippy::too_many_arguments)]
    fn open_sparse(
        src: &Arc<dyn ReadAt>,
        path: &Path,
        ctx: &mut OpenContext<'_>,
        footer: &HardDiskFooter,
        trailing: Option<FooterAt>,
        footer_at: u64,
        info: &mut ImageInfo,
        findings: &mut Findings,
    ) -> Result<Layout> {
        let len = src.size();
        let data_end = trailing.map_or(len, |t| t.offset);
        if let (Some(t), Some(copy)) = (trailing, read_footer_copy(src.as_ref())?) {
            if !copy.cookie_ok() || !copy.checksum_ok() {
                findings.warning(
                    "vhd.footer.copy_mismatch",
                    Some(0),
                    "the footer copy at offset 0 is damaged (bad cookie or checksum); the trailing footer is intact and used",
                );
            } else if copy.to_bytes()[..FOOTER_SIZE - 1] != t.footer.to_bytes()[..FOOTER_SIZE - 1] {
                findings.warning(
                    "vhd.footer.copy_mismatch",
                    Some(0),
                    "the footer copy at offset 0 differs from the trailing footer; the trailing footer is used",
                );
            }
        }
        let current_size = footer.current_size.get();
        if current_size > MAX_SPARSE_SIZE {
            findings.warning(
                "vhd.footer.size_over_2040gib",
                Some(footer_at + 48),
                format!("the disk is {current_size} bytes; dynamic and differencing VHDs above 2040 GiB are rejected by Hyper-V, Virtual PC and qemu"),
            );
        }
        let hdr = read_header(src.as_ref(), footer.data_offset.get(), data_end, findings)?;
        let reserved = [
            0..FOOTER_SIZE as u64,
            hdr.offset..hdr.offset + HEADER_SIZE as u64,
        ];
        let bat = Bat::load(
            src,
            &hdr,
            current_size,
            data_end,
            &reserved,
            &mut ctx.tables,
            findings,
        )?;
        info.virtual_size = bat.covered_size;
        info.block_size = Some(bat.block_size);
        let differencing = info.disk_type == DiskType::Differencing;
        let (mut parent, mut parent_problem) = (None, None);
        if differencing {
            let parent_id = Uuid::from_bytes(hdr.header.parent_unique_id);
            info.parent_identifier = Some(parent_id);
            let candidates = parent::candidates(
                src.as_ref(),
                &hdr.header,
                hdr.offset,
                path,
                data_end,
                findings,
            );
            match open_parent_of(&candidates, parent_id, ctx) {
                Ok((p, used)) => {
                    for f in p.findings() {
                        findings.0.push(Finding {
                            message: format!("parent {}: {}", used.display(), f.message),
                            ..f.clone()
                        });
                    }
                    info.parent = Some(used);
                    parent = Some(p);
                }
                Err(e) => {
                    parent_problem = Some(e.message().to_string());
                    findings.0.push(Finding::new(
                        crate::Severity::Error,
                        e.code(),
                        Some(hdr.offset + 40),
                        e.message(),
                    ));
                }
            }
        }
        Ok(Layout::Sparse {
            bat,
            differencing,
            parent,
            parent_problem,
        })
    }

    fn io_err(&self, what: &str, offset: u64, e: std::io::Error) -> Error {
        Error::io(format!("cannot read {what} of {}", self.src.name()), e).at(offset)
    }

    /// Fill `buf` with what lies beneath virtual offset `voff` in this layer: the parent's
    /// bytes for differencing disks (zeros past a smaller parent's end), zeros otherwise.
    fn read_beneath(&self, buf: &mut [u8], voff: u64) -> Result<()> {
        let Layout::Sparse {
            differencing: true,
            parent,
            parent_problem,
            ..
        } = &self.layout
        else {
            buf.fill(0);
            return Ok(());
        };
        let Some(p) = parent else {
            return Err(Error::new(
                ErrorKind::Parent,
                "vhd.parent.missing",
                format!(
                    "virtual offset {voff:#x} lives in the parent disk, which is not open: {}",
                    parent_problem.as_deref().unwrap_or("unknown")
                ),
            ));
        };
        let psize = p.info().virtual_size;
        let inside = usize::try_from(psize.saturating_sub(voff))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (from_parent, past_end) = buf.split_at_mut(inside);
        if !from_parent.is_empty() {
            p.read_at(from_parent, voff)?;
        }
        past_end.fill(0);
        Ok(())
    }

    fn invalid_block(bat: &Bat, block: u64) -> Error {
        Error::corrupt(
            "vhd.bat.entry_invalid",
            bat.table_offset + block * bat::ENTRY_SIZE,
            format!("block {block} has an invalid BAT entry (see the findings); its data cannot be read"),
        )
    }

    /// Read from one block: `buf` covers block-relative bytes `[in_block, in_block + len)`.
    fn read_block(&self, bat: &Bat, block: u64, in_block: u64, buf: &mut [u8]) -> Result<()> {
        let voff = block * bat.block_size + in_block;
        let location = bat
            .location(block)
            .map_err(|e| self.io_err("the BAT", bat.table_offset, e))?;
        let bitmap_offset = match location {
            BlockLocation::Unallocated => return self.read_beneath(buf, voff),
            BlockLocation::Invalid => return Err(Self::invalid_block(bat, block)),
            BlockLocation::At { bitmap_offset } => bitmap_offset,
        };
        let end = in_block + buf.len() as u64;
        let bitmap = bat
            .read_bitmap(
                self.src.as_ref(),
                bitmap_offset,
                in_block / SECTOR,
                end.div_ceil(SECTOR),
            )
            .map_err(|e| self.io_err("a sector bitmap", bitmap_offset, e))?;
        let data = bitmap_offset + bat.bitmap_bytes;
        bitmap.runs(in_block / SECTOR, end.div_ceil(SECTOR), |a, b, present| {
            let from = (a * SECTOR).max(in_block);
            let to = (b * SECTOR).min(end);
            let slice = &mut buf[(from - in_block) as usize..(to - in_block) as usize];
            if present {
                self.src
                    .read_exact_at(slice, data + from)
                    .map_err(|e| self.io_err("block data", data + from, e))
            } else {
                self.read_beneath(slice, block * bat.block_size + from)
            }
        })
    }

    /// This layer's own map of `[start, start + length)`: parent-backed ranges are
    /// `Unallocated` (to be resolved through the parent), clear bits of dynamic disks `Zero`.
    fn own_extents(
        &self,
        bat: &Bat,
        differencing: bool,
        start: u64,
        length: u64,
        out: &mut Vec<Extent>,
    ) -> Result<()> {
        let beneath = if differencing {
            Allocation::Unallocated
        } else {
            Allocation::Zero
        };
        let end = start + length;
        let mut pos = start;
        while pos < end {
            let block = pos / bat.block_size;
            let block_start = block * bat.block_size;
            let in_block = pos - block_start;
            let in_end = (end - block_start).min(bat.block_size);
            let location = bat
                .location(block)
                .map_err(|e| self.io_err("the BAT", bat.table_offset, e))?;
            match location {
                BlockLocation::Unallocated => {
                    push_extent(
                        out,
                        Extent {
                            start: pos,
                            length: in_end - in_block,
                            allocation: Allocation::Unallocated,
                        },
                    );
                }
                BlockLocation::Invalid => return Err(Self::invalid_block(bat, block)),
                BlockLocation::At { bitmap_offset } => {
                    let (first, last) = (in_block / SECTOR, in_end.div_ceil(SECTOR));
                    let bitmap = bat
                        .read_bitmap(self.src.as_ref(), bitmap_offset, first, last)
                        .map_err(|e| self.io_err("a sector bitmap", bitmap_offset, e))?;
                    let data = bitmap_offset + bat.bitmap_bytes;
                    bitmap.runs(first, last, |a, b, present| {
                        let from = (a * SECTOR).max(in_block);
                        let to = (b * SECTOR).min(in_end);
                        let allocation = if present {
                            Allocation::Data {
                                layer: 0,
                                file_offset: data + from,
                            }
                        } else {
                            beneath
                        };
                        push_extent(
                            out,
                            Extent {
                                start: block_start + from,
                                length: to - from,
                                allocation,
                            },
                        );
                        Ok(())
                    })?;
                }
            }
            pos = block_start + in_end;
        }
        Ok(())
    }
}

impl DiskImage for VhdImage {
    fn info(&self) -> &ImageInfo {
        &self.info
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_virtual_range(self.info.virtual_size, offset, buf.len() as u64)?;
        match &self.layout {
            Layout::Fixed => self
                .src
                .read_exact_at(buf, offset)
                .map_err(|e| self.io_err("data", offset, e)),
            Layout::Sparse { bat, .. } => {
                let mut pos = offset;
                let mut rest = buf;
                while !rest.is_empty() {
                    let block = pos / bat.block_size;
                    let in_block = pos % bat.block_size;
                    let n = usize::try_from(bat.block_size - in_block)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    let (chunk, tail) = rest.split_at_mut(n);
                    self.read_block(bat, block, in_block, chunk)?;
                    rest = tail;
                    pos += n as u64;
                }
                Ok(())
            }
        }
    }

    fn extents(&self, start: u64, length: u64, out: &mut Vec<Extent>) -> Result<()> {
        check_virtual_range(self.info.virtual_size, start, length)?;
        match &self.layout {
            Layout::Fixed => map_file_region(self.src.as_ref(), 0, start, length, out),
            Layout::Sparse {
                bat,
                differencing: false,
                ..
            } => self.own_extents(bat, false, start, length, out),
            Layout::Sparse {
                bat,
                differencing: true,
                parent,
                ..
            } => {
                let mut own = Vec::new();
                self.own_extents(bat, true, start, length, &mut own)?;
                resolve_through_parent(&own, parent.as_deref(), out)
            }
        }
    }

    fn findings(&self) -> &[Finding] {
        &self.findings
    }

    fn parent(&self) -> Option<&dyn DiskImage> {
        match &self.layout {
            Layout::Sparse {
                parent: Some(p), ..
            } => Some(p.as_ref()),
            _ => None,
        }
    }
}

/// Open the first candidate that is a regular file carrying `parent_id`. Each candidate's
/// identity is read first ([`probe_parent`], a few hundred bytes) and only a match is fully
/// opened, so decoy locators cost one probe each rather than a whole chain each (the
/// context's open budget bounds what is left). Loops, over-long chains and "parents not
/// followed" stop the search at once; a parent with another id, or that is missing, not a
/// regular file, or fails to open, lets later candidates try. Fails naming every path tried.
fn open_parent_of(
    candidates: &[parent::Candidate],
    parent_id: Uuid,
    ctx: &mut OpenContext<'_>,
) -> Result<(Box<dyn DiskImage>, PathBuf)> {
    if !ctx.opts.follow_parents {
        // Do not even probe the file system (in-memory and fuzzing opens): open_parent
        // refuses at once, naming the first candidate.
        let named = candidates.first().map_or_else(
            || PathBuf::from("(no parent path recorded)"),
            |c| c.path.clone(),
        );
        let p = open_parent(&named, ctx)?;
        return Ok((p, named));
    }
    let mut tried = Vec::new();
    let mut first_failure: Option<Error> = None;
    for c in candidates {
        let probe = match probe_parent(&c.path) {
            Ok(p) => p,
            Err(e) => {
                // Missing, not a regular file (FIFO, device) or unreadable: skipped.
                tried.push(format!("{} ({})", e.message(), c.source));
                continue;
            }
        };
        if probe.identity != Some(parent_id) {
            let found = probe
                .identity
                .map_or_else(|| "none".to_string(), |u| u.to_string());
            tried.push(format!(
                "{} ({}: unique id {found})",
                c.path.display(),
                c.source
            ));
            first_failure.get_or_insert(Error::new(
                ErrorKind::Parent,
                "vhd.parent.id_mismatch",
                format!(
                    "the parent found at {} ({}) has unique id {found}, but this differencing disk expects parent id {parent_id}; it is not this disk's parent (or it was modified or replaced)",
                    c.path.display(),
                    c.source
                ),
            ));
            continue;
        }
        match open_candidate(probe, ctx) {
            Ok(p) => return Ok((p, c.path.clone())),
            Err(e)
                if matches!(
                    e.code(),
                    "parent.loop" | "parent.not_followed" | "parent.chain_too_deep"
                ) =>
            {
                return Err(e)
            }
            Err(e) => {
                tried.push(format!("{} ({}: {e})", c.path.display(), c.source));
                first_failure.get_or_insert(Error::new(
                    ErrorKind::Parent,
                    e.code(),
                    format!(
                        "cannot open the parent {} ({}): {e}",
                        c.path.display(),
                        c.source
                    ),
                ));
            }
        }
    }
    if let Some(e) = first_failure {
        if tried.len() > 1 {
            let msg = format!("{}; paths tried: {}", e.message(), tried.join("; "));
            return Err(Error::new(e.kind(), e.code(), msg));
        }
        return Err(e);
    }
    let list = if tried.is_empty() {
        "none (no W2ru/W2ku locator and no parent name)".to_string()
    } else {
        tried.join("; ")
    };
    Err(Error::new(
        ErrorKind::Parent,
        "vhd.parent.missing",
        format!("the parent disk (unique id {parent_id}) of this differencing disk was not found; paths tried: {list}"),
    ))
}

#[cfg(test)]
mod tests;
