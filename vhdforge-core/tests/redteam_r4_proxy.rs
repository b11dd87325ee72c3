//! Red team r4: the `--auth login` sign-in chain behind an HTTP proxy from the environment.
//!
//! A managed identity is asked on this machine over plain http (IMDS at 169.254.169.254,
//! App Service / Arc at `http://localhost:…`) with the identity's secret header, and answers
//! with the token. With `HTTP_PROXY` set (common behind a corporate proxy), that exchange
//! went to the proxy in clear text. It must go direct; the proxy must see nothing.
//!
//! The only test in its binary: it sets process environment variables (proxy, identity
//! endpoint, an empty PATH so no `az` answers first).

mod canned_http;

use std::sync::mpsc::Receiver;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vhdforge_core::storage::auth::resolve_for;
use vhdforge_core::storage::{Credential, CredentialEnv};

/// An HTTP server on 127.0.0.1 answering every request with `reply` and passing on what
/// it received; stops after 15 s.
fn serve(reply: String) -> (u16, Receiver<String>) {
    canned_http::serve(reply, usize::MAX, Duration::from_secs(15))
}

#[test]
fn the_managed_identity_exchange_never_goes_through_the_proxy() {
    let (proxy, proxy_rx) =
        serve("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into());
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let body = format!(
        r#"{{"access_token":"opaque-mi-token-0123456789","expires_on":"{exp}","token_type":"Bearer","resource":"https://storage.azure.com"}}"#
    );
    let (identity, identity_rx) = serve(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let empty = tempfile::tempdir().unwrap();
    for v in [
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "IDENTITY_SERVER_THUMBPRINT",
        "IMDS_ENDPOINT",
        "NO_PROXY",
        "no_proxy",
        "VHDFORGE_TEST_BEARER_TOKEN_FILE",
    ] {
        std::env::remove_var(v);
    }
    let proxy_url = format!("http://127.0.0.1:{proxy}");
    for v in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        std::env::set_var(v, &proxy_url);
    }
    // No `az` or `azd` on PATH: the chain reaches the managed identity quickly.
    std::env::set_var("PATH", empty.path());
    std::env::set_var(
        "IDENTITY_ENDPOINT",
        format!("http://127.0.0.1:{identity}/msi/token"),
    );
    std::env::set_var("IDENTITY_HEADER", "identity-header-secret-0123");

    let env = CredentialEnv {
        auth: Some("login".into()),
        ..CredentialEnv::default()
    };
    let url = reqwest::Url::parse("http://127.0.0.1:9/devstoreaccount1/c/b").unwrap();
    let Credential::Bearer(b) = resolve_for(&url, &env).unwrap() else {
        panic!("not a bearer credential");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), b.token())
            .await
            .expect("sign-in did not finish within 60 s")
    });
    let seen_by_proxy: Vec<String> = proxy_rx.try_iter().collect();
    assert!(
        seen_by_proxy.is_empty(),
        "the proxy saw the identity exchange: {seen_by_proxy:?}"
    );
    let t = got.expect("the managed identity gave no token");
    assert!(t.expires_on > SystemTime::now());
    let req = identity_rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert!(
        req.to_ascii_lowercase()
            .contains("x-identity-header: identity-header-secret-0123"),
        "{req}"
    );
}
