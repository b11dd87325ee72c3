//! `vhdforge hyperv` on a machine without Hyper-V (this Linux CI): list/inventory/prep end
//! with the clean "not available" error, and `plan --inventory` works with its exit codes.

use assert_cmd::Command;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn vhdforge() -> Command {
    Command::cargo_bin("vhdforge").unwrap()
}

/// The issue's inventory example: a Gen2 VM on a 30 GiB two-file chain with a checkpoint.
const EXAMPLE: &str = r#"{ "host": "HV01",
  "vms": [ {
    "name": "centos79", "id": "8d0f",
    "state": "Off", "generation": 2, "secure_boot": true,
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

fn inventory(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("vm.json");
    std::fs::write(&p, text).unwrap();
    p
}

#[cfg(not(windows))]
#[test]
fn list_inventory_prep_and_plan_vm_explain_that_hyper_v_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.vhd");
    for args in [
        vec!["hyperv", "list"],
        vec!["hyperv", "inventory", "centos79"],
        vec!["hyperv", "plan", "centos79"],
        vec![
            "hyperv",
            "prep",
            "centos79",
            out.to_str().unwrap(),
            "--shutdown",
        ],
    ] {
        let a = vhdforge().args(&args).assert().code(2);
        let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
        assert!(
            err.contains("Hyper-V is not available on this machine"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("plan --inventory") && err.contains("vhdforge convert"),
            "{args:?}: {err}"
        );
        assert!(!out.exists(), "{args:?} created OUT");
    }
    let a = vhdforge()
        .args(["hyperv", "list", "--json"])
        .assert()
        .code(2);
    let v: Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(v["error"]["code"], "hyperv.unavailable");
}

#[test]
fn plan_from_the_issue_inventory_is_ready_with_exact_commands() {
    let dir = tempfile::tempdir().unwrap();
    let file = inventory(dir.path(), EXAMPLE);
    let a = vhdforge()
        .args(["hyperv", "plan", "--inventory"])
        .arg(&file)
        .assert()
        .code(0);
    let text = String::from_utf8_lossy(&a.get_output().stdout).to_string();
    assert!(text.contains("centos79 (Gen2): ready"), "{text}");
    assert!(text.contains("OS disk: SCSI 0:0, 2 file(s)"), "{text}");
    assert!(text.contains("[hyperv.checkpoints]"), "{text}");
    assert!(
        text.contains(
            "--hyper-v-generation V2 --upload-type Upload --upload-size-bytes 32212255232"
        ),
        "{text}"
    );
    assert!(
        text.contains("Azure upload size: 32212255232 bytes"),
        "{text}"
    );

    let a = vhdforge()
        .args(["hyperv", "plan", "--json", "--inventory"])
        .arg(&file)
        .assert()
        .code(0);
    let v: Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["generation"], 2);
    assert_eq!(v["upload_size_bytes"], 32_212_255_232u64);
    assert_eq!(v["os_disk"]["chain"][1], "D:\\VMs\\centos79.vhdx");
    assert_eq!(v["warnings"][0]["code"], "hyperv.checkpoints");
    assert_eq!(v["steps"][0]["step"], "read_chain");
}

#[test]
fn a_blocked_plan_exits_1_with_its_codes() {
    let dir = tempfile::tempdir().unwrap();
    let file = inventory(dir.path(), &EXAMPLE.replace("\"Off\"", "\"Saved\""));
    let a = vhdforge()
        .args(["hyperv", "plan", "--shutdown", "--json", "--inventory"])
        .arg(&file)
        .assert()
        .code(1);
    let v: Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(v["ready"], false);
    assert_eq!(v["blockers"][0]["code"], "hyperv.vm_saved");
    let file = inventory(dir.path(), &EXAMPLE.replace("\"Off\"", "\"Running\""));
    let a = vhdforge()
        .args(["hyperv", "plan", "--inventory"])
        .arg(&file)
        .assert()
        .code(1);
    let text = String::from_utf8_lossy(&a.get_output().stdout).to_string();
    assert!(
        text.contains("blocked")
            && text.contains("[hyperv.vm_running]")
            && text.contains("--shutdown"),
        "{text}"
    );
    // --shutdown plans the shutdown first.
    let a = vhdforge()
        .args(["hyperv", "plan", "--shutdown", "--json", "--inventory"])
        .arg(&file)
        .assert()
        .code(0);
    let v: Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(v["steps"][0]["step"], "shutdown");
}

#[test]
fn bad_inventories_are_errors_that_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    // A misspelt field: named.
    let file = inventory(
        dir.path(),
        &EXAMPLE.replace("\"generation\"", "\"generaton\""),
    );
    let a = vhdforge()
        .args(["hyperv", "plan", "--json", "--inventory"])
        .arg(&file)
        .assert()
        .code(2);
    let v: Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(v["error"]["code"], "hyperv.inventory");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("generaton"),
        "{v}"
    );
    // Two VMs and no --vm: both named; --vm picks one.
    let two = EXAMPLE.replacen("\"vms\": [ {", "\"vms\": [ {\"name\": \"win\", \"state\": \"Off\", \"generation\": 1, \"checkpoints\": [], \"disks\": []}, {", 1);
    let file = inventory(dir.path(), &two);
    let a = vhdforge()
        .args(["hyperv", "plan", "--inventory"])
        .arg(&file)
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(
        err.contains("--vm NAME") && err.contains("\"win\"") && err.contains("\"centos79\""),
        "{err}"
    );
    let a = vhdforge()
        .args(["hyperv", "plan", "--vm", "win", "--inventory"])
        .arg(&file)
        .assert()
        .code(1);
    assert!(String::from_utf8_lossy(&a.get_output().stdout).contains("[hyperv.no_os_disk]"));
    // Missing file and not JSON at all.
    vhdforge()
        .args(["hyperv", "plan", "--inventory"])
        .arg(dir.path().join("nope.json"))
        .assert()
        .code(2);
    let file = inventory(dir.path(), "not json");
    let a = vhdforge()
        .args(["hyperv", "plan", "--inventory"])
        .arg(&file)
        .assert()
        .code(2);
    assert!(String::from_utf8_lossy(&a.get_output().stderr).contains("not a vhdforge inventory"));
}

#[test]
fn help_says_files_are_read_only_and_which_privileges_are_needed() {
    for args in [vec!["hyperv", "--help"], vec!["hyperv", "prep", "--help"]] {
        let a = vhdforge().args(&args).assert().code(0);
        // Words only: help is wrapped to the terminal's width.
        let text = String::from_utf8_lossy(&a.get_output().stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            text.contains("read-only") && text.contains("never modified"),
            "{args:?}: {text}"
        );
        assert!(
            text.contains("Hyper-V Administrators") && text.contains("elevated"),
            "{args:?}: {text}"
        );
    }
}
