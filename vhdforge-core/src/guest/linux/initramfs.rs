//! The kernel modules an initramfs holds, read as the kernel unpacks it
//! (`docs/guest-boot.md §2`, `docs/formats.md §7`): a sequence of members, each an uncompressed
//! newc cpio or a compressed stream of cpio archives, separated by NUL padding. dracut puts an
//! uncompressed early-microcode cpio first and the compressed main archive after it;
//! initramfs-tools may put several uncompressed microcode archives first.
//!
//! Streaming throughout: members are decompressed as they are read, file bodies are skipped
//! (never held), and only module names and the small `modules.builtin` list are kept, so
//! memory does not grow with the archive. gzip (`flate2`), xz (`lzma-rs`) and zstd
//! (`ruzstd`) are decoded, all pure Rust; bzip2, lzma, lzo and lz4 are recognised and
//! reported as not readable rather than misread.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read};

use crate::error::{Error, ErrorKind, Result};
use crate::guest::fs::FileReader;

/// Decompressed bytes read from one initramfs before giving up: real ones are well under
/// 1 GiB unpacked, and a compression bomb must not keep the check running for hours.
pub const MAX_UNPACKED_BYTES: u64 = 4 << 30;
/// cpio entries read before giving up (a real initramfs has a few thousand).
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Module names kept (a distribution kernel has about 6000 modules in all).
pub const MAX_MODULES: usize = 100_000;
/// Longest entry name accepted, including its NUL (Linux's `PATH_MAX`).
pub const MAX_NAME_BYTES: u64 = 4096;
/// Largest `modules.builtin` read from inside the archive (real ones are about 20 KiB).
pub const MAX_BUILTIN_BYTES: u64 = 1 << 20;
/// Largest xz dictionary accepted (`xz -9` uses 64 MiB), so decoding stays inside the
/// memory budget whatever the header claims.
pub const MAX_XZ_DICT_BYTES: u64 = 64 << 20;
/// Largest zstd window accepted (`zstd -19` uses 8 MiB, `--ultra -22` and `--long=27`
/// 128 MiB): `ruzstd` keeps up to a window of output, so it is checked before decoding.
pub const MAX_ZSTD_WINDOW_BYTES: u64 = 128 << 20;

/// newc cpio header length: a 6-byte magic and 13 eight-digit hex fields.
const CPIO_HEADER_BYTES: usize = 110;
/// newc magic (`070701`) and the variant with a checksum (`070702`).
const CPIO_MAGIC_NEWC: &[u8; 6] = b"070701";
const CPIO_MAGIC_CRC: &[u8; 6] = b"070702";
/// The name of the entry that ends a cpio archive.
const CPIO_TRAILER: &[u8] = b"TRAILER!!!";

/// How one member of the initramfs is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain newc cpio archive.
    None,
    /// gzip (`1F 8B`).
    Gzip,
    /// xz (`FD 37 7A 58 5A 00`).
    Xz,
    /// zstd (`28 B5 2F FD`).
    Zstd,
    /// bzip2 (`BZh`): recognised, not decoded.
    Bzip2,
    /// legacy lzma (`5D 00 00`): recognised, not decoded.
    Lzma,
    /// lzop (`89 4C 5A 4F`): recognised, not decoded.
    Lzo,
    /// lz4 legacy frame (`02 21 4C 18`): recognised, not decoded.
    Lz4,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed cpio",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Lzo => "lzo",
            Compression::Lz4 => "lz4",
        })
    }
}

impl Compression {
    /// The member format whose magic starts `head`, if any.
    fn sniff(head: &[u8]) -> Option<Compression> {
        const MAGICS: [(&[u8], Compression); 9] = [
            (CPIO_MAGIC_NEWC, Compression::None),
            (CPIO_MAGIC_CRC, Compression::None),
            (&[0x1f, 0x8b], Compression::Gzip),
            (&[0x1f, 0x9e], Compression::Gzip),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0], Compression::Xz),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (b"BZh", Compression::Bzip2),
            (&[0x5d, 0, 0], Compression::Lzma),
            (&[0x89, b'L', b'Z', b'O'], Compression::Lzo),
        ];
        if head.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
            return Some(Compression::Lz4);
        }
        MAGICS
            .iter()
            .find(|(m, _)| head.starts_with(m))
            .map(|(_, c)| *c)
    }
}

/// One member of the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Byte offset of the member in the initramfs file.
    pub offset: u64,
    /// How it is stored.
    pub compression: Compression,
}

/// What an initramfs holds, as far as the Hyper-V driver check needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Initramfs {
    /// Members in file order.
    pub members: Vec<Member>,
    /// Loadable modules: normalised name (`hv_vmbus`; `-` read as `_`, as modprobe does) →
    /// the path inside the archive (`usr/lib/modules/5.14.0/kernel/drivers/hv/hv_vmbus.ko.xz`).
    pub modules: BTreeMap<String, String>,
    /// Drivers compiled into the kernel per a `modules.builtin` inside the archive.
    pub builtin: BTreeSet<String>,
    /// cpio entries seen (directories and files).
    pub entries: u64,
    /// A member vhdforge recognised but cannot decode, with its offset: the modules in it
    /// are unknown, so a check must not call them missing.
    pub unreadable: Option<Member>,
}

/// The module name a path names, if it is a kernel module (`.ko`, `.ko.xz`, `.ko.zst`,
/// `.ko.gz`): `kernel/drivers/hv/hv_vmbus.ko.xz` → `hv_vmbus`.
pub fn module_name(path: &str) -> Option<String> {
    let base = path.rsplit('/').next()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))?;
    if stem.is_empty() {
        return None;
    }
    Some(stem.replace('-', "_"))
}

/// The drivers a `modules.builtin` text lists (one path per line).
pub fn parse_modules_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| module_name(l.trim()))
        .take(MAX_MODULES)
        .collect()
}

fn corrupt(offset: u64, message: String) -> Error {
    Error::new(ErrorKind::Corrupt, "guest.initramfs.corrupt", message).at(offset)
}

/// Read the initramfs `file` (a guest file) member by member.
pub fn read_initramfs(file: &mut dyn FileReader) -> Result<Initramfs> {
    let mut src = Source {
        inner: ReaderAdapter(file),
        buf: vec![0; 64 * 1024],
        pos: 0,
        len: 0,
        consumed: 0,
    };
    let mut out = Initramfs::default();
    let mut budget = Budget {
        unpacked: 0,
        entries: 0,
    };
    loop {
        // NULs may separate members (the kernel skips them in groups of four; any count is
        // accepted here, as dracut's skipcpio does).
        loop {
            let avail = src.fill_buf().map_err(|e| io_err(&e))?;
            if avail.is_empty() {
                out.entries = budget.entries;
                return Ok(out);
            }
            let zeros = avail.iter().take_while(|&&b| b == 0).count();
            if zeros == 0 {
                break;
            }
            src.consume(zeros);
        }
        let offset = src.consumed;
        let head = src.peek(6).map_err(|e| io_err(&e))?;
        let Some(compression) = Compression::sniff(head) else {
            return Err(corrupt(
                offset,
                format!(
                    "initramfs member at byte {offset} starts with {} — expected a newc cpio (070701) or gzip/xz/zstd data; the file is damaged or not an initramfs, rebuild it in the guest (dracut -f or update-initramfs -u)",
                    hex(head)
                ),
            ));
        };
        let member = Member {
            offset,
            compression,
        };
        out.members.push(member.clone());
        match compression {
            Compression::None => {
                walk_cpio(&mut src, true, offset, &mut out, &mut budget)?;
            }
            Compression::Gzip => {
                let mut dec = BufReader::new(flate2::bufread::GzDecoder::new(&mut src));
                walk_cpio(&mut dec, false, offset, &mut out, &mut budget)?;
            }
            Compression::Zstd => {
                check_zstd_window(&mut src, offset)?;
                let dec =
                    ruzstd::streaming_decoder::StreamingDecoder::new(&mut src).map_err(|e| {
                        corrupt(
                            offset,
                            format!("the zstd member at byte {offset} cannot be decoded: {e}"),
                        )
                    })?;
                walk_cpio(
                    &mut BufReader::new(dec),
                    false,
                    offset,
                    &mut out,
                    &mut budget,
                )?;
            }
            Compression::Xz => {
                check_xz_dictionary(&mut src, offset)?;
                // lzma-rs pushes its output into a writer: the cpio walk runs on a thread-free
                // pipe of one bounded buffer, so the whole member is never held.
                xz_walk(&mut src, offset, &mut out, &mut budget)?;
            }
            Compression::Bzip2 | Compression::Lzma | Compression::Lzo | Compression::Lz4 => {
                out.unreadable = Some(member);
                out.entries = budget.entries;
                return Ok(out);
            }
        }
    }
}

/// Counters that bound the whole walk.
struct Budget {
    unpacked: u64,
    entries: u64,
}

/// An error while streaming: reading the guest file failed (it carries [`GuestReadError`]),
/// or a decompressor found the data damaged.
fn io_err(e: &io::Error) -> Error {
    let from_guest = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<GuestReadError>())
        .is_some();
    if from_guest {
        Error::new(
            ErrorKind::Io,
            "guest.initramfs.read",
            format!("reading the initramfs failed: {e}"),
        )
    } else {
        Error::new(
            ErrorKind::Corrupt,
            "guest.initramfs.corrupt",
            format!("the initramfs cannot be decompressed: {e}; it is damaged or truncated, rebuild it in the guest (dracut -f or update-initramfs -u)"),
        )
    }
}

/// A failure of the guest file system under the initramfs, told apart from decoder errors.
#[derive(Debug)]
struct GuestReadError(String);

impl std::fmt::Display for GuestReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GuestReadError {}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Walk cpio archives from `r`. With `until_trailer`, stop after the first `TRAILER!!!`
/// (an uncompressed member: what follows is the next member); otherwise read to the end of
/// the decompressed stream, which may hold several archives.
fn walk_cpio(
    r: &mut dyn BufRead,
    until_trailer: bool,
    member_offset: u64,
    out: &mut Initramfs,
    budget: &mut Budget,
) -> Result<()> {
    // Position inside this member's (decompressed) stream, for alignment and messages.
    let mut pos: u64 = 0;
    let at = |pos: u64| format!("byte {pos} of the member at byte {member_offset}");
    let mut header = [0u8; CPIO_HEADER_BYTES];
    loop {
        if !until_trailer {
            // Padding between archives inside one compressed stream.
            loop {
                let avail = r.fill_buf().map_err(|e| io_err(&e))?;
                if avail.is_empty() {
                    return Ok(());
                }
                let zeros = avail.iter().take_while(|&&b| b == 0).count();
                if zeros == 0 {
                    break;
                }
                r.consume(zeros);
                pos += zeros as u64;
            }
        }
        let got = read_full(r, &mut header).map_err(|e| io_err(&e))?;
        if got < CPIO_HEADER_BYTES {
            return Err(corrupt(
                member_offset,
                format!(
                    "the cpio archive ends inside an entry header at {} (no TRAILER!!! entry): the initramfs is truncated; rebuild it in the guest",
                    at(pos)
                ),
            ));
        }
        let Header {
            mode,
            file_size,
            name_size,
        } = parse_header(&header, member_offset, pos)?;
        budget.entries += 1;
        if budget.entries > MAX_ENTRIES {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "guest.initramfs.too_large",
                format!("the initramfs has more than {MAX_ENTRIES} entries; vhdforge stops there (a real one has a few thousand)"),
            ));
        }
        // Header + name are padded to a multiple of 4; so is the data.
        let name_len = usize::try_from(name_size).unwrap_or(0);
        let name_padded = (CPIO_HEADER_BYTES + name_len).next_multiple_of(4) - CPIO_HEADER_BYTES;
        let mut name = vec![0u8; name_padded];
        if read_full(r, &mut name).map_err(|e| io_err(&e))? < name_padded {
            return Err(corrupt(
                member_offset,
                format!("the cpio archive ends inside an entry name at {}", at(pos)),
            ));
        }
        name.truncate(name_len - 1);
        pos += (CPIO_HEADER_BYTES + name_padded) as u64;
        let data_padded = file_size.next_multiple_of(4);
        budget.unpacked = budget.unpacked.saturating_add(data_padded);
        if budget.unpacked > MAX_UNPACKED_BYTES {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "guest.initramfs.too_large",
                format!("the initramfs unpacks to more than {} GiB; vhdforge stops there (a real one is well under 1 GiB)", MAX_UNPACKED_BYTES >> 30),
            ));
        }
        if name == CPIO_TRAILER {
            skip(r, data_padded, member_offset, pos)?;
            pos += data_padded;
            if until_trailer {
                return Ok(());
            }
            continue;
        }
        let path = String::from_utf8_lossy(&name).into_owned();
        let is_regular = mode & 0o170_000 == 0o100_000;
        if is_regular && path.ends_with("/modules.builtin") && file_size <= MAX_BUILTIN_BYTES {
            let mut text = vec![0u8; usize::try_from(file_size).unwrap_or(0)];
            if read_full(r, &mut text).map_err(|e| io_err(&e))? < text.len() {
                return Err(corrupt(
                    member_offset,
                    format!("the cpio archive ends inside {path}"),
                ));
            }
            out.builtin
                .extend(parse_modules_builtin(&String::from_utf8_lossy(&text)));
            skip(r, data_padded - file_size, member_offset, pos)?;
        } else {
            if is_regular && out.modules.len() < MAX_MODULES {
                if let Some(m) = module_name(&path) {
                    out.modules.entry(m).or_insert(path);
                }
            }
            skip(r, data_padded, member_offset, pos)?;
        }
        pos += data_padded;
    }
}

/// The fields of a newc header this reader uses.
struct Header {
    mode: u64,
    file_size: u64,
    name_size: u64,
}

/// Check a 110-byte newc header (magic, hex digits, name length) at `pos` of the member
/// at `member_offset`.
fn parse_header(header: &[u8], member_offset: u64, pos: u64) -> Result<Header> {
    let at = format!("byte {pos} of the member at byte {member_offset}");
    if header.len() < CPIO_HEADER_BYTES
        || (&header[..6] != CPIO_MAGIC_NEWC && &header[..6] != CPIO_MAGIC_CRC)
    {
        return Err(corrupt(
            member_offset,
            format!(
                "cpio entry at {at} has magic {:?}, expected 070701 or 070702 (newc); the initramfs is damaged, rebuild it in the guest",
                String::from_utf8_lossy(&header[..6.min(header.len())])
            ),
        ));
    }
    let field = |i: usize| -> Result<u64> {
        let raw = &header[6 + 8 * i..14 + 8 * i];
        std::str::from_utf8(raw)
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(|| {
                corrupt(
                    member_offset,
                    format!(
                        "cpio entry at {at}: header field {i} is {:?}, expected 8 hex digits; the initramfs is damaged",
                        String::from_utf8_lossy(raw)
                    ),
                )
            })
    };
    let name_size = field(11)?;
    if name_size == 0 || name_size > MAX_NAME_BYTES {
        return Err(corrupt(
            member_offset,
            format!(
                "cpio entry at {at} has a name of {name_size} bytes, expected 1 to {MAX_NAME_BYTES}; the initramfs is damaged"
            ),
        ));
    }
    Ok(Header {
        mode: field(1)?,
        file_size: field(6)?,
        name_size,
    })
}

/// Read until `buf` is full or the stream ends; how many bytes were read.
fn read_full(r: &mut dyn BufRead, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn skip(r: &mut dyn BufRead, n: u64, member_offset: u64, pos: u64) -> Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink()).map_err(|e| io_err(&e))?;
    if copied < n {
        return Err(corrupt(
            member_offset,
            format!("the cpio archive ends inside a file body at byte {pos} of the member at byte {member_offset}: the initramfs is truncated"),
        ));
    }
    Ok(())
}

/// Refuse an xz stream whose first block asks for a dictionary larger than
/// [`MAX_XZ_DICT_BYTES`]: lzma-rs grows its buffer up to the dictionary size.
/// Layout: 12-byte stream header, then the block header (size byte, flags, optional
/// compressed/uncompressed sizes as varints, then filter flags: id `0x21` = LZMA2, a props
/// size of 1, and the dictionary byte).
fn check_xz_dictionary(src: &mut Source<'_>, offset: u64) -> Result<()> {
    let head = src.peek(64).map_err(|e| io_err(&e))?.to_vec();
    let refuse = |what: String| {
        Err(Error::new(
            ErrorKind::Unsupported,
            "guest.initramfs.xz_dictionary",
            format!("the xz member at byte {offset} {what}; vhdforge reads xz initramfs images made with dictionaries up to {} MiB (dracut and xz -9 use at most 64 MiB)", MAX_XZ_DICT_BYTES >> 20),
        ))
    };
    let Some(&flags) = head.get(13) else {
        return Ok(());
    };
    let mut i = 14;
    let varint = |i: &mut usize| {
        for _ in 0..9 {
            let b = *head.get(*i)?;
            *i += 1;
            if b & 0x80 == 0 {
                return Some(());
            }
        }
        None
    };
    if flags & 0x40 != 0 && varint(&mut i).is_none() {
        return Ok(());
    }
    if flags & 0x80 != 0 && varint(&mut i).is_none() {
        return Ok(());
    }
    // Filter id and props size are single-byte varints for LZMA2.
    if head.get(i) != Some(&0x21) || head.get(i + 1) != Some(&1) {
        // Another first filter (a BCJ filter before LZMA2): its own header follows; the
        // LZMA2 byte is in the last filter. Scan no further: a dictionary cap is still
        // enforced by lzma-rs growing only with the output.
        return Ok(());
    }
    let Some(&p) = head.get(i + 2) else {
        return Ok(());
    };
    if p > 40 {
        return refuse(format!("has an invalid LZMA2 dictionary byte {p}"));
    }
    let dict: u64 = if p == 40 {
        u64::from(u32::MAX)
    } else {
        (2 | u64::from(p & 1)) << (p / 2 + 11)
    };
    if dict > MAX_XZ_DICT_BYTES {
        return refuse(format!("asks for a {} MiB dictionary", dict >> 20));
    }
    Ok(())
}

/// Refuse a zstd frame whose window is larger than [`MAX_ZSTD_WINDOW_BYTES`]. Frame
/// header (RFC 8878 §3.1.1.1): magic, descriptor (bits 7–6 content-size field size, bit 5
/// single segment, bits 1–0 dictionary-id size), then the window descriptor (absent for a
/// single segment, whose window is the content size), the dictionary id, the content size.
fn check_zstd_window(src: &mut Source<'_>, offset: u64) -> Result<()> {
    let head = src.peek(18).map_err(|e| io_err(&e))?.to_vec();
    let Some(&fhd) = head.get(4) else {
        return Ok(()); // Too short: the decoder reports the truncation.
    };
    let single = fhd & 0x20 != 0;
    let window = if single {
        let dict_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
        let fcs_len = [1usize, 2, 4, 8][usize::from(fhd >> 6)];
        let at = 5 + dict_len;
        let Some(raw) = head.get(at..at + fcs_len) else {
            return Ok(());
        };
        let mut v = 0u64;
        for (i, b) in raw.iter().enumerate() {
            v |= u64::from(*b) << (8 * i);
        }
        if fcs_len == 2 {
            v += 256;
        }
        v
    } else {
        let Some(&wd) = head.get(5) else {
            return Ok(());
        };
        let base = 1u64 << (10 + u32::from(wd >> 3));
        base + base / 8 * u64::from(wd & 7)
    };
    if window > MAX_ZSTD_WINDOW_BYTES {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "guest.initramfs.zstd_window",
            format!("the zstd member at byte {offset} asks for a {} MiB window; vhdforge reads zstd initramfs images with windows up to {} MiB (zstd --ultra -22 and --long=27 use 128 MiB)", window >> 20, MAX_ZSTD_WINDOW_BYTES >> 20),
        ));
    }
    Ok(())
}

/// Decode one xz stream from `src` and walk the cpio inside it, in bounded pieces: lzma-rs
/// writes its output into [`Pipe`], which hands each chunk to an incremental cpio walker.
fn xz_walk(
    src: &mut Source<'_>,
    offset: u64,
    out: &mut Initramfs,
    budget: &mut Budget,
) -> Result<()> {
    let mut pipe = Pipe {
        walker: Incremental::default(),
        member_offset: offset,
        out,
        budget,
        error: None,
    };
    let res = lzma_rs::xz_decompress(src, &mut pipe);
    if let Some(e) = pipe.error.take() {
        return Err(e);
    }
    res.map_err(|e| {
        corrupt(
            offset,
            format!("the xz member at byte {offset} cannot be decoded: {e}"),
        )
    })?;
    pipe.finish()
}

/// An incremental cpio walker for push-style decoders: it buffers at most one header and
/// name (≤ 110 + 4096 bytes) and counts file bodies down without keeping them.
#[derive(Default)]
struct Incremental {
    /// Bytes of the current header + name (or `modules.builtin` body) gathered so far.
    pending: Vec<u8>,
    /// Body bytes still to skip.
    skip: u64,
    /// A `modules.builtin` being collected: its size and padded size.
    builtin: Option<(usize, u64)>,
    /// Position in the decompressed stream.
    pos: u64,
}

struct Pipe<'a> {
    walker: Incremental,
    member_offset: u64,
    out: &'a mut Initramfs,
    budget: &'a mut Budget,
    error: Option<Error>,
}

impl Pipe<'_> {
    /// Feed bytes; the walker keeps only what the next decision needs.
    fn feed(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let w = &mut self.walker;
            if w.skip > 0 {
                let n = usize::try_from(w.skip.min(data.len() as u64)).unwrap_or(data.len());
                w.skip -= n as u64;
                w.pos += n as u64;
                data = &data[n..];
                continue;
            }
            if let Some((size, padded)) = w.builtin {
                let want = size - w.pending.len();
                let n = want.min(data.len());
                w.pending.extend_from_slice(&data[..n]);
                w.pos += n as u64;
                data = &data[n..];
                if w.pending.len() == size {
                    self.out
                        .builtin
                        .extend(parse_modules_builtin(&String::from_utf8_lossy(&w.pending)));
                    w.pending.clear();
                    w.builtin = None;
                    w.skip = padded - size as u64;
                }
                continue;
            }
            if w.pending.is_empty() {
                // Padding between archives.
                let zeros = data.iter().take_while(|&&b| b == 0).count();
                w.pos += zeros as u64;
                data = &data[zeros..];
                if data.is_empty() {
                    break;
                }
            }
            // Gather a whole header, then its padded name.
            let need = if w.pending.len() < CPIO_HEADER_BYTES {
                CPIO_HEADER_BYTES
            } else {
                let name_size = usize::try_from(hex_field(&w.pending, 11)).unwrap_or(0);
                (CPIO_HEADER_BYTES + name_size).next_multiple_of(4)
            };
            let n = (need - w.pending.len()).min(data.len());
            w.pending.extend_from_slice(&data[..n]);
            data = &data[n..];
            if w.pending.len() < need {
                continue;
            }
            if need == CPIO_HEADER_BYTES {
                // Validate before the name length is trusted to size the next read.
                parse_header(&w.pending, self.member_offset, w.pos)?;
                continue;
            }
            // A whole entry header and name: decide.
            let header = std::mem::take(&mut w.pending);
            let Header {
                mode,
                file_size,
                name_size,
            } = parse_header(&header, self.member_offset, w.pos)?;
            let is_regular = mode & 0o170_000 == 0o100_000;
            let name_len = usize::try_from(name_size).unwrap_or(1);
            let name = &header[CPIO_HEADER_BYTES..CPIO_HEADER_BYTES + name_len - 1];
            w.pos += header.len() as u64;
            self.budget.entries += 1;
            let padded = file_size.next_multiple_of(4);
            self.budget.unpacked = self.budget.unpacked.saturating_add(padded);
            if self.budget.entries > MAX_ENTRIES || self.budget.unpacked > MAX_UNPACKED_BYTES {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "guest.initramfs.too_large",
                    format!("the initramfs has more than {MAX_ENTRIES} entries or unpacks to more than {} GiB; vhdforge stops there", MAX_UNPACKED_BYTES >> 30),
                ));
            }
            let path = String::from_utf8_lossy(name).into_owned();
            if is_regular && path.ends_with("/modules.builtin") && file_size <= MAX_BUILTIN_BYTES {
                w.builtin = Some((usize::try_from(file_size).unwrap_or(0), padded));
                if file_size == 0 {
                    w.builtin = None;
                    w.skip = padded;
                }
                continue;
            }
            if is_regular && name != CPIO_TRAILER && self.out.modules.len() < MAX_MODULES {
                if let Some(m) = module_name(&path) {
                    self.out.modules.entry(m).or_insert(path);
                }
            }
            w.skip = padded;
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        let w = &self.walker;
        if !w.pending.is_empty() || w.skip > 0 || w.builtin.is_some() {
            return Err(corrupt(
                self.member_offset,
                format!(
                    "the xz member at byte {} ends inside a cpio entry (at byte {} of its data): the initramfs is truncated; rebuild it in the guest",
                    self.member_offset, w.pos
                ),
            ));
        }
        Ok(())
    }
}

/// Field `i` of a header already checked by [`parse_header`].
fn hex_field(header: &[u8], i: usize) -> u64 {
    std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .unwrap_or(0)
}

impl io::Write for Pipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.error.is_some() {
            return Err(io::Error::other("stopped"));
        }
        match self.feed(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                self.error = Some(e);
                Err(io::Error::other("stopped"))
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A guest file as `std::io::Read`.
struct ReaderAdapter<'a>(&'a mut dyn FileReader);

impl Read for ReaderAdapter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::other(GuestReadError(e.to_string())))
    }
}

/// The initramfs file with a buffer that can peek a few bytes ahead (to sniff the next
/// member's magic) and counts what was consumed (its offset).
struct Source<'a> {
    inner: ReaderAdapter<'a>,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    consumed: u64,
}

impl Source<'_> {
    /// At least `n` bytes (fewer only at the end of the file) without consuming them.
    fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.len - self.pos < n {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
            while self.len < n {
                let k = self.inner.read(&mut self.buf[self.len..])?;
                if k == 0 {
                    break;
                }
                self.len += k;
            }
        }
        Ok(&self.buf[self.pos..self.len.min(self.pos + n.max(1))])
    }
}

impl Read for Source<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Source<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = self.inner.read(&mut self.buf)?;
        }
        Ok(&self.buf[self.pos..self.len])
    }
    fn consume(&mut self, n: usize) {
        let n = n.min(self.len - self.pos);
        self.pos += n;
        self.consumed += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A newc archive of (name, mode, body) entries, with the trailer, padded to 512 as GNU
    /// cpio does.
    fn cpio(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let trailer: (&str, u32, &[u8]) = ("TRAILER!!!", 0, b"");
        for (i, (name, mode, body)) in entries.iter().chain([&trailer]).enumerate() {
            out.extend_from_slice(b"070701");
            let fields = [
                i as u32,
                *mode,
                0,
                0,
                1,
                0,
                u32::try_from(body.len()).unwrap(),
                0,
                0,
                0,
                0,
                u32::try_from(name.len() + 1).unwrap(),
                0,
            ];
            for f in fields {
                out.extend_from_slice(format!("{f:08x}").as_bytes());
            }
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            while out.len() % 4 != 0 {
                out.push(0);
            }
            out.extend_from_slice(body);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        }
        while out.len() % 512 != 0 {
            out.push(0);
        }
        out
    }

    const FILE: u32 = 0o100_644;
    const DIR: u32 = 0o040_755;

    fn main_archive() -> Vec<u8> {
        cpio(&[
            ("usr", DIR, b""),
            (
                "usr/lib/modules/6.1.0/kernel/drivers/hv/hv_vmbus.ko.xz",
                FILE,
                b"x",
            ),
            (
                "usr/lib/modules/6.1.0/kernel/drivers/scsi/hv_storvsc.ko.zst",
                FILE,
                &[7; 1000],
            ),
            (
                "usr/lib/modules/6.1.0/kernel/drivers/net/hyperv/hv-netvsc.ko",
                FILE,
                b"",
            ),
            (
                "usr/lib/modules/6.1.0/modules.builtin",
                FILE,
                b"kernel/drivers/hv/hv_utils.ko\nkernel/fs/ext4/ext4.ko\n",
            ),
            // A directory named like a module is not one.
            ("usr/lib/modules/6.1.0/kernel/odd.ko", DIR, b""),
        ])
    }

    fn early() -> Vec<u8> {
        cpio(&[
            ("early_cpio", FILE, b"1\n"),
            ("kernel/x86/microcode/GenuineIntel.bin", FILE, &[0xAA; 3000]),
        ])
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn xz(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        lzma_rs::xz_compress(&mut &b[..], &mut out).unwrap();
        out
    }

    fn read(b: Vec<u8>) -> Result<Initramfs> {
        read_initramfs(&mut crate::guest::fs::MemFile(b, 0))
    }

    fn assert_main(i: &Initramfs) {
        let names: Vec<&str> = i.modules.keys().map(String::as_str).collect();
        assert_eq!(names, ["hv_netvsc", "hv_storvsc", "hv_vmbus"]);
        assert!(i.builtin.contains("hv_utils") && i.builtin.contains("ext4"));
        assert_eq!(
            i.modules["hv_vmbus"],
            "usr/lib/modules/6.1.0/kernel/drivers/hv/hv_vmbus.ko.xz"
        );
    }

    #[test]
    fn dracut_layout_early_cpio_then_gzip_or_xz() {
        // dracut: an uncompressed early cpio, then the compressed main archive.
        for (what, main) in [("gzip", gzip(&main_archive())), ("xz", xz(&main_archive()))] {
            let mut img = early();
            let main_at = img.len() as u64;
            img.extend_from_slice(&main);
            let i = read(img).unwrap();
            assert_main(&i);
            assert_eq!(i.members.len(), 2, "{what}");
            assert_eq!(i.members[0].compression, Compression::None);
            assert_eq!(i.members[1].offset, main_at, "{what}");
            assert!(i.unreadable.is_none());
        }
    }

    #[test]
    fn several_archives_in_one_compressed_stream_and_nul_padding() {
        let mut both = early();
        both.extend_from_slice(&main_archive());
        let mut img = vec![0u8; 8];
        img.extend_from_slice(&gzip(&both));
        img.extend_from_slice(&[0; 16]);
        let i = read(img).unwrap();
        assert_main(&i);
        assert_eq!(i.members.len(), 1);
        assert_eq!(i.members[0].offset, 8);
    }

    #[test]
    fn unsupported_compression_is_named_not_guessed() {
        let mut img = early();
        img.extend_from_slice(b"BZh91AY&SY");
        let i = read(img).unwrap();
        assert_eq!(
            i.unreadable.as_ref().map(|m| m.compression),
            Some(Compression::Bzip2)
        );
        let i = read([&[0x02, 0x21, 0x4c, 0x18][..], &[1; 40]].concat()).unwrap();
        assert_eq!(i.unreadable.unwrap().compression, Compression::Lz4);
    }

    #[test]
    fn garbage_member_is_an_error_naming_its_offset() {
        let mut img = early();
        let at = img.len();
        img.extend_from_slice(b"hello world");
        let e = read(img).unwrap_err();
        assert!(e.to_string().contains(&format!("byte {at}")), "{e}");
    }

    #[test]
    fn huge_xz_dictionary_is_refused_before_decoding() {
        let mut b = xz(&main_archive());
        // Block header: size byte at 12, flags at 13; no optional sizes from lzma-rs, so
        // the filter id, props size and dictionary byte follow at 14, 15, 16.
        assert_eq!(&b[14..16], &[0x21, 1]);
        b[16] = 39; // 3 GiB
        let e = read(b).unwrap_err();
        assert_eq!(e.code(), "guest.initramfs.xz_dictionary");
    }

    /// A guest file whose reads fail after `ok` bytes.
    struct Failing(Vec<u8>, usize);
    impl FileReader for Failing {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
            if self.1 >= self.0.len() {
                return Err(Error::new(ErrorKind::Io, "io.read", "disk gone"));
            }
            let n = buf.len().min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
        fn seek(&mut self, _: u64) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_read_failures_and_damage_have_their_own_codes() {
        // A failing disk under a compressed member is an I/O error, not "damaged".
        let g = gzip(&main_archive());
        let e = read_initramfs(&mut Failing(g[..g.len() / 2].to_vec(), 0)).unwrap_err();
        assert_eq!(e.code(), "guest.initramfs.read");
        assert!(e.to_string().contains("disk gone"), "{e}");
        // Flipped bits inside the deflate data: damaged.
        let mut g = gzip(&main_archive());
        let mid = g.len() / 2;
        g[mid] ^= 0xff;
        g[mid + 1] ^= 0xff;
        if let Err(e) = read(g) {
            assert_eq!(e.code(), "guest.initramfs.corrupt", "{e}");
        }
    }

    #[test]
    fn huge_zstd_window_is_refused_before_allocating() {
        // Frame header: magic, descriptor 0 (window descriptor present, no content size),
        // window exponent 18, mantissa 1 → 256 MiB + 32 MiB, over the 128 MiB cap.
        let mut img = early();
        img.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 0x00, 18 << 3 | 1, 0, 0, 0, 0]);
        let e = read(img).unwrap_err();
        assert_eq!(e.code(), "guest.initramfs.zstd_window");
        assert!(e.to_string().contains("288 MiB window"), "{e}");
        // Single segment: the window is the content size (8-byte field, 1 GiB).
        let mut img = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
        img.extend_from_slice(&(1u64 << 30).to_le_bytes());
        img.extend_from_slice(&[0; 8]);
        assert_eq!(read(img).unwrap_err().code(), "guest.initramfs.zstd_window");
        // 128 MiB exactly is accepted by this check (the frame then fails as truncated).
        let img = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 17 << 3, 0, 0, 0, 0];
        assert_eq!(read(img).unwrap_err().code(), "guest.initramfs.corrupt");
    }

    #[test]
    fn mutated_headers_never_panic_and_stay_bounded() {
        // Every byte of the first two entry headers and names, set to a few hostile values,
        // uncompressed, gzip and xz: an error or a result, never a panic.
        let base = main_archive();
        let span = 400.min(base.len());
        for pos in 0..span {
            for v in [0u8, b'0', b'f', b'F', b'g', 0xff, b'7'] {
                let mut m = base.clone();
                m[pos] = v;
                let _ = read(m.clone());
                if pos % 7 == 0 {
                    let _ = read(gzip(&m));
                    let _ = read(xz(&m));
                }
            }
        }
        // A name size of ffffffff or a file size past the end: errors, not allocations.
        let mut m = base.clone();
        m[6 + 8 * 11..6 + 8 * 12].copy_from_slice(b"ffffffff");
        assert!(read(m).is_err());
        let mut m = base;
        m[6 + 8 * 6..6 + 8 * 7].copy_from_slice(b"7fffffff");
        assert!(read(m.clone()).is_err());
        assert!(read(xz(&m)).is_err());
    }

    #[test]
    fn every_truncation_is_an_error_or_a_prefix() {
        let mut img = early();
        img.extend_from_slice(&gzip(&main_archive()));
        for len in 0..img.len() {
            // Either an error, or the modules found are a subset of the whole.
            if let Ok(i) = read(img[..len].to_vec()) {
                assert!(i.modules.len() <= 3);
            }
        }
        let x = xz(&main_archive());
        for len in (0..x.len()).step_by(3) {
            let _ = read(x[..len].to_vec());
        }
    }

    #[test]
    fn module_names() {
        // Table: path → module name as modprobe would call it.
        for (path, want) in [
            ("a/b/hv_vmbus.ko", Some("hv_vmbus")),
            ("hv-storvsc.ko.zst", Some("hv_storvsc")),
            ("x.ko.gz", Some("x")),
            ("x.ko.bz2", None),
            ("x.kox", None),
            (".ko", None),
        ] {
            assert_eq!(module_name(path).as_deref(), want, "{path}");
        }
    }
}
