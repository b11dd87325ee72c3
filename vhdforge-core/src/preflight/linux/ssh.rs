//! `sshd_config` as sshd reads it — `Include` with globs (files in sorted order, relative
//! names under `/etc/ssh`), `Match` blocks (conditional: they do not set the global value),
//! and the first value of a keyword winning — plus host keys left in the image, and whether
//! the SSH server is installed and started at boot (a Linux VM on Azure is reached, and
//! certified, over SSH).

use crate::finding::{Code, Severity};
use crate::guest::fs::FileType;
use crate::preflight::context::shown;
use crate::preflight::{codes, Ctx};

/// How deep `Include`s nest before the rest is ignored (sshd itself allows 16).
const MAX_DEPTH: usize = 16;
/// Most config files read through `Include`s.
const MAX_FILES: usize = 128;
/// Most memory the parsed directives may take (each counts its text, its file's path and
/// its own size). Each file is read up to 1 MiB, but a file that includes itself, or 128
/// files of one-letter lines under a long path, made hundreds of millions of bytes of
/// directives (several GiB) from 128 MiB of text; real configurations take a few KiB.
const MAX_DIRECTIVE_BYTES: usize = 16 << 20;

/// One keyword line of the effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Keyword, lower case.
    pub key: String,
    /// The rest of the line.
    pub value: String,
    /// The file it is in.
    pub path: Vec<u8>,
    /// 1-based line number.
    pub line: usize,
    /// Inside a `Match` block (applies only to matching connections).
    pub in_match: bool,
}

/// No SSH server, or one that does not start at boot.
pub const SSHD: Code = Code::new("guest.linux.sshd");

/// sshd's unit: `sshd.service` on the RHEL family and SUSE, `ssh.service` on Debian and
/// Ubuntu (whose 22.10+ may start it by socket activation instead).
const SSHD_UNITS: &[&str] = &["sshd.service", "ssh.service", "sshd.socket", "ssh.socket"];
const SSHD_WANTS: &[&str] = &[
    "multi-user.target.wants",
    "sockets.target.wants",
    "default.target.wants",
    "graphical.target.wants",
];

/// sshd installed, and enabled (a wants link of its unit or socket, not masked) or started
/// by `SysV` init.
fn server_enabled(ctx: &mut Ctx<'_>) {
    let binary = [&b"/usr/sbin/sshd"[..], b"/sbin/sshd"]
        .into_iter()
        .any(|p| ctx.is_file(p));
    if !binary {
        let ev = format!("{}: absent", ctx.at(b"/usr/sbin/sshd"));
        ctx.push(
            Severity::Error,
            SSHD,
            "no SSH server is installed: a Linux VM on Azure is reached over SSH, and certification connects with it",
            ev,
            "in the guest: install openssh-server (`dnf install openssh-server` / `apt-get install openssh-server`) and enable it",
        );
        return;
    }
    if ctx.is_file(b"/etc/init.d/sshd") || ctx.is_file(b"/etc/rc.d/init.d/sshd") {
        // SysV init (CentOS 6): the package enables it in runlevel 3 itself.
        if ctx.list(b"/etc/systemd/system").is_empty() {
            return;
        }
    }
    for unit in SSHD_UNITS {
        let p = format!("/etc/systemd/system/{unit}");
        if ctx
            .lstat(p.as_bytes())
            .is_some_and(|s| s.link_target.as_deref() == Some(b"/dev/null"))
        {
            let ev = format!("{} -> /dev/null", ctx.at(p.as_bytes()));
            ctx.push(
                Severity::Error,
                SSHD,
                format!(
                    "{unit} is masked, so the SSH server never starts and the VM cannot be reached"
                ),
                ev,
                format!("in the guest: `systemctl unmask {unit} && systemctl enable {unit}`"),
            );
            return;
        }
    }
    let enabled = SSHD_WANTS.iter().any(|w| {
        SSHD_UNITS.iter().any(|u| {
            ctx.lstat(format!("/etc/systemd/system/{w}/{u}").as_bytes())
                .is_some()
        })
    });
    if !enabled {
        let ev = format!(
            "{}: no sshd.service, ssh.service or ssh(d).socket link",
            ctx.at(b"/etc/systemd/system/multi-user.target.wants")
        );
        ctx.push(
            Severity::Error,
            SSHD,
            "the SSH server is installed but not enabled: it would not start, and neither you nor certification could log in",
            ev,
            "in the guest: `systemctl enable sshd` (Debian/Ubuntu: `systemctl enable ssh`)",
        );
    }
}

/// The configuration as an ordered list of directives, `Include`s expanded in place.
pub fn read_config(ctx: &mut Ctx<'_>) -> Option<Vec<Directive>> {
    if !ctx.is_file(b"/etc/ssh/sshd_config") {
        return None;
    }
    let mut out = Vec::new();
    let mut budget = Budget {
        files: 0,
        bytes: 0,
        over: None,
    };
    read_file(
        ctx,
        b"/etc/ssh/sshd_config",
        false,
        0,
        &mut budget,
        &mut out,
    );
    if let Some((path, line)) = budget.over {
        let ev = format!("{} line {line}", ctx.at(&path));
        ctx.push(
            Severity::Warning,
            codes::UNREADABLE,
            format!(
                "the SSH server's configuration (with its Includes) is larger than the {} MiB vhdforge reads; the checks used only what came before this line",
                MAX_DIRECTIVE_BYTES >> 20
            ),
            ev,
            "in the guest: check sshd_config and its Include files (`sshd -T` prints the configuration sshd uses)",
        );
    }
    Some(out)
}

/// What reading the configuration may still take.
struct Budget {
    files: usize,
    /// Bytes the directives read so far take.
    bytes: usize,
    /// Where [`MAX_DIRECTIVE_BYTES`] was reached (file, line): nothing more is read.
    over: Option<(Vec<u8>, usize)>,
}

fn read_file(
    ctx: &mut Ctx<'_>,
    path: &[u8],
    mut in_match: bool,
    depth: usize,
    budget: &mut Budget,
    out: &mut Vec<Directive>,
) {
    budget.files += 1;
    if depth > MAX_DEPTH || budget.files > MAX_FILES || budget.over.is_some() {
        return;
    }
    let Some(text) = ctx.read(path) else {
        return;
    };
    for (n, l) in crate::preflight::context::config_lines(&text) {
        if budget.over.is_some() {
            return;
        }
        let l = String::from_utf8_lossy(l);
        let (key, value) = split_keyword(&l);
        let key = key.to_ascii_lowercase();
        match key.as_str() {
            "match" => {
                in_match = !value.eq_ignore_ascii_case("all");
                continue;
            }
            "include" => {
                for pattern in value.split_whitespace() {
                    for p in expand(ctx, pattern) {
                        read_file(ctx, &p, in_match, depth + 1, budget, out);
                    }
                }
                continue;
            }
            _ => {}
        }
        budget.bytes += std::mem::size_of::<Directive>() + key.len() + value.len() + path.len();
        if budget.bytes > MAX_DIRECTIVE_BYTES {
            budget.over = Some((path.to_vec(), n));
            return;
        }
        out.push(Directive {
            key,
            value: value.to_string(),
            path: path.to_vec(),
            line: n,
            in_match,
        });
    }
}

/// `Keyword value` or `Keyword=value`.
fn split_keyword(l: &str) -> (&str, &str) {
    let end = l
        .find(|c: char| c.is_ascii_whitespace() || c == '=')
        .unwrap_or(l.len());
    let (k, rest) = l.split_at(end);
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
    (k, rest.trim_matches('"'))
}

/// The files an `Include` pattern names: relative to `/etc/ssh`, `*`/`?` globs in the last
/// component, sorted as glob(3) sorts.
fn expand(ctx: &mut Ctx<'_>, pattern: &str) -> Vec<Vec<u8>> {
    let full = if pattern.starts_with('/') {
        pattern.to_string()
    } else {
        format!("/etc/ssh/{pattern}")
    };
    let (dir, name) = full.rsplit_once('/').unwrap_or(("", &full));
    if dir.contains(['*', '?', '[']) {
        // Globs in directories are rare in sshd configs; not expanded.
        return Vec::new();
    }
    if !name.contains(['*', '?']) {
        return vec![full.into_bytes()];
    }
    let dir = if dir.is_empty() { "/" } else { dir };
    ctx.list(dir.as_bytes())
        .into_iter()
        .filter(|e| {
            e.file_type != FileType::Directory
                && !e.name.starts_with(b".")
                && glob(name.as_bytes(), &e.name)
        })
        .map(|e| {
            let mut p = dir.as_bytes().to_vec();
            if p != b"/" {
                p.push(b'/');
            }
            p.extend_from_slice(&e.name);
            p
        })
        .collect()
}

/// `*` and `?` matching (iterative, linear in practice: one backtrack point).
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The global (outside `Match`) value of `key`: the first one, as sshd takes it.
pub fn effective<'d>(config: &'d [Directive], key: &str) -> Option<&'d Directive> {
    config.iter().find(|d| !d.in_match && d.key == key)
}

/// Root login, keep-alive and host keys.
pub fn check(ctx: &mut Ctx<'_>) {
    host_keys(ctx);
    server_enabled(ctx);
    let Some(config) = read_config(ctx) else {
        return;
    };
    let root_yes: Vec<&Directive> = config
        .iter()
        .filter(|d| d.key == "permitrootlogin")
        .filter(|d| d.in_match || effective(&config, "permitrootlogin") == Some(d))
        .filter(|d| d.value.eq_ignore_ascii_case("yes"))
        .collect();
    for d in root_yes {
        let ev = ctx.at_line(
            &d.path,
            d.line,
            format!("PermitRootLogin {}", d.value).as_bytes(),
        );
        let scope = if d.in_match {
            " (inside a Match block)"
        } else {
            ""
        };
        ctx.push(
            Severity::Warning,
            codes::ROOT_SSH_LOGIN,
            format!("sshd allows root to log in with a password{scope}; Marketplace policy is root login disabled"),
            ev,
            format!("in the guest: set `PermitRootLogin no` (or prohibit-password) in {}", shown(&d.path)),
        );
    }
    let interval = effective(&config, "clientaliveinterval");
    let value = interval.map_or(Some(0), |d| d.value.parse::<u64>().ok());
    if value.is_none_or(|v| !(30..=235).contains(&v)) {
        let ev = match interval {
            Some(d) => ctx.at_line(
                &d.path,
                d.line,
                format!("ClientAliveInterval {}", d.value).as_bytes(),
            ),
            None => format!(
                "{}: ClientAliveInterval not set (sshd's default 0: no keep-alive)",
                ctx.at(b"/etc/ssh/sshd_config")
            ),
        };
        ctx.push(
            Severity::Warning,
            codes::CLIENT_ALIVE_INTERVAL,
            "ClientAliveInterval is outside 30–235 seconds; certification expects a keep-alive in that range (180 recommended) so Azure's load balancer does not drop idle SSH sessions",
            ev,
            "in the guest: `echo 'ClientAliveInterval 180' >> /etc/ssh/sshd_config` (before any Match block)",
        );
    }
}

fn host_keys(ctx: &mut Ctx<'_>) {
    let keys: Vec<String> = ctx
        .list(b"/etc/ssh")
        .into_iter()
        .filter(|e| e.name.starts_with(b"ssh_host_") && e.name.ends_with(b"_key"))
        .map(|e| shown(&e.name))
        .collect();
    if keys.is_empty() {
        return;
    }
    let ev = format!("{}: {}", ctx.at(b"/etc/ssh"), keys.join(", "));
    ctx.push(
        Severity::Warning,
        codes::SSH_HOST_KEYS,
        "SSH host keys are left in the image: every VM made from it would share them unless the agent regenerates them (Provisioning.RegenerateSshHostKeyPair=y)",
        ev,
        "in the guest, as the last step: `rm -f /etc/ssh/ssh_host_*` (or `waagent -deprovision`)",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_fnmatch_for_star_and_question() {
        assert!(glob(b"*.conf", b"50-cloud.conf"));
        assert!(!glob(b"*.conf", b"50-cloud.conf.bak"));
        assert!(glob(b"a?c*", b"abcdef"));
        assert!(glob(b"*", b""));
        assert!(!glob(b"?", b""));
        // Many stars cannot blow up.
        assert!(!glob(
            &[b'*'; 64].iter().copied().chain(*b"x").collect::<Vec<_>>(),
            &[b'a'; 4096]
        ));
    }

    #[test]
    fn keywords_split_on_space_or_equals() {
        assert_eq!(
            split_keyword("PermitRootLogin yes"),
            ("PermitRootLogin", "yes")
        );
        assert_eq!(
            split_keyword("ClientAliveInterval=180"),
            ("ClientAliveInterval", "180")
        );
        assert_eq!(split_keyword("Include \"a b\""), ("Include", "a b"));
    }
}
