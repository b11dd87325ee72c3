//! A scripted Hyper-V host for tests: VMs given as inventories, the states a VM passes
//! through after a shutdown request, and failures injected per operation (WMI return codes,
//! access denied, an unavailable host). Compiled on every target so the CLI and prep are
//! tested on Linux.

use crate::host::{HostError, HyperVHost};
use crate::plan::model::{Vm, VmState};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

/// An operation of [`HyperVHost`], to inject a failure into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`HyperVHost::list`].
    List,
    /// [`HyperVHost::inventory`].
    Inventory,
    /// [`HyperVHost::state`].
    State,
    /// [`HyperVHost::request_shutdown`].
    Shutdown,
}

/// The scripted host.
#[derive(Debug, Default)]
pub struct FakeHost {
    vms: RefCell<Vec<Vm>>,
    /// Per VM: the states `state()` reports after a shutdown request, one per call; the last
    /// one stays. Without a script, a shutdown takes the VM straight to Off.
    after_shutdown: RefCell<HashMap<String, VecDeque<VmState>>>,
    failures: RefCell<HashMap<Op, VecDeque<HostError>>>,
    /// VMs (lowercase) asked to shut down: their script runs from then on.
    shutting_down: RefCell<Vec<String>>,
    calls: RefCell<Vec<String>>,
}

impl FakeHost {
    /// A host with these VMs.
    pub fn new(vms: Vec<Vm>) -> Self {
        FakeHost {
            vms: RefCell::new(vms),
            ..FakeHost::default()
        }
    }

    /// After a shutdown request, `vm` reports `states` one per `state()` call, then stays in
    /// the last (e.g. `[Stopping, Stopping, Off]`, or `[Running]` for a guest that ignores it).
    pub fn script_shutdown(&self, vm: &str, states: &[VmState]) {
        self.after_shutdown
            .borrow_mut()
            .insert(vm.to_lowercase(), states.iter().copied().collect());
    }

    /// The next call of `op` fails with `error` (queued: several calls, several failures).
    pub fn fail(&self, op: Op, error: HostError) {
        self.failures
            .borrow_mut()
            .entry(op)
            .or_default()
            .push_back(error);
    }

    /// Every call made, in order ("list", "inventory centos79", "shutdown centos79", ...).
    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    fn enter(&self, op: Op, call: String) -> Result<(), HostError> {
        self.calls.borrow_mut().push(call);
        match self
            .failures
            .borrow_mut()
            .get_mut(&op)
            .and_then(VecDeque::pop_front)
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn index(&self, name: &str) -> Result<usize, HostError> {
        let vms = self.vms.borrow();
        vms.iter()
            .position(|v| v.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| HostError::VmNotFound {
                name: name.to_string(),
                known: vms.iter().map(|v| v.name.clone()).collect(),
            })
    }
}

impl HyperVHost for FakeHost {
    fn list(&self) -> Result<Vec<Vm>, HostError> {
        self.enter(Op::List, "list".into())?;
        Ok(self.vms.borrow().clone())
    }

    fn inventory(&self, vm: &str) -> Result<Vm, HostError> {
        self.enter(Op::Inventory, format!("inventory {vm}"))?;
        let i = self.index(vm)?;
        Ok(self.vms.borrow()[i].clone())
    }

    fn state(&self, vm: &str) -> Result<VmState, HostError> {
        self.enter(Op::State, format!("state {vm}"))?;
        let i = self.index(vm)?;
        let mut vms = self.vms.borrow_mut();
        let key = vms[i].name.to_lowercase();
        if !self.shutting_down.borrow().contains(&key) {
            return Ok(vms[i].state);
        }
        if let Some(script) = self.after_shutdown.borrow_mut().get_mut(&key) {
            let next = if script.len() > 1 {
                script.pop_front()
            } else {
                script.front().copied()
            };
            if let Some(s) = next {
                vms[i].state = s;
            }
        }
        Ok(vms[i].state)
    }

    fn request_shutdown(&self, vm: &str) -> Result<(), HostError> {
        self.enter(Op::Shutdown, format!("shutdown {vm}"))?;
        let i = self.index(vm)?;
        let mut vms = self.vms.borrow_mut();
        if vms[i].state != VmState::Running {
            // What InitiateShutdown answers for a VM that is not running.
            return Err(HostError::Wmi {
                method: "Msvm_ShutdownComponent.InitiateShutdown".into(),
                code: 32775,
                detail: Some(format!("{} is {}", vms[i].name, vms[i].state)),
            });
        }
        let key = vms[i].name.to_lowercase();
        self.shutting_down.borrow_mut().push(key.clone());
        if !self.after_shutdown.borrow().contains_key(&key) {
            vms[i].state = VmState::Off;
        }
        Ok(())
    }
}
