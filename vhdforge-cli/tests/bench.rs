//! `vhdforge bench` against Azurite: a concurrency sweep of an in-memory sparse VHD, its
//! JSON report and SVG plot, and its blobs deleted afterwards (kept with --keep), also when
//! interrupted with Ctrl-C; behind the fault proxy, the 503s counted and the verdict
//! `service`-bound.

mod common;
mod remote_support;

use common::{Azurite, ACCOUNT, KEY};
use remote_support::shim::Shim;
use remote_support::*;
use serde_json::Value;
use std::io::Read as _;
use std::process::Stdio;
use std::time::{Duration, Instant};
use vhdforge_core::storage::sas::{self, SasTerms};
use vhdforge_core::storage::SharedKey;

fn setup(az: &Azurite, container: &str) -> String {
    let q = sas::account_sas(
        &SharedKey::new(ACCOUNT, KEY).unwrap(),
        &SasTerms {
            permissions: "rwdlc".into(),
            start: None,
            expiry: "2099-01-01T00:00:00Z".into(),
            https_only: false,
        },
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{}/{ACCOUNT}/{container}", az.port);
    let st = curl(
        &[
            "-X",
            "PUT",
            "-H",
            &format!("x-ms-version: {VERSION}"),
            "-H",
            "content-length: 0",
            &format!("{base}?restype=container&{q}"),
        ],
        None,
    );
    assert_eq!(st, 201, "create container");
    format!("{base}?{q}")
}

/// The blob names in the container.
fn listing(dir: &std::path::Path, container_sas: &str) -> String {
    let (base, q) = container_sas.split_once('?').unwrap();
    let out = dir.join("list.xml");
    let st = curl(
        &[
            "-H",
            &format!("x-ms-version: {VERSION}"),
            &format!("{base}?restype=container&comp=list&{q}"),
        ],
        Some(&out),
    );
    assert_eq!(st, 200);
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn bench_sweeps_reports_plots_and_cleans_up() {
    let az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = setup(&az, "bench");
    let plot = dir.path().join("curve.svg");
    let (code, out, err) = run(vhdforge().args([
        "bench",
        &dest,
        "--size",
        "64MiB",
        "--data",
        "50%",
        "--concurrency",
        "1,4",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]));
    assert_eq!(code, 0, "{err}");
    let sig = dest
        .split("sig=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    assert!(
        !out.contains(sig) && !err.contains(sig),
        "the SAS signature leaked"
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for (s, c) in steps.iter().zip([1, 4]) {
        assert_eq!(s["concurrency"], c);
        // Half of the 16 requests of 4 MiB, plus the footer page.
        assert_eq!(s["bytes"], 32 * MIB as u64 + 512);
        assert!(s["mib_per_s"].as_f64().unwrap() > 0.0);
        assert!(s["p50_ms"].as_f64().unwrap() <= s["p99_ms"].as_f64().unwrap());
        assert_eq!(s["status_503"], 0);
    }
    assert!(["client", "network", "service"].contains(&v["verdict"].as_str().unwrap()));
    assert!([1, 4].contains(&v["recommended_concurrency"].as_u64().unwrap()));
    assert!(v["projected_seconds_30g_8g"].as_f64().unwrap() > 0.0);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.matches("<polyline").count() == 2,
        "{svg}"
    );
    assert!(
        !listing(dir.path(), &dest).contains("vhdforge-bench-"),
        "bench blobs left behind"
    );

    // --keep keeps them; an existing --plot file is refused before anything is sent.
    let (code, out, err) = run(vhdforge().args([
        "bench",
        &dest,
        "--size",
        "8MiB",
        "--concurrency",
        "2",
        "--keep",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("verdict:")
            && out.contains("--concurrency 2")
            && out.contains("kept (--keep): bench blob http://"),
        "{out}"
    );
    assert!(err.contains("concurrency  2:"), "{err}");
    assert_eq!(
        listing(dir.path(), &dest)
            .matches("<Name>vhdforge-bench-")
            .count(),
        1
    );
    let (code, _, err) = run(vhdforge().args([
        "bench",
        &dest,
        "--size",
        "8MiB",
        "--plot",
        plot.to_str().unwrap(),
    ]));
    assert_eq!(code, 2);
    assert!(err.contains("must be a new file"), "{err}");
    assert_eq!(
        listing(dir.path(), &dest)
            .matches("<Name>vhdforge-bench-")
            .count(),
        1
    );
}

#[test]
fn ctrl_c_mid_sweep_deletes_the_bench_blobs() {
    let az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = setup(&az, "benchint");
    // 1 GiB of data at one request in flight: minutes of sending, far longer than the test.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vhdforge"))
        .args([
            "bench",
            &dest,
            "--size",
            "1GiB",
            "--data",
            "100%",
            "--concurrency",
            "1,2",
        ])
        .env_remove("VHDFORGE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Mid-step: the step's blob exists and is being written.
    let t = Instant::now();
    while !listing(dir.path(), &dest).contains("<Name>vhdforge-bench-") {
        if t.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no bench blob appeared within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "bench ended before the signal: the test proves nothing"
    );
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: signalling our own child, which has not been reaped yet (pid still valid).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let sent = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running 20 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    // Interrupted is an error like any other (exit 2), said in one clean message.
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("interrupted on request (Ctrl-C)")
            && err.contains("the bench blobs were deleted"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        sent.elapsed()
    );
    let list = listing(dir.path(), &dest);
    assert!(!list.contains("vhdforge-bench-"), "bench blob left: {list}");
}

#[test]
fn throttling_behind_the_fault_proxy_is_counted_and_judged() {
    let az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = setup(&az, "benchfault");
    // Every third write through the proxy is answered 503 ServerBusy by the proxy itself.
    let shim = Shim::start_faulty(az.port);
    let via_proxy = dest.replacen(&format!(":{}/", az.port), &format!(":{}/", shim.port), 1);
    assert_ne!(via_proxy, dest);
    let (code, out, err) = run(vhdforge().args([
        "bench",
        &via_proxy,
        "--size",
        "16MiB",
        "--data",
        "50%",
        "--request-size",
        "1MiB",
        "--concurrency",
        "1,2",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let steps = v["steps"].as_array().unwrap();
    let count = |k: &str| steps.iter().map(|s| s[k].as_u64().unwrap()).sum::<u64>();
    let injected = shim.seen.lock().unwrap().faults;
    assert!(injected >= 3, "the proxy injected only {injected} faults");
    // Each 503 the proxy sent was seen, counted once, and retried; nothing else failed.
    assert_eq!(count("status_503"), injected, "{out}");
    assert_eq!(count("retries"), injected, "{out}");
    assert_eq!(count("status_500") + count("status_429"), 0);
    for s in steps {
        // Every page arrived all the same: 8 data requests of 1 MiB and the footer.
        assert_eq!(s["bytes"], 8 * MIB as u64 + 512);
    }
    assert_eq!(v["verdict"], "service", "{out}");
    assert!(
        v["reason"].as_str().unwrap().contains("503/429"),
        "{}",
        v["reason"]
    );
    assert!(
        !listing(dir.path(), &dest).contains("vhdforge-bench-"),
        "bench blobs left behind"
    );
}
