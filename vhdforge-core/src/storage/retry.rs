//! Retrying a request: how often, how long to wait (exponential backoff with jitter,
//! docs/azure-page-blob.md §1.4), and a loop for control operations. What is worth
//! retrying is [`Failure::class`]'s decision.

use super::failure::{Class, Failure};
use crate::progress::Cancel;
use std::time::Duration;

/// Retry behaviour.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time (with jitter).
    pub base_delay: Duration,
    /// Cap on one delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// Run a control operation (HEAD, create, page list, clear, properties, read) with the
/// retry policy: transient failures and throttling back off and retry, fatal ones return.
/// `on_retry` hears about each retry. Once `cancel` is set no new attempt starts and a
/// backoff sleep ends at once: the last failure is returned and the caller, seeing the
/// token, reports the operation as interrupted rather than as that failure.
pub async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    cancel: &Cancel,
    on_retry: &(dyn Fn(&Failure) + Sync),
    mut op: F,
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(f) if f.class() == Class::Fatal || attempt >= policy.max_attempts => {
                tracing::info!(
                    failure = %f.summary(),
                    attempt,
                    "giving up: {}",
                    if f.class() == Class::Fatal { "not retryable" } else { "attempts exhausted" }
                );
                return Err(f);
            }
            Err(f) => {
                let delay = backoff(policy, attempt);
                log_retry(&f, attempt, delay);
                on_retry(&f);
                if !cancel.sleep(delay).await {
                    return Err(f);
                }
            }
        }
    }
}

/// Log a retry decision at `-v`: what failed, which attempt, how long we wait, and whether
/// it was throttling (which also cuts the sending rate).
pub fn log_retry(f: &Failure, attempt: u32, delay: Duration) {
    let throttled = f.class() == Class::Throttle;
    tracing::info!(
        failure = %f.summary(),
        attempt,
        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        throttled,
        "retrying"
    );
}

/// Delay before retry number `attempt` (1-based): exponential, capped, with "equal
/// jitter" (half fixed, half random) so concurrent retries spread out.
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    use rand::Rng;
    let exp = policy
        .base_delay
        .saturating_mul(1u32 << attempt.clamp(1, 16).saturating_sub(1))
        .min(policy.max_delay);
    let half = exp / 2;
    half + half.mul_f64(rand::thread_rng().gen::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_ends_the_retry_loop_during_its_backoff() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let policy = RetryPolicy {
            max_attempts: 100,
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(30),
        };
        let cancel = Cancel::new();
        let c2 = cancel.clone();
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let t = std::time::Instant::now();
        let r: Result<(), Failure> = rt.block_on(async {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                c2.cancel();
            });
            with_retries(&policy, &cancel, &|_| {}, || {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async { Err(Failure::network("connection refused")) }
            })
            .await
        });
        assert!(r.is_err());
        // Without the cancellable sleep this waits 5-10 s for the first backoff.
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(attempts.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
