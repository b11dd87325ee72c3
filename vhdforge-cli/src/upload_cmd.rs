//! `vhdforge upload` and `vhdforge verify`: argument definitions, progress rendering and
//! output; the work is `vhdforge_core::upload`.

use crate::ui::{amount_and_rate, Ui};
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use vhdforge_core::convert::Policy;
use vhdforge_core::progress::format_bytes as human;
use vhdforge_core::upload::{
    self, Compared, CredentialEnv, UploadOptions, VerifyOptions, DEFAULT_API_VERSION,
};

/// Upload an image to an Azure page blob or managed disk, sending only non-zero pages.
///
/// The image (raw, VHD or VHDX) is sent as the Azure-ready fixed VHD `vhdforge convert`
/// would write: an Azure-ready fixed VHD byte for byte, anything else converted on the fly
/// (size rounded up to a whole MiB, a fixed-VHD footer added). Only non-zero 512-byte pages
/// are sent, in parallel, each with a CRC-64; the footer goes last.
///
/// CREDENTIALS (--auth narrows them to one kind; --auth login signs in with Entra ID
/// instead), in this order: a SAS in DEST (…?sv=…&sig=…; needs write permission:
/// `az storage blob generate-sas --permissions cw …`, or a container/account SAS with
/// `w`); else a Shared Key from AZURE_STORAGE_CONNECTION_STRING; else AZURE_STORAGE_ACCOUNT
/// and AZURE_STORAGE_KEY. SAS signatures and keys are never printed. To keep the SAS out
/// of the process list and shell history, leave it out of DEST and give it with --sas-file
/// or the VHDFORGE_DEST_SAS environment variable (the query string, or the whole SAS URL).
/// An account key only signs requests to that account's own endpoints.
///
/// STORAGE ACCOUNT: the page blob is created at the exact size; an existing blob is left
/// alone unless --overwrite.
///
/// MANAGED DISK (direct upload): `az disk create … --upload-type Upload
/// --upload-size-bytes N` where N is this image's output size (`vhdforge info` shows it;
/// vhdforge says the right N if it differs), then `az disk grant-access … --access-level
/// Write` and pass its accessSas as DEST. vhdforge recognises the md-… host, never
/// creates or alters the blob's properties, checks the size, uploads, and you finish with
/// `az disk revoke-access`.
///
/// RESUME: an interrupted upload (Ctrl-C, network loss) leaves a journal next to the source
/// (in ~/.local/state/vhdforge when that folder is read-only, or in --state-dir); run the
/// same command with --resume to send only what the journal does not record as sent. A
/// changed source (or any parent of a differencing disk) is refused.
///
/// DRY RUN: --dry-run checks DEST, the credentials and the source, and prints the plan (the
/// upload size, bytes to send, requests) without contacting any server or writing anything.
#[derive(clap::Args, Debug)]
#[command(after_long_help = UPLOAD_ENV_HELP)]
pub struct UploadArgs {
    /// The disk image to upload (raw, VHD or VHDX).
    pub source: PathBuf,
    /// The destination blob URL, e.g. https://ACCOUNT.blob.core.windows.net/CONTAINER/disk.vhd[?SAS],
    /// a managed disk's accessSas, or the short form CONTAINER/BLOB (with
    /// AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT set). Quote it: a SAS contains '&'.
    pub dest: String,
    /// Read the SAS from this file (its query string `sv=…&sig=…`, or the whole SAS URL)
    /// instead of DEST: a SAS in DEST is visible to every user of this machine for as long
    /// as the upload runs. VHDFORGE_DEST_SAS does the same from the environment.
    #[arg(long, value_name = "FILE")]
    pub sas_file: Option<PathBuf>,
    /// Put Page requests in flight at once, 1 to 16 (cut automatically while the service
    /// throttles); memory stays under about 2 × N × 4 MiB.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub concurrency: u16,
    /// Replace an existing blob (storage accounts; a managed disk is always written in place).
    #[arg(long)]
    pub overwrite: bool,
    /// Create the container first if it does not exist (storage accounts; needs a Shared
    /// Key or an account SAS allowed to create containers).
    #[arg(long)]
    pub create_container: bool,
    /// Continue an interrupted upload of the same source to the same destination.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Print a JSON summary on stdout instead of the text line.
    #[arg(long)]
    pub json: bool,
    /// Store the whole image's MD5 as the blob's Content-MD5 at the end (storage accounts
    /// only; computed while sending, no second read).
    #[arg(long)]
    pub content_md5: bool,
    /// Protect each request with Content-MD5 instead of the default CRC-64.
    #[arg(long)]
    pub md5_per_request: bool,
    /// Treat DEST as a managed-disk upload SAS even if its host does not look like one.
    #[arg(long)]
    pub managed_disk: bool,
    /// The x-ms-version to send.
    #[arg(long, default_value = DEFAULT_API_VERSION, value_name = "VERSION")]
    pub api_version: String,
    /// Zero gaps shorter than this many KiB are sent as zeros to keep requests large
    /// (a page blob takes at most 500 requests/s).
    #[arg(long, default_value_t = 64, value_name = "KIB")]
    pub bridge_kib: u64,
    /// Keep the resume journal in this directory instead of next to the source (default:
    /// next to the source, or ~/.local/state/vhdforge when that folder is read-only).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Upload images outside Azure's 20 MiB – 32 767 GiB range.
    #[arg(long)]
    pub allow_any_size: bool,
    /// Upload 4096-byte-sector images although the guest will then see 512-byte sectors.
    #[arg(long)]
    pub allow_4k_sectors: bool,
    /// Check DEST, credentials and source and print the plan; contact no server, send nothing.
    #[arg(long, conflicts_with = "resume")]
    pub dry_run: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// How to reach Azure, shared by every command that talks to the Blob service.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConnectArgs {
    /// The Azure cloud whose endpoints CONTAINER/BLOB means when only an account name is
    /// known: AzureCloud, AzureChinaCloud or AzureUSGovernment (the `az cloud list` names;
    /// default: AZURE_CLOUD, else AzureCloud). A connection string's EndpointSuffix or
    /// BlobEndpoint wins over it.
    #[arg(long, value_name = "CLOUD", value_parser = parse_cloud)]
    pub cloud: Option<String>,
    /// Also trust the CA certificates in this PEM file (a TLS-inspecting proxy's root, a
    /// private endpoint's CA), besides the built-in roots and the system's trust store.
    /// Also VHDFORGE_CA_CERT.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// How to authorize: `key` (an account key from the environment), `sas` (a SAS in the
    /// URL, --sas-file, VHDFORGE_DEST_SAS or the connection string) or `login` (Entra ID,
    /// like `az … --auth-mode login`: the Azure CLI's sign-in, a managed identity, or a
    /// service principal / workload identity from AZURE_CLIENT_ID etc.; the identity needs
    /// a data role such as Storage Blob Data Contributor). Default: by what is given (a SAS
    /// in the URL, else a key). Also VHDFORGE_AUTH.
    #[arg(long, value_name = "MODE", value_parser = ["key", "sas", "login"])]
    pub auth: Option<String>,
}

fn parse_cloud(s: &str) -> Result<String, String> {
    vhdforge_core::storage::Cloud::parse(s)
        .map(|c| c.name().to_string())
        .map_err(|e| e.message().to_string())
}

impl ConnectArgs {
    /// The environment's credentials with these flags applied over it.
    pub fn credentials(&self) -> CredentialEnv {
        let mut env = CredentialEnv::from_process_env();
        if let Some(c) = &self.cloud {
            env.cloud = Some(c.clone());
        }
        if let Some(p) = &self.ca_cert {
            env.ca_cert = Some(p.clone());
        }
        if let Some(a) = &self.auth {
            env.auth = Some(a.clone());
        }
        env
    }
}

/// The environment `upload` and `verify` read, listed at the end of their long help.
const UPLOAD_ENV_HELP: &str = "\
Environment:
  AZURE_STORAGE_CONNECTION_STRING   AccountName + AccountKey, or SharedAccessSignature;
                                    [EndpointSuffix | BlobEndpoint] [DefaultEndpointsProtocol]
  AZURE_STORAGE_ACCOUNT             the account (with AZURE_STORAGE_KEY)
  AZURE_STORAGE_KEY                 the account key (base64)
  VHDFORGE_AUTH                     key | sas | login (as --auth)
  AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET | AZURE_FEDERATED_TOKEN_FILE
                                    --auth login as a service principal / workload identity
  AZURE_CLOUD                       AzureCloud | AzureChinaCloud | AzureUSGovernment (as --cloud)
  VHDFORGE_CA_CERT                  extra trusted CA certificates, PEM (as --ca-cert)
  HTTPS_PROXY, NO_PROXY             proxy for https (never used for loopback hosts)
  VHDFORGE_DEST_SAS                 the SAS for DEST (query or SAS URL)
  VHDFORGE_LOG                      log filter (tracing directives)
  NO_COLOR                          no colour in logs

DEST forms:
  https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB?SAS
  https://md-….blob.storage.azure.net/…?SAS      (a managed disk's accessSas)
  CONTAINER/BLOB     short form: the account from the environment

Examples:
  vhdforge upload --dry-run disk.vhdx vhds/disk.vhd
  vhdforge upload disk.vhdx 'https://acct.blob.core.windows.net/vhds/disk.vhd?sv=…&sig=…'";

/// Check that a page blob or managed disk holds exactly what `upload` sends for SOURCE.
///
/// Always checks the size, the footer and that every non-zero 512-byte page of the source
/// is written at the destination while nothing is written where the source is zero
/// (beyond gaps an upload bridges). With --full, every written range is read back and
/// compared byte for byte; without it the data itself is not read, so the report says
/// "layout matches", not "identical". Exit status: 0 no difference found in what was
/// compared, 1 different (the report says where), 2 error. Credentials as for `upload` (a read SAS is enough).
#[derive(clap::Args, Debug)]
#[command(after_long_help = UPLOAD_ENV_HELP)]
pub struct VerifyArgs {
    /// The disk image that was uploaded.
    pub source: PathBuf,
    /// The blob URL (with a SAS, or credentials in the environment as for `upload`).
    pub dest: String,
    /// Read the SAS from this file instead of DEST (as for `upload`; also VHDFORGE_DEST_SAS).
    #[arg(long, value_name = "FILE")]
    pub sas_file: Option<PathBuf>,
    /// Read the written ranges back and compare bytes, not only the page map.
    #[arg(long)]
    pub full: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Parallel reads with --full, 1 to 16 (memory about 2 × N × 4 MiB).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub concurrency: u16,
    /// The x-ms-version to send.
    #[arg(long, default_value = DEFAULT_API_VERSION, value_name = "VERSION")]
    pub api_version: String,
    /// The --bridge-kib the upload used.
    #[arg(long, default_value_t = 64, value_name = "KIB")]
    pub bridge_kib: u64,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The environment variable that may hold the destination's SAS.
const SAS_ENV: &str = "VHDFORGE_DEST_SAS";

/// The largest SAS file read (a SAS is a few hundred bytes).
const MAX_SAS_FILE: u64 = 64 << 10;

/// DEST with the SAS from `--sas-file` or VHDFORGE_DEST_SAS appended, if one is given.
fn dest_with_sas(dest: &str, sas_file: Option<&std::path::Path>) -> anyhow::Result<String> {
    use std::io::Read as _;
    let (text, from) = if let Some(path) = sas_file {
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_SAS_FILE + 1).read_to_string(&mut text))
            .with_context(|| format!("cannot read the SAS file {}", path.display()))?;
        anyhow::ensure!(
            text.len() as u64 <= MAX_SAS_FILE,
            "the SAS file {} is larger than 64 KiB; it should hold only the SAS (sv=…&sig=…) or the SAS URL",
            path.display()
        );
        (text, format!("--sas-file {}", path.display()))
    } else {
        match std::env::var(SAS_ENV) {
            Ok(v) if !v.trim().is_empty() => (v, SAS_ENV.to_string()),
            _ => return Ok(dest.to_string()),
        }
    };
    let text = text.trim();
    // A whole SAS URL: keep its query only (DEST names the blob).
    let query = match text.split_once('?') {
        Some((_, q)) => q,
        None => text,
    };
    let has_sig = |q: &str| {
        q.split('&').any(|p| {
            p.split('=')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case("sig"))
        })
    };
    anyhow::ensure!(
        has_sig(query),
        "{from} holds no SAS (expected sv=…&sig=…, or a URL with one)"
    );
    let (base, dest_query) = dest.split_once('?').unwrap_or((dest, ""));
    anyhow::ensure!(
        !has_sig(dest_query),
        "DEST already carries a SAS and {from} gives another: keep only one"
    );
    let sep = if dest_query.is_empty() { "" } else { "&" };
    Ok(format!("{base}?{dest_query}{sep}{query}"))
}

/// Run `vhdforge upload`. Errors come back as `Err` (the caller prints them, exit 2).
pub fn run_upload(args: UploadArgs, ui: &Ui) -> anyhow::Result<ExitCode> {
    let dest = dest_with_sas(&args.dest, args.sas_file.as_deref())?;
    let rt = runtime()?;
    let opts = UploadOptions {
        concurrency: usize::from(args.concurrency),
        overwrite: args.overwrite,
        create_container: args.create_container,
        resume: args.resume,
        content_md5: args.content_md5,
        md5_per_request: args.md5_per_request,
        api_version: args.api_version.clone(),
        managed_disk: args.managed_disk,
        bridge_bytes: args.bridge_kib.saturating_mul(1024),
        state_dir: args.state_dir.clone(),
        policy: Policy {
            allow_4k_sectors: args.allow_4k_sectors,
            allow_any_size: args.allow_any_size,
            ..Policy::default()
        },
        credentials: args.connect.credentials(),
        ..UploadOptions::default()
    };
    if args.dry_run {
        return dry_run(&args, ui, &rt, &dest, opts);
    }
    let progress = Arc::new(ui.progress("uploading", args.json));
    let summary = rt.block_on(upload::upload(&args.source, &dest, opts, progress.clone()));
    progress.finish(summary.is_ok());
    let summary = summary?;
    if args.json {
        let mut v = serde_json::to_value(&summary)?;
        v["upload_size_bytes"] = serde_json::json!(summary.bytes_total);
        ui.print_json(&v)?;
    } else {
        let mut text = format!(
            "uploaded {} to {}: sent {} in {} requests, skipped {} of zeros{}, {} retries\n",
            args.source.display(),
            summary.destination,
            amount_and_rate(summary.bytes_sent, summary.seconds),
            summary.requests,
            human(summary.bytes_skipped),
            if summary.bytes_already_present > 0 {
                format!(", {} already there", human(summary.bytes_already_present))
            } else {
                String::new()
            },
            summary.retries,
        );
        if summary.managed_disk {
            text.push_str("next: `az disk revoke-access -g RG -n DISK` to finish the import\n");
        }
        ui.print(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `upload --dry-run`: the plan, made without a request (the planner reads the source).
fn dry_run(
    args: &UploadArgs,
    ui: &Ui,
    rt: &tokio::runtime::Runtime,
    dest: &str,
    opts: UploadOptions,
) -> anyhow::Result<ExitCode> {
    // The bar stays hidden (there is no total to show), but Ctrl-C still stops the planner.
    let progress = Arc::new(ui.progress("planning", true));
    let plan = rt.block_on(upload::dry_run(&args.source, dest, opts, progress.clone()));
    progress.finish(plan.is_ok());
    let plan = plan?;
    if args.json {
        ui.print_json(&serde_json::to_value(&plan)?)?;
    } else {
        ui.print(&format!(
            "dry run: uploading {} to {} would send {} in {} requests and skip {} of zeros; nothing was sent\n{}",
            args.source.display(),
            plan.destination,
            human(plan.bytes_to_send),
            plan.requests,
            human(plan.bytes_skipped),
            crate::convert_cmd::upload_size_line(plan.upload_size_bytes),
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `vhdforge verify`: exit 0 identical, 1 different; errors come back as `Err` (exit 2).
pub fn run_verify(args: VerifyArgs, ui: &Ui) -> anyhow::Result<ExitCode> {
    let dest = dest_with_sas(&args.dest, args.sas_file.as_deref())?;
    let credentials = args.connect.credentials();
    // Azure's naming rules and a cut SAS, before any request (upload checks the same).
    if let Ok(url) = vhdforge_core::storage::auth::expand_destination(&dest, &credentials) {
        vhdforge_core::storage::names::check_destination(
            &url,
            &vhdforge_core::storage::redact(&url),
        )?;
    }
    let rt = runtime()?;
    let opts = VerifyOptions {
        full: args.full,
        api_version: args.api_version.clone(),
        concurrency: usize::from(args.concurrency),
        bridge_bytes: args.bridge_kib.saturating_mul(1024),
        credentials,
        ..VerifyOptions::default()
    };
    // Only --full reads data back; the bar is created (and shown) only when it does.
    let progress = Arc::new(ui.progress("verifying", args.json));
    let report = rt.block_on(upload::verify_with(
        &args.source,
        &dest,
        opts,
        progress.clone(),
    ));
    progress.finish(report.is_ok());
    let report = report?;
    if args.json {
        ui.print_json(&serde_json::to_value(&report)?)?;
    } else if report.passed() && report.compared == Compared::Bytes {
        ui.print(&format!(
            "identical: {} holds exactly what uploading {} sends ({} compared byte for byte)
",
            report.destination,
            args.source.display(),
            amount_and_rate(report.bytes_compared, progress.seconds())
        ))?;
    } else if report.passed() {
        // Only the layout was compared: a blob of the same shape holding other data passes
        // this, so it must not be called identical.
        ui.print(&format!(
            "layout matches: {} has the size, footer and written pages uploading {} produces; \
             the data was not read back: run `vhdforge verify --full` to compare bytes\n",
            report.destination,
            args.source.display()
        ))?;
    } else {
        let mut text = format!(
            "different: {} ({} difference(s))\n",
            report.destination, report.difference_count
        );
        for d in &report.differences {
            text.push_str(&format!("  at byte {}: {}\n", d.offset, d.what));
        }
        ui.print(&text)?;
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Up {
        #[command(flatten)]
        args: UploadArgs,
    }

    #[derive(Parser)]
    struct Ver {
        #[command(flatten)]
        args: VerifyArgs,
    }

    #[test]
    fn upload_arguments() {
        // Defaults.
        let a = Up::try_parse_from([
            "x",
            "disk.vhdx",
            "https://a.blob.core.windows.net/c/b?sig=s",
        ])
        .unwrap()
        .args;
        assert_eq!(
            (a.concurrency, a.bridge_kib, a.api_version.as_str()),
            (8, 64, DEFAULT_API_VERSION)
        );
        assert!(!a.resume && !a.overwrite && !a.managed_disk);
        // Resume and overwrite contradict each other.
        assert!(Up::try_parse_from(["x", "d", "u", "--resume", "--overwrite"]).is_err());
        // Concurrency is bounded.
        assert!(Up::try_parse_from(["x", "d", "u", "--concurrency", "0"]).is_err());
        assert!(Up::try_parse_from(["x", "d", "u", "--concurrency", "17"]).is_err());
        // Every documented flag parses.
        let a = Up::try_parse_from([
            "x",
            "d",
            "u",
            "--concurrency",
            "16",
            "--json",
            "--content-md5",
            "--md5-per-request",
            "--managed-disk",
            "--api-version",
            "2023-11-03",
            "--bridge-kib",
            "0",
            "--state-dir",
            "/tmp",
            "--allow-any-size",
            "--allow-4k-sectors",
            "--resume",
        ])
        .unwrap()
        .args;
        assert_eq!(a.concurrency, 16);
        assert!(
            a.json
                && a.content_md5
                && a.md5_per_request
                && a.managed_disk
                && a.resume
                && a.allow_any_size
                && a.allow_4k_sectors
        );
        let v = Ver::try_parse_from(["x", "d", "u", "--full", "--json"])
            .unwrap()
            .args;
        assert!(v.full && v.json);
    }

    #[test]
    fn help_teaches_the_flows() {
        use clap::CommandFactory;
        let help = Up::command().render_long_help().to_string();
        for needle in [
            "SAS",
            "AZURE_STORAGE_CONNECTION_STRING",
            "grant-access",
            "--upload-size-bytes",
            "--resume",
            "revoke-access",
        ] {
            assert!(help.contains(needle), "upload help lacks {needle}");
        }
    }

    #[test]
    fn sas_file_is_joined_to_dest() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sas");
        let cases: [(&str, &str, Option<&str>); 5] = [
            // A query string, with a newline as editors leave it.
            (
                "sv=1&sig=abc\n",
                "https://a/c/b",
                Some("https://a/c/b?sv=1&sig=abc"),
            ),
            // A whole SAS URL: only its query is taken; DEST's own query is kept.
            (
                "https://x/y/z?sv=1&sig=abc",
                "https://a/c/b?timeout=5",
                Some("https://a/c/b?timeout=5&sv=1&sig=abc"),
            ),
            // A leading '?' is fine.
            (
                "?sv=1&sig=abc",
                "https://a/c/b",
                Some("https://a/c/b?sv=1&sig=abc"),
            ),
            // No signature in the file: refused.
            ("sv=1&sp=r", "https://a/c/b", None),
            // Two SASes: refused rather than guessing.
            ("sv=1&sig=abc", "https://a/c/b?sig=def", None),
        ];
        for (content, dest, want) in cases {
            std::fs::write(&f, content).unwrap();
            let got = dest_with_sas(dest, Some(&f));
            match want {
                Some(w) => assert_eq!(got.unwrap(), w, "{content:?}"),
                None => {
                    let e = got.unwrap_err().to_string();
                    assert!(!e.contains("abc") && !e.contains("def"), "{e}");
                }
            }
        }
    }
}
