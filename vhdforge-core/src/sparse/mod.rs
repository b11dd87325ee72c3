//! Zero detection and data planning: the part that makes vhdforge never touch a zero byte
//! it can avoid.
//!
//! Two layers: the allocation map ([`crate::DiskImage::extents`]) rules out everything the
//! metadata proves to be zero without reading it; what remains is read and tested for zero
//! at memory bandwidth ([`is_zero`]), granule by granule ([`for_each_nonzero_run`]).

use crate::error::Result;
use crate::image::{DiskImage, Extent};
use std::ops::Range;

/// True when every byte of `buf` is zero.
///
/// Tests 4 KiB at a time with a word-wise OR that the compiler vectorises, so all-zero
/// buffers are scanned at memory speed and non-zero ones exit early.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(4096);
    for block in &mut blocks {
        if !words_zero(block) {
            return false;
        }
    }
    words_zero(blocks.remainder())
}

#[inline]
fn words_zero(buf: &[u8]) -> bool {
    let mut words = buf.chunks_exact(8);
    let acc = (&mut words).fold(0u64, |a, w| {
        a | u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
    });
    acc == 0 && words.remainder().iter().all(|&b| b == 0)
}

/// Call `f(start, len)` for each maximal run of granules of `buf` that hold a non-zero
/// byte. `base` is the offset of `buf[0]`; granules are aligned to `granularity` in that
/// offset space (so runs stay aligned across calls); the last granule may be short.
pub fn for_each_nonzero_run(buf: &[u8], base: u64, granularity: u64, mut f: impl FnMut(u64, u64)) {
    debug_assert!(granularity > 0);
    let len = buf.len() as u64;
    let mut pos = 0u64;
    let mut run_start: Option<u64> = None;
    while pos < len {
        let abs = base + pos;
        let next = ((abs / granularity + 1) * granularity - base).min(len);
        let nonzero = !is_zero(&buf[pos as usize..next as usize]);
        match (nonzero, run_start) {
            (true, None) => run_start = Some(pos),
            (false, Some(s)) => {
                f(base + s, pos - s);
                run_start = None;
            }
            _ => {}
        }
        pos = next;
    }
    if let Some(s) = run_start {
        f(base + s, len - s);
    }
}

/// The virtual ranges of `[start, end)` that the metadata says hold stored bytes, split
/// into pieces of at most `max_piece` bytes (split points aligned to `max_piece`).
/// Walks the map in slices, so memory grows with the number of data pieces only.
pub fn data_pieces(
    image: &dyn DiskImage,
    range: Range<u64>,
    max_piece: u64,
) -> Result<Vec<Range<u64>>> {
    // Small enough that even a map fragmented to one extent per sector stays a few MiB.
    const SLICE: u64 = 256 << 20;
    let mut out: Vec<Range<u64>> = Vec::new();
    let mut extents: Vec<Extent> = Vec::new();
    let mut pos = range.start;
    while pos < range.end {
        let len = SLICE.min(range.end - pos);
        extents.clear();
        image.extents(pos, len, &mut extents)?;
        for e in extents.iter().filter(|e| e.allocation.is_data()) {
            let mut s = e.start;
            while s < e.end() {
                let piece_end = ((s / max_piece + 1) * max_piece).min(e.end());
                match out.last_mut() {
                    // Merge with a preceding adjacent piece in the same aligned window.
                    Some(last) if last.end == s && (last.start / max_piece) == (s / max_piece) => {
                        last.end = piece_end
                    }
                    _ => out.push(s..piece_end),
                }
                s = piece_end;
            }
        }
        pos += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_runs(buf: &[u8], base: u64, g: u64) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut i = 0u64;
        while i < buf.len() as u64 {
            let end = ((base + i) / g + 1) * g - base;
            let end = end.min(buf.len() as u64);
            if buf[i as usize..end as usize].iter().any(|&b| b != 0) {
                match runs.last_mut() {
                    Some(r) if r.0 + r.1 == base + i => r.1 += end - i,
                    _ => runs.push((base + i, end - i)),
                }
            }
            i = end;
        }
        runs
    }

    proptest! {
        // The fast scan finds exactly the granules a byte-by-byte scan finds.
        #[test]
        fn nonzero_runs_equal_naive(len in 0usize..20000, base in 0u64..5000, g in prop::sample::select(vec![1u64, 512, 4096, 65536]),
                                    pokes in prop::collection::vec((0usize..20000, 1u8..=255), 0..12)) {
            let mut buf = vec![0u8; len];
            for (at, v) in pokes { if at < len { buf[at] = v; } }
            let mut got = Vec::new();
            for_each_nonzero_run(&buf, base, g, |s, l| got.push((s, l)));
            prop_assert_eq!(got, naive_runs(&buf, base, g));
            prop_assert_eq!(is_zero(&buf), buf.iter().all(|&b| b == 0));
        }
    }
}
