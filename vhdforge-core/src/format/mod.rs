//! Format detection and the open dispatcher.
//!
//! Images are recognised by content, never by file name: `vhdxfile` at offset 0 is VHDX,
//! a `conectix` footer at the end (or its copy at offset 0) is VHD, anything else is raw.

pub mod raw;
pub mod vhd;
pub mod vhdx;

use crate::error::{Error, ErrorKind, Result};
use crate::image::{DiskImage, Format};
use crate::io::{FileSource, ReadAt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Options for opening images.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Open the parent files of differencing images (default: yes). Without it a
    /// differencing image fails to open with a `parent.not_followed` error.
    pub follow_parents: bool,
    /// The longest parent chain accepted (default 64).
    pub max_chain_depth: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            follow_parents: true,
            max_chain_depth: 64,
        }
    }
}

/// State carried while opening a chain: the options and the files already being opened
/// (children of the image being opened), to catch loops.
#[derive(Debug)]
pub struct OpenContext<'a> {
    /// Options in force.
    pub opts: &'a OpenOptions,
    /// Canonical paths of the images already on the chain, child first.
    pub chain: Vec<PathBuf>,
}

/// Detect the format of a source by its signatures.
pub fn detect(src: &dyn ReadAt) -> std::io::Result<Format> {
    let size = src.size();
    let mut head = [0u8; 8];
    if size >= 8 {
        src.read_exact_at(&mut head, 0)?;
        if &head == vhdx::FILE_SIGNATURE {
            return Ok(Format::Vhdx);
        }
    }
    for footer_len in [512u64, 511] {
        if size >= footer_len {
            let mut cookie = [0u8; 8];
            src.read_exact_at(&mut cookie, size - footer_len)?;
            if &cookie == vhd::footer::COOKIE {
                return Ok(Format::Vhd);
            }
        }
    }
    if size >= 512 && &head == vhd::footer::COOKIE {
        // Dynamic VHD whose trailing footer is damaged: the copy at offset 0 survives.
        return Ok(Format::Vhd);
    }
    Ok(Format::Raw)
}

/// Open an image file, following parents as `opts` says.
pub fn open_path(path: &Path, opts: &OpenOptions) -> Result<Box<dyn DiskImage>> {
    let mut ctx = OpenContext {
        opts,
        chain: Vec::new(),
    };
    open_in_chain(path, &mut ctx)
}

/// Open the parent of a differencing image, refusing loops and over-long chains.
pub fn open_parent(path: &Path, ctx: &mut OpenContext<'_>) -> Result<Box<dyn DiskImage>> {
    if !ctx.opts.follow_parents {
        return Err(Error::new(
            ErrorKind::Parent,
            "parent.not_followed",
            format!("this is a differencing image whose parent is {}, and following parents is turned off", path.display()),
        ));
    }
    if ctx.chain.len() >= ctx.opts.max_chain_depth {
        return Err(Error::new(
            ErrorKind::Parent,
            "parent.chain_too_deep",
            format!(
                "parent chain is deeper than {} images; refusing to follow {}",
                ctx.opts.max_chain_depth,
                path.display()
            ),
        ));
    }
    open_in_chain(path, ctx)
}

fn open_in_chain(path: &Path, ctx: &mut OpenContext<'_>) -> Result<Box<dyn DiskImage>> {
    let canonical = std::fs::canonicalize(path).map_err(|e| {
        let code = if ctx.chain.is_empty() {
            "io.open"
        } else {
            "parent.missing"
        };
        let kind = if ctx.chain.is_empty() {
            ErrorKind::Io
        } else {
            ErrorKind::Parent
        };
        Error::new(kind, code, format!("cannot open {}: {e}", path.display()))
    })?;
    if ctx.chain.contains(&canonical) {
        return Err(Error::new(
            ErrorKind::Parent,
            "parent.loop",
            format!(
                "parent chain loops: {} is already part of the chain ({})",
                canonical.display(),
                ctx.chain
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
        ));
    }
    let src = FileSource::open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let src: Arc<dyn ReadAt> = Arc::new(src);
    ctx.chain.push(canonical);
    let result = open_source(src, path, ctx);
    ctx.chain.pop();
    result.map_err(|e| e.in_file(path))
}

/// Open an already opened source whose path is `path` (used to resolve relative parents).
pub fn open_source(
    src: Arc<dyn ReadAt>,
    path: &Path,
    ctx: &mut OpenContext<'_>,
) -> Result<Box<dyn DiskImage>> {
    let format = detect(src.as_ref())
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    match format {
        Format::Raw => Ok(Box::new(raw::RawImage::open(src, path)?)),
        Format::Vhd => vhd::open(src, path, ctx),
        Format::Vhdx => vhdx::open(src, path, ctx),
    }
}
