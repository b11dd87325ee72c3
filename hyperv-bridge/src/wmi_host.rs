//! The Hyper-V host over WMI `root\virtualization\v2` (Windows only).
//!
//! Classes used, all read-only except the shutdown request:
//! - `Msvm_ComputerSystem` (`Caption='Virtual Machine'`): name, GUID, `EnabledState`.
//! - `Msvm_VirtualSystemSettingData`: the realized settings (`VirtualSystemSubType` gives the
//!   generation, `SecureBootEnabled`), and the snapshots (checkpoints).
//! - `Msvm_StorageAllocationSettingData` (`ResourceType` 31, `HostResource[0]` = the leaf file)
//!   whose `Parent` is the drive (`AddressOnParent` = location) whose `Parent` is the controller
//!   (`ResourceType` 5 IDE, with `Address` = its number; 6 SCSI, numbered in the order Hyper-V
//!   lists them, as `Get-VMScsiController` does).
//! - `Msvm_ShutdownComponent.InitiateShutdown(Force=false)`, then `Msvm_ConcreteJob` when it
//!   returns 4096 (job started).
//!
//! The chain below each leaf is read from the files with vhdforge-core ([`crate::chain`]),
//! the reader prep converts with. Verified only under Wine (which has no such namespace) and
//! by the fake host's tests; not yet on a real Hyper-V host.

use crate::chain::chain_from_files;
use crate::host::{HostError, HyperVHost};
use crate::plan::model::{Checkpoint, ControllerType, Disk, Vm, VmState};
use std::path::Path;
use wmi::{IWbemClassWrapper, Variant, WMIConnection, WMIError};

const NAMESPACE: &str = "root\\virtualization\\v2";
/// `WBEM_E_INVALID_NAMESPACE`: no Hyper-V role (or its WMI provider) on this machine.
const WBEM_E_INVALID_NAMESPACE: u32 = 0x8004_100E;
/// `WBEM_E_INVALID_CLASS`: the namespace exists but the Msvm classes do not.
const WBEM_E_INVALID_CLASS: u32 = 0x8004_1010;
/// `WBEM_E_ACCESS_DENIED`.
const WBEM_E_ACCESS_DENIED: u32 = 0x8004_1003;
/// `E_ACCESSDENIED`.
const E_ACCESSDENIED: u32 = 0x8007_0005;
/// WMI method return: a job was started.
const JOB_STARTED: u32 = 4096;
/// `Msvm_ConcreteJob.JobState` 7: completed.
const JOB_COMPLETED: u32 = 7;

/// Map a WMI error: missing namespace or class → unavailable, access denied → access denied.
fn host_error(what: &str, e: &WMIError) -> HostError {
    if let WMIError::HResultError { hres } = e {
        // HRESULTs are reported as i32; the constants are their u32 spelling.
        let code = u32::from_ne_bytes(hres.to_ne_bytes());
        match code {
            WBEM_E_INVALID_NAMESPACE | WBEM_E_INVALID_CLASS => {
                return HostError::Unavailable {
                    reason: format!(
                        "the WMI namespace {NAMESPACE} is missing ({code:#X}): the Hyper-V role is not installed or its management service is not running"
                    ),
                }
            }
            WBEM_E_ACCESS_DENIED | E_ACCESSDENIED => {
                return HostError::AccessDenied {
                    detail: format!("{what}: {code:#X}"),
                }
            }
            _ => {}
        }
    }
    HostError::Other(format!("{what}: {e}"))
}

/// The WMI connection to Hyper-V's namespace.
pub struct WmiHost {
    con: WMIConnection,
}

impl WmiHost {
    /// Connect; a machine without Hyper-V gives [`HostError::Unavailable`].
    pub fn connect() -> Result<WmiHost, HostError> {
        let con = WMIConnection::with_namespace_path(NAMESPACE).map_err(|e| {
            let err = host_error("connecting to WMI", &e);
            match err {
                // Any failure to open the namespace means no usable Hyper-V here.
                HostError::Other(reason) => HostError::Unavailable { reason },
                other => other,
            }
        })?;
        Ok(WmiHost { con })
    }

    fn objects(&self, wql: &str) -> Result<Vec<IWbemClassWrapper>, HostError> {
        let it = self.con.exec_query(wql).map_err(|e| host_error(wql, &e))?;
        it.map(|r| r.map_err(|e| host_error(wql, &e))).collect()
    }

    fn object(&self, path: &str) -> Result<IWbemClassWrapper, HostError> {
        self.con.get_object(path).map_err(|e| host_error(path, &e))
    }

    fn machines(&self, name: Option<&str>) -> Result<Vec<IWbemClassWrapper>, HostError> {
        let mut wql =
            "SELECT * FROM Msvm_ComputerSystem WHERE Caption='Virtual Machine'".to_string();
        if let Some(n) = name {
            wql.push_str(&format!(
                " AND ElementName={}",
                wmi::quote_and_escape_wql_str(n)
            ));
        }
        // Every command starts here: if Msvm_ComputerSystem cannot be queried at all (Wine's
        // WMI, a half-installed role), there is no usable Hyper-V, whatever the HRESULT.
        self.objects(&wql).map_err(|e| match e {
            HostError::Other(reason) => HostError::Unavailable { reason },
            other => other,
        })
    }

    fn machine(&self, name: &str) -> Result<IWbemClassWrapper, HostError> {
        let mut found = self.machines(Some(name))?;
        if found.is_empty() {
            let known = self
                .machines(None)?
                .iter()
                .filter_map(|m| text(m, "ElementName"))
                .collect();
            return Err(HostError::VmNotFound {
                name: name.to_string(),
                known,
            });
        }
        Ok(found.swap_remove(0))
    }

    fn vm(&self, cs: &IWbemClassWrapper) -> Result<Vm, HostError> {
        let guid = text(cs, "Name").unwrap_or_default();
        let name = text(cs, "ElementName").unwrap_or_default();
        let state = VmState::from_enabled_state(
            number(cs, "EnabledState")
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or(0),
        );
        let settings = self.objects(&format!(
            "SELECT * FROM Msvm_VirtualSystemSettingData WHERE VirtualSystemIdentifier={} AND VirtualSystemType='Microsoft:Hyper-V:System:Realized'",
            wmi::quote_and_escape_wql_str(&guid)
        ))?;
        let vssd = settings.first().ok_or_else(|| {
            HostError::Other(format!(
                "{name} has no realized settings (Msvm_VirtualSystemSettingData)"
            ))
        })?;
        let generation = match text(vssd, "VirtualSystemSubType").as_deref() {
            Some("Microsoft:Hyper-V:SubType:2") => 2,
            _ => 1,
        };
        let secure_boot = if generation == 2 {
            flag(vssd, "SecureBootEnabled")
        } else {
            None
        };
        Ok(Vm {
            name,
            id: Some(guid.clone()),
            state,
            generation,
            secure_boot,
            secure_boot_template: None,
            guest_os: None,
            checkpoints: self.checkpoints(&guid)?,
            disks: self.disks(vssd)?,
        })
    }

    fn checkpoints(&self, guid: &str) -> Result<Vec<Checkpoint>, HostError> {
        let snaps = self.objects(&format!(
            "SELECT * FROM Msvm_VirtualSystemSettingData WHERE VirtualSystemIdentifier={} AND VirtualSystemType='Microsoft:Hyper-V:Snapshot:Realized'",
            wmi::quote_and_escape_wql_str(guid)
        ))?;
        Ok(snaps
            .iter()
            .map(|s| Checkpoint {
                name: text(s, "ElementName").unwrap_or_default(),
                id: text(s, "ConfigurationID").or_else(|| text(s, "InstanceID")),
                parent_id: text(s, "Parent").and_then(|p| instance_id_in_path(&p)),
            })
            .collect())
    }

    fn disks(&self, vssd: &IWbemClassWrapper) -> Result<Vec<Disk>, HostError> {
        let path = vssd.path().map_err(|e| host_error("settings path", &e))?;
        let rasd = self.objects(&format!(
            "ASSOCIATORS OF {{{path}}} WHERE ResultClass=Msvm_ResourceAllocationSettingData"
        ))?;
        // SCSI controllers are numbered in the order Hyper-V lists them.
        let scsi: Vec<String> = rasd
            .iter()
            .filter(|r| number(r, "ResourceType") == Some(6))
            .filter_map(|r| text(r, "InstanceID"))
            .collect();
        let sasd = self.objects(&format!(
            "ASSOCIATORS OF {{{path}}} WHERE ResultClass=Msvm_StorageAllocationSettingData"
        ))?;
        let mut disks = Vec::new();
        // ResourceType 31: a virtual hard disk (31 = Logical Disk); DVD images are 16.
        for s in sasd
            .iter()
            .filter(|s| number(s, "ResourceType") == Some(31))
        {
            let Some(file) = first_text(s, "HostResource") else {
                continue;
            };
            let Some(drive) = text(s, "Parent") else {
                continue;
            };
            let drive = self.object(&drive)?;
            let location = text(&drive, "AddressOnParent")
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            let Some(ctrl) = text(&drive, "Parent") else {
                continue;
            };
            let ctrl = self.object(&ctrl)?;
            let (controller_type, controller_number) = match number(&ctrl, "ResourceType") {
                Some(5) => (
                    ControllerType::Ide,
                    text(&ctrl, "Address")
                        .and_then(|a| a.parse().ok())
                        .unwrap_or(0),
                ),
                _ => {
                    let id = text(&ctrl, "InstanceID").unwrap_or_default();
                    let n = scsi.iter().position(|s| *s == id).unwrap_or(0);
                    (ControllerType::Scsi, u32::try_from(n).unwrap_or(u32::MAX))
                }
            };
            disks.push(Disk {
                controller_type,
                controller_number,
                controller_location: location,
                chain: chain_from_files(Path::new(&file)),
            });
        }
        Ok(disks)
    }

    /// Wait for a `Msvm_ConcreteJob` to end; its error code on failure.
    fn wait_job(&self, method: &str, job: &str) -> Result<(), HostError> {
        for _ in 0..600 {
            let j = self.object(job)?;
            let state = number(&j, "JobState").unwrap_or(0);
            if state == u64::from(JOB_COMPLETED) {
                return Ok(());
            }
            // 2 new, 3 starting, 4 running; anything above 7 is an end without success.
            if state > u64::from(JOB_COMPLETED) {
                return Err(HostError::Wmi {
                    method: method.to_string(),
                    code: number(&j, "ErrorCode")
                        .and_then(|c| u32::try_from(c).ok())
                        .unwrap_or(32768),
                    detail: text(&j, "ErrorDescription"),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(HostError::Wmi {
            method: method.to_string(),
            code: 32772,
            detail: Some("the job did not end within 60 s".into()),
        })
    }
}

impl HyperVHost for WmiHost {
    fn list(&self) -> Result<Vec<Vm>, HostError> {
        self.machines(None)?.iter().map(|m| self.vm(m)).collect()
    }

    fn inventory(&self, vm: &str) -> Result<Vm, HostError> {
        self.vm(&self.machine(vm)?)
    }

    fn state(&self, vm: &str) -> Result<VmState, HostError> {
        let cs = self.machine(vm)?;
        Ok(VmState::from_enabled_state(
            number(&cs, "EnabledState")
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or(0),
        ))
    }

    fn request_shutdown(&self, vm: &str) -> Result<(), HostError> {
        const METHOD: &str = "Msvm_ShutdownComponent.InitiateShutdown";
        let cs = self.machine(vm)?;
        let guid = text(&cs, "Name").unwrap_or_default();
        let comps = self.objects(&format!(
            "SELECT * FROM Msvm_ShutdownComponent WHERE SystemName={}",
            wmi::quote_and_escape_wql_str(&guid)
        ))?;
        let Some(comp) = comps.first() else {
            return Err(HostError::ShutdownUnavailable {
                vm: vm.to_string(),
                reason: "the guest's shutdown integration service is not offered (integration services not installed or disabled)".into(),
            });
        };
        let path = comp.path().map_err(|e| host_error(METHOD, &e))?;
        let wmi_err = |e: WMIError| host_error(METHOD, &e);
        let class = self
            .con
            .get_object("Msvm_ShutdownComponent")
            .map_err(wmi_err)?;
        let params = class
            .get_method("InitiateShutdown")
            .map_err(wmi_err)?
            .ok_or_else(|| HostError::Other(format!("{METHOD} does not exist on this host")))?
            .spawn_instance()
            .map_err(wmi_err)?;
        // Force=false: the guest may refuse (unsaved work); never a hard power-off.
        params.put_property("Force", false).map_err(wmi_err)?;
        params
            .put_property("Reason", "vhdforge hyperv prep".to_string())
            .map_err(wmi_err)?;
        let out = self
            .con
            .exec_method(&path, "InitiateShutdown", Some(&params))
            .map_err(wmi_err)?
            .ok_or_else(|| HostError::Other(format!("{METHOD} returned nothing")))?;
        let code = out
            .get_property("ReturnValue")
            .ok()
            .and_then(|v| variant_number(&v))
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(32768);
        match code {
            0 => Ok(()),
            JOB_STARTED => {
                let job = out
                    .get_property("Job")
                    .ok()
                    .and_then(|v| variant_text(&v))
                    .ok_or_else(|| {
                        HostError::Other(format!("{METHOD} started a job it did not name"))
                    })?;
                self.wait_job(METHOD, &job)
            }
            code => Err(HostError::Wmi {
                method: METHOD.to_string(),
                code,
                detail: None,
            }),
        }
    }
}

fn variant_text(v: &Variant) -> Option<String> {
    match v {
        Variant::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn variant_number(v: &Variant) -> Option<u64> {
    match v {
        Variant::UI1(n) => Some(u64::from(*n)),
        Variant::UI2(n) => Some(u64::from(*n)),
        Variant::UI4(n) => Some(u64::from(*n)),
        Variant::UI8(n) => Some(*n),
        Variant::I1(n) => u64::try_from(*n).ok(),
        Variant::I2(n) => u64::try_from(*n).ok(),
        Variant::I4(n) => u64::try_from(*n).ok(),
        Variant::I8(n) => u64::try_from(*n).ok(),
        // WMI hands uint64 properties over as strings.
        Variant::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(o: &IWbemClassWrapper, name: &str) -> Option<String> {
    o.get_property(name).ok().and_then(|v| variant_text(&v))
}

fn number(o: &IWbemClassWrapper, name: &str) -> Option<u64> {
    o.get_property(name).ok().and_then(|v| variant_number(&v))
}

fn flag(o: &IWbemClassWrapper, name: &str) -> Option<bool> {
    match o.get_property(name).ok()? {
        Variant::Bool(b) => Some(b),
        _ => None,
    }
}

fn first_text(o: &IWbemClassWrapper, name: &str) -> Option<String> {
    match o.get_property(name).ok()? {
        Variant::Array(a) => a.first().and_then(variant_text),
        other => variant_text(&other),
    }
}

/// `InstanceID="Microsoft:…"` inside a WMI object path.
fn instance_id_in_path(path: &str) -> Option<String> {
    let start = path.find("InstanceID=\"")? + "InstanceID=\"".len();
    let rest = &path[start..];
    Some(rest[..rest.find('"')?].to_string())
}
