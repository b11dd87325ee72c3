//! vhdforge over HTTPS (issue 15): Azurite started with a certificate from a throwaway CA
//! this test makes with openssl. Upload, verify and `check URL` work with Shared Key and
//! with a SAS when that CA is given with --ca-cert (or VHDFORGE_CA_CERT); a CA that did
//! not sign the server's certificate fails at once with `upload.tls`, naming --ca-cert; and
//! an upload goes through an HTTPS_PROXY (a loopback CONNECT proxy the test runs).

use std::path::Path;

mod common;
mod remote_support;
use common::{Azurite, ConnectProxy, TestPki, ACCOUNT, KEY};
use remote_support::*;

// `vhdforge` with no credentials, cloud, CA or proxy from the environment.
use remote_support::vhdforge_tls_clean as vf;

/// Shared Key connection string for `host:port` over https.
fn https_connection_string(host: &str, port: u16) -> String {
    format!(
        "DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint=https://{host}:{port}/{ACCOUNT};"
    )
}

/// A 20 MiB sparse raw disk with data in two places.
fn source(dir: &Path) -> std::path::PathBuf {
    let size = 20 * MIB;
    let data = fixtures::raw::disk_with_regions(size, &[(0, 8192), (5 * MIB + 512, 70_000)], 9);
    let p = dir.join("disk.raw");
    std::fs::write(&p, data).unwrap();
    p
}

fn pki_and_azurite(dir: &Path) -> (TestPki, Azurite) {
    let pki = TestPki::generate(dir);
    let az = Azurite::start_https(&pki);
    (pki, az)
}

#[test]
fn upload_verify_check_over_https_with_key_and_sas() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, az) = pki_and_azurite(dir.path());
    let src = source(dir.path());
    let cs = https_connection_string("127.0.0.1", az.port);
    let ca = pki.ca_cert.to_str().unwrap();

    // Shared Key, short destination form joined to the https BlobEndpoint.
    let (code, out, err) = run(vf()
        .env("AZURE_STORAGE_CONNECTION_STRING", &cs)
        .args(["upload", "--create-container", "--ca-cert", ca])
        .arg(&src)
        .arg("vhds/key.vhd"));
    assert_eq!(code, 0, "upload over https: {out}{err}");
    let (code, out, err) = run(vf()
        .env("AZURE_STORAGE_CONNECTION_STRING", &cs)
        .args(["verify", "--full", "--ca-cert", ca])
        .arg(&src)
        .arg("vhds/key.vhd"));
    assert_eq!(code, 0, "verify over https: {out}{err}");
    let url = format!("https://127.0.0.1:{}/{ACCOUNT}/vhds/key.vhd", az.port);
    // `check URL` has no --ca-cert of its own: the environment variable.
    let (code, out, err) = run(vf()
        .env("AZURE_STORAGE_CONNECTION_STRING", &cs)
        .env("VHDFORGE_CA_CERT", ca)
        .args(["check", "--json"])
        .arg(&url));
    assert_eq!(code, 0, "check URL over https: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["azure_ready"], true, "{v}");

    // A SAS (https only), no key anywhere.
    let sas = container_sas_for(ACCOUNT, KEY, "vhds", "rcw");
    let sas_url = format!("https://127.0.0.1:{}/{ACCOUNT}/vhds/sas.vhd?{sas}", az.port);
    for args in [
        vec!["upload", "--ca-cert", ca],
        vec!["verify", "--full", "--ca-cert", ca],
    ] {
        let (code, out, err) = run(vf().args(&args).arg(&src).arg(&sas_url));
        assert_eq!(code, 0, "{args:?} with a SAS over https: {out}{err}");
        let sig = sas.split("sig=").nth(1).unwrap();
        assert!(!out.contains(sig) && !err.contains(sig), "{out}{err}");
    }
    let (code, out, err) = run(vf()
        .env("VHDFORGE_CA_CERT", ca)
        .args(["check", "--json"])
        .arg(&sas_url));
    assert_eq!(code, 0, "check URL with a SAS over https: {out}{err}");
}

#[test]
fn an_untrusted_server_certificate_is_a_clear_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, az) = pki_and_azurite(dir.path());
    let src = source(dir.path());
    let cs = https_connection_string("127.0.0.1", az.port);
    // The wrong CA, and no CA at all (the server's CA is in no trust store).
    for extra in [
        vec!["--ca-cert", pki.wrong_ca_cert.to_str().unwrap()],
        vec![],
    ] {
        let started = std::time::Instant::now();
        let (code, out, err) = run(vf()
            .env("AZURE_STORAGE_CONNECTION_STRING", &cs)
            .args(["upload", "--json", "--create-container"])
            .args(&extra)
            .arg(&src)
            .arg("vhds/b.vhd"));
        assert_eq!(code, 2, "{out}{err}");
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        assert_eq!(v["error"]["code"], "upload.tls", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("--ca-cert"), "{msg}");
        assert!(!out.contains(KEY) && !err.contains(KEY));
        // Refused at once, not retried for minutes.
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }
    // A file that is not PEM: a clear error before any connection.
    let bogus = dir.path().join("ca.der");
    std::fs::write(&bogus, b"\x30\x82garbage").unwrap();
    let (code, out, _) = run(vf()
        .env("AZURE_STORAGE_CONNECTION_STRING", &cs)
        .args(["upload", "--json", "--ca-cert"])
        .arg(&bogus)
        .arg(&src)
        .arg("vhds/b.vhd"));
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["code"], "upload.ca_cert", "{v}");
}

#[test]
fn an_upload_goes_through_an_https_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, az) = pki_and_azurite(dir.path());
    let src = source(dir.path());
    let proxy = ConnectProxy::start();
    // A name that is not loopback, so the proxy is used; only the proxy knows where it is
    // (it tunnels every CONNECT to 127.0.0.1), as a corporate proxy resolves names itself.
    // Virtual-host style (ACCOUNT.host), as Azurite reads the account from a host name.
    let host = format!("{ACCOUNT}.azurite.test");
    let cs = format!(
        "DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint=https://{host}:{};",
        az.port
    );
    let ca = pki.ca_cert.to_str().unwrap();
    for cmd in ["upload", "verify"] {
        let mut c = vf();
        c.env("AZURE_STORAGE_CONNECTION_STRING", &cs)
            .env("HTTPS_PROXY", format!("http://127.0.0.1:{}", proxy.port))
            .args([cmd, "--ca-cert", ca]);
        if cmd == "upload" {
            c.arg("--create-container");
        }
        let (code, out, err) = run(c.arg(&src).arg("vhds/proxied.vhd"));
        assert_eq!(code, 0, "{cmd} through the proxy: {out}{err}");
    }
    let seen = proxy.seen.lock().unwrap().clone();
    let want = format!("CONNECT {host}:{} HTTP/1.1", az.port);
    assert!(seen.contains(&want), "proxy saw {seen:?}");
    // NO_PROXY is honoured: with the host listed, the proxy is bypassed, and the name
    // (unknown to DNS) cannot be reached.
    let before = proxy.seen.lock().unwrap().len();
    let (code, out, err) = run(vf()
        .env("AZURE_STORAGE_CONNECTION_STRING", &cs)
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{}", proxy.port))
        .env("NO_PROXY", "azurite.test")
        .args(["check", "--json"])
        .env("VHDFORGE_CA_CERT", ca)
        .arg(format!(
            "https://azurite.test:{}/{ACCOUNT}/vhds/proxied.vhd",
            az.port
        )));
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(
        proxy.seen.lock().unwrap().len(),
        before,
        "NO_PROXY was ignored"
    );
}
