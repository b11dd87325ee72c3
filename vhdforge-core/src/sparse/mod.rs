//! Zero detection and data planning: the part that makes vhdforge never touch a zero byte
//! it can avoid.
//!
//! Two layers: the allocation map ([`crate::DiskImage::extents`]) rules out everything the
//! metadata proves to be zero without reading it; what remains is read and tested for zero
//! at memory bandwidth ([`is_zero`]), granule by granule ([`for_each_nonzero_run`]), in
//! parallel over the pieces ([`scan_pieces`]: the one scanner `convert` and `upload` share).

use crate::error::Result;
use crate::image::{walk_map, DiskImage};
use crate::io::usize_from;
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

/// True when every byte of `buf` is zero.
///
/// Tests the first 64 bytes, then 4 KiB at a time with a word-wise OR that the compiler
/// vectorises, so all-zero buffers are scanned at memory speed and non-zero ones exit early.
pub fn is_zero(buf: &[u8]) -> bool {
    // Data usually shows itself in its first bytes: reject it there, instead of OR-ing the
    // whole page first (that full pass was a quarter of the upload client's CPU).
    if buf.len() >= 64 && !words_zero(&buf[..64]) {
        return false;
    }
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
    let len = buf.len();
    let g = usize_from(granularity);
    // The first granule may be cut short by `base`'s alignment; after it every granule is
    // `g` long (the last may be short). One division here instead of one per granule: on
    // dense data the per-granule work is only the test of its first word.
    let mut pos = 0usize;
    let mut next = usize_from(granularity - base % granularity).min(len);
    let mut run_start: Option<usize> = None;
    while pos < len {
        let granule = &buf[pos..next];
        // Data usually shows itself in a granule's first word; `is_zero` only for the rest.
        let nonzero = match granule.first_chunk::<8>() {
            Some(w) if u64::from_ne_bytes(*w) != 0 => true,
            _ => !is_zero(granule),
        };
        match (nonzero, run_start) {
            (true, None) => run_start = Some(pos),
            (false, Some(s)) => {
                f(base + s as u64, (pos - s) as u64);
                run_start = None;
            }
            _ => {}
        }
        pos = next;
        next = next.saturating_add(g).min(len);
    }
    if let Some(s) = run_start {
        f(base + s as u64, (len - s) as u64);
    }
}

/// Read every piece with `read(buf, offset)` and hand `visit(piece, data, runs)` its bytes
/// and its runs of non-zero `granularity`-sized granules (absolute offsets, granules aligned
/// as in [`for_each_nonzero_run`]). Pieces are read and scanned in parallel on the current
/// rayon pool, each into a buffer reused per thread (memory: one piece per thread); the
/// results come back in piece order. The first error stops the scan.
///
/// `read` is where a caller checks for cancellation: it runs before each piece's I/O.
pub fn scan_pieces<T, R, V>(
    pieces: &[Range<u64>],
    granularity: u64,
    read: R,
    visit: V,
) -> Result<Vec<T>>
where
    T: Send,
    R: Fn(&mut [u8], u64) -> Result<()> + Sync,
    V: Fn(&Range<u64>, &[u8], &[Range<u64>]) -> Result<T> + Sync,
{
    thread_local!(static SCRATCH: RefCell<(Vec<u8>, Vec<Range<u64>>)> = const { RefCell::new((Vec::new(), Vec::new())) });
    let scan_one = |piece: &Range<u64>, buf: &mut Vec<u8>, runs: &mut Vec<Range<u64>>| {
        // Pieces are bounded by the caller's piece size (a few MiB).
        let len = usize_from(piece.end - piece.start);
        buf.resize(len, 0);
        let data = &mut buf[..len];
        read(data, piece.start)?;
        runs.clear();
        for_each_nonzero_run(data, piece.start, granularity, |s, l| runs.push(s..s + l));
        visit(piece, data, runs)
    };
    pieces
        .par_iter()
        .map(|piece| {
            SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
                Ok(mut s) => {
                    let (buf, runs) = &mut *s;
                    scan_one(piece, buf, runs)
                }
                // A `read` or `visit` that itself waits on rayon can have this thread pick
                // up another piece meanwhile; that one gets buffers of its own.
                Err(_) => scan_one(piece, &mut Vec::new(), &mut Vec::new()),
            })
        })
        .collect()
}

/// The virtual ranges of `[start, end)` that the metadata says hold stored bytes, split
/// into pieces of at most `max_piece` bytes (split points aligned to `max_piece`).
/// Walks the map in slices, so memory grows with the number of data pieces only.
pub fn data_pieces(
    image: &dyn DiskImage,
    range: Range<u64>,
    max_piece: u64,
) -> Result<Vec<Range<u64>>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    walk_map(image, range, |extents| {
        for e in extents.iter().filter(|e| e.allocation.is_data()) {
            let mut s = e.start;
            while s < e.end() {
                let piece_end = ((s / max_piece + 1) * max_piece).min(e.end());
                match out.last_mut() {
                    // Merge with a preceding adjacent piece in the same aligned window.
                    Some(last) if last.end == s && (last.start / max_piece) == (s / max_piece) => {
                        last.end = piece_end;
                    }
                    _ => out.push(s..piece_end),
                }
                s = piece_end;
            }
        }
        Ok(())
    })?;
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

    #[test]
    fn a_failing_read_stops_the_scan_with_its_error() {
        let pieces: Vec<Range<u64>> = (0..64u64).map(|i| i * 4096..(i + 1) * 4096).collect();
        let e = scan_pieces(
            &pieces,
            512,
            |buf: &mut [u8], at| {
                if at == 40 * 4096 {
                    return Err(crate::Error::corrupt("test.read", at, "unreadable"));
                }
                buf.fill(1);
                Ok(())
            },
            |_, _, runs| Ok(runs.len()),
        )
        .unwrap_err();
        assert_eq!(
            (e.code().as_str(), e.offset()),
            ("test.read", Some(40 * 4096))
        );
    }

    proptest! {
        // The parallel piece scanner hands each piece its own bytes and exactly the runs a
        // byte-by-byte scan of that piece finds, in piece order.
        #[test]
        fn scan_pieces_equals_naive(len in 1usize..40_000, g in prop::sample::select(vec![1u64, 512, 4096]),
                                    cuts in prop::collection::vec((0usize..40_000, 0usize..9000), 0..10),
                                    pokes in prop::collection::vec((0usize..40_000, 1u8..=255), 0..24)) {
            let mut buf = vec![0u8; len];
            for (at, v) in pokes { if at < len { buf[at] = v; } }
            // Sorted, disjoint pieces (some empty-gapped, some touching) inside the buffer.
            let mut pieces: Vec<Range<u64>> = Vec::new();
            let mut starts: Vec<(usize, usize)> = cuts.into_iter().map(|(s, l)| (s % len, l)).collect();
            starts.sort_unstable();
            for (s, l) in starts {
                let s = s.max(pieces.last().map_or(0, |p| p.end as usize));
                let e = (s + l).min(len);
                if s < e { pieces.push(s as u64..e as u64); }
            }
            let got = scan_pieces(
                &pieces,
                g,
                |out: &mut [u8], at| { out.copy_from_slice(&buf[at as usize..at as usize + out.len()]); Ok(()) },
                |piece, data, runs| {
                    assert_eq!(data, &buf[piece.start as usize..piece.end as usize]);
                    Ok((piece.clone(), runs.iter().map(|r| (r.start, r.end - r.start)).collect::<Vec<_>>()))
                },
            ).unwrap();
            prop_assert_eq!(got.len(), pieces.len());
            for (piece, (p, runs)) in pieces.iter().zip(got) {
                prop_assert_eq!(&p, piece);
                let s = piece.start as usize;
                prop_assert_eq!(runs, naive_runs(&buf[s..piece.end as usize], piece.start, g));
            }
        }

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
