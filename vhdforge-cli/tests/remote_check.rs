//! After the upload (issue 14): `check URL` / `info URL` judge a blob in Azurite as `check
//! FILE` judges a file, and `sas URL` prints the Partner Center URI only after trying it.
//! A second, plain HTTP client (curl) writes the wrong blobs and downloads through the SAS.

use serde_json::Value;
use std::path::Path;

mod common;
mod remote_support;
use common::{Azurite, ACCOUNT, KEY};
use remote_support::*;

fn container_sas(container: &str, perms: &str) -> String {
    container_sas_for(ACCOUNT, KEY, container, perms)
}

fn upload(az: &Azurite, src: &Path, container: &str, blob: &str) {
    let (code, out, err) = run(vhdforge()
        .env("AZURE_STORAGE_CONNECTION_STRING", az.connection_string())
        .args(["upload", "--create-container"])
        .arg(src)
        .arg(az.blob_url(container, blob)));
    assert_eq!(code, 0, "{out}{err}");
}

fn check_json(az: &Azurite, container: &str, blob: &str) -> (i32, Value) {
    let (code, out, err) = run(vhdforge()
        .env("AZURE_STORAGE_CONNECTION_STRING", az.connection_string())
        .args(["check", "--json"])
        .arg(az.blob_url(container, blob)));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    (code, v)
}

fn codes(v: &Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect()
}

/// A sparse source with data in three places, 20 MiB + 3 sectors (not whole MiB).
fn content() -> Vec<u8> {
    let size = 20 * MIB + 3 * 512;
    fixtures::raw::disk_with_regions(
        size,
        &[(0, 8192), (MIB + 100, 300_000), (size - 4096, 4096)],
        5,
    )
}

/// Every kind of source `upload` takes arrives Azure-ready, and `check URL` says so with
/// the file report's fields: fixed VHD, upload size = blob length, allocated bytes from
/// the page ranges (the sparse data, not the 21 MiB).
#[test]
fn check_url_passes_every_uploaded_fixture() {
    let az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let content = content();
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, &content).unwrap();
    let mut sources = vec![raw.clone()];
    for (name, args) in [
        ("q.vhdx", &["-O", "vhdx"][..]),
        ("q.vhd", &["-O", "vpc", "-o", "force_size=on"][..]),
    ] {
        let p = dir.path().join(name);
        let st = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw"])
            .args(args)
            .arg(&raw)
            .arg(&p)
            .status()
            .expect("qemu-img is required (scripts/setup.sh)");
        assert!(st.success());
        sources.push(p);
    }
    let fixed = dir.path().join("fixed.vhd");
    let mut padded = content.clone();
    padded.resize(21 * MIB, 0);
    std::fs::write(
        &fixed,
        fixtures::vhd::fixed_vhd(&padded, &fixtures::vhd::FooterOptions::default(), false),
    )
    .unwrap();
    sources.push(fixed);
    for (i, src) in sources.iter().enumerate() {
        let blob = format!("fixture-{i}.vhd");
        upload(&az, src, "checks", &blob);
        let (code, v) = check_json(&az, "checks", &blob);
        assert_eq!(code, 0, "{}: {v:#}", src.display());
        assert_eq!(v["azure_ready"], true);
        assert_eq!(v["blob_type"], "PageBlob");
        assert_eq!(v["format"], "vhd");
        assert_eq!(v["disk_type"], "fixed");
        assert_eq!(v["virtual_size"], 21 * MIB as u64);
        assert_eq!(v["upload_size_bytes"], v["blob_size"]);
        assert_eq!(v["blob_size"], 21 * MIB as u64 + 512);
        let alloc = v["allocated_bytes"].as_u64().unwrap();
        assert!(
            (8192 + 300_000 + 4096..2 * MIB as u64).contains(&alloc),
            "{}: allocated {alloc}",
            src.display()
        );
        assert!(!v["path"].as_str().unwrap().contains("sig="));
        // The text report says the same.
        let (code, out, err) = run(vhdforge()
            .env("AZURE_STORAGE_CONNECTION_STRING", az.connection_string())
            .arg("info")
            .arg(az.blob_url("checks", &blob)));
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("PageBlob") && out.contains("fixed VHD"),
            "{out}"
        );
    }
}

/// A block blob (uploaded with the wrong tool) and a VHDX copied byte for byte into a page
/// blob are named as such, with the fix, and fail the check (exit 1).
#[test]
fn check_url_names_a_block_blob_and_an_unconverted_vhdx() {
    let az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let sas = container_sas("wrong", "racwl");
    // The container, through the shared client.
    let seed = dir.path().join("seed.raw");
    std::fs::write(&seed, vec![0u8; 20 * MIB]).unwrap();
    upload(&az, &seed, "wrong", "seed.vhd");

    let mut padded = content();
    padded.resize(21 * MIB, 0);
    let vhd = dir.path().join("fixed.vhd");
    std::fs::write(
        &vhd,
        fixtures::vhd::fixed_vhd(&padded, &fixtures::vhd::FooterOptions::default(), false),
    )
    .unwrap();
    let block_url = format!("{}?{sas}", az.blob_url("wrong", "block.vhd"));
    let status = curl(
        &[
            "-X",
            "PUT",
            "-H",
            "x-ms-blob-type: BlockBlob",
            "-H",
            "x-ms-version: 2021-08-06",
            "--data-binary",
            &format!("@{}", vhd.display()),
            &block_url,
        ],
        None,
    );
    assert_eq!(status, 201);
    let (code, v) = check_json(&az, "wrong", "block.vhd");
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["blob_type"], "BlockBlob");
    assert_eq!(v["azure_ready"], false);
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "remote.blob_type")
        .unwrap_or_else(|| panic!("{v:#}"));
    assert!(f["message"].as_str().unwrap().contains("page blob"), "{f}");

    // A VHDX put into a page blob as it is.
    let qv = dir.path().join("q.vhdx");
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, content()).unwrap();
    assert!(std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vhdx"])
        .arg(&raw)
        .arg(&qv)
        .status()
        .expect("qemu-img is required")
        .success());
    let mut bytes = std::fs::read(&qv).unwrap();
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    let page_url = format!("{}?{sas}", az.blob_url("wrong", "vhdx-as-is.vhd"));
    let status = curl(
        &[
            "-X",
            "PUT",
            "-H",
            "x-ms-blob-type: PageBlob",
            "-H",
            "x-ms-version: 2021-08-06",
            "-H",
            &format!("x-ms-blob-content-length: {}", bytes.len()),
            "-H",
            "Content-Length: 0",
            &page_url,
        ],
        None,
    );
    assert_eq!(status, 201);
    for (i, chunk) in bytes.chunks(4 * MIB).enumerate() {
        if chunk.iter().all(|&b| b == 0) {
            continue;
        }
        let piece = dir.path().join("piece");
        std::fs::write(&piece, chunk).unwrap();
        let start = i * 4 * MIB;
        let status = curl(
            &[
                "-X",
                "PUT",
                "-H",
                "x-ms-page-write: update",
                "-H",
                "x-ms-version: 2021-08-06",
                "-H",
                &format!("x-ms-range: bytes={start}-{}", start + chunk.len() - 1),
                "--data-binary",
                &format!("@{}", piece.display()),
                &format!("{page_url}&comp=page"),
            ],
            None,
        );
        assert_eq!(status, 201);
    }
    let (code, v) = check_json(&az, "wrong", "vhdx-as-is.vhd");
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["format"], "vhdx");
    let c = codes(&v);
    assert!(c.contains(&"remote.not_converted".to_string()), "{c:?}");
    assert!(c.contains(&"azure.not_fixed_vhd".to_string()), "{c:?}");
}

fn query_of(uri: &str) -> std::collections::HashMap<String, String> {
    let q = uri.split_once('?').unwrap().1;
    q.split('&')
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap();
            let v = percent_decode(v);
            (n.to_string(), v)
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Seconds since the epoch of `YYYY-MM-DDThh:mm:ssZ` (days from civil, the inverse of the
/// tool's own formatter, written independently here).
fn parse_iso(t: &str) -> i64 {
    assert_eq!(t.len(), 20, "{t}");
    assert!(t.ends_with('Z') && &t[10..11] == "T", "{t}");
    let n = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let (hh, mm, ss) = (n(11..13), n(14..16), n(17..19));
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + hh * 3600 + mm * 60 + ss
}

/// `sas URL`: the URI Partner Center needs (sp=rl, sr=c, st a day back, se 30 days ahead,
/// full ISO-8601), which a plain client downloads through and cannot write with; the
/// signature is printed only as the product; bad terms and names are refused.
#[test]
fn sas_uri_downloads_and_refuses_writes() {
    let az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let mut padded = content();
    padded.resize(21 * MIB, 0);
    let vhd = dir.path().join("fixed.vhd");
    let image = fixtures::vhd::fixed_vhd(&padded, &fixtures::vhd::FooterOptions::default(), false);
    std::fs::write(&vhd, &image).unwrap();
    upload(&az, &vhd, "offer", "os-disk.vhd");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (code, out, err) = run(vhdforge()
        .env("AZURE_STORAGE_CONNECTION_STRING", az.connection_string())
        .args(["-vv", "sas", "--json"])
        .arg(az.blob_url("offer", "os-disk.vhd")));
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let uri = v["uri"].as_str().unwrap().to_string();
    assert!(uri.starts_with(&format!("{}?", az.blob_url("offer", "os-disk.vhd"))));
    let q = query_of(&uri);
    assert_eq!(q["sp"], "rl");
    assert_eq!(q["sr"], "c");
    assert!(!q.contains_key("spr"), "plain-http Azurite: no spr=https");
    let st = parse_iso(&q["st"]);
    let se = parse_iso(&q["se"]);
    assert!((st - (now - 86_400)).abs() < 300, "st {}", q["st"]);
    assert!((se - (now + 30 * 86_400)).abs() < 300, "se {}", q["se"]);
    assert!(se - now >= 21 * 86_400);
    let sig = q["sig"].clone();
    assert!(!sig.is_empty());
    // The signature appears in the product only, never in the log (-vv shows headers).
    assert!(
        !err.contains(&sig) && !err.contains(sig.split('%').next().unwrap()),
        "{err}"
    );
    assert!(!v["url"].as_str().unwrap().contains(&sig));

    // A second client downloads through it: the footer, and the whole blob, as uploaded.
    let got = dir.path().join("got.vhd");
    assert_eq!(
        curl(&["-H", "x-ms-version: 2021-08-06", &uri], Some(&got)),
        200
    );
    assert_eq!(std::fs::read(&got).unwrap(), image);
    // Writes are refused with it.
    assert_eq!(
        curl(
            &[
                "-X",
                "PUT",
                "-H",
                "x-ms-page-write: clear",
                "-H",
                "x-ms-version: 2021-08-06",
                "-H",
                "x-ms-range: bytes=0-511",
                "-H",
                "Content-Length: 0",
                &format!("{uri}&comp=page"),
            ],
            None,
        ),
        403
    );
    // Text mode prints the URI alone on stdout.
    let (code, out, _) = run(vhdforge()
        .env("AZURE_STORAGE_CONNECTION_STRING", az.connection_string())
        .args(["sas", "--days", "21"])
        .arg(az.blob_url("offer", "os-disk.vhd")));
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    let q = query_of(out.trim());
    assert!((parse_iso(&q["se"]) - (now + 21 * 86_400)).abs() < 300);

    // Refused: too short a validity, a name with a space, a blob that is not Azure-ready.
    let (code, out, _) = run(vhdforge()
        .env("AZURE_STORAGE_CONNECTION_STRING", az.connection_string())
        .args(["sas", "--json", "--days", "14"])
        .arg(az.blob_url("offer", "os-disk.vhd")));
    assert_eq!(code, 2);
    assert!(out.contains("sas.terms"), "{out}");
    let (code, out, _) = run(vhdforge()
        .env("AZURE_STORAGE_CONNECTION_STRING", az.connection_string())
        .args(["sas", "--json"])
        .arg(az.blob_url("offer", "my%20disk.vhd")));
    assert_eq!(code, 2);
    assert!(out.contains("sas.blob_name"), "{out}");
    let raw = dir.path().join("r.raw");
    std::fs::write(&raw, &padded).unwrap();
    // A VHD whose footer says dynamic is not ready: a raw image copied as a page blob.
    let bad_url = format!(
        "{}?{}",
        az.blob_url("offer", "raw.vhd"),
        container_sas("offer", "rcw")
    );
    assert_eq!(
        curl(
            &[
                "-X",
                "PUT",
                "-H",
                "x-ms-blob-type: PageBlob",
                "-H",
                "x-ms-version: 2021-08-06",
                "-H",
                "x-ms-blob-content-length: 22020096",
                "-H",
                "Content-Length: 0",
                &bad_url,
            ],
            None
        ),
        201
    );
    let (code, out, _) = run(vhdforge()
        .env("AZURE_STORAGE_CONNECTION_STRING", az.connection_string())
        .args(["sas", "--json"])
        .arg(az.blob_url("offer", "raw.vhd")));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("sas.not_ready") && !out.contains("sig="),
        "{out}"
    );
}
