//! The block allocation table and the per-block sector bitmaps (VHD spec v1.0, "Block
//! Allocation Table and Data Blocks"; docs/formats.md §1.8).
//!
//! The BAT is held within the chain's memory budget (read whole in one call, or paged; see
//! [`crate::format::table`]) and checked entry by entry in one streaming pass: every
//! allocated block must lie inside the file (up to the bytes the virtual size needs), clear
//! of the footer copy, the header and the BAT, and clear of every other block (a bounded
//! sweep, [`crate::format::overlap`]). Entries that fail are remembered as invalid; reading
//! them is an error, everything else stays readable. Bitmaps are read on demand, only the
//! bytes covering the sectors asked for, in one positional read.

use super::header::ValidHeader;
use crate::error::{Error, Result};
use crate::finding::Findings;
use crate::format::overlap::{find_overlaps, Overlap, Spans, SWEEP_CAP};
use crate::format::table::{EntryTable, EntryWidth, InvalidSet, TableBudget};
use crate::io::{read_vec, ReadAt};
use std::ops::Range;
use std::sync::Arc;

/// BAT entry of a block that is not allocated.
pub const UNALLOCATED: u32 = 0xFFFF_FFFF;
/// Bytes per BAT entry.
pub const ENTRY_SIZE: u64 = 4;
/// The largest BAT read (16 Mi entries); real tables are far smaller (2040 GiB of 2 MiB
/// blocks needs 1,044,480 entries, about 4 MiB).
pub const MAX_BAT_BYTES: u64 = 64 << 20;
/// Sector size of VHD.
pub const SECTOR: u64 = 512;
/// At most this many findings per kind of bad entry; a summary counts the rest.
const MAX_ENTRY_FINDINGS: usize = 8;

/// Where one block is, as the validated BAT says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockLocation {
    /// Not allocated in this file.
    Unallocated,
    /// Allocated: the sector bitmap starts at `bitmap_offset`, the data right after it.
    At {
        /// Absolute byte offset of the block's sector bitmap.
        bitmap_offset: u64,
    },
    /// The entry failed validation (its finding says why); reading it is an error.
    Invalid,
}

/// The validated BAT.
#[derive(Debug)]
pub struct Bat {
    /// Entries for the blocks covering the usable virtual size.
    entries: EntryTable,
    /// Entries that failed validation.
    invalid: InvalidSet,
    /// Data bytes per block.
    pub block_size: u64,
    /// Bytes of sector bitmap before each block's data (a multiple of 512).
    pub bitmap_bytes: u64,
    /// Virtual bytes the table can describe (≤ the footer's current size).
    pub covered_size: u64,
    /// Absolute byte offset of the BAT.
    pub table_offset: u64,
}

/// Bitmap bytes of a block of `block_size` bytes: one bit per sector, rounded up to whole
/// sectors (docs/formats.md §1.8).
pub fn bitmap_bytes(block_size: u64) -> u64 {
    (block_size / SECTOR).div_ceil(8).div_ceil(SECTOR) * SECTOR
}

/// Counts bad entries of one kind, recording the first few in detail.
struct EntryProblems {
    code: &'static str,
    count: usize,
}

impl EntryProblems {
    fn new(code: &'static str) -> Self {
        EntryProblems { code, count: 0 }
    }
    fn record(&mut self, findings: &mut Findings, offset: u64, message: impl FnOnce() -> String) {
        self.count += 1;
        if self.count <= MAX_ENTRY_FINDINGS {
            findings.error(self.code, Some(offset), message());
        }
    }
    fn summarize(&self, findings: &mut Findings) {
        if self.count > MAX_ENTRY_FINDINGS {
            findings.error(
                self.code,
                None,
                format!(
                    "{} BAT entries in all have this problem (first {MAX_ENTRY_FINDINGS} listed)",
                    self.count
                ),
            );
        }
    }
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// What the entry checks need to know about the file.
struct Layout<'a> {
    block_size: u64,
    bitmap_bytes: u64,
    covered_size: u64,
    data_end: u64,
    /// Footer copy, header, BAT: no block may overlap them.
    metadata: &'a [Range<u64>],
}

/// Why one entry is invalid on its own (before comparing it with the others).
enum EntryProblem {
    OutOfBounds,
    OnMetadata(Range<u64>),
}

impl Layout<'_> {
    /// The file span of block `i` whose entry is `e` (allocated), or why it is invalid.
    fn span(&self, i: u64, e: u64) -> std::result::Result<Range<u64>, EntryProblem> {
        let start = e * SECTOR;
        // The last block may stop where the virtual size does (docs/formats.md §6 traps).
        let need = self
            .block_size
            .min(self.covered_size.saturating_sub(i * self.block_size));
        let end = start + self.bitmap_bytes + need;
        if end > self.data_end {
            return Err(EntryProblem::OutOfBounds);
        }
        let span = start..end;
        match self.metadata.iter().find(|m| overlaps(&span, m)) {
            Some(m) => Err(EntryProblem::OnMetadata(m.clone())),
            None => Ok(span),
        }
    }
}

/// The blocks that passed the checks on their own, for the shared-storage sweep.
struct StoredBlocks<'a> {
    entries: &'a EntryTable,
    layout: &'a Layout<'a>,
}

impl Spans for StoredBlocks<'_> {
    fn scan(&self, emit: &mut dyn FnMut(u64, u64)) -> Result<()> {
        self.entries
            .scan(|i, e| {
                if e != u64::from(UNALLOCATED) {
                    if let Ok(span) = self.layout.span(i, e) {
                        emit(span.start, i);
                    }
                }
            })
            .map_err(|e| Error::io("cannot read the block allocation table", e))
    }
    fn end(&self, start: u64, index: u64) -> u64 {
        let need = self.layout.block_size.min(
            self.layout
                .covered_size
                .saturating_sub(index * self.layout.block_size),
        );
        start + self.layout.bitmap_bytes + need
    }
}

impl Bat {
    /// Read and validate the BAT of the header `hdr` for a disk of `virtual_size` bytes.
    /// `data_end` is where the trailing footer starts (the end of usable file space) and
    /// `reserved` lists metadata ranges blocks must not overlap (footer copy, header).
    /// The table is held whole if it fits `budget`, paged otherwise.
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_lines)] // the BAT checks in spec order, each naming its entry
    pub fn load(
        src: &Arc<dyn ReadAt>,
        hdr: &ValidHeader,
        virtual_size: u64,
        data_end: u64,
        reserved: &[Range<u64>],
        budget: &mut TableBudget,
        findings: &mut Findings,
    ) -> Result<Bat> {
        let max_entries = u64::from(hdr.header.max_table_entries.get());
        let table_offset = hdr.header.table_offset.get();
        let table_bytes = max_entries * ENTRY_SIZE;
        let block_size = hdr.block_size;
        if table_bytes > MAX_BAT_BYTES {
            return Err(Error::corrupt(
                "vhd.bat.too_large",
                hdr.offset + 28,
                format!("the BAT has {max_entries} entries ({table_bytes} bytes); vhdforge reads BATs up to {MAX_BAT_BYTES} bytes"),
            ));
        }
        let table = table_offset..table_offset.saturating_add(table_bytes);
        if table_offset
            .checked_add(table_bytes)
            .is_none_or(|e| e > data_end)
        {
            return Err(Error::corrupt(
                "vhd.bat.out_of_bounds",
                hdr.offset + 16,
                format!(
                    "the BAT ({table_bytes} bytes at {table_offset:#x}) runs past the end of the usable file ({data_end:#x})"
                ),
            ));
        }
        for r in reserved {
            if overlaps(&table, r) {
                findings.error(
                    "vhd.bat.overlap",
                    Some(table_offset),
                    format!(
                        "the BAT at {:#x}..{:#x} overlaps metadata at {:#x}..{:#x}",
                        table.start, table.end, r.start, r.end
                    ),
                );
            }
        }

        let needed = virtual_size.div_ceil(block_size);
        let usable = needed.min(max_entries);
        let covered_size = if needed > max_entries {
            let covered = max_entries * block_size;
            findings.error(
                "vhd.bat.too_small",
                Some(hdr.offset + 28),
                format!(
                    "the current size {virtual_size} needs {needed} BAT entries of {block_size}-byte blocks, but the table has {max_entries}; only the first {covered} bytes are readable"
                ),
            );
            covered
        } else {
            virtual_size
        };
        // Only the entries in use are held: the rest of the table is never read.
        let entries = EntryTable::open(src.clone(), table_offset, usable, EntryWidth::Be32, budget)
            .map_err(|e| Error::io("cannot read the block allocation table", e).at(table_offset))?;
        let bitmap_bytes = bitmap_bytes(block_size);
        let mut metadata: Vec<Range<u64>> = reserved.to_vec();
        metadata.push(table.clone());
        let layout = Layout {
            block_size,
            bitmap_bytes,
            covered_size,
            data_end,
            metadata: &metadata,
        };
        let mut invalid = InvalidSet::default();
        let mut out_of_bounds = EntryProblems::new("vhd.bat.entry_out_of_bounds");
        let mut on_metadata = EntryProblems::new("vhd.bat.entry_overlap");
        entries
            .scan(|i, e| {
                if e == u64::from(UNALLOCATED) {
                    return;
                }
                let entry_at = table_offset + i * ENTRY_SIZE;
                let start = e * SECTOR;
                match layout.span(i, e) {
                    Ok(_) => {}
                    Err(EntryProblem::OutOfBounds) => {
                        out_of_bounds.record(findings, entry_at, || {
                            format!("BAT entry {i} puts block {i} at {start:#x}, past the end of the usable file ({data_end:#x})")
                        });
                        invalid.insert(i);
                    }
                    Err(EntryProblem::OnMetadata(m)) => {
                        on_metadata.record(findings, entry_at, || {
                            format!("BAT entry {i} puts block {i} at {start:#x}, on top of metadata at {:#x}..{:#x}", m.start, m.end)
                        });
                        invalid.insert(i);
                    }
                }
            })
            .map_err(|e| Error::io("cannot read the block allocation table", e).at(table_offset))?;
        // Two entries sharing (or overlapping) storage would make writes to one block show
        // up in another: every such pair is invalid.
        let mut shared = EntryProblems::new("vhd.bat.entry_shared");
        let stored = StoredBlocks {
            entries: &entries,
            layout: &layout,
        };
        find_overlaps(&stored, SWEEP_CAP, &mut |o: Overlap| {
            let (i, j) = (o.later, o.earlier);
            shared.record(findings, table_offset + i * ENTRY_SIZE, || {
                format!("BAT entries {j} and {i} point at overlapping storage (block {i} starts at {:#x}, block {j} ends at {:#x})", o.later_start, o.earlier_end)
            });
            invalid.insert(i);
            invalid.insert(j);
        })
        .map_err(|e| e.at(table_offset))?;
        out_of_bounds.summarize(findings);
        on_metadata.summarize(findings);
        shared.summarize(findings);
        invalid.seal();
        if invalid.is_saturated() {
            findings.error(
                "vhd.bat.entry_invalid",
                Some(table_offset),
                "so many BAT entries are invalid that every allocated block of this disk is treated as unreadable",
            );
        }
        Ok(Bat {
            entries,
            invalid,
            block_size,
            bitmap_bytes,
            covered_size,
            table_offset,
        })
    }

    /// Number of entries in use.
    pub fn len(&self) -> u64 {
        self.entries.len()
    }

    /// True when no block is described.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Where block `index` lives (reading its BAT page when the table is paged).
    pub fn location(&self, index: u64) -> std::io::Result<BlockLocation> {
        if index >= self.entries.len() {
            return Ok(BlockLocation::Unallocated);
        }
        let e = self.entries.get(index)?;
        Ok(if e == u64::from(UNALLOCATED) {
            BlockLocation::Unallocated
        } else if self.invalid.contains(index) {
            BlockLocation::Invalid
        } else {
            BlockLocation::At {
                bitmap_offset: e * SECTOR,
            }
        })
    }

    /// Read the bitmap bits of sectors `[first, end)` of the block whose bitmap starts at
    /// `bitmap_offset`, in one read. Returns the bytes and the sector number of bit 7 of
    /// the first byte.
    pub fn read_bitmap(
        &self,
        src: &dyn ReadAt,
        bitmap_offset: u64,
        first: u64,
        end: u64,
    ) -> std::io::Result<SectorBitmap> {
        let first_byte = first / 8;
        let end_byte = end.div_ceil(8);
        let len = end_byte - first_byte;
        let bytes = read_vec(src, bitmap_offset + first_byte, len, self.bitmap_bytes)?;
        Ok(SectorBitmap {
            bytes,
            base_sector: first_byte * 8,
        })
    }
}

/// A slice of a block's sector bitmap (MSB-first: sector i ↔ byte i/8, bit 7 − i%8).
#[derive(Debug)]
pub struct SectorBitmap {
    bytes: Vec<u8>,
    base_sector: u64,
}

impl SectorBitmap {
    /// A bitmap over `bytes` whose first bit is sector `base_sector` of the block.
    pub fn new(bytes: Vec<u8>, base_sector: u64) -> Self {
        SectorBitmap { bytes, base_sector }
    }

    /// Whether sector `s` (block-relative) is present in this file.
    pub fn bit(&self, s: u64) -> bool {
        let rel = s - self.base_sector;
        self.bytes[(rel / 8) as usize] & (0x80 >> (rel % 8)) != 0
    }

    /// Split block sectors `[first, end)` into maximal runs of equal bits, calling
    /// `f(run_first, run_end, present)`. Whole 0x00/0xFF bytes are skipped at once so a
    /// fully present block is one run after a few comparisons per 4 KiB.
    pub fn runs(
        &self,
        first: u64,
        end: u64,
        mut f: impl FnMut(u64, u64, bool) -> Result<()>,
    ) -> Result<()> {
        let mut s = first;
        while s < end {
            let present = self.bit(s);
            let mut t = s + 1;
            while t < end {
                let rel = t - self.base_sector;
                let byte = self.bytes[(rel / 8) as usize];
                if rel % 8 == 0 && t + 8 <= end && byte == if present { 0xFF } else { 0 } {
                    t += 8;
                } else if self.bit(t) == present {
                    t += 1;
                } else {
                    break;
                }
            }
            f(s, t, present)?;
            s = t;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_size_rounds_to_sectors() {
        let cases = [
            // 2 MiB: 4096 sectors, 512 bitmap bytes (docs/formats.md §1.8).
            (2u64 << 20, 512u64),
            // 4 KiB: 8 sectors need 1 byte, padded to a sector.
            (4096, 512),
            // 512 B: one sector still needs a whole bitmap sector.
            (512, 512),
            // 4 MiB: 8192 sectors, 1024 bytes.
            (4 << 20, 1024),
        ];
        for (block, want) in cases {
            assert_eq!(bitmap_bytes(block), want, "block {block}");
        }
    }

    #[test]
    fn runs_are_msb_first_and_maximal() {
        // Byte 0x7F: sector 0 absent, 1..8 present; then 0xFF, then 0x0F: 16..20 absent.
        let bm = SectorBitmap::new(vec![0x7F, 0xFF, 0x0F], 0);
        let mut got = Vec::new();
        bm.runs(0, 24, |a, b, p| {
            got.push((a, b, p));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            got,
            vec![
                (0, 1, false),
                (1, 16, true),
                (16, 20, false),
                (20, 24, true)
            ]
        );
        // A sub-range starting mid-byte, with a base sector offset.
        let bm = SectorBitmap::new(vec![0xF0, 0x00], 8);
        let mut got = Vec::new();
        bm.runs(10, 15, |a, b, p| {
            got.push((a, b, p));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![(10, 12, true), (12, 15, false)]);
    }
}
