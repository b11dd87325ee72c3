//! Upload and verify against a real Azurite (scripts/azurite.sh install), each test binary
//! starting its own instance on a free port. Raw sparse images stand in for any source:
//! the uploader sends the converted stream (disk area rounded up to a MiB, then a footer).

mod upload_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use upload_common::*;
use vhdforge_core::upload::{
    self, journal, Cancel, Compared, CredentialEnv, Progress, RetryPolicy, UploadOptions,
    VerifyOptions,
};

const MIB: u64 = 1 << 20;

/// One Azurite for the whole test binary (starting one costs ~1 s).
fn azurite() -> &'static Azurite {
    static AZ: OnceLock<Azurite> = OnceLock::new();
    AZ.get_or_init(Azurite::start)
}

async fn container(name: &str) -> &'static Azurite {
    let az = azurite();
    az.create_container(name).await;
    az
}

fn opts(env: CredentialEnv) -> UploadOptions {
    UploadOptions {
        credentials: env,
        concurrency: 4,
        retry: RetryPolicy {
            max_attempts: 12,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(300),
        },
        ..UploadOptions::default()
    }
}

fn verify_opts(env: CredentialEnv, full: bool) -> VerifyOptions {
    VerifyOptions {
        credentials: env,
        full,
        ..VerifyOptions::default()
    }
}

/// Counts what completes; optionally cancels after `cancel_after` requests.
#[derive(Default)]
struct Counter {
    sent: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    cancel_after: u64,
    cancel: Option<Cancel>,
}

impl Progress for Counter {
    fn advance(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Ordering::SeqCst);
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(c) = &self.cancel {
            if n >= self.cancel_after {
                c.cancel();
            }
        }
    }
    fn retried(&self, _reason: &str) {
        self.retries.fetch_add(1, Ordering::SeqCst);
    }
    fn cancel(&self) -> Cancel {
        self.cancel.clone().unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_key_odd_size_roundtrip_and_verify() {
    let az = container("skey").await;
    let dir = tempfile::tempdir().unwrap();
    // 20 MiB + 1234 bytes: rounded up to 21 MiB; data regions that are not page-aligned,
    // one crossing the source end, 4 KiB specks 32 KiB apart (bridged) and 128 KiB apart (not).
    let size = 20 * MIB + 1234;
    let mut regions = vec![
        (100, 700),
        (3 * MIB + 5, 2 * MIB as usize),
        (size - 1000, 1000),
    ];
    regions.extend((0..16).map(|i| (10 * MIB + i * 32768, 4096)));
    regions.extend((0..8).map(|i| (14 * MIB + i * 131072, 4096)));
    let src = sparse_image(dir.path(), "odd.raw", size, &regions);
    let url = az.blob_url("skey", "odd.vhd");
    let summary = upload::upload(&src, &url, opts(az.env()), Arc::new(Counter::default()))
        .await
        .unwrap();
    let area = expected_disk_area(&src);
    let (blob, _) = az.download("skey", "odd.vhd").await;
    assert_stream(&blob, &area);
    assert_eq!(summary.bytes_total, 21 * MIB + 512);
    // Only data (and bridged gaps) plus the footer were sent: far below the disk size.
    assert!(summary.bytes_sent < 4 * MIB, "sent {}", summary.bytes_sent);
    assert_eq!(
        summary.bytes_total,
        summary.bytes_sent + summary.bytes_skipped
    );
    eprintln!(
        "odd-size upload: {} bytes sent in {} requests, {} skipped",
        summary.bytes_sent, summary.requests, summary.bytes_skipped
    );

    for full in [false, true] {
        let r = upload::verify(&src, &url, verify_opts(az.env(), full))
            .await
            .unwrap();
        assert!(r.passed(), "full={full}: {:?}", r.differences);
        assert!(r.layout_matches);
        // Only a byte comparison may call the blob identical.
        assert_eq!(r.identical, full);
    }
    // Damage one data page at the destination: both verify modes must notice.
    let off = 3 * MIB + 4096;
    let resp = az
        .signed(
            "PUT",
            "/skey/odd.vhd",
            &[("comp", "page")],
            &[
                ("x-ms-page-write", "clear"),
                ("x-ms-range", &format!("bytes={off}-{}", off + 511)),
            ],
        )
        .await;
    assert!(resp.status().is_success());
    for full in [false, true] {
        let r = upload::verify(&src, &url, verify_opts(az.env(), full))
            .await
            .unwrap();
        assert!(!r.passed(), "full={full} missed a cleared data page");
        assert!(
            r.differences
                .iter()
                .any(|d| d.offset <= off && off < d.offset + 4 * MIB),
            "{:?}",
            r.differences
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sas_blob_container_and_account() {
    let az = container("sas").await;
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_image(
        dir.path(),
        "s.raw",
        20 * MIB,
        &[(MIB, 300_000), (19 * MIB, 4096)],
    );
    let cases = [
        (
            "blob SAS",
            "b1.vhd",
            service_sas("sas", Some("b1.vhd"), "cw"),
        ),
        ("container SAS", "b2.vhd", service_sas("sas", None, "rcw")),
        ("account SAS", "b3.vhd", account_sas("rwc")),
    ];
    for (what, blob, sas) in cases {
        let url = format!("{}?{sas}", az.blob_url("sas", blob));
        let sig = sas.split("sig=").nth(1).unwrap().to_string();
        // No other credential: the SAS alone must do.
        let s = upload::upload(
            &src,
            &url,
            opts(CredentialEnv::default()),
            Arc::new(Counter::default()),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            s.destination.contains("sig=REDACTED") && !s.destination.contains(&sig),
            "{what}: {}",
            s.destination
        );
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains(&sig), "{what}: JSON leaks the signature");
        let (blob_bytes, _) = az.download("sas", blob).await;
        assert_stream(&blob_bytes, &expected_disk_area(&src));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_errors_are_clear() {
    let az = container("fatal").await;
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_image(dir.path(), "f.raw", 20 * MIB, &[(0, 4096)]);
    // SAS without w (read only).
    let sas = service_sas("fatal", Some("ro.vhd"), "r");
    let sig = sas.split("sig=").nth(1).unwrap().to_string();
    let e = upload::upload(
        &src,
        &format!("{}?{sas}", az.blob_url("fatal", "ro.vhd")),
        opts(CredentialEnv::default()),
        Arc::new(Counter::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.permission", "{e}");
    assert!(e.to_string().contains("lacks write (w) permission"), "{e}");
    assert!(
        !e.to_string().contains(&sig),
        "error leaks the signature: {e}"
    );
    // Wrong key.
    let wrong = CredentialEnv { account: Some(ACCOUNT.into()), key: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()), ..CredentialEnv::default() };
    let e = upload::upload(
        &src,
        &az.blob_url("fatal", "k.vhd"),
        opts(wrong),
        Arc::new(Counter::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.auth", "{e}");
    assert!(e.to_string().contains("account key may be wrong"), "{e}");
    // Existing blob: refused without --overwrite, replaced with it.
    let url = az.blob_url("fatal", "exists.vhd");
    upload::upload(&src, &url, opts(az.env()), Arc::new(Counter::default()))
        .await
        .unwrap();
    let e = upload::upload(&src, &url, opts(az.env()), Arc::new(Counter::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "upload.exists", "{e}");
    assert!(e.to_string().contains("--overwrite"), "{e}");
    upload::upload(
        &src,
        &url,
        UploadOptions {
            overwrite: true,
            ..opts(az.env())
        },
        Arc::new(Counter::default()),
    )
    .await
    .unwrap();
    // Missing container.
    let e = upload::upload(
        &src,
        &az.blob_url("nosuch", "x.vhd"),
        opts(az.env()),
        Arc::new(Counter::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.not_found", "{e}");
    // --resume without a journal.
    let e = upload::upload(
        &src,
        &az.blob_url("fatal", "never.vhd"),
        UploadOptions {
            resume: true,
            ..opts(az.env())
        },
        Arc::new(Counter::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.resume", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_md5_and_md5_per_request() {
    let az = container("md5").await;
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_image(
        dir.path(),
        "m.raw",
        20 * MIB + 512,
        &[(4096, 1_000_000), (9 * MIB, 70_000)],
    );
    let url = az.blob_url("md5", "m.vhd");
    let o = UploadOptions {
        content_md5: true,
        md5_per_request: true,
        ..opts(az.env())
    };
    let s = upload::upload(&src, &url, o, Arc::new(Counter::default()))
        .await
        .unwrap();
    let (blob, headers) = az.download("md5", "m.vhd").await;
    assert_stream(&blob, &expected_disk_area(&src));
    use base64::Engine as _;
    use md5::Digest;
    let want = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&blob));
    // The MD5 computed in stream order during the send is the MD5 of the whole blob ...
    assert_eq!(s.content_md5.as_deref(), Some(want.as_str()));
    // ... and it is stored as the blob's Content-MD5.
    assert_eq!(
        headers.get("content-md5").and_then(|v| v.to_str().ok()),
        Some(want.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_interruption() {
    let az = container("resume").await;
    let dir = tempfile::tempdir().unwrap();
    // ~18 MiB of data in 1 MiB-ish regions plus specks: about 30 requests.
    let mut regions: Vec<(u64, usize)> =
        (0..12).map(|i| (i * 5 * MIB + 12345, 1_200_000)).collect();
    regions.extend((0..20).map(|i| (2 * MIB + i * 3 * MIB + 777, 9000)));
    let src = sparse_image(dir.path(), "r.raw", 64 * MIB, &regions);
    let area = expected_disk_area(&src);
    let mut seed = 0x5eedu64;
    for trial in 0..4u64 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let blob = format!("r{trial}.vhd");
        let url = az.blob_url("resume", &blob);
        let cancel = Cancel::new();
        let stop_at = 1 + (seed >> 33) % 24;
        let first = Arc::new(Counter {
            cancel_after: stop_at,
            cancel: Some(cancel.clone()),
            ..Counter::default()
        });
        let e = upload::upload(
            &src,
            &url,
            UploadOptions { ..opts(az.env()) },
            first.clone(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), "upload.cancelled", "trial {trial}: {e}");
        let done_before = first.sent.load(Ordering::SeqCst);
        let jpath = journal::path_for(&src, &url, None);
        let lost = trial % 2 == 1;
        if lost {
            // A hard kill before any journal write: the destination lists pages, but
            // nothing proves this upload sent them, so everything is sent again.
            let mut j = journal::load(&jpath, None).unwrap().unwrap();
            j.done.clear();
            journal::store(&jpath, &j).unwrap();
        }
        let second = upload::upload(
            &src,
            &url,
            UploadOptions {
                resume: true,
                ..opts(az.env())
            },
            Arc::new(Counter::default()),
        )
        .await
        .unwrap();
        let (bytes, _) = az.download("resume", &blob).await;
        assert_stream(&bytes, &area);
        let planned = second.bytes_already_present + second.bytes_sent - 512;
        if lost {
            assert_eq!(second.bytes_already_present, 0, "trial {trial}");
        } else {
            // A cancel writes the journal: nothing completed before is sent again; at most
            // the requests in flight at the cancel (4 × 4 MiB) are.
            assert!(
                second.bytes_already_present >= done_before,
                "trial {trial}: present {} < completed {done_before}",
                second.bytes_already_present
            );
            assert!(
                second.bytes_sent - 512 <= planned - done_before + 16 * MIB,
                "trial {trial}"
            );
        }
        assert!(!jpath.exists(), "journal left behind after success");
        eprintln!(
            "resume trial {trial}: stopped after {stop_at} requests ({done_before} bytes), resumed with {} bytes in {} requests ({} present)",
            second.bytes_sent, second.requests, second.bytes_already_present
        );
        let r = upload::verify(&src, &url, verify_opts(az.env(), true))
            .await
            .unwrap();
        assert!(r.identical, "trial {trial}: {:?}", r.differences);
    }
    // A changed source is refused.
    let url = az.blob_url("resume", "changed.vhd");
    let cancel = Cancel::new();
    let c = Arc::new(Counter {
        cancel_after: 2,
        cancel: Some(cancel.clone()),
        ..Counter::default()
    });
    upload::upload(&src, &url, UploadOptions { ..opts(az.env()) }, c)
        .await
        .unwrap_err();
    std::thread::sleep(Duration::from_millis(20));
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.set_len(64 * MIB + 512).unwrap();
    drop(f);
    let e = upload::upload(
        &src,
        &url,
        UploadOptions {
            resume: true,
            ..opts(az.env())
        },
        Arc::new(Counter::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.resume");
    assert!(e.to_string().contains("source changed"), "{e}");
}

/// What the fault proxy did.
#[derive(Debug, Default)]
struct FaultStats {
    forwarded: u64,
    busy: u64,
    errors: u64,
    dropped: u64,
    stalled: u64,
    corrupted: u64,
}

/// A loopback proxy in front of Azurite that answers some Put Pages itself with 503/500,
/// drops or stalls connections, or corrupts a body byte (the service then reports a
/// checksum mismatch). Everything else is forwarded on a fresh upstream connection.
async fn fault_proxy(upstream: u16, stats: Arc<Mutex<FaultStats>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counter = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let stats = stats.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let (rd, mut wr) = sock.into_split();
                let mut rd = BufReader::new(rd);
                while let Some(mut req) = read_request(&mut rd).await {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let roll = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 20;
                    let put_page = req.method == "PUT" && req.target.contains("comp=page");
                    // One guaranteed stall (early), then occasional ones: the client timeout must fire.
                    let stall = put_page
                        && ((n >= 3 && stats.lock().unwrap().stalled == 0)
                            || (roll == 4 && n % 3 == 0));
                    // The very first request (the create) is throttled once: control
                    // operations retry too.
                    if n == 0 {
                        stats.lock().unwrap().busy += 1;
                        let _ = wr
                            .write_all(&response(
                                503,
                                "Server Busy",
                                &[("x-ms-error-code", "ServerBusy".into())],
                                b"",
                            ))
                            .await;
                        continue;
                    }
                    if stall {
                        stats.lock().unwrap().stalled += 1;
                        tokio::time::sleep(Duration::from_secs(4)).await;
                        return;
                    }
                    if put_page {
                        match roll {
                            0 | 1 => {
                                stats.lock().unwrap().busy += 1;
                                let body = b"<?xml version=\"1.0\"?><Error><Code>ServerBusy</Code><Message>Ingress is over the account limit.</Message></Error>";
                                let _ = wr
                                    .write_all(&response(
                                        503,
                                        "Server Busy",
                                        &[("x-ms-error-code", "ServerBusy".into())],
                                        body,
                                    ))
                                    .await;
                                continue;
                            }
                            2 => {
                                stats.lock().unwrap().errors += 1;
                                let _ = wr
                                    .write_all(&response(
                                        500,
                                        "Internal Server Error",
                                        &[("x-ms-error-code", "InternalError".into())],
                                        b"",
                                    ))
                                    .await;
                                continue;
                            }
                            3 => {
                                stats.lock().unwrap().dropped += 1;
                                return;
                            }
                            5 if !req.body.is_empty() => {
                                stats.lock().unwrap().corrupted += 1;
                                let i = req.body.len() / 2;
                                req.body[i] ^= 0x40;
                            }
                            _ => {}
                        }
                    }
                    stats.lock().unwrap().forwarded += 1;
                    // Forward on a fresh connection that closes after the response.
                    let head = String::from_utf8_lossy(&req.head).to_string();
                    let mut new_head: String = head
                        .lines()
                        .filter(|l| {
                            !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:")
                        })
                        .map(|l| format!("{l}\r\n"))
                        .collect();
                    new_head.push_str("connection: close\r\n\r\n");
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    if up.write_all(new_head.as_bytes()).await.is_err()
                        || up.write_all(&req.body).await.is_err()
                    {
                        return;
                    }
                    let mut resp = Vec::new();
                    let _ = up.read_to_end(&mut resp).await;
                    let _ = wr.write_all(&resp).await;
                    // The upstream said "connection: close"; so do we.
                    return;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_retried_and_upload_completes() {
    let az = container("faults").await;
    let stats = Arc::new(Mutex::new(FaultStats::default()));
    let proxy = fault_proxy(az.port, stats.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let regions: Vec<(u64, usize)> = (0..24).map(|i| (i * MIB + 4096 * i, 300_000)).collect();
    let src = sparse_image(dir.path(), "x.raw", 24 * MIB, &regions);
    let url = format!("http://127.0.0.1:{proxy}/{ACCOUNT}/faults/x.vhd");
    let o = UploadOptions {
        request_timeout: Duration::from_secs(1),
        timeout_per_mib: Duration::from_millis(500),
        ..opts(az.env())
    };
    let counter = Arc::new(Counter::default());
    let s = upload::upload(&src, &url, o, counter.clone())
        .await
        .unwrap();
    let st = std::mem::take(&mut *stats.lock().unwrap());
    eprintln!(
        "fault proxy: {st:?}; upload: {} bytes in {} requests, {} retries",
        s.bytes_sent, s.requests, s.retries
    );
    assert!(
        s.retries > 0 && st.busy + st.errors + st.dropped + st.corrupted > 0,
        "no fault was injected: {st:?}"
    );
    assert_eq!(s.retries, counter.retries.load(Ordering::SeqCst));
    let (bytes, _) = az.download("faults", "x.vhd").await;
    assert_stream(&bytes, &expected_disk_area(&src));
    let r = upload::verify(
        &src,
        &az.blob_url("faults", "x.vhd"),
        verify_opts(az.env(), true),
    )
    .await
    .unwrap();
    assert!(r.identical, "{:?}", r.differences);
}

/// Prints `sent <bytes>` per completed request, for the parent to count.
struct Lines;

impl Progress for Lines {
    fn advance(&self, bytes: u64) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "sent {bytes}");
        let _ = out.flush();
    }
}

/// The child half of the SIGKILL test: this test binary re-run with `UPLOAD_CHILD_SRC`
/// and `UPLOAD_CHILD_DEST` set uploads and reports progress; otherwise a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_upload_entry() {
    let (Ok(src), Ok(dest)) = (
        std::env::var("UPLOAD_CHILD_SRC"),
        std::env::var("UPLOAD_CHILD_DEST"),
    ) else {
        return;
    };
    let mut o = UploadOptions {
        concurrency: 2,
        credentials: CredentialEnv::from_process_env(),
        ..UploadOptions::default()
    };
    if let Some(ms) = std::env::var("UPLOAD_CHILD_JOURNAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        o.journal_interval = Duration::from_millis(ms);
    }
    upload::upload(std::path::Path::new(&src), &dest, o, Arc::new(Lines))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_sigkill_of_a_child_process() {
    use std::io::BufRead;
    let az = container("killed").await;
    let dir = tempfile::tempdir().unwrap();
    let regions: Vec<(u64, usize)> = (0..20).map(|i| (i * 2 * MIB + 777, 700_000)).collect();
    let src = sparse_image(dir.path(), "k.raw", 48 * MIB, &regions);
    let area = expected_disk_area(&src);
    // The journal is the only proof of what was sent. Written on every completion (0 ms),
    // each request the child reported is durable, so none is sent again. With the default
    // interval, what completed since the last write (≤ 1 s of sending) plus what was in
    // flight (2 × 4 MiB) may be sent again; that run only checks the result.
    for (trial, kill_after, journal_ms) in
        [(0u32, 1usize, 0u64), (1, 6, 0), (2, 13, 0), (3, 9, 1000)]
    {
        let blob = format!("k{trial}.vhd");
        let url = az.blob_url("killed", &blob);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_upload_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("UPLOAD_CHILD_SRC", &src)
            .env("UPLOAD_CHILD_DEST", &url)
            .env("UPLOAD_CHILD_JOURNAL_MS", journal_ms.to_string())
            .env(
                "AZURE_STORAGE_CONNECTION_STRING",
                az.env().connection_string.unwrap(),
            )
            .env_remove("AZURE_STORAGE_ACCOUNT")
            .env_remove("AZURE_STORAGE_KEY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut sent = 0u64;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut seen = 0;
        while seen < kill_after {
            let Some(Ok(l)) = lines.next() else { break };
            // Lines from the test harness itself are not ours.
            if let Some(n) = l.strip_prefix("sent ") {
                sent += n.parse::<u64>().unwrap();
                seen += 1;
            }
        }
        assert_eq!(
            seen, kill_after,
            "trial {trial}: the child ended before {kill_after} requests"
        );
        // SIGKILL: no journal flush, no cleanup, requests cut mid-body.
        child.kill().unwrap();
        child.wait().unwrap();
        let s = upload::upload(
            &src,
            &url,
            UploadOptions {
                resume: true,
                ..opts(az.env())
            },
            Arc::new(Counter::default()),
        )
        .await
        .unwrap_or_else(|e| panic!("trial {trial}: {e}"));
        let (bytes, _) = az.download("killed", &blob).await;
        assert_stream(&bytes, &area);
        if journal_ms == 0 {
            assert!(
                s.bytes_already_present >= sent,
                "trial {trial}: completed {sent} bytes, found {}",
                s.bytes_already_present
            );
        }
        eprintln!(
            "sigkill trial {trial}: killed after {kill_after} requests ({sent} bytes); resume sent {} bytes in {} requests, {} present",
            s.bytes_sent, s.requests, s.bytes_already_present
        );
    }
}

/// Every kind of source the format suite reads, uploaded and downloaded back: the blob is
/// the source's virtual content, zero padding to a whole MiB and a valid fixed footer; an
/// Azure-ready fixed VHD arrives byte for byte. Also creates its container on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_fixture_round_trips() {
    use fixtures::vhd::{self as fvhd, ChainLayer, FooterOptions};
    use fixtures::vhdx::{self as fvhdx, VhdxSpec};
    use uuid::Uuid;
    let az = azurite();
    let dir = tempfile::tempdir().unwrap();
    let size = 20 * MIB as usize + 3 * 512;
    let regions = [
        (0usize, 8192usize),
        (MIB as usize + 100, 300_000),
        (size - 4096, 4096),
    ];
    let content = fixtures::raw::disk_with_regions(size, &regions, 5);
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, &content).unwrap();
    let mut cases: Vec<(String, std::path::PathBuf, Vec<u8>)> = Vec::new();
    // qemu-made dynamic VHDX and VHD.
    for (name, args) in [
        ("q.vhdx", &["-O", "vhdx"][..]),
        ("q.vhd", &["-O", "vpc", "-o", "force_size=on"][..]),
    ] {
        let p = dir.path().join(name);
        let st = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw"])
            .args(args)
            .arg(&raw)
            .arg(&p)
            .status()
            .expect("qemu-img is required (scripts/setup.sh)");
        assert!(st.success());
        cases.push((name.into(), p, content.clone()));
    }
    // A VHD checkpoint chain.
    let layers = vec![ChainLayer {
        name: "top.avhd".into(),
        writes: vec![(4096, fixtures::raw::pattern(9, 8 * 512))],
    }];
    let (paths, _) = fvhd::write_chain(dir.path(), &content, "base.vhd", 2 << 20, &layers).unwrap();
    let mut chain = content.clone();
    chain[4096..4096 + 8 * 512].copy_from_slice(&fixtures::raw::pattern(9, 8 * 512));
    cases.push(("chain.avhd".into(), paths.last().unwrap().clone(), chain));
    // A VHDX differencing child and a dirty-log VHDX.
    fvhdx::write_file(
        dir.path(),
        "p.vhdx",
        &fvhdx::build(&VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0x51)), &content).bytes,
    );
    let child = fixtures::raw::pattern(3, size);
    let present: Vec<bool> = (0..size / 512).map(|s| s / 2048 == 1).collect();
    let mut spec = VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0x52));
    spec.child = Some(fvhdx::ChildSpec {
        parent_linkage: Uuid::from_u128(0x51),
        relative_path: Some(".\\p.vhdx".into()),
        absolute_win32_path: None,
        present: present.clone(),
    });
    let c = fvhdx::write_file(dir.path(), "c.avhdx", &fvhdx::build(&spec, &child).bytes);
    cases.push((
        "c.avhdx".into(),
        c,
        fvhdx::chain_content(&content, &child, &present, 512),
    ));
    let mut dirty = fvhdx::build(&VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0x53)), &content);
    fvhdx::make_dirty(&mut dirty, Uuid::from_u128(0x54), None);
    cases.push((
        "dirty.vhdx".into(),
        fvhdx::write_file(dir.path(), "dirty.vhdx", &dirty.bytes),
        content.clone(),
    ));
    // A 511-byte-footer VHD.
    let old = dir.path().join("old.vhd");
    std::fs::write(
        &old,
        fvhd::fixed_vhd(&content, &FooterOptions::default(), true),
    )
    .unwrap();
    cases.push(("old.vhd".into(), old, content.clone()));

    for (i, (name, path, expected)) in cases.iter().enumerate() {
        let url = az.blob_url("fixtures", &format!("{i}.vhd"));
        let mut o = opts(az.env());
        o.create_container = true;
        let summary = upload::upload(path, &url, o, Arc::new(Counter::default()))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (blob, _) = az.download("fixtures", &format!("{i}.vhd")).await;
        let mut area = expected.clone();
        area.resize(expected.len().div_ceil(MIB as usize) * MIB as usize, 0);
        assert_stream(&blob, &area);
        assert!(
            summary.bytes_sent < 2 * MIB,
            "{name}: sent {}",
            summary.bytes_sent
        );
        let r = upload::verify(path, &url, verify_opts(az.env(), true))
            .await
            .unwrap();
        assert!(r.identical, "{name}: {:?}", r.differences);
    }

    // An Azure-ready fixed VHD is sent as it is, its own footer included.
    let ready = azure_ready_vhd(&raw, dir.path(), "ready.vhd");
    let url = az.blob_url("fixtures", "ready.vhd");
    upload::upload(&ready, &url, opts(az.env()), Arc::new(Counter::default()))
        .await
        .unwrap();
    let (blob, _) = az.download("fixtures", "ready.vhd").await;
    assert!(
        blob == std::fs::read(&ready).unwrap(),
        "an Azure-ready VHD must arrive byte for byte"
    );
}

/// Cancels as soon as the plan is known: the journal is written, nothing is sent.
struct CancelAtPlan(Cancel);

impl Progress for CancelAtPlan {
    fn cancel(&self) -> Cancel {
        self.0.clone()
    }
    fn set_total(&self, _bytes: u64) {
        self.0.cancel();
    }
}

/// Resume of a differencing source checks every file of the chain: a parent rewritten in
/// place (same size, mtime put back, so only ctime tells) or replaced by another file is
/// refused, although the top file and the plan are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_refuses_a_changed_parent() {
    use fixtures::vhd::{self as fvhd, ChainLayer};
    let az = container("chain").await;
    let dir = tempfile::tempdir().unwrap();
    let size = 20 * MIB as usize;
    let content = fixtures::raw::disk_with_regions(size, &[(0, 8192), (3 * MIB as usize, 4096)], 7);
    let layers = vec![ChainLayer {
        name: "top.avhd".into(),
        writes: vec![(4096, fixtures::raw::pattern(9, 8 * 512))],
    }];
    let (paths, _) = fvhd::write_chain(dir.path(), &content, "base.vhd", 2 << 20, &layers).unwrap();
    let (base, top) = (paths[0].clone(), paths.last().unwrap().clone());
    let top_ref = &top;
    let interrupted = |blob: &'static str| {
        let url = az.blob_url("chain", blob);
        async move {
            let cancel = Cancel::new();
            let e = upload::upload(
                top_ref,
                &url,
                UploadOptions { ..opts(az.env()) },
                Arc::new(CancelAtPlan(cancel)),
            )
            .await
            .unwrap_err();
            assert_eq!(e.code(), "upload.cancelled", "{e}");
            assert!(e.to_string().contains("with --resume"), "{e}");
            url
        }
    };
    let resume = |url: String| async move {
        upload::upload(
            top_ref,
            &url,
            UploadOptions {
                resume: true,
                ..opts(az.env())
            },
            Arc::new(Counter::default()),
        )
        .await
    };
    // Control: nothing changed, resume completes.
    let url = interrupted("same.vhd").await;
    resume(url.clone()).await.unwrap();
    let r = upload::verify(&top, &url, verify_opts(az.env(), true))
        .await
        .unwrap();
    assert!(r.identical, "{:?}", r.differences);

    // The parent's data rewritten in place, size and mtime kept.
    let url = interrupted("rewritten.vhd").await;
    let mtime = std::fs::metadata(&base).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    {
        // A data byte of the parent (found by content), so the plan and the top file stay
        // the same: only the parent's identity can tell.
        use std::os::unix::fs::FileExt;
        let bytes = std::fs::read(&base).unwrap();
        let at = bytes
            .windows(64)
            .position(|w| w == &content[..64])
            .expect("the parent holds the first data sector") as u64;
        let f = std::fs::File::options().write(true).open(&base).unwrap();
        f.write_all_at(&[content[0] ^ 0xff], at).unwrap();
        f.set_modified(mtime).unwrap();
    }
    let e = resume(url).await.unwrap_err();
    assert_eq!(e.code(), "upload.resume", "{e}");
    assert!(e.to_string().contains("parent"), "{e}");
    assert!(e.to_string().contains("base.vhd"), "{e}");

    // The parent replaced by a copy (new inode) with the same size and mtime.
    let url = interrupted("replaced.vhd").await;
    let copy = dir.path().join("copy.vhd");
    std::fs::copy(&base, &copy).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&copy)
        .unwrap()
        .set_modified(std::fs::metadata(&base).unwrap().modified().unwrap())
        .unwrap();
    std::fs::rename(&copy, &base).unwrap();
    let e = resume(url).await.unwrap_err();
    assert_eq!(e.code(), "upload.resume", "{e}");
    assert!(e.to_string().contains("parent"), "{e}");
}

/// Cancels the upload at its first completed data request, after running `probe` (which
/// sees the destination while the upload is between data pages).
struct AtFirstPage<F: Fn() + Send + Sync> {
    cancel: Cancel,
    probe: F,
    seen: AtomicU64,
}

impl<F: Fn() + Send + Sync> Progress for AtFirstPage<F> {
    fn cancel(&self) -> Cancel {
        self.cancel.clone()
    }
    fn advance(&self, _bytes: u64) {
        if self.seen.fetch_add(1, Ordering::SeqCst) == 0 {
            (self.probe)();
            self.cancel.cancel();
        }
    }
}

/// Run `fut` to completion from a synchronous progress callback (a worker thread of the
/// test's multi-thread runtime): the other worker runs it while this one waits.
fn block_on_other_worker<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    tokio::runtime::Handle::current().spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv_timeout(Duration::from_secs(20)).unwrap()
}

/// Two images of the same size whose data differs, q's partly where p is zero.
fn two_images(dir: &std::path::Path, size: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let regions: Vec<(u64, usize)> = (0..10).map(|i| (i * 3 * MIB + 4096, 1_500_000)).collect();
    let shifted: Vec<(u64, usize)> = regions.iter().map(|&(o, l)| (o + MIB, l)).collect();
    (
        sparse_image(dir, "p.raw", size, &regions),
        sparse_image(dir, "q.raw", size, &shifted),
    )
}

/// Issue 7 item 1: p interrupted, q uploaded over the same blob with --overwrite (the same
/// second, same size), then `--resume p` must be refused: the journal's ranges were written
/// to a blob that no longer exists. Before, it reported most bytes "already there", exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_refuses_a_blob_overwritten_by_another_upload() {
    let az = container("foreign").await;
    let dir = tempfile::tempdir().unwrap();
    let (p, q) = two_images(dir.path(), 32 * MIB);
    let url = az.blob_url("foreign", "x.vhd");
    let cancel = Cancel::new();
    let first = Arc::new(Counter {
        cancel_after: 3,
        cancel: Some(cancel.clone()),
        ..Counter::default()
    });
    let e = upload::upload(
        &p,
        &url,
        UploadOptions {
            concurrency: 1,
            ..opts(az.env())
        },
        first,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.cancelled", "{e}");
    let j = journal::load(&journal::path_for(&p, &url, None), None)
        .unwrap()
        .unwrap();
    assert!(!j.done.is_empty(), "the journal must hold completed ranges");
    assert!(j.blob.sequence_number.is_some(), "{:?}", j.blob);
    upload::upload(
        &q,
        &url,
        UploadOptions {
            overwrite: true,
            ..opts(az.env())
        },
        Arc::new(Counter::default()),
    )
    .await
    .unwrap();
    let e = upload::upload(
        &p,
        &url,
        UploadOptions {
            resume: true,
            ..opts(az.env())
        },
        Arc::new(Counter::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.resume", "{e}");
    assert!(e.to_string().contains("not the blob"), "{e}");
    // Refused before writing anything: the blob still holds q exactly.
    let (bytes, _) = az.download("foreign", "x.vhd").await;
    assert_stream(&bytes, &expected_disk_area(&q));
    // A plain verify says it compared the layout only (the CLI then prints "layout
    // matches", never "identical"); --full says it compared bytes.
    for (full, compared) in [(false, Compared::Layout), (true, Compared::Bytes)] {
        let r = upload::verify(&q, &url, verify_opts(az.env(), full))
            .await
            .unwrap();
        assert!(r.passed(), "full={full}: {:?}", r.differences);
        assert_eq!(r.compared, compared);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["compared"], if full { "bytes" } else { "layout" });
        // `identical` means bytes were compared; the plain check reports `layout_matches`.
        assert_eq!(json["identical"], full);
        assert_eq!(json["layout_matches"], true);
    }
}

/// Issue 7 item 1, during an upload: a blob recreated by someone else while vhdforge sends
/// fails the next Put Page (conditional on this upload's sequence number) with 412 instead
/// of writing into the other blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_recreated_during_the_upload_stops_it() {
    let az = container("recreated").await;
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = two_images(dir.path(), 32 * MIB);
    let url = az.blob_url("recreated", "y.vhd");
    let size = (32 * MIB + 512).to_string();
    let progress = Arc::new(AtFirstPage {
        cancel: Cancel::never(),
        probe: move || {
            let size = size.clone();
            let status = block_on_other_worker(async move {
                azurite()
                    .signed(
                        "PUT",
                        "/recreated/y.vhd",
                        &[],
                        &[
                            ("x-ms-blob-type", "PageBlob"),
                            ("x-ms-blob-content-length", &size),
                        ],
                    )
                    .await
                    .status()
            });
            assert!(status.is_success(), "{status}");
        },
        seen: AtomicU64::new(0),
    });
    // The probe's token can never be set: the upload runs on until a write fails.
    let e = upload::upload(
        &p,
        &url,
        UploadOptions {
            concurrency: 1,
            ..opts(az.env())
        },
        progress,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.precondition", "{e}");
    assert!(e.to_string().contains("someone else"), "{e}");
    assert!(!e.to_string().contains("with --resume"), "{e}");
    // Nothing of p after the first page reached the new blob, and no footer.
    let (bytes, _) = az.download("recreated", "y.vhd").await;
    assert!(
        bytes.iter().all(|&b| b == 0),
        "the recreated blob was written"
    );
}

/// Issue 7 item 3: a managed disk (or any existing blob) that held another image keeps its
/// `conectix` footer until vhdforge clears it; it must be cleared before the first data page,
/// so an interrupted upload never looks like a valid VHD with mixed contents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_destination_loses_its_old_footer_before_any_data() {
    let az = container("reused").await;
    let dir = tempfile::tempdir().unwrap();
    let (p, q) = two_images(dir.path(), 32 * MIB);
    let url = az.blob_url("reused", "w.vhd");
    upload::upload(&q, &url, opts(az.env()), Arc::new(Counter::default()))
        .await
        .unwrap();
    let footer_at = 32 * MIB;
    let read_footer = move || async move {
        let r = azurite()
            .signed(
                "GET",
                "/reused/w.vhd",
                &[],
                &[(
                    "x-ms-range",
                    &format!("bytes={footer_at}-{}", footer_at + 511),
                )],
            )
            .await;
        r.bytes().await.unwrap().to_vec()
    };
    assert_eq!(&read_footer().await[..8], b"conectix");
    let cancel = Cancel::new();
    let footer_during = Arc::new(Mutex::new(Vec::new()));
    let seen = footer_during.clone();
    let progress = Arc::new(AtFirstPage {
        cancel: cancel.clone(),
        probe: move || *seen.lock().unwrap() = block_on_other_worker(read_footer()),
        seen: AtomicU64::new(0),
    });
    let managed = || UploadOptions {
        managed_disk: true,
        concurrency: 1,
        ..opts(az.env())
    };
    let e = upload::upload(&p, &url, UploadOptions { ..managed() }, progress)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "upload.cancelled", "{e}");
    let during = footer_during.lock().unwrap().clone();
    assert_eq!(during.len(), 512, "the probe did not run");
    assert!(
        during.iter().all(|&b| b == 0),
        "old footer while data was sent"
    );
    assert!(
        read_footer().await.iter().all(|&b| b == 0),
        "old footer after the interruption"
    );
    // The resume completes it (q's data where p is zero was cleared by the first run).
    upload::upload(
        &p,
        &url,
        UploadOptions {
            resume: true,
            ..managed()
        },
        Arc::new(Counter::default()),
    )
    .await
    .unwrap();
    let (bytes, _) = az.download("reused", "w.vhd").await;
    assert_stream(&bytes, &expected_disk_area(&p));
    // Issue 7 item 12: q over p again clears p's data where q is zero, and says so in the
    // summary the CLI prints with --json.
    let done = upload::upload(&q, &url, managed(), Arc::new(Counter::default()))
        .await
        .unwrap();
    assert!(done.stale_ranges_cleared > 0, "{done:?}");
    let json = serde_json::to_value(&done).unwrap();
    assert_eq!(json["stale_ranges_cleared"], done.stale_ranges_cleared);
    let (bytes, _) = az.download("reused", "w.vhd").await;
    assert_stream(&bytes, &expected_disk_area(&q));
}

/// Issue 7 item 10: a journal that cannot be written is found before the blob is created
/// (before, the blob was created empty and the rerun got 409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_journal_stops_before_the_destination() {
    let az = container("nojournal").await;
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = two_images(dir.path(), 32 * MIB);
    let url = az.blob_url("nojournal", "z.vhd");
    let e = upload::upload(
        &p,
        &url,
        UploadOptions {
            state_dir: Some(dir.path().join("missing")),
            ..opts(az.env())
        },
        Arc::new(Counter::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.journal", "{e}");
    let r = az.signed("HEAD", "/nojournal/z.vhd", &[], &[]).await;
    assert_eq!(r.status().as_u16(), 404, "the blob was created");
    // The same command with a writable state directory then works without --overwrite.
    upload::upload(
        &p,
        &url,
        UploadOptions {
            state_dir: Some(dir.path().to_path_buf()),
            ..opts(az.env())
        },
        Arc::new(Counter::default()),
    )
    .await
    .unwrap();
}

/// Issue 7 item 10: a 250-byte source name (the journal's name used to exceed 255 bytes),
/// interrupted and resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_source_name_uploads_and_resumes() {
    let az = container("longname").await;
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{}.raw", "n".repeat(246));
    assert_eq!(name.len(), 250);
    let regions: Vec<(u64, usize)> = (0..8).map(|i| (i * 3 * MIB, 1_000_000)).collect();
    let src = sparse_image(dir.path(), &name, 24 * MIB, &regions);
    let url = az.blob_url("longname", "l.vhd");
    let cancel = Cancel::new();
    let c = Arc::new(Counter {
        cancel_after: 2,
        cancel: Some(cancel.clone()),
        ..Counter::default()
    });
    let e = upload::upload(
        &src,
        &url,
        UploadOptions {
            concurrency: 1,
            ..opts(az.env())
        },
        c,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.cancelled", "{e}");
    let jpath = journal::path_for(&src, &url, None);
    assert!(jpath.exists() && jpath.file_name().unwrap().len() < 200);
    let done = upload::upload(
        &src,
        &url,
        UploadOptions {
            resume: true,
            ..opts(az.env())
        },
        Arc::new(Counter::default()),
    )
    .await
    .unwrap();
    assert!(done.bytes_already_present > 0);
    let (bytes, _) = az.download("longname", "l.vhd").await;
    assert_stream(&bytes, &expected_disk_area(&src));
}

/// Issue 7 item 12: the 8 TiB page-blob limit is checked before planning. The upload is
/// cancelled before it starts: planning would report the cancel, so the size refusal proves
/// the check came first (before, a dense image was read in full before the refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_blob_limit_is_checked_before_planning() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("huge.raw");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len((8 << 40) + MIB).unwrap();
    drop(f);
    let e = upload::upload(
        &src,
        "http://127.0.0.1:9/devstoreaccount1/c/huge.vhd?sv=2021-08-06&sig=x",
        UploadOptions::default(),
        Arc::new(Counter {
            cancel: Some({
                let c = Cancel::new();
                c.cancel();
                c
            }),
            ..Counter::default()
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.too_large", "{e}");
}

/// Detaches a loop device when dropped (also when the test fails).
struct LoopDevice(String);

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

/// Issue 7 item 2: a block device's node keeps size 0 and its times while the file behind
/// it changes, so `--resume` from a device is refused up front, before the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_refuses_a_block_device_source() {
    let az = container("device").await;
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = two_images(dir.path(), 32 * MIB);
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&p)
        .output()
        .expect("losetup is required for this test (util-linux, run as root)");
    assert!(
        out.status.success(),
        "losetup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = LoopDevice(String::from_utf8(out.stdout).unwrap().trim().to_string());
    let url = az.blob_url("device", "d.vhd");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let cancel = Cancel::new();
    let c = Arc::new(Counter {
        cancel_after: 2,
        cancel: Some(cancel.clone()),
        ..Counter::default()
    });
    let with = |o: UploadOptions| UploadOptions {
        state_dir: Some(state.clone()),
        concurrency: 1,
        ..o
    };
    let e = upload::upload(
        std::path::Path::new(&dev.0),
        &url,
        with(UploadOptions { ..opts(az.env()) }),
        c,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.cancelled", "{e}");
    // Change 8 MiB behind the device.
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.seek(std::io::SeekFrom::Start(MIB)).unwrap();
        f.write_all(&noise(99, 8 * MIB as usize)).unwrap();
        f.sync_all().unwrap();
    }
    let e = upload::upload(
        std::path::Path::new(&dev.0),
        &url,
        with(UploadOptions {
            resume: true,
            ..opts(az.env())
        }),
        Arc::new(Counter::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.resume", "{e}");
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

/// Records every note an upload makes (what `--resume` says it re-checked).
#[derive(Default)]
struct Notes(Mutex<Vec<String>>);

impl Progress for Notes {
    fn note(&self, msg: &str) {
        self.0.lock().unwrap().push(msg.to_string());
    }
}

/// Interrupt an upload of `src` to `url` after its first completed request.
async fn interrupt_after_first_request(src: &std::path::Path, url: &str, managed: bool) {
    let cancel = Cancel::new();
    let first = Arc::new(Counter {
        cancel_after: 1,
        cancel: Some(cancel.clone()),
        ..Counter::default()
    });
    let e = upload::upload(
        src,
        url,
        UploadOptions {
            concurrency: 1,
            managed_disk: managed,
            ..opts(azurite().env())
        },
        first,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.cancelled", "{e}");
    let j = journal::load(&journal::path_for(src, url, None), None)
        .unwrap()
        .unwrap();
    assert!(!j.done.is_empty(), "the journal must hold completed ranges");
    assert!(
        j.clean_stop_etag.is_some(),
        "a cancelled upload records the blob's ETag"
    );
}

/// Two 32 MiB images with data over the same pages (a full 4 MiB request at 0, 2 MiB at
/// 8 MiB) but different bytes: writing q over p leaves every page p wrote listed, so only
/// reading the data back tells them apart.
fn overlapping_images(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let size = 32 * MIB;
    let (a, b) = ((0, 4 * MIB as usize), (8 * MIB, 2 * MIB as usize));
    (
        sparse_image(dir, "p.raw", size, &[a, b]),
        // Other seeds (the region index is part of the seed): other bytes, same pages.
        sparse_image(dir, "q.raw", size, &[(size, 0), b, a]),
    )
}

/// Resume `src` to `url`; returns the summary and the notes.
async fn resume_upload(
    src: &std::path::Path,
    url: &str,
    managed: bool,
) -> (upload::UploadSummary, Vec<String>) {
    let notes = Arc::new(Notes::default());
    let s = upload::upload(
        src,
        url,
        UploadOptions {
            resume: true,
            managed_disk: managed,
            ..opts(azurite().env())
        },
        notes.clone(),
    )
    .await
    .unwrap();
    let n = notes.0.lock().unwrap().clone();
    (s, n)
}

/// Red team of issue 7, finding 1: a managed disk (a pre-created page blob written with
/// `--managed-disk`) keeps its creation time whatever is written to it. p is interrupted,
/// q is uploaded over the same disk to the end, then `--resume p` used to say "already
/// there" for p's first request and leave q's bytes at byte 0. The ETag moved, so the done
/// ranges are read back: they differ, are sent again, and the disk holds p exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_disk_resume_rechecks_a_disk_overwritten_meanwhile() {
    let az = container("mdisk").await;
    let dir = tempfile::tempdir().unwrap();
    let (p, q) = overlapping_images(dir.path());
    let url = az.blob_url("mdisk", "w.vhd");
    let size = (32 * MIB + 512).to_string();
    let r = az
        .signed(
            "PUT",
            "/mdisk/w.vhd",
            &[],
            &[
                ("x-ms-blob-type", "PageBlob"),
                ("x-ms-blob-content-length", &size),
            ],
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    interrupt_after_first_request(&p, &url, true).await;
    upload::upload(
        &q,
        &url,
        UploadOptions {
            managed_disk: true,
            ..opts(az.env())
        },
        Arc::new(Counter::default()),
    )
    .await
    .unwrap();
    let (summary, notes) = resume_upload(&p, &url, true).await;
    let (bytes, _) = az.download("mdisk", "w.vhd").await;
    assert_stream(&bytes, &expected_disk_area(&p));
    assert!(
        notes
            .iter()
            .any(|n| n.contains("ETag changed") && n.contains("will be sent again")),
        "{notes:?}"
    );
    // p's first request differed (q's data is there), so nothing of it counts as present.
    assert_eq!(summary.bytes_already_present, 0, "{summary:?}");
    let r = upload::verify(&p, &url, verify_opts(az.env(), true))
        .await
        .unwrap();
    assert!(r.identical, "{:?}", r.differences);
}

/// Red team of issue 7, finding 2: foreign writes inside the done ranges of a page blob
/// (same blob, same sequence number): a Put Page of other data over them, or Clear Pages
/// punching a hole in them. Either moves the ETag, so `--resume` reads the done ranges back
/// and sends again what differs; the blob ends up holding the source exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_blob_resume_rechecks_foreign_writes_in_done_ranges() {
    let az = container("foreignpages").await;
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = overlapping_images(dir.path());
    for (blob, clear) in [("put.vhd", false), ("clear.vhd", true)] {
        let url = az.blob_url("foreignpages", blob);
        interrupt_after_first_request(&p, &url, false).await;
        let other = vhdforge_core::storage::BlobClient::new(
            &url,
            &az.env(),
            vhdforge_core::upload::DEFAULT_API_VERSION,
            1,
        )
        .unwrap();
        let (range, body) = if clear {
            (MIB..2 * MIB, None)
        } else {
            (0..4 * MIB, Some(noise(99, 4 * MIB as usize).into()))
        };
        other
            .put_page_if_sequence(range, body, None, None, Duration::from_secs(60))
            .await
            .unwrap();
        let (summary, notes) = resume_upload(&p, &url, false).await;
        let (bytes, _) = az.download("foreignpages", blob).await;
        assert_stream(&bytes, &expected_disk_area(&p));
        assert!(
            notes.iter().any(|n| n.contains("ETag changed")
                && n.contains("re-checked")
                && !n.contains(", 0 B differed")),
            "{blob}: {notes:?}"
        );
        assert_eq!(summary.bytes_already_present, 0, "{blob}: {summary:?}");
    }
}

/// Writes other data over the first MiB of the blob from inside the upload (a foreign
/// writer racing it), then asks the upload to stop.
struct ForeignWriteThenStop {
    url: String,
    env: CredentialEnv,
    cancel: Cancel,
}

impl Progress for ForeignWriteThenStop {
    fn advance(&self, _bytes: u64) {
        let (url, env) = (self.url.clone(), self.env.clone());
        // A runtime of its own on another thread: this callback is synchronous.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let other = vhdforge_core::storage::BlobClient::new(
                    &url,
                    &env,
                    vhdforge_core::upload::DEFAULT_API_VERSION,
                    1,
                )
                .unwrap();
                other
                    .put_page_if_sequence(
                        0..MIB,
                        Some(noise(7, MIB as usize).into()),
                        None,
                        None,
                        Duration::from_secs(60),
                    )
                    .await
                    .unwrap();
            });
        })
        .join()
        .unwrap();
        self.cancel.cancel();
    }
    fn cancel(&self) -> Cancel {
        self.cancel.clone()
    }
}

/// Second red-team pass of issue 7: a foreign write made *while* the upload runs is in
/// the blob before the clean stop reads its ETag, so that ETag matches on `--resume` and
/// used to let the done ranges be skipped with the foreign bytes in them (exit 0). The done
/// ranges are now always read back: the first MiB differs and is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_rechecks_a_foreign_write_made_during_the_upload() {
    let az = container("duringrun").await;
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = overlapping_images(dir.path());
    let url = az.blob_url("duringrun", "p.vhd");
    let racer = Arc::new(ForeignWriteThenStop {
        url: url.clone(),
        env: az.env(),
        cancel: Cancel::new(),
    });
    let e = upload::upload(
        &p,
        &url,
        UploadOptions {
            concurrency: 1,
            ..opts(az.env())
        },
        racer,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.cancelled", "{e}");
    let (summary, notes) = resume_upload(&p, &url, false).await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("re-checked") && !n.contains(", 0 B differed")),
        "{notes:?}"
    );
    assert_eq!(summary.bytes_already_present, 0, "{summary:?}");
    let (bytes, _) = az.download("duringrun", "p.vhd").await;
    assert_stream(&bytes, &expected_disk_area(&p));
}
