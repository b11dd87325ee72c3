//! Files vhdforge creates: always new (never an existing file, never through a symbolic
//! link), complete before they get their final name, and never put in place of a device,
//! directory or other non-regular file.
//!
//! vhdforge often runs as root in folders other users can write to (a shared image store,
//! /tmp). A predictable temporary name opened with a plain create lets anyone plant a
//! symbolic link there and have vhdforge overwrite the file it points to; renaming over
//! `/dev/sdX` replaces the device node. So every file is created here:
//!
//! - [`create_new`]: `O_CREAT | O_EXCL | O_NOFOLLOW` (Windows: `CREATE_NEW` on the reparse
//!   point itself), so an existing name, a symbolic link included, is an error, never
//!   followed;
//! - [`TempFile`]: such a file in the target's folder (same file system, so the final rename
//!   is atomic) under a hidden name with a random part nobody can guess in advance, removed
//!   again unless [`TempFile::persist`] gave it the final name: flush, rename (refusing a
//!   non-regular target, or any existing target when asked), flush of the folder.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Longest piece of the target's file name kept in a temporary name, in bytes: file names
/// are limited to 255 bytes on common file systems, and the temporary name adds its tag
/// and random part to this.
const NAME_PREFIX_MAX: usize = 100;

/// Create `path` as a new, empty file opened for reading and writing. Fails with
/// `AlreadyExists` when anything at all is there, a symbolic link (even a dangling one)
/// included: nothing is followed, nothing existing is opened.
pub fn create_new(path: &Path) -> io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_EXCL alone already refuses a link at the last component; O_NOFOLLOW says so
        // explicitly and O_CLOEXEC keeps the descriptor out of child processes.
        o.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        // FILE_FLAG_OPEN_REPARSE_POINT: act on a symbolic link or junction itself; with
        // CREATE_NEW an existing one is then an error, never a way to another file.
        o.custom_flags(windows_sys::Win32::Storage::FileSystem::FILE_FLAG_OPEN_REPARSE_POINT);
    }
    o.open(path)
}

/// [`create_new`] readable and writable by the owner only (Unix): nobody else can open a
/// temporary while it is written, so nobody else can lock it either (red team rt13: a lock
/// taken by another user in the instant before the owner's). [`TempFile::open_up`] gives it
/// the usual mode before it gets its final name.
fn create_private(path: &Path) -> io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut o = std::fs::OpenOptions::new();
        o.read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        o.open(path)
    }
    #[cfg(not(unix))]
    {
        create_new(path)
    }
}

/// What is at a path, looked at without following a link at its last component (and then,
/// for a link, what the link leads to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupant {
    /// The link's content when the path is a symbolic link.
    pub link_to: Option<PathBuf>,
    /// What the path (or the link) leads to.
    pub kind: FileKind,
}

/// The type of a file system object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Nothing (for a link: it dangles).
    Missing,
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A character device (`/dev/null`, a tty ...).
    CharDevice,
    /// A block device (a disk, a loop device).
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// Anything else the platform has.
    Other,
}

impl FileKind {
    fn of(ft: std::fs::FileType) -> FileKind {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_char_device() {
                return FileKind::CharDevice;
            }
            if ft.is_block_device() {
                return FileKind::BlockDevice;
            }
            if ft.is_fifo() {
                return FileKind::Fifo;
            }
            if ft.is_socket() {
                return FileKind::Socket;
            }
        }
        if ft.is_file() {
            FileKind::Regular
        } else if ft.is_dir() {
            FileKind::Directory
        } else {
            FileKind::Other
        }
    }

    /// The kind of the file `meta` describes (a link only when taken with
    /// `symlink_metadata`, which then reads as [`FileKind::Other`]).
    pub fn of_metadata(meta: &std::fs::Metadata) -> FileKind {
        FileKind::of(meta.file_type())
    }

    /// What the kind of a file is called in messages ("a character device").
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Missing => "nothing",
            FileKind::Regular => "a regular file",
            FileKind::Directory => "a directory",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Fifo => "a named pipe (FIFO)",
            FileKind::Socket => "a socket",
            FileKind::Other => "a special file",
        }
    }
}

impl Occupant {
    /// What is at `path` now.
    pub fn of(path: &Path) -> io::Result<Occupant> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Occupant {
                    link_to: None,
                    kind: FileKind::Missing,
                })
            }
            Err(e) => return Err(e),
        };
        if !meta.file_type().is_symlink() {
            return Ok(Occupant {
                link_to: None,
                kind: FileKind::of(meta.file_type()),
            });
        }
        let link_to = std::fs::read_link(path)?;
        let kind = match std::fs::metadata(path) {
            Ok(m) => FileKind::of(m.file_type()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => FileKind::Missing,
            Err(e) => return Err(e),
        };
        Ok(Occupant {
            link_to: Some(link_to),
            kind,
        })
    }

    /// Nothing is there, not even a dangling link.
    pub fn is_vacant(&self) -> bool {
        self.link_to.is_none() && self.kind == FileKind::Missing
    }

    /// A rename may put a new file here: nothing, a regular file, or a link (replaced as a
    /// link: what it points to is never touched) that dangles or leads to a regular file.
    /// A device, directory, pipe or socket (or a link to one) is not something a disk
    /// image should replace.
    pub fn is_replaceable(&self) -> bool {
        matches!(self.kind, FileKind::Missing | FileKind::Regular)
    }
}

impl fmt::Display for Occupant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.link_to, self.kind) {
            (None, kind) => f.write_str(kind.describe()),
            (Some(to), FileKind::Missing) => write!(
                f,
                "a symbolic link to {}, which does not exist",
                to.display()
            ),
            (Some(to), kind) => write!(
                f,
                "a symbolic link to {} ({})",
                to.display(),
                kind.describe()
            ),
        }
    }
}

/// Whether [`TempFile::persist`] may replace what is at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Never: anything at the target (a dangling link included) is an error, decided
    /// atomically by the file system.
    Never,
    /// A regular file, or a link that dangles or leads to one ([`Occupant::is_replaceable`]);
    /// anything else is an error.
    RegularFile,
}

/// Why [`TempFile::persist`] did not give the file its final name.
#[derive(Debug)]
pub enum PersistError {
    /// Something is at the target and [`Replace::Never`] was asked.
    Exists(Occupant),
    /// The target is a device, directory, pipe or socket, or a link to one.
    NotReplaceable(Occupant),
    /// Flushing, renaming or flushing the folder failed.
    Io(io::Error),
}

impl fmt::Display for PersistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PersistError::Exists(o) => write!(f, "the target exists ({o})"),
            PersistError::NotReplaceable(o) => {
                write!(f, "the target is {o}, not a regular file")
            }
            PersistError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for PersistError {}

impl From<io::Error> for PersistError {
    fn from(e: io::Error) -> Self {
        PersistError::Io(e)
    }
}

/// A new file beside a target path, removed on drop unless [`persist`](TempFile::persist)
/// renamed it into place. A crash leaves it under its temporary name only, never a
/// partial file under the target's name.
#[derive(Debug)]
pub struct TempFile {
    file: Option<File>,
    path: PathBuf,
}

impl TempFile {
    /// Create a new temporary file in `target`'s folder, named
    /// `.<start of target's name>.vhdforge-<tag>-<pid>-<random>`. The process id lets a later
    /// run recognise temporaries of processes that died ([`remove_orphans`]); the random
    /// part makes the name impossible to plant in advance. Should a name be taken anyway,
    /// another random one is tried.
    pub fn beside(target: &Path, tag: &str) -> io::Result<TempFile> {
        let mut last = None;
        for _ in 0..8 {
            let random = uuid::Uuid::new_v4().simple().to_string();
            let path = target.with_file_name(format!(
                "{}{}-{}",
                temp_prefix(target, tag),
                std::process::id(),
                &random[..16]
            ));
            match create_private(&path) {
                Ok(file) if hold(&file, &path) => {
                    return Ok(TempFile {
                        file: Some(file),
                        path,
                    });
                }
                // Taken for an orphan before it was locked (its name leads elsewhere now):
                // not ours any more; another name.
                Ok(_) => last = Some(io::Error::other("the new temporary file was taken away")),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no temporary name available")))
    }

    /// The open file.
    ///
    /// # Panics
    ///
    /// Never: the file is only taken out by [`TempFile::persist`], which consumes `self`.
    pub fn file(&self) -> &File {
        self.file
            .as_ref()
            .expect("the file is only taken by persist, which consumes self")
    }

    /// Where the file is now.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Give the file the mode a plain new file would have (`0666` less the umask, Linux),
    /// for an output others may read; a temporary is made owner-only ([`create_private`]).
    /// Where the umask cannot be read it stays owner-only. Journals never call this.
    pub fn open_up(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        if let Some(umask) = current_umask() {
            use std::os::unix::fs::PermissionsExt;
            self.file()
                .set_permissions(std::fs::Permissions::from_mode(0o666 & !umask))?;
        }
        Ok(())
    }

    /// Flush the file, rename it to `target` (which must be in the same folder) as
    /// `replace` allows, then flush the folder so the new name survives a power loss.
    /// On any error the temporary file is removed and nothing is at `target` that was not
    /// there before.
    ///
    /// # Panics
    ///
    /// Never: the file is only taken out here, and this consumes `self`.
    pub fn persist(mut self, target: &Path, replace: Replace) -> Result<(), PersistError> {
        let file = self
            .file
            .take()
            .expect("the file is only taken by persist, which consumes self");
        file.sync_all()?;
        // Closed before the rename: Windows refuses to rename some open files. Elsewhere it
        // stays open, and so held (see [`hold`]), until the temporary name is gone.
        #[cfg(windows)]
        drop(file);
        #[cfg(windows)]
        {
            // MoveFileExW decides "is anything there" atomically (no hard-link dance) and,
            // with MOVEFILE_WRITE_THROUGH, returns once the new name is on disk (the
            // Windows counterpart of flushing the folder below).
            if replace == Replace::RegularFile {
                let occupant = Occupant::of(target)?;
                if !occupant.is_replaceable() {
                    return Err(PersistError::NotReplaceable(occupant));
                }
            }
            match crate::platform::windows::rename(
                &self.path,
                target,
                replace == Replace::RegularFile,
            ) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(PersistError::Exists(Occupant::of(target)?));
                }
                Err(e) => return Err(PersistError::Io(e)),
            }
        }
        #[cfg(not(windows))]
        match replace {
            Replace::RegularFile => {
                let occupant = Occupant::of(target)?;
                if !occupant.is_replaceable() {
                    return Err(PersistError::NotReplaceable(occupant));
                }
                std::fs::rename(&self.path, target)?;
            }
            Replace::Never => {
                // A hard link fails if anything has the name, atomically; the temporary
                // name is then dropped. File systems without hard links (FAT) get a rename
                // checked just before.
                match std::fs::hard_link(&self.path, target) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(&self.path);
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(PersistError::Exists(Occupant::of(target)?));
                    }
                    Err(e) => {
                        let occupant = Occupant::of(target)?;
                        if !occupant.is_vacant() {
                            return Err(PersistError::Exists(occupant));
                        }
                        if std::fs::rename(&self.path, target).is_err() {
                            return Err(PersistError::Io(e));
                        }
                    }
                }
            }
        }
        // The data is under the final name now: nothing for the guard to remove.
        self.path = PathBuf::new();
        sync_dir_of(target)?;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            self.file.take();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The process's umask, from `/proc/self/status` (reading it with `umask(2)` would change it
/// for a moment under other threads).
#[cfg(target_os = "linux")]
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// The temporary name's fixed start for `target` and `tag`, ending before the process id.
fn temp_prefix(target: &Path, tag: &str) -> String {
    let name = target
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let mut cut = name.len().min(NAME_PREFIX_MAX);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}.vhdforge-{tag}-", &name[..cut])
}

/// How long a new temporary may wait for its lock while someone else holds an exclusive
/// one: another run's [`remove_orphans`] probing it, for the time of one `unlink`.
#[cfg(unix)]
const HOLD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// An empty temporary nobody holds is taken for an orphan only when older than this: a
/// live one is empty and unlocked for the instant between its creation and its lock (on a
/// file system where it is locked at all).
const EMPTY_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Mark the new temporary `file` at `path` as in use for as long as this process keeps it
/// open (Unix: a shared `flock`, which the kernel drops when the process dies, however it
/// dies). [`remove_orphans`] leaves a held file alone whatever the process id in its name
/// says: that id may belong to another PID namespace (a container sharing the folder),
/// where `/proc` cannot see the owner, or be a container's pid 1, alive on the host.
///
/// Shared, not exclusive: anyone who may read the file can take a shared lock too (red team
/// rt13: an inotify watcher wins the race between creation and this lock), and that only
/// makes the file look held; an exclusive lock would then wait. Only a remover's brief
/// exclusive probe is waited out, and if the wait runs out the file is kept unlocked. (On an
/// SMB mount, where `flock` becomes a byte-range lock, a shared one still lets the
/// self-check's second handle read.) `false` when the name no longer leads to `file`
/// (another run took it, unlocked, for an orphan): the caller tries another name. A file
/// system without locks only loses this guard.
fn hold(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let started = std::time::Instant::now();
        while !on_smb(file) {
            match try_flock(file, libc::LOCK_SH) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if started.elapsed() >= HOLD_WAIT {
                        tracing::debug!(
                            "the new temporary file stays locked by another process; kept unlocked"
                        );
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => {
                    tracing::debug!(
                        "cannot lock the new temporary file ({e}); only its name marks it as ours"
                    );
                    break;
                }
            }
        }
        let (Ok(mine), Ok(there)) = (file.metadata(), std::fs::symlink_metadata(path)) else {
            return false;
        };
        mine.dev() == there.dev() && mine.ino() == there.ino()
    }
    #[cfg(not(unix))]
    {
        // Windows: no such guard. `LockFileEx` locks are mandatory and would block the
        // self-check's own reads through a second handle, and process ids there are global.
        let _ = (file, path);
        true
    }
}

/// What [`probe`] found at a temporary's name.
// Windows only ever finds `NoLocks`.
#[cfg_attr(not(unix), allow(dead_code))]
enum Probe {
    /// A regular file nobody holds, now locked by this process (dropping it unlocks).
    Free(File),
    /// A live process holds it, or it changed while looked at, or it is not ours to open.
    Held,
    /// The file system has no locks: only the name can tell.
    NoLocks,
    /// Not a regular file (a link, say): only the name can tell.
    NotRegular,
}

/// Whether a live process holds the temporary at `path` ([`hold`]), without following a
/// link and without opening anything but the regular file found there: on Linux it is
/// reached through an `O_PATH` descriptor first, so a device or FIFO swapped in is never
/// opened. Opened for writing, since an exclusive lock on NFS needs that.
#[cfg(unix)]
fn probe(path: &Path) -> Probe {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Probe::Held;
    };
    if !meta.file_type().is_file() {
        return Probe::NotRegular;
    }
    let same = |m: &std::fs::Metadata| {
        m.file_type().is_file() && m.ino() == meta.ino() && m.dev() == meta.dev()
    };
    let open_rw = |p: &Path, extra: libc::c_int| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC | extra)
            .open(p)
    };
    #[cfg(target_os = "linux")]
    let f = {
        use std::os::fd::AsRawFd;
        let Ok(pinned) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
        else {
            return Probe::Held;
        };
        if !pinned.metadata().is_ok_and(|m| same(&m)) {
            return Probe::Held;
        }
        // The same inode, opened for writing through the pinned descriptor (a magic link:
        // following it is the point).
        open_rw(
            Path::new(&format!("/proc/self/fd/{}", pinned.as_raw_fd())),
            0,
        )
    };
    #[cfg(not(target_os = "linux"))]
    let f = open_rw(path, libc::O_NOFOLLOW);
    let Ok(f) = f else {
        return Probe::Held;
    };
    if !f.metadata().is_ok_and(|m| same(&m)) {
        return Probe::Held;
    }
    if on_smb(&f) {
        return Probe::NoLocks;
    }
    match try_flock(&f, libc::LOCK_EX) {
        Ok(()) => Probe::Free(f),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS) => Probe::NoLocks,
            // Held, or a lock that cannot be tested: never taken for "nobody holds it".
            _ => Probe::Held,
        },
    }
}

#[cfg(not(unix))]
fn probe(_path: &Path) -> Probe {
    Probe::NoLocks
}

/// Whether `file` lies on an SMB mount (cifs, smb3). There `flock` becomes a byte-range
/// lock with Windows' rules, under which even a shared lock stops writes through the handle
/// that holds it: temporaries there are not locked, and [`probe`] says so, so the process id
/// decides as where there are no locks. (Read from the kernel's cifs client; no SMB server
/// was at hand to try it.)
#[cfg(unix)]
fn on_smb(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        const CIFS_MAGIC: i64 = 0xFF53_4D42;
        const SMB2_MAGIC: i64 = 0xFE53_4D42;
        // SAFETY: statfs is a plain C struct of integers; all-zero is a valid value.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a descriptor `file` owns and a valid out-pointer.
        if unsafe { libc::fstatfs(file.as_raw_fd(), &raw mut st) } != 0 {
            return false;
        }
        // The field's type differs between architectures.
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        let magic = i64::from(st.f_type) & 0xFFFF_FFFF;
        magic == CIFS_MAGIC || magic == SMB2_MAGIC
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
}

/// Take a `flock` of `kind` (`LOCK_SH`, `LOCK_EX`) on `file` without waiting; `WouldBlock`
/// when another open file holds a conflicting one. (`File::try_lock` is newer than this
/// crate's minimum Rust.)
#[cfg(unix)]
fn try_flock(file: &File, kind: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this `File` owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), kind | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Remove the temporaries [`TempFile::beside`] made for `target` with `tag` that no
/// process still writes (killed mid-way). Where the file system has locks ([`hold`]), that
/// is a regular file nobody holds, whatever the process id in its name (an empty one only
/// once older than [`EMPTY_GRACE`]). Otherwise the name decides: its process must no longer
/// run (Linux and Windows: [`crate::platform::process_running`]; elsewhere nothing is
/// removed). Links are removed as links. The files in `keep` (the operation's inputs) are
/// never removed, whatever their names: a name is only a guess that a file is an orphan.
pub fn remove_orphans(target: &Path, tag: &str, keep: &[PathBuf]) {
    let prefix = temp_prefix(target, tag);
    let Ok(entries) = std::fs::read_dir(folder_of(target)) else {
        return;
    };
    // By identity, not by path: one folder can be reached through two mounts (a bind
    // mount, a container's /in and /out), where the input's path differs (red team rt13).
    let keep: Vec<FileId> = keep.iter().filter_map(|p| FileId::of(p, true)).collect();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            // `PID-RANDOM`, or a bare `PID` left by releases before the random part.
            .and_then(|rest| {
                rest.split_once('-')
                    .map_or(rest, |(pid, _)| pid)
                    .parse::<u32>()
                    .ok()
            })
        else {
            continue;
        };
        let path = e.path();
        // The name itself, or what a link there leads to.
        let ids = [FileId::of(&path, false), FileId::of(&path, true)];
        if ids.iter().flatten().any(|id| keep.contains(id)) {
            continue;
        }
        match probe(&path) {
            Probe::Free(locked) => {
                let fresh_and_empty = locked.metadata().is_ok_and(|m| {
                    m.len() == 0
                        && m.modified()
                            .ok()
                            .and_then(|t| t.elapsed().ok())
                            .is_none_or(|age| age < EMPTY_GRACE)
                });
                if !fresh_and_empty {
                    // Removed while locked: a new run's `hold` waits, then finds its name gone.
                    let _ = std::fs::remove_file(&path);
                }
                drop(locked);
            }
            Probe::Held => {}
            Probe::NoLocks | Probe::NotRegular => {
                if pid != std::process::id() && crate::platform::process_running(pid) == Some(false)
                {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
}

/// A file's identity: its device and inode (Unix), or its canonical path elsewhere.
#[derive(PartialEq, Eq)]
enum FileId {
    #[cfg_attr(not(unix), allow(dead_code))]
    Inode(u64, u64),
    #[cfg_attr(unix, allow(dead_code))]
    Path(PathBuf),
}

impl FileId {
    /// The identity of `p` (of what a link at `p` leads to, with `follow`).
    fn of(p: &Path, follow: bool) -> Option<FileId> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let m = if follow {
                std::fs::metadata(p)
            } else {
                std::fs::symlink_metadata(p)
            };
            m.ok().map(|m| FileId::Inode(m.dev(), m.ino()))
        }
        #[cfg(not(unix))]
        {
            let _ = follow;
            std::fs::canonicalize(p).ok().map(FileId::Path)
        }
    }
}

/// The folder holding `path` (`.` for a bare name).
pub fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Ask for `file` (new and empty) to be sparse, so that sizing it and skipping its zero
/// ranges allocates nothing for them. On Unix files are sparse already; on Windows this is
/// `FSCTL_SET_SPARSE`, and a file system without sparse files (FAT, exFAT; Wine) only costs
/// disk space, so its refusal is logged, not an error.
pub fn mark_sparse(file: &File) {
    #[cfg(windows)]
    if let Err(e) = crate::platform::windows::set_sparse(file) {
        tracing::debug!("cannot mark the new file sparse ({e}); zero ranges will take space");
    }
    #[cfg(not(windows))]
    let _ = file;
}

/// Flush the folder holding `path`, so a rename or removal there survives a crash (Unix;
/// elsewhere the file system takes care of it). File systems that cannot flush a folder
/// (`EINVAL`) are not an error.
pub fn sync_dir_of(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        match File::open(folder_of(path)).and_then(|d| d.sync_all()) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            r => r,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// Make `file` readable and writable by its owner only (unix; nothing elsewhere). For
/// journals: [`read_trusted_small_file`] refuses one that group or others may write, so a
/// journal must not take looser bits from a permissive umask.
pub fn restrict_to_owner(file: &File) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// Read a small file vhdforge wrote earlier and is about to act on (a journal), refusing
/// anything that could have been put there by someone else or that could make the read
/// itself harmful. `Ok(None)` when nothing is at `path`.
///
/// Refused, with a message naming what was found (`code` is the error code, `what` names
/// the file in messages, e.g. "the resume journal"):
/// - a symbolic link (opened with `O_NOFOLLOW`: a link to `/dev/zero` would be read forever);
/// - anything but a regular file (opened with `O_NONBLOCK`, so a FIFO cannot hang the open;
///   the kind is then checked on the open descriptor, not on the name);
/// - on unix, a file owned by anyone but the effective user, root or `also_owner` (the
///   owner of the image the journal is about), or writable by group or others: in a shared folder
///   another user could otherwise plant a journal that makes vhdforge, running as root,
///   rewrite a file with bytes of their choosing;
/// - more than `max_bytes` (checked on the descriptor and again while reading, so a file
///   growing meanwhile is still cut off).
pub fn read_trusted_small_file(
    path: &Path,
    what: &str,
    code: &'static str,
    max_bytes: u64,
    also_owner: Option<u32>,
) -> crate::error::Result<Option<Vec<u8>>> {
    use crate::error::{Error, ErrorKind};
    use std::io::Read;
    let refuse = |why: String| {
        Error::new(
            ErrorKind::InvalidInput,
            code,
            format!(
                "{what} {} {why}; it was not used. Check who put it there; if it is yours, \
                 fix it or delete it and run again",
                path.display()
            ),
        )
    };
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        // Open a symbolic link or junction itself: its kind (not a regular file) then
        // refuses it below, as O_NOFOLLOW does on Unix.
        o.custom_flags(windows_sys::Win32::Storage::FileSystem::FILE_FLAG_OPEN_REPARSE_POINT);
    }
    let file = match o.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refuse(
                "is a symbolic link (a journal is always a regular file vhdforge wrote)".into(),
            ))
        }
        Err(e) => {
            return Err(Error::io(
                format!("cannot read {what} {}", path.display()),
                e,
            ))
        }
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("cannot stat {what} {}", path.display()), e))?;
    let kind = FileKind::of_metadata(&meta);
    if kind != FileKind::Regular {
        return Err(refuse(format!(
            "is {}, not a regular file",
            kind.describe()
        )));
    }
    // Windows files have ACLs, not an owner id and mode bits: the folder's ACL decides who
    // may plant a journal (%LOCALAPPDATA% is the user's own).
    #[cfg(not(unix))]
    let _ = also_owner;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let owner = meta.uid();
        // Root's files are trusted too: root can change anything anyway, and a journal root
        // left (a run as root, interrupted) must not lock its owner out of the image.
        if owner != me && owner != 0 && Some(owner) != also_owner {
            return Err(refuse(format!(
                "is owned by user id {owner}, not by you (user id {me}){}",
                also_owner
                    .map(|o| format!(" nor by the image's owner (user id {o})"))
                    .unwrap_or_default()
            )));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(refuse(format!(
                "has mode {mode:04o}: group or others may write it, so anyone could have changed it"
            )));
        }
    }
    if meta.len() > max_bytes {
        return Err(refuse(format!(
            "is {} bytes, more than the {max_bytes} bytes such a file can be",
            meta.len()
        )));
    }
    let mut buf = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(format!("cannot read {what} {}", path.display()), e))?;
    if buf.len() as u64 > max_bytes {
        return Err(refuse(format!(
            "grew past {max_bytes} bytes while being read"
        )));
    }
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_link_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        // A link at the exact name create_new is asked for: refused, victim untouched.
        let link = dir.path().join("new");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = create_new(&link).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        // A dangling link too (O_CREAT would otherwise create its target).
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("created-through-link"), &dangling).unwrap();
        assert_eq!(
            create_new(&dangling).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert!(!dir.path().join("created-through-link").exists());
        // Links planted at every name the old scheme used (and any the prefix predicts):
        // the temporary file is a new file of its own, the victim keeps its bytes.
        let target = dir.path().join("out.vhd");
        for planted in [
            format!("{}{}", temp_prefix(&target, "partial"), std::process::id()),
            "out.json.tmp-vhdforge".into(),
            "out.vhdforge-inplace-new".into(),
        ] {
            std::os::unix::fs::symlink(&victim, dir.path().join(planted)).unwrap();
        }
        let mut t = TempFile::beside(&target, "partial").unwrap();
        assert!(!std::fs::symlink_metadata(t.path())
            .unwrap()
            .file_type()
            .is_symlink());
        t.file.as_mut().unwrap().write_all(b"new data").unwrap();
        t.persist(&target, Replace::RegularFile).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&target).unwrap(), b"new data");
    }

    #[cfg(unix)]
    #[test]
    fn a_device_target_is_refused_and_stays_a_device() {
        let dir = tempfile::tempdir().unwrap();
        // /dev/null itself would do (rename across file systems fails anyway), so test the
        // check with a link to it in the same folder, and a FIFO, which needs no root.
        let link = dir.path().join("null-link");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo has no other memory effects.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        for (target, kind) in [
            (&link, FileKind::CharDevice),
            (&fifo, FileKind::Fifo),
            (&sub, FileKind::Directory),
        ] {
            for replace in [Replace::RegularFile, Replace::Never] {
                let t = TempFile::beside(target, "partial").unwrap();
                let tmp = t.path().to_path_buf();
                let e = t.persist(target, replace).unwrap_err();
                match (&e, replace) {
                    (PersistError::NotReplaceable(o), Replace::RegularFile)
                    | (PersistError::Exists(o), Replace::Never) => assert_eq!(o.kind, kind),
                    _ => panic!("{}: {e:?}", target.display()),
                }
                assert!(!tmp.exists(), "temporary left behind");
            }
        }
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert!(meta.file_type().is_symlink());
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/dev/null"));
        assert_eq!(Occupant::of(&fifo).unwrap().kind, FileKind::Fifo);
        assert_eq!(
            Occupant::of(&link).unwrap().to_string(),
            "a symbolic link to /dev/null (a character device)"
        );
        assert_eq!(names(dir.path()), ["fifo", "null-link", "sub"]);
    }

    #[test]
    fn a_crash_leaves_no_partial_file_under_the_final_name() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.vhd");
        std::fs::write(&target, b"old complete").unwrap();
        // Dropped before persist (an error, a panic unwinding): removed, target unchanged.
        {
            let mut t = TempFile::beside(&target, "partial").unwrap();
            t.file.as_mut().unwrap().write_all(b"half").unwrap();
        }
        assert_eq!(names(dir.path()), ["out.vhd"]);
        assert_eq!(std::fs::read(&target).unwrap(), b"old complete");
        // Killed (no drop): the partial data exists only under the temporary name, and
        // the next run removes it once its process is gone.
        let mut t = TempFile::beside(&target, "partial").unwrap();
        // Written to: an empty temporary nobody holds is spared for a while (it may be
        // between its creation and its lock).
        t.file.as_mut().unwrap().write_all(b"half").unwrap();
        let tmp = t.path().to_path_buf();
        // The same open file, so the same lock: how this test lets its "owner" die.
        let owner = t.file().try_clone().unwrap();
        std::mem::forget(t);
        assert_eq!(std::fs::read(&target).unwrap(), b"old complete");
        let dead = tmp.to_string_lossy().replace(
            &format!("-{}-", std::process::id()),
            &format!("-{}-", u32::MAX),
        );
        std::fs::rename(&tmp, &dead).unwrap();
        // And one in the old `.NAME.vhdforge-partial-PID` form.
        std::fs::write(
            dir.path().join(format!(
                "{}{}",
                temp_prefix(&target, "partial"),
                u32::MAX - 1
            )),
            b"old",
        )
        .unwrap();
        // Its process id seems dead, but its lock is held: a process of another PID
        // namespace (a container sharing the folder) still writes it. Kept; the old-form
        // one, which nobody holds, goes.
        remove_orphans(&target, "partial", &[]);
        let dead_name = Path::new(&dead).file_name().unwrap().to_str().unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(names(dir.path()), [dead_name, "out.vhd"]);
        }
        // Its owner dies (the kernel drops the lock): now it is an orphan.
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor `owner` owns; no memory is passed.
            assert_eq!(unsafe { libc::flock(owner.as_raw_fd(), libc::LOCK_UN) }, 0);
        }
        drop(owner);
        remove_orphans(&target, "partial", &[]);
        if cfg!(target_os = "linux") {
            assert_eq!(names(dir.path()), ["out.vhd"]);
        }
    }

    #[test]
    fn never_replace_refuses_anything_there() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.vhd");
        std::fs::write(&target, b"theirs").unwrap();
        let t = TempFile::beside(&target, "partial").unwrap();
        assert!(matches!(
            t.persist(&target, Replace::Never),
            Err(PersistError::Exists(Occupant {
                kind: FileKind::Regular,
                ..
            }))
        ));
        assert_eq!(std::fs::read(&target).unwrap(), b"theirs");
        assert_eq!(names(dir.path()), ["out.vhd"]);
        // Vacant: persisted, no temporary left.
        let fresh = dir.path().join("fresh.vhd");
        TempFile::beside(&fresh, "partial")
            .unwrap()
            .persist(&fresh, Replace::Never)
            .unwrap();
        assert_eq!(names(dir.path()), ["fresh.vhd", "out.vhd"]);
    }

    /// The upload journal is written through [`TempFile`]: links planted at its old fixed
    /// temporary name and at the predictable start of the new one are not followed.
    #[cfg(all(unix, feature = "upload"))]
    #[test]
    fn links_planted_beside_the_upload_journal_are_never_followed() {
        use crate::upload::journal;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("disk.raw");
        std::fs::write(&src, b"x").unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = journal::path_for(&src, "https://a/c/b", None);
        for planted in [
            path.with_extension("json.tmp-vhdforge"),
            PathBuf::from(format!(
                "{}{}",
                path.with_file_name(temp_prefix(&path, "journal")).display(),
                std::process::id()
            )),
        ] {
            std::os::unix::fs::symlink(&victim, planted).unwrap();
        }
        let id = journal::SourceIdentity::of(&src).unwrap();
        let j = journal::new("https://a/c/b", id, Vec::new(), [1; 16], 2, "h".into());
        journal::store(&path, &j).unwrap();
        journal::store(&path, &j).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(journal::load(&path, None).unwrap().is_some());
        assert_eq!(names(dir.path()).len(), 5, "{:?}", names(dir.path()));
    }

    #[test]
    fn long_target_names_get_short_temporary_names() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}.vhd", "é".repeat(123));
        assert_eq!(long.len(), 250);
        let target = dir.path().join(&long);
        let t = TempFile::beside(&target, "partial").unwrap();
        let tmp_name = t.path().file_name().unwrap().len();
        assert!(tmp_name < 160, "{tmp_name}");
        t.persist(&target, Replace::Never).unwrap();
        assert_eq!(names(dir.path()), [long]);
    }

    #[cfg(unix)]
    #[test]
    fn trusted_small_file_refuses_links_pipes_big_and_foreign_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let read = |p: &Path| read_trusted_small_file(p, "the journal", "test.code", 64, None);
        assert!(read(&dir.path().join("none")).unwrap().is_none());
        let ok = dir.path().join("ok");
        std::fs::write(&ok, b"hello").unwrap();
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&ok).unwrap().unwrap(), b"hello");
        // A link to an endless device: refused without reading a byte.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // A FIFO: refused at once (no writer would otherwise hang the open).
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo has no other memory effects.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read(&fifo).unwrap_err();
        assert!(e.to_string().contains("named pipe"), "{e}");
        // Over the cap: the message names the cap.
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 65]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = read(&big).unwrap_err();
        assert!(e.to_string().contains("64 bytes"), "{e}");
        // Writable by others: anyone could have written it.
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = read(&ok).unwrap_err();
        assert!(e.to_string().contains("mode 0666"), "{e}");
        assert_eq!(e.code(), "test.code");
    }
}

/// Why [`read_named_file`] gave nothing.
#[derive(Debug)]
pub enum NamedFileError {
    /// The open failed (missing, no permission, ...).
    Open(io::Error),
    /// Something other than a regular file is there (its kind, e.g. "a FIFO").
    NotAFile(&'static str),
    /// Reading failed.
    Read(io::Error),
    /// More than the limit the caller gave.
    TooLarge,
}

/// Read a small file the user named (a CA bundle, a token file) without ever hanging or
/// reading without end: the open never blocks (a FIFO waits for a writer forever
/// otherwise), anything but a regular file is refused on the open descriptor (so
/// `/dev/zero` is not read), and more than `max_bytes` is refused, checked while reading.
/// Symbolic links are followed: the user chose the name.
pub fn read_named_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, NamedFileError> {
    use std::io::Read as _;
    // Refused before the open too: opening is itself an effect on some kinds (a FIFO's
    // blocked writer is let through, a tape rewinds, a watchdog is armed). The descriptor
    // is still checked below (the name may be replaced in between).
    if let Ok(m) = std::fs::metadata(path) {
        let kind = FileKind::of_metadata(&m);
        if kind != FileKind::Regular {
            return Err(NamedFileError::NotAFile(kind.describe()));
        }
    }
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC);
    }
    let file = o.open(path).map_err(NamedFileError::Open)?;
    let kind = FileKind::of_metadata(&file.metadata().map_err(NamedFileError::Read)?);
    if kind != FileKind::Regular {
        return Err(NamedFileError::NotAFile(kind.describe()));
    }
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(NamedFileError::Read)?;
    if bytes.len() as u64 > max_bytes {
        return Err(NamedFileError::TooLarge);
    }
    Ok(bytes)
}

#[cfg(all(test, unix))]
mod named_file_tests {
    use super::*;

    /// Red team RT6: the open itself has effects on some kinds of file (a FIFO's blocked
    /// writer is let through and then gets `EPIPE`; a tape rewinds, a watchdog is armed):
    /// a name that is not a regular file is refused before it is opened.
    #[test]
    fn a_fifo_is_refused_without_being_opened() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("token.fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo has no other memory effects.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                // Blocks until a reader opens the FIFO.
                let _w = std::fs::OpenOptions::new().write(true).open(&fifo);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        let e = read_named_file(&fifo, 1024).unwrap_err();
        assert!(matches!(e, NamedFileError::NotAFile(_)), "{e:?}");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let released = writer.is_finished();
        // Let the writer go (open for reading ourselves), then wait for it.
        if !released {
            use std::os::unix::fs::OpenOptionsExt;
            let _r = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .unwrap();
            writer.join().unwrap();
        }
        assert!(
            !released,
            "read_named_file opened the FIFO (its writer was let through)"
        );
        // Through a symbolic link too, and a directory and /dev/zero still refused.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(matches!(
            read_named_file(&link, 1024),
            Err(NamedFileError::NotAFile(_))
        ));
        assert!(matches!(
            read_named_file(dir.path(), 1024),
            Err(NamedFileError::NotAFile(_))
        ));
        let f = dir.path().join("big");
        std::fs::write(&f, vec![b'a'; 2048]).unwrap();
        assert!(matches!(
            read_named_file(&f, 1024),
            Err(NamedFileError::TooLarge)
        ));
        assert_eq!(read_named_file(&f, 2048).unwrap().len(), 2048);
    }
}
