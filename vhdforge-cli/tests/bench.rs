//! `vhdforge bench` against Azurite: a concurrency sweep of an in-memory sparse VHD, its
//! JSON report and SVG plot, and its blobs deleted afterwards (kept with --keep).

mod common;
mod remote_support;

use common::{Azurite, ACCOUNT, KEY};
use remote_support::*;
use serde_json::Value;
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
        out.contains("verdict:") && out.contains("--concurrency 2"),
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
