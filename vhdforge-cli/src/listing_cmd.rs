//! `vhdforge listing check FILES…`: the Marketplace listing images, format and size.

use crate::ui::Ui;
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;
use vhdforge_core::listing::{check_asset, ASSET_SIZES};

/// Marketplace listing assets.
#[derive(clap::Args, Debug)]
pub struct ListingArgs {
    #[command(subcommand)]
    pub command: ListingCommand,
}

/// What to do with listing assets.
#[derive(clap::Subcommand, Debug)]
pub enum ListingCommand {
    /// Check listing images: PNG, and exactly 115×115 (small logo), 255×115 (wide logo) or
    /// 533×324 (screenshot). Exit 0 all fit, 1 one does not, 2 one cannot be read.
    Check {
        /// The image files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

impl ListingArgs {
    /// Whether --json was given.
    pub fn json(&self) -> bool {
        match &self.command {
            ListingCommand::Check { json, .. } => *json,
        }
    }
}

/// `vhdforge listing check`.
pub fn run(a: &ListingArgs, ui: &Ui) -> Result<ExitCode> {
    let ListingCommand::Check { files, json } = &a.command;
    let mut reports = Vec::new();
    for f in files {
        reports.push((f, check_asset(f)?));
    }
    let ok = reports.iter().all(|(_, r)| r.ok());
    if *json {
        let files: Vec<serde_json::Value> = reports
            .iter()
            .map(|(p, r)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["path"] = p.display().to_string().into();
                v["ok"] = r.ok().into();
                v
            })
            .collect();
        ui.print_json(&serde_json::json!({ "ok": ok, "files": files, "sizes": ASSET_SIZES }))?;
    } else {
        let mut s = String::new();
        for (_, r) in &reports {
            let mark = if r.ok() { "ok  " } else { "FAIL" };
            let code = r.code.map(|c| format!(" [{c}]")).unwrap_or_default();
            s.push_str(&format!("{mark} {}{code}\n", r.message));
        }
        ui.print(&s)?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
