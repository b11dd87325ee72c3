//! Linux boot checks (`docs/guest-boot.md §3`): the default boot entry's kernel command line
//! sends the console to the serial port Azure reads (`console=ttyS0`, error; boot
//! diagnostics and certification need it) and early messages too (`earlyprintk=ttyS0`,
//! warning), and the default kernel can reach its root disk on Hyper-V: `hv_vmbus` and
//! `hv_storvsc` are in that kernel's initramfs or built into it (error; without them the VM
//! never finds its disk).
//!
//! Each finding names the file and line (or the initramfs) it rests on and the command that
//! fixes it, chosen by the tools the guest actually has (`grubby`, `grub2-mkconfig`,
//! `update-grub`, `dracut`, `update-initramfs`).

use crate::finding::Severity;
use crate::guest::fs::FileSystem;
use crate::guest::linux::boot::{self, BootConfig, Loader};
use crate::guest::linux::initramfs::{self, Initramfs};
use crate::guest::GuestTree;
use crate::preflight::GuestFinding;

/// The drivers a Hyper-V guest needs before its root file system is mounted.
const REQUIRED_DRIVERS: [&str; 2] = ["hv_vmbus", "hv_storvsc"];

/// Run the boot checks on `tree`, appending findings to `out`.
pub fn check_boot(tree: &GuestTree, out: &mut Vec<GuestFinding>) {
    let tools = Tools::probe(tree);
    let cfg = match boot::default_entry(tree) {
        Ok(c) => c,
        Err(e) => {
            out.push(GuestFinding::new(
                Severity::Warning,
                "guest.linux.boot_config",
                format!("the default boot entry could not be determined, so console=ttyS0, earlyprintk and the Hyper-V drivers were not checked: {e}"),
                None,
                Some(tools.regenerate_grub()),
            ));
            return;
        }
    };
    check_cmdline(&cfg, &tools, out);
    check_drivers(tree, &cfg, &tools, out);
}

/// The tools the guest has, to name fixes it can run.
struct Tools {
    grubby: bool,
    update_grub: bool,
    initramfs: InitramfsTool,
}

/// What builds the guest's initramfs.
#[derive(PartialEq, Eq)]
enum InitramfsTool {
    /// RHEL, Fedora, SUSE, Azure Linux.
    Dracut,
    /// Debian, Ubuntu (`update-initramfs`; preferred when both are installed, as Debian
    /// allows dracut installed beside it but still runs initramfs-tools' hooks).
    InitramfsTools,
    /// Neither found.
    Unknown,
}

impl Tools {
    fn probe(fs: &dyn FileSystem) -> Tools {
        let has = |names: &[&str]| {
            names.iter().any(|n| {
                ["/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"]
                    .iter()
                    .any(|d| fs.stat(format!("{d}{n}").as_bytes()).is_ok())
            })
        };
        Tools {
            grubby: has(&["grubby"]),
            update_grub: has(&["update-grub"]),
            initramfs: if has(&["update-initramfs"]) {
                InitramfsTool::InitramfsTools
            } else if has(&["dracut"]) {
                InitramfsTool::Dracut
            } else {
                InitramfsTool::Unknown
            },
        }
    }

    fn regenerate_grub(&self) -> String {
        if self.update_grub {
            "update-grub".into()
        } else {
            "grub2-mkconfig -o /boot/grub2/grub.cfg (on EFI with a full ESP config: -o /boot/efi/EFI/<vendor>/grub.cfg)".into()
        }
    }

    fn add_args(&self, cfg: &BootConfig, args: &str) -> String {
        match cfg.entry.loader {
            Loader::LegacyGrub => format!(
                "add {args} to the kernel line of the default entry in {}",
                cfg.files[0]
            ),
            _ if self.grubby => format!(
                "grubby --update-kernel=ALL --args=\"{args}\" (and add it to GRUB_CMDLINE_LINUX in /etc/default/grub so new kernels keep it)"
            ),
            _ => format!(
                "add {args} to GRUB_CMDLINE_LINUX in /etc/default/grub, then run {}",
                self.regenerate_grub()
            ),
        }
    }

    fn add_drivers(&self, kver: &str, image: &str) -> String {
        match self.initramfs {
            InitramfsTool::Dracut => format!("dracut -f --add-drivers \"hv_vmbus hv_storvsc hv_netvsc\" {image} {kver} (and add_drivers+=\" hv_vmbus hv_storvsc hv_netvsc \" to /etc/dracut.conf.d/hyperv.conf so new kernels keep them)"),
            InitramfsTool::InitramfsTools => format!("printf 'hv_vmbus\\nhv_storvsc\\nhv_netvsc\\n' >> /etc/initramfs-tools/modules && update-initramfs -u -k {kver}"),
            InitramfsTool::Unknown => format!("rebuild {image} with hv_vmbus, hv_storvsc and hv_netvsc included"),
        }
    }
}

fn evidence(cfg: &BootConfig) -> String {
    let (file, line) = &cfg.entry.source;
    let via = if cfg.files.len() > 1 {
        format!(" (read via {})", cfg.files.join(" → "))
    } else {
        String::new()
    };
    format!(
        "{file} line {line}, entry '{}'{via}: {}",
        cfg.entry.title, cfg.entry.cmdline
    )
}

fn has_arg(cmdline: &str, key: &str, value: &str) -> bool {
    cmdline.split_whitespace().any(|a| {
        a.strip_prefix(key)
            .and_then(|v| v.strip_prefix('='))
            .is_some_and(|v| v == value || v.starts_with(&format!("{value},")))
    })
}

fn check_cmdline(cfg: &BootConfig, tools: &Tools, out: &mut Vec<GuestFinding>) {
    let cmdline = &cfg.entry.cmdline;
    if !has_arg(cmdline, "console", "ttyS0") {
        out.push(GuestFinding::new(
            Severity::Error,
            "guest.linux.console",
            "the default kernel command line has no console=ttyS0: Azure's serial console and boot diagnostics stay empty, and certification requires it",
            Some(evidence(cfg)),
            Some(tools.add_args(cfg, "console=ttyS0,115200n8 earlyprintk=ttyS0")),
        ));
    }
    if !has_arg(cmdline, "earlyprintk", "ttyS0") {
        out.push(GuestFinding::new(
            Severity::Warning,
            "guest.linux.earlyprintk",
            "the default kernel command line has no earlyprintk=ttyS0: a kernel that fails early prints nothing to the serial log Azure keeps",
            Some(evidence(cfg)),
            Some(tools.add_args(cfg, "earlyprintk=ttyS0")),
        ));
    }
}

/// Where the default kernel's drivers can come from: its `modules.builtin` on the root and
/// the initramfs images its boot entry loads.
struct DriverSources {
    kver: String,
    builtin: std::collections::BTreeSet<String>,
    builtin_file: Option<String>,
    images: Vec<(String, Initramfs)>,
    /// Images named but missing or unreadable, as messages.
    problems: Vec<String>,
}

fn driver_sources(tree: &GuestTree, cfg: &BootConfig) -> DriverSources {
    let kver = cfg.entry.kernel_release().unwrap_or_default();
    // Built in: the root's modules.builtin for that kernel.
    let mut builtin = std::collections::BTreeSet::new();
    let mut builtin_file = None;
    for dir in ["/lib/modules", "/usr/lib/modules"] {
        let p = format!("{dir}/{kver}/modules.builtin");
        if let Ok(Some(t)) = boot::read_small(tree, p.as_bytes(), initramfs::MAX_BUILTIN_BYTES) {
            builtin = initramfs::parse_modules_builtin(&String::from_utf8_lossy(&t));
            builtin_file = Some(p);
            break;
        }
    }
    let mut images: Vec<(String, Initramfs)> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for name in &cfg.entry.initrds {
        let Some(path) = boot::guest_path(tree, name) else {
            problems.push(format!(
                "initrd {name} named by the boot entry does not exist"
            ));
            continue;
        };
        let shown = String::from_utf8_lossy(&path).into_owned();
        match tree
            .open(&path)
            .and_then(|mut f| initramfs::read_initramfs(f.as_mut()))
        {
            Ok(i) => images.push((shown, i)),
            Err(e) => problems.push(format!("{shown}: {e}")),
        }
    }
    DriverSources {
        kver,
        builtin,
        builtin_file,
        images,
        problems,
    }
}

fn check_drivers(tree: &GuestTree, cfg: &BootConfig, tools: &Tools, out: &mut Vec<GuestFinding>) {
    let DriverSources {
        kver,
        builtin,
        builtin_file,
        images,
        problems,
    } = driver_sources(tree, cfg);
    let present = |m: &str| {
        builtin.contains(m)
            || images
                .iter()
                .any(|(_, i)| i.modules.contains_key(m) || i.builtin.contains(m))
    };
    let missing: Vec<&str> = REQUIRED_DRIVERS
        .iter()
        .copied()
        .filter(|m| !present(m))
        .collect();
    if missing.is_empty() {
        return;
    }
    let image_name = images
        .first()
        .map(|(p, _)| p.clone())
        .or_else(|| cfg.entry.initrds.first().cloned())
        .unwrap_or_else(|| format!("/boot/initrd.img-{kver}"));
    let fix = Some(tools.add_drivers(&kver, &image_name));
    // An image vhdforge could not read may hold the drivers: say so rather than call them
    // missing.
    let unreadable: Vec<String> = images
        .iter()
        .filter_map(|(p, i)| {
            i.unreadable.as_ref().map(|m| {
                format!(
                    "{p}: member at byte {} is {} compressed, which vhdforge does not decode",
                    m.offset, m.compression
                )
            })
        })
        .chain(
            problems
                .iter()
                .filter(|p| !p.contains("does not exist"))
                .cloned(),
        )
        .collect();
    let mut ev: Vec<String> = images
        .iter()
        .map(|(p, i)| {
            format!(
                "{p}: {} modules in {} member(s) ({})",
                i.modules.len(),
                i.members.len(),
                i.members
                    .iter()
                    .map(|m| m.compression.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    ev.extend(problems.iter().cloned());
    if cfg.entry.initrds.is_empty() {
        ev.push(format!(
            "the default entry '{}' loads no initrd",
            cfg.entry.title
        ));
    }
    ev.push(match &builtin_file {
        Some(f) => format!("{f} does not list them"),
        None => format!("no /lib/modules/{kver}/modules.builtin"),
    });
    if !unreadable.is_empty() {
        out.push(GuestFinding::new(
            Severity::Warning,
            "guest.linux.initramfs",
            format!(
                "{} could not be confirmed: the default kernel's initramfs could not be read completely",
                missing.join(" and ")
            ),
            Some(unreadable.join("; ")),
            fix,
        ));
        return;
    }
    out.push(GuestFinding::new(
        Severity::Error,
        "guest.linux.hv_drivers",
        format!(
            "{} neither in the default kernel's initramfs nor built into kernel {kver}: on Hyper-V/Azure the kernel cannot reach its root disk and the VM does not boot",
            missing.join(" and ") + if missing.len() == 1 { " is" } else { " are" }
        ),
        Some(ev.join("; ")),
        fix,
    ));
}

#[cfg(test)]
mod tests {
    use super::has_arg;

    #[test]
    fn console_argument_forms() {
        // The value alone or with serial settings counts; another port or a prefix does not.
        assert!(has_arg("ro console=ttyS0", "console", "ttyS0"));
        assert!(has_arg(
            "console=tty1 console=ttyS0,115200n8",
            "console",
            "ttyS0"
        ));
        assert!(!has_arg("console=ttyS01", "console", "ttyS0"));
        assert!(!has_arg("console=tty1", "console", "ttyS0"));
        assert!(!has_arg("xconsole=ttyS0", "console", "ttyS0"));
        assert!(has_arg("earlyprintk=ttyS0,115200", "earlyprintk", "ttyS0"));
    }
}
