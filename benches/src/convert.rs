//! Issue 16: convert by block cloning on a loop-mounted XFS (reflink), against a copying
//! convert (`--no-clone`), `qemu-img convert -C` (copy offloading) and plain `qemu-img
//! convert`, all to a fixed VHD: times as ratios to the copying convert, and the disk space
//! each output adds (`df` of the file system after `sync`). Needs root (mkfs, mount).
//!
//! Size: `VHDFORGE_BENCH_CLONE_GIB` (default 16) GiB of virtual disk, half of it data.

use crate::util::*;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const GIB: u64 = 1 << 30;

/// Unmounts and removes the file system image when the benchmark ends, however it ends.
struct Mounted {
    mnt: PathBuf,
    img: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = std::fs::remove_dir(&self.mnt);
        let _ = std::fs::remove_file(&self.img);
    }
}

/// Bytes used on the file system holding `dir`, after a sync.
fn used(dir: &Path) -> Result<u64> {
    let _ = Command::new("sync").arg("-f").arg(dir).status();
    let out = Command::new("df")
        .args(["-B1", "--output=used"])
        .arg(dir)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .context("df output")
}

pub fn bench_clone(dir: &Path, bin: &Path) -> Result<()> {
    let size_gib: u64 = std::env::var("VHDFORGE_BENCH_CLONE_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let size = size_gib * GIB;
    let data = size / 2;
    println!(
        "== convert by cloning: {size_gib} GiB VHDX with {} GiB of data on a loop-mounted XFS (reflink), caches dropped before each run",
        data / GIB
    );
    let img = dir.join("clone-xfs.img");
    let mnt = dir.join("clone-mnt");
    // Left mounted by an interrupted earlier run, or (usually) not mounted at all.
    let _ = Command::new("umount")
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::fs::remove_file(&img);
    std::fs::create_dir_all(&mnt)?;
    // Room for the raw source and the VHDX made from it at once, then for one output.
    std::fs::File::create(&img)?.set_len(2 * data + 4 * GIB)?;
    run(Command::new("mkfs.xfs")
        .args(["-q", "-f", "-m", "reflink=1"])
        .arg(&img))?;
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt))?;
    let _guard = Mounted {
        mnt: mnt.clone(),
        img: img.clone(),
    };
    let raw = mnt.join("src.raw");
    let vhdx = mnt.join("src.vhdx");
    // 64 MiB regions spread over the disk, `data` bytes in all.
    ensure_sparse_raw(
        &raw,
        size,
        &scattered(size, data / (64 << 20), 64 << 20, 16),
    )?;
    ensure_qemu(&raw, &vhdx, &["-O", "vhdx"])?;
    std::fs::remove_file(&raw)?;
    let out = mnt.join("out.vhd");
    let fixed = ["-O", "vpc", "-o", "subformat=fixed,force_size=on"];
    let runs: Vec<(&str, Command)> = vec![
        ("vhdforge convert (clone)", {
            let mut c = Command::new(bin);
            c.args(["convert", "-q"]).arg(&vhdx).arg(&out);
            c
        }),
        ("vhdforge convert --no-clone", {
            let mut c = Command::new(bin);
            c.args(["convert", "-q", "--no-clone"]).arg(&vhdx).arg(&out);
            c
        }),
        ("qemu-img convert -C", {
            let mut c = Command::new("qemu-img");
            c.args(["convert", "-C", "-f", "vhdx"])
                .args(fixed)
                .arg(&vhdx)
                .arg(&out);
            c
        }),
        ("qemu-img convert", {
            let mut c = Command::new("qemu-img");
            c.args(["convert", "-f", "vhdx"])
                .args(fixed)
                .arg(&vhdx)
                .arg(&out);
            c
        }),
    ];
    let mut results: Vec<(&str, Option<(f64, u64)>)> = Vec::new();
    for (name, mut cmd) in runs {
        let _ = std::fs::remove_file(&out);
        // XFS frees a deleted file's blocks in the background (deferred inode
        // inactivation), so `df` right after the previous run's output is removed can still
        // count it, and the next run then looks as if it added nothing. Unmounting finishes
        // that work; the remount also starts the run with the file system's caches cold.
        run(Command::new("umount").arg(&mnt))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt))?;
        let before = used(&mnt)?;
        if !crate::upload::drop_caches() {
            bail!("cannot drop the page cache (run as root)");
        }
        let start = Instant::now();
        let status = cmd.output()?;
        let t = start.elapsed().as_secs_f64();
        if !status.status.success() {
            println!(
                "{name}: failed: {}",
                String::from_utf8_lossy(&status.stderr).trim()
            );
            results.push((name, None));
            continue;
        }
        let extra = used(&mnt)?.saturating_sub(before);
        results.push((name, Some((t, extra))));
    }
    let _ = std::fs::remove_file(&out);
    let copy_time = results
        .iter()
        .find(|r| r.0 == "vhdforge convert --no-clone")
        .and_then(|r| r.1)
        .map(|r| r.0);
    for (name, r) in &results {
        let Some((t, extra)) = r else { continue };
        println!(
            "{name:>28}: {t:8.2} s = {} the copying convert's time; extra disk usage {:.1} MiB = {:.3} % of the data",
            copy_time.map_or("?".into(), |c| format!("{:.4}x", t / c)),
            *extra as f64 / (1 << 20) as f64,
            *extra as f64 * 100.0 / data as f64
        );
    }
    println!("  targets: clone <= 0.05x the copying time, <= 1 % extra disk usage");
    Ok(())
}
