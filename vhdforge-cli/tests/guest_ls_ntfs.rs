//! `vhdforge ls`/`cat` — the real binary — on NTFS, against ntfs-3g's own offline tools
//! (`ntfsls` for the listing, `ntfscat` for contents and reparse data), not its FUSE mount.
//!
//! The disk is what a Gen1 Windows VM has: an MBR with a small NTFS volume first and the OS
//! volume (`Windows/System32/config`) second, so the default volume rule has to pick the
//! second. The OS volume, written through ntfs-3g, holds Unicode, long and mixed-case names, a
//! directory of thousands of entries, a fragmented and a sparse file, symlinks and a junction
//! as real reparse points, and an LZNT1-compressed file. Every entry `ls -R --json` prints is
//! compared with `ntfsls -R -l` (type, size, mtime to the minute ntfsls shows), every regular
//! file's `cat` with `ntfscat`, every link's target with the reparse data `ntfscat` dumps —
//! as a raw disk and as VHDX. A missing oracle fails, never skips.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fixtures::guest::tree::pattern;
use fixtures::guest::{build, run, Content, Kind, Part, Table};
use sha2::{Digest as _, Sha256};

const MIB: u64 = 1 << 20;
const OS_MIB: u64 = 64;
const DATA_MIB: u64 = 8;
const BIG_DIR_ENTRIES: usize = 2000;

mod guest_cli;
use guest_cli::{s, vhdforge};

/// Run one of ntfs-3g's tools in UTC (ntfsls prints local times); its stdout as bytes.
fn ntfs_tool(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .env("TZ", "UTC")
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("oracle `{program}` is required ({e}); scripts/setup.sh installs ntfs-3g")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An ntfs-3g read-write mount run in the foreground as our child: after the unmount we wait
/// for it to exit, and only then is everything written back to the image.
struct RwMount {
    at: PathBuf,
    daemon: Option<std::process::Child>,
}

impl RwMount {
    fn new(image: &Path, at: &Path) -> RwMount {
        std::fs::create_dir_all(at).unwrap();
        let daemon = Command::new("ntfs-3g")
            .args(["-o", "rw,no_detach,compression", s(image), s(at)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("oracle `ntfs-3g` is required ({e})"));
        let mut m = RwMount {
            at: at.to_path_buf(),
            daemon: Some(daemon),
        };
        let started = std::time::Instant::now();
        while !Command::new("mountpoint")
            .args(["-q", s(at)])
            .status()
            .is_ok_and(|st| st.success())
        {
            let exited = m.daemon.as_mut().unwrap().try_wait().unwrap().is_some();
            assert!(
                !exited && started.elapsed() < std::time::Duration::from_secs(20),
                "ntfs-3g did not mount {}",
                image.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        m
    }

    /// Unmount and wait for ntfs-3g to finish writing.
    fn finish(mut self) {
        assert!(Command::new("umount")
            .arg(&self.at)
            .status()
            .unwrap()
            .success());
        let st = self.daemon.take().unwrap().wait().unwrap();
        assert!(st.success(), "ntfs-3g exited with {st}");
    }
}

impl Drop for RwMount {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

fn setxattr(path: &Path, name: &str, value: &[u8]) {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated and outlive the call; `value` is a valid
    // buffer of the length passed.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr {name} on {}", path.display());
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// Turn the empty file or directory `path` into a reparse point: a symlink
/// (`IO_REPARSE_TAG_SYMLINK`, relative or not) or a junction (`IO_REPARSE_TAG_MOUNT_POINT`)
/// to the Windows path `target`, written as ntfs-3g's raw reparse-data attribute.
fn make_reparse(path: &Path, target: &str, relative: bool, junction: bool) {
    let name = utf16(target);
    let len = u16::try_from(name.len()).unwrap();
    let mut body = Vec::new();
    let tag: u32 = if junction {
        // Substitute name at 0, print name after its terminating NUL.
        for v in [0, len, len + 2, len] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        for _ in 0..2 {
            body.extend_from_slice(&name);
            body.extend_from_slice(&[0, 0]);
        }
        0xA000_0003
    } else {
        for v in [0, len, len, len] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&u32::from(relative).to_le_bytes());
        body.extend_from_slice(&name);
        body.extend_from_slice(&name);
        0xA000_000C
    };
    let mut data = tag.to_le_bytes().to_vec();
    data.extend_from_slice(&u16::try_from(body.len()).unwrap().to_le_bytes());
    data.extend_from_slice(&[0, 0]);
    data.extend_from_slice(&body);
    setxattr(path, "system.ntfs_reparse_data", &data);
}

/// The OS volume's tree, written through ntfs-3g at `root`.
fn fill_os(root: &Path) {
    let mkdir = |p: &str| std::fs::create_dir_all(root.join(p)).unwrap();
    let write = |p: &str, data: &[u8]| std::fs::write(root.join(p), data).unwrap();
    mkdir("Windows/System32/config");
    write("Windows/System32/config/SYSTEM", b"regf stand-in\n");
    write("Windows/System32/config/SOFTWARE", &pattern(70_000, 5));
    write("empty", b"");
    mkdir("names");
    for name in [
        "héllo wörld ✓",
        "日本語のファイル",
        "emoji 🦀",
        "MiXeD CaSe.TXT",
        "Ωmega",
        "ß and straße",
    ] {
        write(&format!("names/{name}"), name.as_bytes());
    }
    // 255 UTF-16 units is NTFS's longest name; FUSE passes at most 255 bytes.
    write(&format!("names/{}", "L".repeat(255)), b"longest name");
    mkdir("Big-Dir");
    for i in 0..BIG_DIR_ENTRIES {
        write(
            &format!("Big-Dir/Entry-{i:05}-{}", "x".repeat(i % 50)),
            format!("{i}\n").as_bytes(),
        );
    }
    write("big.bin", &pattern(5 * MIB as usize + 777, 1));
    let f = std::fs::File::create(root.join("sparse.bin")).unwrap();
    f.write_all_at(&pattern(5000, 2), 0).unwrap();
    f.write_all_at(&pattern(7000, 3), 3 * MIB + 100).unwrap();
    f.set_len(7 * MIB).unwrap();
    drop(f);
    write("target.txt", b"pointed at\n");
    for (name, target, relative) in [
        ("rel-link", "names\\Ωmega", true),
        ("abs-link", "\\??\\C:\\target.txt", false),
    ] {
        write(name, b"");
        make_reparse(&root.join(name), target, relative, false);
    }
    mkdir("junction");
    make_reparse(
        &root.join("junction"),
        "\\??\\C:\\Windows\\System32",
        false,
        true,
    );
    // Files written in a directory marked compressed are LZNT1-compressed.
    mkdir("packed");
    setxattr(
        &root.join("packed"),
        "system.ntfs_attrib_be",
        &0x800u32.to_be_bytes(),
    );
    write("packed/text.txt", &b"compressible ".repeat(10_000));
    // Fragmented: fill the volume with 64 KiB files, then grow frag.bin into the holes
    // left by deleting every other one (ntfs-3g keeps appends contiguous while it can).
    mkdir("filler");
    let mut n = 0;
    while std::fs::write(root.join(format!("filler/{n}")), pattern(64 << 10, n)).is_ok() {
        n += 1;
    }
    assert!(n > 100, "only {n} filler files fit");
    let mut frag = std::fs::File::create(root.join("frag.bin")).unwrap();
    for i in (0..n).step_by(2).take(60) {
        std::fs::remove_file(root.join(format!("filler/{i}"))).unwrap();
        std::io::Write::write_all(&mut frag, &pattern(64 << 10, 1000 + i)).unwrap();
        frag.sync_all().unwrap();
    }
    drop(frag);
    std::fs::remove_dir_all(root.join("filler")).unwrap();
}

/// A new NTFS image of `mib` MiB labelled `label`, filled by `fill` through ntfs-3g.
fn ntfs_image(path: &Path, mib: u64, label: &str, fill: &dyn Fn(&Path)) {
    std::fs::File::create_new(path)
        .unwrap()
        .set_len(mib * MIB)
        .unwrap();
    run("mkntfs", &["-F", "-q", "-f", "-L", label, s(path)]);
    let at = path.with_extension("mnt");
    let m = RwMount::new(path, &at);
    fill(&at);
    m.finish();
}

/// Copy `img` into `disk` at byte `at`.
fn place(disk: &Path, img: &Path, at: u64) {
    let data = std::fs::read(img).unwrap();
    let d = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    d.write_all_at(&data, at).unwrap();
}

/// One entry as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// `dir` or not (ntfsls tells nothing more; a junction is a directory to it).
    dir: bool,
    /// Files only: ntfsls and vhdforge size directories and links differently.
    size: Option<u64>,
    /// Modification time, "Mon D HH:MM YYYY" in UTC, as ntfsls prints it.
    mtime: String,
}

/// `ntfsls -R -l -F` of the volume image `img`: guest path → entry. The `.`/`..` entries
/// ntfsls prints inside subdirectories are dropped.
fn ntfsls_view(img: &Path) -> BTreeMap<String, Entry> {
    let text = String::from_utf8(ntfs_tool("ntfsls", &["-R", "-l", "-F", "-p", "/", s(img)]))
        .expect("ntfsls prints UTF-8");
    let mut out = BTreeMap::new();
    let mut dir = String::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(d) = line.strip_suffix(":").filter(|d| d.starts_with('/')) {
            dir = d.trim_end_matches('/').to_string();
            continue;
        }
        // "%8lld Mon %e HH:MM YYYY name[/]"
        let rest = line.trim_start();
        let (size, rest) = rest.split_once(' ').unwrap();
        let rest = rest.trim_start();
        let (month, rest) = rest.split_once(' ').unwrap();
        let (day, rest) = rest.trim_start().split_once(' ').unwrap();
        let (time, rest) = rest.split_once(' ').unwrap();
        let (year, name) = rest.split_once(' ').unwrap();
        let (name, is_dir) = match name.strip_suffix('/') {
            Some(n) => (n, true),
            None => (name, false),
        };
        if name == "." || name == ".." {
            continue;
        }
        out.insert(
            format!("{dir}/{name}"),
            Entry {
                dir: is_dir,
                size: (!is_dir).then(|| size.parse().unwrap()),
                mtime: format!("{month} {day} {time} {year}"),
            },
        );
    }
    out
}

/// Seconds since 1970 as ntfsls shows them ("Nov 30 11:13 2026", UTC).
fn ntfsls_time(secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs.div_euclid(86_400);
    let t = secs.rem_euclid(86_400);
    // Days to civil date (proleptic Gregorian), era-based.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{} {day} {:02}:{:02} {year}",
        MONTHS[usize::try_from(month - 1).unwrap()],
        t / 3600,
        t / 60 % 60
    )
}

/// What `vhdforge ls -R --json` lists: path → (entry, type, link target).
type Listing = BTreeMap<String, (Entry, String, Option<String>)>;

fn listed(image: &Path, volume: Option<&str>) -> Listing {
    let mut args = vec!["ls", "-R", "--json", s(image), "/"];
    if let Some(v) = volume {
        args.extend(["--volume", v]);
    }
    let out = vhdforge(&args);
    assert!(
        out.status.success(),
        "ls: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut map = Listing::new();
    for v in all {
        let ty = v["type"].as_str().unwrap().to_string();
        let dir = ty == "dir";
        let e = Entry {
            dir,
            size: (ty == "file").then(|| v["size"].as_u64().unwrap()),
            mtime: ntfsls_time(v["mtime"].as_i64().unwrap()),
        };
        let target = v["target"].as_str().map(str::to_string);
        let path = v["path"].as_str().unwrap().to_string();
        assert!(map.insert(path, (e, ty, target)).is_none(), "twice: {v}");
    }
    map
}

/// The target a reparse point names, from the raw `$REPARSE_POINT` `ntfscat` dumps, as a
/// volume path: the print name, `\??\C:` dropped, `\` turned into `/`.
fn reparse_target(img: &Path, path: &str) -> String {
    let raw = ntfs_tool("ntfscat", &["-a", "0xC0", s(img), path]);
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([raw[at], raw[at + 1]]));
    let tag = u32::from_le_bytes(raw[..4].try_into().unwrap());
    let (names_at, print_off, print_len) = match tag {
        0xA000_000C => (8 + 12, u16_at(12), u16_at(14)),
        0xA000_0003 => (8 + 8, u16_at(12), u16_at(14)),
        t => panic!("{path}: reparse tag {t:#x} is not a link"),
    };
    let units: Vec<u16> = raw[names_at + print_off..names_at + print_off + print_len]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let name = String::from_utf16(&units).unwrap();
    let name = name.strip_prefix("\\??\\").unwrap_or(&name);
    let name = if name.get(1..2) == Some(":") {
        &name[2..]
    } else {
        name
    };
    name.replace('\\', "/")
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Compare vhdforge's view of `image` (volume `volume`) with ntfs-3g's tools on the volume's
/// own bytes `fs_img`. `links` are the paths made reparse points; `refused` files are
/// listed but not read (compressed). Contents of every other file are compared.
fn assert_matches_ntfs3g(
    fs_img: &Path,
    image: &Path,
    volume: Option<&str>,
    links: &[&str],
    refused: &[&str],
    hashes: &mut BTreeMap<String, [u8; 32]>,
    big_dir_every: usize,
) {
    let want = ntfsls_view(fs_img);
    let ours = listed(image, volume);
    let mut ours_plain: BTreeMap<String, Entry> = BTreeMap::new();
    for (path, (e, ty, target)) in &ours {
        let is_link = links.contains(&path.as_str());
        assert_eq!(ty == "symlink", is_link, "{path} is listed as {ty}");
        let mut e = e.clone();
        if is_link {
            assert_eq!(
                target.as_deref(),
                Some(reparse_target(fs_img, path).as_str()),
                "{path}"
            );
            // ntfsls shows a junction as a directory and a symlink as a 0-byte file.
            let w = &want[path];
            e.dir = w.dir;
            e.size = w.size;
        } else {
            assert!(target.is_none(), "{path}");
        }
        ours_plain.insert(path.clone(), e);
    }
    let missing: Vec<_> = want.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{}: missing {missing:?}, extra {extra:?}",
        image.display()
    );
    for (path, w) in &want {
        assert_eq!(&ours_plain[path], w, "{} {path}", image.display());
    }
    let mut catted = 0;
    for (path, (_, ty, _)) in &ours {
        if ty != "file" || refused.contains(&path.as_str()) {
            continue;
        }
        if let Some(rest) = path.strip_prefix("/Big-Dir/Entry-") {
            let i: usize = rest[..5].parse().unwrap();
            if i % big_dir_every != 0 {
                continue;
            }
        }
        let want = *hashes
            .entry(path.clone())
            .or_insert_with(|| sha(&ntfs_tool("ntfscat", &[s(fs_img), path])));
        let mut args = vec!["cat", s(image), path];
        if let Some(v) = volume {
            args.extend(["--volume", v]);
        }
        let out = vhdforge(&args);
        assert!(
            out.status.success(),
            "cat {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(sha(&out.stdout), want, "cat {path} of {}", image.display());
        catted += 1;
    }
    assert!(catted >= 2, "{catted} files read");
}

/// `ntfsinfo`'s attribute dump of one file: the fixture really has what it claims.
fn assert_fixture_is_what_it_claims(os: &Path) {
    let info = |p: &str| String::from_utf8(ntfs_tool("ntfsinfo", &["-v", "-F", p, s(os)])).unwrap();
    assert!(info("/Big-Dir").contains("$INDEX_ALLOCATION"));
    let runs: usize = info("/frag.bin")
        .split("Total runs: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("ntfsinfo shows frag.bin's runs");
    assert!(runs > 30, "frag.bin has {runs} runs");
    assert!(
        info("/sparse.bin").contains("<HOLE>"),
        "sparse.bin has no hole"
    );
    assert!(info("/packed/text.txt").contains("Compression unit:\t 4"));
}

#[test]
fn ntfs_ls_and_cat_match_ntfsls_and_ntfscat_in_raw_and_vhdx() {
    let dir = tempfile::tempdir().unwrap();
    let os = dir.path().join("os.fs");
    ntfs_image(&os, OS_MIB, "OS", &fill_os);
    assert_fixture_is_what_it_claims(&os);
    assert!(ntfsls_view(&os).len() > BIG_DIR_ENTRIES + 20);
    let data = dir.path().join("data.fs");
    ntfs_image(&data, DATA_MIB, "Data", &|root| {
        std::fs::create_dir_all(root.join("Boot")).unwrap();
        std::fs::write(root.join("Boot/BCD"), pattern(20_000, 9)).unwrap();
        std::fs::write(root.join("bootmgr"), pattern(3000, 10)).unwrap();
    });
    // A Gen1 Windows disk: the small volume first, the OS second.
    let raw = dir.path().join("disk.raw");
    let built = build(
        &raw,
        DATA_MIB + OS_MIB + 2,
        Table::Mbr,
        &[
            Part::new(DATA_MIB, Kind::BasicData, Content::Empty).active(),
            Part::new(OS_MIB, Kind::BasicData, Content::Empty),
        ],
        &dir.path().join("scratch"),
    );
    place(&raw, &data, built.partitions[0].1);
    place(&raw, &os, built.partitions[1].1);
    let vhdx = dir.path().join("disk.vhdx");
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "vhdx", s(&raw), s(&vhdx)],
    );

    let links = ["/rel-link", "/abs-link", "/junction"];
    let refused = ["/packed/text.txt"];
    let mut os_hashes = BTreeMap::new();
    let mut data_hashes = BTreeMap::new();
    // Each `cat` is a process that opens the disk and the volume: every file is read from
    // the raw disk except that the big directory's tiny files are sampled (1 in 10; 1 in 50
    // from the VHDX), whose listing is compared whole.
    for (image, every) in [(&raw, 10), (&vhdx, 50)] {
        // No --volume: the default is the volume with Windows/System32/config.
        assert_matches_ntfs3g(&os, image, None, &links, &refused, &mut os_hashes, every);
        // By number: vhdforge does not read NTFS labels (they live in `$Volume`, not
        // next to the boot sector's magic).
        assert_matches_ntfs3g(&data, image, Some("1"), &[], &[], &mut data_hashes, 1);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&vhdforge(&["volumes", "--json", s(&vhdx)]).stdout).unwrap();
    assert_eq!(v["default"], "2", "{v}");
    assert_eq!(v["volumes"][1]["os_root"], "windows", "{v}");
    assert!(v["volumes"][0]["os_root"].is_null(), "{v}");

    let img = s(&vhdx);
    // Case-insensitive lookups, as Windows does, through ls and cat.
    for (asked, stored) in [
        (
            "/WINDOWS/system32/CONFIG/software",
            "/Windows/System32/config/SOFTWARE",
        ),
        ("/names/mixed case.txt", "/names/MiXeD CaSe.TXT"),
        ("/NAMES/ωMEGA", "/names/Ωmega"),
        ("/big-dir/ENTRY-01200-", "/Big-Dir/Entry-01200-"),
    ] {
        let out = vhdforge(&["cat", img, asked]);
        assert!(out.status.success(), "cat {asked}");
        assert_eq!(sha(&out.stdout), os_hashes[stored], "{asked}");
        let one: Vec<serde_json::Value> =
            serde_json::from_slice(&vhdforge(&["ls", "--json", img, asked]).stdout).unwrap();
        assert_eq!(one.len(), 1, "{asked}");
        assert_eq!(one[0]["type"], "file");
    }
    let upper: Vec<serde_json::Value> =
        serde_json::from_slice(&vhdforge(&["ls", "--json", img, "/BIG-DIR"]).stdout).unwrap();
    assert_eq!(upper.len(), BIG_DIR_ENTRIES);

    // The compressed file: listed with its size, refused by name with exit 2.
    let out = vhdforge(&["cat", img, "/PACKED/text.txt"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("text.txt") && err.contains("compressed") && err.contains("compact /u"),
        "{err}"
    );
}
