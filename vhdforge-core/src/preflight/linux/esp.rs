//! The EFI system partition of a generation-2 image (`docs/preflight-linux.md` "ESP"): a VM
//! made from the image starts with empty firmware boot entries, so its UEFI firmware runs
//! the removable-media loader `\EFI\BOOT\BOOTX64.EFI` (UEFI 2.x §3.5.1.1); that file must
//! exist and be an x86-64 PE image. The loader then needs its GRUB configuration (a full
//! one, or the stub that points at `/boot`) in a vendor directory `\EFI\<vendor>\`.
//!
//! The ESP is read from the partition table, not from fstab: the firmware finds it by its
//! type GUID whatever the guest mounts.

use crate::finding::{Code, Severity};
use crate::guest::fs::{FileSystem, FileType};
use crate::guest::partition::PartitionKind;
use crate::guest::{DiskVolumes, Generation};
use crate::preflight::context::{read_file, shown};
use crate::preflight::pe::machine as pe_machine;
use crate::preflight::Ctx;

/// The ESP cannot start the guest on a new VM.
pub const ESP: Code = Code::new("guest.linux.esp");

const FALLBACK: &[u8] = b"/EFI/BOOT/BOOTX64.EFI";
/// PE machine type of x86-64 (PE/COFF spec, "Machine Types").
const IMAGE_FILE_MACHINE_AMD64: u16 = 0x8664;
/// Bytes read to find the PE header (`e_lfanew` is small in every real loader).
const PE_HEAD_BYTES: usize = 4096;

/// Check the ESP of a generation-2 disk.
pub fn check(ctx: &mut Ctx<'_>, disk: &DiskVolumes) {
    if disk.table.generation != Some(Generation::Gen2) {
        return;
    }
    let Some(part) = disk
        .table
        .partitions
        .iter()
        .find(|p| p.kind == PartitionKind::EfiSystem)
    else {
        return;
    };
    let Some(vol) = disk
        .volumes
        .iter()
        .find(|v| v.partition == Some(part.number) && v.lvm.is_none())
    else {
        return;
    };
    let fs = match vol.open() {
        Ok(f) => f,
        Err(e) => {
            ctx.push(
                Severity::Warning,
                ESP,
                format!("the EFI system partition could not be read ({}: {}), so its boot loader was not checked", e.code(), e.message()),
                format!("volume {} ({})", vol.name, vol.filesystem),
                "in the guest: `fsck.vfat -n` the ESP; a Gen2 VM boots from it",
            );
            return;
        }
    };
    let at = |p: &[u8]| format!("volume {} (EFI system partition): {}", vol.name, shown(p));
    let vendors = vendor_dirs(fs.as_ref());
    let listing = if vendors.is_empty() {
        "\\EFI holds no vendor directory".to_string()
    } else {
        format!("\\EFI holds {}", vendors.join(", "))
    };
    match read_file(fs.as_ref(), FALLBACK, PE_HEAD_BYTES) {
        Ok(Some(head)) => match pe_machine(&head) {
            Ok(IMAGE_FILE_MACHINE_AMD64) => {}
            Ok(m) => ctx.push(
                Severity::Error,
                ESP,
                format!("the ESP's fallback loader is a PE image for machine 0x{m:04x}, not x86-64 (0x8664): an x86-64 Gen2 VM's firmware will not start it"),
                format!("{}: PE machine 0x{m:04x}", at(FALLBACK)),
                "in the guest: reinstall the x86-64 boot loader to the removable path (`grub-install --removable` or the distribution's shim-x64 package)",
            ),
            Err(why) => ctx.push(
                Severity::Error,
                ESP,
                format!("the ESP's fallback loader is not an EFI executable ({why}): a new Gen2 VM's firmware cannot start it"),
                format!("{}: {why}", at(FALLBACK)),
                "in the guest: reinstall the boot loader to the removable path (`grub-install --removable` / reinstall shim-x64)",
            ),
        },
        Ok(None) => ctx.push(
            Severity::Error,
            ESP,
            "the ESP has no \\EFI\\BOOT\\BOOTX64.EFI: a VM made from the image starts with empty firmware boot entries and falls back to that file, so it would not boot",
            format!("{}: absent; {listing}", at(FALLBACK)),
            "in the guest: `grub-install --target=x86_64-efi --removable` (Debian/Ubuntu: `dpkg-reconfigure grub-efi-amd64` and answer yes to the removable path), or reinstall shim-x64 (RHEL family)",
        ),
        Err(e) => ctx.push(
            Severity::Warning,
            ESP,
            format!("the ESP's fallback loader could not be read ({}: {})", e.code(), e.message()),
            at(FALLBACK),
            "in the guest: `fsck.vfat -n` the ESP",
        ),
    }
    let has_config = fs.stat(b"/loader/loader.conf").is_ok()
        || fs.stat(b"/EFI/BOOT/grub.cfg").is_ok()
        || vendors.iter().any(|v| {
            fs.stat(format!("/EFI/{v}/grub.cfg").as_bytes())
                .is_ok_and(|s| s.file_type == FileType::Regular)
        });
    if !has_config {
        ctx.push(
            Severity::Warning,
            ESP,
            "no grub.cfg on the ESP: the distributions' signed GRUB reads its configuration from \\EFI\\<vendor>\\grub.cfg and stops at a grub> prompt without it",
            format!("volume {} (EFI system partition): {listing}, none with a grub.cfg", vol.name),
            "in the guest: reinstall the boot loader (`grub-install` / `dnf reinstall grub2-efi-x64 shim-x64`), then regenerate grub.cfg",
        );
    }
}

/// The vendor directories under `\EFI` (all but `BOOT`), sorted, at most 64.
fn vendor_dirs(fs: &dyn FileSystem) -> Vec<String> {
    let mut out = Vec::new();
    let _ = fs.list(b"/EFI", &mut |e| {
        if e.file_type == FileType::Directory
            && !e.name.eq_ignore_ascii_case(b"BOOT")
            && e.name != b"."
            && e.name != b".."
        {
            out.push(shown(&e.name));
        }
        out.len() < 64
    });
    out.sort();
    out
}
