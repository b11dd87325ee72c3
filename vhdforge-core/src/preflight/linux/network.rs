//! Networking as Azure needs it — DHCP on the first interface, no MAC address baked in (a
//! VM made from the image has a new NIC) — in each distribution family's format: ifcfg,
//! `NetworkManager` keyfiles, netplan, `/etc/network/interfaces`, and udev's persistent-net
//! rules and their generator, Accelerated Networking's `NetworkManager` exclusion (RHEL 8+);
//! and kernel modules blacklisted in `modprobe.d` that provisioning needs.

use crate::finding::Severity;
use crate::guest::fs::FileType;
use crate::preflight::context::{config_lines, shown};
use crate::preflight::{codes, Ctx};

const MODPROBE_DIRS: &[&[u8]] = &[
    b"/etc/modprobe.d",
    b"/lib/modprobe.d",
    b"/usr/lib/modprobe.d",
];

/// Network configuration, persistent-net rules, modprobe blacklists.
pub fn check(ctx: &mut Ctx<'_>, id: Option<&str>, version: Option<&str>) {
    modprobe(ctx);
    ifcfg(ctx);
    keyfiles(ctx);
    netplan(ctx);
    interfaces(ctx);
    persistent_net(ctx);
    accelerated_networking(ctx, id, version);
}

/// Files of `dir` whose names end with `suffix`, sorted.
fn files(ctx: &mut Ctx<'_>, dir: &[u8], suffix: &[u8]) -> Vec<Vec<u8>> {
    ctx.list(dir)
        .into_iter()
        .filter(|e| e.file_type != FileType::Directory && e.name.ends_with(suffix))
        .map(|e| [dir, b"/", &e.name].concat())
        .collect()
}

fn network(ctx: &mut Ctx<'_>, path: &[u8], line: usize, text: &[u8], message: &str, fix: &str) {
    let ev = ctx.at_line(path, line, text);
    ctx.push(Severity::Warning, codes::NETWORK, message, ev, fix);
}

/// `blacklist udf` or `install udf /bin/true` (and the same for vfat): the provisioning
/// ISO Azure attaches is UDF, and the ESP is vfat.
fn modprobe(ctx: &mut Ctx<'_>) {
    for dir in MODPROBE_DIRS {
        for path in files(ctx, dir, b".conf") {
            let Some(text) = ctx.read(&path) else {
                continue;
            };
            for (n, l) in config_lines(&text) {
                let w: Vec<&[u8]> = l
                    .split(u8::is_ascii_whitespace)
                    .filter(|x| !x.is_empty())
                    .collect();
                let module = match w.as_slice() {
                    [b"blacklist", m, ..] => *m,
                    [b"install", m, cmd, ..]
                        if cmd.ends_with(b"/true") || cmd.ends_with(b"/false") =>
                    {
                        *m
                    }
                    _ => continue,
                };
                if module != b"udf" && module != b"vfat" {
                    continue;
                }
                let m = shown(module);
                let why = if m == "udf" {
                    "Azure provisions through a UDF-formatted virtual DVD, so the agent or cloud-init cannot read its settings"
                } else {
                    "the EFI system partition and the provisioning media need vfat; Gen2 boots and provisioning fail"
                };
                let ev = ctx.at_line(&path, n, l);
                ctx.push(
                    Severity::Error,
                    codes::UDF_DISABLED,
                    format!("the {m} module is disabled: {why} (CIS hardening often does this)"),
                    ev,
                    format!(
                        "in the guest: delete that line from {} (keep the rest of the hardening)",
                        shown(&path)
                    ),
                );
            }
        }
    }
}

fn ifcfg(ctx: &mut Ctx<'_>) {
    const PATH: &[u8] = b"/etc/sysconfig/network-scripts/ifcfg-eth0";
    let Some(text) = ctx.read(PATH) else { return };
    for (n, l) in config_lines(&text) {
        let s = String::from_utf8_lossy(l);
        let Some((k, v)) = s.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches(['"', '\'']).to_ascii_lowercase();
        match k.trim() {
            "BOOTPROTO" if v != "dhcp" => network(ctx, PATH, n, l, "eth0 does not use DHCP: Azure gives the VM its address by DHCP, a static one leaves it unreachable", "in the guest: set BOOTPROTO=dhcp in /etc/sysconfig/network-scripts/ifcfg-eth0"),
            "HWADDR" | "MACADDR" => network(ctx, PATH, n, l, "eth0 is bound to a MAC address: a VM made from the image has a new NIC, which this configuration would not match", "in the guest: delete the HWADDR= line (and UUID=) from ifcfg-eth0"),
            _ => {}
        }
    }
}

fn keyfiles(ctx: &mut Ctx<'_>) {
    for path in files(
        ctx,
        b"/etc/NetworkManager/system-connections",
        b".nmconnection",
    ) {
        let Some(text) = ctx.read(&path) else {
            continue;
        };
        let mut section = Vec::new();
        for (n, l) in config_lines(&text) {
            if l.starts_with(b"[") {
                section = l.to_vec();
                continue;
            }
            if section == b"[ipv4]"
                && l.starts_with(b"method=")
                && l != b"method=auto"
                && l != b"method=disabled"
            {
                network(ctx, &path, n, l, "a NetworkManager connection uses a static IPv4 address: Azure gives the VM its address by DHCP", "in the guest: `nmcli connection modify <name> ipv4.method auto`");
            }
            if l.starts_with(b"mac-address=") && l.len() > b"mac-address=".len() {
                network(ctx, &path, n, l, "a NetworkManager connection is bound to a MAC address that a new VM's NIC will not have", "in the guest: `nmcli connection modify <name> 802-3-ethernet.mac-address ''`");
            }
        }
    }
}

fn netplan(ctx: &mut Ctx<'_>) {
    for path in files(ctx, b"/etc/netplan", b".yaml") {
        let Some(text) = ctx.read(&path) else {
            continue;
        };
        for (n, l) in config_lines(&text) {
            let s = String::from_utf8_lossy(l).to_ascii_lowercase();
            let s = s.trim_start_matches('-').trim();
            if let Some(v) = s.strip_prefix("dhcp4:") {
                if matches!(v.trim(), "false" | "no" | "off" | "n") {
                    network(ctx, &path, n, l, "netplan turns DHCP off: Azure gives the VM its address by DHCP", "in the guest: set `dhcp4: true` for the first interface in the netplan file, then `netplan generate`");
                }
            } else if s.starts_with("macaddress:") {
                network(ctx, &path, n, l, "netplan matches or sets a MAC address that a new VM's NIC will not have", "in the guest: remove the macaddress line (cloud-init writes a fresh netplan on first boot)");
            }
        }
    }
}

fn interfaces(ctx: &mut Ctx<'_>) {
    let mut paths = vec![b"/etc/network/interfaces".to_vec()];
    paths.extend(
        ctx.list(b"/etc/network/interfaces.d")
            .into_iter()
            .filter(|e| e.file_type != FileType::Directory)
            .map(|e| [&b"/etc/network/interfaces.d/"[..], &e.name].concat()),
    );
    for path in paths {
        let Some(text) = ctx.read(&path) else {
            continue;
        };
        for (n, l) in config_lines(&text) {
            let w: Vec<&[u8]> = l
                .split(u8::is_ascii_whitespace)
                .filter(|x| !x.is_empty())
                .collect();
            match w.as_slice() {
                [b"iface", name, b"inet", b"static", ..] if *name != b"lo" => network(ctx, &path, n, l, "an interface has a static IPv4 address: Azure gives the VM its address by DHCP", "in the guest: change the line to `iface eth0 inet dhcp`"),
                [b"hwaddress", ..] => network(ctx, &path, n, l, "an interface sets a MAC address a new VM's NIC will not have", "in the guest: delete the hwaddress line"),
                _ => {}
            }
        }
    }
}

/// udev's persistent-net rules pin `eth0` to the MAC address of the NIC the image was built
/// on; a VM's new NIC then becomes `eth1`, which nothing configures. The rules file is
/// written by the generator rule `75-persistent-net-generator.rules` (udev before systemd
/// 209: `CentOS` 6/7, RHEL 6/7), which would write a new one on the first VM made from the
/// image unless `/etc/udev/rules.d` overrides it with a link to `/dev/null`.
fn persistent_net(ctx: &mut Ctx<'_>) {
    const PATH: &[u8] = b"/etc/udev/rules.d/70-persistent-net.rules";
    const GENERATOR: &str = "75-persistent-net-generator.rules";
    if let Some(text) = ctx.read(PATH) {
        // Evidence: the first rule that names a MAC address, else the first rule.
        let mut rules = config_lines(&text);
        let first = rules.next();
        let with_mac =
            config_lines(&text).find(|(_, l)| l.windows(15).any(|w| w == b"ATTR{address}=="));
        if let Some((n, l)) = with_mac.or(first) {
            network(ctx, PATH, n, l, "udev's persistent-net rules name interfaces by the MAC addresses of the machine the image was built on; a VM's NIC would not be eth0", "in the guest: `rm -f /etc/udev/rules.d/70-persistent-net.rules` (CentOS 6/7: also `ln -sf /dev/null /etc/udev/rules.d/75-persistent-net-generator.rules`)");
        }
    }
    let shipped = [&b"/lib/udev/rules.d/"[..], b"/usr/lib/udev/rules.d/"]
        .iter()
        .map(|d| [*d, GENERATOR.as_bytes()].concat())
        .find(|p| ctx.is_file(p));
    let Some(shipped) = shipped else { return };
    let local = [&b"/etc/udev/rules.d/"[..], GENERATOR.as_bytes()].concat();
    let masked = ctx
        .lstat(&local)
        .is_some_and(|s| s.link_target.as_deref() == Some(b"/dev/null"));
    if !masked {
        let ev = format!(
            "{}: present; {}: {}",
            ctx.at(&shipped),
            shown(&local),
            if ctx.lstat(&local).is_some() {
                "not a link to /dev/null"
            } else {
                "absent"
            }
        );
        ctx.push(Severity::Warning, codes::NETWORK, "udev's persistent-net generator is active: the first VM made from the image writes 70-persistent-net.rules for its NIC, and an image captured from it names the next VM's NIC eth1", ev, format!("in the guest: `ln -sf /dev/null /etc/udev/rules.d/{GENERATOR}`"));
    }
}

/// RHEL 8 and later with `NetworkManager`: Accelerated Networking gives the VM a second,
/// SR-IOV interface (a `mlx4`/`mlx5` virtual function) bonded under the synthetic NIC by the
/// kernel; `NetworkManager` must leave it alone, which Azure's RHEL guidance does with a
/// udev rule and a `NetworkManager` configuration file.
fn accelerated_networking(ctx: &mut Ctx<'_>, id: Option<&str>, version: Option<&str>) {
    const RULE: &[u8] = b"/etc/udev/rules.d/68-azure-sriov-nm-unmanaged.rules";
    const NM_CONF: &[u8] = b"/etc/NetworkManager/conf.d/99-azure-unmanaged-devices.conf";
    let rhel_like = matches!(
        id,
        Some("rhel" | "centos" | "almalinux" | "rocky" | "ol" | "fedora")
    );
    let major: u32 = version
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let threshold = if id == Some("fedora") { 28 } else { 8 };
    if !rhel_like || major < threshold {
        return;
    }
    if !["/usr/sbin/NetworkManager", "/sbin/NetworkManager"]
        .iter()
        .any(|p| ctx.is_file(p.as_bytes()))
    {
        return;
    }
    let missing: Vec<String> = [RULE, NM_CONF]
        .into_iter()
        .filter(|p| ctx.lstat(p).is_none())
        .map(shown)
        .collect();
    if missing.len() == 2 {
        let ev = format!(
            "volume {}: absent: {}",
            ctx.volume_of(b"/etc"),
            missing.join(", ")
        );
        ctx.push(
            Severity::Warning,
            codes::NETWORK,
            "NetworkManager would manage the Accelerated Networking (SR-IOV) interface: it gives that interface its own DHCP lease and routes, and the VM can lose connectivity when Accelerated Networking is on",
            ev,
            "in the guest: create /etc/udev/rules.d/68-azure-sriov-nm-unmanaged.rules with `SUBSYSTEM==\"net\", DRIVERS==\"hv_pci\", ACTION==\"add\", ENV{NM_UNMANAGED}=\"1\"`",
        );
    }
}
