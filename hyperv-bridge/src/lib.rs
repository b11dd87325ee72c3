//! vhdforge's Hyper-V bridge: from a VM's name to an Azure-ready disk, without touching the
//! VM's files.
//!
//! - [`plan`]: the inventory schema and the pure planner (no OS dependency).
//! - [`host`]: the [`host::HyperVHost`] trait, its errors (Hyper-V's WMI return codes named).
//! - [`fake`]: a scripted host for tests, compiled everywhere.
//! - [`chain`]: a disk's chain facts read from its files with vhdforge-core.
//! - [`prep`]: take the inventory, plan, shut down if asked, open the chain read-only, deliver.
//! - `wmi_host` (Windows only): the host over WMI `root\virtualization\v2`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chain;
pub mod fake;
pub mod host;
pub mod plan;
pub mod prep;
#[cfg(windows)]
pub mod wmi_host;

pub use host::{HostError, HyperVHost};
pub use plan::model::{Inventory, Vm, VmState};
pub use plan::{plan, Plan, PlanOptions};

/// The host of this machine: WMI on Windows; elsewhere the clean "Hyper-V is not available"
/// error, which points at `plan --inventory` and plain `convert`.
pub fn local_host() -> Result<Box<dyn HyperVHost>, HostError> {
    #[cfg(windows)]
    {
        Ok(Box::new(wmi_host::WmiHost::connect()?))
    }
    #[cfg(not(windows))]
    {
        Err(HostError::Unavailable {
            reason: format!(
                "this is {}, not Windows; Hyper-V runs only on Windows",
                std::env::consts::OS
            ),
        })
    }
}
