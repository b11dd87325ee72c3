//! The block allocation table ([MS-VHDX] §2.5; docs/formats.md §2.8).
//!
//! One little-endian u64 per payload block and per sector-bitmap block, interleaved: after
//! every `chunk_ratio` payload entries comes the bitmap entry of that chunk. The table is
//! held within the chain's memory budget (read whole in one call, so reads only index
//! memory, or paged for tables up to 512 MiB; see [`crate::format::table`]) and validated
//! once at open in a streaming pass plus a bounded shared-storage sweep
//! ([`crate::format::overlap`]).

use super::MIB;
use crate::error::{Error, Result};
use crate::finding::Findings;
use crate::format::overlap::{find_overlaps, Overlap, Spans, SWEEP_CAP};
use crate::format::table::{EntryTable, EntryWidth, InvalidSet, TableBudget};
use crate::io::ReadAt;
use std::sync::Arc;

/// Payload state: not stored here (zeros, or the parent's data in a differencing disk).
pub const PAYLOAD_NOT_PRESENT: u64 = 0;
/// Payload state: content undefined; reads as zeros and the offset must not be read.
pub const PAYLOAD_UNDEFINED: u64 = 1;
/// Payload state: reads as zeros.
pub const PAYLOAD_ZERO: u64 = 2;
/// Payload state: trimmed; reads as zeros.
pub const PAYLOAD_UNMAPPED: u64 = 3;
/// Payload state 5: UNMAPPED in draft spec 0.95; qemu accepts it, so vhdforge does too.
pub const PAYLOAD_UNMAPPED_DRAFT: u64 = 5;
/// Payload state: the whole block is stored at the entry's offset.
pub const PAYLOAD_FULLY_PRESENT: u64 = 6;
/// Payload state: differencing only; the sector bitmap says which sectors are stored here.
pub const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;
/// Sector bitmap state: the bitmap block is stored at the entry's offset.
pub const SB_BLOCK_PRESENT: u64 = 6;
/// Bits 0–2 of an entry: the state.
pub const STATE_MASK: u64 = 0x7;
/// Bits 3–19: reserved, zero.
pub const RESERVED_MASK: u64 = 0xF_FFF8;
/// Bits 20–63: the file offset in MiB, i.e. the byte offset with the low 20 bits cleared.
pub const OFFSET_MASK: u64 = !0xF_FFFF;
/// Per-entry findings recorded before summarising the rest.
const MAX_ENTRY_FINDINGS: usize = 16;

/// How payload blocks map onto BAT entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Block size in bytes.
    pub block_size: u64,
    /// Logical sector size in bytes.
    pub sector_size: u64,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Payload blocks per sector-bitmap block.
    pub chunk_ratio: u64,
    /// Payload blocks covering the virtual size.
    pub payload_blocks: u64,
    /// BAT entries the table must hold.
    pub entry_count: u64,
}

impl Geometry {
    /// Derive the geometry from validated metadata values.
    pub fn new(block_size: u32, sector_size: u32, virtual_size: u64, has_parent: bool) -> Geometry {
        let (bs, ss) = (u64::from(block_size), u64::from(sector_size));
        // 2^23 sectors per bitmap block; block ≤ 256 MiB and sector ≥ 512 keep this ≥ 16.
        let chunk_ratio = ((1u64 << 23) * ss / bs).max(1);
        let payload_blocks = virtual_size.div_ceil(bs).max(1);
        let last_chunk = (payload_blocks - 1) / chunk_ratio;
        let entry_count = if has_parent {
            (last_chunk + 1) * (chunk_ratio + 1)
        } else {
            payload_blocks + (payload_blocks - 1) / chunk_ratio
        };
        Geometry {
            block_size: bs,
            sector_size: ss,
            virtual_size,
            chunk_ratio,
            payload_blocks,
            entry_count,
        }
    }

    /// BAT index of payload block `i`.
    pub fn payload_index(&self, i: u64) -> u64 {
        i + i / self.chunk_ratio
    }

    /// BAT index of the sector-bitmap entry of the chunk holding payload block `i`.
    pub fn bitmap_index(&self, i: u64) -> u64 {
        (i / self.chunk_ratio) * (self.chunk_ratio + 1) + self.chunk_ratio
    }

    /// Bytes of block `i` inside the virtual disk (the last block may be partial).
    pub fn block_len(&self, i: u64) -> u64 {
        self.block_size
            .min(self.virtual_size.saturating_sub(i * self.block_size))
    }

    /// Bytes of sector bitmap per payload block.
    pub fn bitmap_bytes_per_block(&self) -> u64 {
        self.block_size / self.sector_size / 8
    }
}

/// What one payload block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Not in this file: zeros, or the parent's bytes.
    NotPresent,
    /// Reads as zeros whatever the file holds.
    Zero,
    /// Stored whole at this file offset.
    Present(u64),
    /// Differencing: stored per sector; the block's bitmap bytes start at this file offset
    /// and the data at `data`.
    Partial {
        /// File offset of the block's first bitmap byte.
        bitmap: u64,
        /// File offset of the block's data.
        data: u64,
    },
    /// The entry was invalid at open (see findings); reading it is an error.
    Invalid,
}

/// The validated BAT.
#[derive(Debug)]
pub struct Bat {
    /// Raw entries.
    entries: EntryTable,
    /// Payload blocks whose entry failed validation.
    invalid: InvalidSet,
    /// Block layout.
    pub geometry: Geometry,
    /// Offset of the BAT, for messages.
    pub offset: u64,
}

/// Stored payload blocks that passed the checks on their own, for the overlap sweep.
struct StoredBlocks<'a> {
    bat: &'a Bat,
}

impl Spans for StoredBlocks<'_> {
    fn scan(&self, emit: &mut dyn FnMut(u64, u64)) -> Result<()> {
        let g = self.bat.geometry;
        self.bat
            .entries
            .scan(|idx, e| {
                if let Some(i) = g.payload_block_of(idx) {
                    if matches!(
                        e & STATE_MASK,
                        PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT
                    ) && !self.bat.invalid.contains(i)
                    {
                        emit(e & OFFSET_MASK, i);
                    }
                }
            })
            .map_err(|e| bat_read_error(self.bat.offset, &e))
    }
    fn end(&self, start: u64, index: u64) -> u64 {
        start + self.bat.geometry.block_len(index)
    }
}

fn bat_read_error(offset: u64, e: &std::io::Error) -> Error {
    Error::corrupt(
        "vhdx.bat.bounds",
        offset,
        format!("cannot read the BAT: {e}"),
    )
}

impl Geometry {
    /// The payload block whose entry is BAT index `idx`, or `None` for a sector-bitmap
    /// entry or an entry past the last payload block.
    pub fn payload_block_of(&self, idx: u64) -> Option<u64> {
        let per_chunk = self.chunk_ratio + 1;
        if idx % per_chunk == self.chunk_ratio {
            return None;
        }
        let i = idx - idx / per_chunk;
        (i < self.payload_blocks).then_some(i)
    }
}

impl Bat {
    /// Open the BAT region `(offset, length)` of `src` (whole if it fits `budget`, paged
    /// otherwise) and validate every entry. `file_len` is the (replayed) file length;
    /// `forbidden` are the spans payload may not overlap (header section, log, BAT,
    /// metadata), as `(name, offset, length)`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        src: &Arc<dyn ReadAt>,
        region: (u64, u64),
        geometry: Geometry,
        has_parent: bool,
        file_len: u64,
        forbidden: &[(&str, u64, u64)],
        budget: &mut TableBudget,
        findings: &mut Findings,
    ) -> Result<Bat> {
        let (offset, region_len) = region;
        let need = geometry.entry_count * 8;
        if need > region_len {
            return Err(Error::corrupt(
                "vhdx.bat.size",
                offset,
                format!(
                    "the BAT region is {region_len:#x} bytes but the disk needs {} entries ({need:#x} bytes)",
                    geometry.entry_count
                ),
            ));
        }
        let entries = EntryTable::open(
            src.clone(),
            offset,
            geometry.entry_count,
            EntryWidth::Le64,
            budget,
        )
        .map_err(|e| bat_read_error(offset, &e))?;
        let mut bat = Bat {
            entries,
            invalid: InvalidSet::default(),
            geometry,
            offset,
        };
        bat.validate(has_parent, file_len, forbidden, findings)?;
        Ok(bat)
    }

    #[allow(clippy::too_many_lines)] // every BAT entry check in one pass over the table
    fn validate(
        &mut self,
        has_parent: bool,
        file_len: u64,
        forbidden: &[(&str, u64, u64)],
        findings: &mut Findings,
    ) -> Result<()> {
        let g = self.geometry;
        let mut bad = 0usize;
        let mut draft_unmapped = 0u64;
        let mut reserved_bits = 0u64;
        let bat_offset = self.offset;
        // The furthest end of a stored span past the end of the file, and how many blocks.
        let truncated_to = std::cell::Cell::new(0u64);
        let mut truncated_blocks = 0u64;
        let mut report = |findings: &mut Findings, idx: u64, msg: String, code: &'static str| {
            bad += 1;
            if bad <= MAX_ENTRY_FINDINGS {
                findings.error(code, Some(bat_offset + idx * 8), msg);
            }
        };
        // Checks a stored span (payload data or a bitmap block) against the file and structures.
        let check_span =
            |what: &dyn Fn() -> String, off: u64, len: u64| -> Option<(&'static str, String)> {
                if off < MIB {
                    return Some((
                        "vhdx.bat.offset",
                        format!("{} at {off:#x} lies inside the header section", what()),
                    ));
                }
                match off.checked_add(len) {
                    Some(end) if end <= file_len => {}
                    // Past the end: the usual cause is a copy cut short, so these are
                    // summed up in one `vhdx.truncated` finding rather than one per block.
                    Some(end) => {
                        truncated_to.set(truncated_to.get().max(end));
                        return Some(("vhdx.truncated", String::new()));
                    }
                    None => {
                        return Some((
                            "vhdx.bat.offset",
                            format!(
                                "{} at {off:#x} needs {len:#x} bytes, beyond any file size",
                                what()
                            ),
                        ))
                    }
                }
                forbidden
                    .iter()
                    .find(|(_, o, l)| *l > 0 && off < o.saturating_add(*l) && *o < off + len)
                    .map(|(name, o, l)| {
                        (
                            "vhdx.bat.overlap",
                            format!(
                                "{} at {off:#x}+{len:#x} overlaps {name} at {o:#x}+{l:#x}",
                                what()
                            ),
                        )
                    })
            };
        let entries = &self.entries;
        let mut invalid = InvalidSet::default();
        let mut read_error = None;
        entries
            .scan(|idx, e| {
                let Some(i) = g.payload_block_of(idx) else {
                    return;
                };
                reserved_bits |= e & RESERVED_MASK;
                let payload = || format!("payload block {i}");
                let problem = match e & STATE_MASK {
                    PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED | PAYLOAD_ZERO | PAYLOAD_UNMAPPED => None,
                    PAYLOAD_UNMAPPED_DRAFT => {
                        draft_unmapped += 1;
                        None
                    }
                    PAYLOAD_FULLY_PRESENT => check_span(&payload, e & OFFSET_MASK, g.block_len(i)),
                    PAYLOAD_PARTIALLY_PRESENT if has_parent => {
                        // The chunk's bitmap entry lies in the same or the next page.
                        let b = match entries.get(g.bitmap_index(i)) {
                            Ok(b) => b,
                            Err(err) => {
                                read_error.get_or_insert(err);
                                return;
                            }
                        };
                        if b & STATE_MASK == SB_BLOCK_PRESENT {
                            check_span(&|| format!("sector bitmap of block {i}"), b & OFFSET_MASK, MIB)
                                .or_else(|| check_span(&payload, e & OFFSET_MASK, g.block_len(i)))
                        } else {
                            Some((
                                "vhdx.bat.state",
                                format!("payload block {i} is PARTIALLY_PRESENT but its chunk's sector bitmap entry has state {}, expected 6 (present)", b & STATE_MASK),
                            ))
                        }
                    }
                    PAYLOAD_PARTIALLY_PRESENT => Some((
                        "vhdx.bat.state",
                        format!("payload block {i} is PARTIALLY_PRESENT, which only a differencing disk may use"),
                    )),
                    s => Some(("vhdx.bat.state", format!("payload block {i} has reserved state {s}"))),
                };
                match problem {
                    Some(("vhdx.truncated", _)) => {
                        truncated_blocks += 1;
                        invalid.insert(i);
                    }
                    Some((code, msg)) => {
                        report(findings, idx, msg, code);
                        invalid.insert(i);
                    }
                    None => {}
                }
            })
            .map_err(|e| bat_read_error(self.offset, &e))?;
        if let Some(e) = read_error {
            return Err(bat_read_error(self.offset, &e));
        }
        if truncated_blocks > 0 {
            findings.error(
                "vhdx.truncated",
                None,
                format!(
                    "the file is truncated: it is {file_len} bytes but its BAT places data up to byte {} \
                     ({truncated_blocks} block(s) lie wholly or partly past the end); this is an incomplete copy: \
                     copy the VHDX again from its source and compare sizes",
                    truncated_to.get()
                ),
            );
        }
        invalid.seal();
        self.invalid = invalid;
        // Two blocks sharing file space would make a write to one change the other:
        // corrupt. The later one (by offset) is refused. Pointless once every stored block
        // counts as invalid.
        if !self.invalid.is_saturated() {
            let mut shared = InvalidSet::default();
            find_overlaps(&StoredBlocks { bat: self }, SWEEP_CAP, &mut |o: Overlap| {
                let idx = g.payload_index(o.later);
                report(
                    findings,
                    idx,
                    format!(
                        "payload block {} at {:#x} overlaps payload block {} ending at {:#x}",
                        o.later, o.later_start, o.earlier, o.earlier_end
                    ),
                    "vhdx.bat.overlap",
                );
                shared.insert(o.later);
            })?;
            self.invalid.merge(shared);
        }
        if bad > MAX_ENTRY_FINDINGS {
            findings.error(
                "vhdx.bat.state",
                Some(self.offset),
                format!(
                    "{} more invalid BAT entries not listed",
                    bad - MAX_ENTRY_FINDINGS
                ),
            );
        }
        if self.invalid.is_saturated() {
            findings.error(
                "vhdx.bat.state",
                Some(self.offset),
                "so many BAT entries are invalid that every stored block of this disk is treated as unreadable",
            );
        }
        if draft_unmapped > 0 {
            findings.warning(
                "vhdx.bat.state",
                Some(self.offset),
                format!("{draft_unmapped} payload blocks have state 5 (UNMAPPED in draft spec 0.95); read as zeros"),
            );
        }
        if reserved_bits != 0 {
            findings.warning(
                "vhdx.bat.reserved",
                Some(self.offset),
                "BAT entries have reserved bits 3-19 set; ignored",
            );
        }
        Ok(())
    }

    /// What payload block `i` holds (`i` < `payload_blocks`); a paged table may have to read
    /// the page holding its entry.
    pub fn block(&self, i: u64) -> Result<Block> {
        let g = &self.geometry;
        let get = |idx: u64| {
            self.entries
                .get(idx)
                .map_err(|e| Error::io("cannot read the BAT", e).at(self.offset + idx * 8))
        };
        let e = get(g.payload_index(i))?;
        Ok(match e & STATE_MASK {
            PAYLOAD_NOT_PRESENT => Block::NotPresent,
            PAYLOAD_UNDEFINED | PAYLOAD_ZERO | PAYLOAD_UNMAPPED | PAYLOAD_UNMAPPED_DRAFT => {
                Block::Zero
            }
            // Checked first: an invalid partial block's bitmap entry may not even exist.
            _ if self.invalid.contains(i) => Block::Invalid,
            PAYLOAD_FULLY_PRESENT => Block::Present(e & OFFSET_MASK),
            PAYLOAD_PARTIALLY_PRESENT => {
                let b = get(g.bitmap_index(i))? & OFFSET_MASK;
                Block::Partial {
                    bitmap: b + (i % g.chunk_ratio) * g.bitmap_bytes_per_block(),
                    data: e & OFFSET_MASK,
                }
            }
            _ => Block::Invalid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemSource;

    fn mem(bytes: Vec<u8>) -> Arc<dyn ReadAt> {
        Arc::new(MemSource::new(bytes))
    }

    #[test]
    fn geometry_matches_reference_table() {
        // Chunk ratios from docs/formats.md §2.8: (sector size, block size MiB, ratio).
        let cases = [
            (512, 1, 4096),
            (512, 2, 2048),
            (512, 8, 512),
            (512, 32, 128),
            (512, 256, 16),
            (4096, 1, 32768),
            (4096, 256, 128),
        ];
        for (ss, bs, ratio) in cases {
            assert_eq!(
                Geometry::new(bs * MIB as u32, ss, 1 << 30, false).chunk_ratio,
                ratio,
                "{ss}/{bs}"
            );
        }
        // qemu's 100 MiB dyn.vhdx: 8 MiB blocks, 13 entries.
        let g = Geometry::new(8 << 20, 512, 100 << 20, false);
        assert_eq!((g.payload_blocks, g.entry_count), (13, 13));
        // 1 MiB blocks, 512-byte sectors: block 4096 is after the first bitmap entry.
        let g = Geometry::new(1 << 20, 512, 5000 << 20, false);
        assert_eq!(g.payload_index(4095), 4095);
        assert_eq!(g.payload_index(4096), 4097);
        assert_eq!(g.bitmap_index(4096), 8193);
        assert_eq!(g.entry_count, 5000 + 1);
        // Differencing disks carry a bitmap entry for every chunk, even the last partial one.
        let g = Geometry::new(1 << 20, 512, 5000 << 20, true);
        assert_eq!(g.entry_count, 2 * 4097);
        // The last block of an odd size is partial.
        let g = Geometry::new(8 << 20, 512, (100 << 20) + 3584, false);
        assert_eq!(g.payload_blocks, 13);
        assert_eq!(g.block_len(12), 4 * MIB + 3584);
    }

    #[test]
    fn entry_states() {
        let g = Geometry::new(1 << 20, 512, 8 << 20, false);
        let file_len = 16 * MIB;
        let forbidden = [("the metadata region", 3 * MIB, MIB)];
        // (entry, expected block, expected finding code)
        let cases: [(u64, Block, Option<&str>); 11] = [
            (0, Block::NotPresent, None),                              // NOT_PRESENT
            (1 | (5 * MIB), Block::Zero, None), // UNDEFINED never reads its offset
            (2, Block::Zero, None),             // ZERO
            (3 | (9 * MIB), Block::Zero, None), // UNMAPPED
            (5, Block::Zero, Some("vhdx.bat.state")), // draft UNMAPPED: warning
            (4, Block::Invalid, Some("vhdx.bat.state")), // reserved state
            (6 | (8 * MIB), Block::Present(8 * MIB), None), // FULLY_PRESENT
            (6, Block::Invalid, Some("vhdx.bat.offset")), // inside the header section
            (6 | (16 * MIB), Block::Invalid, Some("vhdx.truncated")), // past the end of the file
            (6 | (3 * MIB), Block::Invalid, Some("vhdx.bat.overlap")), // on top of metadata
            (7 | (8 * MIB), Block::Invalid, Some("vhdx.bat.state")), // PARTIALLY_PRESENT without parent
        ];
        for (entry, want, code) in cases {
            let mut bytes = vec![0u8; MIB as usize];
            bytes[..8].copy_from_slice(&entry.to_le_bytes());
            let src = mem(bytes);
            let mut f = Findings::default();
            let mut budget = TableBudget::default();
            let bat = Bat::load(
                &src,
                (0, MIB),
                g,
                false,
                file_len,
                &forbidden,
                &mut budget,
                &mut f,
            )
            .unwrap();
            assert_eq!(bat.block(0).unwrap(), want, "entry {entry:#x}");
            assert_eq!(
                f.0.first().map(|f| f.code.as_str()),
                code,
                "entry {entry:#x}: {:?}",
                f.0
            );
        }
    }

    #[test]
    fn overlapping_blocks_are_invalid() {
        let g = Geometry::new(1 << 20, 512, 8 << 20, false);
        let mut bytes = vec![0u8; MIB as usize];
        // Blocks 0 and 2 both claim 5 MiB; block 1 sits alone at 6 MiB.
        for (k, e) in [6 | (5 * MIB), 6 | (6 * MIB), 6 | (5 * MIB)]
            .iter()
            .enumerate()
        {
            bytes[8 * k..8 * k + 8].copy_from_slice(&e.to_le_bytes());
        }
        let mut f = Findings::default();
        let bat = Bat::load(
            &mem(bytes),
            (0, MIB),
            g,
            false,
            16 * MIB,
            &[],
            &mut TableBudget::default(),
            &mut f,
        )
        .unwrap();
        assert_eq!(bat.block(0).unwrap(), Block::Present(5 * MIB));
        assert_eq!(bat.block(1).unwrap(), Block::Present(6 * MIB));
        assert_eq!(bat.block(2).unwrap(), Block::Invalid);
        assert_eq!(
            f.0.iter().map(|f| f.code.as_str()).collect::<Vec<_>>(),
            ["vhdx.bat.overlap"]
        );
    }

    #[test]
    fn region_too_small_for_the_disk() {
        let g = Geometry::new(1 << 20, 512, 200_000 << 20, false);
        let src = mem(vec![0; 4 * MIB as usize]);
        let e = Bat::load(
            &src,
            (MIB, MIB),
            g,
            false,
            4 * MIB,
            &[],
            &mut TableBudget::default(),
            &mut Findings::default(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "vhdx.bat.size");
    }

    #[test]
    fn paged_table_validates_and_reads_like_a_whole_one() {
        // 64 MiB of 1 MiB blocks; blocks 3 and 40 share storage, block 9 lies past the
        // end. With no budget the table is paged and must give the same answers.
        let g = Geometry::new(1 << 20, 512, 64 << 20, false);
        let mut bytes = vec![0u8; 4 * MIB as usize];
        let set = |bytes: &mut Vec<u8>, i: u64, e: u64| {
            let at = 8 * g.payload_index(i) as usize;
            bytes[at..at + 8].copy_from_slice(&e.to_le_bytes());
        };
        set(&mut bytes, 3, PAYLOAD_FULLY_PRESENT | (2 * MIB));
        set(&mut bytes, 40, PAYLOAD_FULLY_PRESENT | (2 * MIB));
        set(&mut bytes, 9, PAYLOAD_FULLY_PRESENT | (3 * MIB));
        set(&mut bytes, 12, PAYLOAD_ZERO);
        let src = mem(bytes);
        let mut outcomes = Vec::new();
        for budget in [u64::MAX, 0] {
            let mut f = Findings::default();
            let mut b = TableBudget::new(budget);
            let bat = Bat::load(&src, (0, MIB), g, false, 3 * MIB, &[], &mut b, &mut f).unwrap();
            assert_eq!(bat.entries.is_paged(), budget == 0);
            let blocks: Vec<Block> = (0..64).map(|i| bat.block(i).unwrap()).collect();
            assert_eq!(blocks[3], Block::Present(2 * MIB));
            assert_eq!(blocks[40], Block::Invalid);
            assert_eq!(blocks[9], Block::Invalid);
            assert_eq!(blocks[12], Block::Zero);
            let codes: Vec<&str> = f.0.iter().map(|f| f.code.as_str()).collect();
            outcomes.push((blocks, codes));
        }
        assert_eq!(outcomes[0], outcomes[1]);
    }
}
