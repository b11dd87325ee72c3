//! Differential tests of the VHDX reader against qemu-img 10 and libvhdi (docs/formats.md §4, §6).
//!
//! qemu writes the 512-byte-sector dynamic and fixed images; vhdforge's fixtures write what
//! qemu cannot (4096-byte sectors, differencing chains, dirty logs) and libvhdi (`vhdiinfo`,
//! `pyvhdi` for /usr/bin/python3) reads them as the second opinion. A missing oracle is a
//! test failure, never a skip.

use fixtures::vhdx::{self as fx, VhdxSpec};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use uuid::Uuid;
use vhdforge_core::{DiskImage, DiskType, OpenOptions, Severity};

const MIB: usize = 1 << 20;

/// Run a tool, failing the test with its output when it is missing or fails.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("oracle `{program}` is required for this test and could not be run: {e}")
        });
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn sha256_file(p: &Path) -> String {
    sha256(&std::fs::read(p).unwrap())
}

/// SHA-256 of the whole virtual disk as vhdforge reads it, in 1 MiB + odd pieces.
fn vhdforge_sha(img: &dyn DiskImage) -> String {
    let size = img.info().virtual_size;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB + 4096];
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        img.read_at(&mut buf[..n], pos).unwrap();
        h.update(&buf[..n]);
        pos += n as u64;
    }
    format!("{:x}", h.finalize())
}

fn open(p: &Path) -> Box<dyn DiskImage> {
    let img = vhdforge_core::open(p, &OpenOptions::default())
        .unwrap_or_else(|e| panic!("vhdforge cannot open {}: {e}", p.display()));
    assert!(
        !img.findings().iter().any(|f| f.severity == Severity::Error),
        "{:?}",
        img.findings()
    );
    img
}

/// A raw disk of `size` bytes with data scattered over blocks of every kind.
fn scattered(size: usize) -> Vec<u8> {
    let regions = [
        (0, 4096),
        (3 * MIB + 512, 5 * MIB),
        (17 * MIB, 1),
        (size / 2, 65536),
        (size - 3 * 512, 3 * 512),
    ];
    fixtures::raw::disk_with_regions(size, &regions, 99)
}

#[test]
fn qemu_written_vhdx_reads_like_its_source() {
    let dir = tempfile::tempdir().unwrap();
    // 40 MiB + 7 sectors: never a multiple of any block size.
    let raw = scattered(40 * MIB + 7 * 512);
    let raw_path = fx::write_file(dir.path(), "src.raw", &raw);
    let want = sha256(&raw);
    // (name, qemu-img create options, expected disk type)
    let cases: [(&str, &str, DiskType); 7] = [
        (
            "dynamic, automatic 8 MiB blocks",
            "subformat=dynamic",
            DiskType::Dynamic,
        ),
        (
            "fixed, qemu's ZERO-state preallocation",
            "subformat=fixed",
            DiskType::Fixed,
        ),
        (
            "fixed, every block FULLY_PRESENT",
            "subformat=fixed,block_state_zero=off",
            DiskType::Fixed,
        ),
        ("1 MiB blocks", "block_size=1M", DiskType::Dynamic),
        ("2 MiB blocks", "block_size=2M", DiskType::Dynamic),
        ("32 MiB blocks", "block_size=32M", DiskType::Dynamic),
        (
            "256 MiB blocks and a 4 MiB log",
            "block_size=256M,log_size=4M",
            DiskType::Dynamic,
        ),
    ];
    for (i, (name, opts, disk_type)) in cases.into_iter().enumerate() {
        let vhdx = dir.path().join(format!("c{i}.vhdx"));
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vhdx",
                "-o",
                opts,
                raw_path.to_str().unwrap(),
                vhdx.to_str().unwrap(),
            ],
        );
        let img = open(&vhdx);
        assert_eq!(img.info().virtual_size, raw.len() as u64, "{name}");
        assert_eq!(img.info().disk_type, disk_type, "{name}");
        assert_eq!(
            vhdforge_sha(img.as_ref()),
            want,
            "{name}: vhdforge's content differs from the source"
        );
        // qemu's own reading agrees with both.
        let back = dir.path().join(format!("c{i}.raw"));
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "vhdx",
                "-O",
                "raw",
                vhdx.to_str().unwrap(),
                back.to_str().unwrap(),
            ],
        );
        assert_eq!(sha256_file(&back), want, "{name}: qemu's own reading");
        // The allocation map never hides data: non-data extents read as zeros in the source.
        let mut ext = Vec::new();
        img.extents(0, raw.len() as u64, &mut ext).unwrap();
        for e in ext.iter().filter(|e| !e.allocation.is_data()) {
            assert!(
                raw[e.start as usize..e.end() as usize]
                    .iter()
                    .all(|&b| b == 0),
                "{name}: {e:?} hides data"
            );
        }
    }
}

/// `vhdiinfo` fields: (media size, bytes per sector, identifier, parent identifier).
fn vhdiinfo(p: &Path) -> (u64, u32, String, Option<String>) {
    let out = run("vhdiinfo", &[p.to_str().unwrap()]);
    let field = |name: &str| {
        out.lines().find_map(|l| {
            l.trim()
                .strip_prefix(name)
                .map(|v| v.trim_start().trim_start_matches(':').trim().to_string())
        })
    };
    let media = field("Media size").unwrap_or_else(|| panic!("no media size in {out}"));
    let media: u64 = media
        .split('(')
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    let bps: u32 = field("Bytes per sector")
        .and_then(|s| s.split(' ').next().and_then(|n| n.parse().ok()))
        .unwrap();
    let id = field("Identifier").unwrap_or_else(|| panic!("no identifier in {out}"));
    (
        media,
        bps,
        id.to_lowercase(),
        field("Parent identifier").map(|s| s.to_lowercase()),
    )
}

const PYVHDI: &str = r#"
import sys, hashlib, pyvhdi
files = []
for p in sys.argv[1:]:
    f = pyvhdi.file()
    f.open(p)
    files.append(f)
for i in reversed(range(len(files) - 1)):
    files[i].set_parent(files[i + 1])
f = files[0]
h = hashlib.sha256()
size, off = f.media_size, 0
# libvhdi misreads some multi-block reads of differencing images: read 1 MiB at most.
while off < size:
    n = min(1 << 20, size - off)
    h.update(f.read_buffer_at_offset(n, off))
    off += n
print(size, f.bytes_per_sector, h.hexdigest())
"#;

/// libvhdi's (size, bytes per sector, SHA-256) of the chain `paths` (child first).
fn pyvhdi(paths: &[&Path]) -> (u64, u32, String) {
    let mut args = vec!["-c", PYVHDI];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    let out = run("/usr/bin/python3", &args);
    let v: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(v.len(), 3, "pyvhdi said: {out}");
    (
        v[0].parse().unwrap(),
        v[1].parse().unwrap(),
        v[2].to_string(),
    )
}

#[test]
fn libvhdi_agrees_on_4096_byte_sector_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    // (name, block size, fixed, virtual size)
    let cases = [
        (
            "dynamic, 1 MiB blocks",
            1u32 << 20,
            false,
            12 * MIB + 5 * 4096,
        ),
        ("dynamic, 4 MiB blocks", 4 << 20, false, 20 * MIB),
        ("fixed, 2 MiB blocks", 2 << 20, true, 9 * MIB),
    ];
    for (i, (name, block_size, fixed, size)) in cases.into_iter().enumerate() {
        let content = scattered(size);
        let id = Uuid::from_u128(0x4000 + i as u128);
        let mut spec = VhdxSpec::dynamic(block_size, id);
        spec.logical_sector_size = 4096;
        spec.fixed = fixed;
        let p = fx::write_file(
            dir.path(),
            &format!("k{i}.vhdx"),
            &fx::build(&spec, &content).bytes,
        );
        let img = open(&p);
        assert_eq!(img.info().logical_sector_size, 4096, "{name}");
        let (media, bps, ident, _) = vhdiinfo(&p);
        assert_eq!((media, bps), (size as u64, 4096), "{name}");
        assert_eq!(
            ident,
            id.to_string(),
            "{name}: vhdiinfo identifier is the DataWriteGuid"
        );
        assert_eq!(img.info().identifier, Some(id), "{name}");
        let (psize, pbps, psha) = pyvhdi(&[&p]);
        assert_eq!((psize, pbps), (size as u64, 4096), "{name}");
        let want = sha256(&content);
        assert_eq!(psha, want, "{name}: libvhdi content");
        assert_eq!(vhdforge_sha(img.as_ref()), want, "{name}: vhdforge content");
    }
}

/// Parent and child fixtures in `dir`; returns their paths and the chain's expected content.
fn chain(
    dir: &Path,
    sector_size: u32,
    child_size: usize,
    parent_size: usize,
) -> (PathBuf, PathBuf, Vec<u8>) {
    let ss = sector_size as usize;
    let parent = scattered(parent_size);
    let mut pspec = VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0xAAAA));
    pspec.logical_sector_size = sector_size;
    let pp = fx::write_file(dir, "base.vhdx", &fx::build(&pspec, &parent).bytes);
    let child = fixtures::raw::pattern(5, child_size);
    // Fully present, partially present (runs ending in the last bit of a byte, single
    // sectors, long runs) and absent blocks.
    let sectors = child_size / ss;
    let per_block = MIB / ss;
    let present: Vec<bool> = (0..sectors)
        .map(|s| match s / per_block {
            0 => true,
            1 => s % 8 >= 5,
            2 => s % 2 == 0,
            3 => (s % per_block) < per_block / 3,
            5 => s % 17 == 3,
            _ => false,
        })
        .collect();
    let mut spec = VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0xBBBB));
    spec.logical_sector_size = sector_size;
    spec.child = Some(fx::ChildSpec {
        parent_linkage: Uuid::from_u128(0xAAAA),
        relative_path: Some(".\\base.vhdx".into()),
        absolute_win32_path: Some("C:\\Hyper-V\\base.vhdx".into()),
        present: present.clone(),
    });
    let cp = fx::write_file(dir, "diff.vhdx", &fx::build(&spec, &child).bytes);
    (cp, pp, fx::chain_content(&parent, &child, &present, ss))
}

#[test]
fn libvhdi_agrees_on_differencing_chains() {
    // (name, sector size, child size, parent size)
    let cases = [
        ("512-byte sectors", 512u32, 8 * MIB, 8 * MIB),
        ("4096-byte sectors", 4096, 8 * MIB, 8 * MIB),
        (
            "parent smaller than the child reads as zeros past its end",
            512,
            8 * MIB,
            6 * MIB + 512,
        ),
    ];
    for (name, ss, csize, psize) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (child, parent, want) = chain(dir.path(), ss, csize, psize);
        let img = open(&child);
        assert_eq!(img.info().disk_type, DiskType::Differencing, "{name}");
        assert_eq!(
            img.info().parent_identifier,
            Some(Uuid::from_u128(0xAAAA)),
            "{name}"
        );
        let (media, bps, ident, pid) = vhdiinfo(&child);
        assert_eq!((media, bps), (csize as u64, ss), "{name}");
        assert_eq!(ident, Uuid::from_u128(0xBBBB).to_string(), "{name}");
        assert_eq!(pid, Some(Uuid::from_u128(0xAAAA).to_string()), "{name}");
        assert_eq!(
            vhdforge_sha(img.as_ref()),
            sha256(&want),
            "{name}: vhdforge content"
        );
        if psize == csize {
            // libvhdi reads past a smaller parent's end differently; compare it on equal sizes.
            let (_, _, psha) = pyvhdi(&[&child, &parent]);
            assert_eq!(psha, sha256(&want), "{name}: libvhdi content");
        }
    }
}

#[test]
fn dirty_log_fixture_replays_in_memory_and_matches_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let content = scattered(24 * MIB);
    let mut built = fx::build(&VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0xD1)), &content);
    fx::make_dirty(&mut built, Uuid::from_u128(0x106), None);
    let p = fx::write_file(dir.path(), "dirty.vhdx", &built.bytes);
    let before = sha256_file(&p);
    let img = open(&p);
    assert!(img.findings().iter().any(|f| f.code == "vhdx.log.replayed"));
    assert_eq!(
        vhdforge_sha(img.as_ref()),
        sha256(&content),
        "vhdforge content after replay"
    );
    drop(img);
    assert_eq!(
        sha256_file(&p),
        before,
        "opening must not modify the source"
    );

    // qemu replays the same log for real (on a copy) and reads the same content.
    let copy = dir.path().join("copy.vhdx");
    std::fs::copy(&p, &copy).unwrap();
    run(
        "qemu-img",
        &["check", "-r", "all", "-f", "vhdx", copy.to_str().unwrap()],
    );
    let out = dir.path().join("out.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "vhdx",
            "-O",
            "raw",
            copy.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(
        sha256_file(&out),
        sha256(&content),
        "qemu's replay of the fixture log"
    );
}

/// qemu's reading of a VHDX as raw: the SHA-256, or `None` when qemu refuses the file.
fn qemu_sha(p: &Path, dir: &Path) -> Option<String> {
    let out = dir.join("qemu-out.raw");
    let status = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "vhdx",
            "-O",
            "raw",
            p.to_str().unwrap(),
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("oracle `qemu-img` is required for this test and could not be run: {e}")
        })
        .status;
    status.success().then(|| sha256_file(&out))
}

/// A deliberate edit of a file's bytes.
type Damage = fn(&mut [u8]);

#[test]
fn damaged_copies_compared_with_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let raw = scattered(16 * MIB);
    let raw_path = fx::write_file(dir.path(), "src.raw", &raw);
    let clean = dir.path().join("clean.vhdx");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vhdx",
            raw_path.to_str().unwrap(),
            clean.to_str().unwrap(),
        ],
    );
    let clean = std::fs::read(&clean).unwrap();
    let want = sha256(&raw);
    // (name, damage, vhdforge reads it, qemu reads it)
    let cases: [(&str, Damage, bool, bool); 3] = [
        (
            "header 1 checksum: both use header 2",
            fx::corrupt_header1_checksum,
            true,
            true,
        ),
        (
            "both headers: both refuse",
            |b| {
                fx::corrupt_header1_checksum(b);
                b[fx::HEADER2 + 1000] ^= 1;
            },
            false,
            false,
        ),
        // docs/formats.md §2.5: qemu reads only copy 1; vhdforge's fallback to copy 2 is an extension.
        (
            "region table 1: vhdforge falls back, qemu refuses",
            fx::corrupt_region_table1,
            true,
            false,
        ),
    ];
    for (i, (name, damage, ours, qemu)) in cases.into_iter().enumerate() {
        let mut bytes = clean.clone();
        damage(&mut bytes);
        let p = fx::write_file(dir.path(), &format!("d{i}.vhdx"), &bytes);
        let q = qemu_sha(&p, dir.path());
        assert_eq!(q.is_some(), qemu, "{name}: qemu");
        if let Some(q) = q {
            assert_eq!(q, want, "{name}: qemu content");
        }
        match vhdforge_core::open(&p, &OpenOptions::default()) {
            Ok(img) => {
                assert!(ours, "{name}: vhdforge opened it");
                assert!(
                    img.findings()
                        .iter()
                        .any(|f| f.severity == Severity::Warning),
                    "{name}: no warning"
                );
                assert_eq!(vhdforge_sha(img.as_ref()), want, "{name}: vhdforge content");
            }
            Err(e) => assert!(!ours, "{name}: vhdforge refused: {e}"),
        }
    }
}

#[test]
fn qemu_created_large_sparse_disks_open_from_metadata() {
    let dir = tempfile::tempdir().unwrap();
    // (size argument, virtual size, qemu's automatic block size: docs/formats.md §4.1)
    let cases = [
        ("2T", 2u64 << 40, 32u64 << 20),
        ("33T", 33 << 40, 64 << 20),
        ("100G", 100 << 30, 16 << 20),
    ];
    for (arg, size, block) in cases {
        let p = dir.path().join(format!("{arg}.vhdx"));
        run(
            "qemu-img",
            &["create", "-q", "-f", "vhdx", p.to_str().unwrap(), arg],
        );
        let img = open(&p);
        assert_eq!(img.info().virtual_size, size, "{arg}");
        assert_eq!(img.info().block_size, Some(block), "{arg}");
        assert_eq!(
            vhdforge_core::image::allocated_bytes(img.as_ref()).unwrap(),
            0,
            "{arg}"
        );
        let mut buf = vec![1u8; 4096];
        img.read_at(&mut buf, size - 4096).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "{arg}");
    }
}
