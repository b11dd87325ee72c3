//! The few Blob service operations vhdforge needs (docs/azure-page-blob.md §1.1), signed
//! with Shared Key or carrying a SAS: [`BlobClient`], one per blob.
//!
//! Nothing here retries: [`Failure::class`] tells the caller what to do. Every message that
//! can leave this module is scrubbed of SAS signatures and keys, a key signs only for its
//! own account ([`key_may_sign_for`]), and a URL with a password is refused.

mod copy;

pub use copy::CopyState;

use super::auth::{self, Credential, CredentialEnv};
use super::failure::{Failure, TransportKind};
use super::hosts::{is_loopback_host, key_may_sign_for};
use super::redact::{redact, scrub};
use super::xml::{parse_page_list, xml_text};
use crate::error::{Error, ErrorKind, Result};
use base64::Engine as _;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::{Method, StatusCode};
use std::ops::Range;
use std::time::{Duration, SystemTime};

/// Largest error body read from the service (they are a few hundred bytes).
const MAX_ERROR_BODY: usize = 16 << 10;

/// The properties vhdforge reads with HEAD.
#[derive(Debug, Clone)]
pub struct BlobProps {
    /// Blob size in bytes.
    pub size: u64,
    /// `x-ms-blob-type`.
    pub blob_type: String,
    /// `x-ms-creation-time` as sent (absent on services that do not report it).
    pub creation_time: Option<String>,
    /// `x-ms-blob-sequence-number` (page blobs).
    pub sequence_number: Option<u64>,
    /// `ETag`: changes on every write to the blob (Put Page and Clear Pages included).
    pub etag: Option<String>,
}

/// Per-request integrity header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// `x-ms-content-crc64` (CRC-64/NVME, little-endian, base64).
    Crc64,
    /// `Content-MD5`.
    Md5,
}

/// `x-ms-content-crc64` for `data`: CRC-64/NVME, little-endian bytes, base64.
pub fn crc64_header(data: &[u8]) -> String {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data);
    base64::engine::general_purpose::STANDARD.encode(crc.to_le_bytes())
}

/// `Content-MD5` for `data`.
pub fn md5_header(data: &[u8]) -> String {
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

/// A client for one blob.
#[derive(Clone)]
pub struct BlobClient {
    http: reqwest::Client,
    /// `scheme://host[:port]/path`, no query.
    base: String,
    /// The URI path as sent (percent-encoded), for Shared Key.
    path: String,
    host: String,
    cred: Credential,
    api_version: String,
    secrets: Vec<String>,
    display: String,
}

impl std::fmt::Debug for BlobClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobClient({})", self.display)
    }
}

/// Whether a transport error is a refused server certificate. rustls is not a direct
/// dependency, so its error type cannot be downcast; its messages ("invalid peer
/// certificate: `UnknownIssuer`", "...: `NotValidForName`", "...: Expired") are the seam. An
/// `io::Error`'s `source()` skips the error it wraps, so that one is looked at too.
fn transport_kind(e: &reqwest::Error) -> TransportKind {
    if e.is_builder() {
        // The request could not even be built (a header value that cannot be sent):
        // it will not build next time either.
        return TransportKind::Request;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        let mut texts = vec![s.to_string()];
        if let Some(inner) = s
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            texts.push(inner.to_string());
        }
        if texts.iter().any(|t| is_certificate_message(t)) {
            return TransportKind::Certificate;
        }
        src = s.source();
    }
    TransportKind::Network
}

/// `YYYY-MM-DD`, optionally followed by a `-suffix` of letters and digits (preview versions).
fn is_api_version(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() >= 10
        && b[..10].iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            _ => c.is_ascii_digit(),
        })
        && (b.len() == 10
            || (b[10] == b'-' && b.len() > 11 && b[11..].iter().all(u8::is_ascii_alphanumeric)))
}

fn is_certificate_message(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("invalid peer certificate")
        || t.contains("certificate verify failed")
        || t.contains("unknownissuer")
}

/// `url` parsed, if it names a blob over https (or plain http to a loopback host) and carries
/// no user information.
fn parse_blob_url(url: &str, display: &str) -> Result<reqwest::Url> {
    let bad = |msg: String| Error::new(ErrorKind::InvalidInput, "upload.url", msg);
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(format!("{display} is not a blob URL ({e}); expected https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB[?SAS]")))?;
    let host = parsed.host_str().unwrap_or("");
    match parsed.scheme() {
        "https" => {}
        "http" if is_loopback_host(host) => {}
        "http" => return Err(bad(format!("{display}: plain http is only allowed to loopback hosts; use https (the data and credentials would travel unencrypted)"))),
        s => return Err(bad(format!("{display}: unsupported scheme {s:?}; use https"))),
    }
    if parsed
        .path()
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .count()
        < 2
    {
        return Err(bad(format!(
            "{display}: the URL names no blob; expected …/CONTAINER/BLOB"
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Azure never uses URL user information, and reqwest would turn it into a Basic
        // Authorization header; it would also end up in the journal. Refuse it.
        return Err(bad(format!(
            "{display}: the URL carries a user name or password (user:…@), which the Blob service \
             does not use; remove it and authorize with a SAS or an account key"
        )));
    }
    Ok(parsed)
}

fn check_api_version(api_version: &str) -> Result<()> {
    if !is_api_version(api_version) {
        // Not sendable as a header (or not a version at all): every request would fail
        // the same way, so say so now instead of retrying.
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "upload.invalid_request",
            format!(
                "--api-version {:?} is not a service version (YYYY-MM-DD, e.g. 2021-08-06)",
                super::redact::redact_text(api_version)
            ),
        ));
    }
    Ok(())
}

/// An account key signs only for its own account's endpoints.
fn check_key_host(cred: &Credential, parsed: &reqwest::Url, display: &str) -> Result<()> {
    if let Credential::SharedKey(key) = cred {
        if !key_may_sign_for(parsed, &key.account, &key.scope) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "upload.key_host",
                format!(
                    "{display} is not an endpoint of storage account {:?}, so its account key will not \
                     sign requests to it (the signed header could be replayed by that host); use \
                     https://{}.blob.core.windows.net/…, set BlobEndpoint in AZURE_STORAGE_CONNECTION_STRING \
                     for a private endpoint or emulator, or give a SAS URL instead",
                    key.account, key.account
                ),
            ));
        }
    }
    Ok(())
}

/// The secret values of `cred` (a SAS signature as given and decoded, or the key), to scrub
/// from anything the service echoes back.
fn secrets_of(cred: &Credential) -> Vec<String> {
    let mut secrets = Vec::new();
    match cred {
        Credential::Sas(q) => {
            for p in q.split('&') {
                if let Some((n, v)) = p.split_once('=') {
                    if crate::storage::redact::is_sig_name(n) {
                        secrets.push(v.to_string());
                        if let Ok(d) = percent_encoding::percent_decode_str(v).decode_utf8() {
                            secrets.push(d.into_owned());
                        }
                    }
                }
            }
        }
        Credential::SharedKey(k) => secrets.push(k.key_text().to_string()),
        // The token changes as it is refreshed; redact_text recognises its shape instead.
        Credential::Bearer(_) => {}
    }
    secrets
}

/// `f` with the token sent scrubbed by value: the redactor knows a JWT or `Bearer …` by
/// shape, but an opaque token echoed back by a server (a proxy, an emulator) has none.
fn without_token(f: Failure, token: Option<&super::token::Token>) -> Failure {
    let Some(t) = token else { return f };
    let s = [t.secret()];
    match f {
        Failure::Transport { message, kind } => Failure::Transport {
            message: scrub(&message, &s),
            kind,
        },
        Failure::Status {
            status,
            code,
            message,
        } => Failure::Status {
            status,
            code: scrub(&code, &s),
            message: scrub(&message, &s),
        },
    }
}

impl BlobClient {
    /// A client for the blob at `url`, with credentials from the URL or `env`.
    pub fn new(
        url: &str,
        env: &CredentialEnv,
        api_version: &str,
        connections: usize,
    ) -> Result<BlobClient> {
        let expanded = auth::expand_destination(url, env)?;
        let url = expanded.as_str();
        let display = redact(url);
        let parsed = parse_blob_url(url, &display)?;
        let host = parsed.host_str().unwrap_or("").to_string();
        let path = parsed.path().to_string();
        check_api_version(api_version)?;
        let cred = auth::resolve_for(&parsed, env)?;
        check_key_host(&cred, &parsed, &display)?;
        if matches!(cred, Credential::Bearer(_)) && api_version < auth::MIN_BEARER_API_VERSION {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "upload.invalid_request",
                format!(
                    "--api-version {api_version} is older than {}, the first the service accepts Entra ID tokens with; \
                     leave --api-version at its default",
                    auth::MIN_BEARER_API_VERSION
                ),
            ));
        }
        let secrets = secrets_of(&cred);
        let mut base = parsed;
        base.set_query(None);
        base.set_fragment(None);
        let https = base.scheme() == "https";
        let http = super::http::client(&host, https, connections, env)?;
        Ok(BlobClient {
            http,
            base: base.to_string(),
            path,
            host,
            cred,
            api_version: api_version.to_string(),
            secrets,
            display,
        })
    }

    /// The destination URL, redacted (safe to show).
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The blob URL without query (no secrets): the destination's identity.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The host name.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn scrub(&self, text: &str) -> String {
        let refs: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        scrub(text, &refs)
    }

    /// The URL and the full header list of a request: the service's date and version headers
    /// added, and the credential applied (the SAS appended to the query, or a Shared Key
    /// signature over the final headers).
    fn authorized<'h>(
        &self,
        method: &Method,
        query: &[(&str, &str)],
        headers: &[(&'h str, String)],
        len: usize,
        bearer: Option<&super::token::Token>,
    ) -> (String, Vec<(&'h str, String)>) {
        let mut all: Vec<(&str, String)> = headers.to_vec();
        all.push(("x-ms-date", httpdate::fmt_http_date(SystemTime::now())));
        all.push(("x-ms-version", self.api_version.clone()));
        if method == Method::PUT || method == Method::POST {
            all.push(("content-length", len.to_string()));
        }
        let mut qs: Vec<String> = query
            .iter()
            .map(|(n, v)| format!("{n}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
            .collect();
        match &self.cred {
            Credential::Sas(sas) => qs.push(sas.clone()),
            Credential::SharedKey(key) => {
                let pairs: Vec<(&str, &str)> = all.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let sts =
                    auth::string_to_sign(method.as_str(), &pairs, &key.account, &self.path, query);
                all.push(("authorization", key.authorization(&sts)));
            }
            Credential::Bearer(_) => {
                if let Some(t) = bearer {
                    all.push(("authorization", format!("Bearer {}", t.secret())));
                }
            }
        }
        let url = if qs.is_empty() {
            self.base.clone()
        } else {
            format!("{}?{}", self.base, qs.join("&"))
        };
        (url, all)
    }

    /// Send one request; `query` values are unencoded.
    async fn send(
        &self,
        method: Method,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<reqwest::Response, Failure> {
        let len = body.as_ref().map_or(0, Bytes::len);
        // A fresh token (refreshed when less than five minutes are left) for each request.
        let token = match &self.cred {
            Credential::Bearer(b) => Some(b.token().await.map_err(|e| Failure::Transport {
                message: redact(e.message()),
                kind: TransportKind::SignIn,
            })?),
            _ => None,
        };
        let (url, all) = self.authorized(&method, query, headers, len, token.as_ref());
        let method_name = method.to_string();
        let mut req = self.http.request(method, &url).timeout(timeout);
        for (n, v) in &all {
            // reqwest sets Content-Length from a non-empty body (setting it too would
            // duplicate it) but sends none for an empty one, which the service rejects.
            if *n != "content-length" || len == 0 {
                req = req.header(*n, v);
            }
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let comp = query
            .iter()
            .find(|(n, _)| *n == "comp" || *n == "restype")
            .map_or("", |(_, v)| *v);
        let range = all
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("x-ms-range") || n.eq_ignore_ascii_case("range"))
            .map_or("", |(_, v)| v.as_str())
            .to_string();
        if tracing::enabled!(tracing::Level::DEBUG) {
            // -vv: the headers, with the signature and anything secret-looking blanked.
            let shown: Vec<String> = all
                .iter()
                .map(|(n, v)| {
                    if n.eq_ignore_ascii_case("authorization") {
                        format!("{n}: [REDACTED]")
                    } else {
                        format!("{n}: {}", self.scrub(v))
                    }
                })
                .collect();
            tracing::debug!(method = %method_name, comp, headers = %shown.join("; "), "request headers");
        }
        let started = std::time::Instant::now();
        let sent = req.send().await;
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let f = without_token(self.transport(&e), token.as_ref());
                tracing::info!(
                    method = %method_name, comp, range = %range, ms,
                    "no answer from {}: {}", self.base, f.summary()
                );
                return Err(f);
            }
        };
        tracing::info!(
            method = %method_name, comp, range = %range, status = resp.status().as_u16(), ms,
            "{}", self.base
        );
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(without_token(
            self.status_failure(resp).await,
            token.as_ref(),
        ))
    }

    fn transport(&self, e: &reqwest::Error) -> Failure {
        let mut msg = if e.is_timeout() {
            "timed out".to_string()
        } else {
            String::new()
        };
        let mut src: Option<&dyn std::error::Error> = Some(e);
        while let Some(s) = src {
            let t = s.to_string();
            if !t.contains("://") && !msg.contains(&t) {
                if !msg.is_empty() {
                    msg.push_str(": ");
                }
                msg.push_str(&t);
            }
            src = s.source();
        }
        Failure::Transport {
            message: self.scrub(&msg),
            kind: transport_kind(e),
        }
    }

    async fn status_failure(&self, resp: reqwest::Response) -> Failure {
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            // Name where it pointed (scheme and host only: a query could hold secrets).
            let to = match resp.headers().get("location").map(|v| v.to_str()) {
                None => "without a Location".to_string(),
                Some(Ok(l)) => match reqwest::Url::parse(l) {
                    Ok(u) => format!("to {}://{}", u.scheme(), u.host_str().unwrap_or("?")),
                    Err(_) => "to another path on the same host".to_string(),
                },
                Some(Err(_)) => "to an unreadable Location".to_string(),
            };
            return Failure::Status {
                status,
                code: "Redirect".to_string(),
                message: self.scrub(&to),
            };
        }
        let header_code = resp
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        let mut resp = resp;
        while body.len() < MAX_ERROR_BODY {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    body.extend_from_slice(&c[..c.len().min(MAX_ERROR_BODY - body.len())]);
                }
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&body);
        let code = header_code
            .or_else(|| xml_text(&text, "Code"))
            .unwrap_or_else(|| {
                StatusCode::from_u16(status)
                    .map(|s| s.canonical_reason().unwrap_or("").to_string())
                    .unwrap_or_default()
            });
        let mut message = xml_text(&text, "Message")
            .map(|m| m.lines().next().unwrap_or("").to_string())
            .unwrap_or_default();
        // 401 too: Azure answers an unusable token with 401 InvalidAuthenticationInfo.
        // Not CannotVerifyCopySource: that 403 is the service failing to read a copy's
        // source by URL, not this identity lacking a role here.
        if matches!(self.cred, Credential::Bearer(_))
            && (status == 403 || status == 401)
            && code != "CannotVerifyCopySource"
        {
            // The service's own detail (e.g. "The token is expired") says more than its
            // generic message; the marker makes the advice about roles and sign-in.
            let detail = xml_text(&text, "AuthenticationErrorDetail").unwrap_or(message);
            message = format!("{}{detail}", super::failure::SIGNED_IN_MARK);
        }
        Failure::Status {
            status,
            code: self.scrub(&code),
            message: self.scrub(&message),
        }
    }

    /// A client for the container holding this blob (same credentials). Path-style URLs
    /// (an IP address or localhost, as Azurite uses) carry the account as the first path
    /// segment; the container is the segment after it.
    #[must_use]
    pub fn container(&self) -> BlobClient {
        let path_style = self.host.parse::<std::net::IpAddr>().is_ok()
            || self.host.eq_ignore_ascii_case("localhost");
        let keep = if path_style { 2 } else { 1 };
        let segments: Vec<&str> = self
            .path
            .trim_start_matches('/')
            .split('/')
            .take(keep)
            .collect();
        let path = format!("/{}", segments.join("/"));
        let origin = self
            .base
            .strip_suffix(self.path.as_str())
            .unwrap_or(&self.base);
        let mut c = self.clone();
        c.base = format!("{origin}{path}");
        c.display = redact(&c.base);
        c.path = path;
        c
    }

    /// Create Container (for a client made by [`BlobClient::container`]); an existing
    /// container is fine.
    pub async fn create_container(&self) -> Result<(), Failure> {
        match self
            .send(
                Method::PUT,
                &[("restype", "container")],
                &[],
                None,
                Duration::from_secs(60),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(Failure::Status {
                status: 409, code, ..
            }) if code == "ContainerAlreadyExists" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Delete Blob (with its snapshots); a blob already gone is fine.
    pub async fn delete(&self) -> Result<(), Failure> {
        match self
            .send(
                Method::DELETE,
                &[],
                &[("x-ms-delete-snapshots", "include".to_string())],
                None,
                Duration::from_secs(60),
            )
            .await
        {
            Ok(_) | Err(Failure::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A client for the blob `name` in this client's container (same credentials); `self`
    /// is a container client from [`BlobClient::container`].
    #[must_use]
    pub fn child(&self, name: &str) -> BlobClient {
        let mut c = self.clone();
        let enc = utf8_percent_encode(name, NON_ALPHANUMERIC).to_string();
        c.base = format!("{}/{enc}", self.base.trim_end_matches('/'));
        c.path = format!("{}/{enc}", self.path.trim_end_matches('/'));
        c.display = redact(&c.base);
        c
    }

    /// Get Blob Properties.
    pub async fn head(&self) -> Result<BlobProps, Failure> {
        let resp = self
            .send(Method::HEAD, &[], &[], None, Duration::from_secs(30))
            .await?;
        let h = resp.headers();
        let size = h
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let blob_type = h
            .get("x-ms-blob-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        Ok(BlobProps {
            size,
            blob_type,
            creation_time: text("x-ms-creation-time"),
            sequence_number: text("x-ms-blob-sequence-number").and_then(|v| v.parse().ok()),
            etag: text("etag"),
        })
    }

    /// Put Blob creating an empty page blob of `size` bytes; without `overwrite`, only if
    /// nothing exists there (`If-None-Match: *`).
    pub async fn create_page_blob(&self, size: u64, overwrite: bool) -> Result<(), Failure> {
        let mut h = vec![
            ("x-ms-blob-type", "PageBlob".to_string()),
            ("x-ms-blob-content-length", size.to_string()),
        ];
        if !overwrite {
            h.push(("if-none-match", "*".to_string()));
        }
        self.send(Method::PUT, &[], &h, None, Duration::from_secs(60))
            .await
            .map(drop)
    }

    /// Put Page (update) of `body` at `start`.
    pub async fn put_page(
        &self,
        start: u64,
        body: Bytes,
        integrity: Option<(Integrity, String)>,
        timeout: Duration,
    ) -> Result<(), Failure> {
        let end = start + body.len() as u64 - 1;
        let mut h = vec![
            ("x-ms-page-write", "update".to_string()),
            ("x-ms-range", format!("bytes={start}-{end}")),
        ];
        match integrity {
            Some((Integrity::Crc64, v)) => h.push(("x-ms-content-crc64", v)),
            Some((Integrity::Md5, v)) => h.push(("content-md5", v)),
            None => {}
        }
        self.send(Method::PUT, &[("comp", "page")], &h, Some(body), timeout)
            .await
            .map(drop)
    }

    /// Put Page (clear) of `range`.
    pub async fn clear_pages(&self, range: Range<u64>) -> Result<(), Failure> {
        let h = vec![
            ("x-ms-page-write", "clear".to_string()),
            (
                "x-ms-range",
                format!("bytes={}-{}", range.start, range.end - 1),
            ),
        ];
        self.send(
            Method::PUT,
            &[("comp", "page")],
            &h,
            None,
            Duration::from_secs(60),
        )
        .await
        .map(drop)
    }

    /// Get Page Ranges: every written range, listed in `x-ms-range` segments and following
    /// `NextMarker` pages (docs/azure-page-blob.md §1.1), with the default
    /// [`PageListLimits`].
    pub async fn page_ranges(&self) -> Result<Vec<Range<u64>>, Failure> {
        self.page_ranges_with(&PageListLimits::default()).await
    }

    /// Get Page Ranges with explicit limits (tests force small segments and deadlines).
    ///
    /// A huge, fragmented blob can make one listing of the whole blob run into the service's
    /// processing timeout (500 `OperationTimedOut`), so the blob is listed in segments of
    /// `limits.segment` bytes; a segment that times out is listed again from where its
    /// answers had got to, in halves, down to `limits.min_segment`. Ranges are merged as they
    /// arrive (the service and Azurite return adjacent ranges unmerged), so memory follows the
    /// number of separate extents, not of answers.
    ///
    /// A server decides how much it answers, so every answer is bounded: each body at
    /// [`MAX_PAGE_LIST_BODY`], the merged ranges at [`MAX_PAGE_RANGES`], the requests at
    /// [`MAX_PAGE_LIST_REQUESTS`] plus one per segment, the whole listing at
    /// `limits.deadline`, and a marker must be new (one seen before would start the same
    /// listing again, forever). Past any of these: an `upload.protocol` error.
    pub async fn page_ranges_with(
        &self,
        limits: &PageListLimits,
    ) -> Result<Vec<Range<u64>>, Failure> {
        let started = std::time::Instant::now();
        let size = self.head().await?.size;
        let mut list = RangeAccumulator::default();
        let min_segment = limits.min_segment.max(512) & !511;
        let mut segment = limits.segment.max(min_segment) & !511;
        let mut budget = MAX_PAGE_LIST_REQUESTS as u64 + size / segment + 1;
        let mut pos = 0u64;
        while pos < size {
            let end = size.min(pos.saturating_add(segment));
            let mut marker: Option<String> = None;
            let mut seen = std::collections::HashSet::new();
            // How far this segment's answers have got: where to start again after a timeout.
            let mut reached = pos;
            loop {
                if budget == 0 {
                    return Err(protocol(format!(
                        "the page list did not end after {} requests",
                        MAX_PAGE_LIST_REQUESTS as u64 + size / segment + 1
                    )));
                }
                budget -= 1;
                let overdue = |reached: u64| {
                    protocol(format!(
                        "the page list was not complete after {:.1} s (listed up to byte {reached} of {size}); \
                         the service answers too slowly for a blob this fragmented",
                        limits.deadline.as_secs_f64()
                    ))
                };
                let left = limits.deadline.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(overdue(reached));
                }
                let answer = self
                    .page_list_request(pos..end, marker.as_deref(), left.min(PAGE_LIST_TIMEOUT))
                    .await;
                let (ranges, next) = match answer {
                    Ok(a) => a,
                    Err(Failure::Status {
                        status: 500, code, ..
                    }) if code == "OperationTimedOut" && segment / 2 >= min_segment => {
                        // Too much to list in one go: the rest of this segment in halves.
                        segment /= 2;
                        tracing::info!(
                            segment,
                            from = reached,
                            "page list timed out; listing smaller segments"
                        );
                        break;
                    }
                    // A request cut short by the overall deadline is the deadline's error
                    // (never retried), not a network failure.
                    Err(Failure::Transport { .. }) if started.elapsed() >= limits.deadline => {
                        return Err(overdue(reached));
                    }
                    Err(e) => return Err(e),
                };
                // The marker is checked first: a server repeating itself is named as such.
                if let Some(n) = &next {
                    if n.len() > MAX_MARKER_BYTES {
                        return Err(protocol(format!(
                            "a page list continuation marker of {} bytes (at most {MAX_MARKER_BYTES} expected)",
                            n.len()
                        )));
                    }
                    if !seen.insert(n.clone()) {
                        return Err(protocol(
                            "the page list's continuation marker repeats an earlier one (the listing would never end)"
                                .into(),
                        ));
                    }
                }
                for r in ranges {
                    // Clip to the segment asked for: a range crossing its edge is listed
                    // again (in part) by the neighbouring segment.
                    let r = r.start.max(pos)..r.end.min(end);
                    if r.start < r.end {
                        reached = reached.max(r.end);
                        list.add(r)?;
                    }
                }
                let Some(n) = next else {
                    reached = end;
                    break;
                };
                marker = Some(n);
            }
            // After a completed segment `reached == end`; after a timeout, the listing
            // starts again where the answers had got to (ends are page-aligned).
            pos = reached;
        }
        Ok(list.finish())
    }

    /// One Get Page Ranges request for `range` (page-aligned start, end at a page boundary
    /// or the blob's end) from `marker`: its ranges and its `NextMarker`.
    async fn page_list_request(
        &self,
        range: Range<u64>,
        marker: Option<&str>,
        timeout: Duration,
    ) -> Result<(Vec<Range<u64>>, Option<String>), Failure> {
        let mut q: Vec<(&str, &str)> = vec![("comp", "pagelist")];
        if let Some(m) = marker {
            q.push(("marker", m));
        }
        let h = vec![(
            "x-ms-range",
            format!("bytes={}-{}", range.start, range.end - 1),
        )];
        let resp = self.send(Method::GET, &q, &h, None, timeout).await?;
        let body = self
            .read_capped(resp, MAX_PAGE_LIST_BODY, "a page list")
            .await?;
        let text = String::from_utf8_lossy(&body);
        // The snippet quoted in the error comes from the server: scrub it.
        parse_page_list(&text).map_err(|m| Failure::Status {
            status: 200,
            code: "UnparsablePageList".into(),
            message: self.scrub(&m),
        })
    }

    /// The body of `resp`, refused as soon as it is longer than `cap` bytes (from its
    /// Content-Length, or while streaming when the server sends none): a hostile or broken
    /// server cannot make vhdforge hold more than `cap` bytes of it.
    async fn read_capped(
        &self,
        mut resp: reqwest::Response,
        cap: usize,
        what: &str,
    ) -> Result<Vec<u8>, Failure> {
        let too_long = |sent: &str| {
            protocol(format!(
                "the service {sent} for {what}, more than the {cap} bytes expected; reading stopped there"
            ))
        };
        if let Some(n) = resp.content_length() {
            if n > cap as u64 {
                return Err(too_long(&format!("announced {n} bytes")));
            }
        }
        let mut body = Vec::new();
        while let Some(c) = resp.chunk().await.map_err(|e| self.transport(&e))? {
            if body.len() + c.len() > cap {
                return Err(too_long(&format!("sent over {cap} bytes")));
            }
            body.extend_from_slice(&c);
        }
        Ok(body)
    }

    /// Set Blob Properties: the whole-blob Content-MD5 (content type re-sent: unsent
    /// content headers are cleared).
    pub async fn set_content_md5(&self, md5_b64: &str) -> Result<(), Failure> {
        let h = vec![
            ("x-ms-blob-content-md5", md5_b64.to_string()),
            (
                "x-ms-blob-content-type",
                "application/octet-stream".to_string(),
            ),
        ];
        self.send(
            Method::PUT,
            &[("comp", "properties")],
            &h,
            None,
            Duration::from_secs(60),
        )
        .await
        .map(drop)
    }

    /// Get User Delegation Key (docs/azure-page-blob.md §1.6): a key, valid from `start` to
    /// `expiry` (`YYYY-MM-DDThh:mm:ssZ`, at most 7 days apart), that signs user delegation
    /// SAS tokens for the signed-in identity. Needs `--auth login`; asked of this blob's
    /// account (`POST ?restype=service&comp=userdelegationkey` on the service root).
    pub async fn user_delegation_key(
        &self,
        start: &str,
        expiry: &str,
    ) -> Result<super::sas::UserDelegationKey, Failure> {
        let mut svc = self.container();
        // The container client's path minus the container: the account's service root.
        let root = svc
            .path
            .rsplit_once('/')
            .map_or("/", |(r, _)| if r.is_empty() { "/" } else { r })
            .to_string();
        let origin = svc
            .base
            .strip_suffix(svc.path.as_str())
            .unwrap_or(&svc.base)
            .to_string();
        svc.base = format!("{origin}{root}");
        if !svc.base.ends_with('/') {
            svc.base.push('/');
        }
        svc.path = root;
        if !svc.path.ends_with('/') {
            svc.path.push('/');
        }
        svc.display = redact(&svc.base);
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><KeyInfo><Start>{start}</Start><Expiry>{expiry}</Expiry></KeyInfo>"
        );
        let resp = svc
            .send(
                Method::POST,
                &[("restype", "service"), ("comp", "userdelegationkey")],
                &[("content-type", "application/xml".to_string())],
                Some(Bytes::from(body)),
                Duration::from_secs(60),
            )
            .await?;
        let xml = self
            .read_capped(resp, MAX_ERROR_BODY, "the user delegation key")
            .await?;
        let xml = String::from_utf8_lossy(&xml);
        let field = |t: &str| {
            xml_text(&xml, t)
                .ok_or_else(|| protocol(format!("the user delegation key answer has no <{t}>")))
        };
        Ok(super::sas::UserDelegationKey {
            signed_oid: field("SignedOid")?,
            signed_tid: field("SignedTid")?,
            signed_start: field("SignedStart")?,
            signed_expiry: field("SignedExpiry")?,
            signed_service: field("SignedService")?,
            signed_version: field("SignedVersion")?,
            value: field("Value")?,
        })
    }

    /// Get Blob of `range`.
    pub async fn get_range(&self, range: Range<u64>) -> Result<Bytes, Failure> {
        let h = vec![(
            "x-ms-range",
            format!("bytes={}-{}", range.start, range.end - 1),
        )];
        let resp = self
            .send(Method::GET, &[], &h, None, Duration::from_secs(300))
            .await?;
        // The body is read up to the requested length, never further (a server sending
        // more is refused, not believed).
        let want = usize::try_from(range.end - range.start).unwrap_or(usize::MAX);
        let b = Bytes::from(self.read_capped(resp, want, "a range read").await?);
        if b.len() as u64 != range.end - range.start {
            return Err(Failure::network(format!(
                "short read: {} bytes for a range of {}",
                b.len(),
                range.end - range.start
            )));
        }
        Ok(b)
    }

    /// Put Blob creating an empty page blob of `size` bytes whose sequence number is `seq`
    /// (the upload's mark on this blob); without `overwrite`, only if nothing exists there.
    pub async fn create_page_blob_sequenced(
        &self,
        size: u64,
        overwrite: bool,
        seq: u64,
    ) -> Result<(), Failure> {
        let mut h = vec![
            ("x-ms-blob-type", "PageBlob".to_string()),
            ("x-ms-blob-content-length", size.to_string()),
            ("x-ms-blob-sequence-number", seq.to_string()),
        ];
        if !overwrite {
            h.push(("if-none-match", "*".to_string()));
        }
        self.send(Method::PUT, &[], &h, None, Duration::from_secs(60))
            .await
            .map(drop)
    }

    /// Put Page, update (`body` at `start`) or clear (`clear` of that length, `body` empty),
    /// refused with 412 unless the blob's sequence number is `seq` (when given): a blob
    /// recreated or re-marked by someone else fails the write instead of mixing contents.
    pub async fn put_page_if_sequence(
        &self,
        range: Range<u64>,
        body: Option<Bytes>,
        integrity: Option<(Integrity, String)>,
        seq: Option<u64>,
        timeout: Duration,
    ) -> Result<(), Failure> {
        let write = if body.is_some() { "update" } else { "clear" };
        let mut h = vec![
            ("x-ms-page-write", write.to_string()),
            (
                "x-ms-range",
                format!("bytes={}-{}", range.start, range.end - 1),
            ),
        ];
        match integrity {
            Some((Integrity::Crc64, v)) => h.push(("x-ms-content-crc64", v)),
            Some((Integrity::Md5, v)) => h.push(("content-md5", v)),
            None => {}
        }
        if let Some(n) = seq {
            h.push(("x-ms-if-sequence-number-eq", n.to_string()));
        }
        self.send(Method::PUT, &[("comp", "page")], &h, body, timeout)
            .await
            .map(drop)
    }
}

/// Largest Get Page Ranges answer read (one page of a paged listing). A range takes about
/// 70 bytes of XML, so this holds some 470 000 ranges, far more than the service returns in
/// one answer.
const MAX_PAGE_LIST_BODY: usize = 32 << 20;

/// Most ranges accepted in a whole listing (16 bytes each in memory: 32 MiB). A blob
/// vhdforge writes has at most one range per 4 MiB request of its plan, and a 4 TiB disk
/// has about a million of those.
const MAX_PAGE_RANGES: usize = 2_000_000;

/// Most Get Page Ranges requests for one listing, beyond one per segment.
const MAX_PAGE_LIST_REQUESTS: usize = 10_000;

/// Timeout of one Get Page Ranges request (the service's own is 2 minutes per MiB of
/// answer, docs/azure-page-blob.md §1.2; 32 MiB is the most read).
const PAGE_LIST_TIMEOUT: Duration = Duration::from_secs(300);

/// How [`BlobClient::page_ranges_with`] splits and bounds a listing.
#[derive(Debug, Clone)]
pub struct PageListLimits {
    /// Bytes of the blob per `x-ms-range` segment. 8 GiB: a 1 TiB disk takes 128 requests
    /// (a few seconds), a typical 30–127 GiB disk a handful, and a segment holds at most
    /// 16 Mi pages, far below what times out unless it is extremely fragmented.
    pub segment: u64,
    /// Smallest segment a timed-out one is halved to: 128 MiB, near the ~150 MB of the
    /// service's guidance for the worst fragmentation. A timeout there is an error.
    pub min_segment: u64,
    /// The whole listing must be complete within this (30 minutes): an endless stream of
    /// slow answers is an error, not a hang.
    pub deadline: Duration,
}

impl Default for PageListLimits {
    fn default() -> Self {
        PageListLimits {
            segment: 8 << 30,
            min_segment: 128 << 20,
            deadline: Duration::from_secs(30 * 60),
        }
    }
}

/// Page ranges merged as they arrive. The service lists ranges in ascending order and
/// each segment and continuation goes on from where the previous answer ended, so a range
/// that starts before the end of the previous one means the listing went backwards (a
/// server repeating itself): refused, which also bounds the listing by the blob's size.
#[derive(Default)]
struct RangeAccumulator {
    ranges: Vec<Range<u64>>,
}

impl RangeAccumulator {
    fn add(&mut self, r: Range<u64>) -> Result<(), Failure> {
        if let Some(l) = self.ranges.last_mut() {
            if r.start < l.end {
                return Err(protocol(format!(
                    "the page list went backwards: range {}-{} after one ending at {} (ranges are listed in ascending order)",
                    r.start,
                    r.end - 1,
                    l.end - 1
                )));
            }
            if r.start == l.end {
                // Adjacent (the service and Azurite do not merge them): one range.
                l.end = r.end;
                return Ok(());
            }
        }
        if self.ranges.len() >= MAX_PAGE_RANGES {
            return Err(protocol(format!(
                "the page list holds more than {MAX_PAGE_RANGES} separate ranges, more than any blob vhdforge writes"
            )));
        }
        self.ranges.push(r);
        Ok(())
    }

    fn finish(self) -> Vec<Range<u64>> {
        self.ranges
    }
}

/// Longest continuation marker accepted (the service's are under a few hundred bytes).
const MAX_MARKER_BYTES: usize = 1024;

/// An answer that breaks the protocol's bounds: `upload.protocol`, never retried.
fn protocol(message: String) -> Failure {
    Failure::Status {
        status: 200,
        code: "ProtocolViolation".into(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_check_value() {
        // CRC-64/NVME check value of "123456789" (docs/azure-page-blob.md §0.2).
        assert_eq!(
            crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, b"123456789"),
            0xae8b_1486_0a79_9888
        );
        let want = base64::engine::general_purpose::STANDARD
            .encode(0xae8b_1486_0a79_9888u64.to_le_bytes());
        assert_eq!(crc64_header(b"123456789"), want);
    }

    #[test]
    fn page_ranges_merge_as_they_arrive() {
        let mut acc = RangeAccumulator::default();
        for r in [0..512, 512..4096, 8192..8704, 8704..9216] {
            acc.add(r).unwrap();
        }
        // Going backwards (overlap or a repeat) is refused, never merged silently.
        let e = acc.add(9000..9728).unwrap_err();
        assert!(e.summary().contains("ProtocolViolation"), "{e:?}");
        assert_eq!(acc.finish(), vec![0..4096, 8192..9216]);
        // The number of separate ranges is bounded.
        let mut acc = RangeAccumulator::default();
        for i in 0..MAX_PAGE_RANGES as u64 {
            acc.add(i * 1024..i * 1024 + 512).unwrap();
        }
        let last = MAX_PAGE_RANGES as u64 * 1024;
        // Adjacent to the last one still merges; a new separate one does not fit.
        acc.add(last - 512..last).unwrap();
        let Err(Failure::Status { message, .. }) = acc.add(last + 512..last + 1024) else {
            panic!("a range past the bound was accepted");
        };
        assert!(
            message.contains("more than 2000000 separate ranges"),
            "{message}"
        );
    }

    #[test]
    fn api_versions() {
        for good in ["2021-08-06", "2025-01-05", "2019-02-02-preview"] {
            assert!(is_api_version(good), "{good}");
        }
        // A non-ASCII dash, a newline, garbage: never sent.
        for bad in [
            "2021\u{2011}08-06",
            "2021-08-06\n",
            "latest",
            "",
            "2021-08-06-",
            "2021-8-6",
        ] {
            assert!(!is_api_version(bad), "{bad:?}");
        }
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let env = CredentialEnv {
            account: Some("a".into()),
            key: Some("AAAA".into()),
            ..CredentialEnv::default()
        };
        let e = BlobClient::new(
            "http://acct.blob.core.windows.net/c/b",
            &env,
            "2021-08-06",
            1,
        )
        .unwrap_err();
        assert_eq!(e.code(), "upload.url");
        assert!(BlobClient::new("http://127.0.0.1:1/a/c/b", &env, "2021-08-06", 1).is_ok());
        // No blob in the URL.
        assert_eq!(
            BlobClient::new(
                "https://acct.blob.core.windows.net/c",
                &env,
                "2021-08-06",
                1
            )
            .unwrap_err()
            .code(),
            "upload.url"
        );
        // Errors never show the signature.
        let e = BlobClient::new("ftp://h/c/b?sig=TOPSECRETSIG", &env, "2021-08-06", 1).unwrap_err();
        assert!(!e.to_string().contains("TOPSECRETSIG"));
    }
}
