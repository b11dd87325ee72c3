//! What certification tests about the guest's platform (`docs/preflight-linux.md`
//! "Platform"): the programs are x86-64 (the ELF header's `e_machine` of the shell and the
//! dynamic loader), Python is installed (the agent is a Python program; certification
//! requires 2.6 or later), and OpenSSL is installed (the agent decrypts the certificates
//! Azure hands the VM with the `openssl` program; certification requires 0.9.8 or later).

use crate::finding::{Code, Severity};
use crate::guest::fs::FileType;
use crate::preflight::context::shown;
use crate::preflight::linux::os::version_key;
use crate::preflight::Ctx;

/// The guest's programs are not x86-64 (or no program tells).
pub const ARCHITECTURE: Code = Code::new("guest.linux.architecture");
/// No Python interpreter, or one older than 2.6.
pub const PYTHON: Code = Code::new("guest.linux.python");
/// No OpenSSL library or program, or a library older than 0.9.8.
pub const OPENSSL: Code = Code::new("guest.linux.openssl");

/// ELF `e_machine` of x86-64 (System V ABI, AMD64 supplement).
const EM_X86_64: u16 = 0x3E;
/// The ELF identification and header fields read: `e_ident` (16 bytes), `e_type`,
/// `e_machine`.
const ELF_HEAD_BYTES: usize = 20;

/// Programs every Linux root has, in the order tried (merged-/usr systems reach the
/// `/bin` ones through a symlink).
const ELF_PROBES: &[&[u8]] = &[
    b"/usr/bin/bash",
    b"/bin/bash",
    b"/usr/bin/sh",
    b"/bin/sh",
    b"/usr/bin/ls",
    b"/bin/ls",
];

/// Where Python interpreters are installed: the distribution's `/usr/bin`, and RHEL 8's
/// `platform-python` that the system's own tools use.
const PYTHON_DIRS: &[&[u8]] = &[b"/usr/bin", b"/bin", b"/usr/libexec", b"/usr/local/bin"];

/// Library directories searched for `libssl.so.*` (RHEL's lib64, Debian's multiarch).
const LIB_DIRS: &[&[u8]] = &[
    b"/usr/lib64",
    b"/lib64",
    b"/usr/lib/x86_64-linux-gnu",
    b"/lib/x86_64-linux-gnu",
    b"/usr/lib",
    b"/lib",
];

/// Oldest OpenSSL certification accepts.
pub const MIN_OPENSSL: &str = "0.9.8";
/// Oldest Python certification accepts.
pub const MIN_PYTHON: &str = "2.6";

/// Architecture, Python, OpenSSL.
pub fn check(ctx: &mut Ctx<'_>) {
    architecture(ctx);
    python(ctx);
    openssl(ctx);
}

/// What an ELF header says: (64-bit, `e_machine`), or `None` when it is not ELF.
pub fn elf_machine(head: &[u8]) -> Option<(bool, u16)> {
    if head.len() < ELF_HEAD_BYTES || &head[..4] != b"\x7fELF" {
        return None;
    }
    let class64 = head[4] == 2;
    // EI_DATA: 1 little endian, 2 big endian; e_machine sits at byte 18 in both classes.
    let m = [head[18], head[19]];
    let machine = match head[5] {
        2 => u16::from_be_bytes(m),
        _ => u16::from_le_bytes(m),
    };
    Some((class64, machine))
}

/// The name of an ELF machine a guest is likely to hold.
fn machine_name(m: u16) -> String {
    match m {
        0x03 => "i386 (32-bit x86)".into(),
        0x3E => "x86-64".into(),
        0xB7 => "AArch64 (64-bit Arm)".into(),
        0x28 => "32-bit Arm".into(),
        0x15 => "64-bit PowerPC".into(),
        0x16 => "s390".into(),
        0xF3 => "RISC-V".into(),
        other => format!("machine 0x{other:x}"),
    }
}

fn architecture(ctx: &mut Ctx<'_>) {
    for path in ELF_PROBES {
        let Some(head) = ctx.read_capped(path, ELF_HEAD_BYTES) else {
            continue;
        };
        let Some((class64, machine)) = elf_machine(&head) else {
            // A script or a stub: try the next program.
            continue;
        };
        if machine == EM_X86_64 && class64 {
            return;
        }
        let ev = format!(
            "{}: ELF{} e_machine 0x{machine:02x} ({})",
            ctx.at(path),
            if class64 { "64" } else { "32" },
            machine_name(machine)
        );
        ctx.push(
            Severity::Error,
            ARCHITECTURE,
            format!(
                "the guest's programs are built for {}, not x86-64: an x86-64 VM cannot run them, and certification of an x86-64 image fails",
                machine_name(machine)
            ),
            ev,
            "outside the guest: build the image from the distribution's x86_64 (amd64) installation media, or publish it as an Arm64 image if it is AArch64",
        );
        return;
    }
    let ev = format!(
        "volume {}: none of {} is an ELF program",
        ctx.volume_of(b"/usr"),
        ELF_PROBES
            .iter()
            .map(|p| shown(p))
            .collect::<Vec<_>>()
            .join(", ")
    );
    ctx.push(
        Severity::Warning,
        ARCHITECTURE,
        "the guest's architecture could not be determined: no shell or core program was found to read its ELF header",
        ev,
        "in the guest: `uname -m` must print x86_64",
    );
}

/// The version in an interpreter's or library's file name after `prefix`: `python3.11` →
/// `3.11`, `libssl.so.1.0.2k` → `1.0.2`.
fn name_version(name: &[u8], prefix: &[u8]) -> Option<String> {
    let rest = name.strip_prefix(prefix)?;
    let v: String = rest
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .map(|&b| char::from(b))
        .collect();
    let v = v.trim_end_matches('.');
    (!v.is_empty()).then(|| v.to_string())
}

/// The usual names, tried by path first: a listing stops at `MAX_DIR_ENTRIES` names, and a
/// large system's `/usr/bin` or `/usr/lib64` can hold more.
const PYTHON_NAMES: &[&str] = &["python3", "python", "python2", "platform-python"];
const LIBSSL_NAMES: &[&str] = &[
    "libssl.so.3",
    "libssl.so.1.1",
    "libssl.so.10",
    "libssl.so.1.0.0",
    "libssl.so.1.0.2",
];

fn python(ctx: &mut Ctx<'_>) {
    let direct = PYTHON_DIRS.iter().any(|d| {
        PYTHON_NAMES
            .iter()
            .any(|n| ctx.is_file(&[*d, b"/", n.as_bytes()].concat()))
    });
    if direct {
        return;
    }
    let mut found: Vec<(String, Vec<u8>)> = Vec::new();
    for dir in PYTHON_DIRS {
        for e in ctx.list(dir) {
            if e.file_type == FileType::Directory {
                continue;
            }
            let version = if e.name == b"platform-python" || e.name == b"python" {
                Some(String::new())
            } else {
                name_version(&e.name, b"python")
            };
            if let Some(v) = version {
                let p = [*dir, b"/", &e.name].concat();
                // A dangling link (python3 -> a removed python3.9) runs nothing.
                if ctx.is_file(&p) {
                    found.push((v, p));
                }
            }
        }
    }
    if found.is_empty() {
        let ev = format!(
            "volume {}: no python, python2*, python3* or platform-python in /usr/bin, /bin, /usr/libexec or /usr/local/bin",
            ctx.volume_of(b"/usr/bin")
        );
        ctx.push(
            Severity::Error,
            PYTHON,
            format!("Python is not installed: the Azure Linux Agent is a Python program, and certification requires Python {MIN_PYTHON} or later"),
            ev,
            "in the guest: install python3 (`dnf install python3` / `apt-get install python3`)",
        );
        return;
    }
    // Only a versioned name says which version; an old interpreter alone is reported.
    let versioned: Vec<&(String, Vec<u8>)> = found.iter().filter(|(v, _)| !v.is_empty()).collect();
    if !versioned.is_empty()
        && versioned
            .iter()
            .all(|(v, _)| v.contains('.') && version_key(v) < version_key(MIN_PYTHON))
    {
        let (v, p) = versioned[0];
        let ev = format!("{}: Python {v}", ctx.at(p));
        ctx.push(
            Severity::Error,
            PYTHON,
            format!("the newest Python installed is {v}; certification and the agent need {MIN_PYTHON} or later"),
            ev,
            "in the guest: install python3",
        );
    }
}

fn openssl(ctx: &mut Ctx<'_>) {
    let mut libs: Vec<(String, Vec<u8>)> = Vec::new();
    for dir in LIB_DIRS {
        for n in LIBSSL_NAMES {
            let p = [*dir, b"/", n.as_bytes()].concat();
            if ctx.is_file(&p) {
                libs.extend(name_version(n.as_bytes(), b"libssl.so.").map(|v| (v, p)));
            }
        }
    }
    // Listing finds the rest (0.9.8, versioned names) when no usual name is there.
    let listed = if libs.is_empty() { LIB_DIRS } else { &[] };
    for dir in listed {
        for e in ctx.list(dir) {
            if e.file_type == FileType::Directory {
                continue;
            }
            if let Some(v) = name_version(&e.name, b"libssl.so.") {
                libs.push((v, [*dir, b"/", &e.name].concat()));
            }
        }
    }
    let binary = [&b"/usr/bin/openssl"[..], b"/bin/openssl"]
        .into_iter()
        .find(|p| ctx.is_file(p));
    if libs.is_empty() || binary.is_none() {
        let mut missing = Vec::new();
        if libs.is_empty() {
            missing.push(
                "no libssl.so.* in /usr/lib64, /lib64, /usr/lib/x86_64-linux-gnu, /usr/lib or /lib",
            );
        }
        if binary.is_none() {
            missing.push("no /usr/bin/openssl");
        }
        let ev = format!("volume {}: {}", ctx.volume_of(b"/usr"), missing.join("; "));
        ctx.push(
            Severity::Error,
            OPENSSL,
            format!("OpenSSL is not installed: the agent decrypts the certificates and keys Azure gives the VM with the openssl program, and certification requires OpenSSL {MIN_OPENSSL} or later"),
            ev,
            "in the guest: install openssl (`dnf install openssl` / `apt-get install openssl`)",
        );
        return;
    }
    let newest = libs
        .iter()
        .max_by(|a, b| version_key(&a.0).cmp(&version_key(&b.0)));
    if let Some((v, p)) = newest {
        if version_key(v) < version_key(MIN_OPENSSL) {
            let ev = format!("{}: OpenSSL {v}", ctx.at(p));
            ctx.push(
                Severity::Error,
                OPENSSL,
                format!("the newest OpenSSL library is {v}; certification requires {MIN_OPENSSL} or later"),
                ev,
                "in the guest: update openssl",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(class: u8, data: u8, machine: [u8; 2]) -> Vec<u8> {
        let mut h = vec![0u8; ELF_HEAD_BYTES];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = data;
        h[18..20].copy_from_slice(&machine);
        h
    }

    #[test]
    fn elf_machine_reads_both_byte_orders_and_rejects_non_elf() {
        // x86-64, little endian.
        assert_eq!(elf_machine(&head(2, 1, [0x3E, 0])), Some((true, 0x3E)));
        // AArch64.
        assert_eq!(elf_machine(&head(2, 1, [0xB7, 0])), Some((true, 0xB7)));
        // s390x is big endian: 0x0016.
        assert_eq!(elf_machine(&head(2, 2, [0, 0x16])), Some((true, 0x16)));
        // 32-bit i386.
        assert_eq!(elf_machine(&head(1, 1, [3, 0])), Some((false, 3)));
        // A shell script, and a header cut short.
        assert_eq!(elf_machine(b"#!/bin/sh\necho hello there\n"), None);
        assert_eq!(elf_machine(b"\x7fELF\x02\x01"), None);
    }

    #[test]
    fn versions_come_from_file_names() {
        assert_eq!(
            name_version(b"python3.11", b"python").as_deref(),
            Some("3.11")
        );
        assert_eq!(
            name_version(b"python2.7", b"python").as_deref(),
            Some("2.7")
        );
        assert_eq!(
            name_version(b"python3-config", b"python").as_deref(),
            Some("3")
        );
        assert_eq!(name_version(b"pythonista", b"python"), None);
        assert_eq!(
            name_version(b"libssl.so.1.0.2k", b"libssl.so.").as_deref(),
            Some("1.0.2")
        );
        assert_eq!(
            name_version(b"libssl.so.3", b"libssl.so.").as_deref(),
            Some("3")
        );
    }
}
