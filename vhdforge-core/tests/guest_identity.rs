//! File identity (`FileSystem::file_id_resolved`) against the kernel, and NTFS labels against
//! ntfs-3g's tools. The kernel's `st_ino` is the oracle for ext2/4 and XFS (loop mounts,
//! read-only) and ntfs-3g's for NTFS (it reports the MFT record number): for every entry of a
//! generated tree — hard links, nested directories, a directory large enough for an ext4
//! htree, and on ext2 with 1 KiB blocks for indirect blocks — vhdforge's identity must be
//! the oracle's number. A missing tool fails the test, never skips it.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fixtures::guest::{build, run, Content, Format, Kind, Mount, Part, Table};
use vhdforge_core::guest::fs::{FileSystem, Volume};
use vhdforge_core::guest::scan;
use vhdforge_core::{DiskImage, OpenOptions};

/// A host tree: nested directories, a hard link, a symlink, an empty file, and a directory
/// of 3000 entries (several blocks: an htree on ext4, indirect blocks on ext2/1 KiB).
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::write(root.join("a/file"), b"data").unwrap();
    std::fs::hard_link(root.join("a/file"), root.join("a/b/c/link")).unwrap();
    std::os::unix::fs::symlink("../file", root.join("a/b/sym")).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    let big = root.join("big");
    std::fs::create_dir(&big).unwrap();
    for i in 0..3000 {
        std::fs::write(big.join(format!("entry-with-a-longish-name-{i:05}")), b"").unwrap();
    }
    std::fs::create_dir(big.join("zz-last-dir")).unwrap();
}

/// Every path under `mnt` (relative, with a leading '/'), and its `st_ino`.
fn kernel_inodes(mnt: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::from("/")];
    while let Some(rel) = todo.pop() {
        let host = mnt.join(rel.strip_prefix("/").unwrap());
        let md = std::fs::symlink_metadata(&host).unwrap();
        out.insert(rel.to_str().unwrap().to_string(), md.ino());
        if md.is_dir() {
            for e in std::fs::read_dir(&host).unwrap() {
                let name = e.unwrap().file_name();
                if name == "lost+found" {
                    continue;
                }
                todo.push(rel.join(name));
            }
        }
    }
    out
}

fn open_fs(image: &Path) -> Box<dyn FileSystem> {
    let img: Arc<dyn DiskImage> =
        Arc::from(vhdforge_core::open(image, &OpenOptions::default()).unwrap());
    vhdforge_core::guest::fs::open(Volume::whole(img)).unwrap()
}

/// vhdforge's identity of every path the kernel listed equals the kernel's inode number.
fn assert_same_identities(fs: &dyn FileSystem, kernel: &BTreeMap<String, u64>) {
    assert!(kernel.len() > 3000, "{} entries", kernel.len());
    for (path, ino) in kernel {
        let id = fs
            .file_id_resolved(path.as_bytes())
            .unwrap()
            .unwrap_or_else(|| panic!("{path}: no identity"));
        assert_eq!(id.number, *ino, "{path}");
        assert_eq!(id.volume, 0, "{path}");
    }
    // The hard link and its other name are one file; two directories are two.
    let a = |p: &str| fs.file_id_resolved(p.as_bytes()).unwrap().unwrap();
    assert_eq!(a("/a/file"), a("/a/b/c/link"));
    assert_ne!(a("/a/b"), a("/a/b/c"));
}

/// Build a bare file system of `format` (`extra` mkfs arguments for ext) holding the tree.
fn bare_fs(dir: &Path, format: Format) -> PathBuf {
    let tree = dir.join("tree");
    make_tree(&tree);
    let disk = dir.join("disk.raw");
    // mkfs.xfs wants 300 MB at least; the files are sparse.
    let built = build(
        &disk,
        322,
        Table::Gpt,
        &[Part::new(
            320,
            Kind::Linux,
            Content::fs(format, "", Some(&tree)),
        )],
        &dir.join("scratch"),
    );
    built.filesystems[0].image.clone()
}

#[test]
fn ext4_identities_are_the_kernels_inode_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let img = bare_fs(dir.path(), Format::Ext4);
    let mnt = dir.path().join("mnt");
    let _m = Mount::new(&img, &mnt, "loop,ro");
    assert_same_identities(open_fs(&img).as_ref(), &kernel_inodes(&mnt));
}

/// ext2 with 1 KiB blocks and no extents: the 3000-entry directory needs single indirect
/// blocks, which the identity walk reads itself.
#[test]
fn ext2_block_map_identities_are_the_kernels_inode_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    let img = dir.path().join("ext2.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(
        "mkfs.ext2",
        &[
            "-q",
            "-F",
            "-b",
            "1024",
            "-d",
            tree.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    );
    let mnt = dir.path().join("mnt");
    let _m = Mount::new(&img, &mnt, "loop,ro");
    let kernel = kernel_inodes(&mnt);
    let big = std::fs::metadata(mnt.join("big")).unwrap().len();
    assert!(
        big > 12 * 1024,
        "/big is {big} bytes: not past the direct blocks"
    );
    assert_same_identities(open_fs(&img).as_ref(), &kernel);
}

#[test]
fn xfs_identities_are_the_kernels_inode_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let img = bare_fs(dir.path(), Format::Xfs);
    let mnt = dir.path().join("mnt");
    let _m = Mount::new(&img, &mnt, "loop,ro");
    assert_same_identities(open_fs(&img).as_ref(), &kernel_inodes(&mnt));
}

/// `mkntfs -L` on a partitioned disk, then `ntfslabel` with a non-ASCII label on the bare
/// volume: `volumes` shows each, and `--volume LABEL` (`choose`) finds the volume by it.
/// Before, NTFS volumes had no label: it is in `$Volume`, not next to the signature.
#[test]
fn ntfs_labels_come_from_the_volume_file() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    let built = build(
        &disk,
        70,
        Table::Gpt,
        &[Part::new(
            64,
            Kind::BasicData,
            Content::fs(Format::Ntfs, "WinData", None),
        )],
        &dir.path().join("scratch"),
    );
    let scan_of = |p: &Path| {
        let img: Arc<dyn DiskImage> =
            Arc::from(vhdforge_core::open(p, &OpenOptions::default()).unwrap());
        scan(&img).unwrap()
    };
    let v = scan_of(&disk);
    assert_eq!(v.volumes[0].label.as_deref(), Some("WinData"));
    assert_eq!(v.choose(Some("WinData")).unwrap().name, v.volumes[0].name);

    // Relabel the scratch copy of the volume, then put it back into the partition.
    let bare = &built.filesystems[0].image;
    run("ntfslabel", &[bare.to_str().unwrap(), "Dätä ✓"]);
    let shown = run("ntfslabel", &[bare.to_str().unwrap()]);
    assert_eq!(shown.trim_end(), "Dätä ✓", "the oracle's own reading");
    let bytes = std::fs::read(bare).unwrap();
    let out = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&out, &bytes, built.partitions[0].1).unwrap();
    drop(out);
    let v = scan_of(&disk);
    assert_eq!(v.volumes[0].label.as_deref(), Some("Dätä ✓"));
    assert!(v.choose(Some("Dätä ✓")).is_ok());
}

/// NTFS identities are MFT record numbers, which ntfs-3g reports as `st_ino`.
#[test]
fn ntfs_identities_are_the_record_numbers_ntfs3g_reports() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("Dir/Sub")).unwrap();
    std::fs::write(tree.join("Dir/file.txt"), b"x").unwrap();
    std::fs::write(tree.join("top.txt"), b"y").unwrap();
    let disk = dir.path().join("disk.raw");
    let built = build(
        &disk,
        70,
        Table::Gpt,
        &[Part::new(
            64,
            Kind::BasicData,
            Content::fs(Format::Ntfs, "", Some(&tree)),
        )],
        &dir.path().join("scratch"),
    );
    let bare = &built.filesystems[0].image;
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run(
        "ntfs-3g",
        &["-o", "ro", bare.to_str().unwrap(), mnt.to_str().unwrap()],
    );
    let kernel = kernel_inodes(&mnt);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    let fs = open_fs(bare);
    for path in ["/Dir", "/Dir/Sub", "/Dir/file.txt", "/top.txt"] {
        let id = fs.file_id_resolved(path.as_bytes()).unwrap().unwrap();
        assert_eq!(id.number, kernel[path], "{path}");
    }
}

/// An image that records the largest single read it was asked for.
#[derive(Debug)]
struct Widest(Box<dyn DiskImage>, std::sync::atomic::AtomicUsize);

impl DiskImage for Widest {
    fn info(&self) -> &vhdforge_core::ImageInfo {
        self.0.info()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vhdforge_core::Result<()> {
        self.1
            .fetch_max(buf.len(), std::sync::atomic::Ordering::Relaxed);
        self.0.read_at(buf, offset)
    }
    fn extents(
        &self,
        start: u64,
        length: u64,
        out: &mut Vec<vhdforge_core::Extent>,
    ) -> vhdforge_core::Result<()> {
        self.0.extents(start, length, out)
    }
    fn findings(&self) -> &[vhdforge_core::Finding] {
        self.0.findings()
    }
}

/// ext4 file data is read through the file's extent map, many blocks per image read
/// (before: one 4 KiB block per call through the crate's block cache, 0.4× the kernel's
/// speed), and still exactly: a dense file, a sparse one, and a preallocated (unwritten)
/// extent with data in its middle, written by the kernel, read back through a loop mount.
#[test]
fn ext4_files_are_read_by_their_extents_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ext4.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]);
    let mnt = dir.path().join("mnt");
    {
        let _rw = Mount::new(&img, &mnt, "loop");
        let dense: Vec<u8> = (0..8u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(mnt.join("dense"), &dense).unwrap();
        let f = std::fs::File::create(mnt.join("sparse")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"head", 0).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 5 << 20).unwrap();
        f.set_len(7 << 20).unwrap();
        drop(f);
        let p = mnt.join("prealloc");
        run("fallocate", &["-l", "3M", p.to_str().unwrap()]);
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"inside", 1 << 20).unwrap();
        f.sync_all().unwrap();
    }
    let _ro = Mount::new(&img, &mnt, "loop,ro");
    let raw = vhdforge_core::open(&img, &OpenOptions::default()).unwrap();
    let widest = Arc::new(Widest(raw, std::sync::atomic::AtomicUsize::new(0)));
    let as_image: Arc<dyn DiskImage> = widest.clone();
    let fs = vhdforge_core::guest::fs::open(Volume::whole(as_image)).unwrap();
    for name in ["dense", "sparse", "prealloc"] {
        let want = std::fs::read(mnt.join(name)).unwrap();
        let mut r = fs.open(format!("/{name}").as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got.len(), want.len(), "{name}");
        assert!(got == want, "{name}: the bytes differ from the kernel's");
        // And from the middle, after a seek.
        r.seek(1 << 20).unwrap();
        let n = r.read(&mut buf[..100]).unwrap();
        assert_eq!(
            &buf[..n],
            &want[1 << 20..(1 << 20) + n],
            "{name} after a seek"
        );
    }
    let widest = widest.1.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        widest >= 2 << 20,
        "the widest image read was {widest} bytes: file data did not go by extents"
    );
}
