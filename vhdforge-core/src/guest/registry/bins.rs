//! Hive bins and cells (`docs/guest-registry.md` §3). Every bin is walked once when the hive
//! is opened and the start of every allocated cell is remembered in a bitmap, so a reference
//! from a key, list or value is accepted only if it names exactly such a cell: references
//! into free cells, into the middle of a cell or across a bin boundary are refused.

use super::corrupt;
use crate::error::Result;

/// `hbin`.
pub const BIN_SIGNATURE: [u8; 4] = *b"hbin";
/// Bytes of a bin header; the first cell follows.
pub const BIN_HEADER_BYTES: usize = 32;
/// Bins are whole multiples of this.
pub const BIN_ALIGN: usize = 4096;
/// Cells are whole multiples of this (and start at multiples of it).
const CELL_ALIGN: usize = 8;
/// "No cell".
pub const NONE: u32 = 0xFFFF_FFFF;

/// Where the allocated cells of the hive bins data start.
#[derive(Debug, Default)]
pub struct CellIndex {
    /// One bit per 8-byte unit of the hive bins data: set where an allocated cell starts.
    allocated: Vec<u64>,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A cell's size field: negative when allocated.
fn le_i32(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The file offset of a hive-bins offset, for messages.
pub fn file_offset(cell: usize) -> u64 {
    cell as u64 + super::base_block::BASE_BLOCK_BYTES as u64
}

impl CellIndex {
    /// Walk every bin of `bins` (the hive bins data, exactly the size the base block states)
    /// and every cell inside it.
    pub fn build(bins: &[u8]) -> Result<CellIndex> {
        let units = bins.len() / CELL_ALIGN;
        let mut allocated = vec![0u64; units.div_ceil(64)];
        let mut at = 0usize;
        while at < bins.len() {
            let Some(head) = bins.get(at..at + BIN_HEADER_BYTES) else {
                return Err(corrupt(
                    file_offset(at),
                    "the hive bins data ends inside a bin header",
                ));
            };
            if head[..4] != BIN_SIGNATURE {
                return Err(corrupt(
                    file_offset(at),
                    format!(
                        "expected a hive bin (`hbin`) here, found {:02x?}; the hive is damaged",
                        &head[..4]
                    ),
                ));
            }
            let own = le_u32(head, 4) as usize;
            if own != at {
                return Err(corrupt(
                    file_offset(at),
                    format!("the hive bin at {at:#x} says it is at {own:#x}"),
                ));
            }
            let size = le_u32(head, 8) as usize;
            if size < BIN_ALIGN || size % BIN_ALIGN != 0 || size > bins.len() - at {
                return Err(corrupt(
                    file_offset(at),
                    format!(
                        "the hive bin at {at:#x} claims {size} bytes; a bin is a non-zero multiple of 4096 bytes inside the {} bytes of hive bins data",
                        bins.len()
                    ),
                ));
            }
            let end = at + size;
            let mut cell = at + BIN_HEADER_BYTES;
            while cell < end {
                let raw = le_i32(bins, cell);
                let len = raw.unsigned_abs() as usize;
                if len < CELL_ALIGN || len % CELL_ALIGN != 0 || len > end - cell {
                    return Err(corrupt(
                        file_offset(cell),
                        format!(
                            "the cell at {cell:#x} has size {raw}; a cell is a multiple of 8 bytes, at least 8, inside its bin (which ends at {end:#x})"
                        ),
                    ));
                }
                if raw < 0 {
                    let unit = cell / CELL_ALIGN;
                    allocated[unit / 64] |= 1 << (unit % 64);
                }
                cell += len;
            }
            at = end;
        }
        Ok(CellIndex { allocated })
    }

    /// Whether an allocated cell starts at `offset`.
    pub fn is_allocated(&self, offset: u32) -> bool {
        let offset = offset as usize;
        if offset % CELL_ALIGN != 0 {
            return false;
        }
        let unit = offset / CELL_ALIGN;
        self.allocated
            .get(unit / 64)
            .is_some_and(|w| w & (1 << (unit % 64)) != 0)
    }
}

/// The data of the allocated cell at `offset` (after its 4-byte size), or an error naming
/// `what` referenced it.
pub fn cell<'a>(bins: &'a [u8], index: &CellIndex, offset: u32, what: &str) -> Result<&'a [u8]> {
    if !index.is_allocated(offset) {
        return Err(corrupt(
            file_offset(offset as usize),
            format!(
                "{what} refers to offset {offset:#x}, which is not the start of an allocated cell (a free cell, the middle of one, or past the hive)"
            ),
        ));
    }
    let at = offset as usize;
    // The index only marks cells whose whole extent was checked to lie inside a bin.
    let len = le_i32(bins, at).unsigned_abs() as usize;
    Ok(&bins[at + 4..at + len])
}
