//! Red team of the clone pass of `convert` (XFS with reflink in a loop-mounted image file;
//! CI runs as root). Each test attacks one way the output could stop being the input disk
//! when blocks are shared instead of copied: a VHDX log that rewrites payload in memory, raw
//! and fixed VHD inputs with holes and odd tails, 4K-sector VHDX, chains that loop back to
//! the same inode, a symbolic link planted at OUT, cancellation in the middle of cloning,
//! and an input changed or truncated in place after it was opened. Every output is compared
//! with the disk (the fixture's known content, or `qemu-img convert -O raw`). A missing tool
//! (mkfs.xfs, qemu-img) fails the test.

mod loop_mount;

use loop_mount::{run, s, Mounted};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use uuid::Uuid;
use vhdforge_core::convert::{convert_to_file, ConvertOptions, ConvertReport, Policy};
use vhdforge_core::progress::{Cancel, NoProgress, Progress};
use vhdforge_core::DiskImage;

const MIB: u64 = 1 << 20;

/// The XFS (reflink) these attacks run on.
fn xfs() -> Mounted {
    Mounted::new("xfs")
}

fn opts(no_clone: bool) -> ConvertOptions {
    ConvertOptions {
        policy: Policy {
            unique_id: Some([9; 16]),
            time_stamp: Some(4321),
            // Small disks keep these tests quick.
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

fn convert(input: &Path, out: &Path, no_clone: bool) -> ConvertReport {
    convert_to_file(open(input).as_ref(), out, &opts(no_clone), &NoProgress).unwrap()
}

/// The output's first `disk.len()` bytes are `disk`, and the rest up to the footer is zero.
fn assert_holds(out: &Path, disk: &[u8], what: &str) {
    let o = std::fs::read(out).unwrap();
    assert!(o.len() >= disk.len() + 512, "{what}: output too short");
    let first_bad = o[..disk.len()].iter().zip(disk).position(|(a, b)| a != b);
    assert!(
        first_bad.is_none(),
        "{what}: the output differs from the disk at byte {first_bad:?}"
    );
    assert!(
        o[disk.len()..o.len() - 512].iter().all(|&b| b == 0),
        "{what}: the padding is not zero"
    );
}

/// A recognisable disk: runs of patterned data, zero elsewhere.
fn disk_with_runs(size: u64, runs: &[(u64, u64)]) -> Vec<u8> {
    let mut d = vec![0u8; usize::try_from(size).unwrap()];
    for (i, &(at, len)) in runs.iter().enumerate() {
        let (a, n) = (usize::try_from(at).unwrap(), usize::try_from(len).unwrap());
        d[a..a + n].copy_from_slice(&fixtures::raw::pattern(i as u64 + 11, n));
    }
    d
}

/// File offset of the payload of VHDX block `i` (non-differencing: one sector-bitmap entry
/// after every chunk of blocks, never reached by the small disks here).
fn payload_offset(built: &fixtures::vhdx::Built, i: u64) -> u64 {
    let at = usize::try_from(built.bat.0 + 8 * i).unwrap();
    let e = u64::from_le_bytes(built.bytes[at..at + 8].try_into().unwrap());
    assert_eq!(e & 7, fixtures::vhdx::FULLY_PRESENT, "block {i} is stored");
    e & !(MIB - 1)
}

#[test]
fn a_log_that_rewrites_payload_is_never_cloned() {
    // The log holds new content for a page inside a stored payload block: the disk is the
    // replayed content, while the file still holds the old bytes there. Cloning that block
    // would put the old bytes in the output.
    let m = xfs();
    let size = 16 * MIB;
    let disk = disk_with_runs(size, &[(0, 8 * MIB), (10 * MIB, 6 * MIB)]);
    let spec = fixtures::vhdx::VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(0xd1));
    let mut built = fixtures::vhdx::build(&spec, &disk);
    let block = 3;
    let page_at = payload_offset(&built, block) + 8192;
    let new_page = vec![0xC3u8; 4096];
    fixtures::vhdx::write_log(
        &mut built.bytes,
        Uuid::from_u128(0x106),
        &[(page_at, new_page.clone())],
    );
    let input = fixtures::vhdx::write_file(&m.at, "dirty.vhdx", &built.bytes);
    let mut expected = disk.clone();
    let v = usize::try_from(block * MIB + 8192).unwrap();
    expected[v..v + 4096].copy_from_slice(&new_page);
    let out = m.at.join("out.vhd");
    let r = convert(&input, &out, false);
    assert_eq!(r.data_bytes_cloned, 0, "a replayed image was cloned: {r:?}");
    assert_holds(&out, &expected, "dirty VHDX");
    // The input was not replayed on disk.
    assert!(std::fs::read(&input).unwrap() == built.bytes);
}

#[test]
fn raw_and_fixed_vhd_with_holes_and_odd_tails_clone_exactly() {
    let m = xfs();
    // Raw: 37 MiB + 3 sectors; data runs that start and end off MiB and off page, holes
    // between them, and a tail shorter than a unit.
    let size = 37 * MIB + 1536;
    let runs = [
        (512, 3 * MIB),
        (5 * MIB + 4096, 9 * MIB + 512),
        (20 * MIB, 4 * MIB),
        (36 * MIB + 1024, MIB + 512),
    ];
    let disk = disk_with_runs(size, &runs);
    let raw = m.at.join("holes.raw");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&raw).unwrap();
        f.set_len(size).unwrap();
        for &(at, len) in &runs {
            let (a, n) = (usize::try_from(at).unwrap(), usize::try_from(len).unwrap());
            f.write_all_at(&disk[a..a + n], at).unwrap();
        }
    }
    let (cl, cp) = (m.at.join("raw-cloned.vhd"), m.at.join("raw-copied.vhd"));
    let r = convert(&raw, &cl, false);
    assert!(
        r.data_bytes_cloned >= 10 * MIB,
        "raw data was cloned: {r:?}"
    );
    convert(&raw, &cp, true);
    assert_holds(&cl, &disk, "raw, cloned");
    assert!(std::fs::read(&cl).unwrap() == std::fs::read(&cp).unwrap());

    // Fixed VHD made by qemu-img (its own size rounding); the oracle is qemu-img's raw.
    let vhd = m.at.join("fixed.vhd");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "vpc",
            "-o",
            "subformat=fixed,force_size=on",
            s(&raw),
            s(&vhd),
        ],
    );
    let oracle = m.at.join("fixed.raw");
    run("qemu-img", &["convert", "-O", "raw", s(&vhd), s(&oracle)]);
    let expected = std::fs::read(&oracle).unwrap();
    let out = m.at.join("fixed-out.vhd");
    // qemu-img reads a fixed VHD's footer as one more sector of the disk; the disk proper
    // comes first.
    assert!(
        expected[..disk.len()] == disk[..],
        "qemu-img does not see the raw disk"
    );
    let r = convert(&vhd, &out, false);
    assert!(
        r.data_bytes_cloned >= 10 * MIB,
        "fixed VHD data was cloned: {r:?}"
    );
    assert_eq!(r.virtual_size, size, "{r:?}");
    assert_holds(&out, &disk, "fixed VHD");
}

#[test]
fn a_4k_sector_vhdx_is_refused_or_converted_exactly() {
    let m = xfs();
    let size = 12 * MIB;
    let disk = disk_with_runs(size, &[(0, 5 * MIB), (7 * MIB, 5 * MIB)]);
    let mut spec = fixtures::vhdx::VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(0x4c));
    spec.logical_sector_size = 4096;
    let input =
        fixtures::vhdx::write_file(&m.at, "4k.vhdx", &fixtures::vhdx::build(&spec, &disk).bytes);
    let out = m.at.join("out.vhd");
    match convert_to_file(open(&input).as_ref(), &out, &opts(false), &NoProgress) {
        Ok(_) => assert_holds(&out, &disk, "4K VHDX"),
        Err(e) => {
            assert!(!out.exists(), "refused, yet {} exists", out.display());
            assert!(e.to_string().contains("4096"), "{e}");
        }
    }
}

/// A differencing VHDX whose parent locator names `parent_name` and whose parent linkage is
/// its own identity: a child that is its own parent once `parent_name` leads back to it.
fn self_parent_child(dir: &Path) -> PathBuf {
    use fixtures::vhdx::{ChildSpec, VhdxSpec};
    let size = 8 * MIB;
    let content = disk_with_runs(size, &[(MIB, 2 * MIB)]);
    let me = Uuid::from_u128(0x5e1f);
    let mut spec = VhdxSpec::dynamic(MIB as u32, me);
    spec.child = Some(ChildSpec {
        parent_linkage: me,
        relative_path: Some(".\\parent.vhdx".into()),
        absolute_win32_path: None,
        present: (0..size / 512)
            .map(|k| (MIB..3 * MIB).contains(&(k * 512)))
            .collect(),
    });
    fixtures::vhdx::write_file(
        dir,
        "child.avhdx",
        &fixtures::vhdx::build(&spec, &content).bytes,
    )
}

#[test]
fn a_child_that_is_its_own_parent_is_refused() {
    // Through a symbolic link and through a hard link: the same inode twice in one chain.
    let m = xfs();
    let child = self_parent_child(&m.at);
    let parent = m.at.join("parent.vhdx");
    for how in ["symlink", "hard link"] {
        let _ = std::fs::remove_file(&parent);
        if how == "symlink" {
            std::os::unix::fs::symlink(&child, &parent).unwrap();
        } else {
            std::fs::hard_link(&child, &parent).unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let c = child.clone();
        std::thread::spawn(move || {
            let r = vhdforge_core::open(&c, &Default::default()).map(|_| ());
            let _ = tx.send(r.map_err(|e| (e.code().to_string(), e.to_string())));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{how}: opening a self-parented child hangs"));
        let (code, msg) = r.expect_err(&format!("{how}: a chain of one inode was opened"));
        assert!(
            code == "parent.loop" || code == "parent.chain_too_deep",
            "{how}: {code}: {msg}"
        );
        eprintln!("{how}: {code}: {msg}");
    }
}

#[test]
fn a_symlink_planted_at_out_is_never_written_through() {
    let m = xfs();
    let size = 8 * MIB;
    let disk = disk_with_runs(size, &[(0, 8 * MIB)]);
    let input = m.at.join("in.raw");
    std::fs::write(&input, &disk).unwrap();
    let victim = m.at.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let out = m.at.join("out.vhd");
    std::os::unix::fs::symlink(&victim, &out).unwrap();
    let err = convert_to_file(open(&input).as_ref(), &out, &opts(false), &NoProgress)
        .expect_err("a link at OUT is replaced without --force");
    assert_eq!(err.code().to_string(), "convert.output_exists", "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let forced = ConvertOptions {
        force: true,
        ..opts(false)
    };
    let r = convert_to_file(open(&input).as_ref(), &out, &forced, &NoProgress).unwrap();
    assert!(r.data_bytes_cloned >= 8 * MIB, "{r:?}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!std::fs::symlink_metadata(&out)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_holds(&out, &disk, "forced over a link");
    // A hard link to the victim at OUT: --force replaces the name, never the victim's data.
    std::fs::remove_file(&out).unwrap();
    std::fs::hard_link(&victim, &out).unwrap();
    convert_to_file(open(&input).as_ref(), &out, &forced, &NoProgress).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_holds(&out, &disk, "forced over a hard link");
}

/// Cancels once `after` bytes of progress were reported.
struct CancelAfter {
    after: u64,
    done: AtomicU64,
    token: Cancel,
}

impl Progress for CancelAfter {
    fn advance(&self, bytes: u64) {
        if self.done.fetch_add(bytes, Ordering::SeqCst) + bytes >= self.after {
            self.token.cancel();
        }
    }
    fn cancel(&self) -> Cancel {
        self.token.clone()
    }
}

#[test]
fn cancelling_in_the_middle_of_cloning_leaves_nothing() {
    // A VHDX with many separate stored blocks (one extent each, so the pass checks the
    // token between them); cancelled after the first clone.
    let m = xfs();
    let size = 64 * MIB;
    let runs: Vec<(u64, u64)> = (0..32).map(|k| (2 * k * MIB, MIB)).collect();
    let disk = disk_with_runs(size, &runs);
    let spec = fixtures::vhdx::VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(0xcc));
    let input =
        fixtures::vhdx::write_file(&m.at, "in.vhdx", &fixtures::vhdx::build(&spec, &disk).bytes);
    let out = m.at.join("out.vhd");
    let p = CancelAfter {
        after: 1,
        done: AtomicU64::new(0),
        token: Cancel::new(),
    };
    let err = convert_to_file(open(&input).as_ref(), &out, &opts(false), &p)
        .expect_err("a cancelled convert succeeded");
    assert_eq!(err.kind(), vhdforge_core::ErrorKind::Interrupted, "{err}");
    // Cancelled at the first clone: far less than the disk was shared.
    let done = p.done.load(Ordering::SeqCst);
    assert!(
        done < 8 * MIB,
        "cancellation was noticed late: {done} bytes"
    );
    let left: Vec<_> = std::fs::read_dir(&m.at)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "in.vhdx")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn an_input_rewritten_in_place_after_open_converts_as_a_copy_would() {
    // Same inode, new content, after open and before convert: cloning and copying both
    // take the file's content at the time they read it, so both give the new content.
    let m = xfs();
    let size = 16 * MIB;
    let old = disk_with_runs(size, &[(0, 16 * MIB)]);
    let input = m.at.join("in.raw");
    std::fs::write(&input, &old).unwrap();
    let new: Vec<u8> = old.iter().map(|b| b ^ 0xA5).collect();
    let mut outs = Vec::new();
    for no_clone in [false, true] {
        std::fs::write(&input, &old).unwrap();
        let image = open(&input);
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&input)
                .unwrap();
            f.write_all_at(&new, 0).unwrap();
        }
        let out = m.at.join(format!("out-{no_clone}.vhd"));
        let r = convert_to_file(image.as_ref(), &out, &opts(no_clone), &NoProgress).unwrap();
        eprintln!("no_clone={no_clone}: {r:?}");
        outs.push(std::fs::read(&out).unwrap());
    }
    assert!(outs[0] == outs[1], "cloning and copying disagree");
    assert!(outs[0][..new.len()] == new[..]);
}

#[test]
fn an_input_truncated_in_place_after_open_is_refused_as_a_copy_would() {
    // A VHDX loses its end (same inode) after it was opened: the middle of a stored run now
    // lies past the end of the file. A copy cannot read it and fails; a clone must not
    // quietly share the part that is left and leave the rest as zeros.
    let m = xfs();
    let size = 24 * MIB;
    let disk = disk_with_runs(size, &[(0, 24 * MIB)]);
    let spec = fixtures::vhdx::VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(0x7c));
    let built = fixtures::vhdx::build(&spec, &disk);
    // Cut in the middle of block 20's payload (blocks are laid out in order).
    let cut = payload_offset(&built, 20) + MIB / 2;
    for no_clone in [false, true] {
        let input = fixtures::vhdx::write_file(&m.at, "in.vhdx", &built.bytes);
        let image = open(&input);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&input)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let out = m.at.join(format!("out-{no_clone}.vhd"));
        let r = convert_to_file(image.as_ref(), &out, &opts(no_clone), &NoProgress);
        match r {
            Err(e) => assert!(!out.exists(), "no_clone={no_clone}: {e}, yet OUT exists"),
            Ok(r) => {
                let o = std::fs::read(&out).unwrap();
                let bad = o[..disk.len()].iter().zip(&disk).position(|(a, b)| a != b);
                panic!(
                    "no_clone={no_clone}: a truncated input converted without error ({r:?}); \
                     first byte differing from the disk: {bad:?}"
                );
            }
        }
    }
}

/// Per 512-byte sector of `size` bytes: true inside any of `ranges` (bytes).
fn sectors(size: u64, ranges: &[(u64, u64)]) -> Vec<bool> {
    (0..size / 512)
        .map(|k| ranges.iter().any(|&(a, n)| (a..a + n).contains(&(k * 512))))
        .collect()
}

/// A three-layer VHDX chain on one XFS: grandparent, parent and child each store whole
/// blocks (cloned) and partially present blocks (sector runs, copied). With `dirty_middle`
/// the parent's log rewrites a page of one of its payload blocks. Returns the child and
/// the chain's disk.
fn three_layers(dir: &Path, dirty_middle: bool) -> (PathBuf, Vec<u8>) {
    use fixtures::vhdx::{self as fvhdx, ChildSpec, VhdxSpec};
    let size = 32 * MIB;
    let block = MIB as u32;
    let g = disk_with_runs(size, &[(0, 32 * MIB)]);
    fvhdx::write_file(
        dir,
        "gp.vhdx",
        &fvhdx::build(&VhdxSpec::dynamic(block, Uuid::from_u128(0xa1)), &g).bytes,
    );
    let layer = |name: &str, me: u128, parent: u128, pname: &str, seed: u64, present: &[bool]| {
        let mut spec = VhdxSpec::dynamic(block, Uuid::from_u128(me));
        spec.child = Some(ChildSpec {
            parent_linkage: Uuid::from_u128(parent),
            relative_path: Some(format!(".\\{pname}")),
            absolute_win32_path: None,
            present: present.to_vec(),
        });
        let content = fixtures::raw::pattern(seed, usize::try_from(size).unwrap());
        (fvhdx::build(&spec, &content), content, name.to_string())
    };
    // Parent: blocks 4..12 whole, half of block 14, a sector run across blocks 15/16.
    let p_present = sectors(
        size,
        &[
            (4 * MIB, 8 * MIB),
            (14 * MIB, MIB / 2),
            (15 * MIB + 3584, MIB + 1024),
        ],
    );
    let (mut pb, pc, pn) = layer("p.avhdx", 0xa2, 0xa1, "gp.vhdx", 0x77, &p_present);
    let mut pdisk = fvhdx::chain_content(&g, &pc, &p_present, 512);
    if dirty_middle {
        // Block 6 is the parent's third stored block: blocks are laid out in order.
        let at = payload_offset(&pb, 6) + 4096;
        let page = vec![0x3Cu8; 4096];
        fvhdx::write_log(&mut pb.bytes, Uuid::from_u128(0x10a), &[(at, page.clone())]);
        let v = usize::try_from(6 * MIB + 4096).unwrap();
        pdisk[v..v + 4096].copy_from_slice(&page);
    }
    fvhdx::write_file(dir, &pn, &pb.bytes);
    // Child: blocks 8..10 and 20..24 whole, sectors 100..300 of block 11.
    let c_present = sectors(
        size,
        &[
            (8 * MIB, 2 * MIB),
            (20 * MIB, 4 * MIB),
            (11 * MIB + 51200, 102_400),
        ],
    );
    let (cb, cc, cn) = layer("c.avhdx", 0xa3, 0xa2, "p.avhdx", 0x99, &c_present);
    let child = fvhdx::write_file(dir, &cn, &cb.bytes);
    (child, fvhdx::chain_content(&pdisk, &cc, &c_present, 512))
}

#[test]
fn every_layer_of_a_chain_on_one_file_system_clones_from_its_own_file() {
    // The existing chain test has its parent on another file system, so only layer 0 was
    // ever cloned; here layers 1 and 2 are cloned too, and a wrong layer-to-file mapping
    // would show in the content.
    let m = xfs();
    let (child, disk) = three_layers(&m.at, false);
    let (cl, cp) = (m.at.join("cloned.vhd"), m.at.join("copied.vhd"));
    let r = convert(&child, &cl, false);
    // Whole blocks: child 6, parent 8 - 2 hidden by the child, grandparent the other 18.
    assert!(r.data_bytes_cloned >= 28 * MIB, "{r:?}");
    assert_holds(&cl, &disk, "three-layer chain, cloned");
    convert(&child, &cp, true);
    assert!(std::fs::read(&cl).unwrap() == std::fs::read(&cp).unwrap());
}

#[test]
fn a_dirty_middle_layer_stops_all_cloning() {
    let m = xfs();
    let (child, disk) = three_layers(&m.at, true);
    let out = m.at.join("out.vhd");
    let r = convert(&child, &out, false);
    assert_eq!(r.data_bytes_cloned, 0, "{r:?}");
    assert_holds(&out, &disk, "chain with a dirty parent");
}

#[test]
fn an_input_named_like_a_stale_temporary_file_is_not_deleted() {
    // Before creating its temporary file, convert removes `.OUT.vhdforge-partial-PID-*`
    // files whose process is gone. An input (or a parent) that happens to carry such a
    // name is not an orphan: it must survive the conversion.
    let m = xfs();
    let size = 8 * MIB;
    let disk = disk_with_runs(size, &[(0, 8 * MIB)]);
    // A PID above the kernel's maximum (4194304) is never running.
    let input = m.at.join(".out.vhd.vhdforge-partial-4194999-abcdef");
    std::fs::write(&input, &disk).unwrap();
    let out = m.at.join("out.vhd");
    let r = convert(&input, &out, false);
    assert!(
        input.exists(),
        "convert deleted its own input {} ({r:?})",
        input.display()
    );
    assert!(std::fs::read(&input).unwrap() == disk);
    assert_holds(&out, &disk, "input named like an orphan");

    // The same for a parent: a child VHDX beside OUT whose parent carries such a name.
    use fixtures::vhdx::{self as fvhdx, ChildSpec, VhdxSpec};
    let pname = ".out2.vhd.vhdforge-partial-4194998-p";
    let parent = fvhdx::write_file(
        &m.at,
        pname,
        &fvhdx::build(&VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(0xb1)), &disk).bytes,
    );
    let mut spec = VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(0xb2));
    spec.child = Some(ChildSpec {
        parent_linkage: Uuid::from_u128(0xb1),
        relative_path: Some(format!(".\\{pname}")),
        absolute_win32_path: None,
        present: vec![false; usize::try_from(size / 512).unwrap()],
    });
    let child = fvhdx::write_file(&m.at, "c.avhdx", &fvhdx::build(&spec, &disk).bytes);
    let out2 = m.at.join("out2.vhd");
    convert(&child, &out2, false);
    assert!(
        parent.exists(),
        "convert deleted the parent {}",
        parent.display()
    );
    assert_holds(&out2, &disk, "parent named like an orphan");
}

#[test]
fn dynamic_vhd_blocks_that_land_aligned_honour_cleared_bitmap_bits() {
    // A dynamic VHD laid out so that every 8th block's data is 4 KiB-aligned in the file
    // (BAT of 512 entries: the first data starts at 4096, each block adds a 512-byte
    // bitmap), with stale data kept under cleared bitmap bits of those blocks. Cloning a
    // whole unit would bring the stale bytes back; the copy path honours the bitmap.
    use fixtures::vhd::{Block, FooterOptions, SparseVhd};
    let m = xfs();
    let bs: u32 = 2 << 20;
    let size = 24 * MIB;
    let disk = disk_with_runs(size, &[(0, 24 * MIB)]);
    let mut v = SparseVhd::new(size, bs, FooterOptions::default());
    v.max_table_entries = Some(512);
    let bits = usize::try_from(bs / 512 / 8).unwrap();
    for (i, chunk) in disk.chunks(bs as usize).enumerate() {
        v.blocks.insert(
            u32::try_from(i).unwrap(),
            Block {
                bitmap: vec![0xFF; bits],
                data: chunk.to_vec(),
            },
        );
    }
    // Cleared: sector 1000 of block 0, sectors 64..2112 (a whole MiB unit) of block 8.
    let mut expected = disk.clone();
    for (block, range) in [(0u32, 1000..1001), (8, 64..2112)] {
        let b = v.blocks.get_mut(&block).unwrap();
        for s in range {
            b.bitmap[s / 8] &= !(0x80 >> (s % 8));
            let at = usize::try_from(u64::from(block) * u64::from(bs)).unwrap() + s * 512;
            expected[at..at + 512].fill(0);
        }
    }
    let bytes = v.build();
    // The layout this test relies on: block 8's data is 4 KiB-aligned.
    let bat = |i: usize| u32::from_be_bytes(bytes[1536 + 4 * i..1540 + 4 * i].try_into().unwrap());
    assert_eq!(
        (u64::from(bat(8)) * 512 + 512) % 4096,
        0,
        "block 8 is not aligned"
    );
    let input = m.at.join("dyn.vhd");
    std::fs::write(&input, &bytes).unwrap();
    let (cl, cp) = (m.at.join("cloned.vhd"), m.at.join("copied.vhd"));
    let r = convert(&input, &cl, false);
    // Of the two aligned blocks (0 and 8 of 12) only block 0's second MiB is whole data.
    assert_eq!(r.data_bytes_cloned, MIB, "{r:?}");
    convert(&input, &cp, true);
    assert!(
        std::fs::read(&cl).unwrap() == std::fs::read(&cp).unwrap(),
        "cloning and copying disagree"
    );
    assert_holds(&cl, &expected, "dynamic VHD with cleared bits");
}

#[test]
fn a_btrfs_nodatacow_input_is_copied_not_half_cloned() {
    // btrfs refuses to share blocks between a NOCOW file and a normal one: the refusal
    // comes at the first clone, and everything must then be copied exactly.
    let m = Mounted::new("btrfs");
    let size = 24 * MIB;
    let disk = disk_with_runs(size, &[(0, 9 * MIB), (12 * MIB + 4096, 12 * MIB - 4096)]);
    let input = m.at.join("nocow.raw");
    std::fs::File::create(&input).unwrap();
    run("chattr", &["+C", s(&input)]);
    std::fs::write(&input, &disk).unwrap();
    let out = m.at.join("out.vhd");
    let r = convert(&input, &out, false);
    assert_eq!(r.data_bytes_cloned, 0, "{r:?}");
    assert!(r.data_bytes_written > 20 * MIB, "{r:?}");
    assert_holds(&out, &disk, "btrfs NOCOW input");
}
