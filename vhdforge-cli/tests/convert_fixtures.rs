//! Conversion of the images no local tool can create (built by `fixtures`): differencing
//! VHD and VHDX chains, a dirty-log VHDX, a 511-byte-footer VHD, cleared VHD bitmap bits,
//! stale VHDX blocks and a 4K-sector VHDX. Each output must hold exactly the expected
//! content plus zero padding, pass `vhdforge check`, and be read by libvhdi as a fixed VHD
//! of the expected size. Where qemu-img reads the input correctly, `qemu-img compare`
//! must agree too. The inputs must be unchanged afterwards.

use assert_cmd::Command;
use fixtures::vhd::{self as fvhd, ChainLayer, DynamicOptions, FooterOptions};
use fixtures::vhdx::{self as fvhdx, VhdxSpec};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use uuid::Uuid;

const MIB: u64 = 1 << 20;

fn sha(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn sha_file(p: &Path) -> String {
    sha(&std::fs::read(p).unwrap())
}

/// Deterministic content of `size` bytes with data in a few places and zeros elsewhere.
fn content(size: usize, seed: u64) -> Vec<u8> {
    let regions = [
        (0, 8192),
        (3 * MIB as usize + 512, 70_000),
        (size / 2, 2 * MIB as usize),
        (size - 4096, 4096),
    ];
    fixtures::raw::disk_with_regions(size, &regions, seed)
}

/// Convert `input`, check the output against `expected` and the oracles.
fn convert_and_check(input: &Path, expected: &[u8], extra: &[&str], qemu_fmt: Option<&str>) {
    let before = sha_file(input);
    let out = input.with_extension("converted.vhd");
    Command::cargo_bin("vhdforge")
        .unwrap()
        .arg("convert")
        .args(extra)
        .arg(input)
        .arg(&out)
        .assert()
        .success();
    let disk = (expected.len() as u64).div_ceil(MIB) * MIB;
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len() as u64, disk + 512, "{}", input.display());
    assert!(
        got[..expected.len()] == *expected,
        "content of {} differs",
        input.display()
    );
    assert!(
        got[expected.len()..disk as usize].iter().all(|&b| b == 0),
        "padding of {}",
        input.display()
    );
    Command::cargo_bin("vhdforge")
        .unwrap()
        .arg("check")
        .arg(&out)
        .assert()
        .code(0);
    let info = std::process::Command::new("vhdiinfo")
        .arg(&out)
        .output()
        .expect("vhdiinfo is required: run scripts/setup.sh");
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.status.success()
            && text.contains(&format!("({disk} bytes)"))
            && text.contains(": Fixed"),
        "vhdiinfo: {text}"
    );
    if let Some(fmt) = qemu_fmt {
        let st = std::process::Command::new("qemu-img")
            .args(["compare", "-f", fmt, "-F", "vpc"])
            .arg(input)
            .arg(&out)
            .output()
            .expect("qemu-img is required");
        assert!(
            st.status.success(),
            "qemu-img compare {}: {}",
            input.display(),
            String::from_utf8_lossy(&st.stdout)
        );
    }
    assert_eq!(
        sha_file(input),
        before,
        "input {} was modified",
        input.display()
    );
}

#[test]
fn differencing_vhd_chain_is_flattened() {
    let dir = tempfile::tempdir().unwrap();
    let size = 21 * MIB as usize + 3 * 512;
    let base = content(size, 1);
    let layers = vec![
        ChainLayer {
            name: "mid.avhd".into(),
            writes: vec![
                (512, fixtures::raw::pattern(10, 3 * 512)),
                (5 * MIB, fixtures::raw::pattern(11, 64 * 512)),
            ],
        },
        ChainLayer {
            name: "top.avhd".into(),
            writes: vec![
                (1024, fixtures::raw::pattern(12, 512)),
                (5 * MIB + 4096, vec![0u8; 8 * 512]),
            ],
        },
    ];
    let (paths, _) = fvhd::write_chain(dir.path(), &base, "base.vhd", 2 << 20, &layers).unwrap();
    let mut expected = base.clone();
    for l in &layers {
        for (off, data) in &l.writes {
            expected[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
    }
    convert_and_check(paths.last().unwrap(), &expected, &[], None);
}

#[test]
fn vhd_511_footer_and_cleared_bitmap_bits() {
    let dir = tempfile::tempdir().unwrap();
    let raw = content(22 * MIB as usize, 2);
    let old = dir.path().join("old.vhd");
    std::fs::write(&old, fvhd::fixed_vhd(&raw, &FooterOptions::default(), true)).unwrap();
    convert_and_check(&old, &raw, &[], None);

    // Sectors whose bitmap bit is clear read as zero even though data sits under them.
    let cleared = vec![0u64, 1, 2, 3, 4, 5, 6, 7];
    let o = DynamicOptions {
        block_size: 2 << 20,
        cleared_sectors: cleared.clone(),
        keep_data_under_cleared: true,
        ..DynamicOptions::default()
    };
    let dynp = dir.path().join("bits.vhd");
    std::fs::write(&dynp, fvhd::dynamic_vhd(&raw, &o)).unwrap();
    let mut expected = raw.clone();
    for s in cleared {
        expected[s as usize * 512..(s as usize + 1) * 512].fill(0);
    }
    convert_and_check(&dynp, &expected, &[], None);
}

#[test]
fn differencing_vhdx_chain_dirty_log_and_stale_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let size = 24 * MIB as usize;
    let parent = content(size, 3);
    let pp = fvhdx::write_file(
        dir.path(),
        "base.vhdx",
        &fvhdx::build(&VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0xA1)), &parent).bytes,
    );
    let child = fixtures::raw::pattern(7, size);
    let sectors = size / 512;
    let present: Vec<bool> = (0..sectors)
        .map(|s| matches!(s / 2048, 0 | 3) || (s / 2048 == 5 && s % 8 >= 4))
        .collect();
    let mut spec = VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0xB1));
    spec.child = Some(fvhdx::ChildSpec {
        parent_linkage: Uuid::from_u128(0xA1),
        relative_path: Some(".\\base.vhdx".into()),
        absolute_win32_path: None,
        present: present.clone(),
    });
    let cp = fvhdx::write_file(
        dir.path(),
        "child.avhdx",
        &fvhdx::build(&spec, &child).bytes,
    );
    let _ = pp;
    convert_and_check(
        &cp,
        &fvhdx::chain_content(&parent, &child, &present, 512),
        &[],
        None,
    );

    // Dirty log: the on-disk BAT is stale; only an in-memory replay reads the right data.
    let mut built = fvhdx::build(&VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0xC1)), &parent);
    fvhdx::make_dirty(&mut built, Uuid::from_u128(0x106), None);
    let dp = fvhdx::write_file(dir.path(), "dirty.vhdx", &built.bytes);
    convert_and_check(&dp, &parent, &[], None);

    // ZERO/UNMAPPED/UNDEFINED blocks with stale bytes stored at their offsets read as zeros.
    let mut spec = VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0xD1));
    spec.stale_blocks = vec![(1, 2), (2, 3), (4, 1)];
    let sp = fvhdx::write_file(
        dir.path(),
        "stale.vhdx",
        &fvhdx::build(&spec, &parent).bytes,
    );
    let mut expected = parent.clone();
    for b in [1usize, 2, 4] {
        expected[b * MIB as usize..(b + 1) * MIB as usize].fill(0);
    }
    convert_and_check(&sp, &expected, &[], Some("vhdx"));
}

#[test]
fn four_k_sector_vhdx_needs_the_explicit_override() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(24 * MIB as usize, 4);
    let mut spec = VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0xE1));
    spec.logical_sector_size = 4096;
    let p: PathBuf = fvhdx::write_file(dir.path(), "4k.vhdx", &fvhdx::build(&spec, &data).bytes);
    let out = dir.path().join("4k.vhd");
    Command::cargo_bin("vhdforge")
        .unwrap()
        .arg("convert")
        .arg(&p)
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--allow-4k-sectors"));
    assert!(!out.exists());
    convert_and_check(&p, &data, &["--allow-4k-sectors"], None);
}

#[test]
fn output_may_not_be_a_parent_of_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let base = content(21 * MIB as usize, 6);
    let layers = vec![ChainLayer {
        name: "top.avhd".into(),
        writes: vec![(512, fixtures::raw::pattern(1, 512))],
    }];
    let (paths, _) = fvhd::write_chain(dir.path(), &base, "base.vhd", 2 << 20, &layers).unwrap();
    let before = sha_file(&paths[0]);
    Command::cargo_bin("vhdforge")
        .unwrap()
        .args(["convert", "--force"])
        .arg(&paths[1])
        .arg(&paths[0])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("parent of the input"));
    assert_eq!(sha_file(&paths[0]), before, "the parent was modified");
}
