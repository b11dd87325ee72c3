//! Terminal plumbing shared by every command: stdout that tolerates a closed pipe, the one
//! progress bar (drawn only on a terminal), Ctrl-C, logging, and the one place errors are
//! printed (as text, or as JSON under `--json`).
//!
//! `--quiet` is honoured here and nowhere else: commands print through [`Ui`], so no
//! command can forget it.

use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use vhdforge_core::progress::{format_bytes, format_rate, Cancel, Progress};
use vhdforge_core::storage::redact_text;

/// Output settings shared by all commands.
pub struct Ui {
    quiet: bool,
}

impl Ui {
    pub fn new(quiet: bool) -> Self {
        QUIET.store(quiet, Ordering::Relaxed);
        Ui { quiet }
    }

    /// Whether -q was given (for commands that stream their result themselves).
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// Print a human-readable result on stdout (nothing with --quiet); a reader that went
    /// away (`| head`) is not an error.
    pub fn print(&self, text: &str) -> anyhow::Result<()> {
        if self.quiet {
            return Ok(());
        }
        write_stdout(text)
    }

    /// Print a JSON value. `--json` is an explicit request for the result, so --quiet does
    /// not hide it (it still hides notes and progress).
    pub fn print_json(&self, v: &serde_json::Value) -> anyhow::Result<()> {
        write_stdout(&format!("{}\n", serde_json::to_string_pretty(v)?))
    }

    /// A note on stderr unless quiet.
    pub fn note(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }

    /// The progress of one long operation, labelled `label` ("converting", "uploading",
    /// "verifying"). Its bar is drawn only on a terminal and never with --quiet or when
    /// `hidden` (--json); notes and the plan line still go to stderr as plain lines when
    /// stderr is not a terminal. Installs the Ctrl-C handler: from here on the first Ctrl-C
    /// cancels the operation, the second ends the process.
    pub fn progress(&self, label: &'static str, hidden: bool) -> Bar {
        Bar {
            label,
            draw: !self.quiet && !hidden && std::io::stderr().is_terminal(),
            quiet: self.quiet,
            bar: OnceLock::new(),
            early: AtomicU64::new(0),
            cancel: install_ctrl_c(),
            retries: AtomicU64::new(0),
            last_retry_line: Mutex::new(None),
            started: Instant::now(),
        }
    }
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// --quiet, for the Ctrl-C handler (which has no `Ui`).
static QUIET: AtomicBool = AtomicBool::new(false);

/// The process's one cancellation token, set by the first Ctrl-C. The handler is the ctrlc
/// crate's (a dedicated thread, so it may print): the first Ctrl-C asks the running
/// operation to stop cleanly, the second exits at once with 130.
pub fn install_ctrl_c() -> Cancel {
    static TOKEN: OnceLock<Cancel> = OnceLock::new();
    TOKEN
        .get_or_init(|| {
            let token = Cancel::new();
            let t = token.clone();
            let _ = ctrlc::set_handler(move || {
                if t.cancel() {
                    std::process::exit(130);
                }
                if !QUIET.load(Ordering::Relaxed) {
                    eprintln!("\nstopping (Ctrl-C again to quit at once)");
                }
            });
            token
        })
        .clone()
}

/// The one progress display: a labelled byte bar whose total is the data to write, send or
/// compare, created only once that total is known (no "0 B/0 B" frame).
pub struct Bar {
    label: &'static str,
    draw: bool,
    quiet: bool,
    bar: OnceLock<ProgressBar>,
    /// Progress reported before the total (kept so the bar starts where the work is).
    early: AtomicU64,
    cancel: Cancel,
    retries: AtomicU64,
    last_retry_line: Mutex<Option<Instant>>,
    started: Instant,
}

/// A bar key rendering with [`format_bytes`], so the bar and the summaries agree.
fn bytes_key(
    f: fn(&ProgressState) -> u64,
) -> impl Fn(&ProgressState, &mut dyn std::fmt::Write) + Clone + Send + Sync {
    move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = w.write_str(&format_bytes(f(s)));
    }
}

fn style() -> ProgressStyle {
    // Everything but the bar is at most ~50 columns, and `wide_bar` takes what the terminal
    // has left, so the line always fits its width (a wrapped line is never cleared).
    ProgressStyle::with_template(
        "{msg:>10} {percent:>3}% [{wide_bar}] {done}/{total} {rate} {eta_text}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key("done", bytes_key(ProgressState::pos))
    .with_key("total", bytes_key(|s| s.len().unwrap_or(0)))
    .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let per_s = s.per_sec() as u64;
        let _ = write!(w, "{}/s", format_bytes(per_s));
    })
    .with_key(
        "eta_text",
        |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let secs = s.eta().as_secs();
            let _ = if secs >= 3600 {
                write!(w, "{}h{:02}m", secs / 3600, secs % 3600 / 60)
            } else {
                write!(w, "{}m{:02}s", secs / 60, secs % 60)
            };
        },
    )
    .progress_chars("=> ")
}

impl Bar {
    /// A line on stderr above the bar (or plain, without one); nothing with --quiet.
    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        match self.bar.get() {
            Some(b) if self.draw => b.suspend(|| eprintln!("{text}")),
            _ => eprintln!("{text}"),
        }
    }

    /// End the bar. On success it stays on screen, full: a total that was an upper bound
    /// (convert estimates before scanning for zeros) must not end at 97 %. On failure it is
    /// cleared, so the error is the last thing shown.
    pub fn finish(&self, ok: bool) {
        if let Some(b) = self.bar.get() {
            if ok {
                if let Some(len) = b.length() {
                    b.set_position(len);
                }
                b.finish();
                if self.draw {
                    // indicatif leaves the cursor after the finished bar: end its line so
                    // the summary starts on its own.
                    eprintln!();
                }
            } else {
                b.finish_and_clear();
            }
        }
    }

    /// Seconds since the operation started, for average rates.
    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

impl Progress for Bar {
    fn set_total(&self, bytes: u64) {
        let b = self.bar.get_or_init(|| {
            let b = if self.draw {
                ProgressBar::new(bytes)
            } else {
                ProgressBar::hidden()
            };
            b.set_style(style());
            b.set_message(self.label);
            b.set_position(self.early.load(Ordering::Relaxed));
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        b.set_length(bytes);
    }

    fn advance(&self, bytes: u64) {
        match self.bar.get() {
            Some(b) => b.inc(bytes),
            None => {
                self.early.fetch_add(bytes, Ordering::Relaxed);
            }
        }
    }

    /// Retries get a line of their own (not a message squeezed into the bar), at most one
    /// a second so a throttled upload with many requests in flight does not flood stderr.
    fn retried(&self, reason: &str) {
        let n = self.retries.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self
            .last_retry_line
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
        drop(last);
        self.line(&format!(
            "retrying: {} ({n} {} so far)",
            redact_text(reason),
            if n == 1 { "retry" } else { "retries" }
        ));
    }

    fn note(&self, msg: &str) {
        self.line(&redact_text(msg));
    }

    fn cancel(&self) -> Cancel {
        self.cancel.clone()
    }
}

/// "sent 64 MiB in 3.2 s (20 MiB/s)": the average rate every summary gives.
pub fn amount_and_rate(bytes: u64, seconds: f64) -> String {
    format!(
        "{} in {seconds:.1} s ({} average)",
        format_bytes(bytes),
        format_rate(bytes, seconds)
    )
}

/// Where log lines go.
enum LogSink {
    Stderr,
    File(Mutex<std::fs::File>),
}

static SINK: OnceLock<LogSink> = OnceLock::new();

/// Log lines with every secret redacted. The fmt layer writes each event with one
/// `write_all`, so each call holds whole lines; logs come from reqwest, hyper and rustls too
/// (at -vvv), and none of their text may carry a secret out.
struct RedactingWriter;

impl Write for RedactingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = redact_text(&String::from_utf8_lossy(buf));
        match SINK.get() {
            Some(LogSink::File(f)) => f
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .write_all(text.as_bytes())?,
            _ => std::io::stderr().write_all(text.as_bytes())?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match SINK.get() {
            Some(LogSink::File(f)) => f
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .flush(),
            _ => std::io::stderr().flush(),
        }
    }
}

/// The `tracing` filter for a verbosity: vhdforge's own events first, library noise
/// (connection pools, TLS) only at -vvv.
fn filter_for(verbose: u8, quiet: bool) -> &'static str {
    match (quiet, verbose) {
        (true, 0) => "error",
        (_, 0) => "warn",
        // -v: one line per request, retry and throttling decision.
        (_, 1) => "warn,vhdforge=info,vhdforge_core=info",
        // -vv: request headers (redacted) and other detail from vhdforge itself.
        (_, 2) => "warn,vhdforge=debug,vhdforge_core=debug",
        _ => "trace",
    }
}

/// Set up `tracing`: to stderr, or to `log_file` (created exclusively, never through a
/// link; it then gets at least the -v level, since asking for a log file means wanting it).
/// Colour only on a terminal and without NO_COLOR. VHDFORGE_LOG, when set, replaces the
/// level filter (`tracing` directives, e.g. `vhdforge_core=debug`).
pub fn init_logging(verbose: u8, quiet: bool, log_file: Option<&Path>) -> anyhow::Result<()> {
    let (verbose, sink) = match log_file {
        Some(p) => {
            let f = vhdforge_core::fsutil::create_new(p).map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the log file {}: {e}{}",
                    p.display(),
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        " (it is never overwritten: choose a new name or remove it)"
                    } else {
                        ""
                    }
                )
            })?;
            (verbose.max(1), LogSink::File(Mutex::new(f)))
        }
        None => (verbose, LogSink::Stderr),
    };
    let ansi = matches!(sink, LogSink::Stderr)
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        // A Windows console must be switched to VT mode first; a classic one that cannot
        // gets plain text rather than escape garbage.
        && vhdforge_core::platform::enable_ansi_on_stderr();
    let _ = SINK.set(sink);
    let filter = tracing_subscriber::EnvFilter::try_from_env("VHDFORGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter_for(verbose, quiet)));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| RedactingWriter)
        .with_ansi(ansi)
        .with_target(verbose >= 3)
        .try_init();
    Ok(())
}

/// The stable code of an error (the library's, e.g. `upload.auth`; `cli` for the tool's own).
pub fn error_code(e: &anyhow::Error) -> String {
    e.chain()
        .find_map(|c| c.downcast_ref::<vhdforge_core::Error>())
        .map_or_else(|| "cli".to_string(), |x| x.code().to_string())
}

/// Print an (already redacted) error chain once and map it to exit code 2: as text on
/// stderr, or with `json` as `{"error": {"code", "message"}}` on stdout (scripts parse one
/// stream). `code` comes from [`error_code`] on the error before redaction, which keeps
/// only the text.
pub fn report_error(e: &anyhow::Error, code: &str, json: bool) -> ExitCode {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            if json {
                let _ = write!(msg, ": {c}");
            } else {
                let _ = write!(msg, "\n  caused by: {c}");
            }
        }
    }
    if json {
        let v = serde_json::json!({"error": {"code": code, "message": msg}});
        let _ = write_stdout(&format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        ));
    } else {
        eprintln!("vhdforge: error: {}", terminal_safe(&msg));
    }
    ExitCode::from(2)
}

/// `text` safe to print on a terminal: every control character but line feed and tab, and
/// every bidirectional control or invisible format character, becomes `\xNN` (each byte
/// of it). Error messages quote what an input holds — a guest's
/// file names and symlink targets, a disk's parent path, an inventory's VM names — and an
/// escape sequence in one must not rewrite the terminal (its title, colours, the lines
/// above) or hide the message itself.
pub fn terminal_safe(text: &str) -> String {
    // Bidirectional controls and invisible format characters too: a quoted name must not
    // read as another (`vhdforge_core::guest::text`).
    let unsafe_char =
        |c: char| c != '\n' && c != '\t' && vhdforge_core::guest::text::must_escape(c);
    if !text.chars().any(unsafe_char) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            let mut b = [0u8; 4];
            for byte in c.encode_utf8(&mut b).bytes() {
                let _ = write!(out, "\\x{byte:02x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Human-readable byte count with the exact figure ("1.5 GiB (1610612736 bytes)"), for
/// reports where the exact number matters (sizes Azure checks to the byte).
pub fn bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} bytes")
    } else {
        format!("{} ({n} bytes)", format_bytes(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_sizes_keep_the_byte_count() {
        assert_eq!(bytes(512), "512 bytes");
        assert_eq!(bytes(64 << 20), "64 MiB (67108864 bytes)");
    }

    #[test]
    fn verbosity_keeps_library_noise_for_vvv() {
        assert!(!filter_for(1, false).contains("trace"));
        assert!(
            filter_for(1, false).starts_with("warn,"),
            "others stay at warn"
        );
        assert!(filter_for(2, false).contains("vhdforge_core=debug"));
        assert_eq!(filter_for(3, false), "trace");
        assert_eq!(filter_for(0, true), "error");
    }

    #[test]
    fn rates_in_summaries() {
        assert_eq!(
            amount_and_rate(64 << 20, 2.0),
            "64 MiB in 2.0 s (32 MiB/s average)"
        );
    }
}
