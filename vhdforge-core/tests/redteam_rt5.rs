//! Red-team RT5 (issue 16's mapped upload reads), against a real Azurite
//! (scripts/azurite.sh install): a source truncated to nothing and grown back to its old
//! length mid-upload keeps its size, so neither the `SIGBUS` guard (the pages exist again,
//! as zeros) nor the length check sees it; the upload must still not end in a valid VHD that
//! is half the old disk and half zeros. Nor may a hole punched into it (`fallocate -p`),
//! and a failed upload leaves no mapping of its source behind. A VHDX cut short under its
//! mapped payload fails with `upload.source_changed` and no footer (held; kept as a test).

mod upload_common;

use std::sync::OnceLock;
use std::time::Duration;
use upload_common::*;
use vhdforge_core::upload::{self, RetryPolicy, UploadOptions};

const MIB: u64 = 1 << 20;

fn azurite() -> &'static Azurite {
    static AZ: OnceLock<Azurite> = OnceLock::new();
    AZ.get_or_init(Azurite::start)
}

/// Truncate the source to 0 and grow it back to `size` (same length, contents now zeros, as
/// `cp --sparse` over it or a VM manager recreating the file would leave it for a moment);
/// with `punch`, punch a hole over everything past the first MiB instead (`fallocate -p`:
/// same length, zeros read back, no signal on local file systems).
fn regrow(path: &std::path::Path, size: u64, punch: bool) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    if punch {
        use std::os::unix::io::AsRawFd;
        let len = i64::try_from(size - MIB).unwrap();
        // SAFETY: fallocate on a descriptor we hold, no pointers.
        let r = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                1 << 20,
                len,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    } else {
        f.set_len(0).unwrap();
        f.set_len(size).unwrap();
    }
}

/// Lines of /proc/self/maps that map `name`: none may outlive an upload.
fn mappings_of(name: &str) -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains(name))
        .count()
}

async fn regrow_mid_upload(az: &Azurite, blob_name: &str, map: bool, punch: bool) {
    let dir = tempfile::tempdir().unwrap();
    let size = 48 * MIB as usize;
    let src = dir.path().join(format!("regrow-{blob_name}.raw"));
    std::fs::write(&src, noise(7, size)).unwrap();
    let url = az.blob_url("regrow", blob_name);
    let o = UploadOptions {
        credentials: az.env(),
        concurrency: 1,
        map_source: map,
        journal_interval: Duration::ZERO,
        retry: RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
        ..UploadOptions::default()
    };
    let progress = {
        let src = src.clone();
        SourceHook::new(When::FirstPiece, move || regrow(&src, size as u64, punch))
    };
    let res = tokio::time::timeout(
        Duration::from_secs(120),
        upload::upload(&src, &url, o, progress.clone()),
    )
    .await
    .expect("the upload ends in bounded time");
    assert!(progress.fired(), "the regrow happened");
    let e = res.expect_err("a source rewritten under the upload must not be reported uploaded");
    assert_eq!(e.code(), "upload.source_changed", "map {map}: {e}");
    assert!(
        e.to_string().contains("re-run after nothing writes to it"),
        "{e}"
    );
    // No footer: the blob is not a valid VHD anyone could attach.
    let (blob, _) = az.download("regrow", blob_name).await;
    assert!(
        blob[size..].iter().all(|&b| b == 0),
        "map {map}: a footer was written over a half-old, half-zero disk"
    );
    // The failed upload let go of every mapping of its source (in-flight bodies included).
    let name = format!("regrow-{blob_name}.raw");
    let t = std::time::Instant::now();
    while mappings_of(&name) > 0 && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mappings_of(&name), 0, "map {map}: mappings leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_truncated_and_regrown_mid_upload_is_not_reported_uploaded() {
    let az = azurite();
    az.create_container("regrow").await;
    regrow_mid_upload(az, "mapped.vhd", true, false).await;
    regrow_mid_upload(az, "read.vhd", false, false).await;
    regrow_mid_upload(az, "punched.vhd", true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_written_into_a_planned_hole_before_the_send_is_not_silently_left_out() {
    let az = azurite();
    az.create_container("hole").await;
    for map in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        // 32 MiB with data only in its first MiB: the plan sends one piece.
        let src = sparse_image(dir.path(), "hole.raw", 32 * MIB, &[(0, MIB as usize)]);
        let blob_name = format!("hole-{map}.vhd");
        let url = az.blob_url("hole", &blob_name);
        let o = UploadOptions {
            credentials: az.env(),
            map_source: map,
            ..UploadOptions::default()
        };
        // Noise into what was a hole of the source once the plan is made, before the
        // first piece is read.
        let hole = src.clone();
        let progress = SourceHook::new(When::Planned, move || {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&hole).unwrap();
            f.write_all_at(&noise(99, MIB as usize), 8 * MIB).unwrap();
        });
        let res = tokio::time::timeout(
            Duration::from_secs(120),
            upload::upload(&src, &url, o, progress.clone()),
        )
        .await
        .expect("the upload ends in bounded time");
        assert!(progress.fired(), "the write happened: {res:?}");
        let e = res.expect_err("an upload missing data the source holds must not succeed");
        assert_eq!(e.code(), "upload.source_changed", "map {map}: {e}");
        let (blob, _) = az.download("hole", &blob_name).await;
        assert!(
            blob[32 * MIB as usize..].iter().all(|&b| b == 0),
            "map {map}: no footer"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vhdx_cut_short_under_its_mapped_payload_fails_cleanly() {
    let az = azurite();
    az.create_container("vhdxcut").await;
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("n.raw");
    std::fs::write(&raw, noise(3, 48 * MIB as usize)).unwrap();
    let src = dir.path().join("n.vhdx");
    // qemu-img is a test prerequisite: missing, this fails.
    let out = std::process::Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vhdx",
            "-o",
            "subformat=dynamic",
        ])
        .arg(&raw)
        .arg(&src)
        .output()
        .expect("qemu-img (scripts/setup.sh installs it)");
    assert!(out.status.success(), "{out:?}");
    let size = std::fs::metadata(&src).unwrap().len();
    for (name, to) in [("early", 6 * MIB), ("late", size - 8 * MIB)] {
        let url = az.blob_url("vhdxcut", &format!("{name}.vhd"));
        let work = dir.path().join(format!("{name}.vhdx"));
        std::fs::copy(&src, &work).unwrap();
        let o = UploadOptions {
            credentials: az.env(),
            concurrency: 1,
            map_source: true,
            journal_interval: Duration::ZERO,
            ..UploadOptions::default()
        };
        let progress = {
            let work = work.clone();
            SourceHook::new(When::FirstPiece, move || cut(&work, to))
        };
        let res = tokio::time::timeout(
            Duration::from_secs(120),
            upload::upload(&work, &url, o, progress.clone()),
        )
        .await
        .expect("bounded");
        assert!(progress.fired(), "{name}: cut: {res:?}");
        let e = res.expect_err("a VHDX cut short under the upload must not be uploaded");
        assert_eq!(e.code(), "upload.source_changed", "{name}: {e}");
        let (blob, _) = az.download("vhdxcut", &format!("{name}.vhd")).await;
        assert!(
            blob[48 * MIB as usize..].iter().all(|&b| b == 0),
            "{name}: no footer"
        );
    }
}
