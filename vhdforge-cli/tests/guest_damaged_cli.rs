//! `vhdforge ls -R`/`cat` — the real binary — on damaged guest file systems: each format's
//! own tools make a file system (ext4 with and without `metadata_csum`, XFS v5, FAT32, NTFS)
//! holding a directory of 200 entries, a nested file and a 300 KiB file; then the image is
//! truncated at 25, 50 and 75 %, and bytes are flipped in the blocks holding directory
//! entries (found by the entries' names, UTF-8 or UTF-16). Every run must end in bounded time
//! and memory with exit 0 or 2 (never a panic, a signal or a hang), and a `cat` that
//! succeeds must print the file's true bytes whenever the damage could be detected: always
//! on a truncated image, and on file systems whose metadata is checksummed (ext4
//! `metadata_csum`, XFS v5) for flipped bytes too. A missing oracle fails, never skips.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fixtures::guest::{run, Mount};

const ENTRIES: usize = 200;
const BLOCK: usize = 4096;
/// Every run's limits: generous for a debug build on a shared machine, far below a hang.
const LIMIT: Duration = Duration::from_secs(60);
const MAX_RSS_KIB: i64 = 256 * 1024;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn entry_name(i: usize) -> String {
    format!("entry_marker_{i:03}")
}

fn big() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect()
}

/// The host tree every image gets: `d/entry_marker_NNN` (its own name as contents),
/// `d/sub/deep.txt`, `big.bin`.
fn host_tree(dir: &Path) -> PathBuf {
    let t = dir.join("tree");
    std::fs::create_dir_all(t.join("d/sub")).unwrap();
    for i in 0..ENTRIES {
        std::fs::write(t.join("d").join(entry_name(i)), entry_name(i)).unwrap();
    }
    std::fs::write(t.join("d/sub/deep.txt"), b"deep\n").unwrap();
    std::fs::write(t.join("big.bin"), big()).unwrap();
    t
}

fn blank(p: &Path, mib: u64) {
    std::fs::File::create(p)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
}

/// Make the file system `kind` holding the host tree; whether its metadata is checksummed.
fn make(dir: &Path, kind: &str, tree: &Path) -> (PathBuf, bool) {
    let img = dir.join(format!("{kind}.img"));
    match kind {
        "ext4" | "ext4-nocsum" => {
            blank(&img, 16);
            let features = if kind == "ext4" {
                "metadata_csum"
            } else {
                "^metadata_csum"
            };
            run(
                "mkfs.ext4",
                &[
                    "-q",
                    "-F",
                    "-b",
                    "4096",
                    "-O",
                    features,
                    "-d",
                    s(tree),
                    s(&img),
                ],
            );
            (img, kind == "ext4")
        }
        "xfs" => {
            blank(&img, 300);
            run("mkfs.xfs", &["-q", "-f", s(&img)]);
            let mnt = dir.join("mnt-xfs");
            let m = Mount::typed(&img, &mnt, "xfs", "loop");
            run("cp", &["-a", &format!("{}/.", s(tree)), s(&mnt)]);
            drop(m);
            (img, true)
        }
        "fat32" => {
            blank(&img, 64);
            run("mkfs.vfat", &["-F", "32", s(&img)]);
            run(
                "mcopy",
                &["-s", "-i", s(&img), &format!("{}/d", s(tree)), "::/"],
            );
            run(
                "mcopy",
                &["-i", s(&img), &format!("{}/big.bin", s(tree)), "::/"],
            );
            (img, false)
        }
        "ntfs" => {
            blank(&img, 32);
            run("mkntfs", &["-F", "-q", "-f", s(&img)]);
            // ntfscp creates files, not directories: the entries go in the root.
            for i in 0..ENTRIES {
                let src = tree.join("d").join(entry_name(i));
                run(
                    "ntfscp",
                    &["-f", s(&img), s(&src), &format!("/{}", entry_name(i))],
                );
            }
            run(
                "ntfscp",
                &["-f", s(&img), &format!("{}/big.bin", s(tree)), "/big.bin"],
            );
            (img, false)
        }
        _ => unreachable!(),
    }
}

/// The directory holding the entries on `kind`.
fn entry_dir(kind: &str) -> &'static str {
    if kind == "ntfs" {
        ""
    } else {
        "/d"
    }
}

/// Run vhdforge on `img`; fail on a panic, a signal, an exit code other than 0 or 2, too
/// much memory or time. The exit code and stdout bytes.
fn check_run(dir: &Path, case: &str, args: &[&str]) -> (i32, Vec<u8>) {
    let r = common::run_measured(dir, args, LIMIT, |_| {});
    assert!(
        r.code == 0 || r.code == 2,
        "{case}: vhdforge {args:?} exited {} (stderr: {})",
        r.code,
        r.stderr
    );
    assert!(
        !r.stderr.contains("panicked"),
        "{case}: vhdforge {args:?} panicked: {}",
        r.stderr
    );
    assert!(
        r.peak_kib < MAX_RSS_KIB,
        "{case}: vhdforge {args:?} peaked at {} KiB",
        r.peak_kib
    );
    let stdout = std::fs::read(dir.join("child.stdout")).unwrap();
    if r.code == 2 {
        // (With --json the error is a JSON object on stdout.)
        let said = r.stderr.starts_with("vhdforge: ")
            || String::from_utf8_lossy(&stdout).contains("\"error\"");
        assert!(
            said,
            "{case}: vhdforge {args:?} exited 2 without an error message: {}",
            r.stderr
        );
    }
    (r.code, stdout)
}

/// `ls -R --json /` and `cat` of three files; `exact`: a successful cat must be right.
fn exercise(dir: &Path, kind: &str, img: &Path, case: &str, exact: bool) {
    let img = s(img);
    check_run(dir, case, &["ls", "-R", "--json", img, "/"]);
    check_run(dir, case, &["ls", "-R", "--long", img, "/"]);
    let e7 = format!("{}/{}", entry_dir(kind), entry_name(7));
    let e150 = format!("{}/{}", entry_dir(kind), entry_name(150));
    for (path, want) in [
        ("/big.bin".to_string(), big()),
        (e7, entry_name(7).into_bytes()),
        (e150, entry_name(150).into_bytes()),
    ] {
        let (code, out) = check_run(dir, case, &["cat", img, &path]);
        if code == 0 && exact {
            assert!(
                out == want,
                "{case}: cat {path} exited 0 with {} wrong bytes",
                out.len()
            );
        }
    }
}

/// The blocks holding any entry name (UTF-8 or UTF-16LE): each block's offset and its
/// bytes. The image is scanned in pieces and not kept: the peak RSS a child reports
/// includes what this process had mapped when it started the child.
fn name_blocks(img: &Path) -> Vec<(usize, Vec<u8>)> {
    use std::io::Read as _;
    let needles: Vec<Vec<u8>> = [entry_name(0), entry_name(99), entry_name(199)]
        .iter()
        .flat_map(|n| {
            let utf16: Vec<u8> = n.encode_utf16().flat_map(u16::to_le_bytes).collect();
            // FAT keeps an 8.3 alias too, but its long name (UTF-16) is what lists.
            [n.as_bytes().to_vec(), utf16]
        })
        .collect();
    let mut f = std::fs::File::open(img).unwrap();
    let mut blocks = Vec::new();
    // Whole blocks at a time: a name never crosses a block boundary (no format splits one).
    let mut piece = vec![0u8; 1 << 20];
    let mut base = 0usize;
    loop {
        let mut n = 0;
        while n < piece.len() {
            let k = f.read(&mut piece[n..]).unwrap();
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        for b in piece[..n].chunks(BLOCK).enumerate() {
            let (i, block) = b;
            if needles
                .iter()
                .any(|nd| block.windows(nd.len()).any(|w| w == nd.as_slice()))
            {
                blocks.push((base + i * BLOCK, block.to_vec()));
            }
        }
        base += n;
    }
    blocks
}

/// xorshift: reproducible damage.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn damaged_images_give_exit_2_or_the_true_bytes_never_a_panic_or_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let tree = host_tree(dir.path());
    for kind in ["ext4", "ext4-nocsum", "xfs", "fat32", "ntfs"] {
        let (img, checksummed) = make(dir.path(), kind, &tree);
        // The intact image: everything reads, exactly.
        let (code, _) = check_run(dir.path(), kind, &["ls", "-R", "--json", s(&img), "/"]);
        assert_eq!(code, 0, "{kind}: the intact image does not list");
        let (code, out) = check_run(dir.path(), kind, &["cat", s(&img), "/big.bin"]);
        assert!(
            code == 0 && out == big(),
            "{kind}: the intact image misreads"
        );

        // Truncated: what is left must read exactly or fail.
        let len = std::fs::metadata(&img).unwrap().len();
        let cut = dir.path().join(format!("{kind}-cut.img"));
        for pct in [25u64, 50, 75] {
            let _ = std::fs::remove_file(&cut);
            run("cp", &["--sparse=always", s(&img), s(&cut)]);
            let keep = len * pct / 100 / 512 * 512;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&cut)
                .unwrap()
                .set_len(keep)
                .unwrap();
            exercise(
                dir.path(),
                kind,
                &cut,
                &format!("{kind} cut at {pct}%"),
                true,
            );
        }
        let _ = std::fs::remove_file(&cut);

        // Bytes flipped in the blocks that hold directory entries, in place and restored.
        let blocks = name_blocks(&img);
        assert!(!blocks.is_empty(), "{kind}: no directory block found");
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        let mut rng = Rng(0xD1_5EA5E + kind.len() as u64);
        for round in 0..20 {
            let (block, original) = &blocks[(rng.next() % blocks.len() as u64) as usize];
            let mut damaged = original.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % BLOCK as u64) as usize;
                damaged[at] ^= (rng.next() % 255 + 1) as u8;
            }
            std::os::unix::fs::FileExt::write_all_at(&f, &damaged, *block as u64).unwrap();
            exercise(
                dir.path(),
                kind,
                &img,
                &format!("{kind} flip round {round} in block at {block}"),
                checksummed,
            );
            std::os::unix::fs::FileExt::write_all_at(&f, original, *block as u64).unwrap();
        }
    }
}
