//! The `vhdforge` binary never prints a secret (security review, issue 7): a SAS URL given
//! where a path or a number belongs, a URL password, a rejected SAS at every log level;
//! and the SAS can come from a file or the environment instead of the command line.

use assert_cmd::Command;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vhdforge_core::storage::sas::{self, SasResource, SasTerms};
use vhdforge_core::storage::SharedKey;

const MIB: u64 = 1 << 20;
mod common;
use common::{Azurite, ACCOUNT, KEY};
/// A signature that must never be printed.
const SECRET_SIG: &str = "VGhpc0lzVGhlU2VjcmV0U2ln%2Bx%3D";

fn vhdforge() -> Command {
    let mut c = Command::cargo_bin("vhdforge").unwrap();
    for v in [
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_STORAGE_KEY",
        "VHDFORGE_DEST_SAS",
    ] {
        c.env_remove(v);
    }
    c.timeout(Duration::from_secs(60));
    c
}

/// stdout + stderr of a run, and its exit code.
fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn assert_no_secret(text: &str) {
    let lower = text.to_ascii_lowercase();
    for s in ["VGhpc0lzVGhlU2VjcmV0U2ln", "s3cr3tpass"] {
        assert!(
            !lower.contains(&s.to_ascii_lowercase()),
            "secret {s} printed:\n{text}"
        );
    }
}

fn sas_url() -> String {
    format!("https://acct.blob.core.windows.net/c/b.vhd?sv=2021-08-06&sr=b&sp=cw&sig={SECRET_SIG}")
}

fn sparse_raw(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(20 * MIB).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a; 8192], MIB).unwrap();
    p
}

/// `info '<SAS URL>'` reads that blob (no service answers here): the error must not show the signature.
#[test]
fn sas_url_given_as_a_path_is_redacted() {
    for json in [false, true] {
        let mut c = vhdforge();
        c.arg("info").arg(sas_url());
        if json {
            c.arg("--json");
        }
        let (code, text) = run(&mut c);
        assert_eq!(code, 2, "{text}");
        assert!(text.contains("REDACTED"), "{text}");
        assert_no_secret(&text);
    }
    let (code, text) = run(vhdforge().arg("check").arg(sas_url()));
    assert_eq!(code, 2, "{text}");
    assert_no_secret(&text);
}

/// clap echoes an invalid value: a SAS URL given to `--concurrency` must come back redacted.
#[test]
fn sas_url_given_to_the_wrong_option_is_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_raw(dir.path(), "d.raw");
    for args in [
        vec![
            "upload".into(),
            "--concurrency".into(),
            sas_url(),
            src.display().to_string(),
            "c/b".into(),
        ],
        vec![
            "verify".into(),
            "--bridge-kib".into(),
            sas_url(),
            src.display().to_string(),
            "c/b".into(),
        ],
        vec!["upload".into(), "--no-such-flag".into(), sas_url()],
    ] {
        let (code, text) = run(vhdforge().args(&args));
        assert_eq!(code, 2, "{text}");
        assert_no_secret(&text);
    }
    // The echoed value itself is shown redacted, so the user still sees what went wrong.
    let (_, text) = run(vhdforge().args(["upload", "--concurrency", &sas_url(), "s", "d"]));
    assert!(text.contains("sig=REDACTED"), "{text}");
}

/// A password in the URL is refused, never printed, and leaves no journal.
#[test]
fn url_password_is_never_printed_nor_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_raw(dir.path(), "d.raw");
    let (code, text) = run(vhdforge()
        .arg("-vvv")
        .arg("upload")
        .arg(&src)
        .arg("https://user:s3cr3tpass@acct.blob.core.windows.net/c/b.vhd"));
    assert_eq!(code, 2, "{text}");
    assert_no_secret(&text);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("d.raw")]);
}

fn sas_for(resource: SasResource, perms: &str) -> String {
    let key = SharedKey::new(ACCOUNT, KEY).unwrap();
    let terms = SasTerms {
        permissions: perms.into(),
        start: None,
        expiry: "2099-01-01T00:00:00Z".into(),
        https_only: false,
    };
    sas::service_sas(&key, &resource, &terms).unwrap()
}

/// `--sas-file` and VHDFORGE_DEST_SAS authorize upload and verify against Azurite, with
/// the SAS never on the command line nor in the output; a wrong one fails with a 403
/// that shows no signature at any log level.
#[test]
fn sas_from_file_or_environment_works_against_azurite() {
    let az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_raw(dir.path(), "d.raw");
    std::fs::create_dir(dir.path().join("state-key")).unwrap();
    // The container, made with the account key.
    let (code, text) = run(vhdforge()
        .env("AZURE_STORAGE_CONNECTION_STRING", az.connection_string())
        .args(["upload", "--create-container", "--state-dir"])
        .arg(dir.path().join("state-key"))
        .arg(&src)
        .arg(az.blob_url("secrets", "by-key.vhd")));
    assert_eq!(code, 0, "{text}");

    // Upload with the SAS in the environment (a container SAS: create + write).
    let container_sas = sas_for(
        SasResource::Container {
            container: "secrets".into(),
        },
        "rcw",
    );
    std::fs::create_dir(dir.path().join("state")).unwrap();
    let (code, text) = run(vhdforge()
        .env("VHDFORGE_DEST_SAS", &container_sas)
        .args(["upload", "--json", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg(&src)
        .arg(az.blob_url("secrets", "by-env.vhd")));
    assert_eq!(code, 0, "{text}");
    let sig = container_sas.split("sig=").nth(1).unwrap().to_string();
    assert!(
        !text.contains(&sig) && !text.contains(&sig.to_ascii_lowercase()),
        "{text}"
    );

    // Verify with the SAS in a file (a whole SAS URL works as well as the query).
    let blob_sas = sas_for(
        SasResource::Blob {
            container: "secrets".into(),
            blob: "by-env.vhd".into(),
        },
        "r",
    );
    let sas_file = dir.path().join("sas.txt");
    std::fs::write(
        &sas_file,
        format!("{}?{blob_sas}\n", az.blob_url("secrets", "by-env.vhd")),
    )
    .unwrap();
    let (code, text) = run(vhdforge()
        .args(["verify", "--full", "--sas-file"])
        .arg(&sas_file)
        .arg(&src)
        .arg(az.blob_url("secrets", "by-env.vhd")));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("identical"), "{text}");

    // Without any SAS the same command is refused: the file was what authorized it.
    let (code, text) = run(vhdforge()
        .arg("verify")
        .arg(&src)
        .arg(az.blob_url("secrets", "by-env.vhd")));
    assert_eq!(code, 2, "{text}");

    // A SAS the service rejects (403), at the highest log level: the signature never shows.
    let bad = format!("sv=2021-08-06&sr=c&sp=rcw&se=2099-01-01T00%3A00%3A00Z&sig={SECRET_SIG}");
    let (code, text) = run(vhdforge()
        .env("VHDFORGE_DEST_SAS", &bad)
        .args(["-vvv", "upload", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg(&src)
        .arg(az.blob_url("secrets", "rejected.vhd")));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("403"), "{text}");
    assert_no_secret(&text);
}
