//! A hostile Blob endpoint cannot make vhdforge's memory grow without limit or keep it
//! busy forever: an endless page list, a continuation marker that loops, a Get Blob body
//! longer than the range asked for. Each is served by a small HTTP/1.1 server on
//! 127.0.0.1 (tokio, in this process); the real `vhdforge verify` runs as a child against
//! it, must stop quickly with a clear `upload.protocol` error (exit 2), and its peak
//! resident set (`ru_maxrss` from `wait4`) must stay under 256 MiB.

use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{run_measured, Run};

const MIB: u64 = 1 << 20;
/// The bound the security review asks for.
const LIMIT_KIB: i64 = 256 * 1024;
/// The source: 1 MiB of raw data, uploaded as 1 MiB + a 512-byte footer.
const SOURCE_BYTES: u64 = MIB;

/// How the server misbehaves.
#[derive(Clone, Copy)]
enum Hostility {
    /// Get Page Ranges: a chunked body that never ends.
    EndlessPageList,
    /// Get Page Ranges: every answer continues with the same `NextMarker`.
    RepeatedMarker,
    /// Get Page Ranges: every answer holds 300 000 ranges and a new marker.
    EndlessFreshMarkers,
    /// Get Blob: a chunked body that never ends, whatever range was asked for.
    EndlessGetBlob,
}

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

/// Send `chunk` as HTTP chunks until the client goes away (or a 4 GiB bound is reached,
/// so a broken client cannot keep the test running).
async fn endless(s: &mut TcpStream, first: &[u8], chunk: &[u8]) {
    let frame = |data: &[u8]| {
        let mut f = format!("{:x}\r\n", data.len()).into_bytes();
        f.extend_from_slice(data);
        f.extend_from_slice(b"\r\n");
        f
    };
    if s.write_all(&frame(first)).await.is_err() {
        return;
    }
    let framed = frame(chunk);
    let mut sent = 0u64;
    while sent < 4 << 30 {
        if s.write_all(&framed).await.is_err() {
            return;
        }
        sent += framed.len() as u64;
    }
}

fn ranges_xml(count: usize, marker: Option<&str>) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList>");
    for i in 0..count as u64 {
        x.push_str(&format!(
            "<PageRange><Start>{}</Start><End>{}</End></PageRange>",
            i * 1024,
            i * 1024 + 511
        ));
    }
    if let Some(m) = marker {
        x.push_str(&format!("<NextMarker>{m}</NextMarker>"));
    }
    x.push_str("</PageList>");
    x
}

async fn serve(
    mut s: TcpStream,
    how: Hostility,
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let Some(head) = read_head(&mut s).await else {
        return;
    };
    let request_line = head.lines().next().unwrap_or("").to_string();
    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let plain = |status: &str, headers: &str, body: &[u8]| {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    if request_line.starts_with("HEAD ") {
        let r = format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nx-ms-blob-type: PageBlob\r\n\
             x-ms-creation-time: Mon, 30 Nov 2026 08:00:00 GMT\r\nContent-Length: {}\r\n\r\n",
            SOURCE_BYTES + 512
        );
        let _ = s.write_all(r.as_bytes()).await;
        return;
    }
    let chunked = "HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
    if request_line.contains("comp=pagelist") {
        match how {
            Hostility::EndlessPageList => {
                if s.write_all(chunked.as_bytes()).await.is_ok() {
                    let unit = ranges_xml(1, None);
                    let one =
                        &unit[unit.find("<PageRange>").unwrap()..unit.find("</PageList>").unwrap()];
                    let first = "<?xml version=\"1.0\"?><PageList>";
                    endless(&mut s, first.as_bytes(), one.repeat(1000).as_bytes()).await;
                }
            }
            Hostility::RepeatedMarker => {
                let _ = s
                    .write_all(&plain("200 OK", "", ranges_xml(1, Some("m1")).as_bytes()))
                    .await;
            }
            Hostility::EndlessFreshMarkers => {
                let body = ranges_xml(300_000, Some(&format!("m{n}")));
                let _ = s.write_all(&plain("200 OK", "", body.as_bytes())).await;
            }
            Hostility::EndlessGetBlob => {
                let _ = s
                    .write_all(&plain("200 OK", "", ranges_xml(0, None).as_bytes()))
                    .await;
            }
        }
        return;
    }
    // Get Blob of a range (the footer).
    match how {
        Hostility::EndlessGetBlob => {
            if s.write_all(chunked.replace("200 OK", "206 Partial Content").as_bytes())
                .await
                .is_ok()
            {
                endless(&mut s, &[0u8; 512], &[0u8; 64 * 1024]).await;
            }
        }
        _ => {
            let _ = s
                .write_all(&plain("206 Partial Content", "", &[0u8; 512]))
                .await;
        }
    }
}

/// Start the server; returns its port. It lives as long as the runtime.
fn start(rt: &tokio::runtime::Runtime, how: Hostility) -> u16 {
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    rt.spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, how, counter.clone()));
        }
    });
    port
}

/// Run `vhdforge args` without any credential from this process's environment.
fn run(dir: &Path, args: &[&str], limit: Duration) -> Run {
    run_measured(dir, args, limit, |cmd| {
        for var in [
            "AZURE_STORAGE_CONNECTION_STRING",
            "AZURE_STORAGE_ACCOUNT",
            "AZURE_STORAGE_KEY",
            "VHDFORGE_DEST_SAS",
        ] {
            cmd.env_remove(var);
        }
    })
}

/// `verify` against a server behaving as `how`: exit 2, `wants` in the message, bounded.
fn verify_against(how: Hostility, wants: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = start(&rt, how);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("s.raw");
    std::fs::write(&src, vec![1u8; SOURCE_BYTES as usize]).unwrap();
    let url = format!(
        "http://127.0.0.1:{port}/devstoreaccount1/c/b.vhd?sv=2021-08-06&sr=b&sp=r&sig=AbCdEfGh"
    );
    let r = run(
        dir.path(),
        &["verify", src.to_str().unwrap(), &url],
        Duration::from_secs(120),
    );
    eprintln!(
        "exit {}, peak RSS {} MiB, {:.1}s: {}",
        r.code,
        r.peak_kib / 1024,
        r.took.as_secs_f64(),
        r.stderr
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains(wants), "{}", r.stderr);
    assert!(r.stderr.contains("could not be understood"), "{}", r.stderr);
    assert!(!r.stderr.contains("AbCdEfGh"), "{}", r.stderr);
    assert!(
        r.peak_kib < LIMIT_KIB,
        "peak RSS {} MiB, over the 256 MiB bound",
        r.peak_kib / 1024
    );
    rt.shutdown_timeout(Duration::from_secs(1));
}

#[test]
fn an_endless_page_list_is_cut_at_its_cap() {
    verify_against(
        Hostility::EndlessPageList,
        "sent over 33554432 bytes for a page list",
    );
}

#[test]
fn a_repeated_continuation_marker_ends_the_listing() {
    verify_against(Hostility::RepeatedMarker, "repeats an earlier one");
}

#[test]
fn endless_fresh_markers_stop_at_the_range_cap() {
    verify_against(
        Hostility::EndlessFreshMarkers,
        "the page list went backwards",
    );
}

#[test]
fn a_get_blob_body_longer_than_the_range_is_refused() {
    verify_against(
        Hostility::EndlessGetBlob,
        "sent over 512 bytes for a range read",
    );
}
