//! NTFS, read-only, written for vhdforge (`docs/guest-filesystems.md` §6). One file per
//! on-disk structure: [`boot`] (geometry, `BitLocker`), [`record`] (fixups, FILE records,
//! attributes, runlists), [`stream`] (an attribute's content, streamed), [`index`]
//! (directory B+-trees). This file bootstraps the MFT, gathers a file's attributes across
//! its extension records, and ties everything to the [`FileSystem`] trait.
//!
//! Every address comes from the disk, so each is checked before it is read; no allocation
//! is sized by a disk field without a cap; compressed, EFS-encrypted and WOF-compressed
//! files are refused by name rather than read as their raw (meaningless) clusters.

mod boot;
mod index;
mod record;
mod stream;

use std::cmp::Ordering;
use std::sync::Mutex;

use super::volume::{ReadRange, Volume};
use super::{
    not_found, show, DirEntry, FileId, FileReader, FileSystem, FileType, FsKind, Stat, Timestamp,
    MAX_PATH_BYTES,
};
use crate::error::{Error, ErrorKind, Result};
use crate::io::usize_from;
use boot::Geometry;
use index::{Entry, Index, FN_DIRECTORY, FN_REPARSE, NAMESPACE_DOS};
use record::{
    fixup, u16_at, u32_at, u64_at, Attr, Record, AT_ATTRIBUTE_LIST, AT_DATA, AT_INDEX_ALLOCATION,
    AT_INDEX_ROOT, AT_REPARSE_POINT, AT_STANDARD_INFORMATION, AT_VOLUME_NAME, REC_DIRECTORY,
    REC_IN_USE,
};
use stream::Stream;

pub use boot::{bitlocker, ENCRYPTED};

pub(crate) fn corrupt(message: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        "guest.fs.ntfs_corrupt",
        format!("NTFS: {message}"),
    )
}

pub(crate) fn unsupported(message: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "guest.fs.ntfs_unsupported",
        format!("NTFS: {message}"),
    )
}

/// Record numbers of the metadata files used.
const MFT_RECORD: u64 = 0;
const UPCASE_RECORD: u64 = 10;
/// `$Volume`: the label and the volume's version and flags.
const VOLUME_RECORD: u64 = 3;
/// Windows limits a label to 32 UTF-16 units; anything longer is damage.
const MAX_LABEL_UNITS: usize = 32;
const ROOT_RECORD: u64 = 5;
/// Records below this are the volume's own metadata ($MFT … $Extend and reserved ones):
/// not listed, as ntfs-3g and the kernel do not list them.
const FIRST_USER_RECORD: u64 = 16;
/// An attribute list holds one 32-byte entry per extent; ntfs-3g caps it at 256 KiB.
const MAX_ATTR_LIST: u64 = 0x40000;
/// Extension records one file may have (a 256 KiB list names at most 8192).
const MAX_EXTENSIONS: usize = 8192;
/// `$UpCase`: one u16 per UTF-16 unit.
const UPCASE_BYTES: u64 = 65536 * 2;
/// Largest reparse point (the format's limit is 16 KiB).
const MAX_REPARSE: u64 = 16 << 10;

const REPARSE_SYMLINK: u32 = 0xA000_000C;
const REPARSE_JUNCTION: u32 = 0xA000_0003;
const REPARSE_WOF: u32 = 0x8000_0017;
/// `$STANDARD_INFORMATION` file attributes.
const FILE_READONLY: u32 = 0x1;

/// Directories the lookup cache remembers (a path and a reference each).
const DIR_CACHE: usize = 64;

const I30: [u16; 4] = [0x24, 0x49, 0x33, 0x30];

/// A file's base record and every attribute from it and its extension records.
struct Inode {
    number: u64,
    flags: u16,
    attrs: Vec<Attr>,
}

impl Inode {
    fn stream(&self, ty: u32, name: &[u16]) -> Result<Option<Stream>> {
        Stream::from_attrs(
            self.attrs
                .iter()
                .filter(|a| a.ty == ty && a.name == name)
                .collect(),
        )
    }

    fn resident(&self, ty: u32, name: &[u16]) -> Option<&[u8]> {
        self.attrs.iter().find_map(|a| match &a.body {
            record::Body::Resident(v) if a.ty == ty && a.name == name => Some(v.as_slice()),
            _ => None,
        })
    }
}

/// An opened NTFS volume.
pub struct NtfsFs {
    vol: Volume,
    geo: Geometry,
    mft: Stream,
    upcase: Vec<u16>,
    /// Recently resolved directories, path → file reference, most recent last: the generic
    /// path walk stats every prefix of a path, so without it a lookup would start again
    /// from the root for each one.
    dirs: Mutex<Vec<(Vec<u8>, u64)>>,
}

impl std::fmt::Debug for NtfsFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NtfsFs({}-byte clusters, {}-byte records, {:?})",
            self.geo.cluster, self.geo.record, self.vol
        )
    }
}

impl NtfsFs {
    /// Read the boot sector, the MFT's own record (and its extents when the MFT is
    /// fragmented enough to need an attribute list), `$UpCase` and the root directory.
    pub fn open(volume: Volume) -> Result<NtfsFs> {
        let mut sector = vec![0u8; 512];
        if volume.len() < 512 {
            return Err(corrupt("the volume is smaller than one boot sector"));
        }
        volume.read_at(&mut sector, 0)?;
        let geo = boot::parse(&sector, volume.len())?;
        // Record 0 straight from the boot sector's LCN; through it, the rest of the MFT.
        let (at, _) = geo.cluster_bytes(geo.mft_lcn, geo.record.div_ceil(geo.cluster))?;
        let mut buf = vec![0u8; usize_from(geo.record)];
        volume.read_at(&mut buf, at)?;
        fixup(&mut buf, *b"FILE", &|| {
            "the MFT's own record (record 0)".into()
        })?;
        let rec0 = record::parse_record(&buf, MFT_RECORD, geo.total_clusters)?;
        let base = Inode {
            number: MFT_RECORD,
            flags: rec0.flags,
            attrs: rec0.attrs.clone(),
        };
        let first = base
            .stream(AT_DATA, &[])
            .and_then(|s| s.ok_or_else(|| corrupt("the MFT's record has no $DATA")))?;
        let mut fs = NtfsFs {
            vol: volume,
            geo,
            mft: first,
            upcase: Vec::new(),
            dirs: Mutex::new(Vec::new()),
        };
        if fs.mft.is_compressed() || fs.mft.is_encrypted() || fs.mft.size < 16 * geo.record {
            return Err(corrupt(format!(
                "the MFT's $DATA is compressed, encrypted or too small ({} bytes)",
                fs.mft.size
            )));
        }
        // A fragmented MFT: the rest of its extents are in records the first extent maps.
        let full = fs.gather(MFT_RECORD, rec0)?;
        fs.mft = full
            .stream(AT_DATA, &[])?
            .ok_or_else(|| corrupt("the MFT's record has no $DATA"))?;
        let mapped = fs.mft.mapped_bytes(geo.cluster);
        if fs.mft.size > mapped {
            return Err(corrupt(format!(
                "the MFT is {} bytes but its runs map only {mapped}",
                fs.mft.size
            )));
        }
        let up = fs.inode(UPCASE_RECORD, None)?;
        let table = up
            .stream(AT_DATA, &[])?
            .ok_or_else(|| corrupt("$UpCase (record 10) has no data"))?
            .read_all(&fs, UPCASE_BYTES, "$UpCase")?;
        // Units past a short table map to themselves.
        fs.upcase = (0..=u16::MAX).collect();
        for (i, c) in table.chunks_exact(2).enumerate() {
            fs.upcase[i] = u16::from_le_bytes([c[0], c[1]]);
        }
        let root = fs.inode(ROOT_RECORD, None)?;
        if root.flags & REC_DIRECTORY == 0 {
            return Err(corrupt("the root directory (record 5) is not a directory"));
        }
        Ok(fs)
    }

    /// The volume label: `$Volume`'s `$VOLUME_NAME` attribute (NTFS keeps it there, not in
    /// the boot sector), `None` when it is empty or absent.
    pub fn label(&self) -> Result<Option<String>> {
        let inode = self.inode(VOLUME_RECORD, None)?;
        let Some(raw) = inode.resident(AT_VOLUME_NAME, &[]) else {
            return Ok(None);
        };
        let units: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        if units.len() > MAX_LABEL_UNITS {
            return Err(corrupt(format!(
                "the volume label ($Volume's $VOLUME_NAME) has {} UTF-16 units; Windows allows at most {MAX_LABEL_UNITS}",
                units.len()
            )));
        }
        let label = String::from_utf16_lossy(&units);
        Ok(Some(label).filter(|l| !l.is_empty()))
    }

    /// Compare two names as the volume's indexes do: upcased, unit by unit, shorter first.
    fn collate(&self, a: &[u16], b: &[u16]) -> Ordering {
        let up = |c: u16| self.upcase[usize::from(c)];
        a.iter().map(|&c| up(c)).cmp(b.iter().map(|&c| up(c)))
    }

    /// Read, fix up and parse FILE record `n`.
    fn record(&self, n: u64) -> Result<Record> {
        let rec = self.geo.record;
        let at = n
            .checked_mul(rec)
            .filter(|&a| a + rec <= self.mft.size)
            .ok_or_else(|| {
                corrupt(format!(
                    "record {n} lies past the end of the {}-byte MFT",
                    self.mft.size
                ))
            })?;
        let mut buf = vec![0u8; usize_from(rec)];
        self.mft.read_at(self, at, &mut buf)?;
        fixup(&mut buf, *b"FILE", &|| format!("FILE record {n}"))?;
        // NTFS 3.1 records state their own number; a mismatch means a misplaced record.
        if u16_at(&buf, 4) >= 0x30 && u64::from(u32_at(&buf, 44)) != n & 0xFFFF_FFFF {
            return Err(corrupt(format!(
                "FILE record {n} says it is record {}",
                u32_at(&buf, 44)
            )));
        }
        record::parse_record(&buf, n, self.geo.total_clusters)
    }

    /// The file with record `n` (and sequence number `seq`, when the reference has one).
    fn inode(&self, n: u64, seq: Option<u16>) -> Result<Inode> {
        let rec = self.record(n)?;
        if rec.flags & REC_IN_USE == 0 {
            return Err(corrupt(format!("record {n} is referenced but not in use")));
        }
        if rec.base != 0 {
            return Err(corrupt(format!(
                "record {n} is referenced as a file but is an extension of record {}",
                rec.base & 0xFFFF_FFFF_FFFF
            )));
        }
        if let Some(s) = seq.filter(|&s| s != 0) {
            if s != rec.sequence {
                return Err(corrupt(format!(
                    "a stale reference to record {n}: sequence {s}, the record has {}",
                    rec.sequence
                )));
            }
        }
        self.gather(n, rec)
    }

    /// Add the attributes of the extension records that `base`'s attribute list names.
    fn gather(&self, n: u64, base: Record) -> Result<Inode> {
        let mut inode = Inode {
            number: n,
            flags: base.flags,
            attrs: base.attrs,
        };
        let Some(list) = inode.stream(AT_ATTRIBUTE_LIST, &[])? else {
            return Ok(inode);
        };
        let list = list.read_all(self, MAX_ATTR_LIST, "an attribute list")?;
        let mut extensions: Vec<u64> = Vec::new();
        let mut at = 0usize;
        while at + 26 <= list.len() {
            let len = usize::from(u16_at(&list, at + 4));
            if len < 26 || at + len > list.len() {
                return Err(corrupt(format!(
                    "record {n}'s attribute list has an entry of {len} bytes at {at}"
                )));
            }
            let holder = u64_at(&list, at + 16) & 0xFFFF_FFFF_FFFF;
            if holder != n && !extensions.contains(&holder) {
                if extensions.len() >= MAX_EXTENSIONS {
                    return Err(corrupt(format!(
                        "record {n} has more than {MAX_EXTENSIONS} extension records"
                    )));
                }
                extensions.push(holder);
            }
            at += len.next_multiple_of(8);
        }
        for x in extensions {
            let rec = self.record(x)?;
            if rec.flags & REC_IN_USE == 0 || rec.base & 0xFFFF_FFFF_FFFF != n {
                return Err(corrupt(format!(
                    "record {n}'s attribute list names record {x}, which is not its extension"
                )));
            }
            inode.attrs.extend(rec.attrs);
        }
        Ok(inode)
    }

    fn index(&self, dir: &Inode) -> Result<Index<'_>> {
        let root = dir
            .resident(AT_INDEX_ROOT, &I30)
            .ok_or_else(|| {
                corrupt(format!(
                    "directory record {} has no $I30 index root",
                    dir.number
                ))
            })?
            .to_vec();
        let alloc = dir.stream(AT_INDEX_ALLOCATION, &I30)?;
        Index::new(self, root, alloc)
    }

    /// The file at a resolved absolute path.
    fn lookup(&self, path: &[u8]) -> Result<Inode> {
        // Start from the deepest cached directory that is a prefix of the path.
        let (mut at, mut cur) = {
            let cache = self
                .dirs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            cache
                .iter()
                .filter(|(p, _)| {
                    path.starts_with(p) && (path.len() == p.len() || path[p.len()] == b'/')
                })
                .max_by_key(|(p, _)| p.len())
                .map_or((0, None), |(p, r)| (p.len(), Some(*r)))
        };
        let mut inode = match cur.take() {
            Some(r) => self.inode_ref(r)?,
            None => self.inode(ROOT_RECORD, None)?,
        };
        while at < path.len() {
            let rest = &path[at..];
            let skip = rest.iter().take_while(|&&b| b == b'/').count();
            let len = rest[skip..].iter().take_while(|&&b| b != b'/').count();
            if len == 0 {
                break;
            }
            let comp = &rest[skip..skip + len];
            at += skip + len;
            if inode.flags & REC_DIRECTORY == 0 {
                return Err(not_found(path));
            }
            let name = wtf8_to_utf16(comp).ok_or_else(|| not_found(path))?;
            let entry = self
                .index(&inode)?
                .lookup(&name)?
                .ok_or_else(|| not_found(path))?;
            inode = self.inode_ref(entry.file_ref)?;
            if inode.flags & REC_DIRECTORY != 0 {
                let mut cache = self
                    .dirs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if cache.len() >= DIR_CACHE {
                    cache.remove(0);
                }
                cache.push((path[..at].to_vec(), entry.file_ref));
            }
        }
        Ok(inode)
    }

    /// The file a 64-bit file reference (record number, sequence number) names.
    fn inode_ref(&self, file_ref: u64) -> Result<Inode> {
        let seq = u16::try_from(file_ref >> 48).unwrap_or(0);
        self.inode(file_ref & 0xFFFF_FFFF_FFFF, Some(seq))
    }

    /// The symlink or junction target of a reparse point, as a path on this volume; `None`
    /// for other reparse points.
    fn link_target(&self, inode: &Inode) -> Result<Option<(u32, Vec<u8>)>> {
        let Some(s) = inode.stream(AT_REPARSE_POINT, &[])? else {
            return Ok(None);
        };
        let v = s.read_all(self, MAX_REPARSE, "a reparse point")?;
        let tag = u32_at(&v, 0);
        let (buf_at, relative) = match tag {
            REPARSE_SYMLINK => (20, u32_at(&v, 16) & 1 != 0),
            REPARSE_JUNCTION => (16, false),
            _ => return Ok(Some((tag, Vec::new()))),
        };
        let (off, len) = (usize::from(u16_at(&v, 8)), usize::from(u16_at(&v, 10)));
        let units: Vec<u16> = v
            .get(buf_at + off..buf_at + off + len)
            .ok_or_else(|| {
                corrupt(format!(
                    "record {}'s link target lies outside its reparse point",
                    inode.number
                ))
            })?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let mut t = utf16_to_wtf8(&units);
        if !relative {
            // `\??\C:\dir\file`: the drive letter is unknown offline; the path is taken
            // as on this volume (a system disk is its own C:).
            if t.starts_with(b"\\??\\") {
                t.drain(..4);
            }
            if t.len() >= 2 && t[0].is_ascii_alphabetic() && t[1] == b':' {
                t.drain(..2);
            }
        }
        let mut t: Vec<u8> = t
            .into_iter()
            .map(|b| if b == b'\\' { b'/' } else { b })
            .collect();
        if !relative && t.first() != Some(&b'/') {
            t.insert(0, b'/');
        }
        if t.len() > MAX_PATH_BYTES {
            return Err(corrupt(format!("a link target of {} bytes", t.len())));
        }
        Ok(Some((tag, t)))
    }

    fn stat_inode(&self, inode: &Inode) -> Result<Stat> {
        let si = inode
            .resident(AT_STANDARD_INFORMATION, &[])
            .filter(|v| v.len() >= 48)
            .ok_or_else(|| {
                corrupt(format!(
                    "record {} has no $STANDARD_INFORMATION",
                    inode.number
                ))
            })?;
        let mtime = filetime(u64_at(si, 8));
        let readonly = u32_at(si, 32) & FILE_READONLY != 0;
        let link = self.link_target(inode)?;
        if let Some((REPARSE_SYMLINK | REPARSE_JUNCTION, target)) = link {
            return Ok(Stat {
                file_type: FileType::Symlink,
                mode: 0o777,
                uid: 0,
                gid: 0,
                size: target.len() as u64,
                mtime,
                link_target: Some(target),
            });
        }
        let (file_type, mode, size) = if inode.flags & REC_DIRECTORY != 0 {
            (FileType::Directory, 0o755, 0)
        } else {
            let size = inode.stream(AT_DATA, &[])?.map_or(0, |s| s.size);
            (
                FileType::Regular,
                if readonly { 0o444 } else { 0o644 },
                size,
            )
        };
        Ok(Stat {
            file_type,
            mode,
            uid: 0,
            gid: 0,
            size,
            mtime,
            link_target: None,
        })
    }
}

/// FILETIME (100 ns since 1601) to Unix time.
fn filetime(ft: u64) -> Timestamp {
    const EPOCH_DIFF: i64 = 11_644_473_600;
    let secs = i64::try_from(ft / 10_000_000).unwrap_or(i64::MAX);
    Timestamp {
        seconds: secs - EPOCH_DIFF,
        nanoseconds: u32::try_from(ft % 10_000_000).unwrap_or(0) * 100,
    }
}

/// UTF-16 (unpaired surrogates allowed) to WTF-8, so every NTFS name has a byte form that
/// converts back to the same units.
pub(crate) fn utf16_to_wtf8(units: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(units.len());
    for r in char::decode_utf16(units.iter().copied()) {
        match r {
            Ok(c) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            Err(e) => {
                let u = e.unpaired_surrogate();
                out.extend_from_slice(&[
                    0xE0 | (u >> 12) as u8,
                    0x80 | ((u >> 6) & 0x3F) as u8,
                    0x80 | (u & 0x3F) as u8,
                ]);
            }
        }
    }
    out
}

/// The inverse of [`utf16_to_wtf8`]; `None` for bytes no NTFS name converts to.
pub(crate) fn wtf8_to_utf16(bytes: &[u8]) -> Option<Vec<u16>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let lead = bytes[at];
        let (bits, len) = match lead {
            0x00..=0x7F => (u32::from(lead), 1),
            0xC2..=0xDF => (u32::from(lead & 0x1F), 2),
            0xE0..=0xEF => (u32::from(lead & 0x0F), 3),
            0xF0..=0xF4 => (u32::from(lead & 0x07), 4),
            _ => return None,
        };
        let mut cp = bits;
        for &cont in bytes.get(at + 1..at + len)? {
            if cont & 0xC0 != 0x80 {
                return None;
            }
            cp = (cp << 6) | u32::from(cont & 0x3F);
        }
        let min = [0, 0, 0x80, 0x800, 0x1_0000][len];
        if cp < min || cp > 0x10_FFFF {
            return None;
        }
        if let Ok(unit) = u16::try_from(cp) {
            out.push(unit);
        } else {
            let c = char::from_u32(cp)?;
            out.extend_from_slice(c.encode_utf16(&mut [0; 2]));
        }
        at += len;
    }
    Some(out)
}

fn entry_type(e: &Entry) -> FileType {
    if e.fn_flags & FN_REPARSE != 0 && matches!(e.reparse_tag, REPARSE_SYMLINK | REPARSE_JUNCTION) {
        FileType::Symlink
    } else if e.fn_flags & FN_DIRECTORY != 0 {
        FileType::Directory
    } else {
        FileType::Regular
    }
}

impl FileSystem for NtfsFs {
    fn kind(&self) -> FsKind {
        FsKind::Ntfs
    }

    fn stat_resolved(&self, path: &[u8]) -> Result<Stat> {
        let inode = self.lookup(path)?;
        self.stat_inode(&inode)
    }

    fn list_resolved(&self, path: &[u8], f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        let dir = self.lookup(path)?;
        if dir.flags & REC_DIRECTORY == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "guest.fs.not_a_directory",
                format!("{} is not a directory", show(path)),
            ));
        }
        let me = dir.number;
        self.index(&dir)?.walk(&mut |e| {
            let rec = e.file_ref & 0xFFFF_FFFF_FFFF;
            if e.namespace == NAMESPACE_DOS || rec == me || rec < FIRST_USER_RECORD {
                return true;
            }
            f(DirEntry {
                file_type: entry_type(&e),
                name: utf16_to_wtf8(&e.name),
            })
        })
    }

    /// Each entry's record is read by the reference in the index entry, not by walking the
    /// child's path again.
    fn list_stat_resolved(
        &self,
        path: &[u8],
        f: &mut dyn FnMut(&[u8], Result<Stat>) -> bool,
    ) -> Result<()> {
        let dir = self.lookup(path)?;
        if dir.flags & REC_DIRECTORY == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "guest.fs.not_a_directory",
                format!("{} is not a directory", show(path)),
            ));
        }
        let me = dir.number;
        self.index(&dir)?.walk(&mut |e| {
            let rec = e.file_ref & 0xFFFF_FFFF_FFFF;
            if e.namespace == NAMESPACE_DOS || rec == me || rec < FIRST_USER_RECORD {
                return true;
            }
            let st = self.inode_ref(e.file_ref).and_then(|i| self.stat_inode(&i));
            f(&utf16_to_wtf8(&e.name), st)
        })
    }

    /// The MFT record number (hard links share it).
    fn file_id_resolved(&self, path: &[u8]) -> Result<Option<FileId>> {
        Ok(Some(FileId {
            volume: 0,
            number: self.lookup(path)?.number,
        }))
    }

    fn open_resolved(&self, path: &[u8]) -> Result<Box<dyn FileReader + '_>> {
        let inode = self.lookup(path)?;
        if inode.flags & REC_DIRECTORY != 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "guest.fs.wrong_type",
                format!("{} is a directory, not a file", show(path)),
            ));
        }
        if let Some((tag, _)) = self.link_target(&inode)? {
            // WOF (Compact OS), deduplication, cloud files: the unnamed stream is not the
            // content (it reads as zeros), so it is not read as if it were.
            let what = if tag == REPARSE_WOF {
                "compressed by Windows (Compact OS / WOF); its content is in a stream vhdforge does not decode".to_string()
            } else {
                format!("a reparse point (tag {tag:#010x}) whose content is stored elsewhere")
            };
            return Err(Error::new(
                ErrorKind::Unsupported,
                "guest.fs.ntfs_compressed",
                format!("NTFS: {} is {what}", show(path)),
            ));
        }
        let stream = inode.stream(AT_DATA, &[])?.unwrap_or_else(Stream::empty);
        if stream.is_encrypted() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                ENCRYPTED,
                format!(
                    "NTFS: {} is encrypted with EFS; it cannot be read without the user's key",
                    show(path)
                ),
            ));
        }
        if stream.is_compressed() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "guest.fs.ntfs_compressed",
                format!("NTFS: {} is NTFS-compressed (LZNT1), which vhdforge does not decompress; its size is {} bytes. Uncompress it inside the guest (`compact /u`) to read it", show(path), stream.size),
            ));
        }
        Ok(Box::new(NtfsFile {
            fs: self,
            stream,
            pos: 0,
        }))
    }
}

/// An open regular file: its runs, and a position.
struct NtfsFile<'a> {
    fs: &'a NtfsFs,
    stream: Stream,
    pos: u64,
}

impl FileReader for NtfsFile<'_> {
    fn size(&self) -> u64 {
        self.stream.size
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let left = self.stream.size.saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        self.stream.read_at(self.fs, self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn seek(&mut self, offset: u64) -> Result<()> {
        if offset > self.stream.size {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "guest.fs.bad_seek",
                format!(
                    "seek to {offset} past the end of a {}-byte file",
                    self.stream.size
                ),
            ));
        }
        self.pos = offset;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_including_unpaired_surrogates() {
        let units = [0x61, 0xD800, 0x62, 0xD83E, 0xDD80, 0xDC00];
        let b = utf16_to_wtf8(&units);
        assert_eq!(wtf8_to_utf16(&b).unwrap(), units);
        assert_eq!(
            wtf8_to_utf16("héllo 🦀".as_bytes()).unwrap(),
            "héllo 🦀".encode_utf16().collect::<Vec<_>>()
        );
        assert!(wtf8_to_utf16(&[0xC0, 0x80]).is_none(), "overlong");
        assert!(wtf8_to_utf16(&[0xE2, 0x82]).is_none(), "cut off");
    }

    fn nonresident(
        lowest: u64,
        highest: u64,
        runs: Vec<record::Run>,
        size: u64,
        init: u64,
    ) -> Attr {
        Attr {
            ty: AT_DATA,
            name: Vec::new(),
            flags: 0,
            body: record::Body::NonResident(record::NonResident {
                lowest_vcn: lowest,
                highest_vcn: highest,
                runs,
                compression_unit: 0,
                data_size: size,
                initialized_size: init,
            }),
        }
    }

    /// Extents from several records (an attribute list) join in VCN order whatever order
    /// they are found in; sparse runs and bytes past the initialized size read as zeros;
    /// a gap between extents is an error, not zeros.
    #[test]
    fn extents_join_and_read_with_holes() {
        let data: Vec<u8> = (0..64 * 512u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let image: std::sync::Arc<dyn crate::DiskImage> =
            std::sync::Arc::from(crate::open_bytes(data.clone()).unwrap());
        let run = |vcn, len, lcn| record::Run { vcn, len, lcn };
        let fs = NtfsFs {
            vol: Volume::whole(image),
            geo: Geometry {
                cluster: 512,
                total_clusters: 64,
                mft_lcn: 0,
                record: 1024,
            },
            mft: Stream::empty(),
            upcase: Vec::new(),
            dirs: Mutex::new(Vec::new()),
        };
        let a = nonresident(0, 3, vec![run(0, 2, Some(10)), run(2, 2, None)], 3000, 2500);
        let b = nonresident(4, 5, vec![run(4, 2, Some(20))], 0, 0);
        let s = Stream::from_attrs(vec![&b, &a]).unwrap().unwrap();
        let mut got = vec![0xEEu8; 3000];
        s.read_at(&fs, 0, &mut got).unwrap();
        let mut want = vec![0u8; 3000];
        want[..1024].copy_from_slice(&data[5120..6144]);
        want[2048..2500].copy_from_slice(&data[10240..10240 + 452]);
        assert_eq!(got, want);
        let mut one = [0u8; 1];
        assert!(s.read_at(&fs, 3000, &mut one).is_err(), "past the size");
        let gap = nonresident(5, 5, vec![run(5, 1, Some(20))], 0, 0);
        assert!(Stream::from_attrs(vec![&a, &gap]).is_err());
    }

    /// A run whose VCN times the cluster size passes 2^64 is an error, not an overflow.
    #[test]
    fn far_runs_do_not_overflow() {
        let image: std::sync::Arc<dyn crate::DiskImage> =
            std::sync::Arc::from(crate::open_bytes(vec![0u8; 64 * 4096]).unwrap());
        let fs = NtfsFs {
            vol: Volume::whole(image),
            geo: Geometry {
                cluster: 4096,
                total_clusters: 64,
                mft_lcn: 0,
                record: 1024,
            },
            mft: Stream::empty(),
            upcase: Vec::new(),
            dirs: Mutex::new(Vec::new()),
        };
        let far = (1u64 << 61) - 1;
        let run = record::Run {
            vcn: 0,
            len: far,
            lcn: None,
        };
        let a = nonresident(0, far - 1, vec![run], u64::MAX, u64::MAX);
        let s = Stream::from_attrs(vec![&a]).unwrap().unwrap();
        let mut b = [0u8; 16];
        assert!(s.read_at(&fs, u64::MAX - 100, &mut b).is_err());
    }

    #[test]
    fn filetime_epoch() {
        assert_eq!(
            filetime(116_444_736_000_000_000),
            Timestamp {
                seconds: 0,
                nanoseconds: 0
            }
        );
        assert_eq!(filetime(116_444_736_000_000_015).nanoseconds, 1500);
    }
}
