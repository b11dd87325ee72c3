//! The clone pass of `convert`: on a file system that shares blocks between files (XFS with
//! reflink, btrfs; `ReFS` on Windows), the source's data blocks are shared into the output
//! instead of read and written, so the conversion costs metadata work per extent.
//!
//! What is cloned: each stored extent's part whose virtual offset (the output's offset:
//! the disk starts at 0) and file offset are both aligned to the file system block, taken
//! in whole [`UNIT`]s of the virtual space. VHDX payload blocks (1 MiB-aligned in the file)
//! and raw or fixed VHD data qualify; the dynamic VHD's blocks, which start one sector
//! bitmap (512 bytes) past an aligned offset, do not, and are copied. An image whose reads
//! come partly from memory (a VHDX log replayed in memory) is never cloned: the file's
//! bytes are not the disk's.
//!
//! Zero pages inside a cloned range are cloned too: they share the source's blocks (no new
//! space), and upload skips them by content anyway.
//!
//! The source of each clone is the handle the layer was opened and validated with
//! ([`layer_file`]), never the path opened again: a file renamed over the input after it was
//! opened must not lend its blocks to the output (the copy path reads the same handle).

use crate::error::{Error, ErrorKind, Result};
use crate::image::{layer_file, walk_map, Allocation, DiskImage};
use crate::platform::clone::{clone_alignment, clone_range, lasting_refusal, Refusal};
use crate::progress::Progress;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::ops::Range;

/// Virtual granule of cloning. Whole units only, so that an extent cut at any multiple of
/// it gives the same clones, and tiny clones (a ioctl per few KiB) are copied instead.
pub const UNIT: u64 = 1 << 20;
/// Largest single clone request: bounds how long a Ctrl-C waits.
const MAX_CLONE: u64 = 256 << 20;
/// Finding code of a VHDX whose log was replayed in memory (its file is not the disk).
const LOG_REPLAYED: &str = "vhdx.log.replayed";

/// The part of a stored extent `[start, end)` (virtual) at `file_offset` that can be cloned
/// with alignment `align`: whole `unit`s of the virtual space (`unit` a multiple of
/// `align`), and only when virtual and file offsets agree modulo `align`, so the source
/// offset is aligned too. `None` when nothing qualifies.
pub fn clone_part(
    start: u64,
    end: u64,
    file_offset: u64,
    align: u64,
    unit: u64,
) -> Option<Range<u64>> {
    if align == 0 || unit == 0 || unit % align != 0 || start % align != file_offset % align {
        return None;
    }
    let a = start.checked_next_multiple_of(unit)?;
    let b = end - end % unit;
    (a < b).then_some(a..b)
}

/// What the clone pass did.
#[derive(Debug, Default)]
pub struct CloneOutcome {
    /// Bytes shared into the output.
    pub cloned: u64,
    /// The stored ranges still to copy, sorted, disjoint.
    pub leftover: Vec<Range<u64>>,
}

/// Why a convert copies (the rest of) the disk rather than cloning it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copying {
    /// The file system refused cloning for every range ([`Cloner::exhausted`]), or the
    /// output's file system cannot clone at all.
    Refused(Refusal),
    /// The user asked for a copy (`--no-clone`).
    Asked,
    /// The image is read through a VHDX log replayed in memory: the file is not the disk.
    ReplayedLog,
}

/// Clones data from the files of an image's chain into one output file.
pub struct Cloner {
    align: u64,
    unit: u64,
    /// Files in the chain.
    layers: usize,
    /// Layers refused for every range ([`lasting_refusal`]): never tried again.
    lasting: BTreeMap<u32, Refusal>,
}

impl Cloner {
    /// A cloner for `image` into `dst`, or why nothing can be cloned (logged too): no clone
    /// support on this platform or file system, or a log overlay.
    pub fn new(image: &dyn DiskImage, dst: &File) -> std::result::Result<Cloner, Copying> {
        let Some(align) = clone_alignment(dst) else {
            tracing::debug!("not cloning: the output's file system reports no block size");
            return Err(Copying::Refused(Refusal::Unsupported));
        };
        let (mut cur, mut layers) = (Some(image), 0);
        while let Some(i) = cur {
            layers += 1;
            if i.findings().iter().any(|f| f.code == LOG_REPLAYED) {
                tracing::debug!(
                    "not cloning: {} is read through a log replayed in memory",
                    i.info().path.display()
                );
                return Err(Copying::ReplayedLog);
            }
            cur = i.parent();
        }
        Ok(Cloner {
            align,
            unit: UNIT.max(align),
            layers,
            lasting: BTreeMap::new(),
        })
    }

    /// Why nothing more can be cloned, once that is known: the output's file system
    /// refused cloning as such, or every layer of the chain lies on another file system.
    /// From then on the rest of the disk is a plain copy. `None` while some layer may
    /// still clone (or was never tried: it had no data yet).
    pub fn exhausted(&self) -> Option<Refusal> {
        if self.lasting.values().any(|r| *r == Refusal::Unsupported) {
            Some(Refusal::Unsupported)
        } else if self.lasting.len() >= self.layers {
            Some(Refusal::OtherFileSystem)
        } else {
            None
        }
    }

    /// Whether some layer was refused for good because it lies on another file system:
    /// only then can writing the output beside the input let more of it be shared. (A
    /// layer beside the output whose blocks are not aligned for cloning, a dynamic VHD's,
    /// is copied whatever the place.)
    pub fn elsewhere(&self) -> bool {
        self.lasting
            .values()
            .any(|r| *r == Refusal::OtherFileSystem)
    }

    /// Clone what can be cloned of the stored ranges of `range` into `dst` (at the same
    /// virtual offset); return the cloned byte count and the stored ranges left to copy.
    /// A layer whose file the file system refuses to clone from is copied from then on: for
    /// the rest of `range`, or for good when the refusal holds for every range (another
    /// file system, say; see [`Cloner::exhausted`]). The other layers are still cloned.
    /// Progress advances by the cloned bytes.
    pub fn run(
        &mut self,
        image: &dyn DiskImage,
        dst: &File,
        range: Range<u64>,
        progress: &dyn Progress,
    ) -> Result<CloneOutcome> {
        let mut out = CloneOutcome::default();
        // Layers refused for one range: not tried again in this `range`.
        let mut refused = BTreeSet::new();
        walk_map(image, range, |extents| {
            for e in extents {
                let Allocation::Data { layer, file_offset } = e.allocation else {
                    continue;
                };
                if progress.is_cancelled() {
                    return Err(Error::new(
                        ErrorKind::Interrupted,
                        "interrupted",
                        "conversion interrupted; no output was written",
                    ));
                }
                let src = if refused.contains(&layer)
                    || self.lasting.contains_key(&layer)
                    || self.exhausted().is_some()
                {
                    None
                } else {
                    layer_file(image, layer)
                };
                let part = clone_part(e.start, e.end(), file_offset, self.align, self.unit);
                let (Some(src), Some(part)) = (src, part) else {
                    push_range(&mut out.leftover, e.start..e.end());
                    continue;
                };
                push_range(&mut out.leftover, e.start..part.start);
                let mut at = part.start;
                while at < part.end {
                    let n = MAX_CLONE.min(part.end - at);
                    let src_at = file_offset + (at - e.start);
                    match clone_range(src, src_at, dst, at, n) {
                        Ok(()) => {
                            out.cloned += n;
                            progress.advance(n);
                            at += n;
                        }
                        Err(err) => {
                            tracing::debug!(
                                "cloning from layer {layer} refused at {at:#x} ({err}); \
                                 copying the rest of that layer instead"
                            );
                            match lasting_refusal(&err) {
                                Some(why) => {
                                    self.lasting.insert(layer, why);
                                }
                                None => {
                                    refused.insert(layer);
                                }
                            }
                            break;
                        }
                    }
                }
                push_range(&mut out.leftover, at..e.end());
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// Append `r` to sorted `v`, merging it with the last range when they touch.
fn push_range(v: &mut Vec<Range<u64>>, r: Range<u64>) {
    if r.is_empty() {
        return;
    }
    match v.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => v.push(r),
    }
}

/// Cut sorted ranges into pieces of at most `max` bytes, split at multiples of `max`.
pub fn split_pieces(ranges: &[Range<u64>], max: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    for r in ranges {
        let mut s = r.start;
        while s < r.end {
            let e = ((s / max + 1) * max).min(r.end);
            out.push(s..e);
            s = e;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_part_table() {
        const K4: u64 = 4096;
        const K64: u64 = 64 << 10;
        const M: u64 = 1 << 20;
        // (what, start, end, file_offset, align, unit, expected)
        type Case = (&'static str, u64, u64, u64, u64, u64, Option<Range<u64>>);
        let cases: &[Case] = &[
            (
                "VHDX block: 1 MiB aligned both sides",
                0,
                32 * M,
                4 * M,
                K4,
                M,
                Some(0..32 * M),
            ),
            (
                "ReFS 64 KiB clusters",
                2 * M,
                5 * M,
                7 * M,
                K64,
                M,
                Some(2 * M..5 * M),
            ),
            // Virtual and file offsets disagree modulo the block: never aligned on both.
            (
                "dynamic VHD: data one bitmap sector in",
                0,
                2 * M,
                1536,
                K4,
                M,
                None,
            ),
            (
                "ReFS 64 KiB, 4 KiB-only agreement",
                0,
                2 * M,
                K4,
                K64,
                M,
                None,
            ),
            // Head and tail outside whole units are left to copy.
            (
                "unaligned ends trimmed to units",
                M / 2,
                3 * M + 5,
                M / 2 + 8 * K4,
                K4,
                M,
                Some(M..3 * M),
            ),
            ("shorter than a unit", M + K4, 2 * M - K4, K4, K4, M, None),
            (
                "exactly one unit",
                3 * M,
                4 * M,
                9 * M,
                K4,
                M,
                Some(3 * M..4 * M),
            ),
            ("unit not a multiple of align", 0, 4 * M, 0, 3 * K4, M, None),
            ("zero alignment", 0, 4 * M, 0, 0, M, None),
            (
                "near u64::MAX does not overflow",
                u64::MAX - M,
                u64::MAX,
                0,
                K4,
                M,
                None,
            ),
        ];
        for (what, s, e, f, a, u, want) in cases {
            assert_eq!(clone_part(*s, *e, *f, *a, *u), *want, "{what}");
        }
    }

    #[test]
    fn pieces_split_at_aligned_points() {
        let p = split_pieces(&[1..10, 12..13, 20..21], 4);
        assert_eq!(p, vec![1..4, 4..8, 8..10, 12..13, 20..21]);
        let mut v = Vec::new();
        push_range(&mut v, 0..4);
        push_range(&mut v, 4..6);
        push_range(&mut v, 6..6);
        push_range(&mut v, 8..9);
        assert_eq!(v, vec![0..6, 8..9]);
    }
}
