//! Windows registry hives (regf), read-only and from memory (`docs/guest-registry.md`).
//!
//! One file per structure: [`base_block`] (the `regf` header and its checksum), [`bins`]
//! (hive bins and the index of allocated cells), [`key`] (`nk` and the subkey lists),
//! [`value`] (`vk`, `db` and the data types), [`name`] (Latin-1/UTF-16 names and Windows'
//! case-insensitive comparison), [`log`] (replay of `.LOG1`/`.LOG2` in memory) and [`bcd`]
//! (the boot configuration store, itself a hive). This file ties them into [`Hive`].
//!
//! Nothing here reads a file system: callers hand over the bytes of the hive (and of its
//! logs). Every offset is checked against the cell index built when the hive is opened; the
//! hive is capped at [`MAX_HIVE_BYTES`]; subkey lists, value data and tree walks have caps
//! and cycle checks, so any input gives a value or an error, never a panic or a hang.

pub mod base_block;
pub mod bcd;
pub mod bins;
pub mod key;
pub mod log;
pub mod name;
pub mod value;

use std::collections::HashSet;

use crate::error::{Error, ErrorKind, Result};
use crate::io::ReadAt;
use base_block::{BaseBlock, BASE_BLOCK_BYTES};
use bins::CellIndex;
pub use key::Key;
pub use log::Replay;
pub use value::{Value, ValueData, ValueType};

/// The largest hive file read (base block + hive bins), also after replay: 128 MiB. Real
/// SYSTEM and SOFTWARE hives are 10–100 MiB; the cap keeps a hive, its cell index (1/64 of
/// it) and a log well inside vhdforge's 256 MiB budget.
pub const MAX_HIVE_BYTES: usize = 128 << 20;
/// The largest log file [`Hive::read`] loads: with a hive at its cap, two logs at theirs
/// and the cell index, the total stays under 200 MiB.
pub const MAX_LOG_BYTES: usize = 32 << 20;
/// Deepest key path walked ([`Hive::walk`]); Windows' own limit is 512 levels.
pub const MAX_DEPTH: usize = 512;

/// The error code of a structurally damaged hive.
pub const CODE_CORRUPT: &str = "guest.registry.corrupt";
/// The error code of a hive version or format vhdforge does not read.
pub const CODE_UNSUPPORTED: &str = "guest.registry.unsupported";
/// The error code of a hive over a size or count cap.
pub const CODE_LIMIT: &str = "guest.registry.limit";
/// The error code of a path that does not resolve (`CurrentControlSet` without `Select`).
pub const CODE_NOT_FOUND: &str = "guest.registry.not_found";
/// The finding code the Windows checks report for a dirty hive (`Hive::dirty`).
pub const CODE_HIVE_DIRTY: &str = "guest.windows.hive_dirty";

pub(crate) fn corrupt(offset: u64, message: impl std::fmt::Display) -> Error {
    Error::corrupt(CODE_CORRUPT, offset, format!("registry hive: {message}"))
}

pub(crate) fn unsupported(message: impl std::fmt::Display) -> Error {
    Error::unsupported(CODE_UNSUPPORTED, format!("registry hive: {message}"))
}

pub(crate) fn limit(message: impl std::fmt::Display) -> Error {
    Error::unsupported(CODE_LIMIT, format!("registry hive: {message}"))
}

fn too_big(what: &str, len: usize) -> Error {
    limit(format!(
        "{what} has {len} bytes, more than the {MAX_HIVE_BYTES} vhdforge reads"
    ))
}

/// The checked base block of a primary file and its first 512 bytes.
fn primary_base_block(primary: &[u8]) -> Result<(BaseBlock, Vec<u8>)> {
    let base = base_block::parse(primary, "the hive file")?;
    if base.file_type != base_block::FILE_TYPE_PRIMARY {
        return Err(corrupt(
            28,
            format!(
                "the file type is {}; a primary hive file has 0 (is this a .LOG file?)",
                base.file_type
            ),
        ));
    }
    Ok((base, primary[..base_block::LOG_HEADER_BYTES].to_vec()))
}

/// A log's copy of the base block, made a primary's (file type 0), if it is intact.
fn log_base_block(log: &[u8]) -> Option<(BaseBlock, Vec<u8>)> {
    let base = base_block::parse(log, "the log").ok()?;
    if !base.checksum_ok || base.file_type != base_block::FILE_TYPE_LOG_NEW {
        return None;
    }
    let mut header = log[..base_block::LOG_HEADER_BYTES].to_vec();
    header[28..32].copy_from_slice(&0u32.to_le_bytes());
    base_block::set_checksum(&mut header);
    let base = base_block::parse(&header, "the log").ok()?;
    Some((base, header))
}

/// Why a hive is dirty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirtyReason {
    /// The primary and secondary sequence numbers differ: a write did not complete.
    SequencesDiffer {
        /// Primary sequence number.
        primary: u32,
        /// Secondary sequence number.
        secondary: u32,
    },
    /// The base block checksum is wrong.
    BadChecksum,
}

/// A dirty hive: why, and what was done with its logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirty {
    /// Why the primary file is dirty.
    pub reason: DirtyReason,
    /// What became of the logs.
    pub replay: Replay,
}

/// An opened hive.
#[derive(Debug)]
pub struct Hive {
    /// The first 512 bytes of the base block (updated by a replay).
    header: Vec<u8>,
    /// The hive bins data: offset 0 here is file offset 4096.
    bins: Vec<u8>,
    cells: CellIndex,
    base: BaseBlock,
    dirty: Option<Dirty>,
}

impl Hive {
    /// Open a hive from the bytes of its primary file alone. A dirty hive opens (and
    /// [`Hive::dirty`] says so) but may show data older than Windows last saw.
    pub fn from_bytes(primary: &[u8]) -> Result<Hive> {
        Hive::with_logs(primary, &[])
    }

    /// Open a hive from its primary file and the bytes of its `.LOG1`/`.LOG2` (either order,
    /// empty for none). If the primary is dirty, new-format log entries are replayed in
    /// memory; a clean primary ignores its logs, as Windows does.
    pub fn with_logs(primary: &[u8], logs: &[&[u8]]) -> Result<Hive> {
        if primary.len() > MAX_HIVE_BYTES {
            return Err(too_big("the hive file", primary.len()));
        }
        Hive::from_vec(primary.to_vec(), logs)
    }

    /// [`Hive::with_logs`] on a primary file the caller hands over: its buffer becomes the
    /// hive's, so the hive is held once, not twice.
    pub fn from_vec(mut primary: Vec<u8>, logs: &[&[u8]]) -> Result<Hive> {
        if primary.len() > MAX_HIVE_BYTES {
            return Err(too_big("the hive file", primary.len()));
        }
        let (base, mut header, recovered) = match primary_base_block(&primary) {
            Ok((base, header)) => (base, header, false),
            // A damaged primary base block is recovered from a log's copy, as Windows does.
            Err(e) => match logs.iter().find_map(|l| log_base_block(l)) {
                Some((base, header)) => (base, header, true),
                None => return Err(e),
            },
        };
        let size = base.hive_bins_data_size as usize;
        let avail = primary.len().saturating_sub(BASE_BLOCK_BYTES);
        let reason = if recovered || !base.checksum_ok {
            Some(DirtyReason::BadChecksum)
        } else if base.sequences_differ() {
            Some(DirtyReason::SequencesDiffer {
                primary: base.primary_sequence,
                secondary: base.secondary_sequence,
            })
        } else {
            None
        };
        // A dirty hive may have been growing when it was cut short: the logs can supply the
        // rest, so only a clean one must hold every byte it declares.
        if size > avail && reason.is_none() {
            return Err(corrupt(
                40,
                format!(
                    "the base block declares {size} bytes of hive bins but the file holds {avail} after its base block; the file is truncated"
                ),
            ));
        }
        // The hive bins are the primary's buffer with the base block taken off the front.
        primary.drain(..BASE_BLOCK_BYTES.min(primary.len()));
        primary.truncate(size);
        let mut bins = primary;
        let dirty = reason.map(|reason| {
            let replay = log::replay(&base, &mut header, &mut bins, logs);
            Dirty { reason, replay }
        });
        let base = if matches!(
            dirty,
            Some(Dirty {
                replay: Replay::Replayed { .. },
                ..
            })
        ) {
            base_block::parse(&header, "the replayed hive")?
        } else {
            base
        };
        if bins.len() != base.hive_bins_data_size as usize {
            return Err(corrupt(
                40,
                format!(
                    "the base block declares {} bytes of hive bins but {} are present (a dirty hive without usable logs)",
                    base.hive_bins_data_size,
                    bins.len()
                ),
            ));
        }
        let cells = CellIndex::build(&bins)?;
        let hive = Hive {
            header,
            bins,
            cells,
            base,
            dirty,
        };
        let root = hive.root()?;
        if root.flags() & key::KEY_HIVE_ENTRY == 0 {
            return Err(corrupt(
                36,
                format!(
                    "the root cell at {:#x} lacks the hive-root flag 0x4 (flags {:#x})",
                    root.offset(),
                    root.flags()
                ),
            ));
        }
        Ok(hive)
    }

    /// Read a hive (at most [`MAX_HIVE_BYTES`]) and its logs (at most [`MAX_LOG_BYTES`] each)
    /// from positional sources.
    pub fn read(primary: &dyn ReadAt, logs: &[&dyn ReadAt]) -> Result<Hive> {
        let whole = |src: &dyn ReadAt, what: &str, cap: usize| -> Result<Vec<u8>> {
            let cap = cap as u64;
            if src.size() > cap {
                return Err(limit(format!(
                    "{what} `{}` has {} bytes, more than the {cap} vhdforge reads",
                    src.name(),
                    src.size()
                )));
            }
            crate::io::read_vec(src, 0, src.size(), cap)
                .map_err(|e| Error::io(format!("cannot read {what} `{}`", src.name()), e))
        };
        let primary = whole(primary, "the hive", MAX_HIVE_BYTES)?;
        let logs: Vec<Vec<u8>> = logs
            .iter()
            .map(|l| whole(*l, "the hive log", MAX_LOG_BYTES))
            .collect::<Result<_>>()?;
        let refs: Vec<&[u8]> = logs.iter().map(Vec::as_slice).collect();
        Hive::from_vec(primary, &refs)
    }

    /// The checked base block (after replay, if one happened).
    pub fn base_block(&self) -> &BaseBlock {
        &self.base
    }

    /// `Some` when the primary file was dirty (Windows did not finish writing it): report
    /// it as [`CODE_HIVE_DIRTY`]; [`Dirty::replay`] says whether the logs brought it up to date.
    pub fn dirty(&self) -> Option<&Dirty> {
        self.dirty.as_ref()
    }

    /// The hive as a file: its base block (sequence numbers and checksum updated after a
    /// replay, the rest of the 4096 bytes zero) followed by the hive bins. Lets another
    /// reader check what a replay produced.
    pub fn to_file_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; BASE_BLOCK_BYTES];
        out[..self.header.len()].copy_from_slice(&self.header);
        out[28..32].copy_from_slice(&0u32.to_le_bytes());
        base_block::set_checksum(&mut out);
        out.extend_from_slice(&self.bins);
        out
    }

    /// The data of the allocated cell at `offset`; `what` names the referrer in errors.
    pub(crate) fn cell(&self, offset: u32, what: &str) -> Result<&[u8]> {
        bins::cell(&self.bins, &self.cells, offset, what)
    }

    /// The root key.
    pub fn root(&self) -> Result<Key<'_>> {
        Key::at(self, self.base.root_cell_offset)
    }

    /// The key at `path` (`\`-separated, case-insensitive, relative to the root; empty
    /// components ignored), or `None`. A leading `CurrentControlSet` is resolved through
    /// `Select\Current` (the link itself exists only in a running system).
    pub fn key(&self, path: &str) -> Result<Option<Key<'_>>> {
        let mut parts: Vec<&str> = path.split('\\').filter(|p| !p.is_empty()).collect();
        if parts.len() > MAX_DEPTH {
            return Err(limit(format!(
                "the path has {} components, more than the {MAX_DEPTH} levels a hive can hold",
                parts.len()
            )));
        }
        let ccs;
        if parts
            .first()
            .is_some_and(|p| name::eq_ignore_case(p, "CurrentControlSet"))
        {
            ccs = self.current_control_set()?;
            parts[0] = &ccs;
        }
        let mut k = self.root()?;
        for p in parts {
            match k.subkey(p)? {
                Some(next) => k = next,
                None => return Ok(None),
            }
        }
        Ok(Some(k))
    }

    /// The value `name` of the key at `path`, or `None` if either is missing.
    pub fn value(&self, path: &str, name: &str) -> Result<Option<Value>> {
        match self.key(path)? {
            Some(k) => k.value(name),
            None => Ok(None),
        }
    }

    /// The name of the current control set of a SYSTEM hive (`ControlSet001`), from the
    /// DWORD `Select\Current`.
    pub fn current_control_set(&self) -> Result<String> {
        let not_found = |what: String| {
            Error::new(
                ErrorKind::Corrupt,
                CODE_NOT_FOUND,
                format!("registry hive: {what}; `CurrentControlSet` cannot be resolved (is this a SYSTEM hive?)"),
            )
        };
        let Some(v) = self.value("Select", "Current")? else {
            return Err(not_found("there is no `Select\\Current` value".into()));
        };
        let Some(n) = v.as_dword() else {
            return Err(not_found(format!(
                "`Select\\Current` is {} of {} bytes, not a DWORD",
                v.value_type(),
                v.raw().len()
            )));
        };
        let name = format!("ControlSet{n:03}");
        if self.root()?.subkey(&name)?.is_none() {
            return Err(not_found(format!(
                "`Select\\Current` is {n} but there is no `{name}` key"
            )));
        }
        Ok(name)
    }

    /// Visit every key depth-first, parents before children, with its path from the root
    /// (the root's path is empty). Every key node is visited once: a key listed twice (which
    /// includes every cycle, and the repeated subtrees that would make a walk exponential) is
    /// an error, as is a path deeper than [`MAX_DEPTH`].
    pub fn walk(&self, visit: &mut dyn FnMut(&str, &Key<'_>) -> Result<()>) -> Result<()> {
        let root = self.root()?;
        let mut seen = HashSet::from([root.offset()]);
        visit("", &root)?;
        let mut pending = 0;
        walk_below(&root, "", 1, &mut seen, &mut pending, visit)
    }
}

/// Subkey offsets a walk may hold at once, over all the levels it is in: each key is listed
/// once in a sound hive, so this exceeds the keys a 128 MiB hive can hold (80 bytes each)
/// only when lists repeat entries to make a walk hoard memory (16 MiB here).
const MAX_PENDING: usize = 4 << 20;

/// The walk below `k` (see [`Hive::walk`]); `pending` counts the subkey offsets held by the
/// levels above.
fn walk_below(
    k: &Key<'_>,
    path: &str,
    depth: usize,
    seen: &mut HashSet<u32>,
    pending: &mut usize,
    visit: &mut dyn FnMut(&str, &Key<'_>) -> Result<()>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(limit(format!(
            "keys below `{path}` are nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let children = k.subkey_offsets()?;
    *pending += children.len();
    if *pending > MAX_PENDING {
        return Err(limit(format!(
            "the keys on the way to `{path}` list more than {MAX_PENDING} subkeys together; the lists repeat entries"
        )));
    }
    for offset in children.iter().copied() {
        if !seen.insert(offset) {
            return Err(corrupt(
                bins::file_offset(offset as usize),
                format!(
                    "the key at {offset:#x} is listed more than once (below `{path}`): the tree has a cycle or a shared subtree"
                ),
            ));
        }
        let child = Key::at(k.hive(), offset)?;
        let child_path = if path.is_empty() {
            child.name().to_string()
        } else {
            format!("{path}\\{}", child.name())
        };
        visit(&child_path, &child)?;
        walk_below(&child, &child_path, depth + 1, seen, pending, visit)?;
    }
    *pending -= children.len();
    Ok(())
}
