//! Retrying a request: how often, how long to wait (exponential backoff with jitter,
//! docs/azure-page-blob.md §1.4), and a loop for control operations. What is worth
//! retrying is [`Failure::class`]'s decision.

use super::failure::{Class, Failure};
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
/// `on_retry` hears about each retry.
pub async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
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
            Err(f) if f.class() == Class::Fatal || attempt >= policy.max_attempts => return Err(f),
            Err(f) => {
                on_retry(&f);
                tokio::time::sleep(backoff(policy, attempt)).await;
            }
        }
    }
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
