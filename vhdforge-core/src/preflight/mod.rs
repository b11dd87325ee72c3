//! Offline guest preflight: what a certification run or Azure provisioning would reject,
//! found by reading the guest's files through [`crate::guest`] — no mounting, no root, no VM.
//!
//! A guest check reports [`GuestFinding`]s: a container [`Finding`](crate::Finding) plus
//! where the evidence is (volume, path, line or value) and the command that fixes it inside
//! the guest, because the person reading it has to go and change the guest.
//!
//! [`run`] is the whole command as phases: container findings (the same
//! [`inspect`](crate::inspect) `check` uses) → [`guest::scan`](crate::guest::scan) → disk-level
//! checks ([`disk`]) → the OS dispatch (one place: [`run_image`]) → the Linux checks
//! ([`linux`]). `docs/preflight-linux.md` says what each check relies on.

mod context;
pub mod disk;
pub mod linux;

use std::path::Path;
use std::sync::Arc;

pub mod linux_boot;
pub mod pe;

pub mod windows;

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::finding::{Code, Finding, Severity};
use crate::guest::fs::FsKind;
use crate::guest::{self, DiskVolumes, Generation, OsFamily};
use crate::image::DiskImage;
use crate::OpenOptions;

pub use context::Ctx;

/// Every code the preflight checks emit, so checks and tests name them by constant.
pub mod codes {
    use crate::finding::Code;

    /// Root has a usable password hash.
    pub const ROOT_PASSWORD: Code = Code::new("guest.linux.root_password");
    /// An account with uid ≥ 1000 has a usable password hash.
    pub const USER_PASSWORD: Code = Code::new("guest.linux.user_password");
    /// A non-empty `authorized_keys`.
    pub const AUTHORIZED_KEYS: Code = Code::new("guest.linux.authorized_keys");
    /// A shell history over 1 KiB.
    pub const BASH_HISTORY: Code = Code::new("guest.linux.bash_history");
    /// No Azure Linux Agent.
    pub const AGENT_MISSING: Code = Code::new("guest.linux.agent_missing");
    /// The agent is installed but not enabled at boot.
    pub const AGENT_DISABLED: Code = Code::new("guest.linux.agent_disabled");
    /// The agent is older than 2.2.41 (or its version cannot be read).
    pub const AGENT_VERSION: Code = Code::new("guest.linux.agent_version");
    /// Swap on the OS disk.
    pub const SWAP: Code = Code::new("guest.linux.swap");
    /// Not exactly one Linux root file system.
    pub const ROOT_FS_COUNT: Code = Code::new("guest.linux.root_fs_count");
    /// A kernel device name in fstab.
    pub const FSTAB_DEVICE_NAME: Code = Code::new("guest.linux.fstab_device_name");
    /// An fstab entry names no volume of this disk, or its volume cannot be read.
    pub const FSTAB_UNRESOLVED: Code = Code::new("guest.linux.fstab_unresolved");
    /// udf or vfat blacklisted.
    pub const UDF_DISABLED: Code = Code::new("guest.linux.udf_disabled");
    /// `PermitRootLogin yes`.
    pub const ROOT_SSH_LOGIN: Code = Code::new("guest.linux.root_ssh_login");
    /// SSH host keys left in the image.
    pub const SSH_HOST_KEYS: Code = Code::new("guest.linux.ssh_host_keys");
    /// Agent/cloud-init state, DHCP leases or the agent's log left in the image.
    pub const NOT_DEPROVISIONED: Code = Code::new("guest.linux.not_deprovisioned");
    /// The root file system is on LVM.
    pub const LVM_ROOT: Code = Code::new("guest.linux.lvm_root");
    /// `ClientAliveInterval` outside 30–235.
    pub const CLIENT_ALIVE_INTERVAL: Code = Code::new("guest.linux.client_alive_interval");
    /// No DHCP on the first interface, or a hard-coded MAC.
    pub const NETWORK: Code = Code::new("guest.linux.network");
    /// The distribution release is past its end of life.
    pub const EOL: Code = Code::new("guest.linux.eol");
    /// What the distribution is.
    pub const OS: Code = Code::new("guest.linux.os");
    /// A guest file exists but cannot be read.
    pub const UNREADABLE: Code = Code::new("guest.linux.unreadable");
    /// The first partition starts below 1 MiB.
    pub const PARTITION_ALIGNMENT: Code = Code::new("guest.disk.partition_alignment");
    /// The Hyper-V generation the boot layout implies.
    pub const GENERATION: Code = Code::new("guest.disk.generation");
    /// A volume vhdforge identifies but does not read.
    pub const FS_UNSUPPORTED: Code = Code::new("guest.fs.unsupported");
    /// No operating system root was found.
    pub const OS_UNKNOWN: Code = Code::new("guest.os.unknown");
}

/// One thing a guest check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestFinding {
    /// How bad it is: errors fail certification or provisioning, warnings probably will.
    pub severity: Severity,
    /// Stable code (`guest.linux.*`, `guest.windows.*`, `guest.disk.*`, `guest.fs.*`).
    pub code: Code,
    /// What was found, what was expected.
    pub message: String,
    /// Where: the volume and path inside the guest, and the line or value found.
    pub evidence: Option<String>,
    /// What to run in the guest to fix it.
    pub fix: Option<String>,
}

impl GuestFinding {
    /// A finding with its evidence and fix.
    pub fn new(
        severity: Severity,
        code: impl Into<Code>,
        message: impl Into<String>,
        evidence: Option<String>,
        fix: Option<String>,
    ) -> GuestFinding {
        GuestFinding {
            severity,
            code: code.into(),
            message: message.into(),
            evidence,
            fix,
        }
    }

    /// A container or volume-layer finding in the report's shape: its offset is the
    /// evidence, and it has no in-guest fix.
    fn from_container(f: &Finding) -> GuestFinding {
        let fix = f
            .code
            .as_str()
            .starts_with("azure.")
            .then(|| "outside the guest: `vhdforge convert IMAGE OUT.vhd` writes an Azure-ready fixed VHD".to_string());
        GuestFinding {
            severity: f.severity,
            code: f.code,
            message: f.message.clone(),
            evidence: f.offset.map(|o| format!("at byte {o} of the image")),
            fix,
        }
    }
}

/// Which OS the checks are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OsChoice {
    /// Whatever root the disk holds.
    #[default]
    Auto,
    /// The Linux checks (fails if the disk holds no Linux root).
    Linux,
    /// The Windows checks.
    Windows,
}

/// What the guest is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OsInfo {
    /// `linux`, `windows`, or `null` when no root was found.
    pub family: Option<OsFamily>,
    /// The distribution's name (`PRETTY_NAME` or `NAME` of os-release).
    pub name: Option<String>,
    /// Its version (`VERSION_ID`).
    pub version: Option<String>,
    /// The newest kernel installed (`/lib/modules/<version>`).
    pub kernel: Option<String>,
}

/// One volume in the report.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeReport {
    /// The volume's name: partition number, `vg/lv`, or `disk`.
    pub partition: String,
    /// First byte on the disk.
    pub start_bytes: u64,
    /// Length.
    pub size_bytes: u64,
    /// What the partition table says.
    #[serde(rename = "type")]
    pub type_name: String,
    /// What the bytes hold.
    pub filesystem: FsKind,
    /// File-system label.
    pub label: Option<String>,
    /// File-system UUID.
    pub uuid: Option<String>,
    /// Where the guest's fstab mounts it (`/` for the root, `swap` for swap).
    pub mount_point: Option<String>,
}

/// The whole preflight result, in the JSON shape `preflight --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct PreflightReport {
    /// The image as given.
    pub path: String,
    /// Hyper-V generation the boot layout implies (1 or 2), if it implies one.
    pub generation: Option<u8>,
    /// What the guest is.
    pub os: OsInfo,
    /// Every volume of the disk.
    pub volumes: Vec<VolumeReport>,
    /// Container findings first (as `check`), then the guest's.
    pub findings: Vec<GuestFinding>,
    /// What `az disk create --upload-size-bytes` needs after `vhdforge convert`.
    pub upload_size_bytes: Option<u64>,
    /// The container is an Azure-ready fixed VHD as it stands.
    pub azure_ready: bool,
    /// No guest finding is an error.
    pub guest_ready: bool,
    /// What the Windows checks read (product, build, control set, hives, BCD), for a
    /// Windows guest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<windows::WindowsFacts>,
}

impl PreflightReport {
    /// True when any finding (container or guest) is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Preflight the image at `path`: container findings as `check` computes them, then the
/// guest's. Errors only when the image cannot be read at all, or `os` asks for checks that
/// cannot run (Linux on a disk without a Linux root).
pub fn run(path: &Path, opts: &OpenOptions, os: OsChoice) -> Result<PreflightReport> {
    let inspection = crate::inspect_quick(path, opts)?;
    if !inspection.readable {
        let why = inspection
            .findings
            .iter()
            .find(|f| f.severity == Severity::Error)
            .map_or_else(String::new, |f| format!(" ({}: {})", f.code, f.message));
        return Err(Error::new(
            ErrorKind::Corrupt,
            "guest.os.unreadable_image",
            format!("the image cannot be read, so its guest cannot be inspected{why}; `vhdforge check` says more"),
        )
        .in_file(path));
    }
    let image: Arc<dyn DiskImage> = Arc::from(crate::open(path, opts)?);
    let mut report = run_image(&image, os)?;
    report.path = path.display().to_string();
    let container: Vec<GuestFinding> = inspection
        .findings
        .iter()
        .map(GuestFinding::from_container)
        .collect();
    report.findings.splice(0..0, container);
    report.azure_ready = inspection.azure_ready;
    report.upload_size_bytes = inspection
        .info
        .as_ref()
        .filter(|i| i.virtual_size > 0)
        .and_then(|i| crate::azure::round_up_mib(i.virtual_size))
        .and_then(|s| s.checked_add(512));
    Ok(report)
}

/// The guest part of [`run`] on an open image (no container findings, empty `path`).
pub fn run_image(image: &Arc<dyn DiskImage>, os: OsChoice) -> Result<PreflightReport> {
    let disk = guest::scan(image)?;
    let mut findings: Vec<GuestFinding> = disk
        .findings
        .iter()
        .map(GuestFinding::from_container)
        .collect();
    disk::check(&disk, &mut findings);
    let mut report = PreflightReport {
        path: String::new(),
        generation: disk.table.generation.map(|g| match g {
            Generation::Gen1 => 1,
            Generation::Gen2 => 2,
        }),
        os: OsInfo::default(),
        volumes: volume_reports(&disk),
        findings: Vec::new(),
        upload_size_bytes: None,
        azure_ready: false,
        guest_ready: false,
        windows: None,
    };
    // The one OS dispatch: the Windows checks plug in here next to the Linux ones.
    let found = found_family(&disk);
    match (os, found) {
        (OsChoice::Windows, _) | (OsChoice::Auto, Some(OsFamily::Windows)) => {
            let facts = windows::check_windows(&disk, &mut findings);
            let os = facts.os.clone().unwrap_or_default();
            report.os = OsInfo {
                family: Some(OsFamily::Windows),
                name: os.release.clone().or(os.product_name.clone()),
                version: os.display_version.clone().or_else(|| {
                    os.build
                        .map(|b| os.ubr.map_or(b.to_string(), |u| format!("{b}.{u}")))
                }),
                kernel: os.build.map(|b| format!("NT build {b}")),
            };
            report.windows = Some(facts);
        }
        (OsChoice::Linux, Some(OsFamily::Windows) | None) => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                codes::OS_UNKNOWN,
                format!(
                    "--os linux was given but no volume holds a Linux root (no /etc/os-release, /usr/lib/os-release, /etc/redhat-release or /etc/debian_version); volumes: {}",
                    describe_volumes(&disk)
                ),
            ));
        }
        (_, Some(OsFamily::Linux)) => {
            linux::check(&disk, &mut report, &mut findings);
        }
        (OsChoice::Auto, None) => {
            findings.push(GuestFinding::new(
                Severity::Warning,
                codes::OS_UNKNOWN,
                "no volume holds an operating-system root, so only the disk layout was checked",
                Some(format!("volumes: {}", describe_volumes(&disk))),
                Some("check that this is the OS disk; a Linux root has /etc/os-release".into()),
            ));
        }
    }
    report.guest_ready = !findings.iter().any(|f| f.severity == Severity::Error);
    report.findings = findings;
    Ok(report)
}

/// The family of the disk's OS roots: Linux wins if any root is Linux (a Windows root
/// beside it is unusual and is reported by the root count).
fn found_family(disk: &DiskVolumes) -> Option<OsFamily> {
    let mut roots = disk.os_roots().filter_map(|v| v.os_root);
    let first = roots.next()?;
    if first == OsFamily::Linux || roots.any(|f| f == OsFamily::Linux) {
        Some(OsFamily::Linux)
    } else {
        Some(first)
    }
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

fn volume_reports(disk: &DiskVolumes) -> Vec<VolumeReport> {
    disk.volumes
        .iter()
        .map(|v| VolumeReport {
            partition: v.name.clone(),
            start_bytes: v.start_bytes,
            size_bytes: v.size_bytes,
            type_name: v.type_name.clone(),
            filesystem: v.filesystem,
            label: v.label.clone(),
            uuid: v.uuid.clone(),
            mount_point: None,
        })
        .collect()
}
