//! [`Volume`]: an owned, cloneable byte range of a disk image that a file system is read from,
//! and [`ReadRange`], the one read seam shared by windows, logical volumes and volumes.
//!
//! A [`Window`] borrows its image, which suits parsers that finish before returning. A file
//! system handle lives on after `open` returns and is handed to code (the `ext4-view` crate)
//! that keeps its reader for as long as the handle, so the handle owns its bytes: the image
//! behind an `Arc`, and the list of disk ranges (one for a partition, one per segment for a
//! logical volume) that make up the volume.

use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::guest::lvm::LvWindow;
use crate::guest::Window;
use crate::image::DiskImage;

/// Positional reads of a bounded byte range: what identification and file systems need.
pub trait ReadRange {
    /// Length in bytes.
    fn len(&self) -> u64;
    /// True when the range holds no byte.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Read exactly `buf.len()` bytes at `offset`; the whole range must lie inside.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
}

impl ReadRange for Window<'_> {
    fn len(&self) -> u64 {
        Window::len(self)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Window::read_at(self, buf, offset)
    }
}

impl ReadRange for LvWindow<'_> {
    fn len(&self) -> u64 {
        LvWindow::len(self)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        LvWindow::read_at(self, buf, offset)
    }
}

/// One contiguous run of a volume: volume bytes `[at, at + len)` are disk bytes
/// `[disk_start, disk_start + len)`.
#[derive(Clone, Copy, Debug)]
struct Piece {
    at: u64,
    disk_start: u64,
    len: u64,
}

/// An owned volume: a partition, a logical volume or a whole disk, read through its image.
#[derive(Clone)]
pub struct Volume {
    image: Arc<dyn DiskImage>,
    /// Contiguous, in volume order, starting at 0; never empty pieces.
    pieces: Arc<[Piece]>,
    len: u64,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Volume({}, {} piece(s), {:#x} bytes)",
            self.image.info().path.display(),
            self.pieces.len(),
            self.len
        )
    }
}

fn not_this_image() -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "guest.fs.other_image",
        "the window given reads a different image than the one given to own it; pass the image the partition or volume was found on",
    )
}

impl Volume {
    /// The whole virtual disk (a file system without a partition table).
    pub fn whole(image: Arc<dyn DiskImage>) -> Volume {
        let len = image.info().virtual_size;
        Volume::from_ranges(image, &[(0, len)])
    }

    /// The bytes of `window`, which must be a window on `image` itself.
    pub fn from_window(image: &Arc<dyn DiskImage>, window: &Window<'_>) -> Result<Volume> {
        if !std::ptr::addr_eq(Arc::as_ptr(image), std::ptr::from_ref(window.image())) {
            return Err(not_this_image());
        }
        Ok(Volume::from_ranges(
            Arc::clone(image),
            &[(window.start(), window.len())],
        ))
    }

    /// The bytes of a linear logical volume, whose segments all lie on `image`.
    pub fn from_lv(image: &Arc<dyn DiskImage>, lv: &LvWindow<'_>) -> Result<Volume> {
        let mut ranges = Vec::new();
        for w in lv.windows() {
            if !std::ptr::addr_eq(Arc::as_ptr(image), std::ptr::from_ref(w.image())) {
                return Err(not_this_image());
            }
            ranges.push((w.start(), w.len()));
        }
        Ok(Volume::from_ranges(Arc::clone(image), &ranges))
    }

    /// Ranges are checked by the windows they come from; this only joins them.
    fn from_ranges(image: Arc<dyn DiskImage>, ranges: &[(u64, u64)]) -> Volume {
        let mut pieces = Vec::with_capacity(ranges.len());
        let mut at = 0u64;
        for &(disk_start, len) in ranges.iter().filter(|r| r.1 > 0) {
            pieces.push(Piece {
                at,
                disk_start,
                len,
            });
            at += len;
        }
        Volume {
            image,
            pieces: pieces.into(),
            len: at,
        }
    }

    /// The image this volume reads.
    pub fn image(&self) -> &Arc<dyn DiskImage> {
        &self.image
    }
}

impl ReadRange for Volume {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::guest::window::read_across_pieces(
            self.pieces.len(),
            |i| self.pieces[i].at,
            |i| self.pieces[i].len,
            |i, part, within| {
                let p = self.pieces[i];
                self.image.read_at(part, p.disk_start + within)
            },
            (self.len, "volume"),
            buf,
            offset,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize) -> Arc<dyn DiskImage> {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        Arc::from(crate::open_bytes(data).unwrap())
    }

    #[test]
    fn pieces_read_as_one_range() {
        let img = image(8192);
        // Volume = disk [1000, 1100) then [5000, 5050): a read across the seam takes both.
        let v = Volume::from_ranges(Arc::clone(&img), &[(1000, 100), (0, 0), (5000, 50)]);
        assert_eq!(v.len(), 150);
        let mut b = [0u8; 4];
        v.read_at(&mut b, 98).unwrap();
        assert_eq!(
            b,
            [
                (1098 % 251) as u8,
                (1099 % 251) as u8,
                (5000 % 251) as u8,
                (5001 % 251) as u8
            ]
        );
        assert!(v.read_at(&mut b, 147).is_err());
        assert!(v.read_at(&mut b, u64::MAX - 1).is_err());
    }

    #[test]
    fn a_window_of_another_image_is_refused() {
        let a = image(4096);
        let b = image(4096);
        let w = Window::new(b.as_ref(), 512, 1024).unwrap();
        assert_eq!(
            Volume::from_window(&a, &w).unwrap_err().code(),
            "guest.fs.other_image"
        );
        let v = Volume::from_window(&b, &w).unwrap();
        assert_eq!(v.len(), 1024);
    }
}
