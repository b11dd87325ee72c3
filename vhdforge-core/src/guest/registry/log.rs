//! Transaction logs (`.LOG1`/`.LOG2`) and their replay in memory, `docs/guest-registry.md` §8.
//!
//! Only the new format (Windows 8.1 and later: `HvLE` entries, each with Marvin32 hashes) is
//! replayed. Old-format logs (a `DIRT` bitmap of 512-byte pages, Windows 8 and earlier) are
//! recognised and reported as not replayed: no oracle here can produce one to test against.
//! Nothing is written back: the caller's bytes are never modified.

use super::base_block::{self, BaseBlock, FILE_TYPE_LOG_NEW, FILE_TYPE_LOG_OLD, LOG_HEADER_BYTES};
use super::MAX_HIVE_BYTES;

/// `HvLE`.
pub const ENTRY_SIGNATURE: [u8; 4] = *b"HvLE";
/// Bytes of a log entry header before its dirty page references.
pub const ENTRY_HEADER_BYTES: usize = 40;
/// Log entries start at, and have sizes that are multiples of, this.
const SECTOR: usize = 512;
/// Dirty pages are whole multiples of this, at offsets that are multiples of it.
const PAGE: usize = 4096;
/// The Marvin32 seed the registry uses.
pub const MARVIN_SEED: u64 = 0x82EF_4D88_7A4E_55C5;

/// What became of the logs of a dirty hive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// No log was supplied: the hive is read as the primary file has it (possibly stale).
    NoLogs,
    /// Log entries were applied in memory.
    Replayed {
        /// Entries applied.
        entries: u32,
        /// Sequence number of the last entry applied (now both sequences of the base block).
        last_sequence: u32,
    },
    /// Logs were supplied but nothing was applied; the reason says why (old format, stale,
    /// damaged).
    NotReplayed(String),
}

/// Marvin32 of `data`, whose length is a multiple of 4 (every registry use is).
pub fn marvin32(data: &[u8], seed: u64) -> u64 {
    #[allow(clippy::cast_possible_truncation)] // the low and high halves of the seed
    let (mut lo, mut hi) = (seed as u32, (seed >> 32) as u32);
    let mut round = |w: u32| {
        lo = lo.wrapping_add(w);
        hi ^= lo;
        lo = lo.rotate_left(20).wrapping_add(hi);
        hi = hi.rotate_left(9) ^ lo;
        lo = lo.rotate_left(27).wrapping_add(hi);
        hi = hi.rotate_left(19);
    };
    for w in data.chunks_exact(4) {
        round(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    }
    // The padding of an input whose length is a multiple of 4, then the final round.
    round(0x80);
    round(0);
    (u64::from(hi) << 32) | u64::from(lo)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from(le_u32(b, at)) | (u64::from(le_u32(b, at + 4)) << 32)
}

/// One checked log entry: where it lies in its log and what it says.
#[derive(Debug, Clone, Copy)]
struct Entry {
    at: usize,
    size: usize,
    sequence: u32,
    hive_bins_size: usize,
    pages: usize,
}

/// The valid, consecutive entries of a new-format log, from offset 512 up to the first entry
/// that is missing, damaged (signature, size, hashes, page references) or out of sequence.
fn entries(log: &[u8]) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut at = LOG_HEADER_BYTES;
    while let Some(head) = log.get(at..at + ENTRY_HEADER_BYTES) {
        if head[..4] != ENTRY_SIGNATURE {
            break;
        }
        let size = le_u32(head, 4) as usize;
        let sequence = le_u32(head, 12);
        let hive_bins_size = le_u32(head, 16) as usize;
        let pages = le_u32(head, 20) as usize;
        let Some(entry) = (size >= ENTRY_HEADER_BYTES && size % SECTOR == 0)
            .then(|| log.get(at..at.saturating_add(size)))
            .flatten()
        else {
            break;
        };
        if hive_bins_size == 0
            || hive_bins_size % PAGE != 0
            || hive_bins_size > MAX_HIVE_BYTES - base_block::BASE_BLOCK_BYTES
            || out
                .last()
                .is_some_and(|p| p.sequence.wrapping_add(1) != sequence)
            || marvin32(&entry[..32], MARVIN_SEED) != le_u64(head, 32)
            || marvin32(&entry[ENTRY_HEADER_BYTES..], MARVIN_SEED) != le_u64(head, 24)
            || !pages_fit(entry, pages, hive_bins_size)
        {
            break;
        }
        out.push(Entry {
            at,
            size,
            sequence,
            hive_bins_size,
            pages,
        });
        at += size;
    }
    out
}

/// Whether `pages` references fit the entry, each names whole pages inside the hive bins
/// size, and the pages they describe fit after them.
fn pages_fit(entry: &[u8], pages: usize, hive_bins_size: usize) -> bool {
    let Some(refs_end) = pages
        .checked_mul(8)
        .and_then(|n| n.checked_add(ENTRY_HEADER_BYTES))
        .filter(|&e| e <= entry.len())
    else {
        return false;
    };
    let mut data = refs_end;
    for i in 0..pages {
        let r = ENTRY_HEADER_BYTES + 8 * i;
        let (off, len) = (le_u32(entry, r) as usize, le_u32(entry, r + 4) as usize);
        if off % PAGE != 0 || len == 0 || len % PAGE != 0 || off + len > hive_bins_size {
            return false;
        }
        data += len;
        if data > entry.len() {
            return false;
        }
    }
    true
}

/// Apply one entry to `bins` (grown or shrunk to the entry's hive bins size first).
fn apply(log: &[u8], e: &Entry, bins: &mut Vec<u8>) {
    bins.resize(e.hive_bins_size, 0);
    let entry = &log[e.at..e.at + e.size];
    let mut data = ENTRY_HEADER_BYTES + 8 * e.pages;
    for i in 0..e.pages {
        let r = ENTRY_HEADER_BYTES + 8 * i;
        let (off, len) = (le_u32(entry, r) as usize, le_u32(entry, r + 4) as usize);
        // `entries` checked every reference against this entry's hive bins size.
        bins[off..off + len].copy_from_slice(&entry[data..data + len]);
        data += len;
    }
}

/// Replay `logs` (LOG1, LOG2, in any order) over a dirty hive. `base` is the primary's base
/// block; `header` (its first 512 bytes) and `bins` are updated in memory. Returns what was
/// done.
pub fn replay(base: &BaseBlock, header: &mut [u8], bins: &mut Vec<u8>, logs: &[&[u8]]) -> Replay {
    if logs.is_empty() {
        return Replay::NoLogs;
    }
    let mut notes = Vec::new();
    // (log index, the entries at or after the primary sequence number).
    let mut runs: Vec<(usize, Vec<Entry>)> = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let what = format!("log {}", i + 1);
        let lb = match base_block::parse(log, &what) {
            Ok(b) => b,
            Err(e) => {
                notes.push(format!("{what}: {}", e.message()));
                continue;
            }
        };
        if FILE_TYPE_LOG_OLD.contains(&lb.file_type) {
            notes.push(format!(
                "{what} is an old-format log (Windows 8 and earlier), which vhdforge does not replay"
            ));
            continue;
        }
        if lb.file_type != FILE_TYPE_LOG_NEW || !lb.checksum_ok {
            notes.push(format!(
                "{what} has file type {} and a {} checksum; a new-format log has type 6 and a good one",
                lb.file_type,
                if lb.checksum_ok { "good" } else { "bad" }
            ));
            continue;
        }
        // Entries before the primary's sequence number are already in the primary file.
        let run: Vec<Entry> = entries(log)
            .into_iter()
            .filter(|e| e.sequence >= base.primary_sequence)
            .collect();
        if run.is_empty() {
            notes.push(format!(
                "{what} has no valid entry from sequence {} on",
                base.primary_sequence
            ));
        } else {
            runs.push((i, run));
        }
    }
    // Start with the log holding the earliest subsequent entry, then continue in the other
    // from the next sequence number on.
    runs.sort_by_key(|(_, r)| r[0].sequence);
    let mut applied = 0u32;
    let mut last: Option<u32> = None;
    for (i, run) in &runs {
        for e in run {
            if last.is_some_and(|l| e.sequence != l.wrapping_add(1)) {
                continue;
            }
            apply(logs[*i], e, bins);
            applied += 1;
            last = Some(e.sequence);
        }
    }
    let Some(last) = last else {
        return Replay::NotReplayed(notes.join("; "));
    };
    // The base block now describes the replayed hive: both sequences are the last entry's,
    // the size is its hive bins size, and the checksum is recomputed.
    let size = u32::try_from(bins.len()).unwrap_or(u32::MAX);
    header[4..8].copy_from_slice(&last.to_le_bytes());
    header[8..12].copy_from_slice(&last.to_le_bytes());
    header[40..44].copy_from_slice(&size.to_le_bytes());
    base_block::set_checksum(header);
    Replay::Replayed {
        entries: applied,
        last_sequence: last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marvin32_matches_the_published_vectors() {
        // Test vectors published with Marvin32 implementations (seed 0x004FB61A001BDBCC);
        // the registry only hashes lengths that are multiples of 4.
        const SEED: u64 = 0x004F_B61A_001B_DBCC;
        assert_eq!(marvin32(&[], SEED), 0x30ED_35C1_00CD_3C7D);
        assert_eq!(
            marvin32(&[0x86, 0x42, 0xDC, 0x59], SEED),
            0x7008_F2E8_7E9C_F556
        );
    }
}
