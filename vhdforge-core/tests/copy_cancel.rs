//! Ctrl-C during `copy` (issue 14): the first request done, the token set, no new piece
//! starts, and the error says what the destination holds and how to start again.

mod upload_common;

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use upload_common::*;
use vhdforge_core::copy::{self, CopyOptions, Via};
use vhdforge_core::progress::{Cancel, Progress};
use vhdforge_core::storage::BlobClient;

const MIB: u64 = 1 << 20;

/// Cancels as soon as the first piece is reported done.
struct CancelAfterFirst {
    cancel: Cancel,
    done: AtomicU64,
}

impl Progress for CancelAfterFirst {
    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::SeqCst);
        self.cancel.cancel();
    }
    fn cancel(&self) -> Cancel {
        self.cancel.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_a_client_copy_between_pieces() {
    let az = Azurite::start();
    az.create_container("cancel").await;
    let env = az.env();
    let src = BlobClient::new(&az.blob_url("cancel", "src.vhd"), &env, VERSION, 1).unwrap();
    src.create_page_blob(64 * MIB + 512, false).await.unwrap();
    // Eight separate 1 MiB runs: eight pieces.
    for i in 0..8u64 {
        let data = Bytes::from(noise(i, MIB as usize));
        src.put_page(i * 8 * MIB, data, None, std::time::Duration::from_secs(60))
            .await
            .unwrap();
    }
    let progress = CancelAfterFirst {
        cancel: Cancel::new(),
        done: AtomicU64::new(0),
    };
    let opts = CopyOptions {
        via: Via::Client,
        concurrency: 1,
        credentials: env.clone(),
        api_version: VERSION.into(),
        ..CopyOptions::default()
    };
    let e = copy::copy(
        &az.blob_url("cancel", "src.vhd"),
        &az.blob_url("cancel", "dst.vhd"),
        &opts,
        &progress,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "copy.cancelled", "{e}");
    assert!(e.to_string().contains("--overwrite"), "{e}");
    assert_eq!(
        progress.done.load(Ordering::SeqCst),
        MIB,
        "one piece, then stop"
    );
    let dst = BlobClient::new(&az.blob_url("cancel", "dst.vhd"), &env, VERSION, 1).unwrap();
    let ranges = dst.page_ranges().await.unwrap();
    assert_eq!(ranges.iter().map(|r| r.end - r.start).sum::<u64>(), MIB);
}

/// After a stop, `resume` writes only what is missing: the piece the first run wrote is
/// compared and kept, the others are sent, and the blobs end identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_stop_sends_only_the_missing_pieces() {
    let az = Azurite::start();
    az.create_container("resume").await;
    let env = az.env();
    let src_url = az.blob_url("resume", "src.vhd");
    let dst_url = az.blob_url("resume", "dst.vhd");
    let src = BlobClient::new(&src_url, &env, VERSION, 1).unwrap();
    src.create_page_blob(64 * MIB + 512, false).await.unwrap();
    for i in 0..8u64 {
        let data = Bytes::from(noise(100 + i, MIB as usize));
        src.put_page(i * 8 * MIB, data, None, std::time::Duration::from_secs(60))
            .await
            .unwrap();
    }
    let opts = CopyOptions {
        via: Via::Client,
        concurrency: 1,
        verify_full: true,
        credentials: env.clone(),
        api_version: VERSION.into(),
        ..CopyOptions::default()
    };
    let stop = CancelAfterFirst {
        cancel: Cancel::new(),
        done: AtomicU64::new(0),
    };
    let e = copy::copy(&src_url, &dst_url, &opts, &stop)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "copy.cancelled");
    // Without --resume the partial destination is not overwritten by accident.
    let again = copy::copy(
        &src_url,
        &dst_url,
        &opts,
        &vhdforge_core::progress::NoProgress,
    )
    .await
    .unwrap_err();
    assert_eq!(again.code(), "upload.exists");
    let resumed = CopyOptions {
        resume: true,
        ..opts.clone()
    };
    let r = copy::copy(
        &src_url,
        &dst_url,
        &resumed,
        &vhdforge_core::progress::NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(r.bytes_already_present, MIB);
    assert_eq!(r.requests, 7);
    assert!(r.ranges_equal);
    assert_eq!(r.identical, Some(true));
    // A piece changed in the destination since (someone else's write) is found by the
    // comparison and written again; the seven equal ones are not.
    let dst = BlobClient::new(&dst_url, &env, VERSION, 1).unwrap();
    dst.put_page(
        3 * 8 * MIB + 4096,
        Bytes::from(vec![0xEE; 512]),
        None,
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap();
    let r = copy::copy(
        &src_url,
        &dst_url,
        &resumed,
        &vhdforge_core::progress::NoProgress,
    )
    .await
    .unwrap();
    assert_eq!((r.requests, r.bytes_already_present), (1, 7 * MIB));
    assert_eq!(r.identical, Some(true));
}
