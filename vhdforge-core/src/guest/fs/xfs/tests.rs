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
