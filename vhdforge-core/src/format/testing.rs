//! Helpers shared by the format tests.

#[cfg(unix)]
use std::path::Path;

/// Run `f` on another thread and fail if it has not returned within `secs`: a hang (a
/// FIFO opened for reading) or an exponential parent search must fail the test, not stall
/// the run.
pub fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("did not return within {secs} s"))
}

/// Make a FIFO at `p` with the `mkfifo` tool (no unsafe code needed).
#[cfg(unix)]
pub fn mkfifo(p: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .expect("run mkfifo");
    assert!(st.success(), "mkfifo {}", p.display());
}
