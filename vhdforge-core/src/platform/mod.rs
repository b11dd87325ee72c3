//! What differs between operating systems, behind functions every platform can call.
//!
//! The Windows system calls live in [`windows`] (compiled only there) behind safe wrappers;
//! the decisions around them (which error means "the VM holds the disk", where the state
//! folder is) are plain functions here, so they are unit-tested on every platform.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

pub mod clone;
pub mod mapped;
#[cfg(windows)]
pub mod windows;

/// `ERROR_SHARING_VIOLATION`: another handle was opened without sharing what we ask for.
const ERROR_SHARING_VIOLATION: i32 = 32;
/// `ERROR_LOCK_VIOLATION`: another process has locked the byte range we read.
const ERROR_LOCK_VIOLATION: i32 = 33;

/// The error code of an input another program holds open (see [`is_in_use`]).
pub const IN_USE_CODE: &str = "input.in_use";

/// What an "in use" error says after naming the file: the usual cause and what to do.
pub const IN_USE_HINT: &str = "is in use by another program — is the VM running or saved? \
     Shut the VM down (or turn it off and delete its saved state), or close the program that \
     holds the disk, then run again";

/// Whether a raw OS error code means "another program holds this file" on Windows: a running
/// or saved Hyper-V VM opens its disks without sharing write access (32), and holds byte-range
/// locks on them (33).
pub fn is_windows_in_use_code(raw: Option<i32>) -> bool {
    matches!(raw, Some(ERROR_SHARING_VIOLATION | ERROR_LOCK_VIOLATION))
}

/// Whether `e` (from this platform's OS) means another program holds the file: only on
/// Windows, where the codes above have that meaning (on Linux 32 is `EPIPE`).
pub fn is_in_use(e: &io::Error) -> bool {
    cfg!(windows) && is_windows_in_use_code(e.raw_os_error())
}

/// The per-user state folder (resume journals when the source's folder is read-only), from
/// the environment `var` gives, without creating it:
/// - Windows: `%LOCALAPPDATA%\vhdforge` (local, not roaming: journals name local files);
/// - elsewhere: `$XDG_STATE_HOME/vhdforge`, else `~/.local/state/vhdforge`.
///
/// Empty variables count as unset. `None` when nothing usable is set.
pub fn state_dir_from(windows: bool, var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let get = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = if windows {
        get("LOCALAPPDATA").or_else(|| get("USERPROFILE").map(|h| h.join("AppData").join("Local")))
    } else {
        get("XDG_STATE_HOME").or_else(|| get("HOME").map(|h| h.join(".local").join("state")))
    };
    base.map(|b| b.join("vhdforge"))
}

/// [`state_dir_from`] for this platform and process environment.
pub fn state_dir() -> Option<PathBuf> {
    state_dir_from(cfg!(windows), |k: &str| std::env::var_os(k))
}

/// Make stderr interpret ANSI escape sequences where that must be asked for (the Windows
/// console: `ENABLE_VIRTUAL_TERMINAL_PROCESSING`), and say whether it does. A classic
/// console that cannot (before Windows 10) gets `false`, so callers print no colour codes
/// that would show as garbage. Elsewhere a terminal always does.
pub fn enable_ansi_on_stderr() -> bool {
    #[cfg(windows)]
    {
        windows::enable_vt_on_stderr()
    }
    #[cfg(not(windows))]
    {
        true
    }
}

/// Bytes this user may still write on the file system holding the folder `dir`: `statvfs`'s
/// blocks available to unprivileged users on Unix, `GetDiskFreeSpaceExW`'s bytes available
/// to the caller (quotas counted) on Windows. `None` when the system does not say.
pub fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs is a plain C struct of integers; all-zero is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &raw mut st) };
        // The field types differ between platforms; both fit in u64.
        #[allow(clippy::useless_conversion)]
        let avail = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
        (rc == 0).then_some(avail)
    }
    #[cfg(windows)]
    {
        windows::free_bytes(dir).ok()
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = dir;
        None
    }
}

/// Whether `e` means the file system is full (or the user's quota is): `ENOSPC`/`EDQUOT` on
/// Unix, `ERROR_DISK_FULL`/`ERROR_HANDLE_DISK_FULL` on Windows.
pub fn is_out_of_space(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
    }
    #[cfg(windows)]
    {
        matches!(e.raw_os_error(), Some(112 | 39))
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = e;
        false
    }
}

/// Whether `e` means the user's disk quota is exceeded (`EDQUOT`; Windows has no separate
/// code for it).
pub fn is_over_quota(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(libc::EDQUOT)
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Whether the process with this id still runs: `Some` where the platform can tell
/// (Linux: `/proc`; Windows: `OpenProcess`), `None` elsewhere.
pub fn process_running(pid: u32) -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        Some(std::path::Path::new(&format!("/proc/{pid}")).exists())
    }
    #[cfg(windows)]
    {
        Some(windows::process_running(pid))
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        let _ = pid;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let m: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), OsString::from(v)))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn windows_state_dir_is_local_app_data() {
        // LOCALAPPDATA wins even when HOME is set (Git Bash, MSYS set one).
        let e = env(&[
            ("LOCALAPPDATA", r"C:\Users\ada\AppData\Local"),
            ("HOME", "/home/ada"),
            ("XDG_STATE_HOME", "/x"),
        ]);
        assert_eq!(
            state_dir_from(true, e),
            Some(PathBuf::from(r"C:\Users\ada\AppData\Local").join("vhdforge"))
        );
        // Without it, the profile's AppData\Local.
        let e = env(&[("LOCALAPPDATA", ""), ("USERPROFILE", r"C:\Users\ada")]);
        assert_eq!(
            state_dir_from(true, e),
            Some(
                PathBuf::from(r"C:\Users\ada")
                    .join("AppData")
                    .join("Local")
                    .join("vhdforge")
            )
        );
        assert_eq!(state_dir_from(true, env(&[("HOME", "/h")])), None);
    }

    #[test]
    fn unix_state_dir_is_xdg() {
        let e = env(&[
            ("XDG_STATE_HOME", "/s"),
            ("HOME", "/h"),
            ("LOCALAPPDATA", "C:"),
        ]);
        assert_eq!(state_dir_from(false, e), Some(PathBuf::from("/s/vhdforge")));
        let e = env(&[("XDG_STATE_HOME", ""), ("HOME", "/h")]);
        assert_eq!(
            state_dir_from(false, e),
            Some(PathBuf::from("/h/.local/state/vhdforge"))
        );
        // LOCALAPPDATA means nothing off Windows (it may leak in from a Wine prefix).
        assert_eq!(state_dir_from(false, env(&[("LOCALAPPDATA", "C:")])), None);
    }

    #[test]
    fn in_use_codes() {
        assert!(is_windows_in_use_code(Some(32)));
        assert!(is_windows_in_use_code(Some(33)));
        assert!(!is_windows_in_use_code(Some(5)));
        assert!(!is_windows_in_use_code(None));
        // On Linux 32 is EPIPE: never read as "in use".
        #[cfg(not(windows))]
        assert!(!is_in_use(&io::Error::from_raw_os_error(32)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_runs() {
        assert_eq!(process_running(std::process::id()), Some(true));
        assert_eq!(process_running(u32::MAX - 1), Some(false));
    }
}
