//! Red team of convert's slice-by-slice loop (the virtual disk is cloned and copied 256 MiB
//! at a time): data and clone units straddling a slice edge, disks that are not a whole
//! number of slices or of MiB, VHDX blocks at slice edges, progress totals against the sum
//! of what was reported, cancellation at a slice edge, and a nearly full output file
//! system, cloning and copying. Every output is compared with the disk (a sparse raw file
//! written here, or `qemu-img convert -O raw` of the input). XFS with reflink is
//! loop-mounted (CI runs as root); a missing tool (mkfs.xfs, qemu-img, qemu-io, fallocate)
//! fails the test.

mod loop_mount;

use loop_mount::{assert_same_disk, leave_free, others, run, s, Mounted};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use vhdforge_core::convert::{convert_to_file, ConvertOptions, ConvertReport, Policy};
use vhdforge_core::progress::{Cancel, Progress};
use vhdforge_core::{DiskImage, ErrorKind};

const MIB: u64 = 1 << 20;
/// convert's slice.
const SLICE: u64 = 256 * MIB;

fn opts(no_clone: bool) -> ConvertOptions {
    ConvertOptions {
        policy: Policy {
            unique_id: Some([3; 16]),
            time_stamp: Some(777),
            allow_any_size: true,
            ..Policy::default()
        },
        no_clone,
        ..ConvertOptions::default()
    }
}

fn open(p: &Path) -> Box<dyn DiskImage> {
    vhdforge_core::open(p, &Default::default()).unwrap()
}

/// Counts what convert reports; cancels once `cancel_at` bytes were reported.
struct Counting {
    total: AtomicU64,
    totals_set: AtomicU64,
    done: AtomicU64,
    cancel_at: u64,
    token: Cancel,
}

impl Counting {
    fn new(cancel_at: u64) -> Counting {
        Counting {
            total: AtomicU64::new(0),
            totals_set: AtomicU64::new(0),
            done: AtomicU64::new(0),
            cancel_at,
            token: Cancel::new(),
        }
    }
    fn never() -> Counting {
        Counting::new(u64::MAX)
    }
}

impl Progress for Counting {
    fn set_total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::SeqCst);
        self.totals_set.fetch_add(1, Ordering::SeqCst);
    }
    fn advance(&self, bytes: u64) {
        if self.done.fetch_add(bytes, Ordering::SeqCst) + bytes >= self.cancel_at {
            self.token.cancel();
        }
    }
    fn cancel(&self) -> Cancel {
        self.token.clone()
    }
}

/// A sparse raw disk of `size` bytes with a distinct pattern in each `(at, len)` run.
fn sparse_raw(path: &Path, size: u64, runs: &[(u64, u64)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(at, len)) in runs.iter().enumerate() {
        let data = fixtures::raw::pattern(i as u64 + 11, usize::try_from(len).unwrap());
        f.write_all_at(&data, at).unwrap();
    }
    f.sync_all().unwrap();
}

/// Runs chosen to sit on and around the slice edges of a disk of 2 slices + 3 MiB + 1536
/// bytes: a clone-sized aligned run straddling the first edge, a page on each side of it,
/// a sector-odd run across the second edge, and the last sectors of the disk.
const ODD_SIZE: u64 = 2 * SLICE + 3 * MIB + 1536;
const EDGE_RUNS: &[(u64, u64)] = &[
    (0, 4096),
    (SLICE - 6 * MIB, 12 * MIB),
    (SLICE - 7 * MIB - 4096, 4096),
    (SLICE + 7 * MIB, 4096),
    (2 * SLICE - 512, 1024),
    (ODD_SIZE - 4096 - 1536, 4096 + 1536),
];

fn check_progress(p: &Counting, what: &str) {
    assert_eq!(p.totals_set.load(Ordering::SeqCst), 1, "{what}: set_total");
    let (total, done) = (
        p.total.load(Ordering::SeqCst),
        p.done.load(Ordering::SeqCst),
    );
    assert_eq!(
        done, total,
        "{what}: progress advanced {done} bytes of a total of {total}"
    );
}

fn convert_counted(input: &Path, out: &Path, no_clone: bool) -> (ConvertReport, Counting) {
    let p = Counting::never();
    let r = convert_to_file(open(input).as_ref(), out, &opts(no_clone), &p)
        .unwrap_or_else(|e| panic!("convert {}: {e:#}", input.display()));
    (r, p)
}

#[test]
fn raw_runs_across_slice_edges_convert_exactly_cloned_or_copied() {
    let m = Mounted::new("xfs");
    let input = m.at.join("in.raw");
    sparse_raw(&input, ODD_SIZE, EDGE_RUNS);
    for no_clone in [false, true] {
        let what = if no_clone { "copied" } else { "cloned" };
        let out = m.at.join(format!("{what}.vhd"));
        let (r, p) = convert_counted(&input, &out, no_clone);
        assert_same_disk(&out, &input, what);
        check_progress(&p, what);
        assert_eq!(r.virtual_size, ODD_SIZE, "{what}");
        assert_eq!(r.padded_bytes, MIB - 1536, "{what}");
        if no_clone {
            assert_eq!(r.data_bytes_cloned, 0, "{what}");
        } else {
            // The 12 MiB aligned run across the edge is cloned whole, both halves.
            assert!(r.data_bytes_cloned >= 12 * MIB, "{what}: {r:?}");
        }
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn a_disk_smaller_than_a_slice_and_not_whole_mib_converts_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("small.raw");
    let size = 21 * MIB + 512;
    sparse_raw(
        &input,
        size,
        &[(0, 512), (MIB - 512, 1024), (size - 1024, 1024)],
    );
    let out = dir.path().join("small.vhd");
    let (r, p) = convert_counted(&input, &out, true);
    assert_same_disk(&out, &input, "small");
    check_progress(&p, "small");
    assert_eq!(r.padded_bytes, MIB - 512);
}

/// A dynamic VHDX made by qemu-img with `block` MiB blocks, written by qemu-io at `runs`.
fn qemu_vhdx(path: &Path, size: u64, block_mib: u64, runs: &[(u64, u64)]) {
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            &format!("block_size={block_mib}M,subformat=dynamic"),
            s(path),
            &size.to_string(),
        ],
    );
    for (i, &(at, len)) in runs.iter().enumerate() {
        run(
            "qemu-io",
            &[
                "-f",
                "vhdx",
                "-c",
                &format!("write -P {} {at} {len}", 0x31 + i),
                s(path),
            ],
        );
    }
}

#[test]
fn vhdx_blocks_at_slice_edges_convert_as_qemu_reads_them() {
    let m = Mounted::new("xfs");
    let size = SLICE + 45 * MIB + 512;
    for block in [1u64, 32, 64] {
        let input = m.at.join(format!("b{block}.vhdx"));
        qemu_vhdx(
            &input,
            size,
            block,
            &[
                (SLICE - 512, 1024),
                (SLICE - 2 * MIB, MIB),
                (SLICE + MIB, 3 * MIB),
                (size - 4096, 4096),
            ],
        );
        let raw = m.at.join(format!("b{block}.raw"));
        run(
            "qemu-img",
            &["convert", "-f", "vhdx", "-O", "raw", s(&input), s(&raw)],
        );
        for no_clone in [false, true] {
            let what = format!("{block} MiB blocks, no_clone {no_clone}");
            let out = m.at.join("out.vhd");
            let (_, p) = convert_counted(&input, &out, no_clone);
            assert_same_disk(&out, &raw, &what);
            check_progress(&p, &what);
            std::fs::remove_file(&out).unwrap();
        }
        std::fs::remove_file(&raw).unwrap();
        std::fs::remove_file(&input).unwrap();
    }
}

#[test]
fn cancelling_at_a_slice_edge_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.raw");
    // 8 MiB at the end of each of three slices.
    let runs: Vec<(u64, u64)> = (1..=3).map(|k| (k * SLICE - 8 * MIB, 8 * MIB)).collect();
    sparse_raw(&input, 3 * SLICE, &runs);
    // Cancelled by the last advance of slice 0, at one byte into slice 0, and after slice 2
    // (all data read: only the final check can notice).
    for cancel_at in [8 * MIB, 1, 24 * MIB] {
        let out = dir.path().join("out.vhd");
        let p = Counting::new(cancel_at);
        let err = convert_to_file(open(&input).as_ref(), &out, &opts(true), &p)
            .expect_err("a cancelled convert succeeded");
        assert_eq!(err.kind(), ErrorKind::Interrupted, "at {cancel_at}: {err}");
        let done = p.done.load(Ordering::SeqCst);
        assert!(
            done <= cancel_at.max(8 * MIB) + 8 * MIB,
            "cancelled at {cancel_at} but {done} bytes were done"
        );
        assert_eq!(others(dir.path(), &["in.raw"]), Vec::<String>::new());
    }
}

#[test]
fn a_nearly_full_output_fs_gives_no_space_and_leaves_nothing() {
    // The input lies on another file system, so nothing can be cloned from it: the clone
    // path copies everything, and must find out that it does not fit.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.raw");
    // 40 MiB of data in each of three slices; 120 MiB in all.
    let runs: Vec<(u64, u64)> = (0..3).map(|k| (k * SLICE + MIB, 40 * MIB)).collect();
    sparse_raw(&input, 3 * SLICE, &runs);
    let m = Mounted::new("xfs");
    leave_free(&m.at, 100 * MIB);
    for no_clone in [true, false] {
        let out = m.at.join("out.vhd");
        let p = Counting::never();
        let err = convert_to_file(open(&input).as_ref(), &out, &opts(no_clone), &p)
            .expect_err("120 MiB of data fit in 100 MiB");
        let what = format!("no_clone {no_clone}");
        assert!(
            err.code() == "convert.no_space" || err.kind() == ErrorKind::Io,
            "{what}: {err:#}"
        );
        assert_eq!(others(&m.at, &["ballast"]), Vec::<String>::new(), "{what}");
        // The figure names the whole conversion's 120 MiB, not one slice's 40 MiB.
        assert!(
            err.to_string().contains(&(120 * MIB).to_string()),
            "{what}: the shortfall is not the whole disk's: {err}"
        );
        // Every stored byte of the rest is checked as soon as the rest is known to be a
        // copy (at once with no_clone; at the first refused clone, EXDEV, without): 120 MiB
        // stored do not fit, but stored bytes may be written zeros, so the convert warns
        // and goes on (rt11, rt12: a thick disk that fits). The third slice's stored bytes
        // do not fit, so its pieces are checked one by one with their non-zero bytes: the
        // shortage shows within it, after the first two slices were copied.
        let done = p.done.load(Ordering::SeqCst);
        assert!((80 * MIB..120 * MIB).contains(&done), "{what}: {done}");
        if no_clone {
            assert!(err.to_string().contains("--no-clone"), "{err}");
        } else {
            assert!(err.to_string().contains("another file system"), "{err}");
        }
    }
}

#[test]
fn a_file_system_that_cannot_clone_says_so_when_short() {
    // Input and output on one ext4, which has no block cloning (EOPNOTSUPP): the clone path
    // learns so at its first clone; the shortage found at the third slice names that cause
    // and the whole conversion's figure, and does not send the user to the input's file
    // system, which the output is already on.
    let m = Mounted::new("ext4");
    let input = m.at.join("in.raw");
    let runs: Vec<(u64, u64)> = (0..3).map(|k| (k * SLICE + MIB, 40 * MIB)).collect();
    sparse_raw(&input, 3 * SLICE, &runs);
    leave_free(&m.at, 100 * MIB);
    let out = m.at.join("out.vhd");
    let p = Counting::never();
    let err = convert_to_file(open(&input).as_ref(), &out, &opts(false), &p)
        .expect_err("120 MiB of data fit in 100 MiB");
    assert_eq!(err.code(), "convert.no_space", "{err:#}");
    let msg = err.to_string();
    assert!(msg.contains(&(120 * MIB).to_string()), "{msg}");
    assert!(msg.contains("cannot share blocks"), "{msg}");
    assert!(
        !msg.contains("holds the input"),
        "the input is already there: {msg}"
    );
    assert_eq!(others(&m.at, &["ballast", "in.raw"]), Vec::<String>::new());
    // With room, the same convert copies everything and matches the disk.
    std::fs::remove_file(m.at.join("ballast")).unwrap();
    let (r, p) = convert_counted(&input, &out, false);
    assert_eq!(
        (r.data_bytes_cloned, r.data_bytes_written),
        (0, 120 * MIB),
        "{r:?}"
    );
    check_progress(&p, "ext4 copy");
    assert_same_disk(&out, &input, "ext4 copy");
}

#[test]
fn a_chain_of_different_block_sizes_with_data_at_slice_edges_converts_exactly() {
    use fixtures::vhd::{FooterOptions, Locator, ParentLink, SparseVhd};
    let m = Mounted::new("xfs");
    let size = SLICE + 5 * MIB + 1024;
    let sect = |seed: u64, n: u64| fixtures::raw::pattern(seed, usize::try_from(n).unwrap());
    // The parent's 2 MiB blocks span the edge; the child's 512 KiB blocks overwrite sectors
    // on both sides of it and the disk's last sector.
    let base_writes = [(SLICE - 3 * MIB, sect(1, 6 * MIB)), (0, sect(2, 4096))];
    let child_writes = [
        (SLICE - 512, sect(3, 1024)),
        (SLICE + MIB + 512, sect(4, 4096)),
        (size - 512, sect(5, 512)),
        (SLICE - 3 * MIB, sect(6, 512)),
    ];
    let fo = FooterOptions::default();
    let mut base = SparseVhd::new(size, 2 << 20, fo.clone());
    for (at, d) in &base_writes {
        base.write(*at, d);
    }
    std::fs::write(m.at.join("base.vhd"), base.build()).unwrap();
    let mut child = SparseVhd::new(size, 512 << 10, fo.clone());
    child.parent = Some(ParentLink {
        unique_id: fo.unique_id,
        name: "base.vhd".into(),
        locators: vec![Locator::relative(".\\base.vhd")],
    });
    for (at, d) in &child_writes {
        child.write(*at, d);
    }
    let input = m.at.join("child.vhd");
    std::fs::write(&input, child.build()).unwrap();
    // The disk the chain reads as, as a sparse raw file.
    let expect = m.at.join("expect.raw");
    {
        let f = File::create(&expect).unwrap();
        f.set_len(size).unwrap();
        for (at, d) in base_writes.iter().chain(&child_writes) {
            f.write_all_at(d, *at).unwrap();
        }
    }
    for no_clone in [false, true] {
        let what = format!("chain, no_clone {no_clone}");
        let out = m.at.join("out.vhd");
        let (_, p) = convert_counted(&input, &out, no_clone);
        assert_same_disk(&out, &expect, &what);
        check_progress(&p, &what);
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn cloning_onto_a_nearly_full_fs_needs_no_free_space_for_the_data() {
    // 120 MiB of aligned data in three slices, on the output's own XFS with 16 MiB left:
    // every byte can be shared, so the free-space checks (whole disk up front for a copy,
    // per slice when cloning) must not refuse it.
    let m = Mounted::new("xfs");
    let input = m.at.join("in.raw");
    let runs: Vec<(u64, u64)> = (0..3).map(|k| (k * SLICE + MIB, 40 * MIB)).collect();
    sparse_raw(&input, 3 * SLICE, &runs);
    leave_free(&m.at, 16 * MIB);
    let out = m.at.join("out.vhd");
    let (r, p) = convert_counted(&input, &out, false);
    assert_eq!(r.data_bytes_cloned, 120 * MIB, "{r:?}");
    assert_eq!(r.data_bytes_written, 0, "{r:?}");
    check_progress(&p, "cloned onto a full fs");
    assert_same_disk(&out, &input, "cloned onto a full fs");
    std::fs::remove_file(&out).unwrap();
    // Copying it is refused (when a piece no longer fits), naming the whole disk's figure.
    let err = convert_to_file(open(&input).as_ref(), &out, &opts(true), &Counting::never())
        .expect_err("120 MiB copied into 16 MiB");
    assert_eq!(err.code(), "convert.no_space", "{err:#}");
    assert!(err.to_string().contains(&(120 * MIB).to_string()), "{err}");
    assert_eq!(others(&m.at, &["ballast", "in.raw"]), Vec::<String>::new());
}

/// An image that counts the map look-ups convert makes.
#[derive(Debug)]
struct CountingMap {
    inner: Box<dyn DiskImage>,
    calls: AtomicU64,
}

impl DiskImage for CountingMap {
    fn info(&self) -> &vhdforge_core::ImageInfo {
        self.inner.info()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vhdforge_core::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn extents(
        &self,
        start: u64,
        length: u64,
        out: &mut Vec<vhdforge_core::Extent>,
    ) -> vhdforge_core::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.extents(start, length, out)
    }
    fn findings(&self) -> &[vhdforge_core::Finding] {
        self.inner.findings()
    }
}

#[test]
fn cancelling_a_huge_empty_disk_is_noticed_between_slices() {
    // 16 TiB of virtual disk with nothing stored: 65536 slices, none with a piece to read,
    // so only the loop itself can notice the cancellation. Without a check per slice, a
    // convert cancelled from the start still walked every slice's map (twice the look-ups
    // of the whole-disk count made before the loop).
    let m = Mounted::new("xfs");
    let input = m.at.join("huge.vhdx");
    let size = 16u64 << 40;
    qemu_vhdx(&input, size, 256, &[]);
    let out = m.at.join("out.vhd");
    let image = CountingMap {
        inner: open(&input),
        calls: AtomicU64::new(0),
    };
    let p = Counting::new(0);
    p.token.cancel();
    let err =
        convert_to_file(&image, &out, &opts(true), &p).expect_err("a cancelled convert succeeded");
    assert_eq!(err.kind(), ErrorKind::Interrupted, "{err}");
    let calls = image.calls.load(Ordering::SeqCst);
    assert!(
        calls <= size / SLICE + 1,
        "cancelled before the first slice, yet {calls} map look-ups were made"
    );
    assert_eq!(others(&m.at, &["huge.vhdx"]), Vec::<String>::new());
}

#[test]
fn cancelling_a_cloning_convert_at_a_slice_edge_leaves_nothing() {
    let m = Mounted::new("xfs");
    let input = m.at.join("in.raw");
    // 8 MiB of aligned (clonable) data at the end of each of three slices.
    let runs: Vec<(u64, u64)> = (1..=3).map(|k| (k * SLICE - 8 * MIB, 8 * MIB)).collect();
    sparse_raw(&input, 3 * SLICE, &runs);
    // After slice 0's clone, and after the last slice (only the final check is left).
    for cancel_at in [8 * MIB, 24 * MIB] {
        let out = m.at.join("out.vhd");
        let p = Counting::new(cancel_at);
        let err = convert_to_file(open(&input).as_ref(), &out, &opts(false), &p)
            .expect_err("a cancelled convert succeeded");
        assert_eq!(err.kind(), ErrorKind::Interrupted, "at {cancel_at}: {err}");
        assert_eq!(
            p.done.load(Ordering::SeqCst),
            cancel_at,
            "cloned on after the cancel"
        );
        assert_eq!(others(&m.at, &["in.raw"]), Vec::<String>::new());
    }
}
