//! vhdforge benchmarks: each one measures vhdforge and a peer in the same run on the same
//! inputs and prints the ratio. Not tests: nothing here gates CI.
//!
//!   cargo run --release -p vhdforge-benches -- read      # issue 2: read throughput vs raw file
//!   cargo run --release -p vhdforge-benches -- convert   # issue 3: convert vs qemu-img
//!   cargo run --release -p vhdforge-benches -- upload    # issue 4: upload vs Python SDK, curl
//!   cargo run --release -p vhdforge-benches -- sink      # issue 16: client vs curl on a loopback sink
//!   cargo run --release -p vhdforge-benches -- sink-tls  # issue 16: the same over HTTPS
//!   cargo run --release -p vhdforge-benches -- upload-read # issue 16: bytes read per data byte
//!   cargo run --release -p vhdforge-benches -- clone     # issue 16: clone convert on XFS (root)
//!   cargo run --release -p vhdforge-benches -- preflight # issue 12: preflight of a 30 GiB VHDX
//!
//! Inputs are built under `$VHDFORGE_BENCH_DIR` (default `target/bench-data`) with qemu-img
//! and kept between runs. See benches/README.md for the figures measured.

mod convert;
mod guest;
mod preflight;
mod upload;
mod util;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;
use util::*;

fn main() -> Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let dir = PathBuf::from(
        std::env::var("VHDFORGE_BENCH_DIR").unwrap_or_else(|_| "target/bench-data".into()),
    );
    std::fs::create_dir_all(&dir)?;
    match what.as_str() {
        "read" => bench_read(&dir),
        "convert" => bench_convert(&dir),
        "upload" => upload::bench_upload(&dir, &vhdforge_bin()?),
        "sink" => upload::sink_vs_curl_only(&dir, &vhdforge_bin()?, false),
        "sink-tls" => upload::sink_vs_curl_only(&dir, &vhdforge_bin()?, true),
        "upload-read" => upload::read_accounting(&dir, &vhdforge_bin()?),
        "clone" => convert::bench_clone(&dir, &vhdforge_bin()?),
        "guest" => guest::bench_guest(&dir, &vhdforge_bin()?),
        "preflight" => preflight::bench_preflight(&dir),
        "all" => {
            bench_read(&dir)?;
            bench_convert(&dir)?;
            upload::bench_upload(&dir, &vhdforge_bin()?)
        }
        other => {
            bail!("unknown benchmark {other:?}: use read, convert, upload, sink, sink-tls, upload-read, clone, guest, preflight or all")
        }
    }
}

/// Issue 2: sequential read of the whole virtual content (page cache warm) of a dynamic
/// VHDX and a dynamic VHD, against reading the equivalent raw file; and the cost of opening
/// and mapping a 2 TiB sparse VHDX.
fn bench_read(dir: &Path) -> Result<()> {
    println!("== read: sequential virtual-content read, 4 MiB reads, one thread, page cache warm, median of 5");
    // Sparse: 4 GiB virtual, 1 GiB of data in 64 scattered 16 MiB regions (holes in the raw
    // file, absent blocks in the images). Dense: 1 GiB, every byte data, so the images'
    // per-block mapping cost is measured against plain reads with nothing to skip.
    let sparse = dir.join("read-4g.raw");
    ensure_sparse_raw(&sparse, 4 << 30, &scattered(4 << 30, 64, 16 << 20, 1))?;
    let dense = dir.join("read-1g-dense.raw");
    ensure_sparse_raw(&dense, 1 << 30, &[(0, 1 << 30)])?;
    for (name, raw, size) in [
        ("sparse 4 GiB", &sparse, 4u64 << 30),
        ("dense 1 GiB", &dense, 1 << 30),
    ] {
        let vhdx = raw.with_extension("vhdx");
        let vhd = raw.with_extension("vhd");
        ensure_qemu(raw, &vhdx, &["-O", "vhdx"])?;
        ensure_qemu(raw, &vhd, &["-O", "vpc", "-o", "force_size=on"])?;
        for (label, path) in [("dynamic VHDX", &vhdx), ("dynamic VHD", &vhd)] {
            let mut ours = Vec::new();
            let mut peer = Vec::new();
            for _ in 0..5 {
                peer.push(time(|| read_raw_file(raw))?);
                ours.push(time(|| read_image(path))?);
            }
            let (o, p) = (median(&mut ours), median(&mut peer));
            println!(
                "{name:>12} {label:>12}: vhdforge {:.0} MiB/s ({o:.3} s), raw file {:.0} MiB/s ({p:.3} s) -> {:.2}x raw throughput (target >= 0.9x)",
                mibs(size, o),
                mibs(size, p),
                p / o
            );
        }
    }
    // Open + map a 2 TiB sparse VHDX: only metadata may be read.
    let big = dir.join("map-2t.vhdx");
    if !big.exists() {
        run(std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "vhdx"])
            .arg(&big)
            .arg("2T"))?;
    }
    let mut t = Vec::new();
    let mut extents = 0;
    for _ in 0..5 {
        t.push(time(|| {
            let img = vhdforge_core::open(&big, &Default::default())?;
            let mut v = Vec::new();
            img.extents(0, img.info().virtual_size, &mut v)?;
            extents = v.len();
            Ok(())
        })?);
    }
    println!(
        "2 TiB sparse VHDX: open + full allocation map in {:.2} ms (median of 5; {} extents; file is {} bytes)",
        median(&mut t) * 1000.0,
        extents,
        std::fs::metadata(&big)?.len()
    );
    Ok(())
}

fn read_raw_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], pos)?;
        std::hint::black_box(&buf);
        pos += n as u64;
    }
    Ok(())
}

fn read_image(path: &Path) -> Result<()> {
    let img = vhdforge_core::open(path, &Default::default())?;
    let len = img.info().virtual_size;
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        img.read_at(&mut buf[..n], pos)?;
        std::hint::black_box(&buf);
        pos += n as u64;
    }
    Ok(())
}

/// Issue 3: `vhdforge convert` against `qemu-img convert -O vpc -o subformat=fixed,force_size=on`.
fn bench_convert(dir: &Path) -> Result<()> {
    println!(
        "== convert: vhdforge vs qemu-img (fixed VHD, force_size), page cache warm, median of 3"
    );
    let bin = vhdforge_bin()?;
    let gib = 1u64 << 30;
    let cases: Vec<(&str, PathBuf, Vec<&str>, u64)> = vec![
        (
            "16 GiB VHDX, 1 GiB data",
            dir.join("conv-16g.vhdx"),
            vec!["-f", "vhdx"],
            16 * gib,
        ),
        (
            "127 GiB VHDX, 2 GiB data",
            dir.join("conv-127g.vhdx"),
            vec!["-f", "vhdx"],
            127 * gib,
        ),
        (
            "1 TiB raw, 1 GiB data",
            dir.join("conv-1t.raw"),
            vec!["-f", "raw"],
            1024 * gib,
        ),
    ];
    // Build inputs: sparse raw with scattered data, then VHDX via qemu-img.
    let raw16 = dir.join("conv-16g.raw");
    ensure_sparse_raw(&raw16, 16 * gib, &scattered(16 * gib, 256, 4 << 20, 2))?;
    ensure_qemu(&raw16, &cases[0].1, &["-O", "vhdx"])?;
    let raw127 = dir.join("conv-127g.raw");
    ensure_sparse_raw(&raw127, 127 * gib, &scattered(127 * gib, 512, 4 << 20, 3))?;
    ensure_qemu(&raw127, &cases[1].1, &["-O", "vhdx"])?;
    let _ = std::fs::remove_file(&raw127);
    ensure_sparse_raw(
        &cases[2].1,
        1024 * gib,
        &scattered(1024 * gib, 256, 4 << 20, 4),
    )?;

    let out = dir.join("out.vhd");
    let mut ours_16 = 0.0;
    for (label, input, qfmt, _size) in &cases {
        let (mut ours, mut qemu, mut qemu_flush) = (Vec::new(), Vec::new(), Vec::new());
        let (mut rss, mut usage, mut data) = (0, 0, 0);
        // qemu-img's default output cache mode for convert is `unsafe` (it never flushes);
        // vhdforge flushes before renaming. So qemu is also timed with `-t writeback`, which
        // flushes at the end like vhdforge does.
        let qemu_cmd = |cache: Option<&str>| {
            let mut c = std::process::Command::new("qemu-img");
            c.arg("convert");
            if let Some(cache) = cache {
                c.args(["-t", cache]);
            }
            c.args(qfmt)
                .args(["-O", "vpc", "-o", "subformat=fixed,force_size=on"])
                .arg(input)
                .arg(&out);
            c
        };
        for _ in 0..3 {
            // Flush everything first: dirty pages left by the previous run would otherwise
            // be written back during (and charged to) the next one.
            let _ = std::fs::remove_file(&out);
            run(&mut std::process::Command::new("sync"))?;
            let (t, r) = time_child(
                std::process::Command::new(&bin)
                    .args(["convert", "--json"])
                    .arg(input)
                    .arg(&out),
            )?;
            ours.push(t);
            rss = rss.max(r);
            usage = allocated_bytes(&out)?;
            data = nonzero_bytes(&out, 4096)?;
            for (cache, samples) in [(None, &mut qemu), (Some("writeback"), &mut qemu_flush)] {
                let _ = std::fs::remove_file(&out);
                run(&mut std::process::Command::new("sync"))?;
                samples.push(time_child(&mut qemu_cmd(cache))?.0);
            }
        }
        let _ = std::fs::remove_file(&out);
        let (o, q, qf) = (
            median(&mut ours),
            median(&mut qemu),
            median(&mut qemu_flush),
        );
        if label.starts_with("16") {
            ours_16 = o;
        }
        println!(
            "{label:>26}: vhdforge {o:.2} s | qemu-img {q:.2} s -> {:.2}x (target <= 0.7x) | qemu-img -t writeback {qf:.2} s -> {:.2}x | \
             output uses {:.3}x its non-zero data (target <= 1.02x) | peak RSS {} MiB",
            o / q,
            o / qf,
            usage as f64 / data.max(1) as f64,
            rss / 1024
        );
        if label.starts_with("1 TiB") && ours_16 > 0.0 {
            println!(
                "{:>26}  1 TiB / 16 GiB time: {:.2}x (target < 3x)",
                "",
                o / ours_16
            );
        }
    }
    // --in-place on the 1 TiB raw file (on a reflink-free copy: a sparse copy via cp).
    let copy = dir.join("inplace-1t.raw");
    let mut t = Vec::new();
    for _ in 0..3 {
        let _ = std::fs::remove_file(&copy);
        run(std::process::Command::new("cp")
            .arg("--sparse=always")
            .arg(&cases[2].1)
            .arg(&copy))?;
        run(&mut std::process::Command::new("sync"))?;
        let start = Instant::now();
        run(std::process::Command::new(&bin)
            .args(["convert", "--in-place"])
            .arg(&copy))?;
        t.push(start.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_file(&copy);
    println!(
        "{:>26}: {:.1} ms including process start (target < 50 ms)",
        "--in-place on 1 TiB raw",
        median(&mut t) * 1000.0
    );
    Ok(())
}

fn vhdforge_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("exe dir")?.join("vhdforge");
    if !bin.exists() {
        bail!(
            "{} not found: build it first with `cargo build --release -p vhdforge-cli`",
            bin.display()
        );
    }
    Ok(bin)
}

fn time(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let s = Instant::now();
    f()?;
    Ok(s.elapsed().as_secs_f64())
}
