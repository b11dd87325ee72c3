//! The CLI as an ISV engineer meets it (issue 9, items 2, 3, 4, 7, 8): the upload size named
//! everywhere, dry runs that touch nothing, OUT checked before any work, honest diagnoses of
//! empty, text and truncated files, specific advice, completions, man page and help.

use assert_cmd::Command;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn vhdforge() -> Command {
    let mut c = Command::cargo_bin("vhdforge").unwrap();
    // Credentials of the machine running the tests must not change what DEST means.
    for v in [
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_STORAGE_KEY",
        "VHDFORGE_DEST_SAS",
    ] {
        c.env_remove(v);
    }
    c.timeout(Duration::from_secs(120));
    c
}

fn out_text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err_text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", out_text(o), err_text(o)))
}

fn codes(v: &Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect()
}

/// A sparse raw disk of `size` bytes with an MBR boot signature and some data.
fn raw_disk(path: &Path, size: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut sector = vec![0u8; 512];
    sector[446] = 0x80;
    sector[510] = 0x55;
    sector[511] = 0xAA;
    f.write_all(&sector).unwrap();
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(size / 2)).unwrap();
    f.write_all(&fixtures::raw::pattern(7, 64 << 10)).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---- item 4: diagnoses ----

#[test]
fn empty_and_text_files_are_not_disks_that_read_fine() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "line of text\n".repeat(200)).unwrap();

    // (file, the code it must carry, its severity)
    for (file, code, severity) in [
        (&empty, "raw.empty", "error"),
        (&text, "raw.no_partition_table", "warning"),
    ] {
        let o = vhdforge()
            .args(["check", "--json"])
            .arg(file)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", err_text(&o));
        let v = json(&o);
        let f = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["code"] == code)
            .unwrap_or_else(|| panic!("{code} missing: {v}"));
        assert_eq!(f["severity"], severity);
        // The human verdict no longer calls either "fine".
        let o = vhdforge().arg("check").arg(file).output().unwrap();
        let t = out_text(&o);
        assert!(!t.contains("fine"), "{t}");
        assert!(!t.contains("FAILED: 1 error(s); the image reads"), "{t}");
    }
    let o = vhdforge().arg("check").arg(&empty).output().unwrap();
    assert!(out_text(&o).contains("empty file"), "{}", out_text(&o));
    let o = vhdforge().arg("check").arg(&text).output().unwrap();
    assert!(
        out_text(&o)
            .contains("no VHD/VHDX signature and no partition table: if it is not a disk image")
            || out_text(&o).contains("is this a disk image?"),
        "{}",
        out_text(&o)
    );
    // Converting an empty file fails with its code, and writes nothing.
    let o = vhdforge()
        .args(["convert", "--json"])
        .arg(&empty)
        .arg(dir.path().join("out.vhd"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(json(&o)["error"]["code"], "raw.empty");
    assert_eq!(names(dir.path()), ["empty.img", "notes.txt"]);
}

#[test]
fn a_truncated_vhdx_is_one_truncated_error() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, fixtures::raw::pattern(3, (64 * MIB) as usize)).unwrap();
    let vhdx = dir.path().join("disk.vhdx");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "vhdx"])
        .arg(&raw)
        .arg(&vhdx)
        .status()
        .expect("qemu-img is required for this test (apt-get install qemu-utils)");
    assert!(st.success());
    let full = std::fs::metadata(&vhdx).unwrap().len();
    assert!(full > 60 * MIB);
    // An incomplete copy: the first 20 MiB.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&vhdx)
        .unwrap()
        .set_len(20 * MIB)
        .unwrap();
    let o = vhdforge()
        .args(["check", "--json"])
        .arg(&vhdx)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    let c = codes(&v);
    assert_eq!(
        c.iter().filter(|c| *c == "vhdx.truncated").count(),
        1,
        "{c:?}"
    );
    assert!(!c.iter().any(|c| c == "vhdx.bat.offset"), "{c:?}");
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "vhdx.truncated")
        .unwrap();
    let m = f["message"].as_str().unwrap();
    assert!(m.contains(&(20 * MIB).to_string()), "{m}");
    assert!(
        m.contains(&full.to_string()),
        "the BAT reaches the full size: {m}"
    );
    assert!(m.contains("incomplete copy"), "{m}");
    let o = vhdforge().arg("check").arg(&vhdx).output().unwrap();
    assert!(out_text(&o).contains("truncated"), "{}", out_text(&o));
}

#[test]
fn a_damaged_fixed_vhd_footer_points_to_in_place_on_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = fixtures::vhd::fixed_vhd(
        &vec![0u8; (20 * MIB) as usize],
        &fixtures::vhd::FooterOptions::default(),
        false,
    );
    let n = bytes.len();
    bytes[n - 512 + 64] ^= 0xff; // the checksum field
    let p = dir.path().join("disk.vhd");
    std::fs::write(&p, &bytes).unwrap();
    let o = vhdforge().arg("check").arg(&p).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let t = out_text(&o);
    assert!(t.contains("vhd.footer.checksum"), "{t}");
    assert!(t.contains("convert --in-place"), "{t}");
    assert!(t.contains("copy"), "{t}");
    // The advice works: the copy is repaired in place.
    let copy = dir.path().join("repaired.vhd");
    std::fs::copy(&p, &copy).unwrap();
    vhdforge()
        .args(["convert", "--in-place"])
        .arg(&copy)
        .assert()
        .success();
    vhdforge().arg("check").arg(&copy).assert().success();
}

// ---- item 2: the upload size ----

#[test]
fn the_upload_size_is_named_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("disk.raw");
    // Not a whole MiB: 1 GiB - 1 MiB + 4 KiB rounds up to 1 GiB.
    raw_disk(&input, (1 << 30) - MIB + 4096);
    let want = (1u64 << 30) + 512;
    let line =
        format!("Azure upload size: {want} bytes (az disk create --upload-size-bytes {want})");
    for cmd in ["info", "check"] {
        let o = vhdforge().arg(cmd).arg(&input).output().unwrap();
        assert!(out_text(&o).contains(&line), "{cmd}: {}", out_text(&o));
        let o = vhdforge()
            .args([cmd, "--json"])
            .arg(&input)
            .output()
            .unwrap();
        assert_eq!(json(&o)["upload_size_bytes"], want, "{cmd}");
    }
    let out = dir.path().join("disk.vhd");
    let o = vhdforge()
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err_text(&o));
    assert!(out_text(&o).contains(&line), "{}", out_text(&o));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), want);
    let out2 = dir.path().join("disk2.vhd");
    let o = vhdforge()
        .args(["convert", "--json"])
        .arg(&input)
        .arg(&out2)
        .output()
        .unwrap();
    assert_eq!(json(&o)["upload_size_bytes"], want);
    // An Azure-ready VHD's upload size is its file size.
    let o = vhdforge()
        .args(["info", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(json(&o)["upload_size_bytes"], want);
}

#[test]
fn convert_dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("disk.raw");
    raw_disk(&input, 100 * MIB);
    let before = names(dir.path());
    let o = vhdforge()
        .args(["convert", "--dry-run", "--json"])
        .arg(&input)
        .arg(dir.path().join("disk.vhd"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err_text(&o));
    let v = json(&o);
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["upload_size_bytes"], 100 * MIB + 512);
    assert_eq!(v["output_size"], 100 * MIB + 512);
    let data = v["data_bytes_at_most"].as_u64().unwrap();
    assert!((64 << 10..=2 * MIB).contains(&data), "{v}");
    let o = vhdforge()
        .args(["convert", "--dry-run"])
        .arg(&input)
        .arg(dir.path().join("disk.vhd"))
        .output()
        .unwrap();
    assert!(
        out_text(&o).contains("nothing was written"),
        "{}",
        out_text(&o)
    );
    assert_eq!(names(dir.path()), before);
    // The dry run makes the same OUT checks as a real run.
    let o = vhdforge()
        .args(["convert", "--dry-run"])
        .arg(&input)
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// A loopback server that records every connection and answers every request with
/// `status` and `x-ms-error-code: code`, for `for_how_long`.
struct Recorder {
    port: u16,
    connections: Arc<AtomicUsize>,
    done: std::thread::JoinHandle<()>,
}

fn recorder(status: &'static str, code: &'static str, for_how_long: Duration) -> Recorder {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let c = connections.clone();
    let done = std::thread::spawn(move || {
        let end = Instant::now() + for_how_long;
        while Instant::now() < end {
            match l.accept() {
                Ok((mut s, _)) => {
                    c.fetch_add(1, Ordering::SeqCst);
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut head = Vec::new();
                    let mut b = [0u8; 4096];
                    // Answer each request on the connection until it closes.
                    loop {
                        match s.read(&mut b) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&b[..n]),
                        }
                        while let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            head.drain(..i + 4);
                            let r = format!(
                                "HTTP/1.1 {status}\r\nx-ms-error-code: {code}\r\ncontent-length: 0\r\n\r\n"
                            );
                            let _ = s.write_all(r.as_bytes());
                        }
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    Recorder {
        port,
        connections,
        done,
    }
}

#[test]
fn upload_dry_run_contacts_no_server() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("disk.raw");
    raw_disk(&input, 30 * MIB);
    let rec = recorder(
        "500 Internal Server Error",
        "InternalError",
        Duration::from_secs(8),
    );
    let dest = format!(
        "http://127.0.0.1:{}/devstoreaccount1/vhds/disk.vhd?sv=2021-08-06&sr=b&sp=cw&sig=s3cr3tSIG",
        rec.port
    );
    let before = names(dir.path());
    let o = vhdforge()
        .args(["upload", "--dry-run", "--json"])
        .arg(&input)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", out_text(&o), err_text(&o));
    let all = format!("{}{}", out_text(&o), err_text(&o));
    assert!(!all.contains("s3cr3t"), "{all}");
    let v = json(&o);
    let d = v["destination"].as_str().unwrap();
    assert!(
        d.starts_with(&format!(
            "http://127.0.0.1:{}/devstoreaccount1/vhds/disk.vhd",
            rec.port
        )),
        "{d}"
    );
    assert_eq!(v["upload_size_bytes"], 30 * MIB + 512);
    let sent = v["bytes_to_send"].as_u64().unwrap();
    assert!((64 << 10..=MIB).contains(&sent), "{v}");
    assert!(v["requests"].as_u64().unwrap() >= 2, "data and footer: {v}");
    // Text form too.
    let o = vhdforge()
        .args(["upload", "--dry-run"])
        .arg(&input)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(
        out_text(&o).contains("nothing was sent"),
        "{}",
        out_text(&o)
    );
    assert!(out_text(&o).contains(&format!("--upload-size-bytes {}", 30 * MIB + 512)));
    assert_eq!(
        rec.connections.load(Ordering::SeqCst),
        0,
        "a dry run connected"
    );
    // No journal, nothing else written.
    assert_eq!(names(dir.path()), before);
    drop(rec.done);
}

// ---- item 3: OUT ----

#[test]
fn out_is_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("disk.raw");
    // Large, and full of data where the metadata says so, so a run that read it would show.
    raw_disk(&input, 512 * MIB);
    // A missing directory is named as such, without internal names.
    let missing = dir.path().join("no-such-dir").join("out.vhd");
    let t = Instant::now();
    let o = vhdforge()
        .arg("convert")
        .arg(&input)
        .arg(&missing)
        .output()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(o.status.code(), Some(2));
    let e = err_text(&o);
    assert!(
        e.contains("no-such-dir") && e.contains("does not exist"),
        "{e}"
    );
    assert!(!e.contains("partial") && !e.contains(".vhdforge"), "{e}");
    // The same for a directory named with a trailing slash.
    let o = vhdforge()
        .arg("convert")
        .arg(&input)
        .arg(format!("{}/", dir.path().join("no-such-dir").display()))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = err_text(&o);
    assert!(
        e.contains("no-such-dir") && e.contains("does not exist"),
        "{e}"
    );
    // OUT is the input: said so, not "pass --force".
    let o = vhdforge()
        .arg("convert")
        .arg(&input)
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = err_text(&o);
    assert!(e.contains("OUT is the input"), "{e}");
    assert!(!e.contains("--force"), "{e}");
    // An existing OUT is refused before the data is read, leaving no temporary file.
    let existing = dir.path().join("old.vhd");
    std::fs::write(&existing, b"keep").unwrap();
    let o = vhdforge()
        .arg("convert")
        .arg(&input)
        .arg(&existing)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(err_text(&o).contains("--force"));
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep");
    assert_eq!(names(dir.path()), ["disk.raw", "old.vhd"]);
    // A directory receives <input stem>.vhd.
    let sub = dir.path().join("outdir");
    std::fs::create_dir(&sub).unwrap();
    let o = vhdforge()
        .arg("convert")
        .arg(&input)
        .arg(&sub)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err_text(&o));
    assert!(out_text(&o).contains("disk.vhd"), "{}", out_text(&o));
    assert_eq!(names(&sub), ["disk.vhd"]);
    vhdforge()
        .arg("check")
        .arg(sub.join("disk.vhd"))
        .assert()
        .success();
}

#[test]
fn the_marketplace_warning_does_not_precede_a_stopping_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("small.raw");
    raw_disk(&input, 10 * MIB); // below Azure's 20 MiB
    let o = vhdforge()
        .arg("convert")
        .arg(&input)
        .arg(dir.path().join("x.vhd"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = err_text(&o);
    assert!(e.contains("--allow-any-size"), "{e}");
    assert!(
        !e.contains("marketplace") && !e.contains("Marketplace"),
        "{e}"
    );
}

// ---- item 7: advice ----

#[test]
fn bad_names_and_cut_urls_are_refused_locally() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("disk.raw");
    raw_disk(&input, 30 * MIB);
    // (DEST, what the message must say) – an unroutable account: any request would hang or fail differently.
    let cases = [
        (
            "https://acct.blob.core.windows.net/My_Vhds/disk.vhd?sv=2021-08-06&sig=x",
            "not a valid container name",
        ),
        (
            "https://acct.blob.core.windows.net/vhds/disk.vhd?sv=2021-08-06",
            "the shell cut the URL at `&`: quote it",
        ),
    ];
    for cmd in ["upload", "verify"] {
        for (dest, want) in cases {
            let t = Instant::now();
            let o = vhdforge()
                .args([cmd, "--json"])
                .arg(&input)
                .arg(dest)
                .output()
                .unwrap();
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{cmd} {dest}: a request was tried"
            );
            assert_eq!(o.status.code(), Some(2));
            let v = json(&o);
            assert_eq!(v["error"]["code"], "upload.url", "{v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(want),
                "{v}"
            );
        }
    }
}

#[test]
fn missing_container_and_missing_blob_get_their_fix() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("disk.raw");
    raw_disk(&input, 30 * MIB);
    let rec = recorder(
        "404 The specified container does not exist.",
        "ContainerNotFound",
        Duration::from_secs(20),
    );
    let dest = format!(
        "http://127.0.0.1:{}/devstoreaccount1/vhds/disk.vhd?sv=2021-08-06&sr=b&sp=cw&sig=c2ln",
        rec.port
    );
    let o = vhdforge()
        .arg("upload")
        .arg(&input)
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err_text(&o).contains("add `--create-container`"),
        "{}",
        err_text(&o)
    );
    let rec = recorder(
        "404 The specified blob does not exist.",
        "BlobNotFound",
        Duration::from_secs(20),
    );
    let dest = format!(
        "http://127.0.0.1:{}/devstoreaccount1/vhds/disk.vhd?sv=2021-08-06&sr=b&sp=r&sig=c2ln",
        rec.port
    );
    let o = vhdforge()
        .arg("verify")
        .arg(&input)
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(err_text(&o).contains("upload it first"), "{}", err_text(&o));
}

// ---- item 8: help, completions, man page ----

#[test]
fn completions_are_valid_scripts() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let o = vhdforge().args(["completions", shell]).output().unwrap();
        assert!(o.status.success(), "{shell}");
        let t = out_text(&o);
        assert!(t.contains("vhdforge") && t.contains("upload"), "{shell}");
        assert!(
            t.contains("dry-run"),
            "{shell}: the options come from the same definition"
        );
        if shell == "bash" {
            let f = dir.path().join("vhdforge.bash");
            std::fs::write(&f, &t).unwrap();
            let st = std::process::Command::new("bash")
                .arg("-n")
                .arg(&f)
                .status()
                .unwrap();
            assert!(st.success(), "bash -n refused the completion script");
        }
    }
    let o = vhdforge().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

fn man_render(page: &Path) -> String {
    let o = std::process::Command::new("man")
        .args(["-P", "cat", "-l"])
        .arg(page)
        .env("MANWIDTH", "80")
        .output()
        .expect("man is required for this test (apt-get install man-db)");
    assert!(o.status.success(), "man -l: {}", err_text(&o));
    out_text(&o)
}

#[test]
fn the_man_pages_render() {
    let dir = tempfile::tempdir().unwrap();
    for (cmd, title, needle) in [
        (None, "vhdforge(1)", "GLOBAL OPTIONS"),
        (
            Some("upload"),
            "vhdforge-upload(1)",
            "AZURE_STORAGE_CONNECTION_STRING",
        ),
        (Some("convert"), "vhdforge-convert(1)", "--dry-run"),
    ] {
        let mut c = vhdforge();
        c.arg("manpage");
        if let Some(x) = cmd {
            c.arg(x);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", err_text(&o));
        let page: PathBuf = dir.path().join(format!("{}.1", cmd.unwrap_or("vhdforge")));
        std::fs::write(&page, &o.stdout).unwrap();
        let text = man_render(&page);
        assert!(text.contains(title), "{text}");
        assert!(text.contains(needle), "{needle}: {text}");
    }
    let o = vhdforge().args(["manpage", "nope"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(err_text(&o).contains("upload"), "lists the commands");
}

#[test]
fn help_texts_say_what_isvs_need() {
    let o = vhdforge().args(["convert", "--help"]).output().unwrap();
    let t = out_text(&o);
    assert!(!t.contains("see above"), "{t}");
    assert!(!t.contains("[default: 0]"), "{t}");
    assert!(t.contains("--dry-run"), "{t}");
    let o = vhdforge().args(["upload", "--help"]).output().unwrap();
    let t = out_text(&o);
    for needle in [
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_STORAGE_KEY",
        "VHDFORGE_DEST_SAS",
        "CONTAINER/BLOB",
        // The long help reaches the command line (it used to be lost to the one-line about).
        "RESUME",
        "Global options:",
    ] {
        assert!(t.contains(needle), "upload --help lacks {needle}: {t}");
    }
    // Global options are listed apart from the command's own.
    let own = t.split("Global options:").next().unwrap();
    assert!(!own.contains("--log-file"), "{t}");
}
