//! `vhdforge preflight`: the container findings `check` reports plus what is inside the
//! guest that certification or Azure provisioning would reject, each with its evidence and
//! the fix to run in the guest.

use crate::ui::{bytes, Ui};
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;
use vhdforge_core::preflight::{self, GuestFinding, OsChoice, PreflightReport};
use vhdforge_core::{OpenOptions, Severity};

/// Which OS checks to run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum OsArg {
    /// The OS whose root the disk holds.
    #[default]
    Auto,
    /// The Linux checks.
    Linux,
    /// The Windows checks (not yet implemented).
    Windows,
}

/// Look inside an image, offline, for what fails Marketplace certification or Azure provisioning.
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Look inside an image, offline and read-only, for what fails Marketplace \
certification or Azure provisioning: the container findings of `check`, then the guest's \
partitions, volumes (LVM included) and files — accounts and passwords, SSH keys and sshd \
settings, shell histories, the Azure Linux Agent, fstab, swap, network configuration, \
modprobe blacklists, the distribution and its end of life.

Works on raw, VHD, VHDX and differencing chains; nothing is mounted and no root is needed. \
Every finding has a stable code (see the README), the evidence (volume, path, line) and the \
fix to run in the guest.

Exit 0: no error finding. Exit 1: at least one error (container or guest). Exit 2: the \
image or its guest could not be read."
)]
pub struct PreflightArgs {
    /// The image: raw, VHD (fixed/dynamic/differencing) or VHDX.
    pub file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Which OS checks to run.
    #[arg(long, value_enum, default_value_t = OsArg::Auto)]
    pub os: OsArg,
    /// Do not open parent disks of differencing images.
    #[arg(long)]
    pub no_parents: bool,
}

/// `vhdforge preflight`.
pub fn run(a: &PreflightArgs, ui: &Ui) -> Result<ExitCode> {
    let opts = OpenOptions {
        follow_parents: !a.no_parents,
        ..OpenOptions::default()
    };
    let os = match a.os {
        OsArg::Auto => OsChoice::Auto,
        OsArg::Linux => OsChoice::Linux,
        OsArg::Windows => OsChoice::Windows,
    };
    let mut report = preflight::run(&a.file, &opts, os)?;
    // A SAS URL given where a path belongs must not show its signature.
    report.path = vhdforge_core::storage::redact_text(&report.path);
    if a.json {
        ui.print_json(&serde_json::to_value(&report)?)?;
    } else {
        ui.print(&human(&report))?;
    }
    Ok(if report.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn human(r: &PreflightReport) -> String {
    let mut s = format!("{}\n", r.path);
    let gen = r
        .generation
        .map_or("unknown".to_string(), |g| g.to_string());
    s += &format!("  generation      {gen}\n");
    // The OS name (os-release's PRETTY_NAME) and kernel are the guest's text too.
    if let Some(name) = &r.os.name {
        let name = crate::guest_cmd::escape(name.as_bytes());
        s += &format!("  os              {name}\n");
    }
    if let Some(k) = &r.os.kernel {
        let k = crate::guest_cmd::escape(k.as_bytes());
        s += &format!("  kernel          {k}\n");
    }
    if let Some(n) = r.upload_size_bytes {
        s += &format!("  upload size     {}\n", bytes(n));
    }
    s += "volumes:\n";
    for v in &r.volumes {
        s += &format!(
            "  {:<12} {:<22} {:<9} {}{}{}\n",
            v.partition,
            v.type_name,
            v.filesystem.to_string(),
            bytes(v.size_bytes),
            // Label and mount point are the guest's text: escaped as names are.
            v.label
                .as_deref()
                .map(|l| format!(", label {}", crate::guest_cmd::escape(l.as_bytes())))
                .unwrap_or_default(),
            v.mount_point
                .as_deref()
                .map(|m| format!(", mounted at {}", crate::guest_cmd::escape(m.as_bytes())))
                .unwrap_or_default(),
        );
    }
    for (sev, title) in [
        (Severity::Error, "errors"),
        (Severity::Warning, "warnings"),
        (Severity::Info, "info"),
    ] {
        let group: Vec<&GuestFinding> = r.findings.iter().filter(|f| f.severity == sev).collect();
        if group.is_empty() {
            continue;
        }
        s += &format!("{title}:\n");
        for f in group {
            s += &format!("  {} {}: {}\n", f.severity, f.code, f.message);
            if let Some(e) = &f.evidence {
                s += &format!("      evidence: {e}\n");
            }
            if let Some(x) = &f.fix {
                s += &format!("      fix:      {x}\n");
            }
        }
    }
    let errors = r
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = r
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    let container = if r.azure_ready {
        "the container is Azure-ready"
    } else {
        "the container needs `vhdforge convert` before upload"
    };
    if errors == 0 {
        s += &format!("OK: no errors ({warnings} warning(s)); {container}.\n");
    } else {
        let guest = if r.guest_ready {
            "the guest passed"
        } else {
            "fix the guest errors above inside the guest, then export the disk again"
        };
        s += &format!("FAILED: {errors} error(s), {warnings} warning(s); {guest}; {container}.\n");
    }
    s
}
