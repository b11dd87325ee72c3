//! Test support for the upload tests: an Azurite process per test binary, signed helper
//! requests, SAS tokens signed by the library with the development key, sparse raw images, the
//! expected output stream, and a tiny HTTP/1.1 reader used by the proxy and the mock.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use vhdforge_core::storage::auth::{string_to_sign, SharedKey};
use vhdforge_core::storage::sas::{self, SasResource, SasTerms};
use vhdforge_core::storage::CredentialEnv;

/// Azurite's documented development account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's documented development key (public, test-only).
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// x-ms-version used by the helpers and SAS tokens.
pub const VERSION: &str = "2021-08-06";

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An Azurite blob service of our own, killed on drop.
pub struct Azurite {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Azurite {
    /// Start one on a free port (fails, never skips, when Azurite is not installed).
    pub fn start() -> Azurite {
        let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../.tools/azurite/node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "Azurite is not installed at {}: run `scripts/azurite.sh install` (needs node and npm) before `cargo test`",
            bin.display()
        );
        let port = free_port();
        // Through a small watchdog shell: a test binary keeps its Azurite in a static that is
        // never dropped, so the shell stops Azurite once this process is gone (or on TERM).
        const WATCHDOG: &str = r#"
"$1" --blobHost 127.0.0.1 --blobPort "$2" --inMemoryPersistence --disableTelemetry --silent &
c=$!
trap 'kill $c 2>/dev/null; exit 0' TERM INT
while kill -0 "$3" 2>/dev/null && kill -0 $c 2>/dev/null; do sleep 0.2; done
kill $c 2>/dev/null
"#;
        let child = Command::new("sh")
            .args(["-c", WATCHDOG, "azurite-watchdog"])
            .arg(&bin)
            .arg(port.to_string())
            .arg(std::process::id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite-blob");
        let mut az = Azurite { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Azurite did not listen on port {port} within 60 s (Node starts slowly on a loaded machine)"
            );
            if let Ok(Some(status)) = az.child.try_wait() {
                panic!("Azurite exited at start: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        az
    }

    /// Base URL of the account (path style).
    pub fn account_url(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// URL of a blob, no query.
    pub fn blob_url(&self, container: &str, blob: &str) -> String {
        format!("{}/{container}/{blob}", self.account_url())
    }

    /// A connection string for the dev account at this instance.
    pub fn env(&self) -> CredentialEnv {
        CredentialEnv {
            connection_string: Some(format!(
                "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={};",
                self.account_url()
            )),
            ..CredentialEnv::default()
        }
    }

    /// Send a Shared-Key-signed request to `path` (after the account) with `query` pairs.
    pub async fn signed(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        self.signed_with_body(method, path, query, headers, Vec::new())
            .await
    }

    /// [`Self::signed`] with a request body.
    pub async fn signed_with_body(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> reqwest::Response {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let mut all: Vec<(&str, String)> =
            headers.iter().map(|(n, v)| (*n, v.to_string())).collect();
        all.push(("x-ms-date", date));
        all.push(("x-ms-version", VERSION.into()));
        if method == "PUT" || !body.is_empty() {
            all.push(("content-length", body.len().to_string()));
        }
        let full_path = format!("/{ACCOUNT}{path}");
        let pairs: Vec<(&str, &str)> = all.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let sts = string_to_sign(method, &pairs, ACCOUNT, &full_path, query);
        let auth = SharedKey::new(ACCOUNT, KEY).unwrap().authorization(&sts);
        let qs: Vec<String> = query.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let url = format!(
            "http://127.0.0.1:{}{full_path}{}{}",
            self.port,
            if qs.is_empty() { "" } else { "?" },
            qs.join("&")
        );
        let mut req = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .request(method.parse().unwrap(), url)
            .header("authorization", auth)
            .body(body);
        for (n, v) in &all {
            req = req.header(*n, v);
        }
        req.send().await.unwrap()
    }

    /// Create a container.
    pub async fn create_container(&self, name: &str) {
        let r = self
            .signed("PUT", &format!("/{name}"), &[("restype", "container")], &[])
            .await;
        assert!(
            r.status().is_success(),
            "create container {name}: {}",
            r.status()
        );
    }

    /// Download a whole blob.
    pub async fn download(
        &self,
        container: &str,
        blob: &str,
    ) -> (Vec<u8>, reqwest::header::HeaderMap) {
        let r = self
            .signed("GET", &format!("/{container}/{blob}"), &[], &[])
            .await;
        assert!(r.status().is_success(), "download: {}", r.status());
        let h = r.headers().clone();
        (r.bytes().await.unwrap().to_vec(), h)
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        // TERM lets the watchdog stop Azurite itself; a KILL would orphan it.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

const EXPIRY: &str = "2099-01-01T00:00:00Z";

fn terms(perms: &str) -> SasTerms {
    SasTerms {
        permissions: perms.into(),
        start: None,
        expiry: EXPIRY.into(),
        // Azurite here speaks plain http on loopback.
        https_only: false,
    }
}

/// A service SAS for a blob (`blob` Some) or a container, signed by the library.
pub fn service_sas(container: &str, blob: Option<&str>, perms: &str) -> String {
    let resource = match blob {
        Some(b) => SasResource::Blob {
            container: container.into(),
            blob: b.into(),
        },
        None => SasResource::Container {
            container: container.into(),
        },
    };
    sas::service_sas(&dev_key(), &resource, &terms(perms)).unwrap()
}

/// An account SAS for the blob service, object resources, signed by the library.
pub fn account_sas(perms: &str) -> String {
    sas::account_sas(&dev_key(), &terms(perms)).unwrap()
}

fn dev_key() -> SharedKey {
    SharedKey::new(ACCOUNT, KEY).unwrap()
}

/// Deterministic pseudo-random bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8 | 1
        })
        .collect()
}

/// A sparse raw image of `size` bytes with noise at each `(offset, len)`.
pub fn sparse_image(dir: &Path, name: &str, size: u64, regions: &[(u64, usize)]) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(off, len)) in regions.iter().enumerate() {
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(off)).unwrap();
        f.write_all(&noise(i as u64 + off, len)).unwrap();
    }
    path
}

/// The disk area an upload of the raw image at `path` must produce (source + zero padding to a MiB).
/// `src` converted to an Azure-ready fixed VHD at `dir/name` (which an upload sends as it
/// is, its own footer included).
pub fn azure_ready_vhd(src: &Path, dir: &Path, name: &str) -> PathBuf {
    let image = vhdforge_core::open(src, &Default::default()).unwrap();
    let ready = dir.join(name);
    vhdforge_core::convert::convert_to_file(
        image.as_ref(),
        &ready,
        &Default::default(),
        &vhdforge_core::progress::NoProgress,
    )
    .unwrap();
    ready
}

pub fn expected_disk_area(path: &Path) -> Vec<u8> {
    let mut data = std::fs::read(path).unwrap();
    let size = (data.len() as u64).div_ceil(1 << 20) << 20;
    data.resize(size as usize, 0);
    data
}

/// Check `blob` is `disk_area` followed by a valid fixed footer for it.
pub fn assert_stream(blob: &[u8], disk_area: &[u8]) {
    assert_eq!(blob.len(), disk_area.len() + 512, "blob size");
    let (area, footer) = blob.split_at(disk_area.len());
    if let Some(i) = area.iter().zip(disk_area).position(|(a, b)| a != b) {
        panic!("blob differs from the source at byte {i}");
    }
    let f =
        vhdforge_core::format::vhd::footer::HardDiskFooter::from_bytes(footer.try_into().unwrap());
    assert_eq!(&f.cookie, b"conectix");
    assert_eq!(f.current_size.get(), disk_area.len() as u64);
    assert_eq!(f.disk_type.get(), 2);
    assert_eq!(f.checksum.get(), f.compute_checksum());
}

/// One parsed HTTP/1.1 request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Request target (path and query).
    pub target: String,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Raw head bytes as received (request line + headers + blank line).
    pub head: Vec<u8>,
    /// Body.
    pub body: Vec<u8>,
}

impl Request {
    /// First header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    /// Query parameters (undecoded).
    pub fn query(&self) -> HashMap<String, String> {
        let q = self.target.split_once('?').map_or("", |(_, q)| q);
        q.split('&')
            .filter_map(|p| {
                p.split_once('=')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect()
    }
    /// Path without query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// Read one request from `r`; `None` at a clean EOF.
pub async fn read_request<R: tokio::io::AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> Option<Request> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if head.len() > 64 << 10 {
            return None;
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.lines();
    let first = lines.next()?;
    let mut parts = first.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.ok()?;
    Some(Request {
        method,
        target,
        headers,
        head,
        body,
    })
}

/// A complete HTTP/1.1 response.
pub fn response(status: u16, reason: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// When a [`SourceHook`] acts: once the plan is made (`set_total`, before any byte is read)
/// or when the first piece is acknowledged (`advance`, the reader a few pieces ahead).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum When {
    Planned,
    FirstPiece,
}

/// A progress sink that changes the source once, at a chosen point of a running upload: the
/// tests of what an upload does when its source is written, cut or punched under it.
pub struct SourceHook<F: Fn() + Send + Sync> {
    when: When,
    action: F,
    /// Set when the action ran (tests assert it did).
    pub done: std::sync::atomic::AtomicBool,
}

impl<F: Fn() + Send + Sync> SourceHook<F> {
    pub fn new(when: When, action: F) -> std::sync::Arc<Self> {
        std::sync::Arc::new(SourceHook {
            when,
            action,
            done: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn fire(&self, at: When) {
        if at == self.when && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            (self.action)();
        }
    }

    pub fn fired(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl<F: Fn() + Send + Sync> vhdforge_core::upload::Progress for SourceHook<F> {
    fn set_total(&self, _bytes: u64) {
        self.fire(When::Planned);
    }
    fn advance(&self, _bytes: u64) {
        self.fire(When::FirstPiece);
    }
}

/// Cut the file at `path` to `len` bytes (another writer truncating it).
pub fn cut(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Options for an upload to this Azurite with 4 requests in flight and quick retries (the
/// read-accounting and mapped-source tests).
pub fn quick_opts(az: &Azurite) -> vhdforge_core::upload::UploadOptions {
    vhdforge_core::upload::UploadOptions {
        credentials: az.env(),
        concurrency: 4,
        retry: vhdforge_core::upload::RetryPolicy {
            max_attempts: 12,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(300),
        },
        ..vhdforge_core::upload::UploadOptions::default()
    }
}

/// Bytes this process has read through read calls so far (`rchar` of `/proc/self/io`).
pub fn rchar() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io (Linux)");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar line")
}

/// The ranges the journal in `state` (the upload's state directory; it holds one) claims
/// as sent.
pub fn journaled(state: &Path) -> Vec<(u64, u64)> {
    let journal = std::fs::read_dir(state)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("the journal is kept");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&journal).unwrap()).unwrap();
    serde_json::from_value(j["done"].clone()).unwrap()
}
