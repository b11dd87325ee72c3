//! Red team r3: the ext4 extent reader (`guest/fs/ext4_inode.rs`) on crafted extent trees.
//!
//! A depth is checked per level, so a tree cannot loop forever, but nothing stopped every
//! index entry of every level from naming the same child block: with a leaf holding no
//! extent, the walk never reached its extent limit and read 4·340⁴ blocks (days) before
//! `cat` of one 8 KiB file returned.

#[path = "guest_fs_common/damaged.rs"]
mod damaged;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const BS: usize = 4096;

fn debugfs(img: &Path, req: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", req])
        .arg(img)
        .output()
        .expect("oracle `debugfs` (e2fsprogs) is required for this test");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Numbers following `key` in `text`.
fn numbers_after(text: &str, key: &str) -> Vec<u64> {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("{key} not in {text}"));
    text[at + key.len()..]
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map_while(|w| {
            w.strip_prefix("0x")
                .map_or_else(|| w.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// An extent node header: magic, entries, max, depth.
fn header(node: &mut [u8], entries: u16, max: u16, depth: u16) {
    node[0..2].copy_from_slice(&0xF30Au16.to_le_bytes());
    node[2..4].copy_from_slice(&entries.to_le_bytes());
    node[4..6].copy_from_slice(&max.to_le_bytes());
    node[6..8].copy_from_slice(&depth.to_le_bytes());
}

/// An index entry (at `node[12 + 12 i]`) pointing at block `child`.
fn index(node: &mut [u8], i: usize, child: u32) {
    let e = &mut node[12 + 12 * i..24 + 12 * i];
    e.fill(0);
    e[4..8].copy_from_slice(&child.to_le_bytes());
}

/// An ext4 image whose file `/f` has an extent tree 5 levels deep in which every index
/// entry of a level names the same block, the leaf holding no extent.
fn crafted() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), vec![0x5au8; 8192]).unwrap();
    let img = dir.path().join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-O", "^metadata_csum", "-d"])
        .arg(&tree)
        .arg(&img)
        .status()
        .expect("oracle `mkfs.ext4` is required for this test; scripts/setup.sh installs it")
        .success();
    assert!(ok, "mkfs.ext4 failed");
    let imap = debugfs(&img, "imap /f");
    let block = numbers_after(&imap, "located at block")[0];
    let offset = numbers_after(&imap, "offset")[0];
    let free = numbers_after(&debugfs(&img, "ffb 5 1500"), "Free blocks found:");
    assert_eq!(free.len(), 5, "free blocks");
    let mut data = std::fs::read(&img).unwrap();
    let per_node = u16::try_from((BS - 12) / 12).unwrap();
    // free[d] holds the node of depth d; each index entry of depth d + 1 names it.
    for d in 0..5usize {
        let node = &mut data[free[d] as usize * BS..(free[d] as usize + 1) * BS];
        node.fill(0);
        if d == 0 {
            header(node, 0, per_node, 0);
        } else {
            header(node, per_node, per_node, d as u16);
            for i in 0..usize::from(per_node) {
                index(node, i, free[d - 1] as u32);
            }
        }
    }
    // The root in the inode's i_block (inode + 0x28, 60 bytes): 4 entries, depth 5.
    let ino = (block * BS as u64 + offset) as usize;
    let root = &mut data[ino + 0x28..ino + 0x28 + 60];
    header(root, 4, 4, 5);
    for i in 0..4 {
        index(root, i, free[4] as u32);
    }
    data
}

/// Run `f` on a thread; fail when it takes longer than `limit` (the thread is left behind:
/// the test process ends with the test).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .expect("the ext4 reader did not come back: exponential walk of a crafted extent tree")
}

#[test]
fn an_extent_tree_naming_one_block_many_times_is_refused_quickly() {
    let data = crafted();
    let out = within(Duration::from_secs(30), move || {
        let image: Arc<dyn vhdforge_core::DiskImage> =
            Arc::from(vhdforge_core::open_bytes(data).unwrap());
        let fs =
            vhdforge_core::guest::fs::open(vhdforge_core::guest::fs::Volume::whole(image)).unwrap();
        let mut buf = vec![0u8; 8192];
        let r = match fs.open(b"/f") {
            Ok(mut f) => f.read(&mut buf).map(|n| format!("read {n} bytes")),
            Err(e) => Err(e),
        };
        r
    });
    // Reading it cannot succeed (the tree maps nothing and is damaged): a clear error
    // naming the damage.
    let e = out.expect_err("a damaged extent tree read as a file");
    assert_eq!(e.code(), "guest.fs.ext4_corrupt", "{e}");
    assert!(e.to_string().contains("extent"), "{e}");
}
