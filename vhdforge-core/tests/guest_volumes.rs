//! `guest::scan` on disks made by the real tools (sfdisk, mkfs, LVM): every partition and
//! logical volume found with the identity blkid would give, and the OS root chosen.

use std::path::Path;
use std::sync::Arc;

use fixtures::guest::{build, Content, Format, Kind, Lv, Part, Table};
use vhdforge_core::guest::fs::FsKind;
use vhdforge_core::guest::{scan, volumes, OsFamily};
use vhdforge_core::DiskImage;

fn tree(root: &Path, os_release: bool) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    if os_release {
        std::fs::write(
            root.join("usr/lib/os-release"),
            "ID=centos\nVERSION_ID=\"7\"\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    }
    std::fs::write(root.join("etc/hostname"), "guest\n").unwrap();
}

fn open(p: &Path) -> Arc<dyn DiskImage> {
    Arc::from(vhdforge_core::open(p, &vhdforge_core::OpenOptions::default()).unwrap())
}

fn blkid(image: &Path, what: &str) -> String {
    fixtures::guest::run(
        "blkid",
        &["-p", "-s", what, "-o", "value", image.to_str().unwrap()],
    )
    .trim()
    .to_string()
}

#[test]
fn a_centos_like_gpt_disk_with_lvm_finds_its_xfs_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    tree(&root, true);
    let boot = dir.path().join("boot");
    std::fs::create_dir_all(boot.join("grub2")).unwrap();
    let disk = dir.path().join("disk.raw");
    let vg = format!("cos{}", std::process::id());
    let built = build(
        &disk,
        512,
        Table::Gpt,
        &[
            Part::new(40, Kind::Esp, Content::fs(Format::Fat32, "ESP", None)),
            Part::new(
                64,
                Kind::Linux,
                Content::fs(Format::Ext4, "boot", Some(&boot)),
            ),
            Part::new(
                400,
                Kind::Lvm,
                Content::Lvm {
                    vg: vg.clone(),
                    lvs: vec![
                        Lv {
                            name: "root".into(),
                            size_mib: 320,
                            content: Content::fs(Format::Xfs, "root", Some(&root)),
                        },
                        Lv {
                            name: "swap".into(),
                            size_mib: 16,
                            content: Content::fs(Format::Swap, "", None),
                        },
                    ],
                },
            ),
        ],
        &dir.path().join("scratch"),
    );
    let v = scan(&open(&disk)).unwrap();
    let got: Vec<(&str, FsKind, Option<&str>)> = v
        .volumes
        .iter()
        .map(|x| (x.name.as_str(), x.filesystem, x.label.as_deref()))
        .collect();
    let root_lv = format!("{vg}/root");
    let swap_lv = format!("{vg}/swap");
    assert_eq!(
        got,
        [
            ("1", FsKind::Fat32, Some("ESP")),
            ("2", FsKind::Ext, Some("boot")),
            ("3", FsKind::LvmPv, None),
            (root_lv.as_str(), FsKind::Xfs, Some("root")),
            (swap_lv.as_str(), FsKind::Swap, None),
        ]
    );
    // UUIDs as blkid reads them from the same bytes.
    for f in &built.filesystems {
        let ours = v
            .volumes
            .iter()
            .find(|x| x.lvm == f.lvm && x.partition == Some(f.partition))
            .unwrap();
        assert_eq!(
            ours.uuid.as_deref().map(str::to_ascii_lowercase),
            Some(blkid(&f.image, "UUID").to_ascii_lowercase()),
            "{}",
            ours.name
        );
    }
    assert_eq!(v.volumes[3].partition, Some(3));
    assert_eq!(v.volumes[3].size_bytes, 320 << 20);
    let chosen = v.choose(None).unwrap();
    assert_eq!(chosen.name, root_lv);
    assert_eq!(chosen.os_root, Some(OsFamily::Linux));
    assert_eq!(v.choose(Some("boot")).unwrap().name, "2");
    assert_eq!(v.choose(Some(&root_lv)).unwrap().name, root_lv);
    let uuid = v.volumes[1].uuid.clone().unwrap().to_ascii_uppercase();
    assert_eq!(v.choose(Some(&uuid)).unwrap().name, "2");
    // The chosen root reads through to the file the kernel would show.
    let fs = chosen.open().unwrap();
    let mut r = fs.open(b"/etc/os-release").unwrap();
    let mut buf = vec![0u8; 64];
    let n = r.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"ID=centos"));
}

#[test]
fn two_roots_are_ambiguous_and_name_both() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    tree(&a, true);
    let disk = dir.path().join("disk.raw");
    build(
        &disk,
        80,
        Table::Mbr,
        &[
            Part::new(32, Kind::Linux, Content::fs(Format::Ext4, "one", Some(&a))).active(),
            Part::new(32, Kind::Linux, Content::fs(Format::Ext4, "two", Some(&a))),
        ],
        &dir.path().join("scratch"),
    );
    let v = scan(&open(&disk)).unwrap();
    let e = v.choose(None).unwrap_err();
    assert_eq!(e.code(), volumes::CODE_AMBIGUOUS);
    assert!(
        e.message().contains("label 'one'") && e.message().contains("label 'two'"),
        "{}",
        e.message()
    );
    assert_eq!(v.choose(Some("2")).unwrap().label.as_deref(), Some("two"));
}
