//! `vhdforge convert`.

use crate::ui::{bytes, Ui};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vhdforge_core::convert::{
    check_output_for, convert_in_place, convert_to_file, ConvertOptions, InPlaceAction, Policy,
};
use vhdforge_core::image::stored_bytes;
use vhdforge_core::progress::{format_bytes, format_rate};
use vhdforge_core::{inspect_quick as inspect, open, OpenOptions};

/// Convert any image into an Azure-ready fixed VHD (sparse, parallel, safe).
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
nothing under OUT's name (a later run removes temporaries of runs that were killed, never one \
a live process still holds). Free space: as soon as the rest of the disk is known to be a \
plain copy (at once with --no-clone; otherwise when the file system refuses cloning for good: \
IN on another file system, or one that cannot clone, such as ext4) its stored bytes are \
checked against the free space; if they do not fit, a warning says the output may not fit \
(zero pages are not copied, so a thick disk often does) and the convert goes on, checking each \
4 MiB piece's non-zero bytes before writing them. It stops with convert.no_space only when the \
next piece does not fit (1 MiB is left free), with nothing left under OUT's name.

OUT must be a new name, or with --force a regular file (or a symbolic link, which is replaced \
as a link: what it points to is never written). When OUT is an existing directory, the output \
is written into it as <input stem>.vhd (as `cp` does). OUT's folder must exist, and OUT must not \
be the input or one of its parents: all of this is checked before any data is read. A device, \
pipe or socket, or a link to one, is refused even with --force.

--dry-run prints the plan (output size, the upload size Azure needs, data at most to write) \
after the same checks, and writes nothing.

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
    /// Convert a raw image or fixed VHD where it lies (O(1), journaled; see the long --help).
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
    /// Worker threads [default: one per core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Copy every data byte; never share blocks with the input. By default, on a file system
    /// that can (XFS with reflink, btrfs, ReFS) and with the input on the same one, aligned
    /// data blocks are cloned: shared with the input, no new space, no data read. Copied
    /// even then: a dynamic VHD's blocks (a sector bitmap off alignment), a differencing
    /// VHDX's partly present blocks, a VHDX read through its replayed log, and a chain layer
    /// on another file system.
    #[arg(long, conflicts_with = "in_place")]
    pub no_clone: bool,
    /// Check everything and print the plan (sizes, data to write); write nothing.
    #[arg(long, conflicts_with = "in_place")]
    pub dry_run: bool,
}

/// A conversion report as JSON, with the output's findings, verdict and upload size.
fn print_report_json(
    ui: &Ui,
    report: &impl serde::Serialize,
    after: &vhdforge_core::Inspection,
) -> Result<()> {
    let mut v = serde_json::to_value(report)?;
    v["findings"] = serde_json::to_value(&after.findings)?;
    v["azure_ready"] = json!(after.azure_ready);
    v["upload_size_bytes"] = json!(after.info.as_ref().map(|i| i.file_size));
    ui.print_json(&v)
}

/// The file to write: OUT, or `OUT/<input stem>.vhd` when OUT is an existing directory
/// (not a link to one: a link as OUT is handled, and refused or replaced, as a link).
fn resolve_output(input: &Path, out: &Path) -> Result<PathBuf> {
    let is_dir = std::fs::symlink_metadata(out).is_ok_and(|m| m.is_dir());
    if !is_dir {
        // `OUT/` names a directory the user expects to exist.
        anyhow::ensure!(
            !out.as_os_str().as_encoded_bytes().ends_with(b"/"),
            "the output directory {} does not exist; create it first (mkdir -p {}) or name an output file",
            out.display(),
            out.display()
        );
        return Ok(out.to_path_buf());
    }
    let stem = input.file_stem().with_context(|| {
        format!(
            "{} is a directory and the input {} has no file name to name the output after; name the output file",
            out.display(),
            input.display()
        )
    })?;
    let mut name = stem.to_os_string();
    name.push(".vhd");
    Ok(out.join(name))
}

/// `convert --dry-run`: what would be written, after every check a real run makes first.
fn dry_run(
    a: &ConvertArgs,
    ui: &Ui,
    image: &dyn vhdforge_core::DiskImage,
    out: &Path,
    policy: &Policy,
) -> Result<ExitCode> {
    let plan = vhdforge_core::azure::FixedVhdLayout::for_image(image, policy)?;
    // The metadata bounds the data; zero pages inside it are found (and skipped) only by
    // reading, which a dry run does not do.
    let data_at_most = stored_bytes(image, 0..plan.source_size)?;
    let output_size = plan.output_size();
    if a.json {
        ui.print_json(&json!({
            "dry_run": true,
            "input": shown(&a.input),
            "output": shown(out),
            "virtual_size": plan.source_size,
            "padded_bytes": plan.padding(),
            "output_size": output_size,
            "upload_size_bytes": output_size,
            "data_bytes_at_most": data_at_most,
        }))?;
    } else {
        ui.print(&format!(
            "dry run: {} -> {}: would write a fixed VHD of {} (file {output_size} bytes{}), \
             at most {} of data (zero pages skipped; where the file system shares blocks, \
             aligned data is cloned rather than written); nothing was written\n{}",
            shown(&a.input),
            shown(out),
            bytes(plan.disk_size),
            if plan.padding() > 0 {
                format!(", padded by {} bytes to a whole MiB", plan.padding())
            } else {
                String::new()
            },
            format_bytes(data_at_most),
            upload_size_line(output_size),
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The line that names the number `az disk create --upload-size-bytes` needs.
pub fn upload_size_line(size: u64) -> String {
    format!("Azure upload size: {size} bytes (az disk create --upload-size-bytes {size})\n")
}

/// A path as shown: a SAS URL given where a path belongs must not show its signature.
fn shown(p: &Path) -> String {
    vhdforge_core::storage::redact_text(&p.display().to_string())
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
            s.push_str(&upload_size_line(r.output_size));
            ui.print(&s)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = a
        .output
        .as_ref()
        .context("OUTPUT is required without --in-place")?;
    let out = &resolve_output(&a.input, out)?;
    let image = open(&a.input, &OpenOptions::default())?;
    // OUT is checked before anything else is done or read (convert_to_file checks it again).
    check_output_for(image.as_ref(), out, a.force)?;
    let pre = inspect(&a.input, &OpenOptions::default())?;
    if pre.azure_ready && !a.force {
        let msg = format!("{} is already an Azure-ready fixed VHD; nothing to convert (upload it as it is, or pass --force to copy it anyway)", a.input.display());
        if a.json {
            let size = pre.info.as_ref().map(|i| i.file_size);
            ui.print_json(&json!({"action": "unchanged", "message": msg, "azure_ready": true, "upload_size_bytes": size, "findings": pre.findings}))?;
        } else {
            ui.print(&format!("{msg}\n"))?;
            if let Some(i) = &pre.info {
                ui.print(&upload_size_line(i.file_size))?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    // After the "already Azure-ready" answer, so a dry run says what a real run would do.
    if a.dry_run {
        return dry_run(a, ui, image.as_ref(), out, &policy);
    }
    let progress = ui.progress("converting", a.json);
    let opts = ConvertOptions {
        policy,
        force: a.force,
        threads: a.threads.unwrap_or(0),
        no_clone: a.no_clone,
    };
    let r = convert_to_file(image.as_ref(), out, &opts, &progress);
    progress.finish(r.is_ok());
    let r = r?;
    // The input's warnings, only now: a warning printed before an error that stops the
    // command (a size Azure refuses) would only distract from that error.
    for f in pre.findings.iter().filter(|f| {
        f.severity == vhdforge_core::Severity::Warning && !f.code.as_str().starts_with("azure.")
    }) {
        ui.note(&f.to_string());
    }
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
            "{} -> {}: fixed VHD of {}, wrote {} of data, {}skipped {} of zeros, in {:.1} s ({} average){}\n",
            a.input.display(),
            out.display(),
            bytes(r.output_size - 512),
            format_bytes(r.data_bytes_written),
            if r.data_bytes_cloned > 0 {
                format!(
                    "cloned {} (shared with the input), ",
                    format_bytes(r.data_bytes_cloned)
                )
            } else {
                String::new()
            },
            format_bytes(r.zero_bytes_skipped),
            r.seconds,
            // Cloned bytes count as done, as on the progress bar.
            format_rate(r.data_bytes_written + r.data_bytes_cloned, r.seconds),
            if after.azure_ready {
                "; Azure-ready"
            } else {
                ""
            }
        ));
        s.push_str(&upload_size_line(r.output_size));
        ui.print(&s)?;
    }
    // convert_to_file checked the output before giving it its name.
    Ok(ExitCode::SUCCESS)
}
