//! What vhdforge asks of a Hyper-V host, and how a host says no.
//!
//! The trait is small on purpose: inventory, state, and a graceful shutdown request. Waiting
//! for the shutdown (polling the state, the timeout) is written once, here, over the trait, so
//! the WMI host and the scripted fake share it.

use crate::plan::model::{Vm, VmState};
use std::time::{Duration, Instant};

/// A Hyper-V host: the real one over WMI, or the scripted fake.
pub trait HyperVHost {
    /// Every VM on the host, with its full inventory.
    fn list(&self) -> Result<Vec<Vm>, HostError>;
    /// One VM's inventory, by name (case-insensitive, as `Get-VM`).
    fn inventory(&self, vm: &str) -> Result<Vm, HostError>;
    /// The VM's current state.
    fn state(&self, vm: &str) -> Result<VmState, HostError>;
    /// Ask the guest to shut itself down (integration services; never a power-off). Returns
    /// once the request is accepted; [`shutdown_and_wait`] waits for Off.
    fn request_shutdown(&self, vm: &str) -> Result<(), HostError>;
}

/// The text of a Hyper-V WMI method or job return code (32768–32779), as documented for the
/// `Msvm_*` methods.
pub fn wmi_return_text(code: u32) -> Option<&'static str> {
    Some(match code {
        0 => "completed",
        4096 => "job started",
        32768 => "failed",
        32769 => "access denied",
        32770 => "not supported",
        32771 => "status is unknown",
        32772 => "timeout",
        32773 => "invalid parameter",
        32774 => "system is in use",
        32775 => "invalid state for this operation",
        32776 => "incorrect data type",
        32777 => "system is not available",
        32778 => "out of memory",
        32779 => "file not found",
        _ => return None,
    })
}

/// What to do about a WMI return code, for the message.
fn wmi_advice(code: u32) -> &'static str {
    match code {
        32769 => "run vhdforge from an elevated prompt, as an administrator or a member of Hyper-V Administrators",
        32774 => "another operation holds the VM (a backup, a checkpoint, Hyper-V Manager); wait for it and retry",
        32775 => "the VM is not in a state that allows this; check its state in Hyper-V Manager and retry",
        32779 => "a file the VM names is missing; check its disks in Hyper-V Manager",
        32772 => "Hyper-V did not answer in time; retry, and check the Virtual Machine Management service",
        32777 => "the VM or its integration services are not available; check them in Hyper-V Manager",
        _ => "check the Hyper-V event log (Hyper-V-VMMS) for the cause",
    }
}

/// Why a host operation failed. Each variant has a stable code ([`HostError::code`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// No Hyper-V here: not Windows, no Hyper-V role, or the WMI namespace is missing.
    #[error("Hyper-V is not available on this machine ({reason}). On a machine without Hyper-V, take the inventory on the host (`vhdforge hyperv inventory VM --json > vm.json`) and run `vhdforge hyperv plan --inventory vm.json` here, or convert the disk files directly with `vhdforge convert LEAF.avhdx OUT.vhd`")]
    Unavailable {
        /// What was found missing.
        reason: String,
    },
    /// The caller may not use Hyper-V's management interface.
    #[error("access denied by Hyper-V ({detail}): run vhdforge from an elevated prompt as an administrator, or as a member of the Hyper-V Administrators group")]
    AccessDenied {
        /// What was refused.
        detail: String,
    },
    /// No VM by that name.
    #[error("no VM named {name:?} on this host; its VMs are {}", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    VmNotFound {
        /// The name asked for.
        name: String,
        /// The VMs that exist.
        known: Vec<String>,
    },
    /// A WMI method returned a failure code, or its job ended in one.
    #[error("Hyper-V {method} failed with return code {code} ({}){}: {}", wmi_return_text(*code).unwrap_or("unknown code"), detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default(), wmi_advice(*code))]
    Wmi {
        /// The method, e.g. `Msvm_ShutdownComponent.InitiateShutdown`.
        method: String,
        /// Its return code or the job's error code.
        code: u32,
        /// The job's error description, if any.
        detail: Option<String>,
    },
    /// The guest cannot be asked to shut down.
    #[error("{vm} cannot be shut down gracefully: {reason}; shut the guest down from inside it, then run prep again (vhdforge never powers a VM off)")]
    ShutdownUnavailable {
        /// The VM.
        vm: String,
        /// Why (e.g. the shutdown integration service is not running).
        reason: String,
    },
    /// The guest did not reach Off in time.
    #[error("{vm} did not shut down within {waited_secs} s (it is {state}); nothing was read or written. Check the guest (an update installing, a dialog waiting), shut it down from inside, or retry with a longer --shutdown-timeout; vhdforge never powers a VM off")]
    ShutdownTimeout {
        /// The VM.
        vm: String,
        /// How long we waited.
        waited_secs: u64,
        /// Its state when we gave up.
        state: VmState,
    },
    /// Anything else the host reported.
    #[error("Hyper-V: {0}")]
    Other(String),
}

impl HostError {
    /// The stable code (README, `--json`).
    pub fn code(&self) -> &'static str {
        match self {
            HostError::Unavailable { .. } => "hyperv.unavailable",
            HostError::AccessDenied { .. } => "hyperv.access_denied",
            HostError::VmNotFound { .. } => "hyperv.vm_not_found",
            HostError::Wmi { code: 32769, .. } => "hyperv.access_denied",
            HostError::Wmi { .. } => "hyperv.wmi",
            HostError::ShutdownUnavailable { .. } => "hyperv.shutdown_unavailable",
            HostError::ShutdownTimeout { .. } => "hyperv.shutdown_timeout",
            HostError::Other(_) => "hyperv.host",
        }
    }
}

/// How long to wait for a shutdown and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownWait {
    /// Give up after this long.
    pub timeout: Duration,
    /// Look at the state this often.
    pub poll: Duration,
}

/// Ask `vm` to shut down gracefully and wait until it is Off. Anything but Running or
/// Stopping while waiting (Saved, Paused: someone else acted) stops the wait with the state
/// named, since the disk would then not be clean.
pub fn shutdown_and_wait(
    host: &dyn HyperVHost,
    vm: &str,
    wait: ShutdownWait,
) -> Result<(), HostError> {
    host.request_shutdown(vm)?;
    let start = Instant::now();
    loop {
        let state = host.state(vm)?;
        match state {
            VmState::Off => return Ok(()),
            VmState::Running | VmState::Stopping => {}
            other => {
                return Err(HostError::Other(format!(
                    "{vm} went to {other} while vhdforge waited for it to shut down; its disk is not clean: shut the guest down cleanly and run prep again"
                )))
            }
        }
        if start.elapsed() >= wait.timeout {
            return Err(HostError::ShutdownTimeout {
                vm: vm.to_string(),
                waited_secs: wait.timeout.as_secs(),
                state,
            });
        }
        std::thread::sleep(wait.poll);
    }
}
