//! Files fragmented into many extents, through the real binary, against the kernel: an ext4
//! and an XFS volume in one GPT disk, each holding two files written block by block in turn
//! (`dd conv=notrunc,fsync` on a read-write loop mount), so each file's blocks interleave
//! with the other's — an ext4 extent tree with index blocks, an XFS B-tree data fork — with
//! holes between some of them. `ls -R --json` and `cat` of every file must equal the
//! read-only loop mount of the same bytes, as raw and as VHDX. Needs root (CI is root); a
//! missing tool fails the test, never skips it.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::Path;

use fixtures::guest::tree::{kernel_view, Record};
use fixtures::guest::{build, run, Content, Kind, Mount, Part, Table};
use sha2::{Digest as _, Sha256};

const MIB: u64 = 1 << 20;
const FS_MIB: u64 = 300;
const BLOCKS: u64 = 300;

mod guest_cli;
use guest_cli::{s, vhdforge};

/// Write 4 KiB block `i` of `a` then of `b`, each flushed before the next is written, so the
/// allocator places them one after the other: `a` and `b` alternate on disk. `b` skips every
/// fifth block, leaving holes.
fn interleave(mnt: &Path) {
    for i in 0..BLOCKS {
        for (name, write) in [("a", true), ("b", i % 5 != 4)] {
            if !write {
                continue;
            }
            run(
                "dd",
                &[
                    "if=/dev/urandom",
                    &format!("of={}", s(&mnt.join(name))),
                    "bs=4096",
                    "count=1",
                    &format!("seek={i}"),
                    "conv=notrunc,fsync",
                    "status=none",
                ],
            );
        }
    }
    // A tail that is not a whole block.
    std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("a"))
        .unwrap()
        .write_all_at(b"tail", BLOCKS * 4096)
        .unwrap();
    run("sync", &[]);
}

/// The number of extents `filefrag` counts in `file`.
fn extents(file: &Path) -> u64 {
    let out = run("filefrag", &[s(file)]);
    out.rsplit(": ")
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("filefrag said {out}"))
}

/// Make `img` (new) an ext4 or XFS file system with the two interleaved files, and check they
/// really are fragmented.
fn make_fragmented(img: &Path, xfs: bool) {
    std::fs::File::create_new(img)
        .unwrap()
        .set_len(FS_MIB * MIB)
        .unwrap();
    let mnt = img.with_extension("mnt");
    if xfs {
        run("mkfs.xfs", &["-q", "-f", "-L", "frag-xfs", s(img)]);
        // Without a fixed one-block preallocation XFS reserves ahead of EOF and each file
        // stays in a few long extents whatever the write order.
        let m = Mount::new(img, &mnt, "loop,allocsize=4k");
        interleave(&mnt);
        let ino = std::fs::metadata(mnt.join("a")).unwrap().ino();
        assert!(extents(&mnt.join("a")) > 100);
        // A plain (not lazy) unmount: everything is written back when it returns.
        run("umount", &[s(&mnt)]);
        // Already unmounted: nothing left for the guard to do.
        std::mem::forget(m);
        let format = run(
            "xfs_db",
            &[
                "-r",
                "-c",
                &format!("inode {ino}"),
                "-c",
                "print core.format",
                s(img),
            ],
        );
        assert!(format.contains("btree"), "a's data fork is {format}");
    } else {
        run("mkfs.ext4", &["-q", "-F", "-L", "frag-ext4", s(img)]);
        let m = Mount::new(img, &mnt, "loop");
        // mballoc gives a file past `mb_stream_req` blocks its own preallocation, which
        // keeps it contiguous; raised, both files share the group's and interleave.
        let dev = run("findmnt", &["-n", "-o", "SOURCE", s(&mnt)]);
        let knob = Path::new("/sys/fs/ext4")
            .join(Path::new(dev.trim()).file_name().unwrap())
            .join("mb_stream_req");
        std::fs::write(&knob, "100000").unwrap();
        interleave(&mnt);
        // More than the 4 extents an inode holds: an index block is needed.
        let n = extents(&mnt.join("a"));
        assert!(n > 100, "a has {n} extents");
        run("umount", &[s(&mnt)]);
        // Already unmounted: nothing left for the guard to do.
        std::mem::forget(m);
    }
}

/// `vhdforge ls -R --json` of volume `volume` as the fixtures' records, with `cat` hashes.
fn ours(image: &Path, volume: &str) -> BTreeMap<Vec<u8>, Record> {
    let out = vhdforge(&["ls", "-R", "--json", "--volume", volume, s(image), "/"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut map = BTreeMap::new();
    for v in all {
        let path = v["path"].as_str().unwrap();
        let kind = match v["type"].as_str().unwrap() {
            "file" => "file",
            "dir" => "dir",
            "symlink" => "symlink",
            _ => "other",
        };
        let sha256 = (kind == "file").then(|| {
            let c = vhdforge(&["cat", "--volume", volume, s(image), path]);
            assert!(c.status.success(), "cat {path}");
            Sha256::digest(&c.stdout).into()
        });
        let n = |k: &str| u32::try_from(v[k].as_u64().unwrap()).unwrap();
        let rec = Record {
            kind,
            mode: n("mode"),
            uid: n("uid"),
            gid: n("gid"),
            size: v["size"].as_u64().unwrap(),
            mtime: v["mtime"].as_i64().unwrap(),
            target: v["target"].as_str().map(|t| t.as_bytes().to_vec()),
            sha256,
        };
        map.insert(path.as_bytes().to_vec(), rec);
    }
    map
}

#[test]
fn fragmented_ext4_and_xfs_files_match_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let ext4 = dir.path().join("ext4.fs");
    let xfs = dir.path().join("xfs.fs");
    make_fragmented(&ext4, false);
    make_fragmented(&xfs, true);
    let raw = dir.path().join("disk.raw");
    let built = build(
        &raw,
        2 * FS_MIB + 3,
        Table::Gpt,
        &[
            Part::new(FS_MIB, Kind::Linux, Content::Empty),
            Part::new(FS_MIB, Kind::Linux, Content::Empty),
        ],
        &dir.path().join("scratch"),
    );
    let disk = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    for (img, &(_, start, _)) in [&ext4, &xfs].into_iter().zip(&built.partitions) {
        disk.write_all_at(&std::fs::read(img).unwrap(), start)
            .unwrap();
    }
    drop(disk);
    let vhdx = dir.path().join("disk.vhdx");
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "vhdx", s(&raw), s(&vhdx)],
    );
    for (img, volume) in [(&ext4, "1"), (&xfs, "frag-xfs")] {
        let mnt = dir.path().join(format!("ro-{volume}"));
        let _m = Mount::new(img, &mnt, "loop,ro");
        let want = kernel_view(&mnt);
        assert!(want.contains_key(b"/a".as_slice()) && want.contains_key(b"/b".as_slice()));
        for image in [&raw, &vhdx] {
            let got = ours(image, volume);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{} volume {volume}",
                image.display()
            );
            for (path, w) in &want {
                assert_eq!(
                    &got[path],
                    w,
                    "{} volume {volume}: {}",
                    image.display(),
                    String::from_utf8_lossy(path)
                );
            }
        }
    }
}
