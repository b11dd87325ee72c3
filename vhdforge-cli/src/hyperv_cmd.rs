//! `vhdforge hyperv list|inventory|plan|prep`: the Hyper-V bridge's commands. The work is in
//! the `hyperv-bridge` crate; this file parses, prints, and maps errors to exit codes.

use crate::ui::{report_error, Ui};
use anyhow::Context as _;
use clap::Parser as _;
use hyperv_bridge::host::ShutdownWait;
use hyperv_bridge::plan::model::Inventory;
use hyperv_bridge::plan::{Issue, Plan, PlanOptions, Route};
use hyperv_bridge::prep::{deliver_to_file, preflight, prepare, PrepError, PrepRequest, Prepared};
use hyperv_bridge::{local_host, HostError, HyperVHost};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use vhdforge_core::finding::Severity;
use vhdforge_core::storage::redact_text;

const HYPERV_ABOUT: &str = "\
Hyper-V bridge: from a VM's name to an Azure-ready fixed VHD (Windows with the Hyper-V role).

  vhdforge hyperv list                          # the host's VMs, their disks, the OS disk
  vhdforge hyperv inventory centos79 --json > centos79.json
  vhdforge hyperv plan centos79                 # what prep would do, or why it cannot
  vhdforge hyperv plan --inventory centos79.json  # the same, anywhere (no Hyper-V needed)
  vhdforge hyperv prep centos79 centos79.vhd --shutdown

The VM's files are opened read-only and never modified: prep reads the OS disk's whole \
checkpoint chain from the current leaf with vhdforge's own reader (no Hyper-V merge, no \
checkpoint removed), and the only request made to Hyper-V is, with --shutdown, a graceful \
guest shutdown (never a power-off).

Privileges: list, inventory, plan VM and prep talk to Hyper-V's WMI namespace \
root\\virtualization\\v2, which needs an elevated prompt as an administrator, or membership \
of the Hyper-V Administrators group; prep also needs read access to the VM's disk files. \
plan --inventory needs nothing but the file.

On Linux, or Windows without the Hyper-V role, list, inventory and prep stop with exit 2 \
and say so: take the inventory on the host and run plan --inventory here, or convert the \
disk files directly with `vhdforge convert LEAF.avhdx OUT.vhd`.";

/// Hyper-V bridge: list VMs, take an inventory, plan and prep a VM's OS disk (its files read-only).
#[derive(clap::Args, Debug)]
#[command(long_about = HYPERV_ABOUT)]
pub struct HypervArgs {
    #[command(subcommand)]
    pub command: HypervCommand,
}

/// The bridge's commands.
#[derive(clap::Subcommand, Debug)]
pub enum HypervCommand {
    /// The host's VMs: state, generation, checkpoints, disks and which one is the OS disk.
    List {
        /// Print the inventory JSON (the schema `plan --inventory` reads).
        #[arg(long)]
        json: bool,
    },
    /// One VM's full inventory, each disk's chain from the current leaf to its base.
    #[command(
        long_about = "One VM's full inventory: state, generation, Secure Boot, checkpoints, \
and each disk's controller slot and chain from the current leaf down to its base (path, format, \
type, sizes, parent). With --json it is the file `plan --inventory` reads, so an inventory taken \
on the host can be planned anywhere. The disk files are opened read-only."
    )]
    Inventory {
        /// The VM's name (as in Hyper-V Manager; case-insensitive).
        vm: String,
        /// Print the inventory JSON.
        #[arg(long)]
        json: bool,
    },
    /// What prep would do and why, or why it cannot (exit 0 ready, 1 blocked, 2 error).
    #[command(
        long_about = "What prep would do and why, or why it cannot: the blockers with \
their codes, warnings, the ordered steps, the OS disk's chain, the Azure upload size, the \
generation, and the exact commands that follow (az disk create --hyper-v-generation V1|V2 \
--upload-type Upload --upload-size-bytes N, or the page-blob route).

With --inventory FILE it reads an inventory taken with `hyperv inventory VM --json` and makes \
no Hyper-V call at all: it works on any machine. Exit 0 when ready, 1 when blocked, 2 on error."
    )]
    Plan {
        /// The VM to plan on this host (not with --inventory).
        #[arg(required_unless_present = "inventory", conflicts_with = "inventory")]
        vm: Option<String>,
        /// Plan from this inventory file instead of asking Hyper-V.
        #[arg(long, value_name = "FILE")]
        inventory: Option<PathBuf>,
        /// With --inventory: the VM to plan when the file has several.
        #[arg(long = "vm", value_name = "NAME", requires = "inventory")]
        vm_name: Option<String>,
        /// Plan a graceful shutdown of a running VM first.
        #[arg(long)]
        shutdown: bool,
        /// How long a shutdown may take, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 600)]
        shutdown_timeout: u64,
        /// Plan as prep --force would (4K sectors become a warning).
        #[arg(long)]
        force: bool,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shut down (if asked), read the OS disk's chain read-only and write (or upload) a fixed VHD.
    #[command(
        long_about = "Take the VM's inventory, refuse blockers, optionally shut the guest \
down gracefully (Msvm_ShutdownComponent, with a timeout; never a power-off), then read the OS \
disk's whole checkpoint chain directly with vhdforge's reader, run the guest preflight on it \
(as `vhdforge preflight`; its errors stop prep with exit 1 unless --force, its warnings are \
shown), and write OUT as `vhdforge convert` would, or with --upload stream it straight to \
Azure as `vhdforge upload` does.

The VM's files are opened read-only and never modified: no Hyper-V merge, no checkpoint \
removed, nothing the VM owns is written. OUT is created new (never through a link) and appears \
only when complete.

Needs an elevated prompt as an administrator, or membership of Hyper-V Administrators, and \
read access to the disk files. --force overrides the 4K-sector blocker (the disk is then \
presented with 512-byte sectors) and the guest preflight's errors, and replaces an existing OUT; a running, saved, paused or \
busy VM, a broken chain or an oversize OS disk always stop prep."
    )]
    Prep {
        /// The VM's name.
        vm: String,
        /// The fixed VHD to write (not with --upload).
        #[arg(required_unless_present = "upload", conflicts_with = "upload")]
        out: Option<PathBuf>,
        /// Shut a running guest down gracefully first, and wait for Off.
        #[arg(long)]
        shutdown: bool,
        /// How long the shutdown may take, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 600)]
        shutdown_timeout: u64,
        /// Stream to this destination instead of writing OUT (as `vhdforge upload` DEST).
        #[arg(long, value_name = "DEST")]
        upload: Option<String>,
        /// Override the 4K-sector blocker; replace an existing OUT.
        #[arg(long)]
        force: bool,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
}

impl HypervArgs {
    /// Whether --json was given.
    pub fn json(&self) -> bool {
        match &self.command {
            HypervCommand::List { json }
            | HypervCommand::Inventory { json, .. }
            | HypervCommand::Plan { json, .. }
            | HypervCommand::Prep { json, .. } => *json,
        }
    }
}

/// `vhdforge hyperv …`. Bridge errors are reported here with their own codes; anything else
/// goes back to main.
pub fn run(a: HypervArgs, ui: &Ui) -> anyhow::Result<ExitCode> {
    let json = a.json();
    let outcome = match a.command {
        HypervCommand::List { json } => with_host(|h| list(h, json, ui)),
        HypervCommand::Inventory { vm, json } => with_host(|h| inventory(h, &vm, json, ui)),
        HypervCommand::Plan {
            vm,
            inventory,
            vm_name,
            shutdown,
            shutdown_timeout,
            force,
            json,
        } => {
            let opts = PlanOptions {
                shutdown,
                shutdown_timeout_secs: shutdown_timeout,
                force,
                ..PlanOptions::default()
            };
            match (vm, inventory) {
                (_, Some(file)) => plan_file(&file, vm_name.as_deref(), &opts, json, ui),
                (Some(vm), None) => with_host(|h| {
                    let p = hyperv_bridge::plan(&h.inventory(&vm)?, &opts);
                    Ok(print_plan(&p, json, ui)?)
                }),
                (None, None) => unreachable!("clap requires VM or --inventory"),
            }
        }
        HypervCommand::Prep {
            vm,
            out,
            shutdown,
            shutdown_timeout,
            upload,
            force,
            json,
        } => {
            let req = PrepRequest {
                vm,
                shutdown: shutdown.then_some(ShutdownWait {
                    timeout: Duration::from_secs(shutdown_timeout),
                    poll: Duration::from_secs(1),
                }),
                force,
                output: out.as_ref().map(|p| p.display().to_string()),
                upload: upload.as_deref().map(redact_text),
            };
            with_host(|h| prep(h, &req, out, upload, json, ui))
        }
    };
    match outcome {
        Ok(code) => Ok(code),
        Err(Failure::Bridge { code, error }) => Ok(report_error(
            &anyhow::anyhow!(redact_text(&error)),
            &code,
            json,
        )),
        Err(Failure::Other(e)) => Err(e),
    }
}

/// A failure with a bridge code, or anything else (reported by main).
enum Failure {
    Bridge { code: String, error: String },
    Other(anyhow::Error),
}

impl From<HostError> for Failure {
    fn from(e: HostError) -> Self {
        Failure::Bridge {
            code: e.code().to_string(),
            error: e.to_string(),
        }
    }
}

impl From<PrepError> for Failure {
    fn from(e: PrepError) -> Self {
        Failure::Bridge {
            code: e.code(),
            error: e.to_string(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

fn with_host(
    f: impl FnOnce(&dyn HyperVHost) -> Result<ExitCode, Failure>,
) -> Result<ExitCode, Failure> {
    let host = local_host()?;
    f(host.as_ref())
}

fn host_name() -> Option<String> {
    std::env::var("COMPUTERNAME").ok().filter(|_| cfg!(windows))
}

fn list(h: &dyn HyperVHost, json: bool, ui: &Ui) -> Result<ExitCode, Failure> {
    let inv = Inventory {
        host: host_name(),
        vms: h.list()?,
    };
    if json {
        ui.print_json(&serde_json::to_value(&inv).context("inventory to JSON")?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut s = String::new();
    if inv.vms.is_empty() {
        s.push_str("no VMs on this host\n");
    }
    for vm in &inv.vms {
        s.push_str(&vm_text(vm));
    }
    ui.print(&s)?;
    Ok(ExitCode::SUCCESS)
}

fn vm_text(vm: &hyperv_bridge::Vm) -> String {
    let os = hyperv_bridge::plan::os_disk(vm.generation, &vm.disks)
        .map(hyperv_bridge::plan::model::Disk::slot);
    let mut s = format!(
        "{}: {}, Gen{}, {} checkpoint(s), OS disk {}\n",
        vm.name,
        vm.state,
        vm.generation,
        vm.checkpoints.len(),
        os.as_deref().unwrap_or("none")
    );
    for d in &vm.disks {
        s.push_str(&format!("  {}:\n", d.slot()));
        for e in &d.chain {
            match &e.error {
                Some(err) => s.push_str(&format!("    {}  cannot be opened: {err}\n", e.path)),
                None => s.push_str(&format!(
                    "    {}  {} {}, {} bytes, sectors {}/{}\n",
                    e.path,
                    e.format
                        .map_or("?".to_string(), |f| format!("{f:?}").to_uppercase()),
                    e.kind.map_or("?".to_string(), |k| format!("{k:?}")),
                    e.size.unwrap_or(0),
                    e.logical_sector_size.unwrap_or(0),
                    e.physical_sector_size.unwrap_or(0)
                )),
            }
        }
    }
    s
}

fn inventory(h: &dyn HyperVHost, vm: &str, json: bool, ui: &Ui) -> Result<ExitCode, Failure> {
    let inv = Inventory {
        host: host_name(),
        vms: vec![h.inventory(vm)?],
    };
    if json {
        ui.print_json(&serde_json::to_value(&inv).context("inventory to JSON")?)?;
    } else {
        ui.print(&vm_text(&inv.vms[0]))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn plan_file(
    file: &std::path::Path,
    vm: Option<&str>,
    opts: &PlanOptions,
    json: bool,
    ui: &Ui,
) -> Result<ExitCode, Failure> {
    let bad = |error: String| Failure::Bridge {
        code: "hyperv.inventory".into(),
        error,
    };
    // An inventory is a few KiB per VM (a full host of 1024 VMs stays under 4 MiB); refuse
    // anything larger. Parsed, a JSON object takes ten times its text or more (a 16 MiB
    // inventory of empty chain elements held 1.4 GiB), so this cap is what keeps `plan`
    // under the memory bound. The length is counted while reading, not taken from the
    // metadata: a pipe or a device (`--inventory /dev/zero`, `<(…)`) reports 0 there.
    const MAX_INVENTORY: u64 = 4 << 20;
    let too_big = || {
        bad(format!(
            "{} is larger than {MAX_INVENTORY} bytes, more than any inventory (a few KiB per VM): is it really the output of `vhdforge hyperv inventory --json`?",
            file.display()
        ))
    };
    let cannot =
        |e: std::io::Error| bad(format!("cannot read the inventory {}: {e}", file.display()));
    if std::fs::metadata(file).map_err(cannot)?.len() > MAX_INVENTORY {
        return Err(too_big());
    }
    let mut raw = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            std::fs::File::open(file).map_err(cannot)?,
            MAX_INVENTORY + 1,
        ),
        &mut raw,
    )
    .map_err(cannot)?;
    if raw.len() as u64 > MAX_INVENTORY {
        return Err(too_big());
    }
    let text = String::from_utf8(raw).map_err(|e| {
        bad(format!(
            "{} is not UTF-8 text (invalid byte at offset {}); an inventory is the JSON `vhdforge hyperv inventory VM --json` writes",
            file.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    let inv = Inventory::from_json(&text).map_err(|e| {
        bad(format!(
            "{} is not a vhdforge inventory: {e} (expected the JSON `vhdforge hyperv inventory VM --json` writes; docs/hyperv.md has the schema)",
            file.display()
        ))
    })?;
    let vm = inv
        .select(vm)
        .map_err(|e| bad(format!("{}: {e}", file.display())))?;
    Ok(print_plan(&hyperv_bridge::plan(vm, opts), json, ui)?)
}

fn issue_lines(kind: &str, issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| format!("{kind}: {} [{}]\n", i.message, i.code))
        .collect()
}

fn plan_text(p: &Plan) -> String {
    let mut s = format!(
        "{} (Gen{}): {}\n",
        p.vm,
        p.generation,
        if p.ready { "ready" } else { "blocked" }
    );
    if let Some(os) = &p.os_disk {
        s.push_str(&format!(
            "OS disk: {}, {} file(s), leaf first:\n",
            os.slot,
            os.chain.len()
        ));
        for f in &os.chain {
            s.push_str(&format!("  {f}\n"));
        }
    }
    s.push_str(&issue_lines("blocker", &p.blockers));
    s.push_str(&issue_lines("warning", &p.warnings));
    if let Some(n) = p.upload_size_bytes {
        s.push_str(&crate::convert_cmd::upload_size_line(n));
    }
    if !p.steps.is_empty() {
        s.push_str(if p.ready {
            "steps:\n"
        } else {
            "steps, once the blockers are fixed:\n"
        });
        for (i, step) in p.steps.iter().enumerate() {
            s.push_str(&format!("  {}. {step}\n", i + 1));
        }
    }
    for (route, title) in [
        (Route::ManagedDisk, "then, as a managed disk:"),
        (Route::PageBlob, "or through a page blob:"),
    ] {
        let cmds: Vec<&str> = p
            .commands
            .iter()
            .filter(|c| c.route == route)
            .map(|c| c.command.as_str())
            .collect();
        if !cmds.is_empty() {
            s.push_str(title);
            s.push('\n');
            for c in cmds {
                s.push_str(&format!("  {c}\n"));
            }
        }
    }
    s
}

fn print_plan(p: &Plan, json: bool, ui: &Ui) -> anyhow::Result<ExitCode> {
    if json {
        ui.print_json(&serde_json::to_value(p)?)?;
    } else {
        ui.print(&plan_text(p))?;
    }
    Ok(if p.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn prep(
    h: &dyn HyperVHost,
    req: &PrepRequest,
    out: Option<PathBuf>,
    upload: Option<String>,
    json: bool,
    ui: &Ui,
) -> Result<ExitCode, Failure> {
    let prepared = match prepare(h, req) {
        Ok(p) => p,
        // Blocked is a verdict, like a failed check: the plan, exit 1.
        Err(PrepError::Blocked(plan)) => return Ok(print_plan(&plan, json, ui)?),
        Err(e) => return Err(e.into()),
    };
    if prepared.shut_down {
        ui.note(&format!("{} was shut down gracefully", req.vm));
    }
    for w in &prepared.plan.warnings {
        ui.note(&format!("warning: {} [{}]", w.message, w.code));
    }
    // The guest preflight on the chain just opened: errors stop prep (exit 1, like a failed
    // check) unless --force; warnings are shown and prep goes on.
    let report = match preflight(&prepared, req.force) {
        Ok(r) => r,
        Err(PrepError::Preflight(r)) => {
            if json {
                ui.print_json(&serde_json::json!({
                    "vm": prepared.plan.vm,
                    "ready": false,
                    "preflight": r,
                }))?;
            } else {
                for f in r.findings.iter().filter(|f| f.severity == Severity::Error) {
                    ui.note(&format!("error: {} [{}]", f.message, f.code));
                }
                ui.note(&format!(
                    "{}: the guest preflight found errors; nothing was written. Fix them in the guest, or pass --force to prepare it anyway",
                    req.vm
                ));
            }
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    for f in report
        .findings
        .iter()
        .filter(|f| f.severity >= Severity::Warning)
    {
        ui.note(&format!(
            "preflight {}: {} [{}]",
            f.severity, f.message, f.code
        ));
    }
    match (out, upload) {
        (_, Some(dest)) => upload_prepared(&prepared, dest, json, ui),
        (Some(out), None) => convert_prepared(&prepared, &out, req.force, json, ui),
        (None, None) => unreachable!("clap requires OUT or --upload"),
    }
}

fn convert_prepared(
    prepared: &Prepared,
    out: &std::path::Path,
    force: bool,
    json: bool,
    ui: &Ui,
) -> Result<ExitCode, Failure> {
    let progress = ui.progress("converting", json);
    let r = deliver_to_file(prepared, out, force, 0, &progress);
    progress.finish(r.is_ok());
    let r = r?;
    if json {
        ui.print_json(&serde_json::json!({
            "vm": prepared.plan.vm,
            "generation": prepared.plan.generation,
            "output": out.display().to_string(),
            "leaf": prepared.leaf.display().to_string(),
            "shut_down": prepared.shut_down,
            "upload_size_bytes": r.output_size,
            "data_bytes_written": r.data_bytes_written,
            "warnings": prepared.plan.warnings,
            "commands": prepared.plan.commands,
        }))?;
    } else {
        let mut s = format!(
            "{}: {} -> {}: fixed VHD, wrote {} bytes of data in {:.1} s; the VM's files were only read\n",
            prepared.plan.vm,
            prepared.leaf.display(),
            out.display(),
            r.data_bytes_written,
            r.seconds
        );
        s.push_str(&crate::convert_cmd::upload_size_line(r.output_size));
        s.push_str(&plan_text_commands(&prepared.plan));
        ui.print(&s)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn plan_text_commands(p: &Plan) -> String {
    let text = plan_text(p);
    text.find("then, as a managed disk:")
        .map(|i| text[i..].to_string())
        .unwrap_or_default()
}

/// `--upload DEST`: the uploader exactly as `vhdforge upload LEAF DEST` runs it (the chain is
/// streamed as the fixed VHD convert would write, no temporary file).
fn upload_prepared(
    prepared: &Prepared,
    dest: String,
    json: bool,
    ui: &Ui,
) -> Result<ExitCode, Failure> {
    #[derive(clap::Parser)]
    struct Upload {
        #[command(flatten)]
        args: crate::upload_cmd::UploadArgs,
    }
    let mut argv: Vec<std::ffi::OsString> = vec![
        "upload".into(),
        prepared.leaf.clone().into_os_string(),
        dest.into(),
    ];
    if json {
        argv.push("--json".into());
    }
    let parsed = Upload::try_parse_from(argv).map_err(|e| Failure::Bridge {
        code: "cli".into(),
        error: redact_text(&e.to_string()),
    })?;
    Ok(crate::upload_cmd::run_upload(parsed.args, ui)?)
}
