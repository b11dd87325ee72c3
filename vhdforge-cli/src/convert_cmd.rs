//! `vhdforge convert`.

use crate::ui::{bytes, Ui};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use vhdforge_core::convert::{
    convert_in_place, convert_to_file, ConvertOptions, InPlaceAction, Policy,
};
use vhdforge_core::progress::{format_bytes, format_rate};
use vhdforge_core::{inspect_quick as inspect, open, OpenOptions};

/// Arguments of `convert`.
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Convert any image vhdforge reads into an Azure-ready fixed VHD.

  vhdforge convert disk.vhdx disk.vhd
  vhdforge convert checkpoint.avhdx flat.vhd      # flattens the whole parent chain
  vhdforge convert --in-place disk.raw            # raw -> fixed VHD, no copy

The output's virtual size is the input's rounded up to a whole MiB (zero padded; a note says by \
how much), with a fixed-VHD footer last (creator `win `, spec CHS geometry, fresh unique id). \
The output is sparse: zero ranges, known from metadata or found by content, become holes, so it \
uses about as much disk as the input's non-zero data. The input is never modified. The output is \
written to a new file under a hidden, random temporary name in the same folder (never through a \
symbolic link) and renamed only when complete, checked and flushed; an interrupted run leaves \
nothing under OUT's name (a later run removes temporaries of runs that were killed). Free space \
is checked up front against the data that will really be written.

OUT must be a new name, or with --force a regular file (or a symbolic link, which is replaced \
as a link: what it points to is never written). A device, directory, pipe or socket, or a link to \
one, is refused even with --force.

--in-place FILE turns a raw image into a fixed VHD by extending it to a whole MiB and appending \
the footer, or repairs a fixed VHD whose size is not MiB-aligned or whose footer is wrong or the \
511-byte kind. It touches only the end of the file: O(1) whatever the size. FILE must be a \
regular file: a device (which cannot grow) is refused before anything is written; convert it \
to a new file with `vhdforge convert DEVICE OUT.vhd` instead. Before changing \
anything it saves the original length and last 1 KiB to FILE.vhdforge-inplace; if it is \
interrupted, just run the same command again: it restores the file from that journal and starts \
over.

4096-byte-sector disks and sizes outside Azure's 20 MiB..32 767 GiB are refused unless you pass the \
matching --allow flag."
)]
pub struct ConvertArgs {
    /// The input image (raw, VHD of any type, VHDX); with --in-place, the file to convert in place.
    pub input: PathBuf,
    /// The fixed VHD to write (not with --in-place).
    #[arg(required_unless_present = "in_place", conflicts_with = "in_place")]
    pub output: Option<PathBuf>,
    /// Convert a raw image or fixed VHD where it lies (O(1), journaled; see above).
    #[arg(long)]
    pub in_place: bool,
    /// Replace an existing OUTPUT; convert even an input that is already Azure-ready.
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
    /// Convert a 4096-byte-sector VHDX although the guest will then see 512-byte sectors.
    #[arg(long)]
    pub allow_4k_sectors: bool,
    /// Allow outputs smaller than 20 MiB or larger than 32 767 GiB (Azure refuses them).
    #[arg(long)]
    pub allow_any_size: bool,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// A conversion report as JSON, with the output's findings and verdict.
fn print_report_json(
    ui: &Ui,
    report: &impl serde::Serialize,
    after: &vhdforge_core::Inspection,
) -> Result<()> {
    let mut v = serde_json::to_value(report)?;
    v["findings"] = serde_json::to_value(&after.findings)?;
    v["azure_ready"] = json!(after.azure_ready);
    ui.print_json(&v)
}

/// `vhdforge convert`.
pub fn run(a: &ConvertArgs, ui: &Ui) -> Result<ExitCode> {
    let policy = Policy {
        allow_4k_sectors: a.allow_4k_sectors,
        allow_any_size: a.allow_any_size,
        ..Policy::default()
    };
    if a.in_place {
        let r = convert_in_place(&a.input, &policy, a.force)?;
        let after = inspect(&a.input, &OpenOptions::default())?;
        if a.json {
            print_report_json(ui, &r, &after)?;
        } else {
            let mut s = String::new();
            if r.recovered_interrupted_run {
                s.push_str("recovered: an interrupted in-place run was rolled back first\n");
            }
            for n in &r.notes {
                s.push_str(&format!("note: {n}\n"));
            }
            s.push_str(&match r.action {
                InPlaceAction::Unchanged => format!("{}: already an Azure-ready fixed VHD; nothing done\n", a.input.display()),
                action @ (InPlaceAction::Converted | InPlaceAction::Repaired) => format!(
                    "{}: {action} in place -> fixed VHD of {} (padded {} bytes), file now {} bytes\n",
                    a.input.display(),
                    bytes(r.disk_size),
                    r.padded_bytes,
                    r.output_size
                ),
            });
            ui.print(&s)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = a
        .output
        .as_ref()
        .context("OUTPUT is required without --in-place")?;
    let image = open(&a.input, &OpenOptions::default())?;
    let pre = inspect(&a.input, &OpenOptions::default())?;
    if pre.azure_ready && !a.force {
        let msg = format!("{} is already an Azure-ready fixed VHD; nothing to convert (upload it as it is, or pass --force to copy it anyway)", a.input.display());
        if a.json {
            ui.print_json(&json!({"action": "unchanged", "message": msg, "azure_ready": true, "findings": pre.findings}))?;
        } else {
            ui.print(&format!("{msg}\n"))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    for f in pre
        .findings
        .iter()
        .filter(|f| f.severity == vhdforge_core::Severity::Warning && !f.code.starts_with("azure."))
    {
        ui.note(&f.to_string());
    }
    let progress = ui.progress("converting", a.json);
    let opts = ConvertOptions {
        policy,
        force: a.force,
        threads: a.threads,
    };
    let r = convert_to_file(image.as_ref(), out, &opts, &progress);
    progress.finish(r.is_ok());
    let r = r?;
    let after = inspect(out, &OpenOptions::default())?;
    if a.json {
        print_report_json(ui, &r, &after)?;
    } else {
        let mut s = String::new();
        if r.padded_bytes > 0 {
            s.push_str(&format!(
                "note: virtual size {} is not a whole MiB; padded with {} zero bytes to {}\n",
                r.virtual_size,
                r.padded_bytes,
                r.virtual_size + r.padded_bytes
            ));
        }
        s.push_str(&format!(
            "{} -> {}: fixed VHD of {}, wrote {} of data, skipped {} of zeros, in {:.1} s ({} average){}\n",
            a.input.display(),
            out.display(),
            bytes(r.output_size - 512),
            format_bytes(r.data_bytes_written),
            format_bytes(r.zero_bytes_skipped),
            r.seconds,
            format_rate(r.data_bytes_written, r.seconds),
            if after.azure_ready {
                "; Azure-ready"
            } else {
                ""
            }
        ));
        ui.print(&s)?;
    }
    // convert_to_file checked the output before giving it its name.
    Ok(ExitCode::SUCCESS)
}
