//! Differential tests of the partition reader (`vhdforge_core::guest::partition`) against
//! two parsers no one here wrote: util-linux's libfdisk (`sfdisk --json`) and libblkid
//! (`partx --pairs`), on disks laid out at test time by `sfdisk` and `sgdisk`. Each disk is
//! also read wrapped in a VHDX and a dynamic VHD (qemu-img), 4096-byte-sector disks in a
//! 4Kn VHDX, and a changed table through a differencing VHDX, to prove the `DiskImage` seam
//! carries it. A missing oracle is a test failure, never a skip.

use fixtures::vhdx::{self as fx, VhdxSpec};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use uuid::Uuid;
use vhdforge_core::guest::partition::{self, PartitionTable, Role, Scheme};
use vhdforge_core::guest::{Generation, PartitionKind};
use vhdforge_core::{DiskImage, OpenOptions};

const MIB: u64 = 1 << 20;

/// Run a tool, failing the test with its output when it is missing or fails.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("oracle `{program}` is required for this test and could not be run ({e}); scripts/setup.sh installs it")
        });
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn blank(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

fn open(p: &Path) -> Box<dyn DiskImage> {
    vhdforge_core::open(p, &OpenOptions::default())
        .unwrap_or_else(|e| panic!("vhdforge cannot open {}: {e}", p.display()))
}

fn read(p: &Path) -> PartitionTable {
    partition::partitions(open(p).as_ref()).unwrap()
}

/// One partition as an oracle reports it, in sectors of the oracle's sector size.
#[derive(Debug, Default)]
struct Row {
    number: u32,
    start: u64,
    sectors: u64,
    type_id: String,
    uuid: Option<String>,
    name: String,
    /// sfdisk: `bootable`; partx: FLAGS (boot indicator on MBR, attribute bits on GPT).
    flags: Option<u64>,
    attrs: Option<String>,
}

/// The partition number at the end of a node name (`/tmp/x/disk.img5` → 5).
fn node_number(node: &str, device: &str) -> u32 {
    node.strip_prefix(device)
        .unwrap_or(node)
        .trim_start_matches('p')
        .parse()
        .unwrap_or_else(|_| panic!("cannot take a partition number from {node:?}"))
}

/// `sfdisk --json`: label, disk id, sector size, rows.
fn sfdisk(dev: &Path) -> (String, String, u32, Vec<Row>) {
    let v: Value = serde_json::from_str(&run("sfdisk", &["--json", s(dev)], None)).unwrap();
    let t = &v["partitiontable"];
    let device = t["device"].as_str().unwrap();
    let rows = t["partitions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| Row {
            number: node_number(p["node"].as_str().unwrap(), device),
            start: p["start"].as_u64().unwrap(),
            sectors: p["size"].as_u64().unwrap(),
            type_id: p["type"].as_str().unwrap().to_string(),
            uuid: p["uuid"].as_str().map(str::to_string),
            name: p["name"].as_str().unwrap_or("").to_string(),
            flags: Some(u64::from(p["bootable"].as_bool().unwrap_or(false))),
            attrs: p["attrs"].as_str().map(str::to_string),
        })
        .collect();
    (
        t["label"].as_str().unwrap().to_string(),
        t["id"].as_str().unwrap().to_string(),
        u32::try_from(t["sectorsize"].as_u64().unwrap()).unwrap(),
        rows,
    )
}

/// Undo libsmartcols' `\xHH` escaping of `-P` values.
fn unescape(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') && i + 4 <= b.len() {
            let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap_or("");
            if let Ok(x) = u8::from_str_radix(hex, 16) {
                out.push(x);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// `partx --pairs` (libblkid): rows in 512-byte sectors, as partx always reports.
fn partx(dev: &Path) -> Vec<Row> {
    let out = run(
        "partx",
        &[
            "-b",
            "-P",
            "-o",
            "NR,START,SECTORS,UUID,TYPE,FLAGS,NAME",
            s(dev),
        ],
        None,
    );
    out.lines()
        .map(|line| {
            let mut r = Row::default();
            // KEY="value" pairs; values never contain `" ` unescaped.
            for pair in line.split("\" ") {
                let (k, v) = pair.split_once("=\"").unwrap();
                let v = unescape(v.trim_end_matches('"'));
                match k {
                    "NR" => r.number = v.parse().unwrap(),
                    "START" => r.start = v.parse().unwrap(),
                    "SECTORS" => r.sectors = v.parse().unwrap(),
                    "UUID" => r.uuid = Some(v),
                    "TYPE" => r.type_id = v,
                    "FLAGS" => {
                        r.flags = Some(u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap())
                    }
                    "NAME" => r.name = v,
                    _ => {}
                }
            }
            r
        })
        .collect()
}

/// sfdisk's spelling of GPT attribute bits.
fn sfdisk_attrs(bits: u64) -> Option<String> {
    let mut words = Vec::new();
    for (bit, w) in [
        (0, "RequiredPartition"),
        (1, "NoBlockIOProtocol"),
        (2, "LegacyBIOSBootable"),
    ] {
        if bits & (1 << bit) != 0 {
            words.push(w.to_string());
        }
    }
    let guid: Vec<String> = (48..64)
        .filter(|b| bits & (1 << b) != 0)
        .map(|b| b.to_string())
        .collect();
    if !guid.is_empty() {
        words.push(format!("GUID:{}", guid.join(",")));
    }
    (!words.is_empty()).then(|| words.join(" "))
}

/// vhdforge's table must equal what sfdisk and partx report for `dev`.
fn assert_agrees(ours: &PartitionTable, dev: &Path) {
    let (label, id, ss, rows) = sfdisk(dev);
    let want_scheme = match label.as_str() {
        "dos" => Scheme::Mbr,
        "gpt" => Scheme::Gpt,
        other => panic!("unexpected label {other}"),
    };
    assert_eq!(ours.scheme, want_scheme);
    assert_eq!(ours.sector_size, ss);
    assert!(
        ours.disk_id.as_deref().unwrap().eq_ignore_ascii_case(&id),
        "disk id {:?} vs sfdisk {id}",
        ours.disk_id
    );
    assert_eq!(
        ours.partitions.len(),
        rows.len(),
        "sfdisk sees {rows:?}, vhdforge {:#?}",
        ours.partitions
    );
    let ss = u64::from(ss);
    for r in &rows {
        let p = ours
            .get(r.number)
            .unwrap_or_else(|| panic!("no partition {} in {:#?}", r.number, ours.partitions));
        let what = format!("partition {} (sfdisk {r:?})", r.number);
        assert_eq!(
            (p.start_bytes, p.size_bytes),
            (r.start * ss, r.sectors * ss),
            "{what}"
        );
        match ours.scheme {
            Scheme::Mbr => {
                assert_eq!(
                    p.partition_type,
                    partition::PartitionType::Mbr(u8::from_str_radix(&r.type_id, 16).unwrap()),
                    "{what}"
                );
                assert_eq!(u64::from(p.active), r.flags.unwrap(), "{what}");
            }
            _ => {
                assert!(
                    p.partition_type
                        .to_string()
                        .eq_ignore_ascii_case(&r.type_id),
                    "{what}"
                );
                assert!(
                    p.partuuid.eq_ignore_ascii_case(r.uuid.as_deref().unwrap()),
                    "{what}"
                );
                assert_eq!(p.name.as_deref().unwrap_or(""), r.name, "{what}");
                assert_eq!(sfdisk_attrs(p.attributes), r.attrs, "{what}");
            }
        }
    }
    let prow = partx(dev);
    assert_eq!(ours.partitions.len(), prow.len(), "partx sees {prow:?}");
    for r in &prow {
        let p = ours.get(r.number).unwrap();
        let what = format!("partition {} (partx {r:?})", r.number);
        assert_eq!(
            (p.start_bytes, p.size_bytes),
            (r.start * 512, r.sectors * 512),
            "{what}"
        );
        assert!(
            p.partuuid.eq_ignore_ascii_case(r.uuid.as_deref().unwrap()),
            "{what}"
        );
        let flags = if ours.scheme == Scheme::Mbr {
            if p.active {
                0x80
            } else {
                0
            }
        } else {
            p.attributes
        };
        assert_eq!(Some(flags), r.flags, "{what}");
        assert_eq!(p.name.as_deref().unwrap_or(""), r.name, "{what}");
    }
}

/// The same disk through qemu-img as a dynamic VHDX and a dynamic VHD: the same table.
fn assert_same_through_containers(raw: &Path, want: &PartitionTable) {
    let dir = raw.parent().unwrap();
    let vhdx = dir.join("wrapped.vhdx");
    let vhd = dir.join("wrapped.vhd");
    let _ = std::fs::remove_file(&vhdx);
    let _ = std::fs::remove_file(&vhd);
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "vhdx", s(raw), s(&vhdx)],
        None,
    );
    // force_size keeps the exact virtual size (no CHS rounding), so the GPT backup stays last.
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=dynamic,force_size=on",
            s(raw),
            s(&vhd),
        ],
        None,
    );
    for p in [&vhdx, &vhd] {
        let t = read(p);
        assert_eq!(t.partitions, want.partitions, "{}", p.display());
        assert_eq!(t.findings, want.findings, "{}", p.display());
        assert_eq!(t.generation, want.generation, "{}", p.display());
    }
}

const MBR_SCRIPT: &str = "label: dos
label-id: 0x5eed1e55
start=2048, size=20480, type=83, bootable
start=22528, size=8192, type=82
start=30720, type=f
size=10240, type=83
size=8192, type=8e
size=2048, type=c
type=7
";

#[test]
fn mbr_with_logical_partitions_matches_sfdisk_and_partx() {
    let dir = tempfile::tempdir().unwrap();
    let img = blank(dir.path(), "mbr.img", 64 * MIB);
    run("sfdisk", &["-q", s(&img)], Some(MBR_SCRIPT));
    let t = read(&img);
    assert!(t.findings.is_empty(), "{:?}", t.findings);
    assert_agrees(&t, &img);
    // The table really has the shape the script asked for (not two empty agreeing lists).
    let roles: Vec<(u32, Role)> = t.partitions.iter().map(|p| (p.number, p.role)).collect();
    assert_eq!(
        roles,
        [
            (1, Role::Primary),
            (2, Role::Primary),
            (3, Role::Extended),
            (5, Role::Logical),
            (6, Role::Logical),
            (7, Role::Logical),
            (8, Role::Logical)
        ]
    );
    assert_eq!(t.get(6).unwrap().kind, PartitionKind::LinuxLvm);
    assert_eq!(t.generation, Some(Generation::Gen1));
    assert_same_through_containers(&img, &t);
}

const GPT_SCRIPT: &str = "label: gpt
label-id: 01234567-89AB-CDEF-0123-456789ABCDEF
start=2048, size=20480, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI System Partition\", uuid=11111111-2222-3333-4444-555555555555
size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios, attrs=\"LegacyBIOSBootable\"
size=8192, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name=\"swap – ü\"
DEV6 : size=16384, type=E6D6D379-F507-44C2-A23C-238F2A3DF928
size=4096, type=E3C9E316-0B5C-4DB8-817D-F92DF00215AE, name=\"Microsoft reserved partition\"
size=8192, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=\"Basic data partition\", attrs=\"RequiredPartition GUID:60,63\"
size=4096, type=DE94BBA4-06D1-4D40-A16A-BFD50179D6AC
type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root
";

/// A GPT disk made by sfdisk: every type vhdforge names, names with non-ASCII characters,
/// attribute bits, and a partition in slot 6 that leaves slots 4 and 5 for later entries.
fn sfdisk_gpt(dir: &Path) -> PathBuf {
    let img = blank(dir, "gpt.img", 96 * MIB);
    let script = GPT_SCRIPT.replace("DEV6", &format!("{}6", s(&img)));
    run("sfdisk", &["-q", s(&img)], Some(&script));
    img
}

#[test]
fn gpt_from_sfdisk_matches_sfdisk_and_partx() {
    let dir = tempfile::tempdir().unwrap();
    let img = sfdisk_gpt(dir.path());
    let t = read(&img);
    assert!(t.findings.is_empty(), "{:?}", t.findings);
    assert_agrees(&t, &img);
    let kinds: Vec<(u32, PartitionKind)> =
        t.partitions.iter().map(|p| (p.number, p.kind)).collect();
    assert_eq!(
        kinds,
        [
            (1, PartitionKind::EfiSystem),
            (2, PartitionKind::BiosBoot),
            (3, PartitionKind::LinuxSwap),
            (4, PartitionKind::MicrosoftReserved),
            (5, PartitionKind::MicrosoftBasicData),
            (6, PartitionKind::LinuxLvm),
            (7, PartitionKind::WindowsRecovery),
            (8, PartitionKind::LinuxFilesystem),
        ]
    );
    assert_eq!(t.generation, Some(Generation::Gen2));
    assert_same_through_containers(&img, &t);
}

#[test]
fn gpt_from_sgdisk_matches_sfdisk_and_partx() {
    let dir = tempfile::tempdir().unwrap();
    let img = blank(dir.path(), "sg.img", 80 * MIB);
    run(
        "sgdisk",
        &[
            "-o",
            "-n",
            "1:2048:+1M",
            "-t",
            "1:ef02",
            "-c",
            "1:BIOS boot partition",
            "-n",
            "2:0:+30M",
            "-t",
            "2:8300",
            "-c",
            "2:root",
            "-A",
            "2:set:2",
            "-n",
            "5:0:+8M",
            "-t",
            "5:8200",
            "-n",
            "9:0:0",
            "-t",
            "9:8e00",
            "-c",
            "9:pv",
            s(&img),
        ],
        None,
    );
    let t = read(&img);
    assert!(t.findings.is_empty(), "{:?}", t.findings);
    assert_agrees(&t, &img);
    // BIOS boot and no ESP: a Gen1 (BIOS) guest on GPT.
    assert_eq!(t.generation, Some(Generation::Gen1));
    // sgdisk's own type codes land on the kinds vhdforge names.
    let kinds: Vec<(u32, PartitionKind)> =
        t.partitions.iter().map(|p| (p.number, p.kind)).collect();
    assert_eq!(
        kinds,
        [
            (1, PartitionKind::BiosBoot),
            (2, PartitionKind::LinuxFilesystem),
            (5, PartitionKind::LinuxSwap),
            (9, PartitionKind::LinuxLvm),
        ]
    );
}

#[test]
fn damaged_primary_gpt_is_read_from_the_backup_as_the_oracles_read_the_intact_disk() {
    let dir = tempfile::tempdir().unwrap();
    let img = sfdisk_gpt(dir.path());
    let intact = dir.path().join("intact.img");
    std::fs::copy(&img, &intact).unwrap();
    for (what, offset) in [("header", 512 + 0x38), ("entry array", 1024 + 0x20)] {
        std::fs::copy(&intact, &img).unwrap();
        let mut bytes = std::fs::read(&img).unwrap();
        bytes[offset] ^= 0xFF;
        std::fs::write(&img, &bytes).unwrap();
        let t = read(&img);
        let codes: Vec<&str> = t.findings.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(codes, [partition::CODE_GPT_BACKUP_USED], "{what}");
        assert_agrees(&t, &intact);
    }
}

#[test]
fn a_grown_disk_reports_its_misplaced_backup_until_sgdisk_moves_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = sfdisk_gpt(dir.path());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(128 * MIB)
        .unwrap();
    let t = read(&img);
    let codes: Vec<&str> = t.findings.iter().map(|f| f.code.as_str()).collect();
    // The old backup is intact where the primary points, just no longer at the disk's end.
    assert_eq!(codes, [partition::CODE_GPT_BACKUP_MISPLACED]);
    run("sgdisk", &["-e", s(&img)], None);
    let t = read(&img);
    assert!(t.findings.is_empty(), "{:?}", t.findings);
    assert_agrees(&t, &img);
}

/// Detaches the loop device when the test ends, pass or fail.
struct Loop(String);
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn gpt_on_4096_byte_sectors_in_a_4kn_vhdx_matches_sfdisk() {
    let dir = tempfile::tempdir().unwrap();
    let img = blank(dir.path(), "4kn.img", 64 * MIB);
    // sfdisk takes the sector size from the device: a 4096-byte-sector loop device.
    let dev = run(
        "losetup",
        &["--sector-size", "4096", "-f", "--show", s(&img)],
        None,
    )
    .trim()
    .to_string();
    let lo = Loop(dev);
    run(
        "sfdisk",
        &["-q", &lo.0],
        Some("label: gpt\nsize=2048, type=U, name=esp\ntype=L, name=root\n"),
    );
    let (_, _, ss, rows) = sfdisk(Path::new(&lo.0));
    assert_eq!(ss, 4096);
    drop(lo);
    let content = std::fs::read(&img).unwrap();
    let mut spec = VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0x4444));
    spec.logical_sector_size = 4096;
    let vhdx = fx::write_file(dir.path(), "4kn.vhdx", &fx::build(&spec, &content).bytes);
    let t = read(&vhdx);
    assert!(t.findings.is_empty(), "{:?}", t.findings);
    assert_eq!(t.sector_size, 4096);
    assert_eq!(t.partitions.len(), rows.len());
    for r in &rows {
        let p = t.get(r.number).unwrap();
        assert_eq!(
            (p.start_bytes, p.size_bytes),
            (r.start * 4096, r.sectors * 4096)
        );
        assert!(p.partuuid.eq_ignore_ascii_case(r.uuid.as_deref().unwrap()));
    }
    // The same bytes read as a 512-byte-sector disk hold no GPT at LBA 1 (it sits at 4096).
    let raw = read(&img);
    assert!(raw.partitions.is_empty(), "{:?}", raw.partitions);
}

#[test]
fn a_table_changed_in_a_differencing_vhdx_is_read_through_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let base_img = sfdisk_gpt(dir.path());
    let base = std::fs::read(&base_img).unwrap();
    // The child: the same disk after `sfdisk --delete` of partition 3 and a new partition 4.
    let child_img = dir.path().join("child.img");
    std::fs::copy(&base_img, &child_img).unwrap();
    run("sfdisk", &["-q", "--delete", s(&child_img), "3"], None);
    run(
        "sfdisk",
        &["-q", "--append", s(&child_img)],
        Some("size=4096, type=L, name=added\n"),
    );
    let child = std::fs::read(&child_img).unwrap();
    let present: Vec<bool> = base
        .chunks(512)
        .zip(child.chunks(512))
        .map(|(a, b)| a != b)
        .collect();
    assert!(present.iter().any(|&p| p), "sfdisk changed nothing");
    let pspec = VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0xAAAA));
    fx::write_file(dir.path(), "base.vhdx", &fx::build(&pspec, &base).bytes);
    let mut spec = VhdxSpec::dynamic(1 << 20, Uuid::from_u128(0xBBBB));
    spec.child = Some(fx::ChildSpec {
        parent_linkage: Uuid::from_u128(0xAAAA),
        relative_path: Some(".\\base.vhdx".into()),
        absolute_win32_path: None,
        present: present.clone(),
    });
    let diff = fx::write_file(dir.path(), "diff.vhdx", &fx::build(&spec, &child).bytes);
    assert_eq!(fx::chain_content(&base, &child, &present, 512), child);
    let t = read(&diff);
    assert!(t.findings.is_empty(), "{:?}", t.findings);
    assert_agrees(&t, &child_img);
    assert_ne!(t.partitions, read(&base_img).partitions);
}
