//! Red team, round 2: `hyperv plan --inventory` reads an untrusted JSON file. Whatever it
//! holds — a stream with no end, a file of a million empty objects — `plan` must end with a
//! clear `hyperv.inventory` error, in bounded time, under the 256 MiB resident bound, and
//! without flooding the terminal.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

mod common;
use common::{run_measured, Run};

/// The bound the security review asks for.
const LIMIT_KIB: i64 = 256 * 1024;
const MIB: usize = 1 << 20;

fn plan(dir: &Path, inventory: &Path) -> Run {
    let r = run_measured(
        dir,
        &[
            "hyperv",
            "plan",
            "--json",
            "--inventory",
            inventory.to_str().unwrap(),
        ],
        Duration::from_secs(120),
        |_| {},
    );
    eprintln!(
        "exit {}, peak RSS {} MiB, {:.1}s, {} bytes of stdout",
        r.code,
        r.peak_kib / 1024,
        r.took.as_secs_f64(),
        r.stdout.len()
    );
    r
}

fn assert_refused_within_bounds(r: &Run) {
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    assert!(
        r.peak_kib < LIMIT_KIB,
        "peak RSS {} MiB, over the 256 MiB bound",
        r.peak_kib / 1024
    );
    assert!(
        r.stdout.len() < 64 << 10,
        "{} bytes of output for a refused inventory",
        r.stdout.len()
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:.300}", r.stdout));
    assert_eq!(v["error"]["code"], "hyperv.inventory", "{v}");
}

/// One VM with `n` copies of `item` in its checkpoints (`field` "checkpoints") or in the
/// chain of its one disk (`{"name":""}` is 12 bytes of text with its comma, some 70 once
/// parsed).
fn inventory_with(path: &Path, field: &str, item: &str, n: usize) {
    let (head, tail) = if field == "checkpoints" {
        (r#""checkpoints":["#, r#"],"disks":[]"#)
    } else {
        (
            r#""checkpoints":[],"disks":[{"controller_type":"SCSI","controller_number":0,"controller_location":0,"chain":["#,
            "]}]",
        )
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    write!(
        f,
        r#"{{"vms":[{{"name":"a","state":"Off","generation":2,{head}"#
    )
    .unwrap();
    for i in 0..n {
        if i > 0 {
            f.write_all(b",").unwrap();
        }
        f.write_all(item.as_bytes()).unwrap();
    }
    write!(f, "{tail}}}]}}").unwrap();
    f.flush().unwrap();
}

/// Before: the size was taken from the file's metadata, which is 0 for a pipe, then the
/// whole stream was read into memory (`--inventory /dev/zero` grew without end; here 300 MiB
/// of blanks through a FIFO peaked far over 256 MiB).
#[test]
fn an_inventory_from_an_endless_pipe_is_refused_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("inventory.fifo");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo (coreutils) is needed");
    assert!(st.success());
    let writer_path = fifo.clone();
    // The writer stops at the first failed write (vhdforge closed its end: EPIPE, which the
    // test harness receives as an error, not a signal) or after 300 MiB.
    std::thread::spawn(move || {
        let Ok(mut w) = std::fs::OpenOptions::new().write(true).open(writer_path) else {
            return;
        };
        let chunk = vec![b' '; MIB];
        for _ in 0..300 {
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let r = plan(dir.path(), &fifo);
    assert_refused_within_bounds(&r);
    assert!(r.stdout.contains("larger than"), "{}", r.stdout);
}

/// Before: a 60 MiB file of empty checkpoints passed the 64 MiB size check and peaked at
/// 530 MiB parsed, and `plan` printed every checkpoint name in one 10 MB warning.
#[test]
fn a_60_mib_inventory_is_refused_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("big.json");
    inventory_with(&inv, "checkpoints", r#"{"name":""}"#, 60 * MIB / 12);
    assert_refused_within_bounds(&plan(dir.path(), &inv));
}

/// Before: 3 MiB of empty chain elements (under any plausible size cap) made `plan` report
/// two blockers per element: hundreds of MiB of text built in memory and printed (a 16 MiB
/// one peaked at 1.4 GiB and printed 330 MB). Now the counts are bounded by what Hyper-V
/// allows and the inventory is refused, naming the count.
#[test]
fn a_chain_of_a_quarter_million_files_is_refused_not_reported_on() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("chain.json");
    inventory_with(&inv, "chain", r#"{"path":""}"#, 3 * MIB / 12);
    let r = plan(dir.path(), &inv);
    assert_refused_within_bounds(&r);
    assert!(r.stdout.contains("files in the chain"), "{}", r.stdout);
    // The same with checkpoints (Hyper-V allows 50 per VM).
    let inv = dir.path().join("checkpoints.json");
    inventory_with(&inv, "checkpoints", r#"{"name":""}"#, 200_000);
    let r = plan(dir.path(), &inv);
    assert_refused_within_bounds(&r);
    assert!(r.stdout.contains("checkpoints of VM"), "{}", r.stdout);
}
