//! The fixed knowledge the Windows checks rely on, in one place: finding codes, the service
//! start types Azure's preparation guide sets, the roles certification rejects and the
//! registry keys read (`docs/preflight-windows.md` lists where each entry comes from).

use crate::finding::Code;

/// The stable finding codes of the Windows checks (README, "Windows preflight").
pub mod codes {
    use super::Code;
    /// `ImageState` is not `IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE`.
    pub const NOT_GENERALIZED: Code = Code::new("guest.windows.not_generalized");
    /// A volume of the OS disk is BitLocker-encrypted.
    pub const BITLOCKER: Code = Code::new("guest.windows.bitlocker");
    /// `fDenyTSConnections` is not 0, locally or by policy.
    pub const RDP_DISABLED: Code = Code::new("guest.windows.rdp_disabled");
    /// No effective inbound rule lets TCP to the RDP port in, or a rule blocks it.
    pub const RDP_FIREWALL: Code = Code::new("guest.windows.rdp_firewall");
    /// `SanPolicy` is not 1 (`OnlineAll`).
    pub const SAN_POLICY: Code = Code::new("guest.windows.san_policy");
    /// A restart is pending (servicing, updates, file renames).
    pub const PENDING_REBOOT: Code = Code::new("guest.windows.pending_reboot");
    /// Not 64-bit x86, or the architecture cannot be told.
    pub const ARCH: Code = Code::new("guest.windows.arch");
    /// A role or feature certification does not support is installed and enabled.
    pub const UNSUPPORTED_ROLE: Code = Code::new("guest.windows.unsupported_role");
    /// The DHCP client service is disabled.
    pub const DHCP_DISABLED: Code = Code::new("guest.windows.dhcp_disabled");
    /// The CD/DVD driver is disabled.
    pub const CDROM_DISABLED: Code = Code::new("guest.windows.cdrom_disabled");
    /// A file or hive the checks need is missing or damaged.
    pub const UNREADABLE: Code = Code::new("guest.windows.unreadable");
    /// A service's start type differs from the one Azure's guide sets.
    pub const SERVICES: Code = Code::new("guest.windows.services");
    /// An RDP listener or policy setting differs from Azure's guide.
    pub const RDP_SETTINGS: Code = Code::new("guest.windows.rdp_settings");
    /// The hardware clock is not UTC, or the time service is not automatic.
    pub const TIME_UTC: Code = Code::new("guest.windows.time_utc");
    /// `TEMP`/`TMP` are not `%SystemRoot%\TEMP`.
    pub const TEMP_PATH: Code = Code::new("guest.windows.temp_path");
    /// A boot setting differs from Azure's guide, or the BCD store was not read.
    pub const BCD: Code = Code::new("guest.windows.bcd");
    /// The Azure VM agent is not installed.
    pub const AGENT_MISSING: Code = Code::new("guest.windows.agent_missing");
    /// The page file is not on the temporary disk (`D:`).
    pub const PAGEFILE: Code = Code::new("guest.windows.pagefile");
    /// Kernel crash dumps are not set as Azure's guide sets them.
    pub const CRASH_DUMP: Code = Code::new("guest.windows.crash_dump");
    /// A hive was not closed cleanly (its logs were replayed in memory where possible).
    pub const HIVE_DIRTY: Code = Code::new("guest.windows.hive_dirty");
    /// The Windows product, build and edition found.
    pub const OS: Code = Code::new("guest.windows.os");
}

/// A service `Start` value.
pub const START_AUTOMATIC: u32 = 2;
/// A service `Start` value.
pub const START_MANUAL: u32 = 3;
/// A service `Start` value.
pub const START_DISABLED: u32 = 4;

/// The name Windows' service manager shows for a `Start` value.
pub fn start_name(start: u32) -> &'static str {
    match start {
        0 => "Boot",
        1 => "System",
        2 => "Automatic",
        3 => "Manual",
        4 => "Disabled",
        _ => "not a start type",
    }
}

/// Services Azure's preparation guide sets, with the start type it sets. `Dhcp` is here for
/// the start type; a disabled one is [`codes::DHCP_DISABLED`] instead.
pub const SERVICE_START_TYPES: &[(&str, u32)] = &[
    ("BFE", START_AUTOMATIC),
    ("Dhcp", START_AUTOMATIC),
    ("Dnscache", START_AUTOMATIC),
    ("IKEEXT", START_AUTOMATIC),
    ("iphlpsvc", START_AUTOMATIC),
    ("nsi", START_AUTOMATIC),
    ("mpssvc", START_AUTOMATIC),
    ("RemoteRegistry", START_AUTOMATIC),
    ("Netlogon", START_MANUAL),
    ("Netman", START_MANUAL),
    ("TermService", START_MANUAL),
];

/// A role or feature certification rejects, and how it shows in the registry.
pub struct Role {
    /// The role as certification names it.
    pub name: &'static str,
    /// The service key whose presence with `Start` ≠ 4 means it is installed.
    pub service: Option<&'static str>,
    /// The Server Manager component whose `InstallState = 1` means it is installed, for
    /// roles without a service of their own.
    pub component: Option<&'static str>,
    /// `Uninstall-WindowsFeature -Name` argument.
    pub feature: &'static str,
}

/// Certification's list of unsupported roles (DHCP *Server*, not the DHCP client).
pub const UNSUPPORTED_ROLES: &[Role] = &[
    Role {
        name: "Hyper-V",
        service: Some("vmms"),
        component: None,
        feature: "Hyper-V",
    },
    Role {
        name: "Failover Clustering",
        service: Some("ClusSvc"),
        component: None,
        feature: "Failover-Clustering",
    },
    Role {
        name: "DHCP Server",
        service: Some("DHCPServer"),
        component: None,
        feature: "DHCP",
    },
    Role {
        name: "Windows Deployment Services",
        service: Some("WDSServer"),
        component: None,
        feature: "WDS",
    },
    Role {
        name: "Remote Access",
        service: Some("RemoteAccess"),
        component: None,
        feature: "RemoteAccess",
    },
    Role {
        name: "Rights Management Services",
        service: None,
        component: Some("ADRMS"),
        feature: "ADRMS",
    },
    Role {
        name: "iSNS Server",
        service: None,
        component: Some("ISNS"),
        feature: "ISNS",
    },
    Role {
        name: "Multipath I/O",
        service: Some("mpio"),
        component: None,
        feature: "Multipath-IO",
    },
    Role {
        name: "Network Load Balancing",
        service: Some("WLBS"),
        component: None,
        feature: "NLB",
    },
    Role {
        name: "Peer Name Resolution Protocol",
        service: Some("PNRPsvc"),
        component: None,
        feature: "PNRP",
    },
    Role {
        name: "SNMP",
        service: Some("SNMP"),
        component: None,
        feature: "SNMP-Service",
    },
    Role {
        name: "WINS",
        service: Some("WINS"),
        component: None,
        feature: "WINS",
    },
    Role {
        name: "Wireless LAN",
        service: Some("WlanSvc"),
        component: None,
        feature: "Wireless-Networking",
    },
];

/// The Azure VM agent's services (either means it is installed).
pub const AGENT_SERVICES: &[&str] = &["WindowsAzureGuestAgent", "RdAgent"];

/// `ImageState` of a generalized image sealed to OOBE: the only one Azure deploys as a
/// generalized image.
pub const GENERALIZED: &str = "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE";

/// Registry paths (`CurrentControlSet` resolved when read).
pub mod paths {
    /// `fDenyTSConnections`.
    pub const TERMINAL_SERVER: &str = "CurrentControlSet\\Control\\Terminal Server";
    /// The RDP listener.
    pub const RDP_TCP: &str = "CurrentControlSet\\Control\\Terminal Server\\WinStations\\RDP-Tcp";
    /// `SanPolicy`.
    pub const PARTMGR: &str = "CurrentControlSet\\Services\\partmgr\\Parameters";
    /// `RealTimeIsUniversal`.
    pub const TIME_ZONE: &str = "CurrentControlSet\\Control\\TimeZoneInformation";
    /// `PendingFileRenameOperations`.
    pub const SESSION_MANAGER: &str = "CurrentControlSet\\Control\\Session Manager";
    /// `TEMP`, `TMP`, `PROCESSOR_ARCHITECTURE`.
    pub const ENVIRONMENT: &str = "CurrentControlSet\\Control\\Session Manager\\Environment";
    /// `PagingFiles`.
    pub const MEMORY: &str = "CurrentControlSet\\Control\\Session Manager\\Memory Management";
    /// `CrashDumpEnabled`, `DumpFile`, `NMICrashDump`.
    pub const CRASH_CONTROL: &str = "CurrentControlSet\\Control\\CrashControl";
    /// The local firewall store.
    pub const FIREWALL: &str =
        "CurrentControlSet\\Services\\SharedAccess\\Parameters\\FirewallPolicy";
    /// `Services\<name>`.
    pub const SERVICES: &str = "CurrentControlSet\\Services";
    /// RDP Group Policy.
    pub const TS_POLICY: &str = "Policies\\Microsoft\\Windows NT\\Terminal Services";
    /// Firewall Group Policy.
    pub const FIREWALL_POLICY: &str = "Policies\\Microsoft\\WindowsFirewall";
    /// Servicing: `RebootPending`, `RebootInProgress`, `PackagesPending` subkeys.
    pub const CBS: &str = "Microsoft\\Windows\\CurrentVersion\\Component Based Servicing";
    /// Windows Update: `RebootRequired` subkey.
    pub const WU: &str = "Microsoft\\Windows\\CurrentVersion\\WindowsUpdate\\Auto Update";
    /// `UpdateExeVolatile`.
    pub const UPDATES: &str = "Microsoft\\Updates";
    /// `ImageState`.
    pub const SETUP_STATE: &str = "Microsoft\\Windows\\CurrentVersion\\Setup\\State";
    /// Product name, build, edition.
    pub const CURRENT_VERSION: &str = "Microsoft\\Windows NT\\CurrentVersion";
    /// Server Manager's component cache.
    pub const COMPONENTS: &str = "Microsoft\\ServerManager\\ServicingStorage\\ServerComponentCache";
}

/// Services whose keys SYSTEM is asked for.
fn services() -> impl Iterator<Item = &'static str> {
    SERVICE_START_TYPES
        .iter()
        .map(|&(n, _)| n)
        .chain(UNSUPPORTED_ROLES.iter().filter_map(|r| r.service))
        .chain(AGENT_SERVICES.iter().copied())
        .chain(["cdrom", "W32Time"])
}

/// `Services\<name>`.
pub fn service_key(name: &str) -> String {
    format!("{}\\{name}", paths::SERVICES)
}

/// Every SYSTEM key the checks read.
pub fn system_keys() -> Vec<String> {
    let mut k: Vec<String> = [
        paths::TERMINAL_SERVER,
        paths::RDP_TCP,
        paths::PARTMGR,
        paths::TIME_ZONE,
        paths::SESSION_MANAGER,
        paths::ENVIRONMENT,
        paths::MEMORY,
        paths::CRASH_CONTROL,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    k.push(format!("{}\\FirewallRules", paths::FIREWALL));
    for p in super::firewall::Profile::ALL {
        k.push(format!("{}\\{}", paths::FIREWALL, p.local_key()));
    }
    k.extend(services().map(service_key));
    k
}

/// Every SOFTWARE key the checks read.
pub fn software_keys() -> Vec<String> {
    let mut k: Vec<String> = [
        paths::TS_POLICY,
        paths::CBS,
        paths::WU,
        paths::UPDATES,
        paths::SETUP_STATE,
        paths::CURRENT_VERSION,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    k.push(format!("{}\\FirewallRules", paths::FIREWALL_POLICY));
    for p in super::firewall::Profile::ALL {
        k.push(format!("{}\\{}", paths::FIREWALL_POLICY, p.policy_key()));
    }
    for r in UNSUPPORTED_ROLES {
        if let Some(c) = r.component {
            k.push(format!("{}\\{c}", paths::COMPONENTS));
        }
    }
    k
}
