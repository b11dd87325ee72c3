//! Accounts and what people leave in their home directories: a usable root password, users
//! with passwords, `authorized_keys`, shell histories.
//!
//! A password hash is *usable* when a login could match it: anything but a locked field
//! (starting with `!` or `*`, as `passwd -l` and installers write). An **empty** field is
//! treated as usable too — it means "no password": `login` on the serial console lets
//! anyone in — and is reported as the worse case. Hashes are never shown in evidence.

use crate::finding::Severity;
use crate::guest::fs::FileType;
use crate::preflight::context::shown;
use crate::preflight::{codes, Ctx};

/// Certification fails a history above 1 KB.
pub const MAX_HISTORY_BYTES: u64 = 1024;
/// Most accounts looked at.
const MAX_ACCOUNTS: usize = 4096;

/// One `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: Vec<u8>,
    /// User id.
    pub uid: u32,
    /// Home directory.
    pub home: Vec<u8>,
    /// Second field of passwd (`x` when the hash is in shadow).
    pub passwd_field: Vec<u8>,
}

/// Parse `/etc/passwd`.
pub fn parse_passwd(text: &[u8]) -> Vec<Account> {
    text.split(|&b| b == b'\n')
        .filter_map(|l| {
            let f: Vec<&[u8]> = l.split(|&b| b == b':').collect();
            if f.len() < 7 || f[0].is_empty() || f[0].starts_with(b"#") {
                return None;
            }
            let uid = std::str::from_utf8(f[2]).ok()?.parse().ok()?;
            Some(Account {
                name: f[0].to_vec(),
                uid,
                home: f[5].to_vec(),
                passwd_field: f[1].to_vec(),
            })
        })
        .take(MAX_ACCOUNTS)
        .collect()
}

/// Parse `/etc/shadow` into (name, hash field, line number).
pub fn parse_shadow(text: &[u8]) -> Vec<(Vec<u8>, Vec<u8>, usize)> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter_map(|(i, l)| {
            let mut f = l.split(|&b| b == b':');
            let name = f.next()?;
            let hash = f.next()?;
            (!name.is_empty()).then(|| (name.to_vec(), hash.trim_ascii().to_vec(), i + 1))
        })
        .take(MAX_ACCOUNTS)
        .collect()
}

/// What a hash field allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// Locked (`!`, `!!`, `*`, `!$6$…`).
    Locked,
    /// Empty: login without a password.
    Empty,
    /// A hash a password can match.
    Usable,
}

/// Classify a shadow (or passwd) hash field.
pub fn classify(field: &[u8]) -> Hash {
    match field.first() {
        None => Hash::Empty,
        Some(b'!' | b'*') => Hash::Locked,
        Some(_) => Hash::Usable,
    }
}

/// A hash field as evidence: its algorithm, never the hash.
fn describe(field: &[u8]) -> String {
    match classify(field) {
        Hash::Empty => "empty password field (no password needed)".into(),
        Hash::Locked => "locked".into(),
        Hash::Usable => {
            let alg = match field {
                [b'$', b'1', b'$', ..] => "MD5",
                [b'$', b'5', b'$', ..] => "SHA-256",
                [b'$', b'6', b'$', ..] => "SHA-512",
                [b'$', b'y', b'$', ..] => "yescrypt",
                [b'$', b'2', ..] => "bcrypt",
                _ => "DES or unknown",
            };
            format!("a {alg} password hash (not shown)")
        }
    }
}

/// Passwords, keys and histories.
pub fn check(ctx: &mut Ctx<'_>) {
    let accounts = ctx
        .read(b"/etc/passwd")
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    passwords(ctx, &accounts);
    let mut homes: Vec<Vec<u8>> = vec![b"/root".to_vec()];
    for a in &accounts {
        if a.home.len() > 1
            && a.home.first() == Some(&b'/')
            && !homes.contains(&a.home)
            && (a.uid == 0 || a.uid >= 1000)
        {
            homes.push(a.home.clone());
        }
    }
    for e in ctx.list(b"/home") {
        if e.file_type == FileType::Directory {
            let mut h = b"/home/".to_vec();
            h.extend_from_slice(&e.name);
            if !homes.contains(&h) {
                homes.push(h);
            }
        }
    }
    for h in &homes {
        keys(ctx, h);
        histories(ctx, h);
    }
}

fn passwords(ctx: &mut Ctx<'_>, accounts: &[Account]) {
    let shadow = ctx
        .read(b"/etc/shadow")
        .map(|t| parse_shadow(&t))
        .unwrap_or_default();
    for a in accounts {
        let interactive = a.uid == 0 || (a.uid >= 1000 && a.uid != 65534);
        if !interactive {
            continue;
        }
        // The hash is in shadow when passwd says `x`; otherwise passwd holds it (old style).
        let (path, field, line): (&[u8], Vec<u8>, Option<usize>) = if a.passwd_field == b"x" {
            match shadow.iter().find(|s| s.0 == a.name) {
                Some((_, h, n)) => (b"/etc/shadow", h.clone(), Some(*n)),
                None => continue,
            }
        } else {
            (b"/etc/passwd", a.passwd_field.clone(), None)
        };
        if classify(&field) == Hash::Locked {
            continue;
        }
        let name = shown(&a.name);
        let evidence = match line {
            Some(n) => format!("{} line {n}: {name}: {}", ctx.at(path), describe(&field)),
            None => format!("{}: {name}: {}", ctx.at(path), describe(&field)),
        };
        if a.uid == 0 {
            ctx.push(
                Severity::Error,
                codes::ROOT_PASSWORD,
                format!("root account '{name}' can log in with a password; Marketplace images must ship with root login disabled"),
                evidence,
                format!("in the guest: `passwd -l {name}` (or `usermod -p '!' {name}`)"),
            );
        } else {
            ctx.push(
                Severity::Error,
                codes::USER_PASSWORD,
                format!("user '{name}' (uid {}) has a password set in the image; certification fails default credentials", a.uid),
                evidence,
                format!("in the guest: `waagent -deprovision+user` removes the provisioning user; or `userdel -r {name}` / `passwd -l {name}`"),
            );
        }
    }
}

fn keys(ctx: &mut Ctx<'_>, home: &[u8]) {
    for name in [&b"/.ssh/authorized_keys"[..], b"/.ssh/authorized_keys2"] {
        let mut path = home.to_vec();
        path.extend_from_slice(name);
        let Some(text) = ctx.read(&path) else {
            continue;
        };
        let lines: Vec<&[u8]> = crate::preflight::context::config_lines(&text)
            .map(|(_, l)| l)
            .collect();
        let Some(first) = lines.first() else {
            continue;
        };
        // The key type (and options) is evidence enough; the key itself is not shown.
        let kind: Vec<&[u8]> = first
            .split(u8::is_ascii_whitespace)
            .filter(|w| w.starts_with(b"ssh-") || w.starts_with(b"ecdsa-") || w.starts_with(b"sk-"))
            .take(1)
            .collect();
        let ev = format!(
            "{}: {} key(s), the first {}",
            ctx.at(&path),
            lines.len(),
            kind.first().map_or_else(
                || "of unknown type".to_string(),
                |k| format!("of type {}", shown(k))
            )
        );
        ctx.push(
            Severity::Error,
            codes::AUTHORIZED_KEYS,
            format!("{} holds SSH keys: whoever owns them could log in to every VM made from the image; Marketplace images must contain no user keys", shown(&path)),
            ev,
            format!("in the guest: `rm -f {}` (the agent or cloud-init installs the deploying user's key)", shown(&path)),
        );
    }
}

fn histories(ctx: &mut Ctx<'_>, home: &[u8]) {
    for name in [
        &b"/.bash_history"[..],
        b"/.zsh_history",
        b"/.sh_history",
        b"/.ash_history",
    ] {
        let mut path = home.to_vec();
        path.extend_from_slice(name);
        let Some(st) = ctx.stat(&path) else {
            continue;
        };
        if st.file_type != FileType::Regular || st.size <= MAX_HISTORY_BYTES {
            continue;
        }
        let ev = format!("{}: {} bytes", ctx.at(&path), st.size);
        ctx.push(
            Severity::Error,
            codes::BASH_HISTORY,
            format!("{} is {} bytes; certification fails a shell history above 1 KiB (it may hold commands and secrets typed while building the image)", shown(&path), st.size),
            ev,
            format!("in the guest, as the last step: `rm -f {} && history -c` (or `export HISTSIZE=0` before deprovisioning)", shown(&path)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_fields_are_classified() {
        // Locked forms written by passwd -l, useradd and installers.
        for f in [&b"!"[..], b"!!", b"*", b"!$6$abc$def", b"*LK*"] {
            assert_eq!(classify(f), Hash::Locked, "{f:?}");
        }
        assert_eq!(classify(b""), Hash::Empty);
        assert_eq!(classify(b"$6$salt$hash"), Hash::Usable);
        assert!(describe(b"$6$salt$hash").contains("SHA-512"));
        assert!(!describe(b"$6$salt$hash").contains("salt"));
    }

    #[test]
    fn passwd_lines_need_seven_fields_and_a_numeric_uid() {
        let a = parse_passwd(b"root:x:0:0:root:/root:/bin/bash\nbad:x:zz:0::/:/bin/sh\nshort:x:1\nu:x:1000:1000::/home/u:/bin/bash\n");
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].uid, 1000);
        assert_eq!(a[1].home, b"/home/u");
    }
}
