//! `vhdforge convert` on a loop-mounted XFS with reflink (CI runs as root): by default a
//! VHDX's payload blocks are cloned and the summary and `--json` say how much; `--no-clone`
//! copies every byte; both outputs hold the disk byte for byte. A missing tool (mkfs.xfs, qemu-img)
//! fails the test.

// The loop-mount helper the core's clone tests use.
#[path = "../../vhdforge-core/tests/loop_mount/mod.rs"]
mod loop_mount;

use assert_cmd::Command;
use loop_mount::{leave_free, run as tool, s, Mounted};
use serde_json::Value;

const MIB: usize = 1 << 20;

fn convert(args: &[&str]) -> (String, String) {
    let out = Command::cargo_bin("vhdforge")
        .unwrap()
        .arg("convert")
        .args(args)
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(out.status.code(), Some(0), "{args:?}: {o}{e}");
    (o, e)
}

#[test]
fn convert_clones_by_default_reports_it_and_no_clone_copies() {
    let fs = Mounted::new("xfs");
    // 64 MiB disk with 24 MiB of data in 1 MiB-aligned runs.
    let mut disk = vec![0u8; 64 * MIB];
    disk[..8 * MIB].copy_from_slice(&fixtures::raw::pattern(1, 8 * MIB));
    disk[32 * MIB..48 * MIB].copy_from_slice(&fixtures::raw::pattern(2, 16 * MIB));
    let raw = fs.at.join("disk.raw");
    std::fs::write(&raw, &disk).unwrap();
    let vhdx = fs.at.join("disk.vhdx");
    tool("qemu-img", &["convert", "-O", "vhdx", s(&raw), s(&vhdx)]);

    let cloned = fs.at.join("cloned.vhd");
    let (out, _) = convert(&["--json", s(&vhdx), s(&cloned)]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {v}"));
    assert_eq!(n("data_bytes_cloned"), 24 * MIB as u64, "{v}");
    assert_eq!(n("data_bytes_written"), 0, "{v}");
    assert_eq!(n("zero_bytes_skipped"), 40 * MIB as u64, "{v}");

    let copied = fs.at.join("copied.vhd");
    let (out, _) = convert(&["--json", "--no-clone", s(&vhdx), s(&copied)]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data_bytes_cloned"].as_u64(), Some(0), "{v}");
    assert_eq!(
        v["data_bytes_written"].as_u64(),
        Some(24 * MIB as u64),
        "{v}"
    );
    // Both hold the disk, then a footer (whose identifier and time differ run to run).
    for out in [&cloned, &copied] {
        let bytes = std::fs::read(out).unwrap();
        assert_eq!(bytes.len(), disk.len() + 512, "{}", out.display());
        assert!(
            bytes[..disk.len()] == disk[..],
            "{} is not the disk",
            out.display()
        );
    }

    // The human summary names the cloned bytes, and its rate counts them as done.
    let again = fs.at.join("again.vhd");
    let (out, err) = convert(&[s(&vhdx), s(&again)]);
    let text = format!("{out}{err}");
    assert!(
        text.contains("cloned 24 MiB (shared with the input)"),
        "{text}"
    );
    assert!(!text.contains("(0 B/s average)"), "{text}");
}

#[test]
fn a_thick_disk_that_may_not_fit_is_warned_about_and_still_converted() {
    use std::os::unix::fs::FileExt;
    // ext4 cannot clone, so the copy's whole need is checked at the first refused clone.
    // A thick raw (every byte written, zeros included) stores 512 MiB, more than the
    // ~350 MiB left free, but holds only 40 MiB of data: the convert warns and succeeds
    // (each 256 MiB part is checked before its copy, and fits). `--no-clone` does the
    // same (it used to refuse up front, counting the written zeros).
    let fs = Mounted::sized("ext4", 1 << 30);
    let raw = fs.at.join("thick.raw");
    let runs = [(MIB, 3), (300 * MIB, 4)];
    {
        let f = std::fs::File::create(&raw).unwrap();
        let zeros = vec![0u8; 4 * MIB];
        for k in 0..128 {
            f.write_all_at(&zeros, (k * 4 * MIB) as u64).unwrap();
        }
        for (at, seed) in runs {
            f.write_all_at(&fixtures::raw::pattern(seed, 20 * MIB), at as u64)
                .unwrap();
        }
        f.sync_all().unwrap();
    }
    leave_free(&fs.at, 350 * MIB as u64);
    let out = fs.at.join("out.vhd");
    for (flags, why) in [
        (&[][..], "cannot share blocks"),
        (&["--no-clone"][..], "--no-clone"),
    ] {
        let mut args = flags.to_vec();
        args.extend([s(&raw), s(&out)]);
        let (_, err) = convert(&args);
        assert!(err.contains("may not fit"), "{flags:?}: no warning: {err}");
        assert!(err.contains(why), "{flags:?}: {err}");
        assert_thick_output(&out, &runs);
        std::fs::remove_file(&out).unwrap();
    }
}

/// `out` holds the 512 MiB thick disk of 20 MiB `runs` (offset, pattern seed).
fn assert_thick_output(out: &std::path::Path, runs: &[(usize, u64)]) {
    use std::os::unix::fs::FileExt;
    // The output holds the disk: the two runs, zeros elsewhere, then the footer.
    let o = std::fs::File::open(out).unwrap();
    assert_eq!(o.metadata().unwrap().len(), 512 * MIB as u64 + 512);
    let pats: Vec<Vec<u8>> = runs
        .iter()
        .map(|&(_, seed)| fixtures::raw::pattern(seed, 20 * MIB))
        .collect();
    let mut buf = vec![0u8; 4 * MIB];
    for k in 0..128 {
        let at = k * 4 * MIB;
        o.read_exact_at(&mut buf, at as u64).unwrap();
        let mut want = vec![0u8; 4 * MIB];
        for ((r, _), pat) in runs.iter().zip(&pats) {
            let (a, b) = (at.max(*r), (at + 4 * MIB).min(r + 20 * MIB));
            if a < b {
                want[a - at..b - at].copy_from_slice(&pat[a - r..b - r]);
            }
        }
        assert!(
            buf == want,
            "the output differs from the disk in [{at:#x}, +4 MiB)"
        );
    }
}
