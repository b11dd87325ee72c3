//! Red team rt7: the speculative CRC-64 of mapped steps (`upload/send.rs`,
//! `RunningDigest::speculate`) and the rewritten zero scan (`sparse::for_each_nonzero_run`),
//! attacked with layouts that put request boundaries inside 256 KiB steps, zero gaps around
//! the bridge, pages whose data hides past their first word, and single bytes at the end of
//! a page, step, piece or disk. Oracles: a byte-by-byte reference scan; a real Azurite
//! (which refuses a Put Page whose `x-ms-content-crc64` does not match its body: checked
//! here first) and the downloaded blob compared byte for byte with the source; for
//! `convert`, the output compared with the source directly and through `qemu-img compare`.

mod upload_common;

use md5::Digest as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use upload_common::*;
use vhdforge_core::upload::{self, NoProgress, UploadOptions};

const MIB: usize = 1 << 20;
const STEP: usize = 256 << 10;

fn azurite() -> &'static Azurite {
    static AZ: OnceLock<Azurite> = OnceLock::new();
    AZ.get_or_init(Azurite::start)
}

/// The oracle first: Azurite must refuse a Put Page whose CRC-64 header is wrong, and write
/// nothing, or the upload tests below prove nothing about the per-request values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_refuses_a_put_page_whose_crc64_is_wrong() {
    let az = azurite();
    az.create_container("oracle").await;
    let r = az
        .signed_with_body(
            "PUT",
            "/oracle/b.vhd",
            &[],
            &[
                ("x-ms-blob-type", "PageBlob"),
                ("x-ms-blob-content-length", "1048576"),
            ],
            Vec::new(),
        )
        .await;
    assert!(r.status().is_success(), "create: {}", r.status());
    let body = noise(5, 4096);
    let good = vhdforge_core::storage::blob::crc64_header(&body);
    let mut bad_body = body.clone();
    bad_body[4095] ^= 1;
    let bad = vhdforge_core::storage::blob::crc64_header(&bad_body);
    assert_ne!(good, bad);
    async fn put(az: &Azurite, crc: String, body: Vec<u8>) -> reqwest::Response {
        az.signed_with_body(
            "PUT",
            "/oracle/b.vhd",
            &[("comp", "page")],
            &[
                ("x-ms-page-write", "update"),
                ("x-ms-range", "bytes=8192-12287"),
                ("x-ms-content-crc64", crc.as_str()),
            ],
            body,
        )
        .await
    }
    let r = put(az, bad, body.clone()).await;
    assert_eq!(r.status().as_u16(), 400, "a wrong CRC-64 was accepted");
    let (blob, _) = az.download("oracle", "b.vhd").await;
    assert!(
        blob.iter().all(|&b| b == 0),
        "a refused Put Page wrote data"
    );
    let r = put(az, good, body.clone()).await;
    assert_eq!(r.status().as_u16(), 201, "the right CRC-64 was refused");
    let (blob, _) = az.download("oracle", "b.vhd").await;
    assert_eq!(&blob[8192..12288], &body[..]);
}

/// Reference: a granule is non-zero when any of its bytes is.
fn reference_runs(buf: &[u8], base: u64, g: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    let len = buf.len() as u64;
    while pos < len {
        let end = ((base + pos) / g * g + g - base).min(len);
        if buf[pos as usize..end as usize].iter().any(|&b| b != 0) {
            match out.last_mut() {
                Some((s, l)) if *s + *l == base + pos => *l += end - pos,
                _ => out.push((base + pos, end - pos)),
            }
        }
        pos = end;
    }
    out
}

#[test]
fn zero_scan_finds_data_wherever_it_hides_in_a_granule() {
    // Every position of one non-zero byte in buffers of several lengths, at bases aligned
    // and not to the granule: the first word of each granule is zero whenever the byte is
    // past it, so these exercise the `is_zero` fallback and the cut first granule.
    for g in [1u64, 7, 8, 9, 512, 4096, 65536] {
        for base in [0u64, 1, 7, 8, 511, 512, 513, 4095, (1 << 40) - 3] {
            for len in [
                0usize, 1, 7, 8, 9, 63, 64, 65, 511, 512, 513, 1500, 4100, 9000,
            ] {
                let positions: Vec<usize> = if len <= 600 {
                    (0..len).collect()
                } else {
                    (0..len)
                        .step_by(61)
                        .chain([len - 1, len - 8, len / 2])
                        .collect()
                };
                for &p in &positions {
                    let mut buf = vec![0u8; len];
                    buf[p] = 0x80;
                    let mut got = Vec::new();
                    vhdforge_core::sparse::for_each_nonzero_run(&buf, base, g, |s, l| {
                        got.push((s, l))
                    });
                    assert_eq!(
                        got,
                        reference_runs(&buf, base, g),
                        "g {g} base {base} len {len} byte at {p}"
                    );
                }
                let mut got = Vec::new();
                vhdforge_core::sparse::for_each_nonzero_run(&vec![0u8; len], base, g, |s, l| {
                    got.push((s, l))
                });
                assert!(
                    got.is_empty(),
                    "g {g} base {base} len {len}: zeros called data"
                );
            }
        }
    }
    // Random sparse bytes in a big buffer with 512-byte granules (the upload's and
    // convert's granule), many bases.
    let mut x = 0x1234_5678_9abc_def1u64;
    for round in 0..200 {
        let len = 1 + (x % (300 << 10)) as usize;
        let mut buf = vec![0u8; len];
        let hits = 1 + (x >> 20) % 40;
        for _ in 0..hits {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x % len as u64) as usize;
            buf[at] = (x >> 56) as u8 | 1;
        }
        let base = (x >> 8) % 4096;
        let mut got = Vec::new();
        vhdforge_core::sparse::for_each_nonzero_run(&buf, base, 512, |s, l| got.push((s, l)));
        assert_eq!(got, reference_runs(&buf, base, 512), "round {round}");
    }
}

/// A page of `kind`: 0 zero, 1 noise, 2 first 8 bytes zero then one byte, 3 only its last
/// byte, 4 only byte 8.
fn page(kind: u8, seed: u64) -> [u8; 512] {
    let mut p = [0u8; 512];
    match kind {
        0 => {}
        1 => p.copy_from_slice(&noise(seed, 512)),
        2 => p[8 + (seed % 504) as usize] = 0x5a,
        3 => p[511] = 1,
        _ => p[8] = 2,
    }
    p
}

/// The hostile raw layouts (name, bytes). All sizes are multiples of 512 (the whole source
/// is mapped: every piece is one stored range of the file), most not of 256 KiB.
fn layouts() -> Vec<(&'static str, Vec<u8>)> {
    let mut v: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let size = 21 * MIB + 128 * 1024 + 512;
    // Data from page 1: every request starts at an odd page, so the 4 MiB cap ends them
    // inside steps.
    let mut d = noise(1, size);
    d[..512].fill(0);
    v.push(("from page 1", d));
    // Data from 4 MiB - 512: the first request ends 512 bytes before the end of a step.
    let mut d = noise(2, size);
    d[..4 * MIB - 512].fill(0);
    v.push(("from 4 MiB - 512", d));
    // Pages whose first word is zero (data later), pages with only their last byte, zero
    // pages, noise: the zero test's fallback on every granule.
    let mut d = Vec::with_capacity(size);
    for i in 0..size / 512 {
        d.extend_from_slice(&page([2u8, 3, 4, 2, 1, 0, 3][i % 7], i as u64));
    }
    v.push(("hidden words", d));
    // Zero gaps of the bridge - 512, the bridge and the bridge + 512 (64 KiB default, 0,
    // 1 MiB in the variants) ending at, starting at and straddling step edges.
    let mut d = noise(3, size);
    let mut at = STEP;
    for gap in [
        (64 << 10) - 512,
        64 << 10,
        (64 << 10) + 512,
        512,
        MIB - 512,
        MIB,
        MIB + 512,
    ] {
        for (k, start) in [at - gap, at, at - gap / 2].into_iter().enumerate() {
            let s = start + k * 2 * MIB / 3 / 512 * 512;
            if s + gap < size {
                d[s..s + gap].fill(0);
            }
        }
        at += 2 * MIB - STEP / 2;
    }
    v.push(("gaps at the bridge", d));
    // Steps dense but for their last page, or their first, or both.
    let mut d = noise(4, size);
    for (i, s) in (0..size).step_by(STEP).enumerate() {
        if i % 3 != 1 && s + STEP <= size {
            d[s + STEP - 512..s + STEP].fill(0);
        }
        if i % 3 != 0 {
            d[s..s + 512].fill(0);
        }
    }
    v.push(("steps with a zero edge page", d));
    // Zero but for one byte at the end of a page, a step, a piece and the disk (a written
    // file, not sparse: every piece is mapped and scanned).
    let mut d = vec![0u8; size];
    for at in [
        511,
        3 * 512 + 511,
        STEP - 1,
        3 * STEP - 1,
        4 * MIB - 1,
        4 * MIB + 511,
        8 * MIB - 1,
        size - 1,
    ] {
        d[at] = 0xff;
    }
    v.push(("single last bytes", d));
    // Random runs of page kinds with lengths near the bridge and the step.
    let mut d = Vec::with_capacity(size);
    let mut x = 99u64;
    while d.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run = [1usize, 2, 127, 128, 129, 511, 512, 513, 2048][(x % 9) as usize];
        let kind = ((x >> 8) % 5) as u8;
        for j in 0..run {
            if d.len() >= size {
                break;
            }
            d.extend_from_slice(&page(kind, x.wrapping_add(j as u64)));
        }
    }
    v.push(("random runs", d));
    v
}

/// One upload variant: (name, options changes).
fn variants(az: &Azurite) -> Vec<(&'static str, UploadOptions)> {
    let base = UploadOptions {
        retry: vhdforge_core::upload::RetryPolicy {
            // A wrong CRC-64 is refused on every attempt: fail fast, not after 12.
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
        ..quick_opts(az)
    };
    vec![
        ("mapped crc64", base.clone()),
        (
            "mapped crc64 bridge 0",
            UploadOptions {
                bridge_bytes: 0,
                ..base.clone()
            },
        ),
        (
            "mapped crc64 bridge 1 MiB",
            UploadOptions {
                bridge_bytes: 1 << 20,
                ..base.clone()
            },
        ),
        (
            "pread crc64",
            UploadOptions {
                map_source: false,
                ..base.clone()
            },
        ),
        (
            "mapped md5 per request",
            UploadOptions {
                md5_per_request: true,
                ..base.clone()
            },
        ),
        (
            "mapped crc64 content-md5",
            UploadOptions {
                content_md5: true,
                ..base
            },
        ),
    ]
}

/// Upload `path` with every variant and check each blob against `want` (the disk area:
/// followed by a fresh fixed footer) or `exact` (the whole blob, for an Azure-ready VHD).
async fn upload_all_ways(
    az: &Azurite,
    container: &str,
    name: &str,
    path: &Path,
    want: &[u8],
    exact: bool,
) {
    for (vname, opts) in variants(az) {
        let blob = format!("{}-{}.vhd", name.replace(' ', "-"), vname.replace(' ', "-"));
        let url = az.blob_url(container, &blob);
        let t = Instant::now();
        let content_md5 = opts.content_md5;
        let r = tokio::time::timeout(
            Duration::from_secs(120),
            upload::upload(path, &url, opts, Arc::new(NoProgress)),
        )
        .await
        .unwrap_or_else(|_| panic!("{name} / {vname}: upload hung"));
        let summary = r.unwrap_or_else(|e| panic!("{name} / {vname}: {e}"));
        // Azurite on loopback corrupts nothing: any retry here is a Put Page refused for a
        // wrong integrity value, which the sender heals by reading the range again and
        // recomputing it (so a wrong speculative CRC-64 would otherwise go unnoticed).
        assert_eq!(
            summary.retries, 0,
            "{name} / {vname}: requests were retried"
        );
        let (got, headers) = az.download(container, &blob).await;
        if exact {
            assert!(got == want, "{name} / {vname}: blob differs from the VHD");
        } else {
            assert_eq!(got.len(), want.len() + 512, "{name} / {vname}: size");
            if let Some(i) = got[..want.len()].iter().zip(want).position(|(a, b)| a != b) {
                panic!("{name} / {vname}: blob differs from the source at byte {i}");
            }
            assert_stream(&got, want);
        }
        if content_md5 {
            use base64::Engine as _;
            let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&got));
            assert_eq!(
                headers.get("content-md5").and_then(|v| v.to_str().ok()),
                Some(md5.as_str()),
                "{name} / {vname}: Content-MD5"
            );
        }
        eprintln!("{name} / {vname}: ok in {:?}", t.elapsed());
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The disk area of raw `bytes`: padded with zeros to a whole MiB.
fn area(bytes: &[u8]) -> Vec<u8> {
    let mut a = bytes.to_vec();
    a.resize(bytes.len().div_ceil(MIB) * MIB, 0);
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_raw_layouts_upload_byte_identical_every_way() {
    let az = azurite();
    az.create_container("rt7").await;
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in layouts() {
        let path = write(
            dir.path(),
            &format!("{}.raw", name.replace(' ', "-")),
            &bytes,
        );
        upload_all_ways(az, "rt7", name, &path, &area(&bytes), false).await;
    }
    // A sparse file with data at 4 KiB-aligned offsets that are not step-aligned: pieces
    // (and so steps) start where the data does, runs of hidden-word pages in them.
    let size = 21 * MIB + 512;
    let mut want = vec![0u8; size];
    let path = dir.path().join("sparse-odd.raw");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size as u64).unwrap();
    for (i, (off, len)) in [
        (3 * 4096, 700 * 1024),
        (MIB + 8192, 3 * MIB + 4096),
        (5 * MIB - 4096, 8192),
        (7 * MIB + 12 * 4096, 4 * MIB + 512),
        (size - 4096 - 512, 4096 + 512),
    ]
    .into_iter()
    .enumerate()
    {
        use std::os::unix::fs::FileExt;
        let data: Vec<u8> = (0..len / 512)
            .flat_map(|k| page([2u8, 1, 3, 0, 4][(k + i) % 5], (k * 7 + i) as u64))
            .collect();
        f.write_all_at(&data, off as u64).unwrap();
        want[off..off + len].copy_from_slice(&data);
    }
    drop(f);
    upload_all_ways(az, "rt7", "sparse odd", &path, &area(&want), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_vhd_and_vhdx_layouts_upload_byte_identical_every_way() {
    let az = azurite();
    az.create_container("rt7b").await;
    let dir = tempfile::tempdir().unwrap();
    let all = layouts();
    let hidden = &all.iter().find(|(n, _)| *n == "hidden words").unwrap().1;
    let runs = &all.iter().find(|(n, _)| *n == "random runs").unwrap().1;
    // An Azure-ready fixed VHD (mapped, sent with its own footer).
    let content = area(hidden);
    let raw = write(dir.path(), "hidden.raw", &content);
    let ready = azure_ready_vhd(&raw, dir.path(), "ready.vhd");
    let bytes = std::fs::read(&ready).unwrap();
    upload_all_ways(az, "rt7b", "fixed vhd", &ready, &bytes, true).await;

    // A VHDX with 1 MiB blocks, some absent (all-zero content), the rest random runs of
    // page kinds: pieces end where blocks do, requests cross them.
    let mut content = area(runs);
    for b in [1usize, 2, 6, 11] {
        content[b * MIB..(b + 1) * MIB].fill(0);
    }
    let built = fixtures::vhdx::build(
        &fixtures::vhdx::VhdxSpec::dynamic(1 << 20, uuid::Uuid::from_u128(7)),
        &content,
    );
    let vhdx = fixtures::vhdx::write_file(dir.path(), "holes.vhdx", &built.bytes);
    upload_all_ways(az, "rt7b", "vhdx 1 MiB blocks", &vhdx, &content, false).await;

    // A dynamic VHD with 512 KiB blocks written in order (each block's data one stored
    // range, a bitmap between blocks), some blocks absent.
    let content = area(hidden);
    let mut sv = fixtures::vhd::SparseVhd::new(
        content.len() as u64,
        512 << 10,
        fixtures::vhd::FooterOptions::default(),
    );
    let mut want = vec![0u8; content.len()];
    for (i, block) in content.chunks(512 << 10).enumerate() {
        if i % 5 != 2 {
            sv.write((i * (512 << 10)) as u64, block);
            want[i * (512 << 10)..][..block.len()].copy_from_slice(block);
        }
    }
    let vhd = write(dir.path(), "dyn.vhd", &sv.build());
    upload_all_ways(az, "rt7b", "dynamic vhd", &vhd, &want, false).await;
}

#[test]
fn convert_keeps_every_hidden_byte() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = std::process::Command::new("qemu-img")
        .arg("--version")
        .output();
    assert!(
        qemu.is_ok_and(|o| o.status.success()),
        "qemu-img is needed (scripts/setup.sh installs it)"
    );
    for (name, bytes) in layouts() {
        let raw = write(
            dir.path(),
            &format!("{}.raw", name.replace(' ', "-")),
            &bytes,
        );
        let out = dir.path().join(format!("{}.vhd", name.replace(' ', "-")));
        let image = vhdforge_core::open(&raw, &Default::default()).unwrap();
        vhdforge_core::convert::convert_to_file(
            image.as_ref(),
            &out,
            &vhdforge_core::convert::ConvertOptions {
                no_clone: true,
                ..Default::default()
            },
            &vhdforge_core::progress::NoProgress,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        drop(image);
        let got = std::fs::read(&out).unwrap();
        let want = area(&bytes);
        assert_eq!(got.len(), want.len() + 512, "{name}: size");
        if let Some(i) = got[..want.len()]
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
        {
            panic!("{name}: convert output differs from the source at byte {i}");
        }
        // The independent reader: qemu-img sees the same disk as the padded source.
        let padded = write(dir.path(), "padded.raw", &want);
        let o = std::process::Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "vpc"])
            .arg(&padded)
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: qemu-img compare: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Sets `cancel` once `after` requests completed (Ctrl-C mid-upload).
struct CancelAfter {
    after: u64,
    done: std::sync::atomic::AtomicU64,
    cancel: vhdforge_core::progress::Cancel,
}

impl vhdforge_core::upload::Progress for CancelAfter {
    fn cancel(&self) -> vhdforge_core::progress::Cancel {
        self.cancel.clone()
    }
    fn advance(&self, _bytes: u64) {
        use std::sync::atomic::Ordering;
        if self.done.fetch_add(1, Ordering::SeqCst) + 1 >= self.after {
            self.cancel.cancel();
        }
    }
}

/// A run interrupted after a few requests, then `--resume`d: the resumed run reads only
/// the pieces not done (a request never spans a skipped piece, so speculations start over
/// after each) and clears the pages the first run wrote where the source is zero. The
/// blob must be the source, with no request retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layouts_resumed_after_an_interruption_are_byte_identical() {
    let az = azurite();
    az.create_container("rt7r").await;
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let all = layouts();
    for name in ["gaps at the bridge", "random runs", "hidden words"] {
        let bytes = &all.iter().find(|(n, _)| *n == name).unwrap().1;
        let path = write(
            dir.path(),
            &format!("r-{}.raw", name.replace(' ', "-")),
            bytes,
        );
        let url = az.blob_url("rt7r", &format!("{}.vhd", name.replace(' ', "-")));
        let opts = |resume: bool| UploadOptions {
            concurrency: 1,
            resume,
            journal_interval: Duration::ZERO,
            state_dir: Some(state.path().to_path_buf()),
            ..quick_opts(az)
        };
        let stop = Arc::new(CancelAfter {
            after: 3,
            done: Default::default(),
            cancel: vhdforge_core::progress::Cancel::new(),
        });
        let first = tokio::time::timeout(
            Duration::from_secs(120),
            upload::upload(&path, &url, opts(false), stop),
        )
        .await
        .expect("bounded");
        let e = first.expect_err("the first run was interrupted");
        assert_eq!(e.code(), "upload.cancelled", "{name}: {e}");
        let summary = tokio::time::timeout(
            Duration::from_secs(120),
            upload::upload(&path, &url, opts(true), Arc::new(NoProgress)),
        )
        .await
        .expect("bounded")
        .unwrap_or_else(|e| panic!("{name}: resume: {e}"));
        assert!(
            summary.bytes_already_present > 0,
            "{name}: the resume sent everything again"
        );
        assert_eq!(summary.retries, 0, "{name}: requests were retried");
        let (got, _) = az
            .download("rt7r", &format!("{}.vhd", name.replace(' ', "-")))
            .await;
        assert_stream(&got, &area(bytes));
    }
}
