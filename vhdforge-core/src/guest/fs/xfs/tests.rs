//! Unit tests of the packed encodings; whole file systems are tested against the kernel in
//! `tests/guest_fs_xfs.rs`.

use super::bmap::{find, Extent};

#[test]
fn extent_lookup_finds_runs_and_holes() {
    let e = |file_block, blocks| Extent {
        file_block,
        fsblock: 100 + file_block,
        blocks,
        unwritten: false,
    };
    let ext = [e(0, 2), e(5, 1), e(10, 4)];
    // (file block, index of the extent holding it) — None is a hole.
    for (fb, want) in [
        (0, Some(0)),
        (1, Some(0)),
        (2, None),
        (5, Some(1)),
        (6, None),
        (13, Some(2)),
        (14, None),
    ] {
        assert_eq!(find(&ext, fb), want.map(|i: usize| &ext[i]), "block {fb}");
    }
}

use super::superblock::{parse, RawSuperblock};
use crate::format::vhdx::crc32c_zeroed;
use zerocopy::{FromZeros, IntoBytes};

/// A v5 superblock like mkfs.xfs 6.1 writes for 300 MiB: 4 AGs of 19200 4 KiB blocks.
fn v5() -> RawSuperblock {
    let mut sb = RawSuperblock::new_zeroed();
    sb.magicnum.set(super::superblock::MAGIC);
    sb.blocksize.set(4096);
    sb.dblocks.set(76800);
    sb.logstart.set(65542);
    sb.rootino.set(128);
    sb.agblocks.set(19200);
    sb.agcount.set(4);
    sb.logblocks.set(16384);
    sb.versionnum.set(0xB4A5);
    sb.sectsize.set(512);
    sb.inodesize.set(512);
    sb.inopblock.set(8);
    (
        sb.blocklog,
        sb.sectlog,
        sb.inodelog,
        sb.inopblog,
        sb.agblklog,
    ) = (12, 9, 9, 3, 15);
    sb.features_incompat.set(0xB);
    sb
}

/// The sector with a correct CRC.
fn sector(sb: &RawSuperblock) -> Vec<u8> {
    let mut s = vec![0u8; 512];
    s[..sb.as_bytes().len()].copy_from_slice(sb.as_bytes());
    let crc = crc32c_zeroed(&s, 224);
    s[224..228].copy_from_slice(&crc.to_le_bytes());
    s
}

#[test]
fn superblock_checks_name_what_they_refuse() {
    const VOL: u64 = 300 << 20;
    let g = parse(&sector(&v5()), VOL).unwrap();
    assert!(g.has_ftype && g.version == 5 && g.dir_block_bytes == 4096);
    // (change, volume size, expected code, words the message must contain)
    type Change = fn(&mut RawSuperblock);
    let cases: &[(Change, u64, &str, &str)] = &[
        // Features refused by name, unknown bits by value.
        (
            |s| s.features_incompat.set(0xB | 0x100),
            VOL,
            "guest.fs.xfs_unsupported",
            "metadir",
        ),
        (
            |s| s.features_incompat.set(0xB | 0x200),
            VOL,
            "guest.fs.xfs_unsupported",
            "zoned",
        ),
        (
            |s| s.features_incompat.set(0xB | 0x800),
            VOL,
            "guest.fs.xfs_unsupported",
            "unknown bits 0x800",
        ),
        (
            |s| s.features_incompat.set(0xB | 0x10),
            VOL,
            "guest.fs.xfs_corrupt",
            "needsrepair",
        ),
        // Geometry that would misplace every address.
        (
            |s| s.agblklog = 14,
            VOL,
            "guest.fs.xfs_corrupt",
            "agblklog 14, expected 15",
        ),
        (
            |s| s.inopblog = 2,
            VOL,
            "guest.fs.xfs_corrupt",
            "inode size",
        ),
        (
            |s| s.blocksize.set(4095),
            VOL,
            "guest.fs.xfs_corrupt",
            "block size 4095",
        ),
        (
            |s| s.dblocks.set(19200 * 5),
            VOL,
            "guest.fs.xfs_corrupt",
            "allocation groups",
        ),
        // A partition cut short.
        (|_| {}, VOL - 4096, "guest.fs.xfs_corrupt", "truncated"),
        (
            |s| s.logstart.set(0),
            VOL,
            "guest.fs.xfs_unsupported",
            "external device",
        ),
        (
            |s| s.inprogress = 1,
            VOL,
            "guest.fs.xfs_corrupt",
            "never finished",
        ),
        (
            |s| s.versionnum.set(0xB4A6),
            VOL,
            "guest.fs.xfs_unsupported",
            "version 6",
        ),
    ];
    for (i, (change, vol, code, words)) in cases.iter().enumerate() {
        let mut sb = v5();
        change(&mut sb);
        let e = parse(&sector(&sb), *vol).unwrap_err();
        assert_eq!(e.code(), *code, "case {i}: {e}");
        assert!(e.to_string().contains(words), "case {i}: {e}");
    }
    // A damaged byte fails the CRC.
    let mut s = sector(&v5());
    s[300] ^= 1;
    let e = parse(&s, VOL).unwrap_err();
    assert!(e.to_string().contains("CRC"), "{e}");
}
