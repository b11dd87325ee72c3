//! What a step measures, in bounded memory: request latencies in a log-scale histogram
//! (a step may make millions of requests with a small `--request-size`, so keeping every
//! latency would grow without bound), and the process's CPU time.

// Latencies and bucket indices are small positive numbers; f64 ↔ usize conversions here
// neither truncate anything that matters nor meet negative values (clamped first).
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::time::Duration;

/// Smallest latency told apart (milliseconds); anything faster counts as this.
const FLOOR_MS: f64 = 0.01;
/// Each bucket is this much wider than the one before: percentiles are within 1 %.
const GROWTH: f64 = 1.01;
/// Buckets from 0.01 ms to about 30 minutes (ln(1.8e8) / ln(1.01) ≈ 1900); slower ones
/// land in the last.
const BUCKETS: usize = 1900;

/// Latencies of successful requests, 1 % resolution, fixed size whatever the count.
#[derive(Debug, Clone)]
pub(super) struct Latencies {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

impl Latencies {
    pub(super) fn record(&mut self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let i = if ms <= FLOOR_MS {
            0
        } else {
            ((ms / FLOOR_MS).ln() / GROWTH.ln())
                .ceil()
                .min((BUCKETS - 1) as f64) as usize
        };
        self.counts[i] += 1;
        self.total += 1;
    }

    /// How many were recorded.
    pub(super) fn count(&self) -> u64 {
        self.total
    }

    /// The `p` quantile (nearest rank), as its bucket's upper bound in milliseconds; 0 when
    /// nothing was recorded.
    pub(super) fn percentile(&self, p: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((p * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return FLOOR_MS * GROWTH.powi(i32::try_from(i).unwrap_or(i32::MAX));
            }
        }
        FLOOR_MS * GROWTH.powi(i32::try_from(BUCKETS - 1).unwrap_or(i32::MAX))
    }
}

/// Process CPU time (user + system), where the platform reports it.
pub(super) fn cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        // SAFETY: getrusage only writes the struct it is given, which lives on our stack.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; RUSAGE_SELF is always valid.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut ru) } != 0 {
            return None;
        }
        let tv = |t: libc::timeval| {
            Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
                + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
        };
        Some(tv(ru.ru_utime) + tv(ru.ru_stime))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_one_percent() {
        let mut l = Latencies::default();
        // 1..=100 ms: p50 is 50 ms, p95 95 ms, p99 99 ms (each to within the 1 % bucket).
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.count(), 100);
        for (p, want) in [(0.5, 50.0), (0.95, 95.0), (0.99, 99.0), (1.0, 100.0)] {
            let got = l.percentile(p);
            assert!(
                got >= want && got <= want * GROWTH * 1.0001,
                "p{p}: {got} ms"
            );
        }
        // Nothing recorded: zeros, not a panic; extremes land in the end buckets.
        assert!(Latencies::default().percentile(0.5).abs() < f64::EPSILON);
        let mut x = Latencies::default();
        x.record(Duration::ZERO);
        x.record(Duration::from_secs(100_000));
        assert!((x.percentile(0.5) - FLOOR_MS).abs() < 1e-12);
        assert!(x.percentile(1.0) > 1_000_000.0);
    }
}
