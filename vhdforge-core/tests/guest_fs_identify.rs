//! Differential test of `guest::fs::identify` against libblkid (`blkid -p`, low-level
//! probing) on volumes the formats' own tools made: ext2, ext4, XFS, FAT12/16/32, swap and
//! an LVM2 PV, each with a label where the tool sets one. Kind, label and UUID must match.
//! Tools that are missing fail the test (scripts/setup.sh installs them), never skip it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use vhdforge_core::guest::fs::{self, FsKind};
use vhdforge_core::guest::Window;
use vhdforge_core::OpenOptions;

const MIB: u64 = 1 << 20;

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
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `blkid -p -o export`: KEY=value lines.
fn blkid(img: &Path) -> BTreeMap<String, String> {
    run("blkid", &["-p", "-o", "export", img.to_str().unwrap()])
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn identify_agrees_with_blkid_on_volumes_made_by_their_tools() {
    let dir = tempfile::tempdir().unwrap();
    // (file, size, tool and arguments, kind vhdforge must report)
    let cases: &[(&str, u64, &[&str], FsKind)] = &[
        (
            "ext4",
            32,
            &["mkfs.ext4", "-q", "-F", "-L", "rootfs"],
            FsKind::Ext,
        ),
        (
            "ext2",
            8,
            &["mkfs.ext2", "-q", "-F", "-L", "boot"],
            FsKind::Ext,
        ),
        (
            "xfs",
            300,
            &["mkfs.xfs", "-q", "-L", "xfsroot"],
            FsKind::Xfs,
        ),
        (
            "xfs-v4",
            300,
            &["mkfs.xfs", "-q", "-m", "crc=0", "-L", "oldxfs"],
            FsKind::Xfs,
        ),
        (
            "fat32",
            64,
            &["mkfs.fat", "-F", "32", "-n", "ESP"],
            FsKind::Fat32,
        ),
        (
            "fat16",
            16,
            &["mkfs.fat", "-F", "16", "-n", "F16"],
            FsKind::Fat16,
        ),
        ("fat12", 2, &["mkfs.fat", "-F", "12"], FsKind::Fat12),
        ("swap", 16, &["mkswap", "-L", "swappy"], FsKind::Swap),
        (
            "pv",
            16,
            &[
                "pvcreate",
                "-q",
                "--config",
                "devices { use_devicesfile=0 }",
                "-ff",
                "-y",
            ],
            FsKind::LvmPv,
        ),
    ];
    for (name, mib, tool, want) in cases {
        let img = dir.path().join(format!("{name}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib * MIB)
            .unwrap();
        let mut args: Vec<&str> = tool[1..].to_vec();
        args.push(img.to_str().unwrap());
        if *name == "pv" {
            // pvcreate wants a block device: label a loop device, then detach it.
            let dev = run("losetup", &["-f", "--show", img.to_str().unwrap()]);
            let dev = dev.trim().to_string();
            *args.last_mut().unwrap() = &dev;
            let r = Command::new(tool[0])
                .args(&args)
                .env("LVM_SUPPRESS_FD_WARNINGS", "1")
                .output();
            let _ = Command::new("losetup").args(["-d", &dev]).status();
            let r = r.expect("oracle `pvcreate` is required; scripts/setup.sh installs it");
            assert!(
                r.status.success(),
                "pvcreate: {}",
                String::from_utf8_lossy(&r.stderr)
            );
        } else {
            run(tool[0], &args);
        }

        let want_tags = blkid(&img);
        let image = vhdforge_core::open(&img, &OpenOptions::default()).unwrap();
        let id = fs::identify(&Window::whole(image.as_ref())).unwrap();
        assert_eq!(id.kind, *want, "{name}: {id:?} vs blkid {want_tags:?}");
        assert_eq!(id.candidates, vec![*want], "{name}");
        // FAT: libblkid's LABEL may come from the root directory; the boot sector's is LABEL_FATBOOT.
        let label = want_tags
            .get("LABEL_FATBOOT")
            .or_else(|| want_tags.get("LABEL"));
        assert_eq!(id.label.as_ref(), label, "{name}: label");
        assert_eq!(id.uuid.as_ref(), want_tags.get("UUID"), "{name}: uuid");
    }
}
