//! The format-independent view of a disk image: [`DiskImage`], [`ImageInfo`] and the
//! allocation map ([`Extent`], [`Allocation`]).
//!
//! Every format (raw, VHD, VHDX) opens into a `DiskImage`. Reads are positional and `&self`,
//! so any number of threads can read one image. The allocation map says, for any virtual
//! range, which bytes live where; converters and the uploader use it to never read a byte
//! the metadata already proves to be zero.

use crate::error::{Error, Result};
use crate::finding::Finding;
use crate::format::chain::inside_parent;
use serde::Serialize;
use std::path::PathBuf;
use uuid::Uuid;

/// The container format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// No recognised signature: the file is the disk.
    Raw,
    /// Microsoft Virtual Hard Disk (Virtual PC / Hyper-V gen-1 format).
    Vhd,
    /// Hyper-V's VHDX.
    Vhdx,
}

/// How the virtual disk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskType {
    /// Every virtual byte has a fixed place in the file (raw images count as fixed).
    Fixed,
    /// Blocks allocated on demand; unallocated blocks read as zeros.
    Dynamic,
    /// Blocks allocated on demand; unallocated sectors come from a parent image.
    Differencing,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Raw => "raw",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
        })
    }
}

impl std::fmt::Display for DiskType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        })
    }
}

/// What an image is, as its metadata declares it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// The file this image was read from.
    pub path: PathBuf,
    /// Container format.
    pub format: Format,
    /// Storage type.
    pub disk_type: DiskType,
    /// Virtual disk size in bytes (what the guest sees).
    pub virtual_size: u64,
    /// Logical sector size in bytes (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size in bytes, where the format records one.
    pub physical_sector_size: u32,
    /// Allocation block size in bytes (dynamic/differencing VHD, every VHDX); `None` otherwise.
    pub block_size: Option<u64>,
    /// Length of the image file in bytes.
    pub file_size: u64,
    /// The image's identity: VHD footer unique id, VHDX `DataWriteGuid` (what children link to).
    pub identifier: Option<Uuid>,
    /// The parent file actually opened (differencing images only).
    pub parent: Option<PathBuf>,
    /// The parent identity this image declares (differencing images only).
    pub parent_identifier: Option<Uuid>,
    /// VHD only: the size of the footer found (512, or 511 for pre-2004 Virtual PC images).
    pub vhd_footer_size: Option<u32>,
    /// VHD only: the footer's creator application, printable.
    pub creator: Option<String>,
}

/// Where the bytes of one virtual range come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Allocation {
    /// Stored in the file of chain layer `layer` (0 = this image, 1 = its parent ...) at
    /// `file_offset`. The bytes may still be zero: only their content can tell.
    Data {
        /// Chain depth of the file holding the bytes.
        layer: u32,
        /// Byte offset in that file.
        file_offset: u64,
    },
    /// The metadata says these bytes are zero (VHDX ZERO/UNMAPPED blocks, clear VHD bitmap bits).
    Zero,
    /// Nothing stores these bytes anywhere in the chain; they read as zero.
    Unallocated,
}

impl Allocation {
    /// True when the range holds stored bytes that must be read.
    pub fn is_data(&self) -> bool {
        matches!(self, Allocation::Data { .. })
    }
}

/// A run of virtual bytes with one [`Allocation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    /// First virtual byte.
    pub start: u64,
    /// Length in bytes (never zero).
    pub length: u64,
    /// Where the bytes come from.
    pub allocation: Allocation,
}

impl Extent {
    /// One past the last virtual byte.
    pub fn end(&self) -> u64 {
        self.start + self.length
    }
}

/// Push `e` onto `out`, merging it with the previous extent when both are contiguous in
/// the virtual space *and* in storage.
pub fn push_extent(out: &mut Vec<Extent>, e: Extent) {
    if e.length == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.end() == e.start {
            let merged = match (last.allocation, e.allocation) {
                (Allocation::Zero, Allocation::Zero)
                | (Allocation::Unallocated, Allocation::Unallocated) => true,
                (
                    Allocation::Data {
                        layer: l1,
                        file_offset: o1,
                    },
                    Allocation::Data {
                        layer: l2,
                        file_offset: o2,
                    },
                ) => l1 == l2 && o1 + last.length == o2,
                _ => false,
            };
            if merged {
                last.length += e.length;
                return;
            }
        }
    }
    out.push(e);
}

/// A readable virtual disk.
pub trait DiskImage: Send + Sync + std::fmt::Debug {
    /// What the image is.
    fn info(&self) -> &ImageInfo;

    /// Read virtual bytes at `offset`. The range must lie within the virtual size.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Append to `out` the allocation of `[start, start + length)`, in order, covering the
    /// range exactly, resolved through parents for differencing images. `start + length`
    /// must not exceed the virtual size.
    fn extents(&self, start: u64, length: u64, out: &mut Vec<Extent>) -> Result<()>;

    /// Findings recorded while opening (structure, consistency), for this image and its parents.
    fn findings(&self) -> &[Finding];

    /// The parent image, for differencing images whose parent was opened.
    fn parent(&self) -> Option<&dyn DiskImage> {
        None
    }

    /// The open file that [`Allocation::Data`] offsets of layer 0 point into, when those
    /// bytes are read straight from it (no log overlay, not memory): the handle the image
    /// was opened and validated with, never a reopen by path.
    fn own_file(&self) -> Option<&std::fs::File> {
        None
    }
}

/// The open file of chain layer `layer` of `image` (see [`DiskImage::own_file`]).
pub fn layer_file(image: &dyn DiskImage, layer: u32) -> Option<&std::fs::File> {
    let mut cur = image;
    for _ in 0..layer {
        cur = cur.parent()?;
    }
    cur.own_file()
}

/// Check that `[offset, offset + len)` lies inside an image of `virtual_size` bytes.
pub fn check_virtual_range(virtual_size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= virtual_size => Ok(()),
        _ => Err(Error::new(
            crate::ErrorKind::InvalidInput,
            "read.out_of_range",
            format!(
                "virtual range {offset:#x}+{len:#x} lies beyond the virtual size {virtual_size:#x}"
            ),
        )),
    }
}

/// Bytes of the virtual disk backed by stored data (any layer) according to the metadata.
pub fn allocated_bytes(image: &dyn DiskImage) -> Result<u64> {
    stored_bytes(image, 0..image.info().virtual_size)
}

/// Bytes of `range` backed by stored data (any layer) according to the metadata, counted
/// without keeping a list.
pub fn stored_bytes(image: &dyn DiskImage, range: std::ops::Range<u64>) -> Result<u64> {
    let mut total = 0;
    walk_map(image, range, |extents| {
        total += extents
            .iter()
            .filter(|e| e.allocation.is_data())
            .map(|e| e.length)
            .sum::<u64>();
        Ok(())
    })?;
    Ok(total)
}

/// Hand the map of `range` to `visit` 256 MiB at a time: memory grows with the extents of
/// one slice, a few MiB even for a map fragmented to one extent per sector.
pub fn walk_map(
    image: &dyn DiskImage,
    range: std::ops::Range<u64>,
    mut visit: impl FnMut(&[Extent]) -> Result<()>,
) -> Result<()> {
    const SLICE: u64 = 256 << 20;
    let mut extents = Vec::new();
    let mut pos = range.start;
    while pos < range.end {
        let len = SLICE.min(range.end - pos);
        extents.clear();
        image.extents(pos, len, &mut extents)?;
        visit(&extents)?;
        pos += len;
    }
    Ok(())
}

/// Resolve the parts of `own` (this layer's map) that defer to the parent: `Unallocated`
/// extents of a differencing image are looked up in `parent` and shifted one layer down.
/// Images without a parent keep them as `Unallocated`.
pub fn resolve_through_parent(
    own: &[Extent],
    parent: Option<&dyn DiskImage>,
    out: &mut Vec<Extent>,
) -> Result<()> {
    let mut tmp = Vec::new();
    for e in own {
        match (e.allocation, parent) {
            (Allocation::Unallocated, Some(p)) => {
                let inside = inside_parent(p.info().virtual_size, e.start, e.length);
                if inside > 0 {
                    tmp.clear();
                    p.extents(e.start, inside, &mut tmp)?;
                    for pe in &tmp {
                        let allocation = match pe.allocation {
                            Allocation::Data { layer, file_offset } => Allocation::Data {
                                layer: layer + 1,
                                file_offset,
                            },
                            other => other,
                        };
                        push_extent(out, Extent { allocation, ..*pe });
                    }
                }
                // Past a smaller parent's end: nothing stores these bytes.
                push_extent(
                    out,
                    Extent {
                        start: e.start + inside,
                        length: e.length - inside,
                        allocation: Allocation::Unallocated,
                    },
                );
            }
            _ => push_extent(out, *e),
        }
    }
    Ok(())
}
