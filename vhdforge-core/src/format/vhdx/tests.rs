//! Whole-image tests of the VHDX reader against images built by `fixtures::vhdx`.

#![allow(clippy::type_complexity)] // table-driven cases are tuples

use super::*;
use crate::format::testing::within;
use crate::format::{open_path, OpenOptions};
use crate::io::MemSource;
use crate::Severity;
use fixtures::vhdx::{self as fx, VhdxSpec, MIB as FMIB};
use std::sync::atomic::{AtomicU64, Ordering};

/// A source that counts calls and bytes, to prove what open and read touch.
#[derive(Debug)]
struct Counting {
    inner: MemSource,
    calls: AtomicU64,
    bytes: AtomicU64,
}

impl Counting {
    fn new(data: Vec<u8>) -> Arc<Counting> {
        Arc::new(Counting {
            inner: MemSource::new(data),
            calls: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }
    fn reset(&self) -> (u64, u64) {
        (
            self.calls.swap(0, Ordering::SeqCst),
            self.bytes.swap(0, Ordering::SeqCst),
        )
    }
}

impl ReadAt for Counting {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.bytes.fetch_add(buf.len() as u64, Ordering::SeqCst);
        self.inner.read_exact_at(buf, offset)
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> String {
        "counting".into()
    }
}

fn open_mem(bytes: Vec<u8>) -> Result<VhdxImage> {
    open_src(Arc::new(MemSource::new(bytes)))
}

fn open_src(src: Arc<dyn ReadAt>) -> Result<VhdxImage> {
    let opts = OpenOptions::default();
    let mut ctx = OpenContext::new(&opts);
    VhdxImage::open(src, Path::new("/nonexistent/mem.vhdx"), &mut ctx)
}

fn read_all(img: &dyn DiskImage) -> Vec<u8> {
    let mut v = vec![0u8; img.info().virtual_size as usize];
    // Odd-sized pieces cross block and sector boundaries.
    let mut pos = 0;
    while pos < v.len() {
        let n = (v.len() - pos).min(3 * MIB as usize + 1234);
        img.read_at(&mut v[pos..pos + n], pos as u64).unwrap();
        pos += n;
    }
    v
}

/// Scattered non-zero data: some blocks full, some partly, most empty.
fn sample(size: usize, seed: u64) -> Vec<u8> {
    fixtures::raw::disk_with_regions(
        size,
        &[
            (0, 4096),
            (MIB as usize + 512, 700_000),
            (5 * MIB as usize - 512, 1024),
            (size - 4096, 4096),
        ],
        seed,
    )
}

#[test]
fn crc32c_check_value() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    let mut b = *b"12345678XXXX9";
    // The field is counted as zero whatever it holds.
    let z = crc32c_zeroed(&b, 8);
    b[8..12].fill(0);
    assert_eq!(z, crc32c(&b));
}

#[test]
fn reads_built_images() {
    // (name, spec tweak, virtual size)
    let cases: Vec<(&str, Box<dyn Fn(&mut VhdxSpec)>, usize)> = vec![
        ("dynamic 1 MiB blocks", Box::new(|_| {}), 8 * MIB as usize),
        (
            "dynamic 2 MiB blocks, size not a block multiple",
            Box::new(|s| s.block_size = 2 << 20),
            7 * MIB as usize + 3 * 512,
        ),
        ("fixed", Box::new(|s| s.fixed = true), 6 * MIB as usize),
        (
            "4096-byte sectors",
            Box::new(|s| s.logical_sector_size = 4096),
            8 * MIB as usize,
        ),
        (
            "32 MiB block bigger than the disk",
            Box::new(|s| s.block_size = 32 << 20),
            6 * MIB as usize,
        ),
    ];
    for (name, tweak, size) in cases {
        let mut spec = VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(42));
        tweak(&mut spec);
        let content = sample(size, 7);
        let built = fx::build(&spec, &content);
        let img = open_mem(built.bytes).unwrap();
        let info = img.info();
        assert_eq!(info.virtual_size, size as u64, "{name}");
        assert_eq!(info.logical_sector_size, spec.logical_sector_size, "{name}");
        assert_eq!(info.block_size, Some(u64::from(spec.block_size)), "{name}");
        assert_eq!(info.identifier, Some(Uuid::from_u128(42)), "{name}");
        assert_eq!(
            info.disk_type,
            if spec.fixed {
                DiskType::Fixed
            } else {
                DiskType::Dynamic
            },
            "{name}"
        );
        assert!(read_all(&img) == content, "{name}: content differs");
        let mut ext = Vec::new();
        img.extents(0, size as u64, &mut ext).unwrap();
        assert_eq!(
            ext.iter().map(|e| e.length).sum::<u64>(),
            size as u64,
            "{name}"
        );
        // Everything outside Data extents really is zero.
        for e in ext.iter().filter(|e| !e.allocation.is_data()) {
            assert!(
                content[e.start as usize..e.end() as usize]
                    .iter()
                    .all(|&b| b == 0),
                "{name}: {e:?}"
            );
        }
        let has_4k = img
            .findings()
            .iter()
            .any(|f| f.code == "vhdx.sector_size_4k" && f.severity == Severity::Warning);
        assert_eq!(has_4k, spec.logical_sector_size == 4096, "{name}");
    }
}

#[test]
fn zero_states_never_read_stale_data() {
    let content = sample(8 * MIB as usize, 3);
    // Blocks 2, 3, 4 hold nothing in `content`... make them zero explicitly and stale on disk.
    let mut content = content;
    content[2 * MIB as usize..5 * MIB as usize].fill(0);
    let mut spec = VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(1));
    spec.stale_blocks = vec![(2, fx::ZERO), (3, fx::UNMAPPED), (4, fx::UNDEFINED)];
    let img = open_mem(fx::build(&spec, &content).bytes).unwrap();
    assert!(read_all(&img) == content);
    let mut ext = Vec::new();
    img.extents(2 * MIB, 3 * MIB, &mut ext).unwrap();
    assert_eq!(
        ext,
        vec![Extent {
            start: 2 * MIB,
            length: 3 * MIB,
            allocation: Allocation::Zero
        }]
    );
}

#[test]
fn contiguous_blocks_are_read_with_one_pread() {
    let content = fixtures::raw::pattern(9, 8 * MIB as usize);
    let src = Counting::new(fx::build(&VhdxSpec::dynamic(MIB as u32, Uuid::nil()), &content).bytes);
    let img = open_src(src.clone()).unwrap();
    src.reset();
    let mut buf = vec![0u8; 8 * MIB as usize];
    img.read_at(&mut buf, 0).unwrap();
    assert_eq!(src.reset(), (1, 8 * MIB));
    assert!(buf == content);
}

#[test]
fn threads_share_one_image() {
    let content = sample(8 * MIB as usize, 23);
    let img =
        open_mem(fx::build(&VhdxSpec::dynamic(MIB as u32, Uuid::nil()), &content).bytes).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (img, content) = (&img, &content);
            s.spawn(move || {
                // Each thread reads the whole disk in its own odd-sized pieces.
                let piece = 4096 * (t + 1) + 512;
                let mut buf = vec![0u8; piece as usize];
                let mut pos = 0u64;
                while pos < 8 * MIB {
                    let n = piece.min(8 * MIB - pos) as usize;
                    img.read_at(&mut buf[..n], pos).unwrap();
                    assert!(
                        buf[..n] == content[pos as usize..pos as usize + n],
                        "thread {t} at {pos}"
                    );
                    pos += n as u64;
                }
            });
        }
    });
}

#[test]
fn huge_sparse_disk_opens_reading_only_metadata() {
    // One 32 MiB block of data, then the virtual size patched to 2 TiB: the BAT still fits.
    let content = sample(32 * MIB as usize, 5);
    let mut spec = VhdxSpec::dynamic(32 << 20, Uuid::nil());
    spec.physical_sector_size = 512;
    let built = fx::build(&spec, &content);
    let mut bytes = built.bytes;
    let vs_item = (built.metadata_offset + 0x1_0008) as usize;
    bytes[vs_item..vs_item + 8].copy_from_slice(&(2u64 << 40).to_le_bytes());
    let src = Counting::new(bytes);
    let img = open_src(src.clone()).unwrap();
    let (_, read) = src.reset();
    assert!(read < 2 * MIB, "open read {read} bytes");
    assert_eq!(img.info().virtual_size, 2 << 40);
    assert_eq!(crate::image::allocated_bytes(&img).unwrap(), 32 * MIB);
    let mut tail = vec![1u8; 4096];
    img.read_at(&mut tail, (2 << 40) - 4096).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
}

#[test]
fn damaged_first_copies_fall_back_with_warnings() {
    let content = sample(8 * MIB as usize, 11);
    let spec = VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(5));
    // (name, damage, expected warning code)
    let cases: [(&str, fn(&mut [u8]), &str); 2] = [
        (
            "header 1 checksum",
            fx::corrupt_header1_checksum,
            "vhdx.header.checksum",
        ),
        (
            "region table 1 checksum",
            fx::corrupt_region_table1,
            "vhdx.region.checksum",
        ),
    ];
    for (name, damage, code) in cases {
        let mut bytes = fx::build(&spec, &content).bytes;
        damage(&mut bytes);
        let img = open_mem(bytes).unwrap();
        let f: Vec<_> = img.findings().iter().filter(|f| f.code == code).collect();
        assert_eq!(f.len(), 1, "{name}");
        assert_eq!(f[0].severity, Severity::Warning, "{name}");
        assert!(read_all(&img) == content, "{name}");
    }
    // Both headers damaged: refused.
    let mut bytes = fx::build(&spec, &content).bytes;
    fx::corrupt_header1_checksum(&mut bytes);
    bytes[fx::HEADER2 + 1000] ^= 1;
    assert_eq!(open_mem(bytes).unwrap_err().code(), "vhdx.header.checksum");
}

#[test]
fn dirty_log_is_replayed_in_memory() {
    let content = sample(8 * MIB as usize, 13);
    let mut built = fx::build(&VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(6)), &content);
    fx::make_dirty(&mut built, Uuid::from_u128(0xABCD), None);
    let img = open_mem(built.bytes.clone()).unwrap();
    let f = img
        .findings()
        .iter()
        .find(|f| f.code == "vhdx.log.replayed")
        .expect("replay finding");
    assert_eq!(f.severity, Severity::Info);
    assert!(f.message.contains("the file was not modified"));
    assert!(read_all(&img) == content);

    // Without the log the stale BAT would read as an empty disk: the replay was needed.
    let mut no_log = built.bytes.clone();
    for at in [fx::HEADER1, fx::HEADER2] {
        no_log[at + 48..at + 64].fill(0);
    }
    fx::fix_checksums(&mut no_log);
    assert!(read_all(&open_mem(no_log).unwrap()).iter().all(|&b| b == 0));

    // A log whose flushed size exceeds the file: the file was truncated.
    let mut truncated = fx::build(&VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(6)), &content);
    let len = truncated.bytes.len() as u64;
    fx::make_dirty(&mut truncated, Uuid::from_u128(0xABCD), Some(len + MIB));
    assert_eq!(
        open_mem(truncated.bytes).unwrap_err().code(),
        "vhdx.log.truncated"
    );
}

#[test]
fn replayed_log_can_rewrite_the_region_table() {
    let content = sample(8 * MIB as usize, 19);
    let mut bytes = fx::build(&VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(6)), &content).bytes;
    let good_page = bytes[fx::REGION1..fx::REGION1 + 4096].to_vec();
    // On disk both tables (checksums valid) put the BAT on top of the metadata region ...
    let md_entry_offset = bytes[fx::REGION1 + 48 + 16..fx::REGION1 + 48 + 24].to_vec();
    for at in [fx::REGION1, fx::REGION2] {
        bytes[at + 16 + 16..at + 16 + 24].copy_from_slice(&md_entry_offset);
    }
    fx::fix_checksums(&mut bytes);
    assert_eq!(
        open_mem(bytes.clone()).unwrap_err().code(),
        "vhdx.region.overlap"
    );
    // ... and the log holds the correct first page of table 1.
    fx::write_log(
        &mut bytes,
        Uuid::from_u128(0x77),
        &[(fx::REGION1 as u64, good_page)],
    );
    let img = open_mem(bytes).unwrap();
    assert!(img.findings().iter().any(|f| f.code == "vhdx.log.replayed"));
    assert!(read_all(&img) == content);
}

#[test]
fn structural_errors() {
    let content = sample(8 * MIB as usize, 17);
    let spec = VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(8));
    let base = fx::build(&spec, &content);
    let md = base.metadata_offset as usize;
    // (name, edit of the built file, expected error code at open)
    let cases: Vec<(&str, Box<dyn Fn(&mut Vec<u8>)>, &str)> = vec![
        ("not a VHDX", Box::new(|b| b[0] = b'x'), "vhdx.signature"),
        (
            "shorter than the header section",
            Box::new(|b| b.truncate(0x4_0000)),
            "vhdx.truncated",
        ),
        (
            "block size not a power of two",
            Box::new(move |b| {
                b[md + 0x1_0000..md + 0x1_0004].copy_from_slice(&3_000_000u32.to_le_bytes());
            }),
            "vhdx.metadata.block_size",
        ),
        (
            "virtual size not a sector multiple",
            Box::new(move |b| b[md + 0x1_0008] = 1),
            "vhdx.metadata.virtual_size",
        ),
        (
            "virtual size above 64 TiB",
            Box::new(move |b| {
                b[md + 0x1_0008..md + 0x1_0010].copy_from_slice(&(65u64 << 40).to_le_bytes());
            }),
            "vhdx.metadata.virtual_size",
        ),
        (
            "sector size 1024",
            Box::new(move |b| {
                b[md + 0x1_0020..md + 0x1_0024].copy_from_slice(&1024u32.to_le_bytes());
            }),
            "vhdx.metadata.sector_size",
        ),
        (
            "unknown required metadata item",
            Box::new(move |b| b[md + 32] ^= 0xFF),
            "vhdx.metadata.unknown_required",
        ),
        (
            "metadata signature",
            Box::new(move |b| b[md] = 0),
            "vhdx.metadata.signature",
        ),
        (
            "version 2 header",
            Box::new(|b| {
                for at in [fx::HEADER1, fx::HEADER2] {
                    b[at + 66] = 2;
                }
                fx::fix_checksums(b);
            }),
            "vhdx.header.version",
        ),
        (
            "unknown required region",
            Box::new(|b| {
                for at in [fx::REGION1, fx::REGION2] {
                    b[at + 16] ^= 0xFF;
                }
                fx::fix_checksums(b);
            }),
            "vhdx.region.unknown_required",
        ),
    ];
    for (name, edit, code) in cases {
        let mut bytes = base.bytes.clone();
        edit(&mut bytes);
        assert_eq!(open_mem(bytes).unwrap_err().code(), code, "{name}");
    }
    // A BAT entry pointing past the end: open records an error finding, reading the block fails.
    let mut bytes = base.bytes.clone();
    let e = fx::BAT_OFFSET as usize;
    bytes[e..e + 8].copy_from_slice(&(6u64 | (1000 * FMIB)).to_le_bytes());
    let img = open_mem(bytes).unwrap();
    assert!(img
        .findings()
        .iter()
        .any(|f| f.code == "vhdx.truncated" && f.severity == Severity::Error));
    assert_eq!(
        img.read_at(&mut [0u8; 512], 0).unwrap_err().code(),
        "vhdx.bat.state"
    );
}

fn child_fixture(
    dir: &Path,
    linkage: Uuid,
    rel: Option<&str>,
    abs: Option<&str>,
) -> (Vec<u8>, Vec<u8>, Vec<bool>) {
    let size = 8 * MIB as usize;
    let parent = fixtures::raw::pattern(21, size);
    let pbuilt = fx::build(
        &VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(0x1111)),
        &parent,
    );
    fx::write_file(dir, "parent.vhdx", &pbuilt.bytes);
    let child = fixtures::raw::pattern(22, size);
    // Block 0 fully present, block 1 partly (runs and single sectors), the rest from the parent.
    let mut present = vec![false; size / 512];
    present[..2048].fill(true);
    for (s, p) in present.iter_mut().enumerate().take(4096).skip(2048) {
        *p = s % 3 == 0 || (2500..2600).contains(&s);
    }
    let mut spec = VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(0x2222));
    // Block 6 is ZERO in the child: zeros, whatever the parent (and the stale offset) holds.
    spec.stale_blocks = vec![(6, fx::ZERO)];
    spec.child = Some(fx::ChildSpec {
        parent_linkage: linkage,
        relative_path: rel.map(str::to_string),
        absolute_win32_path: abs.map(str::to_string),
        present: present.clone(),
    });
    fx::write_file(dir, "child.vhdx", &fx::build(&spec, &child).bytes);
    (parent, child, present)
}

#[test]
fn differencing_chain_reads_through_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let (parent, child, present) = child_fixture(
        dir.path(),
        Uuid::from_u128(0x1111),
        Some(".\\parent.vhdx"),
        None,
    );
    let img = open_path(&dir.path().join("child.vhdx"), &OpenOptions::default()).unwrap();
    let info = img.info();
    assert_eq!(info.disk_type, DiskType::Differencing);
    assert_eq!(info.parent_identifier, Some(Uuid::from_u128(0x1111)));
    assert_eq!(
        info.parent.as_deref().map(|p| p.ends_with("parent.vhdx")),
        Some(true)
    );
    let mut want = fx::chain_content(&parent, &child, &present, 512);
    want[6 * MIB as usize..7 * MIB as usize].fill(0);
    assert!(read_all(img.as_ref()) == want);
    let mut zero = Vec::new();
    img.extents(6 * MIB, MIB, &mut zero).unwrap();
    assert_eq!(
        zero,
        vec![Extent {
            start: 6 * MIB,
            length: MIB,
            allocation: Allocation::Zero
        }]
    );
    // Extents resolve to both layers and cover the range exactly.
    let mut ext = Vec::new();
    img.extents(0, 8 * MIB, &mut ext).unwrap();
    assert_eq!(ext.iter().map(|e| e.length).sum::<u64>(), 8 * MIB);
    assert!(ext
        .iter()
        .any(|e| matches!(e.allocation, Allocation::Data { layer: 1, .. })));
    assert!(ext
        .iter()
        .any(|e| matches!(e.allocation, Allocation::Data { layer: 0, .. })));
    assert!(img.parent().is_some());
}

#[test]
fn differencing_parent_lookup_errors() {
    // Absolute Windows path: found by its file name next to the child.
    let dir = tempfile::tempdir().unwrap();
    child_fixture(
        dir.path(),
        Uuid::from_u128(0x1111),
        Some("..\\elsewhere\\parent.vhdx"),
        Some("C:\\VMs\\parent.vhdx"),
    );
    let img = open_path(&dir.path().join("child.vhdx"), &OpenOptions::default()).unwrap();
    assert!(img.info().parent.is_some());

    // Wrong linkage: both identities in the message.
    let dir = tempfile::tempdir().unwrap();
    child_fixture(
        dir.path(),
        Uuid::from_u128(0x9999),
        Some("parent.vhdx"),
        None,
    );
    let e = open_path(&dir.path().join("child.vhdx"), &OpenOptions::default()).unwrap_err();
    assert_eq!(e.code(), "vhdx.parent.mismatch");
    assert!(
        e.message().contains(&Uuid::from_u128(0x9999).to_string())
            && e.message().contains(&Uuid::from_u128(0x1111).to_string()),
        "{e}"
    );

    // Missing: every path tried is named.
    let dir = tempfile::tempdir().unwrap();
    child_fixture(
        dir.path(),
        Uuid::from_u128(0x1111),
        Some("gone.vhdx"),
        Some("D:\\x\\gone2.vhdx"),
    );
    let e = open_path(&dir.path().join("child.vhdx"), &OpenOptions::default()).unwrap_err();
    assert_eq!(e.code(), "vhdx.parent.missing");
    assert!(
        e.message().contains("gone.vhdx") && e.message().contains("gone2.vhdx"),
        "{e}"
    );

    // A child naming itself as its parent: the loop is caught.
    let dir = tempfile::tempdir().unwrap();
    child_fixture(
        dir.path(),
        Uuid::from_u128(0x2222),
        Some("child.vhdx"),
        None,
    );
    let e = open_path(&dir.path().join("child.vhdx"), &OpenOptions::default()).unwrap_err();
    assert_eq!(e.code(), "parent.loop");

    // Following parents turned off.
    let dir = tempfile::tempdir().unwrap();
    child_fixture(
        dir.path(),
        Uuid::from_u128(0x1111),
        Some("parent.vhdx"),
        None,
    );
    let opts = OpenOptions {
        follow_parents: false,
        ..OpenOptions::default()
    };
    assert_eq!(
        open_path(&dir.path().join("child.vhdx"), &opts)
            .unwrap_err()
            .code(),
        "parent.not_followed"
    );
}

mod mutations {
    use super::*;
    use proptest::prelude::*;

    /// The clean image (and a dirty-log variant), built once for all cases.
    fn base() -> (Vec<u8>, u64) {
        static BASE: std::sync::OnceLock<(Vec<u8>, u64)> = std::sync::OnceLock::new();
        BASE.get_or_init(|| {
            let content = sample(4 * MIB as usize, 31);
            let built = fx::build(&VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(3)), &content);
            (built.bytes, built.metadata_offset)
        })
        .clone()
    }

    fn child_base() -> (Vec<u8>, u64) {
        static CHILD: std::sync::OnceLock<(Vec<u8>, u64)> = std::sync::OnceLock::new();
        CHILD
            .get_or_init(|| {
                let content = sample(4 * MIB as usize, 31);
                let mut spec = VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(3));
                spec.child = Some(fx::ChildSpec {
                    parent_linkage: Uuid::from_u128(4),
                    relative_path: Some(".\\p.vhdx".into()),
                    absolute_win32_path: Some("C:\\p.vhdx".into()),
                    present: (0..8192).map(|s| s % 3 == 0).collect(),
                });
                let built = fx::build(&spec, &content);
                (built.bytes, built.metadata_offset)
            })
            .clone()
    }

    fn dirty_base() -> Vec<u8> {
        static DIRTY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        DIRTY
            .get_or_init(|| {
                let content = sample(4 * MIB as usize, 31);
                let mut built =
                    fx::build(&VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(3)), &content);
                fx::make_dirty(&mut built, Uuid::from_u128(77), None);
                built.bytes
            })
            .clone()
    }

    /// Open and, if that works, map and read everything: any result is fine, a panic is not.
    fn exercise(bytes: Vec<u8>) {
        if let Ok(img) = open_mem(bytes) {
            let size = img.info().virtual_size.min(64 * MIB);
            let mut ext = Vec::new();
            let _ = img.extents(0, size, &mut ext);
            let mut buf = vec![0u8; MIB as usize];
            let mut pos = 0;
            while pos < size {
                let n = (size - pos).min(MIB);
                let _ = img.read_at(&mut buf[..n as usize], pos);
                pos += n;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any byte of the checksummed structures, with checksums fixed up so parsing goes deep.
        #[test]
        fn header_and_region_mutations(area in 0usize..4, pos in 0usize..4096, val: u8, fix: bool) {
            let (mut bytes, _) = base();
            let at = [fx::HEADER1, fx::HEADER2, fx::REGION1, fx::REGION2][area] + pos % if area < 2 { 4096 } else { 16 + 32 * 3 };
            bytes[at] = val;
            if fix { fx::fix_checksums(&mut bytes); }
            exercise(bytes);
        }

        /// Any byte of the metadata table and items.
        #[test]
        fn metadata_mutations(pos in 0usize..(32 + 32 * 6), item_pos in 0usize..48, val: u8, in_items: bool) {
            let (mut bytes, md) = base();
            let at = md as usize + if in_items { 0x1_0000 + item_pos } else { pos };
            bytes[at] = val;
            exercise(bytes);
        }

        /// Any byte of the BAT entries in use, plus a whole random entry.
        #[test]
        fn bat_mutations(pos in 0usize..(8 * 8), val: u8, entry in 0usize..8, raw: u64) {
            let (mut bytes, _) = base();
            let bat = fx::BAT_OFFSET as usize;
            bytes[bat + pos] = val;
            bytes[bat + 8 * entry..bat + 8 * entry + 8].copy_from_slice(&raw.to_le_bytes());
            exercise(bytes);
        }

        /// Any byte of a differencing child's metadata items, parent locator included (its
        /// parent is never found from memory, so this exercises parsing up to the lookup).
        #[test]
        fn child_metadata_mutations(pos in 0usize..400, val: u8) {
            let (mut bytes, md) = child_base();
            bytes[md as usize + 0x1_0000 + pos] = val;
            exercise(bytes);
        }

        /// Log bytes of a dirty image, with header checksums valid.
        #[test]
        fn log_mutations(pos in 0usize..(64 * 1024), val: u8) {
            let mut bytes = dirty_base();
            bytes[fx::LOG_OFFSET as usize + pos] = val;
            exercise(bytes);
        }
    }

    /// The shared base image with one byte changed, without copying the image.
    #[derive(Debug)]
    struct OneByte {
        base: Arc<Vec<u8>>,
        at: usize,
        val: u8,
    }

    impl ReadAt for OneByte {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let end = offset as usize + buf.len();
            let src = self
                .base
                .get(offset as usize..end)
                .ok_or(std::io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            if (offset as usize..end).contains(&self.at) {
                buf[self.at - offset as usize] = self.val;
            }
            Ok(())
        }
        fn size(&self) -> u64 {
            self.base.len() as u64
        }
        fn name(&self) -> String {
            "one-byte".into()
        }
    }

    #[test]
    fn every_header_and_region_table_byte_flipped() {
        // Every byte of header 1 and of the used part of region table 1: the second copy
        // always takes over with a warning and the data stays readable.
        let (bytes, _) = base();
        let base = Arc::new(bytes);
        let positions = (fx::HEADER1..fx::HEADER1 + 4096).chain(fx::REGION1..fx::REGION1 + 16 + 64);
        for at in positions {
            let src = Arc::new(OneByte {
                base: base.clone(),
                at,
                val: base[at] ^ 0x5A,
            });
            let img = open_src(src).unwrap_or_else(|e| panic!("byte {at:#x}: {e}"));
            assert!(
                img.findings()
                    .iter()
                    .any(|f| f.severity == Severity::Warning),
                "byte {at:#x}"
            );
        }
    }
}

#[cfg(unix)]
#[test]
fn fifo_parent_is_skipped_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    crate::format::testing::mkfifo(&dir.path().join("fifo.vhdx"));
    // (case, absolute_win32_path, expected: Ok(parent file name) or Err((code, text)))
    let cases: Vec<(&str, Option<&str>, std::result::Result<&str, (&str, &str)>)> = vec![
        // The FIFO is the relative path; the real parent is found by the absolute path's name.
        (
            "FIFO then parent",
            Some("C:\\VMs\\parent.vhdx"),
            Ok("parent.vhdx"),
        ),
        // Only the FIFO: a clean "missing" naming it and what it is.
        (
            "FIFO only",
            None,
            Err(("vhdx.parent.missing", "a FIFO, not a disk image")),
        ),
    ];
    for (name, abs, want) in cases {
        child_fixture(
            dir.path(),
            Uuid::from_u128(0x1111),
            Some(".\\fifo.vhdx"),
            abs,
        );
        let p = dir.path().join("child.vhdx");
        let got = within(10, move || {
            open_path(&p, &OpenOptions::default())
                .map(|i| i.info().parent.clone())
                .map_err(|e| (e.code(), e.message().to_string()))
        });
        match (want, got) {
            (Ok(file), Ok(Some(parent))) => assert!(parent.ends_with(file), "{name}"),
            (Err((code, text)), Err((c, msg))) => {
                assert_eq!(c, code, "{name}: {msg}");
                assert!(
                    msg.contains(text) && msg.contains("fifo.vhdx"),
                    "{name}: {msg}"
                );
            }
            (want, got) => panic!("{name}: expected {want:?}, got {got:?}"),
        }
    }
}

/// `l0.vhdx` (dynamic) ← … ← `l{levels}.vhdx`, where each child's relative path names a
/// decoy `d{i-1}.vhd` (a differencing VHD with another id over the right parent, so fully
/// opening it recurses into everything below) and its absolute path the real parent. With
/// `bottom_wrong`, level 1 links to an identity nobody has. Returns the top path.
fn vhdx_decoy_chain(dir: &Path, levels: u128, bottom_wrong: bool) -> std::path::PathBuf {
    let size = MIB as usize;
    let content = vec![0u8; size];
    let guid = |i: u128| Uuid::from_u128(0xA000 + i);
    for i in 0..=levels {
        let mut spec = VhdxSpec::dynamic(MIB as u32, guid(i));
        if i > 0 {
            spec.child = Some(fx::ChildSpec {
                parent_linkage: if bottom_wrong && i == 1 {
                    Uuid::from_u128(0xBAD)
                } else {
                    guid(i - 1)
                },
                relative_path: Some(format!(".\\d{}.vhd", i - 1)),
                absolute_win32_path: Some(format!("C:\\x\\l{}.vhdx", i - 1)),
                present: vec![false; size / 512],
            });
        }
        fx::write_file(
            dir,
            &format!("l{i}.vhdx"),
            &fx::build(&spec, &content).bytes,
        );
        let decoy = fixtures::vhd::differencing_vhd(
            size as u64,
            4096,
            fixtures::vhd::ParentLink {
                unique_id: *guid(i).as_bytes(),
                name: String::new(),
                locators: vec![fixtures::vhd::Locator::relative(&format!(".\\l{i}.vhdx"))],
            },
            &[],
            fixtures::vhd::FooterOptions {
                unique_id: *Uuid::from_u128(0xDEC0 + i).as_bytes(),
                ..fixtures::vhd::FooterOptions::default()
            },
        );
        std::fs::write(dir.join(format!("d{i}.vhd")), decoy).unwrap();
    }
    dir.join(format!("l{levels}.vhdx"))
}

#[test]
fn decoy_parents_keep_the_search_linear() {
    const LEVELS: u128 = 12;
    let dir = tempfile::tempdir().unwrap();
    let top = vhdx_decoy_chain(dir.path(), LEVELS, false);
    let (opened, depth) = within(30, move || {
        let opts = OpenOptions::default();
        let mut ctx = OpenContext::new(&opts);
        let img = crate::format::open_parent(&top, &mut ctx).unwrap();
        let mut depth = 0;
        let mut p = img.parent();
        while let Some(x) = p {
            assert_eq!(x.info().format, Format::Vhdx, "a decoy was taken");
            depth += 1;
            p = x.parent();
        }
        (ctx.opened, depth)
    });
    // Each layer opened once; the decoys were only probed.
    assert_eq!(opened, LEVELS as usize + 1);
    assert_eq!(depth, LEVELS as usize);

    // The bottom child's candidates are both wrong: a clean mismatch naming them.
    let dir = tempfile::tempdir().unwrap();
    let top = vhdx_decoy_chain(dir.path(), LEVELS, true);
    let e = within(30, move || {
        open_path(&top, &OpenOptions::default())
            .map(|_| ())
            .unwrap_err()
    });
    assert_eq!(e.code(), "vhdx.parent.mismatch", "{e}");
    assert!(
        e.message().contains("d0.vhd") && e.message().contains("l0.vhdx"),
        "{e}"
    );
}
