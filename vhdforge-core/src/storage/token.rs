//! Entra ID sign-in for the Blob service (`--auth login`, docs/azure-page-blob.md §1.7): where
//! an OAuth access token for Azure Storage comes from, and keeping one fresh during a long
//! upload.
//!
//! Tokens come from the Azure SDK's own `azure_identity` crate, never from a hand-written
//! token client: [`SignIn`] tries, like `az … --auth-mode login` and the SDKs'
//! `DefaultAzureCredential`, a service principal from the environment
//! (`ClientSecretCredential`), workload identity (`WorkloadIdentityCredential`), the Azure
//! CLI's sign-in (`DeveloperToolsCredential`: `az`, then `azd`), and a managed identity
//! (`ManagedIdentityCredential`), in that order. The sign-in authority follows `--cloud`
//! (`login.microsoftonline.com`, `login.chinacloudapi.cn`, `login.microsoftonline.us`); the
//! audience is `https://storage.azure.com/` in every cloud.
//!
//! Everything goes through the small [`TokenSource`] trait so tests can inject a minted
//! token ([`FixedToken`]), and [`TokenFile`] (a test hook named by
//! `VHDFORGE_TEST_BEARER_TOKEN_FILE`) is honoured only for loopback endpoints.
//!
//! A token is a bearer credential: [`Token`] never shows it in `Debug`, and errors built
//! here never contain it.

use super::cloud::Cloud;
use crate::error::{Error, ErrorKind, Result};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The OAuth scope of Azure Storage data access (the same audience in every cloud).
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// A token is asked for again when it has less than this left: a Put Page that starts with
/// a token must not have it expire mid-flight, and a long upload outlives the usual
/// 60–90 minute lifetime.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// The source is not asked again sooner than this after it answered (a source that hands
/// out short-lived tokens would otherwise be asked before every request).
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// When a refresh fails, the current token is used only while it has more than this left
/// (a request sent with it must not see it expire before the service checks it).
const MIN_KEPT_LEFT: Duration = Duration::from_secs(60);

/// The environment variable of the test hook [`TokenFile`].
pub const TEST_TOKEN_FILE_VAR: &str = "VHDFORGE_TEST_BEARER_TOKEN_FILE";

/// Largest token file read (tokens are 1–3 KiB).
const MAX_TOKEN_FILE: u64 = 64 << 10;

/// An access token and when it expires.
#[derive(Clone)]
pub struct Token {
    secret: String,
    /// When the token stops being accepted.
    pub expires_on: SystemTime,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(REDACTED, expires {:?})", self.expires_on)
    }
}

impl Token {
    /// A token and its expiry.
    pub fn new(secret: impl Into<String>, expires_on: SystemTime) -> Token {
        Token {
            secret: secret.into(),
            expires_on,
        }
    }

    /// A JWT access token, its expiry read from its `exp` claim (an hour from now when it
    /// has none: the usual lifetime, and refreshing early is harmless).
    pub fn from_jwt(secret: &str) -> Token {
        // An `exp` past what SystemTime holds (a hostile or corrupt token) would make
        // `UNIX_EPOCH + exp` panic: it counts as no `exp` at all.
        let exp = jwt_exp(secret)
            .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(3600));
        Token::new(secret.trim(), exp)
    }

    /// The token itself, for the `Authorization` header only.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    fn left(&self) -> Duration {
        self.expires_on
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}

/// The `exp` claim of a JWT (seconds since the epoch), if it is one.
fn jwt_exp(token: &str) -> Option<u64> {
    use base64::Engine as _;
    let payload = token.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")?.as_u64()
}

/// A future a [`TokenSource`] returns.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<Token>> + Send + 'a>>;

/// Where access tokens for Azure Storage come from.
pub trait TokenSource: Send + Sync {
    /// What it is, for `-v` logs and errors ("Azure CLI", "a token file").
    fn name(&self) -> String;
    /// A token for [`STORAGE_SCOPE`], fresh or cached by the source.
    fn token(&self) -> TokenFuture<'_>;
}

/// The error for a sign-in that produced no token.
pub(crate) fn login_error(msg: String) -> Error {
    Error::new(ErrorKind::InvalidInput, "upload.login", msg)
}

/// The same token every time (tests and library users that hold a token already).
pub struct FixedToken(pub Token);

impl TokenSource for FixedToken {
    fn name(&self) -> String {
        "a fixed token".into()
    }
    fn token(&self) -> TokenFuture<'_> {
        let t = self.0.clone();
        Box::pin(async move { Ok(t) })
    }
}

/// Test hook: the token in a file (read again whenever a fresh one is needed, so a test can
/// renew it), honoured only for loopback endpoints; production sign-in never reads it.
pub struct TokenFile(pub std::path::PathBuf);

impl TokenSource for TokenFile {
    fn name(&self) -> String {
        format!("the test token file {}", self.0.display())
    }
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            use crate::fsutil::{read_named_file, NamedFileError};
            let shown = self.0.display();
            // The open never blocks (a FIFO would hang with the refresh lock held).
            let bytes = read_named_file(&self.0, MAX_TOKEN_FILE).map_err(|e| {
                login_error(match e {
                    NamedFileError::Open(e) => {
                        format!("{TEST_TOKEN_FILE_VAR}: cannot open {shown} ({e})")
                    }
                    NamedFileError::Read(e) => {
                        format!("{TEST_TOKEN_FILE_VAR}: cannot read {shown} ({e})")
                    }
                    NamedFileError::NotAFile(_) => format!(
                        "{TEST_TOKEN_FILE_VAR}: {shown} is not a regular file; point it at a file holding the token"
                    ),
                    NamedFileError::TooLarge => format!(
                        "{TEST_TOKEN_FILE_VAR}: {shown} is larger than {MAX_TOKEN_FILE} bytes; a token is a few KiB"
                    ),
                })
            })?;
            let text = String::from_utf8(bytes).map_err(|_| {
                login_error(format!(
                    "{TEST_TOKEN_FILE_VAR}: cannot read {shown} (it is not UTF-8 text)"
                ))
            })?;
            let t = text.trim();
            if t.is_empty() {
                return Err(login_error(format!(
                    "{TEST_TOKEN_FILE_VAR}: {shown} is empty"
                )));
            }
            Ok(Token::from_jwt(t))
        })
    }
}

/// The `azure_identity` cloud configuration for `cloud`: which authority signs in.
pub fn cloud_configuration(cloud: Cloud) -> azure_core::cloud::CloudConfiguration {
    use azure_core::cloud::CloudConfiguration as C;
    match cloud {
        Cloud::AzureCloud => C::AzurePublic,
        Cloud::AzureChinaCloud => C::AzureChina,
        Cloud::AzureUsGovernment => C::AzureGovernment,
    }
}

/// The Entra ID authority host of `cloud` (what [`cloud_configuration`] makes
/// `azure_identity` use; named in errors).
pub fn authority_host(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::AzureCloud => "login.microsoftonline.com",
        Cloud::AzureChinaCloud => "login.chinacloudapi.cn",
        Cloud::AzureUsGovernment => "login.microsoftonline.us",
    }
}

type Credential = Arc<dyn azure_core::credentials::TokenCredential>;

/// The sign-in requests' transport: the authority goes through the environment's proxy like
/// the blob requests, but a managed-identity endpoint on this machine (IMDS at
/// 169.254.169.254, App Service / Arc at `http://localhost:…`) never does. Those are plain
/// http, carry the identity's secret header and answer with the token: through a proxy
/// they would cross the network in clear text (or reach the proxy host's own IMDS).
#[derive(Debug)]
struct SignInTransport {
    proxied: reqwest::Client,
    direct: reqwest::Client,
}

/// True for hosts a request must reach without a proxy: loopback and link-local addresses.
pub(crate) fn is_local_identity_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    super::hosts::is_loopback_host(h)
        || match h.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => ip.is_link_local(),
            Ok(std::net::IpAddr::V6(ip)) => (ip.segments()[0] & 0xffc0) == 0xfe80,
            Err(_) => false,
        }
}

impl azure_core::http::HttpClient for SignInTransport {
    fn execute_request<'life0, 'life1, 'async_trait>(
        &'life0 self,
        request: &'life1 azure_core::http::Request,
    ) -> Pin<
        Box<
            dyn Future<Output = azure_core::Result<azure_core::http::AsyncRawResponse>>
                + Send
                + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let local = request.url().host_str().is_some_and(is_local_identity_host);
        let client = if local { &self.direct } else { &self.proxied };
        client.execute_request(request)
    }
}

/// The sign-in chain of `--auth login`, built on `azure_identity`.
pub struct SignIn {
    cloud: Cloud,
    /// (name, credential, how long it may take).
    sources: Vec<(&'static str, Credential, Duration)>,
    /// Index of the source that answered first: asked first from then on.
    chosen: Mutex<Option<usize>>,
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl SignIn {
    /// The chain for `cloud`; the token requests go through `http` (the same trusted roots,
    /// `--ca-cert` and proxy rules as the blob requests).
    pub fn new(cloud: Cloud, http: &reqwest::Client) -> Result<SignIn> {
        use azure_core::http::{ClientOptions, Transport};
        use azure_identity as id;
        let direct = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| login_error(format!("--auth login: cannot set up HTTP ({e})")))?;
        let transport = Arc::new(SignInTransport {
            proxied: http.clone(),
            direct,
        });
        let options = || ClientOptions {
            transport: Some(Transport::new(transport.clone())),
            cloud: Some(Arc::new(cloud_configuration(cloud))),
            ..ClientOptions::default()
        };
        let fail = |what: &str, e: azure_core::Error| {
            login_error(format!(
                "--auth login: cannot set up {what}: {}",
                super::redact::redact_text(&e.to_string())
            ))
        };
        let mut sources: Vec<(&'static str, Credential, Duration)> = Vec::new();
        if let (Some(tenant), Some(client), Some(secret)) = (
            env_var("AZURE_TENANT_ID"),
            env_var("AZURE_CLIENT_ID"),
            env_var("AZURE_CLIENT_SECRET"),
        ) {
            let c = id::ClientSecretCredential::new(
                &tenant,
                client,
                secret.into(),
                Some(id::ClientSecretCredentialOptions {
                    client_options: options(),
                }),
            )
            .map_err(|e| fail("the service principal (AZURE_CLIENT_SECRET)", e))?;
            sources.push((
                "a service principal (AZURE_CLIENT_ID, AZURE_CLIENT_SECRET)",
                c,
                Duration::from_secs(60),
            ));
        }
        if env_var("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            let c =
                id::WorkloadIdentityCredential::new(Some(id::WorkloadIdentityCredentialOptions {
                    credential_options: id::ClientAssertionCredentialOptions {
                        client_options: options(),
                    },
                    ..Default::default()
                }))
                .map_err(|e| fail("workload identity (AZURE_FEDERATED_TOKEN_FILE)", e))?;
            sources.push((
                "workload identity (AZURE_FEDERATED_TOKEN_FILE)",
                c,
                Duration::from_secs(60),
            ));
        }
        // `az` takes a few seconds to start and may refresh its own token first.
        let cli = id::DeveloperToolsCredential::new(None)
            .map_err(|e| fail("the Azure CLI sign-in", e))?;
        sources.push((
            "the Azure CLI sign-in (az login)",
            cli,
            Duration::from_secs(60),
        ));
        let mi = id::ManagedIdentityCredential::new(Some(id::ManagedIdentityCredentialOptions {
            client_options: options(),
            ..Default::default()
        }))
        .map_err(|e| fail("managed identity", e))?;
        // Off Azure the metadata endpoint does not answer: give up soon.
        sources.push(("a managed identity", mi, Duration::from_secs(15)));
        Ok(SignIn {
            cloud,
            sources,
            chosen: Mutex::new(None),
        })
    }

    /// The names of the sources, in the order they are tried.
    pub fn source_names(&self) -> Vec<&'static str> {
        self.sources.iter().map(|s| s.0).collect()
    }

    async fn first_token(&self) -> Result<Token> {
        let chosen = *self
            .chosen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let order: Vec<usize> = chosen
            .into_iter()
            .chain((0..self.sources.len()).filter(|i| Some(*i) != chosen))
            .collect();
        let mut tried = Vec::new();
        for i in order {
            let (name, cred, limit) = &self.sources[i];
            let got = tokio::time::timeout(*limit, cred.get_token(&[STORAGE_SCOPE], None)).await;
            match got {
                Ok(Ok(t)) => {
                    tracing::info!("--auth login: token from {name}");
                    *self
                        .chosen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(i);
                    let secs = u64::try_from(t.expires_on.unix_timestamp()).unwrap_or(0);
                    return Ok(Token::new(
                        t.token.secret(),
                        UNIX_EPOCH + Duration::from_secs(secs),
                    ));
                }
                Ok(Err(e)) => {
                    // The first line only: the SDK appends a troubleshooting link.
                    let msg = e.to_string();
                    let first = msg.lines().next().unwrap_or("").trim().to_string();
                    tracing::info!(
                        "--auth login: {name}: {}",
                        super::redact::redact_text(&first)
                    );
                    tried.push(format!("{name}: {}", super::redact::redact_text(&first)));
                }
                Err(_) => tried.push(format!("{name}: no answer within {} s", limit.as_secs())),
            }
        }
        Err(login_error(format!(
            "--auth login: no Entra ID sign-in gave a token for Azure Storage ({}). Sign in with `az login` \
             (for {} first `az cloud set --name {}`), or run where a managed identity is assigned, or set \
             AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (service principal) or \
             AZURE_FEDERATED_TOKEN_FILE (workload identity); authority {}",
            tried.join("; "),
            self.cloud.name(),
            self.cloud.name(),
            authority_host(self.cloud),
        )))
    }
}

impl TokenSource for SignIn {
    fn name(&self) -> String {
        format!("Entra ID sign-in ({})", authority_host(self.cloud))
    }
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(self.first_token())
    }
}

/// A token source with the current token cached: every request asks [`BearerAuth::token`],
/// which asks the source again only when less than [`REFRESH_MARGIN`] is left, one refresh
/// at a time (requests waiting meanwhile get the new token).
pub struct BearerAuth {
    source: Arc<dyn TokenSource>,
    current: Mutex<Option<(Token, std::time::Instant)>>,
    refresh: tokio::sync::Mutex<()>,
}

impl fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bearer({}, token redacted)", self.source.name())
    }
}

impl BearerAuth {
    /// Tokens from `source`.
    pub fn new(source: Arc<dyn TokenSource>) -> BearerAuth {
        BearerAuth {
            source,
            current: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// Where the tokens come from.
    pub fn source_name(&self) -> String {
        self.source.name()
    }

    fn cached(&self) -> Option<Token> {
        let g = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (t, got) = g.as_ref()?;
        let fresh = t.left() > REFRESH_MARGIN
            || (got.elapsed() < MIN_REFRESH_INTERVAL && t.left() > Duration::ZERO);
        fresh.then(|| t.clone())
    }

    /// A refresh failed (`az` or the network to the authority hiccupped): the current
    /// token is still used while it has more than [`MIN_KEPT_LEFT`] left, and the source is
    /// asked again after [`MIN_REFRESH_INTERVAL`], so a long upload does not stop minutes
    /// before it has to. Without one, the source's error.
    fn keep_current(&self, e: Error) -> Result<Token> {
        let mut g = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((old, got)) = g.as_mut() {
            if old.left() > MIN_KEPT_LEFT {
                tracing::warn!(
                    "--auth login: a new token from {} failed ({}); the current one, {} s left, is used meanwhile",
                    self.source.name(),
                    super::redact::redact_text(e.message()),
                    old.left().as_secs()
                );
                *got = std::time::Instant::now();
                return Ok(old.clone());
            }
        }
        Err(e)
    }

    /// A token with more than [`REFRESH_MARGIN`] left (or the newest the source has).
    pub async fn token(&self) -> Result<Token> {
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let _one = self.refresh.lock().await;
        // Another request may have refreshed it while this one waited.
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let t = match self.source.token().await {
            Ok(t) => t,
            Err(e) => return self.keep_current(e),
        };
        if t.left().is_zero() {
            return Err(login_error(format!(
                "--auth login: the token from {} has expired; sign in again (`az login`)",
                self.source.name()
            )));
        }
        tracing::info!(
            left_s = t.left().as_secs(),
            "--auth login: new token from {}",
            self.source.name()
        );
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((t.clone(), std::time::Instant::now()));
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts requests; each token expires `life` after it is made.
    struct Counting {
        calls: AtomicUsize,
        life: Duration,
    }

    impl TokenSource for Counting {
        fn name(&self) -> String {
            "counting".into()
        }
        fn token(&self) -> TokenFuture<'_> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let life = self.life;
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(Token::new(format!("tok{n}"), SystemTime::now() + life))
            })
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_long_lived_token_is_asked_for_once_even_by_concurrent_requests() {
        let src = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            life: Duration::from_secs(3600),
        });
        let auth = Arc::new(BearerAuth::new(src.clone()));
        rt().block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let a = auth.clone();
                tasks.push(tokio::spawn(async move { a.token().await.unwrap() }));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap().secret(), "tok0");
            }
        });
        assert_eq!(src.calls.load(Ordering::SeqCst), 1, "one in-flight refresh");
    }

    #[test]
    fn a_token_near_expiry_is_refreshed() {
        // 4 minutes left is inside the 5-minute margin: asked again (after the minimum interval).
        let src = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            life: Duration::from_secs(240),
        });
        let auth = BearerAuth::new(src.clone());
        let rt = rt();
        assert_eq!(rt.block_on(auth.token()).unwrap().secret(), "tok0");
        // Within the minimum interval the near-expiry token is still used.
        assert_eq!(rt.block_on(auth.token()).unwrap().secret(), "tok0");
        // Pretend it was fetched long ago.
        {
            let mut g = auth.current.lock().unwrap();
            let (t, _) = g.take().unwrap();
            *g = Some((
                t,
                std::time::Instant::now()
                    .checked_sub(MIN_REFRESH_INTERVAL * 2)
                    .unwrap(),
            ));
        }
        assert_eq!(rt.block_on(auth.token()).unwrap().secret(), "tok1");
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
    }

    /// Fails every request after the first (red team r4: a refresh failure with minutes
    /// left aborted the whole upload).
    struct FailsAfterFirst {
        calls: AtomicUsize,
        life: Duration,
    }

    impl TokenSource for FailsAfterFirst {
        fn name(&self) -> String {
            "flaky".into()
        }
        fn token(&self) -> TokenFuture<'_> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let life = self.life;
            Box::pin(async move {
                if n == 0 {
                    Ok(Token::new("tok0", SystemTime::now() + life))
                } else {
                    Err(login_error("az: connection reset".into()))
                }
            })
        }
    }

    fn age(auth: &BearerAuth) {
        let mut g = auth.current.lock().unwrap();
        let (t, _) = g.take().unwrap();
        let long_ago = std::time::Instant::now()
            .checked_sub(MIN_REFRESH_INTERVAL * 2)
            .unwrap();
        *g = Some((t, long_ago));
    }

    #[test]
    fn a_failed_refresh_keeps_the_current_token_while_it_lasts() {
        let src = Arc::new(FailsAfterFirst {
            calls: AtomicUsize::new(0),
            life: Duration::from_secs(240),
        });
        let auth = BearerAuth::new(src.clone());
        let rt = rt();
        assert_eq!(rt.block_on(auth.token()).unwrap().secret(), "tok0");
        age(&auth);
        // 4 minutes left, refresh fails: the current token, not an error.
        assert_eq!(rt.block_on(auth.token()).unwrap().secret(), "tok0");
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
        // Not asked again at once (no refresh storm while the source is down).
        assert_eq!(rt.block_on(auth.token()).unwrap().secret(), "tok0");
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
        // With under a minute left the source's error is the answer.
        let short = BearerAuth::new(Arc::new(FailsAfterFirst {
            calls: AtomicUsize::new(0),
            life: Duration::from_secs(50),
        }));
        assert_eq!(rt.block_on(short.token()).unwrap().secret(), "tok0");
        age(&short);
        let e = rt.block_on(short.token()).unwrap_err();
        assert_eq!(e.code(), "upload.login");
        assert!(e.message().contains("connection reset"));
    }

    #[test]
    fn identity_endpoints_on_this_machine_bypass_the_proxy() {
        for h in [
            "169.254.169.254",
            "[fe80::1]",
            "127.0.0.1",
            "[::1]",
            "localhost",
        ] {
            assert!(is_local_identity_host(h), "{h}");
        }
        for h in [
            "login.microsoftonline.com",
            "10.0.0.1",
            "169.254.169.254.nip.io",
            "[2001:db8::1]",
        ] {
            assert!(!is_local_identity_host(h), "{h}");
        }
    }

    #[test]
    fn an_expired_token_from_the_source_is_a_clear_error() {
        let auth = BearerAuth::new(Arc::new(FixedToken(Token::new(
            "eyJexpired.x.y",
            SystemTime::now() - Duration::from_secs(10),
        ))));
        let e = rt().block_on(auth.token()).unwrap_err();
        assert_eq!(e.code(), "upload.login");
        assert!(e.message().contains("expired") && !e.to_string().contains("eyJexpired"));
        assert!(!format!("{auth:?}").contains("eyJ"));
    }

    #[test]
    fn jwt_expiry_is_read() {
        use base64::Engine as _;
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!(
            "{}.{}.sig",
            b(r#"{"alg":"none"}"#),
            b(r#"{"exp":2000000000}"#)
        );
        let t = Token::from_jwt(&jwt);
        assert_eq!(
            t.expires_on,
            UNIX_EPOCH + Duration::from_secs(2_000_000_000)
        );
        assert!(!format!("{t:?}").contains(&jwt));
        // Not a JWT: an hour, roughly.
        let t = Token::from_jwt("opaque");
        assert!(t.left() > Duration::from_secs(3500));
    }

    #[test]
    fn each_cloud_signs_in_at_its_own_authority() {
        // The chain builds for every cloud, and azure_identity's credential points at the
        // cloud's authority (its Debug shows the token endpoint; the secret is redacted).
        for (cloud, host) in [
            (Cloud::AzureCloud, "login.microsoftonline.com"),
            (Cloud::AzureChinaCloud, "login.chinacloudapi.cn"),
            (Cloud::AzureUsGovernment, "login.microsoftonline.us"),
        ] {
            assert_eq!(authority_host(cloud), host);
            let c = azure_identity::ClientSecretCredential::new(
                "00000000-0000-0000-0000-000000000001",
                "client".into(),
                "s3cr3t-value".to_string().into(),
                Some(azure_identity::ClientSecretCredentialOptions {
                    client_options: azure_core::http::ClientOptions {
                        cloud: Some(Arc::new(cloud_configuration(cloud))),
                        ..Default::default()
                    },
                }),
            )
            .unwrap();
            let shown = format!("{c:?}");
            assert!(shown.contains(&format!("Domain(\"{host}\")")), "{shown}");
            assert!(
                shown.contains("/00000000-0000-0000-0000-000000000001/oauth2/v2.0/token"),
                "{shown}"
            );
            assert!(!shown.contains("s3cr3t-value"));
            let http = reqwest::Client::new();
            let chain = SignIn::new(cloud, &http).unwrap();
            let names = chain.source_names();
            assert!(
                names.iter().any(|n| n.contains("Azure CLI"))
                    && names.last().unwrap().contains("managed identity")
            );
        }
    }
}
