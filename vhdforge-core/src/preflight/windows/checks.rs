//! Each Windows check: what it reads, what it expects, and the finding it makes
//! (`docs/preflight-windows.md` lists the basis of each one). Every finding carries the
//! registry value or file line it is based on, and the command that fixes it in the guest.

use super::firewall::{self, Profile, ProfileSettings, Rule, Store};
use super::snapshot::HiveView;
use super::tables::{self, codes, paths, START_AUTOMATIC, START_DISABLED};
use super::{Inputs, WindowsFacts, WindowsOs};
use crate::finding::{Code, Severity};
use crate::guest::partition::Generation;
use crate::guest::registry::{Dirty, DirtyReason, Replay, ValueData, ValueType};
use crate::preflight::GuestFinding;

/// Sysprep, as Azure's guide runs it; also what follows any change made for a finding.
const SYSPREP: &str = r"C:\Windows\System32\Sysprep\sysprep.exe /generalize /oobe /shutdown";

fn push(
    out: &mut Vec<GuestFinding>,
    severity: Severity,
    code: Code,
    message: impl Into<String>,
    evidence: String,
    fix: impl Into<String>,
) {
    out.push(GuestFinding::new(
        severity,
        code,
        message,
        Some(evidence),
        Some(fix.into()),
    ));
}

/// `reg add` of a value under `HKLM\<hive>\<path>` (the key is created when missing).
fn reg_add(hive: &str, path: &str, name: &str, ty: &str, data: &str) -> String {
    format!(r#"reg add "HKLM\{hive}\{path}" /v {name} /t {ty} /d {data} /f"#)
}

fn reg_dword(hive: &str, path: &str, name: &str, value: u32) -> String {
    reg_add(hive, path, name, "REG_DWORD", &value.to_string())
}

/// Run every check on what was read.
/// A check whose hive could not be read is skipped: the hive was reported as unreadable
/// once, and every value it holds would otherwise be reported as missing.
pub(super) fn run(i: &Inputs, out: &mut Vec<GuestFinding>, facts: &mut WindowsFacts) {
    let (system, software) = (i.system.loaded, i.software.loaded);
    if software {
        os(i, out, facts);
    }
    if system || i.kernel_machine.is_some() {
        arch(i, out, facts);
    }
    if software || i.state_ini.is_some() {
        generalized(i, out, facts);
    }
    if system || software {
        pending_reboot(i, out);
        roles(i, out);
    }
    if system {
        rdp(i, out);
        rdp_settings(i, out);
        rdp_firewall(i, out);
        san_policy(i, out);
        dhcp_and_cdrom(i, out);
        services(i, out);
        time(i, out);
        temp(i, out);
        agent(i, out);
        pagefile(i, out);
        crash_dump(i, out);
    }
    boot(i, out);
}

/// `guest.windows.hive_dirty` for a hive Windows did not finish writing.
pub(super) fn hive_dirty(shown: &str, d: &Dirty, out: &mut Vec<GuestFinding>) {
    let why = match d.reason {
        DirtyReason::SequencesDiffer { primary, secondary } => {
            format!("primary sequence {primary} ≠ secondary sequence {secondary}")
        }
        DirtyReason::BadChecksum => "the base block checksum is wrong".to_string(),
    };
    let replay = match &d.replay {
        Replay::NoLogs => "no .LOG1/.LOG2 next to it: read as the file has it, which may be older than what Windows last saw".to_string(),
        Replay::Replayed { entries, last_sequence } => {
            format!("{entries} log entries replayed in memory (up to sequence {last_sequence})")
        }
        Replay::NotReplayed(r) => format!("logs not replayed ({r}): values may be stale"),
    };
    push(
        out,
        Severity::Warning,
        codes::HIVE_DIRTY,
        "a registry hive was not closed cleanly (the VM was switched off, saved, or Fast Startup was on)",
        format!("{shown}: {why}; {replay}"),
        "boot the VM and shut it down cleanly (`shutdown /s /t 0`, not a power-off or a saved state), or run Sysprep with /shutdown, then convert again",
    );
}

/// `ImageState` from `State.ini` and its 1-based line. The file is UTF-16LE with a BOM or an
/// 8-bit text; the value may be quoted.
pub(super) fn image_state_from_ini(bytes: &[u8]) -> Option<(usize, String)> {
    let text = if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        let units: Vec<u16> = rest
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        let rest = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
        String::from_utf8_lossy(rest).into_owned()
    };
    let mut in_state = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_state = section.trim().eq_ignore_ascii_case("State");
            continue;
        }
        if !in_state {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim().eq_ignore_ascii_case("ImageState") {
                let v = v.trim().trim_matches('"').trim();
                return Some((n + 1, v.to_string()));
            }
        }
    }
    None
}

fn machine_name(m: u16) -> String {
    match m {
        0x8664 => "AMD64".into(),
        0x014C => "x86".into(),
        0xAA64 => "ARM64".into(),
        0x01C4 => "ARM".into(),
        other => format!("PE machine {other:#06x}"),
    }
}

/// The release a build number stands for (`ProductName` lags: Windows 11 says Windows 10).
fn release(build: u32, server: bool) -> Option<String> {
    let name = if server {
        match build {
            6001..=6003 => "Windows Server 2008",
            7600 | 7601 => "Windows Server 2008 R2",
            9200 => "Windows Server 2012",
            9600 => "Windows Server 2012 R2",
            14393 => "Windows Server 2016",
            17763 => "Windows Server 2019",
            20348 => "Windows Server 2022",
            26100 => "Windows Server 2025",
            b if b >= 10240 => return Some(format!("Windows Server (build {b})")),
            _ => return None,
        }
    } else {
        match build {
            7600 | 7601 => "Windows 7",
            9200 => "Windows 8",
            9600 => "Windows 8.1",
            b if b >= 22000 => "Windows 11",
            b if b >= 10240 => "Windows 10",
            _ => return None,
        }
    };
    Some(name.to_string())
}

/// `guest.windows.os`: product, build, UBR, edition.
fn os(i: &Inputs, out: &mut Vec<GuestFinding>, facts: &mut WindowsFacts) {
    let sw = &i.software;
    let cv = paths::CURRENT_VERSION;
    if !sw.has_key(cv) {
        return;
    }
    let build = sw
        .string(cv, "CurrentBuild")
        .or_else(|| sw.string(cv, "CurrentBuildNumber"))
        .and_then(|b| b.trim().parse::<u32>().ok());
    let installation_type = sw.string(cv, "InstallationType");
    let edition = sw.string(cv, "EditionID");
    let product_name = sw.string(cv, "ProductName");
    let server = match installation_type.as_deref() {
        Some(t) => !t.eq_ignore_ascii_case("Client"),
        None => {
            edition.as_deref().is_some_and(|e| e.starts_with("Server"))
                || product_name
                    .as_deref()
                    .is_some_and(|p| p.contains("Server"))
        }
    };
    let o = WindowsOs {
        release: build.and_then(|b| release(b, server)),
        build,
        ubr: sw.dword(cv, "UBR"),
        edition,
        installation_type,
        display_version: sw.string(cv, "DisplayVersion"),
        product_name,
        arch: None,
    };
    let build_text = match (o.build, o.ubr) {
        (Some(b), Some(u)) => format!("build {b}.{u}"),
        (Some(b), None) => format!("build {b}"),
        _ => "build unknown".into(),
    };
    let message = format!(
        "{} ({build_text}, edition {}, {})",
        o.release
            .as_deref()
            .or(o.product_name.as_deref())
            .unwrap_or("Windows, release unknown"),
        o.edition.as_deref().unwrap_or("unknown"),
        o.installation_type
            .as_deref()
            .unwrap_or("installation type unknown"),
    );
    out.push(GuestFinding::new(
        Severity::Info,
        codes::OS,
        message,
        Some(format!(
            "{}: ProductName = {}",
            sw.key_path(cv),
            o.product_name
                .as_deref()
                .map_or("absent".into(), |p| format!("\"{p}\""))
        )),
        None,
    ));
    facts.os = Some(o);
}

/// `guest.windows.arch`: 64-bit x86 only. The kernel image's PE header decides; without it,
/// `PROCESSOR_ARCHITECTURE`.
fn arch(i: &Inputs, out: &mut Vec<GuestFinding>, facts: &mut WindowsFacts) {
    let env = i
        .system
        .string(paths::ENVIRONMENT, "PROCESSOR_ARCHITECTURE");
    let kernel = i.kernel_machine.map(machine_name);
    let mut evidence = vec![i
        .system
        .evidence(paths::ENVIRONMENT, "PROCESSOR_ARCHITECTURE")];
    evidence.push(match &kernel {
        Some(k) => format!("Windows/System32/ntoskrnl.exe: PE machine {k}"),
        None => "Windows/System32/ntoskrnl.exe: no readable PE header".into(),
    });
    let arch = kernel.clone().or(env.clone());
    facts
        .os
        .get_or_insert_with(WindowsOs::default)
        .arch
        .clone_from(&arch);
    let message = match &arch {
        Some(a) if a.eq_ignore_ascii_case("AMD64") => return,
        Some(a) => format!("the Windows installation is {a}; Azure Marketplace accepts 64-bit x86 (AMD64) images only"),
        None => "the architecture could not be told (no PROCESSOR_ARCHITECTURE, no readable ntoskrnl.exe); Azure Marketplace accepts 64-bit x86 (AMD64) images only".into(),
    };
    push(
        out,
        Severity::Error,
        codes::ARCH,
        message,
        evidence.join("; "),
        "install Windows from 64-bit x86 (x64) media and prepare the image again",
    );
}

/// `guest.windows.not_generalized`: `State.ini` and the registry must both say the image was
/// generalized and sealed to OOBE.
fn generalized(i: &Inputs, out: &mut Vec<GuestFinding>, facts: &mut WindowsFacts) {
    let reg = i.software.string(paths::SETUP_STATE, "ImageState");
    let ini = i.state_ini.as_ref();
    let ini_value = ini.and_then(|(_, v)| v.as_ref().map(|(_, s)| s.clone()));
    facts.image_state = ini_value.clone().or(reg.clone());
    let mut evidence = Vec::new();
    match ini {
        Some((path, Some((line, v)))) => {
            evidence.push(format!("{path} line {line}: ImageState={v}"));
        }
        Some((path, None)) => evidence.push(format!("{path}: no ImageState in a [State] section")),
        None => evidence.push("Windows/Setup/State/State.ini: not found".into()),
    }
    evidence.push(i.software.evidence(paths::SETUP_STATE, "ImageState"));
    let found: Vec<&String> = ini_value.iter().chain(reg.iter()).collect();
    let ok = |s: &String| s.eq_ignore_ascii_case(tables::GENERALIZED);
    if !found.is_empty() && found.iter().all(|s| ok(s)) {
        return;
    }
    let bad = found.iter().find(|s| !ok(s)).map(|s| s.as_str());
    let mut message = match bad {
        None => "no ImageState was found: the image cannot be shown to be generalized".to_string(),
        Some(s) if s.eq_ignore_ascii_case("IMAGE_STATE_COMPLETE") => {
            "the image is specialized (ImageState IMAGE_STATE_COMPLETE: installed and set up, never generalized); Azure deploys a generalized image only after Sysprep /generalize /oobe".to_string()
        }
        Some(s) if s.eq_ignore_ascii_case("IMAGE_STATE_UNDEPLOYABLE") => {
            "Sysprep did not finish (ImageState IMAGE_STATE_UNDEPLOYABLE); the image cannot be deployed".to_string()
        }
        Some(s) => format!("ImageState is {s}; Azure deploys generalized images sealed to OOBE ({})", tables::GENERALIZED),
    };
    if ini_value.is_some()
        && reg.is_some()
        && !ini_value
            .as_ref()
            .zip(reg.as_ref())
            .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
    {
        message += " (State.ini and the registry disagree)";
    }
    push(
        out,
        Severity::Error,
        codes::NOT_GENERALIZED,
        message,
        evidence.join("; "),
        format!("in the guest: delete C:\\Windows\\Panther, run `{SYSPREP}`, and convert the disk without booting it again"),
    );
}

/// `guest.windows.rdp_disabled`: `fDenyTSConnections` must be 0; a policy value overrides
/// the local one.
fn rdp(i: &Inputs, out: &mut Vec<GuestFinding>) {
    let local = i.system.dword(paths::TERMINAL_SERVER, "fDenyTSConnections");
    let policy_set = i
        .software
        .value(paths::TS_POLICY, "fDenyTSConnections")
        .is_some();
    let policy = i.software.dword(paths::TS_POLICY, "fDenyTSConnections");
    let (effective, by_policy) = if policy_set {
        (policy, true)
    } else {
        (local, false)
    };
    if effective == Some(0) {
        return;
    }
    let mut evidence = vec![i
        .system
        .evidence(paths::TERMINAL_SERVER, "fDenyTSConnections")];
    if policy_set || i.software.has_key(paths::TS_POLICY) {
        evidence.push(i.software.evidence(paths::TS_POLICY, "fDenyTSConnections"));
    }
    let (message, fix) = if by_policy {
        (
            "Group Policy denies Remote Desktop connections (the policy value overrides the local setting)",
            format!(
                "remove the Group Policy setting \"Allow users to connect remotely by using Remote Desktop Services\" or set it to Enabled; locally: {}",
                reg_dword("SOFTWARE", paths::TS_POLICY, "fDenyTSConnections", 0)
            ),
        )
    } else if local.is_none()
        && i.system
            .value(paths::TERMINAL_SERVER, "fDenyTSConnections")
            .is_none()
    {
        (
            "fDenyTSConnections is not set, and Windows then denies Remote Desktop connections",
            reg_dword("SYSTEM", paths::TERMINAL_SERVER, "fDenyTSConnections", 0),
        )
    } else {
        (
            "Remote Desktop connections are denied (fDenyTSConnections is not 0); Azure VMs are reached over RDP",
            reg_dword("SYSTEM", paths::TERMINAL_SERVER, "fDenyTSConnections", 0),
        )
    };
    push(
        out,
        Severity::Error,
        codes::RDP_DISABLED,
        message,
        evidence.join("; "),
        fix,
    );
}

/// The RDP listener's values Azure's guide sets.
const RDP_LISTENER: &[(&str, u32)] = &[
    ("PortNumber", 3389),
    ("LanAdapter", 0),
    ("UserAuthentication", 1),
    ("KeepAliveTimeout", 1),
    ("fInheritReconnectSame", 1),
    ("fReconnectSame", 0),
    ("MaxInstanceCount", 0xFFFF_FFFF),
];

/// The RDP policy values Azure's guide sets.
const RDP_POLICY: &[(&str, u32)] = &[
    ("KeepAliveEnable", 1),
    ("KeepAliveInterval", 1),
    ("fDisableAutoReconnect", 0),
];

/// `guest.windows.rdp_settings`: listener and policy values, and no pinned certificate.
fn rdp_settings(i: &Inputs, out: &mut Vec<GuestFinding>) {
    for (view, hive, path, table) in [
        (&i.system, "SYSTEM", paths::RDP_TCP, RDP_LISTENER),
        (&i.software, "SOFTWARE", paths::TS_POLICY, RDP_POLICY),
    ] {
        if !view.loaded {
            continue;
        }
        for &(name, want) in table {
            if view.dword(path, name) == Some(want) {
                continue;
            }
            let message = if name == "PortNumber" {
                "Remote Desktop does not listen on port 3389, which Azure's network rules and the portal's Connect use".to_string()
            } else {
                format!("{name} is not {want} as Azure's preparation guide sets it")
            };
            push(
                out,
                Severity::Warning,
                codes::RDP_SETTINGS,
                message,
                view.evidence(path, name),
                reg_dword(hive, path, name, want),
            );
        }
    }
    if i.system
        .value(paths::RDP_TCP, "SSLCertificateSHA1Hash")
        .is_some()
    {
        push(
            out,
            Severity::Warning,
            codes::RDP_SETTINGS,
            "the RDP listener is pinned to a certificate of this machine; on a new VM it is missing and Remote Desktop fails",
            i.system.evidence(paths::RDP_TCP, "SSLCertificateSHA1Hash"),
            format!(r#"reg delete "HKLM\SYSTEM\{}" /v SSLCertificateSHA1Hash /f"#, paths::RDP_TCP),
        );
    }
}

fn rules(view: &HiveView, path: &str) -> Vec<Rule> {
    view.values(path)
        .iter()
        .filter_map(|v| firewall::parse(v.name(), &v.as_string()?))
        .collect()
}

/// `guest.windows.rdp_firewall`: in every profile where the firewall is on, an effective
/// inbound Allow rule must let TCP to the RDP port in, and no Block rule may stop it.
fn rdp_firewall(i: &Inputs, out: &mut Vec<GuestFinding>) {
    let port = i
        .system
        .dword(paths::RDP_TCP, "PortNumber")
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(3389);
    let local_path = format!("{}\\FirewallRules", paths::FIREWALL);
    let policy_path = format!("{}\\FirewallRules", paths::FIREWALL_POLICY);
    let local = rules(&i.system, &local_path);
    let policy = rules(&i.software, &policy_path);
    let mut failing = Vec::new();
    let mut evidence = Vec::new();
    for p in Profile::ALL {
        let lp = format!("{}\\{}", paths::FIREWALL, p.local_key());
        let pp = format!("{}\\{}", paths::FIREWALL_POLICY, p.policy_key());
        let settings = ProfileSettings {
            local_enabled: i.system.dword(&lp, "EnableFirewall"),
            policy_enabled: i.software.dword(&pp, "EnableFirewall"),
            policy_merge: i.software.dword(&pp, "AllowLocalPolicyMerge"),
        };
        let v = firewall::evaluate(p, &settings, &local, &policy, port);
        if v.rdp_passes() {
            continue;
        }
        failing.push(p.to_string());
        let store = |s: Store| match s {
            Store::Local => format!("local rule in {}", i.system.key_path(&local_path)),
            Store::Policy => format!("policy rule in {}", i.software.key_path(&policy_path)),
        };
        let why = if let Some((s, id)) = &v.blocked_by {
            format!("blocked by {} `{id}`", store(*s))
        } else if v.local_ignored && local.iter().any(|r| r.allows(port, p)) {
            format!(
                "{} makes Windows ignore the local rules, and no policy rule allows TCP {port}",
                i.software.evidence(&pp, "AllowLocalPolicyMerge")
            )
        } else {
            let inactive: Vec<&str> = local
                .iter()
                .chain(&policy)
                .filter(|r| !r.active && r.allows_if_active(port, p))
                .map(|r| r.id.as_str())
                .collect();
            let mut s = format!(
                "no active inbound Allow rule for TCP {port} among {} local and {} policy rules",
                local.len(),
                policy.len()
            );
            if !inactive.is_empty() {
                s += " (disabled: ";
                s += &inactive.join(", ");
                s.push(')');
            }
            s
        };
        evidence.push(format!(
            "{p} profile: firewall on ({}); {why}",
            i.system.evidence(&lp, "EnableFirewall")
        ));
    }
    if failing.is_empty() {
        return;
    }
    push(
        out,
        Severity::Error,
        codes::RDP_FIREWALL,
        format!(
            "the firewall does not let Remote Desktop (TCP {port}) in on the {} profile{}",
            failing.join(", "),
            if failing.len() > 1 { "s" } else { "" }
        ),
        evidence.join("; "),
        "in the guest: `Enable-NetFirewallRule -DisplayGroup 'Remote Desktop'`, remove any rule or Group Policy that blocks TCP 3389, and keep `Set-NetFirewallProfile -Profile Domain,Public,Private -Enabled True`",
    );
}

/// `guest.windows.san_policy`: `SanPolicy` must be 1 (`OnlineAll`) so data disks come online.
fn san_policy(i: &Inputs, out: &mut Vec<GuestFinding>) {
    let v = i.system.dword(paths::PARTMGR, "SanPolicy");
    let what = match v {
        Some(1) => return,
        None => {
            "not set, so Windows uses its edition's default (OfflineShared on Server)".to_string()
        }
        Some(2) => "OfflineShared".into(),
        Some(3) => "OfflineAll".into(),
        Some(4) => "OfflineInternal".into(),
        Some(n) => format!("{n}, not a known policy"),
    };
    push(
        out,
        Severity::Error,
        codes::SAN_POLICY,
        format!("the SAN policy is {what}; Azure needs OnlineAll so attached disks come online"),
        i.system.evidence(paths::PARTMGR, "SanPolicy"),
        "in the guest: `Set-StorageSetting -NewDiskPolicy OnlineAll` (or diskpart: `san policy=onlineall`)",
    );
}

fn has_subkey(view: &HiveView, path: &str, name: &str) -> bool {
    view.subkeys(path)
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
}

/// `guest.windows.pending_reboot`: servicing, Windows Update or file renames wait for a
/// restart that a deployed image would do at first boot.
fn pending_reboot(i: &Inputs, out: &mut Vec<GuestFinding>) {
    let mut found = Vec::new();
    for sub in ["RebootPending", "RebootInProgress", "PackagesPending"] {
        if has_subkey(&i.software, paths::CBS, sub) {
            found.push(format!(
                "{}\\{sub}: key present",
                i.software.key_path(paths::CBS)
            ));
        }
    }
    if has_subkey(&i.software, paths::WU, "RebootRequired") {
        found.push(format!(
            "{}\\RebootRequired: key present",
            i.software.key_path(paths::WU)
        ));
    }
    if i.software
        .dword(paths::UPDATES, "UpdateExeVolatile")
        .is_some_and(|v| v != 0)
    {
        found.push(i.software.evidence(paths::UPDATES, "UpdateExeVolatile"));
    }
    for name in [
        "PendingFileRenameOperations",
        "PendingFileRenameOperations2",
    ] {
        let non_empty = i
            .system
            .value(paths::SESSION_MANAGER, name)
            .is_some_and(|v| match v.data() {
                ValueData::MultiString(l) => l.iter().any(|s| !s.is_empty()),
                _ => !v.raw().iter().all(|&b| b == 0),
            });
        if non_empty {
            found.push(i.system.evidence(paths::SESSION_MANAGER, name));
        }
    }
    if i.pending_xml {
        found.push("Windows/WinSxS/pending.xml: present".into());
    }
    if found.is_empty() {
        return;
    }
    push(
        out,
        Severity::Error,
        codes::PENDING_REBOOT,
        "Windows is waiting for a restart (updates or servicing not finished); Azure's guide requires none pending before Sysprep",
        found.join("; "),
        format!("boot the VM, restart it until Windows Update and servicing report nothing pending, then run `{SYSPREP}` again"),
    );
}

/// `guest.windows.unsupported_role`: roles certification does not support.
fn roles(i: &Inputs, out: &mut Vec<GuestFinding>) {
    for r in tables::UNSUPPORTED_ROLES {
        let evidence = if let Some(svc) = r.service {
            let key = tables::service_key(svc);
            match i.system.dword(&key, "Start") {
                Some(s) if s != START_DISABLED => Some(format!(
                    "{} ({})",
                    i.system.evidence(&key, "Start"),
                    tables::start_name(s)
                )),
                _ => None,
            }
        } else if let Some(c) = r.component {
            let key = format!("{}\\{c}", paths::COMPONENTS);
            (i.software.dword(&key, "InstallState") == Some(1))
                .then(|| i.software.evidence(&key, "InstallState"))
        } else {
            None
        };
        let Some(evidence) = evidence else { continue };
        push(
            out,
            Severity::Error,
            codes::UNSUPPORTED_ROLE,
            format!("the {} role is installed; Azure certification does not support it", r.name),
            evidence,
            format!("in the guest: `Uninstall-WindowsFeature -Name {}`, restart, then run Sysprep again", r.feature),
        );
    }
}

fn start_evidence(view: &HiveView, service: &str) -> String {
    let key = tables::service_key(service);
    match view.dword(&key, "Start") {
        Some(s) => format!(
            "{} ({})",
            view.evidence(&key, "Start"),
            tables::start_name(s)
        ),
        None => view.evidence(&key, "Start"),
    }
}

/// `guest.windows.dhcp_disabled` and `guest.windows.cdrom_disabled`: a new VM gets its
/// address by DHCP, and provisioning reads its settings from a virtual DVD.
fn dhcp_and_cdrom(i: &Inputs, out: &mut Vec<GuestFinding>) {
    let dhcp = i.system.dword(&tables::service_key("Dhcp"), "Start");
    if dhcp == Some(START_DISABLED) || !i.system.has_key(&tables::service_key("Dhcp")) {
        push(
            out,
            Severity::Error,
            codes::DHCP_DISABLED,
            "the DHCP client service is disabled or missing; an Azure VM gets its address by DHCP and would be unreachable",
            start_evidence(&i.system, "Dhcp"),
            "in the guest: `Set-Service -Name Dhcp -StartupType Automatic`",
        );
    }
    if i.system.dword(&tables::service_key("cdrom"), "Start") == Some(START_DISABLED) {
        push(
            out,
            Severity::Error,
            codes::CDROM_DISABLED,
            "the CD/DVD driver is disabled; Azure provisioning reads its settings from a virtual DVD and the VM would stay at OOBE",
            start_evidence(&i.system, "cdrom"),
            reg_dword("SYSTEM", &tables::service_key("cdrom"), "Start", 1),
        );
    }
}

/// `guest.windows.services`: start types Azure's guide sets.
fn services(i: &Inputs, out: &mut Vec<GuestFinding>) {
    for &(name, want) in tables::SERVICE_START_TYPES {
        let got = i.system.dword(&tables::service_key(name), "Start");
        if got == Some(want) || (name == "Dhcp" && (got == Some(START_DISABLED) || got.is_none())) {
            continue; // a disabled or missing DHCP client is its own error
        }
        let message = match got {
            Some(g) => format!(
                "the {name} service starts {}; Azure's guide sets {}",
                tables::start_name(g),
                tables::start_name(want)
            ),
            None => format!("the {name} service is not installed or has no start type; Azure's guide sets it {}", tables::start_name(want)),
        };
        push(
            out,
            Severity::Warning,
            codes::SERVICES,
            message,
            start_evidence(&i.system, name),
            format!(
                "in the guest: `Set-Service -Name {name} -StartupType {}`",
                tables::start_name(want)
            ),
        );
    }
}

/// `guest.windows.time_utc`: the hardware clock in UTC and the time service automatic.
fn time(i: &Inputs, out: &mut Vec<GuestFinding>) {
    if i.system.dword(paths::TIME_ZONE, "RealTimeIsUniversal") != Some(1) {
        push(
            out,
            Severity::Warning,
            codes::TIME_UTC,
            "Windows keeps the hardware clock in local time; Azure's hosts keep it in UTC, so the VM's clock would be off by the time zone",
            i.system.evidence(paths::TIME_ZONE, "RealTimeIsUniversal"),
            reg_dword("SYSTEM", paths::TIME_ZONE, "RealTimeIsUniversal", 1),
        );
    }
    let w32 = tables::service_key("W32Time");
    if i.system.dword(&w32, "Start") != Some(START_AUTOMATIC) {
        push(
            out,
            Severity::Warning,
            codes::TIME_UTC,
            "the Windows Time service is not automatic, so the clock is not kept in sync",
            start_evidence(&i.system, "W32Time"),
            "in the guest: `Set-Service -Name w32time -StartupType Automatic`",
        );
    }
}

/// `guest.windows.temp_path`: `TEMP` and `TMP` are `%SystemRoot%\TEMP` (expandable).
fn temp(i: &Inputs, out: &mut Vec<GuestFinding>) {
    const WANT: &str = r"%SystemRoot%\TEMP";
    for name in ["TEMP", "TMP"] {
        let v = i.system.value(paths::ENVIRONMENT, name);
        let ok = v.is_some_and(|v| {
            v.value_type() == ValueType::EXPAND_SZ
                && v.as_string().is_some_and(|s| s.eq_ignore_ascii_case(WANT))
        });
        if ok {
            continue;
        }
        push(
            out,
            Severity::Warning,
            codes::TEMP_PATH,
            format!(
                "the system {name} variable is not {WANT} (REG_EXPAND_SZ) as Azure's guide sets it"
            ),
            i.system.evidence(paths::ENVIRONMENT, name),
            reg_add(
                "SYSTEM",
                paths::ENVIRONMENT,
                name,
                "REG_EXPAND_SZ",
                &format!("\"{WANT}\""),
            ),
        );
    }
}

/// `guest.windows.bcd`: the boot settings Azure's guide makes (boot status policy, recovery,
/// EMS on the serial console), or that the store could not be read.
fn boot(i: &Inputs, out: &mut Vec<GuestFinding>) {
    let (at, s) = match &i.boot {
        Ok(x) => x,
        Err(why) => {
            let gen2 = if i.generation == Some(Generation::Gen2) {
                " (the EFI system partition is FAT, which this version of vhdforge may not read yet)"
            } else {
                ""
            };
            push(
                out,
                Severity::Warning,
                codes::BCD,
                format!("the BCD store was not read, so the boot settings were not checked{gen2}"),
                why.clone(),
                "check in the guest with `bcdedit /enum all`: bootstatuspolicy IgnoreAllFailures, recoveryenabled No, ems Yes, bootems Yes",
            );
            return;
        }
    };
    let Some(loader) = &s.default_loader else {
        push(
            out,
            Severity::Warning,
            codes::BCD,
            "{bootmgr} names no default boot loader",
            format!("{at}: {{bootmgr}} element 23000003 absent"),
            "in the guest: `bcdedit /default {current}`",
        );
        return;
    };
    let shown = |name: &str, v: Option<String>, from: Option<&String>| match (v, from) {
        (Some(v), Some(f)) => format!("{at}: {name} = {v} (set on {f})"),
        _ => format!("{at}: {name} not set on {loader} or what it inherits"),
    };
    let mut check = |bad: bool, message: &str, evidence: String, fix: &str| {
        if bad {
            push(out, Severity::Warning, codes::BCD, message, evidence, fix);
        }
    };
    let policy = s.boot_status_policy.as_ref();
    check(
        policy.map(|p| p.value) != Some(1),
        "the boot status policy is not IgnoreAllFailures: after an unclean shutdown Azure's VM would stop at the recovery screen",
        shown("bootstatuspolicy (250000e0)", policy.map(|p| p.value.to_string()), policy.map(|p| &p.from)),
        "in the guest: `bcdedit /set {default} bootstatuspolicy IgnoreAllFailures`",
    );
    let rec = s.recovery_enabled.as_ref();
    check(
        rec.is_none_or(|r| r.value),
        "automatic recovery is on: a failed boot would wait at Windows RE, which nobody can reach on Azure",
        shown("recoveryenabled (16000009)", rec.map(|r| r.value.to_string()), rec.map(|r| &r.from)),
        "in the guest: `bcdedit /set {default} recoveryenabled Off`",
    );
    let ems = s.loader_ems.as_ref();
    check(
        ems.is_none_or(|e| !e.value),
        "EMS is off for the default loader: Azure's serial console (SAC) would not work",
        shown("ems (260000b0)", ems.map(|e| e.value.to_string()), ems.map(|e| &e.from)),
        "in the guest: `bcdedit /ems {current} ON` and `bcdedit /emssettings EMSPORT:1 EMSBAUDRATE:115200`",
    );
    let bootems = s.boot_manager_ems.as_ref();
    check(
        bootems.is_none_or(|e| !e.value),
        "EMS is off for the boot manager: the boot menu would not show on Azure's serial console",
        shown(
            "bootems (16000020) of {bootmgr}",
            bootems.map(|e| e.value.to_string()),
            bootems.map(|e| &e.from),
        ),
        "in the guest: `bcdedit /set {bootmgr} bootems yes`",
    );
}

/// `guest.windows.agent_missing`: the Azure VM agent (recommended, needed for extensions
/// and password reset).
fn agent(i: &Inputs, out: &mut Vec<GuestFinding>) {
    if tables::AGENT_SERVICES
        .iter()
        .any(|s| i.system.has_key(&tables::service_key(s)))
    {
        return;
    }
    push(
        out,
        Severity::Warning,
        codes::AGENT_MISSING,
        "the Azure VM agent is not installed: extensions, password reset and the portal's health reporting will not work",
        format!(
            "{}: no {} key",
            i.system.key_path(paths::SERVICES),
            tables::AGENT_SERVICES.join(" or ")
        ),
        "in the guest, before Sysprep: install the Azure VM Agent (`msiexec /i WindowsAzureVmAgent.<version>.msi /quiet`)",
    );
}

/// `guest.windows.pagefile`: Azure's guide puts the page file on the temporary disk `D:`.
fn pagefile(i: &Inputs, out: &mut Vec<GuestFinding>) {
    let Some(v) = i.system.value(paths::MEMORY, "PagingFiles") else {
        return;
    };
    let entries = match v.data() {
        ValueData::MultiString(l) => l,
        ValueData::String(s) => vec![s],
        _ => Vec::new(),
    };
    let off_d: Vec<&String> = entries
        .iter()
        .filter(|e| {
            !e.trim().is_empty() && !e.trim_start().to_ascii_uppercase().starts_with(r"D:\")
        })
        .collect();
    if off_d.is_empty() {
        return;
    }
    push(
        out,
        Severity::Warning,
        codes::PAGEFILE,
        "the page file is not on D:, the VM's temporary disk, as Azure's guide recommends; on the OS disk it costs space and I/O",
        i.system.evidence(paths::MEMORY, "PagingFiles"),
        reg_add("SYSTEM", paths::MEMORY, "PagingFiles", "REG_MULTI_SZ", r#""D:\pagefile.sys 0 0""#),
    );
}

/// `guest.windows.crash_dump`: kernel dumps as Azure's guide sets them.
fn crash_dump(i: &Inputs, out: &mut Vec<GuestFinding>) {
    let p = paths::CRASH_CONTROL;
    for (name, want) in [("CrashDumpEnabled", 2), ("NMICrashDump", 1)] {
        if i.system.dword(p, name) != Some(want) {
            push(
                out,
                Severity::Warning,
                codes::CRASH_DUMP,
                format!("{name} is not {want} as Azure's guide sets it: a crash of the VM would leave no usable dump"),
                i.system.evidence(p, name),
                reg_dword("SYSTEM", p, name, want),
            );
        }
    }
    let dump = i.system.string(p, "DumpFile");
    if !dump.is_some_and(|d| d.eq_ignore_ascii_case(r"%SystemRoot%\MEMORY.DMP")) {
        push(
            out,
            Severity::Warning,
            codes::CRASH_DUMP,
            r"DumpFile is not %SystemRoot%\MEMORY.DMP as Azure's guide sets it",
            i.system.evidence(p, "DumpFile"),
            reg_add(
                "SYSTEM",
                p,
                "DumpFile",
                "REG_EXPAND_SZ",
                r#""%SystemRoot%\MEMORY.DMP""#,
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_ini_in_utf16_and_8_bit_with_quotes() {
        let text = "[State]\r\nImageState=\"IMAGE_STATE_COMPLETE\"\r\n";
        let mut utf16 = vec![0xFF, 0xFE];
        utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(
            image_state_from_ini(&utf16),
            Some((2, "IMAGE_STATE_COMPLETE".into()))
        );
        let plain = "; comment\n[Other]\nImageState=X\n[ state ]\n  imagestate = IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE \n";
        assert_eq!(
            image_state_from_ini(plain.as_bytes()),
            Some((5, tables::GENERALIZED.into())),
            "only the [State] section counts, names case-insensitive"
        );
        assert_eq!(image_state_from_ini(b"[State]\n"), None);
        assert_eq!(
            image_state_from_ini(&[0xFF, 0xFE, 0x41]),
            None,
            "odd UTF-16 length"
        );
    }

    #[test]
    fn releases_come_from_the_build_not_the_product_name() {
        assert_eq!(release(22631, false).as_deref(), Some("Windows 11"));
        assert_eq!(release(19045, false).as_deref(), Some("Windows 10"));
        assert_eq!(release(20348, true).as_deref(), Some("Windows Server 2022"));
        assert_eq!(release(100, true), None);
    }
}
