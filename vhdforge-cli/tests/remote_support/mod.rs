//! Helpers of the after-the-upload tests (`remote_*.rs`): the binary with a clean
//! environment, and curl as the second, independent client (writes blobs the wrong way,
//! downloads through a SAS, lists page ranges).

#![allow(dead_code)]

pub mod shim;

use assert_cmd::Command;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vhdforge_core::storage::sas::{self, SasResource, SasTerms};
use vhdforge_core::storage::SharedKey;

pub const MIB: usize = 1 << 20;
pub const VERSION: &str = "2021-08-06";

/// `vhdforge` with no credentials from the environment.
pub fn vhdforge() -> Command {
    let mut c = Command::cargo_bin("vhdforge").unwrap();
    for v in [
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_STORAGE_KEY",
        "VHDFORGE_DEST_SAS",
    ] {
        c.env_remove(v);
    }
    c.timeout(Duration::from_secs(180));
    c
}

/// `vhdforge()` with no cloud, CA, proxy or certificate-store variables from the
/// environment either: what an https test needs to control whom the binary trusts and how
/// it connects.
pub fn vhdforge_tls_clean() -> Command {
    let mut c = vhdforge();
    for v in [
        "AZURE_CLOUD",
        "VHDFORGE_CA_CERT",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        c.env_remove(v);
    }
    c
}

/// Exit code, stdout, stderr.
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A container SAS signed with `account`'s `key`, valid until 2099, http allowed.
pub fn container_sas_for(account: &str, key: &str, container: &str, perms: &str) -> String {
    let key = SharedKey::new(account, key).unwrap();
    let terms = SasTerms {
        permissions: perms.into(),
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

/// curl: the status code; the body goes to `out` when given.
pub fn curl(args: &[&str], out: Option<&Path>) -> u16 {
    let mut c = std::process::Command::new("curl");
    c.args(["-sS", "--max-time", "60", "-o"]);
    c.arg(out.map_or_else(|| PathBuf::from("/dev/null"), Path::to_path_buf));
    c.args(["-w", "%{http_code}"]);
    c.args(args);
    let o = c.output().expect("curl is required (scripts/setup.sh)");
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Create an empty page blob of `size` at `sas_url` (a blob URL with a write SAS).
pub fn create_page_blob(sas_url: &str, size: u64) {
    let status = curl(
        &[
            "-X",
            "PUT",
            "-H",
            "x-ms-blob-type: PageBlob",
            "-H",
            &format!("x-ms-version: {VERSION}"),
            "-H",
            &format!("x-ms-blob-content-length: {size}"),
            "-H",
            "Content-Length: 0",
            sas_url,
        ],
        None,
    );
    assert_eq!(status, 201, "create {size}");
}

/// Put Page `data` (512-aligned, ≤ 4 MiB) at `at` of the blob at `sas_url`.
pub fn put_page(dir: &Path, sas_url: &str, at: u64, data: &[u8]) {
    let piece = dir.join("piece");
    std::fs::write(&piece, data).unwrap();
    let status = curl(
        &[
            "-X",
            "PUT",
            "-H",
            "x-ms-page-write: update",
            "-H",
            &format!("x-ms-version: {VERSION}"),
            "-H",
            &format!("x-ms-range: bytes={at}-{}", at + data.len() as u64 - 1),
            "--data-binary",
            &format!("@{}", piece.display()),
            &format!("{sas_url}&comp=page"),
        ],
        None,
    );
    assert_eq!(status, 201, "put page at {at}");
}

/// Get Page Ranges through curl, parsed by hand, adjacent ranges joined.
pub fn page_ranges(dir: &Path, sas_url: &str) -> Vec<(u64, u64)> {
    let out = dir.join("pagelist.xml");
    let status = curl(
        &[
            "-H",
            &format!("x-ms-version: {VERSION}"),
            &format!("{sas_url}&comp=pagelist"),
        ],
        Some(&out),
    );
    assert_eq!(status, 200);
    let xml = std::fs::read_to_string(&out).unwrap();
    let num = |s: &str, tag: &str| -> Vec<u64> {
        s.split(&format!("<{tag}>"))
            .skip(1)
            .map(|p| p.split('<').next().unwrap().parse().unwrap())
            .collect()
    };
    let mut v: Vec<(u64, u64)> = num(&xml, "Start")
        .into_iter()
        .zip(num(&xml, "End"))
        .map(|(s, e)| (s, e + 1))
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in v {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Download a whole blob through curl.
pub fn download(dir: &Path, sas_url: &str) -> Vec<u8> {
    let out = dir.join("download");
    assert_eq!(
        curl(
            &["-H", &format!("x-ms-version: {VERSION}"), sas_url],
            Some(&out)
        ),
        200
    );
    std::fs::read(out).unwrap()
}
