//! Safe wrappers around the few Win32 calls vhdforge needs (compiled on Windows only).
//!
//! Each wrapper owns its `unsafe` block and turns a `FALSE` return into the thread's last
//! error as an [`io::Error`], so callers see the same error type as on Linux.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::AsRawHandle;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use windows_sys::Win32::Foundation::{CloseHandle, GetLastError, ERROR_MORE_DATA};
use windows_sys::Win32::Storage::FileSystem::{
    GetDiskFreeSpaceExW, MoveFileExW, MOVEFILE_REPLACE_EXISTING, MOVEFILE_WRITE_THROUGH,
};
use windows_sys::Win32::System::Console::{
    GetConsoleMode, SetConsoleMode, ENABLE_VIRTUAL_TERMINAL_PROCESSING,
};
use windows_sys::Win32::System::Ioctl::{
    DUPLICATE_EXTENTS_DATA, FILE_ALLOCATED_RANGE_BUFFER, FSCTL_DUPLICATE_EXTENTS_TO_FILE,
    FSCTL_GET_INTEGRITY_INFORMATION, FSCTL_GET_INTEGRITY_INFORMATION_BUFFER,
    FSCTL_QUERY_ALLOCATED_RANGES, FSCTL_SET_SPARSE,
};
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
};
use windows_sys::Win32::System::IO::DeviceIoControl;

/// `GetExitCodeProcess`'s answer for a process that has not exited (`STILL_ACTIVE`).
const STILL_ACTIVE: u32 = 259;
/// `ERROR_ACCESS_DENIED`: the process exists but belongs to someone we may not query.
const ERROR_ACCESS_DENIED: i32 = 5;
/// Answers meaning "this file system has no such control code": FAT/exFAT, network shares
/// of servers that do not implement it, and Wine (which implements neither FSCTL).
const UNSUPPORTED: [i32; 3] = [
    1,  // ERROR_INVALID_FUNCTION
    50, // ERROR_NOT_SUPPORTED
    87, // ERROR_INVALID_PARAMETER
];

/// Mark `file` sparse (`FSCTL_SET_SPARSE`), so the size set afterwards and the ranges never
/// written take no clusters on NTFS and `ReFS`. An error means the file system has no sparse
/// files (FAT, exFAT); the caller decides whether that matters.
pub fn set_sparse(file: &File) -> io::Result<()> {
    let mut returned = 0u32;
    // SAFETY: a valid handle we own; FSCTL_SET_SPARSE with no input buffer means "set",
    // no output buffer is written; `returned` outlives the call (synchronous: no OVERLAPPED).
    let ok = unsafe {
        DeviceIoControl(
            file.as_raw_handle(),
            FSCTL_SET_SPARSE,
            std::ptr::null(),
            0,
            std::ptr::null_mut(),
            0,
            &raw mut returned,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The first allocated range of `file` at or after `offset` (below `len`), found with
/// `FSCTL_QUERY_ALLOCATED_RANGES`, the Windows counterpart of `SEEK_DATA`/`SEEK_HOLE`.
/// A file system that cannot answer (see [`UNSUPPORTED`]) gets "everything left is data",
/// so the caller reads it and tests it for zeros instead: slower, never wrong.
pub fn next_allocated(file: &File, offset: u64, len: u64) -> io::Result<Option<Range<u64>>> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if offset >= len {
        return Ok(None);
    }
    let (Ok(start), Ok(length)) = (i64::try_from(offset), i64::try_from(len - offset)) else {
        return Ok(Some(offset..len));
    };
    let query = FILE_ALLOCATED_RANGE_BUFFER {
        FileOffset: start,
        Length: length,
    };
    // Only the first range is needed: a one-entry answer with ERROR_MORE_DATA still holds it.
    let mut answer = [FILE_ALLOCATED_RANGE_BUFFER {
        FileOffset: 0,
        Length: 0,
    }];
    let mut returned = 0u32;
    // SAFETY: `query` and `answer` are live, correctly sized FILE_ALLOCATED_RANGE_BUFFERs
    // for the duration of this synchronous call on a handle we own.
    let ok = unsafe {
        DeviceIoControl(
            file.as_raw_handle(),
            FSCTL_QUERY_ALLOCATED_RANGES,
            (&raw const query).cast(),
            size_of_u32::<FILE_ALLOCATED_RANGE_BUFFER>(),
            answer.as_mut_ptr().cast(),
            size_of_u32::<[FILE_ALLOCATED_RANGE_BUFFER; 1]>(),
            &raw mut returned,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        // SAFETY: no preconditions; reads this thread's last error right after the call.
        let last = unsafe { GetLastError() };
        if last != ERROR_MORE_DATA {
            let e = io::Error::last_os_error();
            if e.raw_os_error().is_some_and(|c| UNSUPPORTED.contains(&c)) {
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::debug!(
                        "FSCTL_QUERY_ALLOCATED_RANGES is not supported here ({e}); reading \
                         the whole file and skipping zeros instead"
                    );
                }
                return Ok(Some(offset..len));
            }
            return Err(e);
        }
    }
    if (returned as usize) < std::mem::size_of::<FILE_ALLOCATED_RANGE_BUFFER>() {
        return Ok(None);
    }
    let r = &answer[0];
    let (Ok(s), Ok(n)) = (u64::try_from(r.FileOffset), u64::try_from(r.Length)) else {
        return Err(io::Error::other(
            "FSCTL_QUERY_ALLOCATED_RANGES returned a negative range",
        ));
    };
    let s = s.max(offset);
    let e = s.saturating_add(n).min(len);
    Ok((s < e).then_some(s..e))
}

fn size_of_u32<T>() -> u32 {
    u32::try_from(std::mem::size_of::<T>()).expect("a small struct")
}

/// `path` as a NUL-terminated UTF-16 string in the `\\?\` form when it is long, so paths
/// beyond `MAX_PATH` (260) work without the process being long-path aware.
fn wide(path: &Path) -> io::Result<Vec<u16>> {
    // Where the plain form stops working (248 for folders, 260 for files), take the
    // extended form; shorter paths stay as given (they read better in any error).
    const LONG: usize = 248;
    let abs = std::path::absolute(path)?;
    let s = abs.as_os_str();
    let long = (s.len() >= LONG)
        .then(|| s.to_str().and_then(crate::format::winpath::extended_length))
        .flatten();
    let os: &OsStr = long.as_deref().map_or(s, OsStr::new);
    let mut v: Vec<u16> = os.encode_wide().collect();
    if v.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a path holds a NUL character",
        ));
    }
    v.push(0);
    Ok(v)
}

/// Rename `from` to `to` with `MoveFileExW(MOVEFILE_WRITE_THROUGH)`: the call returns only
/// once the rename is on disk. Without `replace` an existing `to` (file, link, anything) is
/// an `AlreadyExists` error, decided atomically by the file system; with it a file there is
/// replaced.
pub fn rename(from: &Path, to: &Path, replace: bool) -> io::Result<()> {
    let (f, t) = (wide(from)?, wide(to)?);
    let mut flags = MOVEFILE_WRITE_THROUGH;
    if replace {
        flags |= MOVEFILE_REPLACE_EXISTING;
    }
    // SAFETY: both are NUL-terminated UTF-16 strings that outlive the call.
    if unsafe { MoveFileExW(f.as_ptr(), t.as_ptr(), flags) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes the caller may still write on the volume holding the folder `dir`
/// (`GetDiskFreeSpaceExW`: quotas counted).
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let mut d = wide(dir)?;
    // A share's root (`\\server\share`) must end in a backslash; any folder may.
    let sep = u16::from(b'\\');
    if d.len() >= 2 && d[d.len() - 2] != sep {
        d.insert(d.len() - 1, sep);
    }
    let mut avail = 0u64;
    // SAFETY: `d` is a NUL-terminated UTF-16 string and `avail` a valid out-pointer, both
    // outliving the call; the two totals are optional and passed as null.
    let ok = unsafe {
        GetDiskFreeSpaceExW(
            d.as_ptr(),
            &raw mut avail,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(avail)
}

/// Whether process `pid` still runs. A process we may not query (another user's) counts as
/// running: its temporary files are not ours to remove.
pub fn process_running(pid: u32) -> bool {
    // SAFETY: OpenProcess has no memory preconditions; a null handle is an error.
    let h = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if h.is_null() {
        return io::Error::last_os_error().raw_os_error() == Some(ERROR_ACCESS_DENIED);
    }
    let mut code = 0u32;
    // SAFETY: `h` is the valid process handle just opened; `code` outlives the call.
    let ok = unsafe { GetExitCodeProcess(h, &raw mut code) };
    // SAFETY: `h` is ours and closed once.
    unsafe { CloseHandle(h) };
    ok == 0 || code == STILL_ACTIVE
}

/// Ask the console behind stderr to interpret ANSI sequences; `false` when stderr is no
/// console or the console cannot (Windows before 10, some conhost settings).
pub fn enable_vt_on_stderr() -> bool {
    let h = io::stderr().as_raw_handle();
    let mut mode = 0u32;
    // SAFETY: `h` is the process's stderr handle (valid or not: the call then fails);
    // `mode` outlives the call.
    if unsafe { GetConsoleMode(h, &raw mut mode) } == 0 {
        // Not a console: a pipe or file, or a mintty/MSYS pty, which takes ANSI as it is.
        return true;
    }
    if mode & ENABLE_VIRTUAL_TERMINAL_PROCESSING != 0 {
        return true;
    }
    // SAFETY: as above, with a mode derived from the current one.
    unsafe { SetConsoleMode(h, mode | ENABLE_VIRTUAL_TERMINAL_PROCESSING) != 0 }
}

/// The cluster size of the volume holding `file`, as `ReFS` reports it with
/// `FSCTL_GET_INTEGRITY_INFORMATION` (the documented way to learn the alignment
/// `FSCTL_DUPLICATE_EXTENTS_TO_FILE` needs). NTFS, FAT and Wine do not answer: `None`.
pub fn refs_cluster_size(file: &File) -> Option<u64> {
    let mut info = FSCTL_GET_INTEGRITY_INFORMATION_BUFFER::default();
    let mut returned = 0u32;
    // SAFETY: a handle we own; `info` is a live, correctly sized output buffer for this
    // synchronous call; no input buffer.
    let ok = unsafe {
        DeviceIoControl(
            file.as_raw_handle(),
            FSCTL_GET_INTEGRITY_INFORMATION,
            std::ptr::null(),
            0,
            (&raw mut info).cast(),
            size_of_u32::<FSCTL_GET_INTEGRITY_INFORMATION_BUFFER>(),
            &raw mut returned,
            std::ptr::null_mut(),
        )
    };
    (ok != 0 && info.ClusterSizeInBytes != 0).then_some(u64::from(info.ClusterSizeInBytes))
}

/// Share `len` bytes of `src` at `src_offset` into `dst` at `dst_offset`
/// (`FSCTL_DUPLICATE_EXTENTS_TO_FILE`, `ReFS` block cloning). Both offsets and the length
/// must be multiples of the cluster size, both files on one volume, and `dst` sparse (or
/// the cloned range takes clusters of its own) and already at least `dst_offset + len`
/// long. Any refusal comes back as the OS error; the caller copies instead.
pub fn duplicate_extents(
    src: &File,
    src_offset: u64,
    dst: &File,
    dst_offset: u64,
    len: u64,
) -> io::Result<()> {
    let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "clone range beyond i64");
    let data = DUPLICATE_EXTENTS_DATA {
        FileHandle: src.as_raw_handle(),
        SourceFileOffset: i64::try_from(src_offset).map_err(|_| too_big())?,
        TargetFileOffset: i64::try_from(dst_offset).map_err(|_| too_big())?,
        ByteCount: i64::try_from(len).map_err(|_| too_big())?,
    };
    let mut returned = 0u32;
    // SAFETY: both handles are live for the call (borrowed `File`s); `data` is a live,
    // correctly sized input buffer; no output buffer; synchronous (no OVERLAPPED).
    let ok = unsafe {
        DeviceIoControl(
            dst.as_raw_handle(),
            FSCTL_DUPLICATE_EXTENTS_TO_FILE,
            (&raw const data).cast(),
            size_of_u32::<DUPLICATE_EXTENTS_DATA>(),
            std::ptr::null_mut(),
            0,
            &raw mut returned,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
