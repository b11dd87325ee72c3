//! Tests of the VHD reader against images built by `fixtures::vhd`.

use super::*;
#[cfg(unix)]
use crate::format::testing::mkfifo;
use crate::format::testing::within;
use crate::format::{open_parent, OpenOptions};
use crate::io::MemSource;
use crate::Severity;
use fixtures::vhd::{self as fx, ChainLayer, DynamicOptions, FooterOptions, Locator, ParentLink};
use proptest::prelude::*;
use std::path::PathBuf;

/// A table case's edit of the image bytes.
type Edit = Box<dyn Fn(&mut Vec<u8>)>;
/// A table case's parent link, given the parent's id.
type LinkFn = Box<dyn Fn([u8; 16]) -> ParentLink>;

fn open_mem(bytes: Vec<u8>) -> Result<VhdImage> {
    let opts = OpenOptions::default();
    let mut ctx = OpenContext::new(&opts);
    VhdImage::open(
        Arc::new(MemSource::new(bytes)),
        Path::new("/nonexistent/mem.vhd"),
        &mut ctx,
    )
}

fn read_all(img: &dyn DiskImage) -> Result<Vec<u8>> {
    let mut v = vec![0u8; usize::try_from(img.info().virtual_size).unwrap()];
    img.read_at(&mut v, 0)?;
    Ok(v)
}

fn codes(img: &dyn DiskImage) -> Vec<(Severity, &'static str)> {
    img.findings()
        .iter()
        .map(|f| (f.severity, f.code.as_str()))
        .collect()
}

fn has(img: &dyn DiskImage, sev: Severity, code: &str) -> bool {
    img.findings()
        .iter()
        .any(|f| f.severity == sev && f.code == code)
}

/// 16 blocks of 4 KiB with data in blocks 0, 3, 4 and 15 (the last one partial).
fn small_raw() -> Vec<u8> {
    fixtures::raw::disk_with_regions(
        16 * 4096 - 1024,
        &[(0, 4096), (3 * 4096 + 100, 5000), (15 * 4096, 1000)],
        7,
    )
}

fn small_dynamic() -> Vec<u8> {
    fx::dynamic_vhd(
        &small_raw(),
        &DynamicOptions {
            block_size: 4096,
            ..DynamicOptions::default()
        },
    )
}

fn set_be32(v: &mut [u8], at: usize, x: u32) {
    v[at..at + 4].copy_from_slice(&x.to_be_bytes());
}

/// Apply `edit` to both footers (copy and trailing) and refresh their checksums.
fn edit_footers(v: &mut [u8], edit: impl Fn(&mut [u8])) {
    let n = v.len();
    edit(&mut v[..512]);
    fx::refresh_footer_checksum(&mut v[..512]);
    edit(&mut v[n - 512..]);
    fx::refresh_footer_checksum(&mut v[n - 512..]);
}

fn edit_header(v: &mut [u8], edit: impl Fn(&mut [u8])) {
    edit(&mut v[512..1536]);
    fx::refresh_header_checksum(&mut v[512..1536]);
}

#[test]
fn fixed_reads_and_reports() {
    let raw = fixtures::raw::disk_with_regions(64 << 10, &[(1000, 3000), (40 << 10, 512)], 1);
    let o = FooterOptions {
        creator: *b"wa\0\0",
        unique_id: [9; 16],
        ..FooterOptions::default()
    };
    for footer_511 in [false, true] {
        let img = open_mem(fx::fixed_vhd(&raw, &o, footer_511)).unwrap();
        let i = img.info();
        assert_eq!(
            (i.disk_type, i.virtual_size, i.block_size),
            (DiskType::Fixed, 64 << 10, None)
        );
        assert_eq!(i.vhd_footer_size, Some(if footer_511 { 511 } else { 512 }));
        assert_eq!(i.identifier, Some(Uuid::from_bytes([9; 16])));
        assert_eq!(i.creator.as_deref(), Some("wa"));
        assert!(img.findings().is_empty(), "{:?}", img.findings());
        assert_eq!(read_all(&img).unwrap(), raw);
        let mut e = Vec::new();
        img.extents(0, 64 << 10, &mut e).unwrap();
        assert_eq!(
            e,
            vec![Extent {
                start: 0,
                length: 64 << 10,
                allocation: Allocation::Data {
                    layer: 0,
                    file_offset: 0
                }
            }]
        );
    }
}

#[test]
fn footer_problems_are_findings() {
    let raw = vec![1u8; 100 << 10];
    let cases: Vec<(&str, Edit, Severity, &str)> = vec![
        // vpc creator with a CHS that does not match the size: qemu would read less.
        (
            "vpc chs",
            Box::new(|v| edit_footers_fixed(v, |f| f[28..32].copy_from_slice(b"vpc "))),
            Severity::Info,
            "vhd.footer.chs_size",
        ),
        // Saved state set: warn and advise a clean shutdown.
        (
            "saved",
            Box::new(|v| edit_footers_fixed(v, |f| f[84] = 1)),
            Severity::Warning,
            "vhd.footer.saved_state",
        ),
        // Reserved feature bit missing.
        (
            "features",
            Box::new(|v| edit_footers_fixed(v, |f| set_be32(f, 8, 0))),
            Severity::Warning,
            "vhd.footer.features",
        ),
        // Unknown major version.
        (
            "version",
            Box::new(|v| edit_footers_fixed(v, |f| set_be32(f, 12, 0x0002_0000))),
            Severity::Error,
            "vhd.footer.version",
        ),
        // Checksum wrong: an error, but the data still reads.
        (
            "checksum",
            Box::new(|v| {
                let n = v.len();
                v[n - 512 + 64] ^= 1;
            }),
            Severity::Error,
            "vhd.footer.checksum",
        ),
        // Current size larger than the data: truncated.
        (
            "truncated",
            Box::new(|v| {
                edit_footers_fixed(v, |f| {
                    f[48..56].copy_from_slice(&(200u64 << 10).to_be_bytes());
                });
            }),
            Severity::Error,
            "vhd.truncated",
        ),
        // Current size smaller than the data: extra bytes ignored.
        (
            "extra",
            Box::new(|v| {
                edit_footers_fixed(v, |f| {
                    f[48..56].copy_from_slice(&(50u64 << 10).to_be_bytes());
                });
            }),
            Severity::Warning,
            "vhd.footer.size_mismatch",
        ),
        // Fixed with a real data offset.
        (
            "data offset",
            Box::new(|v| {
                edit_footers_fixed(v, |f| f[16..24].copy_from_slice(&512u64.to_be_bytes()));
            }),
            Severity::Warning,
            "vhd.footer.data_offset",
        ),
    ];
    for (name, edit, sev, code) in cases {
        let mut v = fx::fixed_vhd(&raw, &FooterOptions::default(), false);
        edit(&mut v);
        let img = open_mem(v).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(has(&img, sev, code), "{name}: {:?}", img.findings());
        let size = img.info().virtual_size as usize;
        assert_eq!(read_all(&img).unwrap(), raw[..size], "{name}");
    }
}

fn edit_footers_fixed(v: &mut [u8], edit: impl Fn(&mut [u8])) {
    let n = v.len();
    edit(&mut v[n - 512..]);
    fx::refresh_footer_checksum(&mut v[n - 512..]);
}

#[test]
fn fatal_problems_are_errors() {
    let cases: Vec<(&str, Edit, &str)> = vec![
        // Reserved disk types 0, 1, 5 and 6.
        (
            "type 0",
            Box::new(|v| edit_footers(v, |f| set_be32(f, 60, 0))),
            "vhd.footer.disk_type",
        ),
        (
            "type 1",
            Box::new(|v| edit_footers(v, |f| set_be32(f, 60, 1))),
            "vhd.footer.disk_type",
        ),
        (
            "type 5",
            Box::new(|v| edit_footers(v, |f| set_be32(f, 60, 5))),
            "vhd.footer.disk_type",
        ),
        (
            "type 6",
            Box::new(|v| edit_footers(v, |f| set_be32(f, 60, 6))),
            "vhd.footer.disk_type",
        ),
        // Both footers gone.
        (
            "no footer",
            Box::new(|v| {
                let n = v.len();
                v[0] = 0;
                v[n - 512] = 0;
            }),
            "vhd.footer.cookie",
        ),
        // Header cookie wrong.
        (
            "header cookie",
            Box::new(|v| edit_header(v, |h| h[0] = b'X')),
            "vhd.header.cookie",
        ),
        // Block sizes that are zero, not a power of two, or below a sector.
        (
            "block 0",
            Box::new(|v| edit_header(v, |h| set_be32(h, 32, 0))),
            "vhd.header.block_size",
        ),
        (
            "block 3000",
            Box::new(|v| edit_header(v, |h| set_be32(h, 32, 3000))),
            "vhd.header.block_size",
        ),
        (
            "block 256",
            Box::new(|v| edit_header(v, |h| set_be32(h, 32, 256))),
            "vhd.header.block_size",
        ),
        // Header offset pointing past the end of the file.
        (
            "header offset",
            Box::new(|v| {
                edit_footers(v, |f| {
                    f[16..24].copy_from_slice(&(1u64 << 40).to_be_bytes());
                });
            }),
            "vhd.header.offset",
        ),
        // BAT larger than the cap.
        (
            "bat huge",
            Box::new(|v| edit_header(v, |h| set_be32(h, 28, u32::MAX))),
            "vhd.bat.too_large",
        ),
        // BAT running past the end of the file.
        (
            "bat offset",
            Box::new(|v| {
                edit_header(v, |h| {
                    h[16..24].copy_from_slice(&(1u64 << 40).to_be_bytes());
                });
            }),
            "vhd.bat.out_of_bounds",
        ),
    ];
    for (name, edit, code) in cases {
        let mut v = small_dynamic();
        edit(&mut v);
        let e = open_mem(v).expect_err(name);
        assert_eq!(e.code(), code, "{name}: {e}");
    }
}

#[test]
fn dynamic_reads_and_maps() {
    let raw = small_raw();
    let img = open_mem(small_dynamic()).unwrap();
    assert!(img.findings().is_empty(), "{:?}", img.findings());
    let i = img.info();
    assert_eq!(
        (i.disk_type, i.virtual_size, i.block_size, i.vhd_footer_size),
        (DiskType::Dynamic, raw.len() as u64, Some(4096), Some(512))
    );
    assert_eq!(read_all(&img).unwrap(), raw);
    let mut e = Vec::new();
    img.extents(0, raw.len() as u64, &mut e).unwrap();
    let kinds: Vec<(u64, u64, bool)> = e
        .iter()
        .map(|x| (x.start, x.length, x.allocation.is_data()))
        .collect();
    // Blocks 0, 3, 4, 15 are data (15 is cut at the virtual size); the rest unallocated.
    let b = 4096;
    assert_eq!(
        kinds,
        vec![
            (0, b, true),
            (b, 2 * b, false),
            (3 * b, b, true),
            (4 * b, b, true),
            (5 * b, 10 * b, false),
            (15 * b, b - 1024, true)
        ]
    );
    // Block 0's data follows its bitmap sector, right after the BAT sector.
    assert_eq!(
        e[0].allocation,
        Allocation::Data {
            layer: 0,
            file_offset: 2048 + 512
        }
    );
}

#[test]
fn cleared_bitmap_bits_read_as_zero() {
    let raw = vec![0xABu8; 8192];
    // Sectors 0, 3 and 9 cleared; 3 and 9 over non-zero data left in the file.
    let o = DynamicOptions {
        block_size: 4096,
        cleared_sectors: vec![0, 3, 9],
        keep_data_under_cleared: true,
        ..DynamicOptions::default()
    };
    let img = open_mem(fx::dynamic_vhd(&raw, &o)).unwrap();
    let got = read_all(&img).unwrap();
    for s in 0..16 {
        let want = if [0, 3, 9].contains(&s) { 0 } else { 0xAB };
        assert!(
            got[s * 512..(s + 1) * 512].iter().all(|&b| b == want),
            "sector {s}"
        );
    }
    let mut e = Vec::new();
    img.extents(0, 8192, &mut e).unwrap();
    let zero: Vec<(u64, u64)> = e
        .iter()
        .filter(|x| x.allocation == Allocation::Zero)
        .map(|x| (x.start, x.length))
        .collect();
    assert_eq!(zero, vec![(0, 512), (1536, 512), (4608, 512)]);
}

#[test]
fn bat_problems_are_findings() {
    // The first allocated block sits at sector 4 (after footer copy, header and BAT).
    let cases: Vec<(&str, Edit, &str)> = vec![
        // Entry 3 far past the end of the file.
        (
            "past end",
            Box::new(|v| set_be32(v, 1536 + 12, 0x00FF_FFFF)),
            "vhd.bat.entry_out_of_bounds",
        ),
        // Entry 3 pointing at the header.
        (
            "on header",
            Box::new(|v| set_be32(v, 1536 + 12, 1)),
            "vhd.bat.entry_overlap",
        ),
        // Entry 3 pointing at the footer copy.
        (
            "on footer copy",
            Box::new(|v| set_be32(v, 1536 + 12, 0)),
            "vhd.bat.entry_overlap",
        ),
        // Entry 3 sharing block 0's storage.
        (
            "shared",
            Box::new(|v| set_be32(v, 1536 + 12, 4)),
            "vhd.bat.entry_shared",
        ),
        // Entry 3 straddling block 0 (one sector in).
        (
            "straddle",
            Box::new(|v| set_be32(v, 1536 + 12, 5)),
            "vhd.bat.entry_shared",
        ),
        // Too few entries for the current size.
        (
            "too small",
            Box::new(|v| edit_header(v, |h| set_be32(h, 28, 4))),
            "vhd.bat.too_small",
        ),
        // Header checksum wrong.
        (
            "header checksum",
            Box::new(|v| v[512 + 36] ^= 1),
            "vhd.header.checksum",
        ),
        // Header version wrong.
        (
            "header version",
            Box::new(|v| edit_header(v, |h| set_be32(h, 24, 2))),
            "vhd.header.version",
        ),
        // BAT placed over the header.
        (
            "bat on header",
            Box::new(|v| edit_header(v, |h| h[16..24].copy_from_slice(&600u64.to_be_bytes()))),
            "vhd.bat.overlap",
        ),
    ];
    for (name, edit, code) in cases {
        let mut v = small_dynamic();
        edit(&mut v);
        let img = open_mem(v).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            has(&img, Severity::Error, code),
            "{name}: {:?}",
            codes(&img)
        );
        // Reading never panics; an invalid block is an error naming the BAT.
        if let Err(e) = read_all(&img) {
            assert!(e.code().as_str().starts_with("vhd.bat"), "{name}: {e}");
        }
    }
}

#[test]
fn damaged_trailing_footer_falls_back_to_copy() {
    let raw = small_raw();
    // Checksum broken: the copy is used, the error stays.
    let mut v = small_dynamic();
    let n = v.len();
    v[n - 512 + 64] ^= 1;
    let img = open_mem(v).unwrap();
    assert!(has(&img, Severity::Error, "vhd.footer.checksum"));
    assert!(has(&img, Severity::Info, "vhd.footer.using_copy"));
    assert_eq!(read_all(&img).unwrap(), raw);
    // Footer cut off entirely: read from the copy, error that Azure needs the trailing one.
    let mut v = small_dynamic();
    v.truncate(v.len() - 512);
    let img = open_mem(v).unwrap();
    assert!(has(&img, Severity::Error, "vhd.footer.cookie"));
    assert_eq!(img.info().vhd_footer_size, None);
    assert_eq!(read_all(&img).unwrap(), raw);
    // The copy damaged or different: a warning, the trailing footer rules.
    for edit in [0usize, 30] {
        let mut v = small_dynamic();
        v[edit] ^= 0x20;
        if edit == 30 {
            fx::refresh_footer_checksum(&mut v[..512]);
        }
        let img = open_mem(v).unwrap();
        assert!(
            has(&img, Severity::Warning, "vhd.footer.copy_mismatch"),
            "{edit}: {:?}",
            codes(&img)
        );
        assert_eq!(read_all(&img).unwrap(), raw);
    }
}

#[test]
fn huge_sizes_do_not_allocate() {
    // 2041 GiB in 2 GiB blocks: a small BAT, a warning, nothing allocated.
    let size = 2041u64 << 30;
    let d = fx::SparseVhd::new(size, 1 << 31, FooterOptions::default());
    let img = open_mem(d.build()).unwrap();
    assert!(has(&img, Severity::Warning, "vhd.footer.size_over_2040gib"));
    assert_eq!(img.info().virtual_size, size);
    assert_eq!(crate::image::allocated_bytes(&img).unwrap(), 0);
    let mut b = vec![1u8; 4096];
    img.read_at(&mut b, size - 4096).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    // A current size of u64::MAX with a tiny BAT is clamped to what the BAT covers.
    let mut v = small_dynamic();
    edit_footers(&mut v, |f| {
        f[48..56].copy_from_slice(&u64::MAX.to_be_bytes());
    });
    let img = open_mem(v).unwrap();
    assert!(has(&img, Severity::Error, "vhd.bat.too_small"));
    assert_eq!(img.info().virtual_size, 16 * 4096);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Reads at any offset and length equal the raw content.
    #[test]
    fn unaligned_reads_match(off in 0usize..(16 * 4096 - 1024), len in 0usize..20000) {
        let raw = small_raw();
        let img = open_mem(small_dynamic()).unwrap();
        let len = len.min(raw.len() - off);
        let mut b = vec![0u8; len];
        img.read_at(&mut b, off as u64).unwrap();
        prop_assert_eq!(&b[..], &raw[off..off + len]);
    }

    /// Random bytes written anywhere in the metadata never panic or hang.
    #[test]
    fn random_metadata_mutations_are_clean(edits in proptest::collection::vec((0usize..2560, any::<u8>()), 1..6), tail in any::<bool>()) {
        let mut v = small_dynamic();
        let n = v.len();
        for (pos, val) in edits {
            // Positions past the BAT sector land in the trailing footer instead.
            let at = if tail && pos >= 2048 { n - 512 + (pos - 2048) } else { pos };
            v[at] = val;
        }
        exercise(v);
    }
}

/// Open, map and read a possibly corrupt image: any outcome but a panic is fine.
fn exercise(v: Vec<u8>) {
    if let Ok(img) = open_mem(v) {
        let size = img.info().virtual_size.min(1 << 20);
        let mut e = Vec::new();
        let _ = img.extents(0, size, &mut e);
        let mut b = vec![0u8; size as usize];
        let _ = img.read_at(&mut b, 0);
    }
}

#[test]
fn every_metadata_byte_flipped_is_clean() {
    let base = small_dynamic();
    let n = base.len();
    // Footer copy, header, BAT sector and trailing footer.
    for pos in (0..2048).chain(n - 512..n) {
        for mask in [0xFFu8, 0x01, 0x80] {
            let mut v = base.clone();
            v[pos] ^= mask;
            exercise(v);
        }
    }
}

fn pattern_sectors(seed: u64, sectors: usize) -> Vec<u8> {
    fixtures::raw::pattern(seed, sectors * 512)
}

/// base (dynamic) ← mid ← top, 64 KiB in 4 KiB blocks; returns the paths and the
/// expected content of each layer.
fn chain3(dir: &Path) -> (Vec<PathBuf>, Vec<Vec<u8>>) {
    let base = fixtures::raw::disk_with_regions(
        64 << 10,
        &[(0, 8192), (20 << 10, 4096), (60 << 10, 4096)],
        3,
    );
    let layers = vec![
        ChainLayer {
            name: "mid.vhd".into(),
            writes: vec![
                (512, pattern_sectors(10, 3)),
                (16 << 10, pattern_sectors(11, 8)),
            ],
        },
        ChainLayer {
            name: "top.vhd".into(),
            writes: vec![
                (1024, pattern_sectors(12, 1)),
                (40 << 10, pattern_sectors(13, 2)),
            ],
        },
    ];
    let (paths, _) = fx::write_chain(dir, &base, "base.vhd", 4096, &layers).unwrap();
    let mut want = vec![base.clone()];
    let mut cur = base;
    for l in &layers {
        for (off, d) in &l.writes {
            cur[*off as usize..*off as usize + d.len()].copy_from_slice(d);
        }
        want.push(cur.clone());
    }
    (paths, want)
}

#[test]
fn differencing_chain_reads_through_parents() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, want) = chain3(dir.path());
    for (p, w) in paths.iter().zip(&want) {
        let img = crate::open(p, &OpenOptions::default()).unwrap();
        assert_eq!(&read_all(img.as_ref()).unwrap(), w, "{}", p.display());
    }
    let top = crate::open(&paths[2], &OpenOptions::default()).unwrap();
    let i = top.info();
    assert_eq!(i.disk_type, DiskType::Differencing);
    assert_eq!(
        i.parent.as_deref(),
        Some(dir.path().join("mid.vhd").as_path())
    );
    assert_eq!(i.parent_identifier, top.parent().unwrap().info().identifier);
    // The map resolves through both parents: layer 0 where top wrote, 1 for mid, 2 for base.
    let mut e = Vec::new();
    top.extents(0, 64 << 10, &mut e).unwrap();
    let layer_at = |off: u64| {
        e.iter()
            .find(|x| x.start <= off && off < x.end())
            .map(|x| match x.allocation {
                Allocation::Data { layer, .. } => Some(layer),
                _ => None,
            })
    };
    assert_eq!(layer_at(1024), Some(Some(0)));
    assert_eq!(layer_at(512), Some(Some(1)));
    assert_eq!(layer_at(0), Some(Some(2)));
    assert_eq!(layer_at(30 << 10), Some(None));
    assert_eq!(e.iter().map(|x| x.length).sum::<u64>(), 64 << 10);
}

/// Write a base and one differencing child with the given link, returning the child path.
fn child_with(
    dir: &Path,
    link: impl Fn([u8; 16]) -> ParentLink,
    base_size: usize,
    child_size: u64,
) -> (PathBuf, Vec<u8>) {
    let base = vec![0x11u8; base_size];
    let fo = FooterOptions::default();
    let bo = DynamicOptions {
        block_size: 4096,
        footer: fo.clone(),
        ..DynamicOptions::default()
    };
    std::fs::write(dir.join("base.vhd"), fx::dynamic_vhd(&base, &bo)).unwrap();
    let child = fx::differencing_vhd(
        child_size,
        4096,
        link(fo.unique_id),
        &[(0, vec![0x22; 512])],
        FooterOptions::default(),
    );
    let p = dir.join("child.vhd");
    std::fs::write(&p, child).unwrap();
    let mut want = vec![0u8; usize::try_from(child_size).unwrap()];
    let n = base_size.min(want.len());
    want[..n].fill(0x11);
    want[..512].fill(0x22);
    (p, want)
}

#[test]
fn parent_found_by_each_locator_kind() {
    let cases: Vec<(&str, LinkFn)> = vec![
        // Relative locator only.
        (
            "W2ru",
            Box::new(|id| ParentLink {
                unique_id: id,
                name: String::new(),
                locators: vec![Locator::relative(".\\base.vhd")],
            }),
        ),
        // Absolute Windows path only: found by its file name next to the child.
        (
            "W2ku",
            Box::new(|id| ParentLink {
                unique_id: id,
                name: String::new(),
                locators: vec![Locator::absolute("D:\\Hyper-V\\base.vhd")],
            }),
        ),
        // A stale relative locator, then a good absolute one.
        (
            "stale W2ru",
            Box::new(|id| ParentLink {
                unique_id: id,
                name: String::new(),
                locators: vec![
                    Locator::relative("old\\gone.vhd"),
                    Locator::absolute("C:\\x\\base.vhd"),
                ],
            }),
        ),
        // Xen's MacX file URL only.
        (
            "MacX",
            Box::new(|id| ParentLink {
                unique_id: id,
                name: String::new(),
                locators: vec![Locator {
                    code: *b"MacX",
                    path: "file://./base.vhd".into(),
                    space_in_bytes: false,
                }],
            }),
        ),
        // Header name only.
        (
            "name",
            Box::new(|id| ParentLink {
                unique_id: id,
                name: "base.vhd".into(),
                locators: vec![],
            }),
        ),
        // Data space stored in sectors rather than bytes.
        (
            "space sectors",
            Box::new(|id| ParentLink {
                unique_id: id,
                name: String::new(),
                locators: vec![Locator {
                    space_in_bytes: false,
                    ..Locator::absolute("C:\\base.vhd")
                }],
            }),
        ),
    ];
    for (name, link) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (p, want) = child_with(dir.path(), link, 16 << 10, 16 << 10);
        let img =
            crate::open(&p, &OpenOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(read_all(img.as_ref()).unwrap(), want, "{name}");
    }
}

#[test]
fn smaller_parent_reads_zeros_past_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let link = |id| ParentLink {
        unique_id: id,
        name: "base.vhd".into(),
        locators: vec![],
    };
    let (p, want) = child_with(dir.path(), link, 8 << 10, 24 << 10);
    let img = crate::open(&p, &OpenOptions::default()).unwrap();
    assert_eq!(read_all(img.as_ref()).unwrap(), want);
}

#[test]
fn parent_problems_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Missing: every path tried is named.
    let link = |id| ParentLink {
        unique_id: id,
        name: "other.vhd".into(),
        locators: vec![
            Locator::relative(".\\nope.vhd"),
            Locator::absolute("C:\\VMs\\gone.vhd"),
        ],
    };
    let (p, _) = child_with(dir.path(), link, 16 << 10, 16 << 10);
    let e = crate::open(&p, &OpenOptions::default()).unwrap_err();
    assert_eq!(e.code(), "vhd.parent.missing");
    for name in ["nope.vhd", "gone.vhd", "other.vhd"] {
        assert!(e.message().contains(name), "{name} not in: {e}");
    }
    // Inspect still reports what the child is.
    let ins = crate::inspect(&p, &OpenOptions::default()).unwrap();
    assert!(!ins.readable);
    assert_eq!(ins.info.unwrap().disk_type, DiskType::Differencing);
    // Wrong id: both ids and the path are named.
    let link = |_| ParentLink {
        unique_id: [0x5A; 16],
        name: "base.vhd".into(),
        locators: vec![],
    };
    let (p, _) = child_with(dir.path(), link, 16 << 10, 16 << 10);
    let e = crate::open(&p, &OpenOptions::default()).unwrap_err();
    assert_eq!(e.code(), "vhd.parent.id_mismatch");
    assert!(
        e.message()
            .contains(&Uuid::from_bytes([0x5A; 16]).to_string()),
        "{e}"
    );
    assert!(e.message().contains("base.vhd"), "{e}");
    // Parents not followed.
    let link = |id| ParentLink {
        unique_id: id,
        name: "base.vhd".into(),
        locators: vec![],
    };
    let (p, _) = child_with(dir.path(), link, 16 << 10, 16 << 10);
    let opts = OpenOptions {
        follow_parents: false,
        ..OpenOptions::default()
    };
    assert_eq!(
        crate::open(&p, &opts).unwrap_err().code(),
        "parent.not_followed"
    );
}

#[test]
fn parent_loop_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (ida, idb) = ([0xAA; 16], [0xBB; 16]);
    let mk = |own: [u8; 16], parent: [u8; 16], parent_name: &str| {
        let link = ParentLink {
            unique_id: parent,
            name: parent_name.into(),
            locators: vec![Locator::relative(&format!(".\\{parent_name}"))],
        };
        fx::differencing_vhd(
            8192,
            4096,
            link,
            &[],
            FooterOptions {
                unique_id: own,
                ..FooterOptions::default()
            },
        )
    };
    std::fs::write(dir.path().join("a.vhd"), mk(ida, idb, "b.vhd")).unwrap();
    std::fs::write(dir.path().join("b.vhd"), mk(idb, ida, "a.vhd")).unwrap();
    let e = crate::open(&dir.path().join("a.vhd"), &OpenOptions::default()).unwrap_err();
    assert_eq!(e.code(), "parent.loop", "{e}");
    // A disk naming itself as parent.
    std::fs::write(dir.path().join("self.vhd"), mk(ida, ida, "self.vhd")).unwrap();
    let e = crate::open(&dir.path().join("self.vhd"), &OpenOptions::default()).unwrap_err();
    assert_eq!(e.code(), "parent.loop", "{e}");
}

#[test]
fn parent_findings_are_prefixed() {
    let dir = tempfile::tempdir().unwrap();
    let base = vec![1u8; 8192];
    let fo = FooterOptions {
        saved_state: 1,
        ..FooterOptions::default()
    };
    let bo = DynamicOptions {
        block_size: 4096,
        footer: fo.clone(),
        ..DynamicOptions::default()
    };
    std::fs::write(dir.path().join("base.vhd"), fx::dynamic_vhd(&base, &bo)).unwrap();
    let link = ParentLink {
        unique_id: fo.unique_id,
        name: "base.vhd".into(),
        locators: vec![],
    };
    std::fs::write(
        dir.path().join("c.vhd"),
        fx::differencing_vhd(8192, 4096, link, &[], FooterOptions::default()),
    )
    .unwrap();
    let img = crate::open(&dir.path().join("c.vhd"), &OpenOptions::default()).unwrap();
    let f = img
        .findings()
        .iter()
        .find(|f| f.code == "vhd.footer.saved_state")
        .expect("parent finding");
    assert!(
        f.message.starts_with("parent ") && f.message.contains("base.vhd"),
        "{}",
        f.message
    );
}

#[test]
fn differencing_mutations_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = chain3(dir.path());
    let good = std::fs::read(&paths[2]).unwrap();
    // Header (with the locator entries) and the locator data that follows the BAT.
    for pos in (512..1536).step_by(3).chain(2048..2048 + 1024) {
        let mut v = good.clone();
        v[pos] ^= 0xFF;
        fx::refresh_header_checksum(&mut v[512..1536]);
        std::fs::write(&paths[2], &v).unwrap();
        if let Ok(img) = crate::format::open_path(&paths[2], &OpenOptions::default()) {
            let mut b = vec![0u8; usize::try_from(img.info().virtual_size.min(1 << 20)).unwrap()];
            let _ = img.read_at(&mut b, 0);
        }
    }
}

#[test]
fn fixed_parent_and_bad_locator() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixtures::raw::pattern(77, 16 << 10);
    let fo = FooterOptions::default();
    std::fs::write(
        dir.path().join("base.vhd"),
        fx::fixed_vhd(&base, &fo, false),
    )
    .unwrap();
    let link = ParentLink {
        unique_id: fo.unique_id,
        name: "base.vhd".into(),
        locators: vec![Locator::relative(".\\base.vhd")],
    };
    let mut child = fx::differencing_vhd(
        16 << 10,
        4096,
        link,
        &[(4096, vec![0x33; 1024])],
        FooterOptions::default(),
    );
    // Locator 0 claims more bytes than it reserves: ignored with a warning, the header
    // name still finds the (fixed) parent.
    set_be32(&mut child, 512 + 576 + 8, 4096);
    fx::refresh_header_checksum(&mut child[512..1536]);
    let p = dir.path().join("child.vhd");
    std::fs::write(&p, child).unwrap();
    let img = crate::open(&p, &OpenOptions::default()).unwrap();
    assert!(
        has(img.as_ref(), Severity::Warning, "vhd.parent.locator"),
        "{:?}",
        codes(img.as_ref())
    );
    let mut want = base;
    want[4096..5120].fill(0x33);
    assert_eq!(read_all(img.as_ref()).unwrap(), want);
}

#[test]
fn fixed_disk_holding_a_vhd_is_not_confused_with_it() {
    // A fixed disk whose data starts with a dynamic VHD's footer, and whose own footer
    // checksum is damaged: it stays a fixed disk (the data is not a footer copy).
    let inner = small_dynamic();
    let mut raw = vec![0u8; 64 << 10];
    raw[..inner.len()].copy_from_slice(&inner);
    let mut v = fx::fixed_vhd(&raw, &FooterOptions::default(), false);
    let n = v.len();
    v[n - 512 + 64] ^= 1;
    let img = open_mem(v).unwrap();
    assert_eq!(img.info().disk_type, DiskType::Fixed);
    assert!(has(&img, Severity::Error, "vhd.footer.checksum"));
    assert_eq!(read_all(&img).unwrap(), raw);
}

#[test]
fn many_threads_read_one_chain() {
    // Reads are &self: threads share one open chain and each sees the right bytes.
    let dir = tempfile::tempdir().unwrap();
    let (paths, want) = chain3(dir.path());
    let img = crate::open(&paths[2], &OpenOptions::default()).unwrap();
    let want = &want[2];
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let img = &img;
            s.spawn(move || {
                for i in 0..64u64 {
                    let off = ((t * 7919 + i * 104_729) % (60 << 10)) as usize;
                    let mut b = vec![0u8; 3000];
                    img.read_at(&mut b, off as u64).unwrap();
                    assert_eq!(&b[..], &want[off..off + 3000]);
                }
            });
        }
    });
}

#[cfg(unix)]
#[test]
fn non_regular_parents_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    std::fs::create_dir(d.join("sub.vhd")).unwrap();
    std::os::unix::fs::symlink("base.vhd", d.join("link.vhd")).unwrap();
    // Enough `..` to climb from the temporary directory to `/` (more are harmless).
    let up = "..\\".repeat(d.components().count() + 2);
    let macx_fifo = Locator {
        code: *b"MacX",
        path: format!("file://{}", fifo.display()),
        space_in_bytes: false,
    };
    // (case, locators, expected error code (None: the real parent opens), text in the error)
    let cases: Vec<(&str, Vec<Locator>, Option<&str>, &str)> = vec![
        // A Xen file URL naming a FIFO: opening it would block forever.
        (
            "MacX FIFO",
            vec![macx_fifo.clone()],
            Some("vhd.parent.missing"),
            "a FIFO, not a disk image",
        ),
        // A relative locator climbing to a character device.
        (
            "W2ru /dev/zero",
            vec![Locator::relative(&format!("{up}dev\\zero"))],
            Some("vhd.parent.missing"),
            "a character device, not a disk image",
        ),
        // A directory named like a disk.
        (
            "directory",
            vec![Locator::relative(".\\sub.vhd")],
            Some("vhd.parent.missing"),
            "a directory, not a disk image",
        ),
        // The FIFO first, then the real parent: the FIFO is skipped.
        (
            "FIFO then parent",
            vec![macx_fifo, Locator::relative(".\\base.vhd")],
            None,
            "",
        ),
        // A symbolic link to the real parent is followed.
        ("symlink", vec![Locator::relative(".\\link.vhd")], None, ""),
    ];
    for (name, locators, code, text) in cases {
        let link = move |id| ParentLink {
            unique_id: id,
            name: String::new(),
            locators: locators.clone(),
        };
        let (p, want) = child_with(d, link, 16 << 10, 16 << 10);
        let got = within(10, move || {
            crate::open(&p, &OpenOptions::default())
                .map(|img| read_all(img.as_ref()).unwrap())
                .map_err(|e| (e.code(), e.message().to_string()))
        });
        match (code, got) {
            (None, Ok(bytes)) => assert_eq!(bytes, want, "{name}"),
            (Some(c), Err((got_code, msg))) => {
                assert_eq!(got_code, c, "{name}: {msg}");
                assert!(msg.contains(text), "{name}: {msg}");
            }
            (want, got) => panic!("{name}: expected {want:?}, got {:?}", got.map(|_| ())),
        }
    }
    // The shared entry point refuses the FIFO itself, naming it and what it is.
    let e = within(10, move || {
        crate::format::probe_parent(&fifo).map(|_| ()).unwrap_err()
    });
    assert_eq!(e.code(), "parent.missing");
    assert!(
        e.message().contains("fifo") && e.message().contains("a FIFO, not a disk image"),
        "{e}"
    );
}

/// A unique id for chain level `i`; `decoy` ids differ from the real ones.
fn level_id(i: usize, decoy: bool) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = if decoy { 0xDE } else { 0x11 };
    b[8..].copy_from_slice(&(i as u64).to_be_bytes());
    b
}

/// `l0.vhd` (dynamic) ← `l1.vhd` ← … ← `l{levels}.vhd`, where every differencing level
/// names first a decoy `d{i-1}.vhd` — the right parent's twin with another unique id and
/// the same locators, so fully opening it would recurse into everything below — and then
/// its real parent. With `bottom_wrong`, level 1 expects an id neither l0 nor d0 has.
/// Level `i` writes byte `i` into sector `i % 16`. Returns the top path and its content.
fn decoy_chain(dir: &Path, levels: usize, bottom_wrong: bool) -> (PathBuf, Vec<u8>) {
    let size = 16 * 512;
    let mut want = vec![0x0Fu8; size];
    for decoy in [false, true] {
        let o = DynamicOptions {
            block_size: 4096,
            footer: FooterOptions {
                unique_id: level_id(0, decoy),
                ..FooterOptions::default()
            },
            ..DynamicOptions::default()
        };
        let name = if decoy { "d0.vhd" } else { "l0.vhd" };
        std::fs::write(dir.join(name), fx::dynamic_vhd(&want, &o)).unwrap();
    }
    for i in 1..=levels {
        let parent_id = if bottom_wrong && i == 1 {
            [0xEE; 16]
        } else {
            level_id(i - 1, false)
        };
        let link = ParentLink {
            unique_id: parent_id,
            name: String::new(),
            locators: vec![
                Locator::relative(&format!(".\\d{}.vhd", i - 1)),
                Locator::relative(&format!(".\\l{}.vhd", i - 1)),
            ],
        };
        let sector = (i % 16) * 512;
        want[sector..sector + 512].fill(i as u8);
        for decoy in [false, true] {
            let v = fx::differencing_vhd(
                size as u64,
                4096,
                link.clone(),
                &[(sector as u64, vec![i as u8; 512])],
                FooterOptions {
                    unique_id: level_id(i, decoy),
                    ..FooterOptions::default()
                },
            );
            let name = format!("{}{i}.vhd", if decoy { "d" } else { "l" });
            std::fs::write(dir.join(name), v).unwrap();
        }
    }
    (dir.join(format!("l{levels}.vhd")), want)
}

#[test]
fn decoy_locators_keep_the_parent_search_linear() {
    const LEVELS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let (top, want) = decoy_chain(dir.path(), LEVELS, false);
    let started = std::time::Instant::now();
    let (bytes, opened, depth) = within(30, move || {
        let opts = OpenOptions::default();
        let mut ctx = OpenContext::new(&opts);
        let img = open_parent(&top, &mut ctx).unwrap();
        let mut depth = 0;
        let mut p = img.parent();
        while let Some(x) = p {
            depth += 1;
            p = x.parent();
        }
        (read_all(img.as_ref()).unwrap(), ctx.opened, depth)
    });
    // Every layer is opened exactly once: decoys are only probed for their id.
    assert_eq!(opened, LEVELS + 1);
    assert_eq!(depth, LEVELS);
    assert_eq!(bytes, want);
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());

    // Both candidates of the bottom level are wrong: a clean id mismatch naming both.
    let dir = tempfile::tempdir().unwrap();
    let (top, _) = decoy_chain(dir.path(), LEVELS, true);
    let e = within(30, move || {
        crate::open(&top, &OpenOptions::default())
            .map(|_| ())
            .unwrap_err()
    });
    assert_eq!(e.code(), "vhd.parent.id_mismatch", "{e}");
    for id in [level_id(0, false), level_id(0, true), [0xEE; 16]] {
        let id = Uuid::from_bytes(id).to_string();
        assert!(e.message().contains(&id), "{id} not in: {e}");
    }
}

#[test]
fn open_budget_bounds_the_search() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = chain3(dir.path());
    let opts = OpenOptions {
        max_chain_depth: 3,
        ..OpenOptions::default()
    };
    // (images already opened, whether opening the 3-image chain is still allowed)
    let cases = [
        // Room for the whole chain (the budget is 4 × 3 = 12).
        (9, true),
        // The budget runs out while opening the chain's last parent.
        (10, false),
        // Spent before the first open.
        (12, false),
    ];
    for (already, ok) in cases {
        let mut ctx = OpenContext::new(&opts);
        ctx.opened = already;
        let img = open_parent(&paths[2], &mut ctx);
        if ok {
            let img = img.unwrap();
            assert!(!img
                .findings()
                .iter()
                .any(|f| f.code == "parent.chain_too_deep"));
            assert_eq!(ctx.opened, already + 3);
        } else {
            // A refused grand-parent is a finding of the layer above, a refused top an Err.
            let refused = match img {
                Err(e) => e.code() == "parent.chain_too_deep",
                Ok(i) => i
                    .findings()
                    .iter()
                    .any(|f| f.code == "parent.chain_too_deep"),
            };
            assert!(refused, "{already}");
        }
    }
}
