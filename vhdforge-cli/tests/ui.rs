//! The command line as scripts and operators meet it (issue 9): Ctrl-C stops any phase
//! within about a second and says what to do next, `-q` prints nothing on success, `-v`
//! logs requests without secrets or colour when piped, `--json` errors are JSON, and
//! `--log-file` never overwrites anything.

use assert_cmd::Command;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use vhdforge_core::storage::sas::{self, SasResource, SasTerms};
use vhdforge_core::storage::SharedKey;

const MIB: u64 = 1 << 20;
mod common;
use common::{Azurite, ACCOUNT, KEY};

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("vhdforge")
}

fn vhdforge() -> Command {
    let mut c = Command::new(bin());
    for v in [
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_STORAGE_KEY",
        "VHDFORGE_DEST_SAS",
        "VHDFORGE_LOG",
    ] {
        c.env_remove(v);
    }
    c.timeout(Duration::from_secs(60));
    c
}

/// A 24 MiB raw image with a little data.
fn sparse_raw(dir: &Path, name: &str) -> PathBuf {
    use std::io::{Seek, SeekFrom, Write};
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.set_len(24 * MIB).unwrap();
    for at in [0, 3 * MIB + 4096, 20 * MIB] {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[0x5a; 70_000]).unwrap();
    }
    p
}

/// A loopback address nothing listens on: connections are refused at once.
fn refusing_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/{ACCOUNT}/c/b.vhd?sv=2021-08-06&sr=b&sp=rw&sig=c2VjcmV0U0lH")
}

/// Start `vhdforge args…` with piped output, send SIGINT after `after`, and return how long
/// it took to exit after the signal, its exit code and its stderr. Fails (killing the
/// child) if it is still running 10 s after the signal.
fn interrupt_after(args: &[&std::ffi::OsStr], after: Duration) -> (Duration, i32, String) {
    let mut child = std::process::Command::new(bin())
        .args(args)
        .env_remove("VHDFORGE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    assert!(
        child.try_wait().unwrap().is_none(),
        "vhdforge ended before the signal: the test proves nothing"
    );
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: signalling our own child, which has not been reaped yet (pid still valid).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let sent = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running 10 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (took, status.code().unwrap_or(-1), err)
}

/// Issue 9 item 1: the first Ctrl-C used to be ignored for ~14 s while creating the blob
/// was retried against an address that refuses connections.
#[test]
fn first_ctrl_c_stops_an_upload_retrying_creation() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_raw(dir.path(), "d.raw");
    let url = refusing_url();
    let (took, code, err) = interrupt_after(
        &["upload".as_ref(), src.as_os_str(), url.as_ref()],
        Duration::from_secs(2),
    );
    assert!(took < Duration::from_secs(2), "took {took:?}: {err}");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("retrying:"), "it was retrying: {err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        err.contains("run the same command again"),
        "says what to do: {err}"
    );
    assert!(!err.contains("c2VjcmV0U0lH"), "{err}");
}

/// A loop device, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let o = std::process::Command::new("losetup")
            .args(["-f", "--show", "-r"])
            .arg(file)
            .output()
            .expect("losetup is required for this test (util-linux)");
        assert!(
            o.status.success(),
            "losetup failed (this test needs root): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Loop(String::from_utf8(o.stdout).unwrap().trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.0)
            .status();
    }
}

/// Ctrl-C on a long upload of a device: it has no hole map, so all of a 512 GiB
/// (sparse-backed) loop device would be read and zero-tested, far longer than 2 s. Since
/// upload plans from the allocation map alone (issue 16), planning is instant and the
/// command is in its first request's retries (the destination refuses connections) or
/// reading when the signal comes; either way it must stop at once.
#[test]
fn ctrl_c_during_a_device_upload_stops_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("big.raw");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(512 << 30)
        .unwrap();
    let dev = Loop::attach(&backing);
    let url = refusing_url();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let (took, code, err) = interrupt_after(
        &[
            "upload".as_ref(),
            "--state-dir".as_ref(),
            state.as_os_str(),
            dev.0.as_ref(),
            url.as_ref(),
        ],
        Duration::from_secs(2),
    );
    assert!(took < Duration::from_secs(2), "took {took:?}: {err}");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("interrupted"), "{err}");
}

/// Ctrl-C during `verify --full` against a server that accepts connections and never
/// answers (a request would otherwise wait for its 30 s timeout, then retry).
#[test]
fn ctrl_c_stops_verify_full_waiting_on_a_silent_server() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_raw(dir.path(), "d.raw");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Hold every connection open without a word; the thread ends with the test process.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let url =
        format!("http://127.0.0.1:{port}/{ACCOUNT}/c/b.vhd?sv=2021-08-06&sr=b&sp=r&sig=eA%3D%3D");
    let (took, code, err) = interrupt_after(
        &[
            "verify".as_ref(),
            "--full".as_ref(),
            src.as_os_str(),
            url.as_ref(),
        ],
        Duration::from_secs(2),
    );
    assert!(took < Duration::from_secs(2), "took {took:?}: {err}");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("interrupted"), "{err}");
}

fn container_sas(container: &str) -> String {
    let key = SharedKey::new(ACCOUNT, KEY).unwrap();
    let terms = SasTerms {
        permissions: "rcw".into(),
        start: None,
        expiry: "2099-01-01T00:00:00Z".into(),
        https_only: false,
    };
    sas::service_sas(
        &key,
        &SasResource::Container {
            container: container.into(),
        },
        &terms,
    )
    .unwrap()
}

fn out(cmd: &mut Command) -> (i32, String, String) {
    let o = cmd.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Issue 9 items 5, 6 and 9 against a real blob service: `-q` silences every command on
/// success (before, `check -q` printed the whole report and upload/verify ignored -q);
/// `-v` logs each request with its status and no signature, without colour when piped;
/// the plan line shows although stderr is not a terminal; summaries give the average rate.
#[test]
fn quiet_verbose_and_plan_line_against_azurite() {
    let az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_raw(dir.path(), "d.raw");
    let vhd = dir.path().join("d.vhd");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();

    // -q: nothing at all on success, for every command.
    let quiet_runs: Vec<Vec<std::ffi::OsString>> = vec![
        vec!["info".into(), src.clone().into()],
        vec!["convert".into(), src.clone().into(), vhd.clone().into()],
        vec!["check".into(), vhd.clone().into()],
        vec![
            "upload".into(),
            "--create-container".into(),
            "--state-dir".into(),
            state.clone().into(),
            vhd.clone().into(),
            az.blob_url("quiet", "quiet.vhd").into(),
        ],
        vec![
            "verify".into(),
            "--full".into(),
            vhd.clone().into(),
            az.blob_url("quiet", "quiet.vhd").into(),
        ],
    ];
    for args in &quiet_runs {
        let (code, stdout, stderr) = out(vhdforge()
            .env("AZURE_STORAGE_CONNECTION_STRING", az.connection_string())
            .arg("-q")
            .args(args));
        assert_eq!(code, 0, "{args:?}: {stdout}{stderr}");
        assert_eq!((stdout.as_str(), stderr.as_str()), ("", ""), "{args:?}");
    }

    // -v with a SAS: one log line per request, with method and status, no signature and
    // no ANSI colour (stderr is a pipe here); the plan shows as a plain line.
    let sas = container_sas("quiet");
    let url = format!("{}?{sas}", az.blob_url("quiet", "loud.vhd"));
    let (code, stdout, stderr) = out(vhdforge()
        .args(["-v", "upload", "--state-dir"])
        .arg(&state)
        .arg(&src)
        .arg(&url));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("plan: send"), "{stderr}");
    assert!(stderr.contains("method=PUT"), "{stderr}");
    assert!(stderr.contains("status=201"), "{stderr}");
    assert!(
        stderr.contains("range=bytes="),
        "Put Page ranges are logged: {stderr}"
    );
    assert!(!stderr.contains("sig="), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour when piped: {stderr:?}"
    );
    assert!(
        stdout.contains("average"),
        "the summary gives the rate: {stdout}"
    );
    // -v stays vhdforge's own: the HTTP libraries' chatter is for -vvv.
    assert!(!stderr.contains("hyper"), "{stderr}");

    // verify --full reports the bytes compared and the rate.
    let (code, stdout, stderr) = out(vhdforge()
        .env("AZURE_STORAGE_CONNECTION_STRING", az.connection_string())
        .args(["verify", "--full"])
        .arg(&src)
        .arg(az.blob_url("quiet", "loud.vhd")));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("identical") && stdout.contains("average"),
        "{stdout}"
    );

    // -vv adds the request headers, the Shared Key signature blanked.
    let (code, stdout, stderr) = out(vhdforge()
        .env("AZURE_STORAGE_CONNECTION_STRING", az.connection_string())
        .args(["-vv", "verify"])
        .arg(&src)
        .arg(az.blob_url("quiet", "loud.vhd")));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("x-ms-version: "), "{stderr}");
    assert!(stderr.contains("authorization: [REDACTED]"), "{stderr}");
    assert!(!stderr.contains("SharedKey "), "{stderr}");
}

/// Under --json an error is a JSON object on stdout with the stable code, exit code 2.
#[test]
fn json_errors_are_json_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.vhdx");
    for cmd in ["info", "check"] {
        let (code, stdout, _) = out(vhdforge().args([cmd, "--json"]).arg(&missing));
        assert_eq!(code, 2, "{stdout}");
        let v: serde_json::Value = serde_json::from_str(&stdout).expect(&stdout);
        assert!(v["error"]["code"].is_string(), "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("missing.vhdx"),
            "{v}"
        );
    }
    // An upload refusal keeps the library's code, and the SAS stays out of it.
    let src = sparse_raw(dir.path(), "d.raw");
    let (code, stdout, _) = out(vhdforge()
        .args(["upload", "--json"])
        .arg(&src)
        .arg("http://example.com/c/b.vhd?sv=2021-08-06&sig=c2VjcmV0U0lH"));
    assert_eq!(code, 2, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect(&stdout);
    assert_eq!(v["error"]["code"], "upload.url", "{v}");
    assert!(!stdout.contains("c2VjcmV0U0lH"), "{stdout}");
}

/// --log-file is created exclusively: an existing file (or a link) is refused untouched,
/// a new one receives the -v log.
#[test]
fn log_file_is_new_and_gets_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_raw(dir.path(), "d.raw");
    let existing = dir.path().join("old.log");
    std::fs::write(&existing, "keep me").unwrap();
    let (code, _, stderr) = out(vhdforge()
        .arg("--log-file")
        .arg(&existing)
        .arg("info")
        .arg(&src));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("never overwritten"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me");

    let log = dir.path().join("new.log");
    let vhd = dir.path().join("d.vhd");
    let (code, _, stderr) = out(vhdforge()
        .arg("--log-file")
        .arg(&log)
        .arg("convert")
        .arg(&src)
        .arg(&vhd));
    assert_eq!(code, 0, "{stderr}");
    assert!(log.exists());
}

/// The bar in a real (pseudo-)terminal 80 columns wide: every frame fits the width (a
/// wrapped line is never cleared by a redraw, leaving stale lines), it ends at 100 %, and
/// the summary starts on a line of its own. `script` provides the terminal (util-linux;
/// the test fails without it).
#[test]
fn the_bar_fits_80_columns_and_ends_full_in_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_raw(dir.path(), "d.raw");
    let vhd = dir.path().join("d.vhd");
    let inner = format!(
        "stty cols 80 rows 24; '{}' convert '{}' '{}'",
        bin().display(),
        src.display(),
        vhd.display()
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .env_remove("VHDFORGE_LOG")
        .output()
        .expect("`script` (util-linux) is required for this test");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{text}");
    assert!(text.contains("converting 100%"), "{text:?}");
    // Frames are separated by CR and erase-line; lines by LF.
    // Notes are plain lines printed once (a terminal may wrap them harmlessly); the bar's
    // frames are redrawn in place and must fit.
    for frame in text
        .split(['\r', '\n'])
        .filter(|f| f.contains("converting"))
    {
        let visible = frame.replace("\u{1b}[2K", "");
        assert!(
            visible.chars().count() <= 80,
            "{} columns: {visible:?}",
            visible.chars().count()
        );
    }
    let summary = text
        .split(['\r', '\n'])
        .find(|l| l.contains("-> "))
        .unwrap_or_else(|| panic!("{text:?}"));
    assert!(
        summary.starts_with(&src.display().to_string()),
        "{summary:?}"
    );
}
