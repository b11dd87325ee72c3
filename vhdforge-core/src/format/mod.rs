//! Format detection and the open dispatcher.
//!
//! Images are recognised by content, never by file name: `vhdxfile` at offset 0 is VHDX,
//! a `conectix` footer at the end (or its copy at offset 0) is VHD, anything else is raw.

pub mod chain;
pub mod overlap;
pub mod raw;
pub mod table;
#[cfg(test)]
pub(crate) mod testing;
pub mod utf16;
pub mod vhd;
pub mod vhdx;
pub mod winpath;

use crate::error::{Error, ErrorKind, Result};
use crate::image::{DiskImage, Format};
use crate::io::{FileSource, ReadAt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use table::TableBudget;
use uuid::Uuid;

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

/// State carried while opening a chain: the options, the files already being opened
/// (children of the image being opened), to catch loops, and how many images were opened,
/// so that no input can make the parent search do more than linear work.
#[derive(Debug)]
pub struct OpenContext<'a> {
    /// Options in force.
    pub opts: &'a OpenOptions,
    /// Canonical paths of the images already on the chain, child first.
    pub chain: Vec<PathBuf>,
    /// Images fully opened so far while resolving this chain (the top image included).
    pub opened: usize,
    /// Memory left for whole BATs: one budget for the whole chain, so 64 layers of 64 MiB
    /// tables cost no more than one (the rest are paged).
    pub tables: TableBudget,
}

impl<'a> OpenContext<'a> {
    /// A fresh context for opening one image (and its chain) with `opts`.
    pub fn new(opts: &'a OpenOptions) -> Self {
        OpenContext {
            opts,
            chain: Vec::new(),
            opened: 0,
            tables: TableBudget::default(),
        }
    }

    /// The most images one chain resolution may open: a legitimate chain opens each layer
    /// once, so 4 × the depth limit leaves room for retried candidates while still
    /// bounding inputs crafted to make the search branch.
    pub fn open_budget(&self) -> usize {
        self.opts.max_chain_depth.saturating_mul(4)
    }
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
    if vhd::footer::find_trailing_footer(src)?.is_some() {
        return Ok(Format::Vhd);
    }
    if size >= 512 && &head == vhd::footer::COOKIE {
        // Dynamic VHD whose trailing footer is damaged: the copy at offset 0 survives.
        return Ok(Format::Vhd);
    }
    Ok(Format::Raw)
}

/// Open an image file, following parents as `opts` says.
///
/// The top image may be any readable file, block devices included (`FileSource` sizes
/// them); parents must be regular files (see [`probe_parent`]).
pub fn open_path(path: &Path, opts: &OpenOptions) -> Result<Box<dyn DiskImage>> {
    let mut ctx = OpenContext::new(opts);
    let canonical = std::fs::canonicalize(path).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            "io.open",
            format!("cannot open {}: {e}", path.display()),
        )
    })?;
    let src = FileSource::open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    enter(Arc::new(src), canonical, path, &mut ctx)
}

/// A parent candidate opened only far enough to know what it is and who it is.
#[derive(Debug)]
pub struct ParentCandidate {
    /// The path it was opened from.
    pub path: PathBuf,
    /// Its canonical path, for loop detection.
    canonical: PathBuf,
    /// The open file; the full open reuses it, so the identity checked is the one read.
    src: Arc<dyn ReadAt>,
    /// Its format.
    pub format: Format,
    /// Its identity: a VHD's footer unique id or a VHDX's `DataWriteGuid` (`None` for raw).
    pub identity: Option<Uuid>,
}

/// What a non-regular file is, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

/// `parent.missing`: `path` cannot serve as a parent for `why`.
fn not_a_parent(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Parent,
        "parent.missing",
        format!("{}: {why}", path.display()),
    )
}

/// Open `path` as a possible parent and read only its identity (a few KiB): the candidate
/// searches compare it before paying for a full open, which may recurse into a whole chain.
///
/// Anything but a regular file (symlinks followed) is refused with `parent.missing` before
/// it is opened: opening a FIFO blocks forever and a device (`/dev/zero`) is no disk image,
/// and a locator can name either. Opening a regular file never blocks; the type is checked
/// again on the open handle in case the path was swapped in between.
pub fn probe_parent(path: &Path) -> Result<ParentCandidate> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            not_a_parent(path, "not found")
        } else {
            not_a_parent(path, format_args!("cannot open: {e}"))
        }
    })?;
    if !meta.is_file() {
        return Err(not_a_parent(
            path,
            format_args!("is {}, not a disk image", file_kind(&meta)),
        ));
    }
    let canonical = std::fs::canonicalize(path)
        .map_err(|e| not_a_parent(path, format_args!("cannot open: {e}")))?;
    let src =
        FileSource::open(path).map_err(|e| not_a_parent(path, format_args!("cannot open: {e}")))?;
    let meta = src
        .file()
        .metadata()
        .map_err(|e| not_a_parent(path, format_args!("cannot open: {e}")))?;
    if !meta.is_file() {
        return Err(not_a_parent(
            path,
            format_args!("is {}, not a disk image", file_kind(&meta)),
        ));
    }
    let src: Arc<dyn ReadAt> = Arc::new(src);
    let format =
        detect(src.as_ref()).map_err(|e| not_a_parent(path, format_args!("cannot read: {e}")))?;
    let identity = match format {
        Format::Raw => None,
        Format::Vhd => Some(vhd::identity(src.as_ref())),
        Format::Vhdx => Some(vhdx::identity(src.as_ref())),
    }
    .transpose()
    .map_err(|e| not_a_parent(path, format_args!("cannot read its identity: {e}")))?;
    Ok(ParentCandidate {
        path: path.to_path_buf(),
        canonical,
        src,
        format,
        identity,
    })
}

/// `parent.not_followed`: the image is differencing (its parent would be `path`) and
/// following parents is turned off.
pub fn not_followed(path: &Path) -> Error {
    Error::new(
        ErrorKind::Parent,
        "parent.not_followed",
        format!(
            "this is a differencing image whose parent is {}, and following parents is turned off",
            path.display()
        ),
    )
}

/// Refuse to open another parent when parents are not followed, the chain is at its
/// depth limit, or the chain has used up its open budget.
fn admit(path: &Path, ctx: &OpenContext<'_>) -> Result<()> {
    if !ctx.opts.follow_parents {
        return Err(not_followed(path));
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
    if ctx.opened >= ctx.open_budget() {
        return Err(Error::new(
            ErrorKind::Parent,
            "parent.chain_too_deep",
            format!(
                "resolving this parent chain has already opened {} images, the limit for a chain of at most {} images; refusing to open {}",
                ctx.opened,
                ctx.opts.max_chain_depth,
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Open the parent of a differencing image, refusing loops, over-long chains and
/// anything that is not a regular file.
pub fn open_parent(path: &Path, ctx: &mut OpenContext<'_>) -> Result<Box<dyn DiskImage>> {
    admit(path, ctx)?;
    let candidate = probe_parent(path)?;
    open_candidate(candidate, ctx)
}

/// Fully open a probed parent candidate (normally one whose identity matched), with the
/// same guards as [`open_parent`].
pub fn open_candidate(
    candidate: ParentCandidate,
    ctx: &mut OpenContext<'_>,
) -> Result<Box<dyn DiskImage>> {
    admit(&candidate.path, ctx)?;
    enter(candidate.src, candidate.canonical, &candidate.path, ctx)
}

/// Open `src` as the next image of the chain, unless it is already on it.
fn enter(
    src: Arc<dyn ReadAt>,
    canonical: PathBuf,
    path: &Path,
    ctx: &mut OpenContext<'_>,
) -> Result<Box<dyn DiskImage>> {
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
    ctx.opened += 1;
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
