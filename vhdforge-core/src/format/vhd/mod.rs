//! VHD: fixed, dynamic and differencing disks (VHD spec v1.0; formats.md §1).

pub mod footer;

use crate::error::{Error, Result};
use crate::format::OpenContext;
use crate::image::DiskImage;
use crate::io::ReadAt;
use std::path::Path;
use std::sync::Arc;

/// Open a VHD of any type from `src` (whose file is `path`).
pub fn open(
    src: Arc<dyn ReadAt>,
    path: &Path,
    ctx: &mut OpenContext<'_>,
) -> Result<Box<dyn DiskImage>> {
    let _ = (src, path, ctx);
    Err(Error::unsupported(
        "vhd.unimplemented",
        "VHD reading is not implemented yet",
    ))
}
