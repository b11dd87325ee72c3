//! Red team, round 2: `copy` from a hostile source. The source's HEAD and page list decide
//! how many pieces a copy plans, so a server lying about them must be refused, not believed:
//! before, a 1 MiB "page blob" listing one range of 2^50 bytes made `copy` build a list of
//! 2^28 pieces (4 GiB) and die. A small HTTP/1.1 server on 127.0.0.1 (tokio, in this
//! process) plays the source and a compliant destination; the real `vhdforge copy` runs as
//! a child and must stop at once with `upload.protocol`, under 256 MiB, with no signature
//! shown.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::run_measured;

const LIMIT_KIB: i64 = 256 * 1024;

/// Read one request head; `None` when the client closed the connection.
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 || s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Source `/acct/src/...`: HEAD says a page blob of `size`; its page list is one range
/// `0..=end`. Destination `/acct/dst/...`: accepts whatever is written (201).
async fn serve(mut s: TcpStream, size: u64, end: u64) {
    while let Some(head) = read_head(&mut s).await {
        let line = head.lines().next().unwrap_or("").to_string();
        let body_len: usize = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; body_len.min(8 << 20)];
        if s.read_exact(&mut body).await.is_err() {
            return;
        }
        let reply = if line.starts_with("HEAD ") && line.contains("/src/") {
            format!("HTTP/1.1 200 OK\r\nx-ms-blob-type: PageBlob\r\nContent-Length: {size}\r\n\r\n")
        } else if line.contains("comp=pagelist") && line.contains("/src/") {
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList><PageRange><Start>0</Start><End>{end}</End></PageRange></PageList>"
            );
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{xml}",
                xml.len()
            )
        } else if line.starts_with("PUT ") {
            "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n".to_string()
        } else {
            "HTTP/1.1 404 Not Found\r\nx-ms-error-code: BlobNotFound\r\nContent-Length: 0\r\n\r\n"
                .to_string()
        };
        if s.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn copy_from_a_source_claiming(size: u64, end: u64, wants: Option<&str>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, size, end));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let sas = "sv=2021-08-06&sr=b&sp=rcw&sig=SeCrEtSiGnAtUrE1234";
    let src = format!("http://127.0.0.1:{port}/acct/src/d.vhd?{sas}");
    let dst = format!("http://127.0.0.1:{port}/acct/dst/d.vhd?{sas}");
    for via in ["client", "server"] {
        let r = run_measured(
            dir.path(),
            &["copy", "--via", via, &src, &dst],
            Duration::from_secs(60),
            |cmd| {
                for var in [
                    "AZURE_STORAGE_CONNECTION_STRING",
                    "AZURE_STORAGE_ACCOUNT",
                    "AZURE_STORAGE_KEY",
                ] {
                    cmd.env_remove(var);
                }
            },
        );
        eprintln!(
            "--via {via}: exit {}, peak RSS {} MiB: {}",
            r.code,
            r.peak_kib / 1024,
            r.stderr
        );
        assert_eq!(r.code, 2, "{}", r.stderr);
        if let Some(w) = wants {
            assert!(r.stderr.contains(w), "{}", r.stderr);
        }
        assert!(!r.stderr.contains("SeCrEtSiGnAtUrE"), "{}", r.stderr);
        assert!(
            r.peak_kib < LIMIT_KIB,
            "peak RSS {} MiB, over the 256 MiB bound",
            r.peak_kib / 1024
        );
    }
    rt.shutdown_timeout(Duration::from_secs(1));
}

#[test]
fn a_page_range_past_the_blobs_end_is_refused() {
    // The page list is read in segments of the blob's own length and every answer is cut to
    // the segment asked for, so the claim never sizes the plan: the copy goes on with the
    // 1 MiB the blob has and fails on this server's missing data, in bounded memory.
    copy_from_a_source_claiming(1 << 20, (1 << 50) - 1, None);
}

#[test]
fn a_page_blob_over_8_tib_is_refused() {
    copy_from_a_source_claiming(1 << 62, (1 << 62) - 1, Some("page blob limit"));
}
