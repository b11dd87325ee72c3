//! Disk-level checks, before any file is read: where the first partition starts, which
//! Hyper-V generation the boot layout implies, and volumes vhdforge cannot look into.

use crate::finding::Severity;
use crate::guest::fs::FsKind;
use crate::guest::partition::{PartitionKind, Role};
use crate::guest::{DiskVolumes, Generation};
use crate::preflight::{codes, GuestFinding};

const MIB: u64 = 1 << 20;

/// Run the disk-level checks.
pub fn check(disk: &DiskVolumes, out: &mut Vec<GuestFinding>) {
    alignment(disk, out);
    generation(disk, out);
    unsupported(disk, out);
}

/// Azure's Linux image rules keep the first MiB free (partitions aligned to 1 MiB, room for
/// GRUB's core image on MBR disks); tools from before ~2010 started at sector 63.
fn alignment(disk: &DiskVolumes, out: &mut Vec<GuestFinding>) {
    let first = disk
        .table
        .partitions
        .iter()
        .filter(|p| p.kind != PartitionKind::GptProtective)
        .min_by_key(|p| p.start_bytes);
    if let Some(p) = first.filter(|p| p.start_bytes < MIB) {
        out.push(GuestFinding::new(
            Severity::Warning,
            codes::PARTITION_ALIGNMENT,
            format!(
                "the first partition starts at byte {} (sector {}), below 1 MiB; Azure's Linux image rules expect the first 1 MiB free and partitions aligned to 1 MiB",
                p.start_bytes,
                p.start_bytes / 512
            ),
            Some(format!("partition {}: start sector {}", p.number, p.start_bytes / 512)),
            Some("re-create the disk layout with a current partitioner (fdisk/parted default to sector 2048) and copy the file systems over".into()),
        ));
    }
}

fn generation(disk: &DiskVolumes, out: &mut Vec<GuestFinding>) {
    let esp = disk
        .table
        .partitions
        .iter()
        .find(|p| p.kind == PartitionKind::EfiSystem);
    let active = disk
        .table
        .partitions
        .iter()
        .find(|p| p.active && p.role == Role::Primary);
    let (message, evidence, fix) = match disk.table.generation {
        Some(Generation::Gen2) => (
            "UEFI boot layout: create the Azure image as Hyper-V generation 2",
            esp.map(|p| format!("partition {}: EFI system partition", p.number)),
            "az disk create ... --hyper-v-generation V2",
        ),
        Some(Generation::Gen1) => (
            "BIOS boot layout: create the Azure image as Hyper-V generation 1",
            active.map_or_else(
                || Some(format!("{:?} partition table", disk.table.scheme).to_lowercase()),
                |p| Some(format!("partition {}: active (boot flag)", p.number)),
            ),
            "az disk create ... --hyper-v-generation V1",
        ),
        None => return,
    };
    out.push(GuestFinding::new(
        Severity::Info,
        codes::GENERATION,
        message,
        evidence,
        Some(fix.into()),
    ));
}

/// Volumes that may hold guest files vhdforge cannot read: their files are not checked.
fn unsupported(disk: &DiskVolumes, out: &mut Vec<GuestFinding>) {
    for v in &disk.volumes {
        if !matches!(
            v.filesystem,
            FsKind::Luks | FsKind::Btrfs | FsKind::Exfat | FsKind::Ambiguous
        ) {
            continue;
        }
        out.push(GuestFinding::new(
            Severity::Warning,
            codes::FS_UNSUPPORTED,
            format!(
                "volume {} holds {}, which vhdforge does not read: files on it are not checked (an encrypted root also cannot be provisioned by Azure)",
                v.name, v.filesystem
            ),
            Some(format!("volume {}: {} ({})", v.name, v.filesystem, v.type_name)),
            Some("check that volume's files by hand, or keep the OS on ext4 or XFS".into()),
        ));
    }
}
