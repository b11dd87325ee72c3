//! `vhdforge volumes`/`ls`/`cat` — the real binary — on disks with no partition table whose
//! first bytes are a file system, as each format's own mkfs makes them on a plain file:
//! `mkntfs -F`, `mkfs.vfat` (FAT12, FAT16, FAT32), `mkfs.ext4`, `mkfs.xfs`. NTFS and FAT
//! boot sectors end in `55 AA` like an MBR (with four empty "records"), which once made
//! `volumes` show an empty MBR and no volume. Each must show as one volume, `disk` (also
//! `--volume 0`), of the kind `blkid -p` finds on the whole disk, and read exactly the file
//! each format's own tool wrote (`ntfscp`, `mcopy`, `mkfs.ext4 -d`, a loop mount for XFS).
//! A missing oracle fails, never skips.

use std::path::Path;

use fixtures::guest::{run, Mount};

const MIB: u64 = 1 << 20;

mod guest_cli;
use guest_cli::{s, vhdforge};

fn blank(p: &Path, mib: u64) {
    let _ = std::fs::remove_file(p);
    std::fs::File::create(p)
        .unwrap()
        .set_len(mib * MIB)
        .unwrap();
}

/// The file each image holds, and its contents.
const NAME: &str = "hello.txt";
fn content() -> Vec<u8> {
    (0..70_000u32).map(|i| (i * 31 % 251) as u8).collect()
}

/// Make the bare file system `kind` in `dir/<kind>.img` holding `/hello.txt`; the value
/// `blkid -p` must give for it.
fn make(dir: &Path, kind: &str) -> (std::path::PathBuf, &'static str) {
    let img = dir.join(format!("{kind}.img"));
    let src = dir.join(NAME);
    std::fs::write(&src, content()).unwrap();
    match kind {
        "ntfs" => {
            blank(&img, 64);
            run("mkntfs", &["-F", "-q", "-f", "-L", "BARE", s(&img)]);
            run("ntfscp", &["-f", s(&img), s(&src), &format!("/{NAME}")]);
            (img, "ntfs")
        }
        "fat12" | "fat16" | "fat32" => {
            let (bits, mib) = match kind {
                "fat12" => ("12", 4),
                "fat16" => ("16", 64),
                _ => ("32", 300),
            };
            blank(&img, mib);
            run("mkfs.vfat", &["-F", bits, "-n", "BARE", s(&img)]);
            run("mcopy", &["-i", s(&img), s(&src), &format!("::/{NAME}")]);
            (img, "vfat")
        }
        "ext4" => {
            let tree = dir.join("tree");
            std::fs::create_dir_all(&tree).unwrap();
            std::fs::copy(&src, tree.join(NAME)).unwrap();
            blank(&img, 64);
            run(
                "mkfs.ext4",
                &["-q", "-F", "-L", "BARE", "-d", s(&tree), s(&img)],
            );
            (img, "ext4")
        }
        "xfs" => {
            blank(&img, 300);
            run("mkfs.xfs", &["-q", "-f", "-L", "BARE", s(&img)]);
            let m = Mount::typed(&img, &dir.join("mnt"), "xfs", "loop");
            std::fs::copy(&src, dir.join("mnt").join(NAME)).unwrap();
            drop(m);
            (img, "xfs")
        }
        _ => unreachable!(),
    }
}

#[test]
fn bare_file_systems_are_one_volume_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["ntfs", "fat12", "fat16", "fat32", "ext4", "xfs"] {
        let (img, blkid_type) = make(dir.path(), kind);
        // The kernel's library finds the file system on the whole disk, no partition.
        let probe = run("blkid", &["-p", "-o", "value", "-s", "TYPE", s(&img)]);
        assert_eq!(probe.trim(), blkid_type, "{kind}: blkid");
        let parts = run("blkid", &["-p", "-o", "value", "-s", "PTTYPE", s(&img)]);
        assert_eq!(parts.trim(), "", "{kind}: blkid sees a partition table");

        let out = vhdforge(&["volumes", "--json", s(&img)]);
        assert!(out.status.success(), "{kind}: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["scheme"], "none", "{kind}: {v}");
        let vols = v["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 1, "{kind}: {v}");
        assert_eq!(vols[0]["name"], "disk", "{kind}: {v}");
        assert_eq!(vols[0]["start_bytes"], 0, "{kind}: {v}");
        assert_eq!(v["default"], "disk", "{kind}: {v}");
        let fs = vols[0]["filesystem"].as_str().unwrap().to_string();
        let want_fs = match kind {
            "ext4" => "ext",
            k => k,
        };
        assert_eq!(fs, want_fs, "{kind}: {v}");
        assert_eq!(vols[0]["label"], "BARE", "{kind}: {v}");

        // The default volume, `--volume disk` and `--volume 0` all read the file exactly.
        for extra in [&[][..], &["--volume", "disk"], &["--volume", "0"]] {
            let mut args = vec!["cat"];
            args.extend_from_slice(extra);
            let path = format!("/{NAME}");
            args.extend_from_slice(&[s(&img), &path]);
            let out = vhdforge(&args);
            assert!(
                out.status.success(),
                "{kind} {extra:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.stdout == content(), "{kind} {extra:?}: wrong bytes");
        }
        let out = vhdforge(&["ls", s(&img), "/"]);
        assert!(out.status.success(), "{kind}: {out:?}");
        let listing = String::from_utf8_lossy(&out.stdout);
        // FAT shows the short name's case as stored; NAME fits 8.3 in lower case.
        assert!(
            listing.lines().any(|l| l.eq_ignore_ascii_case(NAME)),
            "{kind}: {listing}"
        );
    }
}

#[test]
fn an_empty_mbr_on_a_blank_disk_is_still_no_volume() {
    // The other side of the rule: `55 AA` and four empty records over nothing a file system
    // would start with stays an empty MBR (no volume, `ls` explains).
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("empty-mbr.img");
    blank(&img, 8);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x55, 0xAA], 510).unwrap();
    let out = vhdforge(&["volumes", "--json", s(&img)]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scheme"], "mbr", "{v}");
    assert_eq!(v["volumes"].as_array().unwrap().len(), 0, "{v}");
    let out = vhdforge(&["ls", s(&img), "/"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
