//! Block allocation tables held within a memory budget (docs/formats.md §1.8, §2.8).
//!
//! A VHD BAT may be 64 MiB and a VHDX BAT 512 MiB (64 TiB of 1 MiB blocks), and a chain
//! has up to 64 of them, so no table is trusted to fit in memory. A chain shares one
//! [`TableBudget`]: a table that fits what is left of it is read whole in one call and
//! looked up in memory (the hot path of every ordinary image); a larger one is read on
//! demand in [`PAGE_BYTES`] pages through a small direct-mapped cache, each slot behind its
//! own lock, so many threads read it at once and sequential walks touch the disk once per
//! page. Validation streams over either kind in [`SCAN_BYTES`] pieces ([`EntryTable::scan`]).
//!
//! Entries found invalid are kept in an [`InvalidSet`] of bounded size: past
//! [`MAX_INVALID`] entries every stored block of the table is treated as invalid, which is
//! never a silently wrong read (such an image is refused by convert and upload anyway).

use crate::io::{usize_from, ReadAt};
use std::io;
use std::sync::{Arc, Mutex};

/// Bytes of whole tables one chain may hold: 64 MiB covers a maximal VHD BAT or a 32 TiB
/// VHDX of 4 MiB blocks, so ordinary images and short chains never page.
pub const CHAIN_TABLE_BUDGET: u64 = 64 << 20;
/// Bytes per cached page of a paged table (8 Ki VHD or 4 Ki VHDX entries).
pub const PAGE_BYTES: usize = 32 << 10;
/// Cached pages per paged table: 256 KiB, so 64 paged layers hold 16 MiB.
const PAGE_SLOTS: usize = 8;
/// Bytes read per step while streaming over a paged table.
pub const SCAN_BYTES: usize = 1 << 20;
/// Invalid entries remembered one by one per table (128 KiB of indexes).
pub const MAX_INVALID: usize = 16 << 10;

/// What is left of a chain's memory for whole tables.
#[derive(Debug, Clone)]
pub struct TableBudget {
    left: u64,
}

impl Default for TableBudget {
    fn default() -> Self {
        TableBudget {
            left: CHAIN_TABLE_BUDGET,
        }
    }
}

impl TableBudget {
    /// A budget of `bytes` for whole tables.
    pub fn new(bytes: u64) -> Self {
        TableBudget { left: bytes }
    }

    /// Take `bytes` if they fit.
    fn take(&mut self, bytes: u64) -> bool {
        if bytes <= self.left {
            self.left -= bytes;
            true
        } else {
            false
        }
    }
}

/// Byte order and width of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryWidth {
    /// VHD: big-endian u32.
    Be32,
    /// VHDX: little-endian u64.
    Le64,
}

impl EntryWidth {
    fn bytes(self) -> usize {
        match self {
            EntryWidth::Be32 => 4,
            EntryWidth::Le64 => 8,
        }
    }

    fn decode(self, b: &[u8]) -> u64 {
        match self {
            EntryWidth::Be32 => u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            EntryWidth::Le64 => {
                u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
        }
    }
}

/// One cached page: its number and bytes.
type Slot = Mutex<Option<(u64, Box<[u8]>)>>;

enum Store {
    /// The table read in one call.
    Whole(Box<[u8]>),
    /// Pages read on demand, slot = page number modulo the slot count.
    Paged(Box<[Slot]>),
}

/// A table of `count` fixed-width entries at `offset` in `src`.
pub struct EntryTable {
    src: Arc<dyn ReadAt>,
    offset: u64,
    count: u64,
    width: EntryWidth,
    store: Store,
}

impl std::fmt::Debug for EntryTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryTable")
            .field("offset", &self.offset)
            .field("count", &self.count)
            .field("width", &self.width)
            .field("paged", &self.is_paged())
            .finish_non_exhaustive()
    }
}

impl EntryTable {
    /// Open the table of `count` entries at `offset`: read whole when it fits `budget`
    /// (which it then consumes), paged otherwise. The caller has checked that the table
    /// lies inside `src`.
    pub fn open(
        src: Arc<dyn ReadAt>,
        offset: u64,
        count: u64,
        width: EntryWidth,
        budget: &mut TableBudget,
    ) -> io::Result<EntryTable> {
        let bytes = count
            .checked_mul(width.bytes() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "table size overflows"))?;
        let end = offset.checked_add(bytes).filter(|&e| e <= src.size());
        if end.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the table ({bytes} bytes at {offset:#x}) runs past the end of the file ({} bytes)",
                    src.size()
                ),
            ));
        }
        let store = match usize::try_from(bytes) {
            Ok(n) if budget.take(bytes) => {
                let mut whole = vec![0u8; n].into_boxed_slice();
                src.read_exact_at(&mut whole, offset)?;
                Store::Whole(whole)
            }
            _ => Store::Paged((0..PAGE_SLOTS).map(|_| Mutex::new(None)).collect()),
        };
        Ok(EntryTable {
            src,
            offset,
            count,
            width,
            store,
        })
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True when the table has no entry.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// True when the table is read on demand rather than held whole.
    pub fn is_paged(&self) -> bool {
        matches!(self.store, Store::Paged(_))
    }

    /// Entry `i` (`i` < [`len`](Self::len)); a paged table may have to read its page.
    pub fn get(&self, i: u64) -> io::Result<u64> {
        let w = self.width.bytes();
        if i >= self.count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("entry {i} is past the table's {} entries", self.count),
            ));
        }
        match &self.store {
            // i < count and count × width fit in usize when the table was read whole.
            Store::Whole(b) => {
                let at = usize_from(i) * w;
                Ok(self.width.decode(&b[at..at + w]))
            }
            Store::Paged(slots) => {
                let byte = i * w as u64;
                let page = byte / PAGE_BYTES as u64;
                let in_page = usize_from(byte % PAGE_BYTES as u64);
                let slot = &slots[usize_from(page % PAGE_SLOTS as u64)];
                // A poisoned slot only means another reader panicked; its page is whole.
                let mut guard = slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some((p, bytes)) = guard.as_ref() {
                    if *p == page {
                        return Ok(self.width.decode(&bytes[in_page..in_page + w]));
                    }
                }
                let bytes = self.read_page(page)?;
                let v = self.width.decode(&bytes[in_page..in_page + w]);
                *guard = Some((page, bytes));
                Ok(v)
            }
        }
    }

    /// The bytes of page `page` (the last one may be short).
    fn read_page(&self, page: u64) -> io::Result<Box<[u8]>> {
        let total = self.count * self.width.bytes() as u64;
        let start = page * PAGE_BYTES as u64;
        let len = usize_from((total - start).min(PAGE_BYTES as u64));
        let mut bytes = vec![0u8; len].into_boxed_slice();
        self.src.read_exact_at(&mut bytes, self.offset + start)?;
        Ok(bytes)
    }

    /// Call `f(index, entry)` for every entry in order, reading a paged table in
    /// [`SCAN_BYTES`] pieces (skipping the cache, which keeps serving readers).
    pub fn scan(&self, mut f: impl FnMut(u64, u64)) -> io::Result<()> {
        let w = self.width.bytes();
        match &self.store {
            Store::Whole(b) => {
                for (i, e) in b.chunks_exact(w).enumerate() {
                    f(i as u64, self.width.decode(e));
                }
            }
            Store::Paged(_) => {
                let total = self.count * w as u64;
                let mut buf = vec![0u8; SCAN_BYTES];
                let mut done = 0u64;
                while done < total {
                    let n = usize_from((total - done).min(SCAN_BYTES as u64));
                    self.src.read_exact_at(&mut buf[..n], self.offset + done)?;
                    let first = done / w as u64;
                    for (k, e) in buf[..n].chunks_exact(w).enumerate() {
                        f(first + k as u64, self.width.decode(e));
                    }
                    done += n as u64;
                }
            }
        }
        Ok(())
    }
}

/// Indexes of entries found invalid, at most [`MAX_INVALID`] of them; beyond that the set
/// counts as holding every index ([`InvalidSet::is_saturated`]).
#[derive(Debug, Default)]
pub struct InvalidSet {
    indexes: Vec<u64>,
    saturated: bool,
    sorted: bool,
}

impl InvalidSet {
    /// Remember `i` as invalid.
    pub fn insert(&mut self, i: u64) {
        if self.saturated {
            return;
        }
        if self.indexes.len() >= MAX_INVALID {
            self.indexes.sort_unstable();
            self.indexes.dedup();
            if self.indexes.len() >= MAX_INVALID {
                self.saturated = true;
                self.indexes = Vec::new();
                return;
            }
        }
        self.indexes.push(i);
        self.sorted = false;
    }

    /// Sort for lookups; call once all inserts are done.
    pub fn seal(&mut self) {
        self.indexes.sort_unstable();
        self.indexes.dedup();
        self.indexes.shrink_to_fit();
        self.sorted = true;
    }

    /// Add every index of `other` (both sealed); the result is sealed.
    pub fn merge(&mut self, other: InvalidSet) {
        if other.saturated {
            self.saturated = true;
            self.indexes = Vec::new();
            return;
        }
        for i in other.indexes {
            self.insert(i);
        }
        self.seal();
    }

    /// True when too many entries were invalid to list: every index counts as invalid.
    pub fn is_saturated(&self) -> bool {
        self.saturated
    }

    /// Whether `i` is invalid (every index once saturated). Needs [`seal`](Self::seal).
    pub fn contains(&self, i: u64) -> bool {
        debug_assert!(self.sorted || self.saturated || self.indexes.is_empty());
        self.saturated || self.indexes.binary_search(&i).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemSource;

    fn table(entries: &[u64], width: EntryWidth, budget: u64) -> EntryTable {
        let mut bytes = Vec::new();
        for &e in entries {
            match width {
                EntryWidth::Be32 => bytes.extend_from_slice(&(e as u32).to_be_bytes()),
                EntryWidth::Le64 => bytes.extend_from_slice(&e.to_le_bytes()),
            }
        }
        // A 7-byte prefix puts the table at an odd offset.
        let mut file = vec![0xAB; 7];
        file.extend_from_slice(&bytes);
        EntryTable::open(
            Arc::new(MemSource::new(file)),
            7,
            entries.len() as u64,
            width,
            &mut TableBudget::new(budget),
        )
        .unwrap()
    }

    #[test]
    fn whole_and_paged_tables_read_the_same_entries() {
        // Enough entries for several pages and several scan steps, page edges included.
        let entries: Vec<u64> = (0..300_000u64)
            .map(|i| i * 2_654_435_761 % 4_000_000_000)
            .collect();
        for width in [EntryWidth::Be32, EntryWidth::Le64] {
            let whole = table(&entries, width, u64::MAX);
            let paged = table(&entries, width, 0);
            assert!(!whole.is_paged() && paged.is_paged());
            // Random order, so pages are evicted and re-read.
            for k in 0..20_000u64 {
                let i = k * 7919 % entries.len() as u64;
                assert_eq!(paged.get(i).unwrap(), entries[i as usize], "{width:?} {i}");
                assert_eq!(whole.get(i).unwrap(), entries[i as usize]);
            }
            let mut seen = Vec::new();
            paged.scan(|i, e| seen.push((i, e))).unwrap();
            assert_eq!(seen.len(), entries.len());
            assert!(seen.iter().all(|&(i, e)| entries[i as usize] == e));
            assert!(paged.get(entries.len() as u64).is_err());
        }
    }

    #[test]
    fn budget_is_shared_and_consumed() {
        let mut budget = TableBudget::new(100);
        let src: Arc<dyn ReadAt> = Arc::new(MemSource::new(vec![0; 200]));
        // 96 bytes fit; the next 96 do not and page instead.
        let a = EntryTable::open(src.clone(), 0, 12, EntryWidth::Le64, &mut budget).unwrap();
        let b = EntryTable::open(src.clone(), 0, 12, EntryWidth::Le64, &mut budget).unwrap();
        assert!(!a.is_paged() && b.is_paged());
        // A table past the end of the source is refused, not allocated.
        assert!(EntryTable::open(src, 0, u64::MAX / 4, EntryWidth::Le64, &mut budget).is_err());
    }

    #[test]
    fn invalid_set_saturates_instead_of_growing() {
        let mut s = InvalidSet::default();
        for i in 0..10 {
            s.insert(i * 3);
            s.insert(i * 3); // duplicates do not count twice
        }
        s.seal();
        assert!(s.contains(27) && !s.contains(28) && !s.is_saturated());
        let mut s = InvalidSet::default();
        for i in 0..=(MAX_INVALID as u64) {
            s.insert(i);
        }
        s.seal();
        assert!(s.is_saturated() && s.contains(u64::MAX));
    }
}
