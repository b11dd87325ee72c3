//! Checks on a destination URL that need no request: Azure's container and blob naming
//! rules (docs/azure-page-blob.md), and a SAS cut short by the shell. Refusing these locally
//! gives the rule instead of a 400 or 404 from the service after the whole image was planned.

use crate::error::{Error, ErrorKind, Result};
use crate::storage::hosts::{is_loopback_host, is_managed_disk_host};

/// Longest blob name Azure accepts, in characters.
const MAX_BLOB_NAME: usize = 1024;
/// Most path segments a blob name may have.
const MAX_BLOB_SEGMENTS: usize = 254;

fn refuse(msg: String) -> Error {
    Error::new(ErrorKind::InvalidInput, "upload.url", msg)
}

/// Check a full destination URL (after `CONTAINER/BLOB` was expanded). `shown` is the URL as
/// it may be printed (redacted). A cut SAS is refused everywhere; names only on Azure's hosts.
pub fn check_destination(url: &str, shown: &str) -> Result<()> {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        // The client reports an unparsable URL with its own message.
        return Ok(());
    };
    check_sas_complete(parsed.query(), shown)?;
    let host = parsed.host_str().unwrap_or("");
    // Managed-disk SAS names are Azure's own; an emulator or test server on this machine
    // (path style, /ACCOUNT/CONTAINER/BLOB) has rules of its own.
    if is_managed_disk_host(host) || is_loopback_host(host) {
        return Ok(());
    }
    match parsed.path().trim_start_matches('/').split_once('/') {
        Some((c, b)) => check_names(c, b, shown),
        // "Names no blob" is the client's message.
        None => Ok(()),
    }
}

/// A query with a SAS version (`sv=`) but no signature: an unquoted URL that the shell cut
/// at the first `&` (and ran the rest as a background job).
fn check_sas_complete(query: Option<&str>, shown: &str) -> Result<()> {
    let Some(q) = query else { return Ok(()) };
    let has = |name: &str| {
        q.split('&').any(|p| {
            p.split('=')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
    };
    if has("sv") && !has("sig") {
        return Err(refuse(format!(
            "{shown} has a SAS without its signature (sv=… but no sig parameter): the shell cut the URL at `&`: \
             quote it ('https://…?sv=…&sig=…'), or put the SAS in a file for --sas-file"
        )));
    }
    Ok(())
}

/// Azure's rules for a container name (3–63 lowercase letters, digits and single hyphens,
/// starting and ending with a letter or digit; `$root`, `$logs` and `$web` are special) and
/// a blob name (1–1024 characters, at most 254 segments, not ending with `/`).
fn check_names(container: &str, blob_encoded: &str, shown: &str) -> Result<()> {
    let special = matches!(container, "$root" | "$logs" | "$web");
    let ok_chars = container
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = container
        .bytes()
        .next()
        .zip(container.bytes().last())
        .is_some_and(|(a, z)| a != b'-' && z != b'-');
    let valid =
        (3..=63).contains(&container.len()) && ok_chars && ends_ok && !container.contains("--");
    if !special && !valid {
        return Err(refuse(format!(
            "{shown}: {container:?} is not a valid container name: Azure requires 3–63 characters, only lowercase \
             letters, digits and hyphens, starting and ending with a letter or digit, no two hyphens in a row \
             (e.g. \"vhds\"); use such a name"
        )));
    }
    let blob = percent_encoding::percent_decode_str(blob_encoded).decode_utf8_lossy();
    let chars = blob.chars().count();
    if chars == 0 || chars > MAX_BLOB_NAME {
        return Err(refuse(format!(
            "{shown}: the blob name is {chars} characters; Azure requires 1–{MAX_BLOB_NAME}"
        )));
    }
    if blob.ends_with('/') || blob.split('/').count() > MAX_BLOB_SEGMENTS {
        return Err(refuse(format!(
            "{shown}: the blob name {blob:?} ends with '/' or has more than {MAX_BLOB_SEGMENTS} '/'-separated \
             segments; Azure requires a name like disk.vhd or folder/disk.vhd"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_cut_sas() {
        // (url, accepted?, a word the refusal must contain)
        let cases: [(&str, bool, &str); 13] = [
            (
                "https://a.blob.core.windows.net/vhds/disk.vhd?sv=1&sig=x",
                true,
                "",
            ),
            // Folders in blob names are fine.
            (
                "https://a.blob.core.windows.net/vhds/dir/disk.vhd",
                true,
                "",
            ),
            // Special containers.
            ("https://a.blob.core.windows.net/$root/disk.vhd", true, ""),
            // An emulator's names are its own business; a cut SAS is refused there too.
            (
                "http://127.0.0.1:10000/devstoreaccount1/C/disk.vhd",
                true,
                "",
            ),
            (
                "http://127.0.0.1:10000/devstoreaccount1/c/d.vhd?sv=1",
                false,
                "quote it",
            ),
            // Uppercase, underscore, too short, too long, edge and double hyphens.
            (
                "https://a.blob.core.windows.net/VHDs/disk.vhd",
                false,
                "lowercase",
            ),
            (
                "https://a.blob.core.windows.net/my_vhds/disk.vhd",
                false,
                "container name",
            ),
            ("https://a.blob.core.windows.net/ab/disk.vhd", false, "3–63"),
            (
                "https://a.blob.core.windows.net/-vhds/disk.vhd",
                false,
                "starting",
            ),
            (
                "https://a.blob.core.windows.net/v--hds/disk.vhd",
                false,
                "two hyphens",
            ),
            // A directory, not a blob.
            (
                "https://a.blob.core.windows.net/vhds/dir/",
                false,
                "ends with '/'",
            ),
            // The shell cut the URL at the first '&'.
            (
                "https://a.blob.core.windows.net/vhds/disk.vhd?sv=2021-08-06",
                false,
                "quote it",
            ),
            // Managed-disk SAS names are Azure's own.
            (
                "https://md-abc.z1.blob.storage.azure.net/ABC_x/abcd?sv=1&sig=x",
                true,
                "",
            ),
        ];
        for (url, ok, word) in cases {
            match check_destination(url, url) {
                Ok(()) => assert!(ok, "{url} accepted"),
                Err(e) => {
                    assert!(!ok, "{url}: {e}");
                    assert_eq!(e.code(), "upload.url");
                    assert!(e.message().contains(word), "{url}: {e}");
                }
            }
        }
        let long = format!("https://a.blob.core.windows.net/c{}/d", "x".repeat(63));
        assert!(check_destination(&long, "u").is_err());
        let long_blob = format!("https://a.blob.core.windows.net/vhds/{}", "x".repeat(1025));
        assert!(check_destination(&long_blob, "u").is_err());
    }
}
