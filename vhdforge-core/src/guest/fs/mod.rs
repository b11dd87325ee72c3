//! Guest file systems, read-only: what a volume holds ([`identify`]), and a small
//! [`FileSystem`] trait that later layers (`ls`, `cat`, Linux preflight) use without knowing
//! the format. `docs/guest-filesystems.md` states the facts relied on and how each was checked.
//!
//! Path resolution is done here once, for every format ([`resolve`]): formats only look up
//! one name in a directory whose path holds no symlink, and read a symlink's target. So the
//! rules that protect the host are in one place: paths are absolute, symlinks are followed
//! *inside the volume* (an absolute target starts again at the volume's root, `..` stops at
//! the root), at most [`MAX_SYMLINKS`] of them per lookup, and a path never grows past
//! [`MAX_PATH_BYTES`].

mod ext4;
mod ext4_inode;
mod fat;
mod identify;
mod ntfs;
mod volume;
mod xfs;

pub use ext4::Ext4Fs;
pub use fat::FatFs;
pub use identify::{identify, FsKind, Identity};
pub use ntfs::NtfsFs;
pub use volume::{ReadRange, Volume};
pub use xfs::XfsFs;

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};

/// Symlinks followed in one lookup before it fails as a loop (Linux's limit).
pub const MAX_SYMLINKS: usize = 40;
/// Longest path, and longest symlink target, accepted (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// The type of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

/// A point in time as the file system stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z (negative before).
    pub seconds: i64,
    /// Nanoseconds within the second (0 when the format stores none).
    pub nanoseconds: u32,
}

/// What `stat` returns about one file (without following a final symlink).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stat {
    /// The file's type.
    pub file_type: FileType,
    /// Permission bits including set-uid, set-gid and sticky (`mode & 0o7777`).
    pub mode: u16,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Size in bytes (for a symlink, the target's length).
    pub size: u64,
    /// Last modification time.
    pub mtime: Timestamp,
    /// The target, for a symlink (raw bytes: Linux names need not be UTF-8).
    pub link_target: Option<Vec<u8>>,
}

/// Which file a path names: equal for two paths exactly when they reach the same file (hard
/// links, a directory and its `.`), so `ls -R` can tell it is about to enter a directory it is
/// already inside — the only way a damaged file system whose directory links back to an
/// ancestor can be listed in finite time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Which file system of a [`GuestTree`](crate::guest::GuestTree) (0 for a single one).
    pub volume: u32,
    /// The format's own number for the file: the inode number (ext, XFS), the MFT record
    /// number (NTFS), the first cluster (FAT, whose directories have no other identity).
    pub number: u64,
}

/// One name in a directory (`.` and `..` are not listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name, raw bytes.
    pub name: Vec<u8>,
    /// The type recorded for it.
    pub file_type: FileType,
}

/// Streaming read of one regular file. Holes and unwritten extents read as zeros.
pub trait FileReader {
    /// The file's size in bytes.
    fn size(&self) -> u64;
    /// Read up to `buf.len()` bytes at the current position; 0 at the end of the file.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize>;
    /// Move the position to `offset` (at most the size).
    fn seek(&mut self, offset: u64) -> Result<()>;
}

/// A read-only file system. `path` arguments of the `*_resolved` methods name a file by an
/// absolute path in which no component but possibly the last is a symlink; callers use the
/// provided methods, which resolve any path first.
pub trait FileSystem {
    /// The format.
    fn kind(&self) -> FsKind;

    /// Stat `path` without following a final symlink (`link_target` is filled for one).
    fn stat_resolved(&self, path: &[u8]) -> Result<Stat>;

    /// List the directory `path` (not a symlink), calling `f` for each entry in on-disk
    /// order; `f` returns `false` to stop early.
    fn list_resolved(&self, path: &[u8], f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()>;

    /// Open the regular file `path` (not a symlink) for reading.
    fn open_resolved(&self, path: &[u8]) -> Result<Box<dyn FileReader + '_>>;

    /// The identity of the file `path` (not following a final symlink); `None` when the
    /// reader cannot tell (then `ls -R` falls back to its depth and count limits).
    fn file_id_resolved(&self, path: &[u8]) -> Result<Option<FileId>> {
        let _ = path;
        Ok(None)
    }

    /// List the directory `path` (not a symlink) with each entry's [`Stat`], calling `f` with
    /// the name and the stat (or why it could not be read); `f` returns `false` to stop.
    /// The same as [`list_resolved`](Self::list_resolved) then
    /// [`stat_resolved`](Self::stat_resolved) of each child, which is what this does unless
    /// a reader knows better: readers whose entries carry an inode number read that inode
    /// directly instead of walking the child's path again from the root, which is what
    /// makes `ls -R` of 100 000 entries take a second instead of half a minute.
    fn list_stat_resolved(
        &self,
        path: &[u8],
        f: &mut dyn FnMut(&[u8], Result<Stat>) -> bool,
    ) -> Result<()> {
        self.list_resolved(path, &mut |e| {
            let st = self.stat_resolved(&child(path, &e.name));
            f(&e.name, st)
        })
    }

    /// The canonical path of `path`: absolute, every symlink followed inside the volume
    /// (the last one too when `follow_last`), no `.`/`..`.
    fn resolve(&self, path: &[u8], follow_last: bool) -> Result<Vec<u8>> {
        resolve(self, path, follow_last)
    }

    /// Stat `path`, following symlinks (including a final one), like `stat(2)`.
    fn stat(&self, path: &[u8]) -> Result<Stat> {
        self.stat_resolved(&self.resolve(path, true)?)
    }

    /// Stat `path`, not following a final symlink, like `lstat(2)`.
    fn lstat(&self, path: &[u8]) -> Result<Stat> {
        self.stat_resolved(&self.resolve(path, false)?)
    }

    /// List the directory at `path` (symlinks followed).
    fn list(&self, path: &[u8], f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        self.list_resolved(&self.resolve(path, true)?, f)
    }

    /// Open the regular file at `path` (symlinks followed).
    fn open(&self, path: &[u8]) -> Result<Box<dyn FileReader + '_>> {
        let p = self.resolve(path, true)?;
        self.open_resolved(&p)
    }
}

/// Open the file system on `volume`, whichever supported format it is.
pub fn open(volume: Volume) -> Result<Box<dyn FileSystem>> {
    let id = identify(&volume)?;
    match id.kind {
        FsKind::Ext => Ok(Box::new(Ext4Fs::open(volume)?)),
        FsKind::Xfs => Ok(Box::new(XfsFs::open(volume)?)),
        FsKind::Ntfs => Ok(Box::new(NtfsFs::open(volume)?)),
        FsKind::BitLocker => Err(ntfs::bitlocker()),
        FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32 => Ok(Box::new(FatFs::open(volume)?)),
        FsKind::Unknown => Err(Error::new(
            ErrorKind::Unsupported,
            "guest.fs.unknown",
            "no file system signature found on this volume (expected ext2/3/4, XFS, NTFS or FAT); it may be unformatted, encrypted by a format vhdforge does not know, or not the volume you meant",
        )),
        FsKind::Ambiguous => Err(Error::new(
            ErrorKind::Unsupported,
            "guest.fs.ambiguous",
            format!(
                "this volume carries the signatures of several formats ({}); reading any one of them could show stale data, so none is read. `wipefs` inside the guest shows and removes the stale one",
                id.candidates.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
        )),
        other => Err(Error::new(
            ErrorKind::Unsupported,
            "guest.fs.unsupported",
            format!("the volume holds {other}, which vhdforge identifies but does not read (it reads ext2/3/4, XFS, NTFS and FAT)"),
        )),
    }
}

/// A file held in memory, for the guest readers' unit tests.
#[cfg(test)]
pub(crate) struct MemFile(pub Vec<u8>, pub usize);

#[cfg(test)]
impl FileReader for MemFile {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = buf.len().min(self.0.len() - self.1);
        buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
        self.1 += n;
        Ok(n)
    }
    fn seek(&mut self, offset: u64) -> Result<()> {
        self.1 = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        Ok(())
    }
}

/// True when `e` says the path names nothing.
pub fn is_not_found(e: &Error) -> bool {
    e.code() == NOT_FOUND
}

const NOT_FOUND: crate::Code = crate::Code::new("guest.fs.not_found");

pub(crate) fn not_found(path: &[u8]) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        NOT_FOUND,
        format!("{} does not exist in the guest file system", show(path)),
    )
}

/// A guest path for messages (lossy: names need not be UTF-8).
pub(crate) fn show(path: &[u8]) -> String {
    format!("'{}'", String::from_utf8_lossy(path))
}

fn path_error(code: &'static str, message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, code, message)
}

/// The generic lookup every format shares. Works on a queue of components still to walk;
/// a symlink's target is pushed in front of what remains.
fn resolve<F: FileSystem + ?Sized>(fs: &F, path: &[u8], follow_last: bool) -> Result<Vec<u8>> {
    if path.first() != Some(&b'/') {
        return Err(path_error(
            "guest.fs.not_absolute",
            format!("{} is not absolute; guest paths start with '/'", show(path)),
        ));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(path_error(
            "guest.fs.path_too_long",
            format!(
                "a path of {} bytes is longer than the {MAX_PATH_BYTES} bytes Linux accepts",
                path.len()
            ),
        ));
    }
    // Remaining components, last first, so the next one is `pop()`.
    let mut todo: Vec<Vec<u8>> = components(path).rev().collect();
    let mut done: Vec<Vec<u8>> = Vec::new();
    let mut links = 0usize;
    while let Some(name) = todo.pop() {
        match name.as_slice() {
            b"." => continue,
            b".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        done.push(name);
        let here = join(&done);
        let is_last = todo.is_empty();
        let st = fs.stat_resolved(&here)?;
        match st.file_type {
            FileType::Symlink if !is_last || follow_last => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(path_error(
                        "guest.fs.symlink_loop",
                        format!(
                            "more than {MAX_SYMLINKS} symbolic links while resolving {}: a loop",
                            show(path)
                        ),
                    ));
                }
                let target = st.link_target.unwrap_or_default();
                done.pop();
                if target.first() == Some(&b'/') {
                    done.clear();
                }
                let pending: usize = todo.iter().map(|c| c.len() + 1).sum();
                if pending + target.len() + join(&done).len() > MAX_PATH_BYTES {
                    return Err(path_error(
                        "guest.fs.path_too_long",
                        format!("resolving {} grows past {MAX_PATH_BYTES} bytes", show(path)),
                    ));
                }
                todo.extend(components(&target).rev());
            }
            FileType::Directory | FileType::Symlink => {}
            _ if is_last => {}
            _ => {
                return Err(path_error(
                    "guest.fs.not_a_directory",
                    format!(
                        "{} is not a directory, so {} cannot be looked up",
                        show(&here),
                        show(path)
                    ),
                ))
            }
        }
    }
    Ok(join(&done))
}

/// `dir/name` for a resolved directory path.
pub(crate) fn child(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn components(p: &[u8]) -> impl DoubleEndedIterator<Item = Vec<u8>> + '_ {
    p.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
}

fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    if parts.is_empty() {
        return b"/".to_vec();
    }
    let mut out = Vec::new();
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    out
}

#[cfg(test)]
mod tests;
