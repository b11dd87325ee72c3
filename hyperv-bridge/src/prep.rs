//! `prep`, phase by phase: take the inventory and plan → refuse blockers → shut down
//! gracefully if asked (then inventory and plan again, now Off) → open the OS disk's chain
//! read-only with vhdforge-core from the current leaf → the guest preflight on that chain
//! (its errors stop prep unless `--force`). Delivery (convert, or upload) is the
//! caller's next phase on the [`Prepared`] image, so each phase stays small and data flows
//! forward.
//!
//! Nothing here writes to a file the VM owns: vhdforge-core opens images read-only, and the
//! only Hyper-V request is the guest's own shutdown.

use crate::host::{shutdown_and_wait, HostError, HyperVHost, ShutdownWait};
use crate::plan::model::VmState;
use crate::plan::{plan, Plan, PlanOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vhdforge_core::convert::{convert_to_file, ConvertOptions, ConvertReport, Policy};
use vhdforge_core::finding::Severity;
use vhdforge_core::preflight::{run_image, OsChoice, PreflightReport};
use vhdforge_core::progress::Progress;
use vhdforge_core::{open, DiskImage, OpenOptions};

/// What `prep` was asked to do.
#[derive(Debug, Clone)]
pub struct PrepRequest {
    /// The VM's name.
    pub vm: String,
    /// `--shutdown`, and how long to wait.
    pub shutdown: Option<ShutdownWait>,
    /// `--force`: forceable blockers become warnings; OUT may be replaced.
    pub force: bool,
    /// Where the fixed VHD goes (for the plan's steps).
    pub output: Option<String>,
    /// `--upload DEST`, already redacted (for the plan's steps).
    pub upload: Option<String>,
}

/// Why prep stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrepError {
    /// The host failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The plan has blockers (the plan says which).
    #[error("{} cannot be prepared: {}", .0.vm, .0.blockers.iter().map(|b| format!("{} ({})", b.message, b.code)).collect::<Vec<_>>().join("; "))]
    Blocked(Box<Plan>),
    /// vhdforge-core could not open or convert the chain.
    #[error(transparent)]
    Core(#[from] vhdforge_core::Error),
    /// The chain vhdforge-core opened is not the one Hyper-V described.
    #[error("the OS disk's chain as opened from {leaf} has {opened} file(s) of virtual size {opened_size} bytes, but Hyper-V lists {listed} file(s) of {listed_size} bytes; a parent was found somewhere else than Hyper-V records; check the disk in Hyper-V Manager (Inspect Disk)")]
    ChainMismatch {
        /// The leaf.
        leaf: String,
        /// Files opened.
        opened: usize,
        /// Files listed.
        listed: usize,
        /// Virtual size opened.
        opened_size: u64,
        /// Virtual size listed.
        listed_size: u64,
    },
    /// The guest preflight found errors (the report says which); `--force` goes on anyway.
    #[error("the guest preflight of the OS disk found {}: {}; fix them in the guest (shut it down cleanly afterwards), or pass --force to prepare it anyway", errors(.0).len().to_string() + " error(s)", errors(.0).join("; "))]
    Preflight(Box<PreflightReport>),
}

/// `code: message` of each error finding, for the one-line error.
fn errors(r: &PreflightReport) -> Vec<String> {
    r.findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| format!("{} ({})", f.message, f.code))
        .collect()
}

impl PrepError {
    /// The stable code (README, `--json`).
    pub fn code(&self) -> String {
        match self {
            PrepError::Host(e) => e.code().to_string(),
            PrepError::Blocked(_) => "hyperv.blocked".to_string(),
            PrepError::Core(e) => e.code().to_string(),
            PrepError::ChainMismatch { .. } => "hyperv.chain_mismatch".to_string(),
            PrepError::Preflight(_) => "hyperv.preflight".to_string(),
        }
    }
}

/// A VM ready to deliver: its plan and its OS disk's chain, open read-only.
pub struct Prepared {
    /// The plan prep follows (ready).
    pub plan: Plan,
    /// The current leaf.
    pub leaf: PathBuf,
    /// The whole chain, opened from the leaf.
    pub image: Arc<dyn DiskImage>,
    /// Whether prep shut the VM down.
    pub shut_down: bool,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("plan", &self.plan)
            .field("leaf", &self.leaf)
            .field("shut_down", &self.shut_down)
            .finish_non_exhaustive()
    }
}

fn options(req: &PrepRequest, shutdown: bool) -> PlanOptions {
    PlanOptions {
        shutdown,
        shutdown_timeout_secs: req.shutdown.map_or(0, |w| w.timeout.as_secs()),
        force: req.force,
        output: req.output.clone(),
        upload: req.upload.clone(),
    }
}

/// Plan, refusing blockers; with the state the plan was made for.
fn planned(
    host: &dyn HyperVHost,
    req: &PrepRequest,
    shutdown: bool,
) -> Result<(Plan, VmState), PrepError> {
    let vm = host.inventory(&req.vm)?;
    let p = plan(&vm, &options(req, shutdown));
    if p.ready {
        Ok((p, vm.state))
    } else {
        Err(PrepError::Blocked(Box::new(p)))
    }
}

/// Phases 1–3: plan, refuse blockers, shut down if asked, open the chain read-only.
pub fn prepare(host: &dyn HyperVHost, req: &PrepRequest) -> Result<Prepared, PrepError> {
    let (mut p, state) = planned(host, req, req.shutdown.is_some())?;
    let mut shut_down = false;
    // A ready plan means Off, or Running with a shutdown asked for.
    if let (Some(wait), VmState::Running) = (req.shutdown, state) {
        shutdown_and_wait(host, &req.vm, wait)?;
        shut_down = true;
        // Everything again from the VM as it is now: Off, and its chain as Hyper-V left it.
        p = planned(host, req, false)?.0;
    }
    let os = p.os_disk.as_ref().ok_or_else(|| {
        // A ready plan always has an OS disk; say so plainly if that ever breaks.
        HostError::Other("the plan is ready but names no OS disk".into())
    })?;
    let leaf = PathBuf::from(os.chain.first().cloned().unwrap_or_default());
    let image: Arc<dyn DiskImage> = Arc::from(open(&leaf, &OpenOptions::default())?);
    check_same_chain(&leaf, image.as_ref(), os.chain.len(), os.virtual_size)?;
    Ok(Prepared {
        plan: p,
        leaf,
        image,
        shut_down,
    })
}

/// Phase 3b: the guest preflight (`vhdforge preflight`'s guest part) on the chain as opened —
/// nothing mounted, nothing written. Its errors stop prep unless `force`; the report is
/// returned either way so the caller can show the warnings.
pub fn preflight(prepared: &Prepared, force: bool) -> Result<PreflightReport, PrepError> {
    let report = run_image(&prepared.image, OsChoice::Auto)?;
    if !force
        && report
            .findings
            .iter()
            .any(|f| f.severity == Severity::Error)
    {
        return Err(PrepError::Preflight(Box::new(report)));
    }
    Ok(report)
}

/// The chain opened must be the one listed: as many files, the same virtual size.
fn check_same_chain(
    leaf: &Path,
    image: &dyn DiskImage,
    listed: usize,
    listed_size: Option<u64>,
) -> Result<(), PrepError> {
    let mut opened = 0;
    let mut cur = Some(image);
    while let Some(i) = cur {
        opened += 1;
        cur = i.parent();
    }
    let opened_size = image.info().virtual_size;
    if opened != listed || listed_size.is_some_and(|s| s != opened_size) {
        return Err(PrepError::ChainMismatch {
            leaf: leaf.display().to_string(),
            opened,
            listed,
            opened_size,
            listed_size: listed_size.unwrap_or(0),
        });
    }
    Ok(())
}

/// Phase 4 (file): write the fixed VHD to `out` exactly as `vhdforge convert LEAF OUT` does.
/// `force` replaces an existing OUT; a forced 4K-sector disk is presented with 512-byte sectors.
pub fn deliver_to_file(
    prepared: &Prepared,
    out: &Path,
    force: bool,
    threads: usize,
    progress: &dyn Progress,
) -> Result<ConvertReport, PrepError> {
    let opts = ConvertOptions {
        policy: Policy {
            allow_4k_sectors: force,
            ..Policy::default()
        },
        force,
        threads,
        ..ConvertOptions::default()
    };
    Ok(convert_to_file(
        prepared.image.as_ref(),
        out,
        &opts,
        progress,
    )?)
}
