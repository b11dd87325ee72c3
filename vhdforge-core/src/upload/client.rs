//! The few Blob service operations vhdforge needs (azure-page-blob.md §1.1), signed with
//! Shared Key or carrying a SAS, and the classification of their failures (§1.4).
//!
//! Nothing here retries: [`Failure::class`] tells the engine what to do. Every message that
//! can leave this module is scrubbed of SAS signatures and keys.

use super::auth::{self, Credential, CredentialEnv};
use super::redact::{redact, scrub};
use crate::error::{Error, ErrorKind, Result};
use base64::Engine as _;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::{Method, StatusCode};
use std::ops::Range;
use std::time::{Duration, SystemTime};

/// Largest error body read from the service (they are a few hundred bytes).
const MAX_ERROR_BODY: usize = 16 << 10;

/// What to do about a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Transient: back off and retry.
    Retry,
    /// Throttled (503/429): back off, retry, and send less at once.
    Throttle,
    /// The body was corrupted in transit: re-read it from disk and retry.
    Checksum,
    /// Retrying cannot help.
    Fatal,
}

/// A failed request.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The service answered with an error status.
    Status {
        /// HTTP status.
        status: u16,
        /// `x-ms-error-code` or the XML `<Code>`.
        code: String,
        /// The XML `<Message>` (first line), scrubbed.
        message: String,
    },
    /// No usable answer: connection refused/reset, timeout, TLS ...
    Transport {
        /// What happened, scrubbed.
        message: String,
    },
}

impl Failure {
    /// How to react (azure-page-blob.md §1.4).
    pub fn class(&self) -> Class {
        match self {
            Failure::Transport { .. } => Class::Retry,
            Failure::Status { status, code, .. } => match *status {
                503 | 429 => Class::Throttle,
                408 | 500 | 502 | 504 => Class::Retry,
                400 if code == "Md5Mismatch" || code == "Crc64Mismatch" => Class::Checksum,
                _ => Class::Fatal,
            },
        }
    }

    /// A user-facing error: what happened during `op` on `dest` (already redacted), and what to fix.
    pub fn into_error(self, op: &str, dest: &str) -> Error {
        match self {
            Failure::Transport { message } => Error::new(
                ErrorKind::Remote,
                "upload.transport",
                format!("{op} {dest}: no answer from the service ({message}); check the network, the host name and any proxy"),
            ),
            Failure::Status { status, code, message } => {
                let what = if message.is_empty() { code.clone() } else { format!("{code} ({})", message.trim_end_matches('.')) };
                let (ecode, hint) = match (status, code.as_str()) {
                    (403, "AuthorizationPermissionMismatch") => (
                        "upload.permission",
                        "the SAS lacks write (w) permission for this blob: generate one with write permission \
                         (e.g. `az storage blob generate-sas --permissions cw`), or for a managed disk `az disk grant-access --access-level Write`"
                            .to_string(),
                    ),
                    (403, _) => (
                        "upload.auth",
                        "the service rejected the credentials: a SAS may be expired, issued for another blob or copied incompletely \
                         (managed disk: run `az disk grant-access` again); an account key may be wrong (check AZURE_STORAGE_KEY or the connection string); \
                         also check this machine's clock"
                            .to_string(),
                    ),
                    (404, _) => ("upload.not_found", "the container or blob does not exist: create the container first, and check the URL".to_string()),
                    (409, "BlobAlreadyExists") => (
                        "upload.exists",
                        "the destination blob already exists: pass --overwrite to replace it, or --resume to continue an interrupted upload".to_string(),
                    ),
                    (409, "InvalidBlobType") => ("upload.conflict", "the destination exists but is not a page blob: delete it or choose another name".to_string()),
                    (409, _) => ("upload.conflict", "the destination is busy or in a conflicting state (lease, snapshot, disk state)".to_string()),
                    (412, _) => ("upload.precondition", "a precondition failed (the blob changed meanwhile, or a lease/sequence condition)".to_string()),
                    (413 | 416, _) => (
                        "upload.range",
                        "the service refused the page range: the destination is smaller than the image (for a managed disk, the disk was created with the wrong --upload-size-bytes)"
                            .to_string(),
                    ),
                    (300..=399, _) => (
                        "upload.redirect",
                        "the service answered with a redirect, which vhdforge never follows (it could carry the SAS or signed requests elsewhere, or to plain http): \
                         use the blob's final URL (check the account name and endpoint)"
                            .to_string(),
                    ),
                    (200, _) => ("upload.protocol", "the service's answer could not be understood (is DEST a Blob service endpoint?)".to_string()),
                    (400, "InvalidHeaderValue") => ("upload.http", "the service refused a header: try another --api-version (the default is 2021-08-06)".to_string()),
                    _ => ("upload.http", "the service refused the request".to_string()),
                };
                Error::new(ErrorKind::Remote, ecode, format!("{op} {dest}: HTTP {status} {what}; {hint}"))
            }
        }
    }
}

/// Run a control operation (HEAD, create, page list, clear, properties, read) with the
/// retry policy: transient failures and throttling back off and retry, fatal ones return.
/// `on_retry` hears about each retry.
pub async fn with_retries<T, F, Fut>(
    policy: &super::RetryPolicy,
    on_retry: &(dyn Fn(&Failure) + Sync),
    mut op: F,
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(f) if f.class() == Class::Fatal || attempt >= policy.max_attempts => return Err(f),
            Err(f) => {
                on_retry(&f);
                tokio::time::sleep(backoff(policy, attempt)).await;
            }
        }
    }
}

/// Delay before retry number `attempt` (1-based): exponential, capped, with "equal
/// jitter" (half fixed, half random) so concurrent retries spread out.
pub fn backoff(policy: &super::RetryPolicy, attempt: u32) -> Duration {
    use rand::Rng;
    let exp = policy
        .base_delay
        .saturating_mul(1u32 << attempt.clamp(1, 16).saturating_sub(1))
        .min(policy.max_delay);
    let half = exp / 2;
    half + half.mul_f64(rand::thread_rng().gen::<f64>())
}

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

/// True for hosts where plain HTTP is acceptable (the traffic never leaves the machine).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// True for managed-disk upload endpoints (`md-*` hosts, `*.blob.storage.azure.net`).
pub fn is_managed_disk_host(host: &str) -> bool {
    let h = host.to_ascii_lowercase();
    h.starts_with("md-") || h.ends_with(".blob.storage.azure.net")
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
        let bad = |msg: String| Error::new(ErrorKind::InvalidInput, "upload.url", msg);
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(format!("{display} is not a blob URL ({e}); expected https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB[?SAS]")))?;
        let host = parsed.host_str().unwrap_or("").to_string();
        match parsed.scheme() {
            "https" => {}
            "http" if is_loopback_host(&host) => {}
            "http" => return Err(bad(format!("{display}: plain http is only allowed to loopback hosts; use https (the data and credentials would travel unencrypted)"))),
            s => return Err(bad(format!("{display}: unsupported scheme {s:?}; use https"))),
        }
        let path = parsed.path().to_string();
        if path
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
        let cred = auth::resolve(parsed.query(), env)?;
        let mut secrets = Vec::new();
        match &cred {
            Credential::Sas(q) => {
                for p in q.split('&') {
                    if let Some((n, v)) = p.split_once('=') {
                        if n.eq_ignore_ascii_case("sig") {
                            secrets.push(v.to_string());
                            if let Ok(d) = percent_encoding::percent_decode_str(v).decode_utf8() {
                                secrets.push(d.into_owned());
                            }
                        }
                    }
                }
            }
            Credential::SharedKey(k) => secrets.push(k.key_text().to_string()),
        }
        let mut base = parsed.clone();
        base.set_query(None);
        base.set_fragment(None);
        let mut builder = reqwest::Client::builder();
        if is_loopback_host(&host) {
            // A proxy from the environment must not intercept an emulator or a local mock.
            builder = builder.no_proxy();
        }
        let http = builder
            .connect_timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(connections.max(1))
            // Azurite closes idle connections after 5 s; do not keep them longer.
            .pool_idle_timeout(Duration::from_secs(4))
            .http1_only()
            // Never follow a redirect: it could send the SAS or a signed request to another
            // host, or downgrade https to http. A 3xx is a fatal error instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    "upload.transport",
                    format!("cannot set up the HTTP client: {}", e.without_url()),
                )
            })?;
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
        let mut all: Vec<(&str, String)> = headers.to_vec();
        all.push(("x-ms-date", httpdate::fmt_http_date(SystemTime::now())));
        all.push(("x-ms-version", self.api_version.clone()));
        if method == Method::PUT {
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
        }
        let url = if qs.is_empty() {
            self.base.clone()
        } else {
            format!("{}?{}", self.base, qs.join("&"))
        };
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
        let resp = req.send().await.map_err(|e| self.transport(&e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.status_failure(resp).await)
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
                    body.extend_from_slice(&c[..c.len().min(MAX_ERROR_BODY - body.len())])
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
        let message = xml_text(&text, "Message")
            .map(|m| m.lines().next().unwrap_or("").to_string())
            .unwrap_or_default();
        Failure::Status {
            status,
            code: self.scrub(&code),
            message: self.scrub(&message),
        }
    }

    /// A client for the container holding this blob (same credentials). Path-style URLs
    /// (an IP address or localhost, as Azurite uses) carry the account as the first path
    /// segment; the container is the segment after it.
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

    /// Get Page Ranges: every written range, following `NextMarker` pages.
    pub async fn page_ranges(&self) -> Result<Vec<Range<u64>>, Failure> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut q: Vec<(&str, &str)> = vec![("comp", "pagelist")];
            if let Some(m) = &marker {
                q.push(("marker", m.as_str()));
            }
            let resp = self
                .send(Method::GET, &q, &[], None, Duration::from_secs(300))
                .await?;
            let text = resp.text().await.map_err(|e| self.transport(&e))?;
            let (ranges, next) = parse_page_list(&text).map_err(|m| Failure::Status {
                status: 200,
                code: "UnparsablePageList".into(),
                message: m,
            })?;
            out.extend(ranges);
            match next {
                Some(n) if !n.is_empty() => marker = Some(n),
                _ => break,
            }
        }
        out.sort_by_key(|r| r.start);
        Ok(out)
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

    /// Get Blob of `range`.
    pub async fn get_range(&self, range: Range<u64>) -> Result<Bytes, Failure> {
        let h = vec![(
            "x-ms-range",
            format!("bytes={}-{}", range.start, range.end - 1),
        )];
        let resp = self
            .send(Method::GET, &[], &h, None, Duration::from_secs(300))
            .await?;
        let b = resp.bytes().await.map_err(|e| self.transport(&e))?;
        if b.len() as u64 != range.end - range.start {
            return Err(Failure::Transport {
                message: format!(
                    "short read: {} bytes for a range of {}",
                    b.len(),
                    range.end - range.start
                ),
            });
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

/// The text of the first `<tag>…</tag>` in `xml`.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let s = xml.find(&open)? + open.len();
    let e = xml[s..].find(&close)? + s;
    Some(xml[s..e].trim().to_string())
}

/// Parse a `PageList` document: `<PageRange><Start>s</Start><End>e</End></PageRange>`
/// (inclusive ends) and the optional `NextMarker`. `ClearRange` elements (diffs) are skipped.
pub fn parse_page_list(
    xml: &str,
) -> std::result::Result<(Vec<Range<u64>>, Option<String>), String> {
    if !xml.contains("<PageList") {
        return Err(format!(
            "expected a <PageList> document, got {:?}",
            xml.chars().take(80).collect::<String>()
        ));
    }
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<PageRange>") {
        let after = &rest[i + "<PageRange>".len()..];
        let end = after
            .find("</PageRange>")
            .ok_or("unterminated <PageRange>")?;
        let item = &after[..end];
        let num = |t: &str| -> std::result::Result<u64, String> {
            xml_text(item, t)
                .ok_or_else(|| format!("<PageRange> without <{t}>"))?
                .parse::<u64>()
                .map_err(|e| format!("bad <{t}>: {e}"))
        };
        let (s, e) = (num("Start")?, num("End")?);
        let e1 = e.checked_add(1).ok_or("End overflows")?;
        if e1 <= s {
            return Err(format!("page range {s}-{e} ends before it starts"));
        }
        out.push(s..e1);
        rest = &after[end..];
    }
    let next = xml_text(xml, "NextMarker").filter(|m| !m.is_empty());
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_check_value() {
        // CRC-64/NVME check value of "123456789" (azure-page-blob.md §0.2).
        assert_eq!(
            crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, b"123456789"),
            0xae8b_1486_0a79_9888
        );
        let want = base64::engine::general_purpose::STANDARD
            .encode(0xae8b_1486_0a79_9888u64.to_le_bytes());
        assert_eq!(crc64_header(b"123456789"), want);
    }

    #[test]
    fn failure_classes() {
        let st = |status: u16, code: &str| Failure::Status {
            status,
            code: code.into(),
            message: String::new(),
        };
        let cases = [
            // Throttling cuts concurrency.
            (st(503, "ServerBusy"), Class::Throttle),
            (st(429, ""), Class::Throttle),
            // Transient server and transport failures retry.
            (st(500, "OperationTimedOut"), Class::Retry),
            (st(502, ""), Class::Retry),
            (st(504, ""), Class::Retry),
            (st(408, ""), Class::Retry),
            (
                Failure::Transport {
                    message: "reset".into(),
                },
                Class::Retry,
            ),
            // Corrupted bodies are re-read.
            (st(400, "Crc64Mismatch"), Class::Checksum),
            (st(400, "Md5Mismatch"), Class::Checksum),
            // Everything a retry cannot fix is fatal.
            (st(400, "InvalidHeaderValue"), Class::Fatal),
            (st(403, "AuthorizationFailure"), Class::Fatal),
            (st(404, "BlobNotFound"), Class::Fatal),
            (st(409, "BlobAlreadyExists"), Class::Fatal),
            (st(412, ""), Class::Fatal),
            (st(413, ""), Class::Fatal),
            (st(416, ""), Class::Fatal),
        ];
        for (f, want) in cases {
            assert_eq!(f.class(), want, "{f:?}");
        }
    }

    #[test]
    fn fatal_messages_say_what_to_fix() {
        let st = |status: u16, code: &str| Failure::Status {
            status,
            code: code.into(),
            message: String::new(),
        };
        let cases = [
            (
                st(403, "AuthorizationPermissionMismatch"),
                "upload.permission",
                "lacks write (w) permission",
            ),
            (
                st(403, "AuthorizationFailure"),
                "upload.auth",
                "grant-access",
            ),
            (st(409, "BlobAlreadyExists"), "upload.exists", "--overwrite"),
            (
                st(416, "InvalidPageRange"),
                "upload.range",
                "--upload-size-bytes",
            ),
        ];
        for (f, code, text) in cases {
            let e = f.into_error("upload to", "https://x/c/b?sig=REDACTED");
            assert_eq!(e.code(), code);
            assert!(e.message().contains(text), "{}", e.message());
        }
    }

    #[test]
    fn page_list_parsing() {
        let xml = "<?xml version=\"1.0\"?><PageList><PageRange><Start>0</Start><End>511</End></PageRange>\
                   <ClearRange><Start>512</Start><End>1023</End></ClearRange>\
                   <PageRange><Start>1048576</Start><End>2097151</End></PageRange><NextMarker>abc</NextMarker></PageList>";
        let (r, next) = parse_page_list(xml).unwrap();
        assert_eq!(r, vec![0..512, 1_048_576..2_097_152]);
        assert_eq!(next.as_deref(), Some("abc"));
        // Empty list, empty marker.
        assert_eq!(
            parse_page_list("<PageList><NextMarker/></PageList>").unwrap(),
            (vec![], None)
        );
        // Hostile input: errors, no panic.
        for bad in ["", "<PageList><PageRange><Start>5</Start></PageRange></PageList>", "<PageList><PageRange><Start>9</Start><End>3</End></PageRange></PageList>",
                    "<PageList><PageRange><Start>0</Start><End>18446744073709551615</End></PageRange></PageList>", "<PageList><PageRange>"] {
            assert!(parse_page_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_rules() {
        assert!(
            is_loopback_host("127.0.0.1")
                && is_loopback_host("localhost")
                && is_loopback_host("[::1]")
        );
        assert!(!is_loopback_host("example.com") && !is_loopback_host("10.0.0.1"));
        assert!(is_managed_disk_host("md-impexp-abc.blob.core.windows.net"));
        assert!(is_managed_disk_host("md-x.z1.blob.storage.azure.net"));
        assert!(!is_managed_disk_host("acct.blob.core.windows.net"));
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let env = CredentialEnv {
            account: Some("a".into()),
            key: Some("AAAA".into()),
            connection_string: None,
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
