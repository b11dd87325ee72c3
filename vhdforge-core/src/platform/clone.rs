//! Block cloning: make a range of one file share the storage of a range of another on the
//! same file system, instead of copying bytes (`docs/architecture.md`, convert).
//!
//! - Linux: `FICLONERANGE` (XFS with reflink, btrfs, bcachefs, OCFS2). Offsets and length
//!   must be multiples of the file system block size.
//! - Windows: `FSCTL_DUPLICATE_EXTENTS_TO_FILE` (`ReFS`, Dev Drives). Offsets and length must
//!   be multiples of the cluster size; the target must be sparse and already long enough.
//!   Wine implements neither control code, so this path only runs on a real Windows.
//!
//! Every refusal is an ordinary `io::Error`: callers copy the range instead.
//! [`lasting_refusal`] tells the refusals that hold for every range of the two files.

use std::fs::File;
use std::io;

/// The alignment clones into `dst` need, in bytes (a power of two), or `None` when this
/// platform or file system cannot clone at all.
pub fn clone_alignment(dst: &File) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        linux_block_size(dst)
    }
    #[cfg(windows)]
    {
        // ReFS answers with its cluster size (4 or 64 KiB). Other volumes do not answer;
        // NTFS on recent Windows may still clone, so try with the largest ReFS cluster,
        // which every smaller cluster divides.
        Some(super::windows::refs_cluster_size(dst).unwrap_or(64 << 10))
            .filter(|a| a.is_power_of_two())
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        let _ = dst;
        None
    }
}

/// Share `len` bytes of `src` at `src_offset` into `dst` at `dst_offset`. Offsets and
/// length must be multiples of [`clone_alignment`]. On success the destination range reads
/// exactly as the source range; on error it may have been partly cloned (its content is
/// then still the source's, range by range) and the caller writes it itself.
pub fn clone_range(
    src: &File,
    src_offset: u64,
    dst: &File,
    dst_offset: u64,
    len: u64,
) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        linux_clone_range(src, src_offset, dst, dst_offset, len)
    }
    #[cfg(windows)]
    {
        super::windows::duplicate_extents(src, src_offset, dst, dst_offset, len)
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        let _ = (src, src_offset, dst, dst_offset, len);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// A refusal that holds for every range of the two files, not for one range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The output's file system cannot share blocks between files at all (ext4, tmpfs, XFS
    /// made without reflink; NTFS where Windows has no block cloning).
    Unsupported,
    /// The source lies on another file system (or volume) than the output.
    OtherFileSystem,
}

/// Whether `e`, an error of [`clone_range`], is a [`Refusal`] that no other range of the
/// same two files would escape. Other errors (a range the file system will not take, no
/// space for its metadata, I/O) are `None`: they are taken range by range.
///
/// On Linux the kernel compares the two files' super blocks before it asks the file
/// system, so a file system that cannot clone answers `EOPNOTSUPP` only when both files are
/// on it; a source elsewhere gets `EXDEV`.
pub fn lasting_refusal(e: &io::Error) -> Option<Refusal> {
    let code = e.raw_os_error()?;
    #[cfg(unix)]
    {
        match code {
            libc::EXDEV => Some(Refusal::OtherFileSystem),
            libc::EOPNOTSUPP | libc::ENOTTY | libc::ENOSYS => Some(Refusal::Unsupported),
            _ => None,
        }
    }
    #[cfg(windows)]
    {
        // ERROR_NOT_SAME_DEVICE: the two files are on different volumes. The volume has no
        // such control code: ERROR_INVALID_FUNCTION, ERROR_NOT_SUPPORTED (Wine answers so
        // too). ERROR_INVALID_PARAMETER is left out: it may be about one range only.
        match code {
            17 => Some(Refusal::OtherFileSystem),
            1 | 50 => Some(Refusal::Unsupported),
            _ => None,
        }
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = code;
        None
    }
}

#[cfg(target_os = "linux")]
fn linux_block_size(dst: &File) -> Option<u64> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: statfs is a plain C struct of integers; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a descriptor we own and a valid out-pointer.
    if unsafe { libc::fstatfs(dst.as_raw_fd(), &raw mut st) } != 0 {
        return None;
    }
    // `f_bsize` is the block size XFS and btrfs check clone ranges against.
    u64::try_from(st.f_bsize)
        .ok()
        .filter(|b| b.is_power_of_two() && *b >= 512)
}

#[cfg(target_os = "linux")]
fn linux_clone_range(
    src: &File,
    src_offset: u64,
    dst: &File,
    dst_offset: u64,
    len: u64,
) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let arg = libc::file_clone_range {
        src_fd: i64::from(src.as_raw_fd()),
        src_offset,
        // Never 0: for FICLONERANGE a zero length means "to the end of the source".
        src_length: if len == 0 { return Ok(()) } else { len },
        dest_offset: dst_offset,
    };
    loop {
        // SAFETY: both descriptors are open for the call (borrowed `File`s); `arg` is a
        // live `file_clone_range`, which the kernel only reads.
        let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONERANGE, &raw const arg) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
