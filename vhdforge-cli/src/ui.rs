//! Terminal plumbing: stdout that tolerates a closed pipe, progress bars that appear only
//! on a terminal, Ctrl-C, logging, and the one place errors are printed.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Output settings shared by all commands.
pub struct Ui {
    quiet: bool,
}

impl Ui {
    pub fn new(quiet: bool) -> Self {
        Ui { quiet }
    }

    /// Print to stdout; a reader that went away (`| head`) is not an error.
    pub fn print(&self, text: &str) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Print a JSON value on one line of its own.
    pub fn print_json(&self, v: &serde_json::Value) -> anyhow::Result<()> {
        self.print(&format!("{}\n", serde_json::to_string_pretty(v)?))
    }

    /// A note on stderr unless quiet.
    pub fn note(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }

    /// A byte progress bar, hidden when stderr is not a terminal, or with --quiet/--json.
    pub fn progress(&self, message: &str, hidden: bool) -> BarProgress {
        let show = !self.quiet && !hidden && std::io::stderr().is_terminal();
        let bar = if show {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(message.to_string());
        BarProgress {
            bar,
            cancel: cancel_flag(),
        }
    }
}

/// Set on Ctrl-C; long operations poll it and stop cleanly.
pub fn cancel_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        // A second Ctrl-C while we clean up ends the process the usual way.
        let _ = ctrlc::set_handler(move || {
            if f.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
        flag
    })
    .clone()
}

/// Adapts the library's progress callbacks to an indicatif bar.
pub struct BarProgress {
    pub bar: ProgressBar,
    cancel: Arc<AtomicBool>,
}

impl vhdforge_core::progress::Progress for BarProgress {
    fn set_total(&self, bytes: u64) {
        self.bar.set_length(bytes);
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
    fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Set up `tracing` output on stderr: warnings by default, more with -v.
pub fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VHDFORGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::log_writer)
        .with_target(false)
        .try_init();
}

/// Print an error chain once and map it to exit code 2.
pub fn report_error(e: &anyhow::Error) -> ExitCode {
    let mut msg = format!("vhdforge: error: {e}");
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(&format!("\n  caused by: {c}"));
        }
    }
    eprintln!("{msg}");
    ExitCode::from(2)
}

/// Human-readable byte count ("1.5 GiB (1610612736 bytes)").
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {} ({n} bytes)", UNITS[u])
    }
}
