//! Red team rt8: a plain-http client loads no trust roots (commit 6cac835). The https tests
//! all pass `--ca-cert`, which a client without the built-in and system roots still honours,
//! so they could not tell an https client that lost its roots. These run with the test CA
//! only in the system store (`SSL_CERT_FILE`, which rustls-native-certs reads on Linux) and
//! no `--ca-cert`: what a real Azure upload relies on. They also mix an http (loopback) and
//! an https endpoint in one `copy --via client`, whose two clients must each get their own
//! trust, and check that a server the system store does not trust is still refused.

use std::path::Path;

mod common;
mod remote_support;
use common::{Azurite, TestPki, ACCOUNT, KEY};
use remote_support::*;

// `vhdforge` with no credentials, cloud, CA or proxy from the environment.
use remote_support::vhdforge_tls_clean as vf;

/// `vf()` trusting `ca` through the system store only (no `--ca-cert`). `SSL_CERT_DIR` is
/// pointed at an empty directory so the machine's own store adds nothing.
fn trusting(ca: &Path, empty: &Path) -> assert_cmd::Command {
    let mut c = vf();
    c.env("SSL_CERT_FILE", ca).env("SSL_CERT_DIR", empty);
    c
}

/// A 20 MiB sparse raw disk with data in two places.
fn source(dir: &Path) -> std::path::PathBuf {
    let data = fixtures::raw::disk_with_regions(20 * MIB, &[(0, 8192), (5 * MIB + 512, 70_000)], 5);
    let p = dir.join("disk.raw");
    std::fs::write(&p, data).unwrap();
    p
}

#[test]
fn an_https_upload_trusts_the_system_store_without_ca_cert() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-certs");
    std::fs::create_dir(&empty).unwrap();
    let pki = TestPki::generate(dir.path());
    let az = Azurite::start_https(&pki);
    let src = source(dir.path());
    let cs = format!(
        "DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint=https://127.0.0.1:{}/{ACCOUNT};",
        az.port
    );
    // Shared Key, upload then verify and `check URL`, all over https with system trust only.
    let (code, out, err) = run(trusting(&pki.ca_cert, &empty)
        .env("AZURE_STORAGE_CONNECTION_STRING", &cs)
        .args(["upload", "--create-container"])
        .arg(&src)
        .arg("vhds/sys.vhd"));
    assert_eq!(
        code, 0,
        "upload over https with the CA in SSL_CERT_FILE: {out}{err}"
    );
    let (code, out, err) = run(trusting(&pki.ca_cert, &empty)
        .env("AZURE_STORAGE_CONNECTION_STRING", &cs)
        .args(["verify", "--full"])
        .arg(&src)
        .arg("vhds/sys.vhd"));
    assert_eq!(
        code, 0,
        "verify over https with the CA in SSL_CERT_FILE: {out}{err}"
    );
    let sas = container_sas_for(ACCOUNT, KEY, "vhds", "rcw");
    let url = format!("https://127.0.0.1:{}/{ACCOUNT}/vhds/sys.vhd?{sas}", az.port);
    let (code, out, err) = run(trusting(&pki.ca_cert, &empty)
        .args(["check", "--json"])
        .arg(&url));
    assert_eq!(
        code, 0,
        "check URL over https with the CA in SSL_CERT_FILE: {out}{err}"
    );
    // The same with the unrelated CA in the system store: refused as a TLS error, so the
    // successes above came from the system store and nothing trusts every server.
    let (code, out, err) = run(trusting(&pki.wrong_ca_cert, &empty)
        .env("AZURE_STORAGE_CONNECTION_STRING", &cs)
        .args(["upload", "--json"])
        .arg(&src)
        .arg("vhds/other.vhd"));
    assert_eq!(code, 2, "{out}{err}");
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!(v["error"]["code"], "upload.tls", "{v}");
}

#[test]
fn copy_via_client_between_plain_http_and_https_each_way() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-certs");
    std::fs::create_dir(&empty).unwrap();
    let pki = TestPki::generate(dir.path());
    let secure = Azurite::start_https(&pki);
    let plain = Azurite::start();
    let src = source(dir.path());
    let sas = container_sas_for(ACCOUNT, KEY, "vhds", "racwl");
    let http_url = |blob: &str| {
        format!(
            "http://127.0.0.1:{}/{ACCOUNT}/vhds/{blob}?{sas}",
            plain.port
        )
    };
    let https_url = |blob: &str| {
        format!(
            "https://127.0.0.1:{}/{ACCOUNT}/vhds/{blob}?{sas}",
            secure.port
        )
    };
    // The container on each side, and the source blob on the plain-http one.
    let plain_cs = plain.connection_string();
    let (code, out, err) = run(vf()
        .env("AZURE_STORAGE_CONNECTION_STRING", &plain_cs)
        .args(["upload", "--create-container"])
        .arg(&src)
        .arg("vhds/a.vhd"));
    assert_eq!(code, 0, "upload over http: {out}{err}");
    let secure_cs = format!(
        "DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint=https://127.0.0.1:{}/{ACCOUNT};",
        secure.port
    );
    let (code, out, err) = run(trusting(&pki.ca_cert, &empty)
        .env("AZURE_STORAGE_CONNECTION_STRING", &secure_cs)
        .args(["upload", "--create-container"])
        .arg(&src)
        .arg("vhds/seed.vhd"));
    assert_eq!(code, 0, "upload over https: {out}{err}");
    // http -> https, then https -> http, read and written here.
    for (from, to) in [
        (http_url("a.vhd"), https_url("b.vhd")),
        (https_url("b.vhd"), http_url("c.vhd")),
    ] {
        let (code, out, err) = run(trusting(&pki.ca_cert, &empty)
            .args(["copy", "--via", "client"])
            .arg(&from)
            .arg(&to));
        assert_eq!(code, 0, "copy --via client: {out}{err}");
        let sig = sas.split("sig=").nth(1).unwrap();
        assert!(!out.contains(sig) && !err.contains(sig), "{out}{err}");
        let (code, out, err) = run(trusting(&pki.ca_cert, &empty)
            .args(["verify", "--full"])
            .arg(&src)
            .arg(&to));
        assert_eq!(code, 0, "verify the copy: {out}{err}");
    }
    // The https side untrusted: the copy fails as a TLS error whichever side it is on.
    for (from, to) in [
        (http_url("a.vhd"), https_url("d.vhd")),
        (https_url("b.vhd"), http_url("e.vhd")),
    ] {
        let (code, out, err) = run(trusting(&pki.wrong_ca_cert, &empty)
            .args(["copy", "--json", "--via", "client"])
            .arg(&from)
            .arg(&to));
        assert_eq!(code, 2, "{out}{err}");
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        assert_eq!(v["error"]["code"], "upload.tls", "{v}");
    }
}
