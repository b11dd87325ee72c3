//! Secrets stay secret and keys stay home (security review, issue 7–9): a recording
//! loopback server sees what vhdforge sends and echoes secrets back in every shape a
//! real server might; a self-signed TLS server and Azurite check that errors a retry
//! cannot cure stop at once.

mod upload_common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use upload_common::*;
use vhdforge_core::upload::{self, CredentialEnv, NoProgress, RetryPolicy, UploadOptions};

const MIB: u64 = 1 << 20;

/// A SAS signature with characters that change under percent-encoding and lower-casing.
const SIG_RAW: &str = "Zm9vYmFyU2VjcmV0U2lnbmF0dXJl+/AbCdEf=";
const SIG_ENCODED: &str = "Zm9vYmFyU2VjcmV0U2lnbmF0dXJl%2B%2FAbCdEf%3D";

/// Every form of the secret that must never be shown (compared case-insensitively).
fn leaked(text: &str) -> Option<&'static str> {
    let lower = text.to_ascii_lowercase();
    ["Zm9vYmFyU2VjcmV0U2lnbmF0dXJl", "s3cr3tpass"]
        .into_iter()
        .find(|s| lower.contains(&s.to_ascii_lowercase()))
}

/// What the recording server answers to each request.
type Answer = Arc<dyn Fn(&Request) -> Vec<u8> + Send + Sync>;

/// A plain HTTP/1.1 server on 127.0.0.1 that records every request it receives.
async fn recording_server(answer: Answer) -> (u16, Arc<Mutex<Vec<Request>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (rec, answer) = (rec.clone(), answer.clone());
            tokio::spawn(async move {
                let (rd, mut wr) = sock.into_split();
                let mut rd = BufReader::new(rd);
                while let Some(req) = read_request(&mut rd).await {
                    let resp = answer(&req);
                    rec.lock().unwrap().push(req);
                    if wr.write_all(&resp).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
    }
}

fn no_journal_mentions_secrets(dir: &std::path::Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).to_string();
        assert!(leaked(&text).is_none(), "{} holds a secret", p.display());
    }
}

/// Issue 8: with AZURE_STORAGE_ACCOUNT/KEY set, a DEST on another host (or naming another
/// account) gets no request at all: the key is refused before connecting.
#[tokio::test]
async fn account_key_is_never_sent_to_a_foreign_host() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_image(dir.path(), "d.raw", 20 * MIB, &[(0, 4096)]);
    let (port, seen) = recording_server(Arc::new(|_| response(201, "Created", &[], b""))).await;
    let env = CredentialEnv {
        account: Some(ACCOUNT.into()),
        key: Some(KEY.into()),
        ..CredentialEnv::default()
    };
    for dest in [
        // Loopback, but the path names another account.
        format!("http://127.0.0.1:{port}/attacker/c/b.vhd"),
        // A host name that is not the account's.
        format!("http://localhost:{port}/c/b.vhd"),
        // CONTAINER/BLOB expands to the account's own endpoint; a full URL elsewhere does not.
        "https://evil.example/devstoreaccount1/c/b.vhd".to_string(),
    ] {
        let e = upload::upload(
            &src,
            &dest,
            UploadOptions {
                credentials: env.clone(),
                retry: quick_retries(),
                ..UploadOptions::default()
            },
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), "upload.key_host", "{dest}: {e}");
        assert!(!e.to_string().contains(KEY), "{e}");
    }
    let reached: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert!(
        reached.is_empty(),
        "requests reached a foreign host: {reached:?}"
    );
    // The same key does sign for the emulator path that names the account (the mock
    // accepts whatever it is sent).
    let e = upload::upload(
        &src,
        &format!("http://127.0.0.1:{port}/{ACCOUNT}/c/b.vhd"),
        UploadOptions {
            credentials: env,
            retry: quick_retries(),
            ..UploadOptions::default()
        },
        Arc::new(NoProgress),
    )
    .await;
    drop(e);
    let reqs = seen.lock().unwrap();
    assert!(reqs.iter().any(|r| r
        .header("authorization")
        .is_some_and(|a| a.starts_with(&format!("SharedKey {ACCOUNT}:")))));
}

/// Issue 7: a server that echoes the signature back lower-cased, percent-encoded, decoded,
/// in its error code header and its message: none of it reaches the error.
#[tokio::test]
async fn echoed_signatures_are_scrubbed_in_any_shape() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_image(dir.path(), "d.raw", 20 * MIB, &[(0, 4096)]);
    let echo = format!(
        "sig={} SIG%3D{} {} {} {}",
        SIG_RAW.to_ascii_lowercase(),
        SIG_ENCODED.to_ascii_lowercase(),
        SIG_RAW,
        SIG_ENCODED,
        SIG_RAW.to_ascii_uppercase()
    );
    for status in [400u16, 403, 404, 500] {
        let body = format!("<Error><Code>X{echo}</Code><Message>refused: {echo}</Message></Error>");
        let header = format!("Code-{}", SIG_RAW.to_ascii_lowercase());
        let (port, _seen) = recording_server(Arc::new(move |_| {
            response(
                status,
                "No",
                &[("x-ms-error-code", header.clone())],
                body.as_bytes(),
            )
        }))
        .await;
        let dest = format!(
            "http://127.0.0.1:{port}/acct/c/b.vhd?sv=2021-08-06&sr=b&sp=cw&sig={SIG_ENCODED}"
        );
        let e = upload::upload(
            &src,
            &dest,
            UploadOptions {
                credentials: CredentialEnv::default(),
                retry: quick_retries(),
                ..UploadOptions::default()
            },
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(leaked(&shown).is_none(), "HTTP {status} leaked: {shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
        no_journal_mentions_secrets(dir.path());
    }
}

/// Issue 7: the page-list snippet quoted when a "page list" cannot be parsed comes from
/// the server, and is scrubbed like everything else.
#[tokio::test]
async fn unparsable_page_list_snippet_is_scrubbed() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_image(dir.path(), "d.raw", 20 * MIB, &[(0, 4096)]);
    let size = 20 * MIB + 512;
    let (port, _seen) = recording_server(Arc::new(move |req| {
        if req.method == "HEAD" {
            // A HEAD answer announces the blob's length without sending it.
            format!("HTTP/1.1 200 OK\r\nx-ms-blob-type: PageBlob\r\ncontent-length: {size}\r\n\r\n")
                .into_bytes()
        } else if req.header("x-ms-range").is_some() {
            // The footer read: any 512 bytes (a differing footer is reported, not fatal).
            response(200, "OK", &[], &[0u8; 512])
        } else {
            let lower = SIG_RAW.to_ascii_lowercase();
            response(
                200,
                "OK",
                &[],
                format!("<html>{lower} sig={lower}</html>").as_bytes(),
            )
        }
    }))
    .await;
    let dest =
        format!("http://127.0.0.1:{port}/acct/c/b.vhd?sv=2021-08-06&sr=b&sp=r&sig={SIG_ENCODED}");
    let e = upload::verify(
        &src,
        &dest,
        upload::VerifyOptions {
            credentials: CredentialEnv::default(),
            retry: quick_retries(),
            ..upload::VerifyOptions::default()
        },
    )
    .await
    .unwrap_err();
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("UnparsablePageList"), "{shown}");
    assert!(leaked(&shown).is_none(), "{shown}");
}

/// Issue 7: `https://user:PASS@…` is refused before connecting, the password is never
/// shown, and no journal is written.
#[tokio::test]
async fn url_password_is_refused_unshown_and_unjournaled() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_image(dir.path(), "d.raw", 20 * MIB, &[(0, 4096)]);
    let (port, seen) = recording_server(Arc::new(|_| response(201, "Created", &[], b""))).await;
    let dest = format!(
        "http://user:s3cr3tpass@127.0.0.1:{port}/acct/c/b.vhd?sv=2021-08-06&sr=b&sp=cw&sig={SIG_ENCODED}"
    );
    let e = upload::upload(
        &src,
        &dest,
        UploadOptions {
            credentials: CredentialEnv::default(),
            retry: quick_retries(),
            ..UploadOptions::default()
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.url", "{e}");
    let shown = format!("{e} {e:?}");
    assert!(leaked(&shown).is_none(), "{shown}");
    assert!(seen.lock().unwrap().is_empty());
    no_journal_mentions_secrets(dir.path());
}

/// A TLS server with a self-signed certificate (openssl s_server), killed on drop.
struct SelfSignedTls {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SelfSignedTls {
    fn start() -> SelfSignedTls {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl is needed for the TLS test: apt-get install openssl");
        assert!(made.success(), "openssl req failed");
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        SelfSignedTls {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for SelfSignedTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 9: a certificate this machine does not trust is fatal at once, with a message
/// that says so (it used to be retried for 90 s as a network problem).
#[tokio::test]
async fn untrusted_certificate_is_fatal_and_named() {
    let tls = SelfSignedTls::start();
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_image(dir.path(), "d.raw", 20 * MIB, &[(0, 4096)]);
    let dest = format!(
        "https://127.0.0.1:{}/acct/c/b.vhd?sv=2021-08-06&sr=b&sp=cw&sig={SIG_ENCODED}",
        tls.port
    );
    let started = Instant::now();
    // The default retry policy: a retried failure would take far longer than the bound.
    let e = upload::upload(
        &src,
        &dest,
        UploadOptions {
            credentials: CredentialEnv::default(),
            ..UploadOptions::default()
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(e.code(), "upload.tls", "{e}");
    assert!(e.message().contains("certificate"), "{e}");
    assert!(leaked(&format!("{e} {e:?}")).is_none(), "{e}");
}

/// Issue 9: an --api-version the service rejects (400 InvalidHeaderValue) is fatal at
/// once and names the option (it used to be retried for 94 s).
#[tokio::test]
async fn bad_api_version_is_fatal_quickly_against_azurite() {
    let az = Azurite::start();
    az.create_container("apiv").await;
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_image(dir.path(), "d.raw", 20 * MIB, &[(0, 4096)]);
    let dest = format!(
        "{}?{}",
        az.blob_url("apiv", "b.vhd"),
        service_sas("apiv", Some("b.vhd"), "rcw")
    );
    // One the service refuses (400 InvalidHeaderValue), and one that cannot even be sent
    // as a header (a non-ASCII dash), which used to be retried as a "network" error.
    for version in ["2099-99-99", "2021\u{2011}08-06"] {
        let started = Instant::now();
        let e = upload::upload(
            &src,
            &dest,
            UploadOptions {
                credentials: CredentialEnv::default(),
                api_version: version.into(),
                ..UploadOptions::default()
            },
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{version}: took {:?}",
            started.elapsed()
        );
        assert_eq!(e.code(), "upload.invalid_request", "{e}");
        assert!(e.message().contains("api-version"), "{e}");
        assert!(leaked(&format!("{e} {e:?}")).is_none(), "{e}");
    }
}

/// A JWT-shaped access token (the mock does not check it).
fn minted_token() -> String {
    // {"alg":"none"} . {"aud":"https://storage.azure.com","exp":4102444800} . signature
    "eyJhbGciOiJub25lIn0.eyJhdWQiOiJodHRwczovL3N0b3JhZ2UuYXp1cmUuY29tIiwiZXhwIjo0MTAyNDQ0ODAwfQ.U2VjcmV0VG9rZW5TaWduYXR1cmU"
        .to_string()
}

fn login_env(token: &str) -> CredentialEnv {
    use vhdforge_core::storage::token::{FixedToken, Token};
    CredentialEnv {
        auth: Some("login".into()),
        // A key in the environment is ignored under --auth login.
        account: Some(ACCOUNT.into()),
        key: Some(KEY.into()),
        token_source: Some(Arc::new(FixedToken(Token::from_jwt(token)))),
        ..CredentialEnv::default()
    }
}

/// Issue 15: with `--auth login`, requests carry `Authorization: Bearer` and a version that
/// accepts it; a 403 AuthorizationPermissionMismatch (Azure's answer, captured, echoing the
/// token back) becomes the role advice, and the token appears nowhere.
#[tokio::test]
async fn bearer_403_names_the_missing_role_and_never_shows_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_image(dir.path(), "d.raw", 20 * MIB, &[(0, 4096)]);
    let token = minted_token();
    let answer: Answer = Arc::new(|req: &Request| {
        let auth = req
            .headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let body = format!(
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthorizationPermissionMismatch</Code>\
             <Message>This request is not authorized to perform this operation using this permission. ({auth})\n\
             RequestId:0f3c\nTime:2026-11-30T12:00:00Z</Message></Error>"
        );
        response(
            403,
            "This request is not authorized to perform this operation using this permission.",
            &[("x-ms-error-code", "AuthorizationPermissionMismatch".into())],
            body.as_bytes(),
        )
    });
    let (port, seen) = recording_server(answer).await;
    let e = upload::upload(
        &src,
        &format!("http://127.0.0.1:{port}/{ACCOUNT}/c/b.vhd"),
        UploadOptions {
            credentials: login_env(&token),
            retry: quick_retries(),
            ..UploadOptions::default()
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    let text = format!("{e} {e:?}");
    assert_eq!(e.code(), "upload.permission", "{text}");
    assert!(
        e.message().contains("Storage Blob Data Contributor")
            && e.message().contains("AuthorizationPermissionMismatch")
            && e.message().contains("lacks a data role"),
        "{text}"
    );
    assert!(
        !text.contains("U2VjcmV0VG9rZW5TaWduYXR1cmU") && !text.contains("eyJhdWQi"),
        "{text}"
    );
    let reqs = seen.lock().unwrap();
    assert!(!reqs.is_empty());
    for r in reqs.iter() {
        let h = |n: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(h("authorization"), Some(format!("Bearer {token}").as_str()));
        assert!(h("x-ms-version").unwrap() >= "2017-11-09");
    }
}

/// Issue 15: a sign-in token is good for every account its identity may reach, so it is
/// never sent to a host that is not an Azure Storage endpoint: refused before connecting.
#[tokio::test]
async fn bearer_token_is_never_sent_to_a_foreign_host() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_image(dir.path(), "d.raw", 20 * MIB, &[(0, 4096)]);
    for dest in [
        "https://evil.example/devstoreaccount1/vhds/b.vhd",
        "https://acct.blob.core.windows.net.evil.example/vhds/b.vhd",
        "https://blob.core.windows.net/vhds/b.vhd",
    ] {
        let e = upload::upload(
            &src,
            dest,
            UploadOptions {
                credentials: login_env(&minted_token()),
                retry: quick_retries(),
                ..UploadOptions::default()
            },
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), "upload.key_host", "{dest}: {e}");
    }
}
