//! The block allocation table and the per-block sector bitmaps (VHD spec v1.0, "Block
//! Allocation Table and Data Blocks"; formats.md §1.8).
//!
//! The BAT is read in one call and checked entry by entry: every allocated block must lie
//! inside the file (up to the bytes the virtual size needs), clear of the footer copy, the
//! header and the BAT, and clear of every other block. Entries that fail are remembered as
//! invalid; reading them is an error, everything else stays readable. Bitmaps are read on
//! demand, only the bytes covering the sectors asked for, in one positional read.

use super::header::ValidHeader;
use crate::error::{Error, Result};
use crate::finding::Findings;
use crate::io::{read_vec, ReadAt};
use std::ops::Range;

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
    entries: Vec<u32>,
    /// Indexes of entries that failed validation, sorted.
    invalid: Vec<u32>,
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
/// sectors (formats.md §1.8).
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

impl Bat {
    /// Read and validate the BAT of the header `hdr` for a disk of `virtual_size` bytes.
    /// `data_end` is where the trailing footer starts (the end of usable file space) and
    /// `reserved` lists metadata ranges blocks must not overlap (footer copy, header).
    pub fn load(
        src: &dyn ReadAt,
        hdr: &ValidHeader,
        virtual_size: u64,
        data_end: u64,
        reserved: &[Range<u64>],
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
        let raw = read_vec(src, table_offset, table_bytes, MAX_BAT_BYTES)
            .map_err(|e| Error::io("cannot read the block allocation table", e).at(table_offset))?;

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

        let entries: Vec<u32> = raw
            .chunks_exact(4)
            .take(usable as usize)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let bitmap_bytes = bitmap_bytes(block_size);
        let mut invalid = Vec::new();
        let mut spans: Vec<(Range<u64>, u32)> = Vec::new();
        let mut out_of_bounds = EntryProblems::new("vhd.bat.entry_out_of_bounds");
        let mut on_metadata = EntryProblems::new("vhd.bat.entry_overlap");
        let mut metadata: Vec<Range<u64>> = reserved.to_vec();
        metadata.push(table.clone());
        for (i, &e) in entries.iter().enumerate() {
            if e == UNALLOCATED {
                continue;
            }
            let entry_at = table_offset + i as u64 * ENTRY_SIZE;
            let start = u64::from(e) * SECTOR;
            // The last block may stop where the virtual size does (formats.md §6 traps).
            let need = block_size.min(covered_size - i as u64 * block_size);
            let end = start + bitmap_bytes + need;
            if end > data_end {
                out_of_bounds.record(findings, entry_at, || {
                    format!("BAT entry {i} puts block {i} at {start:#x}..{end:#x}, past the end of the usable file ({data_end:#x})")
                });
                invalid.push(i as u32);
                continue;
            }
            let span = start..end;
            if let Some(m) = metadata.iter().find(|m| overlaps(&span, m)) {
                on_metadata.record(findings, entry_at, || {
                    format!("BAT entry {i} puts block {i} at {start:#x}..{end:#x}, on top of metadata at {:#x}..{:#x}", m.start, m.end)
                });
                invalid.push(i as u32);
                continue;
            }
            spans.push((span, i as u32));
        }
        // Two entries sharing (or overlapping) storage would make writes to one block show
        // up in another: every such pair is invalid.
        spans.sort_unstable_by_key(|(r, _)| r.start);
        let mut shared = EntryProblems::new("vhd.bat.entry_shared");
        let mut furthest: Option<(u64, u32)> = None;
        for (span, i) in &spans {
            if let Some((end, j)) = furthest {
                if span.start < end {
                    shared.record(findings, table_offset + u64::from(*i) * ENTRY_SIZE, || {
                        format!("BAT entries {j} and {i} point at overlapping storage (block {i} starts at {:#x}, block {j} ends at {end:#x})", span.start)
                    });
                    invalid.push(*i);
                    invalid.push(j);
                }
            }
            if furthest.is_none_or(|(end, _)| span.end > end) {
                furthest = Some((span.end, *i));
            }
        }
        out_of_bounds.summarize(findings);
        on_metadata.summarize(findings);
        shared.summarize(findings);
        invalid.sort_unstable();
        invalid.dedup();
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
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no block is described.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Where block `index` lives.
    pub fn location(&self, index: u64) -> BlockLocation {
        let Some(&e) = usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get(i))
        else {
            return BlockLocation::Unallocated;
        };
        if e == UNALLOCATED {
            BlockLocation::Unallocated
        } else if u32::try_from(index).is_ok_and(|i| self.invalid.binary_search(&i).is_ok()) {
            BlockLocation::Invalid
        } else {
            BlockLocation::At {
                bitmap_offset: u64::from(e) * SECTOR,
            }
        }
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
            // 2 MiB: 4096 sectors, 512 bitmap bytes (formats.md §1.8).
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
