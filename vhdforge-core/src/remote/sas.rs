//! The SAS URI Partner Center asks for (docs/azure-page-blob.md §1.6): a **container** SAS
//! with read and list only (`sp=rl`, `sr=c`), valid from one day in the past (clock skew
//! between Azure's copy service and the storage account) to at least 21 days ahead (the
//! certification's minimum), full `YYYY-MM-DDThh:mm:ssZ` datetimes, https only, printed as
//! the full VHD URL — and tried the way the Marketplace will try it before it is handed out.
//!
//! `spr=https` is left out only when the URL itself is plain http to a loopback emulator
//! (Azurite), which would otherwise refuse it; such a URL can never reach Partner Center.
//!
//! With `--auth login` no key is needed: the SAS is a **user delegation SAS**, signed with a
//! key the service gives the signed-in identity (Get User Delegation Key). The service limits
//! those to 7 days, less than certification's 21, so they are for colleagues and tests; the
//! Marketplace's SAS is signed with the account key.

use super::check::{inspect_blob, RemoteInspection, RemoteOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::finding::Severity;
use crate::progress::Cancel;
use crate::storage::auth::{self, Credential};
use crate::storage::hosts::is_loopback_host;
use crate::storage::retry::with_retries;
use crate::storage::sas::{
    service_sas, user_delegation_sas, SasResource, SasTerms, MAX_USER_DELEGATION_DAYS,
};
use crate::storage::BlobClient;

/// The shortest validity Partner Center certification accepts, in days.
pub const MIN_DAYS: u32 = 21;
/// The default validity: certification can take weeks, and a SAS that expires during it
/// fails the offer with "not able to download blob".
pub const DEFAULT_DAYS: u32 = 30;
/// The longest validity offered (a read SAS that outlives its use is a standing leak).
pub const MAX_DAYS: u32 = 365;

/// A tested SAS URI.
#[derive(Debug, Clone)]
pub struct PartnerSas {
    /// The full VHD URL with the SAS: the product of the command (holds the signature).
    pub uri: String,
    /// `st`.
    pub start: String,
    /// `se`.
    pub expiry: String,
    /// Whether `spr=https` is in it.
    pub https_only: bool,
    /// A user delegation SAS (`--auth login`), not signed with the account key.
    pub user_delegation: bool,
    /// The remote check made through the SAS itself.
    pub check: RemoteInspection,
}

fn err(code: &'static str, msg: String) -> Error {
    Error::new(ErrorKind::InvalidInput, code, msg)
}

/// `secs` since the Unix epoch as `YYYY-MM-DDThh:mm:ssZ` (UTC; days to civil date after
/// Howard Hinnant's well-known algorithm, written out here to avoid a date crate).
pub fn iso8601(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The container and blob names of a blob URL (path-style for loopback and IP hosts,
/// where the account is the first segment), percent-decoded.
fn container_and_blob(url: &reqwest::Url) -> Result<(String, String)> {
    let host = url.host_str().unwrap_or("");
    let path_style =
        host.parse::<std::net::IpAddr>().is_ok() || host.eq_ignore_ascii_case("localhost");
    let mut path = url.path().trim_start_matches('/');
    if path_style {
        path = path.split_once('/').map_or("", |(_, rest)| rest);
    }
    let (c, b) = path.split_once('/').unwrap_or((path, ""));
    decode_pair(c, b)
}

/// The storage account a blob URL names: the first path segment for path-style URLs
/// (loopback and IP hosts, as Azurite uses), else the host's first label.
fn account_of(url: &reqwest::Url) -> Result<String> {
    let host = url.host_str().unwrap_or("");
    let path_style =
        host.parse::<std::net::IpAddr>().is_ok() || host.eq_ignore_ascii_case("localhost");
    let account = if path_style {
        url.path()
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("")
    } else {
        host.split('.').next().unwrap_or("")
    };
    if account.is_empty() {
        return Err(err("upload.url", "the URL names no storage account".into()));
    }
    Ok(account.to_string())
}

fn decode_pair(c: &str, b: &str) -> Result<(String, String)> {
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(std::borrow::Cow::into_owned)
            .map_err(|_| {
                err(
                    "sas.blob_name",
                    format!("the name {s:?} is not valid UTF-8 once decoded"),
                )
            })
    };
    let (c, b) = (dec(c)?, dec(b)?);
    if c.is_empty() || b.is_empty() {
        return Err(err(
            "upload.url",
            "the URL names no blob; expected https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB.vhd".into(),
        ));
    }
    Ok((c, b))
}

/// The blob-name rules the Marketplace's download enforces: no spaces, `%`, or quotes
/// (certification reports them as "not able to download blob"), and a `.vhd` name.
pub fn check_blob_name(blob: &str) -> Result<()> {
    if let Some(c) = blob
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '%' | '"' | '\'' | '?' | '#'))
    {
        return Err(err(
            "sas.blob_name",
            format!(
                "the blob name {blob:?} contains {c:?}; Partner Center cannot download blobs whose names hold \
                 spaces, '%', quotes, '?' or '#'. Copy it to a plain name (letters, digits, '-', '_', '.', '/') \
                 with `vhdforge copy`, then run `vhdforge sas` on the new URL"
            ),
        ));
    }
    if !blob.to_ascii_lowercase().ends_with(".vhd") {
        return Err(err(
            "sas.blob_name",
            format!("the blob name {blob:?} does not end in .vhd; Partner Center expects the VHD's own URL (…/CONTAINER/NAME.vhd)"),
        ));
    }
    Ok(())
}

/// Sign, then test, the Partner Center SAS URI for the blob at `url`, valid `days` days
/// from `now` (seconds since the epoch). The key comes from `opts.credentials` (the same
/// variables `upload` reads); the URL must not carry a SAS of its own.
pub fn partner_center_sas(
    url: &str,
    days: u32,
    now: u64,
    opts: &RemoteOptions,
) -> Result<PartnerSas> {
    let login = opts.credentials.auth_mode()? == auth::AuthMode::Login;
    if login && !(1..=MAX_USER_DELEGATION_DAYS).contains(&days) {
        return Err(err(
            "sas.terms",
            format!(
                "--days {days} with --auth login: a user delegation SAS is valid at most {MAX_USER_DELEGATION_DAYS} days \
                 (the service's limit); Partner Center needs {MIN_DAYS}, so for the Marketplace sign with the account key \
                 (--auth key, AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT + AZURE_STORAGE_KEY)"
            ),
        ));
    }
    if !login && !(MIN_DAYS..=MAX_DAYS).contains(&days) {
        return Err(err(
            "sas.terms",
            format!(
                "--days {days}: Partner Center needs a SAS valid at least {MIN_DAYS} days (certification can take \
                 that long); at most {MAX_DAYS} are signed"
            ),
        ));
    }
    let url = auth::expand_destination(url, &opts.credentials)?;
    let display = crate::storage::redact(&url);
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| err("upload.url", format!("{display} is not a blob URL ({e})")))?;
    if parsed.query().is_some() {
        return Err(err(
            "sas.url",
            format!(
                "{display} already carries a query (a SAS?); give the plain blob URL: `vhdforge sas` signs a new \
                 SAS with the account key from AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT + AZURE_STORAGE_KEY"
            ),
        ));
    }
    // Validates the URL (https, no user info) and that the key (or token) may go to this host.
    let keyed = BlobClient::new(&url, &opts.credentials, &opts.api_version, 2)?;
    let (container, blob) = container_and_blob(&parsed)?;
    check_blob_name(&blob)?;
    let https_only = !(parsed.scheme() == "http" && is_loopback_host(keyed.host()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", e))?;
    let cancel = Cancel::never();
    let (start, expiry, query) = sign(
        &rt, &cancel, &keyed, &parsed, container, days, now, https_only, opts,
    )?;
    let uri = format!("{}?{query}", keyed.base());
    // Try it as the Marketplace will: with nothing but the URI (no key or token in reach),
    // still trusting the same CAs (--ca-cert) as the rest of the command.
    let bare = RemoteOptions {
        credentials: crate::storage::CredentialEnv {
            ca_cert: opts.credentials.ca_cert.clone(),
            cloud: opts.credentials.cloud.clone(),
            ..crate::storage::CredentialEnv::default()
        },
        ..opts.clone()
    };
    let through = BlobClient::new(&uri, &bare.credentials, &bare.api_version, 2)?;
    let props = rt
        .block_on(with_retries(&bare.retry, &cancel, &|_| {}, || {
            through.head()
        }))
        .map_err(|f| f.into_error("trying the new SAS on (HEAD)", &display))?;
    if props.size >= 512 {
        rt.block_on(with_retries(&bare.retry, &cancel, &|_| {}, || {
            through.get_range(props.size - 512..props.size)
        }))
        .map_err(|f| f.into_error("trying the new SAS on (reading the footer of)", &display))?;
    }
    drop(rt);
    let check = inspect_blob(&uri, &bare)?;
    let errors: Vec<String> = check
        .inspection
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| format!("{}: {}", f.code, f.message))
        .collect();
    if !errors.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "sas.not_ready",
            format!(
                "{display} would fail certification; no SAS is printed until it is fixed:\n  {}",
                errors.join("\n  ")
            ),
        ));
    }
    Ok(PartnerSas {
        uri,
        start,
        expiry,
        https_only,
        user_delegation: login,
        check,
    })
}

/// Sign the container SAS for `container`: with `--auth login` a user delegation SAS (its
/// key asked of the service through `keyed`'s token), else a service SAS with the account
/// key. Returns `st`, `se` and the query.
#[allow(clippy::too_many_arguments)] // The pieces partner_center_sas has already checked.
fn sign(
    rt: &tokio::runtime::Runtime,
    cancel: &Cancel,
    keyed: &BlobClient,
    parsed: &reqwest::Url,
    container: String,
    days: u32,
    now: u64,
    https_only: bool,
    opts: &RemoteOptions,
) -> Result<(String, String, String)> {
    let display = keyed.display();
    if opts.credentials.auth_mode()? == auth::AuthMode::Login {
        // The key's validity bounds the SAS's: both from a few minutes ago (clock skew) to
        // `days` ahead, kept inside the service's 7 days from now.
        let start = iso8601(now.saturating_sub(15 * 60));
        let expiry = iso8601(
            (now + u64::from(days) * 86_400)
                .min(now + u64::from(MAX_USER_DELEGATION_DAYS) * 86_400 - 600),
        );
        let udk = rt
            .block_on(with_retries(&opts.retry, cancel, &|_| {}, || {
                keyed.user_delegation_key(&start, &expiry)
            }))
            .map_err(|f| f.into_error("getting a user delegation key for", display))?;
        let terms = SasTerms {
            permissions: "rl".into(),
            start: Some(start.clone()),
            expiry: expiry.clone(),
            https_only,
        };
        let account = account_of(parsed)?;
        let q = user_delegation_sas(
            &udk,
            &account,
            &SasResource::Container { container },
            &terms,
        )?;
        Ok((start, expiry, q))
    } else {
        let Credential::SharedKey(key) = auth::resolve(None, &opts.credentials)? else {
            return Err(err("upload.credentials", "no account key".into()));
        };
        let start = iso8601(now.saturating_sub(86_400));
        let expiry = iso8601(now + u64::from(days) * 86_400);
        let terms = SasTerms {
            permissions: "rl".into(),
            start: Some(start.clone()),
            expiry: expiry.clone(),
            https_only,
        };
        let q = service_sas(&key, &SasResource::Container { container }, &terms)?;
        Ok((start, expiry, q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(iso8601(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn blob_names_partner_center_cannot_download() {
        for bad in [
            "my disk.vhd",
            "disk%20.vhd",
            "disk\".vhd",
            "it's.vhd",
            "disk.vhdx",
        ] {
            assert_eq!(
                check_blob_name(bad).unwrap_err().code(),
                "sas.blob_name",
                "{bad}"
            );
        }
        check_blob_name("images/os-disk_1.0.vhd").unwrap();
    }

    #[test]
    fn days_below_the_certification_minimum_are_refused() {
        let e = partner_center_sas(
            "https://a.blob.core.windows.net/c/b.vhd",
            7,
            0,
            &RemoteOptions::default(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "sas.terms");
        assert!(e.to_string().contains("21"));
    }
}
