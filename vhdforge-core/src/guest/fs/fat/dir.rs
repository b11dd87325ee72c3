//! FAT directory entries (`docs/guest-filesystems.md` §5.3): 32-byte short (8.3) entries,
//! preceded by long-name (LFN) entries that hold the name in UTF-16, tied to their short
//! entry by a checksum of its 11-byte name.
//!
//! A long name is used only when its pieces are complete (sequence numbers counting down
//! to one) and their checksum matches the short entry, as Linux requires; otherwise the short
//! name is shown, with the NT lower-case flags applied.

/// Size of one directory entry.
pub const ENTRY_BYTES: usize = 32;

/// Attribute bits.
const ATTR_READ_ONLY: u8 = 0x01;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
/// `READ_ONLY | HIDDEN | SYSTEM | VOLUME_ID` marks a long-name entry.
const ATTR_LONG_NAME: u8 = 0x0F;
/// First name byte: this entry and all after it are free.
const END_OF_DIRECTORY: u8 = 0x00;
/// First name byte: this entry was deleted.
const DELETED: u8 = 0xE5;
/// First name byte 0x05 stands for a name starting with 0xE5.
const KANJI_E5: u8 = 0x05;
/// NT reserved byte (offset 12): base name, extension stored upper case but shown lower.
const NT_LOWER_BASE: u8 = 0x08;
const NT_LOWER_EXT: u8 = 0x10;
/// A long name has at most 20 pieces of 13 UTF-16 units (255 characters).
const MAX_LFN_PIECES: usize = 20;
/// LFN sequence byte: set on the piece that holds the end of the name (stored first).
const LFN_LAST: u8 = 0x40;

/// One live entry of a directory (neither `.`, `..` nor the volume label).
#[derive(Debug, Clone)]
pub struct Entry {
    /// The name: the long name when one is valid, else the 8.3 name.
    pub name: String,
    /// A directory (else a regular file).
    pub is_dir: bool,
    /// The read-only attribute.
    pub read_only: bool,
    /// First cluster (0 for an empty file).
    pub first_cluster: u32,
    /// Size in bytes (0 for directories).
    pub size: u32,
    /// Modification date and time, FAT encoded.
    pub mdate: u16,
    /// See `mdate`.
    pub mtime: u16,
}

/// What one 32-byte entry means for the scan.
pub enum Step {
    /// The directory ends here.
    End,
    /// Nothing to report (a free, deleted, dot, label or long-name entry).
    Skip,
    /// A live entry.
    Entry(Entry),
}

/// The LFN checksum of an 11-byte short name (rotate right, add).
pub fn lfn_checksum(short: &[u8]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// Accumulates long-name pieces across entries.
#[derive(Default)]
pub struct Decoder {
    /// Pieces by index (sequence number - 1), with the checksum they carry.
    pieces: Vec<Option<[u16; 13]>>,
    checksum: u8,
    /// The next sequence number expected, counting down; 0 when no name is pending.
    expect: u8,
}

impl Decoder {
    /// Decode the next entry `e` of the directory.
    pub fn step(&mut self, e: &[u8]) -> Step {
        let first = e[0];
        if first == END_OF_DIRECTORY {
            return Step::End;
        }
        let attr = e[11];
        if first == DELETED {
            self.reset();
            return Step::Skip;
        }
        if attr & 0x3F == ATTR_LONG_NAME {
            self.long_piece(e);
            return Step::Skip;
        }
        let long = self.take(&e[0..11]);
        if attr & ATTR_VOLUME_ID != 0 {
            return Step::Skip;
        }
        if &e[0..11] == b".          " || &e[0..11] == b"..         " {
            return Step::Skip;
        }
        let name = long.unwrap_or_else(|| short_name(e));
        let hi = u32::from(u16::from_le_bytes([e[20], e[21]]));
        let lo = u32::from(u16::from_le_bytes([e[26], e[27]]));
        Step::Entry(Entry {
            name,
            is_dir: attr & ATTR_DIRECTORY != 0,
            read_only: attr & ATTR_READ_ONLY != 0,
            first_cluster: ((hi << 16) | lo) & 0x0FFF_FFFF,
            size: u32::from_le_bytes([e[28], e[29], e[30], e[31]]),
            mdate: u16::from_le_bytes([e[24], e[25]]),
            mtime: u16::from_le_bytes([e[22], e[23]]),
        })
    }

    fn reset(&mut self) {
        self.pieces.clear();
        self.expect = 0;
    }

    fn long_piece(&mut self, e: &[u8]) {
        let seq = e[0];
        let n = seq & 0x1F;
        if seq & LFN_LAST != 0 {
            // A new name starts (any pending one was orphaned).
            self.reset();
            if n == 0 || usize::from(n) > MAX_LFN_PIECES {
                return;
            }
            self.pieces = vec![None; usize::from(n)];
            self.checksum = e[13];
            self.expect = n;
        } else if self.expect == 0 || n != self.expect || e[13] != self.checksum {
            self.reset();
            return;
        }
        let mut units = [0u16; 13];
        let spans = [(1usize, 5usize), (14, 6), (28, 2)];
        let mut k = 0;
        for (at, count) in spans {
            for i in 0..count {
                units[k] = u16::from_le_bytes([e[at + 2 * i], e[at + 2 * i + 1]]);
                k += 1;
            }
        }
        self.pieces[usize::from(n) - 1] = Some(units);
        self.expect = n - 1;
    }

    /// The long name for the short entry named `short`, when complete and matching.
    fn take(&mut self, short: &[u8]) -> Option<String> {
        let complete = self.expect == 0 && !self.pieces.is_empty();
        let ok = complete && self.checksum == lfn_checksum(short);
        let pieces = std::mem::take(&mut self.pieces);
        self.expect = 0;
        if !ok {
            return None;
        }
        let mut units: Vec<u16> = Vec::with_capacity(pieces.len() * 13);
        for p in pieces {
            units.extend_from_slice(&p?);
        }
        // The name ends at a NUL; the rest of its last piece is 0xFFFF padding.
        if let Some(end) = units.iter().position(|&u| u == 0) {
            units.truncate(end);
        }
        while units.last() == Some(&0xFFFF) {
            units.pop();
        }
        if units.is_empty() {
            return None;
        }
        Some(
            char::decode_utf16(units.iter().copied())
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
        )
    }
}

/// The 8.3 name as shown: trailing spaces dropped, `.` between base and extension, the NT
/// lower-case flags applied. Bytes above 0x7F (an OEM code page) are shown as Latin-1.
fn short_name(e: &[u8]) -> String {
    let flags = e[12];
    let mut base: Vec<u8> = e[0..8].to_vec();
    if base[0] == KANJI_E5 {
        base[0] = DELETED;
    }
    let conv = |bytes: &[u8], lower: bool| -> String {
        let trimmed = bytes
            .iter()
            .rposition(|&b| b != b' ')
            .map_or(&[][..], |i| &bytes[..=i]);
        trimmed
            .iter()
            .map(|&b| {
                let c = char::from(b);
                if lower {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect()
    };
    let mut name = conv(&base, flags & NT_LOWER_BASE != 0);
    let ext = conv(&e[8..11], flags & NT_LOWER_EXT != 0);
    if !ext.is_empty() {
        name.push('.');
        name.push_str(&ext);
    }
    name
}

/// Seconds since 1970 (UTC) for a FAT date and time, which carry no time zone: they are
/// read as UTC, as Linux does with `tz=UTC`. Out-of-range fields are clamped, not refused.
pub fn unix_seconds(date: u16, time: u16) -> i64 {
    let year = 1980 + i64::from(date >> 9);
    let month = i64::from((date >> 5) & 0x0F).clamp(1, 12);
    let day = i64::from(date & 0x1F).max(1);
    let hour = i64::from(time >> 11);
    let minute = i64::from((time >> 5) & 0x3F);
    let second = 2 * i64::from(time & 0x1F);
    days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
}

/// Days since 1970-01-01 of a proleptic Gregorian date (eras of 400 years).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short entry named `n83` (11 bytes) with attributes and NT flags.
    fn short(n83: &[u8; 11], attr: u8, nt: u8) -> [u8; 32] {
        let mut e = [0u8; 32];
        e[0..11].copy_from_slice(n83);
        e[11] = attr;
        e[12] = nt;
        e[26] = 5;
        e[28] = 9;
        e
    }

    /// The LFN pieces for `name` tied to `n83`, in on-disk order (last piece first).
    fn lfn(name: &str, n83: &[u8; 11]) -> Vec<[u8; 32]> {
        let mut units: Vec<u16> = name.encode_utf16().collect();
        if units.len() % 13 != 0 {
            units.push(0);
        }
        while units.len() % 13 != 0 {
            units.push(0xFFFF);
        }
        let n = units.len() / 13;
        let sum = lfn_checksum(n83);
        (0..n)
            .rev()
            .map(|i| {
                let mut e = [0u8; 32];
                e[0] = (i as u8 + 1) | if i + 1 == n { LFN_LAST } else { 0 };
                e[11] = ATTR_LONG_NAME;
                e[13] = sum;
                let pos = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
                for (k, &p) in pos.iter().enumerate() {
                    e[p..p + 2].copy_from_slice(&units[i * 13 + k].to_le_bytes());
                }
                e
            })
            .collect()
    }

    fn decode(entries: &[[u8; 32]]) -> Vec<String> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for e in entries {
            match d.step(e) {
                Step::End => break,
                Step::Skip => {}
                Step::Entry(x) => out.push(x.name),
            }
        }
        out
    }

    #[test]
    fn long_names_are_used_only_when_whole_and_matching() {
        let n83 = b"LONGFI~1TXT";
        let mut good = lfn("A long file name ✓ with ünïcode.txt", n83);
        good.push(short(n83, 0x20, 0));
        assert_eq!(decode(&good), ["A long file name ✓ with ünïcode.txt"]);

        // A wrong checksum: the short name shows.
        let mut bad = lfn("other name.txt", b"OTHERN~1TXT");
        bad.push(short(n83, 0x20, 0));
        assert_eq!(decode(&bad), ["LONGFI~1.TXT"]);

        // A missing middle piece: the short name shows.
        let mut gap = lfn("a name long enough for three pieces!!", n83);
        gap.remove(1);
        gap.push(short(n83, 0x20, 0));
        assert_eq!(decode(&gap), ["LONGFI~1.TXT"]);
    }

    #[test]
    fn short_names_follow_the_nt_case_flags_and_skip_dots_labels_and_deleted() {
        let entries = [
            short(b".          ", 0x10, 0),
            short(b"..         ", 0x10, 0),
            short(b"MYDISK     ", ATTR_VOLUME_ID, 0),
            short(b"\xE5DELETEDTXT", 0x20, 0),
            short(b"README  TXT", 0x20, NT_LOWER_BASE | NT_LOWER_EXT),
            short(b"MAKEFILE   ", 0x20, NT_LOWER_BASE),
            short(b"BOOTX64 EFI", 0x20, NT_LOWER_EXT),
            short(b"\x05ABC    TXT", 0x20, 0),
            [0u8; 32],
            short(b"AFTEREND   ", 0x20, 0),
        ];
        assert_eq!(
            decode(&entries),
            ["readme.txt", "makefile", "BOOTX64.efi", "\u{e5}ABC.TXT"]
        );
    }

    #[test]
    fn dates_are_read_as_utc() {
        // 2024-02-29 13:45:58: day 29 = 0x1D, seconds/2 29 = 0x1D.
        let date = (44 << 9) | (2 << 5) | 0x1D;
        let time = (13 << 11) | (45 << 5) | 0x1D;
        assert_eq!(unix_seconds(date, time), 1_709_214_358);
        assert_eq!(unix_seconds(0, 0), 315_532_800); // month/day 0 clamp to 1980-01-01
    }
}
