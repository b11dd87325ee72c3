//! Seed corpora for the guest fuzz targets, made by the real tools (mkfs.*, sfdisk, LVM,
//! hivex, cpio and the compressors) through the `fixtures` builders, so the fuzzer starts
//! from bytes an installer would leave rather than from nothing. Every seed is small (a few
//! KiB to 16 MiB, the smallest each tool accepts): libFuzzer mutates and copies the whole
//! input on every run. Needs root (loop devices for LVM and XFS, a FUSE mount for NTFS).
//!
//! `cargo run --manifest-path fuzz/seeds/Cargo.toml -- fuzz/corpus` writes
//! `fuzz/corpus/<target>/seed-*`; an existing seed is replaced.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use fixtures::guest::{self, Content, Format, Kind, Lv, Part, Table};
use fixtures::windows_tree::{self, HiveName, Reg, WindowsTree};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 paths")
}

/// An empty (sparse) file of `len` bytes.
fn blank(p: &Path, len: u64) {
    let f = std::fs::File::create(p).unwrap();
    f.set_len(len).unwrap();
}

struct Out(PathBuf);

impl Out {
    fn put(&self, target: &str, name: &str, data: &[u8]) {
        let d = self.0.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("seed-{name}")), data).unwrap();
        println!("{target}/seed-{name}: {} bytes", data.len());
    }
    fn put_file(&self, target: &str, name: &str, p: &Path) {
        self.put(target, name, &std::fs::read(p).unwrap());
    }
}

/// A small tree with what the readers branch on: nested directories, a directory of a few
/// hundred names, short and long symlinks, a hard link, empty, small, multi-block and sparse
/// files. Sized so it fits the smallest file systems.
fn small_tree(root: &Path, with_links: bool) {
    let w = |p: &str, d: &[u8]| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, d).unwrap();
    };
    w("etc/hostname", b"guest\n");
    w("etc/empty", b"");
    w(
        "etc/os-release",
        b"ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12\"\n",
    );
    w("a/b/c/d/deep.txt", b"deep\n");
    w("data.bin", &fixtures::guest::tree::pattern(20_000, 7));
    for i in 0..120 {
        w(&format!("many/file-{i:03}-{}", "x".repeat(i % 30)), b"n");
    }
    let sparse = std::fs::File::create(root.join("sparse.bin")).unwrap();
    sparse.write_all_at(b"head", 0).unwrap();
    sparse.write_all_at(b"tail", 200 * KIB).unwrap();
    if with_links {
        std::os::unix::fs::symlink("hostname", root.join("etc/short-link")).unwrap();
        std::os::unix::fs::symlink("a/".repeat(40) + "target", root.join("long-link")).unwrap();
        std::fs::hard_link(root.join("etc/hostname"), root.join("etc/hard")).unwrap();
    }
}

fn partition_seeds(out: &Out, scratch: &Path) {
    // Sector-granular layouts on tiny disks: sfdisk is told where, not asked to align.
    let tables = [
        (
            "mbr-logical",
            "label: dos\nstart=64, size=64, type=83, bootable\nstart=128, size=320, type=5\nstart=136, size=48, type=83\nstart=200, size=48, type=82\nstart=264, size=100, type=8e\n",
        ),
        (
            "gpt",
            "label: gpt\nfirst-lba: 34\nstart=40, size=64, type=U, name=\"EFI system\"\nstart=104, size=64, type=L\nstart=168, size=200, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n",
        ),
    ];
    for (name, script) in tables {
        let p = scratch.join(format!("{name}.img"));
        blank(&p, 256 * KIB);
        guest::sfdisk(&p, script);
        out.put_file("partition_table", name, &p);
    }
    // A GPT disk with a real ext4 root, so the scan and the preflight go past the table.
    // A 1 MiB ext4 holds 128 inodes: a root's few files, enough for the preflight to read.
    let tree = scratch.join("pt-tree");
    for (f, d) in [
        ("etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n"),
        ("etc/fstab", "UUID=6a1c / ext4 defaults 0 1\n"),
        ("etc/default/grub", "GRUB_CMDLINE_LINUX=\"console=ttyS0\"\n"),
    ] {
        std::fs::create_dir_all(tree.join(f).parent().unwrap()).unwrap();
        std::fs::write(tree.join(f), d).unwrap();
    }
    let disk = scratch.join("pt-ext4.img");
    guest::build(
        &disk,
        3,
        Table::Gpt,
        &[Part::new(
            1,
            Kind::Linux,
            Content::fs(Format::Ext4, "root", Some(&tree)),
        )],
        &scratch.join("pt-ext4"),
    );
    out.put_file("partition_table", "gpt-ext4", &disk);
}

fn lvm_seeds(out: &Out, scratch: &Path) {
    let disk = scratch.join("lvm.img");
    let built = guest::build(
        &disk,
        6,
        Table::Mbr,
        &[Part::new(
            4,
            Kind::Lvm,
            Content::Lvm {
                vg: "fuzzvg".into(),
                lvs: vec![
                    Lv {
                        name: "root".into(),
                        size_mib: 1,
                        content: Content::Empty,
                    },
                    Lv {
                        name: "swap".into(),
                        size_mib: 1,
                        content: Content::Empty,
                    },
                ],
            },
        )],
        &scratch.join("lvm"),
    );
    let (_, start, _) = built.partitions[0];
    // The physical volume's label and metadata area: everything before the first extent
    // (1 MiB) plus a little of the data, so the logical volumes map onto something.
    let f = std::fs::File::open(&disk).unwrap();
    let mut pv = vec![0u8; (MIB + 64 * KIB) as usize];
    f.read_exact_at(&mut pv, start).unwrap();
    out.put("lvm_metadata", "pv", &pv);
    // The metadata text alone, for the text parser: it starts at the VG name and ends at
    // the first NUL.
    let at = pv
        .windows(9)
        .position(|w| w == b"fuzzvg {\n")
        .expect("VG metadata text in the metadata area");
    let len = pv[at..].iter().position(|&b| b == 0).unwrap();
    out.put("lvm_metadata", "text", &pv[at..at + len]);
}

fn ext4_seeds(out: &Out, scratch: &Path) {
    let tree = scratch.join("ext4-tree");
    small_tree(&tree, true);
    for (name, len, extra) in [
        ("1k", MIB, &["-b", "1024"][..]),
        (
            "4k-inline",
            2 * MIB,
            &["-b", "4096", "-O", "inline_data"][..],
        ),
        (
            "ext2-style",
            MIB,
            &[
                "-b",
                "1024",
                "-O",
                "^extent,^64bit,^has_journal,^metadata_csum",
            ][..],
        ),
    ] {
        let p = scratch.join(format!("ext4-{name}.img"));
        blank(&p, len);
        let mut a = vec!["-q", "-F", "-N", "256", "-d", s(&tree)];
        a.extend_from_slice(extra);
        a.push(s(&p));
        guest::run("mkfs.ext4", &a);
        out.put_file("fs_ext4", name, &p);
    }
}

fn xfs_seeds(out: &Out, scratch: &Path) {
    // 16 MiB (4096 blocks) is the smallest data section mkfs.xfs makes, and only with the
    // environment of its own test suite.
    let p = scratch.join("xfs.img");
    blank(&p, 16 * MIB);
    let st = Command::new("mkfs.xfs")
        .args(["-q", "-f", "-d", "agcount=1", "-l", "size=1368b", s(&p)])
        .env("TEST_DIR", scratch)
        .env("TEST_DEV", &p)
        .env("QA_CHECK_FS", "1")
        .status()
        .expect("mkfs.xfs (xfsprogs) is required");
    assert!(st.success());
    let tree = scratch.join("xfs-tree");
    small_tree(&tree, true);
    {
        let mnt = scratch.join("xfs.mnt");
        let _m = guest::Mount::new(&p, &mnt, "loop");
        guest::run("cp", &["-aT", s(&tree), s(&mnt)]);
        guest::run("sync", &[]);
    }
    out.put_file("fs_xfs", "v5", &p);
}

fn fat_seeds(out: &Out, scratch: &Path) {
    let tree = scratch.join("fat-tree");
    small_tree(&tree, false);
    std::fs::write(
        tree.join("Long File Name With Spaces.txt"),
        b"lfn and an 8.3 alias\n",
    )
    .unwrap();
    for (name, len, args) in [
        ("fat12", 512 * KIB, &["-F", "12"][..]),
        ("fat16", 3 * MIB, &["-F", "16", "-s", "1"][..]),
    ] {
        let p = scratch.join(format!("{name}.img"));
        blank(&p, len);
        let mut a = args.to_vec();
        a.push(s(&p));
        guest::run("mkfs.fat", &a);
        guest::fill_fat(&p, &tree);
        out.put_file("fs_fat", name, &p);
    }
}

fn ntfs_seeds(out: &Out, scratch: &Path) {
    let tree = scratch.join("ntfs-tree");
    small_tree(&tree, false);
    let p = scratch.join("ntfs.img");
    blank(&p, 2 * MIB);
    guest::run("mkntfs", &["-Q", "-F", "-q", "-L", "fuzz", s(&p)]);
    windows_tree::fill_ntfs(&p, &tree, &scratch.join("ntfs-fill"));
    out.put_file("fs_ntfs", "small", &p);
}

fn hive_seeds(out: &Out, scratch: &Path) {
    let t = WindowsTree::clean();
    let root = scratch.join("win");
    t.write(&root, &root, "Boot/BCD", &scratch.join("win-scratch"));
    let system = std::fs::read(root.join("Windows/System32/config/SYSTEM")).unwrap();
    let bcd = std::fs::read(root.join("Boot/BCD")).unwrap();
    out.put("bcd", "clean", &bcd);
    // registry_hive reads: primary length (u32 LE), primary, then a log.
    let framed = |primary: &[u8], log: &[u8]| {
        let mut v = (primary.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(primary);
        v.extend_from_slice(log);
        v
    };
    out.put("registry_hive", "system", &framed(&system, &[]));
    out.put("registry_hive", "bcd", &framed(&bcd, &[]));
    // An unclean stop: the primary one state behind, the .LOG1 bringing it forward.
    let mut newer = t.clone();
    newer.set(
        HiveName::System,
        "ControlSet001\\Control\\Terminal Server",
        "fDenyTSConnections",
        Reg::Dword(1),
    );
    let root2 = scratch.join("win2");
    newer.write(&root2, &root2, "Boot/BCD", &scratch.join("win2-scratch"));
    let system2 = std::fs::read(root2.join("Windows/System32/config/SYSTEM")).unwrap();
    let (primary, log) = windows_tree::dirty_with_log(&system, &system2);
    out.put("registry_hive", "system-dirty", &framed(&primary, &log));
}

fn grub_seeds(out: &Out) {
    let cfg = r#"set default="0"
if [ -s $prefix/grubenv ]; then
  load_env
fi
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
   set next_entry=
   save_env next_entry
fi
function load_video {
  insmod all_video
}
set timeout=5
search --no-floppy --fs-uuid --set=root 6a1c9e1e-1b1b-4c4c-9d9d-0123456789ab
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux $menuentry_id_option 'gnulinux-simple-6a1c' {
	load_video
	insmod ext2
	echo	'Loading Linux 6.1.0-13-amd64 ...'
	linux	/boot/vmlinuz-6.1.0-13-amd64 root=UUID=6a1c ro console=tty0 console=ttyS0,115200n8 earlyprintk=ttyS0 rootdelay=300
	initrd	/boot/initrd.img-6.1.0-13-amd64
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-6a1c' {
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-12-amd64' {
		linux	/boot/vmlinuz-6.1.0-12-amd64 root=/dev/sda1 ro
		initrd	/boot/initrd.img-6.1.0-12-amd64
	}
}
blscfg
"#;
    let env = "# GRUB Environment Block\nsaved_entry=gnulinux-advanced-6a1c>a-1.0\nkernelopts=root=/dev/mapper/rhel-root ro crashkernel=auto\n";
    let bls = "title Red Hat Enterprise Linux (5.14.0) 9.2\nversion 5.14.0-284.el9.x86_64\nlinux /vmlinuz-5.14.0-284.el9.x86_64\ninitrd /initramfs-5.14.0-284.el9.x86_64.img $tuned_initrd\noptions $kernelopts console=ttyS0\ngrub_users $grub_users\nid rhel-20230101-5.14.0\n";
    let esp = "search --no-floppy --fs-uuid --set=dev 6a1c\nset prefix=($dev)/boot/grub2\nexport $prefix\nconfigfile $prefix/grub.cfg\n";
    let mut v = Vec::new();
    for (i, p) in [cfg, env, bls, esp].iter().enumerate() {
        if i > 0 {
            v.push(0xFF);
        }
        v.extend_from_slice(p.as_bytes());
    }
    out.put("grub_cfg", "debian-bls", &v);
}

fn initramfs_seeds(out: &Out, scratch: &Path) {
    let mods = ["hv_vmbus", "hv_storvsc"];
    let work = scratch.join("initrd");
    std::fs::create_dir_all(&work).unwrap();
    out.put(
        "initramfs",
        "dracut-xz",
        &fixtures::initramfs::dracut_xz(&work, "5.14.0", &mods),
    );
    out.put(
        "initramfs",
        "tools-gzip",
        &fixtures::initramfs::initramfs_tools_gzip(&work, "6.1.0", &mods),
    );
    let files = fixtures::initramfs::module_files("6.1.0", &mods, ".ko.zst");
    out.put(
        "initramfs",
        "zstd",
        &fixtures::initramfs::initramfs_image(&work, &files, false, "zstd -q -c"),
    );
    out.put(
        "initramfs",
        "plain",
        &fixtures::initramfs::initramfs_image(&work, &files, true, ""),
    );
    out.put(
        "initramfs",
        "modules-builtin",
        b"kernel/drivers/hv/hv_vmbus.ko\nkernel/drivers/scsi/hv_storvsc.ko\nkernel/fs/ext4/ext4.ko\n",
    );
}

fn main() {
    let out = Out(std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("fuzz/corpus"), PathBuf::from));
    let scratch = std::env::temp_dir().join(format!("vhdforge-fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir(&scratch).expect("a fresh scratch directory");
    let only: Vec<String> = std::env::args().skip(2).collect();
    let want = |t: &str| only.is_empty() || only.iter().any(|o| o == t);
    let mut steps: BTreeMap<&str, Box<dyn Fn()>> = BTreeMap::new();
    steps.insert(
        "partition_table",
        Box::new(|| partition_seeds(&out, &scratch)),
    );
    steps.insert("lvm_metadata", Box::new(|| lvm_seeds(&out, &scratch)));
    steps.insert("fs_ext4", Box::new(|| ext4_seeds(&out, &scratch)));
    steps.insert("fs_xfs", Box::new(|| xfs_seeds(&out, &scratch)));
    steps.insert("fs_fat", Box::new(|| fat_seeds(&out, &scratch)));
    steps.insert("fs_ntfs", Box::new(|| ntfs_seeds(&out, &scratch)));
    steps.insert("registry_hive", Box::new(|| hive_seeds(&out, &scratch)));
    steps.insert("grub_cfg", Box::new(|| grub_seeds(&out)));
    steps.insert("initramfs", Box::new(|| initramfs_seeds(&out, &scratch)));
    for (name, step) in &steps {
        // bcd seeds come with the registry ones (the same hivex run).
        if want(name) || (*name == "registry_hive" && want("bcd")) {
            step();
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
