//! The inventory: what a Hyper-V host says about its VMs, in the JSON schema `hyperv inventory`
//! writes and `hyperv plan --inventory` reads (docs/hyperv.md has the schema with an example).
//!
//! The schema is strict: an unknown field is refused with its name (`deny_unknown_fields`), so a
//! misspelt `"generaton"` in a hand-edited inventory is an error instead of a VM silently planned
//! as if the field were absent. vhdforge writes only these fields; an inventory from a newer
//! vhdforge with more fields is refused with the field named, which says to upgrade.

use serde::{Deserialize, Serialize};

/// A whole inventory file: one host's VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// The host's computer name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Every VM inventoried.
    pub vms: Vec<Vm>,
}

/// One VM as Hyper-V describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// The VM's name (`Msvm_ComputerSystem.ElementName`).
    pub name: String,
    /// The VM's GUID (`Msvm_ComputerSystem.Name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Hyper-V's VM state.
    pub state: VmState,
    /// 1 or 2 (`Msvm_VirtualSystemSettingData.VirtualSystemSubType`). Kept as a number so an
    /// inventory with another value is planned into a clear error, not refused by the parser.
    pub generation: u8,
    /// Secure Boot: Gen2 only, `null` for Gen1 (or when unknown).
    #[serde(default)]
    pub secure_boot: Option<bool>,
    /// The Secure Boot template name (`MicrosoftWindows`, `MicrosoftUEFICertificateAuthority`,
    /// `OpenSourceShieldedVM`), when known. An extension of the issue's schema, optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot_template: Option<String>,
    /// The guest's OS family (`Windows` or `Linux`) when known (from the guest's integration
    /// services or the guest preflight). An extension of the issue's schema, optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_os: Option<String>,
    /// The VM's checkpoints (snapshots).
    pub checkpoints: Vec<Checkpoint>,
    /// Its virtual hard disks, in controller order.
    pub disks: Vec<Disk>,
}

/// Hyper-V's VM states (the names `Get-VM` prints; WMI `EnabledState` values map onto them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(missing_docs)] // Hyper-V's own names.
pub enum VmState {
    Off,
    Running,
    Saved,
    Paused,
    Starting,
    Stopping,
    Saving,
    Pausing,
    Resuming,
    Other,
}

impl VmState {
    /// Every state, for tests and messages.
    pub const ALL: [VmState; 10] = [
        VmState::Off,
        VmState::Running,
        VmState::Saved,
        VmState::Paused,
        VmState::Starting,
        VmState::Stopping,
        VmState::Saving,
        VmState::Pausing,
        VmState::Resuming,
        VmState::Other,
    ];

    /// The state from `Msvm_ComputerSystem.EnabledState` (CIM values Hyper-V v2 uses).
    pub fn from_enabled_state(v: u16) -> VmState {
        match v {
            2 => VmState::Running,
            3 => VmState::Off,
            6 => VmState::Saved,
            9 => VmState::Paused,
            10 => VmState::Starting,
            4 => VmState::Stopping,
            32773 => VmState::Saving,
            32776 => VmState::Pausing,
            32777 => VmState::Resuming,
            _ => VmState::Other,
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Its name in Hyper-V Manager.
    pub name: String,
    /// Its id.
    #[serde(default)]
    pub id: Option<String>,
    /// The checkpoint it was taken after, `null` for the first.
    #[serde(default)]
    pub parent_id: Option<String>,
}

/// The controller a disk is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ControllerType {
    /// IDE: Gen1 only; Gen1 boots from IDE 0:0.
    #[serde(rename = "IDE")]
    Ide,
    /// Synthetic SCSI; Gen2 boots from SCSI.
    #[serde(rename = "SCSI")]
    Scsi,
}

impl std::fmt::Display for ControllerType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ControllerType::Ide => "IDE",
            ControllerType::Scsi => "SCSI",
        })
    }
}

/// One attached virtual hard disk and the files behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// IDE or SCSI.
    pub controller_type: ControllerType,
    /// The controller's number (IDE 0–1, SCSI 0–3).
    pub controller_number: u32,
    /// The location on that controller.
    pub controller_location: u32,
    /// The files, current leaf first, base last.
    pub chain: Vec<ChainElement>,
}

impl Disk {
    /// "SCSI 0:1", as Hyper-V Manager shows the slot.
    pub fn slot(&self) -> String {
        format!(
            "{} {}:{}",
            self.controller_type, self.controller_number, self.controller_location
        )
    }
}

/// A virtual disk file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum DiskFormat {
    #[serde(rename = "VHD")]
    Vhd,
    #[serde(rename = "VHDX")]
    Vhdx,
}

/// How a virtual disk file stores its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum DiskKind {
    Fixed,
    Dynamic,
    Differencing,
}

/// One file of a chain. Either the size fields or `error` (a file that could not be opened,
/// such as a moved or missing parent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainElement {
    /// The file's path on the host.
    pub path: String,
    /// VHD or VHDX (absent only with `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Fixed, Dynamic or Differencing (absent only with `error`).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<DiskKind>,
    /// Virtual size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The file's length in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<u64>,
    /// Logical sector size in bytes (512 or 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_sector_size: Option<u32>,
    /// Physical sector size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_sector_size: Option<u32>,
    /// The parent the file names (differencing disks), `null` otherwise.
    #[serde(default)]
    pub parent_path: Option<String>,
    /// Why the file could not be opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Most VMs an inventory may list (Hyper-V runs at most 1024 per host).
pub const MAX_VMS: usize = 4096;
/// Most checkpoints per VM (Hyper-V allows 50).
pub const MAX_CHECKPOINTS: usize = 1024;
/// Most disks per VM (Hyper-V: 4 SCSI controllers of 64 plus 4 IDE slots).
pub const MAX_DISKS: usize = 1024;
/// Most files in one disk's chain (vhdforge follows at most 64 parents when converting).
pub const MAX_CHAIN_FILES: usize = 256;

impl Inventory {
    /// Parse an inventory; the error names the line, column and field at fault.
    ///
    /// An inventory file is untrusted input: beyond the schema, the counts are bounded by
    /// what Hyper-V allows (with a wide margin), because `plan` reports on every chain
    /// element and checkpoint, and an inventory of a million empty elements would otherwise
    /// print hundreds of MiB of blockers.
    pub fn from_json(text: &str) -> Result<Inventory, serde_json::Error> {
        use serde::de::Error as _;
        let inv: Inventory = serde_json::from_str(text)?;
        let over = |what: &str, n: usize, max: usize| {
            serde_json::Error::custom(format!(
                "{what}: {n}, more than the {max} any Hyper-V host has"
            ))
        };
        if inv.vms.len() > MAX_VMS {
            return Err(over("VMs", inv.vms.len(), MAX_VMS));
        }
        for vm in &inv.vms {
            if vm.checkpoints.len() > MAX_CHECKPOINTS {
                return Err(over(
                    &format!("checkpoints of VM {:?}", vm.name),
                    vm.checkpoints.len(),
                    MAX_CHECKPOINTS,
                ));
            }
            if vm.disks.len() > MAX_DISKS {
                return Err(over(
                    &format!("disks of VM {:?}", vm.name),
                    vm.disks.len(),
                    MAX_DISKS,
                ));
            }
            for d in &vm.disks {
                if d.chain.len() > MAX_CHAIN_FILES {
                    return Err(over(
                        &format!("files in the chain of {} of VM {:?}", d.slot(), vm.name),
                        d.chain.len(),
                        MAX_CHAIN_FILES,
                    ));
                }
            }
        }
        Ok(inv)
    }

    /// The VM to plan: the one named, or the only one. The error says which names exist.
    pub fn select(&self, name: Option<&str>) -> Result<&Vm, String> {
        let names = || {
            self.vms
                .iter()
                .map(|v| format!("{:?}", v.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            Some(n) => {
                // Hyper-V VM names are case-insensitive, as Get-VM treats them.
                let found: Vec<&Vm> = self
                    .vms
                    .iter()
                    .filter(|v| v.name.eq_ignore_ascii_case(n))
                    .collect();
                match found.as_slice() {
                    [vm] => Ok(vm),
                    [] => Err(format!(
                        "the inventory has no VM named {n:?}; it has {}",
                        if self.vms.is_empty() { "none".to_string() } else { names() }
                    )),
                    _ => Err(format!(
                        "the inventory has {} VMs named {n:?}; plan one by editing the inventory to keep only it",
                        found.len()
                    )),
                }
            }
            None => match self.vms.as_slice() {
                [vm] => Ok(vm),
                [] => Err("the inventory has no VMs".to_string()),
                _ => Err(format!(
                    "the inventory has {} VMs ({}); name one with --vm NAME",
                    self.vms.len(),
                    names()
                )),
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The issue's example, verbatim (comments removed): it must be accepted exactly.
    pub(crate) const ISSUE_EXAMPLE: &str = r#"{ "host": "HV01",
      "vms": [ {
        "name": "centos79", "id": "8d0f",
        "state": "Off",
        "generation": 2,
        "secure_boot": true,
        "checkpoints": [ {"name": "before-sysprep", "id": "c1", "parent_id": null} ],
        "disks": [ {
          "controller_type": "SCSI", "controller_number": 0, "controller_location": 0,
          "chain": [
            { "path": "D:\\VMs\\centos79_A1B2.avhdx", "format": "VHDX", "type": "Differencing",
              "size": 32212254720, "file_size": 44040192, "logical_sector_size": 512,
              "physical_sector_size": 4096, "parent_path": "D:\\VMs\\centos79.vhdx" },
            { "path": "D:\\VMs\\centos79.vhdx", "format": "VHDX", "type": "Dynamic", "size": 32212254720,
              "file_size": 3221225472, "logical_sector_size": 512, "physical_sector_size": 4096,
              "parent_path": null } ] } ] } ] }"#;

    #[test]
    fn the_issue_example_parses_and_round_trips() {
        let inv = Inventory::from_json(ISSUE_EXAMPLE).unwrap();
        let vm = &inv.vms[0];
        assert_eq!(vm.state, VmState::Off);
        assert_eq!(vm.disks[0].chain.len(), 2);
        assert_eq!(vm.disks[0].chain[0].kind, Some(DiskKind::Differencing));
        let again = Inventory::from_json(&serde_json::to_string(&inv).unwrap()).unwrap();
        assert_eq!(again, inv);
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let bad = ISSUE_EXAMPLE.replace("\"generation\"", "\"generaton\"");
        let e = Inventory::from_json(&bad).unwrap_err().to_string();
        assert!(e.contains("generaton"), "{e}");
    }

    #[test]
    fn a_broken_element_needs_only_path_and_error() {
        let text = r#"{"vms":[{"name":"a","state":"Off","generation":1,"checkpoints":[],"disks":[
            {"controller_type":"IDE","controller_number":0,"controller_location":0,"chain":[
              {"path":"C:\\a.avhdx","error":"parent not found"}]}]}]}"#;
        let inv = Inventory::from_json(text).unwrap();
        assert_eq!(
            inv.vms[0].disks[0].chain[0].error.as_deref(),
            Some("parent not found")
        );
    }

    #[test]
    fn select_names_the_vms_when_ambiguous_or_missing() {
        let mut inv = Inventory::from_json(ISSUE_EXAMPLE).unwrap();
        assert_eq!(inv.select(Some("CENTOS79")).unwrap().name, "centos79");
        let e = inv.select(Some("win")).unwrap_err();
        assert!(e.contains("\"centos79\""), "{e}");
        let mut other = inv.vms[0].clone();
        other.name = "win".into();
        inv.vms.push(other);
        let e = inv.select(None).unwrap_err();
        assert!(e.contains("--vm NAME") && e.contains("\"win\""), "{e}");
    }
}
