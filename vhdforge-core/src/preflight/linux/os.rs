//! What the distribution is (`/etc/os-release`, or the older release files), which kernel
//! is installed, and whether the release is past its end of life.
//!
//! The end-of-life table ([`EOL`]) was written on 2026-11-30 from the vendors' published
//! life-cycle dates; a release is reported once its date has passed on the machine running
//! the check. Releases whose vendor sells extended support past that date are still
//! reported: the image gets no updates without that contract.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::finding::Severity;
use crate::guest::fs::FileType;
use crate::preflight::context::{config_lines, shown};
use crate::preflight::{codes, Ctx, OsInfo};

/// One release that has reached its end of life: (os-release `ID`, `VERSION_ID` major,
/// end date `YYYY-MM-DD`, what ended).
pub const EOL: &[(&str, &str, &str, &str)] = &[
    ("centos", "6", "2020-11-30", "end of life"),
    ("centos", "7", "2024-06-30", "end of life"),
    (
        "centos",
        "8",
        "2021-12-31",
        "end of life (CentOS Linux 8; Stream 8 ended 2024-05-31)",
    ),
    ("rhel", "5", "2017-03-31", "end of maintenance"),
    (
        "rhel",
        "6",
        "2020-11-30",
        "end of maintenance (Extended Life-cycle Support only)",
    ),
    (
        "rhel",
        "7",
        "2024-06-30",
        "end of maintenance (Extended Life-cycle Support only)",
    ),
    ("ol", "6", "2021-03-01", "end of premier support"),
    ("ol", "7", "2024-12-31", "end of premier support"),
    ("debian", "8", "2020-06-30", "end of LTS"),
    ("debian", "9", "2022-06-30", "end of LTS"),
    ("debian", "10", "2024-06-30", "end of LTS"),
    ("debian", "11", "2026-08-31", "end of LTS"),
    (
        "ubuntu",
        "14",
        "2019-04-30",
        "end of standard support (ESM only)",
    ),
    (
        "ubuntu",
        "16",
        "2021-04-30",
        "end of standard support (ESM only)",
    ),
    (
        "ubuntu",
        "18",
        "2023-05-31",
        "end of standard support (ESM only)",
    ),
    (
        "ubuntu",
        "20",
        "2025-05-31",
        "end of standard support (ESM only)",
    ),
];

/// `KEY=value` pairs of an os-release file (values unquoted).
pub fn parse_os_release(text: &[u8]) -> Vec<(String, String, usize)> {
    config_lines(text)
        .filter_map(|(n, l)| {
            let l = String::from_utf8_lossy(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string(), n))
        })
        .collect()
}

/// Identify the OS; report it (info) and its end of life (warning). Returns the report's
/// `os` and the os-release `ID` (`centos`, `debian`, …) the agent check needs.
pub fn check(ctx: &mut Ctx<'_>) -> (OsInfo, Option<String>) {
    let mut info = OsInfo {
        family: Some(crate::guest::OsFamily::Linux),
        kernel: newest_kernel(ctx),
        ..OsInfo::default()
    };
    let mut id = None;
    let mut source: &[u8] = b"/etc/os-release";
    let text = ctx.read(b"/etc/os-release").or_else(|| {
        source = b"/usr/lib/os-release";
        ctx.read(b"/usr/lib/os-release")
    });
    if let Some(t) = text {
        let kv = parse_os_release(&t);
        let get = |k: &str| kv.iter().find(|x| x.0 == k).map(|x| x.1.clone());
        info.name = get("PRETTY_NAME").or_else(|| get("NAME"));
        info.version = get("VERSION_ID");
        id = get("ID").map(|s| s.to_ascii_lowercase());
    } else if let Some(t) = ctx
        .read(b"/etc/centos-release")
        .or_else(|| ctx.read(b"/etc/redhat-release"))
    {
        // CentOS/RHEL 6: "CentOS release 6.10 (Final)".
        source = b"/etc/redhat-release";
        let line = String::from_utf8_lossy(t.split(|&b| b == b'\n').next().unwrap_or(&[]))
            .trim()
            .to_string();
        id = Some(
            if line.starts_with("CentOS") {
                "centos"
            } else {
                "rhel"
            }
            .to_string(),
        );
        info.version = line
            .split_whitespace()
            .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .map(str::to_string);
        info.name = Some(line);
    } else if let Some(t) = ctx.read(b"/etc/debian_version") {
        source = b"/etc/debian_version";
        let v = String::from_utf8_lossy(&t).trim().to_string();
        id = Some("debian".into());
        info.name = Some(format!("Debian {v}"));
        info.version = Some(v);
    }
    let evidence = ctx.at(source);
    ctx.findings.push(crate::preflight::GuestFinding::new(
        Severity::Info,
        codes::OS,
        format!(
            "Linux: {}, version {}, kernel {}",
            info.name.as_deref().unwrap_or("unknown distribution"),
            info.version.as_deref().unwrap_or("unknown"),
            info.kernel
                .as_deref()
                .unwrap_or("not found in /lib/modules")
        ),
        Some(evidence.clone()),
        None,
    ));
    if let (Some(i), Some(v)) = (&id, &info.version) {
        eol(ctx, i, v, &evidence);
    }
    (info, id)
}

fn eol(ctx: &mut Ctx<'_>, id: &str, version: &str, evidence: &str) {
    let major = version.split('.').next().unwrap_or("");
    // Only the IDs in the table are judged: a rebuild (Rocky, Alma) has its own ID and
    // its own dates.
    let Some(&(_, _, date, what)) = EOL.iter().find(|e| e.0 == id && e.1 == major) else {
        return;
    };
    if !date_passed(date) {
        return;
    }
    ctx.push(
        Severity::Warning,
        codes::EOL,
        format!("{id} {version} reached its {what} on {date}: no security updates; certification rejects end-of-life releases and Azure support is limited"),
        format!("{evidence}: ID={id} VERSION_ID={version}"),
        "rebuild the image on a supported release (or migrate in place, e.g. `leapp` for RHEL-family, a release upgrade for Debian/Ubuntu)",
    );
}

/// Whether `date` (`YYYY-MM-DD`) is before today (UTC).
fn date_passed(date: &str) -> bool {
    let today_days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    days_from_civil(date).is_some_and(|d| d < today_days)
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (proleptic Gregorian).
fn days_from_civil(date: &str) -> Option<u64> {
    let mut it = date.split('-').map(str::parse::<i64>);
    let (y, m, d) = (it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from(era * 146_097 + doe - 719_468).ok()
}

/// The highest `/lib/modules/<version>` (by numeric comparison of its dotted parts).
fn newest_kernel(ctx: &mut Ctx<'_>) -> Option<String> {
    ctx.list(b"/lib/modules")
        .into_iter()
        .filter(|e| e.file_type == FileType::Directory)
        .map(|e| shown(&e.name))
        .max_by(|a, b| version_key(a).cmp(&version_key(b)))
}

/// A version string as numbers where it has them, so `5.10` sorts after `5.9`.
pub fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(16)
        .map(|s| s.parse().unwrap_or(u64::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_are_unquoted() {
        let kv = parse_os_release(b"NAME=\"CentOS Linux\"\nID='centos'\nVERSION_ID=7\n# c\n");
        assert_eq!(kv[0].1, "CentOS Linux");
        assert_eq!(kv[1].1, "centos");
        assert_eq!(kv[2], ("VERSION_ID".into(), "7".into(), 3));
    }

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil("1970-01-01"), Some(0));
        assert_eq!(days_from_civil("2024-06-30"), Some(19_904));
        assert!(date_passed("2020-11-30"));
        assert!(!date_passed("2999-01-01"));
    }

    #[test]
    fn kernel_versions_compare_numerically() {
        assert!(version_key("5.10.0-30-cloud-amd64") > version_key("5.9.0-1-amd64"));
        assert!(version_key("3.10.0-1160.el7.x86_64") > version_key("3.10.0-957.el7.x86_64"));
    }
}
