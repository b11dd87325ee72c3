//! Differential tests of the NTFS reader (`vhdforge_core::guest::fs`) against ntfs-3g. A
//! volume made by `mkntfs` is filled through an ntfs-3g FUSE mount — Unicode, long and
//! mixed-case names, a directory of thousands of entries (a multi-level `$I30` B+-tree), a
//! fragmented file, a sparse file, a large file, an empty file, deep nesting, symlinks and a
//! junction written as real reparse points (ntfs-3g's `system.ntfs_reparse_data`), a file
//! whose attributes spill into extension records (an `$ATTRIBUTE_LIST`), and a compressed
//! file — then mounted read-only; every entry's name, type, size, mtime, link target and
//! SHA-256 as ntfs-3g shows them must equal what vhdforge reads, bare, in an MBR partition
//! and in that disk converted to VHDX. `ntfsinfo` confirms the structures are really there.
//! A missing oracle fails, never skips.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use vhdforge_core::guest::fs::{self, FileSystem, FileType, FsKind, Volume};
use vhdforge_core::guest::partition;
use vhdforge_core::{DiskImage, OpenOptions};

const MIB: u64 = 1 << 20;
const FS_BYTES: u64 = 64 * MIB;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("oracle `{program}` is required for this test and could not be run ({e}); scripts/setup.sh installs it")
        });
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An ntfs-3g FUSE mount, unmounted when the test ends, pass or fail. ntfs-3g returns once
/// the mount is live.
struct Mount(PathBuf);
impl Mount {
    fn new(image: &Path, at: &Path, options: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        run("ntfs-3g", &["-o", options, s(image), s(at)]);
        Mount(at.to_path_buf())
    }
}
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Deterministic, incompressible-looking bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn setxattr(path: &Path, name: &str, value: &[u8]) {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated and live across the call; the value is a
    // valid buffer of the length given.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Make `path` (an existing empty file or directory) a symlink (`junction` false) or a
/// junction to `target`, a Windows path, through ntfs-3g's reparse-data attribute.
fn reparse(path: &Path, target: &str, relative: bool, junction: bool) {
    let t: Vec<u8> = target.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let n = u16::try_from(t.len()).unwrap();
    let mut body = Vec::new();
    let tag: u32 = if junction {
        // Substitute name then print name, each NUL-terminated.
        for v in [0, n, n + 2, n] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&t);
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&t);
        body.extend_from_slice(&[0, 0]);
        0xA000_0003
    } else {
        for v in [0, n, n, n] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&u32::from(relative).to_le_bytes());
        body.extend_from_slice(&t);
        body.extend_from_slice(&t);
        0xA000_000C
    };
    let mut data = tag.to_le_bytes().to_vec();
    data.extend_from_slice(&u16::try_from(body.len()).unwrap().to_le_bytes());
    data.extend_from_slice(&[0, 0]);
    data.extend_from_slice(&body);
    setxattr(path, "system.ntfs_reparse_data", &data);
}

/// Everything written through ntfs-3g.
fn fill(root: &Path) {
    let d = |p: &str| std::fs::create_dir_all(root.join(p)).unwrap();
    let w = |p: &str, data: &[u8]| std::fs::write(root.join(p), data).unwrap();
    d("Windows/System32/config");
    w("Windows/System32/config/SYSTEM", b"regf hive stand-in\n");
    w("Windows/System32/config/SOFTWARE", &pattern(70_000, 5));
    w("empty", b"");
    let deep: String = (0..30).map(|i| format!("Level{i}/")).collect();
    d(&deep);
    w(&format!("{deep}bottom.txt"), b"deep\n");
    d("names");
    for name in [
        "héllo wörld ✓",
        "日本語のファイル",
        "emoji 🦀",
        "MiXeD CaSe.TXT",
        "spaces  and\ttab",
        "ß and straße",
        "Ωmega",
    ] {
        w(&format!("names/{name}"), name.as_bytes());
    }
    w(&format!("names/{}", "L".repeat(255)), b"longest name");
    // Thousands of entries: the index needs INDX blocks two levels deep.
    d("big-dir");
    for i in 0..2000 {
        let data = if i % 7 == 0 {
            Vec::new()
        } else {
            format!("{i}\n").into_bytes()
        };
        w(
            &format!("big-dir/Entry-{i:05}-{}", "n".repeat(i % 40)),
            &data,
        );
    }
    w("big.bin", &pattern(9 * MIB as usize + 12345, 1));
    // Sparse: data at the start and in the middle, a hole to the end.
    let f = std::fs::File::create(root.join("sparse.bin")).unwrap();
    f.write_all_at(&pattern(5000, 2), 0).unwrap();
    f.write_all_at(&pattern(7000, 3), 3 * MIB + 100).unwrap();
    f.set_len(9 * MIB).unwrap();
    drop(f);
    // A file with so many hard links that its $FILE_NAME attributes spill into extension
    // records, listed in an $ATTRIBUTE_LIST.
    d("links");
    w("links/target", b"linked many times\n");
    for i in 0..60 {
        std::fs::hard_link(
            root.join("links/target"),
            root.join(format!(
                "links/another-fairly-long-hard-link-name-{i:03}-{}",
                "h".repeat(60)
            )),
        )
        .unwrap();
    }
    // Reparse points: relative and absolute symlinks, a junction, a dangling link.
    w("target.txt", b"pointed at\n");
    for (name, target, relative) in [
        ("rel-link", "names\\Ωmega", true),
        ("abs-link", "\\??\\C:\\target.txt", false),
        ("dangling", "nowhere\\at\\all", true),
    ] {
        w(name, b"");
        reparse(&root.join(name), target, relative, false);
    }
    d("junction");
    reparse(
        &root.join("junction"),
        "\\??\\C:\\Windows\\System32",
        false,
        true,
    );
    // A compressed directory: files written in it are LZNT1-compressed.
    d("packed");
    setxattr(
        &root.join("packed"),
        "system.ntfs_attrib_be",
        &0x800u32.to_be_bytes(),
    );
    w("packed/text.txt", &b"compressible ".repeat(10_000));
    // Fragmented: ntfs-3g keeps appends contiguous while it can, so the volume is filled
    // with 64 KiB files, then each append to frag.bin goes into the hole one deleted file
    // left, and holes are never adjacent.
    d("filler");
    let mut n = 0;
    while std::fs::write(root.join(format!("filler/{n}")), pattern(64 << 10, n)).is_ok() {
        n += 1;
    }
    let _ = std::fs::remove_file(root.join(format!("filler/{n}")));
    assert!(n > 200, "only {n} filler files fit");
    let mut frag = std::fs::File::create(root.join("frag.bin")).unwrap();
    for i in (0..n).step_by(2).take(100) {
        std::fs::remove_file(root.join(format!("filler/{i}"))).unwrap();
        frag.write_all(&pattern(64 << 10, 1000 + i)).unwrap();
        frag.sync_all().unwrap();
    }
}

/// One entry as compared.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Rec {
    file_type: FileType,
    /// Files and links only (ntfs-3g and vhdforge size directories differently).
    size: Option<u64>,
    mtime: (i64, u32),
    link_target: Option<Vec<u8>>,
    sha256: Option<[u8; 32]>,
}

/// ntfs-3g's view of a read-only mount at `root`: guest path → record. Absolute link
/// targets are shown by ntfs-3g under the mount point; they are compared as volume paths.
fn host_view(root: &Path, skip: &[&str]) -> BTreeMap<Vec<u8>, Rec> {
    let mut out = BTreeMap::new();
    let mut todo = vec![b"/".to_vec()];
    while let Some(guest) = todo.pop() {
        if skip.iter().any(|k| k.as_bytes() == guest.as_slice()) {
            continue;
        }
        let host = root.join(std::ffi::OsStr::from_bytes(&guest[1..]));
        let md = std::fs::symlink_metadata(&host).unwrap();
        let (mut sha256, mut link_target, mut size) = (None, None, Some(md.size()));
        let ft = if md.file_type().is_symlink() {
            let t = std::fs::read_link(&host).unwrap();
            let t = t
                .strip_prefix(root)
                .map_or(t.clone(), |r| Path::new("/").join(r));
            link_target = Some(t.as_os_str().as_bytes().to_vec());
            // ntfs-3g's size is that of the host path it shows.
            size = Some(t.as_os_str().len() as u64);
            FileType::Symlink
        } else if md.is_dir() {
            size = None;
            for e in std::fs::read_dir(&host).unwrap() {
                let mut child = if guest == b"/" {
                    Vec::new()
                } else {
                    guest.clone()
                };
                child.push(b'/');
                child.extend_from_slice(e.unwrap().file_name().as_bytes());
                todo.push(child);
            }
            FileType::Directory
        } else {
            sha256 = Some(Sha256::digest(std::fs::read(&host).unwrap()).into());
            FileType::Regular
        };
        out.insert(
            guest,
            Rec {
                file_type: ft,
                size,
                mtime: (md.mtime(), md.mtime_nsec() as u32),
                link_target,
                sha256,
            },
        );
    }
    out
}

/// vhdforge's view through the `FileSystem` trait; files streamed in 64 KiB pieces. The
/// listed type of every entry must equal its record's.
fn our_view(fs: &dyn FileSystem, skip: &[&str]) -> BTreeMap<Vec<u8>, Rec> {
    let mut out = BTreeMap::new();
    let mut todo = vec![b"/".to_vec()];
    while let Some(path) = todo.pop() {
        if skip.iter().any(|k| k.as_bytes() == path.as_slice()) {
            continue;
        }
        let name = String::from_utf8_lossy(&path).into_owned();
        let st = fs
            .lstat(&path)
            .unwrap_or_else(|e| panic!("lstat {name}: {e}"));
        let (mut sha256, mut size) = (None, Some(st.size));
        match st.file_type {
            FileType::Directory => {
                size = None;
                let mut names = Vec::new();
                fs.list(&path, &mut |e| {
                    names.push((e.name, e.file_type));
                    true
                })
                .unwrap_or_else(|e| panic!("list {name}: {e}"));
                for (n, t) in names {
                    let mut child = if path == b"/" {
                        Vec::new()
                    } else {
                        path.clone()
                    };
                    child.push(b'/');
                    child.extend_from_slice(&n);
                    assert_eq!(
                        fs.lstat(&child).unwrap().file_type,
                        t,
                        "listed type of {}",
                        String::from_utf8_lossy(&child)
                    );
                    todo.push(child);
                }
            }
            FileType::Regular => {
                let mut f = fs
                    .open(&path)
                    .unwrap_or_else(|e| panic!("open {name}: {e}"));
                assert_eq!(f.size(), st.size);
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = f
                        .read(&mut buf)
                        .unwrap_or_else(|e| panic!("read {name}: {e}"));
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                sha256 = Some(h.finalize().into());
            }
            _ => {}
        }
        out.insert(
            path,
            Rec {
                file_type: st.file_type,
                size,
                mtime: (st.mtime.seconds, st.mtime.nanoseconds),
                link_target: st.link_target,
                sha256,
            },
        );
    }
    out
}

fn assert_same(want: &BTreeMap<Vec<u8>, Rec>, got: &BTreeMap<Vec<u8>, Rec>, what: &str) {
    let show = |k: &Vec<u8>| String::from_utf8_lossy(k).into_owned();
    let missing: Vec<String> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .map(show)
        .take(5)
        .collect();
    let extra: Vec<String> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .map(show)
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, extra {extra:?}"
    );
    for (k, w) in want {
        assert_eq!(&got[k], w, "{what}: {}", show(k));
    }
}

fn content(fs: &dyn FileSystem, path: &str) -> Vec<u8> {
    let mut f = fs
        .open(path.as_bytes())
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    let mut out = vec![0u8; usize::try_from(f.size()).unwrap()];
    let mut at = 0;
    while at < out.len() {
        let n = f.read(&mut out[at..]).unwrap();
        assert!(n > 0, "{path} ended early");
        at += n;
    }
    out
}

/// Case-insensitive lookups, links followed inside the volume, and the compressed file
/// refused by name with its type and size still shown.
fn assert_lookups(fs: &dyn FileSystem) {
    for (guest, target) in [
        (
            "/WINDOWS/system32/CONFIG/system",
            "/Windows/System32/config/SYSTEM",
        ),
        ("/names/mixed case.txt", "/names/MiXeD CaSe.TXT"),
        ("/NAMES/ωMEGA", "/names/Ωmega"),
        ("/rel-link", "/names/Ωmega"),
        ("/abs-link", "/target.txt"),
        (
            "/junction/config/SOFTWARE",
            "/Windows/System32/config/SOFTWARE",
        ),
        (
            "/big-dir/ENTRY-01999-NNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNN",
            "/big-dir/Entry-01999-nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn",
        ),
    ] {
        // The generic lookup keeps the case it was given; the file found is the same one.
        assert_eq!(
            fs.stat(guest.as_bytes()).unwrap(),
            fs.stat(target.as_bytes()).unwrap(),
            "{guest}"
        );
        assert_eq!(content(fs, guest), content(fs, target), "{guest}");
    }
    for (guest, target) in [
        ("/rel-link", "/names/Ωmega"),
        ("/JUNCTION/config", "/Windows/System32/config"),
    ] {
        assert_eq!(
            String::from_utf8_lossy(&fs.resolve(guest.as_bytes(), true).unwrap()),
            target
        );
    }
    // Upcasing is the volume's 1:1 table: ß has no single upper-case unit, so "SS" is
    // another name.
    assert!(fs::is_not_found(
        &fs.stat("/names/SS AND STRASSE".as_bytes()).unwrap_err()
    ));
    assert!(fs.stat("/names/ß AND STRAßE".as_bytes()).is_ok());
    assert!(fs::is_not_found(&fs.stat(b"/dangling").unwrap_err()));
    assert_eq!(
        fs.lstat(b"/dangling").unwrap().link_target.unwrap(),
        b"nowhere/at/all"
    );
    assert_eq!(
        fs.open(b"/names").err().unwrap().code(),
        "guest.fs.wrong_type"
    );
    let st = fs.stat(b"/packed/text.txt").unwrap();
    assert_eq!((st.file_type, st.size), (FileType::Regular, 130_000));
    let e = fs.open(b"/packed/text.txt").err().unwrap();
    assert_eq!(e.code(), "guest.fs.ntfs_compressed", "{e}");
    assert!(e.to_string().contains("compress"), "{e}");
}

/// `ntfsinfo`'s dump of one file's attributes.
fn ntfsinfo(img: &Path, path: &str) -> String {
    run("ntfsinfo", &["-v", "-F", path, s(img)])
}

/// The structures the test claims to cover are really in the image.
fn assert_fixture_is_what_it_claims(img: &Path) {
    assert!(
        ntfsinfo(img, "/big-dir").contains("$INDEX_ALLOCATION"),
        "big-dir has no INDX blocks"
    );
    assert!(
        ntfsinfo(img, "/links/target").contains("$ATTRIBUTE_LIST"),
        "no attribute list"
    );
    let runs = |p: &str| -> usize {
        let info = ntfsinfo(img, p);
        let n = info
            .split("Total runs: ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next());
        n.and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no run count for {p}: {info}"))
    };
    assert!(runs("/frag.bin") > 50, "frag.bin is not fragmented");
    assert!(
        ntfsinfo(img, "/packed/text.txt").contains("Compression unit:\t 4"),
        "not compressed"
    );
    assert!(
        ntfsinfo(img, "/sparse.bin").contains("<HOLE>"),
        "sparse.bin is not sparse"
    );
}

fn open_image(p: &Path) -> Arc<dyn DiskImage> {
    Arc::from(vhdforge_core::open(p, &OpenOptions::default()).unwrap())
}

fn fs_in_partition(disk: &Path) -> Box<dyn FileSystem> {
    let image = open_image(disk);
    let table = partition::partitions(image.as_ref()).unwrap();
    let w = table.get(1).unwrap().window(image.as_ref()).unwrap();
    assert_eq!(fs::identify(&w).unwrap().kind, FsKind::Ntfs);
    fs::open(Volume::from_window(&image, &w).unwrap()).unwrap()
}

fn blank(p: &Path, len: u64) {
    std::fs::File::create(p).unwrap().set_len(len).unwrap();
}

/// Skipped in the walk, checked in `assert_lookups`: the compressed file (ntfs-3g
/// decompresses it; vhdforge refuses it) and the dangling link (ntfs-3g shows a relative
/// link whose target does not exist as "unsupported reparse tag").
const SKIP: [&str; 2] = ["/packed/text.txt", "/dangling"];

#[test]
fn ntfs_tree_matches_ntfs_3g_bare_in_mbr_and_in_vhdx() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    blank(&img, FS_BYTES);
    run("mkntfs", &["-F", "-q", "-f", "-L", "ntfsroot", s(&img)]);
    {
        let _rw = Mount::new(&img, &dir.path().join("rw"), "compression");
        fill(&dir.path().join("rw"));
    }
    assert_fixture_is_what_it_claims(&img);
    let mnt = dir.path().join("ro");
    let ro = Mount::new(&img, &mnt, "ro");
    let want = host_view(&mnt, &SKIP);
    drop(ro);
    assert!(want.len() > 2100, "the tree has {} entries", want.len());

    let bare = fs::open(Volume::whole(open_image(&img))).unwrap();
    assert_eq!(bare.kind(), FsKind::Ntfs);
    assert_same(&want, &our_view(bare.as_ref(), &SKIP), "bare");
    assert_lookups(bare.as_ref());

    // In an MBR partition at 1 MiB, then that disk as a dynamic VHDX.
    let disk = dir.path().join("disk.img");
    blank(&disk, FS_BYTES + 2 * MIB);
    let mut sf = Command::new("sfdisk")
        .args(["-q", s(&disk)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("oracle `sfdisk` is required; scripts/setup.sh installs it");
    sf.stdin
        .take()
        .unwrap()
        .write_all(format!("label: dos\nstart=2048, size={}, type=7\n", FS_BYTES / 512).as_bytes())
        .unwrap();
    assert!(sf.wait().unwrap().success());
    run(
        "dd",
        &[
            &format!("if={}", s(&img)),
            &format!("of={}", s(&disk)),
            "bs=1M",
            "seek=1",
            "conv=notrunc,sparse",
            "status=none",
        ],
    );
    assert_same(
        &want,
        &our_view(fs_in_partition(&disk).as_ref(), &SKIP),
        "mbr",
    );
    let vhdx = dir.path().join("disk.vhdx");
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "vhdx", s(&disk), s(&vhdx)],
    );
    let in_vhdx = fs_in_partition(&vhdx);
    assert_same(&want, &our_view(in_vhdx.as_ref(), &SKIP), "vhdx");
    assert_lookups(in_vhdx.as_ref());
}

/// A BitLocker volume (OEM id `-FVE-FS-`) is identified as such and refused by name, never
/// read as NTFS.
#[test]
fn bitlocker_is_identified_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    blank(&img, 16 * MIB);
    run("mkntfs", &["-F", "-q", "-f", s(&img)]);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(b"-FVE-FS-", 3).unwrap();
    let image = open_image(&img);
    assert_eq!(
        fs::identify(&Volume::whole(Arc::clone(&image)))
            .unwrap()
            .kind,
        FsKind::BitLocker
    );
    let e = fs::open(Volume::whole(image)).err().unwrap();
    assert_eq!(e.code(), "guest.fs.encrypted");
    assert!(e.to_string().contains("BitLocker"), "{e}");
}
