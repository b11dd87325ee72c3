//! `preflight` on guest disks built by the real tools from generated CentOS-7-like (XFS root
//! on LVM, MBR), Debian-12-like (ext4, GPT + ESP) and RHEL-9-like (GPT + ESP, ext4 `/boot` with
//! BLS entries and grubenv, XFS root on LVM, dracut initramfs, cloud-init provisioning) trees: a clean image has no error, and
//! each planted violation gives exactly its code with its evidence. The same disk as VHDX,
//! dynamic VHD and a differencing chain gives the same guest findings as raw.
//!
//! The clean trees boot like the real distributions: CentOS 7 from a grub2 `grub.cfg` on
//! its own `/boot` with `linux16`/`initrd16` and a dracut initramfs (early microcode cpio,
//! then xz, `.ko.xz` modules); Debian 12 from `/boot/grub/grub.cfg` on the root with an
//! initramfs-tools gzip initramfs. Both hold hv_vmbus, hv_storvsc and hv_netvsc and have
//! `console=ttyS0` and `earlyprintk=ttyS0`, so the boot checks run through the whole runner.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use fixtures::linux_tree::{
    build_disk, efi_program, elf_program, grub_cfg, link, put, put_bytes, put_initramfs, write,
    Distro, Layout, Tree,
};
use vhdforge_core::preflight::{run, run_image, GuestFinding, OsChoice, PreflightReport};
use vhdforge_core::{DiskImage, OpenOptions, Severity};

fn preflight(path: &Path) -> PreflightReport {
    run(path, &OpenOptions::default(), OsChoice::Auto).unwrap()
}

/// The clean images' reports, built once for every test of this file (the builds are the
/// slow part: LVM, XFS through a loop mount).
fn clean(distro: Distro) -> &'static PreflightReport {
    static CLEAN: [OnceLock<PreflightReport>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    CLEAN[index(distro)].get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        preflight(&disk(dir.path(), distro, Layout::default(), &|_| {}))
    })
}

/// The distribution's slot in the per-distribution tables.
fn index(distro: Distro) -> usize {
    match distro {
        Distro::CentOs7 => 0,
        Distro::Debian12 => 1,
        Distro::Rhel9 => 2,
    }
}

/// Guest findings only (the container's depend on the image format).
fn guest(r: &PreflightReport) -> Vec<GuestFinding> {
    r.findings
        .iter()
        .filter(|f| f.code.as_str().starts_with("guest."))
        .cloned()
        .collect()
}

fn codes(r: &PreflightReport) -> BTreeSet<String> {
    guest(r).iter().map(|f| f.code.to_string()).collect()
}

/// Build a disk from a clean tree of `distro` changed by `plant`.
fn disk(dir: &Path, distro: Distro, layout: Layout, plant: &dyn Fn(&Tree)) -> PathBuf {
    let t = write(dir, distro);
    plant(&t);
    build_disk(dir, &t, layout)
}

fn edit(root: &Path, path: &str, f: impl FnOnce(String) -> String) {
    let p = root.join(path);
    let text = std::fs::read_to_string(&p).unwrap();
    let changed = f(text.clone());
    assert_ne!(
        changed,
        text,
        "the plant into {} changed nothing",
        p.display()
    );
    std::fs::write(&p, changed).unwrap();
}

/// Edit the tree's grub.cfg.
fn edit_grub(t: &Tree, f: impl FnOnce(String) -> String) {
    let p = grub_cfg(t);
    edit(
        p.parent().unwrap(),
        p.file_name().unwrap().to_str().unwrap(),
        f,
    );
}

#[test]
fn clean_images_have_no_guest_error() {
    for (distro, expected) in [
        // CentOS 7 is past its end of life, and its root is on LVM: warnings, not errors.
        (
            Distro::CentOs7,
            &[
                "guest.disk.generation",
                "guest.linux.eol",
                "guest.linux.lvm_root",
                "guest.linux.os",
            ][..],
        ),
        (
            Distro::Debian12,
            &["guest.disk.generation", "guest.linux.os"][..],
        ),
        // RHEL 9 keeps its root on LVM (a warning) and is in support.
        (
            Distro::Rhel9,
            &[
                "guest.disk.generation",
                "guest.linux.lvm_root",
                "guest.linux.os",
            ][..],
        ),
    ] {
        let r = clean(distro);
        let got: Vec<String> = codes(r).into_iter().collect();
        assert_eq!(got, expected, "{distro:?}: {:#?}", guest(r));
        assert!(r.guest_ready);
        assert_eq!(r.os.family, Some(vhdforge_core::guest::OsFamily::Linux));
        let f = |c: &str| guest(r).into_iter().find(|f| f.code == c).unwrap();
        match distro {
            Distro::CentOs7 => {
                assert_eq!(r.generation, Some(1));
                assert_eq!(r.os.version.as_deref(), Some("7"));
                assert_eq!(
                    r.os.kernel.as_deref(),
                    Some(fixtures::linux_tree::CENTOS_KERNEL)
                );
                let vg = fixtures::linux_tree::vg_name();
                assert!(f("guest.linux.lvm_root")
                    .evidence
                    .unwrap()
                    .contains(&format!("{vg}/root")));
                assert!(f("guest.linux.eol")
                    .evidence
                    .unwrap()
                    .contains("VERSION_ID=7"));
                // fstab mounted /boot (by UUID) and named the root by /dev/mapper.
                let mounts: Vec<_> = r
                    .volumes
                    .iter()
                    .map(|v| (v.partition.clone(), v.mount_point.clone()))
                    .collect();
                assert!(
                    mounts.contains(&("1".into(), Some("/boot".into()))),
                    "{mounts:?}"
                );
                assert!(
                    mounts.contains(&(format!("{vg}/root"), Some("/".into()))),
                    "{mounts:?}"
                );
            }
            Distro::Rhel9 => {
                assert_eq!(r.generation, Some(2));
                assert_eq!(r.os.version.as_deref(), Some("9.4"));
                assert_eq!(
                    r.os.kernel.as_deref(),
                    Some(fixtures::linux_tree::RHEL_KERNEL)
                );
                let vg = fixtures::linux_tree::rhel_vg_name();
                let mounts: Vec<_> = r
                    .volumes
                    .iter()
                    .map(|v| (v.partition.clone(), v.mount_point.clone()))
                    .collect();
                for want in [
                    ("1".to_string(), Some("/boot/efi".to_string())),
                    ("2".into(), Some("/boot".into())),
                    (format!("{vg}/root"), Some("/".into())),
                ] {
                    assert!(mounts.contains(&want), "{mounts:?}");
                }
            }
            Distro::Debian12 => {
                assert_eq!(r.generation, Some(2));
                assert_eq!(r.os.name.as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
                assert!(f("guest.disk.generation")
                    .evidence
                    .unwrap()
                    .contains("partition 1: EFI"));
                let mounts: Vec<_> = r.volumes.iter().map(|v| v.mount_point.clone()).collect();
                assert_eq!(mounts, [Some("/boot/efi".to_string()), Some("/".into())]);
            }
        }
        // A raw disk is not Azure-ready as it stands: the container finding says so.
        assert!(!r.azure_ready);
        assert!(r.findings.iter().any(|f| f.code == "azure.not_fixed_vhd"));
    }
}

/// (what is planted, distro, layout, plant, the one new code, its severity, evidence text).
type Case = (
    &'static str,
    Distro,
    Layout,
    Box<dyn Fn(&Tree) + Send + Sync>,
    &'static str,
    Severity,
    String,
);

fn cases() -> Vec<Case> {
    let vg = fixtures::linux_tree::vg_name();
    let d = Distro::Debian12;
    let plain = Layout::default();
    let c7 = fixtures::linux_tree::CENTOS_KERNEL;
    let deb = fixtures::linux_tree::DEBIAN_KERNEL;
    vec![
        (
            "no console=ttyS0 (CentOS, grub2 on /boot)",
            Distro::CentOs7,
            plain,
            Box::new(|t: &Tree| {
                edit_grub(t, |s| s.replace(" console=ttyS0,115200n8", ""));
            }),
            "guest.linux.console",
            Severity::Error,
            "/boot/grub2/grub.cfg line 5, entry 'CentOS Linux (".into(),
        ),
        (
            "no earlyprintk (Debian, grub.cfg on the root)",
            d,
            plain,
            Box::new(|t: &Tree| edit_grub(t, |s| s.replace(" earlyprintk=ttyS0", ""))),
            "guest.linux.earlyprintk",
            Severity::Warning,
            // The ESP's stub is where GRUB starts; it leads to the root's grub.cfg.
            "/boot/grub/grub.cfg line 8, entry 'Debian GNU/Linux' (read via /boot/efi/EFI/debian/grub.cfg → /boot/grub/grub.cfg): root=UUID=".into(),
        ),
        (
            "a dracut initramfs without hv_storvsc",
            Distro::CentOs7,
            plain,
            Box::new(|t: &Tree| put_initramfs(t, &["hv_vmbus", "hv_netvsc"])),
            "guest.linux.hv_drivers",
            Severity::Error,
            format!("/boot/initramfs-{c7}.img: 2 modules in 2 member(s) (uncompressed cpio, xz)"),
        ),
        (
            "an initramfs-tools initramfs without any Hyper-V driver",
            d,
            plain,
            Box::new(|t: &Tree| put_initramfs(t, &["hv_netvsc"])),
            "guest.linux.hv_drivers",
            Severity::Error,
            format!("/boot/initrd.img-{deb}: 1 modules in 1 member(s) (gzip)"),
        ),
        (
            "root has a SHA-512 hash",
            d,
            plain,
            Box::new(|t: &Tree| {
                edit(&t.root, "etc/shadow", |s| {
                    s.replace("root:!!:", "root:$6$salt$hash:")
                })
            }),
            "guest.linux.root_password",
            Severity::Error,
            "/etc/shadow line 1: root: a SHA-512 password hash (not shown)".into(),
        ),
        (
            "a uid-1000 user with a password",
            d,
            plain,
            Box::new(|t: &Tree| {
                edit(&t.root, "etc/passwd", |s| {
                    s + "alice:x:1000:1000::/home/alice:/bin/bash\n"
                });
                edit(&t.root, "etc/shadow", |s| {
                    s + "alice:$y$j9T$salt$hash:19000:0:99999:7:::\n"
                });
                std::fs::create_dir_all(t.root.join("home/alice")).unwrap();
            }),
            "guest.linux.user_password",
            Severity::Error,
            "/etc/shadow line 4: alice: a yescrypt password hash".into(),
        ),
        (
            "an empty root password field",
            d,
            plain,
            Box::new(|t: &Tree| edit(&t.root, "etc/shadow", |s| s.replace("root:!!:", "root::"))),
            "guest.linux.root_password",
            Severity::Error,
            "empty password field".into(),
        ),
        (
            "root's authorized_keys",
            d,
            plain,
            Box::new(|t: &Tree| {
                put(
                    &t.root,
                    "root/.ssh/authorized_keys",
                    "# mine\nssh-ed25519 AAAAC3Nza me@laptop\n",
                )
            }),
            "guest.linux.authorized_keys",
            Severity::Error,
            "/root/.ssh/authorized_keys: 1 key(s), the first of type ssh-ed25519".into(),
        ),
        (
            "a 2000-byte history",
            d,
            plain,
            Box::new(|t: &Tree| put(&t.root, "root/.bash_history", &"x".repeat(2000))),
            "guest.linux.bash_history",
            Severity::Error,
            "/root/.bash_history: 2000 bytes".into(),
        ),
        (
            "no waagent binary",
            d,
            plain,
            Box::new(|t: &Tree| std::fs::remove_file(t.root.join("usr/sbin/waagent")).unwrap()),
            "guest.linux.agent_missing",
            Severity::Error,
            "none of /usr/sbin/waagent".into(),
        ),
        (
            "the agent's wants link removed",
            d,
            plain,
            Box::new(|t: &Tree| {
                std::fs::remove_file(
                    t.root
                        .join("etc/systemd/system/multi-user.target.wants/walinuxagent.service"),
                )
                .unwrap()
            }),
            "guest.linux.agent_disabled",
            Severity::Error,
            "multi-user.target.wants/walinuxagent.service: absent".into(),
        ),
        (
            "agent 2.2.40",
            d,
            plain,
            Box::new(|t: &Tree| {
                edit(
                    &t.root,
                    "usr/lib/python3/dist-packages/azurelinuxagent/common/version.py",
                    |s| s.replace("2.9.0.4", "2.2.40"),
                )
            }),
            "guest.linux.agent_version",
            Severity::Error,
            "version.py: 2.2.40".into(),
        ),
        (
            "a swap line in fstab",
            d,
            plain,
            Box::new(|t: &Tree| edit(&t.root, "etc/fstab", |s| s + "/swapfile none swap sw 0 0\n")),
            "guest.linux.swap",
            Severity::Error,
            "/etc/fstab line 4: /swapfile none swap sw 0 0".into(),
        ),
        (
            "a swap partition",
            d,
            Layout {
                swap_partition: true,
                ..plain
            },
            Box::new(|_: &Tree| {}),
            "guest.linux.swap",
            Severity::Error,
            "volume 3: Linux swap (swap)".into(),
        ),
        (
            "a swap logical volume",
            Distro::CentOs7,
            Layout {
                swap_lv: true,
                ..plain
            },
            Box::new(|_: &Tree| {}),
            "guest.linux.swap",
            Severity::Error,
            format!("volume {vg}/swap: LVM logical volume (swap)"),
        ),
        (
            "a second root file system",
            d,
            Layout {
                second_root: true,
                ..plain
            },
            Box::new(|_: &Tree| {}),
            "guest.linux.root_fs_count",
            Severity::Error,
            "volume 3 (ext2/3/4) has /etc/os-release".into(),
        ),
        (
            "the root by /dev/sda2",
            d,
            plain,
            Box::new(|t: &Tree| {
                edit(&t.root, "etc/fstab", |s| {
                    s.replace("UUID=ROOT-UUID-PLACEHOLDER-0000000000000X", "/dev/sda2")
                })
            }),
            "guest.linux.fstab_device_name",
            Severity::Error,
            "/etc/fstab line 2: /dev/sda2 / ext4".into(),
        ),
        (
            "an fstab entry for a missing disk",
            d,
            plain,
            Box::new(|t: &Tree| {
                edit(&t.root, "etc/fstab", |s| {
                    s + "UUID=0b6c3f4e-0000-4000-8000-000000000000 /data ext4 defaults 0 2\n"
                })
            }),
            "guest.linux.fstab_unresolved",
            Severity::Warning,
            "/etc/fstab line 4: UUID=0b6c3f4e".into(),
        ),
        (
            "udf disabled by CIS hardening",
            d,
            plain,
            Box::new(|t: &Tree| {
                put(
                    &t.root,
                    "etc/modprobe.d/CIS.conf",
                    "install udf /bin/true\n",
                )
            }),
            "guest.linux.udf_disabled",
            Severity::Error,
            "/etc/modprobe.d/CIS.conf line 1: install udf /bin/true".into(),
        ),
        (
            "PermitRootLogin yes in an Included file",
            d,
            plain,
            Box::new(|t: &Tree| {
                edit(&t.root, "etc/ssh/sshd_config.d/50-cloudimg.conf", |s| {
                    s + "PermitRootLogin yes\n"
                })
            }),
            "guest.linux.root_ssh_login",
            Severity::Warning,
            "/etc/ssh/sshd_config.d/50-cloudimg.conf line 2: PermitRootLogin yes".into(),
        ),
        (
            "a host key",
            d,
            plain,
            Box::new(|t: &Tree| {
                put(
                    &t.root,
                    "etc/ssh/ssh_host_ed25519_key",
                    "-----BEGIN OPENSSH PRIVATE KEY-----\n",
                )
            }),
            "guest.linux.ssh_host_keys",
            Severity::Warning,
            "/etc/ssh: ssh_host_ed25519_key".into(),
        ),
        (
            "the agent's log",
            d,
            plain,
            Box::new(|t: &Tree| put(&t.root, "var/log/waagent.log", "2024 INFO Daemon\n")),
            "guest.linux.not_deprovisioned",
            Severity::Warning,
            "/var/log/waagent.log".into(),
        ),
        (
            "ClientAliveInterval 600",
            d,
            plain,
            Box::new(|t: &Tree| {
                edit(&t.root, "etc/ssh/sshd_config", |s| {
                    s.replace("ClientAliveInterval 120", "ClientAliveInterval 600")
                })
            }),
            "guest.linux.client_alive_interval",
            Severity::Warning,
            "/etc/ssh/sshd_config line 4: ClientAliveInterval 600".into(),
        ),
        (
            "a static eth0",
            d,
            plain,
            Box::new(|t: &Tree| {
                edit(&t.root, "etc/network/interfaces", |s| {
                    s.replace("inet dhcp", "inet static")
                })
            }),
            "guest.linux.network",
            Severity::Warning,
            "/etc/network/interfaces line 5: iface eth0 inet static".into(),
        ),
        (
            "Debian 10",
            d,
            plain,
            Box::new(|t: &Tree| {
                edit(&t.root, "usr/lib/os-release", |s| {
                    s.replace("VERSION_ID=\"12\"", "VERSION_ID=\"10\"")
                })
            }),
            "guest.linux.eol",
            Severity::Warning,
            "ID=debian VERSION_ID=10".into(),
        ),
        (
            "a masked agent unit",
            d,
            plain,
            Box::new(|t: &Tree| {
                link(
                    &t.root,
                    "etc/systemd/system/walinuxagent.service",
                    "/dev/null",
                )
            }),
            "guest.linux.agent_disabled",
            Severity::Error,
            "walinuxagent.service -> /dev/null".into(),
        ),
        (
            "an AArch64 userland",
            d,
            plain,
            Box::new(|t: &Tree| put_bytes(&t.root, "usr/bin/bash", &elf_program(0xB7))),
            "guest.linux.architecture",
            Severity::Error,
            "/usr/bin/bash: ELF64 e_machine 0xb7 (AArch64 (64-bit Arm))".into(),
        ),
        (
            "no Python",
            d,
            plain,
            Box::new(|t: &Tree| {
                for f in ["usr/bin/python3", "usr/bin/python3.11"] {
                    std::fs::remove_file(t.root.join(f)).unwrap();
                }
            }),
            "guest.linux.python",
            Severity::Error,
            "no python, python2*, python3* or platform-python".into(),
        ),
        (
            "a dangling python link only (CentOS)",
            Distro::CentOs7,
            plain,
            Box::new(|t: &Tree| std::fs::remove_file(t.root.join("usr/bin/python2.7")).unwrap()),
            "guest.linux.python",
            Severity::Error,
            "no python".into(),
        ),
        (
            "no libssl (CentOS)",
            Distro::CentOs7,
            plain,
            Box::new(|t: &Tree| {
                for f in ["usr/lib64/libssl.so.10", "usr/lib64/libssl.so.1.0.2k"] {
                    std::fs::remove_file(t.root.join(f)).unwrap();
                }
            }),
            "guest.linux.openssl",
            Severity::Error,
            "no libssl.so.* in /usr/lib64".into(),
        ),
        (
            "OpenSSL 0.9.7",
            d,
            plain,
            Box::new(|t: &Tree| {
                std::fs::rename(
                    t.root.join("usr/lib/x86_64-linux-gnu/libssl.so.3"),
                    t.root.join("usr/lib/x86_64-linux-gnu/libssl.so.0.9.7"),
                )
                .unwrap();
            }),
            "guest.linux.openssl",
            Severity::Error,
            "/usr/lib/x86_64-linux-gnu/libssl.so.0.9.7: OpenSSL 0.9.7".into(),
        ),
        (
            "cloud-init named by waagent.conf but not installed",
            d,
            plain,
            Box::new(|t: &Tree| std::fs::remove_file(t.root.join("usr/bin/cloud-init")).unwrap()),
            "guest.linux.provisioning",
            Severity::Error,
            "/etc/waagent.conf line 1: Provisioning.Agent=cloud-init; volume 2: /usr/bin/cloud-init: absent".into(),
        ),
        (
            "cloud-init switched off by its marker file",
            d,
            plain,
            Box::new(|t: &Tree| put(&t.root, "etc/cloud/cloud-init.disabled", "")),
            "guest.linux.provisioning",
            Severity::Error,
            "/etc/cloud/cloud-init.disabled: present".into(),
        ),
        (
            "provisioning disabled and no cloud-init (CentOS)",
            Distro::CentOs7,
            plain,
            Box::new(|t: &Tree| {
                edit(&t.root, "etc/waagent.conf", |s| {
                    s.replace("Provisioning.Agent=auto", "Provisioning.Agent=disabled")
                })
            }),
            "guest.linux.provisioning",
            Severity::Error,
            "/etc/waagent.conf line 1: Provisioning.Agent=disabled".into(),
        ),
        (
            "both the agent and cloud-init provision",
            d,
            plain,
            Box::new(|t: &Tree| {
                edit(&t.root, "etc/waagent.conf", |s| {
                    s.replace("Provisioning.Agent=cloud-init", "Provisioning.Agent=waagent")
                })
            }),
            "guest.linux.provisioning",
            Severity::Warning,
            "cloud-init enabled by /etc/systemd/system/cloud-init.target.wants/cloud-init-local.service".into(),
        ),
        (
            "agent swap on the resource disk while cloud-init provisions",
            d,
            plain,
            Box::new(|t: &Tree| {
                edit(&t.root, "etc/waagent.conf", |s| {
                    s.replace("ResourceDisk.EnableSwap=n", "ResourceDisk.EnableSwap=y")
                })
            }),
            "guest.linux.waagent_conf",
            Severity::Warning,
            "/etc/waagent.conf line 3: ResourceDisk.EnableSwap=y".into(),
        ),
        (
            "the agent's verbose logging left on (CentOS)",
            Distro::CentOs7,
            plain,
            Box::new(|t: &Tree| edit(&t.root, "etc/waagent.conf", |s| s + "Logs.Verbose=y\n")),
            "guest.linux.waagent_conf",
            Severity::Info,
            "/etc/waagent.conf line 3: Logs.Verbose=y".into(),
        ),
        (
            "cloud-init restricted to other clouds' datasources",
            d,
            plain,
            Box::new(|t: &Tree| {
                put(
                    &t.root,
                    "etc/cloud/cloud.cfg.d/99-local.cfg",
                    "# our build\ndatasource_list: [ Ec2, NoCloud, None ]\n",
                )
            }),
            "guest.linux.cloud_init",
            Severity::Error,
            "/etc/cloud/cloud.cfg.d/99-local.cfg line 2: datasource_list: [ Ec2, NoCloud, None ]".into(),
        ),
        (
            "a tab-indented cloud-init file",
            d,
            plain,
            Box::new(|t: &Tree| {
                put(
                    &t.root,
                    "etc/cloud/cloud.cfg.d/50-users.cfg",
                    "users:\n\t- default\n",
                )
            }),
            "guest.linux.cloud_init",
            Severity::Warning,
            "/etc/cloud/cloud.cfg.d/50-users.cfg line 2: - default (indented with a tab)".into(),
        ),
        (
            "an ESP without the fallback loader",
            d,
            plain,
            Box::new(|t: &Tree| {
                std::fs::remove_file(t.esp.as_ref().unwrap().join("EFI/BOOT/BOOTX64.EFI")).unwrap()
            }),
            "guest.linux.esp",
            Severity::Error,
            "volume 1 (EFI system partition): /EFI/BOOT/BOOTX64.EFI: absent; \\EFI holds debian".into(),
        ),
        (
            "an Arm64 fallback loader",
            d,
            plain,
            Box::new(|t: &Tree| {
                put_bytes(t.esp.as_ref().unwrap(), "EFI/BOOT/BOOTX64.EFI", &efi_program(0xAA64))
            }),
            "guest.linux.esp",
            Severity::Error,
            "/EFI/BOOT/BOOTX64.EFI: PE machine 0xaa64".into(),
        ),
        (
            "an ESP without grub.cfg",
            d,
            plain,
            Box::new(|t: &Tree| {
                std::fs::remove_file(t.esp.as_ref().unwrap().join("EFI/debian/grub.cfg")).unwrap()
            }),
            "guest.linux.esp",
            Severity::Warning,
            "\\EFI holds debian, none with a grub.cfg".into(),
        ),
        (
            "a persistent-net rule with the build host's MAC",
            d,
            plain,
            Box::new(|t: &Tree| {
                put(
                    &t.root,
                    "etc/udev/rules.d/70-persistent-net.rules",
                    "# generated\nSUBSYSTEM==\"net\", ACTION==\"add\", DRIVERS==\"?*\", ATTR{address}==\"00:15:5d:01:02:03\", NAME=\"eth0\"\n",
                )
            }),
            "guest.linux.network",
            Severity::Warning,
            "70-persistent-net.rules line 2: SUBSYSTEM==\"net\", ACTION==\"add\", DRIVERS==\"?*\", ATTR{address}==\"00:15:5d:01:02:03\"".into(),
        ),
        (
            "the persistent-net generator not masked (CentOS)",
            Distro::CentOs7,
            plain,
            Box::new(|t: &Tree| {
                std::fs::remove_file(
                    t.root.join("etc/udev/rules.d/75-persistent-net-generator.rules"),
                )
                .unwrap();
                put(
                    &t.root,
                    "lib/udev/rules.d/75-persistent-net-generator.rules",
                    "ACTION==\"add\", SUBSYSTEM==\"net\", IMPORT{program}=\"write_net_rules\"\n",
                );
            }),
            "guest.linux.network",
            Severity::Warning,
            "/etc/udev/rules.d/75-persistent-net-generator.rules: absent".into(),
        ),
        (
            "NetworkManager on an 8.x release without the SR-IOV exclusion",
            Distro::CentOs7,
            plain,
            Box::new(|t: &Tree| {
                edit(&t.root, "etc/os-release", |s| {
                    s.replace("VERSION_ID=\"7\"", "VERSION_ID=\"8\"")
                });
                put_bytes(&t.root, "usr/sbin/NetworkManager", &elf_program(0x3E));
            }),
            "guest.linux.network",
            Severity::Warning,
            "absent: /etc/udev/rules.d/68-azure-sriov-nm-unmanaged.rules".into(),
        ),
        (
            "a swap logical volume (RHEL 9, as its installer makes by default)",
            Distro::Rhel9,
            Layout {
                swap_lv: true,
                ..plain
            },
            Box::new(|_: &Tree| {}),
            "guest.linux.swap",
            Severity::Error,
            format!("volume {}/swap: LVM logical volume (swap)", fixtures::linux_tree::rhel_vg_name()),
        ),
        (
            "a BLS entry without console=ttyS0 (RHEL 9)",
            Distro::Rhel9,
            plain,
            Box::new(|t: &Tree| {
                let entries = t.boot.as_ref().unwrap().join("loader/entries");
                let name = std::fs::read_dir(&entries).unwrap().next().unwrap().unwrap().file_name();
                edit(&entries, name.to_str().unwrap(), |s| s.replace(" console=ttyS0,115200n8", ""));
            }),
            "guest.linux.console",
            Severity::Error,
            format!("/boot/loader/entries/4f0b5a3c9d2e4e1b8a7c6d5e4f3a2b1c-{}.conf line 5", fixtures::linux_tree::RHEL_KERNEL),
        ),
        (
            "a dracut initramfs without hv_vmbus (RHEL 9)",
            Distro::Rhel9,
            plain,
            Box::new(|t: &Tree| put_initramfs(t, &["hv_storvsc", "hv_netvsc"])),
            "guest.linux.hv_drivers",
            Severity::Error,
            format!("/boot/initramfs-{}.img: 2 modules in 2 member(s) (uncompressed cpio, xz)", fixtures::linux_tree::RHEL_KERNEL),
        ),
        (
            "NetworkManager manages the SR-IOV interface (RHEL 9)",
            Distro::Rhel9,
            plain,
            Box::new(|t: &Tree| {
                std::fs::remove_file(t.root.join("etc/udev/rules.d/68-azure-sriov-nm-unmanaged.rules")).unwrap()
            }),
            "guest.linux.network",
            Severity::Warning,
            "absent: /etc/udev/rules.d/68-azure-sriov-nm-unmanaged.rules".into(),
        ),
        (
            "sshd not enabled (Debian's ssh.service)",
            d,
            plain,
            Box::new(|t: &Tree| {
                std::fs::remove_file(t.root.join("etc/systemd/system/multi-user.target.wants/ssh.service")).unwrap()
            }),
            "guest.linux.sshd",
            Severity::Error,
            "/etc/systemd/system/multi-user.target.wants: no sshd.service, ssh.service or ssh(d).socket link".into(),
        ),
        (
            "sshd masked (RHEL 9)",
            Distro::Rhel9,
            plain,
            Box::new(|t: &Tree| link(&t.root, "etc/systemd/system/sshd.service", "/dev/null")),
            "guest.linux.sshd",
            Severity::Error,
            "/etc/systemd/system/sshd.service -> /dev/null".into(),
        ),
        (
            "no SSH server (CentOS)",
            Distro::CentOs7,
            plain,
            Box::new(|t: &Tree| std::fs::remove_file(t.root.join("usr/sbin/sshd")).unwrap()),
            "guest.linux.sshd",
            Severity::Error,
            "/usr/sbin/sshd: absent".into(),
        ),
    ]
}

#[test]
fn each_planted_violation_gives_exactly_its_code_and_evidence() {
    let baseline: Vec<BTreeSet<String>> = [Distro::CentOs7, Distro::Debian12, Distro::Rhel9]
        .iter()
        .map(|&d| codes(clean(d)))
        .collect();
    // Two threads: the builds wait on mkfs, sync and LVM more than on the CPU.
    let all = cases();
    let half = all.len() / 2;
    let (left, right) = all.split_at(half);
    let failures: Vec<String> = std::thread::scope(|sc| {
        let h1 = sc.spawn(|| check_cases(left, &baseline));
        let h2 = sc.spawn(|| check_cases(right, &baseline));
        let mut f = h1.join().unwrap();
        f.extend(h2.join().unwrap());
        f
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn check_cases(cases: &[Case], baseline: &[BTreeSet<String>]) -> Vec<String> {
    let mut failures = Vec::new();
    for (what, distro, layout, plant, code, severity, evidence) in cases {
        let (distro, layout, code, severity) = (*distro, *layout, *code, *severity);
        let dir = tempfile::tempdir().unwrap();
        let r = preflight(&disk(dir.path(), distro, layout, plant.as_ref()));
        let base = &baseline[index(distro)];
        let new: Vec<String> = codes(&r).difference(base).cloned().collect();
        let hits: Vec<GuestFinding> = guest(&r).into_iter().filter(|f| f.code == code).collect();
        let ok = new == [code]
            && hits.len() == 1
            && hits.iter().any(|f| {
                f.severity == severity
                    && f.evidence
                        .as_deref()
                        .is_some_and(|e| e.contains(evidence.as_str()))
                    && f.fix.is_some()
            });
        if !ok {
            failures.push(format!("{what}: new codes {new:?}, findings {hits:#?}"));
        }
    }
    failures
}

#[test]
fn vhdx_dynamic_vhd_and_a_chain_give_the_same_guest_findings_as_raw() {
    let dir = tempfile::tempdir().unwrap();
    // A Debian image with two violations, so "the same" is not "nothing".
    let raw = disk(dir.path(), Distro::Debian12, Layout::default(), &|t| {
        put(&t.root, "root/.ssh/authorized_keys", "ssh-rsa AAAAB3 me\n");
        put(&t.root, "etc/modprobe.d/CIS.conf", "blacklist vfat\n");
    });
    let want = guest(&preflight(&raw));
    assert!(want.iter().any(|f| f.code == "guest.linux.authorized_keys"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let vhdx = dir.path().join("disk.vhdx");
    let vhd = dir.path().join("disk.vhd");
    fixtures::guest::run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "vhdx", &s(&raw), &s(&vhdx)],
    );
    fixtures::guest::run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=dynamic,force_size=on",
            &s(&raw),
            &s(&vhd),
        ],
    );
    // The chain: a base whose root file system's first 4 MiB are zeroed, and a child that
    // writes them back — the findings can only match if the chain is read through.
    let bytes = std::fs::read(&raw).unwrap();
    let root_start = 41usize << 20;
    let mut base = bytes.clone();
    base[root_start..root_start + (4 << 20)].fill(0);
    let layers = [fixtures::vhd::ChainLayer {
        name: "child.avhd".into(),
        writes: vec![(
            root_start as u64,
            bytes[root_start..root_start + (4 << 20)].to_vec(),
        )],
    }];
    let (paths, _) =
        fixtures::vhd::write_chain(dir.path(), &base, "base.vhd", 2 << 20, &layers).unwrap();
    drop((bytes, base));
    let chain_base = preflight(&paths[0]);
    assert!(
        guest(&chain_base)
            .iter()
            .all(|f| f.code != "guest.linux.authorized_keys"),
        "the base alone must not show the root's files"
    );
    for p in [&vhdx, &vhd, paths.last().unwrap()] {
        assert_eq!(guest(&preflight(p)), want, "{}", p.display());
    }
}

/// An in-memory disk for the layout-only checks.
fn mem_disk(len: usize, fill: impl FnOnce(&mut [u8])) -> Arc<dyn DiskImage> {
    let mut d = vec![0u8; len];
    fill(&mut d);
    Arc::from(vhdforge_core::open_bytes(d).unwrap())
}

fn mbr(d: &mut [u8], parts: &[(u8, u32, u32)]) {
    for (i, &(t, lba, n)) in parts.iter().enumerate() {
        let r = 446 + 16 * i;
        d[r + 4] = t;
        d[r + 8..r + 12].copy_from_slice(&lba.to_le_bytes());
        d[r + 12..r + 16].copy_from_slice(&n.to_le_bytes());
    }
    d[510] = 0x55;
    d[511] = 0xAA;
}

#[test]
fn a_partition_at_sector_63_a_luks_volume_and_no_os_are_reported() {
    let img = mem_disk(4 << 20, |d| {
        mbr(d, &[(0x83, 63, 2000), (0x83, 4096, 2048)]);
        d[4096 * 512..4096 * 512 + 8].copy_from_slice(b"LUKS\xba\xbe\0\x02");
    });
    let r = run_image(&img, OsChoice::Auto).unwrap();
    let find = |c: &str| {
        r.findings
            .iter()
            .find(|f| f.code == c)
            .cloned()
            .unwrap_or_else(|| panic!("{c}: {:#?}", r.findings))
    };
    let a = find("guest.disk.partition_alignment");
    assert_eq!(a.severity, Severity::Warning);
    assert_eq!(a.evidence.as_deref(), Some("partition 1: start sector 63"));
    assert_eq!(
        find("guest.fs.unsupported").evidence.as_deref(),
        Some("volume 2: LUKS (Linux filesystem)")
    );
    assert_eq!(find("guest.os.unknown").severity, Severity::Warning);
    assert!(r.guest_ready, "warnings only");
    // Asked for Linux on it: could not run. Asked for Windows: no Windows volume found.
    assert_eq!(
        run_image(&img, OsChoice::Linux).unwrap_err().code(),
        "guest.os.unknown"
    );
    let w = run_image(&img, OsChoice::Windows).unwrap();
    assert!(
        w.findings
            .iter()
            .any(|f| f.code == "guest.windows.unreadable" && f.severity == Severity::Error),
        "{:?}",
        w.findings
    );
}
