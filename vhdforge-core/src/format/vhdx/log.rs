//! The metadata log and its in-memory replay ([MS-VHDX] §2.3; docs/formats.md §2.6).
//!
//! A file whose current header has a non-zero `LogGuid` may hold half-applied metadata
//! updates; the log holds the complete ones. vhdforge never writes the source, so it
//! replays the active log sequence into an [`Overlay`]: a map of 4 KiB pages consulted
//! before the file for every read of the header-referenced structures (region tables, BAT,
//! metadata, sector bitmaps) and, for simplicity and safety, payload too.

use super::crc32c_zeroed;
use crate::error::{Error, ErrorKind, Result};
use crate::io::{read_vec, usize_from, ReadAt};
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::Arc;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `loge`: entry header signature.
pub const ENTRY_SIGNATURE: &[u8; 4] = b"loge";
/// `zero`: zero descriptor signature.
pub const ZERO_SIGNATURE: &[u8; 4] = b"zero";
/// `desc`: data descriptor signature.
pub const DESC_SIGNATURE: &[u8; 4] = b"desc";
/// `data`: data sector signature.
pub const DATA_SIGNATURE: &[u8; 4] = b"data";
/// Log sector size: every entry, descriptor area and data sector is a multiple of it.
pub const LOG_SECTOR: u64 = 4096;
/// Offset of the checksum in the entry header.
pub const ENTRY_CHECKSUM_OFFSET: usize = 4;
/// Largest log vhdforge reads (Hyper-V and qemu write 1 MiB logs).
pub const MAX_LOG_LENGTH: u64 = 64 << 20;
/// Most 4 KiB pages a replay may patch (1 GiB of file), bounding the overlay's memory.
pub const MAX_OVERLAY_PAGES: usize = 1 << 18;
/// How far past the real end of the file a replay may grow it.
pub const MAX_LOG_GROWTH: u64 = 1 << 30;
/// Bytes of checksumming allowed per byte of log while searching for entries.
const CRC_BUDGET_FACTOR: u64 = 8;
/// Bound on entry-walking steps, so hostile logs of overlapping entries cannot hang us.
const MAX_WALK_STEPS: usize = 1 << 20;

/// Log entry header as laid out on disk.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct LogEntryHeader {
    /// `loge`.
    pub signature: [u8; 4],
    /// CRC-32C over the whole entry (`EntryLength` bytes) with this field zeroed.
    pub checksum: U32,
    /// Entry length in bytes, a multiple of 4 KiB.
    pub entry_length: U32,
    /// Log-relative offset of the first entry of this entry's sequence.
    pub tail: U32,
    /// Non-zero; consecutive entries of a sequence increase by one.
    pub sequence_number: U64,
    /// Number of descriptors that follow.
    pub descriptor_count: U32,
    /// Zero.
    pub reserved: U32,
    /// Must equal the header's `LogGuid`.
    pub log_guid: [u8; 16],
    /// File size known to be stable when the entry was written.
    pub flushed_file_offset: U64,
    /// File size all structures fit in after this entry is applied.
    pub last_file_offset: U64,
}

const _: () = assert!(std::mem::size_of::<LogEntryHeader>() == 64);

/// Zero or data descriptor as laid out on disk (the two share one 32-byte shape).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct LogDescriptor {
    /// `zero` or `desc`.
    pub signature: [u8; 4],
    /// Zero descriptor: reserved. Data descriptor: bytes 4092–4095 of the page.
    pub trailing_bytes: [u8; 4],
    /// Zero descriptor: length to zero (4 KiB multiple). Data descriptor: bytes 0–7 of the page.
    pub leading_or_length: [u8; 8],
    /// File offset of the page(s), 4 KiB aligned.
    pub file_offset: U64,
    /// Must equal the entry's sequence number.
    pub sequence_number: U64,
}

const _: () = assert!(std::mem::size_of::<LogDescriptor>() == 32);

/// Data sector as laid out on disk.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct LogDataSector {
    /// `data`.
    pub signature: [u8; 4],
    /// High 32 bits of the entry's sequence number.
    pub sequence_high: U32,
    /// Bytes 8–4091 of the page.
    pub data: [u8; 4084],
    /// Low 32 bits of the entry's sequence number.
    pub sequence_low: U32,
}

const _: () = assert!(std::mem::size_of::<LogDataSector>() == 4096);

/// One page write of a replay: a full page, or zeros.
type Page = Option<Box<[u8; 4096]>>;

/// A parsed, validated log entry.
#[derive(Debug, Clone)]
struct Entry {
    pos: u64,
    length: u64,
    tail: u64,
    seq: u64,
    flushed_file_offset: u64,
    last_file_offset: u64,
    /// The writes in descriptor order.
    writes: Vec<Write>,
}

/// One descriptor's effect.
#[derive(Debug, Clone)]
enum Write {
    /// A full 4 KiB page at a file offset.
    Data(u64, Box<[u8; 4096]>),
    /// Zeros over `(file offset, length)`.
    Zero(u64, u64),
}

/// The result of replaying a log.
#[derive(Debug, Default)]
pub struct Replay {
    /// Pages written by the active sequence, keyed by 4 KiB-aligned file offset.
    pub pages: BTreeMap<u64, Page>,
    /// The file length after replay (grown to `LastFileOffset` if needed).
    pub file_len: u64,
    /// Entries applied.
    pub entries: usize,
    /// Sequence number of the head entry.
    pub head_sequence: u64,
}

/// Read the log `(offset, length)` of `src`, find the active sequence for `log_guid` and
/// replay it into memory. `Ok(None)` when no valid sequence exists (nothing to apply).
#[allow(clippy::too_many_lines)] // the spec's replay steps in order: find the sequence, check it, apply it
pub fn replay(src: &dyn ReadAt, log: (u64, u64), log_guid: [u8; 16]) -> Result<Option<Replay>> {
    let (offset, length) = log;
    if length == 0 {
        return Ok(None);
    }
    if length > MAX_LOG_LENGTH {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "vhdx.log.too_large",
            format!("the log is {length} bytes; vhdforge replays logs of at most {MAX_LOG_LENGTH} bytes"),
        )
        .at(offset));
    }
    let bytes = read_vec(src, offset, length, MAX_LOG_LENGTH).map_err(|e| {
        Error::corrupt(
            "vhdx.log.bounds",
            offset,
            format!("cannot read the log: {e}"),
        )
    })?;
    let slots = (length / LOG_SECTOR) as usize;
    let mut parsed: Vec<Option<Entry>> = Vec::with_capacity(slots);
    // Checksumming is the costly check; a hostile log of long, overlapping entry headers at
    // every slot could demand length² bytes of it, so the total is bounded.
    let mut crc_budget = CRC_BUDGET_FACTOR * length;
    for s in 0..slots {
        parsed.push(parse_entry(
            &bytes,
            s as u64 * LOG_SECTOR,
            log_guid,
            &mut crc_budget,
        ));
    }
    if crc_budget == 0 {
        return Err(Error::corrupt(
            "vhdx.log.invalid",
            offset,
            "the log holds too many overlapping entries to search",
        ));
    }
    // Candidate heads, newest first: the active sequence is the newest whose entries run
    // back-to-back from its Tail up to it.
    let mut heads: Vec<&Entry> = parsed.iter().flatten().collect();
    heads.sort_by_key(|e| std::cmp::Reverse(e.seq));
    let mut steps = 0usize;
    let mut chosen: Option<Vec<&Entry>> = None;
    'heads: for head in heads {
        let mut chain = Vec::new();
        let mut pos = head.tail;
        let mut expect_seq: Option<u64> = None;
        loop {
            steps += 1;
            if steps > MAX_WALK_STEPS {
                return Err(Error::corrupt(
                    "vhdx.log.invalid",
                    offset,
                    "the log holds too many overlapping entries to search",
                ));
            }
            let Some(e) = parsed
                .get((pos / LOG_SECTOR) as usize)
                .and_then(Option::as_ref)
            else {
                continue 'heads;
            };
            if pos % LOG_SECTOR != 0
                || expect_seq.is_some_and(|s| s != e.seq)
                || chain.len() >= slots
            {
                continue 'heads;
            }
            chain.push(e);
            if e.pos == head.pos {
                break;
            }
            let Some(next) = e.seq.checked_add(1) else {
                continue 'heads;
            };
            expect_seq = Some(next);
            pos = (e.pos + e.length) % length;
        }
        // Every step checked seq + 1, so the chain is a whole sequence ending at the head.
        chosen = Some(chain);
        break;
    }
    let Some(chain) = chosen else { return Ok(None) };
    let head = chain[chain.len() - 1];
    let file_len = src.size();
    if file_len < head.flushed_file_offset {
        return Err(Error::corrupt(
            "vhdx.log.truncated",
            offset + head.pos,
            format!(
                "the file is {file_len} bytes but the log says {} bytes were flushed: the file was truncated",
                head.flushed_file_offset
            ),
        ));
    }
    // Replay grows the file to LastFileOffset; the growth reads as zeros. Bound it, or a
    // tiny file could claim terabytes and have tables sized from that "read".
    if head.last_file_offset > file_len.saturating_add(MAX_LOG_GROWTH) {
        return Err(Error::corrupt(
            "vhdx.log.invalid",
            offset + head.pos,
            format!(
                "the log says the file should be {} bytes, more than {MAX_LOG_GROWTH} bytes beyond its real length {file_len}",
                head.last_file_offset
            ),
        ));
    }
    let mut pages: BTreeMap<u64, Page> = BTreeMap::new();
    for e in &chain {
        for w in &e.writes {
            match w {
                Write::Data(at, page) => {
                    pages.insert(*at, Some(page.clone()));
                }
                Write::Zero(at, len) => {
                    // Stop as soon as the cap is passed: a zero run may be huge.
                    let mut k = 0;
                    while k < *len && pages.len() <= MAX_OVERLAY_PAGES {
                        pages.insert(at + k, None);
                        k += LOG_SECTOR;
                    }
                }
            }
            if pages.len() > MAX_OVERLAY_PAGES {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "vhdx.log.too_large",
                    format!("replaying the log would patch more than {MAX_OVERLAY_PAGES} pages; refusing to hold that in memory"),
                )
                .at(offset + e.pos));
            }
        }
    }
    Ok(Some(Replay {
        pages,
        file_len: file_len.max(head.last_file_offset),
        entries: chain.len(),
        head_sequence: head.seq,
    }))
}

/// The bytes of the circular log starting at `pos`, `len` long, wrapping at the end.
fn wrapped(log: &[u8], pos: u64, len: u64) -> Option<std::borrow::Cow<'_, [u8]>> {
    let (pos, len, total) = (usize_from(pos), usize_from(len), log.len());
    if len > total || pos >= total {
        return None;
    }
    if pos + len <= total {
        return Some(std::borrow::Cow::Borrowed(&log[pos..pos + len]));
    }
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&log[pos..]);
    v.extend_from_slice(&log[..len - (total - pos)]);
    Some(std::borrow::Cow::Owned(v))
}

/// Parse and fully validate the entry at log-relative `pos`; `None` if it is not valid.
fn parse_entry(log: &[u8], pos: u64, log_guid: [u8; 16], crc_budget: &mut u64) -> Option<Entry> {
    let first = log.get(usize_from(pos)..usize_from(pos) + 64)?;
    let hdr = LogEntryHeader::read_from_bytes(first).ok()?;
    let length = u64::from(hdr.entry_length.get());
    let count = u64::from(hdr.descriptor_count.get());
    let tail = u64::from(hdr.tail.get());
    if &hdr.signature != ENTRY_SIGNATURE
        || hdr.log_guid != log_guid
        || hdr.sequence_number.get() == 0
        || length == 0
        || length % LOG_SECTOR != 0
        || tail % LOG_SECTOR != 0
        || tail >= log.len() as u64
    {
        return None;
    }
    // Descriptor sectors: the first holds the header plus 126 descriptors, later ones 128.
    let desc_sectors = (count + 2).div_ceil(128);
    if desc_sectors * LOG_SECTOR > length {
        return None;
    }
    if *crc_budget < length {
        *crc_budget = 0;
        return None;
    }
    *crc_budget -= length;
    let bytes = wrapped(log, pos, length)?;
    if crc32c_zeroed(&bytes, ENTRY_CHECKSUM_OFFSET) != hdr.checksum.get() {
        return None;
    }
    let seq = hdr.sequence_number.get();
    let descs_area = bytes.get(64..usize_from(64 + count * 32))?;
    let (descs, _) =
        <[LogDescriptor]>::ref_from_prefix_with_elems(descs_area, usize_from(count)).ok()?;
    let mut data_sector = desc_sectors;
    let mut writes = Vec::with_capacity(descs.len());
    for d in descs {
        let at = d.file_offset.get();
        if d.sequence_number.get() != seq || at % LOG_SECTOR != 0 {
            return None;
        }
        if &d.signature == ZERO_SIGNATURE {
            let zlen = u64::from_le_bytes(d.leading_or_length);
            if zlen % LOG_SECTOR != 0 || at.checked_add(zlen).is_none() {
                return None;
            }
            writes.push(Write::Zero(at, zlen));
        } else if &d.signature == DESC_SIGNATURE {
            let start = usize_from(data_sector * LOG_SECTOR);
            let sector = bytes.get(start..start + usize_from(LOG_SECTOR))?;
            let ds = LogDataSector::read_from_bytes(sector).ok()?;
            let ds_seq =
                (u64::from(ds.sequence_high.get()) << 32) | u64::from(ds.sequence_low.get());
            if &ds.signature != DATA_SIGNATURE || ds_seq != seq {
                return None;
            }
            let mut page = Box::new([0u8; 4096]);
            page[..8].copy_from_slice(&d.leading_or_length);
            page[8..4092].copy_from_slice(&ds.data);
            page[4092..].copy_from_slice(&d.trailing_bytes);
            writes.push(Write::Data(at, page));
            data_sector += 1;
        } else {
            return None;
        }
    }
    if data_sector * LOG_SECTOR > length {
        return None;
    }
    Some(Entry {
        pos,
        length,
        tail,
        seq,
        flushed_file_offset: hdr.flushed_file_offset.get(),
        last_file_offset: hdr.last_file_offset.get(),
        writes,
    })
}

/// A read-only view of the file with replayed log pages laid over it. Bytes past the end
/// of the real file (up to the replayed length) read as zeros, as after a real replay that
/// grew the file.
pub struct Overlay {
    inner: Arc<dyn ReadAt>,
    pages: BTreeMap<u64, Page>,
    len: u64,
}

impl Overlay {
    /// Lay `replay` over `inner`.
    pub fn new(inner: Arc<dyn ReadAt>, replay: Replay) -> Overlay {
        Overlay {
            inner,
            pages: replay.pages,
            len: replay.file_len,
        }
    }
}

impl fmt::Debug for Overlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Overlay({:?}, {} replayed pages)",
            self.inner,
            self.pages.len()
        )
    }
}

impl ReadAt for Overlay {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {len} bytes at {offset:#x} runs past the end ({} bytes)",
                        self.len
                    ),
                )
            })?;
        // The real file first, zeros past its end.
        let real_end = end.min(self.inner.size());
        if offset < real_end {
            self.inner
                .read_exact_at(&mut buf[..usize_from(real_end - offset)], offset)?;
        }
        if end > real_end {
            let from = usize_from(real_end.saturating_sub(offset));
            buf[from..].fill(0);
        }
        // Then every replayed page that intersects the range.
        let first = offset - offset % LOG_SECTOR;
        for (&page_at, page) in self.pages.range(first..end) {
            let s = page_at.max(offset);
            let e = page_at.saturating_add(LOG_SECTOR).min(end);
            let dst = &mut buf[usize_from(s - offset)..usize_from(e - offset)];
            match page {
                Some(p) => {
                    dst.copy_from_slice(&p[usize_from(s - page_at)..usize_from(e - page_at)]);
                }
                None => dst.fill(0),
            }
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.len
    }

    fn name(&self) -> String {
        self.inner.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemSource;

    const GUID: [u8; 16] = [7; 16];

    /// A log entry at `tail`-relative sequence with data writes `(file offset, byte)`.
    fn entry(seq: u64, tail: u32, datas: &[(u64, u8)], zeros: &[(u64, u64)]) -> Vec<u8> {
        let count = (datas.len() + zeros.len()) as u64;
        let desc_sectors = (count + 2).div_ceil(128);
        let total = (desc_sectors + datas.len() as u64) * LOG_SECTOR;
        let mut b = vec![0u8; total as usize];
        let hdr = LogEntryHeader {
            signature: *ENTRY_SIGNATURE,
            checksum: U32::new(0),
            entry_length: U32::new(total as u32),
            tail: U32::new(tail),
            sequence_number: U64::new(seq),
            descriptor_count: U32::new(count as u32),
            reserved: U32::new(0),
            log_guid: GUID,
            flushed_file_offset: U64::new(0),
            last_file_offset: U64::new(0),
        };
        b[..64].copy_from_slice(hdr.as_bytes());
        let mut d = 64;
        for &(at, len) in zeros {
            b[d..d + 4].copy_from_slice(ZERO_SIGNATURE);
            b[d + 8..d + 16].copy_from_slice(&len.to_le_bytes());
            b[d + 16..d + 24].copy_from_slice(&at.to_le_bytes());
            b[d + 24..d + 32].copy_from_slice(&seq.to_le_bytes());
            d += 32;
        }
        for (k, &(at, v)) in datas.iter().enumerate() {
            b[d..d + 4].copy_from_slice(DESC_SIGNATURE);
            b[d + 4..d + 8].fill(v);
            b[d + 8..d + 16].fill(v);
            b[d + 16..d + 24].copy_from_slice(&at.to_le_bytes());
            b[d + 24..d + 32].copy_from_slice(&seq.to_le_bytes());
            d += 32;
            let s = ((desc_sectors as usize) + k) * 4096;
            b[s..s + 4].copy_from_slice(DATA_SIGNATURE);
            b[s + 4..s + 8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
            b[s + 8..s + 4092].fill(v);
            b[s + 4092..s + 4096].copy_from_slice(&(seq as u32).to_le_bytes());
        }
        let c = crc32c_zeroed(&b, ENTRY_CHECKSUM_OFFSET);
        b[4..8].copy_from_slice(&c.to_le_bytes());
        b
    }

    fn log_with(entries: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut log = vec![0u8; 1 << 20];
        for (at, e) in entries {
            log[*at as usize..*at as usize + e.len()].copy_from_slice(e);
        }
        log
    }

    fn run(log: Vec<u8>) -> Result<Option<Replay>> {
        replay(&MemSource::new(log), (0, 1 << 20), GUID)
    }

    #[test]
    fn replay_picks_the_active_sequence() {
        let e10 = entry(10, 0, &[(0x20_0000, 0xAA)], &[]);
        let e11 = entry(11, 0, &[(0x20_0000, 0xBB)], &[(0x20_1000, 8192)]);
        let len10 = e10.len() as u64;
        let old = entry(3, 0x8_0000, &[(0x20_0000, 0x11)], &[]);
        let r = run(log_with(&[
            (0, e10.clone()),
            (len10, e11.clone()),
            (0x8_0000, old.clone()),
        ]))
        .unwrap()
        .unwrap();
        // The newer entry wins over the older one of the same sequence and over the old sequence.
        assert_eq!(r.entries, 2);
        assert_eq!(r.head_sequence, 11);
        assert_eq!(r.pages[&0x20_0000].as_ref().unwrap()[100], 0xBB);
        assert!(r.pages[&0x20_1000].is_none() && r.pages[&0x20_2000].is_none());

        // (name, log, expected number of applied entries; None = nothing to apply)
        let mut bad_crc = e11.clone();
        bad_crc[5000] ^= 1;
        let mut bad_data_seq = entry(11, 0, &[(0x20_0000, 0xBB)], &[]);
        bad_data_seq[4096 + 4092] ^= 1;
        let c = crc32c_zeroed(&bad_data_seq, 4);
        bad_data_seq[4..8].copy_from_slice(&c.to_le_bytes());
        let cases: Vec<(&str, Vec<u8>, Option<usize>)> = vec![
            (
                "sequence number at its maximum",
                log_with(&[(0, entry(u64::MAX, 0, &[(0x20_0000, 1)], &[]))]),
                Some(1),
            ),
            ("empty log", log_with(&[]), None),
            ("single entry", log_with(&[(0, e10.clone())]), Some(1)),
            (
                "head with broken CRC falls back to the previous head",
                log_with(&[(0, e10.clone()), (len10, bad_crc)]),
                Some(1),
            ),
            (
                "data sector sequence mismatch",
                log_with(&[(0, bad_data_seq)]),
                None,
            ),
            (
                "head whose tail points at nothing",
                log_with(&[(len10, e11.clone())]),
                None,
            ),
            ("other log guid", run_guid_mismatch(), None),
        ];
        for (name, log, want) in cases {
            assert_eq!(run(log).unwrap().map(|r| r.entries), want, "{name}");
        }
    }

    fn run_guid_mismatch() -> Vec<u8> {
        let mut e = entry(10, 0, &[(0x20_0000, 0xAA)], &[]);
        e[32] ^= 1;
        let c = crc32c_zeroed(&e, 4);
        e[4..8].copy_from_slice(&c.to_le_bytes());
        log_with(&[(0, e)])
    }

    #[test]
    fn overlapping_entry_headers_cannot_hang_the_search() {
        // A plausible whole-log entry header at every 4 KiB slot, none with a valid CRC.
        let mut log = vec![0u8; 1 << 20];
        for slot in log.chunks_mut(4096) {
            slot[..4].copy_from_slice(ENTRY_SIGNATURE);
            slot[8..12].copy_from_slice(&(1u32 << 20).to_le_bytes());
            slot[16..24].copy_from_slice(&1u64.to_le_bytes());
            slot[32..48].copy_from_slice(&GUID);
        }
        assert_eq!(run(log).unwrap_err().code(), "vhdx.log.invalid");
    }

    #[test]
    fn absurd_growth_is_refused() {
        let mut e = entry(10, 0, &[(0x20_0000, 0xAA)], &[]);
        e[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
        let c = crc32c_zeroed(&e, 4);
        e[4..8].copy_from_slice(&c.to_le_bytes());
        assert_eq!(
            run(log_with(&[(0, e)])).unwrap_err().code(),
            "vhdx.log.invalid"
        );
    }

    #[test]
    fn truncated_file_is_refused() {
        let mut e = entry(10, 0, &[(0x20_0000, 0xAA)], &[]);
        e[48..56].copy_from_slice(&(64u64 << 20).to_le_bytes());
        let c = crc32c_zeroed(&e, 4);
        e[4..8].copy_from_slice(&c.to_le_bytes());
        assert_eq!(
            run(log_with(&[(0, e)])).unwrap_err().code(),
            "vhdx.log.truncated"
        );
    }

    #[test]
    fn overlay_patches_reads() {
        let e = entry(1, 0, &[(0x1000, 0xAB)], &[(0x3000, 4096)]);
        let r = run(log_with(&[(0, e)])).unwrap().unwrap();
        let base = Arc::new(MemSource::new(vec![0x55; 0x5000]));
        let o = Overlay::new(base, r);
        let mut buf = vec![0u8; 0x5000];
        o.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf[..0x1000].iter().all(|&b| b == 0x55));
        assert!(buf[0x1000..0x2000].iter().all(|&b| b == 0xAB));
        assert!(buf[0x2000..0x3000].iter().all(|&b| b == 0x55));
        assert!(buf[0x3000..0x4000].iter().all(|&b| b == 0));
        let mut small = [0u8; 6];
        o.read_exact_at(&mut small, 0xFFD).unwrap();
        assert_eq!(small, [0x55, 0x55, 0x55, 0xAB, 0xAB, 0xAB]);
    }
}
