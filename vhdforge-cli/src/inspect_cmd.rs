//! `vhdforge info` and `vhdforge check`.

use crate::ui::{bytes, Ui};
use anyhow::Result;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use vhdforge_core::{inspect, Inspection, OpenOptions, Severity};

/// Show what an image is: format, type, sizes, allocation, parent, findings.
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Show what an image is: format (by content, not name), disk type, virtual size, \
sector sizes, block size, bytes allocated according to its metadata, parent chain, and every finding \
(structure and Azure readiness). Exit 0 when the report was produced, 2 when the file cannot be read. \
FILE may also be an uploaded blob's URL (credentials as for `check`)."
)]
pub struct InfoArgs {
    /// The image: raw, VHD (fixed/dynamic/differencing) or VHDX.
    pub file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Do not open parent disks of differencing images.
    #[arg(long)]
    pub no_parents: bool,
}

/// Validate an image and say whether Azure will accept it as it is (exit 0 yes, 1 no).
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Validate an image and say whether Azure accepts it as it stands.

Checks the structure (magic values, checksums, reserved fields, offsets inside the file, table \
sizes, parent linkage) and Azure's rules (fixed VHD, virtual size a whole number of MiB, file \
length = size + 512 with the footer last, 20 MiB to 32 767 GiB), plus warnings for the Marketplace \
OS-disk range and sizes above 2040 GiB. Every finding has a stable code (see the README).

Exit 0: valid and Azure-ready. Exit 1: at least one error finding (the text says what to do, \
usually `vhdforge convert`). Exit 2: the file could not be read at all.

FILE may also be an uploaded blob's URL (https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB): \
then the blob is checked where it is (page blob, fixed VHD footer last, size rules) from its properties, \
page list and the VHD's own metadata, without downloading its data. Credentials as for `verify`: a SAS in the URL, else the account key from \
the environment, or Entra ID sign-in with VHDFORGE_AUTH=login."
)]
pub struct CheckArgs {
    /// The image to check.
    pub file: PathBuf,
    /// Print one JSON object (the same as `info --json`) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Do not open parent disks of differencing images.
    #[arg(long)]
    pub no_parents: bool,
}

fn run_inspect(file: &std::path::Path, no_parents: bool) -> Result<Inspection> {
    let opts = OpenOptions {
        follow_parents: !no_parents,
        ..OpenOptions::default()
    };
    Ok(inspect(file, &opts)?)
}

/// A path as shown: a SAS URL given where a path belongs must not show its signature.
fn shown(file: &std::path::Path) -> String {
    vhdforge_core::storage::redact_text(&file.display().to_string())
}

/// The size `az disk create --upload-size-bytes` needs for this image: what `convert` writes
/// (virtual size rounded up to a whole MiB, plus the 512-byte footer), which for an
/// Azure-ready VHD is its file size. `None` when the image cannot be read or is empty.
fn upload_size(i: &Inspection) -> Option<u64> {
    let info = i.info.as_ref()?;
    if !i.readable || info.virtual_size == 0 {
        return None;
    }
    vhdforge_core::azure::round_up_mib(info.virtual_size)?.checked_add(512)
}

/// The JSON object `info --json` and `check --json` print.
pub fn to_json(file: &std::path::Path, i: &Inspection) -> serde_json::Value {
    let info = i.info.as_ref();
    json!({
        "path": shown(file),
        "format": i.detected_format,
        "disk_type": info.map(|x| x.disk_type),
        "virtual_size": info.map(|x| x.virtual_size),
        "logical_sector_size": info.map(|x| x.logical_sector_size),
        "physical_sector_size": info.map(|x| x.physical_sector_size),
        "block_size": info.and_then(|x| x.block_size),
        "file_size": info.map(|x| x.file_size),
        "allocated_bytes": i.allocated_bytes,
        "identifier": info.and_then(|x| x.identifier).map(|u| u.to_string()),
        "parent": info.and_then(|x| x.parent.as_ref()).map(|p| p.display().to_string()),
        "parent_identifier": info.and_then(|x| x.parent_identifier).map(|u| u.to_string()),
        "creator": info.and_then(|x| x.creator.clone()),
        "upload_size_bytes": upload_size(i),
        "readable": i.readable,
        "azure_ready": i.azure_ready,
        "findings": i.findings,
    })
}

pub(crate) fn human(file: &std::path::Path, i: &Inspection) -> String {
    let mut s = String::new();
    match &i.info {
        Some(info) => {
            s.push_str(&format!(
                "{}: {} {}\n",
                shown(file),
                info.disk_type,
                info.format.to_string().to_uppercase()
            ));
            s.push_str(&format!("  virtual size    {}\n", bytes(info.virtual_size)));
            s.push_str(&format!(
                "  sectors         {} logical / {} physical\n",
                info.logical_sector_size, info.physical_sector_size
            ));
            if let Some(b) = info.block_size {
                s.push_str(&format!("  block size      {}\n", bytes(b)));
            }
            if let Some(a) = i.allocated_bytes {
                s.push_str(&format!("  allocated       {}\n", bytes(a)));
            }
            s.push_str(&format!("  file size       {}\n", bytes(info.file_size)));
            if let Some(c) = &info.creator {
                s.push_str(&format!("  creator         {c}\n"));
            }
            if let Some(id) = info.identifier {
                s.push_str(&format!("  identifier      {id}\n"));
            }
            if let Some(p) = &info.parent {
                s.push_str(&format!("  parent          {}\n", p.display()));
            }
        }
        None => s.push_str(&format!("{}: could not be parsed\n", shown(file))),
    }
    s.push_str(&format!(
        "  azure ready     {}\n",
        if i.azure_ready { "yes" } else { "no" }
    ));
    if let Some(n) = upload_size(i) {
        s.push_str("  ");
        s.push_str(&crate::convert_cmd::upload_size_line(n));
    }
    if !i.findings.is_empty() {
        s.push_str("findings:\n");
        for f in &i.findings {
            s.push_str(&format!("  {f}\n"));
        }
    }
    s
}

/// A fixed VHD, as the footer says or (when it could not be parsed) as the signature says.
fn is_fixed_vhd(i: &Inspection) -> bool {
    match &i.info {
        Some(info) => {
            info.format == vhdforge_core::Format::Vhd
                && info.disk_type == vhdforge_core::DiskType::Fixed
        }
        None => i.detected_format == Some(vhdforge_core::Format::Vhd),
    }
}

/// `vhdforge info`.
pub fn run_info(a: &InfoArgs, ui: &Ui) -> Result<ExitCode> {
    if let Some(url) = crate::remote_cmd::as_url(&a.file) {
        return crate::remote_cmd::run_info(url, a.json, ui);
    }
    let i = run_inspect(&a.file, a.no_parents)?;
    if a.json {
        ui.print_json(&to_json(&a.file, &i))?;
    } else {
        ui.print(&human(&a.file, &i))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `vhdforge check`.
pub fn run_check(a: &CheckArgs, ui: &Ui) -> Result<ExitCode> {
    if let Some(url) = crate::remote_cmd::as_url(&a.file) {
        return crate::remote_cmd::run_check(url, a.json, ui);
    }
    let i = run_inspect(&a.file, a.no_parents)?;
    if a.json {
        ui.print_json(&to_json(&a.file, &i))?;
    } else {
        let mut s = human(&a.file, &i);
        let errors = i
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        let warnings = i
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .count();
        let has = |code: &str| i.findings.iter().any(|f| f.code == code);
        let file = shown(&a.file);
        if i.azure_ready {
            s.push_str(&format!("OK: {file} is a valid, Azure-ready fixed VHD ({warnings} warning(s)). Upload it with `vhdforge upload`.\n"));
        } else if has("raw.empty") {
            s.push_str(&format!(
                "FAILED: {file} is empty, not a disk image. Copy or export the disk again.\n"
            ));
        } else if has("vhdx.truncated") {
            s.push_str(&format!(
                "FAILED: {file} is an incomplete copy (truncated). Copy the VHDX again from its source; no tool can restore the missing data.\n"
            ));
        } else if has("vhd.footer.checksum") && is_fixed_vhd(&i) {
            s.push_str(&format!(
                "FAILED: {errors} error(s). The footer of this fixed VHD is damaged; `vhdforge convert --in-place` rewrites it. \
                 Work on a copy: `cp {file} repaired.vhd && vhdforge convert --in-place repaired.vhd`.\n"
            ));
        } else if !i.readable {
            s.push_str(&format!(
                "FAILED: {errors} error(s). The image is damaged or unsupported as described above; vhdforge will not convert it until that is fixed.\n"
            ));
        } else if has("raw.no_partition_table") {
            s.push_str(&format!(
                "FAILED: {errors} error(s). {file} has no VHD/VHDX signature and no partition table: if it is not a disk image, \
                 nothing will boot from it. If it is (a raw disk), `vhdforge convert {file} OUT.vhd` makes it Azure-ready.\n"
            ));
        } else {
            s.push_str(&format!(
                "FAILED: {errors} error(s); the image reads fine but Azure will not accept it as it is. Run `vhdforge convert {file} OUT.vhd`.\n"
            ));
        }
        ui.print(&s)?;
    }
    Ok(if i.azure_ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
