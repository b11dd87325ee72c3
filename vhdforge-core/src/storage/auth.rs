//! Credentials for the Blob service (docs/azure-page-blob.md §1.5, §1.6): which one a
//! request uses, and Shared Key request signing.
//!
//! Order of precedence: a SAS in the destination URL; else the connection string
//! `AZURE_STORAGE_CONNECTION_STRING` (its `AccountKey`, else its `SharedAccessSignature`; see
//! [`super::connstr`]); else Shared Key from
//! `AZURE_STORAGE_ACCOUNT` + `AZURE_STORAGE_KEY`. Keys are held decoded and never displayed,
//! and sign only for their own account's endpoints ([`super::hosts::key_may_sign_for`]).
//!
//! `--auth key|sas|login` (or `VHDFORGE_AUTH`) narrows that to one kind: `login` signs in
//! with Entra ID ([`super::token`]) and sends `Authorization: Bearer …`, only to Azure
//! Storage endpoints (a token is good for every account the identity may reach), a
//! connection string's `BlobEndpoint`, or a loopback emulator.

use super::cloud::Cloud;
use super::connstr::ConnectionString;
use super::hosts::KeyScope;
use super::token::{BearerAuth, TokenSource};
use crate::error::{Error, ErrorKind, Result};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// The first service version that accepts Entra ID (OAuth) tokens.
pub const MIN_BEARER_API_VERSION: &str = "2017-11-09";

/// How requests are to be authorized (`--auth`, `VHDFORGE_AUTH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// By what is given: a SAS in the URL, else the connection string, else the key
    /// variables.
    #[default]
    Auto,
    /// An account key only (Shared Key).
    Key,
    /// A SAS only (in the URL, `--sas-file`, `VHDFORGE_DEST_SAS` or the connection string).
    Sas,
    /// Entra ID sign-in: an OAuth token, `Authorization: Bearer`.
    Login,
}

impl AuthMode {
    /// Parse `key`, `sas` or `login` (any case).
    pub fn parse(s: &str) -> Result<AuthMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "key" => Ok(AuthMode::Key),
            "sas" => Ok(AuthMode::Sas),
            "login" => Ok(AuthMode::Login),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                "upload.credentials",
                format!(
                    "unknown --auth {:?} (or VHDFORGE_AUTH); expected key, sas or login",
                    super::redact::redact_text(s)
                ),
            )),
        }
    }
}

/// Where credentials may come from besides the URL, and how to reach the service; a snapshot
/// of the environment so tests do not depend on (or mutate) the process environment.
#[derive(Clone, Default)]
pub struct CredentialEnv {
    /// `AZURE_STORAGE_CONNECTION_STRING`.
    pub connection_string: Option<String>,
    /// `AZURE_STORAGE_ACCOUNT`.
    pub account: Option<String>,
    /// `AZURE_STORAGE_KEY`.
    pub key: Option<String>,
    /// `--cloud` or `AZURE_CLOUD` as given (an `az` cloud name); `None` is `AzureCloud`. Kept
    /// unparsed so a bad value is reported by the command that needs it, with its code.
    pub cloud: Option<String>,
    /// `--ca-cert` or `VHDFORGE_CA_CERT`: a PEM file of extra trusted root certificates (a corporate TLS-inspection
    /// root, a private endpoint's CA), trusted besides the built-in and OS roots.
    pub ca_cert: Option<std::path::PathBuf>,
    /// `--auth` or `VHDFORGE_AUTH` as given (`key`, `sas`, `login`); `None` is
    /// [`AuthMode::Auto`]. Kept unparsed like `cloud`.
    pub auth: Option<String>,
    /// For `--auth login`: where tokens come from instead of the Entra ID sign-in chain
    /// (a library user holding a token, tests).
    pub token_source: Option<Arc<dyn TokenSource>>,
    /// `VHDFORGE_TEST_BEARER_TOKEN_FILE`: a test hook, a file holding the token for
    /// `--auth login`, honoured only for loopback endpoints.
    pub test_token_file: Option<std::path::PathBuf>,
    /// The sign-in chain, made once and shared by every client made from clones of this
    /// environment (one `az` call for a whole command, one token cache).
    /// (Opaque; leave it at its default.)
    pub login: LoginCache,
}

/// The `--auth login` token cache shared by clones of a [`CredentialEnv`] (opaque).
#[derive(Clone, Default)]
pub struct LoginCache(Arc<OnceLock<Arc<BearerAuth>>>);

impl fmt::Debug for CredentialEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialEnv")
            .field(
                "connection_string",
                &self.connection_string.as_ref().map(|_| "<set>"),
            )
            .field("account", &self.account)
            .field("key", &self.key.as_ref().map(|_| "<set>"))
            .field("cloud", &self.cloud)
            .field("ca_cert", &self.ca_cert)
            .field("auth", &self.auth)
            .field(
                "token_source",
                &self.token_source.as_ref().map(|s| s.name()),
            )
            .field("test_token_file", &self.test_token_file)
            .finish_non_exhaustive()
    }
}

impl CredentialEnv {
    /// Read the variables from the process environment (empty values count as unset).
    pub fn from_process_env() -> Self {
        let get = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
        CredentialEnv {
            connection_string: get("AZURE_STORAGE_CONNECTION_STRING"),
            account: get("AZURE_STORAGE_ACCOUNT"),
            key: get("AZURE_STORAGE_KEY"),
            cloud: get("AZURE_CLOUD"),
            ca_cert: get("VHDFORGE_CA_CERT").map(std::path::PathBuf::from),
            auth: get("VHDFORGE_AUTH"),
            token_source: None,
            test_token_file: get(super::token::TEST_TOKEN_FILE_VAR).map(std::path::PathBuf::from),
            login: LoginCache::default(),
        }
    }

    /// `--auth` as parsed.
    pub fn auth_mode(&self) -> Result<AuthMode> {
        self.auth
            .as_deref()
            .map_or(Ok(AuthMode::Auto), AuthMode::parse)
    }

    /// The cloud that decides the endpoint suffix when only an account name is known.
    pub fn cloud(&self) -> Result<Cloud> {
        self.cloud
            .as_deref()
            .map_or(Ok(Cloud::AzureCloud), Cloud::parse)
    }

    fn connection(&self) -> Result<Option<ConnectionString>> {
        self.connection_string
            .as_deref()
            .map(ConnectionString::parse)
            .transpose()
    }
}

/// A storage account name and its decoded key.
#[derive(Clone)]
pub struct SharedKey {
    /// The account name, as it appears in the canonicalized resource.
    pub account: String,
    key: Vec<u8>,
    key_b64: String,
    /// Where, besides the account's public endpoints, this key may sign requests.
    pub scope: KeyScope,
}

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedKey({}, key redacted)", self.account)
    }
}

impl SharedKey {
    /// Build from an account name and a base64 key.
    pub fn new(account: &str, key_b64: &str) -> Result<SharedKey> {
        let key = base64::engine::general_purpose::STANDARD.decode(key_b64.trim()).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                "upload.credentials",
                format!("the account key for {account} is not valid base64; copy the key from the portal (Access keys) or `az storage account keys list`"),
            )
        })?;
        if account.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "upload.credentials",
                "the storage account name is empty",
            ));
        }
        Ok(SharedKey {
            account: account.to_string(),
            key,
            key_b64: key_b64.trim().to_string(),
            scope: KeyScope::default(),
        })
    }

    /// The key as given, to scrub it from any foreign text.
    pub(crate) fn key_text(&self) -> &str {
        &self.key_b64
    }

    /// `SharedKey <account>:<signature>` for `string_to_sign`.
    pub fn authorization(&self, string_to_sign: &str) -> String {
        format!("SharedKey {}:{}", self.account, self.sign(string_to_sign))
    }

    /// Base64 HMAC-SHA256 of `string_to_sign` with the key: the signature of a Shared Key
    /// request or of a SAS.
    pub fn sign(&self, string_to_sign: &str) -> String {
        // HMAC accepts keys of any length: new_from_slice cannot fail for Hmac<Sha256>.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(string_to_sign.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// How requests are authorized.
#[derive(Clone)]
pub enum Credential {
    /// The SAS query string of the destination URL (appended verbatim).
    Sas(String),
    /// Shared Key signing.
    SharedKey(SharedKey),
    /// An Entra ID access token (`Authorization: Bearer`), refreshed before it expires.
    Bearer(Arc<BearerAuth>),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The SAS query minus its signature: still useful to see sp/se/sr.
            Credential::Sas(q) => write!(f, "Sas({})", super::redact::redact_text(q)),
            Credential::SharedKey(k) => write!(f, "{k:?}"),
            Credential::Bearer(b) => write!(f, "{b:?}"),
        }
    }
}

/// Parse a connection string into a Shared Key and the blob endpoint it names (its
/// `BlobEndpoint`, or `ACCOUNT.blob.EndpointSuffix`); a SAS-only string is an error here.
pub fn parse_connection_string(s: &str) -> Result<(SharedKey, Option<String>)> {
    let cs = ConnectionString::parse(s)?;
    let key = key_of(&cs)?.ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            "upload.credentials",
            "AZURE_STORAGE_CONNECTION_STRING holds a SAS, not an account key, and this needs the key",
        )
    })?;
    let endpoint = cs.blob_endpoint.clone().or_else(|| {
        cs.endpoint_suffix
            .as_ref()
            .and_then(|_| cs.blob_service(Cloud::AzureCloud))
    });
    Ok((key, endpoint))
}

/// The Shared Key of a connection string, scoped to the endpoints it names.
fn key_of(cs: &ConnectionString) -> Result<Option<SharedKey>> {
    let (Some(account), Some(k)) = (&cs.account_name, &cs.account_key) else {
        return Ok(None);
    };
    let mut key = SharedKey::new(account, k)?;
    key.scope = KeyScope {
        blob_endpoint: cs.blob_endpoint.clone(),
        endpoint_suffix: cs.endpoint_suffix.clone(),
    };
    Ok(Some(key))
}

/// True when the query holds a SAS signature.
fn has_sig(query: &str) -> bool {
    query.split('&').any(|p| {
        p.split('=')
            .next()
            .is_some_and(crate::storage::redact::is_sig_name)
    })
}

/// Pick the credential for a URL whose query is `query` (a SAS when it has `sig=`).
///
/// Order: the URL's SAS; the connection string's key, else its `SharedAccessSignature`;
/// `AZURE_STORAGE_ACCOUNT` + `AZURE_STORAGE_KEY`; `--auth` keeps only one kind. Use
/// [`resolve_for`] when the URL is known: it also keeps a connection string's SAS to that
/// string's own endpoints, and a sign-in token to storage endpoints.
pub fn resolve(query: Option<&str>, env: &CredentialEnv) -> Result<Credential> {
    let mode = env.auth_mode()?;
    let url_sas = query.filter(|q| has_sig(q));
    let cs = env.connection()?;
    let cs_key = cs.as_ref().map(key_of).transpose()?.flatten();
    let cs_sas = cs.as_ref().and_then(|c| c.sas.clone());
    let env_key = match (&env.account, &env.key) {
        (Some(a), Some(k)) => Some(SharedKey::new(a, k)?),
        _ => None,
    };
    let creds_error = |msg: &str| {
        Error::new(
            ErrorKind::InvalidInput,
            "upload.credentials",
            msg.to_string(),
        )
    };
    match mode {
        AuthMode::Auto => {
            if let Some(q) = url_sas {
                return Ok(Credential::Sas(q.to_string()));
            }
            if let Some(key) = cs_key {
                return Ok(Credential::SharedKey(key));
            }
            if let Some(sas) = cs_sas {
                return Ok(Credential::Sas(sas));
            }
            if let Some(key) = env_key {
                return Ok(Credential::SharedKey(key));
            }
            Err(creds_error(
                "no credentials: give a SAS URL (…?sv=…&sig=…, e.g. from `az storage blob generate-sas --permissions cw` or `az disk grant-access`), \
                 or set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY, or sign in with `--auth login` (Entra ID)",
            ))
        }
        AuthMode::Key => {
            if url_sas.is_some() {
                tracing::info!("--auth key: the SAS given for this URL is not used");
            }
            cs_key.or(env_key).map(Credential::SharedKey).ok_or_else(|| {
                creds_error(
                    "--auth key, but no account key is set: set AZURE_STORAGE_CONNECTION_STRING (with AccountKey) \
                     or AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY, or choose --auth sas or --auth login",
                )
            })
        }
        AuthMode::Sas => url_sas
            .map(str::to_string)
            .or(cs_sas)
            .map(Credential::Sas)
            .ok_or_else(|| {
                creds_error(
                    "--auth sas, but no SAS is given: add it to the URL (…?sv=…&sig=…), or give it with --sas-file \
                     or VHDFORGE_DEST_SAS, or a connection string with SharedAccessSignature",
                )
            }),
        AuthMode::Login => {
            if url_sas.is_some() {
                return Err(creds_error(
                    "--auth login, but the URL carries a SAS (from DEST, --sas-file or VHDFORGE_DEST_SAS): \
                     remove the SAS to sign in with Entra ID, or use --auth sas",
                ));
            }
            if cs_key.is_some() || env_key.is_some() || cs_sas.is_some() {
                tracing::info!("--auth login: the account key or SAS in the environment is not used");
            }
            bearer(None, env)
        }
    }
}

/// The Bearer credential for `url` (`None`: not known, so no test hook).
fn bearer(url: Option<&reqwest::Url>, env: &CredentialEnv) -> Result<Credential> {
    if let Some(src) = &env.token_source {
        return Ok(Credential::Bearer(Arc::new(BearerAuth::new(src.clone()))));
    }
    if let Some(path) = &env.test_token_file {
        // A test hook must never hand a production upload a token from a file.
        let loopback = url
            .and_then(reqwest::Url::host_str)
            .is_some_and(super::hosts::is_loopback_host);
        if !loopback {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "upload.login",
                format!(
                    "{} is set, but that test hook is honoured only for loopback endpoints; unset it to sign in with Entra ID",
                    super::token::TEST_TOKEN_FILE_VAR
                ),
            ));
        }
        let src: Arc<dyn TokenSource> = Arc::new(super::token::TokenFile(path.clone()));
        return Ok(Credential::Bearer(Arc::new(BearerAuth::new(src))));
    }
    if let Some(b) = env.login.0.get() {
        return Ok(Credential::Bearer(b.clone()));
    }
    let cloud = env.cloud()?;
    let http = super::http::client(super::token::authority_host(cloud), true, 2, env)?;
    let chain = super::token::SignIn::new(cloud, &http)?;
    tracing::info!(
        "--auth login: Entra ID sign-in ({}), trying {}",
        super::token::authority_host(cloud),
        chain.source_names().join(", then ")
    );
    let b = Arc::new(BearerAuth::new(Arc::new(chain)));
    Ok(Credential::Bearer(env.login.0.get_or_init(|| b).clone()))
}

/// True when a sign-in token may be sent to `url`: an Azure Storage blob endpoint of a
/// known cloud (or of the connection string's `EndpointSuffix`), the connection string's
/// `BlobEndpoint`, or a loopback emulator. A token is good for every account its identity
/// may reach, so it goes nowhere else.
pub fn bearer_may_go_to(url: &reqwest::Url, env: &CredentialEnv) -> bool {
    let Some(host) = url.host_str().map(str::to_ascii_lowercase) else {
        return false;
    };
    if super::hosts::is_loopback_host(&host) {
        return true;
    }
    let cs = env.connection().ok().flatten();
    if let Some(ep) = cs
        .as_ref()
        .and_then(|c| c.blob_endpoint.as_deref())
        .and_then(|e| reqwest::Url::parse(e).ok())
    {
        if ep.scheme() == url.scheme()
            && ep.host_str().map(str::to_ascii_lowercase).as_deref() == Some(host.as_str())
            && ep.port_or_known_default() == url.port_or_known_default()
        {
            return true;
        }
    }
    let suffixes = cs
        .and_then(|c| c.endpoint_suffix)
        .map(|s| s.trim_matches('.').to_ascii_lowercase())
        // An empty suffix (`EndpointSuffix=.`) would admit every `NAME.blob.` host.
        .filter(|s| !s.is_empty())
        .into_iter()
        .chain(
            super::hosts::KNOWN_ENDPOINT_SUFFIXES
                .iter()
                .map(|s| (*s).to_string()),
        )
        .chain(
            super::cloud::ALL_CLOUDS
                .iter()
                .map(|c| c.storage_zone_suffix().to_string()),
        );
    let mut suffixes = suffixes;
    suffixes.any(|suffix| {
        host.strip_suffix(&format!(".blob.{suffix}"))
            .is_some_and(|account| !account.is_empty())
    })
}

/// [`resolve`] for `url`, and a SAS from the connection string is sent only to that
/// string's own endpoints (a SAS, like a key, works for anyone who holds it), a sign-in
/// token only to storage endpoints ([`bearer_may_go_to`]).
pub fn resolve_for(url: &reqwest::Url, env: &CredentialEnv) -> Result<Credential> {
    if env.auth_mode()? == AuthMode::Login {
        // Checked before any sign-in is attempted: nothing is asked for a host that would
        // not get the token anyway.
        if !bearer_may_go_to(url, env) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "upload.key_host",
                format!(
                    "{} is not an Azure Storage blob endpoint (ACCOUNT.blob.core.windows.net and the other clouds' \
                     equivalents), so the Entra ID token will not be sent there (it would grant that host your access \
                     to every storage account); set BlobEndpoint in AZURE_STORAGE_CONNECTION_STRING for a private \
                     endpoint, or use a SAS",
                    super::redact::redact(url.as_str())
                ),
            ));
        }
        if url.query().is_some_and(has_sig) {
            // The "login, but a SAS was given" error.
            return resolve(url.query(), env);
        }
        return bearer(Some(url), env);
    }
    let cred = resolve(url.query(), env)?;
    if url.query().is_some_and(has_sig) && matches!(cred, Credential::Sas(_)) {
        return Ok(cred);
    }
    if let (Credential::Sas(_), Some(cs)) = (&cred, env.connection()?) {
        let scope = KeyScope {
            blob_endpoint: cs.blob_endpoint.clone(),
            endpoint_suffix: cs.endpoint_suffix.clone(),
        };
        let account = cs.account_name.as_deref().unwrap_or("");
        if !super::hosts::key_may_sign_for(url, account, &scope) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "upload.key_host",
                format!(
                    "{} is not an endpoint of the connection string's account, so its SharedAccessSignature \
                     will not be sent there; give CONTAINER/BLOB, or a URL under its BlobEndpoint",
                    super::redact::redact(url.as_str())
                ),
            ));
        }
    }
    Ok(cred)
}

/// The full blob URL for `dest`: a URL is kept; `CONTAINER/BLOB` is joined to the
/// connection string's blob endpoint (`BlobEndpoint`, or `ACCOUNT.blob.` + its
/// `EndpointSuffix` or the cloud's), or to `https://ACCOUNT.blob.<cloud suffix>`.
pub fn expand_destination(dest: &str, env: &CredentialEnv) -> Result<String> {
    if dest.contains("://") {
        return Ok(dest.to_string());
    }
    let rel = dest.trim_start_matches('/');
    let cloud = env.cloud()?;
    if let Some(base) = env.connection()?.and_then(|cs| cs.blob_service(cloud)) {
        return Ok(format!("{}/{rel}", base.trim_end_matches('/')));
    }
    if let Some(a) = &env.account {
        return Ok(format!("{}/{rel}", cloud.blob_endpoint(a)));
    }
    Err(Error::new(
        ErrorKind::InvalidInput,
        "upload.url",
        format!(
            "{:?} is not a URL; give https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB, or CONTAINER/BLOB with \
             AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT set",
            super::redact::redact(dest)
        ),
    ))
}

/// Standard headers in string-to-sign order (Shared Key, versions ≥ 2015-02-21).
const SIGNED_STANDARD_HEADERS: [&str; 11] = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

/// The Shared Key string-to-sign. `headers` are (lowercase name, value) pairs as sent;
/// `path` is the URI path as sent (percent-encoded); `query` holds decoded (name, value) pairs.
pub fn string_to_sign(
    verb: &str,
    headers: &[(&str, &str)],
    account: &str,
    path: &str,
    query: &[(&str, &str)],
) -> String {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| *v)
    };
    let mut s = String::with_capacity(256);
    s.push_str(verb);
    s.push('\n');
    for name in SIGNED_STANDARD_HEADERS {
        let v = header(name);
        // A zero Content-Length is signed as the empty string.
        if !(name == "content-length" && v == "0") {
            s.push_str(v);
        }
        s.push('\n');
    }
    let mut ms: Vec<(&str, String)> = headers
        .iter()
        .filter(|(n, _)| n.starts_with("x-ms-"))
        .map(|(n, v)| (*n, v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    ms.sort_by(|a, b| a.0.cmp(b.0));
    for (n, v) in ms {
        s.push_str(n);
        s.push(':');
        s.push_str(&v);
        s.push('\n');
    }
    s.push('/');
    s.push_str(account);
    s.push_str(path);
    let mut q: Vec<(String, &str)> = query
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), *v))
        .collect();
    q.sort();
    let mut i = 0;
    while i < q.len() {
        let name = q[i].0.clone();
        let mut values = Vec::new();
        while i < q.len() && q[i].0 == name {
            values.push(q[i].1);
            i += 1;
        }
        s.push('\n');
        s.push_str(&name);
        s.push(':');
        s.push_str(&values.join(","));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Azurite's documented development key.
    const DEV_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    #[test]
    fn string_to_sign_put_page_vector() {
        // A Put Page as vhdforge sends it to Azurite (path-style URL: account twice).
        let headers = [
            ("content-length", "512"),
            ("x-ms-date", "Fri, 27 Nov 2026 12:00:00 GMT"),
            ("x-ms-version", "2021-08-06"),
            ("x-ms-range", "bytes=0-511"),
            ("x-ms-page-write", "update"),
            ("x-ms-content-crc64", "AAAAAAAAAAA="),
        ];
        let got = string_to_sign(
            "PUT",
            &headers,
            "devstoreaccount1",
            "/devstoreaccount1/c/b.vhd",
            &[("comp", "page")],
        );
        let want = "PUT\n\n\n512\n\n\n\n\n\n\n\n\n\
                    x-ms-content-crc64:AAAAAAAAAAA=\nx-ms-date:Fri, 27 Nov 2026 12:00:00 GMT\nx-ms-page-write:update\n\
                    x-ms-range:bytes=0-511\nx-ms-version:2021-08-06\n/devstoreaccount1/devstoreaccount1/c/b.vhd\ncomp:page";
        assert_eq!(got, want);
        // Signature computed independently with Python's hmac/hashlib over the same string.
        let key = SharedKey::new("devstoreaccount1", DEV_KEY).unwrap();
        assert_eq!(
            key.authorization(want),
            format!(
                "SharedKey devstoreaccount1:{}",
                include_str!("testdata/sharedkey_vector.sig").trim()
            )
        );
    }

    #[test]
    fn string_to_sign_create_zero_length_and_if_none_match() {
        // Zero Content-Length signs as empty; If-None-Match is in its slot; query sorted by name.
        let headers = [
            ("content-length", "0"),
            ("if-none-match", "*"),
            ("x-ms-blob-type", "PageBlob"),
        ];
        let got = string_to_sign(
            "PUT",
            &headers,
            "acct",
            "/c/b",
            &[("timeout", "60"), ("Comp", "x")],
        );
        assert_eq!(
            got,
            "PUT\n\n\n\n\n\n\n\n\n*\n\n\nx-ms-blob-type:PageBlob\n/acct/c/b\ncomp:x\ntimeout:60"
        );
    }

    #[test]
    fn credential_precedence() {
        let env = CredentialEnv {
            connection_string: Some(format!("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;")),
            account: Some("other".into()),
            key: Some(DEV_KEY.into()),
            ..CredentialEnv::default()
        };
        // A SAS in the URL wins over everything.
        assert!(matches!(
            resolve(Some("sv=1&sig=x"), &env).unwrap(),
            Credential::Sas(_)
        ));
        // A query without sig is not a SAS: the connection string is used.
        match resolve(Some("timeout=5"), &env).unwrap() {
            Credential::SharedKey(k) => assert_eq!(k.account, "devstoreaccount1"),
            c => panic!("not a key: {c:?}"),
        }
        // Account + key when there is no connection string.
        let env2 = CredentialEnv {
            connection_string: None,
            ..env.clone()
        };
        match resolve(None, &env2).unwrap() {
            Credential::SharedKey(k) => assert_eq!(k.account, "other"),
            c => panic!("not a key: {c:?}"),
        }
        // Nothing at all: a clear error that names the options.
        let e = resolve(None, &CredentialEnv::default()).unwrap_err();
        assert_eq!(e.code(), "upload.credentials");
        assert!(e.message().contains("AZURE_STORAGE_CONNECTION_STRING"));
        // Debug never shows the key or the signature.
        let sas = resolve(Some("sv=1&sig=s3cr3tsignature"), &env).unwrap();
        assert!(!format!("{sas:?}").contains("s3cr3t"));
        assert!(!format!("{env:?}").contains(DEV_KEY));
        assert!(!format!("{:?}", SharedKey::new("a", DEV_KEY).unwrap()).contains(DEV_KEY));
    }

    #[test]
    fn destination_expansion() {
        let cs = CredentialEnv {
            connection_string: Some(format!("AccountName=devstoreaccount1;AccountKey={DEV_KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;")),
            ..CredentialEnv::default()
        };
        let acct = CredentialEnv {
            account: Some("acct".into()),
            key: Some(DEV_KEY.into()),
            ..CredentialEnv::default()
        };
        let cases = [
            // A URL is kept as it is.
            (
                "https://a.blob.core.windows.net/c/b",
                &acct,
                Some("https://a.blob.core.windows.net/c/b"),
            ),
            // CONTAINER/BLOB joins the connection string's endpoint (emulator path style).
            (
                "c/b.vhd",
                &cs,
                Some("http://127.0.0.1:10000/devstoreaccount1/c/b.vhd"),
            ),
            // ... or the account's public endpoint.
            (
                "/c/b.vhd",
                &acct,
                Some("https://acct.blob.core.windows.net/c/b.vhd"),
            ),
            // Nothing to join to: an error.
            ("c/b.vhd", &CredentialEnv::default(), None),
        ];
        for (dest, env, want) in cases {
            match want {
                Some(w) => assert_eq!(expand_destination(dest, env).unwrap(), w, "{dest}"),
                None => assert_eq!(
                    expand_destination(dest, env).unwrap_err().code(),
                    "upload.url"
                ),
            }
        }
    }

    #[test]
    fn destination_per_cloud() {
        // (env, cloud, dest, expected URL)
        let key = |a: &str| CredentialEnv {
            account: Some(a.into()),
            key: Some(DEV_KEY.into()),
            ..CredentialEnv::default()
        };
        let cs = |text: String| CredentialEnv {
            connection_string: Some(text),
            ..CredentialEnv::default()
        };
        let cases = [
            (key("a"), None, "https://a.blob.core.windows.net/c/b"),
            (key("a"), Some("AzureCloud"), "https://a.blob.core.windows.net/c/b"),
            (key("a"), Some("azurechinacloud"), "https://a.blob.core.chinacloudapi.cn/c/b"),
            (key("a"), Some("AzureUSGovernment"), "https://a.blob.core.usgovcloudapi.net/c/b"),
            // The connection string's EndpointSuffix beats the cloud.
            (
                cs(format!("AccountName=a;AccountKey={DEV_KEY};EndpointSuffix=core.chinacloudapi.cn")),
                Some("AzureUSGovernment"),
                "https://a.blob.core.chinacloudapi.cn/c/b",
            ),
            // No suffix in the string: the cloud decides.
            (
                cs(format!("AccountName=a;AccountKey={DEV_KEY}")),
                Some("AzureUSGovernment"),
                "https://a.blob.core.usgovcloudapi.net/c/b",
            ),
            // A SAS connection string.
            (
                cs("BlobEndpoint=https://s.blob.core.chinacloudapi.cn;SharedAccessSignature=sv=1&sig=abc".into()),
                None,
                "https://s.blob.core.chinacloudapi.cn/c/b",
            ),
        ];
        for (mut env, cloud, want) in cases {
            env.cloud = cloud.map(str::to_string);
            assert_eq!(expand_destination("c/b", &env).unwrap(), want, "{cloud:?}");
            // Whatever the cloud, the key signs for the endpoint the short form names.
            let url = reqwest::Url::parse(want).unwrap();
            match resolve_for(&url, &env).unwrap() {
                Credential::SharedKey(k) => {
                    assert!(super::super::hosts::key_may_sign_for(
                        &url, &k.account, &k.scope
                    ));
                }
                Credential::Sas(q) => assert_eq!(q, "sv=1&sig=abc"),
                Credential::Bearer(_) => panic!("no --auth login here"),
            }
        }
        let bad = CredentialEnv {
            cloud: Some("AzureStack".into()),
            ..key("a")
        };
        assert_eq!(
            expand_destination("c/b", &bad).unwrap_err().code(),
            "upload.cloud"
        );
    }

    #[test]
    fn connection_string_sas_stays_home() {
        let env = CredentialEnv {
            connection_string: Some(
                "AccountName=acct;SharedAccessSignature=sv=1&sig=SECRETSIG;EndpointSuffix=core.usgovcloudapi.net"
                    .into(),
            ),
            ..CredentialEnv::default()
        };
        let home = reqwest::Url::parse("https://acct.blob.core.usgovcloudapi.net/c/b").unwrap();
        assert!(matches!(
            resolve_for(&home, &env).unwrap(),
            Credential::Sas(_)
        ));
        for other in [
            "https://evil.example/c/b",
            "https://other.blob.core.usgovcloudapi.net/c/b",
            "https://acct.blob.core.usgovcloudapi.net.evil.example/c/b",
        ] {
            let u = reqwest::Url::parse(other).unwrap();
            let e = resolve_for(&u, &env).unwrap_err();
            assert_eq!(e.code(), "upload.key_host", "{other}");
            assert!(!e.to_string().contains("SECRETSIG"));
        }
        // A SAS in the URL itself is the user's explicit choice for that URL.
        let u = reqwest::Url::parse("https://evil.example/c/b?sv=1&sig=x").unwrap();
        assert!(matches!(resolve_for(&u, &env).unwrap(), Credential::Sas(q) if q == "sv=1&sig=x"));
    }

    #[test]
    fn auth_mode_narrows_the_credential() {
        use crate::storage::token::{FixedToken, Token};
        let full = CredentialEnv {
            connection_string: Some(format!(
                "AccountName=acct;AccountKey={DEV_KEY};SharedAccessSignature=sv=1&sig=CSSIG"
            )),
            token_source: Some(Arc::new(FixedToken(Token::new(
                "eyJtoken.x.y",
                std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
            )))),
            ..CredentialEnv::default()
        };
        let with = |mode: &str| CredentialEnv {
            auth: Some(mode.into()),
            ..full.clone()
        };
        let url = reqwest::Url::parse("https://acct.blob.core.windows.net/c/b").unwrap();
        let sas_url =
            reqwest::Url::parse("https://acct.blob.core.windows.net/c/b?sv=1&sig=URLSIG").unwrap();
        // Default: the URL's SAS, else the key.
        assert!(
            matches!(resolve_for(&sas_url, &full).unwrap(), Credential::Sas(q) if q.contains("URLSIG"))
        );
        assert!(matches!(
            resolve_for(&url, &full).unwrap(),
            Credential::SharedKey(_)
        ));
        // key: the key even when the URL carries a SAS.
        assert!(matches!(
            resolve_for(&sas_url, &with("key")).unwrap(),
            Credential::SharedKey(_)
        ));
        // sas: the URL's, else the connection string's.
        assert!(
            matches!(resolve_for(&sas_url, &with("SAS")).unwrap(), Credential::Sas(q) if q.contains("URLSIG"))
        );
        assert!(
            matches!(resolve_for(&url, &with("sas")).unwrap(), Credential::Sas(q) if q.contains("CSSIG"))
        );
        // login: a token, the key ignored; a SAS in the URL is refused.
        let c = resolve_for(&url, &with("login")).unwrap();
        assert!(matches!(c, Credential::Bearer(_)));
        assert!(!format!("{c:?}").contains("eyJtoken"));
        let e = resolve_for(&sas_url, &with("login")).unwrap_err();
        assert_eq!(e.code(), "upload.credentials");
        assert!(!e.to_string().contains("URLSIG"));
        // Nothing of the kind asked for: errors that say what to set.
        let none = |mode: &str| CredentialEnv {
            auth: Some(mode.into()),
            ..CredentialEnv::default()
        };
        assert!(resolve_for(&url, &none("key"))
            .unwrap_err()
            .message()
            .contains("AZURE_STORAGE_KEY"));
        assert!(resolve_for(&url, &none("sas"))
            .unwrap_err()
            .message()
            .contains("--sas-file"));
        assert_eq!(
            resolve_for(&url, &none("bogus")).unwrap_err().code(),
            "upload.credentials"
        );
    }

    #[test]
    fn a_token_goes_only_to_storage_endpoints() {
        let env = CredentialEnv {
            connection_string: Some(format!(
                "AccountName=acct;AccountKey={DEV_KEY};BlobEndpoint=https://pe.internal.example:8443/"
            )),
            ..CredentialEnv::default()
        };
        for (u, ok) in [
            ("https://a.blob.core.windows.net/c/b", true),
            ("https://a.blob.core.chinacloudapi.cn/c/b", true),
            ("https://a.blob.core.usgovcloudapi.net/c/b", true),
            ("https://a.z12.blob.storage.azure.net/c/b", true),
            ("https://md-impexp-x.blob.core.windows.net/c/b", true),
            ("https://127.0.0.1:10000/devstoreaccount1/c/b", true),
            ("https://pe.internal.example:8443/c/b", true),
            ("https://pe.internal.example/c/b", false),
            ("https://blob.core.windows.net/c/b", false),
            ("https://a.blob.core.windows.net.evil.example/c/b", false),
            ("https://evil.example/a.blob.core.windows.net/c/b", false),
        ] {
            let url = reqwest::Url::parse(u).unwrap();
            assert_eq!(bearer_may_go_to(&url, &env), ok, "{u}");
        }
        // The test hook is refused for a real endpoint.
        let hook = CredentialEnv {
            auth: Some("login".into()),
            test_token_file: Some("/nonexistent".into()),
            ..CredentialEnv::default()
        };
        let url = reqwest::Url::parse("https://a.blob.core.windows.net/c/b").unwrap();
        let e = resolve_for(&url, &hook).unwrap_err();
        assert_eq!(e.code(), "upload.login");
        assert!(e.message().contains("loopback"));
        let local = reqwest::Url::parse("https://127.0.0.1:1/devstoreaccount1/c/b").unwrap();
        assert!(matches!(
            resolve_for(&local, &hook).unwrap(),
            Credential::Bearer(_)
        ));
    }

    #[test]
    fn bad_key_is_a_clear_error() {
        let e = SharedKey::new("acct", "not base64!!").unwrap_err();
        assert_eq!(e.code(), "upload.credentials");
        assert!(!e.to_string().contains("not base64!!"));
    }
}
