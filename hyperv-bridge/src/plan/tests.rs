//! Planner tests: one table of VMs with the codes each must give, then properties over
//! generated inventories.

use super::model::tests::ISSUE_EXAMPLE;
use super::model::*;
use super::*;
use proptest::prelude::*;

const G: u64 = GIB;

fn element(path: &str, kind: DiskKind, size: u64, parent: Option<&str>) -> ChainElement {
    ChainElement {
        path: path.into(),
        format: Some(DiskFormat::Vhdx),
        kind: Some(kind),
        size: Some(size),
        file_size: Some(4 << 20),
        logical_sector_size: Some(512),
        physical_sector_size: Some(4096),
        parent_path: parent.map(Into::into),
        error: None,
    }
}

fn disk(ct: ControllerType, n: u32, loc: u32, chain: Vec<ChainElement>) -> Disk {
    Disk {
        controller_type: ct,
        controller_number: n,
        controller_location: loc,
        chain,
    }
}

/// An Off Gen2 VM with one 30 GiB dynamic VHDX at SCSI 0:0, Secure Boot on.
fn gen2() -> Vm {
    Vm {
        name: "centos79".into(),
        id: None,
        state: VmState::Off,
        generation: 2,
        secure_boot: Some(true),
        secure_boot_template: None,
        guest_os: None,
        checkpoints: vec![],
        disks: vec![disk(
            ControllerType::Scsi,
            0,
            0,
            vec![element("D:\\VMs\\c.vhdx", DiskKind::Dynamic, 30 * G, None)],
        )],
    }
}

fn gen1() -> Vm {
    let mut vm = gen2();
    vm.generation = 1;
    vm.secure_boot = None;
    vm.disks[0].controller_type = ControllerType::Ide;
    vm
}

fn codes(issues: &[Issue]) -> Vec<&'static str> {
    issues.iter().map(|i| i.code.as_str()).collect()
}

#[test]
fn table_of_vms() {
    let checkpoint = || Checkpoint {
        name: "before-sysprep".into(),
        id: None,
        parent_id: None,
    };
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Vm, PlanOptions, &[&str], &[&str])> = vec![
        // The clean case: nothing to say.
        ("off gen2", gen2(), PlanOptions::default(), &[], &[]),
        ("off gen1", gen1(), PlanOptions::default(), &[], &[]),
        // Running without --shutdown blocks; with it, a shutdown step instead.
        (
            "running",
            {
                let mut v = gen2();
                v.state = VmState::Running;
                v
            },
            PlanOptions::default(),
            &["hyperv.vm_running"],
            &[],
        ),
        (
            "running --shutdown",
            {
                let mut v = gen2();
                v.state = VmState::Running;
                v
            },
            PlanOptions {
                shutdown: true,
                ..Default::default()
            },
            &[],
            &[],
        ),
        // Saved blocks even with --shutdown and --force.
        (
            "saved",
            {
                let mut v = gen2();
                v.state = VmState::Saved;
                v
            },
            PlanOptions {
                shutdown: true,
                force: true,
                ..Default::default()
            },
            &["hyperv.vm_saved"],
            &[],
        ),
        (
            "paused",
            {
                let mut v = gen2();
                v.state = VmState::Paused;
                v
            },
            PlanOptions::default(),
            &["hyperv.vm_paused"],
            &[],
        ),
        (
            "stopping",
            {
                let mut v = gen2();
                v.state = VmState::Stopping;
                v
            },
            PlanOptions::default(),
            &["hyperv.vm_busy"],
            &[],
        ),
        (
            "other",
            {
                let mut v = gen2();
                v.state = VmState::Other;
                v
            },
            PlanOptions::default(),
            &["hyperv.vm_busy"],
            &[],
        ),
        // Gen1 boots from IDE 0:0 only: a SCSI disk is not an OS disk.
        (
            "gen1 on scsi",
            {
                let mut v = gen1();
                v.disks[0].controller_type = ControllerType::Scsi;
                v
            },
            PlanOptions::default(),
            &["hyperv.no_os_disk"],
            &[],
        ),
        (
            "gen1 on ide 0:1",
            {
                let mut v = gen1();
                v.disks[0].controller_location = 1;
                v
            },
            PlanOptions::default(),
            &["hyperv.no_os_disk"],
            &[],
        ),
        (
            "gen2 on ide",
            {
                let mut v = gen2();
                v.disks[0].controller_type = ControllerType::Ide;
                v
            },
            PlanOptions::default(),
            &["hyperv.no_os_disk"],
            &[],
        ),
        (
            "no disks",
            {
                let mut v = gen2();
                v.disks.clear();
                v
            },
            PlanOptions::default(),
            &["hyperv.no_os_disk"],
            &[],
        ),
        // A 3-deep checkpoint chain read through: a warning, not a blocker.
        (
            "3-deep chain",
            {
                let mut v = gen2();
                v.checkpoints = vec![checkpoint(), checkpoint()];
                v.disks[0].chain = vec![
                    element(
                        "D:\\VMs\\c_2.avhdx",
                        DiskKind::Differencing,
                        30 * G,
                        Some("D:\\VMs\\c_1.avhdx"),
                    ),
                    element(
                        "D:\\VMs\\c_1.avhdx",
                        DiskKind::Differencing,
                        30 * G,
                        Some("d:/vms/C.vhdx"),
                    ),
                    element("D:\\VMs\\c.vhdx", DiskKind::Dynamic, 30 * G, None),
                ];
                v
            },
            PlanOptions::default(),
            &[],
            &["hyperv.checkpoints"],
        ),
        // A moved parent: the element carries an error.
        (
            "missing parent",
            {
                let mut v = gen2();
                v.disks[0].chain = vec![
                    element(
                        "D:\\VMs\\c_1.avhdx",
                        DiskKind::Differencing,
                        30 * G,
                        Some("D:\\VMs\\c.vhdx"),
                    ),
                    ChainElement {
                        path: "D:\\VMs\\c.vhdx".into(),
                        format: None,
                        kind: None,
                        size: None,
                        file_size: None,
                        logical_sector_size: None,
                        physical_sector_size: None,
                        parent_path: None,
                        error: Some("not found".into()),
                    },
                ];
                v
            },
            PlanOptions::default(),
            &["hyperv.chain_broken"],
            &[],
        ),
        // A differencing leaf whose parent is not listed.
        // A running VM's locked files are read again after the shutdown: a warning until then.
        (
            "running, locked, --shutdown",
            {
                let mut v = gen2();
                v.state = VmState::Running;
                v.disks[0].chain[0].error = Some("being used by another process".into());
                v.disks[0].chain[0].size = None;
                v
            },
            PlanOptions {
                shutdown: true,
                ..Default::default()
            },
            &[],
            &["hyperv.chain_broken"],
        ),
        (
            "truncated chain",
            {
                let mut v = gen2();
                v.disks[0].chain = vec![element(
                    "D:\\VMs\\c_1.avhdx",
                    DiskKind::Differencing,
                    30 * G,
                    Some("D:\\VMs\\c.vhdx"),
                )];
                v
            },
            PlanOptions::default(),
            &["hyperv.chain_broken"],
            &[],
        ),
        (
            "empty chain",
            {
                let mut v = gen2();
                v.disks[0].chain.clear();
                v
            },
            PlanOptions::default(),
            &["hyperv.chain_broken"],
            &[],
        ),
        // 4K logical sectors block; --force turns it into a warning.
        (
            "4k sectors",
            {
                let mut v = gen2();
                v.disks[0].chain[0].logical_sector_size = Some(4096);
                v
            },
            PlanOptions::default(),
            &["hyperv.sector_size"],
            &[],
        ),
        (
            "4k sectors --force",
            {
                let mut v = gen2();
                v.disks[0].chain[0].logical_sector_size = Some(4096);
                v
            },
            PlanOptions {
                force: true,
                ..Default::default()
            },
            &[],
            &["hyperv.sector_size"],
        ),
        // Gen1 above 2040 GiB blocks; the same disk on Gen2 is only outside the Marketplace range.
        (
            "gen1 2041 GiB",
            {
                let mut v = gen1();
                v.disks[0].chain[0].size = Some(2041 * G);
                v
            },
            PlanOptions::default(),
            &["hyperv.os_disk_too_large"],
            &[],
        ),
        (
            "gen1 2040 GiB",
            {
                let mut v = gen1();
                v.disks[0].chain[0].size = Some(2040 * G);
                v
            },
            PlanOptions::default(),
            &[],
            &["hyperv.os_disk_size"],
        ),
        (
            "gen2 2041 GiB",
            {
                let mut v = gen2();
                v.disks[0].chain[0].size = Some(2041 * G);
                v
            },
            PlanOptions::default(),
            &[],
            &["hyperv.os_disk_size"],
        ),
        (
            "gen2 above azure max",
            {
                let mut v = gen2();
                v.disks[0].chain[0].size = Some(32_768 * G);
                v
            },
            PlanOptions::default(),
            &["hyperv.os_disk_too_large"],
            &[],
        ),
        (
            "gen2 19 MiB",
            {
                let mut v = gen2();
                v.disks[0].chain[0].size = Some(19 << 20);
                v
            },
            PlanOptions::default(),
            &["hyperv.os_disk_too_small"],
            &[],
        ),
        (
            "gen2 10 GiB",
            {
                let mut v = gen2();
                v.disks[0].chain[0].size = Some(10 * G);
                v
            },
            PlanOptions::default(),
            &[],
            &["hyperv.os_disk_size"],
        ),
        // Secure Boot: off, or the Windows template on Linux, are warnings.
        (
            "gen2 no secure boot",
            {
                let mut v = gen2();
                v.secure_boot = Some(false);
                v
            },
            PlanOptions::default(),
            &[],
            &["hyperv.secure_boot"],
        ),
        (
            "linux with windows template",
            {
                let mut v = gen2();
                v.guest_os = Some("Linux".into());
                v.secure_boot_template = Some("MicrosoftWindows".into());
                v
            },
            PlanOptions::default(),
            &[],
            &["hyperv.secure_boot_template"],
        ),
        (
            "windows with windows template",
            {
                let mut v = gen2();
                v.guest_os = Some("Windows".into());
                v.secure_boot_template = Some("MicrosoftWindows".into());
                v
            },
            PlanOptions::default(),
            &[],
            &[],
        ),
        (
            "generation 3",
            {
                let mut v = gen2();
                v.generation = 3;
                v
            },
            PlanOptions::default(),
            &["hyperv.generation"],
            &[],
        ),
    ];
    for (name, vm, opts, blockers, warnings) in cases {
        let p = plan(&vm, &opts);
        assert_eq!(codes(&p.blockers), blockers, "{name}: {:#?}", p.blockers);
        assert_eq!(codes(&p.warnings), warnings, "{name}: {:#?}", p.warnings);
        assert_eq!(p.ready, blockers.is_empty(), "{name}");
    }
}

#[test]
fn the_issue_example_is_ready_with_a_checkpoint_warning_and_exact_commands() {
    let inv = Inventory::from_json(ISSUE_EXAMPLE).unwrap();
    let p = plan(&inv.vms[0], &PlanOptions::default());
    assert!(p.ready, "{:#?}", p.blockers);
    assert_eq!(codes(&p.warnings), ["hyperv.checkpoints"]);
    // 30 GiB is a whole MiB already: + 512.
    assert_eq!(p.upload_size_bytes, Some(32_212_254_720 + 512));
    let os = p.os_disk.as_ref().unwrap();
    assert_eq!(os.slot, "SCSI 0:0");
    assert_eq!(os.chain.len(), 2);
    assert!(p.commands.iter().any(|c| c.command == "az disk create --resource-group <resource-group> --name centos79-os --location <region> --os-type <Linux|Windows> --hyper-v-generation V2 --upload-type Upload --upload-size-bytes 32212255232 --sku Standard_LRS"), "{:#?}", p.commands);
    assert!(p.commands.iter().any(|c| c.route == Route::PageBlob
        && c.command
            .contains("--source https://<account>.blob.core.windows.net/vhds/centos79.vhd")
        && c.command.contains("--hyper-v-generation V2")));
    let json = serde_json::to_value(&p).unwrap();
    for key in [
        "vm",
        "generation",
        "ready",
        "os_disk",
        "blockers",
        "warnings",
        "steps",
        "upload_size_bytes",
        "commands",
    ] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    assert_eq!(json["warnings"][0]["code"], "hyperv.checkpoints");
}

#[test]
fn gen1_commands_say_v1_and_steps_are_ordered() {
    let mut vm = gen1();
    vm.state = VmState::Running;
    vm.disks[0].chain[0].size = Some(30 * G + 1);
    let p = plan(
        &vm,
        &PlanOptions {
            shutdown: true,
            shutdown_timeout_secs: 600,
            output: Some("out dir/c.vhd".into()),
            ..Default::default()
        },
    );
    assert!(p.ready);
    assert_eq!(p.upload_size_bytes, Some(30 * G + (1 << 20) + 512));
    assert!(
        matches!(
            p.steps.as_slice(),
            [
                Step::Shutdown { timeout_secs: 600 },
                Step::ReadChain { files: 1, .. },
                Step::Convert { .. }
            ]
        ),
        "{:?}",
        p.steps
    );
    assert!(p.commands.iter().all(|c| !c.command.contains("V2")));
    assert!(p
        .commands
        .iter()
        .any(|c| c.command.contains("--hyper-v-generation V1")));
    // A path with a space is quoted for the shell.
    assert!(p
        .commands
        .iter()
        .any(|c| c.command.contains("vhdforge upload 'out dir/c.vhd'")));
}

#[test]
fn gen2_uses_the_lowest_scsi_slot_when_0_0_is_empty() {
    let mut vm = gen2();
    let data = vm.disks[0].chain.clone();
    vm.disks = vec![
        disk(ControllerType::Scsi, 1, 0, data.clone()),
        disk(ControllerType::Scsi, 0, 3, data.clone()),
        disk(ControllerType::Scsi, 0, 2, data),
    ];
    assert_eq!(
        plan(&vm, &PlanOptions::default()).os_disk.unwrap().slot,
        "SCSI 0:2"
    );
}

#[test]
fn upload_size_rounds_up_and_never_overflows() {
    assert_eq!(upload_size(0), Some(512));
    assert_eq!(upload_size(1), Some((1 << 20) + 512));
    assert_eq!(upload_size(1 << 20), Some((1 << 20) + 512));
    assert_eq!(upload_size(u64::MAX), None);
    assert_eq!(upload_size(u64::MAX - 1000), None);
    // The last MiB that fits: rounded up to 2^64 - 1 MiB, then the footer still fits.
    assert_eq!(
        upload_size(u64::MAX - (1 << 20)),
        Some(u64::MAX - (1 << 20) + 1 + 512)
    );
}

// ---- properties over generated inventories ----

fn arb_state() -> impl Strategy<Value = VmState> {
    prop::sample::select(VmState::ALL.to_vec())
}

fn arb_element() -> impl Strategy<Value = ChainElement> {
    (
        prop::option::of(prop::sample::select(vec![
            DiskKind::Fixed,
            DiskKind::Dynamic,
            DiskKind::Differencing,
        ])),
        prop::option::of(prop_oneof![
            Just(0u64),
            Just(30 * G),
            0u64..=u64::MAX,
            0u64..(3000 * G)
        ]),
        prop::option::of(prop::sample::select(vec![512u32, 4096, 0, 520])),
        prop::option::of(prop::sample::select(vec!["a.vhdx", "b.vhdx", "A.VHDX"])),
        prop::option::of(Just("not found")),
        prop::sample::select(vec!["a.vhdx", "b.vhdx", "c.avhdx"]),
    )
        .prop_map(|(kind, size, lss, parent, error, path)| ChainElement {
            path: path.into(),
            format: Some(DiskFormat::Vhdx),
            kind,
            size,
            file_size: None,
            logical_sector_size: lss,
            physical_sector_size: None,
            parent_path: parent.map(Into::into),
            error: error.map(Into::into),
        })
}

fn arb_disk() -> impl Strategy<Value = Disk> {
    (
        prop::sample::select(vec![ControllerType::Ide, ControllerType::Scsi]),
        0u32..3,
        0u32..3,
        prop::collection::vec(arb_element(), 0..4),
    )
        .prop_map(|(ct, n, l, chain)| disk(ct, n, l, chain))
}

fn arb_vm() -> impl Strategy<Value = Vm> {
    (
        arb_state(),
        prop::sample::select(vec![0u8, 1, 2, 2, 3]),
        prop::option::of(any::<bool>()),
        prop::collection::vec(arb_disk(), 0..5),
        0usize..3,
        prop::option::of(prop::sample::select(vec!["Linux", "Windows"])),
    )
        .prop_map(|(state, generation, secure_boot, disks, ncp, os)| Vm {
            name: "v m/é".into(),
            id: None,
            state,
            generation,
            secure_boot,
            secure_boot_template: Some("MicrosoftWindows".into()),
            guest_os: os.map(Into::into),
            checkpoints: (0..ncp)
                .map(|i| Checkpoint {
                    name: format!("c{i}"),
                    id: None,
                    parent_id: None,
                })
                .collect(),
            disks,
        })
}

proptest! {
    /// Never panics; `ready` iff no blockers; the upload size rule; the OS-disk rule; every
    /// code is one of the documented `hyperv.*` codes.
    #[test]
    fn plans_hold_their_invariants(vm in arb_vm(), shutdown: bool, force: bool) {
        let p = plan(&vm, &PlanOptions { shutdown, force, ..Default::default() });
        prop_assert_eq!(p.ready, p.blockers.is_empty());
        // JSON always serialises.
        serde_json::to_string(&p).unwrap();
        // OS disk: Gen1 exactly IDE 0:0; otherwise the lowest SCSI slot.
        let expect = match vm.generation {
            1 => vm.disks.iter().find(|d| d.controller_type == ControllerType::Ide && d.controller_number == 0 && d.controller_location == 0),
            _ => vm.disks.iter().filter(|d| d.controller_type == ControllerType::Scsi).min_by_key(|d| (d.controller_number, d.controller_location)),
        };
        prop_assert_eq!(p.os_disk.as_ref().map(|o| o.slot.clone()), expect.map(Disk::slot));
        if expect.is_none() {
            prop_assert!(p.blockers.iter().any(|b| b.code == Code::NoOsDisk));
        }
        // Upload size: the leaf's size rounded up to a MiB + 512, a whole MiB + 512.
        if let Some(n) = p.upload_size_bytes {
            let leaf = expect.unwrap().chain[0].size.unwrap();
            prop_assert!(n >= leaf + 512 && n - 512 - leaf < (1 << 20));
            prop_assert_eq!((n - 512) % (1 << 20), 0);
            prop_assert!(!p.commands.is_empty());
        }
        // Ready plans have something to read and somewhere to write it, except a running VM
        // to be shut down, whose chain may be readable only once it is Off.
        let after_shutdown = vm.state == VmState::Running && shutdown;
        if p.ready && !after_shutdown {
            prop_assert!(p.upload_size_bytes.is_some());
            let reads = p.steps.iter().any(|s| matches!(s, Step::ReadChain { .. }));
            prop_assert!(reads);
        }
        if p.ready {
            prop_assert!(vm.state == VmState::Off || (vm.state == VmState::Running && shutdown));
        }
        // Saved is never ready, whatever the flags.
        if vm.state == VmState::Saved {
            prop_assert!(!p.ready);
        }
        if !force {
            prop_assert!(p.warnings.iter().all(|w| !w.message.contains("--force)")));
        }
    }

    /// The upload size rule over all sizes: a whole MiB + 512, at least the size, less than a
    /// MiB more.
    #[test]
    fn upload_size_rule(size: u64) {
        match upload_size(size) {
            Some(n) => {
                prop_assert_eq!((n - 512) % (1 << 20), 0);
                prop_assert!(n - 512 >= size && n - 512 - size < (1 << 20));
            }
            None => prop_assert!(size > u64::MAX - (1 << 20) - 512),
        }
    }
}
