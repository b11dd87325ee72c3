//! Issue 16: an upload reads each data byte once. The plan comes from the allocation map
//! alone and the exact zero test runs as the send pipeline reads, so the bytes this process
//! reads through read calls (`rchar` in `/proc/self/io`) during an upload on the pread path
//! are about the source's data, not twice it; on the mapped path (the default for raw and
//! fixed sources) they are almost nothing. Against a real Azurite (scripts/azurite.sh
//! install).
//!
//! `rchar` is per process, so the tests of this binary run one at a time (a lock) and
//! nothing else reads while an upload is measured; socket reads of the service's answers
//! count too and are small.

mod upload_common;

use std::io::{Seek, SeekFrom, Write};
use std::sync::{Arc, OnceLock};
use upload_common::*;
use vhdforge_core::upload::{self, NoProgress, UploadOptions, VerifyOptions};

const MIB: u64 = 1 << 20;

fn azurite() -> &'static Azurite {
    static AZ: OnceLock<Azurite> = OnceLock::new();
    AZ.get_or_init(Azurite::start)
}

/// One measured upload at a time: `rchar` counts the whole process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Write `len` zero bytes at `off` as real data (allocated, so the allocation map shows
/// data there and only reading it shows it is zero).
fn write_zeros(path: &std::path::Path, off: u64, len: usize) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(&vec![0u8; len]).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_upload_reads_each_data_byte_once() {
    let _one = SERIAL.lock().await;
    let az = azurite();
    az.create_container("once").await;
    let dir = tempfile::tempdir().unwrap();
    // 96 MiB disk, 24 MiB of non-zero data in runs of various sizes and alignments (4 KiB
    // aligned, so the file system's map is exact), and 1 MiB written as zeros.
    let mut regions: Vec<(u64, usize)> = (0..4).map(|i| (i * 20 * MIB + 4096, 5 << 20)).collect();
    regions.extend((0..64).map(|i| (85 * MIB + i * 131_072, 65_536)));
    let src = sparse_image(dir.path(), "once.raw", 96 * MIB, &regions);
    write_zeros(&src, 94 * MIB, 1 << 20);
    let nonzero: u64 = regions.iter().map(|r| r.1 as u64).sum();
    let url = az.blob_url("once", "once.vhd");

    // On the pread path every byte read goes through a read call, so `rchar` counts each
    // read of the data: it must be about the data once. (Raw sources are mapped by default,
    // and mapped bytes never pass through a read call: see the end of this test.)
    let before = rchar();
    let pread = UploadOptions {
        map_source: false,
        ..quick_opts(az)
    };
    let s = upload::upload(&src, &url, pread, Arc::new(NoProgress))
        .await
        .unwrap();
    let read = rchar() - before;
    eprintln!(
        "read {read} bytes for {nonzero} bytes of non-zero data ({:.3}x); sent {} in {} requests",
        read as f64 / nonzero as f64,
        s.bytes_sent,
        s.requests
    );
    // Before issue 16 a planning pass read the data and the send pass read it again: 2x.
    assert!(
        read * 10 <= nonzero * 11,
        "read {read} bytes for {nonzero} bytes of data: more than 1.1x"
    );
    // Zero pages inside the allocated data were found as read, and not sent.
    assert!(s.bytes_sent < nonzero + MIB / 2, "{s:?}");
    assert_eq!(s.bytes_total, s.bytes_sent + s.bytes_skipped, "{s:?}");
    let (blob, _) = az.download("once", "once.vhd").await;
    assert_stream(&blob, &expected_disk_area(&src));
    // The page map holds exactly the plan verify expects (the streamed requests are the
    // exact plan's).
    let r = upload::verify(
        &src,
        &url,
        VerifyOptions {
            credentials: az.env(),
            ..VerifyOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(r.passed(), "{:?}", r.differences);

    // Mapped (the default): the data is not read through read calls at all, neither by a
    // planning pass nor by the send pass; only metadata and the service's answers are.
    let url = az.blob_url("once", "mapped.vhd");
    let before = rchar();
    upload::upload(&src, &url, quick_opts(az), Arc::new(NoProgress))
        .await
        .unwrap();
    let read = rchar() - before;
    eprintln!("mapped: read {read} bytes through read calls");
    assert!(read * 10 < nonzero, "mapped upload read {read} bytes");
    let (blob, _) = az.download("once", "mapped.vhd").await;
    assert_stream(&blob, &expected_disk_area(&src));
}

/// A reused destination (a managed disk, which is never recreated) holding data where the
/// new source's allocated pieces are zero: those pages are found zero only as the piece is
/// read, so the send pipeline must clear them (the up-front clearing sees only what lies
/// outside every piece).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_pages_inside_pieces_are_cleared_on_a_reused_destination() {
    let _one = SERIAL.lock().await;
    let az = azurite();
    az.create_container("reuse").await;
    let dir = tempfile::tempdir().unwrap();
    let size = 32 * MIB;
    let old = sparse_image(
        dir.path(),
        "old.raw",
        size,
        &[(MIB, 2 << 20), (8 * MIB, 4096)],
    );
    // The new source: data at 1 MiB only in its first half; the second half of that run
    // and the page at 8 MiB are allocated but zero.
    let new = sparse_image(dir.path(), "new.raw", size, &[(MIB, 1 << 20)]);
    write_zeros(&new, 2 * MIB, 1 << 20);
    write_zeros(&new, 8 * MIB, 4096);
    let url = az.blob_url("reuse", "disk.vhd");
    upload::upload(&old, &url, quick_opts(az), Arc::new(NoProgress))
        .await
        .unwrap();
    let s = upload::upload(
        &new,
        &url,
        UploadOptions {
            managed_disk: true,
            ..quick_opts(az)
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert!(s.stale_ranges_cleared >= 2, "{s:?}");
    let (blob, _) = az.download("reuse", "disk.vhd").await;
    assert_stream(&blob, &expected_disk_area(&new));
    let r = upload::verify(
        &new,
        &url,
        VerifyOptions {
            credentials: az.env(),
            full: true,
            ..VerifyOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(r.identical, "{:?}", r.differences);
}
