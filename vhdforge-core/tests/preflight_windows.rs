//! The Windows preflight on Windows-like disks built without Windows: hives made by hivex,
//! NTFS volumes made by mkntfs and filled through ntfs-3g, MBR (Gen1) and GPT (Gen2) tables
//! by sfdisk (`fixtures::windows_tree`). A clean guest must give no error and no warning;
//! each variant changes one thing and must give exactly its code, with the evidence naming
//! the value or line found. A missing tool fails the test (the builders panic).

use std::path::Path;
use std::sync::Arc;

use fixtures::windows_tree::{self as wt, HiveName, Layout, Reg, WindowsTree};
use vhdforge_core::finding::Severity;
use vhdforge_core::guest::{self, Generation};
use vhdforge_core::preflight::windows::{check_windows, codes, WindowsFacts};
use vhdforge_core::preflight::GuestFinding;
use vhdforge_core::{DiskImage, OpenOptions};

fn open_image(p: &Path) -> Arc<dyn DiskImage> {
    Arc::from(vhdforge_core::open(p, &OpenOptions::default()).unwrap())
}

/// Build `tree` as a `layout` disk in `dir` and run the Windows checks on it.
fn check(dir: &Path, tree: &WindowsTree, layout: Layout) -> (Vec<GuestFinding>, WindowsFacts) {
    let disk = dir.join("disk.raw");
    wt::build_disk(&disk, tree, layout, &dir.join("scratch"));
    check_disk(&disk)
}

fn check_disk(disk: &Path) -> (Vec<GuestFinding>, WindowsFacts) {
    let volumes = guest::scan(&open_image(disk)).unwrap();
    let mut out = Vec::new();
    let facts = check_windows(&volumes, &mut out);
    (out, facts)
}

/// Warnings and errors, as `code: message [evidence]` lines for assertion messages.
fn problems(f: &[GuestFinding]) -> Vec<&GuestFinding> {
    f.iter()
        .filter(|x| x.severity >= Severity::Warning)
        .collect()
}

fn show(f: &[&GuestFinding]) -> String {
    f.iter()
        .map(|x| {
            format!(
                "{} {}: {} [{}]",
                x.severity,
                x.code,
                x.message,
                x.evidence.as_deref().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn clean_gen1_disk_passes_and_reports_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let (out, facts) = check(dir.path(), &WindowsTree::clean(), Layout::Gen1);
    let p = problems(&out);
    assert!(p.is_empty(), "a clean guest has no problem:\n{}", show(&p));
    assert_eq!(facts.generation, Some(Generation::Gen1));
    assert_eq!(facts.os_volume.as_deref(), Some("2"));
    assert_eq!(
        facts.bcd.as_deref(),
        Some("1:/Boot/BCD"),
        "read from the active system partition"
    );
    assert_eq!(facts.control_set.as_deref(), Some("ControlSet001"));
    assert_eq!(facts.image_state.as_deref(), Some(wt::GENERALIZED));
    let os = facts.os.as_ref().unwrap();
    assert_eq!((os.build, os.ubr), (Some(20348), Some(2113)));
    assert_eq!(os.release.as_deref(), Some("Windows Server 2022"));
    assert_eq!(os.edition.as_deref(), Some("ServerDatacenter"));
    assert_eq!(os.arch.as_deref(), Some("AMD64"));
    assert_eq!(facts.hives.len(), 2);
    assert!(facts.hives.iter().all(|h| !h.dirty));
    let info = |code| out.iter().find(|f| f.code == code).unwrap();
    assert!(
        info(codes::OS)
            .message
            .contains("Windows Server 2022 (build 20348.2113, edition ServerDatacenter, Server)"),
        "{}",
        info(codes::OS).message
    );
    // The same disk inside a dynamic VHDX (qemu-img wrote it) reads the same.
    let vhdx = dir.path().join("disk.vhdx");
    let status = std::process::Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vhdx",
            "-o",
            "subformat=dynamic",
        ])
        .arg(dir.path().join("disk.raw"))
        .arg(&vhdx)
        .status()
        .expect("oracle `qemu-img` is required (qemu-utils); scripts/setup.sh installs it");
    assert!(status.success());
    let (in_vhdx, vhdx_facts) = check_disk(&vhdx);
    assert_eq!(in_vhdx, out, "the same findings through VHDX");
    assert_eq!(vhdx_facts.bcd, facts.bcd);
    // The JSON the report will carry.
    let json = serde_json::to_value(&facts).unwrap();
    assert_eq!(json["generation"], "1");
    assert_eq!(json["os"]["build"], 20348);
}

#[test]
fn clean_gen2_disk_has_no_error_and_says_when_the_esp_was_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (out, facts) = check(dir.path(), &WindowsTree::clean(), Layout::Gen2);
    assert_eq!(facts.generation, Some(Generation::Gen2));
    assert_eq!(facts.os_volume.as_deref(), Some("3"));
    let p = problems(&out);
    match &facts.bcd {
        // A FAT reader is present: the store on the ESP was read and is clean.
        Some(at) => {
            assert_eq!(at, "1:/EFI/Microsoft/Boot/BCD");
            assert!(p.is_empty(), "{}", show(&p));
        }
        // Without one, exactly one warning says the boot settings were not checked and why.
        None => {
            assert_eq!(p.len(), 1, "{}", show(&p));
            assert_eq!(p[0].code, codes::BCD);
            assert_eq!(p[0].severity, Severity::Warning);
            assert!(p[0].message.contains("not read"), "{}", p[0].message);
            assert!(
                p[0].evidence
                    .as_deref()
                    .unwrap()
                    .contains("volume 1 (FAT32)"),
                "{}",
                show(&p)
            );
        }
    }
}

type Mutation = fn(&mut WindowsTree);

/// One variant per code: (code, what is changed, evidence that must be quoted).
fn variants() -> Vec<(vhdforge_core::finding::Code, Mutation, &'static str)> {
    const TS: &str = "CurrentControlSet\\Control\\Terminal Server";
    const FW: &str =
        "CurrentControlSet\\Services\\SharedAccess\\Parameters\\FirewallPolicy\\FirewallRules";
    vec![
        (codes::NOT_GENERALIZED, |t| {
            t.state_ini = Some("[State]\r\nImageState=IMAGE_STATE_COMPLETE\r\n".into());
            t.set(HiveName::Software, "Microsoft\\Windows\\CurrentVersion\\Setup\\State", "ImageState", Reg::Sz("IMAGE_STATE_COMPLETE".into()));
        }, "State.ini line 2: ImageState=IMAGE_STATE_COMPLETE"),
        // Local value 0, but Group Policy denies: the policy wins.
        (codes::RDP_DISABLED, |t| {
            t.set(HiveName::Software, "Policies\\Microsoft\\Windows NT\\Terminal Services", "fDenyTSConnections", Reg::Dword(1));
        }, "SOFTWARE\\Policies\\Microsoft\\Windows NT\\Terminal Services: fDenyTSConnections = 1 (REG_DWORD)"),
        (codes::RDP_DISABLED, |t| {
            t.set(HiveName::System, TS, "fDenyTSConnections", Reg::Dword(1));
        }, "SYSTEM\\ControlSet001\\Control\\Terminal Server: fDenyTSConnections = 1 (REG_DWORD)"),
        (codes::RDP_FIREWALL, |t| {
            t.set(HiveName::System, FW, "RemoteDesktop-UserMode-In-TCP", Reg::Sz(wt::RDP_RULE.replace("Active=TRUE", "Active=FALSE")));
        }, "(disabled: RemoteDesktop-UserMode-In-TCP)"),
        (codes::RDP_FIREWALL, |t| {
            t.set(HiveName::Software, "Policies\\Microsoft\\WindowsFirewall\\FirewallRules", "{0b1c2d3e-block}", Reg::Sz("v2.30|Action=Block|Active=TRUE|Dir=In|Protocol=6|LPort=3389|Name=No RDP|".into()));
        }, "blocked by policy rule in SOFTWARE\\Policies\\Microsoft\\WindowsFirewall\\FirewallRules `{0b1c2d3e-block}`"),
        (codes::SAN_POLICY, |t| {
            t.set(HiveName::System, "CurrentControlSet\\Services\\partmgr\\Parameters", "SanPolicy", Reg::Dword(2));
        }, "SYSTEM\\ControlSet001\\Services\\partmgr\\Parameters: SanPolicy = 2"),
        (codes::PENDING_REBOOT, |t| {
            t.software.insert("Microsoft\\Windows\\CurrentVersion\\Component Based Servicing\\RebootPending".into(), Default::default());
        }, "Component Based Servicing\\RebootPending: key present"),
        (codes::PENDING_REBOOT, |t| {
            t.set(HiveName::System, "CurrentControlSet\\Control\\Session Manager", "PendingFileRenameOperations", Reg::MultiSz(vec!["\\??\\C:\\Windows\\old.dll".into(), String::new()]));
        }, "PendingFileRenameOperations = [\"\\??\\C:\\Windows\\old.dll\"]"),
        (codes::ARCH, |t| {
            t.set(HiveName::System, "CurrentControlSet\\Control\\Session Manager\\Environment", "PROCESSOR_ARCHITECTURE", Reg::Sz("x86".into()));
            t.kernel_machine = Some(0x014C);
        }, "ntoskrnl.exe: PE machine x86"),
        (codes::UNSUPPORTED_ROLE, |t| {
            t.set(HiveName::System, "CurrentControlSet\\Services\\vmms", "Start", Reg::Dword(2));
        }, "SYSTEM\\ControlSet001\\Services\\vmms: Start = 2 (REG_DWORD) (Automatic)"),
        // A role without a service of its own, found through Server Manager's component cache.
        (codes::UNSUPPORTED_ROLE, |t| {
            t.set(HiveName::Software, "Microsoft\\ServerManager\\ServicingStorage\\ServerComponentCache\\ADRMS", "InstallState", Reg::Dword(1));
        }, "ServerComponentCache\\ADRMS: InstallState = 1"),
        // State.ini says generalized, the registry does not: the registry is not ignored.
        (codes::NOT_GENERALIZED, |t| {
            t.set(HiveName::Software, "Microsoft\\Windows\\CurrentVersion\\Setup\\State", "ImageState", Reg::Sz("IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE".into()));
        }, "Setup\\State: ImageState = \"IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE\""),
        (codes::DHCP_DISABLED, |t| {
            t.set(HiveName::System, "CurrentControlSet\\Services\\Dhcp", "Start", Reg::Dword(4));
        }, "Services\\Dhcp: Start = 4 (REG_DWORD) (Disabled)"),
        (codes::CDROM_DISABLED, |t| {
            t.set(HiveName::System, "CurrentControlSet\\Services\\cdrom", "Start", Reg::Dword(4));
        }, "Services\\cdrom: Start = 4"),
        (codes::SERVICES, |t| {
            t.set(HiveName::System, "CurrentControlSet\\Services\\BFE", "Start", Reg::Dword(3));
        }, "Services\\BFE: Start = 3 (REG_DWORD) (Manual)"),
        (codes::RDP_SETTINGS, |t| {
            t.set(HiveName::System, "CurrentControlSet\\Control\\Terminal Server\\WinStations\\RDP-Tcp", "SSLCertificateSHA1Hash", Reg::Binary(vec![0xAB; 20]));
        }, "SSLCertificateSHA1Hash = 20 bytes: ab ab"),
        (codes::TIME_UTC, |t| {
            t.set(HiveName::System, "CurrentControlSet\\Control\\TimeZoneInformation", "RealTimeIsUniversal", Reg::Dword(0));
        }, "TimeZoneInformation: RealTimeIsUniversal = 0"),
        (codes::TEMP_PATH, |t| {
            t.set(HiveName::System, "CurrentControlSet\\Control\\Session Manager\\Environment", "TEMP", Reg::Sz("C:\\Temp".into()));
        }, "Environment: TEMP = \"C:\\Temp\" (REG_SZ)"),
        (codes::BCD, |t| {
            t.set(HiveName::Bcd, &format!("Objects\\{}\\Elements\\250000e0", wt::LOADER), "Element", Reg::Binary(0u64.to_le_bytes().to_vec()));
        }, "bootstatuspolicy (250000e0) = 0 (set on {5a3e9b10-7c4d-11ee-9c2a-00155d010203})"),
        (codes::AGENT_MISSING, |t| {
            t.remove_key(HiveName::System, "CurrentControlSet\\Services\\WindowsAzureGuestAgent");
            t.remove_key(HiveName::System, "CurrentControlSet\\Services\\RdAgent");
        }, "no WindowsAzureGuestAgent or RdAgent key"),
        (codes::PAGEFILE, |t| {
            t.set(HiveName::System, "CurrentControlSet\\Control\\Session Manager\\Memory Management", "PagingFiles", Reg::MultiSz(vec!["?:\\pagefile.sys".into()]));
        }, "PagingFiles = [\"?:\\pagefile.sys\"] (REG_MULTI_SZ)"),
        (codes::CRASH_DUMP, |t| {
            t.set(HiveName::System, "CurrentControlSet\\Control\\CrashControl", "CrashDumpEnabled", Reg::Dword(0));
        }, "CrashControl: CrashDumpEnabled = 0"),
    ]
}

#[test]
fn each_violation_gives_exactly_its_code_with_its_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let all = variants();
    // Two builders at a time: the machine has two cores and each build is mostly tool time.
    let results: Vec<_> = std::thread::scope(|s| {
        let chunks: Vec<_> = all.chunks(all.len().div_ceil(2)).enumerate().collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|(c, chunk)| {
                let dir = dir.path();
                s.spawn(move || {
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(n, (code, mutate, _))| {
                            let mut t = WindowsTree::clean();
                            mutate(&mut t);
                            let d = dir.join(format!("{c}-{n}-{code}"));
                            check(&d, &t, Layout::Gen1Single).0
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    for ((code, _, evidence), out) in all.iter().zip(&results) {
        let p = problems(out);
        assert!(
            !p.is_empty() && p.iter().all(|f| f.code == *code),
            "{code}: expected only {code}:\n{}",
            show(&p)
        );
        let hit = p
            .iter()
            .find(|f| f.evidence.as_deref().is_some_and(|e| e.contains(evidence)));
        let hit =
            hit.unwrap_or_else(|| panic!("{code}: no finding quotes `{evidence}`:\n{}", show(&p)));
        assert!(
            hit.fix.as_deref().is_some_and(|f| !f.is_empty()),
            "{code}: a fix is named"
        );
        let want = if [
            codes::SERVICES,
            codes::RDP_SETTINGS,
            codes::TIME_UTC,
            codes::TEMP_PATH,
            codes::BCD,
            codes::AGENT_MISSING,
            codes::PAGEFILE,
            codes::CRASH_DUMP,
        ]
        .contains(code)
        {
            Severity::Warning
        } else {
            Severity::Error
        };
        assert_eq!(hit.severity, want, "{code}");
    }
}

#[test]
fn a_bitlocker_os_volume_is_an_error_and_nothing_else_is_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    let built = wt::build_disk(
        &disk,
        &WindowsTree::clean(),
        Layout::Gen1Single,
        &dir.path().join("s"),
    );
    let (_, start, _) = built.partitions[0];
    wt::patch(&disk, start + 3, b"-FVE-FS-");
    let (out, facts) = check_disk(&disk);
    let p = problems(&out);
    assert_eq!(p.len(), 1, "{}", show(&p));
    assert_eq!(
        (p[0].code, p[0].severity),
        (codes::BITLOCKER, Severity::Error)
    );
    assert!(
        p[0].evidence.as_deref().unwrap().contains("volume 1")
            && p[0].evidence.as_deref().unwrap().contains("-FVE-FS-"),
        "{}",
        show(&p)
    );
    assert!(
        p[0].message.contains("no readable volume holds Windows"),
        "{}",
        p[0].message
    );
    assert!(facts.os_volume.is_none());
}

#[test]
fn a_dirty_system_hive_is_read_with_its_log_and_reported() {
    // Before the VM was switched off, RDP was enabled (the newer state, only in the log);
    // the primary file still says it was denied.
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("hives");
    std::fs::create_dir_all(&scratch).unwrap();
    let clean = WindowsTree::clean();
    let mut stale = clean.clone();
    stale.set(
        HiveName::System,
        "CurrentControlSet\\Control\\Terminal Server",
        "fDenyTSConnections",
        Reg::Dword(1),
    );
    wt::make_hive(&scratch.join("old"), &stale.system, &scratch);
    wt::make_hive(&scratch.join("new"), &clean.system, &scratch);
    let (primary, log) = wt::dirty_with_log(
        &std::fs::read(scratch.join("old")).unwrap(),
        &std::fs::read(scratch.join("new")).unwrap(),
    );
    let config = "Windows/System32/config";
    let mut with_log = clean.clone();
    with_log
        .files
        .insert(format!("{config}/SYSTEM"), primary.clone());
    with_log.files.insert(format!("{config}/SYSTEM.LOG1"), log);
    let (out, facts) = check(&dir.path().join("a"), &with_log, Layout::Gen1Single);
    let p = problems(&out);
    assert_eq!(
        p.len(),
        1,
        "only the dirty hive, RDP as the log has it:\n{}",
        show(&p)
    );
    assert_eq!(
        (p[0].code, p[0].severity),
        (codes::HIVE_DIRTY, Severity::Warning)
    );
    let e = p[0].evidence.as_deref().unwrap();
    assert!(
        e.contains("1:/Windows/System32/config/SYSTEM") && e.contains("1 log entries replayed"),
        "{e}"
    );
    let system = facts
        .hives
        .iter()
        .find(|h| h.path.ends_with("SYSTEM"))
        .unwrap();
    assert!(system.dirty && system.log_entries_replayed == 1);

    // Without the log the stale value is all there is: reported, and the hive with it.
    let mut no_log = clean;
    no_log.files.insert(format!("{config}/SYSTEM"), primary);
    let (out, _) = check(&dir.path().join("b"), &no_log, Layout::Gen1Single);
    let mut got: Vec<_> = problems(&out).iter().map(|f| f.code).collect();
    got.sort();
    assert_eq!(
        got,
        [codes::HIVE_DIRTY, codes::RDP_DISABLED],
        "{}",
        show(&problems(&out))
    );
    assert!(show(&problems(&out)).contains("no .LOG1/.LOG2"));
}

#[test]
fn a_disk_without_windows_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    fixtures::guest::build(
        &disk,
        12,
        fixtures::guest::Table::Mbr,
        &[fixtures::guest::Part::new(
            8,
            fixtures::guest::Kind::BasicData,
            fixtures::guest::Content::fs(fixtures::guest::Format::Ntfs, "DATA", None),
        )],
        &dir.path().join("s"),
    );
    let (out, facts) = check_disk(&disk);
    let p = problems(&out);
    assert_eq!(p.len(), 1, "{}", show(&p));
    assert_eq!(
        (p[0].code, p[0].severity),
        (codes::UNREADABLE, Severity::Error)
    );
    assert!(
        p[0].evidence.as_deref().unwrap().contains("1 (NTFS)"),
        "{}",
        show(&p)
    );
    assert!(facts.os.is_none());
}

#[test]
fn the_firewall_check_follows_the_rdp_listener_port() {
    let dir = tempfile::tempdir().unwrap();
    const RDP_TCP: &str = "CurrentControlSet\\Control\\Terminal Server\\WinStations\\RDP-Tcp";
    const FW: &str =
        "CurrentControlSet\\Services\\SharedAccess\\Parameters\\FirewallPolicy\\FirewallRules";
    let mut moved = WindowsTree::clean();
    moved.set(HiveName::System, RDP_TCP, "PortNumber", Reg::Dword(3390));
    let (out, _) = check(&dir.path().join("a"), &moved, Layout::Gen1Single);
    let p = problems(&out);
    let mut got: Vec<_> = p.iter().map(|f| f.code).collect();
    got.sort();
    assert_eq!(
        got,
        [codes::RDP_FIREWALL, codes::RDP_SETTINGS],
        "{}",
        show(&p)
    );
    assert!(show(&p).contains("TCP 3390"), "{}", show(&p));
    // The rule moved with it: only the unusual port is left.
    moved.set(
        HiveName::System,
        FW,
        "RemoteDesktop-UserMode-In-TCP",
        Reg::Sz(wt::RDP_RULE.replace("LPort=3389", "LPort=3390")),
    );
    let (out, _) = check(&dir.path().join("b"), &moved, Layout::Gen1Single);
    let p = problems(&out);
    assert_eq!(p.len(), 1, "{}", show(&p));
    assert_eq!(p[0].code, codes::RDP_SETTINGS);
    assert!(
        p[0].evidence
            .as_deref()
            .unwrap()
            .contains("PortNumber = 3390"),
        "{}",
        show(&p)
    );
}

#[test]
fn a_damaged_system_hive_is_reported_once_not_as_every_value_missing() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = WindowsTree::clean();
    let mut garbage = wt::empty_hive();
    garbage[4096..4100].copy_from_slice(b"XXXX"); // the first hive bin loses its signature
    t.files
        .insert("Windows/System32/config/SYSTEM".into(), garbage);
    let (out, facts) = check(dir.path(), &t, Layout::Gen1Single);
    let p = problems(&out);
    assert_eq!(p.len(), 1, "{}", show(&p));
    assert_eq!(
        (p[0].code, p[0].severity),
        (codes::UNREADABLE, Severity::Error)
    );
    assert!(
        p[0].evidence
            .as_deref()
            .unwrap()
            .contains("1:/Windows/System32/config/SYSTEM"),
        "{}",
        show(&p)
    );
    // SOFTWARE and the kernel image are still read.
    assert_eq!(facts.os.as_ref().unwrap().build, Some(20348));
    assert_eq!(facts.os.as_ref().unwrap().arch.as_deref(), Some("AMD64"));
}
