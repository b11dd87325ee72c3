//! [`Window`]: a byte range of a [`DiskImage`] read like a disk of its own.
//!
//! Partition and volume parsers take a window, not an image, so one parser serves the whole
//! disk, a partition and (later) a logical volume. Every read is checked against the window
//! before it reaches the image, so a corrupt length field can never read a neighbour's bytes.

use crate::error::{Error, ErrorKind, Result};
use crate::image::DiskImage;

/// A bounded, readable byte range `[start, start + len)` of a disk image.
#[derive(Clone, Copy)]
pub struct Window<'a> {
    image: &'a dyn DiskImage,
    start: u64,
    len: u64,
}

impl std::fmt::Debug for Window<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Window({}, {:#x}+{:#x})",
            self.image.info().path.display(),
            self.start,
            self.len
        )
    }
}

fn out_of_range(what: &str, offset: u64, len: u64, size: u64) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "guest.read.out_of_range",
        format!("{what} {offset:#x}+{len:#x} does not fit in a range of {size:#x} bytes"),
    )
}

impl<'a> Window<'a> {
    /// The whole virtual disk.
    pub fn whole(image: &'a dyn DiskImage) -> Self {
        Window {
            image,
            start: 0,
            len: image.info().virtual_size,
        }
    }

    /// The range `[start, start + len)` of `image`; fails when it does not lie inside the disk.
    pub fn new(image: &'a dyn DiskImage, start: u64, len: u64) -> Result<Self> {
        Window::whole(image).sub(start, len)
    }

    /// The range `[start, start + len)` of this window, as a window on the same image.
    pub fn sub(&self, start: u64, len: u64) -> Result<Window<'a>> {
        match start.checked_add(len) {
            Some(end) if end <= self.len => Ok(Window {
                image: self.image,
                start: self.start + start,
                len,
            }),
            _ => Err(out_of_range("window", start, len, self.len)),
        }
    }

    /// The image this window reads from.
    pub fn image(&self) -> &'a dyn DiskImage {
        self.image
    }

    /// Byte offset of the window in the virtual disk.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the window holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Read `buf.len()` bytes at `offset` (relative to the window). The whole range must lie
    /// inside the window.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= self.len => self.image.read_at(buf, self.start + offset),
            _ => Err(out_of_range("read", offset, len, self.len)),
        }
    }

    /// Read `len` bytes at `offset` into a new buffer, refusing more than `cap` bytes so that
    /// a length taken from the guest's metadata cannot size an allocation on its own.
    pub fn read_vec(&self, offset: u64, len: u64, cap: u64) -> Result<Vec<u8>> {
        if len > cap {
            return Err(Error::new(
                ErrorKind::Corrupt,
                "guest.read.too_large",
                format!("refusing to read {len} bytes at {offset:#x}: the limit for this structure is {cap} bytes"),
            ));
        }
        // Check before allocating: an out-of-range request must not allocate either.
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {}
            _ => return Err(out_of_range("read", offset, len, self.len)),
        }
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        self.read_at(&mut buf, offset)?;
        Ok(buf)
    }
}

/// Read `buf` at `offset` of a byte range made of consecutive pieces (a logical volume's
/// segments, a volume's disk ranges): piece `i` starts at `start_of(i)` in the range and is
/// `len_of(i)` long; `read_piece(i, part, within)` reads `part` at `within` of piece `i`.
/// `total` is the range's length and `what` names it in the error for a read past its end.
pub(crate) fn read_across_pieces(
    count: usize,
    start_of: impl Fn(usize) -> u64,
    len_of: impl Fn(usize) -> u64,
    mut read_piece: impl FnMut(usize, &mut [u8], u64) -> Result<()>,
    (total, what): (u64, &str),
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    let end = offset
        .checked_add(buf.len() as u64)
        .filter(|&e| e <= total)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "guest.read.out_of_range",
                format!(
                    "read {offset:#x}+{:#x} beyond the {what}'s {total:#x} bytes",
                    buf.len()
                ),
            )
        })?;
    let (mut pos, mut done) = (offset, 0usize);
    // The piece holding `pos`: the last one starting at or before it.
    let (mut lo, mut hi) = (0, count);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if start_of(mid) <= pos {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let mut i = lo.saturating_sub(1);
    while pos < end && i < count {
        let within = pos - start_of(i);
        let n = crate::io::usize_from(len_of(i).saturating_sub(within).min(end - pos));
        read_piece(i, &mut buf[done..done + n], within)?;
        pos += n as u64;
        done += n;
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(len: usize) -> Box<dyn DiskImage> {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        crate::open_bytes(data).unwrap()
    }

    #[test]
    fn reads_are_relative_to_the_window() {
        let d = disk(4096);
        let w = Window::new(d.as_ref(), 1000, 100).unwrap();
        let mut b = [0u8; 4];
        w.read_at(&mut b, 2).unwrap();
        assert_eq!(
            b,
            [
                (1002 % 251) as u8,
                (1003 % 251) as u8,
                (1004 % 251) as u8,
                (1005 % 251) as u8
            ]
        );
        let s = w.sub(10, 20).unwrap();
        assert_eq!(s.start(), 1010);
        s.read_at(&mut b, 0).unwrap();
        assert_eq!(b[0], (1010 % 251) as u8);
    }

    #[test]
    fn nothing_outside_the_window_is_reachable() {
        let d = disk(4096);
        let w = Window::new(d.as_ref(), 1000, 100).unwrap();
        let mut b = [0u8; 4];
        // The last 4 bytes are fine; one past is not, even though the disk has more bytes.
        w.read_at(&mut b, 96).unwrap();
        assert_eq!(
            w.read_at(&mut b, 97).unwrap_err().code(),
            "guest.read.out_of_range"
        );
        assert!(w.read_at(&mut b, u64::MAX - 1).is_err());
        assert!(w.sub(50, 51).is_err());
        assert!(w.sub(u64::MAX, 2).is_err());
        assert!(Window::new(d.as_ref(), 4000, 97).is_err());
        // Lengths are checked against the cap before anything is allocated.
        assert_eq!(
            w.read_vec(0, u64::MAX, 1 << 20).unwrap_err().code(),
            "guest.read.too_large"
        );
        assert!(w.read_vec(0, 101, 1 << 20).is_err());
        assert_eq!(w.read_vec(0, 100, 1 << 20).unwrap().len(), 100);
    }
}
