//! `vhdforge preflight` end to end: exit codes (0 clean and Azure-ready, 1 errors, 2 could
//! not run), the JSON shape of the issue, and text grouped with evidence and fix lines.

use assert_cmd::Command;
use fixtures::linux_tree::{build_disk, put, write, Distro, Layout};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn vhdforge() -> Command {
    Command::cargo_bin("vhdforge").unwrap()
}

/// A Debian-like guest as an Azure-ready fixed VHD (so only the guest decides the exit code).
fn fixed_vhd(dir: &Path, plant: impl FnOnce(&Path)) -> PathBuf {
    let t = write(dir, Distro::Debian12);
    plant(&t.root);
    let raw = build_disk(dir, &t, Layout::default());
    let vhd = dir.join("disk.vhd");
    fixtures::guest::run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=fixed,force_size=on",
            raw.to_str().unwrap(),
            vhd.to_str().unwrap(),
        ],
    );
    vhd
}

#[test]
fn a_clean_guest_in_an_azure_ready_vhd_passes_and_a_planted_key_fails() {
    let dir = tempfile::tempdir().unwrap();
    let clean = fixed_vhd(&dir.path().join("clean"), |_| {});
    let out = vhdforge().arg("preflight").arg(&clean).assert().code(0);
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("OK: no errors"), "{text}");
    assert!(text.contains("guest.disk.generation"), "{text}");

    let bad = fixed_vhd(&dir.path().join("bad"), |root| {
        put(
            root,
            "root/.ssh/authorized_keys",
            "ssh-ed25519 AAAAC3 me@laptop\n",
        );
    });
    let out = vhdforge()
        .args(["preflight", "--json"])
        .arg(&bad)
        .assert()
        .code(1);
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    for key in [
        "path",
        "generation",
        "os",
        "volumes",
        "findings",
        "upload_size_bytes",
        "azure_ready",
        "guest_ready",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v:#}");
    }
    assert_eq!(v["generation"], 2);
    assert_eq!(v["os"]["family"], "linux");
    assert_eq!(v["os"]["version"], "12");
    assert_eq!(v["azure_ready"], true);
    assert_eq!(v["guest_ready"], false);
    assert_eq!(v["volumes"][1]["mount_point"], "/");
    assert_eq!(v["volumes"][1]["filesystem"], "ext");
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "guest.linux.authorized_keys")
        .unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(f["severity"], "error");
    assert!(f["evidence"]
        .as_str()
        .unwrap()
        .contains("volume 2: /root/.ssh/authorized_keys"));
    assert!(f["fix"]
        .as_str()
        .unwrap()
        .contains("rm -f /root/.ssh/authorized_keys"));

    // Text: grouped under "errors:", with evidence and fix lines.
    let out = vhdforge().arg("preflight").arg(&bad).assert().code(1);
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let at = text.find("errors:\n").unwrap_or_else(|| panic!("{text}"));
    let rest = &text[at..];
    assert!(rest.contains("error guest.linux.authorized_keys"), "{text}");
    assert!(
        rest.contains("evidence: volume 2: /root/.ssh/authorized_keys"),
        "{text}"
    );
    assert!(rest.contains("fix:      in the guest: `rm -f"), "{text}");
    assert!(text.contains("FAILED: 1 error(s)"), "{text}");
    // The key itself is not shown.
    assert!(!text.contains("AAAAC3"), "{text}");

    // Windows checks asked for on a Linux disk: they run, find no Windows, and say so.
    let out = vhdforge()
        .args(["preflight", "--json", "--os", "windows"])
        .arg(&bad)
        .assert()
        .code(1);
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let codes: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"guest.windows.unreadable"), "{v}");
    assert_eq!(v["os"]["family"], "windows", "{v}");
}
