//! End-to-end tests of the `vhdforge` binary: exit codes, JSON shapes, conversion output
//! checked against qemu-img, safety (no overwrite, interruption), in-place conversion.

use assert_cmd::Command;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

fn vhdforge() -> Command {
    Command::cargo_bin("vhdforge").unwrap()
}

/// A sparse raw file of `size` bytes with `regions` of pseudo-random data.
fn sparse_raw(path: &Path, size: u64, regions: &[(u64, usize)]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(off, len)) in regions.iter().enumerate() {
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&fixtures::raw::pattern(i as u64 + 1, len))
            .unwrap();
    }
}

fn sha256_file_prefix(path: &Path, len: u64) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        let got = f.read(&mut buf[..n]).unwrap();
        if got == 0 {
            // Past the end of the source: the padding reads as zeros.
            buf[..n].fill(0);
            h.update(&buf[..n]);
            left -= n as u64;
            continue;
        }
        h.update(&buf[..got]);
        left -= got as u64;
    }
    format!("{:x}", h.finalize())
}

fn qemu_compare(raw: &Path, vhd: &Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "vpc"])
        .arg(raw)
        .arg(vhd)
        .output()
        .expect("qemu-img is required for these tests (apt-get install qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_virtual_size(vhd: &Path) -> u64 {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-f", "vpc", "--output=json"])
        .arg(vhd)
        .output()
        .expect("qemu-img is required");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

fn json_of(cmd: &mut Command) -> (i32, Value) {
    let out = cmd.output().unwrap();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), v)
}

#[test]
fn info_json_has_the_promised_fields() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.img");
    sparse_raw(&raw, 64 * MIB, &[(MIB, 4096)]);
    let (code, v) = json_of(vhdforge().args(["info", "--json"]).arg(&raw));
    assert_eq!(code, 0);
    for key in [
        "format",
        "disk_type",
        "virtual_size",
        "logical_sector_size",
        "block_size",
        "allocated_bytes",
        "parent",
        "azure_ready",
        "findings",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["format"], "raw");
    assert_eq!(v["disk_type"], "fixed");
    assert_eq!(v["virtual_size"], 64 * MIB);
    assert_eq!(v["azure_ready"], false);
    assert!(
        v["allocated_bytes"].as_u64().unwrap() < MIB,
        "sparse raw counts holes as unallocated: {v}"
    );
}

#[test]
fn check_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    sparse_raw(&raw, 64 * MIB, &[(0, 512)]);
    // A raw image is readable but not Azure-ready: exit 1 with advice.
    vhdforge()
        .arg("check")
        .arg(&raw)
        .assert()
        .code(1)
        .stdout(predicates::str::contains("vhdforge convert"));
    // A missing file: the tool cannot do its job: exit 2.
    vhdforge()
        .arg("check")
        .arg(dir.path().join("nope.vhd"))
        .assert()
        .code(2);
    // Bad arguments: exit 2.
    vhdforge().args(["check", "--bogus"]).assert().code(2);
}

#[test]
fn convert_raw_sparse_matches_qemu_and_is_azure_ready() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    // Not MiB aligned, data at odd places including the last sector.
    let size = 96 * MIB + 7 * 512;
    sparse_raw(
        &raw,
        size,
        &[
            (0, 1000),
            (5 * MIB + 333, 70_000),
            (40 * MIB, 2 * MIB as usize),
            (size - 512, 512),
        ],
    );
    let out = dir.path().join("disk.vhd");
    let (code, v) = json_of(vhdforge().args(["convert", "--json"]).arg(&raw).arg(&out));
    assert_eq!(code, 0, "{v}");
    let disk = 97 * MIB;
    assert_eq!(v["virtual_size"], size);
    assert_eq!(v["output_size"], disk + 512);
    assert_eq!(v["padded_bytes"], disk - size);
    assert_eq!(v["azure_ready"], true, "{v}");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), disk + 512);
    assert_eq!(qemu_virtual_size(&out), disk);
    qemu_compare(&raw, &out);
    assert_eq!(
        sha256_file_prefix(&out, disk),
        sha256_file_prefix(&raw, disk)
    );
    // Sparse: allocated blocks of the output about equal the non-zero data.
    use std::os::unix::fs::MetadataExt;
    let used = std::fs::metadata(&out).unwrap().blocks() * 512;
    assert!(
        used <= 3 * MIB,
        "output uses {used} bytes for ~2.1 MiB of data"
    );
    vhdforge().arg("check").arg(&out).assert().code(0);
}

#[test]
fn convert_refuses_existing_output_without_force_and_never_touches_input() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("in.raw");
    sparse_raw(&raw, 32 * MIB, &[(MIB, 4096)]);
    let before = sha256_file_prefix(&raw, 32 * MIB);
    let out = dir.path().join("out.vhd");
    std::fs::write(&out, b"precious").unwrap();
    vhdforge()
        .arg("convert")
        .arg(&raw)
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--force"));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    vhdforge()
        .args(["convert", "--force"])
        .arg(&raw)
        .arg(&out)
        .assert()
        .code(0);
    assert_eq!(sha256_file_prefix(&raw, 32 * MIB), before);
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 32 * MIB);
    // Converting the result again says it is already Azure-ready and does nothing.
    let again = dir.path().join("again.vhd");
    vhdforge()
        .arg("convert")
        .arg(&out)
        .arg(&again)
        .assert()
        .code(0)
        .stdout(predicates::str::contains("already"));
    assert!(!again.exists());
}

#[test]
fn convert_refuses_sizes_azure_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("tiny.raw");
    sparse_raw(&raw, 4 * MIB, &[(0, 512)]);
    let out = dir.path().join("tiny.vhd");
    vhdforge()
        .arg("convert")
        .arg(&raw)
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("20 MiB"));
    assert!(!out.exists());
    vhdforge()
        .args(["convert", "--allow-any-size"])
        .arg(&raw)
        .arg(&out)
        .assert()
        .code(0);
}

#[test]
fn interrupted_convert_leaves_no_output_and_rerun_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("big.raw");
    let regions: Vec<(u64, usize)> = (0..48).map(|i| (i * 4 * MIB, 2 * MIB as usize)).collect();
    sparse_raw(&raw, 200 * MIB, &regions);
    let before = sha256_file_prefix(&raw, 200 * MIB);
    let out = dir.path().join("big.vhd");
    let bin = assert_cmd::cargo::cargo_bin("vhdforge");
    for delay_ms in [0u64, 5, 20, 60] {
        let _ = std::fs::remove_file(&out);
        let mut child = std::process::Command::new(&bin)
            .arg("convert")
            .arg(&raw)
            .arg(&out)
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        // Either the conversion finished (complete, valid output) or nothing is under OUT's name.
        if out.exists() {
            vhdforge().arg("check").arg(&out).assert().code(0);
            qemu_compare(&raw, &out);
        }
    }
    let _ = std::fs::remove_file(&out);
    vhdforge()
        .arg("convert")
        .arg(&raw)
        .arg(&out)
        .assert()
        .code(0);
    qemu_compare(&raw, &out);
    assert_eq!(
        sha256_file_prefix(&raw, 200 * MIB),
        before,
        "input modified"
    );
    let leftovers: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("vhdforge-partial"))
        .collect();
    assert!(leftovers.is_empty(), "stale temporary files: {leftovers:?}");
}

#[test]
fn in_place_raw_then_repair_misaligned_fixed_vhd() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let size = 30 * MIB + 4096;
    sparse_raw(&raw, size, &[(0, 4096), (size - 4096, 4096)]);
    let reference = dir.path().join("ref.raw");
    std::fs::copy(&raw, &reference).unwrap();
    let (code, v) = json_of(
        vhdforge()
            .args(["convert", "--in-place", "--json"])
            .arg(&raw),
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["action"], "converted");
    assert_eq!(v["disk_size"], 31 * MIB);
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 31 * MIB + 512);
    qemu_compare(&reference, &raw);
    vhdforge().arg("check").arg(&raw).assert().code(0);
    // A second run finds nothing to do.
    let (_, v) = json_of(
        vhdforge()
            .args(["convert", "--in-place", "--json"])
            .arg(&raw),
    );
    assert_eq!(v["action"], "unchanged");

    // A fixed VHD whose size is not a whole MiB (as qemu writes without force_size).
    let qvhd = dir.path().join("q.vhd");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed"])
        .arg(&reference)
        .arg(&qvhd)
        .status()
        .unwrap();
    assert!(st.success());
    vhdforge().arg("check").arg(&qvhd).assert().code(1);
    let (code, v) = json_of(
        vhdforge()
            .args(["convert", "--in-place", "--json"])
            .arg(&qvhd),
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["action"], "repaired");
    vhdforge().arg("check").arg(&qvhd).assert().code(0);
    qemu_compare(&reference, &qvhd);
}
