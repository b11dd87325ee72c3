//! What the guest file-system tests share on vhdforge's side: the image opened as the CLI
//! opens it, the file system in a partition, and vhdforge's view of a whole tree as
//! `fixtures::guest::tree::Entry` records, to compare with the host's view of the same
//! bytes (`fixtures::guest::tree::host_view`) by `assert_same`. The host side (mounts,
//! oracles, views) lives in `fixtures`, which cannot depend on `vhdforge-core`.
#![allow(dead_code)] // each test binary uses part of it

use fixtures::guest::tree::{Entry, Kind};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use vhdforge_core::guest::fs::{self, FileSystem, FileType, FsKind, Volume};
use vhdforge_core::guest::partition;
use vhdforge_core::{DiskImage, OpenOptions};

pub const MIB: u64 = 1 << 20;

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A new sparse file of `len` bytes.
pub fn blank(p: &Path, len: u64) {
    std::fs::File::create(p).unwrap().set_len(len).unwrap();
}

pub fn open_image(p: &Path) -> Arc<dyn DiskImage> {
    Arc::from(vhdforge_core::open(p, &OpenOptions::default()).unwrap())
}

/// The file system in partition 1 of `disk`, which must be identified as `kind` (with
/// `label`, when one is given).
pub fn fs_in_partition(disk: &Path, kind: FsKind, label: Option<&str>) -> Box<dyn FileSystem> {
    let image = open_image(disk);
    let table = partition::partitions(image.as_ref()).unwrap();
    let w = table.get(1).unwrap().window(image.as_ref()).unwrap();
    let id = fs::identify(&w).unwrap();
    assert_eq!(id.kind, kind);
    if label.is_some() {
        assert_eq!(id.label.as_deref(), label);
    }
    fs::open(Volume::from_window(&image, &w).unwrap()).unwrap()
}

pub fn kind(t: FileType) -> Kind {
    match t {
        FileType::Regular => Kind::Regular,
        FileType::Directory => Kind::Directory,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        FileType::Socket => Kind::Socket,
        FileType::CharDevice => Kind::CharDevice,
        FileType::BlockDevice => Kind::BlockDevice,
    }
}

/// Stand-in digest of a file vhdforge refuses to read by design (see `our_view`).
pub const REFUSED: [u8; 32] = [0xEE; 32];

/// vhdforge's view of the whole tree through the `FileSystem` trait only: every entry from
/// the root, `lstat`ed; the type each directory listing gives must equal its entry's own;
/// regular files are streamed in 64 KiB pieces and hashed. Paths in `skip` are left out.
/// A file in `refused` (path, error code) must fail to read with exactly that code — a
/// documented limitation, an error and never wrong bytes — and gets the digest
/// [`REFUSED`]; any other failure panics naming the path.
pub fn our_view(
    fs: &dyn FileSystem,
    skip: &[&str],
    refused: &[(&str, &str)],
) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut todo = vec![b"/".to_vec()];
    while let Some(path) = todo.pop() {
        if skip.iter().any(|k| k.as_bytes() == path.as_slice()) {
            continue;
        }
        let name = String::from_utf8_lossy(&path).into_owned();
        let st = fs
            .lstat(&path)
            .unwrap_or_else(|e| panic!("lstat {name}: {e}"));
        let mut sha256 = None;
        match st.file_type {
            FileType::Directory => {
                let mut names = Vec::new();
                fs.list(&path, &mut |e| {
                    names.push((e.name, e.file_type));
                    true
                })
                .unwrap_or_else(|e| panic!("list {name}: {e}"));
                for (n, t) in names {
                    let mut child = if path == b"/" {
                        Vec::new()
                    } else {
                        path.clone()
                    };
                    child.push(b'/');
                    child.extend_from_slice(&n);
                    assert_eq!(
                        fs.lstat(&child).unwrap().file_type,
                        t,
                        "listed type of {}",
                        String::from_utf8_lossy(&child)
                    );
                    todo.push(child);
                }
            }
            FileType::Regular => {
                let mut f = fs
                    .open(&path)
                    .unwrap_or_else(|e| panic!("open {name}: {e}"));
                assert_eq!(f.size(), st.size, "{name}");
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 64 << 10];
                let mut failed = None;
                loop {
                    match f.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => h.update(&buf[..n]),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                sha256 = Some(match failed {
                    None => h.finalize().into(),
                    Some(e) => match refused.iter().find(|(p, _)| *p == name) {
                        Some((_, code)) => {
                            assert_eq!(e.code(), *code, "{name}: {e}");
                            REFUSED
                        }
                        None => panic!("read {name}: {e}"),
                    },
                });
            }
            _ => {}
        }
        let e = Entry {
            kind: kind(st.file_type),
            mode: st.mode,
            uid: st.uid,
            gid: st.gid,
            size: st.size,
            mtime: (st.mtime.seconds, st.mtime.nanoseconds),
            link_target: st.link_target,
            sha256,
        };
        out.insert(path, e);
    }
    out
}
