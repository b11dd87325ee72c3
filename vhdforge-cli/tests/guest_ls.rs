//! `vhdforge volumes`, `ls` and `cat` — the real binary — against the kernel: disks built by
//! the real tools (sfdisk, mkfs.ext4/xfs/fat, LVM), each file system also loop-mounted
//! read-only from the same bytes, and every entry compared (type, size, mode, owner, mtime,
//! link target, SHA-256 of the content) through raw disks, VHDX and a differencing chain.
//! Mounting needs root (CI is root); a missing tool fails the test, never skips it.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;

use fixtures::guest::tree::{fat_tree, fat_view, kernel_view, linux_tree, Record};
use fixtures::guest::{build, run, Content, Format, Kind, Lv, Mount, Part, Table};
use fixtures::vhdx as fx;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

mod guest_cli;
use guest_cli::{s, vhdforge};

/// `vhdforge ls -R --json IMAGE /` as records (content hashes not yet filled).
fn listed(image: &Path, volume: Option<&str>) -> BTreeMap<Vec<u8>, Record> {
    let mut args = vec!["ls", "-R", "--json", s(image), "/"];
    if let Some(v) = volume {
        args.extend(["--volume", v]);
    }
    let out = vhdforge(&args);
    assert!(
        out.status.success(),
        "ls failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut map = BTreeMap::new();
    for v in all {
        let kind = match v["type"].as_str().unwrap() {
            "file" => "file",
            "dir" => "dir",
            "symlink" => "symlink",
            _ => "other",
        };
        let path = v["path"].as_str().unwrap().as_bytes().to_vec();
        assert!(
            v.get("path_escaped").is_none(),
            "the trees' names are UTF-8"
        );
        let rec = Record {
            kind,
            mode: u32::try_from(v["mode"].as_u64().unwrap()).unwrap(),
            uid: u32::try_from(v["uid"].as_u64().unwrap()).unwrap(),
            gid: u32::try_from(v["gid"].as_u64().unwrap()).unwrap(),
            size: v["size"].as_u64().unwrap(),
            mtime: v["mtime"].as_i64().unwrap(),
            target: v["target"].as_str().map(|t| t.as_bytes().to_vec()),
            sha256: None,
        };
        assert!(map.insert(path, rec).is_none(), "listed twice: {v}");
    }
    map
}

/// Compare vhdforge's listing of `image` with the kernel's view, and `cat` every regular
/// file for which `cat_this` holds.
fn assert_matches_kernel(
    kernel: &BTreeMap<Vec<u8>, Record>,
    image: &Path,
    volume: Option<&str>,
    cat_this: &dyn Fn(&[u8]) -> bool,
) {
    assert_matches(kernel, listed(image, volume), image, volume, cat_this);
}

/// The same against mtools' view of a FAT volume, where directories' sizes and times are
/// not compared (mtools does not show them).
fn assert_matches_mtools(
    mtools: &BTreeMap<Vec<u8>, Record>,
    image: &Path,
    volume: &str,
    cat_this: &dyn Fn(&[u8]) -> bool,
) {
    let mut ours = listed(image, Some(volume));
    for r in ours.values_mut().filter(|r| r.kind == "dir") {
        r.size = 0;
        r.mtime = 0;
    }
    assert_matches(mtools, ours, image, Some(volume), cat_this);
}

fn assert_matches(
    kernel: &BTreeMap<Vec<u8>, Record>,
    mut ours: BTreeMap<Vec<u8>, Record>,
    image: &Path,
    volume: Option<&str>,
    cat_this: &dyn Fn(&[u8]) -> bool,
) {
    let mut catted = 0;
    for (path, rec) in &mut ours {
        if rec.kind != "file" || !cat_this(path) {
            continue;
        }
        let p = std::str::from_utf8(path).unwrap();
        let mut args = vec!["cat", s(image), p];
        if let Some(v) = volume {
            args.extend(["--volume", v]);
        }
        let out = vhdforge(&args);
        assert!(
            out.status.success(),
            "cat {p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        rec.sha256 = Some(Sha256::digest(&out.stdout).into());
        catted += 1;
    }
    assert!(catted > 0, "nothing was read with cat");
    let mut want = kernel.clone();
    for (path, rec) in &mut want {
        if rec.kind == "file" && !cat_this(path) {
            rec.sha256 = None;
        }
    }
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !ours.contains_key(*k))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let extra: Vec<_> = ours
        .keys()
        .filter(|k| !want.contains_key(*k))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{}: missing {missing:?}, extra {extra:?}",
        image.display()
    );
    for (path, w) in &want {
        assert_eq!(
            &ours[path],
            w,
            "{} {}",
            image.display(),
            String::from_utf8_lossy(path)
        );
    }
}

/// Regular files outside the big directory, and one in 97 inside it.
fn sample(path: &[u8]) -> bool {
    let p = String::from_utf8_lossy(path);
    let Some(rest) = p
        .strip_prefix("/big-dir/entry-")
        .or(p.strip_prefix("/many/file number "))
    else {
        return true;
    };
    rest[..4].parse::<u32>().is_ok_and(|n| n % 97 == 0)
}

fn to_vhdx(raw: &Path, out: &Path) {
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "vhdx", s(raw), s(out)],
    );
}

/// A differencing chain whose virtual disk is `raw`: the base holds garbage in every odd
/// MiB, which the child stores (so both layers must be read right).
fn to_chain(raw: &Path, dir: &Path) -> PathBuf {
    let content = std::fs::read(raw).unwrap();
    let mut base = content.clone();
    let mib = 1 << 20;
    let mut present = vec![false; content.len() / 512];
    for (i, chunk) in base.chunks_mut(mib).enumerate() {
        if i % 2 == 1 {
            chunk.copy_from_slice(&fixtures::guest::tree::pattern(chunk.len(), i as u64));
            present[i * mib / 512..(i + 1) * mib / 512].fill(true);
        }
    }
    let base_spec = fx::VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0xBA5E));
    fx::write_file(dir, "base.vhdx", &fx::build(&base_spec, &base).bytes);
    let mut spec = fx::VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0xC41D));
    spec.child = Some(fx::ChildSpec {
        parent_linkage: Uuid::from_u128(0xBA5E),
        relative_path: Some(".\\base.vhdx".into()),
        absolute_win32_path: None,
        present,
    });
    fx::write_file(dir, "child.avhdx", &fx::build(&spec, &content).bytes)
}

#[test]
fn ext4_root_and_fat_esp_in_gpt_match_the_kernel_as_raw_vhdx_and_chain() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    linux_tree(&root, 3000);
    let esp = dir.path().join("esp");
    // mcopy slows down with every file in a directory: 150 are enough for a directory of
    // many clusters.
    fat_tree(&esp, 150);
    let raw = dir.path().join("disk.raw");
    let built = build(
        &raw,
        88,
        Table::Gpt,
        &[
            Part::new(36, Kind::Esp, Content::fs(Format::Fat32, "ESP", Some(&esp))),
            Part::new(
                48,
                Kind::Linux,
                Content::fs(Format::Ext4, "root", Some(&root)),
            ),
        ],
        &dir.path().join("scratch"),
    );
    let _root_mnt = Mount::new(
        &built.filesystems[1].image,
        &dir.path().join("m2"),
        "loop,ro",
    );
    let esp_view = fat_view(&built.filesystems[0].image, &dir.path().join("esp-out"));
    let root_view = kernel_view(&dir.path().join("m2"));
    assert!(root_view.len() > 3000 && esp_view.len() > 150);

    let vhdx = dir.path().join("disk.vhdx");
    to_vhdx(&raw, &vhdx);
    let chain = to_chain(&raw, dir.path());
    for image in [&raw, &vhdx, &chain] {
        // No --volume: the ext4 root is chosen by its /etc/os-release.
        assert_matches_kernel(&root_view, image, None, &sample);
        assert_matches_mtools(&esp_view, image, "ESP", &sample);
    }

    // `volumes` names both and marks the root; the default is what ls read.
    let out = vhdforge(&["volumes", "--json", s(&chain)]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["default"], "2");
    assert_eq!(v["volumes"][0]["filesystem"], "fat32");
    assert_eq!(v["volumes"][1]["os_root"], "linux");
    let text = vhdforge(&["volumes", s(&vhdx)]);
    let t = String::from_utf8_lossy(&text.stdout);
    assert!(t.contains("[Linux root]") && t.contains("ESP"), "{t}");

    // A path through a symlink, and case-insensitive lookup on FAT.
    let grub = vhdforge(&["cat", s(&vhdx), "/dir-link/default/grub"]);
    assert_eq!(grub.stdout, b"GRUB_CMDLINE_LINUX=\"console=ttyS0\"\n");
    let cfg = vhdforge(&["cat", "--volume", "1", s(&vhdx), "/efi/UBUNTU/Grub.Cfg"]);
    assert!(cfg.status.success());
    assert!(cfg.stdout.starts_with(b"search.fs_uuid"));
}

#[test]
fn xfs_on_lvm_in_an_mbr_disk_matches_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    linux_tree(&root, 2000);
    let raw = dir.path().join("disk.raw");
    let vg = format!("lsvg{}", std::process::id());
    let built = build(
        &raw,
        360,
        Table::Mbr,
        &[Part::new(
            340,
            Kind::Lvm,
            Content::Lvm {
                vg: vg.clone(),
                lvs: vec![Lv {
                    name: "root".into(),
                    size_mib: 320,
                    content: Content::fs(Format::Xfs, "root", Some(&root)),
                }],
            },
        )],
        &dir.path().join("scratch"),
    );
    let _m = Mount::new(
        &built.filesystems[0].image,
        &dir.path().join("m"),
        "loop,ro",
    );
    let view = kernel_view(&dir.path().join("m"));
    let vhdx = dir.path().join("disk.vhdx");
    to_vhdx(&raw, &vhdx);
    assert_matches_kernel(&view, &vhdx, None, &sample);
    assert_matches_kernel(&view, &raw, Some(&format!("{vg}/root")), &|p| {
        p.starts_with(b"/sparse") || p.starts_with(b"/big.bin")
    });
}

/// A small two-volume disk for the error cases: ext4 (no OS root) and swap.
fn small_disk(dir: &Path) -> PathBuf {
    let t = dir.join("t");
    std::fs::create_dir_all(t.join("etc")).unwrap();
    std::fs::write(t.join("etc/hostname"), "guest\n").unwrap();
    std::fs::write(t.join("big"), fixtures::guest::tree::pattern(4 << 20, 9)).unwrap();
    // Linux names are bytes: one that is not UTF-8.
    std::fs::write(t.join(std::ffi::OsStr::from_bytes(b"bad\xffname")), "x").unwrap();
    // 256 MiB, nearly all hole: cat must stream it, not hold it.
    let f = std::fs::File::create(t.join("holes")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"end", (256 << 20) - 3).unwrap();
    let raw = dir.join("small.raw");
    build(
        &raw,
        48,
        Table::Mbr,
        &[
            Part::new(32, Kind::Linux, Content::fs(Format::Ext4, "data", Some(&t))),
            Part::new(8, Kind::Swap, Content::fs(Format::Swap, "", None)),
        ],
        &dir.join("scratch"),
    );
    raw
}

fn json_error(out: &Output) -> (String, String) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["error"]["code"].as_str().unwrap().to_string(),
        v["error"]["message"].as_str().unwrap().to_string(),
    )
}

#[test]
fn errors_name_the_path_or_volume_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let raw = small_disk(dir.path());
    let img = s(&raw);
    // The only readable file system is the default, even without an OS root.
    let ok = vhdforge(&["ls", img, "/etc"]);
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "hostname\n");
    // One file, long form: mode, owner, size, UTC time, name.
    let one = String::from_utf8(vhdforge(&["ls", "--long", img, "/etc/hostname"]).stdout).unwrap();
    assert!(
        one.starts_with("-rw-r--r-- ")
            && one.contains(" 6 ")
            && one.trim_end().ends_with(" /etc/hostname"),
        "{one}"
    );
    // A name that is not UTF-8: escaped in text, lossy plus escaped form in JSON.
    let text = String::from_utf8(vhdforge(&["ls", img, "/"]).stdout).unwrap();
    assert!(text.lines().any(|l| l == "bad\\xffname"), "{text}");
    let all: Vec<serde_json::Value> =
        serde_json::from_slice(&vhdforge(&["ls", "--json", img, "/"]).stdout).unwrap();
    let bad = all
        .iter()
        .find(|v| v["path_escaped"] == "/bad\\xffname")
        .expect("the non-UTF-8 name is listed with its escaped form");
    assert_eq!(bad["path"], "/bad\u{fffd}name");

    let cases: [(&[&str], &str, &str); 5] = [
        (
            &["ls", "--json", img, "/nope"],
            "guest.fs.not_found",
            "'/nope'",
        ),
        (
            &["ls", "--json", img, "/etc/hostname/x"],
            "guest.fs.not_a_directory",
            "'/etc/hostname'",
        ),
        (
            &["ls", "--json", "--volume", "2", img, "/"],
            "guest.fs.unsupported",
            "swap",
        ),
        (
            &["ls", "--json", "--volume", "9", img, "/"],
            "guest.volume.not_found",
            "label 'data'",
        ),
        (
            &["ls", "--json", img, "etc"],
            "guest.fs.not_absolute",
            "start with '/'",
        ),
    ];
    for (args, code, says) in cases {
        let (c, m) = json_error(&vhdforge(args));
        assert_eq!(c, code, "{args:?}: {m}");
        assert!(m.contains(says), "{args:?}: {m}");
    }
    let dir_cat = vhdforge(&["cat", img, "/etc"]);
    assert_eq!(dir_cat.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&dir_cat.stderr).contains("is a directory"));
    assert!(dir_cat.stdout.is_empty());

    // A reader that closes the pipe early is not an error.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vhdforge"))
        .args(["cat", img, "/big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cat_streams_a_large_sparse_file_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let raw = small_disk(dir.path());
    let run = common::run_measured(
        dir.path(),
        &["cat", s(&raw), "/holes"],
        std::time::Duration::from_secs(60),
        |_| {},
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = std::fs::read(dir.path().join("child.stdout")).unwrap();
    assert_eq!(out.len(), 256 << 20);
    assert_eq!(&out[out.len() - 3..], b"end");
    assert!(out[..out.len() - 3].iter().all(|&b| b == 0));
    // The file is 256 MiB; the copy holds one 1 MiB buffer.
    assert!(run.peak_kib < 64 << 10, "peak RSS {} KiB", run.peak_kib);
}

#[test]
fn an_encrypted_volume_is_refused_by_name() {
    // A LUKS2 header on partition 1 of an otherwise empty MBR disk.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("luks.raw");
    let mut d = vec![0u8; 4 << 20];
    d[446 + 4] = 0x83;
    d[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    d[446 + 12..446 + 16].copy_from_slice(&4096u32.to_le_bytes());
    d[510] = 0x55;
    d[511] = 0xAA;
    d[2048 * 512..2048 * 512 + 6].copy_from_slice(b"LUKS\xba\xbe");
    d[2048 * 512 + 7] = 2;
    std::fs::write(&raw, &d).unwrap();
    let (code, msg) = json_error(&vhdforge(&["ls", "--json", "--volume", "1", s(&raw), "/"]));
    assert_eq!(code, "guest.volume.encrypted");
    assert!(msg.contains("LUKS"), "{msg}");
}
