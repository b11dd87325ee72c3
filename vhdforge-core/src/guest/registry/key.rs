//! Key nodes (`nk`) and subkey lists (`lf`, `lh`, `li`, `ri`), `docs/guest-registry.md` §4–§5.

use std::collections::HashSet;

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::bins::{file_offset, NONE};
use super::value::Value;
use super::{corrupt, limit, name, Hive};
use crate::error::Result;

/// `nk`.
pub const KEY_SIGNATURE: [u8; 2] = *b"nk";
/// Key flag: the name is 8-bit Latin-1, not UTF-16LE.
pub const KEY_COMP_NAME: u16 = 0x0020;
/// Key flag: the hive's root key.
pub const KEY_HIVE_ENTRY: u16 = 0x0004;
/// Subkeys one key may list: the largest real keys (Installer components, COM classes) hold
/// some 100 000; the cap keeps [`Key::subkeys`] of a hostile list under about 40 MiB
/// (some 150 bytes per key).
pub const MAX_SUBKEYS: usize = 1 << 18;
/// Values one key may hold (real keys: a few thousand at most).
pub const MAX_VALUES: usize = 1 << 18;
/// Value data [`Key::values`] returns at once.
pub const MAX_VALUES_BYTES: usize = 64 << 20;

/// A key node cell as laid out on disk (after the cell size).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawKeyNode {
    /// `nk`.
    pub signature: [u8; 2],
    /// 0x1 volatile, 0x2 hive exit, 0x4 hive root, 0x8 no delete, 0x10 symbolic link,
    /// 0x20 8-bit name, 0x40 predefined handle.
    pub flags: U16,
    /// FILETIME of the last write.
    pub last_written: [u8; 8],
    /// Access bits (Windows 8+).
    pub access_bits: U32,
    /// Parent key cell (the root points anywhere).
    pub parent: U32,
    /// Stable subkeys.
    pub subkey_count: U32,
    /// Volatile subkeys (meaningless on disk).
    pub volatile_subkey_count: U32,
    /// Stable subkey list cell, or 0xFFFFFFFF.
    pub subkey_list: U32,
    /// Volatile subkey list (meaningless on disk).
    pub volatile_subkey_list: U32,
    /// Values.
    pub value_count: U32,
    /// Value list cell (`value_count` offsets), or 0xFFFFFFFF.
    pub value_list: U32,
    /// Security descriptor (`sk`) cell.
    pub security: U32,
    /// Class name cell, or 0xFFFFFFFF.
    pub class_name: U32,
    /// Longest subkey name in bytes (bits 16–31: virtualization and debug flags).
    pub max_subkey_name: U32,
    /// Longest subkey class name.
    pub max_subkey_class: U32,
    /// Longest value name.
    pub max_value_name: U32,
    /// Largest value data.
    pub max_value_data: U32,
    /// Runtime scratch field.
    pub work_var: U32,
    /// Bytes of the name.
    pub name_length: U16,
    /// Bytes of the class name.
    pub class_length: U16,
}

const _: () = assert!(size_of::<RawKeyNode>() == 76);

/// One registry key.
#[derive(Debug, Clone)]
pub struct Key<'h> {
    hive: &'h Hive,
    offset: u32,
    node: RawKeyNode,
    name: String,
}

impl<'h> Key<'h> {
    /// Read and check the `nk` cell at `offset`.
    pub(super) fn at(hive: &'h Hive, offset: u32) -> Result<Key<'h>> {
        let cell = hive.cell(offset, "a key reference")?;
        let (node, rest) = RawKeyNode::read_from_prefix(cell).map_err(|_| {
            corrupt(
                file_offset(offset as usize),
                format!(
                    "the key cell at {offset:#x} holds {} bytes, fewer than the 76 of a key node",
                    cell.len()
                ),
            )
        })?;
        if node.signature != KEY_SIGNATURE {
            return Err(corrupt(
                file_offset(offset as usize),
                format!(
                    "expected a key node (`nk`) at {offset:#x}, found {:02x?}",
                    node.signature
                ),
            ));
        }
        let len = usize::from(node.name_length.get());
        let Some(raw_name) = rest.get(..len) else {
            return Err(corrupt(
                file_offset(offset as usize),
                format!(
                    "the key at {offset:#x} has a {len}-byte name in a cell with room for {}",
                    rest.len()
                ),
            ));
        };
        let name = name::decode(raw_name, node.flags.get() & KEY_COMP_NAME != 0);
        Ok(Key {
            hive,
            offset,
            node,
            name,
        })
    }

    /// The key's name (the root's name is whatever Windows stored, often `ROOT` or a path).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn hive(&self) -> &'h Hive {
        self.hive
    }

    /// The cell offset of this key (relative to the hive bins data), a stable identity.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// The raw flags (`KEY_*`).
    pub fn flags(&self) -> u16 {
        self.node.flags.get()
    }

    /// How many subkeys the key node says it has.
    pub fn subkey_count(&self) -> u32 {
        self.node.subkey_count.get()
    }

    /// The subkeys, in the stored (sorted) order.
    pub fn subkeys(&self) -> Result<Vec<Key<'h>>> {
        self.subkey_offsets()?
            .into_iter()
            .map(|o| Key::at(self.hive, o))
            .collect()
    }

    /// The subkey called `name` (case-insensitive), if any.
    pub fn subkey(&self, name: &str) -> Result<Option<Key<'h>>> {
        for o in self.subkey_offsets()? {
            let k = Key::at(self.hive, o)?;
            if name::eq_ignore_case(&k.name, name) {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// The offsets of the subkey nodes: every element of the list, through one `ri` level.
    pub(super) fn subkey_offsets(&self) -> Result<Vec<u32>> {
        let count = self.node.subkey_count.get();
        let list = self.node.subkey_list.get();
        if count == 0 || list == NONE {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let cell = self.hive.cell(list, "a subkey list")?;
        match list_header(cell, list)? {
            (b"ri", n) => {
                // An index root lists leaves; a leaf listed twice would count its keys
                // twice (and a cycle of lists could never end), so each leaf once.
                let mut seen = HashSet::new();
                for i in 0..n {
                    let leaf = element(cell, i, 4);
                    if !seen.insert(leaf) {
                        return Err(corrupt(
                            file_offset(list as usize),
                            format!("the index root at {list:#x} lists the leaf {leaf:#x} twice"),
                        ));
                    }
                    let leaf_cell = self.hive.cell(leaf, "an index root")?;
                    match list_header(leaf_cell, leaf)? {
                        (b"ri", _) => {
                            return Err(corrupt(
                                file_offset(leaf as usize),
                                format!("the index root at {list:#x} lists another index root at {leaf:#x}; roots list only leaves"),
                            ))
                        }
                        (sig, m) => push_leaf(leaf_cell, *sig, m, &mut out)?,
                    }
                }
            }
            (sig, n) => push_leaf(cell, *sig, n, &mut out)?,
        }
        if out.len() != count as usize {
            return Err(corrupt(
                file_offset(self.offset as usize),
                format!(
                    "the key `{}` says it has {count} subkeys but its lists hold {}",
                    self.name,
                    out.len()
                ),
            ));
        }
        Ok(out)
    }

    /// The values, in the stored order (at most [`MAX_VALUES_BYTES`] of data in all).
    pub fn values(&self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut total = 0usize;
        for o in self.value_offsets()? {
            let v = Value::at(self.hive, o)?;
            total += v.raw().len();
            if total > MAX_VALUES_BYTES {
                return Err(limit(format!(
                    "the values of `{}` hold more than {MAX_VALUES_BYTES} bytes together, more than vhdforge reads at once",
                    self.name
                )));
            }
            out.push(v);
        }
        Ok(out)
    }

    /// The value called `name` (case-insensitive; `""` is the default value), if any. Only
    /// the match's data is read.
    pub fn value(&self, name: &str) -> Result<Option<Value>> {
        for o in self.value_offsets()? {
            let (_, n) = Value::header(self.hive, o)?;
            if name::eq_ignore_case(&n, name) {
                return Value::at(self.hive, o).map(Some);
            }
        }
        Ok(None)
    }

    fn value_offsets(&self) -> Result<Vec<u32>> {
        let count = self.node.value_count.get() as usize;
        let list = self.node.value_list.get();
        if count == 0 || list == NONE {
            return Ok(Vec::new());
        }
        if count > MAX_VALUES {
            return Err(limit(format!(
                "the key `{}` has {count} values, more than the {MAX_VALUES} vhdforge reads",
                self.name
            )));
        }
        let cell = self.hive.cell(list, "a value list")?;
        let Some(bytes) = count.checked_mul(4).and_then(|n| cell.get(..n)) else {
            return Err(corrupt(
                file_offset(list as usize),
                format!(
                    "the key `{}` has {count} values but its value list cell holds only {} bytes",
                    self.name,
                    cell.len()
                ),
            ));
        };
        Ok((0..count).map(|i| element(bytes, i, 0)).collect())
    }
}

/// The 4-byte little-endian word at `base + 4*i` of a list (callers checked the bounds).
fn element(cell: &[u8], i: usize, base: usize) -> u32 {
    let at = base + 4 * i;
    u32::from_le_bytes([cell[at], cell[at + 1], cell[at + 2], cell[at + 3]])
}

/// A subkey list's signature and element count, checked against the cell's size.
fn list_header(cell: &[u8], offset: u32) -> Result<(&[u8; 2], usize)> {
    let (Some(sig), Some(count)) = (cell.get(..2), cell.get(2..4)) else {
        return Err(corrupt(
            file_offset(offset as usize),
            format!("the subkey list at {offset:#x} is shorter than its 4-byte header"),
        ));
    };
    let sig: &[u8; 2] = sig.try_into().unwrap_or(b"??");
    let n = usize::from(u16::from_le_bytes([count[0], count[1]]));
    let stride = match sig {
        b"li" | b"ri" => 4,
        b"lf" | b"lh" => 8,
        _ => {
            return Err(corrupt(
                file_offset(offset as usize),
                format!(
                    "expected a subkey list (`lf`, `lh`, `li` or `ri`) at {offset:#x}, found {sig:02x?}"
                ),
            ))
        }
    };
    if 4 + n * stride > cell.len() {
        return Err(corrupt(
            file_offset(offset as usize),
            format!(
                "the subkey list at {offset:#x} claims {n} entries of {stride} bytes in a {}-byte cell",
                cell.len()
            ),
        ));
    }
    Ok((sig, n))
}

/// Append the key offsets of one leaf list (`li`: offsets; `lf`/`lh`: offset + hint/hash,
/// which only filter candidates and are not needed to read).
fn push_leaf(cell: &[u8], sig: [u8; 2], n: usize, out: &mut Vec<u32>) -> Result<()> {
    let stride = if &sig == b"li" { 1 } else { 2 };
    if out.len() + n > MAX_SUBKEYS {
        return Err(limit(format!(
            "a key lists more than {MAX_SUBKEYS} subkeys, more than vhdforge reads"
        )));
    }
    out.extend((0..n).map(|i| element(cell, i * stride, 4)));
    Ok(())
}
