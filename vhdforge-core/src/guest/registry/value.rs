//! Values (`vk`), their data (inline, in a cell, or big data `db` in segments) and the data
//! types, `docs/guest-registry.md` §6–§7.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::bins::file_offset;
use super::{corrupt, limit, name, Hive};
use crate::error::Result;

/// `vk`.
pub const VALUE_SIGNATURE: [u8; 2] = *b"vk";
/// `db`.
pub const BIG_DATA_SIGNATURE: [u8; 2] = *b"db";
/// Value flag: the name is 8-bit Latin-1.
const VALUE_COMP_NAME: u16 = 0x0001;
/// Data size bit 31: the data (at most 4 bytes) is stored in the data offset field itself.
const DATA_INLINE: u32 = 0x8000_0000;
/// Bytes of every big-data segment but the last.
pub const BIG_DATA_SEGMENT_BYTES: usize = 16344;
/// The largest value data read (real values are at most a few MiB; the cap bounds the memory a
/// hostile big-data list that repeats one segment could claim).
pub const MAX_VALUE_BYTES: usize = 32 << 20;

/// A value key cell as laid out on disk (after the cell size).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawValueKey {
    /// `vk`.
    pub signature: [u8; 2],
    /// Bytes of the name; 0 for the default value.
    pub name_length: U16,
    /// Bytes of data; bit 31 set = inline in `data_offset`.
    pub data_size: U32,
    /// Data cell, or the data itself when inline.
    pub data_offset: U32,
    /// The value type (`REG_*`).
    pub data_type: U32,
    /// 0x1 8-bit name, 0x2 tombstone (layered keys).
    pub flags: U16,
    /// Unused.
    pub spare: U16,
}

const _: () = assert!(size_of::<RawValueKey>() == 20);

/// The registry value types (`REG_*`); the number is kept for types not named here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueType(pub u32);

impl ValueType {
    /// `REG_NONE`.
    pub const NONE: ValueType = ValueType(0);
    /// `REG_SZ`: UTF-16LE string.
    pub const SZ: ValueType = ValueType(1);
    /// `REG_EXPAND_SZ`: UTF-16LE string with `%VARIABLES%`.
    pub const EXPAND_SZ: ValueType = ValueType(2);
    /// `REG_BINARY`.
    pub const BINARY: ValueType = ValueType(3);
    /// `REG_DWORD`: u32 little-endian.
    pub const DWORD: ValueType = ValueType(4);
    /// `REG_DWORD_BIG_ENDIAN`.
    pub const DWORD_BIG_ENDIAN: ValueType = ValueType(5);
    /// `REG_LINK`: UTF-16LE path.
    pub const LINK: ValueType = ValueType(6);
    /// `REG_MULTI_SZ`: NUL-separated UTF-16LE strings.
    pub const MULTI_SZ: ValueType = ValueType(7);
    /// `REG_QWORD`: u64 little-endian.
    pub const QWORD: ValueType = ValueType(11);
}

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            0 => "REG_NONE",
            1 => "REG_SZ",
            2 => "REG_EXPAND_SZ",
            3 => "REG_BINARY",
            4 => "REG_DWORD",
            5 => "REG_DWORD_BIG_ENDIAN",
            6 => "REG_LINK",
            7 => "REG_MULTI_SZ",
            8 => "REG_RESOURCE_LIST",
            9 => "REG_FULL_RESOURCE_DESCRIPTOR",
            10 => "REG_RESOURCE_REQUIREMENTS_LIST",
            11 => "REG_QWORD",
            n => return write!(f, "type {n:#x}"),
        };
        f.write_str(name)
    }
}

/// A value's data decoded by its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueData {
    /// `REG_SZ`, `REG_EXPAND_SZ` or `REG_LINK`: up to the first NUL.
    String(String),
    /// `REG_MULTI_SZ`: the strings, without the empty one that ends the list.
    MultiString(Vec<String>),
    /// `REG_DWORD` or `REG_DWORD_BIG_ENDIAN` of exactly 4 bytes.
    Dword(u32),
    /// `REG_QWORD` of exactly 8 bytes.
    Qword(u64),
    /// Anything else, and integers whose size is wrong (reported, never guessed).
    Raw(Vec<u8>),
}

/// One value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    name: String,
    kind: ValueType,
    data: Vec<u8>,
}

impl Value {
    /// Read the `vk` cell at `offset` and its data.
    pub(super) fn at(hive: &Hive, offset: u32) -> Result<Value> {
        let (vk, name) = Value::header(hive, offset)?;
        let data = data(hive, &vk, offset, &name)?;
        Ok(Value {
            name,
            kind: ValueType(vk.data_type.get()),
            data,
        })
    }

    /// The `vk` cell at `offset` and its name, without the data (a lookup by name reads the
    /// data of the match only).
    pub(super) fn header(hive: &Hive, offset: u32) -> Result<(RawValueKey, String)> {
        let here = file_offset(offset as usize);
        let cell = hive.cell(offset, "a value list")?;
        let (vk, rest) = RawValueKey::read_from_prefix(cell).map_err(|_| {
            corrupt(
                here,
                format!("the value cell at {offset:#x} is too short for a value key"),
            )
        })?;
        if vk.signature != VALUE_SIGNATURE {
            return Err(corrupt(
                here,
                format!(
                    "expected a value key (`vk`) at {offset:#x}, found {:02x?}",
                    vk.signature
                ),
            ));
        }
        let len = usize::from(vk.name_length.get());
        let Some(raw_name) = rest.get(..len) else {
            return Err(corrupt(
                here,
                format!("the value at {offset:#x} has a {len}-byte name that runs past its cell"),
            ));
        };
        let name = name::decode(raw_name, vk.flags.get() & VALUE_COMP_NAME != 0);
        Ok((vk, name))
    }

    /// The name; `""` for the key's default value.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stored type.
    pub fn value_type(&self) -> ValueType {
        self.kind
    }

    /// The data bytes exactly as stored (cut to the stated size).
    pub fn raw(&self) -> &[u8] {
        &self.data
    }

    /// The data decoded by type (`docs/guest-registry.md` §7).
    pub fn data(&self) -> ValueData {
        let d = &self.data;
        match self.kind {
            ValueType::SZ | ValueType::EXPAND_SZ | ValueType::LINK => {
                ValueData::String(utf16_until_nul(d))
            }
            ValueType::MULTI_SZ => ValueData::MultiString(multi_sz(d)),
            ValueType::DWORD if d.len() == 4 => {
                ValueData::Dword(u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
            }
            ValueType::DWORD_BIG_ENDIAN if d.len() == 4 => {
                ValueData::Dword(u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
            }
            ValueType::QWORD if d.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(d);
                ValueData::Qword(u64::from_le_bytes(b))
            }
            _ => ValueData::Raw(d.clone()),
        }
    }

    /// The data as a DWORD, when it is one (type DWORD and exactly 4 bytes).
    pub fn as_dword(&self) -> Option<u32> {
        match self.data() {
            ValueData::Dword(v) if self.kind == ValueType::DWORD => Some(v),
            _ => None,
        }
    }

    /// The data as a string, when the type is a string type.
    pub fn as_string(&self) -> Option<String> {
        match self.data() {
            ValueData::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A UTF-16LE string up to its first NUL (a missing NUL, an odd last byte and garbage after
/// the NUL all occur in real hives).
fn utf16_until_nul(d: &[u8]) -> String {
    let units: Vec<u16> = d
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// NUL-separated strings; the list ends at an empty string or at the end of the data.
fn multi_sz(d: &[u8]) -> Vec<String> {
    let units: Vec<u16> = d
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    units
        .split(|&u| u == 0)
        .take_while(|s| !s.is_empty())
        .map(String::from_utf16_lossy)
        .collect()
}

/// The data of a value: inline, one cell, or big data.
fn data(hive: &Hive, vk: &RawValueKey, offset: u32, name: &str) -> Result<Vec<u8>> {
    let here = file_offset(offset as usize);
    let raw_size = vk.data_size.get();
    let size = (raw_size & !DATA_INLINE) as usize;
    if raw_size & DATA_INLINE != 0 {
        if size > 4 {
            return Err(corrupt(
                here,
                format!("the value `{name}` claims {size} bytes stored inline; at most 4 fit"),
            ));
        }
        return Ok(vk.data_offset.get().to_le_bytes()[..size].to_vec());
    }
    if size == 0 {
        return Ok(Vec::new());
    }
    if size > MAX_VALUE_BYTES {
        return Err(limit(format!(
            "the value `{name}` claims {size} bytes of data, more than the {MAX_VALUE_BYTES} vhdforge reads"
        )));
    }
    let cell = hive.cell(vk.data_offset.get(), "a value's data")?;
    if let Some(d) = cell.get(..size) {
        return Ok(d.to_vec());
    }
    // Larger than its cell: only valid as big data (hivex applies the same rule).
    if cell.get(..2) == Some(&BIG_DATA_SIGNATURE[..]) && cell.len() >= 8 {
        return big_data(hive, cell, vk.data_offset.get(), size, name);
    }
    Err(corrupt(
        here,
        format!(
            "the value `{name}` claims {size} bytes of data but its data cell holds {}",
            cell.len()
        ),
    ))
}

/// Join the segments of a `db` cell and cut them to `size`.
fn big_data(hive: &Hive, db: &[u8], at: u32, size: usize, name: &str) -> Result<Vec<u8>> {
    let count = usize::from(u16::from_le_bytes([db[2], db[3]]));
    let list_at = u32::from_le_bytes([db[4], db[5], db[6], db[7]]);
    if count.saturating_mul(BIG_DATA_SEGMENT_BYTES) < size {
        return Err(corrupt(
            file_offset(at as usize),
            format!(
                "the value `{name}` claims {size} bytes of big data in {count} segments of at most {BIG_DATA_SEGMENT_BYTES}"
            ),
        ));
    }
    let list = hive.cell(list_at, "a big-data cell")?;
    let Some(list) = list.get(..count * 4) else {
        return Err(corrupt(
            file_offset(list_at as usize),
            format!("the big-data segment list of `{name}` is shorter than its {count} entries"),
        ));
    };
    let mut out = Vec::with_capacity(size);
    for w in list.chunks_exact(4) {
        let seg_at = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        let want = (size - out.len()).min(BIG_DATA_SEGMENT_BYTES);
        if want == 0 {
            break;
        }
        let seg = hive.cell(seg_at, "a big-data segment list")?;
        let Some(part) = seg.get(..want) else {
            return Err(corrupt(
                file_offset(seg_at as usize),
                format!(
                    "a big-data segment of `{name}` holds {} bytes; {want} were expected",
                    seg.len()
                ),
            ));
        };
        out.extend_from_slice(part);
    }
    if out.len() != size {
        return Err(corrupt(
            file_offset(at as usize),
            format!(
                "the big data of `{name}` ends after {} of {size} bytes",
                out.len()
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_decode_like_windows_reads_them() {
        let le = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
        // (case, bytes, expected)
        let cases = [
            ("terminated", le("abc\0"), "abc"),
            ("no NUL", le("abc"), "abc"),
            (
                "garbage after NUL",
                [le("ab\0"), vec![0x41, 0x42]].concat(),
                "ab",
            ),
            (
                "odd length drops the last byte",
                [le("ab"), vec![0x41]].concat(),
                "ab",
            ),
        ];
        for (case, bytes, want) in cases {
            assert_eq!(utf16_until_nul(&bytes), want, "{case}");
        }
        assert_eq!(multi_sz(&le("a\0bc\0\0")), ["a", "bc"]);
        assert_eq!(
            multi_sz(&le("a\0bc")),
            ["a", "bc"],
            "final empty string missing"
        );
        assert!(multi_sz(&[]).is_empty());
    }
}
