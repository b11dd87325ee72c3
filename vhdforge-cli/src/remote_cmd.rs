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

/// A look at a blob is interactive: a host that does not answer is reported within seconds
/// (4 attempts, about 4 s of backoff) rather than after upload's patient minutes.
fn options() -> RemoteOptions {
    RemoteOptions {
        credentials: CredentialEnv::from_process_env(),
        retry: vhdforge_core::storage::RetryPolicy {
            max_attempts: 4,
            base_delay: std::time::Duration::from_millis(500),
            max_delay: std::time::Duration::from_secs(4),
        },
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

With --auth login there is no key: the SAS is a user delegation SAS (skoid, sktid, skt, ske, sks, \
skv), signed with a key the service issues to the signed-in Entra ID identity (which needs a data \
role such as Storage Blob Data Reader, and 'Generate a user delegation key' permission, part of every \
Storage Blob Data role). The service limits it to 7 days, less than the 21 Partner Center needs: use it \
to share a VHD with a colleague or a test, and the account key for the Marketplace.

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
    /// Days the SAS stays valid: 21 to 365 (default 30); with --auth login (a user
    /// delegation SAS, no account key) 1 to 7 (default 7).
    #[arg(long)]
    pub days: Option<u32>,
    /// Print one JSON object instead of the URI alone.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: crate::upload_cmd::ConnectArgs,
}

/// `vhdforge sas`.
pub fn run_sas(a: &SasArgs, ui: &Ui) -> Result<ExitCode> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let opts = RemoteOptions {
        credentials: a.connect.credentials(),
        ..options()
    };
    let login = opts.credentials.auth_mode()? == vhdforge_core::storage::AuthMode::Login;
    let days = a.days.unwrap_or(if login {
        vhdforge_core::storage::sas::MAX_USER_DELEGATION_DAYS
    } else {
        sas::DEFAULT_DAYS
    });
    let s = sas::partner_center_sas(&a.url, days, now, &opts)?;
    if a.json {
        ui.print_json(&serde_json::json!({
            "uri": s.uri,
            "url": s.check.url,
            "start": s.start,
            "expiry": s.expiry,
            "permissions": "rl",
            "resource": "c",
            "https_only": s.https_only,
            "user_delegation": s.user_delegation,
            "upload_size_bytes": s.check.inspection.info.as_ref().map(|i| i.file_size),
            "azure_ready": s.check.inspection.azure_ready,
        }))?;
    } else {
        if s.user_delegation {
            ui.note(&format!(
                "note: a user delegation SAS (signed for the signed-in identity, no account key); valid at most {} days, \
                 so not for Partner Center (it needs {}): sign with the account key for the Marketplace",
                vhdforge_core::storage::sas::MAX_USER_DELEGATION_DAYS,
                sas::MIN_DAYS
            ));
        }
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

/// How `copy` moves the data.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViaArg {
    /// Put Page From URL: the destination service reads the source (needs a SAS on SRC).
    Server,
    /// Read each range here and Put Page it (across clouds, or when DEST cannot reach SRC).
    Client,
    /// The service's Copy Blob, polled; Ctrl-C aborts it.
    Async,
}

/// Copy a page blob, moving only its page ranges.
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Copy a VHD in a page blob to another container, account or region, moving only the \
source's page ranges (a sparse 1 TiB disk with 3 GiB of data moves 3 GiB).

--via server (default): Put Page From URL in pieces of at most 4 MiB; no data passes through this \
machine, and SRC must carry a SAS with read permission. --via client: each range is read here and \
written with Put Page (works across clouds and where DEST cannot reach SRC). --via async: the \
service's Copy Blob, polled until done; Ctrl-C aborts it (Abort Copy Blob) and leaves an empty blob.

DEST is a new page blob of the source's length (--overwrite replaces one), or a managed-disk upload \
SAS (never created; its size must equal the source's, and ranges it holds that the source does not are \
cleared first). Credentials as for `upload`: a SAS in each URL, or the account key variables for URLs \
in that account. At the end the two page lists are compared; --verify-full also compares the data. \
Exit 0 when they match, 1 when they do not, 2 on error."
)]
pub struct CopyArgs {
    /// The source page blob URL.
    pub src: String,
    /// The destination blob URL.
    pub dest: String,
    /// How the data travels.
    #[arg(long, value_enum, default_value_t = ViaArg::Server)]
    pub via: ViaArg,
    /// Replace an existing destination page blob.
    #[arg(long)]
    pub overwrite: bool,
    /// Continue an interrupted copy into DEST: pieces it holds are compared with the
    /// source and only missing or different ones are written (client and server).
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Requests in flight, 1 to 16.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub concurrency: u16,
    /// Treat DEST as a managed-disk upload SAS even if its host does not look like one.
    #[arg(long)]
    pub managed_disk: bool,
    /// Also compare every byte of the two blobs at the end.
    #[arg(long)]
    pub verify_full: bool,
    /// Print a JSON summary instead of the text line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: crate::upload_cmd::ConnectArgs,
}

/// `vhdforge copy`.
pub fn run_copy(a: &CopyArgs, ui: &Ui) -> Result<ExitCode> {
    use vhdforge_core::copy::{self, CopyOptions, Via};
    let opts = CopyOptions {
        via: match a.via {
            ViaArg::Server => Via::Server,
            ViaArg::Client => Via::Client,
            ViaArg::Async => Via::Async,
        },
        overwrite: a.overwrite,
        resume: a.resume,
        concurrency: usize::from(a.concurrency),
        managed_disk: a.managed_disk,
        verify_full: a.verify_full,
        credentials: a.connect.credentials(),
        ..CopyOptions::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let progress = ui.progress("copying", a.json);
    let started = std::time::Instant::now();
    let report = rt.block_on(copy::copy(&a.src, &a.dest, &opts, &progress));
    progress.finish(report.is_ok());
    let report = report?;
    let ok = report.ranges_equal && report.identical != Some(false);
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["source"] = vhdforge_core::storage::redact(&a.src).into();
        v["destination"] = vhdforge_core::storage::redact(&a.dest).into();
        ui.print_json(&v)?;
    } else {
        let secs = started.elapsed().as_secs_f64();
        let mut s = format!(
            "copied {} of {} ({} requests{}); page ranges {}",
            crate::ui::amount_and_rate(report.bytes_copied, secs),
            crate::ui::bytes(report.size),
            report.requests,
            if report.stale_bytes_cleared > 0 {
                format!(
                    ", {} of stale pages cleared",
                    crate::ui::bytes(report.stale_bytes_cleared)
                )
            } else {
                String::new()
            },
            if report.ranges_equal {
                "match"
            } else {
                "DIFFER"
            },
        );
        match report.identical {
            Some(true) => s.push_str("; data identical"),
            Some(false) => s.push_str("; data DIFFERS"),
            None => {}
        }
        s.push('\n');
        ui.print(&s)?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
