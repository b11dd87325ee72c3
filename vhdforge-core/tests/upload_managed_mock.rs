//! Managed-disk upload against a loopback mock that enforces the rules of an `md-*`
//! upload SAS (docs/azure-page-blob.md §2): the blob exists at the exact size, Put Blob and
//! property writes are forbidden, Put Pages must be aligned, ≤ 4 MiB and inside the blob.
//! The mock also pages Get Page Ranges (two ranges per answer) so the marker loop runs.

mod managed_double;
mod upload_common;

use managed_double::*;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use upload_common::*;
use vhdforge_core::upload::{
    self, Cancel, CredentialEnv, NoProgress, Progress, RetryPolicy, UploadOptions, VerifyOptions,
};

const MIB: u64 = 1 << 20;

fn opts() -> UploadOptions {
    UploadOptions {
        managed_disk: true,
        credentials: CredentialEnv::default(),
        ..UploadOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_disk_upload_follows_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_image(
        dir.path(),
        "d.raw",
        20 * MIB + 4096,
        &[(0, 65536), (5 * MIB, 3 * MIB as usize), (20 * MIB, 4096)],
    );
    let area = expected_disk_area(&src);
    let size = area.len() as u64 + 512;
    // A reused disk: stale data where the source is zero (must be cleared), and where it is not.
    let mut disk = Disk {
        data: vec![0u8; size as usize],
        ..Disk::default()
    };
    for r in [
        MIB..MIB + 4096,
        2 * MIB..2 * MIB + 512,
        12 * MIB..13 * MIB,
        5 * MIB..5 * MIB + 512,
    ] {
        disk.data[r.start as usize..r.end as usize].fill(0xee);
        add_range(&mut disk.written, r);
    }
    let disk = Arc::new(Mutex::new(disk));
    let port = mock(disk.clone()).await;
    let s = upload::upload(&src, &url(port), opts(), Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(s.managed_disk);
    assert!(s.destination.contains("sig=REDACTED"), "{}", s.destination);
    {
        let d = disk.lock().unwrap();
        assert!(d.violations.is_empty(), "{:?}", d.violations);
        assert_eq!(
            d.clears, 3,
            "the three stale ranges outside the source's data are cleared"
        );
        assert!(
            d.marker_requests > 0,
            "the page-range marker loop did not run"
        );
        assert_stream(&d.data, &area);
        eprintln!(
            "managed disk: {} Put Pages, {} bytes sent, {} clears",
            d.put_pages, s.bytes_sent, d.clears
        );
    }
    let r = upload::verify(
        &src,
        &url(port),
        VerifyOptions {
            full: true,
            credentials: CredentialEnv::default(),
            ..VerifyOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(r.identical, "{:?}", r.differences);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_disk_size_mismatch_and_md5_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_image(dir.path(), "d.raw", 21 * MIB, &[(0, 4096)]);
    // The disk was created for a 20 MiB image.
    let disk = Arc::new(Mutex::new(Disk {
        data: vec![0u8; (20 * MIB + 512) as usize],
        ..Disk::default()
    }));
    let port = mock(disk.clone()).await;
    let e = upload::upload(&src, &url(port), opts(), Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "upload.size_mismatch", "{e}");
    assert!(
        e.to_string()
            .contains(&format!("--upload-size-bytes {}", 21 * MIB + 512)),
        "{e}"
    );
    assert!(!e.to_string().contains("c2VjcmV0U0lH"), "{e}");
    let e = upload::upload(
        &src,
        &url(port),
        UploadOptions {
            content_md5: true,
            ..opts()
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.managed_disk", "{e}");
    let d = disk.lock().unwrap();
    assert!(
        d.violations.is_empty() && d.put_pages == 0,
        "{:?}",
        d.violations
    );
}

/// Sets `cancel` once `after` requests completed.
struct CancelAfter {
    after: u64,
    done: AtomicU64,
    cancel: Cancel,
}

impl Progress for CancelAfter {
    fn cancel(&self) -> Cancel {
        self.cancel.clone()
    }
    fn advance(&self, _bytes: u64) {
        if self.done.fetch_add(1, Ordering::SeqCst) + 1 >= self.after {
            self.cancel.cancel();
        }
    }
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    }
}

/// The regression for resume on a reused disk: every page of the disk is listed (data of
/// an earlier, different source), the first run was interrupted after two requests. The
/// resumed run must send everything the journal does not prove was sent, not skip what
/// the page list shows; the result is the source exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_a_reused_disk_sends_what_the_journal_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let regions: Vec<(u64, usize)> = (0..10).map(|i| (i * 2 * MIB + 4096, 300_000)).collect();
    let src = sparse_image(dir.path(), "d.raw", 20 * MIB, &regions);
    let area = expected_disk_area(&src);
    let size = area.len() as u64 + 512;
    for (trial, lose_journal) in [(0, false), (1, true)] {
        // Every page holds the earlier source's 0xee and is listed.
        let mut disk = Disk {
            data: vec![0xee; size as usize],
            ..Disk::default()
        };
        add_range(&mut disk.written, 0..size);
        let disk = Arc::new(Mutex::new(disk));
        let port = mock(disk.clone()).await;
        let cancel = Cancel::new();
        let progress = Arc::new(CancelAfter {
            after: 2,
            done: AtomicU64::new(0),
            cancel: cancel.clone(),
        });
        let e = upload::upload(
            &src,
            &url(port),
            UploadOptions {
                concurrency: 2,
                ..opts()
            },
            progress,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), "upload.cancelled", "trial {trial}: {e}");
        let puts_before = disk.lock().unwrap().put_pages;
        if lose_journal {
            // A crash before any journal write: nothing proves what was sent.
            let p = upload::journal::path_for(&src, &url(port), None);
            let mut j = upload::journal::load(&p, None).unwrap().unwrap();
            j.done.clear();
            upload::journal::store(&p, &j).unwrap();
        }
        let s = upload::upload(
            &src,
            &url(port),
            UploadOptions {
                resume: true,
                ..opts()
            },
            Arc::new(NoProgress),
        )
        .await
        .unwrap_or_else(|e| panic!("trial {trial}: {e}"));
        let d = disk.lock().unwrap();
        assert!(d.violations.is_empty(), "{:?}", d.violations);
        assert_stream(&d.data, &area);
        let puts_resumed = d.put_pages - puts_before;
        // 10 data requests and the footer; the journal proves at most what completed
        // before the cancel (≥ 2, ≤ 2 + the 2 in flight).
        if lose_journal {
            assert_eq!(s.bytes_already_present, 0, "trial {trial}");
            assert_eq!(puts_resumed, 11, "trial {trial}");
        } else {
            assert!(
                (7..=9).contains(&puts_resumed),
                "trial {trial}: {puts_resumed} Put Pages on resume"
            );
            assert!(s.bytes_already_present >= 2 * 300_000, "trial {trial}");
        }
    }
}

/// A 3xx is never followed (the SAS must not travel to the Location): the upload stops
/// with `upload.redirect`, naming where it pointed, and the other host hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_image(dir.path(), "d.raw", 20 * MIB, &[(0, 4096)]);
    // The host a redirect points to: counts connections.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_port = elsewhere.local_addr().unwrap().port();
    let reached = Arc::new(AtomicU64::new(0));
    {
        let reached = reached.clone();
        tokio::spawn(async move {
            while elsewhere.accept().await.is_ok() {
                reached.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (rd, mut wr) = sock.into_split();
                let mut rd = BufReader::new(rd);
                while let Some(req) = read_request(&mut rd).await {
                    let to = format!("http://localhost:{other_port}{}", req.target);
                    let resp = response(307, "Temporary Redirect", &[("location", to)], b"");
                    if wr.write_all(&resp).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    for managed in [true, false] {
        let e = upload::upload(
            &src,
            &url(port),
            UploadOptions {
                managed_disk: managed,
                ..opts()
            },
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), "upload.redirect", "{e}");
        let text = e.to_string();
        assert!(
            text.contains("HTTP 307") && text.contains("to http://localhost"),
            "{text}"
        );
        assert!(!text.contains("c2VjcmV0U0lH"), "{text}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(reached.load(Ordering::SeqCst), 0, "a redirect was followed");
}

/// The hint after a failure depends on whether a journal exists: a blob that could never be
/// created leaves none (--resume would be refused); a failure while sending leaves one,
/// and --resume then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_hint_matches_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_image(dir.path(), "d.raw", 20 * MIB, &[(0, 4096), (5 * MIB, 4096)]);
    let journals = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".vhdforge-upload-")
            })
            .count()
    };
    // Nobody listens: creating the blob fails after all retries, nothing was sent.
    let dead = url(free_port());
    let e = upload::upload(
        &src,
        &dead,
        UploadOptions {
            managed_disk: false,
            retry: quick_retries(),
            ..opts()
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.transport", "{e}");
    assert!(e.to_string().contains("without --resume"), "{e}");
    assert!(!e.to_string().contains("with --resume"), "{e}");
    assert_eq!(journals(), 0);
    let e = upload::upload(
        &src,
        &dead,
        UploadOptions {
            resume: true,
            ..opts()
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.resume", "{e}");

    // The service fails every Put Page: the journal exists and the hint says --resume.
    let area = expected_disk_area(&src);
    let disk = Arc::new(Mutex::new(Disk {
        data: vec![0u8; area.len() + 512],
        fail_puts: true,
        ..Disk::default()
    }));
    let port = mock(disk.clone()).await;
    let e = upload::upload(
        &src,
        &url(port),
        UploadOptions {
            retry: quick_retries(),
            ..opts()
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "upload.http", "{e}");
    assert!(e.to_string().contains("with --resume"), "{e}");
    assert_eq!(journals(), 1);
    disk.lock().unwrap().fail_puts = false;
    upload::upload(
        &src,
        &url(port),
        UploadOptions {
            resume: true,
            ..opts()
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_stream(&disk.lock().unwrap().data, &area);
    assert_eq!(journals(), 0, "the journal is removed after success");
}
