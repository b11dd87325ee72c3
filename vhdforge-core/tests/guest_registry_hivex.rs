//! Differential tests of the registry hive reader (`vhdforge_core::guest::registry`) against
//! hivex, which no one here wrote. A minimal hive (root key and one security cell) is the
//! only thing built by hand; hivex (`hivexregedit --merge`) fills it from a generated .reg
//! file — thousands of subkeys, data over 16 KiB, every value type, Latin-1 and UTF-16 names
//! — and every key and value vhdforge reads must equal `hivexregedit --export` byte for
//! byte. Keys deleted with `hivexsh -w` must vanish from both. A dirty hive with a
//! new-format log is built by the fixtures' own writer of the documented log format (no tool
//! here writes one); its replay is checked by exporting the replayed bytes with hivex and
//! comparing with the hive the log was made from. A missing oracle fails, never skips.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
// The minimal hive and the log writer live in the fixtures crate, shared with the Windows
// preflight tests; the log writer there is independent of the reader (its own Marvin32).
use fixtures::windows_tree::{
    dirty_pages, empty_hive as minimal_hive, hex, log_entry, log_file, utf16z,
};
use vhdforge_core::guest::registry::{base_block, bcd, DirtyReason, Hive, Replay, ValueData};

fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("oracle `{program}` is required for this test and could not be run ({e}); scripts/setup.sh installs it (libhivex-bin, libwin-hivex-perl)")
        });
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The .reg file hivex merges: every value type, names in Latin-1 and beyond, a value name
/// with a backslash, the default value, data over 16 KiB, and `subkeys` keys under `Many`.
fn reg_file(subkeys: usize) -> String {
    let mut r = String::from("Windows Registry Editor Version 5.00\n\n");
    r += "[\\Types]\n";
    r += &format!("@=hex(1):{}\n", hex(&utf16z("the default")));
    r += &format!("\"Sz\"=hex(1):{}\n", hex(&utf16z("Hello, wörld ключ 値")));
    r += &format!(
        "\"ExpandSz\"=hex(2):{}\n",
        hex(&utf16z("%SystemRoot%\\TEMP"))
    );
    r += "\"Binary\"=hex(3):de,ad,be,ef,00,01\n";
    r += "\"Dword\"=dword:0000002a\n";
    r += "\"DwordBe\"=hex(5):00,00,01,00\n";
    r += &format!(
        "\"Link\"=hex(6):{}\n",
        hex(&"\\Registry\\Machine"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect::<Vec<_>>())
    );
    let mut multi = utf16z("first");
    multi.extend(utf16z("second"));
    multi.extend([0, 0]);
    r += &format!("\"MultiSz\"=hex(7):{}\n", hex(&multi));
    r += "\"ResourceList\"=hex(8):01,02,03\n";
    r += "\"Qword\"=hex(b):08,07,06,05,04,03,02,01\n";
    r += "\"None\"=hex(0):\n";
    r += "\"Empty\"=hex(3):\n";
    r += "\"ShortDword\"=hex(4):01,02\n";
    r += "\"Odd\"=hex(ffff0012):aa,bb,cc,dd,ee\n";
    r += "\"back\\\\slash\"=dword:00000001\n";
    r += "\"Grüße\"=dword:00000002\n";
    r += "\"名前\"=dword:00000003\n";
    let big: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
    r += &format!("\"Big\"=hex(3):{}\n", hex(&big));
    let huge: Vec<u8> = (0..100_003u32).map(|i| (i % 13) as u8).collect();
    r += &format!("\"Huge\"=hex(3):{}\n\n", hex(&huge));
    r += "[\\Types\\Ünïcödé]\n\"x\"=dword:00000001\n\n";
    r += "[\\Types\\ключ 値]\n\"y\"=dword:00000002\n\n";
    r += "[\\Select]\n\"Current\"=dword:00000002\n\"Default\"=dword:00000002\n\n";
    r += "[\\ControlSet001\\Services\\TermService]\n\"Start\"=dword:00000004\n\n";
    r += "[\\ControlSet002\\Services\\TermService]\n\"Start\"=dword:00000003\n\n";
    for i in 0..subkeys {
        writeln!(r, "[\\Many\\Sub{i:05}]\n\"n\"=dword:{i:08x}\n").unwrap();
    }
    with_parents(&r)
}

/// hivexregedit creates a key only under an existing parent: insert an empty section for
/// every ancestor not named before its first descendant.
fn with_parents(reg: &str) -> String {
    let mut seen = std::collections::HashSet::new();
    let mut out = String::new();
    for line in reg.lines() {
        if let Some(p) = line.strip_prefix("[\\").and_then(|l| l.strip_suffix(']')) {
            let parts: Vec<&str> = p.split('\\').collect();
            for n in 1..parts.len() {
                let anc = parts[..n].join("\\");
                if seen.insert(anc.clone()) {
                    writeln!(out, "[\\{anc}]\n").unwrap();
                }
            }
            seen.insert(p.to_string());
        }
        out += line;
        out.push('\n');
    }
    out
}

/// What a hive holds: key path → sorted (value name, .reg rendering of type and data).
type Tree = BTreeMap<String, Vec<(String, String)>>;

/// A value rendered as `hivexregedit --export` renders it.
fn render(value_type: u32, data: &[u8]) -> String {
    if value_type == 4 && data.len() == 4 {
        format!("dword:{:08x}", u32::from_le_bytes(data.try_into().unwrap()))
    } else {
        format!("hex({value_type:x}):{}", hex(data))
    }
}

/// Every key and value vhdforge reads.
fn tree_of(hive: &Hive) -> Tree {
    let mut t = Tree::new();
    hive.walk(&mut |path, key| {
        let mut values: Vec<(String, String)> = key
            .values()?
            .iter()
            .map(|v| (v.name().to_string(), render(v.value_type().0, v.raw())))
            .collect();
        values.sort();
        t.insert(format!("\\{path}"), values);
        Ok(())
    })
    .unwrap();
    t
}

/// Fail with the first few differences (trees are too big to print whole).
fn assert_same(ours: &Tree, theirs: &Tree, what: &str) {
    let short = |v: Option<&Vec<(String, String)>>| -> String {
        let s = format!("{v:?}");
        s.chars().take(300).collect()
    };
    let diffs: Vec<String> = ours
        .keys()
        .chain(theirs.keys())
        .filter(|k| ours.get(*k) != theirs.get(*k))
        .take(5)
        .map(|k| {
            format!(
                "{k}: vhdforge {} / hivex {}",
                short(ours.get(k)),
                short(theirs.get(k))
            )
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "{what}: {} vs {} keys; first differences:\n{}",
        ours.len(),
        theirs.len(),
        diffs.join("\n")
    );
}

/// Every key and value `hivexregedit --export` prints (output forced to UTF-8).
fn tree_of_export(path: &Path) -> Tree {
    let out = run(
        "perl",
        &["-CO", "/usr/bin/hivexregedit", "--export", s(path), "\\"],
    );
    let text = String::from_utf8(out).expect("export is UTF-8 under -CO");
    let mut t = Tree::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(p) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(p.to_string());
            t.insert(p.to_string(), Vec::new());
        } else if let Some(rest) = line.strip_prefix("@=") {
            t.get_mut(current.as_ref().unwrap())
                .unwrap()
                .push((String::new(), rest.into()));
        } else if let Some(rest) = line.strip_prefix('"') {
            // "name"=data, with \\ and \" escaped in the name.
            let (mut name, mut chars) = (String::new(), rest.chars());
            while let Some(c) = chars.next() {
                match c {
                    '\\' => name.push(chars.next().unwrap()),
                    '"' => break,
                    c => name.push(c),
                }
            }
            let data = chars.as_str().strip_prefix('=').unwrap().to_string();
            t.get_mut(current.as_ref().unwrap())
                .unwrap()
                .push((name, data));
        }
    }
    for v in t.values_mut() {
        v.sort();
    }
    t
}

/// A hive made by hivex from the minimal hive and `reg`, in `dir`.
fn merged(dir: &Path, name: &str, base: &[u8], reg: &str) -> std::path::PathBuf {
    let hive = dir.join(name);
    std::fs::write(&hive, base).unwrap();
    let regp = dir.join(format!("{name}.reg"));
    std::fs::write(&regp, reg).unwrap();
    run(
        "hivexregedit",
        &["--merge", "--prefix", "", s(&hive), s(&regp)],
    );
    hive
}

#[test]
fn every_key_and_value_matches_hivex() {
    let dir = tempfile::tempdir().unwrap();
    let path = merged(dir.path(), "big.hive", &minimal_hive(), &reg_file(3000));
    let bytes = std::fs::read(&path).unwrap();
    let hive = Hive::from_bytes(&bytes).unwrap();
    assert!(hive.dirty().is_none());
    // hivex writes `lh` lists and keeps big data in one cell; `ri`, `li`, `lf` and `db` are
    // covered by `rewritten_lists_and_big_data_match_hivex`.
    let kinds = cell_kinds(&bytes);
    assert!(kinds["lh"] >= 1 && kinds["nk"] > 3000, "{kinds:?}");
    let ours = tree_of(&hive);
    let theirs = tree_of_export(&path);
    assert!(ours.len() > 3000, "{} keys", ours.len());
    assert_same(&ours, &theirs, "merged hive");

    // Lookups: case-insensitive paths, CurrentControlSet through Select\Current, typed data.
    let ts = hive
        .value("currentcontrolset\\SERVICES\\termservice", "start")
        .unwrap()
        .unwrap();
    assert_eq!(
        ts.as_dword(),
        Some(3),
        "Select\\Current = 2 → ControlSet002"
    );
    assert_eq!(hive.current_control_set().unwrap(), "ControlSet002");
    let types = hive.key("TYPES").unwrap().unwrap();
    let get = |n: &str| types.value(n).unwrap().unwrap().data();
    assert_eq!(get("sz"), ValueData::String("Hello, wörld ключ 値".into()));
    assert_eq!(get(""), ValueData::String("the default".into()));
    assert_eq!(
        get("MultiSz"),
        ValueData::MultiString(vec!["first".into(), "second".into()])
    );
    assert_eq!(get("Qword"), ValueData::Qword(0x0102_0304_0506_0708));
    assert_eq!(get("DwordBe"), ValueData::Dword(0x100));
    assert_eq!(
        get("ShortDword"),
        ValueData::Raw(vec![1, 2]),
        "a 2-byte DWORD is not guessed"
    );
    assert_eq!(get("back\\slash"), ValueData::Dword(1));
    assert_eq!(
        get("GRÜßE"),
        ValueData::Dword(2),
        "ß has no 1:1 uppercase and stays"
    );
    assert!(hive.key("Many\\sub02999").unwrap().is_some());
    assert!(hive.key("Many\\Sub03000").unwrap().is_none());
    assert!(hive.key("Types\\ЮНИКОД").unwrap().is_none());
    assert!(
        hive.key("TYPES\\КЛЮЧ 値").unwrap().is_some(),
        "Cyrillic upcases 1:1"
    );

    // hivexget, a second reader of the same library, agrees on single values.
    let got = run("hivexget", &[s(&path), "\\Types", "Dword"]);
    assert_eq!(String::from_utf8_lossy(&got).trim(), "42");
}

/// Allocated cells by their 2-byte signature (`nk`, `lh`, `ri`, `db` ...), to show which
/// structures a hive really holds.
fn cell_kinds(file: &[u8]) -> BTreeMap<String, usize> {
    let bins = &file[4096..];
    let mut kinds = BTreeMap::new();
    let mut at = 0;
    while at + 32 <= bins.len() {
        let size = u32::from_le_bytes(bins[at + 8..at + 12].try_into().unwrap()) as usize;
        let mut c = at + 32;
        while c < at + size {
            let len = i32::from_le_bytes(bins[c..c + 4].try_into().unwrap());
            if len < 0
                && [b"nk", b"vk", b"sk", b"lh", b"lf", b"li", b"ri", b"db"]
                    .contains(&&bins[c + 4..c + 6].try_into().unwrap())
            {
                let sig = String::from_utf8_lossy(&bins[c + 4..c + 6]).into_owned();
                *kinds.entry(sig).or_insert(0) += 1;
            }
            c += len.unsigned_abs() as usize;
        }
        at += size;
    }
    kinds
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Append a bin holding `cells` (data without their size field) to a hive file, update the
/// base block, and return the cells' offsets.
fn append_bin(file: &mut Vec<u8>, cells: &[Vec<u8>]) -> Vec<u32> {
    let at = get_u32(file, 40) as usize;
    let lens: Vec<usize> = cells
        .iter()
        .map(|c| (c.len() + 4).div_ceil(8) * 8)
        .collect();
    let size = (32 + lens.iter().sum::<usize>() + 8).div_ceil(4096) * 4096;
    let mut bin = vec![0u8; size];
    bin[..4].copy_from_slice(b"hbin");
    put_u32(&mut bin, 4, at as u32);
    put_u32(&mut bin, 8, size as u32);
    let mut offsets = Vec::new();
    let mut c = 32;
    for (cell, len) in cells.iter().zip(&lens) {
        put_u32(&mut bin, c, (-(*len as i32)) as u32);
        bin[c + 4..c + 4 + cell.len()].copy_from_slice(cell);
        offsets.push((at + c) as u32);
        c += len;
    }
    put_u32(&mut bin, c, (size - c) as u32); // the rest is one free cell
    file.truncate(4096 + at);
    file.extend_from_slice(&bin);
    put_u32(file, 40, (at + size) as u32);
    base_block::set_checksum(&mut file[..4096]);
    offsets
}

/// The file offset of the nk cell data of `key` (offset from vhdforge's reader).
fn nk_at(file: &[u8], path: &str) -> usize {
    let hive = Hive::from_bytes(file).unwrap();
    4096 + hive.key(path).unwrap().unwrap().offset() as usize + 4
}

#[test]
fn rewritten_lists_and_big_data_match_hivex() {
    // hivex writes only `lh` lists and one-cell data, so its hive is rewritten here into the
    // other layouts Windows writes: `Many`'s 3000 subkeys behind an index root (`ri`) over an
    // `li` and an `lf` leaf, and `Huge` (100 003 bytes) as big data (`db`, 16 344-byte
    // segments). hivex must read the rewritten hive exactly as the original, and so must
    // vhdforge.
    let dir = tempfile::tempdir().unwrap();
    let path = merged(dir.path(), "orig.hive", &minimal_hive(), &reg_file(3000));
    let mut file = std::fs::read(&path).unwrap();
    let original = tree_of_export(&path);

    let many = nk_at(&file, "Many");
    let lh = 4096 + get_u32(&file, many + 28) as usize + 4;
    assert_eq!(&file[lh..lh + 2], b"lh");
    let n = usize::from(u16::from_le_bytes([file[lh + 2], file[lh + 3]]));
    assert_eq!(n, 3000);
    let entry = |i: usize| {
        (
            get_u32(&file, lh + 4 + 8 * i),
            &file[lh + 8 + 8 * i..lh + 12 + 8 * i],
        )
    };
    let mut li = b"li".to_vec();
    li.extend_from_slice(&1000u16.to_le_bytes());
    for i in 0..1000 {
        li.extend_from_slice(&entry(i).0.to_le_bytes());
    }
    let mut lf = b"lf".to_vec();
    lf.extend_from_slice(&2000u16.to_le_bytes());
    for i in 1000..3000 {
        lf.extend_from_slice(&entry(i).0.to_le_bytes());
        lf.extend_from_slice(format!("Sub{}", i / 10000).as_bytes()); // the 4-char hint
    }
    let leaves = append_bin(&mut file, &[li, lf]);
    let mut ri = b"ri".to_vec();
    ri.extend_from_slice(&2u16.to_le_bytes());
    for l in &leaves {
        ri.extend_from_slice(&l.to_le_bytes());
    }
    let ri_at = append_bin(&mut file, &[ri])[0];
    let many = nk_at(&file, "Many");
    put_u32(&mut file, many + 28, ri_at);

    let types = nk_at(&file, "Types");
    let (count, list) = (
        get_u32(&file, types + 36) as usize,
        get_u32(&file, types + 40) as usize,
    );
    let vk = (0..count)
        .map(|i| 4096 + get_u32(&file, 4096 + list + 4 + 4 * i) as usize + 4)
        .find(|&vk| &file[vk + 20..vk + 24] == b"Huge")
        .unwrap();
    let size = get_u32(&file, vk + 4) as usize;
    let data = 4096 + get_u32(&file, vk + 8) as usize + 4;
    let huge = file[data..data + size].to_vec();
    // Windows leaves 4 spare bytes in every segment cell; hivex relies on it (it copies the
    // cell size - 8 bytes of each segment), so the segments are written the same way.
    let segments: Vec<Vec<u8>> = huge.chunks(16344).map(|c| [c, &[0; 4]].concat()).collect();
    let segs = append_bin(&mut file, &segments);
    let list_at = append_bin(
        &mut file,
        &[segs.iter().flat_map(|o| o.to_le_bytes()).collect()],
    )[0];
    let mut db = b"db".to_vec();
    db.extend_from_slice(&(segs.len() as u16).to_le_bytes());
    db.extend_from_slice(&list_at.to_le_bytes());
    db.extend_from_slice(&[0; 4]);
    let db_at = append_bin(&mut file, &[db])[0];
    let vk_data = (0..count)
        .map(|i| 4096 + get_u32(&file, 4096 + list + 4 + 4 * i) as usize + 4)
        .find(|&vk| &file[vk + 20..vk + 24] == b"Huge")
        .unwrap();
    put_u32(&mut file, vk_data + 8, db_at);

    let kinds = cell_kinds(&file);
    for k in ["ri", "li", "lf", "db"] {
        assert!(kinds.contains_key(k), "{k} missing: {kinds:?}");
    }
    let rewritten = dir.path().join("rewritten.hive");
    std::fs::write(&rewritten, &file).unwrap();
    assert_same(
        &tree_of_export(&rewritten),
        &original,
        "hivex, rewritten vs original",
    );
    let hive = Hive::from_bytes(&file).unwrap();
    assert_same(&tree_of(&hive), &original, "vhdforge on the rewritten hive");
    let v = hive.value("Types", "Huge").unwrap().unwrap();
    assert_eq!(v.raw(), &huge[..]);
}

#[test]
fn deleted_keys_vanish_like_in_hivex() {
    // hivexsh frees the cells of a deleted key and its values; the freed cells stay in the
    // file and must never be read as live keys.
    let dir = tempfile::tempdir().unwrap();
    let path = merged(dir.path(), "del.hive", &minimal_hive(), &reg_file(600));
    let script = dir.path().join("del.txt");
    std::fs::write(
        &script,
        "cd \\Many\\Sub00010\ndel\ncd \\Types\\Ünïcödé\ndel\ncd \\ControlSet001\ndel\ncommit\n",
    )
    .unwrap();
    let out = Command::new("hivexsh")
        .args(["-w", "-f", s(&script), s(&path)])
        .output()
        .expect("hivexsh is required (libhivex-bin)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&path).unwrap();
    let hive = Hive::from_bytes(&bytes).unwrap();
    let ours = tree_of(&hive);
    assert_same(&ours, &tree_of_export(&path), "after deletions");
    for gone in [
        "Many\\Sub00010",
        "Types\\Ünïcödé",
        "ControlSet001\\Services\\TermService",
    ] {
        assert!(hive.key(gone).unwrap().is_none(), "{gone}");
        assert!(!ours.contains_key(&format!("\\{gone}")), "{gone}");
    }
    assert!(hive.key("Many\\Sub00011").unwrap().is_some());
    assert_eq!(
        ours.keys().filter(|k| k.starts_with("\\Many\\")).count(),
        599
    );
}

fn hive_bins_size(file: &[u8]) -> usize {
    get_u32(file, 40) as usize
}

#[test]
fn dirty_hive_logs_replay_to_what_hivex_reads_in_the_newer_hive() {
    // Three generations made by hivex: v0, v1 = v0 + a merge (values changed, keys added,
    // the hive grown), v2 = v1 + another. The primary file is v0 marked dirty (primary
    // sequence one ahead); the log holds entry S+1 (v0 → v1) and S+2 (v1 → v2).
    let dir = tempfile::tempdir().unwrap();
    let p0 = merged(dir.path(), "v0.hive", &minimal_hive(), &reg_file(200));
    let v0 = std::fs::read(&p0).unwrap();
    let mut more = String::from(
        "Windows Registry Editor Version 5.00\n\n[\\Types]\n\"Dword\"=dword:00000063\n\n",
    );
    for i in 0..1500 {
        writeln!(
            more,
            "[\\Grown\\K{i:04}]\n\"v\"=hex(3):{}\n",
            hex(&[i as u8; 64])
        )
        .unwrap();
    }
    let p1 = merged(dir.path(), "v1.hive", &v0, &with_parents(&more));
    let v1 = std::fs::read(&p1).unwrap();
    let p2 = merged(dir.path(), "v2.hive", &v1, "Windows Registry Editor Version 5.00\n\n[\\Select]\n\"Current\"=dword:00000001\n\n[\\Types\\Late]\n\"z\"=dword:00000007\n\n");
    let v2 = std::fs::read(&p2).unwrap();
    assert!(hive_bins_size(&v1) > hive_bins_size(&v0), "the hive grew");

    let s = get_u32(&v0, 8);
    let mut primary = v0.clone();
    put_u32(&mut primary, 4, s + 1);
    base_block::set_checksum(&mut primary[..4096]);
    let a = log_entry(s + 1, hive_bins_size(&v1), &dirty_pages(&v0, &v1));
    let b = log_entry(s + 2, hive_bins_size(&v2), &dirty_pages(&v1, &v2));
    let check = |hive: &Hive, want: &Path, what: &str| {
        let replayed = dir.path().join(format!("{what}.replayed"));
        std::fs::write(&replayed, hive.to_file_bytes()).unwrap();
        let expected = tree_of_export(want);
        assert_same(
            &tree_of_export(&replayed),
            &expected,
            &format!("{what}: hivex on the replayed bytes"),
        );
        assert_same(&tree_of(hive), &expected, &format!("{what}: vhdforge"));
    };

    // One log with both entries: everything applied.
    let log = log_file(&v0, s + 1, 6, &[a.clone(), b.clone()]);
    let hive = Hive::with_logs(&primary, &[&log]).unwrap();
    let dirty = hive.dirty().unwrap();
    assert_eq!(
        dirty.reason,
        DirtyReason::SequencesDiffer {
            primary: s + 1,
            secondary: s
        }
    );
    assert_eq!(
        dirty.replay,
        Replay::Replayed {
            entries: 2,
            last_sequence: s + 2
        }
    );
    check(&hive, &p2, "both entries");
    assert_eq!(
        hive.value("Types", "Dword").unwrap().unwrap().as_dword(),
        Some(0x63)
    );

    // The same through positional sources (how the Windows checks will read them).
    let src = vhdforge_core::io::MemSource::new(primary.clone());
    let log_src = vhdforge_core::io::MemSource::new(log.clone());
    let hive = Hive::read(&src, &[&log_src]).unwrap();
    check(&hive, &p2, "read");

    // A wiped primary base block is recovered from the log's copy, then replayed.
    let mut wiped = primary.clone();
    wiped[..512].fill(0);
    let hive = Hive::with_logs(&wiped, &[&log]).unwrap();
    assert_eq!(hive.dirty().unwrap().reason, DirtyReason::BadChecksum);
    check(&hive, &p2, "recovered base block");
    assert!(
        Hive::from_bytes(&wiped).is_err(),
        "without a log there is nothing to recover from"
    );

    // The entries split over LOG1 and LOG2, handed over in the other order.
    let log1 = log_file(&v0, s + 1, 6, std::slice::from_ref(&a));
    let log2 = log_file(&v0, s + 2, 6, std::slice::from_ref(&b));
    let hive = Hive::with_logs(&primary, &[&log2, &log1]).unwrap();
    assert_eq!(
        hive.dirty().unwrap().replay,
        Replay::Replayed {
            entries: 2,
            last_sequence: s + 2
        }
    );
    check(&hive, &p2, "two logs");

    // A damaged second entry (one byte of a page flipped: hash-1 fails): replay stops before it.
    let mut bad_b = b.clone();
    let last = bad_b.len() - 600;
    bad_b[last] ^= 0xFF;
    let log = log_file(&v0, s + 1, 6, &[a.clone(), bad_b]);
    let hive = Hive::with_logs(&primary, &[&log]).unwrap();
    assert_eq!(
        hive.dirty().unwrap().replay,
        Replay::Replayed {
            entries: 1,
            last_sequence: s + 1
        }
    );
    check(&hive, &p1, "bad hash");

    // No logs: reported dirty, read as the primary has it (v0).
    let hive = Hive::from_bytes(&primary).unwrap();
    assert_eq!(hive.dirty().unwrap().replay, Replay::NoLogs);
    assert_same(&tree_of(&hive), &tree_of_export(&p0), "no logs");

    // An old-format log is recognised and not replayed.
    let old = log_file(&v0, s + 1, 1, &[]);
    let hive = Hive::with_logs(&primary, &[&old]).unwrap();
    match &hive.dirty().unwrap().replay {
        Replay::NotReplayed(why) => assert!(why.contains("old-format"), "{why}"),
        other => panic!("{other:?}"),
    }

    // Entries older than the primary's sequence are stale and skipped.
    let mut ahead = primary.clone();
    put_u32(&mut ahead, 4, s + 5);
    base_block::set_checksum(&mut ahead[..4096]);
    let hive =
        Hive::with_logs(&ahead, &[&log_file(&v0, s + 1, 6, &[a.clone(), b.clone()])]).unwrap();
    assert!(matches!(
        hive.dirty().unwrap().replay,
        Replay::NotReplayed(_)
    ));
    assert_same(&tree_of(&hive), &tree_of_export(&p0), "stale log");

    // A clean primary ignores its logs, as Windows does.
    let hive = Hive::with_logs(&v0, &[&log_file(&v0, s + 1, 6, &[a, b])]).unwrap();
    assert!(hive.dirty().is_none());
    assert_same(&tree_of(&hive), &tree_of_export(&p0), "clean primary");
}

const LOADER: &str = "{b2721d73-1db4-4c62-bf78-c548a880142e}";

/// A BCD store as bcdedit leaves it after Azure's preparation steps, merged by hivex:
/// `{bootmgr}` → default loader, inheritance loader → {bootloadersettings} →
/// {globalsettings} → {emssettings}, element key names in both hex cases, and a loop back.
fn bcd_reg() -> String {
    let u64b = |n: u64| hex(&n.to_le_bytes());
    let multi = |g: &[&str]| {
        let mut b: Vec<u8> = g.iter().flat_map(|s| utf16z(s)).collect();
        b.extend([0, 0]);
        hex(&b)
    };
    let bootmgr = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}";
    let bls = "{6efb52bf-1766-41db-a6b3-0ee5eff72bd7}";
    let gs = "{7ea2e1ac-2e61-4728-aaa3-896d9d0a9f0e}";
    let ems = "{0ce4991b-e6b3-4b16-b23c-5e0d9250e5d9}";
    let mut r = String::from("Windows Registry Editor Version 5.00\n\n");
    let mut el = |obj: &str, t: &str, v: String| {
        writeln!(r, "[\\Objects\\{obj}\\Elements\\{t}]\n\"Element\"={v}\n").unwrap();
    };
    el(
        bootmgr,
        "23000003",
        format!("hex(1):{}", hex(&utf16z(&LOADER.to_uppercase()))),
    );
    el(bootmgr, "16000020", "hex(3):01".into());
    el(bootmgr, "25000004", format!("hex(3):{}", u64b(5)));
    el(bootmgr, "26000020", "hex(3):01".into());
    el(LOADER, "250000E0", format!("hex(3):{}", u64b(1)));
    el(LOADER, "260000b0", "hex(3):01".into());
    el(LOADER, "16000009", "hex(3):00".into());
    el(LOADER, "14000006", format!("hex(7):{}", multi(&[bls])));
    el(bls, "14000006", format!("hex(7):{}", multi(&[gs])));
    el(gs, "14000006", format!("hex(7):{}", multi(&[ems, LOADER])));
    el(ems, "15000022", format!("hex(3):{}", u64b(1)));
    el(ems, "15000023", format!("hex(3):{}", u64b(115_200)));
    writeln!(
        r,
        "[\\Objects\\{bootmgr}\\Description]\n\"Type\"=dword:10100002\n"
    )
    .unwrap();
    writeln!(
        r,
        "[\\Objects\\{LOADER}\\Description]\n\"Type\"=dword:10200003\n"
    )
    .unwrap();
    with_parents(&r)
}

#[test]
fn bcd_settings_resolve_default_and_inheritance() {
    let dir = tempfile::tempdir().unwrap();
    let path = merged(dir.path(), "BCD", &minimal_hive(), &bcd_reg());
    let bytes = std::fs::read(&path).unwrap();
    let hive = Hive::from_bytes(&bytes).unwrap();
    assert_same(&tree_of(&hive), &tree_of_export(&path), "BCD");
    let store = bcd::Bcd::new(&hive).unwrap();
    assert_eq!(store.object_type(bcd::BOOTMGR).unwrap(), Some(0x1010_0002));
    assert_eq!(
        store.object_type(&LOADER.to_uppercase()).unwrap(),
        Some(0x1020_0003)
    );
    let s = store.boot_settings().unwrap();
    let setting = |v: u64, from: &str| {
        Some(bcd::Setting {
            value: v,
            from: from.to_string(),
        })
    };
    let flag = |v: bool, from: &str| {
        Some(bcd::Setting {
            value: v,
            from: from.to_string(),
        })
    };
    assert_eq!(s.default_loader.as_deref(), Some(LOADER));
    assert_eq!(
        s.boot_status_policy,
        setting(1, LOADER),
        "IgnoreAllFailures, key name in upper-case hex"
    );
    assert_eq!(s.loader_ems, flag(true, LOADER));
    assert_eq!(s.recovery_enabled, flag(false, LOADER));
    assert_eq!(s.boot_manager_ems, flag(true, bcd::BOOTMGR));
    assert_eq!(s.display_boot_menu, flag(true, bcd::BOOTMGR));
    assert_eq!(s.timeout, setting(5, bcd::BOOTMGR));
    assert_eq!(
        s.ems_port,
        setting(1, bcd::EMSSETTINGS),
        "inherited three levels down"
    );
    assert_eq!(s.ems_baud_rate, setting(115_200, bcd::EMSSETTINGS));
    // An element set nowhere, through an inheritance loop, is simply absent.
    assert!(store.effective(LOADER, 0x1500_0099).unwrap().is_none());

    // A hive without `Objects` is not a BCD store.
    let other = Hive::from_bytes(&minimal_hive()).unwrap();
    assert_eq!(
        bcd::Bcd::new(&other).unwrap_err().code(),
        "guest.registry.bcd"
    );
}

/// Open, walk and read every value: what any consumer might do with a hive. Errors are fine
/// (and must carry a registry code); panics and hangs are not.
fn exercise(bytes: &[u8]) {
    match Hive::from_bytes(bytes) {
        Ok(hive) => {
            let r = hive.walk(&mut |_, k| {
                for v in k.values()? {
                    let _ = v.data();
                }
                Ok(())
            });
            if let Err(e) = r {
                assert!(e.code().as_str().starts_with("guest.registry."), "{e}");
            }
            let _ = hive.key("CurrentControlSet\\Services\\TermService");
            if let Ok(store) = bcd::Bcd::new(&hive) {
                let _ = store.boot_settings();
            }
        }
        Err(e) => assert!(e.code().as_str().starts_with("guest.registry."), "{e}"),
    }
}

#[test]
fn mutated_headers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = merged(dir.path(), "m.hive", &minimal_hive(), &reg_file(40));
    let good = std::fs::read(&path).unwrap();
    let mut targets: Vec<usize> = (0..512).collect(); // the base block
    let bins = hive_bins_size(&good);
    let mut at = 0;
    while at < bins {
        targets.extend((4096 + at)..(4096 + at + 32)); // every bin header
        let end = at + get_u32(&good, 4096 + at + 8) as usize;
        let mut c = at + 32;
        let mut n = 0;
        while c < end && n < 32 {
            targets.extend((4096 + c)..(4096 + c + 12)); // cell size and record header
            c += i32::from_le_bytes(good[4096 + c..4100 + c].try_into().unwrap()).unsigned_abs()
                as usize;
            n += 1;
        }
        at = end;
    }
    let started = std::time::Instant::now();
    for &t in &targets {
        for v in [
            0x00u8,
            0xFF,
            0x80,
            0x7F,
            good[t].wrapping_add(1),
            good[t] ^ 0x20,
        ] {
            let mut m = good.clone();
            m[t] = v;
            if t < 508 {
                base_block::set_checksum(&mut m[..4096]); // also reach past the checksum
            }
            exercise(&m);
        }
    }
    eprintln!("{} mutations in {:?}", targets.len() * 4, started.elapsed());
}

#[test]
fn hostile_references_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = merged(dir.path(), "h.hive", &minimal_hive(), &reg_file(20));
    let good = std::fs::read(&path).unwrap();
    let hive = Hive::from_bytes(&good).unwrap();
    let root = hive.root().unwrap().offset();
    let many = nk_at(&good, "Many");
    let lh = 4096 + get_u32(&good, many + 28) as usize + 4;

    // A subkey list that names the root: a cycle. Lookups stay bounded; a walk refuses it.
    let mut cyc = good.clone();
    put_u32(&mut cyc, lh + 4, root);
    let h = Hive::from_bytes(&cyc).unwrap();
    let e = h.walk(&mut |_, _| Ok(())).unwrap_err();
    assert!(e.message().contains("listed more than once"), "{e}");

    // The same list naming one leaf twice through an index root is refused.
    let mut twice = good.clone();
    let leaf = get_u32(&good, many + 28);
    let ri_at = append_bin(
        &mut twice,
        &[[
            b"ri".to_vec(),
            2u16.to_le_bytes().to_vec(),
            leaf.to_le_bytes().to_vec(),
            leaf.to_le_bytes().to_vec(),
        ]
        .concat()],
    )[0];
    let many2 = nk_at(&twice, "Many");
    put_u32(&mut twice, many2 + 28, ri_at);
    let e = Hive::from_bytes(&twice)
        .unwrap()
        .key("Many\\Sub00001")
        .unwrap_err();
    assert!(e.message().contains("twice"), "{e}");

    // A reference into a free cell (the free remainder of the last bin).
    let mut free = good.clone();
    let last_bin = {
        let mut at = 0;
        while at + (get_u32(&good, 4096 + at + 8) as usize) < hive_bins_size(&good) {
            at += get_u32(&good, 4096 + at + 8) as usize;
        }
        at
    };
    let mut c = last_bin + 32;
    while i32::from_le_bytes(good[4096 + c..4100 + c].try_into().unwrap()) < 0 {
        c += i32::from_le_bytes(good[4096 + c..4100 + c].try_into().unwrap()).unsigned_abs()
            as usize;
    }
    put_u32(&mut free, lh + 4, c as u32);
    let e = Hive::from_bytes(&free)
        .unwrap()
        .key("Many\\Sub00000")
        .unwrap_err();
    assert_eq!(e.code(), "guest.registry.corrupt");
    assert!(
        e.message().contains("not the start of an allocated cell"),
        "{e}"
    );

    // A value whose data claims 2 GiB: reading it is refused by name, and looking up
    // another value of the same key never touches it.
    let mut claim = good.clone();
    let types = nk_at(&claim, "Types");
    let (count, list) = (
        get_u32(&claim, types + 36) as usize,
        get_u32(&claim, types + 40) as usize,
    );
    let vk = (0..count)
        .map(|i| 4096 + get_u32(&claim, 4096 + list + 4 + 4 * i) as usize + 4)
        .find(|&vk| &claim[vk + 20..vk + 23] == b"Big")
        .unwrap();
    put_u32(&mut claim, vk + 4, 0x7FFF_FFFF);
    let h = Hive::from_bytes(&claim).unwrap();
    let t = h.key("Types").unwrap().unwrap();
    assert_eq!(t.value("Big").unwrap_err().code(), "guest.registry.limit");
    assert_eq!(t.value("Dword").unwrap().unwrap().as_dword(), Some(42));
    // A value count past the cap is refused before the list is read.
    put_u32(&mut claim, types + 36, 300_000);
    let h = Hive::from_bytes(&claim).unwrap();
    let e = h.key("Types").unwrap().unwrap().values().unwrap_err();
    assert_eq!(e.code(), "guest.registry.limit", "{e}");

    // A clean hive cut short.
    let e = Hive::from_bytes(&good[..good.len() - 4096]).unwrap_err();
    assert!(e.message().contains("truncated"), "{e}");

    // Over the size cap: refused before anything is parsed.
    let big = vec![0u8; vhdforge_core::guest::registry::MAX_HIVE_BYTES + 1];
    assert_eq!(
        Hive::from_bytes(&big).unwrap_err().code(),
        "guest.registry.limit"
    );

    // Not a SYSTEM hive: CurrentControlSet cannot be resolved, and says so.
    let plain = Hive::from_bytes(&minimal_hive()).unwrap();
    let e = plain.key("CurrentControlSet\\Services").unwrap_err();
    assert_eq!(e.code(), "guest.registry.not_found");
}
