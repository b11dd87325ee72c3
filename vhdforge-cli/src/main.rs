//! The `vhdforge` command line: inspect, check, convert and upload disk images for Azure.
//!
//! Exit codes: 0 success (or check passed), 1 check failed / images differ, 2 the tool could
//! not do its job (unreadable file, bad arguments, I/O or network error).

mod convert_cmd;
mod inspect_cmd;
mod ui;
mod upload_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use vhdforge_core::storage::redact_text;

const ABOUT: &str =
    "Turn Hyper-V disks (VHDX, VHD, raw) into Azure-ready fixed VHDs and get them into Azure fast";

const LONG_ABOUT: &str = "\
Turn Hyper-V disks (VHDX, VHD, raw) into Azure-ready fixed VHDs and get them into Azure fast.

Azure accepts only a fixed VHD whose virtual size is a whole number of MiB, with the 512-byte
footer last. The usual route:

  vhdforge check  disk.vhdx              # what is it, and is it Azure-ready?
  vhdforge convert disk.vhdx disk.vhd    # -> sparse, Azure-ready fixed VHD
  vhdforge upload disk.vhd '<SAS URL>'   # page blob or managed disk, zero pages skipped
  vhdforge verify disk.vhd '<SAS URL>'   # the destination holds exactly that

Images are recognised by content, not file name. Differencing disks (.avhd/.avhdx
checkpoints) are read through their parents. Inputs are never modified, except by
`convert --in-place`, which you ask for explicitly.

Exit codes: 0 ok, 1 check failed (or verify found a difference), 2 error, 130 a second Ctrl-C.";

#[derive(Parser, Debug)]
#[command(name = "vhdforge", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    /// Print more about what is happening (repeat for more); logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// No progress bars or notes; errors are still printed.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what an image is: format, type, sizes, allocation, parent, findings.
    Info(inspect_cmd::InfoArgs),
    /// Validate an image and say whether Azure will accept it as it is (exit 0 yes, 1 no).
    Check(inspect_cmd::CheckArgs),
    /// Convert any image into an Azure-ready fixed VHD (sparse, parallel, safe).
    Convert(convert_cmd::ConvertArgs),
    /// Upload an image to an Azure page blob or managed disk, sending only non-zero pages.
    Upload(upload_cmd::UploadArgs),
    /// Check that a destination blob holds exactly what `upload` would send for an image.
    Verify(upload_cmd::VerifyArgs),
}

fn main() -> ExitCode {
    // Parse errors echo the offending argument, and a SAS URL given to the wrong option
    // must not be echoed with its signature: render clap's message ourselves, redacted.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let text = redact_text(&e.render().to_string());
            // --help and --version are "errors" that go to stdout and exit 0.
            if e.use_stderr() {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    ui::init_logging(cli.verbose, cli.quiet);
    let ui = ui::Ui::new(cli.quiet);
    let result = match cli.command {
        Command::Info(a) => inspect_cmd::run_info(&a, &ui),
        Command::Check(a) => inspect_cmd::run_check(&a, &ui),
        Command::Convert(a) => convert_cmd::run(&a, &ui),
        Command::Upload(a) => upload_cmd::run_upload(a),
        Command::Verify(a) => upload_cmd::run_verify(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => ui::report_error(&redacted(&e)),
    }
}

/// `e` with every secret in its chain redacted (a path that is really a SAS URL, a URL
/// with a password, an echoed key), keeping the chain so every cause is still printed.
fn redacted(e: &anyhow::Error) -> anyhow::Error {
    let texts: Vec<String> = e.chain().map(|c| redact_text(&c.to_string())).collect();
    let mut it = texts.into_iter().rev();
    let mut out = anyhow::Error::msg(it.next().unwrap_or_default());
    for t in it {
        out = out.context(t);
    }
    out
}

/// Standard error for log lines, with every secret redacted. The fmt layer writes each
/// event with one `write_all`, so each call holds whole lines; logs come from reqwest,
/// hyper and rustls too, at `-vvv`, and none of their text may carry a secret out.
struct RedactingStderr;

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = redact_text(&String::from_utf8_lossy(buf));
        std::io::stderr().write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The writer `ui::init_logging` hands to the log formatter.
pub(crate) fn log_writer() -> impl std::io::Write {
    RedactingStderr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_redacted_through_the_whole_chain() {
        let e = anyhow::Error::msg("GET https://a/c/b?sig=s3cr3tSIGNATURE failed")
            .context("cannot open https://user:s3cr3tPASS@a/c/b");
        let r = redacted(&e);
        let all: Vec<String> = r.chain().map(ToString::to_string).collect();
        assert_eq!(all.len(), 2, "the chain keeps its causes");
        for t in &all {
            assert!(!t.contains("s3cr3t"), "{t}");
        }
    }
}
