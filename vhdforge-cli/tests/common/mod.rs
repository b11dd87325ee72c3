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
        Azurite::start_args(env, &[])
    }

    /// Azurite over HTTPS with the certificate and key of `pki` and `--oauth basic` (which
    /// Azurite allows only over HTTPS): Shared Key, SAS and bearer tokens all work.
    pub fn start_https(pki: &TestPki) -> Azurite {
        let cert = pki.server_cert.to_str().unwrap().to_string();
        let key = pki.server_key.to_str().unwrap().to_string();
        Azurite::start_args(&[], &["--cert", &cert, "--key", &key, "--oauth", "basic"])
    }

    /// Start with extra environment and extra command-line arguments.
    pub fn start_args(env: &[(&str, &str)], extra: &[&str]) -> Azurite {
        let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../.tools/azurite/node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "Azurite is not installed at {}: run `scripts/azurite.sh install`",
            bin.display()
        );
        // The port is free when picked but not held (Node must bind it), so another test
        // starting at the same moment can take it first; then this Azurite exits at once and
        // the port answers with the other's. Such a start is detected and retried on a new
        // port, so a test never talks to a server another test is about to stop.
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new(&bin)
                .args(["--blobHost", "127.0.0.1", "--blobPort"])
                .arg(port.to_string())
                .args(["--inMemoryPersistence", "--disableTelemetry", "--silent"])
                .args(extra)
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start azurite-blob");
            let mut az = Azurite { child, port };
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(_)) = az.child.try_wait() {
                    break; // exited: most likely the port was taken; try another
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && listens_on(az.child.id(), port)
                {
                    return az;
                }
                assert!(
                    Instant::now() < deadline,
                    "Azurite did not listen within 60 s (Node starts slowly on a loaded machine)"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("Azurite exited at start five times (ports taken by other tests?)");
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

/// A throwaway CA and a server certificate it signed (for `localhost`, `127.0.0.1` and
/// `*.azurite.test`), plus an unrelated CA, made with `openssl` in `dir`.
pub struct TestPki {
    /// The CA that signed the server certificate (PEM).
    pub ca_cert: PathBuf,
    /// Another CA that signed nothing here (PEM): trusting it must not be enough.
    pub wrong_ca_cert: PathBuf,
    /// The server certificate (PEM).
    pub server_cert: PathBuf,
    /// The server key (PEM).
    pub server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed for the HTTPS tests (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestPki {
    /// Generate everything in `dir` (a few hundred milliseconds).
    pub fn generate(dir: &Path) -> TestPki {
        for ca in ["ca", "wrong-ca"] {
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                    "-subj",
                    &format!("/CN=vhdforge test {ca}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        }
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,DNS:azurite.test,DNS:*.azurite.test,IP:127.0.0.1\n\
             basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        );
        TestPki {
            ca_cert: dir.join("ca.pem"),
            wrong_ca_cert: dir.join("wrong-ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }
}

/// A loopback HTTP CONNECT proxy on a thread per connection, which records every request
/// line it receives and tunnels each CONNECT to `127.0.0.1:<the requested port>` whatever
/// host was asked for (so a test name like `azurite.test` needs no DNS).
pub struct ConnectProxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The request lines seen, e.g. `CONNECT azurite.test:10000 HTTP/1.1`.
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ConnectProxy {
    /// Start it; the listener thread lives as long as the test process.
    pub fn start() -> ConnectProxy {
        use std::io::{BufRead as _, BufReader, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
                    let mut reader = BufReader::new(client.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let request = line.trim_end().to_string();
                    log.lock().unwrap().push(request.clone());
                    // Skip the rest of the request head.
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                            break;
                        }
                    }
                    let mut client = client;
                    let target_port = request
                        .strip_prefix("CONNECT ")
                        .and_then(|r| r.split(' ').next())
                        .and_then(|hp| hp.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok());
                    let Some(target_port) = target_port else {
                        let _ = client.write_all(
                            b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n",
                        );
                        return;
                    };
                    let Ok(upstream) = std::net::TcpStream::connect(("127.0.0.1", target_port))
                    else {
                        let _ = client
                            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
                        return;
                    };
                    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                    // Bytes the reader already buffered beyond the head (none for CONNECT:
                    // the client waits for our 200 before its TLS hello).
                    let mut up_w = upstream.try_clone().unwrap();
                    let buffered = reader.buffer().to_vec();
                    let _ = up_w.write_all(&buffered);
                    let mut up_r = upstream;
                    let mut client_w = client.try_clone().unwrap();
                    let t = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut up_r, &mut client_w);
                        let _ = client_w.shutdown(std::net::Shutdown::Write);
                    });
                    let mut client_r = reader.into_inner();
                    let _ = std::io::copy(&mut client_r, &mut up_w);
                    let _ = up_w.shutdown(std::net::Shutdown::Write);
                    let _ = t.join();
                });
            }
        });
        ConnectProxy { port, seen }
    }
}

/// A loopback TCP forwarder to 127.0.0.1:`upstream` that passes the client's bytes on at
/// no more than a set rate (the answers flow freely). TLS passes through it untouched, so a
/// certificate for 127.0.0.1 stays valid; it makes an upload last as long as a test needs.
pub struct SlowLink {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Connections accepted so far.
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SlowLink {
    /// Start it; the listener thread lives as long as the test process.
    pub fn start(upstream: u16, bytes_per_sec: u64) -> SlowLink {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { continue };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Ok(mut up) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (Ok(mut up_r), Ok(mut client_w)) = (up.try_clone(), client.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_r, &mut client_w);
                    let _ = client_w.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let start = Instant::now();
                    let mut sent = 0u64;
                    let mut buf = [0u8; 16 << 10];
                    while let Ok(n @ 1..) = client.read(&mut buf) {
                        if up.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n as u64;
                        let due = Duration::from_secs_f64(sent as f64 / bytes_per_sec as f64);
                        if let Some(wait) = due.checked_sub(start.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let _ = up.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        SlowLink { port, accepted }
    }
}

/// True when process `pid` holds the socket listening on 127.0.0.1:`port` (its descriptors
/// against the kernel's TCP table), i.e. the server that answers there is that process.
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local address, state (0A = LISTEN), inode
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|t| inodes.iter().any(|i| t.to_str() == Some(i.as_str())))
    })
}
