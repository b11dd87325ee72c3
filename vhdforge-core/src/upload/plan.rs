//! The upload plan: which Put Page requests carry the output stream (`docs/azure-page-blob.md §7.1`).
//!
//! An upload is planned from the metadata alone ([`plan_pieces`] over
//! [`crate::sparse::data_pieces`]: `SEEK_DATA` for raw and fixed images, the block maps for
//! dynamic ones), and the send phase reads each piece once, tests each 512-byte page for
//! zero and coalesces the non-zero runs into requests as it goes ([`StreamCoalescer`]), so
//! no byte is read twice (issue 16). Non-zero runs are coalesced into 512-aligned requests
//! of at most 4 MiB; zero gaps shorter than the bridge are sent as zeros so the request
//! count stays well under the 500 requests/s a page blob allows. `verify` and `--dry-run`,
//! which send nothing, make the same exact plan in one pass ([`plan_requests_multi`]). The
//! footer page is not part of any plan (sent last).

use crate::azure::FixedVhdLayout;
use crate::error::{Error, ErrorKind, Result};
use crate::image::DiskImage;
use crate::io::hex_lower;
use crate::progress::Cancel;
use crate::sparse::{data_pieces, scan_pieces};
use sha2::{Digest, Sha256};
use std::ops::Range;

/// A page blob page: the unit of every Put Page offset and length.
pub const PAGE: u64 = 512;
/// Largest Put Page body the service accepts.
pub const MAX_PUT_PAGE: u64 = 4 << 20;
/// Default largest zero gap sent as zeros rather than splitting a request.
pub const DEFAULT_BRIDGE: u64 = 64 << 10;

/// The data requests for an output stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPlan {
    /// Sorted, disjoint, 512-aligned ranges of the disk area, each ≤ 4 MiB.
    pub requests: Vec<Range<u64>>,
    /// Bytes the requests carry (non-zero pages plus bridged zero gaps).
    pub bytes: u64,
}

impl DataPlan {
    /// A digest of the requests, to tell a resumed upload that the plan is still the same.
    pub fn hash(&self, footer: &[u8]) -> String {
        let mut h = Sha256::new();
        for r in &self.requests {
            h.update(r.start.to_le_bytes());
            h.update(r.end.to_le_bytes());
        }
        h.update(footer);
        hex_lower(&h.finalize()[..16])
    }
}

/// Build the plan for the disk area of `plan` read from `image`, bridging gaps `< bridge`.
pub fn plan_requests(
    image: &dyn DiskImage,
    plan: &FixedVhdLayout,
    bridge: u64,
) -> Result<DataPlan> {
    Ok(plan_requests_multi(image, plan, &[bridge], &Cancel::never())?.remove(0))
}

/// One plan per bridge value from a single pass over the data (verify needs the exact
/// non-zero pages and the bridged requests). Stops with `upload.cancelled` when `cancel`
/// is set (planning a big disk takes a while).
pub fn plan_requests_multi(
    image: &dyn DiskImage,
    plan: &FixedVhdLayout,
    bridges: &[u64],
    cancel: &Cancel,
) -> Result<Vec<DataPlan>> {
    /// The metadata is walked in windows so the piece list stays small on huge disks.
    const WINDOW: u64 = 64 << 30;
    let mut builders: Vec<Coalescer> = bridges.iter().map(|&b| Coalescer::new(b)).collect();
    let mut window = 0u64;
    while window < plan.source_size {
        let window_end = window.saturating_add(WINDOW).min(plan.source_size);
        let pieces = data_pieces(image, window..window_end, MAX_PUT_PAGE)?;
        // Pieces are read and zero-tested in parallel; their runs come back in order.
        let runs: Vec<Vec<Range<u64>>> = scan_pieces(
            &pieces,
            PAGE,
            |buf, at| {
                if cancel.is_cancelled() {
                    return Err(Error::new(
                        ErrorKind::Interrupted,
                        "upload.cancelled",
                        "interrupted while planning",
                    ));
                }
                plan.read_disk(image, buf, at)
            },
            |_, _, runs| {
                // Runs are page-aligned except where a piece starts or ends inside a page;
                // widen to whole pages (the disk area is a whole number of MiB, so this
                // stays inside).
                Ok(runs
                    .iter()
                    .map(|r| {
                        r.start / PAGE * PAGE..(r.end.div_ceil(PAGE) * PAGE).min(plan.disk_size)
                    })
                    .collect())
            },
        )?;
        for r in runs.iter().flatten() {
            for b in &mut builders {
                b.add(r.start, r.end);
            }
        }
        window = window_end;
    }
    Ok(builders.into_iter().map(Coalescer::finish).collect())
}

/// The pieces an upload reads: what the allocation map shows as data, widened to whole
/// pages and each inside one 4 MiB-aligned window (so ≤ 4 MiB, readable back in one range).
/// Nothing is read to find them, so a big disk's plan is ready at once; the exact zero test
/// runs on each piece as the send pipeline reads it ([`StreamCoalescer`]), so a cold-cache
/// upload reads every data byte once (issue 16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiecePlan {
    /// Sorted, disjoint, 512-aligned ranges of the disk area.
    pub pieces: Vec<Range<u64>>,
    /// Their total length: the most the upload can send (zero pages inside are not sent).
    pub bytes: u64,
}

impl PiecePlan {
    /// A digest of the pieces and the footer, to tell a resumed upload that it continues
    /// the same plan. Tagged, so a journal of the older exact-request plans is refused
    /// rather than misread (its ranges were requests, not pieces).
    pub fn hash(&self, footer: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(b"vhdforge pieces v2");
        for r in &self.pieces {
            h.update(r.start.to_le_bytes());
            h.update(r.end.to_le_bytes());
        }
        h.update(footer);
        hex_lower(&h.finalize()[..16])
    }
}

/// The [`PiecePlan`] of the disk area of `layout` read from `image`, from the metadata only.
pub fn plan_pieces(
    image: &dyn DiskImage,
    layout: &FixedVhdLayout,
    cancel: &Cancel,
) -> Result<PiecePlan> {
    const WINDOW: u64 = 64 << 30;
    let mut pieces: Vec<Range<u64>> = Vec::new();
    let mut window = 0u64;
    while window < layout.source_size {
        if cancel.is_cancelled() {
            return Err(Error::new(
                ErrorKind::Interrupted,
                "upload.cancelled",
                "interrupted while planning",
            ));
        }
        let window_end = window.saturating_add(WINDOW).min(layout.source_size);
        for p in data_pieces(image, window..window_end, MAX_PUT_PAGE)? {
            // Page-aligned 4 MiB windows stay whole when a piece is widened to pages.
            let start = p.start / PAGE * PAGE;
            let end = (p.end.div_ceil(PAGE) * PAGE).min(layout.disk_size);
            match pieces.last_mut() {
                // Two pieces sharing a page (or touching) inside one window become one.
                Some(last)
                    if start <= last.end && last.start / MAX_PUT_PAGE == start / MAX_PUT_PAGE =>
                {
                    last.end = last.end.max(end);
                }
                Some(last) if start < last.end => {
                    // Only a page split by a window edge can overlap: it is read with the
                    // earlier piece.
                    if end > last.end {
                        let s = last.end;
                        pieces.push(s..end);
                    }
                }
                _ => pieces.push(start..end),
            }
        }
        window = window_end;
    }
    let bytes = pieces.iter().map(|r| r.end - r.start).sum();
    Ok(PiecePlan { pieces, bytes })
}

/// [`Coalescer`] for data as it is read: fed each piece's non-zero runs in stream order,
/// it emits the same requests the coalescer makes of those runs, each as soon as it can
/// no longer grow, holding at most one request (≤ 4 MiB) back.
#[derive(Debug)]
pub struct StreamCoalescer {
    bridge: u64,
    pending: Option<Range<u64>>,
}

impl StreamCoalescer {
    /// Bridging zero gaps shorter than `bridge` bytes.
    pub fn new(bridge: u64) -> Self {
        StreamCoalescer {
            bridge,
            pending: None,
        }
    }

    /// The request being built, if any (it may still grow).
    pub fn pending(&self) -> Option<&Range<u64>> {
        self.pending.as_ref()
    }

    /// Add the page-aligned non-zero run `[start, end)`; calls `emit` for each request
    /// that can no longer grow.
    pub fn add(&mut self, mut start: u64, end: u64, emit: &mut dyn FnMut(Range<u64>)) {
        while start < end {
            if let Some(p) = self.pending.as_mut() {
                let cap = p.start + MAX_PUT_PAGE;
                if start >= p.end && start - p.end < self.bridge.max(1) && start < cap {
                    p.end = end.min(cap);
                    start = p.end;
                    continue;
                }
            }
            self.flush(emit);
            let stop = end.min(start + MAX_PUT_PAGE);
            self.pending = Some(start..stop);
            start = stop;
        }
    }

    /// Emit the pending request (at a skipped piece, or the end).
    pub fn flush(&mut self, emit: &mut dyn FnMut(Range<u64>)) {
        if let Some(p) = self.pending.take() {
            emit(p);
        }
    }
}

/// Turns sorted page-aligned non-zero runs into Put Page requests.
#[derive(Debug)]
pub struct Coalescer {
    bridge: u64,
    requests: Vec<Range<u64>>,
}

impl Coalescer {
    /// A coalescer bridging zero gaps shorter than `bridge` bytes.
    pub fn new(bridge: u64) -> Self {
        Coalescer {
            bridge,
            requests: Vec::new(),
        }
    }

    /// Add the non-zero run `[start, end)`; runs arrive in order (they may touch or overlap
    /// the previous one by a page where pieces split a page).
    pub fn add(&mut self, mut start: u64, end: u64) {
        while start < end {
            if let Some(last) = self.requests.last_mut() {
                start = start.max(last.end);
                if start >= end {
                    return;
                }
                let cap = last.start + MAX_PUT_PAGE;
                if start - last.end < self.bridge.max(1) && start < cap {
                    last.end = end.min(cap);
                    start = last.end;
                    continue;
                }
            }
            let stop = end.min(start + MAX_PUT_PAGE);
            self.requests.push(start..stop);
            start = stop;
        }
    }

    /// The requests.
    pub fn finish(self) -> DataPlan {
        let bytes = self.requests.iter().map(|r| r.end - r.start).sum();
        DataPlan {
            requests: self.requests,
            bytes,
        }
    }
}

/// Subtract the sorted disjoint `covered` ranges from the sorted disjoint `ranges`.
pub fn subtract(ranges: &[Range<u64>], covered: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut j = 0;
    for r in ranges {
        let mut s = r.start;
        while j < covered.len() && covered[j].end <= s {
            j += 1;
        }
        let mut k = j;
        while s < r.end {
            match covered.get(k) {
                Some(c) if c.start < r.end => {
                    if c.start > s {
                        out.push(s..c.start);
                    }
                    s = s.max(c.end);
                    k += 1;
                }
                _ => {
                    out.push(s..r.end);
                    break;
                }
            }
        }
    }
    out
}

/// True when `[start, end)` lies entirely inside the union of sorted disjoint `covered`.
/// A binary search, so checking every request of a big plan stays cheap.
pub fn is_covered(start: u64, end: u64, covered: &[Range<u64>]) -> bool {
    let mut i = covered.partition_point(|c| c.end <= start);
    let mut pos = start;
    while pos < end {
        match covered.get(i) {
            Some(c) if c.start <= pos => {
                pos = c.end;
                i += 1;
            }
            _ => return false,
        }
    }
    true
}

/// Sort and merge touching/overlapping ranges.
pub fn normalize(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
// Test tables of ranges read best written out literally.
#[allow(clippy::type_complexity, clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::sparse::for_each_nonzero_run;
    use proptest::prelude::*;

    /// Non-zero 512-byte pages of `data`, as page indexes.
    fn nonzero_pages(data: &[u8]) -> Vec<u64> {
        data.chunks(PAGE as usize)
            .enumerate()
            .filter(|(_, c)| c.iter().any(|&b| b != 0))
            .map(|(i, _)| i as u64)
            .collect()
    }

    fn plan_of(data: &[u8], bridge: u64) -> DataPlan {
        let mut c = Coalescer::new(bridge);
        for_each_nonzero_run(data, 0, PAGE, |s, l| {
            c.add(s, (s + l).div_ceil(PAGE) * PAGE);
        });
        c.finish()
    }

    fn check_invariants(
        data: &[u8],
        bridge: u64,
        plan: &DataPlan,
    ) -> std::result::Result<(), TestCaseError> {
        let pages = nonzero_pages(data);
        let mut prev_end = 0;
        for r in &plan.requests {
            // Aligned, non-empty, within the 4 MiB cap, sorted and disjoint.
            prop_assert!(r.start % PAGE == 0 && r.end % PAGE == 0 && r.start < r.end);
            prop_assert!(r.end - r.start <= MAX_PUT_PAGE);
            prop_assert!(r.start >= prev_end);
            prev_end = r.end;
            // Every request starts and ends on a non-zero page (no wasted zeros at the edges) ...
            prop_assert!(pages.binary_search(&(r.start / PAGE)).is_ok());
            prop_assert!(pages.binary_search(&(r.end / PAGE - 1)).is_ok());
            // ... and any zero run inside it is shorter than the bridge.
            let mut zero_run = 0;
            for p in r.start / PAGE..r.end / PAGE {
                if pages.binary_search(&p).is_ok() {
                    zero_run = 0;
                } else {
                    zero_run += PAGE;
                    prop_assert!(
                        zero_run < bridge.max(1),
                        "zero gap of {} in {:?}",
                        zero_run,
                        r
                    );
                }
            }
        }
        // Every non-zero page is sent.
        for p in &pages {
            prop_assert!(
                plan.requests
                    .iter()
                    .any(|r| r.start <= p * PAGE && p * PAGE < r.end),
                "page {} not sent",
                p
            );
        }
        prop_assert_eq!(
            plan.bytes,
            plan.requests.iter().map(|r| r.end - r.start).sum::<u64>()
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        // Plans cover exactly the non-zero pages (plus bridged gaps), in valid requests.
        #[test]
        fn plan_covers_nonzero_pages(len_pages in 1usize..20_000, bridge in prop::sample::select(vec![0u64, 512, 4096, 65536]),
                                     pokes in prop::collection::vec((0usize..(20_000 * 512), 1u8..=255), 0..40),
                                     runs in prop::collection::vec((0usize..(20_000 * 512), 1usize..(9 << 20)), 0..3)) {
            let mut data = vec![0u8; len_pages * PAGE as usize];
            let n = data.len();
            for (at, v) in pokes { if at < n { data[at] = v; } }
            for (at, l) in runs { for b in data.iter_mut().take((at + l).min(n)).skip(at.min(n)) { *b = 0xa5; } }
            let plan = plan_of(&data, bridge);
            check_invariants(&data, bridge, &plan)?;
            if bridge == 0 {
                // Without bridging, the requests are exactly the non-zero pages.
                let sent: u64 = plan.requests.iter().map(|r| (r.end - r.start) / PAGE).sum();
                prop_assert_eq!(sent, nonzero_pages(&data).len() as u64);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        // Streaming over pieces of any size yields exactly the exact plan's requests: the
        // send phase's requests are the ones verify expects.
        #[test]
        fn streaming_equals_the_exact_plan(len_pages in 1usize..20_000, bridge in prop::sample::select(vec![0u64, 512, 4096, 65536]),
                                           pokes in prop::collection::vec((0usize..(20_000 * 512), 1u8..=255), 0..40),
                                           runs in prop::collection::vec((0usize..(20_000 * 512), 1usize..(9 << 20)), 0..3),
                                           piece_pages in 1u64..9000) {
            let mut data = vec![0u8; len_pages * PAGE as usize];
            let n = data.len();
            for (at, v) in pokes { if at < n { data[at] = v; } }
            for (at, l) in runs { for b in data.iter_mut().take((at + l).min(n)).skip(at.min(n)) { *b = 0x5a; } }
            let want = plan_of(&data, bridge);
            let mut got: Vec<Range<u64>> = Vec::new();
            let mut s = StreamCoalescer::new(bridge);
            let piece = (piece_pages * PAGE).min(MAX_PUT_PAGE) as usize;
            for (k, chunk) in data.chunks(piece).enumerate() {
                let base = (k * piece) as u64;
                let mut found = Vec::new();
                for_each_nonzero_run(chunk, base, PAGE, |st, l| found.push(st..(st + l).div_ceil(PAGE) * PAGE));
                for r in found {
                    s.add(r.start, r.end, &mut |q| got.push(q));
                }
            }
            s.flush(&mut |q| got.push(q));
            prop_assert_eq!(&got, &want.requests);
        }
    }

    #[test]
    fn coalescer_table() {
        let m = MAX_PUT_PAGE;
        let cases: &[(&str, u64, &[(u64, u64)], &[(u64, u64)])] = &[
            (
                "gap below bridge is bridged",
                4096,
                &[(0, 512), (1024, 1536)],
                &[(0, 1536)],
            ),
            (
                "gap equal to bridge splits",
                512,
                &[(0, 512), (1024, 1536)],
                &[(0, 512), (1024, 1536)],
            ),
            (
                "touching runs merge even without bridge",
                0,
                &[(0, 512), (512, 1024)],
                &[(0, 1024)],
            ),
            (
                "a long run splits at 4 MiB",
                0,
                &[(0, m + 512)],
                &[(0, m), (m, m + 512)],
            ),
            (
                "bridging never exceeds 4 MiB",
                65536,
                &[(0, m - 1024), (m - 512, m + 512)],
                &[(0, m), (m, m + 512)],
            ),
            (
                "a gap ending at the cap starts a new request",
                65536,
                &[(0, m - 512), (m, m + 512)],
                &[(0, m - 512), (m, m + 512)],
            ),
            (
                "overlap by a page (piece split a page)",
                0,
                &[(0, 1024), (512, 2048)],
                &[(0, 2048)],
            ),
        ];
        for (what, bridge, runs, want) in cases {
            let mut c = Coalescer::new(*bridge);
            for &(s, e) in *runs {
                c.add(s, e);
            }
            let got: Vec<(u64, u64)> = c
                .finish()
                .requests
                .iter()
                .map(|r| (r.start, r.end))
                .collect();
            assert_eq!(&got, want, "{what}");
        }
    }

    proptest! {
        // subtract and is_covered agree with a page-by-page model.
        #[test]
        fn range_ops_match_a_bitmap(a in prop::collection::vec((0u64..200, 1u64..20), 0..12),
                                     b in prop::collection::vec((0u64..200, 1u64..20), 0..12),
                                     q in (0u64..220, 1u64..30)) {
            let ranges = normalize(a.iter().map(|&(s, l)| s..s + l).collect());
            let covered = normalize(b.iter().map(|&(s, l)| s..s + l).collect());
            let inside = |v: &[Range<u64>], x: u64| v.iter().any(|r| r.contains(&x));
            let diff = subtract(&ranges, &covered);
            for x in 0..240 {
                prop_assert_eq!(inside(&diff, x), inside(&ranges, x) && !inside(&covered, x), "unit {}", x);
            }
            let (qs, qe) = (q.0, q.0 + q.1);
            prop_assert_eq!(is_covered(qs, qe, &covered), (qs..qe).all(|x| inside(&covered, x)));
        }
    }

    #[test]
    fn planning_a_raw_file_and_cancelling_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.raw");
        // 21 MiB: a non-zero page at 1 MiB and a 100 KiB run at 10 MiB, the rest zero.
        let mut data = vec![0u8; 21 << 20];
        data[(1 << 20) + 3] = 1;
        data[10 << 20..(10 << 20) + 102_400].fill(7);
        std::fs::write(&path, &data).unwrap();
        let image = crate::open(&path, &crate::OpenOptions::default()).unwrap();
        let az =
            FixedVhdLayout::for_image(image.as_ref(), &crate::azure::Policy::default()).unwrap();
        let plans =
            plan_requests_multi(image.as_ref(), &az, &[0, 1 << 20], &Cancel::never()).unwrap();
        // Exact: the two non-zero areas. Bridged by 1 MiB: still two (the gap is 9 MiB).
        assert_eq!(
            plans[0].requests,
            vec![(1 << 20)..(1 << 20) + 512, (10 << 20)..(10 << 20) + 102_400]
        );
        assert_eq!(plans[1].requests, plans[0].requests);
        let e = plan_requests_multi(image.as_ref(), &az, &[0], &{
            let c = Cancel::new();
            c.cancel();
            c
        })
        .unwrap_err();
        assert_eq!(e.code(), "upload.cancelled");
    }

    #[test]
    fn subtract_table() {
        let cases: &[(&str, &[Range<u64>], &[Range<u64>], &[Range<u64>])] = &[
            ("nothing covered", &[0..10], &[], &[0..10]),
            ("fully covered", &[0..10], &[0..20], &[]),
            ("hole in the middle", &[0..10], &[3..5], &[0..3, 5..10]),
            (
                "cover spans two ranges",
                &[0..10, 20..30],
                &[5..25],
                &[0..5, 25..30],
            ),
            ("adjacent covers", &[0..10], &[0..4, 4..10], &[]),
        ];
        for (what, r, c, want) in cases {
            assert_eq!(&subtract(r, c), want, "{what}");
        }
    }
}
