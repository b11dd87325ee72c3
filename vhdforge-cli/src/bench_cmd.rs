//! `vhdforge bench`: measure page-blob upload throughput into a container.

use crate::ui::Ui;
use anyhow::{bail, Context as _, Result};
use clap::Args;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use vhdforge_core::bench::{self, BenchOptions, Step};
use vhdforge_core::storage::CredentialEnv;

/// Measure how fast this machine uploads to a container or managed disk: a sparse fixed VHD
/// generated in memory (nothing read from disk) is uploaded once per concurrency step with
/// upload's requests, checksums and retries, then the verdict (client-, network- or
/// service-bound), the --concurrency to give `upload`, and the projected time of a 30 GiB
/// disk holding 8 GiB of data.
///
/// Clean-up, also after a failure or Ctrl-C (unless --keep): in a container, the blobs it
/// creates (vhdforge-bench-*.vhd) are deleted. A managed disk is the user's and is never
/// created or deleted: bench writes it only when it holds no data, and afterwards clears
/// every page it wrote (Clear Pages) and lists the disk to prove it is empty again; nothing
/// else may write to it meanwhile.
///
/// Credentials as for `upload`: a SAS in DEST, else the account key from the environment,
/// or Entra ID sign-in with VHDFORGE_AUTH=login.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A container URL (https://ACCOUNT.blob.core.windows.net/CONTAINER[?SAS]; a SAS needs
    /// create, write and delete, sp=cwd), or an empty managed disk's upload SAS (az disk
    /// grant-access --access-level Write).
    pub dest: String,
    /// Virtual size of the synthetic disk (e.g. 8GiB, 512MiB) [default: 8GiB; on a managed
    /// disk its own size less the 512-byte footer, which --size must then equal].
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Share of the disk holding data (e.g. 25%); the zeros are skipped, as upload skips them.
    #[arg(long, default_value = "25%")]
    pub data: String,
    /// Concurrency steps: `auto` (1, 2, 4, 8, 16 while throughput grows and throttling stays
    /// under 2%) or a list such as 4,8,16.
    #[arg(long, default_value = "auto")]
    pub concurrency: String,
    /// Bytes per Put Page request (a multiple of 512, at most 4MiB).
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    pub request_size: u64,
    /// Keep the uploaded blobs; on a managed disk, leave the bench's pages on it instead of
    /// clearing them.
    #[arg(long)]
    pub keep: bool,
    /// Treat DEST as a managed-disk upload SAS even if its host does not look like one.
    #[arg(long)]
    pub managed_disk: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also draw throughput and p95 latency against concurrency into this new SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// `8GiB`, `512MiB`, `4096` (bytes).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 8GiB or 512MiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit (use B, KiB, MiB, GiB or TiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_percent(s: &str) -> Result<f64> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("--data {s:?} is not a percentage such as 25%"))?;
    if !(v > 0.0 && v <= 100.0) {
        bail!("--data {s:?} must be above 0% and at most 100%");
    }
    Ok(v / 100.0)
}

fn parse_steps(s: &str) -> Result<Vec<usize>> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|p| {
            p.trim().parse::<usize>().map_err(|_| {
                anyhow::anyhow!("--concurrency {s:?}: expected auto or numbers such as 4,8,16")
            })
        })
        .collect()
}

fn step_line(s: &Step) -> String {
    format!(
        "concurrency {:>2}: {:>8.1} MiB/s {:>7.1} req/s  p50 {:>6.1} ms  p95 {:>6.1} ms  p99 {:>6.1} ms  503 {} 429 {} 500 {}  retries {}  CPU {}",
        s.concurrency,
        s.mib_per_s,
        s.requests_per_s,
        s.p50_ms,
        s.p95_ms,
        s.p99_ms,
        s.status_503,
        s.status_429,
        s.status_500,
        s.retries,
        s.cpu_seconds_per_gib
            .map_or("n/a".into(), |c| format!("{c:.2} s/GiB")),
    )
}

/// `vhdforge bench`.
pub fn run(a: &BenchArgs, ui: &Ui) -> Result<ExitCode> {
    let opts = BenchOptions {
        size: a.size,
        data_fraction: parse_percent(&a.data)?,
        concurrency: parse_steps(&a.concurrency)?,
        request_size: a.request_size,
        keep: a.keep,
        managed_disk: a.managed_disk,
        credentials: CredentialEnv::from_process_env(),
        ..BenchOptions::default()
    };
    // A name already taken fails now, not after minutes of measuring; the chart itself is
    // written to a new temporary file and appears under its name only when complete, and
    // then only if the name is still free.
    if let Some(p) = &a.plot {
        if std::fs::symlink_metadata(p).is_ok() {
            anyhow::bail!(
                "cannot use {} for --plot: it already exists, and it must be a new file",
                p.display()
            );
        }
    }
    let cancel = crate::ui::install_ctrl_c();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let json = a.json;
    let on_step = |s: &Step| {
        if !json {
            ui.note(&step_line(s));
        }
    };
    let report = rt.block_on(bench::run(&a.dest, &opts, &cancel, &on_step))?;
    if let Some(p) = &a.plot {
        let tmp = vhdforge_core::fsutil::TempFile::beside(p, "plot")
            .with_context(|| format!("cannot create a file beside {} for --plot", p.display()))?;
        let mut f = tmp.file();
        f.write_all(bench::plot_svg(&report.steps).as_bytes())?;
        f.sync_all()?;
        tmp.open_up()?;
        tmp.persist(p, vhdforge_core::fsutil::Replace::Never)
            .with_context(|| format!("cannot put the chart at {}", p.display()))?;
    }
    if a.json {
        ui.print_json(&serde_json::to_value(&report)?)?;
    } else {
        let mins = report.projected_seconds_30g_8g / 60.0;
        ui.print(&format!(
            "verdict: {}-bound: {}\nrecommended: vhdforge upload --concurrency {}\nprojected: a 30 GiB disk holding 8 GiB of data uploads in about {:.0} s ({mins:.1} min)\n",
            report.verdict, report.reason, report.recommended_concurrency, report.projected_seconds_30g_8g
        ))?;
        // --keep: say plainly what still holds bench data (never left silently).
        let what = if report.managed_disk {
            "the bench's pages stay on the managed disk"
        } else {
            "bench blob"
        };
        for k in &report.kept {
            ui.print(&format!("kept (--keep): {what} {k}\n"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
