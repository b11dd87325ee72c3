//! The Linux checks: find the root, read its fstab, mount `/boot`, the ESP and the rest on
//! a [`GuestTree`] as the guest would, then run each check family (one file each).
//! The boot loader and initramfs checks (`console`, `earlyprintk`, `hv_drivers`) live in
//! `linux_boot.rs` and are called from [`check`].

pub mod accounts;
pub mod agent;
pub mod esp;
pub mod fstab;
pub mod network;
pub mod os;
pub mod platform;
pub mod provisioning;
pub mod ssh;

use crate::finding::Severity;
use crate::guest::fs::FsKind;
use crate::guest::{DiskVolumes, GuestTree, GuestVolume, OsFamily};
use crate::preflight::context::{read_file, shown, MAX_FILE_BYTES};
use crate::preflight::{codes, Ctx, GuestFinding, PreflightReport};

/// Run every Linux check on `disk`; fills `report.os` and the volumes' mount points.
pub fn check(disk: &DiskVolumes, report: &mut PreflightReport, out: &mut Vec<GuestFinding>) {
    let roots: Vec<&GuestVolume> = disk
        .os_roots()
        .filter(|v| v.os_root == Some(OsFamily::Linux))
        .collect();
    let Some(root) = roots.first() else {
        return;
    };
    if roots.len() > 1 {
        out.push(GuestFinding::new(
            Severity::Error,
            codes::ROOT_FS_COUNT,
            format!(
                "the disk holds {} Linux root file systems; certification expects exactly one (checking the first, volume {})",
                roots.len(),
                root.name
            ),
            Some(
                roots
                    .iter()
                    .map(|v| format!("volume {} ({}) has /etc/os-release", v.name, v.filesystem))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Some("keep one OS root on the disk: move other systems' file systems to data disks".into()),
        ));
    }
    let root_fs = match root.open() {
        Ok(f) => f,
        Err(e) => {
            out.push(GuestFinding::new(
                Severity::Warning,
                codes::UNREADABLE,
                format!(
                    "the Linux root could not be opened ({}: {}); its files were not checked",
                    e.code(),
                    e.message()
                ),
                Some(format!("volume {}", root.name)),
                None,
            ));
            return;
        }
    };
    // fstab is read from the root alone: it says what the rest of the tree is.
    let (entries, fstab_error) = match read_file(root_fs.as_ref(), b"/etc/fstab", MAX_FILE_BYTES) {
        Ok(Some(t)) => (fstab::parse(&t), None),
        Ok(None) => (Vec::new(), None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let (tree, mounts, unresolved) = mount_tree(disk, root, root_fs, &entries, report);
    let mut ctx = Ctx::new(&tree, mounts);
    if let Some(e) = fstab_error {
        ctx.findings.push(GuestFinding::new(
            Severity::Warning,
            codes::UNREADABLE,
            format!(
                "/etc/fstab could not be read ({}: {}); only the root was checked",
                e.code(),
                e.message()
            ),
            Some(format!("volume {}: /etc/fstab", root.name)),
            None,
        ));
    }
    for (e, why) in unresolved {
        let ev = ctx.at_line(b"/etc/fstab", e.line, &e.text);
        ctx.push(
            Severity::Warning,
            codes::FSTAB_UNRESOLVED,
            format!("fstab mounts {} but {why}; files under it were not checked (and the guest may not boot)", shown(&e.mount_point)),
            ev,
            "in the guest: `blkid` lists the volumes; name them in /etc/fstab by UUID=",
        );
    }
    run_checks(&mut ctx, disk, root, &entries, report);
    out.append(&mut ctx.findings);
}

/// An fstab entry that could not be mounted, and why.
type Unresolved<'e> = (&'e fstab::FstabEntry, String);

/// (mount point, volume name) of each mounted file system.
type MountList = Vec<(Vec<u8>, String)>;

/// The root with every fstab file system of this disk mounted where the guest mounts it;
/// the (mount point, volume) list for evidence; and the entries that could not be mounted.
fn mount_tree<'e>(
    disk: &DiskVolumes,
    root: &GuestVolume,
    root_fs: Box<dyn crate::guest::fs::FileSystem>,
    entries: &'e [fstab::FstabEntry],
    report: &mut PreflightReport,
) -> (GuestTree, MountList, Vec<Unresolved<'e>>) {
    let mut tree = GuestTree::new(root_fs);
    let mut mounts = vec![(b"/".to_vec(), root.name.clone())];
    let mut unresolved = Vec::new();
    set_mount_point(report, &root.name, "/");
    for e in entries {
        if e.fs_type == b"swap" {
            if let Some(v) = fstab::resolve(disk, &e.spec) {
                set_mount_point(report, &v.name, "swap");
            }
            continue;
        }
        if e.mount_point == b"/" || e.mount_point.first() != Some(&b'/') {
            continue;
        }
        let Some(v) = fstab::resolve(disk, &e.spec) else {
            // Network and memory file systems are not on this disk by design.
            if !matches!(
                e.fs_type.as_slice(),
                b"nfs"
                    | b"nfs4"
                    | b"cifs"
                    | b"tmpfs"
                    | b"proc"
                    | b"sysfs"
                    | b"devpts"
                    | b"none"
                    | b"auto"
            ) {
                unresolved.push((e, "it names no volume of this disk".to_string()));
            }
            continue;
        };
        if v.name == root.name {
            continue;
        }
        set_mount_point(report, &v.name, &String::from_utf8_lossy(&e.mount_point));
        match v.open() {
            Ok(fs) => {
                tree.mount(&e.mount_point, fs);
                mounts.push((e.mount_point.clone(), v.name.clone()));
            }
            // An unreadable ESP is reported by the ESP check (`esp.rs`), which reads it from
            // the partition table whatever fstab says.
            Err(_) if matches!(v.filesystem, FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32) => {}
            Err(err) => unresolved.push((
                e,
                format!(
                    "volume {} cannot be read ({}: {})",
                    v.name,
                    err.code(),
                    err.message()
                ),
            )),
        }
    }
    (tree, mounts, unresolved)
}

/// The check families, in the order the report lists them.
fn run_checks(
    ctx: &mut Ctx<'_>,
    disk: &DiskVolumes,
    root: &GuestVolume,
    entries: &[fstab::FstabEntry],
    report: &mut PreflightReport,
) {
    let (info, id) = os::check(ctx);
    let version = info.version.clone();
    report.os = info;
    if root.lvm.is_some() {
        ctx.push(
            Severity::Warning,
            codes::LVM_ROOT,
            format!("the root file system is on LVM (logical volume {}); Azure's CentOS guidance says to avoid LVM on the OS disk (RHEL allows it), and a cloned image's volume group name collides with a data disk made from the same image", root.name),
            format!("volume {}: {} mounted at /", root.name, root.filesystem),
            "nothing to run: prefer a plain partition for / when building the image; otherwise keep the VG name unique",
        );
    }
    fstab::check(ctx, entries);
    fstab::check_swap_volumes(ctx, disk);
    accounts::check(ctx);
    ssh::check(ctx);
    agent::check(ctx, id.as_deref());
    provisioning::check(ctx);
    network::check(ctx, id.as_deref(), version.as_deref());
    platform::check(ctx);
    esp::check(ctx, disk);
    crate::preflight::linux_boot::check_boot(ctx.tree, &mut ctx.findings);
}

fn set_mount_point(report: &mut PreflightReport, volume: &str, at: &str) {
    if let Some(v) = report.volumes.iter_mut().find(|v| v.partition == volume) {
        v.mount_point = Some(at.to_string());
    }
}
