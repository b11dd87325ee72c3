//! Finding blocks that share storage, in bounded memory (docs/formats.md §1.8, §2.8).
//!
//! Two BAT entries whose blocks overlap in the file would make a write to one show up in
//! the other. The check is a sweep over the stored blocks in order of file offset. Sorting
//! every block at once would cost memory in proportion to the table (16 bytes × 64 Mi
//! blocks for a 64 TiB VHDX), so the blocks are visited in pieces of at most `cap`, each
//! piece a range of file offsets: a histogram pass over the table picks ranges holding at
//! most `cap` blocks, each range is collected and sorted alone, and the sweep's state
//! carries from one range to the next, so the result is that of one global sort. A
//! histogram bucket holding more than `cap` blocks is split again; one holding more than
//! `cap` blocks at the same offset needs no sorting at all. Ordinary images (fewer than
//! `cap` stored blocks) take a single pass.

use crate::error::Result;
use crate::io::usize_from;

/// Stored blocks sorted at once: 16 MiB of `(offset, index)` pairs, more than the 1 Mi
/// blocks of a full 2 TiB VHD or a 32 TiB VHDX of 32 MiB blocks.
pub const SWEEP_CAP: usize = 1 << 20;
/// Buckets per histogram pass.
const BUCKETS: u64 = 4096;

/// The stored blocks of one table.
pub trait Spans {
    /// Call `emit(start, index)` for every stored block, in index order (the same set on
    /// every call).
    fn scan(&self, emit: &mut dyn FnMut(u64, u64)) -> Result<()>;
    /// One past the last file byte of block `index` starting at `start`.
    fn end(&self, start: u64, index: u64) -> u64;
}

/// Two blocks sharing storage: `earlier` (lower offset, or the same offset and a lower
/// index) reaches `earlier_end`, past where `later` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlap {
    /// Index of the block the sweep met first.
    pub earlier: u64,
    /// Its end offset.
    pub earlier_end: u64,
    /// Index of the block starting inside it.
    pub later: u64,
    /// Its start offset.
    pub later_start: u64,
}

struct Sweep<'a> {
    spans: &'a dyn Spans,
    cap: usize,
    furthest: Option<(u64, u64)>,
    on: &'a mut dyn FnMut(Overlap),
}

impl Sweep<'_> {
    fn feed(&mut self, start: u64, index: u64) {
        let end = self.spans.end(start, index);
        if let Some((fe, fi)) = self.furthest {
            if start < fe {
                (self.on)(Overlap {
                    earlier: fi,
                    earlier_end: fe,
                    later: index,
                    later_start: start,
                });
            }
        }
        if self.furthest.is_none_or(|(fe, _)| end > fe) {
            self.furthest = Some((end, index));
        }
    }

    fn feed_sorted(&mut self, mut v: Vec<(u64, u64)>) {
        v.sort_unstable();
        for (s, i) in v {
            self.feed(s, i);
        }
    }

    /// Sweep the `count` blocks starting in `[lo, hi)`.
    fn range(&mut self, lo: u64, hi: u64, count: u64) -> Result<()> {
        if count <= self.cap as u64 {
            let mut v = Vec::with_capacity(usize_from(count));
            self.spans.scan(&mut |s, i| {
                if (lo..hi).contains(&s) {
                    v.push((s, i));
                }
            })?;
            self.feed_sorted(v);
            return Ok(());
        }
        if hi - lo == 1 {
            // All at one offset: index order is the sorted order, nothing to store.
            let spans = self.spans;
            return spans.scan(&mut |s, i| {
                if s == lo {
                    self.feed(s, i);
                }
            });
        }
        let width = (hi - lo).div_ceil(BUCKETS);
        let mut counts = vec![0u64; usize_from(BUCKETS)];
        self.spans.scan(&mut |s, _| {
            if (lo..hi).contains(&s) {
                counts[usize_from((s - lo) / width)] += 1;
            }
        })?;
        let bucket = |b: u64| (lo + b * width, (lo + (b + 1) * width).min(hi));
        // Consecutive buckets grouped while they fit in `cap`.
        let mut group: Option<(u64, u64, u64)> = None;
        for (b, &n) in counts.iter().enumerate() {
            let (blo, bhi) = bucket(b as u64);
            if n == 0 {
                continue;
            }
            match group {
                Some((glo, _, gn)) if gn + n <= self.cap as u64 => group = Some((glo, bhi, gn + n)),
                _ => {
                    if let Some((glo, ghi, gn)) = group.take() {
                        self.range(glo, ghi, gn)?;
                    }
                    group = Some((blo, bhi, n));
                }
            }
        }
        if let Some((glo, ghi, gn)) = group {
            self.range(glo, ghi, gn)?;
        }
        Ok(())
    }
}

/// Report every block that starts inside an earlier one (by offset, then index) to `on`.
/// Memory: at most `cap` pairs (plus a 32 KiB histogram) whatever the table holds.
pub fn find_overlaps(spans: &dyn Spans, cap: usize, on: &mut dyn FnMut(Overlap)) -> Result<()> {
    let cap = cap.max(1);
    let mut first = Vec::new();
    let (mut count, mut lo, mut hi) = (0u64, u64::MAX, 0u64);
    let mut overflow = false;
    spans.scan(&mut |s, i| {
        count += 1;
        lo = lo.min(s);
        hi = hi.max(s);
        if !overflow {
            if first.len() < cap {
                first.push((s, i));
            } else {
                overflow = true;
                first = Vec::new();
            }
        }
    })?;
    let mut sweep = Sweep {
        spans,
        cap,
        furthest: None,
        on,
    };
    if !overflow {
        sweep.feed_sorted(first);
        return Ok(());
    }
    // Starts are file offsets, far below u64::MAX.
    sweep.range(lo, hi.saturating_add(1), count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks as `(start, len)` by index; `None` is not stored.
    struct Table(Vec<Option<(u64, u64)>>);

    impl Spans for Table {
        fn scan(&self, emit: &mut dyn FnMut(u64, u64)) -> Result<()> {
            for (i, b) in self.0.iter().enumerate() {
                if let Some((s, _)) = b {
                    emit(*s, i as u64);
                }
            }
            Ok(())
        }
        fn end(&self, start: u64, index: u64) -> u64 {
            start + self.0[index as usize].map_or(0, |b| b.1)
        }
    }

    fn later_blocks(t: &Table, cap: usize) -> Vec<u64> {
        let mut got = Vec::new();
        find_overlaps(t, cap, &mut |o| got.push(o.later)).unwrap();
        got.sort_unstable();
        got
    }

    /// The reference: one global sort and sweep.
    fn naive(t: &Table) -> Vec<u64> {
        let mut v: Vec<(u64, u64)> =
            t.0.iter()
                .enumerate()
                .filter_map(|(i, b)| b.map(|(s, _)| (s, i as u64)))
                .collect();
        v.sort_unstable();
        let mut furthest: Option<u64> = None;
        let mut got = Vec::new();
        for (s, i) in v {
            let e = t.end(s, i);
            if furthest.is_some_and(|f| s < f) {
                got.push(i);
            }
            furthest = Some(furthest.map_or(e, |f| f.max(e)));
        }
        got.sort_unstable();
        got
    }

    #[test]
    fn pieces_find_what_one_sort_finds() {
        // Pseudo-random tables: offsets clustered (many overlaps) or spread (few), some
        // entries not stored, lengths varying; caps from 1 force every partition path.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for case in 0..60 {
            let n = 1 + (next() % 400) as usize;
            let spread = [16u64, 1 << 12, 1 << 40, u64::MAX >> 2][case % 4];
            let t = Table(
                (0..n)
                    .map(|_| (next() % 5 != 0).then(|| (next() % spread, 1 + next() % 64)))
                    .collect(),
            );
            let want = naive(&t);
            for cap in [1usize, 2, 7, 64, 1 << 20] {
                assert_eq!(later_blocks(&t, cap), want, "case {case} cap {cap}");
            }
        }
    }

    #[test]
    fn many_blocks_at_one_offset_need_no_sorting() {
        // 10 000 blocks all at offset 7 with a cap of 16: every one but the first overlaps.
        let t = Table(vec![Some((7, 512)); 10_000]);
        let got = later_blocks(&t, 16);
        assert_eq!(got, (1..10_000).collect::<Vec<u64>>());
    }
}
