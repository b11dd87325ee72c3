//! Differential tests of the LVM2 reader (`vhdforge_core::guest::lvm`) against LVM itself:
//! a PV made by `pvcreate` on a loop device over a GPT partition, a VG and LVs made by
//! `vgcreate`/`lvcreate`/`lvextend` (with `--driverloaded n`: no device-mapper here), then
//! compared with `pvs`/`lvs --reportformat json`. Reads through the LV windows land on the
//! physical extents LVM reports. A missing oracle is a test failure, never a skip.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use vhdforge_core::guest::lvm::{self, SegmentMap};
use vhdforge_core::guest::partition::{self, PartitionKind};
use vhdforge_core::{DiskImage, OpenOptions};

const MIB: u64 = 1 << 20;
/// Only our loop devices, no udev, no devices file, no backups in /etc/lvm.
const LVM_CONFIG: &str = "devices { use_devicesfile=0 obtain_device_list_from_udev=0 filter=[\"a|^/dev/loop|\",\"r|.*|\"] } activation { udev_sync=0 udev_rules=0 monitoring=0 } backup { backup=0 archive=0 }";

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(program)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
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

fn lvm(cmd: &str, args: &[&str]) -> String {
    let mut a = vec!["--config", LVM_CONFIG];
    a.extend_from_slice(args);
    run(cmd, &a, None)
}

/// The loop device holding the PV, detached when the test ends, pass or fail. The VG is
/// never activated (no device-mapper), so detaching is all the cleanup LVM needs, and the
/// metadata stays in the image for vhdforge to read (`vgremove` would wipe it).
struct Pv {
    dev: String,
}
impl Drop for Pv {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn open(p: &Path) -> Box<dyn DiskImage> {
    vhdforge_core::open(p, &OpenOptions::default()).unwrap()
}

fn bytes_field(v: &Value) -> u64 {
    v.as_str().unwrap().trim_end_matches('B').parse().unwrap()
}

#[test]
fn linear_lvs_match_lvs_and_read_from_the_extents_lvm_reports() {
    let dir = tempfile::tempdir().unwrap();
    let img: PathBuf = dir.path().join("lvm.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    run(
        "sfdisk",
        &["-q", img.to_str().unwrap()],
        Some("label: gpt\nsize=2048, type=U\ntype=E6D6D379-F507-44C2-A23C-238F2A3DF928\n"),
    );
    let table = partition::partitions(open(&img).as_ref()).unwrap();
    let part = table.get(2).unwrap().clone();
    assert_eq!(part.kind, PartitionKind::LinuxLvm);

    let dev = run(
        "losetup",
        &[
            "-f",
            "--show",
            "--offset",
            &part.start_bytes.to_string(),
            "--sizelimit",
            &part.size_bytes.to_string(),
            img.to_str().unwrap(),
        ],
        None,
    )
    .trim()
    .to_string();
    let vg = format!("vgf{}", std::process::id());
    let pv = Pv { dev };
    lvm("pvcreate", &["-y", &pv.dev]);
    lvm("vgcreate", &["-s", "1M", &vg, &pv.dev]);
    lvm(
        "lvcreate",
        &[
            "--driverloaded",
            "n",
            "-an",
            "-Zn",
            "-y",
            "-L",
            "8M",
            "-n",
            "root",
            &vg,
        ],
    );
    lvm(
        "lvcreate",
        &[
            "--driverloaded",
            "n",
            "-an",
            "-Zn",
            "-y",
            "-L",
            "3M",
            "-n",
            "swap",
            &vg,
        ],
    );
    // Growing root after swap gives it a second segment further along the PV.
    lvm(
        "lvextend",
        &["--driverloaded", "n", "-L", "13M", &format!("{vg}/root")],
    );
    let pvs: Value = serde_json::from_str(&lvm(
        "pvs",
        &[
            "--reportformat",
            "json",
            "--units",
            "b",
            "-o",
            "pv_uuid,pe_start,vg_name,vg_extent_size,vg_uuid",
            &pv.dev,
        ],
    ))
    .unwrap();
    let pvrow = &pvs["report"][0]["pv"][0];
    let lvs: Value = serde_json::from_str(&lvm(
        "lvs",
        &[
            "--reportformat",
            "json",
            "--units",
            "b",
            "-a",
            "--segments",
            "-o",
            "lv_name,lv_uuid,lv_size,seg_start_pe,seg_size_pe,seg_pe_ranges,segtype",
            &vg,
        ],
    ))
    .unwrap();
    let segs = lvs["report"][0]["seg"].as_array().unwrap().clone();
    drop(pv);

    let image = open(&img);
    let pv_window = part.window(image.as_ref()).unwrap();
    let got = lvm::read_pv(&pv_window).unwrap().expect("an LVM2 label");
    assert!(got.findings.is_empty(), "{:?}", got.findings);
    assert_eq!(got.name, vg);
    assert_eq!(got.pv_uuid, pvrow["pv_uuid"].as_str().unwrap());
    assert_eq!(got.uuid, pvrow["vg_uuid"].as_str().unwrap());
    assert_eq!(got.pe_start_bytes, bytes_field(&pvrow["pe_start"]));
    let extent = bytes_field(&pvrow["vg_extent_size"]);
    assert_eq!(got.extent_size_bytes, extent);

    // Every segment LVM reports, and nothing else.
    let mut ours: Vec<(String, u64, u64, u64)> = got
        .logical_volumes
        .iter()
        .flat_map(|lv| {
            lv.segments.iter().map(move |s| match &s.map {
                SegmentMap::Linear { pe, .. } => {
                    (lv.name.clone(), s.start_extent, s.extent_count, *pe)
                }
                other => panic!("{other:?}"),
            })
        })
        .collect();
    let mut want: Vec<(String, u64, u64, u64)> = segs
        .iter()
        .map(|s| {
            assert_eq!(s["segtype"], "linear");
            // "/dev/loopN:first-last"
            let range = s["seg_pe_ranges"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap();
            let pe0: u64 = range.split('-').next().unwrap().parse().unwrap();
            (
                s["lv_name"].as_str().unwrap().to_string(),
                s["seg_start_pe"].as_str().unwrap().parse().unwrap(),
                s["seg_size_pe"].as_str().unwrap().parse().unwrap(),
                pe0,
            )
        })
        .collect();
    ours.sort();
    want.sort();
    assert_eq!(ours, want);
    assert_eq!(
        ours.iter().filter(|s| s.0 == "root").count(),
        2,
        "root should have two segments: {ours:?}"
    );
    for s in &segs {
        let lv = got.lv(s["lv_name"].as_str().unwrap()).unwrap();
        assert_eq!(lv.size_bytes, bytes_field(&s["lv_size"]));
        assert_eq!(lv.uuid, s["lv_uuid"].as_str().unwrap());
        assert!(lv.visible);
    }

    // Plant a marker at the start of every extent of root, at the disk offset LVM's report
    // gives (partition start + pe_start + pe × extent), then read root through its window.
    let root = got.lv("root").unwrap();
    let mut disk = std::fs::read(&img).unwrap();
    let mut expected = Vec::new();
    for (_, start_le, count, pe0) in want.iter().filter(|s| s.0 == "root") {
        for i in 0..*count {
            let at = part.start_bytes + got.pe_start_bytes + (pe0 + i) * extent;
            let marker = format!("extent {:04}", start_le + i);
            disk[at as usize..at as usize + marker.len()].copy_from_slice(marker.as_bytes());
            expected.push(((start_le + i) * extent, marker));
        }
    }
    std::fs::write(&img, &disk).unwrap();
    // Through a VHDX too: the same seam.
    let vhdx = dir.path().join("lvm.vhdx");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vhdx",
            img.to_str().unwrap(),
            vhdx.to_str().unwrap(),
        ],
        None,
    );
    for p in [&img, &vhdx] {
        let image = open(p);
        let w = part.window(image.as_ref()).unwrap();
        let lvw = got.lv_window(root, &w).unwrap();
        assert_eq!(lvw.len(), root.size_bytes);
        for (lv_off, marker) in &expected {
            let mut buf = vec![0u8; marker.len()];
            lvw.read_at(&mut buf, *lv_off).unwrap();
            assert_eq!(String::from_utf8_lossy(&buf), *marker, "{}", p.display());
        }
        // A read spanning the boundary between root's two segments.
        let boundary = want
            .iter()
            .filter(|s| s.0 == "root")
            .map(|s| s.1)
            .max()
            .unwrap()
            * extent;
        let mut buf = vec![0u8; 4096];
        lvw.read_at(&mut buf, boundary - 2048).unwrap();
        assert!(lvw.read_at(&mut buf, root.size_bytes - 100).is_err());
    }
}

#[test]
fn striped_and_other_pv_segments_from_lvm_are_reported_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let img: PathBuf = dir.path().join("two.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    run("sfdisk", &["-q", img.to_str().unwrap()], Some("label: gpt\nsize=30M, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\ntype=E6D6D379-F507-44C2-A23C-238F2A3DF928\n"));
    let table = partition::partitions(open(&img).as_ref()).unwrap();
    let (p1, p2) = (table.get(1).unwrap().clone(), table.get(2).unwrap().clone());
    let attach = |p: &partition::Partition| Pv {
        dev: run(
            "losetup",
            &[
                "-f",
                "--show",
                "--offset",
                &p.start_bytes.to_string(),
                "--sizelimit",
                &p.size_bytes.to_string(),
                img.to_str().unwrap(),
            ],
            None,
        )
        .trim()
        .to_string(),
    };
    let (a, b) = (attach(&p1), attach(&p2));
    let vg = format!("vgs{}", std::process::id());
    lvm("pvcreate", &["-y", &a.dev, &b.dev]);
    lvm("vgcreate", &["-s", "1M", &vg, &a.dev, &b.dev]);
    lvm(
        "lvcreate",
        &[
            "--driverloaded",
            "n",
            "-an",
            "-Zn",
            "-y",
            "-i",
            "2",
            "-I",
            "64k",
            "-L",
            "8M",
            "-n",
            "striped",
            &vg,
        ],
    );
    lvm(
        "lvcreate",
        &[
            "--driverloaded",
            "n",
            "-an",
            "-Zn",
            "-y",
            "-L",
            "4M",
            "-n",
            "onb",
            &vg,
            &b.dev,
        ],
    );
    let lvs: Value = serde_json::from_str(&lvm(
        "lvs",
        &[
            "--reportformat",
            "json",
            "--segments",
            "-o",
            "lv_name,segtype,stripes,devices",
            &vg,
        ],
    ))
    .unwrap();
    let pvs: Value = serde_json::from_str(&lvm(
        "pvs",
        &["--reportformat", "json", "-o", "pv_name,pv_uuid", &a.dev],
    ))
    .unwrap();
    drop((a, b));
    let segs = lvs["report"][0]["seg"].as_array().unwrap();
    let striped = segs.iter().find(|s| s["lv_name"] == "striped").unwrap();
    assert_eq!(
        (striped["segtype"].as_str(), striped["stripes"].as_str()),
        (Some("striped"), Some("2"))
    );

    let image = open(&img);
    let w = p1.window(image.as_ref()).unwrap();
    let got = lvm::read_pv(&w).unwrap().unwrap();
    assert_eq!(
        got.pv_uuid,
        pvs["report"][0]["pv"][0]["pv_uuid"].as_str().unwrap()
    );
    let codes: Vec<&str> = got.findings.iter().map(|f| f.code.as_str()).collect();
    assert_eq!(codes, [lvm::CODE_SEGMENT_UNSUPPORTED]);
    let st = got.lv("striped").unwrap();
    assert_eq!(st.size_bytes, 8 * MIB);
    assert_eq!(
        st.segments[0].map,
        SegmentMap::Unsupported {
            segment_type: "striped (2 stripes)".into()
        }
    );
    assert_eq!(
        got.lv_window(st, &w).unwrap_err().code(),
        lvm::CODE_SEGMENT_UNSUPPORTED
    );
    // A linear LV that LVM put on the other PV: known, but not readable from this one.
    let onb = got.lv("onb").unwrap();
    assert_eq!(
        got.lv_window(onb, &w).unwrap_err().code(),
        lvm::CODE_PV_MISSING
    );
    // Read from the PV it is on, it maps.
    let w2 = p2.window(image.as_ref()).unwrap();
    let got2 = lvm::read_pv(&w2).unwrap().unwrap();
    assert_eq!(
        got2.lv_window(got2.lv("onb").unwrap(), &w2).unwrap().len(),
        4 * MIB
    );
}
