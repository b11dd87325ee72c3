//! The planner: from one VM's inventory to what `prep` would do, or why it cannot.
//!
//! Pure: no file, no clock, no Hyper-V. Everything it knows comes from the inventory, so a plan
//! made on a laptop from an inventory taken on the host is the plan the host would make.
//! docs/hyperv.md lists the rules and codes.

#![forbid(unsafe_code)]

pub mod model;

use model::{ChainElement, ControllerType, Disk, DiskKind, Vm, VmState};
use serde::Serialize;
use vhdforge_core::azure::{
    round_up_mib, GIB, MARKETPLACE_OS_MAX, MARKETPLACE_OS_MIN, MAX_VIRTUAL_SIZE, MIN_VIRTUAL_SIZE,
    OS_DISK_SOFT_LIMIT,
};

/// The VHD footer Azure expects after the data (docs/formats.md §1.1).
const FOOTER_BYTES: u64 = 512;

/// Every blocker and warning the planner reports. The string form ([`Code::as_str`]) is the
/// stable public one (JSON, README); code decides on the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// No disk where the VM's generation boots from.
    NoOsDisk,
    /// The VM is running (a blocker unless `--shutdown`).
    VmRunning,
    /// The VM is saved: its disk holds a half-run system.
    VmSaved,
    /// The VM is paused.
    VmPaused,
    /// The VM is between states.
    VmBusy,
    /// The OS disk's chain has a file that could not be opened, or links that do not match.
    ChainBroken,
    /// The VM has checkpoints (a warning: the output holds the current state).
    Checkpoints,
    /// 4096-byte logical sectors: a VHD has 512-byte sectors only.
    SectorSize,
    /// The OS disk is larger than its generation (or Azure) allows.
    OsDiskTooLarge,
    /// The OS disk is smaller than Azure's 20 MiB minimum.
    OsDiskTooSmall,
    /// The OS disk is outside the Marketplace OS-disk range (a warning).
    OsDiskSize,
    /// A generation other than 1 or 2.
    Generation,
    /// Gen2 without Secure Boot (a warning).
    SecureBootOff,
    /// Gen2 with the Windows-only Secure Boot template on a Linux guest (a warning).
    SecureBootTemplate,
}

impl Code {
    /// The stable code, as in JSON and the README.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::NoOsDisk => "hyperv.no_os_disk",
            Code::VmRunning => "hyperv.vm_running",
            Code::VmSaved => "hyperv.vm_saved",
            Code::VmPaused => "hyperv.vm_paused",
            Code::VmBusy => "hyperv.vm_busy",
            Code::ChainBroken => "hyperv.chain_broken",
            Code::Checkpoints => "hyperv.checkpoints",
            Code::SectorSize => "hyperv.sector_size",
            Code::OsDiskTooLarge => "hyperv.os_disk_too_large",
            Code::OsDiskTooSmall => "hyperv.os_disk_too_small",
            Code::OsDiskSize => "hyperv.os_disk_size",
            Code::Generation => "hyperv.generation",
            Code::SecureBootOff => "hyperv.secure_boot",
            Code::SecureBootTemplate => "hyperv.secure_boot_template",
        }
    }

    /// Blockers `--force` may override. Only the sector size: the conversion can present
    /// 512-byte sectors (as `convert --allow-4k-sectors` does) and the guest may cope. A saved,
    /// paused or busy VM, a broken chain or an oversize disk would give a wrong image.
    pub fn forceable(self) -> bool {
        matches!(self, Code::SectorSize)
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A blocker or a warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// What it is.
    pub code: Code,
    /// What was found, what is expected, what to do.
    pub message: String,
}

/// What the planner may assume about the run.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// `--shutdown`: a running VM is shut down gracefully first.
    pub shutdown: bool,
    /// How long to wait for the guest to shut down, in seconds.
    pub shutdown_timeout_secs: u64,
    /// `--force`: forceable blockers ([`Code::forceable`]) become warnings.
    pub force: bool,
    /// Where prep writes the fixed VHD (for the steps and commands), if known.
    pub output: Option<String>,
    /// `--upload DEST` (already redacted), if given.
    pub upload: Option<String>,
}

/// The disk the VM boots from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OsDisk {
    /// "IDE 0:0", "SCSI 0:0".
    pub slot: String,
    /// The controller type.
    pub controller_type: ControllerType,
    /// The controller number.
    pub controller_number: u32,
    /// The location on it.
    pub controller_location: u32,
    /// The files, leaf first, base last (what prep reads).
    pub chain: Vec<String>,
    /// The leaf's virtual size, when known.
    pub virtual_size: Option<u64>,
}

/// One thing prep does, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Ask the guest to shut down (never a power-off) and wait for Off.
    Shutdown {
        /// How long to wait.
        timeout_secs: u64,
    },
    /// Open the OS disk's chain read-only from the leaf.
    ReadChain {
        /// The current leaf.
        leaf: String,
        /// How many files the chain has.
        files: usize,
    },
    /// Write the fixed VHD.
    Convert {
        /// Where.
        output: String,
        /// Its virtual size (the upload size minus the footer).
        virtual_size: u64,
    },
    /// Stream the fixed VHD to Azure.
    Upload {
        /// The destination, secrets redacted.
        destination: String,
    },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Shutdown { timeout_secs } => write!(
                f,
                "shut the guest down gracefully (Msvm_ShutdownComponent, never a power-off) and wait up to {timeout_secs} s for Off"
            ),
            Step::ReadChain { leaf, files } => write!(
                f,
                "open the OS disk read-only from the current leaf {leaf} through {files} file(s); nothing the VM owns is written"
            ),
            Step::Convert { output, virtual_size } => write!(
                f,
                "write {output}: an Azure-ready fixed VHD of {virtual_size} bytes + 512-byte footer"
            ),
            Step::Upload { destination } => {
                write!(f, "stream the fixed VHD to {destination} (zero pages skipped)")
            }
        }
    }
}

/// Which Azure route a command belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// `az disk create --upload-type Upload`, then upload to the disk's SAS.
    ManagedDisk,
    /// Upload to a page blob, then create the disk from it.
    PageBlob,
}

/// One command to run after prep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FollowUp {
    /// Its route.
    pub route: Route,
    /// The command line (bash quoting; `<...>` are yours to fill in).
    pub command: String,
}

/// What prep would do for one VM, or why it cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The VM's name.
    pub vm: String,
    /// 1 or 2.
    pub generation: u8,
    /// True iff `blockers` is empty.
    pub ready: bool,
    /// The disk it boots from.
    pub os_disk: Option<OsDisk>,
    /// What stops prep.
    pub blockers: Vec<Issue>,
    /// What prep does anyway, but you should know.
    pub warnings: Vec<Issue>,
    /// What prep does, in order.
    pub steps: Vec<Step>,
    /// `az disk create --upload-size-bytes`: the leaf's virtual size rounded up to a MiB + 512.
    pub upload_size_bytes: Option<u64>,
    /// The commands that follow prep.
    pub commands: Vec<FollowUp>,
}

/// The upload size for a virtual size: rounded up to a whole MiB, plus the footer; `None` when
/// that does not fit in 64 bits (no real disk, only a hostile inventory).
pub fn upload_size(virtual_size: u64) -> Option<u64> {
    round_up_mib(virtual_size)?.checked_add(FOOTER_BYTES)
}

/// The disk a VM of `generation` boots from: Gen1 from IDE 0:0; Gen2 from SCSI 0:0, or the
/// lowest SCSI slot when 0:0 is empty. The first listed wins a slot listed twice.
pub fn os_disk(generation: u8, disks: &[Disk]) -> Option<&Disk> {
    match generation {
        1 => disks.iter().find(|d| {
            d.controller_type == ControllerType::Ide
                && d.controller_number == 0
                && d.controller_location == 0
        }),
        _ => disks
            .iter()
            .filter(|d| d.controller_type == ControllerType::Scsi)
            // min_by_key keeps the first of equal keys.
            .min_by_key(|d| (d.controller_number, d.controller_location)),
    }
}

/// Plan prep for `vm`.
pub fn plan(vm: &Vm, opts: &PlanOptions) -> Plan {
    let mut blockers = Vec::new();
    let mut warnings = Vec::new();
    let mut add = |code: Code, message: String| {
        blockers.push(Issue { code, message });
    };
    if !matches!(vm.generation, 1 | 2) {
        add(
            Code::Generation,
            format!(
                "generation {} is not a Hyper-V generation (expected 1 or 2); fix the inventory",
                vm.generation
            ),
        );
    }
    state_rules(vm, opts, &mut add);
    let disk = os_disk(vm.generation, &vm.disks);
    if disk.is_none() {
        add(Code::NoOsDisk, no_os_disk_message(vm));
    }
    // A running VM's files are held open by Hyper-V, so they may not be readable until the
    // shutdown prep is told to do; prep plans again, Off, before it reads anything.
    let after_shutdown = vm.state == VmState::Running && opts.shutdown;
    let mut unreadable = Vec::new();
    let leaf_size = disk.and_then(|d| {
        chain_rules(d, &mut |code, message| {
            if after_shutdown && code == Code::ChainBroken {
                unreadable.push(Issue {
                    code,
                    message: format!(
                        "{message} (read again after the shutdown; prep stops if it still fails)"
                    ),
                });
            } else {
                add(code, message);
            }
        })
    });
    if let Some(size) = leaf_size {
        size_rules(vm.generation, size, &mut add, &mut warnings);
    }
    warnings.extend(unreadable);
    if !vm.checkpoints.is_empty() {
        let names: Vec<&str> = vm.checkpoints.iter().map(|c| c.name.as_str()).collect();
        warnings.push(Issue {
            code: Code::Checkpoints,
            message: format!(
                "the VM has {} checkpoint(s) ({}); prep reads through them and the output holds the VM's current state, not a checkpoint's",
                names.len(),
                names.join(", ")
            ),
        });
    }
    secure_boot_rules(vm, &mut warnings);
    if opts.force {
        let (forced, kept): (Vec<Issue>, Vec<Issue>) =
            blockers.into_iter().partition(|b| b.code.forceable());
        blockers = kept;
        warnings.extend(forced.into_iter().map(|mut b| {
            b.message.push_str(" (overridden by --force)");
            b
        }));
    }
    let upload_size_bytes = leaf_size.and_then(upload_size);
    let os = disk.map(|d| OsDisk {
        slot: d.slot(),
        controller_type: d.controller_type,
        controller_number: d.controller_number,
        controller_location: d.controller_location,
        chain: d.chain.iter().map(|e| e.path.clone()).collect(),
        virtual_size: d.chain.first().and_then(|e| e.size),
    });
    let steps = steps(vm, opts, os.as_ref(), upload_size_bytes);
    let commands = upload_size_bytes
        .map(|n| commands(vm, opts, n))
        .unwrap_or_default();
    Plan {
        vm: vm.name.clone(),
        generation: vm.generation,
        ready: blockers.is_empty(),
        os_disk: os,
        blockers,
        warnings,
        steps,
        upload_size_bytes,
        commands,
    }
}

fn state_rules(vm: &Vm, opts: &PlanOptions, add: &mut impl FnMut(Code, String)) {
    let name = &vm.name;
    match vm.state {
        VmState::Off => {}
        VmState::Running if opts.shutdown => {}
        VmState::Running => add(
            Code::VmRunning,
            format!("{name} is Running: its disk is in use and changing; pass --shutdown to shut the guest down gracefully first, or shut it down yourself and plan again"),
        ),
        VmState::Saved => add(
            Code::VmSaved,
            format!("{name} is Saved: its disk holds a half-run system (memory state is not on the disk); start it, shut it down cleanly from the guest, and plan again"),
        ),
        VmState::Paused => add(
            Code::VmPaused,
            format!("{name} is Paused: resume it, shut it down cleanly from the guest, and plan again"),
        ),
        s @ (VmState::Starting
        | VmState::Stopping
        | VmState::Saving
        | VmState::Pausing
        | VmState::Resuming
        | VmState::Other) => add(
            Code::VmBusy,
            format!("{name} is {s}: wait until it is Off (or Running, with --shutdown) and plan again"),
        ),
    }
}

fn no_os_disk_message(vm: &Vm) -> String {
    let slots: Vec<String> = vm.disks.iter().map(Disk::slot).collect();
    let boots = match vm.generation {
        1 => "Gen1 VMs boot from IDE 0:0",
        _ => "Gen2 VMs boot from the SCSI controller",
    };
    format!(
        "{}: no OS disk: {boots}, and the VM's disks are at {}; attach the OS disk there or fix the inventory",
        vm.name,
        if slots.is_empty() { "none".to_string() } else { slots.join(", ") }
    )
}

/// Same file on a Windows host: case-insensitive, `\` and `/` alike.
fn same_path(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.replace('/', "\\").to_lowercase();
    norm(a) == norm(b)
}

/// The chain checks; returns the leaf's virtual size when the chain is sound enough to size.
fn chain_rules(disk: &Disk, add: &mut impl FnMut(Code, String)) -> Option<u64> {
    let slot = disk.slot();
    let chain = &disk.chain;
    let Some(leaf) = chain.first() else {
        add(
            Code::ChainBroken,
            format!("the OS disk at {slot} lists no files; take the inventory again"),
        );
        return None;
    };
    let mut sound = true;
    for (i, e) in chain.iter().enumerate() {
        if let Some(err) = &e.error {
            add(Code::ChainBroken, format!("{}: cannot be opened: {err}; a moved or missing parent breaks the chain: put it back where the child names it (or reconnect it in Hyper-V Manager's Edit Disk)", e.path));
            sound = false;
            continue;
        }
        if e.size.is_none() {
            add(
                Code::ChainBroken,
                format!("{}: the inventory gives neither its size nor an error; take the inventory again", e.path),
            );
            sound = false;
        }
        sound &= link_rules(&slot, chain, i, e, add);
        if let Some(s) = e.logical_sector_size.filter(|&s| s != 512) {
            add(Code::SectorSize, format!("{}: logical sector size {s} bytes; a VHD has 512-byte sectors only, so Azure cannot boot this disk as it is; recreate the disk with 512-byte logical sectors (or pass --force to present 512-byte sectors anyway)", e.path));
        }
    }
    if sound {
        leaf.size
    } else {
        None
    }
}

/// Element `i` must name element `i + 1` as its parent, and only the last may be a base.
fn link_rules(
    slot: &str,
    chain: &[ChainElement],
    i: usize,
    e: &ChainElement,
    add: &mut impl FnMut(Code, String),
) -> bool {
    let next = chain.get(i + 1);
    match (e.kind, &e.parent_path, next) {
        (Some(DiskKind::Differencing), Some(parent), Some(n)) if same_path(parent, &n.path) => true,
        (Some(DiskKind::Differencing), Some(parent), Some(n)) => {
            add(Code::ChainBroken, format!("{}: names parent {parent}, but the inventory's next file in the chain of {slot} is {}; take the inventory again", e.path, n.path));
            false
        }
        (Some(DiskKind::Differencing), parent, None) => {
            add(Code::ChainBroken, format!("{}: a differencing disk whose parent {} is missing from the chain of {slot}; put the parent back where the child names it", e.path, parent.as_deref().unwrap_or("(unnamed)")));
            false
        }
        (Some(DiskKind::Differencing), None, Some(_)) => {
            add(
                Code::ChainBroken,
                format!("{}: a differencing disk that names no parent", e.path),
            );
            false
        }
        (_, _, Some(n)) => {
            add(Code::ChainBroken, format!("{}: not a differencing disk, yet the chain of {slot} continues with {}; take the inventory again", e.path, n.path));
            false
        }
        (_, _, None) => true,
    }
}

fn size_rules(
    generation: u8,
    size: u64,
    add: &mut impl FnMut(Code, String),
    warnings: &mut Vec<Issue>,
) {
    let gib = |n: u64| n / GIB;
    let aligned = round_up_mib(size).unwrap_or(u64::MAX);
    if aligned > MAX_VIRTUAL_SIZE {
        add(Code::OsDiskTooLarge, format!("the OS disk's virtual size is {size} bytes (~{} GiB), above Azure's maximum of 32 767 GiB; shrink the disk in the guest and with Resize-VHD first", gib(size)));
        return;
    }
    if aligned < MIN_VIRTUAL_SIZE {
        add(Code::OsDiskTooSmall, format!("the OS disk's virtual size is {size} bytes, below Azure's minimum of 20 MiB; no OS fits there: is the inventory's OS disk the right one?"));
        return;
    }
    if generation == 1 && aligned > OS_DISK_SOFT_LIMIT {
        add(Code::OsDiskTooLarge, format!("the OS disk's virtual size is {size} bytes (~{} GiB), above the 2040 GiB a Gen1 VM can boot from; shrink the partitions in the guest and the disk with Resize-VHD below 2040 GiB", gib(size)));
        return;
    }
    if !(MARKETPLACE_OS_MIN..=MARKETPLACE_OS_MAX).contains(&aligned) {
        warnings.push(Issue {
            code: Code::OsDiskSize,
            message: format!("the OS disk is {aligned} bytes (~{} GiB) after MiB alignment, outside the Marketplace OS-disk range of 30–1023 GiB (Windows: 30–250 GiB); fine for a private image, not for a Marketplace offer", gib(aligned)),
        });
    }
}

fn secure_boot_rules(vm: &Vm, warnings: &mut Vec<Issue>) {
    if vm.generation != 2 {
        return;
    }
    if vm.secure_boot == Some(false) {
        warnings.push(Issue {
            code: Code::SecureBootOff,
            message: format!("{} is Gen2 without Secure Boot: Azure's Trusted Launch boots with Secure Boot on; check the guest boots that way, or deploy it with the Standard security type", vm.name),
        });
    }
    let linux = vm
        .guest_os
        .as_deref()
        .is_some_and(|o| o.eq_ignore_ascii_case("linux"));
    let windows_template = vm
        .secure_boot_template
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("MicrosoftWindows"));
    if vm.secure_boot != Some(false) && linux && windows_template {
        warnings.push(Issue {
            code: Code::SecureBootTemplate,
            message: format!("{} is a Linux guest with the Windows-only Secure Boot template (MicrosoftWindows): it cannot have booted with Secure Boot as configured; Azure uses the UEFI CA, so check the guest's shim and bootloader are signed", vm.name),
        });
    }
}

fn steps(vm: &Vm, opts: &PlanOptions, os: Option<&OsDisk>, upload: Option<u64>) -> Vec<Step> {
    let mut steps = Vec::new();
    if vm.state == VmState::Running && opts.shutdown {
        steps.push(Step::Shutdown {
            timeout_secs: opts.shutdown_timeout_secs,
        });
    }
    let (Some(os), Some(upload)) = (os, upload) else {
        return steps;
    };
    steps.push(Step::ReadChain {
        leaf: os.chain.first().cloned().unwrap_or_default(),
        files: os.chain.len(),
    });
    match &opts.upload {
        Some(dest) => steps.push(Step::Upload {
            destination: dest.clone(),
        }),
        None => steps.push(Step::Convert {
            output: output_name(vm, opts),
            virtual_size: upload - FOOTER_BYTES,
        }),
    }
    steps
}

fn output_name(vm: &Vm, opts: &PlanOptions) -> String {
    opts.output
        .clone()
        .unwrap_or_else(|| format!("{}.vhd", azure_name(&vm.name)))
}

/// A managed-disk / blob name from a VM name: Azure allows letters, digits, `_`, `.`, `-`.
fn azure_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(70)
        .collect();
    let s = s.trim_matches(|c| c == '.' || c == '-').to_string();
    if s.is_empty() {
        "vm".to_string()
    } else {
        s
    }
}

/// `s` quoted for bash when it needs it.
fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn commands(vm: &Vm, opts: &PlanOptions, upload: u64) -> Vec<FollowUp> {
    let disk = format!("{}-os", azure_name(&vm.name));
    let vhd = sh_quote(&output_name(vm, opts));
    let hv = if vm.generation == 1 { "V1" } else { "V2" };
    let os_type = match vm.guest_os.as_deref() {
        Some(o) if o.eq_ignore_ascii_case("linux") => "Linux",
        Some(o) if o.eq_ignore_ascii_case("windows") => "Windows",
        _ => "<Linux|Windows>",
    };
    let blob = format!(
        "https://<account>.blob.core.windows.net/vhds/{}.vhd",
        azure_name(&vm.name)
    );
    let md = |c: String| FollowUp {
        route: Route::ManagedDisk,
        command: c,
    };
    let pb = |c: String| FollowUp {
        route: Route::PageBlob,
        command: c,
    };
    vec![
        md(format!("az disk create --resource-group <resource-group> --name {disk} --location <region> --os-type {os_type} --hyper-v-generation {hv} --upload-type Upload --upload-size-bytes {upload} --sku Standard_LRS")),
        md(format!("az disk grant-access --resource-group <resource-group> --name {disk} --access-level Write --duration-in-seconds 86400 --query accessSas --output tsv")),
        md(format!("vhdforge upload {vhd} '<the accessSas printed by grant-access>'")),
        md(format!("az disk revoke-access --resource-group <resource-group> --name {disk}")),
        pb(format!("vhdforge upload {vhd} '{blob}?<SAS with write permission>'")),
        pb(format!("az disk create --resource-group <resource-group> --name {disk} --location <region> --os-type {os_type} --hyper-v-generation {hv} --source {blob}")),
    ]
}

#[cfg(test)]
mod tests;
