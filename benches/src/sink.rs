//! `pagesink`: a fast loopback HTTP/1.1 server that accepts page-blob requests and
//! discards the data, so the uploader's own throughput can be measured without Azurite's
//! ~60 MiB/s ceiling (docs/azure-page-blob.md §5).
//!
//! Answers Put Blob and Put Page with 201 and the headers the service sends, HEAD with a
//! page blob of `--size` bytes, Get Page Ranges with an empty list, anything else with
//! 200. No authentication is checked. Prints `listening on 127.0.0.1:PORT`, and on Ctrl-C
//! the request and byte counts.
//!
//! With `--tls-cert` and `--tls-key` (PEM files) it speaks HTTPS instead (rustls, the same
//! TLS library vhdforge uses), so a client's cost over TLS, which is how every upload to
//! Azure travels, can be measured too.
//!
//! Usage: `pagesink [--port N] [--size BYTES] [--tls-cert PEM --tls-key PEM]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest request head accepted (a Put Page head is ~500 bytes).
const MAX_HEAD: usize = 64 << 10;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    body_bytes: AtomicU64,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    let port: u16 = arg("--port").map(|p| p.parse()).transpose()?.unwrap_or(0);
    let size: u64 = arg("--size")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1 << 40);
    let tls = match (arg("--tls-cert"), arg("--tls-key")) {
        (Some(cert), Some(key)) => Some(tls_acceptor(&cert, &key)?),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(port, size, tls))
}

/// A TLS acceptor for the certificate chain in `cert` and the private key in `key`.
fn tls_acceptor(cert: &str, key: &str) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| anyhow::anyhow!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve(port: u16, size: u64, tls: Option<tokio_rustls::TlsAcceptor>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    let stats = Arc::new(Stats::default());
    let accept = {
        let stats = stats.clone();
        async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let stats = stats.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    // A broken connection (or handshake) only ends that connection.
                    let _ = match tls {
                        Some(tls) => match tls.accept(sock).await {
                            Ok(sock) => connection(sock, size, &stats).await,
                            Err(e) => Err(e),
                        },
                        None => connection(sock, size, &stats).await,
                    };
                });
            }
        }
    };
    tokio::select! {
        () = accept => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!(
        "requests {} body_bytes {}",
        stats.requests.load(Ordering::Relaxed),
        stats.body_bytes.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn connection<S: AsyncRead + AsyncWrite>(
    sock: S,
    size: u64,
    stats: &Stats,
) -> std::io::Result<()> {
    let (rd, mut wr) = tokio::io::split(sock);
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let mut line = Vec::with_capacity(256);
    loop {
        // Request line and headers.
        let mut method = String::new();
        let mut target = String::new();
        let mut content_length = 0u64;
        let mut crc = None;
        let mut head_len = 0usize;
        let mut first = true;
        loop {
            line.clear();
            let n = rd.read_until(b'\n', &mut line).await?;
            if n == 0 {
                return Ok(());
            }
            head_len += n;
            if head_len > MAX_HEAD {
                return Ok(());
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            if first {
                let mut parts = text.split_whitespace();
                method = parts.next().unwrap_or("").to_string();
                target = parts.next().unwrap_or("").to_string();
                first = false;
                continue;
            }
            if text.is_empty() {
                break;
            }
            if let Some((name, value)) = text.split_once(':') {
                let name = name.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("x-ms-content-crc64") {
                    crc = Some(value.trim().to_string());
                }
            }
        }
        // Discard the body straight out of the read buffer.
        let copied =
            tokio::io::copy_buf(&mut (&mut rd).take(content_length), &mut tokio::io::sink())
                .await?;
        if copied != content_length {
            return Ok(());
        }
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats
            .body_bytes
            .fetch_add(content_length, Ordering::Relaxed);
        let resp = respond(&method, &target, size, crc.as_deref());
        wr.write_all(resp.as_bytes()).await?;
        // Over TLS the answer may still sit in the session's buffer.
        wr.flush().await?;
    }
}

fn respond(method: &str, target: &str, size: u64, crc: Option<&str>) -> String {
    const COMMON: &str = "x-ms-version: 2021-08-06\r\nx-ms-request-id: 00000000-0000-0000-0000-000000000000\r\nETag: \"0x1\"\r\nLast-Modified: Thu, 01 Jan 2026 00:00:00 GMT\r\n";
    match method {
        "PUT" => {
            let crc = crc
                .map(|c| format!("x-ms-content-crc64: {c}\r\n"))
                .unwrap_or_default();
            format!("HTTP/1.1 201 Created\r\n{COMMON}x-ms-blob-sequence-number: 0\r\nx-ms-request-server-encrypted: true\r\n{crc}content-length: 0\r\n\r\n")
        }
        "HEAD" => format!(
            "HTTP/1.1 200 OK\r\n{COMMON}x-ms-blob-type: PageBlob\r\ncontent-length: {size}\r\n\r\n"
        ),
        "GET" if target.contains("comp=pagelist") => {
            let body = "<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList></PageList>";
            format!("HTTP/1.1 200 OK\r\n{COMMON}x-ms-blob-content-length: {size}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        }
        _ => format!("HTTP/1.1 200 OK\r\n{COMMON}content-length: 0\r\n\r\n"),
    }
}
