//! The Azure Linux Agent (waagent): installed, enabled at boot, recent enough for
//! certification (2.2.41) — and the state a provisioned VM leaves behind that deprovisioning
//! removes (agent and cloud-init state, DHCP leases, the agent's log).

use crate::finding::Severity;
use crate::guest::fs::FileType;
use crate::preflight::context::shown;
use crate::preflight::linux::os::version_key;
use crate::preflight::{codes, Ctx};

/// Oldest agent certification accepts.
pub const MIN_VERSION: &str = "2.2.41";

const BINARIES: &[&[u8]] = &[
    b"/usr/sbin/waagent",
    b"/usr/bin/waagent",
    b"/usr/local/sbin/waagent",
];
const UNIT_DIRS: &[&[u8]] = &[
    b"/etc/systemd/system",
    b"/usr/lib/systemd/system",
    b"/lib/systemd/system",
];
/// Python library roots the agent's package is installed under.
const PY_ROOTS: &[&[u8]] = &[b"/usr/lib", b"/usr/lib64", b"/usr/local/lib"];

/// The agent's unit name: Debian and Ubuntu package it as `walinuxagent`, everyone else
/// (RHEL family, SUSE, Mariner) as `waagent`.
fn unit_names(id: Option<&str>) -> [&'static str; 2] {
    match id {
        Some("debian" | "ubuntu") => ["walinuxagent.service", "waagent.service"],
        _ => ["waagent.service", "walinuxagent.service"],
    }
}

/// Installed, enabled, version; then leftovers.
pub fn check(ctx: &mut Ctx<'_>, id: Option<&str>) {
    installed(ctx, id);
    leftovers(ctx);
}

fn installed(ctx: &mut Ctx<'_>, id: Option<&str>) {
    let binary = BINARIES.iter().copied().find(|p| ctx.is_file(p));
    let units = unit_names(id);
    let unit = units.iter().find_map(|u| {
        UNIT_DIRS.iter().find_map(|d| {
            let p = [*d, b"/", u.as_bytes()].concat();
            ctx.lstat(&p).map(|_| (p, *u))
        })
    });
    let sysv = ctx.is_file(b"/etc/init.d/waagent") || ctx.is_file(b"/etc/rc.d/init.d/waagent");
    let Some(binary) = binary else {
        let ev = format!(
            "volume {}: none of {}",
            ctx.volume_of(b"/usr"),
            BINARIES
                .iter()
                .map(|b| shown(b))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let pkg = if units[0].starts_with("walinux") {
            "walinuxagent"
        } else {
            "WALinuxAgent"
        };
        ctx.push(
            Severity::Error,
            codes::AGENT_MISSING,
            format!("the Azure Linux Agent is not installed; certification requires it (≥ {MIN_VERSION}) and it reports provisioning and extensions to Azure"),
            ev,
            format!("in the guest: install the `{pkg}` package and enable its service (`systemctl enable {}`)", units[0]),
        );
        return;
    };
    enabled(
        ctx,
        unit.as_ref().map(|(p, u)| (p.as_slice(), *u)),
        sysv,
        units[0],
    );
    version(ctx, binary);
}

fn enabled(ctx: &mut Ctx<'_>, unit: Option<(&[u8], &str)>, sysv: bool, default_unit: &str) {
    let Some((unit_path, name)) = unit else {
        if sysv {
            // SysV init (CentOS 6): enabled when a start link is in runlevel 3.
            for dir in [&b"/etc/rc.d/rc3.d"[..], b"/etc/rc3.d"] {
                if ctx
                    .list(dir)
                    .iter()
                    .any(|e| e.name.starts_with(b"S") && e.name.ends_with(b"waagent"))
                {
                    return;
                }
            }
            let ev = format!("{}: no S??waagent link", ctx.at(b"/etc/rc.d/rc3.d"));
            ctx.push(Severity::Error, codes::AGENT_DISABLED, "the Azure Linux Agent is installed but not started at boot (no runlevel 3 start link)", ev, "in the guest: `chkconfig waagent on`");
            return;
        }
        let ev = format!("{}: no {default_unit} in /etc/systemd/system, /usr/lib/systemd/system or /lib/systemd/system", ctx.at(b"/usr/lib/systemd/system"));
        ctx.push(
            Severity::Error,
            codes::AGENT_DISABLED,
            "the agent's program is installed but no service unit starts it",
            ev,
            "in the guest: reinstall the agent package, then `systemctl enable` its service",
        );
        return;
    };
    // A unit in /etc/systemd/system pointing at /dev/null is masked: never started.
    if let Some(st) = ctx.lstat(unit_path) {
        if st.link_target.as_deref() == Some(b"/dev/null") {
            let ev = format!("{} -> /dev/null", ctx.at(unit_path));
            ctx.push(
                Severity::Error,
                codes::AGENT_DISABLED,
                format!("{name} is masked, so the agent never starts"),
                ev,
                format!("in the guest: `systemctl unmask {name} && systemctl enable {name}`"),
            );
            return;
        }
    }
    let wants = [
        "multi-user.target.wants",
        "default.target.wants",
        "graphical.target.wants",
    ];
    let enabled = wants.iter().any(|w| {
        let p = format!("/etc/systemd/system/{w}/{name}");
        ctx.lstat(p.as_bytes()).is_some()
    });
    if !enabled {
        let p = format!("/etc/systemd/system/multi-user.target.wants/{name}");
        let ev = format!(
            "{}: absent (unit {} exists)",
            ctx.at(p.as_bytes()),
            shown(unit_path)
        );
        ctx.push(
            Severity::Error,
            codes::AGENT_DISABLED,
            format!("{name} is installed but not enabled: the agent would not start, and provisioning would never be reported to Azure"),
            ev,
            format!("in the guest: `systemctl enable {name}`"),
        );
    }
}

/// The agent's version: `AGENT_VERSION` in its `version.py`, or the version in its
/// egg-info/dist-info directory name.
fn find_version(ctx: &mut Ctx<'_>) -> Option<(String, Vec<u8>)> {
    for root in PY_ROOTS {
        for py in ctx.list(root) {
            if !py.name.starts_with(b"python") || py.file_type == FileType::Regular {
                continue;
            }
            for sub in [&b"site-packages"[..], b"dist-packages"] {
                let base = [*root, b"/", &py.name, b"/", sub].concat();
                let vp = [&base[..], b"/azurelinuxagent/common/version.py"].concat();
                if let Some(text) = ctx.read(&vp) {
                    for l in text.split(|&b| b == b'\n') {
                        let l = String::from_utf8_lossy(l);
                        if let Some(rest) = l.trim().strip_prefix("AGENT_VERSION") {
                            let v = rest
                                .trim_start()
                                .trim_start_matches('=')
                                .trim()
                                .trim_matches(['\'', '"']);
                            if !v.is_empty() && v.len() < 32 {
                                return Some((v.to_string(), vp));
                            }
                        }
                    }
                }
                for e in ctx.list(&base) {
                    let n = String::from_utf8_lossy(&e.name).into_owned();
                    if let Some(rest) = n.strip_prefix("WALinuxAgent-") {
                        let v: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_digit() || *c == '.')
                            .collect();
                        let v = v.trim_end_matches('.').to_string();
                        if !v.is_empty() {
                            let p = [&base[..], b"/", &e.name].concat();
                            return Some((v, p));
                        }
                    }
                }
            }
        }
    }
    None
}

fn version(ctx: &mut Ctx<'_>, binary: &[u8]) {
    match find_version(ctx) {
        Some((v, path)) if version_key(&v) < version_key(MIN_VERSION) => {
            let ev = format!("{}: {v}", ctx.at(&path));
            ctx.push(
                Severity::Error,
                codes::AGENT_VERSION,
                format!("the Azure Linux Agent is {v}; certification requires {MIN_VERSION} or later"),
                ev,
                "in the guest: update the agent package (`yum update WALinuxAgent` / `apt-get install --only-upgrade walinuxagent`)",
            );
        }
        Some(_) => {}
        None => {
            let ev = format!("{}: no azurelinuxagent/common/version.py or WALinuxAgent-*-info under /usr/lib*/python*/", ctx.at(binary));
            ctx.push(
                Severity::Warning,
                codes::AGENT_VERSION,
                format!("the agent's version could not be found; certification requires {MIN_VERSION} or later"),
                ev,
                "in the guest: `waagent --version` shows it; install the distribution's agent package",
            );
        }
    }
}

/// What a provisioned VM leaves that `waagent -deprovision` / `cloud-init clean` remove.
fn leftovers(ctx: &mut Ctx<'_>) {
    let mut found: Vec<String> = Vec::new();
    for p in [
        &b"/var/lib/waagent/provisioned"[..],
        b"/var/log/waagent.log",
        b"/var/lib/waagent/ovf-env.xml",
        b"/var/lib/cloud/instance",
    ] {
        if ctx.lstat(p).is_some() {
            found.push(shown(p));
        }
    }
    if !ctx.list(b"/var/lib/cloud/instances").is_empty() {
        found.push("/var/lib/cloud/instances/*".into());
    }
    for dir in [
        &b"/var/lib/dhclient"[..],
        b"/var/lib/dhcp",
        b"/var/lib/NetworkManager",
    ] {
        for e in ctx.list(dir) {
            if e.file_type == FileType::Regular && e.name.windows(5).any(|w| w == b"lease") {
                found.push(format!("{}/{}", shown(dir), shown(&e.name)));
            }
        }
    }
    if found.is_empty() {
        return;
    }
    let ev = format!("volume {}: {}", ctx.volume_of(b"/var"), found.join(", "));
    ctx.push(
        Severity::Warning,
        codes::NOT_DEPROVISIONED,
        "the image still holds state from a VM it ran as (agent or cloud-init instance data, DHCP leases, the agent's log): it was not deprovisioned",
        ev,
        "in the guest, as the last step: `waagent -force -deprovision+user` (and `cloud-init clean --logs` when cloud-init provisions), then shut down",
    );
}
