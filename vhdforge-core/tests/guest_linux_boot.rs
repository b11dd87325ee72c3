//! The Linux boot library and checks on guest trees read through the real ext4 reader and
//! [`GuestTree`] mounts: a real Debian bookworm tree built by `scripts/debian-tree.sh`
//! (debootstrap; its initramfs and grub.cfg made by Debian's own hooks and grub-mkconfig),
//! and layouts assembled from their documented formats — CentOS 7 (grub2 with
//! `saved_entry`, dracut early cpio + xz), RHEL 8/9 (ESP stub → BLS entries with
//! `$kernelopts`, early cpio + zstd) and CentOS 6 (legacy `grub.conf`, gzip).
//!
//! The oracles (`mke2fs`, `cpio`, `xz`, `zstd`, `gzip`) must be installed: a missing one
//! fails the test (scripts/setup.sh installs them), and so does a missing Debian tree.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use vhdforge_core::guest::fs::{self, FileSystem, Volume};
use vhdforge_core::guest::linux::boot::{self, Loader};
use vhdforge_core::guest::linux::initramfs;
use vhdforge_core::guest::GuestTree;
use vhdforge_core::preflight::linux_boot::check_boot;
use vhdforge_core::preflight::GuestFinding;
use vhdforge_core::{OpenOptions, Severity};

fn sh(script: &str) -> Vec<u8> {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "`{script}` failed (the oracles mke2fs, cpio, xz, zstd and gzip are required; scripts/setup.sh installs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn put(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// An ext4 file system holding `dir`, opened with vhdforge's reader.
fn ext4_of(dir: &Path, work: &Path, size: &str) -> Box<dyn FileSystem> {
    let img = work.join(format!(
        "{}.ext4",
        dir.file_name().unwrap().to_string_lossy()
    ));
    sh(&format!(
        "mke2fs -q -F -t ext4 -E root_owner=0:0 -d '{}' '{}' {size}",
        dir.display(),
        img.display()
    ));
    let image = Arc::from(vhdforge_core::open(&img, &OpenOptions::default()).unwrap());
    fs::open(Volume::whole(image)).unwrap()
}

/// An initramfs from `files` (relative path, content): an uncompressed early cpio as
/// dracut writes it (when `early`), then the main archive through `compressor` (a shell
/// command, e.g. `xz --check=crc32`; empty = uncompressed).
fn initramfs_image(work: &Path, files: &[(&str, &[u8])], early: bool, compressor: &str) -> Vec<u8> {
    let n = std::fs::read_dir(work).unwrap().count();
    let main = work.join(format!("initrd-main-{n}"));
    for (p, d) in files {
        put(&main, p, d);
    }
    let mut out = Vec::new();
    if early {
        let e = work.join(format!("initrd-early-{n}"));
        put(&e, "early_cpio", b"1\n");
        put(&e, "kernel/x86/microcode/GenuineIntel.bin", &[0x5a; 5000]);
        out.extend(sh(&format!(
            "cd '{}' && find . | LC_ALL=C sort | cpio -o -H newc --quiet",
            e.display()
        )));
    }
    let pipe = if compressor.is_empty() {
        String::new()
    } else {
        format!(" | {compressor}")
    };
    out.extend(sh(&format!(
        "cd '{}' && find . | LC_ALL=C sort | cpio -o -H newc --quiet{pipe}",
        main.display()
    )));
    out
}

fn module_files(kver: &str, names: &[&str], ext: &str) -> Vec<(String, Vec<u8>)> {
    names
        .iter()
        .map(|m| {
            let dir = match *m {
                "hv_storvsc" => "scsi",
                "hv_netvsc" => "net/hyperv",
                _ => "hv",
            };
            (
                format!("usr/lib/modules/{kver}/kernel/drivers/{dir}/{m}{ext}"),
                vec![0x42; 300],
            )
        })
        .collect()
}

fn codes(f: &[GuestFinding]) -> Vec<String> {
    f.iter().map(|f| f.code.to_string()).collect()
}

fn find<'a>(f: &'a [GuestFinding], code: &str) -> &'a GuestFinding {
    f.iter()
        .find(|x| x.code == code)
        .unwrap_or_else(|| panic!("no {code} in {f:#?}"))
}

const C7_NEW: &str = "3.10.0-1160.el7.x86_64";
const C7_OLD: &str = "3.10.0-957.el7.x86_64";

/// CentOS 7 (BIOS): a separate /boot with grub2/grub.cfg as grub2-mkconfig writes it
/// (`set default="${saved_entry}"` after `load_env`), `linux16`/`initrd16`, and grubenv's
/// `saved_entry` naming the *older* kernel, whose command line lacks the console and whose
/// dracut initramfs (early cpio + xz) lacks hv_storvsc.
fn centos7(work: &Path) -> GuestTree {
    let root = work.join("c7root");
    put(&root, "usr/bin/dracut", b"#!/bin/bash\n");
    put(
        &root,
        &format!("lib/modules/{C7_OLD}/modules.builtin"),
        b"kernel/fs/xfs/xfs.ko\n",
    );
    let boot = work.join("c7boot");
    let entry = |kver: &str, args: &str| {
        format!(
            "menuentry 'CentOS Linux ({kver}) 7 (Core)' --class centos --class gnu-linux --class gnu --class os --unrestricted $menuentry_id_option 'gnulinux-{kver}-advanced-6a1c' {{
\tload_video
\tset gfxpayload=keep
\tinsmod gzio
\tinsmod part_msdos
\tinsmod xfs
\tset root='hd0,msdos1'
\tif [ x$feature_platform_search_hint = xy ]; then
\t  search --no-floppy --fs-uuid --set=root --hint='hd0,msdos1'  6a1c-aa
\telse
\t  search --no-floppy --fs-uuid --set=root 6a1c-aa
\tfi
\tlinux16 /vmlinuz-{kver} root=/dev/mapper/centos-root ro {args}
\tinitrd16 /initramfs-{kver}.img
}}
"
        )
    };
    let cfg = format!(
        r#"#
# DO NOT EDIT THIS FILE
#
### BEGIN /etc/grub.d/00_header ###
set pager=1

if [ -s $prefix/grubenv ]; then
  load_env
fi
if [ "${{next_entry}}" ] ; then
   set default="${{next_entry}}"
   set next_entry=
   save_env next_entry
   set boot_once=true
else
   set default="${{saved_entry}}"
fi

if [ x"${{feature_menuentry_id}}" = xy ]; then
  menuentry_id_option="--id"
else
  menuentry_id_option=""
fi

export menuentry_id_option

if [ "${{prev_saved_entry}}" ]; then
  set saved_entry="${{prev_saved_entry}}"
  save_env saved_entry
  set prev_saved_entry=
  save_env prev_saved_entry
  set boot_once=true
fi

function savedefault {{
  if [ -z "${{boot_once}}" ]; then
    saved_entry="${{chosen}}"
    save_env saved_entry
  fi
}}
terminal_output console
if [ x$feature_timeout_style = xy ] ; then
  set timeout_style=menu
  set timeout=5
else
  set timeout=5
fi
### END /etc/grub.d/00_header ###

### BEGIN /etc/grub.d/10_linux ###
{}{}### END /etc/grub.d/10_linux ###
"#,
        entry(C7_NEW, "crashkernel=auto console=ttyS0 earlyprintk=ttyS0"),
        entry(C7_OLD, "crashkernel=auto rd.lvm.lv=centos/root rhgb quiet"),
    );
    put(&boot, "grub2/grub.cfg", cfg.as_bytes());
    let mut env =
        format!("# GRUB Environment Block\nsaved_entry=CentOS Linux ({C7_OLD}) 7 (Core)\n")
            .into_bytes();
    env.resize(1024, b'#');
    put(&boot, "grub2/grubenv", &env);
    for (kver, mods) in [
        (C7_NEW, &["hv_vmbus", "hv_storvsc"][..]),
        (C7_OLD, &["hv_vmbus", "hv_netvsc"][..]),
    ] {
        put(&boot, &format!("vmlinuz-{kver}"), b"kernel");
        let files = module_files(kver, mods, ".ko.xz");
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_slice()))
            .collect();
        let img = initramfs_image(work, &refs, true, "xz --check=crc32 --lzma2=dict=1MiB");
        put(&boot, &format!("initramfs-{kver}.img"), &img);
    }
    let mut tree = GuestTree::new(ext4_of(&root, work, "16M"));
    tree.mount(b"/boot", ext4_of(&boot, work, "16M"));
    tree
}

#[test]
fn centos7_saved_entry_picks_the_older_kernel_and_its_initramfs() {
    let dir = tempfile::tempdir().unwrap();
    let tree = centos7(dir.path());
    let cfg = boot::default_entry(&tree).unwrap();
    assert_eq!(cfg.entry.loader, Loader::Grub2);
    assert_eq!(cfg.default, format!("CentOS Linux ({C7_OLD}) 7 (Core)"));
    assert!(!cfg.default_fell_back);
    assert_eq!(cfg.entries, 2);
    assert_eq!(
        cfg.entry.kernel.as_deref(),
        Some(&*format!("/vmlinuz-{C7_OLD}"))
    );
    assert_eq!(cfg.entry.initrds, [format!("/initramfs-{C7_OLD}.img")]);
    assert_eq!(
        cfg.entry.cmdline,
        "root=/dev/mapper/centos-root ro crashkernel=auto rd.lvm.lv=centos/root rhgb quiet"
    );
    assert_eq!(
        cfg.entry.id.as_deref(),
        Some(&*format!("gnulinux-{C7_OLD}-advanced-6a1c"))
    );
    assert_eq!(cfg.files, ["/boot/grub2/grub.cfg", "/boot/grub2/grubenv"]);

    let mut f = Vec::new();
    check_boot(&tree, &mut f);
    assert_eq!(
        codes(&f),
        [
            "guest.linux.console",
            "guest.linux.earlyprintk",
            "guest.linux.hv_drivers"
        ]
    );
    let console = find(&f, "guest.linux.console");
    assert_eq!(console.severity, Severity::Error);
    let ev = console.evidence.as_deref().unwrap();
    assert!(ev.starts_with("/boot/grub2/grub.cfg line "), "{ev}");
    assert!(ev.contains("rhgb quiet"), "{ev}");
    assert_eq!(
        find(&f, "guest.linux.earlyprintk").severity,
        Severity::Warning
    );
    let hv = find(&f, "guest.linux.hv_drivers");
    assert_eq!(hv.severity, Severity::Error);
    assert!(
        hv.message.starts_with("hv_storvsc is neither"),
        "{}",
        hv.message
    );
    let ev = hv.evidence.as_deref().unwrap();
    assert!(
        ev.contains(&format!(
            "/boot/initramfs-{C7_OLD}.img: 2 modules in 2 member(s) (uncompressed cpio, xz)"
        )),
        "{ev}"
    );
    assert!(
        ev.contains(&format!(
            "/lib/modules/{C7_OLD}/modules.builtin does not list them"
        )),
        "{ev}"
    );
    // The guest has dracut, so the fix is dracut's.
    assert!(
        hv.fix
            .as_deref()
            .unwrap()
            .starts_with("dracut -f --add-drivers"),
        "{hv:?}"
    );
}

const R9_OLD: &str = "5.14.0-70.13.1.el9_0.x86_64";
const R9_NEW: &str = "5.14.0-162.6.1.el9_1.x86_64";
const MID: &str = "2f6c1ea2b7c94a3e9d3b1c2d3e4f5a6b";

/// RHEL 8/9 (UEFI): the ESP's `EFI/redhat/grub.cfg` is a stub (`search`, `set prefix`,
/// `configfile`) leading to /boot/grub2/grub.cfg, which loads grubenv and runs `blscfg`; the
/// BLS entries' `options` use `$kernelopts` from grubenv (RHEL 8) or are written in full
/// (RHEL 9). Two kernels whose versions sort differently as text (70 vs 162) and as rpm
/// versions, plus the rescue entry.
fn rhel(work: &Path, saved: Option<&str>) -> GuestTree {
    let root = work.join("rroot");
    put(&root, "usr/sbin/grubby", b"#!/bin/sh\n");
    put(&root, "usr/bin/dracut", b"#!/bin/bash\n");
    let esp = work.join("resp");
    put(
        &esp,
        "EFI/redhat/grub.cfg",
        b"search --no-floppy --fs-uuid --set=dev 0e7a1b5c-9a1d-4c1e-8f3e-4bc7d1e2a3b4\nset prefix=($dev)/grub2\n\nexport $prefix\nconfigfile $prefix/grub.cfg\n",
    );
    let boot = work.join("rboot");
    put(
        &boot,
        "grub2/grub.cfg",
        br#"### BEGIN /etc/grub.d/00_header ###
set pager=1

if [ -f ${config_directory}/grubenv ]; then
  load_env -f ${config_directory}/grubenv
elif [ -s $prefix/grubenv ]; then
  load_env
fi
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
   set next_entry=
   save_env next_entry
   set boot_once=true
else
   set default="${saved_entry}"
fi

if [ x"${feature_menuentry_id}" = xy ]; then
  menuentry_id_option="--id"
else
  menuentry_id_option=""
fi

export menuentry_id_option
### END /etc/grub.d/00_header ###

### BEGIN /etc/grub.d/10_linux ###
insmod part_gpt
insmod xfs
set root='hd0,gpt2'
if [ -z "${kernelopts}" ]; then
  set kernelopts="root=/dev/mapper/rhel-root ro crashkernel=auto "
fi

insmod blscfg
blscfg
### END /etc/grub.d/10_linux ###
"#,
    );
    let mut env = String::from("# GRUB Environment Block\nkernelopts=root=/dev/mapper/rhel-root ro crashkernel=auto resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0 rootdelay=300\nboot_success=0\n");
    if let Some(s) = saved {
        env.push_str(&format!("saved_entry={s}\n"));
    }
    let mut env = env.into_bytes();
    env.resize(1024, b'#');
    put(&boot, "grub2/grubenv", &env);
    let bls = |kver: &str, options: &str| {
        format!("title Red Hat Enterprise Linux ({kver}) 9.0 (Plow)\nversion {kver}\nlinux /vmlinuz-{kver}\ninitrd /initramfs-{kver}.img $tuned_initrd\noptions {options}\ngrub_users $grub_users\ngrub_arg --unrestricted\ngrub_class rhel\n")
    };
    put(
        &boot,
        &format!("loader/entries/{MID}-{R9_NEW}.conf"),
        bls(R9_NEW, "$kernelopts $tuned_params").as_bytes(),
    );
    // RHEL 9 style: options in full, and without the serial console.
    put(
        &boot,
        &format!("loader/entries/{MID}-{R9_OLD}.conf"),
        bls(R9_OLD, "root=/dev/mapper/rhel-root ro rhgb quiet").as_bytes(),
    );
    put(&boot, &format!("loader/entries/{MID}-0-rescue.conf"), format!("title Red Hat Enterprise Linux (0-rescue-{MID})\nversion 0-rescue-{MID}\nlinux /vmlinuz-0-rescue-{MID}\ninitrd /initramfs-0-rescue-{MID}.img\noptions $kernelopts\n").as_bytes());
    for kver in [R9_NEW, R9_OLD] {
        put(&boot, &format!("vmlinuz-{kver}"), b"kernel");
        let files = module_files(kver, &["hv_vmbus", "hv_storvsc", "hv_netvsc"], ".ko.xz");
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_slice()))
            .collect();
        let img = initramfs_image(work, &refs, true, "zstd -q -15 -c");
        put(&boot, &format!("initramfs-{kver}.img"), &img);
    }
    let mut tree = GuestTree::new(ext4_of(&root, work, "16M"));
    tree.mount(b"/boot", ext4_of(&boot, work, "16M"));
    tree.mount(b"/boot/efi", ext4_of(&esp, work, "8M"));
    tree
}

#[test]
fn rhel_esp_stub_leads_to_bls_and_kernelopts_expands_from_grubenv() {
    let dir = tempfile::tempdir().unwrap();
    let tree = rhel(dir.path(), None);
    let cfg = boot::default_entry(&tree).unwrap();
    // No saved entry: `default` is empty, so GRUB boots entry 0, the newest by rpm order
    // (162 > 70 although "1" < "7" as text).
    assert_eq!(cfg.default, "");
    assert!(cfg.default_fell_back);
    assert_eq!(cfg.entries, 3);
    assert_eq!(cfg.entry.loader, Loader::Bls);
    assert_eq!(cfg.entry.id.as_deref(), Some(&*format!("{MID}-{R9_NEW}")));
    assert_eq!(
        cfg.entry.kernel.as_deref(),
        Some(&*format!("/vmlinuz-{R9_NEW}"))
    );
    assert_eq!(cfg.entry.kernel_release().as_deref(), Some(R9_NEW));
    assert_eq!(
        cfg.entry.cmdline,
        "root=/dev/mapper/rhel-root ro crashkernel=auto resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0 rootdelay=300"
    );
    assert_eq!(
        cfg.files,
        [
            "/boot/efi/EFI/redhat/grub.cfg",
            "/boot/grub2/grub.cfg",
            "/boot/grub2/grubenv"
        ]
    );
    assert_eq!(
        cfg.entry.source,
        (format!("/boot/loader/entries/{MID}-{R9_NEW}.conf"), 5)
    );
    let mut f = Vec::new();
    check_boot(&tree, &mut f);
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn rhel_saved_entry_names_a_bls_id() {
    let dir = tempfile::tempdir().unwrap();
    let id = format!("{MID}-{R9_OLD}");
    let tree = rhel(dir.path(), Some(&id));
    let cfg = boot::default_entry(&tree).unwrap();
    assert_eq!(cfg.default, id);
    assert!(!cfg.default_fell_back);
    assert_eq!(
        cfg.entry.cmdline,
        "root=/dev/mapper/rhel-root ro rhgb quiet"
    );
    let mut f = Vec::new();
    check_boot(&tree, &mut f);
    assert_eq!(
        codes(&f),
        ["guest.linux.console", "guest.linux.earlyprintk"]
    );
    let c = find(&f, "guest.linux.console");
    assert!(
        c.evidence
            .as_deref()
            .unwrap()
            .starts_with(&format!("/boot/loader/entries/{id}.conf line 5")),
        "{c:?}"
    );
    // grubby is in the guest: the fix uses it.
    assert!(
        c.fix
            .as_deref()
            .unwrap()
            .starts_with("grubby --update-kernel=ALL --args="),
        "{c:?}"
    );
}

#[test]
fn centos6_legacy_grub_conf() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let kver = "2.6.32-754.el6.x86_64";
    let root = work.join("c6root");
    put(&root, "sbin/dracut", b"#!/bin/bash\n");
    let boot = work.join("c6boot");
    put(
        &boot,
        "grub/grub.conf",
        format!("# grub.conf generated by anaconda\ndefault=1\ntimeout=5\nsplashimage=(hd0,0)/grub/splash.xpm.gz\nhiddenmenu\ntitle CentOS (2.6.32-696.el6.x86_64)\n\troot (hd0,0)\n\tkernel /vmlinuz-2.6.32-696.el6.x86_64 ro root=/dev/sda2 console=ttyS0\n\tinitrd /initramfs-2.6.32-696.el6.x86_64.img\ntitle CentOS ({kver})\n\troot (hd0,0)\n\tkernel /vmlinuz-{kver} ro root=UUID=0f1e rd_NO_LUKS rhgb quiet\n\tinitrd /initramfs-{kver}.img\n").as_bytes(),
    );
    put(&boot, &format!("vmlinuz-{kver}"), b"k");
    let files = module_files(kver, &["hv_vmbus", "hv_storvsc"], ".ko");
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_slice()))
        .collect();
    put(
        &boot,
        &format!("initramfs-{kver}.img"),
        &initramfs_image(work, &refs, false, "gzip -9n"),
    );
    let mut tree = GuestTree::new(ext4_of(&root, work, "8M"));
    tree.mount(b"/boot", ext4_of(&boot, work, "8M"));

    let cfg = boot::default_entry(&tree).unwrap();
    assert_eq!(cfg.entry.loader, Loader::LegacyGrub);
    assert_eq!(cfg.entry.title, format!("CentOS ({kver})"));
    assert_eq!(cfg.entry.cmdline, "ro root=UUID=0f1e rd_NO_LUKS rhgb quiet");
    let mut f = Vec::new();
    check_boot(&tree, &mut f);
    assert_eq!(
        codes(&f),
        ["guest.linux.console", "guest.linux.earlyprintk"]
    );
    let c = find(&f, "guest.linux.console");
    assert_eq!(
        c.evidence.as_deref().unwrap(),
        format!("/boot/grub/grub.conf line 12, entry 'CentOS ({kver})': ro root=UUID=0f1e rd_NO_LUKS rhgb quiet")
    );
    assert!(
        c.fix.as_deref().unwrap().contains("/boot/grub/grub.conf"),
        "{c:?}"
    );
}

#[test]
fn no_boot_configuration_is_a_warning_that_says_what_was_not_checked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("empty");
    put(&root, "etc/hostname", b"x\n");
    let tree = GuestTree::new(ext4_of(&root, dir.path(), "8M"));
    let mut f = Vec::new();
    check_boot(&tree, &mut f);
    assert_eq!(codes(&f), ["guest.linux.boot_config"]);
    assert_eq!(f[0].severity, Severity::Warning);
    assert!(
        f[0].message.contains("/boot/grub2/grub.cfg"),
        "{}",
        f[0].message
    );
}

/// The Debian tree `scripts/debian-tree.sh` builds and caches.
fn debian_tree() -> PathBuf {
    let p = std::env::var_os("VHDFORGE_DEBIAN_TREE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest-cache/debian-bookworm"),
        PathBuf::from,
    );
    assert!(
        p.join(".vhdforge-complete").exists(),
        "the Debian tree is missing at {}: run scripts/debian-tree.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A real Debian bookworm with linux-image-cloud-amd64: its grub.cfg (grub-mkconfig) boots
/// the cloud kernel with the console line from /etc/default/grub.d; its initramfs
/// (initramfs-tools, gzip here because minbase has no zstd binary) holds hv_vmbus and
/// hv_storvsc as modules — the cloud kernel builds them as modules (CONFIG_HYPERV=m,
/// CONFIG_HYPERV_STORAGE=m), so modules.builtin does not list them.
#[test]
fn real_debian_bookworm_cloud_kernel() {
    let deb = debian_tree();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    // Copy what the boot checks read into a fresh root (the whole tree is 500 MB).
    let root = work.join("debroot");
    sh(&format!(
        "mkdir -p '{1}' && cd '{0}' && cp -a --parents boot etc/initramfs-tools usr/sbin/update-grub usr/sbin/update-initramfs usr/lib/modules/*/modules.builtin lib '{1}'",
        deb.display(),
        root.display()
    ));
    let tree = GuestTree::new(ext4_of(&root, work, "256M"));

    let kver = std::fs::read_dir(deb.join("usr/lib/modules"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    assert!(kver.ends_with("-cloud-amd64"), "{kver}");
    let cfg = boot::default_entry(&tree).unwrap();
    assert_eq!(cfg.files, ["/boot/grub/grub.cfg"]);
    assert_eq!(cfg.default, "0");
    assert_eq!(cfg.entry.title, "GNU/Linux");
    assert_eq!(
        cfg.entry.kernel.as_deref(),
        Some(&*format!("/boot/vmlinuz-{kver}"))
    );
    assert_eq!(cfg.entry.initrds, [format!("/boot/initrd.img-{kver}")]);
    assert_eq!(
        cfg.entry.cmdline,
        "root=/dev/sda1 ro console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0 rootdelay=300"
    );
    // Two top-level items, the normal and recovery entries in the submenu.
    assert_eq!(cfg.entries, 3);

    // The initramfs as vhdforge reads it, against cpio's own listing.
    let img = deb.join(format!("boot/initrd.img-{kver}"));
    let listing = String::from_utf8(sh(&format!(
        "zcat -f '{}' | cpio -t --quiet",
        img.display()
    )))
    .unwrap();
    let want: std::collections::BTreeSet<String> =
        listing.lines().filter_map(initramfs::module_name).collect();
    assert!(want.len() > 100, "cpio lists {} modules", want.len());
    let mut file = tree
        .open(format!("/boot/initrd.img-{kver}").as_bytes())
        .unwrap();
    let got = initramfs::read_initramfs(file.as_mut()).unwrap();
    let got_names: std::collections::BTreeSet<String> = got.modules.keys().cloned().collect();
    assert_eq!(got_names, want);
    assert!(got.modules.contains_key("hv_vmbus") && got.modules.contains_key("hv_storvsc"));
    assert_eq!(
        got.modules["hv_vmbus"],
        format!("usr/lib/modules/{kver}/kernel/drivers/hv/hv_vmbus.ko")
    );
    let builtin =
        std::fs::read_to_string(deb.join(format!("usr/lib/modules/{kver}/modules.builtin")))
            .unwrap();
    let builtin = initramfs::parse_modules_builtin(&builtin);
    assert!(!builtin.contains("hv_vmbus") && !builtin.contains("hv_storvsc"));
    let config = std::fs::read_to_string(deb.join(format!("boot/config-{kver}"))).unwrap();
    assert!(
        config.contains("\nCONFIG_HYPERV=m\n") && config.contains("\nCONFIG_HYPERV_STORAGE=m\n")
    );

    let mut f = Vec::new();
    check_boot(&tree, &mut f);
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn real_debian_without_the_drivers_names_update_initramfs() {
    // The same real grub.cfg, with an initramfs that lacks the Hyper-V modules (as one
    // built with MODULES=dep on another hypervisor would).
    let deb = debian_tree();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let root = work.join("debroot2");
    sh(&format!(
        "mkdir -p '{1}' && cd '{0}' && cp -a --parents boot/grub boot/config-* boot/vmlinuz-* usr/sbin/update-grub usr/sbin/update-initramfs usr/lib/modules/*/modules.builtin lib '{1}'",
        deb.display(),
        root.display()
    ));
    let kver = std::fs::read_dir(deb.join("usr/lib/modules"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    let files = module_files(&kver, &["hv_netvsc"], ".ko");
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_slice()))
        .collect();
    put(
        &root,
        &format!("boot/initrd.img-{kver}"),
        &initramfs_image(work, &refs, false, "zstd -q -c"),
    );
    let tree = GuestTree::new(ext4_of(&root, work, "64M"));
    let mut f = Vec::new();
    check_boot(&tree, &mut f);
    assert_eq!(codes(&f), ["guest.linux.hv_drivers"]);
    let hv = &f[0];
    assert!(
        hv.message
            .starts_with("hv_vmbus and hv_storvsc are neither"),
        "{}",
        hv.message
    );
    assert!(
        hv.fix
            .as_deref()
            .unwrap()
            .ends_with(&format!("update-initramfs -u -k {kver}")),
        "{hv:?}"
    );
}

#[test]
fn real_debian_grub_cfg_reached_through_an_esp_stub() {
    // Debian's UEFI stub as grub-install writes it: `search.fs_uuid UUID root hdX`, a
    // prefix glued from `($root)` and a quoted path, then `configfile`.
    let deb = debian_tree();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let root = work.join("debroot3");
    sh(&format!(
        "mkdir -p '{1}' && cd '{0}' && cp -a --parents boot/grub boot/vmlinuz-* usr/sbin/update-grub '{1}'",
        deb.display(),
        root.display()
    ));
    let esp = work.join("debesp");
    put(
        &esp,
        "EFI/debian/grub.cfg",
        b"search.fs_uuid 0a1b2c3d-4e5f-4061-8293-a4b5c6d7e8f9 root hd0,gpt2 \nset prefix=($root)'/boot/grub'\nconfigfile $prefix/grub.cfg\n",
    );
    let mut tree = GuestTree::new(ext4_of(&root, work, "64M"));
    tree.mount(b"/boot/efi", ext4_of(&esp, work, "8M"));
    let cfg = boot::default_entry(&tree).unwrap();
    assert_eq!(
        cfg.files,
        ["/boot/efi/EFI/debian/grub.cfg", "/boot/grub/grub.cfg"]
    );
    assert_eq!(cfg.entry.title, "GNU/Linux");
    assert!(
        cfg.entry.cmdline.contains("console=ttyS0,115200n8"),
        "{}",
        cfg.entry.cmdline
    );
}
