//! `prep` end to end on Linux: the scripted host's inventory points at a real VHDX chain
//! (base written by qemu-img, differencing child built by the fixtures crate, since qemu-img
//! cannot create VHDX children), and the output must equal `convert` of the leaf, with the
//! input files unchanged. qemu-img is required: a missing oracle fails, never skips.

use hyperv_bridge::chain::chain_from_files;
use hyperv_bridge::fake::{FakeHost, Op};
use hyperv_bridge::host::{HostError, ShutdownWait};
use hyperv_bridge::plan::model::{Checkpoint, ControllerType, Disk, Vm, VmState};
use hyperv_bridge::prep::{deliver_to_file, prepare, PrepError, PrepRequest};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use uuid::Uuid;
use vhdforge_core::convert::{convert_to_file, ConvertOptions};
use vhdforge_core::progress::NoProgress;
use vhdforge_core::{open, OpenOptions};

const MIB: usize = 1 << 20;
const SIZE: usize = 24 * MIB;

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is required for this test (scripts/setup.sh installs qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// base.vhdx (qemu-img, dynamic) + child.avhdx (differencing, half its sectors present);
/// returns the child's path and the chain's expected content.
fn chain(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut base = fixtures::raw::pattern(7, SIZE);
    base[3 * MIB..5 * MIB].fill(0);
    std::fs::write(dir.join("base.raw"), &base).unwrap();
    let base_path = dir.join("base.vhdx");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vhdx",
        "-o",
        "subformat=dynamic",
        dir.join("base.raw").to_str().unwrap(),
        base_path.to_str().unwrap(),
    ]);
    std::fs::remove_file(dir.join("base.raw")).unwrap();
    let linkage = open(&base_path, &OpenOptions::default())
        .unwrap()
        .info()
        .identifier
        .unwrap();
    let child = fixtures::raw::pattern(8, SIZE);
    let present: Vec<bool> = (0..SIZE / 512).map(|s| (s / 700) % 2 == 0).collect();
    let mut spec = fixtures::vhdx::VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(0x5eed));
    spec.child = Some(fixtures::vhdx::ChildSpec {
        parent_linkage: linkage,
        relative_path: Some(".\\base.vhdx".into()),
        // Where Hyper-V put it on the host: not resolvable here, the relative path is.
        absolute_win32_path: Some("D:\\VMs\\base.vhdx".into()),
        present: present.clone(),
    });
    let leaf = fixtures::vhdx::write_file(
        dir,
        "child.avhdx",
        &fixtures::vhdx::build(&spec, &child).bytes,
    );
    (
        leaf,
        fixtures::vhdx::chain_content(&base, &child, &present, 512),
    )
}

fn vm(leaf: &Path, state: VmState) -> Vm {
    Vm {
        name: "centos79".into(),
        id: None,
        state,
        generation: 2,
        secure_boot: Some(true),
        secure_boot_template: None,
        guest_os: None,
        checkpoints: vec![Checkpoint {
            name: "before-sysprep".into(),
            id: None,
            parent_id: None,
        }],
        disks: vec![Disk {
            controller_type: ControllerType::Scsi,
            controller_number: 0,
            controller_location: 0,
            chain: chain_from_files(leaf),
        }],
    }
}

fn request(shutdown: Option<ShutdownWait>) -> PrepRequest {
    PrepRequest {
        vm: "CentOS79".into(),
        shutdown,
        force: false,
        output: None,
        upload: None,
    }
}

fn wait(ms: u64) -> Option<ShutdownWait> {
    Some(ShutdownWait {
        timeout: Duration::from_millis(ms),
        poll: Duration::from_millis(1),
    })
}

fn hash(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

#[test]
fn prep_of_a_running_vm_equals_convert_of_the_leaf_and_leaves_the_chain_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (leaf, want) = chain(dir.path());
    let base = dir.path().join("base.vhdx");
    let before = (
        hash(&leaf),
        hash(&base),
        std::fs::metadata(&leaf).unwrap().modified().unwrap(),
    );
    let inv = vm(&leaf, VmState::Running);
    assert_eq!(inv.disks[0].chain.len(), 2, "{:#?}", inv.disks[0].chain);
    let host = FakeHost::new(vec![inv]);
    host.script_shutdown(
        "centos79",
        &[VmState::Running, VmState::Stopping, VmState::Off],
    );

    let prepared = prepare(&host, &request(wait(10_000))).unwrap();
    assert!(prepared.shut_down);
    assert_eq!(prepared.plan.upload_size_bytes, Some(SIZE as u64 + 512));
    assert!(
        host.calls().iter().any(|c| c == "shutdown CentOS79"),
        "{:?}",
        host.calls()
    );
    let out = dir.path().join("out.vhd");
    deliver_to_file(&prepared, &out, false, 1, &NoProgress).unwrap();

    // What `vhdforge convert child.avhdx` writes: the same bytes but the footer's unique id,
    // time stamp and checksum.
    let direct = dir.path().join("direct.vhd");
    let image = open(&leaf, &OpenOptions::default()).unwrap();
    convert_to_file(
        image.as_ref(),
        &direct,
        &ConvertOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let (a, b) = (
        std::fs::read(&out).unwrap(),
        std::fs::read(&direct).unwrap(),
    );
    assert_eq!(a.len(), SIZE + 512);
    assert_eq!(a.len(), b.len());
    assert!(
        a[..SIZE] == b[..SIZE],
        "data differs from convert of the leaf"
    );
    assert_eq!(&a[SIZE..SIZE + 8], b"conectix");
    // And the oracle: qemu-img reads the output as the chain's content.
    std::fs::write(dir.path().join("want.raw"), &want).unwrap();
    qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "vpc",
        dir.path().join("want.raw").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);

    drop(prepared);
    let after = (
        hash(&leaf),
        hash(&base),
        std::fs::metadata(&leaf).unwrap().modified().unwrap(),
    );
    assert_eq!(before, after, "prep modified the VM's files");
}

#[test]
fn a_guest_that_ignores_the_shutdown_times_out_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (leaf, _) = chain(dir.path());
    let host = FakeHost::new(vec![vm(&leaf, VmState::Running)]);
    host.script_shutdown("centos79", &[VmState::Running]);
    let e = prepare(&host, &request(wait(30))).unwrap_err();
    assert_eq!(e.code(), "hyperv.shutdown_timeout", "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("did not shut down") && msg.contains("never powers a VM off"),
        "{msg}"
    );
    // One shutdown request, no second (forced) one.
    assert_eq!(
        host.calls()
            .iter()
            .filter(|c| c.starts_with("shutdown"))
            .count(),
        1
    );
}

#[test]
fn a_vm_saved_while_waiting_stops_prep() {
    let dir = tempfile::tempdir().unwrap();
    let (leaf, _) = chain(dir.path());
    let host = FakeHost::new(vec![vm(&leaf, VmState::Running)]);
    host.script_shutdown("centos79", &[VmState::Saving, VmState::Saved]);
    let e = prepare(&host, &request(wait(10_000))).unwrap_err();
    assert!(e.to_string().contains("went to Saving"), "{e}");
}

#[test]
fn a_running_vm_without_shutdown_and_a_saved_vm_are_blocked_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let (leaf, _) = chain(dir.path());
    for (state, shutdown, code) in [
        (VmState::Running, None, "hyperv.vm_running"),
        (VmState::Saved, wait(1000), "hyperv.vm_saved"),
        (VmState::Paused, wait(1000), "hyperv.vm_paused"),
    ] {
        let host = FakeHost::new(vec![vm(&leaf, state)]);
        let e = prepare(&host, &request(shutdown)).unwrap_err();
        assert_eq!(e.code(), "hyperv.blocked");
        let PrepError::Blocked(plan) = &e else {
            panic!("{e}")
        };
        assert_eq!(plan.blockers[0].code.as_str(), code);
        assert!(
            host.calls().iter().all(|c| !c.starts_with("shutdown")),
            "{state}: {:?}",
            host.calls()
        );
    }
}

#[test]
fn wmi_failures_are_named_with_hyper_v_return_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (leaf, _) = chain(dir.path());
    let cases = [
        (32774, "hyperv.wmi", "system is in use"),
        (32775, "hyperv.wmi", "invalid state"),
        (32769, "hyperv.access_denied", "elevated"),
        (32779, "hyperv.wmi", "file not found"),
        (32768, "hyperv.wmi", "failed"),
    ];
    for (code, want_code, text) in cases {
        let host = FakeHost::new(vec![vm(&leaf, VmState::Running)]);
        host.fail(
            Op::Shutdown,
            HostError::Wmi {
                method: "Msvm_ShutdownComponent.InitiateShutdown".into(),
                code,
                detail: None,
            },
        );
        let e = prepare(&host, &request(wait(1000))).unwrap_err();
        assert_eq!(e.code(), want_code, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&code.to_string()) && msg.contains(text),
            "{msg}"
        );
    }
}

#[test]
fn access_denied_and_unknown_vms_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (leaf, _) = chain(dir.path());
    let host = FakeHost::new(vec![vm(&leaf, VmState::Off)]);
    host.fail(
        Op::Inventory,
        HostError::AccessDenied {
            detail: "Msvm_ComputerSystem: 0x80041003".into(),
        },
    );
    let e = prepare(&host, &request(None)).unwrap_err();
    assert_eq!(e.code(), "hyperv.access_denied");
    assert!(e.to_string().contains("Hyper-V Administrators"), "{e}");
    let mut req = request(None);
    req.vm = "win2019".into();
    let e = prepare(&host, &req).unwrap_err();
    assert_eq!(e.code(), "hyperv.vm_not_found");
    assert!(e.to_string().contains("centos79"), "{e}");
}

#[test]
fn an_inventory_that_disagrees_with_the_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (leaf, _) = chain(dir.path());
    let mut inv = vm(&leaf, VmState::Off);
    // Hyper-V says 25 MiB; the files say 24 MiB: never convert something else than listed.
    for e in &mut inv.disks[0].chain {
        e.size = Some(25 * MIB as u64);
    }
    let host = FakeHost::new(vec![inv]);
    let e = prepare(&host, &request(None)).unwrap_err();
    assert_eq!(e.code(), "hyperv.chain_mismatch", "{e}");
}

#[test]
fn a_moved_parent_is_a_broken_chain_with_core_s_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (leaf, _) = chain(dir.path());
    std::fs::rename(dir.path().join("base.vhdx"), dir.path().join("moved.vhdx")).unwrap();
    let host = FakeHost::new(vec![vm(&leaf, VmState::Off)]);
    let e = prepare(&host, &request(None)).unwrap_err();
    let PrepError::Blocked(plan) = &e else {
        panic!("{e}")
    };
    assert_eq!(plan.blockers[0].code.as_str(), "hyperv.chain_broken");
    assert!(
        plan.blockers[0].message.contains("child.avhdx"),
        "{}",
        plan.blockers[0].message
    );
}

/// The guest preflight runs on the chain prep opened: a Linux guest left with a root
/// `authorized_keys` stops prep (nothing written) unless `--force`.
#[test]
fn guest_preflight_errors_stop_prep_unless_forced() {
    use fixtures::guest::{build, Content, Format, Kind, Part, Table};
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::create_dir_all(tree.join("root/.ssh")).unwrap();
    std::fs::write(tree.join("etc/os-release"), "ID=centos\nVERSION_ID=\"7\"\n").unwrap();
    std::fs::write(
        tree.join("root/.ssh/authorized_keys"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlanted planted@build\n",
    )
    .unwrap();
    let raw = dir.path().join("guest.raw");
    build(
        &raw,
        40,
        Table::Mbr,
        &[Part::new(
            32,
            Kind::Linux,
            Content::fs(Format::Ext4, "root", Some(&tree)),
        )
        .active()],
        &dir.path().join("scratch"),
    );
    let leaf = dir.path().join("guest.vhdx");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vhdx",
        raw.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    let mut inv = vm(&leaf, VmState::Off);
    inv.checkpoints.clear();
    let host = FakeHost::new(vec![inv]);
    let prepared = prepare(&host, &request(None)).unwrap();
    let Err(e) = hyperv_bridge::prep::preflight(&prepared, false) else {
        panic!("a guest with a root authorized_keys passed preflight")
    };
    assert_eq!(e.code(), "hyperv.preflight");
    assert!(e.to_string().contains("guest.linux.authorized_keys"), "{e}");
    let forced = hyperv_bridge::prep::preflight(&prepared, true).unwrap();
    assert!(forced
        .findings
        .iter()
        .any(|f| f.code == "guest.linux.authorized_keys"));
}
