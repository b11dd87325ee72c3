//! `vhdforge volumes`, `vhdforge ls` and `vhdforge cat`: the guest's volumes and files, read
//! offline through the guest layer (partitions, LVM, ext4/XFS/FAT/NTFS), whatever the image
//! format. Nothing here knows a file-system format: a volume is chosen with
//! `DiskVolumes::choose` and read through the `FileSystem` trait.
//!
//! Output streams: `ls -R` prints each directory as it is read (text and `--json` alike) and
//! `cat` copies in fixed buffers, so memory does not grow with the tree or the file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use serde_json::json;
use vhdforge_core::guest::fs::{FileId, FileSystem, FileType, Stat};
use vhdforge_core::guest::text::must_escape;
use vhdforge_core::guest::{scan, DiskVolumes, OsFamily, Scheme};
use vhdforge_core::{DiskImage, ErrorKind, OpenOptions};

use crate::ui::{bytes, Ui};

/// Directories nested deeper than this are not entered by `ls -R` (a damaged file system can
/// make a directory its own descendant; Linux paths cannot be deeper than 2048 anyway).
const MAX_DEPTH: usize = 256;
/// Directories `ls -R` lists at most. The depth limit alone does not bound the work: a
/// damaged file system whose directory holds two links back to itself has 2^256 paths
/// within it. Real guests hold tens of thousands of directories. Cycles are recognised by
/// file identity (`FileSystem::file_id_resolved`); this bounds the walk where a reader
/// cannot tell which file a directory is.
const MAX_DIRECTORIES: usize = 1_000_000;
/// `cat` copies in pieces of this size: memory stays flat whatever the file's size.
const CAT_BUFFER_BYTES: usize = 1 << 20;

const VOLUME_HELP: &str = "The volume to read: a partition number (as `vhdforge volumes` shows), \
an LVM vg/lv, or a file-system label or UUID. Default: the volume holding the OS root \
(/etc/os-release or Windows/System32/config), or the only file system there is.";

/// List the partitions and volumes of a disk and say which one holds the OS root.
#[derive(clap::Args, Debug)]
#[command(
    long_about = "List the partitions and volumes of a disk image (raw, VHD, VHDX or a \
differencing chain): number, start, size, partition type, file system, label, UUID, LVM vg/lv, \
and which one holds the operating system's root. The NAME column is what `ls`/`cat --volume` \
take. A disk with no partition table that is itself a file system (mkfs.ext4, mkfs.xfs, \
mkntfs -F or mkfs.vfat on the whole disk) is one volume, `disk` (or `--volume 0`).

Labels are the guest's text: in the table, control characters, bidirectional controls \
(U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C) and invisible format characters \
(U+200B, U+FEFF, ...) are printed as their UTF-8 bytes, each as \\xNN (a label must not \
read as another); --json keeps them exact.

Examples:
  vhdforge volumes disk.vhdx
  vhdforge volumes --json disk.vhdx | jq '.volumes[] | select(.os_root)'

Exit 0 when the disk was read, 2 when it could not be."
)]
pub struct VolumesArgs {
    /// The disk image.
    pub image: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// List files inside a disk image's guest file system (no mount, no root needed).
#[derive(clap::Args, Debug)]
#[command(
    long_about = "List a directory (or one entry) of the file system inside a disk image, \
offline: no mount, no root, no helper VM; raw, VHD, VHDX and differencing chains alike, ext2/3/4, \
XFS and FAT (NTFS where supported).

PATH is absolute inside the volume (symlinks are followed inside the guest, never on the host). \
Entries are listed in the order the directory stores them; -R lists subdirectories after their \
parent's entries, at most 256 levels deep; a directory that is one of its own ancestors again \
(a damaged file system) is listed but not entered, and reported on stderr.

Names that are not UTF-8 (Linux names are bytes) are printed with each invalid byte as \\xNN. \
So is each UTF-8 byte of a character that would make a name move the cursor or read as \
another: control characters, bidirectional controls (U+202A-U+202E, U+2066-U+2069, U+200E, \
U+200F, U+061C) and invisible format characters (zero-width space U+200B, U+FEFF, soft \
hyphen, ...): `a<U+202E>txt.exe` is printed `a\\xe2\\x80\\xaetxt.exe`, and a backslash as \
\\\\. In --json, `path` and `target` are exact (the lossy UTF-8 form, U+FFFD, for invalid \
bytes) and `path_escaped` / `target_escaped` appear with the \\xNN form when the name is \
not UTF-8.

--json prints ONE array of {\"path\", \"type\": \"file\"|\"dir\"|\"symlink\"|\"other\", \"size\", \
\"mode\", \"uid\", \"gid\", \"mtime\", \"mtime_nsec\", \"target\"}; mode is the permission bits as a \
number (0o644 = 420), mtime seconds since 1970 UTC.

Examples:
  vhdforge ls disk.vhdx /etc
  vhdforge ls --long disk.vhdx /boot/grub2/grub.cfg
  vhdforge ls -R --json --volume 1 disk.vhdx / > esp.json

Exit 0 when everything was listed, 2 on an error (no such file, not a directory, unsupported or \
encrypted volume, a damaged file system); with -R a directory that cannot be read is reported on \
stderr and the listing goes on, then exits 2."
)]
pub struct LsArgs {
    /// The disk image.
    pub image: PathBuf,
    /// The absolute guest path to list.
    #[arg(default_value = "/")]
    pub path: String,
    /// List subdirectories recursively.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Show type and mode, owner, size, modification time and link target.
    #[arg(short, long)]
    pub long: bool,
    /// Print one JSON array instead of text.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_name = "V", help = VOLUME_HELP)]
    pub volume: Option<String>,
}

/// Print a file from inside a disk image on stdout, exactly (binary-safe).
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Print a regular file from the file system inside a disk image on \
stdout, byte for byte: binary-safe, holes read as zeros, streamed in 1 MiB pieces so memory does \
not grow with the file. Symlinks are followed inside the guest.

Examples:
  vhdforge cat disk.vhdx /etc/default/grub
  vhdforge cat --volume 1 disk.vhdx /EFI/ubuntu/grub.cfg
  vhdforge cat disk.vhdx /var/log/messages | tail

Exit 0 when the whole file was written (or the reader closed the pipe), 2 on an error."
)]
pub struct CatArgs {
    /// The disk image.
    pub image: PathBuf,
    /// The absolute guest path of a regular file.
    pub path: String,
    #[arg(long, value_name = "V", help = VOLUME_HELP)]
    pub volume: Option<String>,
}

fn open_image(path: &Path) -> Result<Arc<dyn DiskImage>> {
    let img = vhdforge_core::open(path, &OpenOptions::default())
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Arc::from(img))
}

fn scan_image(path: &Path) -> Result<DiskVolumes> {
    let img = open_image(path)?;
    scan(&img).with_context(|| format!("cannot read the volumes of {}", path.display()))
}

/// The file system `--volume` (or the default rule) names.
fn open_fs(image: &Path, volume: Option<&str>) -> Result<Box<dyn FileSystem>> {
    let vols = scan_image(image)?;
    let v = vols.choose(volume)?;
    let fs = v
        .open()
        .with_context(|| format!("cannot read volume {} of {}", v.name, image.display()))?;
    Ok(fs)
}

// ---------------------------------------------------------------------------------------
// volumes

/// `vhdforge volumes`.
pub fn run_volumes(a: &VolumesArgs, ui: &Ui) -> Result<ExitCode> {
    let v = scan_image(&a.image)?;
    let chosen = v.choose(None).ok().map(|x| x.name.clone());
    if a.json {
        ui.print_json(&json!({
            "path": a.image.display().to_string(),
            "scheme": v.table.scheme,
            "volumes": v.volumes,
            "default": chosen,
            "findings": v.findings,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let scheme = match v.table.scheme {
        Scheme::Gpt => "GPT partition table",
        Scheme::Mbr => "MBR partition table",
        Scheme::None => "no partition table",
    };
    let mut s = format!("{}: {scheme}\n", a.image.display());
    let rows: Vec<[String; 7]> = v
        .volumes
        .iter()
        .map(|x| {
            [
                x.name.clone(),
                bytes(x.start_bytes),
                bytes(x.size_bytes),
                x.type_name.clone(),
                x.filesystem.to_string(),
                // The guest's text: escaped like names (an escape sequence or line feed in a
                // label must not rewrite the terminal or forge a row).
                x.label
                    .as_deref()
                    .map(|l| escape(l.as_bytes()))
                    .unwrap_or_default(),
                format!(
                    "{}{}",
                    x.uuid.clone().unwrap_or_default(),
                    match x.os_root {
                        Some(OsFamily::Linux) => "  [Linux root]",
                        Some(OsFamily::Windows) => "  [Windows root]",
                        None => "",
                    }
                ),
            ]
        })
        .collect();
    let head = ["NAME", "START", "SIZE", "TYPE", "FS", "LABEL", "UUID"];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    s += &line(&head);
    for r in &rows {
        s += &line(&r.each_ref().map(String::as_str));
    }
    if rows.is_empty() {
        s += "(no partition or volume)\n";
    }
    match &chosen {
        Some(n) => s += &format!("ls/cat read volume {n} unless --volume says otherwise\n"),
        None => s += "ls/cat need --volume NAME on this disk\n",
    }
    for f in &v.findings {
        s += &format!("  {}\n", crate::ui::terminal_safe(&f.to_string()));
    }
    ui.print(&s)?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------
// ls

/// A guest name or path for display: valid UTF-8 stays as it is, each invalid byte becomes
/// `\xNN`, and so does each byte of a character [`must_escape`] names — a control character
/// (a name must not move the terminal's cursor), a bidirectional control or an invisible
/// format character (a name must not show as another: `a\u{202E}txt.exe` would read
/// `aexe.txt`); a backslash becomes `\\` so the escaped form is unambiguous. `ls`,
/// `volumes` and `preflight` print guest names, labels and link targets through this.
pub fn escape(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else if must_escape(c) {
                let mut b = [0u8; 4];
                for byte in c.encode_utf8(&mut b).bytes() {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::Regular => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        _ => "other",
    }
}

/// One entry as `ls --json` prints it.
fn entry_json(path: &[u8], st: &Stat) -> serde_json::Value {
    let mut v = json!({
        "path": String::from_utf8_lossy(path),
        "type": type_name(st.file_type),
        "size": st.size,
        "mode": st.mode,
        "uid": st.uid,
        "gid": st.gid,
        "mtime": st.mtime.seconds,
        "mtime_nsec": st.mtime.nanoseconds,
        "target": st.link_target.as_deref().map(String::from_utf8_lossy),
    });
    if std::str::from_utf8(path).is_err() {
        v["path_escaped"] = json!(escape(path));
    }
    if let Some(t) = &st.link_target {
        if std::str::from_utf8(t).is_err() {
            v["target_escaped"] = json!(escape(t));
        }
    }
    v
}

/// `drwxr-xr-x` as `ls -l` prints it.
fn mode_string(st: &Stat) -> String {
    let t = match st.file_type {
        FileType::Regular => '-',
        FileType::Directory => 'd',
        FileType::Symlink => 'l',
        FileType::CharDevice => 'c',
        FileType::BlockDevice => 'b',
        FileType::Fifo => 'p',
        FileType::Socket => 's',
    };
    let m = st.mode;
    let bit = |mask: u16, c: char| if m & mask != 0 { c } else { '-' };
    let special = |x: bool, special: bool, lower: char, upper: char| match (special, x) {
        (true, true) => lower,
        (true, false) => upper,
        (false, true) => 'x',
        (false, false) => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(special(m & 0o100 != 0, m & 0o4000 != 0, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(special(m & 0o010 != 0, m & 0o2000 != 0, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(special(m & 0o001 != 0, m & 0o1000 != 0, 't', 'T'));
    s
}

/// `YYYY-MM-DD HH:MM:SS` UTC for seconds since 1970 (proleptic Gregorian calendar).
fn utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    // Days to civil date: eras of 400 years (146 097 days), March-based years.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Where `ls` writes: a text line or one element of the JSON array per entry.
struct Sink<W: Write> {
    out: W,
    json: bool,
    long: bool,
    quiet: bool,
    first: bool,
}

impl<W: Write> Sink<W> {
    fn begin(&mut self) -> std::io::Result<()> {
        if self.json {
            self.out.write_all(b"[")?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &[u8], shown_name: &[u8], st: &Stat) -> std::io::Result<()> {
        if self.json {
            let sep: &[u8] = if self.first { b"\n  " } else { b",\n  " };
            self.first = false;
            self.out.write_all(sep)?;
            self.out
                .write_all(entry_json(path, st).to_string().as_bytes())?;
            return Ok(());
        }
        if self.quiet {
            return Ok(());
        }
        if self.long {
            let mut line = format!(
                "{} {:>5} {:>5} {:>12} {} {}",
                mode_string(st),
                st.uid,
                st.gid,
                st.size,
                utc(st.mtime.seconds),
                escape(shown_name)
            );
            if let Some(t) = &st.link_target {
                line.push_str(" -> ");
                line.push_str(&escape(t));
            }
            line.push('\n');
            self.out.write_all(line.as_bytes())
        } else {
            self.out
                .write_all(format!("{}\n", escape(shown_name)).as_bytes())
        }
    }

    /// The `dir:` heading `ls -R` prints before each directory's entries.
    fn heading(&mut self, dir: &[u8], first: bool) -> std::io::Result<()> {
        if self.json || self.quiet {
            return Ok(());
        }
        let sep = if first { "" } else { "\n" };
        self.out
            .write_all(format!("{sep}{}:\n", escape(dir)).as_bytes())
    }

    fn end(&mut self) -> std::io::Result<()> {
        if self.json {
            self.out
                .write_all(if self.first { b"]\n" } else { b"\n]\n" })?;
        }
        self.out.flush()
    }
}

fn child(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// `vhdforge ls`.
pub fn run_ls(a: &LsArgs, ui: &Ui) -> Result<ExitCode> {
    let fs = open_fs(&a.image, a.volume.as_deref())?;
    let path = a.path.as_bytes();
    // A symlink named on the command line is listed as itself, unless it leads to a
    // directory, which is listed (as `ls` does without -l).
    let st = fs.lstat(path)?;
    let top = if st.file_type == FileType::Symlink
        && fs
            .stat(path)
            .is_ok_and(|s| s.file_type == FileType::Directory)
    {
        fs.resolve(path, true)?
    } else if st.file_type == FileType::Directory {
        fs.resolve(path, false)?
    } else {
        Vec::new()
    };
    let stdout = std::io::stdout();
    let mut sink = Sink {
        out: std::io::BufWriter::with_capacity(64 << 10, stdout.lock()),
        json: a.json,
        long: a.long,
        quiet: ui.is_quiet(),
        first: true,
    };
    let result = if top.is_empty() {
        sink.begin()
            .and_then(|()| sink.entry(path, path, &st))
            .and_then(|()| sink.end())
            .map(|()| true)
    } else {
        list_tree(fs.as_ref(), &top, a.recursive, &mut sink)
    };
    match result {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => Ok(ExitCode::from(2)),
        // The reader went away (`| head`): what it wanted was written.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("writing the listing to stdout")),
    }
}

/// A directory `ls -R` still has to list: its path, depth, and the identities of the
/// directories from it up to the top, which is how a directory that links back to one of
/// them is recognised.
struct Pending {
    dir: Vec<u8>,
    depth: usize,
    /// `dir`'s identity, then its parent's and so on up to the top.
    ancestors: Rc<Chain>,
}

/// One directory's identity (`None` when the reader cannot tell) and its parent's chain:
/// siblings share their parent's chain, so the pending directories cost one link each.
struct Chain {
    id: Option<FileId>,
    up: Option<Rc<Chain>>,
}

impl Chain {
    /// How many levels above the chain's directory `id` is (0: the directory itself).
    fn levels_to(self: &Rc<Chain>, id: FileId) -> Option<usize> {
        let mut at = Some(self);
        let mut n = 0;
        while let Some(c) = at {
            if c.id == Some(id) {
                return Some(n);
            }
            n += 1;
            at = c.up.as_ref();
        }
        None
    }
}

/// List `top` (and with `recursive` its subdirectories, depth first, each after its parent's
/// entries). A directory that cannot be read is reported on stderr and skipped; returns
/// whether everything was listed. Only the paths of directories still to visit are held.
///
/// A directory whose identity is one of its ancestors' (a damaged file system can link a
/// directory back to one above it, or twice to itself) is listed as an entry but not
/// entered, and reported as a cycle naming both paths: entering it would list the same
/// directories again without end. `MAX_DEPTH` and `MAX_DIRECTORIES` remain for readers
/// that cannot say which file a path is.
fn list_tree<W: Write>(
    fs: &dyn FileSystem,
    top: &[u8],
    recursive: bool,
    sink: &mut Sink<W>,
) -> std::io::Result<bool> {
    let mut all_ok = true;
    let id_of = |p: &[u8]| fs.file_id_resolved(p).ok().flatten();
    // Popped last first; each directory's subdirectories are pushed in reverse so they are
    // visited in the order they were listed.
    let mut todo = vec![Pending {
        dir: top.to_vec(),
        depth: 0,
        ancestors: Rc::new(Chain {
            id: if recursive { id_of(top) } else { None },
            up: None,
        }),
    }];
    sink.begin()?;
    let mut first_dir = true;
    let mut listed_dirs = 0usize;
    while let Some(Pending {
        dir,
        depth,
        ancestors,
    }) = todo.pop()
    {
        listed_dirs += 1;
        if listed_dirs > MAX_DIRECTORIES {
            eprintln!(
                "vhdforge: stopping after {MAX_DIRECTORIES} directories: the file system is damaged (a directory reachable from itself) or larger than any guest ls -R is meant for; list a subdirectory instead"
            );
            all_ok = false;
            break;
        }
        if recursive {
            sink.heading(&dir, first_dir)?;
        }
        first_dir = false;
        let mut subdirs = Vec::new();
        let mut io_err = None;
        let listed = fs.list_stat_resolved(&dir, &mut |name, st| {
            let p = child(&dir, name);
            let st = match st {
                Ok(s) => s,
                Err(err) => {
                    eprintln!(
                        "vhdforge: cannot stat {}: {}",
                        escape(&p),
                        crate::ui::terminal_safe(&err.to_string())
                    );
                    all_ok = false;
                    return true;
                }
            };
            if let Err(w) = sink.entry(&p, name, &st) {
                io_err = Some(w);
                return false;
            }
            if recursive && st.file_type == FileType::Directory {
                subdirs.push(p);
            }
            true
        });
        if let Some(e) = io_err {
            return Err(e);
        }
        if let Err(err) = listed {
            eprintln!(
                "vhdforge: cannot list {}: {}",
                escape(&dir),
                crate::ui::terminal_safe(&err.to_string())
            );
            all_ok = false;
        }
        if depth + 1 > MAX_DEPTH && !subdirs.is_empty() {
            eprintln!(
                "vhdforge: not entering the {} directories under {}: deeper than {MAX_DEPTH} levels (a damaged file system can make a directory its own descendant)",
                subdirs.len(),
                escape(&dir)
            );
            all_ok = false;
            continue;
        }
        let mut next = Vec::with_capacity(subdirs.len());
        for d in subdirs {
            let id = id_of(&d);
            if let Some(up) = id.and_then(|id| ancestors.levels_to(id)) {
                eprintln!(
                    "vhdforge: not entering {}: it is the directory {} again (a cycle: the file system is damaged; `fsck` in the guest repairs it)",
                    escape(&d),
                    escape(&ancestor_path(&dir, up))
                );
                all_ok = false;
                continue;
            }
            next.push(Pending {
                dir: d,
                depth: depth + 1,
                ancestors: Rc::new(Chain {
                    id,
                    up: Some(Rc::clone(&ancestors)),
                }),
            });
        }
        todo.extend(next.into_iter().rev());
    }
    sink.end()?;
    Ok(all_ok)
}

/// The path `up` levels above the directory `dir` (`dir` itself for 0).
fn ancestor_path(dir: &[u8], up: usize) -> Vec<u8> {
    let mut p = dir.to_vec();
    for _ in 0..up {
        match p.iter().rposition(|&b| b == b'/') {
            Some(0) | None => return b"/".to_vec(),
            Some(i) => p.truncate(i),
        }
    }
    p
}

// ---------------------------------------------------------------------------------------
// cat

/// `vhdforge cat`.
pub fn run_cat(a: &CatArgs, _ui: &Ui) -> Result<ExitCode> {
    let fs = open_fs(&a.image, a.volume.as_deref())?;
    let path = a.path.as_bytes();
    let st = fs.stat(path)?;
    if st.file_type != FileType::Regular {
        let what = match st.file_type {
            FileType::Directory => "a directory (list it with `vhdforge ls`)",
            FileType::CharDevice | FileType::BlockDevice => "a device node",
            FileType::Fifo => "a named pipe",
            FileType::Socket => "a socket",
            FileType::Regular | FileType::Symlink => "not a regular file",
        };
        anyhow::bail!("{} is {what}; cat prints regular files only", escape(path));
    }
    let mut file = fs.open(path)?;
    let mut buf = vec![0u8; CAT_BUFFER_BYTES];
    let mut out = std::io::stdout().lock();
    let mut left = file.size();
    while left > 0 {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Err(vhdforge_core::Error::new(
                ErrorKind::Corrupt,
                "guest.fs.short_file",
                format!(
                    "{} ended {left} bytes before its recorded size of {}: the file system is damaged",
                    escape(path),
                    st.size
                ),
            )
            .into());
        }
        match out.write_all(&buf[..n]) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            r => r.context("writing to stdout")?,
        }
        left = left.saturating_sub(n as u64);
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.context("writing to stdout")?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_printable_utf8_are_escaped_unambiguously() {
        // (raw name, shown) — invalid bytes, control characters, the escape character, and
        // characters that would make the name read as another.
        let cases: [(&[u8], &str); 10] = [
            (b"plain.txt", "plain.txt"),
            ("héllo ✓".as_bytes(), "héllo ✓"),
            (b"bad\xff\xfename", "bad\\xff\\xfename"),
            (b"esc\x1b[2Jclear", "esc\\x1b[2Jclear"),
            (b"back\\x41slash", "back\\\\x41slash"),
            // RIGHT-TO-LEFT OVERRIDE: shown raw, this reads "invoiceexe.pdf".
            (
                "invoice\u{202E}fdp.exe".as_bytes(),
                "invoice\\xe2\\x80\\xaefdp.exe",
            ),
            // LEFT-TO-RIGHT ISOLATE … POP DIRECTIONAL ISOLATE.
            (
                "a\u{2066}b\u{2069}".as_bytes(),
                "a\\xe2\\x81\\xa6b\\xe2\\x81\\xa9",
            ),
            // ZERO WIDTH SPACE and BYTE ORDER MARK: invisible, "passwd" is not this name.
            ("passwd\u{200B}".as_bytes(), "passwd\\xe2\\x80\\x8b"),
            ("\u{FEFF}grub.cfg".as_bytes(), "\\xef\\xbb\\xbfgrub.cfg"),
            // Right-to-left text itself is a name like any other.
            ("שלום.txt".as_bytes(), "שלום.txt"),
        ];
        for (raw, want) in cases {
            assert_eq!(escape(raw), want);
        }
    }

    #[test]
    fn messages_quoting_guest_text_escape_bidi_and_invisible_characters() {
        // Errors and findings quote names through `terminal_safe`: line breaks stay.
        assert_eq!(
            crate::ui::terminal_safe("'/etc/a\u{202E}b' does not exist\n\tx\u{200B}"),
            "'/etc/a\\xe2\\x80\\xaeb' does not exist\n\tx\\xe2\\x80\\x8b"
        );
    }

    #[test]
    fn a_cycle_names_the_ancestor_it_repeats() {
        // (directory, levels up, the path named) — the top of a listing may be any path.
        let cases: [(&[u8], usize, &[u8]); 5] = [
            (b"/a", 0, b"/a"),
            (b"/a/x", 1, b"/a"),
            (b"/t/a/b/c", 2, b"/t/a"),
            (b"/a", 1, b"/"),
            (b"/a", 5, b"/"),
        ];
        for (dir, up, want) in cases {
            assert_eq!(ancestor_path(dir, up), want, "{dir:?} {up}");
        }
        let id = |n| FileId {
            volume: 0,
            number: n,
        };
        let top = Rc::new(Chain {
            id: Some(id(2)),
            up: None,
        });
        let mid = Rc::new(Chain {
            id: None,
            up: Some(Rc::clone(&top)),
        });
        let low = Rc::new(Chain {
            id: Some(id(7)),
            up: Some(Rc::clone(&mid)),
        });
        assert_eq!(low.levels_to(id(7)), Some(0));
        assert_eq!(low.levels_to(id(2)), Some(2));
        assert_eq!(low.levels_to(id(3)), None);
        // Another volume's file with the same number is another file.
        assert_eq!(
            low.levels_to(FileId {
                volume: 1,
                number: 2
            }),
            None
        );
    }

    #[test]
    fn timestamps_print_as_utc_calendar_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(utc(-1), "1969-12-31 23:59:59");
    }

    #[test]
    fn modes_print_as_ls_does() {
        let st = |t, mode| Stat {
            file_type: t,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: vhdforge_core::guest::fs::Timestamp {
                seconds: 0,
                nanoseconds: 0,
            },
            link_target: None,
        };
        assert_eq!(mode_string(&st(FileType::Directory, 0o1777)), "drwxrwxrwt");
        assert_eq!(mode_string(&st(FileType::Regular, 0o4755)), "-rwsr-xr-x");
        assert_eq!(mode_string(&st(FileType::Regular, 0o2644)), "-rw-r-Sr--");
        assert_eq!(mode_string(&st(FileType::Symlink, 0o777)), "lrwxrwxrwx");
    }
}
