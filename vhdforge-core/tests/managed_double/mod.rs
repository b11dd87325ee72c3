//! The managed-disk test double: a loopback server that enforces the rules of an `md-*`
//! upload SAS (docs/azure-page-blob.md §2) and pages Get Page Ranges (`page_size` ranges per
//! answer, `NextMarker`), honouring `x-ms-range` segments; it can time a large segment out
//! as the service does for a fragmented blob.
#![allow(dead_code)]

use super::upload_common::*;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncWriteExt, BufReader};

const MIB: u64 = 1 << 20;

/// The mock disk.
#[derive(Default)]
pub struct Disk {
    pub data: Vec<u8>,
    pub written: Vec<Range<u64>>,
    pub violations: Vec<String>,
    pub marker_requests: u64,
    pub clears: u64,
    pub put_pages: u64,
    /// Answer every Put Page (update) with 500, as a failing service would.
    pub fail_puts: bool,
    /// Ranges per Get Page Ranges answer (0: two).
    pub page_size: usize,
    /// Answer a page list for more than this many bytes with 500 OperationTimedOut.
    pub list_timeout_above: Option<u64>,
    /// Send each listed range as two adjacent halves.
    pub split_ranges: bool,
    /// The x-ms-range of every Get Page Ranges request.
    pub pagelist_segments: Vec<Range<u64>>,
}

pub fn add_range(v: &mut Vec<Range<u64>>, r: Range<u64>) {
    v.push(r);
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in v.drain(..) {
        match out.last_mut() {
            Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
            _ => out.push(r),
        }
    }
    *v = out;
}

pub fn remove_range(v: &mut Vec<Range<u64>>, r: Range<u64>) {
    let mut out = Vec::new();
    for x in v.drain(..) {
        if x.end <= r.start || x.start >= r.end {
            out.push(x);
            continue;
        }
        if x.start < r.start {
            out.push(x.start..r.start);
        }
        if x.end > r.end {
            out.push(r.end..x.end);
        }
    }
    *v = out;
}

pub fn parse_range(v: Option<&str>) -> Option<Range<u64>> {
    let (s, e) = v?.strip_prefix("bytes=")?.split_once('-')?;
    let (s, e): (u64, u64) = (s.parse().ok()?, e.parse().ok()?);
    Some(s..e + 1)
}

pub fn error(status: u16, code: &str) -> Vec<u8> {
    response(
        status,
        code,
        &[("x-ms-error-code", code.to_string())],
        format!("<Error><Code>{code}</Code></Error>").as_bytes(),
    )
}

pub fn handle(disk: &Mutex<Disk>, req: &Request) -> Vec<u8> {
    let mut d = disk.lock().unwrap();
    let size = d.data.len() as u64;
    let q = req.query();
    if !q.contains_key("sig") {
        return error(403, "AuthenticationFailed");
    }
    match (req.method.as_str(), q.get("comp").map(String::as_str)) {
        ("HEAD", None) => {
            format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\nx-ms-blob-type: PageBlob\r\n\r\n")
                .into_bytes()
        }
        ("PUT", None) => {
            d.violations.push("Put Blob on a managed-disk SAS".into());
            error(400, "ManagedDiskPutBlob")
        }
        ("PUT", Some("page")) => {
            // vhdforge never sets a managed disk's sequence number, so it must not make its
            // writes conditional on one either (the disk's is whatever Azure left there).
            if req.header("x-ms-if-sequence-number-eq").is_some() {
                d.violations
                    .push("sequence-number condition on a managed-disk write".into());
            }
            let Some(r) = parse_range(req.header("x-ms-range")) else {
                return error(400, "MissingRange");
            };
            if r.start % 512 != 0 || r.end % 512 != 0 || r.end > size {
                return error(416, "InvalidPageRange");
            }
            match req.header("x-ms-page-write") {
                Some("update") if d.fail_puts => return error(500, "InternalError"),
                Some("update") => {
                    if r.end - r.start > 4 * MIB || req.body.len() as u64 != r.end - r.start {
                        return error(413, "RequestBodyTooLarge");
                    }
                    if let Some(crc) = req.header("x-ms-content-crc64") {
                        if crc != vhdforge_core::storage::blob::crc64_header(&req.body) {
                            return error(400, "Crc64Mismatch");
                        }
                    }
                    d.data[r.start as usize..r.end as usize].copy_from_slice(&req.body);
                    add_range(&mut d.written, r);
                    d.put_pages += 1;
                }
                Some("clear") => {
                    d.data[r.start as usize..r.end as usize].fill(0);
                    remove_range(&mut d.written, r);
                    d.clears += 1;
                }
                _ => return error(400, "InvalidHeaderValue"),
            }
            response(201, "Created", &[], b"")
        }
        ("PUT", Some(other)) => {
            d.violations
                .push(format!("PUT comp={other} on a managed-disk SAS"));
            error(403, "AuthorizationPermissionMismatch")
        }
        ("GET", Some("pagelist")) => {
            // Only the ranges inside x-ms-range (clipped to it, as the service does), at
            // most `page_size` per answer, the index of the next one as marker.
            let want = match req.header("x-ms-range") {
                Some(v) => match parse_range(Some(v)) {
                    Some(r) if r.start % 512 == 0 && r.start < r.end => r,
                    _ => return error(416, "InvalidRange"),
                },
                None => 0..size,
            };
            d.pagelist_segments.push(want.clone());
            if d.list_timeout_above
                .is_some_and(|max| want.end - want.start > max)
            {
                return error(500, "OperationTimedOut");
            }
            let inside: Vec<Range<u64>> = d
                .written
                .iter()
                .map(|r| r.start.max(want.start)..r.end.min(want.end))
                .filter(|r| r.start < r.end)
                .collect();
            let per = if d.page_size == 0 { 2 } else { d.page_size };
            let start: usize = q.get("marker").and_then(|m| m.parse().ok()).unwrap_or(0);
            if start > 0 {
                d.marker_requests += 1;
            }
            let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList>");
            for r in inside.iter().skip(start).take(per) {
                // Split each range in two adjacent halves when asked: Azurite and the
                // service do not promise merged ranges.
                let pieces = if d.split_ranges && r.end - r.start >= 1024 {
                    let mid = r.start + (r.end - r.start) / 1024 * 512;
                    vec![r.start..mid, mid..r.end]
                } else {
                    vec![r.clone()]
                };
                for p in pieces {
                    xml.push_str(&format!(
                        "<PageRange><Start>{}</Start><End>{}</End></PageRange>",
                        p.start,
                        p.end - 1
                    ));
                }
            }
            if start + per < inside.len() {
                xml.push_str(&format!("<NextMarker>{}</NextMarker>", start + per));
            } else {
                xml.push_str("<NextMarker />");
            }
            xml.push_str("</PageList>");
            response(
                200,
                "OK",
                &[("x-ms-blob-content-length", size.to_string())],
                xml.as_bytes(),
            )
        }
        ("GET", None) => match parse_range(req.header("x-ms-range")) {
            Some(r) if r.end <= size => response(
                206,
                "Partial Content",
                &[],
                &d.data[r.start as usize..r.end as usize],
            ),
            _ => error(416, "InvalidRange"),
        },
        _ => error(400, "UnsupportedOperation"),
    }
}

/// Start the mock for a disk of `size` bytes; returns its port.
pub async fn mock(disk: Arc<Mutex<Disk>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let disk = disk.clone();
            tokio::spawn(async move {
                let (rd, mut wr) = sock.into_split();
                let mut rd = BufReader::new(rd);
                while let Some(req) = read_request(&mut rd).await {
                    let resp = handle(&disk, &req);
                    if wr.write_all(&resp).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

pub fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/abcd1234/abcd?sv=2021-08-06&sr=b&si=00000000-0000-0000-0000-000000000000&sig=c2VjcmV0U0lH")
}
