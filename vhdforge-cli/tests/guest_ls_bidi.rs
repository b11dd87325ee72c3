//! `vhdforge ls`/`volumes` — the real binary — on names and labels that would make a
//! listing lie: a right-to-left override that shows `cod\u{202E}fdp.exe` as `codexe.pdf`,
//! an isolate, a zero-width space after a familiar name, a byte-order mark, next to plain
//! right-to-left text that must stay as it is. The text output escapes them (`\xNN` per byte),
//! the JSON output keeps them exact. The ext4 image is made by `mkfs.ext4 -d` from a host
//! directory holding those names, so the names are the kernel's.

use fixtures::guest::run;

mod guest_cli;
use guest_cli::{s, vhdforge};

/// (name on disk, how `ls` text shows it)
const NAMES: [(&str, &str); 5] = [
    ("cod\u{202E}fdp.exe", "cod\\xe2\\x80\\xaefdp.exe"),
    ("a\u{2067}b\u{2069}c", "a\\xe2\\x81\\xa7b\\xe2\\x81\\xa9c"),
    ("passwd\u{200B}", "passwd\\xe2\\x80\\x8b"),
    ("\u{FEFF}grub.cfg", "\\xef\\xbb\\xbfgrub.cfg"),
    ("שלום.txt", "שלום.txt"),
];

#[test]
fn listings_escape_bidi_and_invisible_characters_and_json_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    for (name, _) in NAMES {
        std::fs::write(tree.join(name), name.as_bytes()).unwrap();
    }
    std::os::unix::fs::symlink("x\u{202E}y", tree.join("link")).unwrap();
    let img = dir.path().join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    // The label: 16 bytes at most; a right-to-left override in it too.
    run(
        "mkfs.ext4",
        &["-q", "-F", "-L", "lbl\u{202E}1", "-d", s(&tree), s(&img)],
    );

    let out = vhdforge(&["ls", "--long", s(&img), "/"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for (name, shown) in NAMES {
        assert!(text.contains(shown), "{shown} not in {text}");
        if name != shown {
            assert!(!text.contains(name), "{name:?} printed raw: {text}");
        }
    }
    assert!(text.contains("x\\xe2\\x80\\xaey"), "link target: {text}");
    for bad in ['\u{202E}', '\u{2067}', '\u{2069}', '\u{200B}', '\u{FEFF}'] {
        assert!(
            !text.contains(bad),
            "U+{:04X} printed raw: {text}",
            bad as u32
        );
    }

    // JSON is exact: the names as they are on disk.
    let out = vhdforge(&["ls", "--json", s(&img), "/"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for (name, _) in NAMES {
        let want = format!("/{name}");
        assert!(paths.contains(&want.as_str()), "{want:?} not in {paths:?}");
    }

    // `cat` of such a name as the user types it (JSON gives it) reads the file.
    let out = vhdforge(&["cat", s(&img), &format!("/{}", NAMES[0].0)]);
    assert_eq!(out.stdout, NAMES[0].0.as_bytes(), "{out:?}");

    // `volumes`: the label escaped in text, exact in JSON.
    let out = vhdforge(&["volumes", s(&img)]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("lbl\\xe2\\x80\\xae1"), "{text}");
    assert!(!text.contains('\u{202E}'), "{text}");
    let out = vhdforge(&["volumes", "--json", s(&img)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["volumes"][0]["label"], "lbl\u{202E}1", "{v}");

    // An error quoting the name escapes it too.
    let out = vhdforge(&["cat", s(&img), "/no\u{202E}such"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no\\xe2\\x80\\xaesuch"), "{err}");
    assert!(!err.contains('\u{202E}'), "{err}");
}
