//! Red team of convert's "lasting refusal" of block cloning (`platform::clone::lasting_refusal`,
//! `Cloner::exhausted`): chains whose layers lie on different file systems, in both orders,
//! with data in different slices; XFS made without reflink; btrfs subvolumes, bind mounts and
//! overlays (another `st_dev` or another mount, yet cloning works); a block device input; a
//! nearly full output file system, where the figures and the advice of `convert.no_space`
//! matter, and a fully written raw that fits only as a sparse output; progress totals
//! against the sum of what was reported. Every output is compared with the disk (a sparse raw
//! file written here, or `qemu-img convert -O raw` of the input). File systems are loop-mounted (CI runs as
//! root); a missing tool fails the test.

mod loop_mount;

use loop_mount::{assert_same_disk, free_bytes, leave_free, others, run, s, umount, Mounted};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use vhdforge_core::convert::{convert_to_file, ConvertOptions, ConvertReport, Policy};
use vhdforge_core::progress::{Cancel, Progress};
use vhdforge_core::DiskImage;

const MIB: u64 = 1 << 20;
/// convert's slice.
const SLICE: u64 = 256 * MIB;

/// A loop-mounted file system (`loop_mount::Mounted`) and what was bind-mounted on top of
/// it, unmounted first.
struct Fs {
    at: PathBuf,
    binds: Vec<PathBuf>,
    _m: Mounted,
}

impl Fs {
    fn new(kind: &str, mkfs: &str, args: &[&str]) -> Fs {
        Fs::sized(kind, mkfs, args, 512 * MIB)
    }
    fn sized(kind: &str, mkfs: &str, args: &[&str], size: u64) -> Fs {
        let m = Mounted::made_by(kind, mkfs, args, size);
        Fs {
            at: m.at.clone(),
            binds: Vec::new(),
            _m: m,
        }
    }
    fn xfs() -> Fs {
        Fs::new("xfs", "mkfs.xfs", &["-q", "-m", "reflink=1"])
    }
    fn xfs_no_reflink() -> Fs {
        Fs::new("xfs", "mkfs.xfs", &["-q", "-m", "reflink=0"])
    }
    fn ext4() -> Fs {
        Fs::new("ext4", "mkfs.ext4", &["-q", "-F"])
    }
    fn btrfs() -> Fs {
        Fs::new("btrfs", "mkfs.btrfs", &["-q"])
    }
    /// Bind-mount `src` (inside this file system) at `dst`; undone on drop.
    fn bind(&mut self, src: &Path, dst: &Path) {
        run("mount", &["--bind", s(src), s(dst)]);
        self.binds.push(dst.to_path_buf());
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        // Before the file system under them (`_m`, dropped after this).
        for b in self.binds.drain(..).rev() {
            umount(&b);
        }
    }
}

fn opts() -> ConvertOptions {
    ConvertOptions {
        policy: Policy {
            unique_id: Some([3; 16]),
            time_stamp: Some(777),
            allow_any_size: true,
            ..Policy::default()
        },
        ..ConvertOptions::default()
    }
}

fn open(p: &Path) -> Box<dyn DiskImage> {
    vhdforge_core::open(p, &Default::default()).unwrap()
}

/// Counts what convert reports.
#[derive(Default)]
struct Counting {
    total: AtomicU64,
    totals_set: AtomicU64,
    done: AtomicU64,
    token: Cancel,
}

impl Progress for Counting {
    fn set_total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::SeqCst);
        self.totals_set.fetch_add(1, Ordering::SeqCst);
    }
    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::SeqCst);
    }
    fn cancel(&self) -> Cancel {
        self.token.clone()
    }
}

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

fn convert_counted(input: &Path, out: &Path) -> (ConvertReport, Counting) {
    let p = Counting::default();
    let r = convert_to_file(open(input).as_ref(), out, &opts(), &p)
        .unwrap_or_else(|e| panic!("convert {}: {e:#}", input.display()));
    (r, p)
}

/// The refusal of a convert expected not to fit, and how many bytes it reported done.
fn convert_refused(input: &Path, out: &Path) -> (vhdforge_core::Error, u64) {
    let p = Counting::default();
    let err = convert_to_file(open(input).as_ref(), out, &opts(), &p)
        .expect_err("a disk that cannot fit was converted");
    (err, p.done.load(Ordering::SeqCst))
}

/// A distinct pattern per seed.
fn pat(seed: u64, len: u64) -> Vec<u8> {
    fixtures::raw::pattern(seed, usize::try_from(len).unwrap())
}

/// A sparse raw disk of `size` bytes with `pat(seed)` at each `(at, len, seed)`.
fn sparse_raw(path: &Path, size: u64, runs: &[(u64, u64, u64)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for &(at, len, seed) in runs {
        f.write_all_at(&pat(seed, len), at).unwrap();
    }
    f.sync_all().unwrap();
}

/// Remove `leave_free`'s ballast and wait until its space shows as free (XFS frees a
/// removed file's blocks in the background).
fn remove_ballast(at: &Path) {
    let before = free_bytes(at);
    let ballast = at.join("ballast");
    let len = std::fs::metadata(&ballast).unwrap().len();
    std::fs::remove_file(&ballast).unwrap();
    for _ in 0..100 {
        run("sync", &["-f", s(at)]);
        if free_bytes(at) >= before + len / 2 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the ballast's space never showed as free");
}

/// Every run of a disk made of two VHDX layers: `(at, len, seed)`, whole 1 MiB blocks.
type Runs<'a> = &'a [(u64, u64, u64)];

/// A two-layer VHDX chain of `size` bytes with 1 MiB blocks: the parent `parent.vhdx` in
/// `pdir` holding `prun`, the child `child.avhdx` in `cdir` holding `crun`. When the two
/// folders differ, the child reaches its parent through a symbolic link beside it. Returns
/// the child's path; `expect` gets the chain's disk as a sparse raw file.
fn vhdx_chain(
    pdir: &Path,
    cdir: &Path,
    size: u64,
    prun: Runs,
    crun: Runs,
    expect: &Path,
) -> PathBuf {
    use fixtures::vhdx::{self as fvhdx, ChildSpec, VhdxSpec};
    use uuid::Uuid;
    let content = |runs: Runs| {
        // Untouched pages of a zeroed allocation stay unmapped: only the runs take memory.
        let mut v = vec![0u8; usize::try_from(size).unwrap()];
        for &(at, len, seed) in runs {
            let at = usize::try_from(at).unwrap();
            v[at..at + usize::try_from(len).unwrap()].copy_from_slice(&pat(seed, len));
        }
        v
    };
    let parent = fvhdx::write_file(
        pdir,
        "parent.vhdx",
        &fvhdx::build(
            &VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0x71)),
            &content(prun),
        )
        .bytes,
    );
    if pdir != cdir {
        std::os::unix::fs::symlink(&parent, cdir.join("parent.vhdx")).unwrap();
    }
    let present: Vec<bool> = (0..size / 512)
        .map(|sector| {
            crun.iter()
                .any(|&(at, len, _)| (at..at + len).contains(&(sector * 512)))
        })
        .collect();
    let mut spec = VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0x72));
    spec.child = Some(ChildSpec {
        parent_linkage: Uuid::from_u128(0x71),
        relative_path: Some(".\\parent.vhdx".into()),
        absolute_win32_path: None,
        present,
    });
    let child = fvhdx::write_file(
        cdir,
        "child.avhdx",
        &fvhdx::build(&spec, &content(crun)).bytes,
    );
    let all: Vec<(u64, u64, u64)> = prun.iter().chain(crun).copied().collect();
    sparse_raw(expect, size, &all);
    child
}

fn sum(runs: Runs) -> u64 {
    runs.iter().map(|r| r.1).sum()
}

/// Disk of the chain tests: two slices and a bit, so data sits in slices 0, 1 and 2.
const CHAIN_SIZE: u64 = 2 * SLICE + 8 * MIB;
/// Parent data: in slice 0 and in slice 2 only.
const PARENT_RUNS: Runs = &[(MIB, 8 * MIB, 1), (2 * SLICE + 2 * MIB, 4 * MIB, 2)];
/// Child data: in slice 0, and across the edge of slices 0 and 1.
const CHILD_RUNS: Runs = &[(16 * MIB, 4 * MIB, 3), (SLICE - 2 * MIB, 4 * MIB, 4)];

#[test]
fn chains_across_two_file_systems_convert_exactly_in_either_order() {
    // Output on XFS with reflink; one layer beside it (clonable), the other on ext4 (EXDEV,
    // for good). The refused layer must not stop the other's clones in later slices, and
    // what is cloned plus what is copied must be the disk, with progress summing up.
    let (x, e) = (Fs::xfs(), Fs::ext4());
    let tmp = tempfile::tempdir().unwrap();
    let expect = tmp.path().join("expect.raw");
    let (p, c) = (sum(PARENT_RUNS), sum(CHILD_RUNS));
    // (what, parent's folder, child's folder, expected cloned, expected copied)
    let cases = [
        ("parent on XFS, child on ext4", &x.at, &e.at, p, c),
        ("parent on ext4, child on XFS", &e.at, &x.at, c, p),
    ];
    for (what, pdir, cdir, cloned, copied) in cases {
        let child = vhdx_chain(pdir, cdir, CHAIN_SIZE, PARENT_RUNS, CHILD_RUNS, &expect);
        let out = x.at.join("out.vhd");
        let (r, prog) = convert_counted(&child, &out);
        assert_same_disk(&out, &expect, what);
        check_progress(&prog, what);
        assert_eq!(
            (r.data_bytes_cloned, r.data_bytes_written),
            (cloned, copied),
            "{what}: {r:?}"
        );
        for f in [
            out,
            child,
            pdir.join("parent.vhdx"),
            cdir.join("parent.vhdx"),
        ] {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[test]
fn a_chain_wholly_on_another_file_system_is_copied_exactly() {
    // Both layers on ext4, the output on XFS: the child is refused in slice 0, the parent
    // only in slice 2 (its first data), where the cloner is exhausted and dropped.
    let (x, e) = (Fs::xfs(), Fs::ext4());
    let tmp = tempfile::tempdir().unwrap();
    let expect = tmp.path().join("expect.raw");
    let child = vhdx_chain(&e.at, &e.at, CHAIN_SIZE, PARENT_RUNS, CHILD_RUNS, &expect);
    let out = x.at.join("out.vhd");
    let (r, prog) = convert_counted(&child, &out);
    assert_same_disk(&out, &expect, "chain on ext4");
    check_progress(&prog, "chain on ext4");
    assert_eq!(
        (r.data_bytes_cloned, r.data_bytes_written),
        (0, sum(PARENT_RUNS) + sum(CHILD_RUNS)),
        "{r:?}"
    );
}

/// 40 MiB of aligned data in each of three slices: 120 MiB in all.
const THREE_RUNS: Runs = &[
    (MIB, 40 * MIB, 5),
    (SLICE + MIB, 40 * MIB, 6),
    (2 * SLICE + MIB, 40 * MIB, 7),
];

#[test]
fn a_chain_refused_for_good_only_in_a_later_slice_reports_the_whole_conversion() {
    // Both layers on ext4, the output on a nearly full XFS. The child's data (slice 0) is
    // refused first; the parent's (slice 2 only) is tried, and refused, two slices later:
    // only then is the cloner exhausted and the whole rest checked. The refusal must name
    // the whole conversion's figures, the bytes really copied before, and why.
    let (x, e) = (Fs::xfs(), Fs::ext4());
    let tmp = tempfile::tempdir().unwrap();
    let expect = tmp.path().join("expect.raw");
    let child_runs: Runs = &[(MIB, 40 * MIB, 8)];
    let parent_runs: Runs = &[(2 * SLICE + MIB, 60 * MIB, 9)];
    let child = vhdx_chain(&e.at, &e.at, 3 * SLICE, parent_runs, child_runs, &expect);
    leave_free(&x.at, 80 * MIB);
    let out = x.at.join("out.vhd");
    let (err, done) = convert_refused(&child, &out);
    assert_eq!(err.code(), "convert.no_space", "{err:#}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("up to {} bytes of new data", 100 * MIB)),
        "the whole conversion's figure is not in: {msg}"
    );
    assert!(msg.contains("another file system"), "{msg}");
    // The child's slice was copied before the parent could be tried; the parent's slice,
    // too big by its stored bytes, was copied piece by piece until one did not fit (rt12:
    // stored bytes may be written zeros). The message names the bytes really copied.
    assert!((40 * MIB..100 * MIB).contains(&done), "{done}: {msg}");
    assert!(msg.contains("copied before it ran short"), "{msg}");
    assert_eq!(others(&x.at, &["ballast"]), Vec::<String>::new());
    // With room, the same chain converts exactly.
    remove_ballast(&x.at);
    let (r, p) = convert_counted(&child, &out);
    assert_same_disk(&out, &expect, "chain refused late");
    check_progress(&p, "chain refused late");
    assert_eq!(
        (r.data_bytes_cloned, r.data_bytes_written),
        (0, 100 * MIB),
        "{r:?}"
    );
}

#[test]
fn xfs_without_reflink_is_a_plain_copy_checked_at_once() {
    // mkfs.xfs -m reflink=0: cloning between two files of it answers EOPNOTSUPP, a refusal
    // for good; the whole copy is checked at the first slice (too big by its stored bytes,
    // which might be written zeros, so a warning and slice-by-slice checks follow), and the
    // message says the output's file system cannot clone (not that the input is elsewhere).
    let x = Fs::xfs_no_reflink();
    let input = x.at.join("in.raw");
    sparse_raw(&input, 3 * SLICE, THREE_RUNS);
    let out = x.at.join("out.vhd");
    // Short of room first: XFS frees a removed file's blocks in the background, so a
    // ballast sized right after a removal would leave more room than asked for.
    leave_free(&x.at, 100 * MIB);
    let (err, done) = convert_refused(&input, &out);
    assert_eq!(err.code(), "convert.no_space", "{err:#}");
    let msg = err.to_string();
    assert!(msg.contains(&(120 * MIB).to_string()), "{msg}");
    assert!(msg.contains("cannot share blocks"), "{msg}");
    assert!(
        !msg.contains("holds the input"),
        "the input is already there: {msg}"
    );
    // Two slices' 80 MiB fit and were copied; the third's 40 MiB did not, found piece by
    // piece within it.
    assert!((80 * MIB..120 * MIB).contains(&done), "{done}: {msg}");
    assert_eq!(others(&x.at, &["ballast", "in.raw"]), Vec::<String>::new());
    remove_ballast(&x.at);
    let (r, p) = convert_counted(&input, &out);
    assert_same_disk(&out, &input, "reflink=0");
    check_progress(&p, "reflink=0");
    assert_eq!(
        (r.data_bytes_cloned, r.data_bytes_written),
        (0, 120 * MIB),
        "{r:?}"
    );
}

#[test]
fn xfs_without_reflink_and_an_input_on_reflink_xfs_advises_moving_the_output() {
    // The input's XFS clones, the output's does not: EXDEV comes first (the super blocks
    // differ), and writing the output beside the input is the right advice here.
    let (x0, x1) = (Fs::xfs_no_reflink(), Fs::xfs());
    let input = x1.at.join("in.raw");
    sparse_raw(&input, 3 * SLICE, THREE_RUNS);
    leave_free(&x0.at, 100 * MIB);
    let (err, done) = convert_refused(&input, &x0.at.join("out.vhd"));
    assert_eq!(err.code(), "convert.no_space", "{err:#}");
    let msg = err.to_string();
    assert!(msg.contains(&(120 * MIB).to_string()), "{msg}");
    assert!(msg.contains("another file system"), "{msg}");
    assert!((80 * MIB..120 * MIB).contains(&done), "{done}: {msg}");
    // And there, beside the input, it is cloned whole into 16 MiB of free space.
    leave_free(&x1.at, 16 * MIB);
    let out = x1.at.join("out.vhd");
    let (r, p) = convert_counted(&input, &out);
    assert_eq!(
        (r.data_bytes_cloned, r.data_bytes_written),
        (120 * MIB, 0),
        "{r:?}"
    );
    check_progress(&p, "beside the input");
    assert_same_disk(&out, &input, "beside the input");
}

#[test]
fn an_input_on_ext4_is_not_offered_as_a_place_to_share_blocks() {
    // The input lies on ext4 (no cloning), the output on a nearly full XFS: the first clone
    // gets EXDEV, and the copy is refused at the third slice. The advice used to be to write the
    // output on the file system that holds the input "so its blocks can be shared": ext4
    // shares nothing. Moving there helps only if that file system clones, and says so.
    let (x, e) = (Fs::xfs(), Fs::ext4());
    let input = e.at.join("in.raw");
    sparse_raw(&input, 3 * SLICE, THREE_RUNS);
    leave_free(&x.at, 100 * MIB);
    let (err, done) = convert_refused(&input, &x.at.join("out.vhd"));
    assert_eq!(err.code(), "convert.no_space", "{err:#}");
    assert!((80 * MIB..120 * MIB).contains(&done), "{done}: {err}");
    let msg = err.to_string();
    assert!(
        !msg.contains("so its blocks can be shared"),
        "promises sharing on the input's ext4: {msg}"
    );
    assert!(msg.contains("another file system"), "{msg}");
    assert!(msg.contains("if that one can share blocks"), "{msg}");
}

/// A dynamic VHD made by qemu-img with `THREE_RUNS` written by qemu-io, and its disk as raw.
/// qemu puts each block's data one 512-byte bitmap after the last block, so only every
/// eighth block's data is 4 KiB-aligned in the file: some blocks clone, most are copied.
fn qemu_dynamic_vhd(dir: &Path, raw_dir: &Path) -> (PathBuf, PathBuf) {
    let input = dir.join("in.vhd");
    let size = (3 * SLICE).to_string();
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vpc",
            "-o",
            "subformat=dynamic",
            s(&input),
            &size,
        ],
    );
    for &(at, len, seed) in THREE_RUNS {
        let cmd = format!("write -P {seed} {at} {len}");
        run("qemu-io", &["-f", "vpc", "-c", &cmd, s(&input)]);
    }
    let raw = raw_dir.join("in.raw");
    run(
        "qemu-img",
        &["convert", "-f", "vpc", "-O", "raw", s(&input), s(&raw)],
    );
    (input, raw)
}

#[test]
fn a_dynamic_vhd_partly_cloned_converts_exactly() {
    let x = Fs::xfs();
    let tmp = tempfile::tempdir().unwrap();
    let (input, raw) = qemu_dynamic_vhd(&x.at, tmp.path());
    let out = x.at.join("out.vhd");
    let (r, p) = convert_counted(&input, &out);
    assert_same_disk(&out, &raw, "qemu dynamic VHD");
    check_progress(&p, "qemu dynamic VHD");
    assert!(r.data_bytes_cloned > 0 && r.data_bytes_written > 0, "{r:?}");
}

#[test]
fn a_vhd_beside_its_output_is_not_told_to_move_there() {
    // The dynamic VHD and the output share one XFS with reflink; most of its blocks are
    // not aligned for cloning, so they must be copied, and 100 MiB is not enough. The
    // refusal used to say "write the output on the file system that holds the input so its
    // blocks can be shared": it already is there, and those blocks cannot be shared. (It is
    // still found only after copying two slices: no refusal is "lasting" here.)
    let x = Fs::xfs();
    let tmp = tempfile::tempdir().unwrap();
    let (input, _raw) = qemu_dynamic_vhd(&x.at, tmp.path());
    leave_free(&x.at, 100 * MIB);
    let out = x.at.join("out.vhd");
    let (err, _done) = convert_refused(&input, &out);
    assert_eq!(err.code(), "convert.no_space", "{err:#}");
    assert_eq!(others(&x.at, &["ballast", "in.vhd"]), Vec::<String>::new());
    let msg = err.to_string();
    assert!(
        !msg.contains("holds the input"),
        "the output is already on the input's file system: {msg}"
    );
    assert!(msg.contains("not aligned"), "{msg}");
    assert!(msg.contains("more room"), "{msg}");
}

/// `st_dev` of `p`.
fn dev(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().dev()
}

#[test]
fn btrfs_subvolumes_and_their_own_mounts_still_clone() {
    // Two btrfs subvolumes have different st_dev but one super block: cloning between them
    // works, also through a second mount of one subvolume (another vfsmount; Linux 5.18
    // and later clone across mounts of one file system). Nothing may be taken for a
    // lasting refusal there, or a convert that fits only by cloning would be refused.
    let mut b = Fs::btrfs();
    for sv in ["a", "b"] {
        run("btrfs", &["-q", "subvolume", "create", s(&b.at.join(sv))]);
    }
    let input = b.at.join("a").join("in.raw");
    sparse_raw(&input, 3 * SLICE, THREE_RUNS);
    assert_ne!(dev(&input), dev(&b.at.join("b")), "subvolumes share st_dev");
    let out = b.at.join("b").join("out.vhd");
    let (r, p) = convert_counted(&input, &out);
    assert_eq!(
        (r.data_bytes_cloned, r.data_bytes_written),
        (120 * MIB, 0),
        "{r:?}"
    );
    check_progress(&p, "across subvolumes");
    assert_same_disk(&out, &input, "across subvolumes");
    std::fs::remove_file(&out).unwrap();
    // Subvolume a bind-mounted elsewhere: the input is read through another mount.
    let tmp = tempfile::tempdir().unwrap();
    let bound = tmp.path().join("a");
    std::fs::create_dir(&bound).unwrap();
    b.bind(&b.at.join("a"), &bound);
    let (r, p) = convert_counted(&bound.join("in.raw"), &out);
    assert_eq!(
        (r.data_bytes_cloned, r.data_bytes_written),
        (120 * MIB, 0),
        "{r:?}"
    );
    check_progress(&p, "through a bind mount");
    assert_same_disk(&out, &input, "through a bind mount");
}

#[test]
fn a_bind_mounted_input_on_a_nearly_full_xfs_is_cloned_not_refused() {
    // The input reached through a bind mount (same super block, another mount), the output
    // on the original mount with 16 MiB free: the 120 MiB fit only by cloning. Were the
    // mount difference a lasting refusal (EXDEV), the whole copy would be refused.
    let mut x = Fs::xfs();
    let dir = x.at.join("vm");
    std::fs::create_dir(&dir).unwrap();
    let input = dir.join("in.raw");
    sparse_raw(&input, 3 * SLICE, THREE_RUNS);
    let tmp = tempfile::tempdir().unwrap();
    let bound = tmp.path().join("vm");
    std::fs::create_dir(&bound).unwrap();
    x.bind(&dir, &bound);
    leave_free(&x.at, 16 * MIB);
    let out = x.at.join("out.vhd");
    let (r, p) = convert_counted(&bound.join("in.raw"), &out);
    assert_eq!(
        (r.data_bytes_cloned, r.data_bytes_written),
        (120 * MIB, 0),
        "{r:?}"
    );
    check_progress(&p, "bind mount");
    assert_same_disk(&out, &input, "bind mount");
}

#[test]
fn a_chain_half_on_another_file_system_short_of_room_names_that_half() {
    // Parent on ext4 (EXDEV, for good), child beside the nearly full output on XFS (clones):
    // the cloner is not exhausted, so the slice's copy is checked alone; the refusal says
    // part of the input lies elsewhere, and offers the input's file system only if it clones.
    let (x, e) = (Fs::xfs(), Fs::ext4());
    let tmp = tempfile::tempdir().unwrap();
    let expect = tmp.path().join("expect.raw");
    let parent_runs: Runs = &[(64 * MIB, 60 * MIB, 10)];
    let child_runs: Runs = &[(MIB, 8 * MIB, 11), (SLICE + MIB, 8 * MIB, 12)];
    let child = vhdx_chain(&e.at, &x.at, CHAIN_SIZE, parent_runs, child_runs, &expect);
    leave_free(&x.at, 40 * MIB);
    let out = x.at.join("out.vhd");
    let (err, done) = convert_refused(&child, &out);
    assert_eq!(err.code(), "convert.no_space", "{err:#}");
    let msg = err.to_string();
    assert!(
        msg.contains("or part of it, lies on another file system"),
        "{msg}"
    );
    assert!(msg.contains("if that one can share blocks"), "{msg}");
    // The child's first 8 MiB were cloned; the parent's 60 MiB were copied piece by piece
    // until one did not fit.
    assert!((8 * MIB..68 * MIB).contains(&done), "{done}: {msg}");
    assert_eq!(
        others(&x.at, &["ballast", "child.avhdx", "parent.vhdx"]),
        Vec::<String>::new()
    );
    remove_ballast(&x.at);
    let (r, p) = convert_counted(&child, &out);
    assert_same_disk(&out, &expect, "half elsewhere");
    check_progress(&p, "half elsewhere");
    assert_eq!(
        (r.data_bytes_cloned, r.data_bytes_written),
        (16 * MIB, 60 * MIB),
        "{r:?}"
    );
}

/// An overlay mount at `at` of `lower` under `upper` (with `work` beside it); unmounted on drop.
struct Overlay {
    at: PathBuf,
}

impl Overlay {
    fn new(lower: &Path, upper: &Path, work: &Path, at: &Path) -> Overlay {
        let o = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        run("mount", &["-t", "overlay", "overlay", "-o", &o, s(at)]);
        Overlay {
            at: at.to_path_buf(),
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        umount(&self.at);
    }
}

#[test]
fn an_overlay_over_one_xfs_clones_and_over_two_file_systems_copies() {
    // Container images: the input in an overlay's lower layer, the output written through
    // the overlay (into its upper layer). With both layers on one XFS the kernel clones
    // between the real files; with the lower on ext4 it answers EXDEV, a lasting refusal
    // although both paths are on one (overlay) mount.
    let x = Fs::xfs();
    let tmp = tempfile::tempdir().unwrap();
    for d in ["lower", "upper", "work"] {
        std::fs::create_dir(x.at.join(d)).unwrap();
    }
    let input = x.at.join("lower").join("in.raw");
    sparse_raw(&input, 3 * SLICE, THREE_RUNS);
    let ov_at = tmp.path().join("ov");
    std::fs::create_dir(&ov_at).unwrap();
    {
        let ov = Overlay::new(
            &x.at.join("lower"),
            &x.at.join("upper"),
            &x.at.join("work"),
            &ov_at,
        );
        leave_free(&x.at, 16 * MIB);
        let out = ov.at.join("out.vhd");
        let (r, p) = convert_counted(&ov.at.join("in.raw"), &out);
        assert_eq!(
            (r.data_bytes_cloned, r.data_bytes_written),
            (120 * MIB, 0),
            "{r:?}"
        );
        check_progress(&p, "overlay on one XFS");
        assert_same_disk(&out, &input, "overlay on one XFS");
        std::fs::remove_file(&out).unwrap();
    }
    remove_ballast(&x.at);
    // Lower layer on ext4, upper on the XFS: a copy, with room.
    let e = Fs::ext4();
    let lower = e.at.join("lower");
    std::fs::create_dir(&lower).unwrap();
    sparse_raw(&lower.join("in.raw"), 3 * SLICE, THREE_RUNS);
    let ov = Overlay::new(&lower, &x.at.join("upper"), &x.at.join("work"), &ov_at);
    let out = ov.at.join("out.vhd");
    let (r, p) = convert_counted(&ov.at.join("in.raw"), &out);
    assert_eq!(
        (r.data_bytes_cloned, r.data_bytes_written),
        (0, 120 * MIB),
        "{r:?}"
    );
    check_progress(&p, "overlay on two file systems");
    assert_same_disk(&out, &lower.join("in.raw"), "overlay on two file systems");
}

/// A loop device over `file`; detached on drop.
struct Loop(String);

impl Loop {
    fn new(file: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["-f", "--show", s(file)])
            .output()
            .expect("losetup is required for this test");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_block_device_input_is_copied_and_checked_at_once() {
    // A raw disk read from a block device: cloning from it is refused (EXDEV: the device
    // is not on the output's file system) and must not be taken for anything else. A
    // device has no allocation map, so all 768 MiB count as data: the XFS is 1 GiB.
    let x = Fs::sized("xfs", "mkfs.xfs", &["-q", "-m", "reflink=1"], 1024 * MIB);
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("disk.raw");
    sparse_raw(&raw, 3 * SLICE, THREE_RUNS);
    let dev = Loop::new(&raw);
    let out = x.at.join("out.vhd");
    leave_free(&x.at, 100 * MIB);
    let (err, done) = convert_refused(Path::new(&dev.0), &out);
    assert_eq!(err.code(), "convert.no_space", "{err:#}");
    // All 768 MiB count as stored, so the whole need is known not to fit at the first
    // refused clone; only written zeros could save it, so it is copied piece by piece
    // (rt12) until the third slice's 40 MiB of data do not fit.
    assert!((2 * SLICE..3 * SLICE).contains(&done), "{done}: {err}");
    assert!(err.to_string().contains("another file system"), "{err}");
    remove_ballast(&x.at);
    let (r, p) = convert_counted(Path::new(&dev.0), &out);
    assert_eq!(r.data_bytes_cloned, 0, "{r:?}");
    check_progress(&p, "block device");
    assert_same_disk(&out, &raw, "block device");
}

#[test]
fn a_thick_raw_on_ext4_that_fits_is_not_refused() {
    // A raw disk whose every byte is written (zeros included: a fixed disk copied without
    // keeping holes), 512 MiB with 40 MiB of data, on a 1 GiB ext4 with about 450 MiB
    // left. The output is sparse: it takes 40 MiB. The first clone's EOPNOTSUPP makes the
    // convert check the whole rest's stored bytes (512 MiB: the allocation map cannot tell
    // written zeros from data); 0262011 refused there a conversion that fits. Now that
    // only warns, and each slice is checked before its copy.
    let e = Fs::sized("ext4", "mkfs.ext4", &["-q", "-F"], 1024 * MIB);
    let input = e.at.join("thick.raw");
    {
        let f = File::create(&input).unwrap();
        let zeros = vec![0u8; 4 << 20];
        for k in 0..(2 * SLICE / (4 * MIB)) {
            f.write_all_at(&zeros, k * 4 * MIB).unwrap();
        }
        for &(at, len, seed) in &[(MIB, 20 * MIB, 13), (SLICE + MIB, 20 * MIB, 14)] {
            f.write_all_at(&pat(seed, len), at).unwrap();
        }
        f.sync_all().unwrap();
    }
    let out = e.at.join("out.vhd");
    let p = Counting::default();
    let r = convert_to_file(open(&input).as_ref(), &out, &opts(), &p)
        .unwrap_or_else(|err| panic!("a 40 MiB output refused with ~450 MiB free: {err:#}"));
    assert_eq!(r.data_bytes_written, 40 * MIB, "{r:?}");
    check_progress(&p, "thick raw");
    assert_same_disk(&out, &input, "thick raw");
}
