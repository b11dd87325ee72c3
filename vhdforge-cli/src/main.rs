//! The `vhdforge` command line.
//!
//! Minimal wiring of the upload/verify subcommands (the upload branch's stand-in; the
//! full CLI replaces it).

mod upload_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "vhdforge",
    version,
    about = "Turn Hyper-V disks into Azure-ready fixed VHDs and upload them fast"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Upload(upload_cmd::UploadArgs),
    Verify(upload_cmd::VerifyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Upload(a) => upload_cmd::run_upload(a),
        Command::Verify(a) => upload_cmd::run_verify(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vhdforge: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
