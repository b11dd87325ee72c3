//! A FAT12 volume built byte by byte, then damaged: chains that loop, end early or leave the
//! data area must give errors naming the damage, never a hang or a panic.

use std::sync::Arc;

use super::*;
use crate::image::DiskImage;

const SECTOR: usize = 512;
/// Boot sector, one FAT per copy (two copies), one root sector (16 entries), 200 clusters.
const FAT_AT: usize = SECTOR;
const ROOT_AT: usize = 3 * SECTOR;
const DATA_AT: usize = 4 * SECTOR;
const CLUSTERS: usize = 200;

fn boot_sector(d: &mut [u8]) {
    d[0..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
    d[3..11].copy_from_slice(b"MSWIN4.1");
    d[11..13].copy_from_slice(&512u16.to_le_bytes());
    d[13] = 1; // sectors per cluster
    d[14..16].copy_from_slice(&1u16.to_le_bytes()); // reserved
    d[16] = 2; // FATs
    d[17..19].copy_from_slice(&16u16.to_le_bytes()); // root entries
    d[19..21].copy_from_slice(&((4 + CLUSTERS) as u16).to_le_bytes());
    d[21] = 0xF8;
    d[22..24].copy_from_slice(&1u16.to_le_bytes()); // sectors per FAT
    d[510] = 0x55;
    d[511] = 0xAA;
}

/// Set FAT12 entry `c` to `v`.
fn set_fat(d: &mut [u8], c: usize, v: u16) {
    let at = FAT_AT + c + c / 2;
    let cur = u16::from_le_bytes([d[at], d[at + 1]]);
    let new = if c & 1 == 1 {
        (cur & 0x000F) | (v << 4)
    } else {
        (cur & 0xF000) | (v & 0x0FFF)
    };
    d[at..at + 2].copy_from_slice(&new.to_le_bytes());
}

/// A short entry in the root directory slot `i`.
fn root_entry(d: &mut [u8], i: usize, name: &[u8; 11], attr: u8, cluster: u16, size: u32) {
    let e = &mut d[ROOT_AT + 32 * i..ROOT_AT + 32 * (i + 1)];
    e[0..11].copy_from_slice(name);
    e[11] = attr;
    e[26..28].copy_from_slice(&cluster.to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
}

/// FILE.TXT: 1000 bytes in clusters 2 → 3; SUB: a directory at cluster 4 holding
/// INNER.TXT (5 bytes at cluster 5).
fn volume(damage: impl FnOnce(&mut [u8])) -> FatFs {
    let mut d = vec![0u8; DATA_AT + CLUSTERS * SECTOR];
    boot_sector(&mut d);
    set_fat(&mut d, 0, 0xFF8);
    set_fat(&mut d, 1, 0xFFF);
    set_fat(&mut d, 2, 3);
    set_fat(&mut d, 3, 0xFFF);
    set_fat(&mut d, 4, 0xFFF);
    set_fat(&mut d, 5, 0xFFF);
    root_entry(&mut d, 0, b"FILE    TXT", 0x20, 2, 1000);
    root_entry(&mut d, 1, b"SUB        ", 0x10, 4, 0);
    for (i, b) in d[DATA_AT..DATA_AT + 1024].iter_mut().enumerate() {
        *b = (i % 253) as u8;
    }
    let sub = DATA_AT + 2 * SECTOR;
    d[sub..sub + 11].copy_from_slice(b"INNER   TXT");
    d[sub + 11] = 0x20;
    d[sub + 26] = 5;
    d[sub + 28] = 5;
    d[DATA_AT + 3 * SECTOR..DATA_AT + 3 * SECTOR + 5].copy_from_slice(b"inner");
    damage(&mut d);
    let img: Arc<dyn DiskImage> = Arc::from(crate::open_bytes(d).unwrap());
    FatFs::open(Volume::whole(img)).unwrap()
}

fn read_all(fs: &FatFs, path: &[u8]) -> Result<Vec<u8>> {
    let mut f = fs.open(path)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 300];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_sound_volume_reads_across_clusters_case_insensitively() {
    let fs = volume(|_| {});
    assert_eq!(fs.kind(), FsKind::Fat12);
    let data = read_all(&fs, b"/file.txt").unwrap();
    assert_eq!(data.len(), 1000);
    assert!(data.iter().enumerate().all(|(i, &b)| b == (i % 253) as u8));
    assert_eq!(read_all(&fs, b"/Sub/INNER.txt").unwrap(), b"inner");
    let st = fs.stat(b"/SUB").unwrap();
    assert_eq!(
        (st.file_type, st.mode, st.size),
        (FileType::Directory, 0o755, 512)
    );
    assert_eq!(
        fs.stat(b"/sub/nothing").unwrap_err().code(),
        "guest.fs.not_found"
    );
    assert_eq!(
        fs.list(b"/FILE.TXT", &mut |_| true).unwrap_err().code(),
        "guest.fs.not_a_directory"
    );
}

#[test]
fn a_file_chain_that_ends_early_is_named_not_zero_filled() {
    let fs = volume(|d| set_fat(d, 2, 0xFFF));
    let e = read_all(&fs, b"/FILE.TXT").unwrap_err();
    assert_eq!(e.code(), "guest.fs.fat_corrupt");
    assert!(
        e.message().contains("ends after 1 clusters"),
        "{}",
        e.message()
    );
}

#[test]
fn a_chain_into_a_free_cluster_or_out_of_the_data_area_is_an_error() {
    for (next, why) in [(0u16, "a free cluster"), (0xF00, "outside the data area")] {
        let fs = volume(|d| set_fat(d, 2, next));
        let e = read_all(&fs, b"/FILE.TXT").unwrap_err();
        assert!(e.message().contains(why), "{}", e.message());
    }
}

#[test]
fn a_directory_chain_that_loops_stops_at_the_format_limit() {
    // SUB's cluster points to itself, and its only entry is not followed by an end marker
    // within the cluster: without the bound the listing would never end.
    let fs = volume(|d| {
        set_fat(d, 4, 4);
        let sub = DATA_AT + 2 * SECTOR;
        for i in 1..16 {
            d[sub + 32 * i..sub + 32 * i + 11].copy_from_slice(b"X       TXT");
        }
    });
    let e = fs.list(b"/SUB", &mut |_| true).unwrap_err();
    assert_eq!(e.code(), "guest.fs.fat_corrupt");
    assert!(e.message().contains("loops"), "{}", e.message());
    assert_eq!(fs.stat(b"/SUB").unwrap_err().code(), "guest.fs.fat_corrupt");
}

#[test]
fn a_boot_sector_claiming_more_than_the_volume_is_refused() {
    let mut d = vec![0u8; DATA_AT + CLUSTERS * SECTOR];
    boot_sector(&mut d);
    d[19..21].copy_from_slice(&60_000u16.to_le_bytes());
    let img: Arc<dyn DiskImage> = Arc::from(crate::open_bytes(d).unwrap());
    let e = FatFs::open(Volume::whole(img)).unwrap_err();
    assert!(e.message().contains("truncated"), "{}", e.message());
}
