//! Table builders and the partition-table tests: generated tables (valid, then damaged in
//! one named way each), and a proptest that no mutation makes the reader panic.

use super::gpt::crc32;
use super::types::*;
use super::*;
use proptest::prelude::*;

const SS: u64 = 512;

fn image(data: Vec<u8>) -> Box<dyn DiskImage> {
    crate::open_bytes(data).unwrap()
}

fn read(data: Vec<u8>) -> PartitionTable {
    partitions(image(data).as_ref()).unwrap()
}

fn codes(t: &PartitionTable) -> Vec<&'static str> {
    t.findings.iter().map(|f| f.code.as_str()).collect()
}

fn put_u32(d: &mut [u8], off: usize, v: u32) {
    d[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(d: &mut [u8], off: usize, v: u64) {
    d[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Write an MBR record into the sector at `sector_off`.
fn record(
    d: &mut [u8],
    sector_off: usize,
    slot: usize,
    boot: u8,
    ty: u8,
    start: u32,
    sectors: u32,
) {
    let o = sector_off + 446 + 16 * slot;
    d[o] = boot;
    d[o + 4] = ty;
    put_u32(d, o + 8, start);
    put_u32(d, o + 12, sectors);
    d[sector_off + 510] = 0x55;
    d[sector_off + 511] = 0xAA;
}

struct GptPart {
    ty: Uuid,
    first: u64,
    last: u64,
    name: &'static str,
    attrs: u64,
}

/// A disk of `sectors` 512-byte sectors with a protective MBR and both GPT copies, 128
/// entries each, partitions in slots `slot` (0-based) as given.
fn gpt_disk(sectors: u64, parts: &[(usize, GptPart)]) -> Vec<u8> {
    let mut d = vec![0u8; (sectors * SS) as usize];
    let size = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    record(&mut d, 0, 0, 0, MBR_GPT_PROTECTIVE, 1, size);
    let mut array = vec![0u8; 128 * 128];
    for (slot, p) in parts {
        let e = &mut array[slot * 128..slot * 128 + 128];
        e[..16].copy_from_slice(&p.ty.to_bytes_le());
        e[16..32].copy_from_slice(&Uuid::from_u128(0x1111_0000 + *slot as u128).to_bytes_le());
        put_u64(e, 32, p.first);
        put_u64(e, 40, p.last);
        put_u64(e, 48, p.attrs);
        for (i, u) in p.name.encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
    }
    let last = sectors - 1;
    let write_copy = |d: &mut [u8], my: u64, alt: u64, array_lba: u64| {
        d[(array_lba * SS) as usize..(array_lba * SS) as usize + array.len()]
            .copy_from_slice(&array);
        let h = &mut d[(my * SS) as usize..(my * SS) as usize + 92];
        h[..8].copy_from_slice(b"EFI PART");
        put_u32(h, 8, 0x0001_0000);
        put_u32(h, 12, 92);
        put_u64(h, 24, my);
        put_u64(h, 32, alt);
        put_u64(h, 40, 34);
        put_u64(h, 48, last - 33);
        h[56..72].copy_from_slice(&Uuid::from_u128(0xD15C).to_bytes_le());
        put_u64(h, 72, array_lba);
        put_u32(h, 80, 128);
        put_u32(h, 84, 128);
        put_u32(h, 88, crc32(&array));
        let c = crc32(h);
        put_u32(h, 16, c);
    };
    write_copy(&mut d, 1, last, 2);
    write_copy(&mut d, last, 1, last - 32);
    d
}

/// Recompute the header CRC of the header at `lba` after a test edited it.
fn reseal(d: &mut [u8], lba: u64) {
    let h = &mut d[(lba * SS) as usize..(lba * SS) as usize + 92];
    put_u32(h, 16, 0);
    let c = crc32(h);
    put_u32(h, 16, c);
}

fn typical_gpt() -> Vec<u8> {
    gpt_disk(
        4096,
        &[
            (
                0,
                GptPart {
                    ty: GPT_EFI_SYSTEM,
                    first: 34,
                    last: 233,
                    name: "EFI system partition",
                    attrs: 0,
                },
            ),
            (
                1,
                GptPart {
                    ty: GPT_LINUX_LVM,
                    first: 234,
                    last: 2047,
                    name: "lvm",
                    attrs: 1 << 2,
                },
            ),
            // A gap in the slots: Linux numbers by slot, so this is partition 4.
            (
                3,
                GptPart {
                    ty: GPT_LINUX_SWAP,
                    first: 2048,
                    last: 4062,
                    name: "swäp",
                    attrs: 0,
                },
            ),
        ],
    )
}

#[test]
fn crc32_is_the_zlib_one() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn gpt_partitions_are_numbered_by_slot_with_types_names_and_flags() {
    let t = read(typical_gpt());
    assert_eq!(t.scheme, Scheme::Gpt);
    assert!(t.findings.is_empty(), "{:?}", t.findings);
    assert_eq!(
        t.disk_id.as_deref(),
        Some("00000000-0000-0000-0000-00000000d15c")
    );
    let n: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
    assert_eq!(n, [1, 2, 4]);
    let esp = t.get(1).unwrap();
    assert_eq!((esp.start_bytes, esp.size_bytes), (34 * 512, 200 * 512));
    assert_eq!(esp.kind, PartitionKind::EfiSystem);
    assert_eq!(esp.name.as_deref(), Some("EFI system partition"));
    assert_eq!(esp.partuuid, "00000000-0000-0000-0000-000011110000");
    assert_eq!(t.get(2).unwrap().attributes, 4);
    assert_eq!(t.get(4).unwrap().name.as_deref(), Some("swäp"));
    assert_eq!(t.generation, Some(Generation::Gen2));
}

#[test]
fn damaged_primary_header_falls_back_to_the_backup() {
    let mut d = typical_gpt();
    d[512 + 60] ^= 1; // inside the disk GUID: header CRC fails
    let t = read(d);
    assert_eq!(codes(&t), [CODE_GPT_BACKUP_USED]);
    assert_eq!(t.partitions, read(typical_gpt()).partitions);
}

#[test]
fn damaged_primary_array_falls_back_to_the_backup() {
    let mut d = typical_gpt();
    d[2 * 512 + 40] ^= 1; // first entry's end LBA: the array CRC fails, the header is fine
    let t = read(d);
    assert_eq!(codes(&t), [CODE_GPT_BACKUP_USED]);
    assert_eq!(t.get(1).unwrap().size_bytes, 200 * 512);
}

#[test]
fn both_copies_damaged_is_an_error_with_no_partitions() {
    let mut d = typical_gpt();
    d[512 + 60] ^= 1;
    d[4095 * 512 + 60] ^= 1;
    let t = read(d);
    assert_eq!(t.scheme, Scheme::Gpt);
    assert!(t.partitions.is_empty());
    assert_eq!(codes(&t), [CODE_GPT_INVALID]);
    assert!(
        t.findings[0].message.contains("primary (LBA 1)"),
        "{}",
        t.findings[0].message
    );
}

#[test]
fn a_grown_disk_reports_the_misplaced_backup_and_uses_the_primary() {
    let mut d = typical_gpt();
    d.resize(d.len() + (1 << 20), 0);
    let t = read(d);
    assert_eq!(codes(&t), [CODE_GPT_BACKUP_MISPLACED]);
    assert_eq!(t.partitions.len(), 3);
}

#[test]
fn a_damaged_backup_is_reported_but_the_primary_used() {
    let mut d = typical_gpt();
    d[4095 * 512 + 60] ^= 1;
    let t = read(d);
    assert_eq!(codes(&t), [CODE_GPT_BACKUP_INVALID]);
    assert_eq!(t.partitions.len(), 3);
}

#[test]
fn a_huge_entry_count_is_refused_before_anything_is_allocated() {
    let mut d = typical_gpt();
    put_u32(&mut d, 512 + 80, u32::MAX);
    reseal(&mut d, 1);
    let t = read(d);
    // The header is authentic but its array is absurd: the backup is used instead.
    assert_eq!(codes(&t), [CODE_GPT_BACKUP_USED]);
    assert!(
        t.findings[0].message.contains("at most"),
        "{}",
        t.findings[0].message
    );
}

#[test]
fn inverted_overlapping_and_out_of_disk_entries_are_findings() {
    let d = gpt_disk(
        4096,
        &[
            (
                0,
                GptPart {
                    ty: GPT_LINUX_FILESYSTEM,
                    first: 100,
                    last: 50,
                    name: "inverted",
                    attrs: 0,
                },
            ),
            (
                1,
                GptPart {
                    ty: GPT_LINUX_FILESYSTEM,
                    first: 34,
                    last: 1000,
                    name: "a",
                    attrs: 0,
                },
            ),
            (
                2,
                GptPart {
                    ty: GPT_LINUX_FILESYSTEM,
                    first: 900,
                    last: 2000,
                    name: "b",
                    attrs: 0,
                },
            ),
            (
                3,
                GptPart {
                    ty: GPT_LINUX_FILESYSTEM,
                    first: 3000,
                    last: 9000,
                    name: "c",
                    attrs: 0,
                },
            ),
            // Inside the disk but over the backup entry array.
            (
                4,
                GptPart {
                    ty: GPT_LINUX_FILESYSTEM,
                    first: 4070,
                    last: 4080,
                    name: "d",
                    attrs: 0,
                },
            ),
        ],
    );
    let t = read(d);
    let c = codes(&t);
    assert!(c.contains(&CODE_INVALID_RANGE), "{c:?}");
    assert!(c.contains(&CODE_OVERLAP), "{c:?}");
    assert!(c.contains(&CODE_BEYOND_DISK), "{c:?}");
    assert!(c.contains(&CODE_OUTSIDE_USABLE), "{c:?}");
    assert_eq!(t.partitions.len(), 4);
    // A partition past the disk has no window: nothing can read beyond the image.
    let img = image(vec![0; 4096 * 512]);
    assert!(t.get(4).unwrap().window(img.as_ref()).is_err());
}

/// An MBR disk: two primaries (the first active), an extended partition holding three
/// logicals in a chain of EBRs.
fn mbr_disk() -> Vec<u8> {
    let mut d = vec![0u8; 8192 * 512];
    put_u32(&mut d, 440, 0xC0FF_EE00);
    record(&mut d, 0, 0, 0x80, 0x83, 2048, 1024);
    record(&mut d, 0, 1, 0, 0x82, 3072, 1024);
    record(&mut d, 0, 2, 0, 0x0F, 4096, 4096);
    // EBR 1 at 4096: data at +1 (relative to the EBR), link to EBR 2 at ext+1024.
    record(&mut d, 4096 * 512, 0, 0, 0x83, 1, 1000);
    record(&mut d, 4096 * 512, 1, 0, 0x05, 1024, 1024);
    // EBR 2 at 5120: data at +8 relative to the EBR; link to ext+2048.
    record(&mut d, 5120 * 512, 0, 0, 0x8E, 8, 1000);
    record(&mut d, 5120 * 512, 1, 0, 0x05, 2048, 2048);
    // EBR 3 at 6144: last, no link.
    record(&mut d, 6144 * 512, 0, 0, 0x07, 2, 2000);
    d
}

#[test]
fn mbr_logicals_are_relative_to_their_ebr_and_numbered_from_5() {
    let t = read(mbr_disk());
    assert_eq!(t.scheme, Scheme::Mbr);
    assert!(t.findings.is_empty(), "{:?}", t.findings);
    assert_eq!(t.disk_id.as_deref(), Some("0xc0ffee00"));
    let got: Vec<(u32, u64, u64, String, Role)> = t
        .partitions
        .iter()
        .map(|p| {
            (
                p.number,
                p.start_bytes / 512,
                p.size_bytes / 512,
                p.partition_type.to_string(),
                p.role,
            )
        })
        .collect();
    let want = [
        (1, 2048, 1024, "83", Role::Primary),
        (2, 3072, 1024, "82", Role::Primary),
        (3, 4096, 4096, "0f", Role::Extended),
        (5, 4097, 1000, "83", Role::Logical),
        (6, 5128, 1000, "8e", Role::Logical),
        (7, 6146, 2000, "07", Role::Logical),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(n, s, l, ty, r)| (*n, *s, *l, ty.to_string(), *r))
        .collect();
    assert_eq!(got, want);
    assert!(t.get(1).unwrap().active && !t.get(2).unwrap().active);
    assert_eq!(t.get(6).unwrap().partuuid, "c0ffee00-06");
    assert_eq!(t.generation, Some(Generation::Gen1));
}

#[test]
fn a_looping_ebr_chain_stops_with_a_finding() {
    let mut d = mbr_disk();
    // EBR 3 links back to EBR 1 (ext + 0).
    record(&mut d, 6144 * 512, 1, 0, 0x05, 0, 1024);
    let t = read(d);
    assert_eq!(codes(&t), [CODE_EBR_CHAIN]);
    assert_eq!(t.partitions.len(), 6);
}

#[test]
fn a_chain_of_empty_links_is_cut_by_the_link_limit() {
    let mut d = vec![0u8; 1024 * 512];
    record(&mut d, 0, 0, 0, 0x05, 1, 1000);
    // 200 EBRs, each only linking to the next.
    for i in 0..200u32 {
        record(&mut d, (1 + i as usize) * 512, 1, 0, 0x05, i + 1, 1);
    }
    let t = read(d);
    assert_eq!(codes(&t), [CODE_EBR_CHAIN]);
    assert!(t.findings[0].message.contains("without a partition"));
}

#[test]
fn a_boot_sector_with_a_bad_boot_indicator_is_not_a_table() {
    let mut d = mbr_disk();
    d[446] = 0x12;
    let t = read(d);
    assert_eq!(t.scheme, Scheme::None);
    assert_eq!(codes(&t), [CODE_NONE]);
}

#[test]
fn hybrid_mbr_uses_the_gpt() {
    let mut d = typical_gpt();
    record(&mut d, 0, 1, 0x80, 0x83, 234, 1000);
    let t = read(d);
    assert_eq!(t.scheme, Scheme::Gpt);
    assert_eq!(codes(&t), [CODE_HYBRID_MBR]);
}

#[test]
fn a_gpt_without_protective_mbr_is_still_found() {
    let mut d = typical_gpt();
    d[..512].fill(0);
    let t = read(d);
    assert_eq!(t.scheme, Scheme::Gpt);
    assert_eq!(codes(&t), [CODE_GPT_NO_PROTECTIVE_MBR]);
}

#[test]
fn tiny_and_empty_disks_have_no_table() {
    for len in [0usize, 100, 511, 512, 1024] {
        let t = read(vec![0; len]);
        assert_eq!(t.scheme, Scheme::None, "len {len}");
    }
}

fn check_invariants(data: Vec<u8>) {
    let len = data.len() as u64;
    let t = read(data);
    for p in &t.partitions {
        // Whatever the table says, a partition reported without a beyond_disk finding
        // can be read through its window.
        if p.end_bytes() > len {
            assert!(codes(&t).contains(&CODE_BEYOND_DISK));
        }
    }
    assert!(t.partitions.len() <= 8192 + 4 + 252);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes where the tables live never panic the reader.
    #[test]
    fn random_sectors_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..8192), mbr_sig in any::<bool>()) {
        let mut d = bytes;
        if mbr_sig && d.len() >= 512 {
            d[510] = 0x55;
            d[511] = 0xAA;
            for i in 0..4 { d[446 + 16 * i] &= 0x80; }
        }
        check_invariants(d);
    }

    /// A valid GPT with bytes flipped in its headers and arrays never panics the reader.
    #[test]
    fn mutated_gpt_never_panics(flips in proptest::collection::vec((0usize..34 * 512, any::<u8>(), any::<bool>()), 1..12), reseal_headers in any::<bool>()) {
        let mut d = typical_gpt();
        let n = d.len();
        for (off, v, backup) in flips {
            let o = if backup { n - 33 * 512 + off % (33 * 512) } else { off };
            d[o] = v;
        }
        // Half the time keep the headers authentic so the checks past the CRC run too.
        if reseal_headers {
            reseal(&mut d, 1);
            reseal(&mut d, 4095);
        }
        check_invariants(d);
    }

    /// A valid MBR chain with bytes changed in its EBRs never panics or hangs.
    #[test]
    fn mutated_mbr_never_panics(flips in proptest::collection::vec((prop::sample::select(vec![0usize, 4096, 5120, 6144]), 446usize..512, any::<u8>()), 1..12)) {
        let mut d = mbr_disk();
        for (sector, off, v) in flips {
            d[sector * 512 + off] = v;
        }
        check_invariants(d);
    }
}
