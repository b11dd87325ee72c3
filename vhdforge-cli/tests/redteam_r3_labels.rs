//! Red team r3: a file-system label is the guest's text, and `vhdforge volumes` and
//! `vhdforge preflight` printed it raw. A label holding a terminal escape (an ext4
//! `s_volume_name`, or since today an NTFS `$Volume` name) could retitle the terminal,
//! recolour or erase the report's lines above — or, with a line feed, forge a line of the
//! report. Names and paths were already escaped; labels must be too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The hostile label: OSC "set title", then a line feed forging a table row (16 bytes:
/// all ext4's `s_volume_name` holds).
const LABEL: &[u8; 16] = b"\x1b]0;pwn\x07\nFAKE!!!";

/// A 16 MiB bare ext4 file system whose label is [`LABEL`] (written into the superblock:
/// `mkfs.ext4 -L` would take it too, but the bytes are what matter).
fn ext4_labelled(dir: &Path) -> PathBuf {
    let img = dir.join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^metadata_csum"])
        .arg(&img)
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(st.success());
    let mut data = std::fs::read(&img).unwrap();
    // s_volume_name: superblock (byte 1024) + 0x78.
    data[1024 + 0x78..1024 + 0x78 + 16].copy_from_slice(LABEL);
    std::fs::write(&img, data).unwrap();
    img
}

fn vhdforge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vhdforge"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn assert_no_raw_controls(what: &str, out: &std::process::Output) {
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !bytes.iter().any(|&b| b == 0x1b || b == 0x07),
            "{what}: {stream} carries the label's raw escape: {text:?}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("FAKE")),
            "{what}: the label's line feed forged a line: {text:?}"
        );
    }
}

#[test]
fn volumes_escapes_a_hostile_label() {
    let dir = tempfile::tempdir().unwrap();
    let img = ext4_labelled(dir.path());
    let out = vhdforge(&["volumes", img.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_raw_controls("volumes", &out);
    // Shown escaped, so the user still sees what the label holds.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\\x1b]0;pwn\\x07\\x0aFAKE!!!"), "{text}");
    // JSON keeps the exact label (serde escapes it).
    let out = vhdforge(&["volumes", "--json", img.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["volumes"][0]["label"].as_str().map(str::as_bytes),
        Some(&LABEL[..])
    );
}

#[test]
fn preflight_escapes_a_hostile_label() {
    let dir = tempfile::tempdir().unwrap();
    let img = ext4_labelled(dir.path());
    // No OS on it: preflight fails its checks, but its report lists the volumes.
    let out = vhdforge(&["preflight", img.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("volumes:"), "{text}");
    assert_no_raw_controls("preflight", &out);
}
