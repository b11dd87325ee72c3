//! Streaming reads of an XFS regular file: the data fork's extents are mapped once at open
//! (bounded by `bmap::MAX_EXTENTS`); each read copies from one extent or zero-fills a hole,
//! so no file is held in memory.

use super::bmap::{self, Extent};
use super::inode::Inode;
use super::XfsFs;
use crate::error::{Error, ErrorKind, Result};
use crate::guest::fs::FileReader;

/// An open regular file.
pub struct XfsFile<'a> {
    fs: &'a XfsFs,
    extents: Vec<Extent>,
    size: u64,
    pos: u64,
}

impl<'a> XfsFile<'a> {
    pub fn new(fs: &'a XfsFs, inode: &Inode) -> Result<XfsFile<'a>> {
        Ok(XfsFile {
            fs,
            extents: bmap::extents(fs, inode)?,
            size: inode.size,
            pos: 0,
        })
    }
}

impl FileReader for XfsFile<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let left = self.size.saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        self.fs
            .read_mapped(&self.extents, self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn seek(&mut self, offset: u64) -> Result<()> {
        if offset > self.size {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "guest.fs.bad_seek",
                format!("seek to {offset} past the end of a {}-byte file", self.size),
            ));
        }
        self.pos = offset;
        Ok(())
    }
}
