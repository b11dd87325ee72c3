//! Differential tests of the XFS reader (`vhdforge_core::guest::fs`) against the Linux
//! kernel and xfsprogs. A v5 file system made by `mkfs.xfs` (default options: CRCs, ftype,
//! bigtime) is filled through a read-write loop mount — so the kernel makes short-form,
//! block, leaf and node directories, local and remote symlinks, sparse and unwritten
//! extents and files fragmented into a bmbt — then mounted read-only; every entry's type,
//! mode, uid, gid, size, mtime, link target and SHA-256 as the kernel shows them must equal
//! what vhdforge reads, bare, in a GPT partition and in that disk converted to VHDX.
//! `xfs_db` confirms the structures are really there. This kernel cannot mount v4
//! (`CONFIG_XFS_SUPPORT_V4` is off), so v4 is built by `mkfs.xfs -p` from a proto file and
//! compared with the tree it was built from. A dirty log is made with `xfs_io -x -c
//! shutdown` and must be refused. A missing oracle fails, never skips.

mod guest_fs_common;

use fixtures::guest::tree::{assert_same, host_view, pattern, Kind};
use fixtures::guest::{place, run, sfdisk, Mount};
use guest_fs_common::{blank, fs_in_partition, open_image, our_view, s};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use vhdforge_core::guest::fs::{self, FileSystem, FileType, FsKind, Volume};

const MIB: u64 = 1 << 20;
/// mkfs.xfs 6.1 refuses smaller file systems outside its own test suite.
const FS_BYTES: u64 = 300 * MIB;

fn sparse_file() -> fn(&Path) {
    |root| {
        let f = std::fs::File::create(root.join("sparse.bin")).unwrap();
        f.write_all_at(&pattern(5000, 2), 0).unwrap();
        f.write_all_at(&pattern(7000, 3), 3 * MIB + 100).unwrap();
        f.set_len(9 * MIB).unwrap();
    }
}

/// Everything written through the kernel's XFS.
fn fill(root: &Path) {
    let d = |p: &str| std::fs::create_dir_all(root.join(p)).unwrap();
    let w = |p: &str, data: &[u8]| std::fs::write(root.join(p), data).unwrap();
    let ln =
        |target: &str, link: &str| std::os::unix::fs::symlink(target, root.join(link)).unwrap();
    d("etc");
    w("etc/hostname", b"guest\n");
    w("etc/empty", b"");
    let deep: String = (0..40).map(|i| format!("level{i}/")).collect();
    d(&deep);
    w(&format!("{deep}bottom.txt"), b"deep\n");
    // Block directory: more than the inode holds, one directory block.
    d("names");
    for name in [
        "héllo wörld ✓",
        "日本語のファイル",
        "emoji 🦀",
        "spaces  and\ttab",
        "-dash",
        ".hidden",
    ] {
        w(&format!("names/{name}"), name.as_bytes());
    }
    w(&format!("names/{}", "L".repeat(255)), b"longest name");
    // Leaf directory: several data blocks, one leaf block.
    d("leaf-dir");
    for i in 0..250 {
        w(
            &format!("leaf-dir/file-{i:04}-{}", "x".repeat(i % 20)),
            format!("{i}").as_bytes(),
        );
    }
    // Node directory: many data blocks, a node, several leaves and a free index.
    d("big-dir");
    for i in 0..3000 {
        let data = if i % 7 == 0 {
            Vec::new()
        } else {
            format!("{i}\n").into_bytes()
        };
        w(
            &format!("big-dir/entry-{i:05}-{}", "n".repeat(i % 40)),
            &data,
        );
    }
    // A few MiB, sparse, and preallocated-but-unwritten space (reads as zeros).
    w("big.bin", &pattern(3 * MIB as usize + 12345, 1));
    sparse_file()(root);
    let pre = std::fs::File::create(root.join("prealloc.bin")).unwrap();
    pre.write_all_at(b"head", 0).unwrap();
    drop(pre);
    run(
        "fallocate",
        &[
            "-o",
            "65536",
            "-l",
            "1048576",
            s(&root.join("prealloc.bin")),
        ],
    );
    run(
        "fallocate",
        &[
            "-n",
            "-o",
            "4194304",
            "-l",
            "65536",
            s(&root.join("prealloc.bin")),
        ],
    );
    // Symlinks: local (in the inode) and remote (in a block), absolute, dangling, a loop.
    ln("hostname", "etc/fast-link");
    ln(&format!("../{}", "./".repeat(300)), "etc/remote-dir-link");
    ln(&format!("{deep}bottom.txt"), "remote-link");
    ln("/etc/hostname", "abs-link");
    ln("etc", "dir-link");
    ln("/nowhere/at/all", "dangling");
    ln("loop-b", "loop-a");
    ln("loop-a", "loop-b");
    // Hard links, modes, owners, special files.
    w("etc/original", b"shared inode\n");
    std::fs::hard_link(root.join("etc/original"), root.join("names/hardlink")).unwrap();
    w("suid", b"#!/bin/sh\n");
    std::fs::set_permissions(root.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    d("tmp");
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    w("secret", b"x");
    std::os::unix::fs::chown(root.join("secret"), Some(12345), Some(54321)).unwrap();
    std::os::unix::fs::lchown(root.join("abs-link"), Some(1000), Some(1000)).unwrap();
    run("mkfifo", &[s(&root.join("fifo"))]);
    run("mknod", &[s(&root.join("null")), "c", "1", "3"]);
    // Timestamps past 2038 and before 1970 (bigtime stores both).
    w("future", b"f");
    run(
        "touch",
        &[
            "-d",
            "2200-01-02 03:04:05.123456789",
            s(&root.join("future")),
        ],
    );
    w("past", b"p");
    run(
        "touch",
        &["-d", "1950-06-07 08:09:10.5", s(&root.join("past"))],
    );
    // Fragmented files: alternate synced 4 KiB appends, then every other block of a third
    // file punched out, so the data forks outgrow the inode and become bmbts.
    let mut a = std::fs::File::create(root.join("frag-a")).unwrap();
    let mut b = std::fs::File::create(root.join("frag-b")).unwrap();
    for i in 0..64u64 {
        a.write_all(&pattern(4096, 100 + i)).unwrap();
        a.sync_all().unwrap();
        b.write_all(&pattern(4096, 200 + i)).unwrap();
        b.sync_all().unwrap();
    }
    w("holes", &pattern(400 * 4096, 9));
    for i in (0..400).step_by(2) {
        run(
            "fallocate",
            &[
                "-p",
                "-o",
                &(i * 4096).to_string(),
                "-l",
                "4096",
                s(&root.join("holes")),
            ],
        );
    }
}

/// Lookups through symlinks land where the kernel's do; loops end.
fn assert_lookups(fs: &dyn FileSystem) {
    for (guest, target) in [
        ("/etc/fast-link", "/etc/hostname"),
        ("/abs-link", "/etc/hostname"),
        ("/dir-link/hostname", "/etc/hostname"),
        ("/etc/remote-dir-link/etc/original", "/etc/original"),
    ] {
        assert_eq!(
            fs.resolve(guest.as_bytes(), true).unwrap(),
            target.as_bytes(),
            "{guest}"
        );
    }
    assert_eq!(
        fs.stat(b"/loop-a").unwrap_err().code(),
        "guest.fs.symlink_loop"
    );
    assert!(fs::is_not_found(&fs.stat(b"/dangling").unwrap_err()));
    assert_eq!(
        fs.open(b"/etc").err().unwrap().code(),
        "guest.fs.wrong_type"
    );
}

/// `xfs_db`'s word on an inode field, e.g. `core.format`.
fn xfs_db(img: &Path, path: &str, field: &str) -> String {
    run(
        "xfs_db",
        &[
            "-r",
            "-c",
            &format!("path {path}"),
            "-c",
            &format!("print {field}"),
            s(img),
        ],
    )
}

/// The structures the test claims to cover are really in the image.
fn assert_fixture_is_what_it_claims(img: &Path) {
    // Directory forms: local (short-form), extents in one block, leaf, node.
    assert!(xfs_db(img, "/etc", "core.format").contains("(local)"));
    assert!(
        xfs_db(img, "/names", "core.size").contains("= 4096"),
        "names is one directory block"
    );
    // Leaf form: a leaf block at 32 GiB (file block 8388608), no free index at 64 GiB;
    // node form has both.
    let bmap = |p: &str| {
        run(
            "xfs_db",
            &["-r", "-c", &format!("path {p}"), "-c", "bmap", s(img)],
        )
    };
    let (leaf, node) = (bmap("/leaf-dir"), bmap("/big-dir"));
    assert!(
        leaf.contains("data offset 8388608 ") && !leaf.contains("data offset 16777216 "),
        "leaf-dir is not a leaf directory: {leaf}"
    );
    assert!(
        node.contains("data offset 16777216 ") && node.matches("data offset 83886").count() > 1,
        "big-dir is not a node directory: {node}"
    );
    // Remote symlink, bmbt data forks, bigtime.
    assert!(xfs_db(img, "/etc/remote-dir-link", "core.format").contains("(extents)"));
    for f in ["/frag-a", "/holes"] {
        assert!(
            xfs_db(img, f, "core.format").contains("(btree)"),
            "{f} has no bmbt"
        );
    }
    assert!(xfs_db(img, "/future", "v3.bigtime").contains("= 1"));
}

#[test]
fn xfs_v5_tree_matches_the_kernel_bare_in_gpt_and_in_vhdx() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    blank(&img, FS_BYTES);
    run("mkfs.xfs", &["-q", "-f", "-L", "xfsroot", s(&img)]);
    {
        let _rw = Mount::typed(&img, &dir.path().join("rw"), "xfs", "loop");
        fill(&dir.path().join("rw"));
    }
    assert_fixture_is_what_it_claims(&img);
    let mnt = dir.path().join("ro");
    let ro = Mount::typed(&img, &mnt, "xfs", "loop,ro");
    let want = host_view(&mnt);
    drop(ro);
    assert!(want.len() > 3300, "the tree has {} entries", want.len());

    let bare = fs::open(Volume::whole(open_image(&img))).unwrap();
    assert_eq!(bare.kind(), FsKind::Xfs);
    assert_same(&want, &our_view(bare.as_ref(), &[], &[]), "bare");
    assert_lookups(bare.as_ref());

    // In a GPT partition at 1 MiB, then that disk as a dynamic VHDX.
    let disk = dir.path().join("disk.img");
    blank(&disk, FS_BYTES + 2 * MIB);
    sfdisk(
        &disk,
        &format!("label: gpt\nstart=2048, size={}, type=L\n", FS_BYTES / 512),
    );
    place(&disk, &img, &[(0, FS_BYTES, MIB)]);
    assert_same(
        &want,
        &our_view(fs_in_partition(&disk, FsKind::Xfs, None).as_ref(), &[], &[]),
        "gpt",
    );
    let vhdx = dir.path().join("disk.vhdx");
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "vhdx", s(&disk), s(&vhdx)],
    );
    assert_same(
        &want,
        &our_view(fs_in_partition(&vhdx, FsKind::Xfs, None).as_ref(), &[], &[]),
        "vhdx",
    );
}

/// A log left dirty by a shutdown is refused; once the kernel has replayed it (a mount),
/// the same file system opens and shows what was written before the shutdown. The log is
/// the smallest mkfs.xfs allows (it permits one under 64 MiB only with the environment of
/// its own test suite) and is made to wrap first, so the head is found past a cycle change
/// rather than in a log still on its first pass.
#[test]
fn xfs_dirty_log_is_refused_until_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    blank(&img, FS_BYTES);
    let out = Command::new("mkfs.xfs")
        .args(["-q", "-f", "-l", "size=1368b", s(&img)])
        .env("TEST_DIR", dir.path())
        .env("TEST_DEV", &img)
        .env("QA_CHECK_FS", "1")
        .output()
        .expect("oracle `mkfs.xfs` is required; scripts/setup.sh installs it");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mnt = dir.path().join("rw");
    {
        let _rw = Mount::typed(&img, &mnt, "xfs", "loop");
        for round in 0..8 {
            let d = mnt.join(format!("churn{round}"));
            std::fs::create_dir(&d).unwrap();
            for i in 0..3000 {
                std::fs::write(d.join(format!("f{i}")), b"").unwrap();
            }
            std::fs::remove_dir_all(&d).unwrap();
            run("sync", &[]);
        }
        std::fs::write(mnt.join("kept"), b"after the churn\n").unwrap();
    }
    let logprint = run("xfs_logprint", &["-d", s(&img)]);
    assert!(
        logprint.contains("HEADER Cycle 2") || logprint.contains("HEADER Cycle 3"),
        "the log did not wrap"
    );
    let fs = fs::open(Volume::whole(open_image(&img))).unwrap();
    let mut buf = [0u8; 64];
    let n = fs.open(b"/kept").unwrap().read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"after the churn\n");
    drop(fs);
    let mnt = dir.path().join("rw");
    {
        let _rw = Mount::typed(&img, &mnt, "xfs", "loop");
        // The file's data reaches the disk (fsync); the directory made afterwards exists
        // only in the log when the file system shuts down.
        let f = std::fs::File::create(mnt.join("written")).unwrap();
        f.write_all_at(b"before the crash\n", 0).unwrap();
        f.sync_all().unwrap();
        std::fs::create_dir(mnt.join("newdir")).unwrap();
        // Flush the log (-f) but not the metadata: the log holds the only current copy.
        run("xfs_io", &["-x", "-c", "shutdown -f", s(&mnt)]);
    }
    // xfs_repair -n agrees the log is dirty (it exits non-zero and says so).
    let repair = Command::new("xfs_repair")
        .args(["-n", s(&img)])
        .output()
        .expect("oracle `xfs_repair` is required; scripts/setup.sh installs it");
    let said = String::from_utf8_lossy(&repair.stderr).into_owned();
    assert!(
        !repair.status.success() && said.contains("log"),
        "xfs_repair -n: {said}"
    );
    let err = fs::open(Volume::whole(open_image(&img))).err().unwrap();
    assert_eq!(err.code(), "guest.fs.xfs_dirty_log", "{err}");
    assert!(err.to_string().contains("xfs_repair"), "{err}");

    drop(Mount::typed(&img, &mnt, "xfs", "loop"));
    let fs = fs::open(Volume::whole(open_image(&img))).unwrap();
    let mut f = fs.open(b"/written").unwrap();
    let mut buf = [0u8; 64];
    let n = f.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"before the crash\n");
    assert_eq!(fs.stat(b"/newdir").unwrap().file_type, FileType::Directory);
}

/// nrext64 (not yet mkfs's default) moves the data extent count to a 64-bit field: files
/// in extents and bmbt form read equal to the kernel's through it.
#[test]
fn xfs_nrext64_matches_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    blank(&img, FS_BYTES);
    run("mkfs.xfs", &["-q", "-f", "-i", "nrext64=1", s(&img)]);
    let mnt = dir.path().join("rw");
    {
        let _rw = Mount::typed(&img, &mnt, "xfs", "loop");
        std::fs::write(mnt.join("small"), pattern(10000, 4)).unwrap();
        std::fs::write(mnt.join("holes"), pattern(100 * 4096, 5)).unwrap();
        let punches: Vec<String> = (0..100)
            .step_by(2)
            .map(|i| format!("fpunch {} 4096", i * 4096))
            .collect();
        let mut args = Vec::new();
        for p in &punches {
            args.extend(["-c", p.as_str()]);
        }
        let holes = mnt.join("holes");
        args.push(s(&holes));
        run("xfs_io", &args);
    }
    assert!(xfs_db(&img, "/holes", "v3.nrext64").contains("= 1"));
    assert!(xfs_db(&img, "/holes", "core.format").contains("(btree)"));
    let ro = Mount::typed(&img, &mnt, "xfs", "loop,ro");
    let want = host_view(&mnt);
    drop(ro);
    let fs = fs::open(Volume::whole(open_image(&img))).unwrap();
    assert_same(&want, &our_view(fs.as_ref(), &[], &[]), "nrext64");
}

/// One line of a proto file for `path` under `root` (names must not contain white space).
fn proto_dir(root: &Path, depth: usize, out: &mut String) {
    let mut entries: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let name = p.file_name().unwrap().to_str().unwrap();
        let mode = md.mode();
        let flags = format!(
            "{}{}{:03o}",
            if mode & 0o4000 != 0 { 'u' } else { '-' },
            if mode & 0o2000 != 0 { 'g' } else { '-' },
            mode & 0o777
        );
        let pad = " ".repeat(depth);
        let (uid, gid) = (md.uid(), md.gid());
        let ft = md.file_type();
        if ft.is_dir() {
            out.push_str(&format!("{pad}{name} d{flags} {uid} {gid}\n"));
            proto_dir(&p, depth + 1, out);
            out.push_str(&format!("{pad}$\n"));
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&p).unwrap();
            out.push_str(&format!(
                "{pad}{name} l{flags} {uid} {gid} {}\n",
                t.display()
            ));
        } else {
            out.push_str(&format!(
                "{pad}{name} -{flags} {uid} {gid} {}\n",
                p.display()
            ));
        }
    }
}

/// v4 (no CRCs, no ftype: entry types come from inodes; classic timestamps), built by
/// `mkfs.xfs -p`, read back equal to the tree it was made from; mtimes are mkfs's clock.
#[test]
fn xfs_v4_without_ftype_matches_its_proto_tree() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let d = |p: &str| std::fs::create_dir_all(tree.join(p)).unwrap();
    let w = |p: &str, data: &[u8]| std::fs::write(tree.join(p), data).unwrap();
    d("etc");
    w("etc/hostname", b"guest\n");
    w("etc/empty", b"");
    let deep: String = (0..30).map(|i| format!("level{i}/")).collect();
    d(&deep);
    w(&format!("{deep}bottom.txt"), b"deep\n");
    d("big-dir");
    for i in 0..2000 {
        w(
            &format!("big-dir/entry-{i:05}-{}", "n".repeat(i % 40)),
            format!("{i}").as_bytes(),
        );
    }
    d("names");
    for name in [
        "héllo_wörld_✓",
        "日本語のファイル",
        "emoji🦀",
        &"L".repeat(255),
    ] {
        w(&format!("names/{name}"), name.as_bytes());
    }
    w("big.bin", &pattern(2 * MIB as usize + 777, 5));
    std::os::unix::fs::symlink("hostname", tree.join("etc/short-link")).unwrap();
    std::os::unix::fs::symlink(
        format!("../{}", "./".repeat(150)),
        tree.join("etc/remote-link"),
    )
    .unwrap();
    w("suid", b"x");
    std::fs::set_permissions(tree.join("suid"), std::fs::Permissions::from_mode(0o4711)).unwrap();
    std::os::unix::fs::chown(tree.join("suid"), Some(4242), Some(2424)).unwrap();
    let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\n");
    proto_dir(&tree, 1, &mut proto);
    proto.push_str("$\n");
    let proto_file = dir.path().join("proto");
    std::fs::write(&proto_file, proto).unwrap();
    let img = dir.path().join("v4.img");
    blank(&img, FS_BYTES);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    run(
        "mkfs.xfs",
        &[
            "-q",
            "-f",
            "-m",
            "crc=0",
            "-n",
            "ftype=0",
            "-p",
            s(&proto_file),
            s(&img),
        ],
    );
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(xfs_db(&img, "/big-dir", "core.version").contains("= 2"));
    assert!(run("xfs_db", &["-r", "-c", "version", s(&img)]).contains("V4"));

    let fs = fs::open(Volume::whole(open_image(&img))).unwrap();
    let mut want = host_view(&tree);
    let mut got = our_view(fs.as_ref(), &[], &[]);
    for (k, r) in &mut got {
        assert!(
            (before..=after + 1).contains(&r.mtime.0),
            "{}: mtime {:?}",
            String::from_utf8_lossy(k),
            r.mtime
        );
        r.mtime = (0, 0);
    }
    for r in want.values_mut() {
        r.mtime = (0, 0);
    }
    // The proto root is mode 755 owned by root whatever the temp dir is.
    let root = want.get_mut(b"/".as_slice()).unwrap();
    (root.mode, root.uid, root.gid) = (0o755, 0, 0);
    // Directory sizes are the file system's own.
    for (k, r) in &mut want {
        if r.kind == Kind::Directory {
            r.size = got[k].size;
        }
    }
    assert_same(&want, &got, "v4");
}
