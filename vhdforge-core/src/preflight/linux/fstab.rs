//! `/etc/fstab`: which volume each mount point is (so `/boot` and the ESP are read where
//! the guest mounts them), kernel device names that change on Azure, and swap on the OS
//! disk — in fstab, as a swap partition, or as a swap logical volume.

use crate::finding::Severity;
use crate::guest::fs::FsKind;
use crate::guest::partition::PartitionKind;
use crate::guest::{DiskVolumes, GuestVolume};
use crate::preflight::context::config_lines;
use crate::preflight::{codes, Ctx};

/// Most fstab entries taken (a real one has a handful).
const MAX_ENTRIES: usize = 256;

/// One fstab line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    /// 1-based line number.
    pub line: usize,
    /// The whole line, for evidence.
    pub text: Vec<u8>,
    /// First field: `UUID=…`, `LABEL=…`, `/dev/…`.
    pub spec: Vec<u8>,
    /// Second field, with fstab's octal escapes (`\040`) decoded.
    pub mount_point: Vec<u8>,
    /// Third field.
    pub fs_type: Vec<u8>,
}

/// Parse fstab text (at most [`MAX_ENTRIES`] entries; lines of fewer than 3 fields are
/// skipped, as `mount` does).
pub fn parse(text: &[u8]) -> Vec<FstabEntry> {
    config_lines(text)
        .filter_map(|(n, l)| {
            let mut f = l.split(u8::is_ascii_whitespace).filter(|x| !x.is_empty());
            let spec = f.next()?.to_vec();
            let mount_point = unescape(f.next()?);
            let fs_type = f.next()?.to_vec();
            Some(FstabEntry {
                line: n,
                text: l.to_vec(),
                spec,
                mount_point,
                fs_type,
            })
        })
        .take(MAX_ENTRIES)
        .collect()
}

fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..=i + 3].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (u32::from(s[i + 1] - b'0') << 6)
                | (u32::from(s[i + 2] - b'0') << 3)
                | u32::from(s[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// The volume an fstab spec names, by the rules `mount` and udev apply.
pub fn resolve<'d>(disk: &'d DiskVolumes, spec: &[u8]) -> Option<&'d GuestVolume> {
    let spec = std::str::from_utf8(spec).ok()?;
    let (key, value) = if let Some(v) = spec
        .strip_prefix("UUID=")
        .or_else(|| spec.strip_prefix("/dev/disk/by-uuid/"))
    {
        ("uuid", v)
    } else if let Some(v) = spec
        .strip_prefix("LABEL=")
        .or_else(|| spec.strip_prefix("/dev/disk/by-label/"))
    {
        ("label", v)
    } else if let Some(v) = spec
        .strip_prefix("PARTUUID=")
        .or_else(|| spec.strip_prefix("/dev/disk/by-partuuid/"))
    {
        ("partuuid", v)
    } else if let Some(v) = spec.strip_prefix("/dev/mapper/") {
        ("lv", v)
    } else if let Some(v) = spec.strip_prefix("/dev/") {
        ("vglv", v)
    } else {
        return None;
    };
    let value = value.trim_matches('"');
    let hits: Vec<&GuestVolume> = disk
        .volumes
        .iter()
        .filter(|v| match key {
            "uuid" => v
                .uuid
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(value)),
            "label" => v.label.as_deref() == Some(value),
            "partuuid" => {
                v.lvm.is_none()
                    && v.partition.is_some_and(|n| {
                        disk.table
                            .get(n)
                            .is_some_and(|p| p.partuuid.eq_ignore_ascii_case(value))
                    })
            }
            "lv" => v.lvm.as_deref().is_some_and(|n| mapper_name(n) == value),
            _ => v.lvm.as_deref() == Some(value),
        })
        .collect();
    // Two volumes with one UUID (a cloned disk) cannot be told apart: refuse to guess.
    match hits.as_slice() {
        [one] => Some(one),
        _ => None,
    }
}

/// `vg/lv` as device-mapper names it: each `-` inside a name doubled, `-` between.
fn mapper_name(vg_lv: &str) -> String {
    let (vg, lv) = vg_lv.split_once('/').unwrap_or((vg_lv, ""));
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// Kernel names that depend on probe order: on Azure the OS disk, the resource disk and
/// data disks come up in an order that differs from Hyper-V's.
fn kernel_device_name(spec: &[u8]) -> bool {
    ["/dev/sd", "/dev/hd", "/dev/vd", "/dev/xvd", "/dev/nvme"]
        .iter()
        .any(|p| spec.starts_with(p.as_bytes()))
}

/// fstab device names and fstab swap.
pub fn check(ctx: &mut Ctx<'_>, entries: &[FstabEntry]) {
    const PATH: &[u8] = b"/etc/fstab";
    for e in entries {
        if kernel_device_name(&e.spec) {
            let ev = ctx.at_line(PATH, e.line, &e.text);
            ctx.push(
                Severity::Error,
                codes::FSTAB_DEVICE_NAME,
                format!(
                    "fstab mounts {} by a kernel device name; on Azure disks are named in a different order, so the guest may not boot or may mount the wrong disk",
                    crate::preflight::context::shown(&e.mount_point)
                ),
                ev,
                "in the guest: `blkid` gives the UUID; replace the device with UUID=<uuid> in /etc/fstab",
            );
        }
        if e.fs_type == b"swap" {
            let ev = ctx.at_line(PATH, e.line, &e.text);
            ctx.push(
                Severity::Error,
                codes::SWAP,
                "fstab enables swap on the OS disk; Azure's rules (and certification) forbid swap on the OS disk — the agent or cloud-init puts swap on the resource disk",
                ev,
                "in the guest: remove the swap line from /etc/fstab; set ResourceDisk.EnableSwap=y in /etc/waagent.conf (or cloud-init's mounts) if swap is wanted",
            );
        }
    }
}

/// Swap partitions and swap logical volumes on the disk, whatever fstab says.
pub fn check_swap_volumes(ctx: &mut Ctx<'_>, disk: &DiskVolumes) {
    for v in &disk.volumes {
        let is_swap_partition = v.lvm.is_none()
            && v.partition
                .and_then(|n| disk.table.get(n))
                .is_some_and(|p| p.kind == PartitionKind::LinuxSwap);
        if v.filesystem != FsKind::Swap && !is_swap_partition {
            continue;
        }
        let what = if v.lvm.is_some() {
            "swap logical volume"
        } else {
            "swap partition"
        };
        ctx.push(
            Severity::Error,
            codes::SWAP,
            format!("the OS disk holds a {what}; Azure's rules (and certification) forbid swap on the OS disk"),
            format!("volume {}: {} ({})", v.name, v.type_name, v.filesystem),
            if v.lvm.is_some() {
                format!("in the guest: `swapoff -a`, remove the swap line from /etc/fstab and `rd.lvm.lv={}` from the kernel command line, `lvremove {}`", v.name, v.name)
            } else {
                "in the guest: `swapoff -a`, remove the swap line from /etc/fstab, delete the partition; use ResourceDisk.EnableSwap=y in /etc/waagent.conf for swap on the resource disk".to_string()
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_fields_comments_and_escapes() {
        let t = b"# x\nUUID=ab /  xfs defaults 0 0\n/dev/sda2\t/my\\040dir ext4 ro\nshort line\n";
        let e = parse(t);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].line, 2);
        assert_eq!(e[0].spec, b"UUID=ab");
        assert_eq!(e[1].mount_point, b"/my dir");
        assert_eq!(e[1].line, 3);
        assert!(kernel_device_name(&e[1].spec));
        assert!(!kernel_device_name(&e[0].spec));
    }

    #[test]
    fn mapper_names_double_dashes() {
        assert_eq!(mapper_name("centos/root"), "centos-root");
        assert_eq!(mapper_name("my-vg/lv-1"), "my--vg-lv--1");
    }
}
