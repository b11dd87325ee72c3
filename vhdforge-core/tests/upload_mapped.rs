//! Issue 16: raw and fixed sources are read through guarded mappings (`docs/upload-io.md`).
//! Against a real Azurite (scripts/azurite.sh install):
//! - the blob is byte for byte the same with mappings on and off (raw and Azure-ready fixed
//!   VHD, odd sizes, padding past the source), and with them on the upload makes almost no
//!   read calls (`rchar`), which shows the mapped path really ran;
//! - a source cut short by another writer mid-upload fails the upload with
//!   `upload.source_changed`, the process survives the `SIGBUS`, and neither the journal nor
//!   the footer claims anything the blob does not hold.
//!
//! `rchar` is per process, so the tests of this binary run one at a time (a lock).

mod upload_common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use upload_common::*;
use vhdforge_core::upload::{self, NoProgress, UploadOptions};

const MIB: u64 = 1 << 20;

fn azurite() -> &'static Azurite {
    static AZ: OnceLock<Azurite> = OnceLock::new();
    AZ.get_or_init(Azurite::start)
}

/// One upload at a time: `rchar` counts the whole process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn opts(az: &Azurite, map_source: bool) -> UploadOptions {
    UploadOptions {
        map_source,
        ..quick_opts(az)
    }
}

/// A dense raw image of `size` bytes of noise (no zero byte) with a few zero stretches.
fn dense_image(dir: &Path, name: &str, size: usize) -> PathBuf {
    let mut data = noise(size as u64, size);
    // A zero page run inside a piece and a whole zero MiB: the zero test still skips them.
    data[3 * MIB as usize..3 * MIB as usize + 8192].fill(0);
    data[9 * MIB as usize..10 * MIB as usize].fill(0);
    let p = dir.join(name);
    std::fs::write(&p, &data).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_and_read_uploads_are_byte_identical() {
    let _one = SERIAL.lock().await;
    let az = azurite();
    az.create_container("mapped").await;
    let dir = tempfile::tempdir().unwrap();
    // (name, source, what the blob must be)
    let mut cases: Vec<(&str, PathBuf, Vec<u8>)> = Vec::new();
    // Odd size: the last piece runs into the padding (read, not mapped), the rest mapped.
    let odd = dense_image(dir.path(), "odd.raw", 21 * MIB as usize + 3 * 512 + 77);
    let mut area = expected_disk_area(&odd);
    area.extend_from_slice(&[0u8; 512]);
    cases.push(("odd raw", odd.clone(), area));
    // A whole number of MiB with holes (sparse: pieces only where the data is).
    let sparse = sparse_image(
        dir.path(),
        "sparse.raw",
        40 * MIB,
        &[
            (0, 4 << 20),
            (12 * MIB + 4096, 5 << 20),
            (39 * MIB, 1 << 20),
        ],
    );
    let mut area = expected_disk_area(&sparse);
    area.extend_from_slice(&[0u8; 512]);
    cases.push(("sparse raw", sparse, area));
    // An Azure-ready fixed VHD: sent as it is, its own footer included.
    let ready = azure_ready_vhd(&odd, dir.path(), "ready.vhd");
    let bytes = std::fs::read(&ready).unwrap();
    cases.push(("fixed vhd", ready, bytes));

    for (name, path, want) in &cases {
        // Bytes the allocation map shows as data: what a pread upload reads.
        let image = vhdforge_core::open(path, &Default::default()).unwrap();
        let data = vhdforge_core::image::allocated_bytes(image.as_ref()).unwrap();
        drop(image);
        let mut blobs = Vec::new();
        for map in [true, false] {
            let blob = format!("{}-{map}.vhd", name.replace(' ', "-"));
            let url = az.blob_url("mapped", &blob);
            let before = rchar();
            let report = upload::upload(path, &url, opts(az, map), Arc::new(NoProgress))
                .await
                .unwrap_or_else(|e| panic!("{name} map={map}: {e}"));
            // A wrong per-request CRC-64 is refused by Azurite and then fixed by the retry,
            // which reads and digests the range again: only the retry count shows it.
            assert_eq!(report.retries, 0, "{name} map={map}: requests were retried");
            let read = rchar() - before;
            eprintln!(
                "{name} map={map}: read {read} bytes through read calls for a {data}-byte source"
            );
            if map {
                // Mapped pieces make no read call; the metadata, the last piece of an odd
                // size and the service's answers are all that is read.
                assert!(read < data / 4, "{name}: mapped upload read {read} bytes");
            } else {
                assert!(
                    read * 10 >= data * 8,
                    "{name}: pread upload read {read} bytes"
                );
            }
            let (got, _) = az.download("mapped", &blob).await;
            blobs.push(got);
        }
        // The content: the raw cases' expected footer is not known in advance (a new unique
        // id), so compare the disk area and the footer separately.
        for (map, got) in [true, false].iter().zip(&blobs) {
            assert_eq!(got.len(), want.len(), "{name} map={map}: size");
            let area = want.len() - 512;
            if let Some(i) = got[..area]
                .iter()
                .zip(&want[..area])
                .position(|(a, b)| a != b)
            {
                panic!("{name} map={map}: blob differs from the source at byte {i}");
            }
        }
        if name.ends_with("vhd") {
            assert!(
                blobs[0] == *want && blobs[1] == *want,
                "{name}: byte for byte"
            );
        }
        assert_eq!(
            blobs[0][..want.len() - 512],
            blobs[1][..want.len() - 512],
            "{name}: mapped and read disk areas differ"
        );
    }
}

/// Upload a 96 MiB source that is cut to `cut_to` bytes once its first piece is journaled,
/// and check the failure and what the journal and the blob claim.
async fn cut_mid_upload(az: &Azurite, blob_name: &str, cut_to: u64, map: bool) {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let size = 96 * MIB as usize;
    let src = dir.path().join("cut.raw");
    let original = noise(cut_to, size);
    std::fs::write(&src, &original).unwrap();
    let url = az.blob_url("cut", blob_name);
    let mut o = opts(az, map);
    // One request at a time: the reader is only a few pieces ahead when the cut lands.
    o.concurrency = 1;
    o.state_dir = Some(state.path().to_path_buf());
    o.journal_interval = Duration::ZERO;
    // Cut from the upload's own thread as soon as the first piece is journaled: the reader
    // is a few pieces ahead, so pieces already scanned but not yet sent and pieces not yet
    // scanned both lose their bytes.
    let progress = {
        let src = src.clone();
        SourceHook::new(When::FirstPiece, move || cut(&src, cut_to))
    };
    let e = upload::upload(&src, &url, o, progress.clone())
        .await
        .expect_err("an upload whose source was cut short must fail");
    assert!(progress.fired(), "the cut happened");
    assert_eq!(e.code(), "upload.source_changed", "cut to {cut_to}: {e}");
    let text = e.to_string();
    assert!(
        text.contains("changed size while it was being read"),
        "{text}"
    );
    assert!(text.contains("re-run after nothing writes to it"), "{text}");

    // The journal claims only ranges the blob holds with the source's original bytes (a
    // --resume, were it allowed, would keep only true data), and nothing past the cut
    // that was read after it.
    let done = journaled(state.path());
    let (blob, _) = az.download("cut", blob_name).await;
    assert_eq!(blob.len(), size + 512);
    let claimed: u64 = done.iter().map(|(s, e)| e - s).sum();
    assert!(
        claimed > 0 && claimed < size as u64 * 3 / 4,
        "cut to {cut_to}: claimed {claimed}: {done:?}"
    );
    for &(s, e) in &done {
        let (s, e) = (s as usize, e as usize);
        assert!(
            blob[s..e] == original[s..e],
            "cut to {cut_to}: journaled range {s}..{e} does not hold the source's bytes"
        );
    }
    // Every byte the blob holds is the source's or was never written (noise has no zero
    // byte); and no footer: the blob is not a valid VHD.
    assert!(blob.iter().zip(&original).all(|(b, o)| b == o || *b == 0));
    assert!(
        blob[size..].iter().all(|&b| b == 0),
        "no footer was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_cut_short_mid_upload_fails_cleanly_and_claims_nothing_lost() {
    let _one = SERIAL.lock().await;
    let az = azurite();
    az.create_container("cut").await;
    // Cut inside what the reader already scanned: the queued requests' bytes are gone
    // when they are sent (the kernel's copy fails, no signal; the lengths tell).
    cut_mid_upload(az, "early.vhd", 6 * MIB, true).await;
    // Cut ahead of the reader: a piece mapped before the cut faults on the lost pages while
    // scanned (SIGBUS, zeros mapped in, the loss flag raised) and is not handed over; one
    // looked up after it is no longer one stored range, is read, and the read fails.
    cut_mid_upload(az, "ahead.vhd", 40 * MIB + 4096, true).await;
    // Read with pread: a read past the new end says the same, not just "end of file".
    cut_mid_upload(az, "read.vhd", 6 * MIB, false).await;
}
