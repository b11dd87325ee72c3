//! Red team rt8: a mapped page the kernel cannot bring in (commit b39e78b), raised by a real
//! failing read rather than by hand. Before the fix in `platform/mapped.rs` such a mapping
//! never came back from `mmap(MAP_POPULATE)`: the kernel retried the failing page for ever
//! (the upload spun at 100 % CPU). Now the fault raises `SIGBUS`, the guard raises the loss
//! flag, and the upload fails as an I/O error (`io`) with no footer and nothing false in
//! its journal.

mod upload_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use upload_common::*;
use vhdforge_core::upload::{self, UploadOptions};

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------
// A file whose pages fail to read while its length and times stay the same: a minimal FUSE
// file system served by this test (the kernel's FUSE protocol, spoken over /dev/fuse; no
// library). It holds one file, `disk.raw`; once `failing` is set, every READ of it answers
// EIO while GETATTR still answers the same length and times. A page of a mapping that the
// kernel has not brought in yet then raises SIGBUS: the exact case b39e78b classifies as
// an I/O error (its unit test only raised the flag by hand).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_STATFS: u32 = 17;
const FUSE_RELEASE: u32 = 18;
const FUSE_FLUSH: u32 = 25;
const FUSE_INIT: u32 = 26;
const FUSE_OPENDIR: u32 = 27;
const FUSE_RELEASEDIR: u32 = 29;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_BATCH_FORGET: u32 = 42;
const FILE_NODE: u64 = 2;
/// The file's times, fixed: nothing ever writes to it.
const FILE_TIME: u64 = 1_700_000_000;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// `struct fuse_attr` (88 bytes) of the root directory (node 1) or the file.
fn fuse_attr(node: u64, size: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(88);
    let (mode, nlink, size) = if node == 1 {
        (0o040_755u32, 2u32, 0)
    } else {
        (0o100_444, 1, size)
    };
    for v in [
        node,
        size,
        size.div_ceil(512),
        FILE_TIME,
        FILE_TIME,
        FILE_TIME,
    ] {
        a.extend_from_slice(&v.to_le_bytes());
    }
    // atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags
    for v in [0u32, 0, 0, mode, nlink, 0, 0, 0, 4096, 0] {
        a.extend_from_slice(&v.to_le_bytes());
    }
    a
}

/// A FUSE file system with one file, mounted on a temporary directory; unmounted on drop.
struct FailingFs {
    dir: tempfile::TempDir,
    /// The mount's device number: its FUSE connection is `/sys/fs/fuse/connections/MINOR`.
    dev: Option<libc::dev_t>,
    failing: Arc<AtomicBool>,
    /// Once set, `stat` of the file fails too (EIO), as on a file system that shut down.
    dead: Arc<AtomicBool>,
    /// When set, the first failing read also sets `dead`: the file system dies while a
    /// piece is mapped (its extents were looked up, its pages not yet read).
    die_on_read: Arc<AtomicBool>,
    reads_failed: Arc<std::sync::atomic::AtomicU64>,
}

impl FailingFs {
    fn mount(content: Arc<Vec<u8>>) -> FailingFs {
        let dir = tempfile::tempdir().unwrap();
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("/dev/fuse (this test needs FUSE, and root to mount it)");
        let target = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        let data = std::ffi::CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            dev.as_raw_fd()
        ))
        .unwrap();
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"rt8fuse".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount a FUSE file system (needs root): {}",
            std::io::Error::last_os_error()
        );
        let failing = Arc::new(AtomicBool::new(false));
        let dead = Arc::new(AtomicBool::new(false));
        let die_on_read = Arc::new(AtomicBool::new(false));
        let reads_failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        {
            let (failing, dead, die) = (failing.clone(), dead.clone(), die_on_read.clone());
            let reads_failed = reads_failed.clone();
            std::thread::spawn(move || {
                serve(dev, &content, &failing, (&dead, &die), &reads_failed);
            });
        }
        let dev = {
            use std::os::unix::fs::MetadataExt;
            dev_of(dir.path()).map(|m| m.dev())
        };
        FailingFs {
            dir,
            dev,
            failing,
            dead,
            die_on_read,
            reads_failed,
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("disk.raw")
    }
}

impl FailingFs {
    /// Abort the connection: every request waiting on it, and every later one, fails at
    /// once, so a thread stuck on this file system (the bug this test guards against)
    /// cannot keep the test process from exiting.
    fn abort(&self) {
        let conns = Path::new("/sys/fs/fuse/connections");
        if std::fs::read_dir(conns).is_ok_and(|mut d| d.next().is_none()) {
            let _ = Command::new("mount")
                .args(["-t", "fusectl", "none"])
                .arg(conns)
                .status();
        }
        if let Some(dev) = self.dev {
            let _ = std::fs::write(conns.join(libc::minor(dev).to_string()).join("abort"), "1");
        }
    }
}

fn dev_of(p: &Path) -> Option<std::fs::Metadata> {
    std::fs::metadata(p).ok()
}

impl Drop for FailingFs {
    fn drop(&mut self) {
        self.abort();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Answer the kernel's requests until the file system is unmounted.
fn serve(
    mut dev: std::fs::File,
    content: &[u8],
    failing: &AtomicBool,
    (dead, die_on_read): (&AtomicBool, &AtomicBool),
    reads_failed: &std::sync::atomic::AtomicU64,
) {
    let mut buf = vec![0u8; (1 << 20) + 4096];
    loop {
        let n = match dev.read(&mut buf) {
            Ok(n) => n,
            // ENOENT: a request interrupted before it was read; EINTR, EAGAIN: try again.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::EINTR | libc::EAGAIN)
                ) =>
            {
                continue
            }
            Err(_) => return, // ENODEV: unmounted
        };
        let req = &buf[..n];
        let opcode = le32(req, 4);
        let unique = le64(req, 8);
        let node = le64(req, 16);
        let body = &req[40..];
        let reply = |error: i32, payload: &[u8]| {
            let mut out = Vec::with_capacity(16 + payload.len());
            out.extend_from_slice(&(16 + payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&error.to_le_bytes());
            out.extend_from_slice(&unique.to_le_bytes());
            out.extend_from_slice(payload);
            out
        };
        let out = match opcode {
            FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT => continue,
            FUSE_INIT => {
                // fuse_init_out: major 7, minor 31, the kernel's readahead, no flags.
                let mut p = Vec::with_capacity(64);
                p.extend_from_slice(&7u32.to_le_bytes());
                p.extend_from_slice(&31u32.to_le_bytes());
                p.extend_from_slice(&le32(body, 8).to_le_bytes());
                p.extend_from_slice(&0u32.to_le_bytes());
                p.extend_from_slice(&16u16.to_le_bytes()); // max_background
                p.extend_from_slice(&12u16.to_le_bytes()); // congestion_threshold
                p.extend_from_slice(&(128u32 << 10).to_le_bytes()); // max_write
                p.extend_from_slice(&1u32.to_le_bytes()); // time_gran
                p.resize(64, 0);
                reply(0, &p)
            }
            FUSE_LOOKUP if node == 1 && body.split(|&b| b == 0).next() == Some(b"disk.raw") => {
                let mut p = Vec::with_capacity(128);
                // nodeid, generation, entry_valid, attr_valid (0: every `stat` asks us,
                // so `dead` is seen), their nsecs
                for v in [FILE_NODE, 1, 3600, 0] {
                    p.extend_from_slice(&v.to_le_bytes());
                }
                p.extend_from_slice(&[0; 8]);
                p.extend_from_slice(&fuse_attr(FILE_NODE, content.len() as u64));
                reply(0, &p)
            }
            FUSE_LOOKUP => reply(-libc::ENOENT, &[]),
            FUSE_GETATTR if node == FILE_NODE && dead.load(Ordering::SeqCst) => {
                reply(-libc::EIO, &[])
            }
            FUSE_GETATTR => {
                let mut p = Vec::with_capacity(104);
                p.extend_from_slice(&0u64.to_le_bytes());
                p.extend_from_slice(&[0; 8]);
                p.extend_from_slice(&fuse_attr(node, content.len() as u64));
                reply(0, &p)
            }
            FUSE_OPEN | FUSE_OPENDIR => reply(0, &[0; 16]),
            FUSE_RELEASE | FUSE_RELEASEDIR | FUSE_FLUSH => reply(0, &[]),
            FUSE_STATFS => reply(0, &[0; 80]),
            FUSE_READ => {
                let offset = le64(body, 8);
                let size = le32(body, 16) as u64;
                if failing.load(Ordering::SeqCst) {
                    reads_failed.fetch_add(1, Ordering::SeqCst);
                    if die_on_read.load(Ordering::SeqCst) {
                        dead.store(true, Ordering::SeqCst);
                    }
                    reply(-libc::EIO, &[])
                } else {
                    let len = content.len() as u64;
                    let (s, e) = (offset.min(len), (offset + size).min(len));
                    reply(0, &content[s as usize..e as usize])
                }
            }
            _ => reply(-libc::ENOSYS, &[]),
        };
        if dev.write(&out).is_err() {
            // The request was interrupted meanwhile (ENOENT): nothing waits for it.
            continue;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_that_fail_to_read_from_an_unchanged_file_are_an_io_error() {
    io_error_midway(false).await;
}

/// The same on a file system that also stops answering `stat` (an XFS shut down after an
/// I/O error does: `fstat` gives EIO): still an I/O error, not "written to" because the
/// times could not be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_that_fail_to_read_from_a_dead_file_system_are_an_io_error() {
    io_error_midway(true).await;
}

/// Upload a 48 MiB file whose reads (and, when `dead`, its `stat`) begin to fail after the
/// first piece: an `io` error, a journal of the source's own bytes, no footer; when the
/// file only failed to read, `--resume` once it reads again gives the exact VHD.
async fn io_error_midway(dead: bool) {
    let az = Azurite::start();
    az.create_container("fuse").await;
    let size = 48 * MIB as usize;
    let original = Arc::new(noise(23, size));
    let fs = FailingFs::mount(original.clone());
    let src = fs.file();
    assert_eq!(std::fs::metadata(&src).unwrap().len(), size as u64);
    let state = tempfile::tempdir().unwrap();
    let opts_for = |resume: bool| UploadOptions {
        map_source: true,
        concurrency: 1,
        resume,
        state_dir: Some(state.path().to_path_buf()),
        journal_interval: Duration::ZERO,
        ..quick_opts(&az)
    };
    let opts = opts_for(false);
    let progress = {
        let (failing, die) = (fs.failing.clone(), fs.die_on_read.clone());
        SourceHook::new(When::FirstPiece, move || {
            die.store(dead, Ordering::SeqCst);
            failing.store(true, Ordering::SeqCst);
        })
    };
    let url = az.blob_url("fuse", "d.vhd");
    // On a runtime of its own in a thread of its own: a reader stuck inside the kernel
    // (the bug) blocks whatever thread polls the upload, so only another thread can see the
    // time run out.
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (src, progress) = (src.clone(), progress.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let _ = tx.send(rt.block_on(upload::upload(&src, &url, opts, progress)));
        });
    }
    let waited = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(90)))
        .await
        .unwrap();
    let Ok(result) = waited else {
        // Unstick nothing (the kernel retries the page for ever); end the process instead,
        // after cutting the FUSE connection so its exit cannot wait on this file system.
        fs.abort();
        panic!("the upload did not end within 90 s after its source's reads began to fail (stuck in mmap?)");
    };
    let e = result.expect_err("an upload whose source cannot be read must fail");
    assert!(progress.fired(), "the reads began to fail");
    assert!(fs.reads_failed.load(Ordering::SeqCst) > 0, "a read failed");
    let text = e.to_string();
    assert_eq!(e.code(), "io", "code {}: {text}", e.code());
    assert!(
        !text.contains("was written to") && !text.contains("changed size"),
        "{text}"
    );
    assert!(text.contains(&src.display().to_string()), "{text}");
    assert_eq!(
        text.contains("no longer answers `stat`"),
        dead,
        "says whether the file system still answers: {text}"
    );
    eprintln!("reported: {text}");

    // The guard's promises: the journal claims only the source's own bytes, and no footer.
    let done = journaled(state.path());
    let (blob, _) = az.download("fuse", "d.vhd").await;
    assert_eq!(blob.len(), size + 512);
    for &(s, e) in &done {
        let (s, e) = (s as usize, e as usize);
        assert!(
            blob[s..e] == original[s..e],
            "journaled range {s}..{e} does not hold the source's bytes"
        );
    }
    assert!(blob
        .iter()
        .zip(original.iter())
        .all(|(b, o)| b == o || *b == 0));
    assert!(
        blob[size..].iter().all(|&b| b == 0),
        "no footer was written"
    );

    // The file did not change, so the error's advice holds: once its reads work again,
    // `--resume` continues from the journal and the blob becomes the source's VHD.
    fs.failing.store(false, Ordering::SeqCst);
    fs.die_on_read.store(false, Ordering::SeqCst);
    fs.dead.store(false, Ordering::SeqCst);
    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        upload::upload(
            &src,
            &az.blob_url("fuse", "d.vhd"),
            opts_for(true),
            Arc::new(vhdforge_core::progress::NoProgress),
        ),
    )
    .await
    .expect("bounded")
    .unwrap_or_else(|e| panic!("--resume after the reads recovered: {e}"));
    assert!(
        summary.bytes_already_present > 0,
        "the resume sent everything again"
    );
    let (blob, _) = az.download("fuse", "d.vhd").await;
    assert_stream(&blob, &original);
}
