//! The Windows half of the offline preflight: what Azure provisioning or Marketplace
//! certification would reject in a Windows guest, read from its NTFS volume, its registry
//! hives, its BCD store and `State.ini` (`docs/preflight-windows.md`).
//!
//! [`check_windows`] finds the OS volume (the one holding `Windows/System32/config`), the
//! boot store (`EFI/Microsoft/Boot/BCD` on the ESP of a Gen2 disk, `Boot/BCD` on the active
//! NTFS partition of a Gen1 disk), reads SOFTWARE and SYSTEM one after the other — each with
//! its `.LOG1`/`.LOG2` replayed in memory when dirty — copying out only the keys the checks
//! need ([`snapshot`]), then decides every check in [`checks`]. Codes, services and roles are
//! tabulated in [`tables`]; firewall rule strings are parsed in [`firewall`].

mod checks;
pub mod firewall;
mod snapshot;
pub mod tables;

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::finding::Severity;
use crate::guest::fs::{self, FileSystem, FsKind};
use crate::guest::partition::{Generation, PartitionKind};
use crate::guest::registry::{bcd, Hive, Replay, MAX_HIVE_BYTES, MAX_LOG_BYTES};
use crate::guest::{DiskVolumes, GuestVolume, OsFamily};
use crate::preflight::GuestFinding;
use snapshot::HiveView;
pub use tables::codes;

/// Where the hives live on the OS volume.
const SYSTEM_HIVE: &str = "/Windows/System32/config/SYSTEM";
const SOFTWARE_HIVE: &str = "/Windows/System32/config/SOFTWARE";
const STATE_INI: &str = "/Windows/Setup/State/State.ini";
const PENDING_XML: &str = "/Windows/WinSxS/pending.xml";
const KERNEL: &str = "/Windows/System32/ntoskrnl.exe";
/// The boot store of a Gen2 disk (on the ESP) and of a Gen1 disk (on the system partition).
const BCD_UEFI: &str = "/EFI/Microsoft/Boot/BCD";
const BCD_BIOS: &str = "/Boot/BCD";
/// `State.ini` is a few hundred bytes; anything over this is not one.
const MAX_STATE_INI_BYTES: usize = 64 << 10;
/// A BCD store is tens of KiB.
const MAX_BCD_BYTES: usize = 16 << 20;

/// What the Windows checks learned about the guest, for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WindowsFacts {
    /// Product, build and architecture, from SOFTWARE, SYSTEM and the kernel image.
    pub os: Option<WindowsOs>,
    /// The VM generation the partition table implies.
    pub generation: Option<Generation>,
    /// The volume (as `--volume` names it) holding `Windows/System32/config`: the first
    /// such volume in disk order.
    pub os_volume: Option<String>,
    /// Further volumes that also hold a Windows installation (not checked; a disk meant for
    /// Azure holds one).
    pub other_windows_volumes: Vec<String>,
    /// Where the BCD store was read: `<volume>:<path>`.
    pub bcd: Option<String>,
    /// The control set `Select\Current` names (`ControlSet001`).
    pub control_set: Option<String>,
    /// `ImageState` from `State.ini` (or, without it, from SOFTWARE).
    pub image_state: Option<String>,
    /// Each hive read and whether it was dirty.
    pub hives: Vec<HiveFacts>,
}

/// The Windows installation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WindowsOs {
    /// `ProductName` as stored (Windows 11 still says "Windows 10" here).
    pub product_name: Option<String>,
    /// The release the build number stands for (`Windows Server 2022`).
    pub release: Option<String>,
    /// `CurrentBuild`.
    pub build: Option<u32>,
    /// `UBR`, the update revision.
    pub ubr: Option<u32>,
    /// `EditionID` (`ServerDatacenter`).
    pub edition: Option<String>,
    /// `InstallationType` (`Server`, `Server Core`, `Client`).
    pub installation_type: Option<String>,
    /// `DisplayVersion` (`21H2`), when set.
    pub display_version: Option<String>,
    /// `AMD64`, `x86`, `ARM64`…: from the kernel image's PE header, else
    /// `PROCESSOR_ARCHITECTURE`.
    pub arch: Option<String>,
}

/// One hive read.
#[derive(Debug, Clone, Serialize)]
pub struct HiveFacts {
    /// `<volume>:<path>`.
    pub path: String,
    /// The primary file was not closed cleanly.
    pub dirty: bool,
    /// Log entries applied in memory.
    pub log_entries_replayed: u32,
}

/// Everything read from the guest, owned, for [`checks::run`].
struct Inputs {
    system: HiveView,
    software: HiveView,
    /// `State.ini`: its path, and `ImageState` with its 1-based line.
    state_ini: Option<(String, Option<(usize, String)>)>,
    pending_xml: bool,
    /// PE `Machine` of `ntoskrnl.exe`, when it has a readable PE header.
    kernel_machine: Option<u16>,
    /// The boot settings and where they were read, or why they were not.
    boot: std::result::Result<(String, bcd::BootSettings), String>,
    generation: Option<Generation>,
}

/// Check the Windows guest on `disk`, appending findings to `out`.
pub fn check_windows(disk: &DiskVolumes, out: &mut Vec<GuestFinding>) -> WindowsFacts {
    let mut facts = WindowsFacts {
        generation: disk.table.generation,
        ..WindowsFacts::default()
    };
    // The generation finding is the runner's disk check, shared with Linux.
    let encrypted = bitlocker(disk, out);
    let roots: Vec<&GuestVolume> = disk
        .os_roots()
        .filter(|v| v.os_root == Some(OsFamily::Windows))
        .collect();
    let Some(os_volume) = roots.first() else {
        if !encrypted {
            out.push(GuestFinding::new(
                Severity::Error,
                codes::UNREADABLE,
                "no volume holds Windows (a readable NTFS volume with Windows/System32/config); the Windows checks were not run",
                Some(format!("volumes: {}", describe_volumes(disk))),
                Some("check that this is the OS disk, and that its Windows volume is not encrypted or damaged (`chkdsk C: /f` in the guest)".into()),
            ));
        }
        return facts;
    };
    facts.os_volume = Some(os_volume.name.clone());
    facts.other_windows_volumes = roots[1..].iter().map(|v| v.name.clone()).collect();
    let fs = match os_volume.open() {
        Ok(f) => f,
        Err(e) => {
            unreadable(out, &format!("volume {}", os_volume.name), &e);
            return facts;
        }
    };
    let on = |path: &str| format!("{}:{path}", os_volume.name);

    // One hive in memory at a time: SOFTWARE, copied out and dropped, then SYSTEM.
    let software = load_hive(
        fs.as_ref(),
        SOFTWARE_HIVE,
        &on(SOFTWARE_HIVE),
        out,
        &mut facts,
    )
    .map_or(Ok(HiveView::empty("SOFTWARE")), |h| {
        HiveView::capture(&h, "SOFTWARE", &tables::software_keys())
    });
    let system = load_hive(fs.as_ref(), SYSTEM_HIVE, &on(SYSTEM_HIVE), out, &mut facts)
        .map_or(Ok(HiveView::empty("SYSTEM")), |h| {
            HiveView::capture(&h, "SYSTEM", &tables::system_keys())
        });
    let (software, system) = match (software, system) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            unreadable(out, &on(SYSTEM_HIVE), &e);
            return facts;
        }
    };
    for what in software.unreadable.iter().chain(&system.unreadable) {
        out.push(GuestFinding::new(
            Severity::Error,
            codes::UNREADABLE,
            "a registry key the checks need is damaged; checks that depend on it may report it as absent",
            Some(what.clone()),
            Some("repair the registry in the guest (`sfc /scannow`, `DISM /Online /Cleanup-Image /RestoreHealth`) or rebuild the image".into()),
        ));
    }
    facts.control_set.clone_from(&system.control_set);

    let state_ini = match read_file(fs.as_ref(), STATE_INI, MAX_STATE_INI_BYTES) {
        Ok(Some(bytes)) => Some((on(STATE_INI), checks::image_state_from_ini(&bytes))),
        Ok(None) => None,
        Err(e) => {
            unreadable(out, &on(STATE_INI), &e);
            None
        }
    };
    let pending_xml = fs.stat(PENDING_XML.as_bytes()).is_ok();
    let kernel_machine =
        read_head(fs.as_ref(), KERNEL).and_then(|b| crate::preflight::pe::machine(&b).ok());
    let boot = boot_settings(disk, os_volume, fs.as_ref(), out, &mut facts);
    let inputs = Inputs {
        system,
        software,
        state_ini,
        pending_xml,
        kernel_machine,
        boot,
        generation: disk.table.generation,
    };
    checks::run(&inputs, out, &mut facts);
    facts
}

/// Every volume of the disk encrypted with `BitLocker` is an error: certification rejects
/// it on the OS disk, and Sysprep needs it decrypted. True when there was one.
fn bitlocker(disk: &DiskVolumes, out: &mut Vec<GuestFinding>) -> bool {
    let mut found = false;
    let no_windows = !disk
        .volumes
        .iter()
        .any(|v| v.os_root == Some(OsFamily::Windows));
    for v in disk
        .volumes
        .iter()
        .filter(|v| v.filesystem == FsKind::BitLocker)
    {
        found = true;
        let what = if no_windows {
            "the Windows volume is encrypted with BitLocker (no readable volume holds Windows); Azure certification rejects BitLocker on the OS disk and Sysprep needs it decrypted"
        } else {
            "a volume of the OS disk is encrypted with BitLocker; Azure certification rejects BitLocker on the OS disk"
        };
        out.push(GuestFinding::new(
            Severity::Error,
            codes::BITLOCKER,
            what,
            Some(format!(
                "volume {} ({}, {} bytes at disk offset {}): boot sector OEM id `-FVE-FS-`",
                v.name, v.type_name, v.size_bytes, v.start_bytes
            )),
            Some("in the guest: `manage-bde -off C:` (and every other encrypted drive), wait until `manage-bde -status` says Fully Decrypted, then Sysprep and convert again".into()),
        ));
    }
    found
}

fn describe_volumes(disk: &DiskVolumes) -> String {
    if disk.volumes.is_empty() {
        return "none".into();
    }
    disk.volumes
        .iter()
        .map(|v| format!("{} ({})", v.name, v.filesystem))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unreadable(out: &mut Vec<GuestFinding>, what: &str, e: &Error) {
    out.push(GuestFinding::new(
        Severity::Error,
        codes::UNREADABLE,
        format!("{what} could not be read, so the checks that need it were not run: {}", e.message()),
        Some(what.to_string()),
        Some("repair the file system or registry in the guest (`chkdsk C: /f`, `sfc /scannow`), shut it down cleanly and convert again".into()),
    ));
}

/// The whole file at `path`, `None` when it does not exist; over `cap` bytes is an error.
fn read_file(fs: &dyn FileSystem, path: &str, cap: usize) -> Result<Option<Vec<u8>>> {
    let mut f = match fs.open(path.as_bytes()) {
        Ok(f) => f,
        Err(e) if fs::is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = f.size();
    if size > cap as u64 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            codes::UNREADABLE,
            format!("{path} has {size} bytes, more than the {cap} vhdforge reads for it"),
        ));
    }
    let mut buf = vec![0u8; usize::try_from(size).unwrap_or(cap)];
    let mut done = 0;
    while done < buf.len() {
        let n = f.read(&mut buf[done..])?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(Some(buf))
}

/// The first 4 KiB of a file (a PE header), when it can be read.
fn read_head(fs: &dyn FileSystem, path: &str) -> Option<Vec<u8>> {
    let mut f = fs.open(path.as_bytes()).ok()?;
    let mut buf = vec![0u8; 4096];
    let mut done = 0;
    while done < buf.len() {
        let n = f.read(&mut buf[done..]).ok()?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Some(buf)
}

/// Open the hive at `path` with its logs; report a missing, damaged or dirty hive.
fn load_hive(
    fs: &dyn FileSystem,
    path: &str,
    shown: &str,
    out: &mut Vec<GuestFinding>,
    facts: &mut WindowsFacts,
) -> Option<Hive> {
    let primary = match read_file(fs, path, MAX_HIVE_BYTES) {
        Ok(Some(p)) => p,
        Ok(None) => {
            out.push(GuestFinding::new(
                Severity::Error,
                codes::UNREADABLE,
                format!("the registry hive {shown} is missing, so the checks that read it were not run"),
                Some(format!("{shown}: not found")),
                Some("this volume holds an incomplete Windows installation; check that it is the right disk".into()),
            ));
            return None;
        }
        Err(e) => {
            unreadable(out, shown, &e);
            return None;
        }
    };
    // A log that cannot be read is left out: the hive is then read as its primary file has
    // it, and a dirty one is reported as not replayed.
    let logs: Vec<Vec<u8>> = [".LOG1", ".LOG2"]
        .iter()
        .filter_map(|ext| {
            read_file(fs, &format!("{path}{ext}"), MAX_LOG_BYTES)
                .ok()
                .flatten()
        })
        .collect();
    let refs: Vec<&[u8]> = logs.iter().map(Vec::as_slice).collect();
    let hive = match Hive::from_vec(primary, &refs) {
        Ok(h) => h,
        Err(e) => {
            unreadable(out, shown, &e);
            return None;
        }
    };
    drop(logs);
    let replayed = match hive.dirty().map(|d| &d.replay) {
        Some(Replay::Replayed { entries, .. }) => *entries,
        _ => 0,
    };
    facts.hives.push(HiveFacts {
        path: shown.to_string(),
        dirty: hive.dirty().is_some(),
        log_entries_replayed: replayed,
    });
    if let Some(d) = hive.dirty() {
        checks::hive_dirty(shown, d, out);
    }
    Some(hive)
}

/// Find and read the BCD store: the ESP's on a Gen2 disk, the active (then any) NTFS
/// partition's on a Gen1 disk.
fn boot_settings(
    disk: &DiskVolumes,
    os_volume: &GuestVolume,
    os_fs: &dyn FileSystem,
    out: &mut Vec<GuestFinding>,
    facts: &mut WindowsFacts,
) -> std::result::Result<(String, bcd::BootSettings), String> {
    let kind_of = |v: &GuestVolume| {
        v.partition
            .and_then(|n| disk.table.get(n))
            .map(|p| (p.kind, p.active))
    };
    let (path, mut candidates): (&str, Vec<&GuestVolume>) =
        if disk.table.generation == Some(Generation::Gen2) {
            (
                BCD_UEFI,
                disk.volumes
                    .iter()
                    .filter(|v| kind_of(v).is_some_and(|(k, _)| k == PartitionKind::EfiSystem))
                    .collect(),
            )
        } else {
            (
                BCD_BIOS,
                disk.volumes
                    .iter()
                    .filter(|v| v.filesystem == FsKind::Ntfs)
                    .collect(),
            )
        };
    // The active partition first: it is the one BIOS boot code starts from.
    candidates.sort_by_key(|v| !kind_of(v).is_some_and(|(_, active)| active));
    let mut why_not = Vec::new();
    for v in candidates {
        let opened;
        let fs: &dyn FileSystem = if v.name == os_volume.name {
            os_fs
        } else {
            match v.open() {
                Ok(f) => {
                    opened = f;
                    opened.as_ref()
                }
                Err(e) => {
                    why_not.push(format!(
                        "volume {} ({}) could not be read: {}",
                        v.name,
                        v.filesystem,
                        e.message()
                    ));
                    continue;
                }
            }
        };
        let shown = format!("{}:{path}", v.name);
        let bytes = match read_file(fs, path, MAX_BCD_BYTES) {
            Ok(Some(b)) => b,
            Ok(None) => {
                why_not.push(format!("volume {} has no {path}", v.name));
                continue;
            }
            Err(e) => {
                why_not.push(format!("{shown}: {}", e.message()));
                continue;
            }
        };
        let logs: Vec<Vec<u8>> = [".LOG1", ".LOG2"]
            .iter()
            .filter_map(|ext| {
                read_file(fs, &format!("{path}{ext}"), MAX_LOG_BYTES)
                    .ok()
                    .flatten()
            })
            .collect();
        let refs: Vec<&[u8]> = logs.iter().map(Vec::as_slice).collect();
        let settings = Hive::from_vec(bytes, &refs).and_then(|h| {
            if let Some(d) = h.dirty() {
                checks::hive_dirty(&shown, d, out);
            }
            bcd::Bcd::new(&h)?.boot_settings()
        });
        match settings {
            Ok(s) => {
                facts.bcd = Some(shown.clone());
                return Ok((shown, s));
            }
            Err(e) => why_not.push(format!("{shown}: {}", e.message())),
        }
    }
    if why_not.is_empty() {
        why_not.push(if disk.table.generation == Some(Generation::Gen2) {
            "the disk has no EFI system partition".into()
        } else {
            "the disk has no NTFS volume".into()
        });
    }
    Err(why_not.join("; "))
}
