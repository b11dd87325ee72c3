//! Progress reporting and cancellation for long operations.
//!
//! The library never draws anything: callers pass a [`Progress`] (the CLI renders it with a
//! progress bar on a terminal) and can ask a running operation to stop through it.

/// Receives progress of a long operation; all methods may be called from many threads.
pub trait Progress: Send + Sync {
    /// The amount of work, in bytes, now known.
    fn set_total(&self, _bytes: u64) {}
    /// `bytes` more of the work are done.
    fn advance(&self, _bytes: u64) {}
    /// Whether the operation should stop as soon as it safely can.
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// A [`Progress`] that ignores everything and never cancels.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
