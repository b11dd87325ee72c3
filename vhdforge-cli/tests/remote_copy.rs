//! `vhdforge copy` against Azurite (issue 14): only the source's page ranges move, between
//! containers and between two accounts of one Azurite (`AZURITE_ACCOUNTS`), by the client
//! and by the service's Copy Blob; a managed-disk destination gets its stale ranges
//! cleared. Page lists are checked with curl, an independent client.

mod common;
mod remote_support;

use common::{Azurite, ACCOUNT, KEY};
use remote_support::shim;
use remote_support::*;
use serde_json::Value;
use vhdforge_core::storage::sas::{self, SasTerms};
use vhdforge_core::storage::SharedKey;

const GIB: u64 = 1 << 30;
/// The second account's key (any base64 will do for Azurite).
const KEY2: &str = "c2Vjb25kLWFjY291bnQta2V5LWZvci10ZXN0cy1vbmx5LTAxMjM0NTY3ODk=";
const ACCOUNT2: &str = "second";

struct Env {
    az: Azurite,
    dir: tempfile::TempDir,
}

impl Env {
    fn start() -> Env {
        let accounts = format!("{ACCOUNT}:{KEY};{ACCOUNT2}:{KEY2}");
        Env {
            az: Azurite::start_with(&[("AZURITE_ACCOUNTS", &accounts)]),
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn url(&self, account: &str, container: &str, blob: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{account}/{container}/{blob}",
            self.az.port
        )
    }
    /// A blob URL with a container SAS of `perms`.
    fn sas_url(&self, account: &str, container: &str, blob: &str, perms: &str) -> String {
        let key = if account == ACCOUNT { KEY } else { KEY2 };
        format!(
            "{}?{}",
            self.url(account, container, blob),
            container_sas_for(account, key, container, perms)
        )
    }
    fn create_container(&self, account: &str, container: &str) {
        let key = if account == ACCOUNT { KEY } else { KEY2 };
        let q = sas::account_sas(
            &SharedKey::new(account, key).unwrap(),
            &SasTerms {
                permissions: "rwlc".into(),
                start: None,
                expiry: "2099-01-01T00:00:00Z".into(),
                https_only: false,
            },
        )
        .unwrap();
        let url = format!(
            "http://127.0.0.1:{}/{account}/{container}?restype=container&{q}",
            self.az.port
        );
        let st = curl(
            &[
                "-X",
                "PUT",
                "-H",
                &format!("x-ms-version: {VERSION}"),
                "-H",
                "Content-Length: 0",
                &url,
            ],
            None,
        );
        assert_eq!(st, 201, "create container {account}/{container}");
    }
    fn ranges(&self, account: &str, container: &str, blob: &str) -> Vec<(u64, u64)> {
        page_ranges(
            self.dir.path(),
            &self.sas_url(account, container, blob, "rl"),
        )
    }
    fn copy(&self, args: &[&str]) -> (i32, Value, String) {
        let (code, out, err) = run(vhdforge()
            .env(
                "AZURE_STORAGE_CONNECTION_STRING",
                self.az.connection_string(),
            )
            .args(["copy", "--json"])
            .args(args));
        let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        (code, v, err)
    }
}

/// A 1 TiB-virtual fixed VHD holding 1 MiB + 64 KiB of data and its footer.
fn sparse_tib_source(e: &Env, container: &str, blob: &str) -> Vec<(u64, u64)> {
    let size = (1u64 << 40) + 512;
    let url = e.sas_url(ACCOUNT, container, blob, "rcw");
    create_page_blob(&url, size);
    let d = e.dir.path();
    put_page(d, &url, 0, &fixtures::raw::pattern(1, 64 << 10));
    put_page(d, &url, 512 * GIB, &fixtures::raw::pattern(2, MIB));
    let footer = fixtures::vhd::footer(
        2,
        1 << 40,
        u64::MAX,
        &fixtures::vhd::FooterOptions::default(),
    );
    put_page(d, &url, 1 << 40, &footer);
    vec![
        (0, 64 << 10),
        (512 * GIB, 512 * GIB + MIB as u64),
        (1 << 40, size),
    ]
}

fn assert_copied(v: &Value, src: &[(u64, u64)]) {
    assert_eq!(v["ranges_equal"], true, "{v:#}");
    let data: u64 = src.iter().map(|(s, e)| e - s).sum();
    assert_eq!(v["bytes_copied"], data, "{v:#}");
}

/// Client copies and Copy Blob, between containers of one account and into a second
/// account: the destination's page list equals the source's (1 MiB of a 1 TiB disk, not
/// 1 TiB), the data is identical (--verify-full and a download of the touched ranges).
#[test]
fn copy_moves_only_page_ranges_between_containers_and_accounts() {
    let e = Env::start();
    e.create_container(ACCOUNT, "src");
    e.create_container(ACCOUNT, "dst");
    e.create_container(ACCOUNT2, "other");
    let src = sparse_tib_source(&e, "src", "disk.vhd");
    assert_eq!(e.ranges(ACCOUNT, "src", "disk.vhd"), src);

    // Client, same account, by account key; --verify-full compares the data.
    let (code, v, err) = e.copy(&[
        "--via",
        "client",
        "--verify-full",
        &e.url(ACCOUNT, "src", "disk.vhd"),
        &e.url(ACCOUNT, "dst", "client.vhd"),
    ]);
    assert_eq!(code, 0, "{v:#}{err}");
    assert_copied(&v, &src);
    assert_eq!(v["identical"], true);
    assert_eq!(v["requests"], 3);
    assert_eq!(e.ranges(ACCOUNT, "dst", "client.vhd"), src);
    // The copy is `check URL`-clean like its source.
    let (code, out, err) = run(vhdforge()
        .env("AZURE_STORAGE_CONNECTION_STRING", e.az.connection_string())
        .args(["check", "--json"])
        .arg(e.url(ACCOUNT, "dst", "client.vhd")));
    assert_eq!(code, 0, "{out}{err}");

    // Copy Blob, same account.
    let (code, v, err) = e.copy(&[
        "--via",
        "async",
        &e.url(ACCOUNT, "src", "disk.vhd"),
        &e.url(ACCOUNT, "dst", "async.vhd"),
    ]);
    assert_eq!(code, 0, "{v:#}{err}");
    assert_copied(&v, &src);
    assert_eq!(e.ranges(ACCOUNT, "dst", "async.vhd"), src);

    // Into the second account: each URL with its own SAS (a key signs only for its account).
    for via in ["client", "async"] {
        let blob = format!("{via}.vhd");
        let (code, v, err) = e.copy(&[
            "--via",
            via,
            "--verify-full",
            &e.sas_url(ACCOUNT, "src", "disk.vhd", "rl"),
            &e.sas_url(ACCOUNT2, "other", &blob, "rcw"),
        ]);
        assert_eq!(code, 0, "{via}: {v:#}{err}");
        assert_copied(&v, &src);
        assert_eq!(v["identical"], true);
        assert_eq!(e.ranges(ACCOUNT2, "other", &blob), src, "{via}");
        assert!(!err.contains("sig="), "{err}");
    }

    // An existing destination is not replaced without --overwrite.
    let (code, v, _) = e.copy(&[
        "--via",
        "client",
        &e.url(ACCOUNT, "src", "disk.vhd"),
        &e.url(ACCOUNT, "dst", "client.vhd"),
    ]);
    assert_eq!(code, 2);
    assert_eq!(v["error"]["code"], "upload.exists", "{v:#}");
}

/// A managed-disk destination (an existing blob of the exact size, written in place) holds
/// data from an earlier image where the source has none: it is cleared, so the disk ends
/// with exactly the source's pages; a disk of another size is refused naming the size.
#[test]
fn copy_to_a_managed_disk_clears_stale_ranges() {
    let e = Env::start();
    e.create_container(ACCOUNT, "src");
    e.create_container(ACCOUNT, "mdisk");
    let size = 64 * MIB as u64 + 512;
    let src_url = e.sas_url(ACCOUNT, "src", "d.vhd", "rcw");
    create_page_blob(&src_url, size);
    put_page(
        e.dir.path(),
        &src_url,
        MIB as u64,
        &fixtures::raw::pattern(3, 8192),
    );
    let disk = e.sas_url(ACCOUNT, "mdisk", "disk.vhd", "rcw");
    create_page_blob(&disk, size);
    // The earlier image: data at 8 MiB and over part of the source's range.
    put_page(
        e.dir.path(),
        &disk,
        8 * MIB as u64,
        &fixtures::raw::pattern(4, 65536),
    );
    put_page(
        e.dir.path(),
        &disk,
        MIB as u64,
        &fixtures::raw::pattern(5, 4096),
    );
    let (code, v, err) = e.copy(&[
        "--via",
        "client",
        "--managed-disk",
        "--verify-full",
        &e.sas_url(ACCOUNT, "src", "d.vhd", "r"),
        &disk,
    ]);
    assert_eq!(code, 0, "{v:#}{err}");
    assert_eq!(v["managed_disk"], true);
    assert_eq!(v["stale_bytes_cleared"], 65536);
    assert_eq!(v["identical"], true);
    assert_eq!(
        e.ranges(ACCOUNT, "mdisk", "disk.vhd"),
        vec![(MIB as u64, MIB as u64 + 8192)]
    );
    // Wrong size: refused before any write, naming the size to create.
    let small = e.sas_url(ACCOUNT, "mdisk", "small.vhd", "rcw");
    create_page_blob(&small, 32 * MIB as u64 + 512);
    let (code, v, _) = e.copy(&[
        "--via",
        "client",
        "--managed-disk",
        &e.sas_url(ACCOUNT, "src", "d.vhd", "r"),
        &small,
    ]);
    assert_eq!(code, 2);
    assert_eq!(v["error"]["code"], "upload.size_mismatch");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&size.to_string()));
    assert!(e.ranges(ACCOUNT, "mdisk", "small.vhd").is_empty());
}

/// `--via server` (the default): Put Page From URL through the loopback shim in front of
/// Azurite (which lacks it), into the second account. Every request obeys the service's
/// rules (the shim records none broken), one per ≤ 4 MiB piece; the page lists match.
/// Without a SAS on the source the destination service could not read it: refused first.
#[test]
fn copy_via_server_uses_put_page_from_url() {
    let e = Env::start();
    e.create_container(ACCOUNT, "src");
    e.create_container(ACCOUNT2, "other");
    let shim = shim::Shim::start(e.az.port);
    let size = 64 * MIB as u64 + 512;
    let src_url = e.sas_url(ACCOUNT, "src", "d.vhd", "rcw");
    create_page_blob(&src_url, size);
    // 9 MiB + 4 KiB of data in one run (the writes touch): pieces of 4, 4 and 1 MiB + 4 KiB.
    let d = e.dir.path();
    for (i, at) in [(0u64, 2 * MIB as u64), (1, 2 * MIB as u64 + 4 * MIB as u64)] {
        put_page(d, &src_url, at, &fixtures::raw::pattern(10 + i, 4 * MIB));
    }
    put_page(
        d,
        &src_url,
        10 * MIB as u64,
        &fixtures::raw::pattern(12, MIB + 4096),
    );
    let src = e.ranges(ACCOUNT, "src", "d.vhd");
    let dest = format!(
        "http://127.0.0.1:{}/{ACCOUNT2}/other/server.vhd?{}",
        shim.port,
        container_sas_for(ACCOUNT2, KEY2, "other", "rcw")
    );
    let (code, v, err) = e.copy(&[
        "--verify-full",
        &e.sas_url(ACCOUNT, "src", "d.vhd", "r"),
        &dest,
    ]);
    assert_eq!(code, 0, "{v:#}{err}");
    assert_copied(&v, &src);
    assert_eq!(v["identical"], true);
    let seen = shim.seen.lock().unwrap();
    assert!(seen.violations.is_empty(), "{:?}", seen.violations);
    assert_eq!(seen.from_url, 3, "pieces of at most 4 MiB");
    assert_eq!(v["requests"], 3);
    drop(seen);
    assert_eq!(e.ranges(ACCOUNT2, "other", "server.vhd"), src);

    // No SAS on the source: the service could not read it.
    let (code, v, _) = e.copy(&[
        &e.url(ACCOUNT, "src", "d.vhd"),
        &dest.replace("server.vhd", "x.vhd"),
    ]);
    assert_eq!(code, 2);
    assert_eq!(v["error"]["code"], "copy.source_sas", "{v:#}");

    // The shim itself refuses what the service refuses (so its silence above means something).
    let src_sas = e.sas_url(ACCOUNT, "src", "d.vhd", "r");
    let bad = |range: &str, source_range: &str, source: &str| {
        curl(
            &[
                "-X",
                "PUT",
                "-H",
                "x-ms-page-write: update",
                "-H",
                "x-ms-version: 2021-08-06",
                "-H",
                &format!("x-ms-range: {range}"),
                "-H",
                &format!("x-ms-source-range: {source_range}"),
                "-H",
                &format!("x-ms-copy-source: {source}"),
                "-H",
                "Content-Length: 0",
                &format!("{dest}&comp=page"),
            ],
            None,
        )
    };
    assert_eq!(bad("bytes=0-5242879", "bytes=0-5242879", &src_sas), 400);
    assert_eq!(bad("bytes=100-611", "bytes=100-611", &src_sas), 416);
    assert_eq!(bad("bytes=0-1023", "bytes=0-511", &src_sas), 400);
    assert_eq!(
        bad(
            "bytes=0-511",
            "bytes=0-511",
            &e.url(ACCOUNT, "src", "d.vhd")
        ),
        403
    );
    assert_eq!(shim.seen.lock().unwrap().violations.len(), 4);
}

/// A service that throttles every third write and drops every fifth read: client and
/// server copies retry through it and still end with equal page lists and equal data.
#[test]
fn copy_survives_throttling_and_dropped_connections() {
    let e = Env::start();
    e.create_container(ACCOUNT, "src");
    e.create_container(ACCOUNT, "dst");
    let shim = shim::Shim::start_faulty(e.az.port);
    let size = 64 * MIB as u64 + 512;
    let src_url = e.sas_url(ACCOUNT, "src", "d.vhd", "rcw");
    create_page_blob(&src_url, size);
    let d = e.dir.path();
    for i in 0..5u64 {
        put_page(
            d,
            &src_url,
            i * 8 * MIB as u64,
            &fixtures::raw::pattern(20 + i, 2 * MIB),
        );
    }
    let src = e.ranges(ACCOUNT, "src", "d.vhd");
    let via_shim = |container: &str, blob: &str, perms: &str| {
        format!(
            "http://127.0.0.1:{}/{ACCOUNT}/{container}/{blob}?{}",
            shim.port,
            container_sas_for(ACCOUNT, KEY, container, perms)
        )
    };
    for via in ["client", "server"] {
        let blob = format!("{via}.vhd");
        let (code, v, err) = e.copy(&[
            "--via",
            via,
            "--concurrency",
            "2",
            "--verify-full",
            // The client reads the source through the faults; the service (the shim) reads
            // it from Azurite directly, as Azure reads it inside its own network.
            &if via == "client" {
                via_shim("src", "d.vhd", "r")
            } else {
                e.sas_url(ACCOUNT, "src", "d.vhd", "r")
            },
            &via_shim("dst", &blob, "rcw"),
        ]);
        assert_eq!(code, 0, "{via}: {v:#}{err}");
        assert_copied(&v, &src);
        assert_eq!(v["identical"], true, "{via}");
        assert_eq!(e.ranges(ACCOUNT, "dst", &blob), src, "{via}");
    }
    let seen = shim.seen.lock().unwrap();
    assert!(seen.faults >= 4, "faults injected: {}", seen.faults);
    assert!(seen.violations.is_empty(), "{:?}", seen.violations);
}

/// SIGKILL in the middle of a copy (slowed by a throttling service), then `--resume`:
/// whatever the kill left, the resumed copy ends identical to the source.
#[test]
fn copy_killed_then_resumed_ends_identical() {
    let e = Env::start();
    e.create_container(ACCOUNT, "src");
    e.create_container(ACCOUNT, "dst");
    let shim = shim::Shim::start_faulty(e.az.port);
    let size = 64 * MIB as u64 + 512;
    let src_url = e.sas_url(ACCOUNT, "src", "d.vhd", "rcw");
    create_page_blob(&src_url, size);
    for i in 0..8u64 {
        put_page(
            e.dir.path(),
            &src_url,
            i * 8 * MIB as u64,
            &fixtures::raw::pattern(40 + i, MIB),
        );
    }
    let src = e.ranges(ACCOUNT, "src", "d.vhd");
    let dest = format!(
        "http://127.0.0.1:{}/{ACCOUNT}/dst/killed.vhd?{}",
        shim.port,
        container_sas_for(ACCOUNT, KEY, "dst", "rcw")
    );
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("vhdforge"))
        .env_remove("AZURE_STORAGE_CONNECTION_STRING")
        .args(["copy", "--via", "client", "--concurrency", "1"])
        .arg(e.sas_url(ACCOUNT, "src", "d.vhd", "r"))
        .arg(&dest)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the destination has some data (or the copy ended on its own).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "copy made no progress"
        );
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let exists = curl(
            &[
                "-I",
                "-H",
                "x-ms-version: 2021-08-06",
                &e.sas_url(ACCOUNT, "dst", "killed.vhd", "r"),
            ],
            None,
        ) == 200;
        if exists && !e.ranges(ACCOUNT, "dst", "killed.vhd").is_empty() {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.wait();
    let (code, v, err) = e.copy(&[
        "--via",
        "client",
        "--resume",
        "--verify-full",
        &e.sas_url(ACCOUNT, "src", "d.vhd", "r"),
        &dest,
    ]);
    assert_eq!(code, 0, "{v:#}{err}");
    assert_eq!(v["identical"], true);
    assert!(v["bytes_already_present"].as_u64().unwrap() > 0, "{v:#}");
    assert_eq!(e.ranges(ACCOUNT, "dst", "killed.vhd"), src);
}
