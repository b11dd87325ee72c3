//! Conversion cross-checked by tools vhdforge did not write: for each input, `qemu-img
//! compare` says the output is identical to the input, the SHA-256 of the output's disk
//! area equals the source content plus zero padding, and libvhdi (`vhdiinfo`) reads the
//! output as a fixed VHD of the expected size. A missing oracle fails the test.

use assert_cmd::Command;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command as Proc;

const MIB: u64 = 1 << 20;

fn oracle(cmd: &str) -> Proc {
    let probe = Proc::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "oracle `{cmd}` is missing: run scripts/setup.sh (installs qemu-utils and libvhdi-utils)"
    );
    Proc::new(cmd)
}

fn sparse_raw(path: &Path, size: u64, regions: &[(u64, usize)]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(off, len)) in regions.iter().enumerate() {
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&fixtures::raw::pattern(i as u64 + 11, len))
            .unwrap();
    }
}

/// SHA-256 of the first `len` bytes of `path`, reading zeros past its end.
fn sha_padded(path: &Path, len: u64) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let mut got = 0;
        while got < want {
            let n = f.read(&mut buf[got..want]).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        buf[got..want].fill(0);
        h.update(&buf[..want]);
        done += want as u64;
    }
    format!("{:x}", h.finalize())
}

fn run_ok(cmd: &mut Proc) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Convert `input` (format `qemu_fmt` for qemu-img) and check the output against the oracles,
/// given the raw content `raw` it must equal.
fn convert_and_check(input: &Path, qemu_fmt: &str, raw: &Path, virtual_size: u64) {
    let out = input.with_extension("out.vhd");
    Command::cargo_bin("vhdforge")
        .unwrap()
        .arg("convert")
        .arg(input)
        .arg(&out)
        .assert()
        .success();
    let disk = virtual_size.div_ceil(MIB) * MIB;
    assert_eq!(std::fs::metadata(&out).unwrap().len(), disk + 512);
    run_ok(
        oracle("qemu-img")
            .args(["compare", "-f", qemu_fmt, "-F", "vpc"])
            .arg(input)
            .arg(&out),
    );
    assert_eq!(
        sha_padded(&out, disk),
        sha_padded(raw, disk),
        "content of {}",
        input.display()
    );
    let info = run_ok(oracle("vhdiinfo").arg(&out));
    assert!(
        info.contains("Disk type\t\t: Fixed"),
        "vhdiinfo type: {info}"
    );
    assert!(
        info.contains(&format!("({disk} bytes)")),
        "vhdiinfo size, want {disk}: {info}"
    );
    Command::cargo_bin("vhdforge")
        .unwrap()
        .arg("check")
        .arg(&out)
        .assert()
        .code(0);
}

fn scattered_raw(dir: &Path, name: &str, size: u64) -> std::path::PathBuf {
    let raw = dir.join(name);
    let regions = [
        (0, 4096),
        (3 * MIB + 512, 100_000),
        (size / 2 - 7 * 512, 3 * MIB as usize),
        (size - 4096, 4096),
    ];
    sparse_raw(&raw, size, &regions);
    raw
}

#[test]
fn qemu_made_vhdx_dynamic_fixed_and_block_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let size = 40 * MIB + 3 * 512; // not a whole MiB, not a block multiple
    let raw = scattered_raw(dir.path(), "src.raw", size);
    let variants: [(&str, &[&str]); 4] = [
        ("dyn.vhdx", &["-O", "vhdx"]),
        ("fixed.vhdx", &["-O", "vhdx", "-o", "subformat=fixed"]),
        ("b1.vhdx", &["-O", "vhdx", "-o", "block_size=1M"]),
        ("b32.vhdx", &["-O", "vhdx", "-o", "block_size=32M"]),
    ];
    convert_qemu_variants(dir.path(), &raw, size, "vhdx", &variants);
}

#[test]
fn qemu_made_vhd_dynamic_and_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let size = 48 * MIB + 512;
    let raw = scattered_raw(dir.path(), "src.raw", size);
    let variants: [(&str, &[&str]); 2] = [
        ("dyn.vhd", &["-O", "vpc", "-o", "force_size=on"]),
        (
            "fixed.vhd",
            &["-O", "vpc", "-o", "subformat=fixed,force_size=on"],
        ),
    ];
    convert_qemu_variants(dir.path(), &raw, size, "vpc", &variants);
}

/// Make each variant of `raw` with `qemu-img convert`, then convert and check it.
fn convert_qemu_variants(
    dir: &Path,
    raw: &Path,
    size: u64,
    qemu_fmt: &str,
    variants: &[(&str, &[&str])],
) {
    for (name, args) in variants {
        let img = dir.join(name);
        run_ok(
            oracle("qemu-img")
                .args(["convert", "-f", "raw"])
                .args(*args)
                .arg(raw)
                .arg(&img),
        );
        convert_and_check(&img, qemu_fmt, raw, size);
    }
}

#[test]
fn raw_input_converts_and_libvhdi_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let size = 25 * MIB + 4096;
    let raw = scattered_raw(dir.path(), "src.img", size);
    convert_and_check(&raw, "raw", &raw, size);
}
