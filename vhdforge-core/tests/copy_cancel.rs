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
