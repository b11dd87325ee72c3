//! The Windows build under Wine (issue 10): `vhdforge.exe`, cross-built for
//! `x86_64-pc-windows-gnu` by `scripts/windows/build.sh` (which `scripts/test.sh` runs before
//! the tests, so no `cargo build` runs inside `cargo test`), against the Linux build on the
//! same fixtures: `--version`, `info --json`, `check`, `convert` (same SHA-256 but for the
//! footer's timestamp, checksum and unique id; sparse),
//! `upload` + `verify --full` to Azurite, an interrupted convert leaving nothing behind, a
//! convert onto a file system too small for its data (loop-mounted: CI runs as root), and a
//! disk another program holds open.
//!
//! One test, steps in order: every step talks to the same wineserver, which is stopped at
//! the end. Results and fixture checksums go straight to stderr (not captured), so CI output
//! shows them. A missing exe, shim or Wine fails the test, never skips it.

mod common;
// The loop-mount helper the clone tests use.
#[path = "../../vhdforge-core/tests/loop_mount/mod.rs"]
mod loop_mount;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fixtures::raw::disk_with_regions;
use fixtures::vhd::{self as fvhd, FooterOptions, Locator, ParentLink};
use fixtures::vhdx::{self as fvhdx, VhdxSpec};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const MIB: usize = 1 << 20;
const TARGET: &str = "x86_64-pc-windows-gnu";

/// Print a line to the real stderr: libtest captures `eprintln!`, not this.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "wine: {line}");
}

/// The cross-built exe and the Wine to run it with.
struct Wine {
    wine: PathBuf,
    wineserver: PathBuf,
    exe: PathBuf,
    prefix: PathBuf,
}

fn first_existing(candidates: &[&str]) -> Option<PathBuf> {
    for c in candidates {
        let p = Path::new(c);
        if p.is_absolute() {
            if p.exists() {
                return Some(p.to_path_buf());
            }
        } else if let Some(found) = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(c))
                .find(|p| p.exists())
        }) {
            return Some(found);
        }
    }
    None
}

impl Wine {
    fn find() -> Wine {
        // target/debug/vhdforge → target/<TARGET>/debug/vhdforge.exe (CARGO_TARGET_DIR too).
        let linux = assert_cmd::cargo::cargo_bin("vhdforge");
        let target_dir = linux.parent().unwrap().parent().unwrap().to_path_buf();
        let exe = target_dir.join(TARGET).join("debug").join("vhdforge.exe");
        let hint = "run scripts/windows/build.sh (scripts/test.sh does) to cross-build it";
        assert!(exe.exists(), "{} is missing: {hint}", exe.display());
        let shim = exe.with_file_name("bcryptprimitives.dll");
        assert!(shim.exists(), "{} is missing: {hint}", shim.display());
        let wine = first_existing(&["/usr/lib/wine/wine64", "wine64", "wine"])
            .expect("Wine is not installed (apt-get install wine64; scripts/setup.sh does)");
        let wineserver = first_existing(&["/usr/lib/wine/wineserver", "wineserver"])
            .expect("wineserver is not installed (apt-get install wine64)");
        let prefix = target_dir.join("wine-prefix");
        assert!(
            prefix.join("system.reg").exists(),
            "the Wine prefix {} is not set up: {hint}",
            prefix.display()
        );
        Wine {
            wine,
            wineserver,
            exe,
            prefix,
        }
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(&self.wine);
        c.arg(program)
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            // The shim next to the exe, never a missing built-in; no Mono/Gecko prompts.
            .env("WINEDLLOVERRIDES", "bcryptprimitives=n,b;mscoree=;mshtml=")
            .env_remove("AZURE_STORAGE_CONNECTION_STRING")
            .env_remove("AZURE_STORAGE_ACCOUNT")
            .env_remove("AZURE_STORAGE_KEY")
            .stdin(Stdio::null());
        c
    }

    /// `vhdforge.exe ARGS` to completion, killed after `limit`.
    fn run<S: AsRef<OsStr>>(&self, args: &[S], envs: &[(&str, &str)], limit: Duration) -> Output {
        let mut c = self.command(&self.exe);
        c.args(args);
        for (k, v) in envs {
            c.env(k, v);
        }
        wait_bounded(
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            limit,
        )
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        let _ = Command::new(&self.wineserver)
            .arg("-k")
            .env("WINEPREFIX", &self.prefix)
            .status();
    }
}

/// Wait for `child` at most `limit`; kill it after that (and fail).
fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut v);
        }
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut v);
        }
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a Wine run took longer than {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// The Wine view of a Linux path (drive Z: is `/`).
fn win(p: &Path) -> String {
    format!("Z:{}", p.display()).replace('/', "\\")
}

fn linux(args: &[&OsStr]) -> Output {
    Command::new(assert_cmd::cargo::cargo_bin("vhdforge"))
        .args(args)
        .env_remove("AZURE_STORAGE_CONNECTION_STRING")
        .output()
        .unwrap()
}

fn sha256(p: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).unwrap();
    let mut buf = vec![0u8; 4 * MIB];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}

/// SHA-256 of a converted VHD without what is different in every run by design: the footer's
/// timestamp (offset 24), checksum (64) and, for inputs that have none to keep, the new
/// unique id (68..84). Everything else — the whole disk and the rest of the footer — counts.
fn vhd_sha256(p: &Path) -> String {
    let mut bytes = std::fs::read(p).unwrap();
    let f = bytes.len() - 512;
    for r in [f + 24..f + 28, f + 64..f + 84] {
        bytes[r].fill(0);
    }
    format!("{:x}", Sha256::digest(&bytes))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): stdout {} stderr {}",
            text(&o.stdout),
            text(&o.stderr)
        )
    })
}

fn footer(id: u8) -> FooterOptions {
    FooterOptions {
        unique_id: [id; 16],
        ..FooterOptions::default()
    }
}

/// The sample disks, written into `dir`: (name, path, the fixture whose Linux conversion
/// the Wine conversion must equal).
fn fixtures(dir: &Path) -> Vec<(&'static str, PathBuf, PathBuf)> {
    let size = 24 * MIB;
    let content = disk_with_regions(
        size,
        &[
            (0, 64 * 1024),
            (3 * MIB + 4096, MIB),
            (17 * MIB, 2 * MIB + 512),
        ],
        10,
    );
    let mut out = Vec::new();

    let vhd = dir.join("disk.vhd");
    let o = fvhd::DynamicOptions {
        block_size: 2 * MIB as u32,
        footer: footer(1),
        ..fvhd::DynamicOptions::default()
    };
    std::fs::write(&vhd, fvhd::dynamic_vhd(&content, &o)).unwrap();
    out.push(("dynamic VHD", vhd.clone(), vhd));

    let built = fvhdx::build(
        &VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(0xA1)),
        &content,
    );
    let vhdx = fvhdx::write_file(dir, "dynamic.vhdx", &built.bytes);
    out.push(("dynamic VHDX", vhdx.clone(), vhdx));

    let mut built = fvhdx::build(
        &VhdxSpec::dynamic(MIB as u32, Uuid::from_u128(0xB1)),
        &content,
    );
    fvhdx::make_dirty(&mut built, Uuid::from_u128(0x106), None);
    let dirty = fvhdx::write_file(dir, "dirty.vhdx", &built.bytes);
    out.push(("dirty-log VHDX", dirty.clone(), dirty));

    // A chain as Hyper-V leaves it when parent and child live in different folders: the
    // base in parents\, children in children\ (so "the parent's name next to the child"
    // finds nothing and only the locators can).
    let parents = dir.join("parents");
    let children = dir.join("children");
    std::fs::create_dir_all(&parents).unwrap();
    std::fs::create_dir_all(&children).unwrap();
    let base = parents.join("base.vhd");
    let o = fvhd::DynamicOptions {
        block_size: 2 * MIB as u32,
        footer: footer(2),
        ..fvhd::DynamicOptions::default()
    };
    std::fs::write(&base, fvhd::dynamic_vhd(&content, &o)).unwrap();
    let writes = vec![
        (5 * MIB as u64, vec![0xC5; 8192]),
        (20 * MIB as u64, vec![0x5C; 512]),
    ];
    let child = |name: &str, locators: Vec<Locator>, id: u8| {
        let link = ParentLink {
            unique_id: [2; 16],
            name: "base.vhd".into(),
            locators,
        };
        let p = children.join(name);
        let bytes = fvhd::differencing_vhd(size as u64, 2 * MIB as u32, link, &writes, footer(id));
        std::fs::write(&p, bytes).unwrap();
        p
    };
    // Relative with `..`, resolved against the child's folder (Hyper-V's own kind).
    let rel = child(
        "diff-rel.vhd",
        vec![
            Locator::relative("..\\parents\\base.vhd"),
            Locator::absolute("C:\\VMs\\nowhere\\base.vhd"),
        ],
        3,
    );
    // Only a drive-letter path (Z:\… under Wine) leads to the parent.
    let abs = child(
        "diff-abs.vhd",
        vec![
            Locator::relative(".\\nowhere\\base.vhd"),
            Locator::absolute(&win(&base)),
        ],
        4,
    );
    out.push(("chain, relative ..\\ locator", rel.clone(), rel.clone()));
    // Linux cannot follow a Z:\ path: the same content through the relative chain.
    out.push(("chain, absolute W2ku Z:\\ locator", abs, rel));

    // A sparse raw file: holes the Windows build must find (or read as zeros).
    let raw = dir.join("sparse.img");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(size as u64).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&content[3 * MIB..5 * MIB], 3 * MIB as u64)
        .unwrap();
    out.push(("sparse raw", raw.clone(), raw));
    out
}

#[test]
#[allow(clippy::too_many_lines)] // one suite, one step after the other, sharing one wineserver
fn wine_smoke_suite() {
    let started = Instant::now();
    let wine = Wine::find();
    let minute = Duration::from_secs(60);
    let dir = tempfile::tempdir().unwrap();

    // --version (the first run may start the wineserver: the longest limit).
    let o = wine.run(&["--version"], &[], Duration::from_secs(180));
    assert!(o.status.success(), "--version: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        text(&o.stdout)
    );
    report(&format!("--version ok: {}", text(&o.stdout).trim()));

    let outs = dir.path().join("out");
    std::fs::create_dir(&outs).unwrap();
    for (i, (name, input, reference)) in fixtures(dir.path()).into_iter().enumerate() {
        report(&format!(
            "fixture {name}: {} sha256 {}",
            input.file_name().unwrap().to_string_lossy(),
            sha256(&input)
        ));
        // info --json: same verdict and sizes as the Linux build.
        let w = wine.run(
            &[
                OsStr::new("info"),
                OsStr::new("--json"),
                OsStr::new(&win(&input)),
            ],
            &[],
            minute,
        );
        let l = linux(&[
            OsStr::new("info"),
            OsStr::new("--json"),
            reference.as_os_str(),
        ]);
        let (wj, lj) = (json(&w), json(&l));
        for field in [
            "format",
            "disk_type",
            "virtual_size",
            "upload_size_bytes",
            "readable",
            "azure_ready",
        ] {
            assert_eq!(
                wj[field], lj[field],
                "{name}: info --json {field} (Wine vs Linux)"
            );
        }
        assert_eq!(wj["readable"], true, "{name}: {wj}");
        // check: same exit code (these are valid, not Azure-ready: 1).
        let w = wine.run(
            &[OsStr::new("check"), OsStr::new(&win(&input))],
            &[],
            minute,
        );
        let l = linux(&[OsStr::new("check"), reference.as_os_str()]);
        assert_eq!(
            w.status.code(),
            l.status.code(),
            "{name}: check exit code; Wine said {}",
            text(&w.stdout)
        );
        // convert: byte-identical to the Linux build's output, and sparse.
        let (wout, lout) = (
            outs.join(format!("w{i}.vhd")),
            outs.join(format!("l{i}.vhd")),
        );
        let w = wine.run(
            &[
                OsStr::new("convert"),
                OsStr::new(&win(&input)),
                OsStr::new(&win(&wout)),
            ],
            &[],
            minute,
        );
        assert!(
            w.status.success(),
            "{name}: Wine convert: {}",
            text(&w.stderr)
        );
        let l = linux(&[
            OsStr::new("convert"),
            reference.as_os_str(),
            lout.as_os_str(),
        ]);
        assert!(
            l.status.success(),
            "{name}: Linux convert: {}",
            text(&l.stderr)
        );
        let (ws, ls) = (vhd_sha256(&wout), vhd_sha256(&lout));
        let meta = std::fs::metadata(&wout).unwrap();
        let allocated = meta.blocks() * 512;
        report(&format!(
            "  info/check ok; convert sha256 (timestamp, checksum, unique id masked) Wine {ws} Linux {ls}; {allocated} of {} bytes allocated",
            meta.len()
        ));
        assert_eq!(
            ws, ls,
            "{name}: the Windows build's output differs from the Linux build's"
        );
        assert!(
            allocated < meta.len() / 2,
            "{name}: the output is not sparse ({allocated} of {} bytes allocated)",
            meta.len()
        );
        // Nothing but the outputs in the folder: no temporary left.
        let left: Vec<_> = std::fs::read_dir(&outs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{name}: left behind: {left:?}");
    }

    // An existing OUT: refused without --force at the write-through rename (MoveFileExW
    // without MOVEFILE_REPLACE_EXISTING), replaced with it. (Outputs beyond MAX_PATH are not
    // tried here: Wine 8's GetFinalPathNameByHandleW fails on them with ERROR_MORE_DATA, so
    // the standard library's canonicalize does; the \\?\ forms are unit-tested.)
    let existing = outs.join("l0.vhd");
    let src = dir.path().join("disk.vhd");
    let before = sha256(&existing);
    let w = wine.run(
        &[
            OsStr::new("convert"),
            OsStr::new(&win(&src)),
            OsStr::new(&win(&existing)),
        ],
        &[],
        minute,
    );
    assert_eq!(
        w.status.code(),
        Some(2),
        "existing OUT: {}",
        text(&w.stderr)
    );
    assert_eq!(
        sha256(&existing),
        before,
        "an existing OUT was changed without --force"
    );
    let w = wine.run(
        &[
            OsStr::new("convert"),
            OsStr::new("--force"),
            OsStr::new(&win(&dir.path().join("dirty.vhdx"))),
            OsStr::new(&win(&existing)),
        ],
        &[],
        minute,
    );
    assert!(
        w.status.success(),
        "--force over an existing OUT: {}",
        text(&w.stderr)
    );
    assert_eq!(vhd_sha256(&existing), vhd_sha256(&outs.join("l2.vhd")));
    report("existing OUT refused without --force, replaced with it");

    // upload + verify --full to Azurite from the Windows build (a VHDX: generated on the fly).
    let az = common::Azurite::start();
    let url = az.blob_url("vhds", "wine.vhd");
    let cs = az.connection_string();
    let env = [("AZURE_STORAGE_CONNECTION_STRING", cs.as_str())];
    let vhdx = win(&dir.path().join("dynamic.vhdx"));
    let w = wine.run(
        &["upload", "--create-container", vhdx.as_str(), url.as_str()],
        &env,
        minute,
    );
    assert!(
        w.status.success(),
        "Wine upload: {}{}",
        text(&w.stdout),
        text(&w.stderr)
    );
    let w = wine.run(
        &["verify", "--full", vhdx.as_str(), url.as_str()],
        &env,
        minute,
    );
    assert!(
        w.status.success(),
        "Wine verify --full: {}{}",
        text(&w.stdout),
        text(&w.stderr)
    );
    // And the Linux build agrees about what is there.
    let l = Command::new(assert_cmd::cargo::cargo_bin("vhdforge"))
        .args(["verify", "--full"])
        .arg(dir.path().join("dynamic.vhdx"))
        .arg(&url)
        .env("AZURE_STORAGE_CONNECTION_STRING", &cs)
        .output()
        .unwrap();
    assert!(
        l.status.success(),
        "Linux verify of the Wine upload: {}",
        text(&l.stderr)
    );
    drop(az);
    report("upload + verify --full (Wine), verify --full (Linux) ok");

    interrupted_convert(&wine, dir.path());
    short_of_space(&wine, dir.path());
    disk_in_use(&wine, dir.path());
    hyperv_unavailable(&wine);
    report(&format!("all steps passed in {:.0?}", started.elapsed()));
}

/// A raw disk full of data, large enough that converting it takes a while.
fn big_raw(dir: &Path) -> PathBuf {
    let p = dir.join("big.img");
    let f = std::fs::File::create(&p).unwrap();
    let chunk = fixtures::raw::pattern(7, 4 * MIB);
    use std::os::unix::fs::FileExt;
    for i in 0..96u64 {
        f.write_all_at(&chunk, i * 4 * MIB as u64).unwrap();
    }
    p
}

/// Names in `dir` other than `keep`.
fn extra_names(dir: &Path, keep: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != keep)
        .collect()
}

/// Start converting `src` into `out` under Wine and return once the temporary output exists.
fn convert_until_temp(wine: &Wine, src: &Path, out: &Path) -> Child {
    let mut c = wine.command(&wine.exe);
    let child = c
        .args([
            OsStr::new("convert"),
            OsStr::new(&win(src)),
            OsStr::new(&win(out)),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let dir = out.parent().unwrap();
    while !std::fs::read_dir(dir).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".vhdforge-")
    }) {
        assert!(
            Instant::now() < deadline,
            "the convert never created its temporary file"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    child
}

/// A convert onto a file system with 100 MiB free, of 384 MiB of data: the Windows build
/// learns the free space from `GetDiskFreeSpaceExW`, says up front that it may not fit,
/// stops with `convert.no_space` when the next piece does not fit (not a failed write), and
/// leaves nothing.
fn short_of_space(wine: &Wine, dir: &Path) {
    let src = big_raw(dir);
    let m = loop_mount::Mounted::new("ext4");
    loop_mount::leave_free(&m.at, 100 * MIB as u64);
    let out = m.at.join("out.vhd");
    let w = wine.run(
        &[
            OsStr::new("convert"),
            OsStr::new(&win(&src)),
            OsStr::new(&win(&out)),
        ],
        &[],
        Duration::from_secs(60),
    );
    let err = text(&w.stderr);
    assert_eq!(w.status.code(), Some(2), "short of space: {err}");
    assert!(err.contains("may not fit"), "no warning up front: {err}");
    assert!(
        err.contains("not enough free space") && err.contains(&(384 * MIB).to_string()),
        "not the free-space check's error, or not the whole disk's figure: {err}"
    );
    assert_eq!(
        loop_mount::others(&m.at, &["ballast"]),
        Vec::<String>::new(),
        "left behind on the full file system"
    );
    report(
        "convert onto a file system too small: warned, stopped with convert.no_space, nothing left",
    );
}

fn interrupted_convert(wine: &Wine, dir: &Path) {
    let src = big_raw(dir);
    let work = dir.join("interrupted");
    std::fs::create_dir(&work).unwrap();
    let out = work.join("big.vhd");

    // Ctrl-C (Wine turns SIGINT into CTRL_C_EVENT): stops, removes its temporary file.
    let child = convert_until_temp(wine, &src, &out);
    // SAFETY: kill(2) on the child we started and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = wait_bounded(child, Duration::from_secs(60));
    let left = extra_names(&work, "");
    report(&format!(
        "Ctrl-C mid-convert: exit {:?}, left {left:?}",
        o.status.code()
    ));
    assert!(left.is_empty(), "Ctrl-C left {left:?}");

    // Killed outright: only the hidden temporary may remain, never OUT; the next run
    // removes that orphan (its process is gone, as OpenProcess tells).
    let mut child = convert_until_temp(wine, &src, &out);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "a killed convert left OUT");
    let orphans = extra_names(&work, "");
    assert!(
        orphans.iter().all(|n| n.starts_with(".big.vhd.vhdforge-")),
        "{orphans:?}"
    );
    let o = wine.run(
        &[
            OsStr::new("convert"),
            OsStr::new(&win(&src)),
            OsStr::new(&win(&out)),
        ],
        &[],
        Duration::from_secs(120),
    );
    assert!(
        o.status.success(),
        "convert after a kill: {}",
        text(&o.stderr)
    );
    let left = extra_names(&work, "big.vhd");
    report(&format!(
        "killed mid-convert: left {orphans:?}; the next run removed them, left {left:?}"
    ));
    assert!(left.is_empty(), "the orphan was not removed: {left:?}");
}

fn disk_in_use(wine: &Wine, dir: &Path) {
    let held = dir.join("held.vhd");
    std::fs::copy(dir.join("disk.vhd"), &held).unwrap();
    let helper = wine.exe.with_file_name("holdopen.exe");
    assert!(
        helper.exists(),
        "{} is missing: run scripts/windows/build.sh",
        helper.display()
    );
    let mut holder = wine
        .command(&helper)
        .args([win(&held), "60".into()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held", "the helper could not open the disk");
    let o = wine.run(
        &[
            OsStr::new("check"),
            OsStr::new("--json"),
            OsStr::new(&win(&held)),
        ],
        &[],
        Duration::from_secs(60),
    );
    let _ = holder.kill();
    let _ = holder.wait();
    let j = json(&o);
    report(&format!("disk held open: exit {:?}, {j}", o.status.code()));
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(j["error"]["code"], "input.in_use", "{j}");
    let msg = j["error"]["message"].as_str().unwrap();
    assert!(msg.contains("is the VM running or saved?"), "{msg}");
    assert!(!msg.contains("os error"), "a raw OS error in: {msg}");
}

/// Wine has WMI but no `root\\virtualization\\v2`: the real WMI code of `hyperv list` runs
/// and must end with the clean "Hyper-V is not available" error that says what to do.
fn hyperv_unavailable(wine: &Wine) {
    let o = wine.run(
        &[
            OsStr::new("hyperv"),
            OsStr::new("list"),
            OsStr::new("--json"),
        ],
        &[],
        Duration::from_secs(120),
    );
    let j = json(&o);
    report(&format!("hyperv list: exit {:?}, {j}", o.status.code()));
    assert_eq!(o.status.code(), Some(2), "{j}");
    assert_eq!(j["error"]["code"], "hyperv.unavailable", "{j}");
    let msg = j["error"]["message"].as_str().unwrap();
    assert!(msg.contains("Hyper-V is not available"), "{msg}");
    assert!(msg.contains("plan --inventory"), "{msg}");
}
