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

mod guest_fs_common;

use fixtures::guest::tree::{assert_same, host_view, pattern, Entry, Kind};
use fixtures::guest::{place, run, sfdisk, Mount};
use guest_fs_common::{blank, fs_in_partition, open_image, our_view, s};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use vhdforge_core::guest::fs::{self, FileSystem, FileType, FsKind, Volume};

const MIB: u64 = 1 << 20;
const FS_BYTES: u64 = 64 * MIB;

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

/// What ntfs-3g and vhdforge can both show of an entry: type, size (of files and links;
/// ntfs-3g and vhdforge size directories differently), mtime, link target and content.
/// NTFS keeps no Unix modes or owners, so those are blanked.
fn comparable(mut view: BTreeMap<Vec<u8>, Entry>) -> BTreeMap<Vec<u8>, Entry> {
    for e in view.values_mut() {
        (e.mode, e.uid, e.gid) = (0, 0, 0);
        if e.kind == Kind::Directory {
            e.size = 0;
        }
    }
    view
}

/// ntfs-3g's view of a read-only mount at `root`, without the `skip` paths. Absolute link
/// targets are shown by ntfs-3g under the mount point; they are compared as volume paths,
/// with the size of the link the length of that path (ntfs-3g's size is that of the host
/// path it shows).
fn host_ntfs_view(root: &Path, skip: &[&str]) -> BTreeMap<Vec<u8>, Entry> {
    let mut view = host_view(root);
    view.retain(|k, _| !skip.iter().any(|s| s.as_bytes() == k.as_slice()));
    for e in view.values_mut() {
        if let Some(t) = &mut e.link_target {
            let p = Path::new(std::ffi::OsStr::from_bytes(t));
            if let Ok(r) = p.strip_prefix(root) {
                *t = Path::new("/").join(r).as_os_str().as_bytes().to_vec();
            }
            e.size = t.len() as u64;
        }
    }
    comparable(view)
}

/// vhdforge's view, comparable with [`host_ntfs_view`].
fn ntfs_view(fs: &dyn FileSystem, skip: &[&str]) -> BTreeMap<Vec<u8>, Entry> {
    comparable(our_view(fs, skip, &[]))
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
        let _rw = Mount::ntfs_3g(&img, &dir.path().join("rw"), "compression");
        fill(&dir.path().join("rw"));
    }
    assert_fixture_is_what_it_claims(&img);
    let mnt = dir.path().join("ro");
    let ro = Mount::ntfs_3g(&img, &mnt, "ro");
    let want = host_ntfs_view(&mnt, &SKIP);
    drop(ro);
    assert!(want.len() > 2100, "the tree has {} entries", want.len());

    let bare = fs::open(Volume::whole(open_image(&img))).unwrap();
    assert_eq!(bare.kind(), FsKind::Ntfs);
    assert_same(&want, &ntfs_view(bare.as_ref(), &SKIP), "bare");
    assert_lookups(bare.as_ref());

    // In an MBR partition at 1 MiB, then that disk as a dynamic VHDX.
    let disk = dir.path().join("disk.img");
    blank(&disk, FS_BYTES + 2 * MIB);
    sfdisk(
        &disk,
        &format!("label: dos\nstart=2048, size={}, type=7\n", FS_BYTES / 512),
    );
    place(&disk, &img, &[(0, FS_BYTES, MIB)]);
    assert_same(
        &want,
        &ntfs_view(fs_in_partition(&disk, FsKind::Ntfs, None).as_ref(), &SKIP),
        "mbr",
    );
    let vhdx = dir.path().join("disk.vhdx");
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "vhdx", s(&disk), s(&vhdx)],
    );
    let in_vhdx = fs_in_partition(&vhdx, FsKind::Ntfs, None);
    assert_same(&want, &ntfs_view(in_vhdx.as_ref(), &SKIP), "vhdx");
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
