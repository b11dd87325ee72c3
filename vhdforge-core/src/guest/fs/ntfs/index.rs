//! Directory indexes (`$I30`, `docs/guest-filesystems.md` §6.9): the B+-tree of `$FILE_NAME`
//! keys in `$INDEX_ROOT` and the INDX blocks of `$INDEX_ALLOCATION`. Lookups descend by the
//! volume's `$UpCase` collation; listings walk the tree in order. Only blocks reached from
//! the root are read (unused blocks keep stale entries), each at most once per walk, and the
//! depth is capped, so a looping or hostile tree ends with an error.

use std::collections::HashSet;

use super::record::{fixup, u16_at, u32_at, u64_at};
use super::stream::Stream;
use super::{corrupt, NtfsFs};
use crate::error::Result;

/// A B+-tree of a few million names is 4 levels deep; anything deeper is a loop or damage.
const MAX_DEPTH: usize = 32;
/// Index blocks are 4 KiB in practice; the format allows up to 64 KiB.
const MAX_BLOCK: u32 = 64 << 10;

/// `$FILE_NAME` namespace of a DOS-only (8.3) name, hidden from listings and lookups.
pub const NAMESPACE_DOS: u8 = 2;
/// `$FILE_NAME` flags: the file is a directory / has a reparse point.
pub const FN_DIRECTORY: u32 = 0x1000_0000;
pub const FN_REPARSE: u32 = 0x400;

/// One index entry with a key.
#[derive(Debug, Clone)]
pub struct Entry {
    pub file_ref: u64,
    pub name: Vec<u16>,
    pub namespace: u8,
    pub fn_flags: u32,
    /// The reparse tag, valid when `fn_flags & FN_REPARSE`.
    pub reparse_tag: u32,
}

/// One node: its entries in order, each with the child VCN that precedes it, and the END
/// entry's child.
struct Node {
    entries: Vec<(Option<u64>, Entry)>,
    last_child: Option<u64>,
}

/// An opened directory index.
pub struct Index<'a> {
    fs: &'a NtfsFs,
    root: Vec<u8>,
    alloc: Option<Stream>,
    block: u32,
}

impl<'a> Index<'a> {
    /// `root` is the `$INDEX_ROOT $I30` value, `alloc` the `$INDEX_ALLOCATION $I30` stream.
    pub fn new(fs: &'a NtfsFs, root: Vec<u8>, alloc: Option<Stream>) -> Result<Index<'a>> {
        if root.len() < 32 || u32_at(&root, 0) != 0x30 {
            return Err(corrupt(format!(
                "a directory's index root ({} bytes, indexed type {:#x}) does not index file names",
                root.len(),
                u32_at(&root, 0)
            )));
        }
        let block = u32_at(&root, 8);
        if !(512..=MAX_BLOCK).contains(&block) || !block.is_power_of_two() {
            return Err(corrupt(format!(
                "index blocks of {block} bytes; expected a power of two from 512 to {MAX_BLOCK}"
            )));
        }
        if let Some(a) = &alloc {
            if a.is_compressed() || a.is_encrypted() {
                return Err(corrupt("a directory index is compressed or encrypted"));
            }
        }
        Ok(Index {
            fs,
            root,
            alloc,
            block,
        })
    }

    fn root_node(&self) -> Result<Node> {
        parse_node(&self.root[16..], "the index root")
    }

    fn block_node(&self, vcn: u64) -> Result<Node> {
        let alloc = self.alloc.as_ref().ok_or_else(|| {
            corrupt(
                "an index entry points to a child block, but the directory has no index allocation",
            )
        })?;
        let unit = if self.fs.geo.cluster <= u64::from(self.block) {
            self.fs.geo.cluster
        } else {
            512
        };
        let at = vcn
            .checked_mul(unit)
            .filter(|&a| {
                a.checked_add(u64::from(self.block))
                    .is_some_and(|e| e <= alloc.size)
            })
            .ok_or_else(|| {
                corrupt(format!(
                    "index block VCN {vcn} lies past the index allocation's {} bytes",
                    alloc.size
                ))
            })?;
        let mut buf = vec![0u8; self.block as usize];
        alloc.read_at(self.fs, at, &mut buf)?;
        fixup(&mut buf, *b"INDX", &|| format!("index block VCN {vcn}"))?;
        if u64_at(&buf, 16) != vcn {
            return Err(corrupt(format!(
                "index block VCN {vcn} says it is VCN {}",
                u64_at(&buf, 16)
            )));
        }
        parse_node(&buf[24..], &format!("index block VCN {vcn}"))
    }

    /// The entry named `name` (equal after upcasing; an exact match wins over a case
    /// variant), ignoring DOS-only names.
    pub fn lookup(&self, name: &[u16]) -> Result<Option<Entry>> {
        let mut node = self.root_node()?;
        let mut candidate = None;
        for _ in 0..MAX_DEPTH {
            let mut next = node.last_child;
            for (child, e) in node.entries {
                match self.fs.collate(name, &e.name) {
                    std::cmp::Ordering::Less => {
                        next = child;
                        break;
                    }
                    std::cmp::Ordering::Equal if e.namespace != NAMESPACE_DOS => {
                        if e.name == name {
                            return Ok(Some(e));
                        }
                        candidate = Some(e);
                    }
                    _ => {}
                }
            }
            match next {
                Some(vcn) => node = self.block_node(vcn)?,
                None => return Ok(candidate),
            }
        }
        Err(corrupt(format!(
            "a directory index deeper than {MAX_DEPTH} levels"
        )))
    }

    /// Every entry in collation order (DOS-only names included; callers filter); `f`
    /// returns false to stop.
    pub fn walk(&self, f: &mut dyn FnMut(Entry) -> bool) -> Result<()> {
        let mut seen = HashSet::new();
        self.walk_node(self.root_node()?, 0, &mut seen, f)
            .map(|_| ())
    }

    fn walk_node(
        &self,
        node: Node,
        depth: usize,
        seen: &mut HashSet<u64>,
        f: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<bool> {
        if depth > MAX_DEPTH {
            return Err(corrupt(format!(
                "a directory index deeper than {MAX_DEPTH} levels"
            )));
        }
        for (child, e) in node.entries {
            if let Some(vcn) = child {
                if !self.walk_child(vcn, depth, seen, f)? {
                    return Ok(false);
                }
            }
            if !f(e) {
                return Ok(false);
            }
        }
        if let Some(vcn) = node.last_child {
            return self.walk_child(vcn, depth, seen, f);
        }
        Ok(true)
    }

    fn walk_child(
        &self,
        vcn: u64,
        depth: usize,
        seen: &mut HashSet<u64>,
        f: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<bool> {
        if !seen.insert(vcn) {
            return Err(corrupt(format!(
                "index block VCN {vcn} is reached twice (a loop)"
            )));
        }
        let child = self.block_node(vcn)?;
        self.walk_node(child, depth + 1, seen, f)
    }
}

/// Parse the entries after an index header `h` (offsets relative to it).
fn parse_node(h: &[u8], what: &str) -> Result<Node> {
    let first = usize::try_from(u32_at(h, 0)).unwrap_or(usize::MAX);
    let length = usize::try_from(u32_at(h, 4)).unwrap_or(usize::MAX);
    if length > h.len() || first < 16 || first > length {
        return Err(corrupt(format!(
            "{what}: entries at {first}..{length} do not fit its {} bytes",
            h.len()
        )));
    }
    let mut entries = Vec::new();
    let mut at = first;
    loop {
        if at + 16 > length {
            return Err(corrupt(format!(
                "{what}: the entries end without an END entry"
            )));
        }
        let e = &h[at..];
        let len = usize::from(u16_at(e, 8));
        let key_len = usize::from(u16_at(e, 10));
        let flags = u16_at(e, 12);
        if len < 16 || len % 8 != 0 || at + len > length {
            return Err(corrupt(format!(
                "{what}: an entry of {len} bytes at {at} does not fit"
            )));
        }
        let child = if flags & 1 != 0 {
            if len < 24 {
                return Err(corrupt(format!(
                    "{what}: an entry with a child is too short"
                )));
            }
            Some(u64_at(e, len - 8))
        } else {
            None
        };
        if flags & 2 != 0 {
            return Ok(Node {
                entries,
                last_child: child,
            });
        }
        let key_room = len - 16 - if child.is_some() { 8 } else { 0 };
        if key_len < 66 || key_len > key_room {
            return Err(corrupt(format!(
                "{what}: a file-name key of {key_len} bytes in an entry of {len}"
            )));
        }
        let key = &e[16..16 + key_len];
        let chars = usize::from(key[64]);
        let name = key
            .get(66..66 + 2 * chars)
            .ok_or_else(|| corrupt(format!("{what}: a name longer than its key")))?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        entries.push((
            child,
            Entry {
                file_ref: u64_at(e, 0),
                name,
                namespace: key[65],
                fn_flags: u32_at(key, 56),
                reparse_tag: u32_at(key, 60),
            },
        ));
        at += len;
    }
}
