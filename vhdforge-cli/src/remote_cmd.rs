//! Commands on blobs already uploaded: `info URL` / `check URL` (the file report, for a
//! blob) and `sas URL` (the read-only container SAS URI Partner Center asks for).

use crate::ui::Ui;
use anyhow::Result;
use std::process::ExitCode;
use vhdforge_core::remote::{self, sas, RemoteInspection, RemoteOptions};
use vhdforge_core::storage::CredentialEnv;
use vhdforge_core::Severity;

/// `FILE` when it is an http(s) URL: `info` and `check` then read the blob.
pub fn as_url(file: &std::path::Path) -> Option<&str> {
    let s = file.to_str()?;
    let lower = s.get(..8)?.to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://")).then_some(s)
}

fn options() -> RemoteOptions {
    RemoteOptions {
        credentials: CredentialEnv::from_process_env(),
        ..RemoteOptions::default()
    }
}

/// The `info --json` object of a file, with what only a blob has added.
fn to_json(r: &RemoteInspection) -> serde_json::Value {
    let mut v = crate::inspect_cmd::to_json(std::path::Path::new(&r.url), &r.inspection);
    if let Some(o) = v.as_object_mut() {
        o.insert("url".into(), r.url.clone().into());
        o.insert("blob_type".into(), r.blob_type.clone().into());
        o.insert("blob_size".into(), r.blob_size.into());
    }
    v
}

fn human(r: &RemoteInspection) -> String {
    let mut s = crate::inspect_cmd::human(std::path::Path::new(&r.url), &r.inspection);
    s.push_str(&format!(
        "  blob            {} of {}",
        if r.blob_type.is_empty() {
            "?"
        } else {
            &r.blob_type
        },
        crate::ui::bytes(r.blob_size)
    ));
    if let Some(n) = r.stored_bytes {
        s.push_str(&format!(", {} in page ranges", crate::ui::bytes(n)));
    }
    s.push('\n');
    s
}

/// `vhdforge info URL`.
pub fn run_info(url: &str, json: bool, ui: &Ui) -> Result<ExitCode> {
    let r = remote::inspect_blob(url, &options())?;
    if json {
        ui.print_json(&to_json(&r))?;
    } else {
        ui.print(&human(&r))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `vhdforge check URL`: exit 0 when Azure can make a disk or image of the blob as it is.
pub fn run_check(url: &str, json: bool, ui: &Ui) -> Result<ExitCode> {
    let r = remote::inspect_blob(url, &options())?;
    if json {
        ui.print_json(&to_json(&r))?;
    } else {
        let mut s = human(&r);
        let errors = r
            .inspection
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        if r.inspection.azure_ready {
            s.push_str(&format!(
                "OK: {} is an Azure-ready fixed VHD in a page blob.\n",
                r.url
            ));
        } else {
            s.push_str(&format!(
                "FAILED: {errors} error(s); Azure will not make a disk or image of this blob (see above for what to do).\n"
            ));
        }
        ui.print(&s)?;
    }
    Ok(if r.inspection.azure_ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Print the SAS URI Partner Center asks for, after trying it as the Marketplace will.
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Print the SAS URI Partner Center asks for a VHD (Azure Marketplace, \"SAS URI\" of \
a VM image): a container SAS with read and list only (sp=rl, sr=c), valid from one day ago (st, \
against clock skew) to --days ahead (se, at least 21), full ISO-8601 times, https only (spr=https; \
left out only for plain-http loopback emulators such as Azurite), signed with the account key from \
AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT + AZURE_STORAGE_KEY.

Before printing, it tries the URI the way the Marketplace will, with nothing but the URI: HEAD and \
a ranged read of the footer, then the whole `check URL` (page blob, fixed VHD, size rules), and the \
blob-name rules (no spaces, '%' or quotes). Anything that would make certification fail to download \
the blob is an error (exit 2) and no URI is printed.

The printed URI contains the signature: it is this command's product, printed once on stdout \
(in --json as `uri`) and never in logs or errors. Anyone holding it can read every blob in the \
container until it expires."
)]
pub struct SasArgs {
    /// The VHD's blob URL, without a SAS (or CONTAINER/BLOB with a connection string).
    pub url: String,
    /// Days the SAS stays valid (21 to 365).
    #[arg(long, default_value_t = sas::DEFAULT_DAYS)]
    pub days: u32,
    /// Print one JSON object instead of the URI alone.
    #[arg(long)]
    pub json: bool,
}

/// `vhdforge sas`.
pub fn run_sas(a: &SasArgs, ui: &Ui) -> Result<ExitCode> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let s = sas::partner_center_sas(&a.url, a.days, now, &options())?;
    if a.json {
        ui.print_json(&serde_json::json!({
            "uri": s.uri,
            "url": s.check.url,
            "start": s.start,
            "expiry": s.expiry,
            "permissions": "rl",
            "resource": "c",
            "https_only": s.https_only,
            "upload_size_bytes": s.check.inspection.info.as_ref().map(|i| i.file_size),
            "azure_ready": s.check.inspection.azure_ready,
        }))?;
    } else {
        if !s.https_only {
            ui.note("note: no spr=https in this SAS because the URL is plain http to a loopback emulator; a real account's URI always has it");
        }
        ui.note(&format!(
            "tested: HEAD, footer read and check through the SAS; valid {} to {}",
            s.start, s.expiry
        ));
        // The product of the command: the one place the signature is printed.
        ui.print(&format!("{}\n", s.uri))?;
    }
    Ok(ExitCode::SUCCESS)
}
