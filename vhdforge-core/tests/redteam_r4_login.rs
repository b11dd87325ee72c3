//! Red team r4: `--auth login` (Entra ID bearer tokens). Where a token may go, what a
//! hostile token or token file does, and whether a token ever shows in an error.
//!
//! Every test here runs offline: mock servers listen on 127.0.0.1 only and are bounded in
//! time; tokens are made up (a JWT-shaped one and an opaque one).

mod canned_http;

use base64::Engine as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vhdforge_core::storage::auth::{bearer_may_go_to, resolve_for};
use vhdforge_core::storage::token::{BearerAuth, FixedToken, Token, TokenFile, TokenSource};
use vhdforge_core::storage::{BlobClient, Credential, CredentialEnv};

const API: &str = "2021-08-06";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn jwt_with(payload: &str) -> String {
    let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{}.{}.c2lnbmF0dXJl", b(r#"{"alg":"RS256"}"#), b(payload))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn login_env(token: &str) -> CredentialEnv {
    CredentialEnv {
        auth: Some("login".into()),
        token_source: Some(Arc::new(FixedToken(Token::new(
            token,
            SystemTime::now() + Duration::from_secs(3600),
        )))),
        ..CredentialEnv::default()
    }
}

/// A hostile `exp` claim (the test hook reads tokens from a file; library users hand
/// `Token::from_jwt` whatever they hold): `UNIX_EPOCH + exp` overflowed `SystemTime` and
/// panicked for values past i64 seconds. It must give a token, not a panic.
#[test]
fn a_jwt_with_a_huge_exp_claim_does_not_panic() {
    for exp in [
        u64::MAX.to_string(),
        (1u64 << 63).to_string(),
        "9223372036854775807".to_string(),
        "18446744073709551615".to_string(),
    ] {
        let jwt = jwt_with(&format!(r#"{{"exp":{exp}}}"#));
        let got = std::panic::catch_unwind(|| Token::from_jwt(&jwt));
        let t = got.unwrap_or_else(|_| panic!("Token::from_jwt panicked on exp {exp}"));
        // Far in the future (or the fallback hour): usable, not expired.
        assert!(
            t.expires_on > SystemTime::now() + Duration::from_secs(600),
            "exp {exp}"
        );
        assert!(!format!("{t:?}").contains(&jwt));
    }
    // Negative, fractional, textual or missing `exp`: the one-hour fallback, no panic.
    for payload in [
        r#"{"exp":-1}"#,
        r#"{"exp":1.5e300}"#,
        r#"{"exp":"soon"}"#,
        r#"{}"#,
        r#"not json"#,
    ] {
        let t = Token::from_jwt(&jwt_with(payload));
        assert!(t.expires_on > SystemTime::now(), "{payload}");
    }
    // An `exp` in the past is believed: BearerAuth then says the token expired.
    let old = Token::from_jwt(&jwt_with(r#"{"exp":1000}"#));
    assert_eq!(old.expires_on, UNIX_EPOCH + Duration::from_secs(1000));
}

/// The same hostile token through the test hook and BearerAuth (the path the CLI takes).
#[test]
fn a_token_file_with_a_huge_exp_gives_a_usable_token() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("token");
    let jwt = jwt_with(r#"{"exp":18446744073709551615}"#);
    std::fs::write(&p, &jwt).unwrap();
    let auth = BearerAuth::new(Arc::new(TokenFile(p)));
    let got = std::thread::spawn(move || rt().block_on(auth.token()).map(|t| t.expires_on))
        .join()
        .expect("reading the token file panicked");
    assert!(got.unwrap() > SystemTime::now());
}

/// The test hook on a FIFO (or any non-file): a plain open blocks until a writer appears,
/// which stalls the upload forever with the refresh lock held. It must be refused at once.
#[cfg(unix)]
#[test]
fn the_token_file_hook_refuses_a_fifo_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("token.fifo");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let f = fifo.clone();
    std::thread::spawn(move || {
        let r = rt().block_on(TokenFile(f).token());
        let _ = tx.send(
            r.map(|_| ())
                .map_err(|e| (e.code().to_string(), e.to_string())),
        );
    });
    let got = rx.recv_timeout(Duration::from_secs(5));
    let Ok(Err((code, msg))) = got else {
        // Unblock the stuck open so the thread can end, then fail.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        panic!("the token file hook did not refuse a FIFO within 5 s: {got:?}");
    };
    assert_eq!(code, "upload.login");
    assert!(msg.contains("not a regular file"), "{msg}");
    // /dev/zero: refused too (not read up to the cap and sent as a token).
    let e = rt()
        .block_on(TokenFile("/dev/zero".into()).token())
        .unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

/// The test hook gives a token only for a loopback endpoint; names that merely look local
/// (a DNS name under the attacker's control resolving to 127.0.0.1, an IPv4-mapped IPv6
/// form, a trailing dot) must not count.
#[test]
fn the_token_file_hook_is_refused_for_hosts_that_only_look_local() {
    let env = CredentialEnv {
        auth: Some("login".into()),
        test_token_file: Some("/nonexistent/token".into()),
        ..CredentialEnv::default()
    };
    for u in [
        "https://localhost.evil.example/devstoreaccount1/c/b",
        "https://127.0.0.1.nip.io/devstoreaccount1/c/b",
        "https://[::ffff:127.0.0.1]/devstoreaccount1/c/b",
        "https://localhost./devstoreaccount1/c/b",
        "https://acct.blob.core.windows.net/c/b",
        "https://127.0.0.1.blob.core.windows.net/c/b",
    ] {
        let url = reqwest::Url::parse(u).unwrap();
        match resolve_for(&url, &env) {
            Err(e) => assert!(
                e.code() == "upload.login" || e.code() == "upload.key_host",
                "{u}: {e}"
            ),
            Ok(c) => panic!("{u}: the test token hook was honoured: {c:?}"),
        }
    }
    // Real loopback, however it is spelled (the URL parser normalises these to 127.0.0.1
    // and [::1]): honoured.
    for u in [
        "https://127.0.0.1:10000/devstoreaccount1/c/b",
        "https://127.1:10000/devstoreaccount1/c/b",
        "https://0x7f.0.0.1:10000/devstoreaccount1/c/b",
        "https://[0:0:0:0:0:0:0:1]:10000/devstoreaccount1/c/b",
        "https://LOCALHOST:10000/devstoreaccount1/c/b",
    ] {
        let url = reqwest::Url::parse(u).unwrap();
        assert!(
            matches!(resolve_for(&url, &env), Ok(Credential::Bearer(_))),
            "{u}"
        );
    }
}

/// Crafted destinations: lookalike hosts, user information, percent-encoding, IDN dots,
/// trailing dots, a path or query that names a storage host. None may get the token.
#[test]
fn crafted_destinations_never_get_the_token() {
    let env = login_env("opaque-token-value-0123456789");
    for dest in [
        "https://acct.blob.core.windows.net.evil.example/c/b",
        "https://acct.blob.core.windows.net@evil.example/c/b",
        "https://user:pw@acct.blob.core.windows.net/c/b",
        "https://evil.example/acct.blob.core.windows.net/c/b",
        "https://evil.example?x=.blob.core.windows.net/c/b",
        "https://evil.example#.blob.core.windows.net/c/b",
        "https://evil.example\\.blob.core.windows.net/c/b",
        "https://evil.example%2F.blob.core.windows.net/c/b",
        "https://acct%2Eblob%2Ecore%2Ewindows%2Enet%2Eevil%2Eexample/c/b",
        "https://acct\u{ff0e}blob\u{ff0e}core\u{ff0e}windows\u{ff0e}net\u{ff0e}evil\u{ff0e}example/c/b",
        "https://blob.core.windows.net/c/b",
        "https://.blob.core.windows.net/c/b",
        "https://acctblob.core.windows.net/c/b",
        "https://acct.blob.core.windows.net.:443.evil.example/c/b",
        "https://acct.web.core.windows.net/c/b",
        "https://acct.file.core.windows.net/c/b",
        "https://acct.blob.core.cloudapi.de.evil.example/c/b",
        "https://acct.blob.storage.azure.net.evil.example/c/b",
        "https://10.0.0.5/acct/c/b",
        "https://169.254.169.254/metadata/identity",
        "https://[::ffff:7f00:1]/devstoreaccount1/c/b",
        "http://acct.blob.core.windows.net/c/b",
        "ftp://acct.blob.core.windows.net/c/b",
    ] {
        match BlobClient::new(dest, &env, API, 1) {
            Err(e) => {
                assert!(
                    e.code() == "upload.key_host" || e.code() == "upload.url",
                    "{dest}: {e}"
                );
                assert!(!e.to_string().contains("opaque-token-value"), "{e}");
            }
            Ok(c) => panic!("{dest}: a client that sends the token was made: {c:?}"),
        }
    }
    // The real endpoints, however spelled (the URL parser lowercases and maps IDN dots).
    for dest in [
        "https://ACCT.BLOB.CORE.WINDOWS.NET/c/b",
        "https://acct\u{ff0e}blob\u{ff0e}core\u{ff0e}windows\u{ff0e}net/c/b",
        "https://acct.blob.core.windows.net:443/c/b",
        "https://md-impexp-x.z5.blob.storage.azure.net/c/b",
    ] {
        let url = reqwest::Url::parse(dest).unwrap();
        assert!(bearer_may_go_to(&url, &env), "{dest}");
    }
}

/// A connection string left in the environment widens where the token may go (its
/// BlobEndpoint, `*.blob.<EndpointSuffix>`); an EndpointSuffix that is empty after
/// trimming its dots (`.`, `..`) must not make every `*.blob.` host a storage endpoint.
#[test]
fn a_degenerate_endpoint_suffix_does_not_widen_where_the_token_goes() {
    for suffix in [".", "..", " . "] {
        let env = CredentialEnv {
            connection_string: Some(format!(
                "AccountName=acct;AccountKey={DEV_KEY};EndpointSuffix={suffix}"
            )),
            ..login_env("opaque-token-value-0123456789")
        };
        let url = reqwest::Url::parse("https://evil.blob./c/b").unwrap();
        assert!(!bearer_may_go_to(&url, &env), "EndpointSuffix={suffix:?}");
    }
}

/// A one-shot HTTP server on 127.0.0.1: answers each request with `reply`, and hands back
/// what it received. Bounded: it stops after `max` connections or 10 s.
fn serve(reply: String, max: usize) -> (u16, std::sync::mpsc::Receiver<String>) {
    canned_http::serve(reply, max, Duration::from_secs(10))
}

/// A 3xx from the service: reqwest must not follow it (it would carry the Authorization
/// header to the Location host, or to http). The second server must see nothing.
#[test]
fn a_redirect_is_not_followed_with_the_token() {
    let (sink, sink_rx) = serve(
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
        1,
    );
    let (port, rx) = serve(
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{sink}/x/c/b\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        1,
    );
    let token = jwt_with(r#"{"exp":4000000000}"#);
    let env = login_env(&token);
    let c = BlobClient::new(
        &format!("http://127.0.0.1:{port}/devstoreaccount1/c/b"),
        &env,
        API,
        1,
    )
    .unwrap();
    let r = rt().block_on(c.create_page_blob(512, false));
    let f = r.expect_err("a 307 must not be a success");
    let req = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        req.to_ascii_lowercase()
            .contains(&format!("authorization: bearer {token}").to_ascii_lowercase()),
        "the first server got the token: {req}"
    );
    assert!(
        sink_rx.recv_timeout(Duration::from_secs(1)).is_err(),
        "the redirect was followed"
    );
    let e = f.into_error("creating", "d");
    assert!(!e.to_string().contains(&token), "{e}");
}

/// A 403 whose AuthenticationErrorDetail echoes the token (a proxy, a private endpoint, an
/// emulator's debug message): an opaque (non-JWT) token has no shape the redactor knows, so
/// the client must scrub the token it sent by value.
#[test]
fn a_token_echoed_by_the_service_is_not_shown() {
    for token in [
        "opaque-token-value-0123456789abcdef".to_string(),
        jwt_with(r#"{"exp":4000000000}"#),
    ] {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code>\
             <Message>Server failed to authenticate the request.</Message>\
             <AuthenticationErrorDetail>token {token} is not valid</AuthenticationErrorDetail></Error>"
        );
        let (port, _rx) = serve(
            format!(
                "HTTP/1.1 403 Forbidden\r\nx-ms-error-code: AuthenticationFailed\r\n\
                 Content-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
            1,
        );
        let env = login_env(&token);
        let c = BlobClient::new(
            &format!("http://127.0.0.1:{port}/devstoreaccount1/c/b"),
            &env,
            API,
            1,
        )
        .unwrap();
        let f = rt()
            .block_on(c.create_page_blob(512, false))
            .expect_err("403");
        let shown = format!("{} | {:?}", f.summary(), f);
        let e = f.into_error("creating", "d");
        assert_eq!(e.code(), "upload.auth", "{e}");
        for text in [shown, e.to_string(), format!("{e:?}")] {
            assert!(!text.contains(&token), "the token is shown: {text}");
        }
    }
}

/// Copy Blob / Put Page From URL with `--auth login`: the service reads the source by URL
/// alone and answers 403 CannotVerifyCopySource when it cannot. That is not the signed-in
/// identity lacking a role on the destination (the advice was to assign one); it names the
/// source and the ways out.
#[test]
fn cannot_verify_copy_source_is_not_blamed_on_the_identity() {
    let body = "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>CannotVerifyCopySource</Code>\
                <Message>This request is not authorized to perform this operation.</Message></Error>";
    let (port, rx) = serve(
        format!(
            "HTTP/1.1 403 Forbidden\r\nx-ms-error-code: CannotVerifyCopySource\r\n\
             Content-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        1,
    );
    let env = login_env(&jwt_with(r#"{"exp":4000000000}"#));
    let c = BlobClient::new(
        &format!("http://127.0.0.1:{port}/devstoreaccount1/c/b"),
        &env,
        API,
        1,
    )
    .unwrap();
    let f = rt()
        .block_on(c.start_copy("https://other.blob.core.windows.net/c/src.vhd", true))
        .expect_err("403");
    let req = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    // The source URL goes bare: never with the token.
    assert!(req
        .to_ascii_lowercase()
        .contains("x-ms-copy-source: https://other.blob.core.windows.net/c/src.vhd\r\n"));
    let e = f.into_error("starting Copy Blob into", "d");
    assert_eq!(e.code(), "copy.source_sas", "{e}");
    assert!(!e.message().contains("data role"), "{e}");
}
