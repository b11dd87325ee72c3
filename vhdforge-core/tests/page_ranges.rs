//! Get Page Ranges in `x-ms-range` segments and through continuation markers
//! (docs/azure-page-blob.md §1.1), against the managed-disk test double forced to page
//! (a few ranges per answer, adjacent ranges split, large segments timed out) and against
//! Azurite (which honours `x-ms-range` but never pages).

mod managed_double;
mod upload_common;

use bytes::Bytes;
use managed_double::*;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use upload_common::*;
use vhdforge_core::storage::{BlobClient, CredentialEnv, PageListLimits};

const MIB: u64 = 1 << 20;

fn limits(segment: u64, min_segment: u64) -> PageListLimits {
    PageListLimits {
        segment,
        min_segment,
        deadline: Duration::from_secs(60),
    }
}

/// A 40 MiB disk, fragmented: 300 single pages, a run of adjacent 4 MiB writes, and ranges
/// crossing every 8 MiB boundary.
fn fragmented_disk() -> (Disk, Vec<Range<u64>>) {
    let size = 40 * MIB + 512;
    let mut disk = Disk {
        data: vec![0u8; size as usize],
        ..Disk::default()
    };
    for i in 0..300u64 {
        let p = i * 64 * 1024 + 512 * (i % 7);
        add_range(&mut disk.written, p..p + 512);
    }
    for k in 1..5u64 {
        add_range(&mut disk.written, k * 8 * MIB - 4096..k * 8 * MIB + 8192);
    }
    for c in 0..3u64 {
        add_range(
            &mut disk.written,
            24 * MIB + c * 4 * MIB..24 * MIB + (c + 1) * 4 * MIB,
        );
    }
    add_range(&mut disk.written, size - 512..size);
    let want = disk.written.clone();
    (disk, want)
}

fn client(port: u16) -> BlobClient {
    BlobClient::new(&url(port), &CredentialEnv::default(), "2021-08-06", 1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_and_markers_list_a_fragmented_disk() {
    let (mut disk, want) = fragmented_disk();
    disk.page_size = 3;
    disk.split_ranges = true;
    let disk = Arc::new(Mutex::new(disk));
    let port = mock(disk.clone()).await;
    let got = client(port)
        .page_ranges_with(&limits(8 * MIB, MIB))
        .await
        .unwrap();
    // Split halves and ranges cut at segment edges come back merged, exactly the disk's.
    assert_eq!(got, want);
    let d = disk.lock().unwrap();
    assert!(
        d.marker_requests > 20,
        "{} marker requests",
        d.marker_requests
    );
    let mut segments: Vec<Range<u64>> = d.pagelist_segments.clone();
    segments.dedup();
    let size = d.data.len() as u64;
    let expected: Vec<Range<u64>> = (0..size.div_ceil(8 * MIB))
        .map(|i| i * 8 * MIB..((i + 1) * 8 * MIB).min(size))
        .collect();
    assert_eq!(segments, expected, "one x-ms-range segment after the other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_segment_is_listed_again_in_halves() {
    let (mut disk, want) = fragmented_disk();
    disk.page_size = 50;
    // The service's processing timeout for anything over 3 MiB at a time.
    disk.list_timeout_above = Some(3 * MIB);
    let disk = Arc::new(Mutex::new(disk));
    let port = mock(disk.clone()).await;
    let got = client(port)
        .page_ranges_with(&limits(16 * MIB, MIB))
        .await
        .unwrap();
    assert_eq!(got, want);
    let segs = disk.lock().unwrap().pagelist_segments.clone();
    assert_eq!(segs[0], 0..16 * MIB);
    assert!(
        segs.iter().skip(3).all(|s| s.end - s.start <= 2 * MIB),
        "halved to 2 MiB after 16 and 8 and 4 timed out: {segs:?}"
    );

    // Halving stops at the smallest segment: then the timeout is the error.
    let e = client(port)
        .page_ranges_with(&limits(16 * MIB, 4 * MIB))
        .await
        .unwrap_err();
    assert_eq!(e.summary(), "HTTP 500 OperationTimedOut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_has_a_deadline() {
    let (mut disk, _) = fragmented_disk();
    disk.page_size = 1;
    let disk = Arc::new(Mutex::new(disk));
    let port = mock(disk.clone()).await;
    let mut l = limits(8 * MIB, MIB);
    // Far shorter than the ~320 one-range answers take even on a quiet machine (loopback
    // answers come in ~0.1 ms each: 40 ms was once enough to finish); on a loaded one the
    // first request is cut short by the deadline, which must give the same error.
    l.deadline = Duration::from_millis(5);
    let e = client(port).page_ranges_with(&l).await.unwrap_err();
    let err = e.into_error("listing the page ranges of", "DEST");
    assert_eq!(err.code(), "upload.protocol");
    assert!(err.to_string().contains("not complete after"), "{err}");
    // Stopped early: far fewer requests than the ~320 a full listing takes.
    assert!(disk.lock().unwrap().pagelist_segments.len() < 300);
}

fn azurite() -> &'static Azurite {
    static AZ: OnceLock<Azurite> = OnceLock::new();
    AZ.get_or_init(Azurite::start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_segments_give_the_same_ranges() {
    let az = azurite();
    az.create_container("pagerng").await;
    let c = BlobClient::new(
        &az.blob_url("pagerng", "frag.vhd"),
        &az.env(),
        "2021-08-06",
        2,
    )
    .unwrap();
    let size = 12 * MIB + 512;
    c.create_page_blob(size, false).await.unwrap();
    let mut want: Vec<Range<u64>> = Vec::new();
    // Adjacent 1 MiB writes (Azurite lists them unmerged), single pages, and writes across
    // the 2 MiB segment edges.
    let mut writes: Vec<Range<u64>> = (0..4).map(|i| i * MIB..(i + 1) * MIB).collect();
    writes.extend((0..40u64).map(|i| 5 * MIB + i * 8192..5 * MIB + i * 8192 + 512));
    writes.extend((3..6u64).map(|k| k * 2 * MIB - 1024..k * 2 * MIB + 1024));
    writes.push(size - 512..size);
    for w in &writes {
        let body = Bytes::from(vec![7u8; (w.end - w.start) as usize]);
        c.put_page(w.start, body, None, Duration::from_secs(30))
            .await
            .unwrap();
        add_range(&mut want, w.clone());
    }
    let whole = c.page_ranges_with(&limits(1 << 40, 1 << 40)).await.unwrap();
    let segmented = c.page_ranges_with(&limits(2 * MIB, MIB)).await.unwrap();
    assert_eq!(whole, want);
    assert_eq!(segmented, want);
    assert_eq!(c.page_ranges().await.unwrap(), want);
}
