//! Positional I/O: the small `&self` read trait every parser and reader goes through.
//!
//! Many threads read one image at once, so nothing here has a cursor. Files are read with
//! `pread` (`FileExt::read_exact_at`); sparse files report their data segments through
//! `SEEK_DATA`/`SEEK_HOLE`, so callers never read a hole.

use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// `n` as a `usize`, for a length or index already bounded by an in-memory buffer or a
/// validated cap. It saturates instead of truncating (`as` would): were a bound ever missed on
/// a target narrower than 64 bits, the allocation or slice check then fails loudly rather than
/// silently addressing the wrong bytes. On 64-bit targets it is the identity.
pub(crate) fn usize_from(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// `bytes` as lower-case hex, two digits a byte: the one spelling of hashes, ids and saved
/// bytes in journals and file names.
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing into a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A read-only byte source addressed by absolute offset.
pub trait ReadAt: Send + Sync + fmt::Debug {
    /// Fill `buf` from `offset`. Reading past the end is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Length in bytes (taken once at open; sources are not expected to change while open).
    fn size(&self) -> u64;

    /// The first data segment at or after `offset`, as a range clipped to the source size;
    /// `None` when only a hole (or nothing) follows. Sources that cannot tell report one
    /// segment covering everything.
    fn next_data(&self, offset: u64) -> io::Result<Option<Range<u64>>> {
        Ok((offset < self.size()).then(|| offset..self.size()))
    }

    /// Where this source lives, for messages.
    fn name(&self) -> String;

    /// The open file whose bytes these are, offset for offset, when the source is exactly
    /// that (not a view, overlay or memory): the uploader maps ranges of it.
    fn as_file(&self) -> Option<&File> {
        None
    }
}

/// Read `len` bytes at `offset` into a new buffer, refusing reads that would run past the
/// end of the source or exceed `cap` bytes (allocation guard against hostile size fields).
pub fn read_vec(src: &dyn ReadAt, offset: u64, len: u64, cap: u64) -> io::Result<Vec<u8>> {
    if len > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("refusing to read {len} bytes at {offset:#x}: more than the {cap}-byte limit for this structure"),
        ));
    }
    let end = offset
        .checked_add(len)
        .ok_or_else(|| eof(offset, len, src.size()))?;
    if end > src.size() {
        return Err(eof(offset, len, src.size()));
    }
    let mut v = vec![0u8; usize_from(len)];
    src.read_exact_at(&mut v, offset)?;
    Ok(v)
}

fn eof(offset: u64, len: u64, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("read of {len} bytes at {offset:#x} runs past the end of the file ({size} bytes)"),
    )
}

/// A regular file opened read-only.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    len: u64,
    path: PathBuf,
}

impl FileSource {
    /// Open `path` read-only.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = open_nonblocking(path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a directory, not a disk image",
            ));
        }
        if !is_file_or_block_device(&meta) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is not a regular file or block device (a FIFO, socket or character device), not a disk image",
            ));
        }
        clear_nonblocking(&file)?;
        let len = block_device_len(&file).unwrap_or(meta.len());
        Ok(FileSource {
            file,
            len,
            path: path.to_path_buf(),
        })
    }

    /// The path given at open.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Open read-only without ever blocking: on a FIFO a plain open waits for a writer
/// forever. Regular files and block devices ignore `O_NONBLOCK` for reads.
#[cfg(unix)]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Back to blocking reads once the file is known to be a file or block device: some
/// kernels turn `O_NONBLOCK` into "fail instead of waiting for the disk" on reads.
#[cfg(unix)]
fn clear_nonblocking(file: &File) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL take no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(unix))]
#[allow(clippy::unnecessary_wraps)] // the Unix version's signature
fn clear_nonblocking(_file: &File) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn is_file_or_block_device(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_file() || meta.file_type().is_block_device()
}

#[cfg(not(unix))]
fn is_file_or_block_device(meta: &std::fs::Metadata) -> bool {
    meta.is_file()
}

#[cfg(target_os = "linux")]
fn block_device_len(file: &File) -> Option<u64> {
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata().ok()?;
    if !meta.file_type().is_block_device() {
        return None;
    }
    let mut f = file;
    let end = io::Seek::seek(&mut f, io::SeekFrom::End(0)).ok()?;
    Some(end)
}

#[cfg(not(target_os = "linux"))]
fn block_device_len(_file: &File) -> Option<u64> {
    None
}

impl ReadAt for FileSource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| eof(offset, buf.len() as u64, self.len))?;
        if end > self.len {
            return Err(eof(offset, buf.len() as u64, self.len));
        }
        pread_exact(&self.file, buf, offset)
    }

    fn size(&self) -> u64 {
        self.len
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<Range<u64>>> {
        seek_data(&self.file, offset, self.len)
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn as_file(&self) -> Option<&File> {
        Some(&self.file)
    }
}

#[cfg(unix)]
fn pread_exact(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

#[cfg(windows)]
fn pread_exact(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Positional write of the whole buffer (used by the converter's output).
#[cfg(unix)]
pub fn pwrite_all(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(buf, offset)
}

/// Positional write of the whole buffer (used by the converter's output).
#[cfg(windows)]
pub fn pwrite_all(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_write(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The next data segment of `file` at or after `offset` via `SEEK_DATA`/`SEEK_HOLE`.
#[cfg(any(target_os = "linux", target_os = "freebsd", target_os = "macos"))]
pub fn seek_data(file: &File, offset: u64, len: u64) -> io::Result<Option<Range<u64>>> {
    use std::os::unix::io::AsRawFd;
    if offset >= len {
        return Ok(None);
    }
    let fd = file.as_raw_fd();
    let Ok(off) = libc::off_t::try_from(offset) else {
        return Ok(None);
    };
    // SAFETY: lseek on a valid descriptor we own; it has no memory effects. Concurrent
    // callers moving the shared file position is harmless: all reads are positional.
    let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
    let Ok(start) = u64::try_from(data) else {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            // Filesystems without SEEK_DATA support: everything is data.
            Some(libc::EINVAL | libc::EOPNOTSUPP) => Ok(Some(offset..len)),
            _ => Err(e),
        };
    };
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
    let Ok(end) = u64::try_from(hole) else {
        return Err(io::Error::last_os_error());
    };
    let end = end.min(len);
    Ok((start < end).then_some(start..end))
}

/// The next data segment of `file` at or after `offset`, by `FSCTL_QUERY_ALLOCATED_RANGES`
/// (everything is data where the file system cannot tell).
#[cfg(windows)]
pub fn seek_data(file: &File, offset: u64, len: u64) -> io::Result<Option<Range<u64>>> {
    crate::platform::windows::next_allocated(file, offset, len)
}

/// The next data segment: without `SEEK_DATA`, everything is data.
#[cfg(not(any(
    target_os = "linux",
    target_os = "freebsd",
    target_os = "macos",
    windows
)))]
pub fn seek_data(_file: &File, offset: u64, len: u64) -> io::Result<Option<Range<u64>>> {
    Ok((offset < len).then(|| offset..len))
}

/// An in-memory source, for tests and for fixtures built in memory.
#[derive(Clone)]
pub struct MemSource {
    data: Vec<u8>,
    name: String,
}

impl MemSource {
    /// Wrap bytes.
    pub fn new(data: Vec<u8>) -> Self {
        MemSource {
            data,
            name: "<memory>".into(),
        }
    }
    /// Wrap bytes under a name used in messages.
    pub fn named(data: Vec<u8>, name: impl Into<String>) -> Self {
        MemSource {
            data,
            name: name.into(),
        }
    }
}

impl fmt::Debug for MemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemSource({}, {} bytes)", self.name, self.data.len())
    }
}

impl ReadAt for MemSource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.data.len() as u64);
        match end {
            Some(end) => {
                buf.copy_from_slice(&self.data[usize_from(offset)..usize_from(end)]);
                Ok(())
            }
            None => Err(eof(offset, len, self.data.len() as u64)),
        }
    }

    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_at_once_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo has no other memory effects.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(FileSource::open(&fifo).map(|_| ()));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("opening a FIFO hung");
        assert!(r.unwrap_err().to_string().contains("not a regular file"));
        // Character devices are no disk images either.
        assert!(FileSource::open(Path::new("/dev/zero")).is_err());
    }
}
