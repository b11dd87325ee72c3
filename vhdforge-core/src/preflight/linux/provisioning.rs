//! Who provisions the VM (`docs/preflight-linux.md` "Provisioning"): the Azure Linux
//! Agent's `/etc/waagent.conf` names it (`Provisioning.Agent`, or the older
//! `Provisioning.Enabled`/`Provisioning.UseCloudInit`), and when it is cloud-init, cloud-init
//! must be installed, enabled, allowed to use the Azure datasource, and able to parse its
//! configuration. Exactly one of the two must provision: with none, a VM made from the image
//! never gets its user, keys or host name; with both, they race to create the user and to
//! report the VM ready.

use crate::finding::{Code, Severity};
use crate::guest::fs::FileType;
use crate::preflight::context::{config_lines, shown};
use crate::preflight::Ctx;

/// Nothing provisions, or both the agent and cloud-init do, or the named provisioner
/// cannot run.
pub const PROVISIONING: Code = Code::new("guest.linux.provisioning");
/// A `waagent.conf` setting that works against the chosen provisioner.
pub const WAAGENT_CONF: Code = Code::new("guest.linux.waagent_conf");
/// cloud-init cannot use the Azure datasource or cannot read part of its configuration.
pub const CLOUD_INIT: Code = Code::new("guest.linux.cloud_init");

const CONF: &[u8] = b"/etc/waagent.conf";
const AGENT_BINARIES: &[&[u8]] = &[
    b"/usr/sbin/waagent",
    b"/usr/bin/waagent",
    b"/usr/local/sbin/waagent",
];
/// cloud-init's boot stages; any one enabled runs the rest (24.x merged them into
/// `cloud-init-main.service`).
const CLOUD_INIT_UNITS: &[&str] = &[
    "cloud-init-local.service",
    "cloud-init.service",
    "cloud-init-main.service",
];
/// Targets whose wants directories enable cloud-init: its own target (pulled in by its
/// systemd generator) on current releases, `multi-user.target` on older ones.
const CLOUD_INIT_WANTS: &[&str] = &["cloud-init.target.wants", "multi-user.target.wants"];

/// Who `waagent.conf` says provisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioner {
    /// `auto`: cloud-init when it is installed and enabled, else the agent.
    Auto,
    /// The agent itself.
    Agent,
    /// cloud-init.
    CloudInit,
    /// Nobody (`disabled`, or `Provisioning.Enabled=n`): for specialized images only.
    Disabled,
    /// A value the agent does not know.
    Unknown,
}

/// One `Key=Value` of `waagent.conf`, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key as written.
    pub key: String,
    /// The value, trimmed.
    pub value: String,
    /// 1-based line number.
    pub line: usize,
    /// The whole line.
    pub text: Vec<u8>,
}

/// The settings of `waagent.conf`, the last of each key winning as in the agent's parser.
pub fn parse_conf(text: &[u8]) -> Vec<Setting> {
    let mut out: Vec<Setting> = Vec::new();
    for (n, l) in config_lines(text) {
        let s = String::from_utf8_lossy(l);
        let Some((k, v)) = s.split_once('=') else {
            continue;
        };
        let key = k.trim().to_string();
        let value = v.trim().trim_matches('"').to_string();
        out.retain(|x| x.key != key);
        out.push(Setting {
            key,
            value,
            line: n,
            text: l.to_vec(),
        });
        // Bounded: a config has a few dozen keys.
        if out.len() >= 1024 {
            break;
        }
    }
    out
}

fn get<'s>(conf: &'s [Setting], key: &str) -> Option<&'s Setting> {
    conf.iter().find(|s| s.key == key)
}

fn yes(s: Option<&Setting>) -> Option<bool> {
    s.map(|s| {
        matches!(
            s.value.to_ascii_lowercase().as_str(),
            "y" | "yes" | "true" | "1"
        )
    })
}

/// The provisioner the settings name.
pub fn provisioner(conf: &[Setting]) -> (Provisioner, Option<&Setting>) {
    if let Some(s) = get(conf, "Provisioning.Agent") {
        let p = match s.value.to_ascii_lowercase().as_str() {
            "auto" => Provisioner::Auto,
            "waagent" => Provisioner::Agent,
            "cloud-init" => Provisioner::CloudInit,
            "disabled" => Provisioner::Disabled,
            _ => Provisioner::Unknown,
        };
        return (p, Some(s));
    }
    // Agents before 2.2.4x: Provisioning.Enabled (default y) and Provisioning.UseCloudInit.
    let enabled = get(conf, "Provisioning.Enabled");
    if yes(enabled) == Some(false) {
        let cloud = get(conf, "Provisioning.UseCloudInit");
        if yes(cloud) == Some(true) {
            return (Provisioner::CloudInit, cloud);
        }
        return (Provisioner::Disabled, enabled);
    }
    (Provisioner::Auto, None)
}

/// What the guest's cloud-init is: installed, enabled (and by what), or switched off.
struct CloudInit {
    installed: bool,
    /// The wants link that enables it.
    enabled_by: Option<Vec<u8>>,
    /// `/etc/cloud/cloud-init.disabled`, which stops it whatever is enabled.
    disabled_marker: bool,
}

impl CloudInit {
    fn probe(ctx: &Ctx<'_>) -> CloudInit {
        let installed = [&b"/usr/bin/cloud-init"[..], b"/bin/cloud-init"]
            .iter()
            .any(|p| ctx.is_file(p));
        let enabled_by = CLOUD_INIT_WANTS.iter().find_map(|w| {
            CLOUD_INIT_UNITS.iter().find_map(|u| {
                let p = format!("/etc/systemd/system/{w}/{u}").into_bytes();
                ctx.lstat(&p).map(|_| p)
            })
        });
        CloudInit {
            installed,
            enabled_by,
            disabled_marker: ctx.lstat(b"/etc/cloud/cloud-init.disabled").is_some(),
        }
    }

    fn runs(&self) -> bool {
        self.installed && self.enabled_by.is_some() && !self.disabled_marker
    }

    /// Why it would not run, as evidence.
    fn why_not(&self, ctx: &Ctx<'_>) -> String {
        if !self.installed {
            format!("{}: absent", ctx.at(b"/usr/bin/cloud-init"))
        } else if self.disabled_marker {
            format!("{}: present", ctx.at(b"/etc/cloud/cloud-init.disabled"))
        } else {
            format!(
                "{}: no {} link",
                ctx.at(b"/etc/systemd/system/cloud-init.target.wants"),
                CLOUD_INIT_UNITS.join(" / ")
            )
        }
    }
}

/// waagent.conf against cloud-init, then cloud-init's own configuration.
pub fn check(ctx: &mut Ctx<'_>) {
    let agent = AGENT_BINARIES.iter().any(|p| ctx.is_file(p));
    let cloud = CloudInit::probe(ctx);
    let conf = ctx.read(CONF).map(|t| parse_conf(&t)).unwrap_or_default();
    // No agent: cloud-init alone provisions (it reports ready itself); agent.rs reports the
    // missing agent.
    let effective = if agent {
        let (p, setting) = provisioner(&conf);
        agent_conf(ctx, p, setting, &cloud)
    } else if cloud.runs() {
        Provisioner::CloudInit
    } else {
        Provisioner::Disabled
    };
    if effective == Provisioner::CloudInit {
        if let Some(s) =
            get(&conf, "ResourceDisk.EnableSwap").filter(|s| yes(Some(s)) == Some(true))
        {
            let ev = ctx.at_line(CONF, s.line, &s.text);
            ctx.push(
                Severity::Warning,
                WAAGENT_CONF,
                "the agent is told to put swap on the resource disk while cloud-init provisions: cloud-init sets the resource disk up itself (mounted at /mnt), and Azure's cloud-init guidance has swap configured through cloud-init instead",
                ev,
                "in the guest: set ResourceDisk.EnableSwap=n in /etc/waagent.conf (configure swap with cloud-init's mounts/swap settings if needed)",
            );
        }
    }
    if agent {
        if let Some(s) = get(&conf, "Logs.Verbose").filter(|s| yes(Some(s)) == Some(true)) {
            let ev = ctx.at_line(CONF, s.line, &s.text);
            ctx.push(
                Severity::Info,
                WAAGENT_CONF,
                "the agent's verbose logging is on: a debugging setting that makes /var/log/waagent.log grow quickly on every VM made from the image",
                ev,
                "in the guest: set Logs.Verbose=n in /etc/waagent.conf",
            );
        }
    }
    if cloud.runs() {
        datasources(ctx);
    }
}

/// The provisioning findings of an installed agent; returns who effectively provisions.
fn agent_conf(
    ctx: &mut Ctx<'_>,
    p: Provisioner,
    setting: Option<&Setting>,
    cloud: &CloudInit,
) -> Provisioner {
    let ev = |ctx: &Ctx<'_>| match setting {
        Some(s) => ctx.at_line(CONF, s.line, &s.text),
        None => format!("{}: no Provisioning.Agent (default auto)", ctx.at(CONF)),
    };
    match p {
        Provisioner::Auto => {
            if cloud.runs() {
                Provisioner::CloudInit
            } else {
                Provisioner::Agent
            }
        }
        Provisioner::Agent => {
            if cloud.runs() {
                let e = format!(
                    "{}; cloud-init enabled by {}",
                    ev(ctx),
                    shown(cloud.enabled_by.as_deref().unwrap_or_default())
                );
                ctx.push(
                    Severity::Warning,
                    PROVISIONING,
                    "both the agent (Provisioning.Agent=waagent) and cloud-init would provision: they race to create the user, set the host name and report the VM ready",
                    e,
                    "in the guest: choose one: Provisioning.Agent=cloud-init (or auto) in /etc/waagent.conf, or `systemctl disable cloud-init-local cloud-init cloud-config cloud-final`",
                );
            }
            Provisioner::Agent
        }
        Provisioner::CloudInit => {
            if !cloud.runs() {
                let e = format!("{}; {}", ev(ctx), cloud.why_not(ctx));
                ctx.push(
                    Severity::Error,
                    PROVISIONING,
                    "the agent leaves provisioning to cloud-init, but cloud-init would not run: a VM made from the image never gets its user or SSH keys, and Azure reports the deployment as timed out",
                    e,
                    "in the guest: install and enable cloud-init (`systemctl enable cloud-init-local cloud-init cloud-config cloud-final`, remove /etc/cloud/cloud-init.disabled), or set Provisioning.Agent=auto",
                );
            }
            Provisioner::CloudInit
        }
        Provisioner::Disabled => {
            if cloud.runs() {
                // cloud-init provisions on its own; the agent only runs extensions.
                return Provisioner::CloudInit;
            }
            let e = format!("{}; {}", ev(ctx), cloud.why_not(ctx));
            ctx.push(
                Severity::Error,
                PROVISIONING,
                "provisioning is disabled and cloud-init would not run: nothing creates the user, installs SSH keys or sets the host name on a VM made from the image (only right for a specialized image, never for a generalized or Marketplace one)",
                e,
                "in the guest: set Provisioning.Agent=auto in /etc/waagent.conf (or install and enable cloud-init)",
            );
            Provisioner::Disabled
        }
        Provisioner::Unknown => {
            let e = ev(ctx);
            ctx.push(
                Severity::Warning,
                PROVISIONING,
                "Provisioning.Agent has a value the agent does not know (auto, waagent, cloud-init or disabled)",
                e,
                "in the guest: set Provisioning.Agent=auto in /etc/waagent.conf",
            );
            Provisioner::Unknown
        }
    }
}

/// A `datasource_list`: (line number, names, whether it spans lines, the line).
type DatasourceList = (usize, Vec<String>, bool, Vec<u8>);

/// The last top-level `datasource_list` of a cloud-init file, as cloud-init would read it.
fn parse_datasource_list(text: &[u8]) -> Option<DatasourceList> {
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    let mut found = None;
    for (i, l) in lines.iter().enumerate() {
        let Some(rest) = l.strip_prefix(b"datasource_list:") else {
            continue;
        };
        let rest = String::from_utf8_lossy(rest);
        let rest = rest.split('#').next().unwrap_or("").trim().to_string();
        let mut names = Vec::new();
        let mut multi = false;
        if let Some(inner) = rest.strip_prefix('[') {
            let mut body = inner.to_string();
            let mut j = i;
            while !body.contains(']') && j + 1 < lines.len() && j - i < 64 {
                j += 1;
                multi = true;
                body.push_str(&String::from_utf8_lossy(lines[j]));
            }
            let body = body.split(']').next().unwrap_or("");
            names.extend(
                body.split(',')
                    .map(|x| x.trim().trim_matches(['\'', '"']).to_string()),
            );
        } else if rest.is_empty() {
            // A block list: the indented `- Name` lines that follow.
            multi = true;
            for next in lines.iter().skip(i + 1).take(64) {
                let t = String::from_utf8_lossy(next);
                let t = t.trim();
                let Some(item) = t.strip_prefix('-') else {
                    if t.is_empty() || t.starts_with('#') {
                        continue;
                    }
                    break;
                };
                names.push(item.trim().trim_matches(['\'', '"']).to_string());
            }
        } else {
            names.push(rest.trim_matches(['\'', '"']).to_string());
        }
        names.retain(|n| !n.is_empty());
        found = Some((i + 1, names, multi, l.to_vec()));
    }
    found
}

/// cloud-init's configuration: the files it merges, in its order (cloud.cfg, then
/// cloud.cfg.d/*.cfg sorted, later overriding earlier).
fn datasources(ctx: &mut Ctx<'_>) {
    let mut files = vec![b"/etc/cloud/cloud.cfg".to_vec()];
    files.extend(
        ctx.list(b"/etc/cloud/cloud.cfg.d")
            .into_iter()
            .filter(|e| e.file_type != FileType::Directory && e.name.ends_with(b".cfg"))
            .map(|e| [&b"/etc/cloud/cloud.cfg.d/"[..], &e.name].concat()),
    );
    // (file, line number, names, line) of the last datasource_list set.
    let mut last: Option<(Vec<u8>, DatasourceList)> = None;
    for path in files {
        let Some(text) = ctx.read(&path) else {
            continue;
        };
        if let Some((n, l)) = text.split(|&b| b == b'\n').enumerate().find(|(_, l)| {
            l.iter()
                .take_while(|b| b.is_ascii_whitespace())
                .any(|&b| b == b'\t')
        }) {
            // at_line trims the indentation, which is the point here: say it.
            let ev = format!("{} (indented with a tab)", ctx.at_line(&path, n + 1, l));
            ctx.push(
                Severity::Warning,
                CLOUD_INIT,
                "a cloud-init configuration file is indented with a tab, which YAML forbids: cloud-init cannot parse the file and ignores every setting in it",
                ev,
                format!("in the guest: indent {} with spaces, then `cloud-init schema --system`", shown(&path)),
            );
            continue;
        }
        if let Some((n, names, multi, line)) = parse_datasource_list(&text) {
            if multi {
                let ev = ctx.at_line(&path, n, &line);
                ctx.push(
                    Severity::Warning,
                    CLOUD_INIT,
                    "datasource_list spans several lines: cloud-init's ds-identify reads only a one-line list, so at boot it may pick other datasources or disable cloud-init",
                    ev,
                    "in the guest: write it on one line, e.g. `datasource_list: [ Azure ]`",
                );
            }
            last = Some((path, (n, names, multi, line)));
        }
    }
    let Some((path, (n, names, _, line))) = last else {
        // Unset: cloud-init's built-in list, which includes Azure.
        return;
    };
    if !names.iter().any(|x| x.eq_ignore_ascii_case("azure")) {
        let ev = ctx.at_line(&path, n, &line);
        ctx.push(
            Severity::Error,
            CLOUD_INIT,
            format!(
                "cloud-init may only use the datasources {}: on Azure it would not read the provisioning data, so a VM made from the image gets no user or SSH keys",
                if names.is_empty() { "(none)".to_string() } else { names.join(", ") }
            ),
            ev,
            format!("in the guest: set `datasource_list: [ Azure ]` in {} (or remove the line)", shown(&path)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_keeps_the_last_value_and_reads_the_old_keys() {
        let c = parse_conf(b"# c\nProvisioning.Agent=waagent\nProvisioning.Agent = cloud-init \n");
        assert_eq!(provisioner(&c).0, Provisioner::CloudInit);
        assert_eq!(provisioner(&c).1.unwrap().line, 3);
        // Old agents: Enabled=n with UseCloudInit=y is cloud-init; Enabled=n alone is none.
        let old = parse_conf(b"Provisioning.Enabled=n\nProvisioning.UseCloudInit=y\n");
        assert_eq!(provisioner(&old).0, Provisioner::CloudInit);
        let off = parse_conf(b"Provisioning.Enabled=n\n");
        assert_eq!(provisioner(&off).0, Provisioner::Disabled);
        assert_eq!(provisioner(&[]).0, Provisioner::Auto);
        let odd = parse_conf(b"Provisioning.Agent=chef\n");
        assert_eq!(provisioner(&odd).0, Provisioner::Unknown);
    }

    #[test]
    fn datasource_lists_in_each_yaml_form() {
        // One line, quoted or not.
        let (n, names, multi, _) =
            parse_datasource_list(b"a: 1\ndatasource_list: [ 'Azure', None ] # x\n").unwrap();
        assert_eq!(
            (n, names, multi),
            (2, vec!["Azure".into(), "None".into()], false)
        );
        // A flow list broken over lines.
        let (_, names, multi, _) =
            parse_datasource_list(b"datasource_list: [ Ec2,\n  None ]\n").unwrap();
        assert_eq!((names, multi), (vec!["Ec2".into(), "None".into()], true));
        // A block list.
        let (_, names, multi, _) =
            parse_datasource_list(b"datasource_list:\n  - NoCloud\n  - None\nother: 1\n").unwrap();
        assert_eq!(
            (names, multi),
            (vec!["NoCloud".into(), "None".into()], true)
        );
        // Indented (under another key) or commented: not the top-level setting.
        assert!(parse_datasource_list(
            b"x:\n  datasource_list: [ Ec2 ]\n# datasource_list: [ Ec2 ]\n"
        )
        .is_none());
    }
}
