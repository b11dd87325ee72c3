//! VHDX ([MS-VHDX] v1; formats.md §2).

use crate::error::{Error, Result};
use crate::format::OpenContext;
use crate::image::DiskImage;
use crate::io::ReadAt;
use std::path::Path;
use std::sync::Arc;

/// `vhdxfile`: the file type identifier at offset 0.
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";

/// Open a VHDX from `src` (whose file is `path`).
pub fn open(
    src: Arc<dyn ReadAt>,
    path: &Path,
    ctx: &mut OpenContext<'_>,
) -> Result<Box<dyn DiskImage>> {
    let _ = (src, path, ctx);
    Err(Error::unsupported(
        "vhdx.unimplemented",
        "VHDX reading is not implemented yet",
    ))
}
