//! Differential tests of the VHD reader against qemu-img 10 and libvhdi (docs/formats.md §4, §6).
//!
//! These tests FAIL when an oracle is missing: install `qemu-utils`, `libvhdi-utils` and
//! `python3-libvhdi` (for /usr/bin/python3). Oracle disagreements they steer around:
//! qemu sizes `vpc `/`qemu` files by CHS (only qemu-written files are compared, whose
//! CurrentSize equals their CHS size), qemu ignores bitmaps and reads differencing disks as
//! dynamic (so differencing chains go to libvhdi), and libvhdi misreads bitmap bytes whose
//! set bits do not run to the byte's last bit and multi-block reads of chains (so chain
//! writes end on 4 KiB boundaries and libvhdi is read in 1 MiB pieces).

use fixtures::vhd::{self as fx, ChainLayer, DynamicOptions, FooterOptions};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use vhdforge_core::{Allocation, DiskImage, DiskType, OpenOptions};

const QEMU_IMG: &str = "/usr/bin/qemu-img";
const PYTHON: &str = "/usr/bin/python3";
const VHDIINFO: &str = "vhdiinfo";

/// Run a command, failing the test (never skipping) when it is missing or fails.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("oracle {cmd} is required for this test and could not be run: {e}")
    });
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Size and SHA-256 of the whole virtual disk as vhdforge reads it (4 MiB pieces).
fn vhdforge_digest(img: &dyn DiskImage) -> (u64, String) {
    let size = img.info().virtual_size;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0;
    while pos < size {
        let n = usize::try_from((size - pos).min(buf.len() as u64)).unwrap();
        img.read_at(&mut buf[..n], pos).unwrap();
        h.update(&buf[..n]);
        pos += n as u64;
    }
    (size, hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn file_digest(p: &Path) -> (u64, String) {
    let b = std::fs::read(p).unwrap();
    (b.len() as u64, hex(&Sha256::digest(&b)))
}

/// A raw disk of `size` bytes with data scattered over several blocks, including the very end.
fn scattered_raw(path: &Path, size: usize) -> Vec<u8> {
    let regions = [
        (0, 5000),
        (3 << 20, 4096),
        ((7 << 20) + 12345, 70000),
        (12 << 20, 1 << 20),
        (size - 3000, 3000),
    ];
    let raw = fixtures::raw::disk_with_regions(size, &regions, 42);
    std::fs::write(path, &raw).unwrap();
    raw
}

/// Data ranges of qemu-img map (`data: true`), merged.
fn qemu_data_ranges(p: &Path) -> Vec<(u64, u64)> {
    let out = run(QEMU_IMG, &["map", "-f", "vpc", "--output=json", s(p)]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut r: Vec<(u64, u64)> = Vec::new();
    for e in v.as_array().unwrap() {
        if e["data"].as_bool() == Some(true) {
            let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            match r.last_mut() {
                Some(last) if last.1 == start => last.1 += len,
                _ => r.push((start, start + len)),
            }
        }
    }
    r
}

fn vhdforge_data_ranges(img: &dyn DiskImage) -> Vec<(u64, u64)> {
    let mut e = Vec::new();
    img.extents(0, img.info().virtual_size, &mut e).unwrap();
    let mut r: Vec<(u64, u64)> = Vec::new();
    for x in e.iter().filter(|x| x.allocation.is_data()) {
        match r.last_mut() {
            Some(last) if last.1 == x.start => last.1 = x.end(),
            _ => r.push((x.start, x.end())),
        }
    }
    r
}

#[test]
fn qemu_written_vhds_read_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, usize, &[&str]); 6] = [
        // Fixed, exact size (creator qem2).
        (
            "fixed_force",
            20 << 20,
            &["-o", "subformat=fixed,force_size=on"],
        ),
        // Fixed, CHS-rounded size (creator qemu; CurrentSize = CHS size).
        ("fixed_chs", 20 << 20, &["-o", "subformat=fixed"]),
        // Dynamic, default 2 MiB blocks.
        ("dynamic", 20 << 20, &[]),
        // Dynamic, exact size.
        ("dynamic_force", 20 << 20, &["-o", "force_size=on"]),
        // Odd size (7 extra sectors): the last block is partial.
        (
            "dynamic_odd",
            (20 << 20) + 7 * 512,
            &["-o", "force_size=on"],
        ),
        // Odd size, fixed.
        (
            "fixed_odd",
            (20 << 20) + 7 * 512,
            &["-o", "subformat=fixed,force_size=on"],
        ),
    ];
    for (name, size, opts) in cases {
        let raw_path = dir.path().join(format!("{name}.raw"));
        scattered_raw(&raw_path, size);
        let vhd = dir.path().join(format!("{name}.vhd"));
        let mut args = vec!["convert", "-f", "raw", "-O", "vpc"];
        args.extend_from_slice(opts);
        args.extend([s(&raw_path), s(&vhd)]);
        run(QEMU_IMG, &args);
        let back = dir.path().join(format!("{name}.back.raw"));
        run(
            QEMU_IMG,
            &["convert", "-f", "vpc", "-O", "raw", s(&vhd), s(&back)],
        );
        let info: serde_json::Value = serde_json::from_str(&run(
            QEMU_IMG,
            &["info", "-f", "vpc", "--output=json", s(&vhd)],
        ))
        .unwrap();

        let img = vhdforge_core::open(&vhd, &OpenOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            Some(img.info().virtual_size),
            info["virtual-size"].as_u64(),
            "{name}: virtual size"
        );
        assert_eq!(
            vhdforge_digest(img.as_ref()),
            file_digest(&back),
            "{name}: content"
        );
        if !name.starts_with("fixed") {
            assert_eq!(img.info().disk_type, DiskType::Dynamic, "{name}");
            assert_eq!(
                vhdforge_data_ranges(img.as_ref()),
                qemu_data_ranges(&vhd),
                "{name}: allocation map"
            );
        }
    }
}

#[test]
fn qemu_created_empty_vhd() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = dir.path().join("empty.vhd");
    run(QEMU_IMG, &["create", "-f", "vpc", s(&vhd), "30M"]);
    let img = vhdforge_core::open(&vhd, &OpenOptions::default()).unwrap();
    let info: serde_json::Value = serde_json::from_str(&run(
        QEMU_IMG,
        &["info", "-f", "vpc", "--output=json", s(&vhd)],
    ))
    .unwrap();
    assert_eq!(Some(img.info().virtual_size), info["virtual-size"].as_u64());
    assert_eq!(
        vhdforge_core::image::allocated_bytes(img.as_ref()).unwrap(),
        0
    );
    let (_, digest) = vhdforge_digest(img.as_ref());
    let zeros = vec![0u8; usize::try_from(img.info().virtual_size).unwrap()];
    assert_eq!(digest, hex(&Sha256::digest(&zeros)));

    // The largest dynamic VHD qemu makes: a 1,044,480-entry BAT read in one call.
    let big = dir.path().join("big.vhd");
    run(QEMU_IMG, &["create", "-f", "vpc", s(&big), "2040G"]);
    let img = vhdforge_core::open(&big, &OpenOptions::default()).unwrap();
    let info: serde_json::Value = serde_json::from_str(&run(
        QEMU_IMG,
        &["info", "-f", "vpc", "--output=json", s(&big)],
    ))
    .unwrap();
    assert_eq!(Some(img.info().virtual_size), info["virtual-size"].as_u64());
    assert_eq!(
        vhdforge_core::image::allocated_bytes(img.as_ref()).unwrap(),
        0
    );
    let mut tail = vec![1u8; 1 << 20];
    img.read_at(&mut tail, img.info().virtual_size - (1 << 20))
        .unwrap();
    assert!(tail.iter().all(|&b| b == 0));
}

/// Read a chain with pyvhdi (parents set explicitly, base first), in 1 MiB pieces; returns
/// (media size, disk type, identifier, parent identifier, sha256).
fn pyvhdi_digest(chain: &[PathBuf]) -> (u64, u64, String, String, String) {
    let script = r#"
import hashlib, sys, pyvhdi
files = []
for p in sys.argv[1:]:
    f = pyvhdi.file()
    f.open(p)
    if files:
        f.set_parent(files[-1])
    files.append(f)
top = files[-1]
h = hashlib.sha256()
size = top.media_size
off = 0
while off < size:
    n = min(1 << 20, size - off)
    h.update(top.read_buffer_at_offset(n, off))
    off += n
print(size, top.disk_type, top.identifier, top.parent_identifier, h.hexdigest())
"#;
    let mut args = vec!["-c", script];
    args.extend(chain.iter().map(|p| s(p)));
    let out = run(PYTHON, &args);
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(f.len(), 5, "pyvhdi output: {out}");
    (
        f[0].parse().unwrap(),
        f[1].parse().unwrap(),
        f[2].into(),
        f[3].into(),
        f[4].into(),
    )
}

/// `vhdiinfo` fields: media size in bytes, disk type, identifier.
fn vhdiinfo(p: &Path) -> (u64, String, String) {
    let out = run(VHDIINFO, &[s(p)]);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(name)
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {name} in vhdiinfo output:\n{out}"))
    };
    let media = field("Media size");
    let bytes = media
        .split('(')
        .nth(1)
        .and_then(|b| b.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    (bytes, field("Disk type"), field("Identifier"))
}

/// Writes that end on 4 KiB boundaries (libvhdi reads such bitmap runs right).
fn chain_layers(depth: usize) -> Vec<ChainLayer> {
    (0..depth)
        .map(|i| {
            let k = i as u64;
            ChainLayer {
                name: format!("layer{i}.vhd"),
                writes: vec![
                    // Whole 4 KiB runs, in a block the base has data in.
                    ((k + 1) * 8192, fixtures::raw::pattern(100 + k, 4096)),
                    // A run starting mid-byte of the bitmap and ending on its last bit.
                    (
                        (3 << 20) + 4096 + 512 * (k + 1),
                        fixtures::raw::pattern(200 + k, 4096 - 512 * (k as usize + 1)),
                    ),
                    // A block the base never allocated, and one past the block boundary.
                    (
                        (5 << 20) + (k << 16),
                        fixtures::raw::pattern(300 + k, 64 << 10),
                    ),
                    ((8 << 20) - 4096, fixtures::raw::pattern(400 + k, 8192)),
                ],
            }
        })
        .collect()
}

#[test]
fn differencing_chains_read_like_libvhdi() {
    for depth in [1usize, 2] {
        let dir = tempfile::tempdir().unwrap();
        let base = fixtures::raw::disk_with_regions(
            12 << 20,
            &[(0, 20000), (3 << 20, 1 << 20), ((8 << 20) - 100, 200)],
            9,
        );
        let layers = chain_layers(depth);
        let (paths, ids) =
            fx::write_chain(dir.path(), &base, "base.vhd", 2 << 20, &layers).unwrap();
        let top = paths.last().unwrap();
        let img = vhdforge_core::open(top, &OpenOptions::default()).unwrap();
        let (size, digest) = vhdforge_digest(img.as_ref());
        let (o_size, o_type, o_id, o_parent, o_digest) = pyvhdi_digest(&paths);
        assert_eq!(size, o_size, "depth {depth}: size");
        assert_eq!(o_type, 4, "depth {depth}: libvhdi type");
        assert_eq!(
            img.info().identifier.unwrap().to_string(),
            o_id,
            "depth {depth}: identifier"
        );
        assert_eq!(
            img.info().parent_identifier.unwrap().to_string(),
            o_parent,
            "depth {depth}: parent identifier"
        );
        assert_eq!(
            img.info().parent_identifier.unwrap().as_bytes(),
            &ids[ids.len() - 2]
        );
        assert_eq!(digest, o_digest, "depth {depth}: content");
        // And both equal the base with the layers applied.
        let mut want = base.clone();
        for l in &layers {
            for (off, d) in &l.writes {
                want[*off as usize..*off as usize + d.len()].copy_from_slice(d);
            }
        }
        assert_eq!(
            digest,
            hex(&Sha256::digest(&want)),
            "depth {depth}: expected content"
        );
        let (i_size, i_type, i_id) = vhdiinfo(top);
        assert_eq!(
            (i_size, i_type.as_str(), i_id),
            (size, "Differential", o_id),
            "depth {depth}: vhdiinfo (libvhdi says Differential)"
        );
        // Every layer of the chain shows up in the map.
        let mut e = Vec::new();
        img.extents(0, size, &mut e).unwrap();
        let deepest = e
            .iter()
            .filter_map(|x| {
                if let Allocation::Data { layer, .. } = x.allocation {
                    Some(layer)
                } else {
                    None
                }
            })
            .max();
        assert_eq!(deepest, Some(depth as u32), "depth {depth}");
    }
}

#[test]
fn fixture_images_read_like_libvhdi() {
    let dir = tempfile::tempdir().unwrap();
    let raw = fixtures::raw::disk_with_regions(
        (6 << 20) + 3 * 512,
        &[(0, 5000), (2 << 20, 300_000), ((6 << 20) - 10, 1546)],
        5,
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Fixed, Hyper-V style.
        (
            "fixed",
            fx::fixed_vhd(&raw, &FooterOptions::default(), false),
        ),
        // Dynamic with 512 KiB blocks.
        (
            "dyn512k",
            fx::dynamic_vhd(
                &raw,
                &DynamicOptions {
                    block_size: 512 << 10,
                    ..DynamicOptions::default()
                },
            ),
        ),
        // Dynamic with cleared bitmap bits over zeroed data (both readers agree on zeros).
        (
            "dyn_cleared",
            fx::dynamic_vhd(
                &raw,
                &DynamicOptions {
                    cleared_sectors: (0..8).chain(4096..4104).collect(),
                    ..DynamicOptions::default()
                },
            ),
        ),
    ];
    for (name, bytes) in cases {
        let p = dir.path().join(format!("{name}.vhd"));
        std::fs::write(&p, bytes).unwrap();
        let img = vhdforge_core::open(&p, &OpenOptions::default()).unwrap();
        let (size, digest) = vhdforge_digest(img.as_ref());
        let (o_size, _, o_id, _, o_digest) = pyvhdi_digest(std::slice::from_ref(&p));
        assert_eq!((size, digest), (o_size, o_digest), "{name}");
        assert_eq!(img.info().identifier.unwrap().to_string(), o_id, "{name}");
        let (i_size, _, _) = vhdiinfo(&p);
        assert_eq!(i_size, size, "{name}");
    }
}

#[test]
fn footer_511_reads_like_qemu() {
    // qemu accepts the 511-byte footer by accident (docs/formats.md §4.4); libvhdi refuses it.
    let dir = tempfile::tempdir().unwrap();
    let raw = fixtures::raw::disk_with_regions(3 << 20, &[(100, 5000), ((3 << 20) - 512, 512)], 3);
    let p = dir.path().join("old.vhd");
    std::fs::write(&p, fx::fixed_vhd(&raw, &FooterOptions::default(), true)).unwrap();
    let back = dir.path().join("old.raw");
    run(
        QEMU_IMG,
        &["convert", "-f", "vpc", "-O", "raw", s(&p), s(&back)],
    );
    let img = vhdforge_core::open(&p, &OpenOptions::default()).unwrap();
    assert_eq!(img.info().vhd_footer_size, Some(511));
    assert_eq!(vhdforge_digest(img.as_ref()), file_digest(&back));
    assert_eq!(file_digest(&back).1, hex(&Sha256::digest(&raw)));
}
