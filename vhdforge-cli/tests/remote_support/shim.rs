//! A loopback shim in front of Azurite that implements the one operation Azurite lacks,
//! Put Page From URL (docs/azure-page-blob.md §1.1), and passes every other request through
//! unchanged. It enforces the service's request rules — a range ≤ 4 MiB, 512-byte aligned,
//! `x-ms-source-range` as long as `x-ms-range`, an empty body, a source URL carrying its own
//! authorization (a SAS) — reads the source range from Azurite through that SAS, and writes
//! it to Azurite with an ordinary Put Page carrying the destination request's own SAS.
//! Destinations must therefore use a SAS (a Shared Key signature covers the headers the shim
//! would have to change). One request per connection (`Connection: close`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// What the shim saw.
#[derive(Default, Debug)]
pub struct Seen {
    /// Put Page From URL requests served.
    pub from_url: u64,
    /// Rule violations (each also answered with an error status).
    pub violations: Vec<String>,
    /// Faults injected ([`Shim::start_faulty`]): 503s and dropped connections.
    pub faults: u64,
}

/// The running shim (its thread ends with the test process).
pub struct Shim {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// What it saw.
    pub seen: Arc<Mutex<Seen>>,
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, n: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

/// Send raw `head` + `body` to Azurite and return its whole answer (it closes after it).
fn to_azurite(port: u16, head: &str, body: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn forward(port: u16, req: &Request) -> Vec<u8> {
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (k, v) in &req.headers {
        if k.eq_ignore_ascii_case("connection") || k.eq_ignore_ascii_case("host") {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Host: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    ));
    to_azurite(port, &head, &req.body)
}

fn error(status: u16, code: &str) -> Vec<u8> {
    let body = format!("<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{code}</Message></Error>");
    format!(
        "HTTP/1.1 {status} {code}\r\nContent-Type: application/xml\r\nx-ms-error-code: {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn range(v: Option<&str>) -> Option<(u64, u64)> {
    let (a, b) = v?.strip_prefix("bytes=")?.split_once('-')?;
    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    (b >= a).then_some((a, b + 1))
}

fn put_page_from_url(port: u16, req: &Request, seen: &Mutex<Seen>) -> Vec<u8> {
    let bad = |why: String, status: u16, code: &str| {
        seen.lock().unwrap().violations.push(why);
        error(status, code)
    };
    let Some(dest) = range(req.header("x-ms-range")) else {
        return bad("no x-ms-range".into(), 400, "MissingRequiredHeader");
    };
    let Some(src) = range(req.header("x-ms-source-range")) else {
        return bad("no x-ms-source-range".into(), 400, "MissingRequiredHeader");
    };
    let len = dest.1 - dest.0;
    if len > 4 << 20 {
        return bad(
            format!("range of {len} bytes > 4 MiB"),
            400,
            "InvalidHeaderValue",
        );
    }
    if dest.0 % 512 != 0 || len % 512 != 0 || src.0 % 512 != 0 {
        return bad(
            format!("unaligned {dest:?} / {src:?}"),
            416,
            "InvalidPageRange",
        );
    }
    if src.1 - src.0 != len {
        return bad(
            format!("source range {src:?} and range {dest:?} differ in length"),
            400,
            "InvalidHeaderValue",
        );
    }
    if !req.body.is_empty() {
        return bad(
            "a body on Put Page From URL".into(),
            400,
            "InvalidHeaderValue",
        );
    }
    let source = req.header("x-ms-copy-source").unwrap_or("").to_string();
    if !source.to_ascii_lowercase().contains("sig=") {
        return bad(
            "a source URL without its own authorization".into(),
            403,
            "CannotVerifyCopySource",
        );
    }
    // Read the source through its SAS, as the service would.
    let o = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "60", "-f", "-H"])
        .arg(format!("x-ms-range: bytes={}-{}", src.0, src.1 - 1))
        .args(["-H", "x-ms-version: 2021-08-06"])
        .arg(&source)
        .output()
        .expect("curl");
    if !o.status.success() || o.stdout.len() as u64 != len {
        return bad(
            format!("source read failed ({} bytes)", o.stdout.len()),
            403,
            "CannotVerifyCopySource",
        );
    }
    seen.lock().unwrap().from_url += 1;
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nx-ms-version: 2021-08-06\r\nx-ms-page-write: update\r\n\
         x-ms-range: bytes={}-{}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        req.target,
        dest.0,
        dest.1 - 1
    );
    to_azurite(port, &head, &o.stdout)
}

impl Shim {
    /// Start in front of Azurite's `azurite_port`.
    pub fn start(azurite_port: u16) -> Shim {
        Shim::run(azurite_port, false)
    }

    /// [`Shim::start`], and also a faulty service: every third write (Put Page, Put Page
    /// From URL) is answered 503 ServerBusy, and every fifth read (Get Blob) loses its
    /// connection without an answer.
    pub fn start_faulty(azurite_port: u16) -> Shim {
        Shim::run(azurite_port, true)
    }

    fn run(azurite_port: u16, faulty: bool) -> Shim {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s2 = seen.clone();
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let seen = s2.clone();
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let Some(req) = read_request(&mut r) else {
                        return;
                    };
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let write = req.method == "PUT" && req.target.contains("comp=page");
                    let read = req.method == "GET" && !req.target.contains("comp=");
                    if faulty && write && n % 3 == 1 {
                        seen.lock().unwrap().faults += 1;
                        let mut conn = conn;
                        let _ = conn.write_all(&error(503, "ServerBusy"));
                        return;
                    }
                    if faulty && read && n % 5 == 2 {
                        // The connection goes away without an answer.
                        seen.lock().unwrap().faults += 1;
                        return;
                    }
                    let is_from_url = req.method == "PUT"
                        && req.header("x-ms-copy-source").is_some()
                        && req.target.contains("comp=page");
                    let answer = if is_from_url {
                        put_page_from_url(azurite_port, &req, &seen)
                    } else {
                        forward(azurite_port, &req)
                    };
                    let mut conn = conn;
                    let _ = conn.write_all(&answer);
                });
            }
        });
        Shim { port, seen }
    }
}
