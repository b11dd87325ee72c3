//! Progress reporting and cancellation for every long operation (convert, upload, verify).
//!
//! The library never draws anything: callers pass one [`Progress`] (the CLI renders it as a
//! bar on a terminal, plain lines elsewhere) and stop a running operation through the
//! [`Cancel`] token it hands out. There is one token type for every phase — planning,
//! creating the destination, retries and their backoff sleeps, sending, verifying — so a
//! single Ctrl-C reaches whatever is running.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cancellation token: cheap to clone, all clones share one flag, and setting it is final.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    // `None` is a token nobody can set ([`Cancel::never`]): no allocation for the
    // common "no cancellation" case, which convert checks once per chunk.
    flag: Option<Arc<AtomicBool>>,
}

impl Cancel {
    /// A token that can be cancelled with [`Cancel::cancel`].
    #[must_use]
    pub fn new() -> Cancel {
        Cancel {
            flag: Some(Arc::new(AtomicBool::new(false))),
        }
    }

    /// A token that is never cancelled.
    #[must_use]
    pub fn never() -> Cancel {
        Cancel { flag: None }
    }

    /// Ask every holder of this token to stop. Returns whether it was already cancelled.
    pub fn cancel(&self) -> bool {
        self.flag
            .as_ref()
            .is_some_and(|f| f.swap(true, Ordering::SeqCst))
    }

    /// Whether the operation should stop as soon as it safely can.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.flag
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// Resolves once the token is cancelled (never, for [`Cancel::never`]). Polls every
    /// 50 ms: a signal handler cannot wake a future safely, and 50 ms is well inside the
    /// "stops within about a second" promise.
    #[cfg(feature = "upload")]
    pub async fn cancelled(&self) {
        if self.flag.is_none() {
            return std::future::pending().await;
        }
        while !self.is_cancelled() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Sleep for `d`, or less if cancelled first. Returns `false` when cancelled, so retry
    /// loops stop waiting (and retrying) at once.
    #[cfg(feature = "upload")]
    pub async fn sleep(&self, d: std::time::Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => !self.is_cancelled(),
            () = self.cancelled() => false,
        }
    }
}

/// Receives progress of a long operation; all methods may be called from many threads.
pub trait Progress: Send + Sync {
    /// The amount of work, in bytes, now known (data to write or send or compare).
    fn set_total(&self, _bytes: u64) {}
    /// `bytes` more of the work are done.
    fn advance(&self, _bytes: u64) {}
    /// A request is retried because of `reason` (already free of secrets).
    fn retried(&self, _reason: &str) {}
    /// A notable event worth a line of its own (the plan, "cleared stale pages" …).
    fn note(&self, _msg: &str) {}
    /// The token the operation checks to know it should stop.
    fn cancel(&self) -> Cancel {
        Cancel::never()
    }
    /// Shorthand for `self.cancel().is_cancelled()`.
    fn is_cancelled(&self) -> bool {
        self.cancel().is_cancelled()
    }
}

/// A [`Progress`] that ignores everything and never cancels.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// A [`Progress`] that only carries a cancellation token.
#[derive(Debug, Default, Clone)]
pub struct CancelOnly(pub Cancel);

impl Progress for CancelOnly {
    fn cancel(&self) -> Cancel {
        self.0.clone()
    }
}

/// A byte count as people read it: binary units, three significant digits, no trailing
/// zeros ("512 B", "64 MiB", "1.95 GiB", "127 GiB"). The one formatter for every message.
#[must_use]
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    // Round first, then pick the decimals: 1023.9 KiB must not print as "1024.0 KiB"
    // with one decimal when it rounds to a whole number anyway.
    let decimals = if v >= 99.95 {
        0
    } else if v >= 9.995 {
        1
    } else {
        2
    };
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s} {}", UNITS[u])
}

/// A rate in bytes per second as [`format_bytes`] writes sizes ("212 MiB/s").
#[must_use]
pub fn format_rate(bytes: u64, seconds: f64) -> String {
    if seconds <= 0.0 || !seconds.is_finite() {
        return "-".to_string();
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let per_s = (bytes as f64 / seconds) as u64;
    format!("{}/s", format_bytes(per_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (64 << 20, "64 MiB"),        // not "0.1 GiB", not "64.0 MiB"
            (2_094_006_272, "1.95 GiB"), // not "2.0 GiB"
            (127 << 30, "127 GiB"),      // three digits: no decimals
            ((10 << 30) + (1 << 29), "10.5 GiB"),
            ((1 << 20) - 1, "1024 KiB"), // rounds, never "1024.00"
            (u64::MAX, "16 EiB"),
        ];
        for (n, want) in cases {
            assert_eq!(format_bytes(n), want, "{n}");
        }
    }

    #[test]
    fn rates_are_averages() {
        assert_eq!(format_rate(200 << 20, 2.0), "100 MiB/s");
        assert_eq!(format_rate(1, 0.0), "-");
    }

    #[test]
    fn clones_share_the_flag_and_never_stays_unset() {
        let c = Cancel::new();
        let d = c.clone();
        assert!(!d.is_cancelled());
        assert!(!c.cancel());
        assert!(d.is_cancelled());
        assert!(c.cancel(), "a second cancel reports the first");
        let n = Cancel::never();
        assert!(!n.cancel());
        assert!(!n.is_cancelled());
        assert!(!NoProgress.is_cancelled());
        assert!(CancelOnly(c).is_cancelled());
    }

    #[cfg(feature = "upload")]
    #[test]
    fn a_backoff_sleep_ends_when_cancelled() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let c = Cancel::new();
        let c2 = c.clone();
        let t = std::time::Instant::now();
        let slept = rt.block_on(async move {
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                c2.cancel();
            });
            c.sleep(std::time::Duration::from_secs(30)).await
        });
        assert!(!slept);
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }
}
