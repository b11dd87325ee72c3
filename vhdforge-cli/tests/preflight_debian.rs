//! `vhdforge preflight --json` on whole disks holding a real Debian bookworm root, made by
//! `scripts/debian-tree.sh` (debootstrap minbase + openssh-server, waagent, cloud-init,
//! linux-image-cloud-amd64; its initramfs and grub.cfg made by Debian's own hooks and
//! grub-mkconfig). Three layouts — ext4 root on MBR, XFS root on GPT with an ESP, and an XFS
//! root logical volume on LVM — each read as raw and as a qemu-img VHDX.
//!
//! What a debootstrap tree gets wrong for Azure, and so the exact codes asserted:
//! - `guest.linux.ssh_host_keys` (warning): openssh-server's postinst generates host keys,
//!   so every VM from the image would share them until the agent regenerates them.
//! - `guest.linux.client_alive_interval` (warning): Debian's sshd_config leaves
//!   `ClientAliveInterval` commented out (0: off), outside certification's 30–235 s.
//!
//! and what it gets right: root's password is `*` (locked), no authorized_keys, the agent
//! 2.9 is enabled (`walinuxagent.service` wants link) with `Provisioning.Agent=cloud-init`,
//! the cloud kernel's initramfs holds hv_vmbus and hv_storvsc as modules, and grub.cfg has
//! `console=ttyS0` and `earlyprintk=ttyS0`; bash, python3.11 and openssl are x86-64 programs
//! beside libssl.so.3; cloud-init, which waagent.conf names, is enabled (cloud-init.target
//! wants links) with its built-in datasource list; the ESP holds the tree's own GRUB EFI
//! image (grub-efi-amd64-bin's monolithic `grubx64.efi`, a real x86-64 PE) at
//! `\EFI\BOOT\BOOTX64.EFI` and in `\EFI\debian\` with the stub grub.cfg. minbase has no ifupdown, netplan or
//! NetworkManager configuration at all; that is no `guest.linux.network` finding, since
//! cloud-init writes the network configuration on first boot and the check flags only a
//! configuration that contradicts DHCP or pins a MAC. Root's password set by the real
//! `chpasswd` (yescrypt, Debian 12's default) adds `guest.linux.root_password`, and neither
//! the hash nor its salt appears in the JSON.
//!
//! debootstrap leaves `/etc/fstab` "UNCONFIGURED"; the disks get the fstab an installer
//! writes (root and ESP by UUID, the LV by `/dev/mapper`), since an image without one does
//! not mount its ESP. Only what the checks read is copied from the ~500 MB tree (all but the
//! kernel modules themselves, python3.11's standard library and apt's and dpkg's
//! databases). The disks are built once per tree and cached under `target/guest-cache`
//! (about a minute on a loaded machine); reading them all takes seconds. The Debian tree
//! and the oracles (mkfs, LVM, chpasswd, qemu-img) are required: missing, the test fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use assert_cmd::Command as Cmd;
use fixtures::guest::{build, run, Content, Format, Kind, Lv, Part, Table};
use serde_json::Value;

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

fn sh(script: &str) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tree's kernel release (the one directory under /usr/lib/modules).
fn kernel_release(deb: &Path) -> String {
    let mut k: Vec<String> = std::fs::read_dir(deb.join("usr/lib/modules"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(k.len(), 1, "one kernel in the tree: {k:?}");
    k.pop().unwrap()
}

/// Copy what the checks read from the real tree into `dst` (owners, modes, links kept):
/// all of it but the kernel modules themselves (`modules.*` lists kept), python3.11's
/// standard library, and apt's and dpkg's databases.
fn copy_tree(deb: &Path, dst: &Path) {
    sh(&format!(
        "mkdir -p '{1}' && cd '{0}' && cp -a --parents bin sbin lib lib64 etc boot root home var/log var/lib/waagent var/lib/dhcp usr/sbin usr/bin usr/lib/os-release usr/lib/python3 usr/lib/systemd usr/lib/modprobe.d usr/lib/modules/*/modules.* usr/lib/x86_64-linux-gnu/libssl.so.* usr/lib/grub/x86_64-efi/monolithic/grubx64.efi '{1}' && mkdir -p '{1}/boot/efi' '{1}/tmp' '{1}/proc' '{1}/sys' '{1}/dev' '{1}/var/lib/cloud'",
        deb.display(),
        dst.display()
    ));
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    Ext4Mbr,
    XfsGptEsp,
    XfsLvm,
}

const ROOT_PLACEHOLDER: &str = "ROOT-UUID-PLACEHOLDER-0000000000000X";
const ESP_PLACEHOLDER: &str = "ESP-UUIDX";

/// A raw disk at `dir/disk.raw` holding `root` (a copy of the tree) in `layout`, with the
/// fstab an installer writes (UUIDs filled in after mkfs picked them).
fn disk(dir: &Path, root: &Path, layout: Layout, vg: &str) -> PathBuf {
    let (root_fs, fs_type) = match layout {
        Layout::Ext4Mbr => (Format::Ext4, "ext4"),
        _ => (Format::Xfs, "xfs"),
    };
    let esp_line = if layout == Layout::Ext4Mbr {
        String::new()
    } else {
        format!("UUID={ESP_PLACEHOLDER} /boot/efi vfat umask=0077 0 1\n")
    };
    let root_dev = if layout == Layout::XfsLvm {
        format!("/dev/mapper/{vg}-root")
    } else {
        format!("UUID={ROOT_PLACEHOLDER}")
    };
    std::fs::write(
        root.join("etc/fstab"),
        format!("# <file system> <mount point> <type> <options> <dump> <pass>\n{root_dev} / {fs_type} defaults 0 1\n{esp_line}"),
    )
    .unwrap();
    // The UEFI stub grub-install writes on the ESP, leading to /boot/grub/grub.cfg, and the
    // tree's own GRUB EFI image (grub-efi-amd64-bin) as the vendor loader and at the
    // removable path a new VM's firmware falls back to.
    let esp = dir.join("esp");
    let stub = esp.join("EFI/debian/grub.cfg");
    std::fs::create_dir_all(stub.parent().unwrap()).unwrap();
    std::fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    let grub_efi = root.join("usr/lib/grub/x86_64-efi/monolithic/grubx64.efi");
    std::fs::copy(&grub_efi, esp.join("EFI/debian/grubx64.efi")).unwrap();
    std::fs::copy(&grub_efi, esp.join("EFI/BOOT/BOOTX64.EFI")).unwrap();
    std::fs::write(
        &stub,
        "search.fs_uuid 0a1b2c3d-4e5f-4061-8293-a4b5c6d7e8f9 root hd0,gpt2 \nset prefix=($root)'/boot/grub'\nconfigfile $prefix/grub.cfg\n",
    )
    .unwrap();
    let root_content = Content::fs(root_fs, "", Some(root));
    let (table, parts) = match layout {
        Layout::Ext4Mbr => (
            Table::Mbr,
            vec![Part::new(400, Kind::Linux, root_content).active()],
        ),
        Layout::XfsGptEsp => (
            Table::Gpt,
            vec![
                Part::new(34, Kind::Esp, Content::fs(Format::Fat32, "", Some(&esp))),
                Part::new(400, Kind::Linux, root_content),
            ],
        ),
        Layout::XfsLvm => (
            Table::Gpt,
            vec![
                Part::new(34, Kind::Esp, Content::fs(Format::Fat32, "", Some(&esp))),
                Part::new(
                    420,
                    Kind::Lvm,
                    Content::Lvm {
                        vg: vg.to_string(),
                        lvs: vec![Lv {
                            name: "root".into(),
                            size_mib: 400,
                            content: root_content,
                        }],
                    },
                ),
            ],
        ),
    };
    let path = dir.join("disk.raw");
    let total = parts.iter().map(|p| p.size_mib).sum::<u64>() + 2;
    let built = build(&path, total, table, &parts, &dir.join("scratch"));
    for f in &built.filesystems {
        let uuid = run(
            "blkid",
            &["-p", "-s", "UUID", "-o", "value", f.image.to_str().unwrap()],
        );
        let placeholder = match f.format {
            Format::Fat32 => ESP_PLACEHOLDER,
            _ => ROOT_PLACEHOLDER,
        };
        let uuid = uuid.trim();
        if uuid.len() == placeholder.len() {
            fixtures::linux_tree::replace(&path, placeholder, uuid);
        }
    }
    path
}

fn vhdx_of(raw: &Path) -> PathBuf {
    let vhdx = raw.with_extension("vhdx");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vhdx",
            raw.to_str().unwrap(),
            vhdx.to_str().unwrap(),
        ],
    );
    vhdx
}

fn preflight_json(path: &Path) -> (i32, Value) {
    let out = Cmd::cargo_bin("vhdforge")
        .unwrap()
        .args(["preflight", "--json"])
        .arg(path)
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{}: not JSON ({e}): {}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), v)
}

fn guest_findings(v: &Value) -> Vec<Value> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"].as_str().unwrap().starts_with("guest."))
        .cloned()
        .collect()
}

fn codes(v: &Value) -> BTreeSet<String> {
    guest_findings(v)
        .iter()
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect()
}

fn finding<'a>(v: &'a Value, code: &str) -> &'a Value {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == code)
        .unwrap_or_else(|| panic!("no {code} in {v:#}"))
}

/// One layout's disk, from a hard-linked copy of the shared tree (its own fstab, and for
/// `password` root's password set by the real `chpasswd`).
fn layout_disk(dir: &Path, shared: &Path, layout: Layout, vg: &str, password: bool) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(dir).unwrap();
    sh(&format!(
        "cp -al '{}' '{}'",
        shared.display(),
        root.display()
    ));
    // fstab and shadow are rewritten, never edited through the shared links.
    std::fs::remove_file(root.join("etc/fstab")).unwrap();
    if password {
        let shadow = root.join("etc/shadow");
        let text = std::fs::read(&shadow).unwrap();
        std::fs::remove_file(&shadow).unwrap();
        std::fs::write(&shadow, text).unwrap();
        // -c: crypt in chpasswd itself; through PAM it would need the chroot's modules.
        let mut c = Command::new("chpasswd")
            .args(["-R", root.to_str().unwrap(), "-c", "YESCRYPT"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("oracle `chpasswd` (passwd) is required");
        std::io::Write::write_all(c.stdin.as_mut().unwrap(), b"root:Azure-S3cret!\n").unwrap();
        drop(c.stdin.take());
        assert!(c.wait().unwrap().success(), "chpasswd failed");
    }
    disk(dir, &root, layout, vg)
}

const CASES: [(Layout, bool); 4] = [
    (Layout::Ext4Mbr, false),
    (Layout::XfsGptEsp, false),
    (Layout::XfsLvm, false),
    (Layout::Ext4Mbr, true),
];

/// Bump when the disks' recipe changes, so cached disks are rebuilt.
const RECIPE: u32 = 2;

/// The disks of [`CASES`] (raw and VHDX), built once per Debian tree and recipe and cached
/// under `target/guest-cache` (building them takes most of a minute on a loaded machine;
/// reading them, seconds). A build goes to a `.partial-*` directory renamed when complete.
fn cached_disks(deb: &Path) -> Vec<(Layout, bool, PathBuf, PathBuf)> {
    let marker = std::fs::metadata(deb.join(".vhdforge-complete")).unwrap();
    let stamp = marker
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    // FNV-1a over the tree's path, its completion time and the recipe.
    let mut key: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{}|{stamp}|{RECIPE}", deb.display()).bytes() {
        key = (key ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest-cache");
    let dir = cache.join(format!("preflight-debian-{key:016x}"));
    let paths = |base: &Path| -> Vec<(Layout, bool, PathBuf, PathBuf)> {
        CASES
            .iter()
            .enumerate()
            .map(|(i, &(l, pw))| {
                let d = base.join(format!("{i}-{l:?}"));
                (l, pw, d.join("disk.raw"), d.join("disk.vhdx"))
            })
            .collect()
    };
    if dir.join(".complete").exists() {
        return paths(&dir);
    }
    std::fs::create_dir_all(&cache).unwrap();
    let work = tempfile::Builder::new()
        .prefix(&format!("preflight-debian-{key:016x}.partial-"))
        .tempdir_in(&cache)
        .unwrap();
    // One VG name for every run: the cached disks' evidence must not depend on a pid, and
    // the fixtures' LVM lock keeps two builders from attaching it at once.
    let vg = "vhdforgedeb";
    let shared = work.path().join("tree");
    copy_tree(deb, &shared);
    // Build the disks in parallel: they wait on mkfs, cp, sync and LVM more than on the CPU.
    std::thread::scope(|s| {
        let hs: Vec<_> = CASES
            .iter()
            .enumerate()
            .map(|(i, &(l, pw))| {
                let d = work.path().join(format!("{i}-{l:?}"));
                let shared = &shared;
                s.spawn(move || {
                    let raw = layout_disk(&d, shared, l, vg, pw);
                    vhdx_of(&raw);
                    // Only the disks are kept.
                    for sub in ["root", "scratch", "esp"] {
                        std::fs::remove_dir_all(d.join(sub)).unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    std::fs::remove_dir_all(&shared).unwrap();
    std::fs::write(work.path().join(".complete"), b"").unwrap();
    let built = work.keep();
    if std::fs::rename(&built, &dir).is_err() {
        // Another run finished first: use its disks.
        std::fs::remove_dir_all(&built).unwrap();
    }
    paths(&dir)
}

#[test]
fn real_debian_bookworm_through_the_whole_runner() {
    let started = std::time::Instant::now();
    let deb = debian_tree();
    let kver = kernel_release(&deb);
    let disks = cached_disks(&deb);
    eprintln!("disks ready in {:?}", started.elapsed());
    let reading = std::time::Instant::now();

    for (layout, password, raw, vhdx) in &disks {
        let (code, v) = preflight_json(raw);
        let what = format!("{layout:?} password={password}");
        // The raw disk is no fixed VHD (a container error): exit 1 whatever the guest.
        assert_eq!(code, 1, "{what}: {v:#}");
        assert_eq!(v["azure_ready"], false, "{what}");
        assert_eq!(v["os"]["family"], "linux", "{what}");
        assert_eq!(v["os"]["name"], "Debian GNU/Linux 12 (bookworm)", "{what}");
        assert_eq!(v["os"]["version"], "12", "{what}");
        assert_eq!(v["os"]["kernel"], kver.as_str(), "{what}");
        assert_eq!(
            v["generation"],
            if *layout == Layout::Ext4Mbr { 1 } else { 2 },
            "{what}"
        );
        let mounts: BTreeSet<&str> = v["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x["mount_point"].as_str())
            .collect();
        let want_mounts: BTreeSet<&str> = if *layout == Layout::Ext4Mbr {
            ["/"].into()
        } else {
            ["/", "/boot/efi"].into()
        };
        assert_eq!(mounts, want_mounts, "{what}: {v:#}");

        let mut want: BTreeSet<String> = [
            "guest.disk.generation",
            "guest.linux.os",
            "guest.linux.ssh_host_keys",
            "guest.linux.client_alive_interval",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        if *layout == Layout::XfsLvm {
            want.insert("guest.linux.lvm_root".into());
        }
        if *password {
            want.insert("guest.linux.root_password".into());
        }
        assert_eq!(codes(&v), want, "{what}: {v:#}");
        assert_eq!(v["guest_ready"], !password, "{what}");
        let keys = finding(&v, "guest.linux.ssh_host_keys");
        assert_eq!(keys["severity"], "warning");
        assert!(
            keys["evidence"]
                .as_str()
                .unwrap()
                .ends_with("/etc/ssh: ssh_host_ecdsa_key, ssh_host_ed25519_key, ssh_host_rsa_key"),
            "{keys}"
        );
        let alive = finding(&v, "guest.linux.client_alive_interval");
        assert_eq!(alive["severity"], "warning");
        assert!(
            alive["evidence"]
                .as_str()
                .unwrap()
                .contains("ClientAliveInterval not set"),
            "{alive}"
        );
        if *password {
            let pw = finding(&v, "guest.linux.root_password");
            assert_eq!(pw["severity"], "error");
            assert!(
                pw["evidence"]
                    .as_str()
                    .unwrap()
                    .ends_with("/etc/shadow line 1: root: a yescrypt password hash (not shown)"),
                "{pw}"
            );
            // Neither the hash nor its salt leaves the image.
            assert!(!v.to_string().contains("$y$"), "{v}");
        }
        // The same disk as VHDX: the same guest findings, evidence and all.
        let (xcode, x) = preflight_json(vhdx);
        assert_eq!(xcode, 1, "{what} vhdx: {x:#}");
        assert_eq!(guest_findings(&x), guest_findings(&v), "{what} vhdx");
        assert_eq!(x["os"], v["os"], "{what} vhdx");
    }
    // Eight preflight runs of a debug build: bounded well below the test's minute.
    eprintln!("read in {:?}", reading.elapsed());
    assert!(
        reading.elapsed() < std::time::Duration::from_secs(45),
        "took {:?}",
        reading.elapsed()
    );
}
