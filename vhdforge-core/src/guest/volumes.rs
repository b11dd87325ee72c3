//! The volumes of a disk as a user names them: every partition, every linear logical volume
//! of an LVM2 physical volume on it, or the whole disk when it has no partition table — each
//! identified, and the one that holds the operating system's root found.
//!
//! This is the one place that turns "a disk image" into "file systems to read", so `volumes`,
//! `ls`/`cat` and `preflight` agree on numbering (Linux's: `sda<N>`), on how a volume is
//! chosen (`--volume`), and on which volume is the OS root.

use std::sync::Arc;

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::finding::{Finding, Severity};
use crate::guest::fs::{self, FileSystem, FileType, FsKind, Identity, NtfsFs, Volume};
use crate::guest::lvm::{self, VolumeGroup};
use crate::guest::partition::{self, PartitionKind, PartitionTable, Role};
use crate::guest::Window;
use crate::image::DiskImage;

/// A `--volume` matched nothing.
pub const CODE_NO_SUCH_VOLUME: &str = "guest.volume.not_found";
/// A `--volume` (or the default choice) matched several volumes.
pub const CODE_AMBIGUOUS: &str = "guest.volume.ambiguous";
/// The disk holds no file system vhdforge can read.
pub const CODE_NO_FILE_SYSTEM: &str = "guest.volume.none";
/// The volume is encrypted (LUKS, BitLocker): its files cannot be read without the key.
pub const CODE_ENCRYPTED: &str = "guest.volume.encrypted";

/// The operating system family whose root a volume holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OsFamily {
    /// `/etc/os-release` (or an older release file) is present.
    Linux,
    /// `Windows/System32/config` is a directory.
    Windows,
}

/// One volume of the disk.
#[derive(Debug, Clone, Serialize)]
pub struct GuestVolume {
    /// How `--volume` names it: the partition number, `vg/lv`, or `disk` for a disk
    /// without a partition table.
    pub name: String,
    /// The partition number (as Linux numbers it), or for a logical volume the number of
    /// the partition holding its physical volume; `None` for a whole unpartitioned disk.
    pub partition: Option<u32>,
    /// `vg/lv` for a logical volume.
    pub lvm: Option<String>,
    /// Disk offset of its first byte (for a logical volume, of its first segment).
    pub start_bytes: u64,
    /// Length in bytes.
    pub size_bytes: u64,
    /// What the partition table says it is (`Linux filesystem`, `EFI system`, …), or
    /// `LVM logical volume`, or `whole disk`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// What the bytes hold.
    pub filesystem: FsKind,
    /// File-system label, when set.
    pub label: Option<String>,
    /// File-system UUID (or FAT/NTFS serial) as Linux prints it.
    pub uuid: Option<String>,
    /// The OS whose root this volume holds, when it holds one.
    pub os_root: Option<OsFamily>,
    /// The bytes, for opening its file system.
    #[serde(skip)]
    pub volume: Volume,
}

impl GuestVolume {
    /// Open the file system on this volume. An encrypted volume is refused by name, so the
    /// user learns why rather than that no file system was found.
    pub fn open(&self) -> Result<Box<dyn FileSystem>> {
        if let Some(scheme) = self.encryption() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                CODE_ENCRYPTED,
                format!(
                    "volume {} is encrypted with {scheme}; vhdforge reads no encrypted volume. Read the files inside the running guest, or decrypt the disk there (e.g. `manage-bde -off C:` for BitLocker) before exporting it",
                    self.name
                ),
            ));
        }
        fs::open(self.volume.clone())
    }

    /// `Some("LUKS")` or `Some("BitLocker")` when the volume is encrypted (identification
    /// recognises both by their signatures).
    pub fn encryption(&self) -> Option<&'static str> {
        match self.filesystem {
            FsKind::Luks => Some("LUKS"),
            FsKind::BitLocker => Some("BitLocker"),
            _ => None,
        }
    }

    /// True when vhdforge has a reader for what this volume holds (it may still fail to
    /// open a damaged one).
    pub fn has_reader(&self) -> bool {
        readable(self.filesystem)
    }

    fn describe(&self) -> String {
        let mut s = format!("{} ({}", self.name, self.filesystem);
        if let Some(l) = &self.label {
            s += ", label '";
            s += l;
            s += "'";
        }
        match self.os_root {
            Some(OsFamily::Linux) => s += ", Linux root",
            Some(OsFamily::Windows) => s += ", Windows root",
            None => {}
        }
        s.push(')');
        s
    }
}

/// Formats [`fs::open`] reads. Kept next to the identification so `volumes` can say which
/// volumes `ls` can read without opening them twice.
fn readable(kind: FsKind) -> bool {
    matches!(
        kind,
        FsKind::Ext | FsKind::Xfs | FsKind::Ntfs | FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32
    )
}

/// Everything [`scan`] found.
#[derive(Debug, Clone, Serialize)]
pub struct DiskVolumes {
    /// The partition table (scheme `none` for an unpartitioned disk).
    pub table: PartitionTable,
    /// The LVM2 volume groups found on physical volumes of this disk.
    #[serde(skip)]
    pub volume_groups: Vec<VolumeGroup>,
    /// Every volume, in disk order: partitions, each followed by the logical volumes its
    /// physical volume holds.
    pub volumes: Vec<GuestVolume>,
    /// What was odd or damaged (partition table, LVM metadata, a file system that would not
    /// open), as findings with the volume named in the message.
    pub findings: Vec<Finding>,
}

/// Find, identify and classify every volume of `image`. Errors only when the disk cannot be
/// read; damage is reported in [`DiskVolumes::findings`].
pub fn scan(image: &Arc<dyn DiskImage>) -> Result<DiskVolumes> {
    let table = partition::partitions(image.as_ref())?;
    let mut out = DiskVolumes {
        findings: table.findings.clone(),
        table,
        volume_groups: Vec::new(),
        volumes: Vec::new(),
    };
    let whole = Window::whole(image.as_ref());
    if out.table.partitions.is_empty() {
        // Only a disk with no table at all is read as one volume: a GPT whose entries are
        // all damaged is not a file system. A sector 0 with `55 AA` and four empty records
        // is read as an (empty) MBR by the partition layer, as Linux reads it — but it is
        // also exactly what an NTFS or FAT boot sector written on the whole disk looks
        // like (`mkntfs -F` on a file, `mkfs.vfat` on a device), and Linux then finds the
        // file system on the whole disk. So does this.
        if out.table.scheme == partition::Scheme::Mbr {
            let id = fs::identify(&whole)?;
            if id.kind != FsKind::Unknown {
                out.table.scheme = partition::Scheme::None;
                out.table.disk_id = None;
                out.findings.push(Finding::new(
                    Severity::Info,
                    partition::CODE_NONE,
                    Some(0),
                    format!(
                        "sector 0 ends in 55 AA but its four partition records are empty: it is the boot sector of the {} file system on the whole disk, read as volume 'disk' (Linux reads it the same way)",
                        id.kind
                    ),
                ));
            }
        }
        if out.table.scheme == partition::Scheme::None {
            add_volume(
                image,
                &whole,
                None,
                "disk".into(),
                "whole disk".into(),
                &mut out,
            )?;
        }
    } else {
        let parts: Vec<_> = out.table.partitions.clone();
        for p in &parts {
            if p.role == Role::Extended || p.kind == PartitionKind::GptProtective {
                continue;
            }
            let Ok(w) = p.window(image.as_ref()) else {
                // The table layer already reported a partition past the disk's end.
                continue;
            };
            add_volume(
                image,
                &w,
                Some(p.number),
                p.number.to_string(),
                p.kind.name().to_string(),
                &mut out,
            )?;
        }
    }
    for i in 0..out.volumes.len() {
        out.volumes[i].os_root = detect_os(&out.volumes[i], &mut out.findings);
    }
    Ok(out)
}

/// Identify `w` and add it, with the logical volumes it holds when it is a physical volume.
fn add_volume(
    image: &Arc<dyn DiskImage>,
    w: &Window<'_>,
    partition: Option<u32>,
    name: String,
    type_name: String,
    out: &mut DiskVolumes,
) -> Result<()> {
    let id = fs::identify(w)?;
    let volume = Volume::from_window(image, w)?;
    out.volumes.push(entry(
        name,
        partition,
        None,
        w.start(),
        type_name,
        id.clone(),
        volume,
    ));
    if id.kind != FsKind::LvmPv {
        return Ok(());
    }
    let Some(vg) = lvm::read_pv(w)? else {
        return Ok(());
    };
    out.findings.extend(vg.findings.iter().cloned());
    for lv in vg.logical_volumes.iter().filter(|l| l.visible) {
        let full = format!("{}/{}", vg.name, lv.name);
        let lvw = match vg.lv_window(lv, w) {
            Ok(x) => x,
            Err(e) => {
                out.findings.push(Finding::new(
                    Severity::Warning,
                    e.code(),
                    None,
                    format!("logical volume {full} is not read: {}", e.message()),
                ));
                continue;
            }
        };
        let start = lvw.windows().next().map_or(w.start(), |x| x.start());
        let id = fs::identify(&lvw)?;
        let volume = Volume::from_lv(image, &lvw)?;
        out.volumes.push(entry(
            full.clone(),
            partition,
            Some(full),
            start,
            "LVM logical volume".into(),
            id,
            volume,
        ));
    }
    out.volume_groups.push(vg);
    Ok(())
}

fn entry(
    name: String,
    partition: Option<u32>,
    lvm: Option<String>,
    start_bytes: u64,
    type_name: String,
    id: Identity,
    volume: Volume,
) -> GuestVolume {
    use crate::guest::fs::ReadRange;
    // NTFS keeps its label in a file (`$Volume`), not beside its signature: read it so
    // `volumes` shows it and `--volume LABEL` finds it. A volume whose label cannot be read
    // still lists; opening it for `ls` reports the damage.
    let label = if id.kind == FsKind::Ntfs && id.label.is_none() {
        NtfsFs::open(volume.clone())
            .and_then(|fs| fs.label())
            .ok()
            .flatten()
    } else {
        id.label
    };
    GuestVolume {
        name,
        partition,
        lvm,
        start_bytes,
        size_bytes: volume.len(),
        type_name,
        filesystem: id.kind,
        label,
        uuid: id.uuid,
        os_root: None,
        volume,
    }
}

/// Which OS root `v` holds, by the files every install has. A file system that will not
/// open is reported (it is the user's data, and `ls` would fail on it too); an unsupported
/// one is not, since `volumes` already shows what it is.
fn detect_os(v: &GuestVolume, findings: &mut Vec<Finding>) -> Option<OsFamily> {
    if !v.has_reader() {
        return None;
    }
    let fs = match v.open() {
        Ok(f) => f,
        Err(e) => {
            if e.code() != "guest.fs.unsupported" {
                findings.push(Finding::new(
                    Severity::Warning,
                    e.code(),
                    None,
                    format!("volume {}: {}", v.name, e.message()),
                ));
            }
            return None;
        }
    };
    os_of(fs.as_ref())
}

/// The OS whose root `fs` is, if any.
pub fn os_of(fs: &dyn FileSystem) -> Option<OsFamily> {
    let is = |p: &[u8], t: FileType| fs.stat(p).is_ok_and(|s| s.file_type == t);
    if is(b"/Windows/System32/config", FileType::Directory) {
        return Some(OsFamily::Windows);
    }
    // os-release is often a relative symlink into /usr/lib; `stat` follows it inside the
    // volume. Releases older than systemd have only their own release file.
    let linux = [
        &b"/etc/os-release"[..],
        b"/usr/lib/os-release",
        b"/etc/redhat-release",
        b"/etc/debian_version",
    ];
    if linux.iter().any(|p| is(p, FileType::Regular)) {
        return Some(OsFamily::Linux);
    }
    None
}

impl DiskVolumes {
    /// The volume `spec` names — a partition number, `vg/lv`, `disk` (or `0`: the whole
    /// disk has no partition number, and 0 is none Linux gives), or a file-system label or
    /// UUID — or, without `spec`, the OS root (or the only readable file system).
    pub fn choose(&self, spec: Option<&str>) -> Result<&GuestVolume> {
        let Some(mut spec) = spec else {
            return self.default_volume();
        };
        if spec == "0" {
            spec = "disk";
        }
        let by_name: Vec<&GuestVolume> = self.volumes.iter().filter(|v| v.name == spec).collect();
        let hits = if by_name.is_empty() {
            self.volumes
                .iter()
                .filter(|v| {
                    v.label.as_deref() == Some(spec)
                        || v.uuid
                            .as_deref()
                            .is_some_and(|u| u.eq_ignore_ascii_case(spec))
                })
                .collect()
        } else {
            by_name
        };
        match hits.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::new(
                ErrorKind::InvalidInput,
                CODE_NO_SUCH_VOLUME,
                format!(
                    "no volume is named '{spec}'; expected a partition number, vg/lv, a label or a UUID among: {}",
                    self.choices()
                ),
            )),
            many => Err(Error::new(
                ErrorKind::InvalidInput,
                CODE_AMBIGUOUS,
                format!(
                    "'{spec}' names {} volumes ({}); pass the partition number or vg/lv instead",
                    many.len(),
                    many.iter().map(|v| v.describe()).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }

    /// The volumes holding an OS root.
    pub fn os_roots(&self) -> impl Iterator<Item = &GuestVolume> {
        self.volumes.iter().filter(|v| v.os_root.is_some())
    }

    fn default_volume(&self) -> Result<&GuestVolume> {
        let roots: Vec<_> = self.os_roots().collect();
        match roots.as_slice() {
            [one] => return Ok(one),
            [] => {}
            many => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    CODE_AMBIGUOUS,
                    format!(
                        "the disk holds {} operating-system roots ({}); choose one with --volume",
                        many.len(),
                        many.iter()
                            .map(|v| v.describe())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        }
        let readable: Vec<_> = self.volumes.iter().filter(|v| v.has_reader()).collect();
        match readable.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::new(
                ErrorKind::Unsupported,
                CODE_NO_FILE_SYSTEM,
                format!(
                    "no volume holds a file system vhdforge reads (ext2/3/4, XFS, FAT, NTFS); found: {}",
                    self.choices()
                ),
            )),
            many => Err(Error::new(
                ErrorKind::InvalidInput,
                CODE_AMBIGUOUS,
                format!(
                    "no volume holds an OS root and {} hold file systems ({}); choose one with --volume",
                    many.len(),
                    many.iter().map(|v| v.describe()).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }

    fn choices(&self) -> String {
        if self.volumes.is_empty() {
            return "none (the disk has no partition or volume)".into();
        }
        self.volumes
            .iter()
            .map(GuestVolume::describe)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk of `len` bytes with `fill` applied.
    fn disk(len: usize, fill: impl FnOnce(&mut [u8])) -> Arc<dyn DiskImage> {
        let mut d = vec![0u8; len];
        fill(&mut d);
        Arc::from(crate::open_bytes(d).unwrap())
    }

    /// An MBR with the given (type, first LBA, sectors) records.
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

    /// A minimal XFS-like signature with a label, enough for `identify`.
    fn xfs_sig(d: &mut [u8], at: usize, label: &[u8]) {
        d[at..at + 4].copy_from_slice(b"XFSB");
        d[at + 108..at + 108 + label.len()].copy_from_slice(label);
    }

    #[test]
    fn partitions_are_listed_and_chosen_by_number_or_label() {
        let img = disk(4 << 20, |d| {
            mbr(
                d,
                &[(0x83, 2048, 2048), (0x83, 4096, 2048), (0x82, 6144, 1024)],
            );
            xfs_sig(d, 2048 * 512, b"boot");
            xfs_sig(d, 4096 * 512, b"data");
        });
        let v = scan(&img).unwrap();
        let names: Vec<_> = v.volumes.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["1", "2", "3"]);
        assert_eq!(v.volumes[0].start_bytes, 2048 * 512);
        assert_eq!(v.volumes[1].size_bytes, 2048 * 512);
        assert_eq!(v.volumes[0].filesystem, FsKind::Xfs);
        assert_eq!(v.choose(Some("2")).unwrap().name, "2");
        assert_eq!(v.choose(Some("data")).unwrap().name, "2");
        let e = v.choose(Some("9")).unwrap_err();
        assert_eq!(e.code(), CODE_NO_SUCH_VOLUME);
        assert!(e.message().contains("label 'boot'"), "{}", e.message());
        // Two XFS volumes (their fake superblocks will not open), no OS root: ambiguous.
        let e = v.choose(None).unwrap_err();
        assert_eq!(e.code(), CODE_AMBIGUOUS, "{}", e.message());
    }

    #[test]
    fn a_disk_without_a_table_is_one_volume_and_an_empty_one_has_none() {
        let img = disk(1 << 20, |d| xfs_sig(d, 0, b"root"));
        let v = scan(&img).unwrap();
        assert_eq!(v.volumes.len(), 1);
        assert_eq!(v.volumes[0].name, "disk");
        assert_eq!(v.choose(None).unwrap().name, "disk");

        let img = disk(1 << 20, |_| {});
        let v = scan(&img).unwrap();
        assert_eq!(v.volumes[0].filesystem, FsKind::Unknown);
        assert_eq!(v.choose(None).unwrap_err().code(), CODE_NO_FILE_SYSTEM);
    }

    #[test]
    fn encrypted_volumes_are_refused_by_name() {
        // Partition 1: a BitLocker boot sector; partition 2: a LUKS header.
        let img = disk(4 << 20, |d| {
            mbr(d, &[(0x07, 2048, 2048), (0x83, 4096, 2048)]);
            d[2048 * 512 + 3..2048 * 512 + 11].copy_from_slice(b"-FVE-FS-");
            d[4096 * 512..4096 * 512 + 6].copy_from_slice(b"LUKS\xba\xbe");
        });
        let v = scan(&img).unwrap();
        for (name, scheme) in [("1", "BitLocker"), ("2", "LUKS")] {
            let Err(e) = v.choose(Some(name)).unwrap().open() else {
                panic!("volume {name} opened")
            };
            assert_eq!(e.code(), CODE_ENCRYPTED);
            assert!(e.message().contains(scheme), "{}", e.message());
        }
    }

    #[test]
    fn the_same_label_twice_is_ambiguous() {
        let img = disk(4 << 20, |d| {
            mbr(d, &[(0x83, 2048, 2048), (0x83, 4096, 2048)]);
            xfs_sig(d, 2048 * 512, b"same");
            xfs_sig(d, 4096 * 512, b"same");
        });
        let v = scan(&img).unwrap();
        assert_eq!(v.choose(Some("same")).unwrap_err().code(), CODE_AMBIGUOUS);
    }
}
