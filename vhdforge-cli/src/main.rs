//! The `vhdforge` command line: inspect, check, convert and upload disk images for Azure.
//!
//! Exit codes: 0 success (or check passed), 1 check failed / images differ, 2 the tool could
//! not do its job (unreadable file, bad arguments, I/O or network error).

mod bench_cmd;
mod convert_cmd;
mod guest_cmd;
mod hyperv_cmd;
mod inspect_cmd;
mod listing_cmd;
mod preflight_cmd;
mod remote_cmd;
mod ui;
mod upload_cmd;

use anyhow::Context as _;
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

/// The heading global options are listed under, apart from each command's own.
const GLOBAL: &str = "Global options";

#[derive(Parser, Debug)]
#[command(name = "vhdforge", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    /// Log to stderr: -v each request and retry decision, -vv also headers (redacted), -vvv also the HTTP/TLS libraries.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    verbose: u8,
    /// Print nothing but errors (no results, notes or progress; a --json result still prints).
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    quiet: bool,
    /// Write the log to this new file (never overwritten) instead of stderr; at least -v.
    #[arg(long, global = true, value_name = "PATH", help_heading = GLOBAL)]
    log_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    // No doc comments here: a variant's doc would replace the long help each command's
    // arguments struct carries (clap resets long_about to the variant's one paragraph).
    Info(inspect_cmd::InfoArgs),
    Check(inspect_cmd::CheckArgs),
    Convert(convert_cmd::ConvertArgs),
    Upload(upload_cmd::UploadArgs),
    Verify(upload_cmd::VerifyArgs),
    // After the upload (remote_cmd): info/check also take a URL.
    Sas(remote_cmd::SasArgs),
    Copy(remote_cmd::CopyArgs),
    Bench(bench_cmd::BenchArgs),
    Listing(listing_cmd::ListingArgs),
    Preflight(preflight_cmd::PreflightArgs),
    Volumes(guest_cmd::VolumesArgs),
    Ls(guest_cmd::LsArgs),
    Cat(guest_cmd::CatArgs),
    Hyperv(hyperv_cmd::HypervArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish) on stdout.
    #[command(
        long_about = "Print a shell completion script on stdout, generated from the same \
definition as --help. Install it, for example:

  vhdforge completions bash > ~/.local/share/bash-completion/completions/vhdforge
  vhdforge completions zsh  > \"${fpath[1]}/_vhdforge\"
  vhdforge completions fish > ~/.config/fish/completions/vhdforge.fish"
    )]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout; with COMMAND, that command's own page.
    Manpage {
        /// A command's own page (vhdforge-COMMAND(1)) instead of vhdforge(1).
        command: Option<String>,
    },
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
        Command::Sas(a) => remote_cmd::run_sas(&a, &ui),
        Command::Copy(a) => remote_cmd::run_copy(&a, &ui),
        Command::Bench(a) => bench_cmd::run(&a, &ui),
        Command::Listing(a) => listing_cmd::run(&a, &ui),
        Command::Preflight(a) => preflight_cmd::run(&a, &ui),
        Command::Volumes(a) => guest_cmd::run_volumes(&a, &ui),
        Command::Ls(a) => guest_cmd::run_ls(&a, &ui),
        Command::Cat(a) => guest_cmd::run_cat(&a, &ui),
        Command::Hyperv(a) => hyperv_cmd::run(a, &ui),
        Command::Completions { shell } => print_completions(shell),
        Command::Manpage { command } => print_manpage(command.as_deref()),
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
            Command::Sas(a) => a.json,
            Command::Copy(a) => a.json,
            Command::Bench(a) => a.json,
            Command::Listing(a) => a.json(),
            Command::Preflight(a) => a.json,
            Command::Volumes(a) => a.json,
            Command::Ls(a) => a.json,
            Command::Cat(_) => false,
            Command::Hyperv(a) => a.json(),
            Command::Completions { .. } | Command::Manpage { .. } => false,
        }
    }
}

/// Generated documents go to stdout whatever -q says: they were asked for, like --json.
fn write_generated(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `vhdforge completions SHELL`: from the clap definition, so it never drifts from --help.
fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory as _;
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "vhdforge", &mut buf);
    write_generated(&buf)
}

/// `vhdforge manpage [COMMAND]`: vhdforge(1), or vhdforge-COMMAND(1) with that command's
/// options and long help (one page per command, as git and cargo do).
fn print_manpage(command: Option<&str>) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory as _;
    let mut cmd = Cli::command();
    cmd.build();
    let page = match command {
        None => cmd,
        Some(name) => {
            let sub = cmd
                .find_subcommand(name)
                .with_context(|| {
                    let all = Cli::command();
                    let names: Vec<&str> =
                        all.get_subcommands().map(clap::Command::get_name).collect();
                    format!("no command {name:?}; the commands are {}", names.join(", "))
                })?
                .clone();
            let full = format!("vhdforge-{name}");
            sub.name(full.clone())
                .bin_name(format!("vhdforge {name}"))
                .display_name(full)
        }
    };
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    write_generated(&buf)
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
