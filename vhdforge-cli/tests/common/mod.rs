//! Test support shared by the CLI test binaries that measure the real `vhdforge` in a
//! child process.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a child run of `vhdforge` left behind.
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
    /// Peak resident set, KiB (`ru_maxrss` from `wait4`).
    pub peak_kib: i64,
    /// How long it ran.
    pub took: Duration,
}

/// Run `vhdforge args` with its output in files under `dir` (no pipe to fill), after
/// `prepare` has adjusted the command (environment), at most `limit` long: killed and
/// reaped on timeout, which fails the test. Returns its exit code, output and peak RSS.
pub fn run_measured(
    dir: &Path,
    args: &[&str],
    limit: Duration,
    prepare: impl FnOnce(&mut Command),
) -> Run {
    let out_path = dir.join("child.stdout");
    let err_path = dir.join("child.stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vhdforge"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    prepare(&mut cmd);
    // Reaped by the wait4 loop below, which also yields the peak RSS.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let started = Instant::now();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    loop {
        // SAFETY: pid is our own child, status and usage are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4 failed: {}", std::io::Error::last_os_error());
        if r == pid {
            break;
        }
        if started.elapsed() > limit && !timed_out {
            timed_out = true;
            // SAFETY: signalling our own, not yet reaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        !timed_out,
        "vhdforge {args:?} ran longer than {limit:?}; stderr: {stderr}"
    );
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Run {
        code,
        stdout,
        stderr,
        peak_kib: usage.ru_maxrss,
        took: started.elapsed(),
    }
}

/// Azurite's documented development account and key (public, test-only).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// An Azurite blob service of our own, killed on drop (fails, never skips, when missing).
pub struct Azurite {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl Azurite {
    /// Start it on a free loopback port and wait until it listens.
    pub fn start() -> Azurite {
        Azurite::start_with(&[])
    }

    /// [`Azurite::start`] with extra environment (e.g. `AZURITE_ACCOUNTS` for more accounts).
    pub fn start_with(env: &[(&str, &str)]) -> Azurite {
        let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../.tools/azurite/node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "Azurite is not installed at {}: run `scripts/azurite.sh install`",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(&bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(port.to_string())
            .args(["--inMemoryPersistence", "--disableTelemetry", "--silent"])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite-blob");
        let az = Azurite { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Azurite did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        az
    }

    /// The URL of `container/blob` in the development account.
    pub fn blob_url(&self, container: &str, blob: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{ACCOUNT}/{container}/{blob}",
            self.port
        )
    }

    /// A Shared Key connection string for the development account.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint=http://127.0.0.1:{}/{ACCOUNT};",
            self.port
        )
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
