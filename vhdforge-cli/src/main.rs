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

Ctrl-C stops convert, upload and verify cleanly within about a second (an upload keeps its
journal and says how to resume); a second Ctrl-C quits at once.

Output: results on stdout, notes, progress and logs on stderr. -q prints nothing but errors
(the --json result is still printed); -v logs each request (method, range, status,
duration, retries, throttling), -vv adds the request headers (secrets redacted), -vvv adds
the HTTP and TLS libraries' own logs. VHDFORGE_LOG=<filter> replaces the level (tracing
directives, e.g. VHDFORGE_LOG=vhdforge_core=debug). NO_COLOR disables colour in logs.
With --json, an error is printed as {\"error\": {\"code\": …, \"message\": …}} on stdout.

Exit codes: 0 ok, 1 check failed (or verify found a difference), 2 error (an interrupted
run included), 130 a second Ctrl-C.";

#[derive(Parser, Debug)]
#[command(name = "vhdforge", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    /// Log to stderr: -v each request and retry decision, -vv also headers (redacted), -vvv also the HTTP/TLS libraries.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Print nothing but errors (no results, notes or progress; a --json result still prints).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Write the log to this new file (never overwritten) instead of stderr; at least -v.
    #[arg(long, global = true, value_name = "PATH")]
    log_file: Option<std::path::PathBuf>,
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
    let json = cli.command.json();
    if let Err(e) = ui::init_logging(cli.verbose, cli.quiet, cli.log_file.as_deref()) {
        return ui::report_error(&redacted(&e), "cli", json);
    }
    let ui = ui::Ui::new(cli.quiet);
    let result = match cli.command {
        Command::Info(a) => inspect_cmd::run_info(&a, &ui),
        Command::Check(a) => inspect_cmd::run_check(&a, &ui),
        Command::Convert(a) => convert_cmd::run(&a, &ui),
        Command::Upload(a) => upload_cmd::run_upload(a, &ui),
        Command::Verify(a) => upload_cmd::run_verify(a, &ui),
    };
    match result {
        Ok(code) => code,
        Err(e) => ui::report_error(&redacted(&e), &ui::error_code(&e), json),
    }
}

impl Command {
    /// Whether --json was given: errors are then JSON too.
    fn json(&self) -> bool {
        match self {
            Command::Info(a) => a.json,
            Command::Check(a) => a.json,
            Command::Convert(a) => a.json,
            Command::Upload(a) => a.json,
            Command::Verify(a) => a.json,
        }
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
