//! VHD: fixed, dynamic and differencing disks (VHD spec v1.0; docs/formats.md §1).
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
//! and, from [`crate::format::open_parent`], `parent.{loop,not_followed,chain_too_deep,missing}`.

pub mod bat;
pub mod footer;
pub mod header;
pub mod parent;

use crate::error::{Error, ErrorKind, Result};
use crate::finding::{Finding, Findings};
use crate::format::chain::{read_parent, ParentSearch};
use crate::format::{raw::map_file_region, OpenContext};
use crate::image::{
    check_virtual_range, push_extent, resolve_through_parent, Allocation, DiskImage, DiskType,
    Extent, Format, ImageInfo,
};
use crate::io::{usize_from, ReadAt};
use bat::{Bat, BlockLocation, SECTOR};
use footer::{
    find_trailing_footer, validate_footer, FooterAt, HardDiskFooter, DISK_TYPE_DIFFERENCING,
    DISK_TYPE_DYNAMIC, DISK_TYPE_FIXED, FIXED_DATA_OFFSET, FOOTER_SIZE, MAX_SPARSE_SIZE,
};
use header::{read_header, ValidHeader, HEADER_SIZE};
use std::path::Path;
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

/// Where a differencing disk's parent is recorded: its dynamic header, the child's path
/// (relative locators start from its folder) and the end of the usable file area.
struct ParentLink<'a> {
    header: &'a ValidHeader,
    child: &'a Path,
    data_end: u64,
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
    let chosen = choose_footer(src, &mut Findings::default())?;
    Ok(Uuid::from_bytes(chosen.footer.unique_id))
}

fn is_sparse(f: &HardDiskFooter) -> bool {
    matches!(
        f.disk_type.get(),
        DISK_TYPE_DYNAMIC | DISK_TYPE_DIFFERENCING
    )
}

/// The footer a VHD is read with, and where the file's own footer is.
#[derive(Debug, Clone, Copy)]
struct ChosenFooter {
    /// The footer to read with (the trailing one, or the copy at offset 0 standing in).
    footer: HardDiskFooter,
    /// The trailing footer, when there is one.
    trailing: Option<FooterAt>,
    /// Where the trailing footer is, or would be: the offset findings about it name.
    at: u64,
}

/// Pick the footer to read with: the trailing one normally; the copy at offset 0 of a
/// dynamic/differencing disk when the trailing one is missing or fails its checksum.
fn choose_footer(src: &dyn ReadAt, findings: &mut Findings) -> Result<ChosenFooter> {
    let (footer, trailing) = pick_footer(src, findings)?;
    let at = trailing.map_or(src.size().saturating_sub(FOOTER_SIZE as u64), |t| t.offset);
    Ok(ChosenFooter {
        footer,
        trailing,
        at,
    })
}

/// [`choose_footer`]'s choice: the footer to read with and the trailing footer, if any.
fn pick_footer(
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
        let chosen = choose_footer(src.as_ref(), &mut findings)?;
        let (footer, footer_at) = (chosen.footer, chosen.at);
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
            vhd_footer_size: chosen.trailing.map(|t| t.size),
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
            Self::open_sparse(&src, path, ctx, &chosen, &mut info, &mut findings)?
        };
        Ok(VhdImage {
            src,
            info,
            findings: findings.0,
            layout,
        })
    }

    /// The dynamic/differencing part of [`VhdImage::open`].
    fn open_sparse(
        src: &Arc<dyn ReadAt>,
        path: &Path,
        ctx: &mut OpenContext<'_>,
        chosen: &ChosenFooter,
        info: &mut ImageInfo,
        findings: &mut Findings,
    ) -> Result<Layout> {
        let (footer, footer_at) = (&chosen.footer, chosen.at);
        let data_end = chosen.trailing.map_or(src.size(), |t| t.offset);
        if let (Some(t), Some(copy)) = (chosen.trailing, read_footer_copy(src.as_ref())?) {
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
        let (parent, parent_problem) = if differencing {
            let link = ParentLink {
                header: &hdr,
                child: path,
                data_end,
            };
            Self::open_parent_layer(src.as_ref(), &link, ctx, info, findings)
        } else {
            (None, None)
        };
        Ok(Layout::Sparse {
            bat,
            differencing,
            parent,
            parent_problem,
        })
    }

    /// Find and open the parent of the differencing disk whose header is `link.header`.
    /// A parent that cannot be opened is an error finding (at the header's parent id), not
    /// an `Err`: the child's own structure can still be checked, and reads of what the
    /// parent backs fail with the reason, which is returned as the second value.
    fn open_parent_layer(
        src: &dyn ReadAt,
        link: &ParentLink<'_>,
        ctx: &mut OpenContext<'_>,
        info: &mut ImageInfo,
        findings: &mut Findings,
    ) -> (Option<Box<dyn DiskImage>>, Option<String>) {
        let hdr = link.header;
        let parent_id = Uuid::from_bytes(hdr.header.parent_unique_id);
        info.parent_identifier = Some(parent_id);
        let candidates = parent::candidates(
            src,
            &hdr.header,
            hdr.offset,
            link.child,
            link.data_end,
            findings,
        );
        let search = ParentSearch {
            expected: parent_id,
            also_accepted: None,
            identity_name: "unique id",
            mismatch_code: crate::Code::new("vhd.parent.id_mismatch"),
            missing_code: crate::Code::new("vhd.parent.missing"),
        };
        match search.run(&candidates, ctx) {
            Ok(found) => {
                for f in found.image.findings() {
                    findings.0.push(Finding {
                        message: format!("parent {}: {}", found.path.display(), f.message),
                        ..f.clone()
                    });
                }
                info.parent = Some(found.path);
                (Some(found.image), None)
            }
            Err(e) => {
                findings.0.push(Finding::new(
                    crate::Severity::Error,
                    e.code(),
                    Some(hdr.offset + 40),
                    e.message(),
                ));
                (None, Some(e.message().to_string()))
            }
        }
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
        read_parent(p.as_ref(), buf, voff)
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
            let slice = &mut buf[usize_from(from - in_block)..usize_from(to - in_block)];
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

    fn own_file(&self) -> Option<&std::fs::File> {
        self.src.as_file()
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

#[cfg(test)]
mod tests;
