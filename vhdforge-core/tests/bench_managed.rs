//! `bench` against a managed disk, on the managed-disk test double (which refuses Put Blob,
//! property writes, sequence-number conditions and writes outside the disk): the disk's own
//! size is used or `--size` must match it, a disk holding data is refused untouched, and
//! every page the bench wrote is cleared again — after a sweep, after an interruption —
//! unless `--keep`.

mod managed_double;
mod upload_common;

use managed_double::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vhdforge_core::bench::{self, BenchOptions, Step};
use vhdforge_core::progress::Cancel;
use vhdforge_core::storage::RetryPolicy;

const MIB: u64 = 1 << 20;
/// The disk area the test disk was "created" for.
const AREA: u64 = 16 * MIB;

fn empty_disk() -> Arc<Mutex<Disk>> {
    Arc::new(Mutex::new(Disk {
        data: vec![0u8; (AREA + 512) as usize],
        ..Disk::default()
    }))
}

fn opts() -> BenchOptions {
    BenchOptions {
        managed_disk: true,
        data_fraction: 0.5,
        request_size: MIB,
        concurrency: vec![1, 4],
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
        },
        ..BenchOptions::default()
    }
}

fn no_steps(_: &Step) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_writes_an_empty_managed_disk_then_clears_it() {
    let disk = empty_disk();
    let port = mock(disk.clone()).await;
    let r = bench::run(&url(port), &opts(), &Cancel::new(), &no_steps)
        .await
        .unwrap();
    assert!(r.managed_disk);
    assert_eq!(r.size, AREA, "--size defaults to the disk's own");
    assert!(
        r.destination.contains("sig=REDACTED") && !r.destination.contains("c2VjcmV0U0lH"),
        "{}",
        r.destination
    );
    assert_eq!(r.steps.len(), 2);
    for s in &r.steps {
        // Half of the sixteen 1 MiB requests, then the footer page.
        assert_eq!(s.bytes, 8 * MIB + 512, "step {}", s.concurrency);
    }
    assert!(r.kept.is_empty());
    let d = disk.lock().unwrap();
    assert!(d.violations.is_empty(), "{:?}", d.violations);
    assert_eq!(
        d.put_pages,
        2 * 9,
        "each step writes 8 data pages and the footer"
    );
    assert!(
        d.written.is_empty(),
        "bench data left on the disk: {:?}",
        d.written
    );
    assert!(d.data.iter().all(|&b| b == 0));
    // Eight separate requests; the last touches the footer, so eight runs to clear.
    assert_eq!(d.clears, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_other_than_the_disks_is_refused_before_writing() {
    let disk = empty_disk();
    let port = mock(disk.clone()).await;
    let e = bench::run(
        &url(port),
        &BenchOptions {
            size: Some(8 * MIB),
            ..opts()
        },
        &Cancel::new(),
        &no_steps,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "bench.size_mismatch", "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("--size {AREA}")) && msg.contains(&(8 * MIB).to_string()),
        "{msg}"
    );
    assert!(!msg.contains("c2VjcmV0U0lH"), "{msg}");
    // The matching size is accepted.
    let r = bench::run(
        &url(port),
        &BenchOptions {
            size: Some(AREA),
            concurrency: vec![2],
            ..opts()
        },
        &Cancel::new(),
        &no_steps,
    )
    .await
    .unwrap();
    assert_eq!(r.size, AREA);
    let d = disk.lock().unwrap();
    assert_eq!(d.put_pages, 9, "only the second run wrote");
    assert!(d.written.is_empty() && d.violations.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_holding_data_is_refused_untouched() {
    let disk = empty_disk();
    {
        let mut d = disk.lock().unwrap();
        d.data[(3 * MIB) as usize..(3 * MIB + 4096) as usize].fill(0xab);
        add_range(&mut d.written, 3 * MIB..3 * MIB + 4096);
    }
    let before = disk.lock().unwrap().data.clone();
    let port = mock(disk.clone()).await;
    let e = bench::run(&url(port), &opts(), &Cancel::new(), &no_steps)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "bench.not_empty", "{e}");
    assert!(e.to_string().contains("4096 bytes"), "{e}");
    let d = disk.lock().unwrap();
    assert_eq!((d.put_pages, d.clears), (0, 0), "the disk was written");
    assert!(d.data == before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_bench_clears_the_disk_and_keep_leaves_it() {
    // Interrupted after the first step has filled the disk: the error says so, and the
    // pages are cleared all the same.
    let disk = empty_disk();
    let port = mock(disk.clone()).await;
    let cancel = Cancel::new();
    let c2 = cancel.clone();
    let stop = move |_: &Step| {
        c2.cancel();
    };
    let e = bench::run(&url(port), &opts(), &cancel, &stop)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "upload.cancelled", "{e}");
    assert!(
        e.to_string().contains("pages were cleared from the disk"),
        "{e}"
    );
    {
        let d = disk.lock().unwrap();
        assert_eq!(d.put_pages, 9, "only the first step ran");
        assert!(d.written.is_empty(), "{:?}", d.written);
        assert!(d.data.iter().all(|&b| b == 0));
    }

    // --keep: the pages stay, and the report names the disk.
    let r = bench::run(
        &url(port),
        &BenchOptions {
            keep: true,
            concurrency: vec![2],
            ..opts()
        },
        &Cancel::new(),
        &no_steps,
    )
    .await
    .unwrap();
    assert_eq!(r.kept, vec![r.destination.clone()]);
    let d = disk.lock().unwrap();
    let kept: u64 = d.written.iter().map(|r| r.end - r.start).sum();
    assert_eq!(kept, 8 * MIB + 512);
    // What stays is a valid fixed VHD footer last, not random bytes.
    assert_eq!(&d.data[AREA as usize..AREA as usize + 8], b"conectix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_ends_with_the_failure_and_nothing_left() {
    let disk = empty_disk();
    disk.lock().unwrap().fail_puts = true;
    let port = mock(disk.clone()).await;
    let e = bench::run(&url(port), &opts(), &Cancel::new(), &no_steps)
        .await
        .unwrap_err();
    // The service's answer is the cause; the clean-up ran (and found nothing to keep).
    assert!(e.to_string().contains("500"), "{e}");
    assert!(e.to_string().contains("pages were cleared"), "{e}");
    let d = disk.lock().unwrap();
    assert!(d.clears > 0 && d.written.is_empty());
}
