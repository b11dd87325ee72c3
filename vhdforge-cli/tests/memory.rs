//! Memory stays bounded whatever the input: crafted images whose tables are as large as
//! the formats allow (a 512 MiB VHDX BAT, 64-layer VHD chains with 64 MiB BATs) are run
//! through the real `vhdforge` in a child process, and its peak resident set (`ru_maxrss`
//! from `wait4`) must stay under 256 MiB. The images are sparse files built at test time:
//! a few MiB of disk each, except the chain whose tables must be real 0xFF bytes.

use fixtures::large::{write_huge_vhd_chain, write_huge_vhdx, VhdBatFill};
use std::path::Path;
use std::time::Duration;

mod common;
use common::{run_measured, Run};

const MIB: u64 = 1 << 20;
const TIB: u64 = 1 << 40;
/// The bound the security review asks for.
const LIMIT_KIB: i64 = 256 * 1024;

/// Run `vhdforge args`, at most `limit` long, and report its peak RSS.
fn run(dir: &Path, args: &[&str], limit: Duration) -> Run {
    let r = run_measured(dir, args, limit, |_| {});
    eprintln!(
        "vhdforge {:?}: exit {}, peak RSS {} MiB, {:.1}s",
        args.first(),
        r.code,
        r.peak_kib / 1024,
        r.took.as_secs_f64()
    );
    r
}

fn assert_bounded(r: &Run, what: &str) {
    assert!(
        r.peak_kib < LIMIT_KIB,
        "{what}: peak RSS {} MiB, over the 256 MiB bound; stderr: {}",
        r.peak_kib / 1024,
        r.stderr
    );
}

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", r.stdout, r.stderr))
}

/// A 64 TiB VHDX of 1 MiB blocks: a 512 MiB BAT, a few entries set. `info` reads every
/// entry (validation, then allocated bytes) without ever holding the table (1031 MiB
/// before the table was paged).
#[test]
fn info_of_a_64_tib_vhdx_stays_under_256_mib() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("huge.vhdx");
    let size = 64 * TIB;
    let last = size / MIB - 1;
    write_huge_vhdx(&img, size, MIB as u32, &[0, 1, 4096, 1 << 24, last], |_| {
        0x5A
    })
    .unwrap();
    let img = img.to_str().unwrap();

    let info = run(
        dir.path(),
        &["info", "--json", img],
        Duration::from_secs(180),
    );
    assert_eq!(info.code, 0, "{}", info.stderr);
    let v = json(&info);
    assert_eq!(v["virtual_size"], size);
    assert_eq!(v["allocated_bytes"], 5 * MIB, "{v}");
    assert!(
        !info.stdout.contains("vhdx.bat"),
        "a valid BAT has no finding: {v}"
    );
    assert_bounded(&info, "info");
}

/// A 15 TiB VHDX (120 MiB BAT, more than is ever held whole): `convert` to a sparse VHD
/// walks all 15 Mi blocks and copies the stored ones, and `upload` plans it (the page blob
/// limit then stops it before any request).
#[test]
fn convert_and_upload_plan_of_a_15_tib_vhdx_stay_under_256_mib() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.vhdx");
    let size = 15 * TIB;
    let present = [0u64, 7, 4097, 3 << 20, size / MIB - 1];
    write_huge_vhdx(&img, size, MIB as u32, &present, |b| (b % 251) as u8 + 1).unwrap();
    let out = dir.path().join("big.vhd");
    let (img_s, out_s) = (img.to_str().unwrap(), out.to_str().unwrap());

    let conv = run(
        dir.path(),
        &["convert", img_s, out_s],
        Duration::from_secs(120),
    );
    assert_eq!(conv.code, 0, "{}", conv.stderr);
    assert_bounded(&conv, "convert");
    // The output holds the stored blocks where they belong, and is the right length.
    let f = std::fs::File::open(&out).unwrap();
    assert_eq!(f.metadata().unwrap().len(), size + 512);
    for b in present {
        let mut byte = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut byte, b * MIB).unwrap();
        assert_eq!(byte[0], (b % 251) as u8 + 1, "block {b}");
    }
    drop(f);
    std::fs::remove_file(&out).unwrap();

    let up = run(
        dir.path(),
        &[
            "upload",
            "--state-dir",
            dir.path().to_str().unwrap(),
            img_s,
            "http://127.0.0.1:9/vhds/big.vhd?sv=2022-11-02&sig=c2lnbmF0dXJl",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(up.code, 2, "{}", up.stderr);
    assert!(
        up.stderr.contains("8 TiB"),
        "stopped by the page-blob limit after planning: {}",
        up.stderr
    );
    assert_bounded(&up, "upload planning");
}

/// 64 differencing VHDs, each with an 8 MiB BAT (2 Mi entries) left a hole (every entry 0: a block on top
/// of the footer copy, so every entry is invalid): the chain opens, every entry is checked,
/// and the findings and the invalid entries stay bounded.
#[test]
fn check_of_64_crafted_vhd_layers_stays_under_256_mib() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_huge_vhd_chain(dir.path(), 64, 2 << 20, 2 << 20, VhdBatFill::Hole).unwrap();
    let top = paths.last().unwrap().to_str().unwrap();
    let check = run(
        dir.path(),
        &["check", "--json", top],
        Duration::from_secs(120),
    );
    assert_eq!(check.code, 1, "{}", check.stderr);
    let v = json(&check);
    assert!(
        check.stdout.contains("vhd.bat.entry_overlap"),
        "the invalid entries are reported: {v}"
    );
    assert!(
        v["parent"]
            .as_str()
            .is_some_and(|p| p.ends_with("layer62.vhd")),
        "{v}"
    );
    assert_bounded(&check, "check of the crafted chain");
}

/// Four valid layers of 16 Mi entries each (64 MiB of real BAT per layer, 512-byte blocks,
/// 8 GiB virtual): `info` and `convert` walk every entry of every layer.
#[test]
fn info_and_convert_of_4_vhd_layers_with_64_mib_bats_stay_under_256_mib() {
    let dir = tempfile::tempdir().unwrap();
    let paths =
        write_huge_vhd_chain(dir.path(), 4, 16 << 20, 512, VhdBatFill::Unallocated).unwrap();
    let top = paths.last().unwrap().to_str().unwrap();
    let info = run(
        dir.path(),
        &["info", "--json", top],
        Duration::from_secs(120),
    );
    assert_eq!(info.code, 0, "{}", info.stderr);
    let v = json(&info);
    assert_eq!(v["virtual_size"], 8u64 << 30);
    assert_eq!(v["allocated_bytes"], 0, "{v}");
    assert_bounded(&info, "info of the chain");

    let out = dir.path().join("flat.vhd");
    let conv = run(
        dir.path(),
        &["convert", top, out.to_str().unwrap()],
        Duration::from_secs(120),
    );
    assert_eq!(conv.code, 0, "{}", conv.stderr);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), (8u64 << 30) + 512);
    assert_bounded(&conv, "convert of the chain");
}

/// A dynamic VHD of `blocks` 2 MiB blocks, every one present with a sector bitmap of 0x55:
/// every other sector stored, the stored data itself file holes (zeros). Built from a
/// one-layer chain of unallocated entries: the blocks go where its footer was, then the
/// footer moves behind them.
fn every_other_sector_vhd(dir: &Path, blocks: u32) -> std::path::PathBuf {
    use std::os::unix::fs::FileExt as _;
    const BLOCK: u64 = 2 * MIB;
    let path = write_huge_vhd_chain(dir, 1, blocks, BLOCK as u32, VhdBatFill::Unallocated)
        .unwrap()
        .remove(0);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let end = f.metadata().unwrap().len() - 512;
    let mut footer = [0u8; 512];
    f.read_exact_at(&mut footer, end).unwrap();
    let mut be = [0u8; 8];
    f.read_exact_at(&mut be, 512 + 16).unwrap();
    let bat_at = u64::from_be_bytes(be);
    // Each block: its 512-byte bitmap, then its data.
    let stride = 512 + BLOCK;
    for i in 0..u64::from(blocks) {
        let at = end + i * stride;
        f.write_all_at(&[0x55; 512], at).unwrap();
        let sector = u32::try_from(at / 512).unwrap();
        f.write_all_at(&sector.to_be_bytes(), bat_at + 4 * i)
            .unwrap();
    }
    f.write_all_at(&footer, end + u64::from(blocks) * stride)
        .unwrap();
    path
}

/// A map fragmented to one extent per 512 bytes (4 Mi data extents for 4 GiB). Convert
/// used to list every stored range of the whole disk first: 220 MiB peak here, growing with
/// the virtual size past any bound. Now its lists cover one 256 MiB slice at a time
/// (34 MiB). Each stored run is still read on its own, so such a map converts slowly
/// (about 25 s here), never with more memory.
#[test]
fn convert_of_a_vhd_stored_every_other_sector_keeps_no_whole_disk_list() {
    let dir = tempfile::tempdir().unwrap();
    let img = every_other_sector_vhd(dir.path(), 2048);
    let out = dir.path().join("flat.vhd");
    let conv = run(
        dir.path(),
        &[
            "convert",
            "--json",
            img.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    assert_eq!(conv.code, 0, "{}", conv.stderr);
    let v = json(&conv);
    // The stored sectors are zeros: nothing to write, all of it skipped.
    assert_eq!(v["virtual_size"], 4u64 << 30, "{v}");
    assert_eq!(v["data_bytes_written"], 0, "{v}");
    assert!(
        conv.peak_kib < 48 * 1024,
        "peak RSS {} MiB: convert held a list for the whole disk",
        conv.peak_kib / 1024
    );
}
