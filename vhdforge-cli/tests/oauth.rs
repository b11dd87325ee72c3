//! `--auth login` over HTTPS (issue 15): Azurite started with a throwaway CA's certificate
//! and `--oauth basic`, which checks a bearer token's issuer, audience and lifetime but not
//! its signature, so the test mints one. The token reaches vhdforge through the test hook
//! `VHDFORGE_TEST_BEARER_TOKEN_FILE` (honoured only for loopback endpoints): upload, verify,
//! copy and `check URL` work with it and no key anywhere; `sas --auth login` issues a user
//! delegation SAS that reads; an expired or refused token is a clear error; an upload that
//! lasts longer than its first token does not fail when that token runs out; and the token
//! is never printed, even at -vvv.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

mod common;
mod remote_support;
use common::{Azurite, SlowLink, TestPki, ACCOUNT};
use remote_support::*;

/// `vhdforge` with no credentials, auth mode, cloud, CA or proxy from the environment.
fn vf() -> assert_cmd::Command {
    let mut c = vhdforge();
    for v in [
        "AZURE_CLOUD",
        "VHDFORGE_AUTH",
        "VHDFORGE_CA_CERT",
        "VHDFORGE_TEST_BEARER_TOKEN_FILE",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_TENANT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
    ] {
        c.env_remove(v);
    }
    c
}

/// base64url without padding (the JWT encoding), written out to keep the test's
/// dependencies as they are.
fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const OID: &str = "5d3a2c1b-0000-4000-8000-00000000aaaa";

/// A JWT as Entra ID issues for Azure Storage, valid from `nbf_off` to `exp_off` seconds
/// around now, for `aud`. The signature part is a marker the test looks for in output.
fn mint(aud: &str, nbf_off: i64, exp_off: i64) -> String {
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let header = r#"{"alg":"RS256","typ":"JWT"}"#;
    let payload = format!(
        r#"{{"aud":"{aud}","iss":"https://sts.windows.net/{TENANT}/","iat":{},"nbf":{},"exp":{},"oid":"{OID}","tid":"{TENANT}","scp":"user_impersonation"}}"#,
        now + nbf_off,
        now + nbf_off,
        now + exp_off
    );
    format!(
        "{}.{}.{}",
        b64url(header.as_bytes()),
        b64url(payload.as_bytes()),
        b64url(b"TOKENSIGNATUREMARKER-never-printed")
    )
}

/// The parts of `token` that must never appear in output.
fn leaks(token: &str, text: &str) -> bool {
    token.split('.').any(|p| text.contains(p))
}

fn token_file(dir: &Path, name: &str, token: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, token).unwrap();
    p
}

/// A 20 MiB sparse raw disk with data in two places.
fn source(dir: &Path) -> PathBuf {
    let size = 20 * MIB;
    let data = fixtures::raw::disk_with_regions(size, &[(0, 8192), (5 * MIB + 512, 70_000)], 4);
    let p = dir.join("disk.raw");
    std::fs::write(&p, data).unwrap();
    p
}

fn url(az: &Azurite, container: &str, blob: &str) -> String {
    format!("https://127.0.0.1:{}/{ACCOUNT}/{container}/{blob}", az.port)
}

#[test]
fn upload_verify_copy_check_and_user_delegation_sas_with_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let az = Azurite::start_https(&pki);
    let src = source(dir.path());
    let ca = pki.ca_cert.to_str().unwrap().to_string();
    let token = mint("https://storage.azure.com", -60, 3600);
    let tf = token_file(dir.path(), "token", &token);
    let login = |c: &mut assert_cmd::Command| {
        c.env("VHDFORGE_TEST_BEARER_TOKEN_FILE", &tf)
            .env("VHDFORGE_CA_CERT", &ca);
    };
    let a = url(&az, "vhds", "a.vhd");
    let b = url(&az, "copies", "b.vhd");
    let steps: Vec<Vec<String>> = vec![
        vec![
            "upload".into(),
            "-vvv".into(),
            "--auth".into(),
            "login".into(),
            "--create-container".into(),
            src.display().to_string(),
            a.clone(),
        ],
        vec![
            "verify".into(),
            "-vvv".into(),
            "--auth".into(),
            "login".into(),
            "--full".into(),
            src.display().to_string(),
            a.clone(),
        ],
        vec![
            "copy".into(),
            "-vvv".into(),
            "--auth".into(),
            "login".into(),
            "--via".into(),
            "client".into(),
            a.clone(),
            b.clone(),
        ],
        vec![
            "verify".into(),
            "--auth".into(),
            "login".into(),
            "--full".into(),
            src.display().to_string(),
            b.clone(),
        ],
    ];
    for args in &steps {
        let mut c = vf();
        login(&mut c);
        if args[0] == "copy" {
            // Copy creates no container of its own.
            let mut mk = vf();
            login(&mut mk);
            let (code, out, err) = run(mk
                .args([
                    "upload",
                    "--auth",
                    "login",
                    "--create-container",
                    "--overwrite",
                ])
                .arg(&src)
                .arg(url(&az, "copies", "seed.vhd")));
            assert_eq!(code, 0, "{out}{err}");
        }
        let (code, out, err) = run(c.args(args));
        assert_eq!(code, 0, "{args:?} with --auth login: {out}{err}");
        assert!(
            !leaks(&token, &out) && !leaks(&token, &err),
            "{args:?} printed the token: {out}{err}"
        );
        if args.iter().any(|a| a == "-vvv") {
            // The token came from the hook and went out as a Bearer header (shown redacted).
            assert!(err.contains("new token from the test token file"), "{err}");
            assert!(err.contains("authorization: [REDACTED]"), "{err}");
        }
    }
    // `check URL` takes the mode from VHDFORGE_AUTH (it has no --auth of its own).
    let mut c = vf();
    login(&mut c);
    let (code, out, err) = run(c
        .env("VHDFORGE_AUTH", "login")
        .args(["check", "--json"])
        .arg(&b));
    assert_eq!(code, 0, "check URL with a token: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["azure_ready"], true, "{v}");

    // Without the token the same check is refused: the token is what authorized it.
    let (code, out, err) = run(vf()
        .env("VHDFORGE_CA_CERT", &ca)
        .args(["check", "--json"])
        .arg(&b));
    assert_eq!(code, 2, "anonymous check should fail: {out}{err}");

    // A user delegation SAS, signed with the key Azurite issues for the token's identity.
    let mut c = vf();
    login(&mut c);
    let (code, out, err) = run(c.args(["sas", "--auth", "login", "--json"]).arg(&a));
    assert_eq!(code, 0, "sas --auth login: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["user_delegation"], true, "{v}");
    let uri = v["uri"].as_str().unwrap().to_string();
    for field in [
        format!("skoid={}", OID.replace('-', "%2D")),
        "sktid=".into(),
        "skt=".into(),
        "ske=".into(),
        "sks=b".into(),
        "skv=".into(),
        "sp=rl".into(),
        "sr=c".into(),
    ] {
        assert!(uri.contains(&field), "{field} missing in {uri}");
    }
    assert!(!leaks(&token, &out) && !leaks(&token, &err));
    // It reads, with nothing but the URI (no token, no key).
    let (code, out, err) = run(vf()
        .env("VHDFORGE_CA_CERT", &ca)
        .args(["check", "--json"])
        .arg(&uri));
    assert_eq!(
        code, 0,
        "reading through the user delegation SAS: {out}{err}"
    );
    // A tampered one does not.
    let bad = uri.replace(
        &format!("skoid={}", OID.replace('-', "%2D")),
        "skoid=00000000-0000-0000-0000-000000000000",
    );
    let (code, _, _) = run(vf()
        .env("VHDFORGE_CA_CERT", &ca)
        .args(["check", "--json"])
        .arg(&bad));
    assert_eq!(
        code, 2,
        "a user delegation SAS for another identity must not read"
    );
    // Longer than the service allows: refused before asking.
    let mut c = vf();
    login(&mut c);
    let (code, out, _) = run(c
        .args(["sas", "--auth", "login", "--json", "--days", "30"])
        .arg(&a));
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["code"], "sas.terms", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("7 days"),
        "{v}"
    );
}

#[test]
fn an_expired_or_refused_token_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let az = Azurite::start_https(&pki);
    let src = source(dir.path());
    let ca = pki.ca_cert.to_str().unwrap().to_string();
    // Expired an hour ago: refused before any request, naming the expiry and what to do.
    let expired = mint("https://storage.azure.com", -7200, -3600);
    let tf = token_file(dir.path(), "expired", &expired);
    let started = std::time::Instant::now();
    let (code, out, err) = run(vf()
        .env("VHDFORGE_TEST_BEARER_TOKEN_FILE", &tf)
        .args([
            "upload",
            "--json",
            "--auth",
            "login",
            "--create-container",
            "--ca-cert",
            &ca,
        ])
        .arg(&src)
        .arg(url(&az, "vhds", "x.vhd")));
    assert_eq!(code, 2, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["code"], "upload.login", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("expired") && msg.contains("az login"), "{msg}");
    assert!(!leaks(&expired, &out) && !leaks(&expired, &err));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "not retried for minutes"
    );

    // A token for another audience: Azurite answers 403 AuthenticationFailed; the error
    // names that code and says to sign in again.
    let wrong = mint("https://management.azure.com", -60, 3600);
    let tf = token_file(dir.path(), "wrong", &wrong);
    let (code, out, err) = run(vf()
        .env("VHDFORGE_TEST_BEARER_TOKEN_FILE", &tf)
        .args([
            "upload",
            "-vvv",
            "--json",
            "--auth",
            "login",
            "--create-container",
            "--ca-cert",
            &ca,
        ])
        .arg(&src)
        .arg(url(&az, "vhds", "y.vhd")));
    assert_eq!(code, 2, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["code"], "upload.auth", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("AuthenticationFailed") && msg.contains("Entra ID token"),
        "{msg}"
    );
    assert!(!leaks(&wrong, &out) && !leaks(&wrong, &err), "{out}{err}");
}

/// An upload outlives its first token. The token it starts with expires 36 s after the
/// start; Azurite checks `exp` on every request, so a request still carrying that token
/// after then is refused. Once vhdforge has connected (so it holds the first token), the test
/// puts a token valid for an hour in the file. A link that passes 384 KiB/s makes the
/// upload of 16 MiB of data (a 20 MiB disk, Azure's smallest) with one request at a time
/// last about 43 s: it succeeds only if vhdforge fetched the new token while the upload ran.
#[test]
fn a_long_upload_outlives_its_first_token() {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let az = Azurite::start_https(&pki);
    let ca = pki.ca_cert.to_str().unwrap().to_string();
    let data = fixtures::raw::disk_with_regions(20 * MIB, &[(0, 16 * MIB)], 7);
    let src = dir.path().join("disk.raw");
    std::fs::write(&src, data).unwrap();
    let link = SlowLink::start(az.port, 384 << 10);
    let lifetime = 36;
    let first = mint("https://storage.azure.com", -60, lifetime);
    let minted = Instant::now();
    let tf = token_file(dir.path(), "token", &first);
    let second = mint("https://storage.azure.com", -60, 3600);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renew = {
        let (tf, second, accepted) = (tf.clone(), second.clone(), link.accepted.clone());
        let tmp = dir.path().join("token.new");
        let done = done.clone();
        std::thread::spawn(move || {
            let waited = Instant::now();
            while accepted.load(Ordering::SeqCst) == 0 && !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            std::fs::write(&tmp, &second).unwrap();
            std::fs::rename(&tmp, &tf).unwrap();
            waited.elapsed()
        })
    };
    let slow_url = format!("https://127.0.0.1:{}/{ACCOUNT}/vhds/long.vhd", link.port);
    let (code, out, err) = run(vf()
        .env("VHDFORGE_TEST_BEARER_TOKEN_FILE", &tf)
        .args([
            "upload",
            "-v",
            "--json",
            "--auth",
            "login",
            "--create-container",
        ])
        .args(["--concurrency", "1", "--ca-cert", &ca])
        .arg(&src)
        .arg(&slow_url));
    let took = minted.elapsed();
    done.store(true, Ordering::SeqCst);
    let renewed_after = renew.join().unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        renewed_after < Duration::from_secs(30),
        "the new token went into the file only {renewed_after:?} after the start: the timing this test needs did not hold"
    );
    assert!(
        took > Duration::from_secs(lifetime as u64 + 2),
        "the upload took {took:?}: it did not outlast the first token, so nothing was shown"
    );
    assert!(!leaks(&first, &out) && !leaks(&first, &err), "{out}{err}");
    assert!(!leaks(&second, &out) && !leaks(&second, &err), "{out}{err}");
    // The blob holds the disk, read back straight from Azurite with the new token.
    let (code, out, err) = run(vf()
        .env("VHDFORGE_TEST_BEARER_TOKEN_FILE", &tf)
        .args(["verify", "--full", "--auth", "login", "--ca-cert", &ca])
        .arg(&src)
        .arg(url(&az, "vhds", "long.vhd")));
    assert_eq!(code, 0, "verify: {out}{err}");
}

#[test]
fn the_token_file_hook_and_the_token_stay_on_their_side() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let token = mint("https://storage.azure.com", -60, 3600);
    let tf = token_file(dir.path(), "token", &token);
    // The test hook is ignored for anything but loopback: a real endpoint gets an error,
    // never the file's token.
    let (code, out, err) = run(vf()
        .env("VHDFORGE_TEST_BEARER_TOKEN_FILE", &tf)
        .args(["upload", "--dry-run", "--json", "--auth", "login"])
        .arg(&src)
        .arg("https://acct.blob.core.windows.net/vhds/d.vhd"));
    assert_eq!(code, 2, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["code"], "upload.login", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("loopback"),
        "{v}"
    );
    // A token never goes to a host that is not a storage endpoint.
    let (code, out, _) = run(vf()
        .env("VHDFORGE_TEST_BEARER_TOKEN_FILE", &tf)
        .args(["upload", "--dry-run", "--json", "--auth", "login"])
        .arg(&src)
        .arg("https://files.example.com/vhds/d.vhd"));
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["code"], "upload.key_host", "{v}");
    // --auth login with a SAS in DEST is ambiguous: refused, the SAS not shown.
    let (code, out, _) = run(vf()
        .env("VHDFORGE_TEST_BEARER_TOKEN_FILE", &tf)
        .args(["upload", "--dry-run", "--json", "--auth", "login"])
        .arg(&src)
        .arg("https://acct.blob.core.windows.net/vhds/d.vhd?sv=2021-08-06&sig=SECRETSIGVALUE"));
    assert_eq!(code, 2);
    assert!(!out.contains("SECRETSIGVALUE"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["code"], "upload.credentials", "{v}");
    // --auth key with no key: says which variables to set.
    let (code, out, _) = run(vf()
        .args(["upload", "--dry-run", "--json", "--auth", "key"])
        .arg(&src)
        .arg("https://acct.blob.core.windows.net/vhds/d.vhd?sv=2021-08-06&sig=SECRETSIGVALUE"));
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["code"], "upload.credentials", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("AZURE_STORAGE_KEY"),
        "{v}"
    );
    assert!(!out.contains("SECRETSIGVALUE"));
}
