//! What the guest-command tests (`ls`, `cat`, `volumes`) share: running the built binary.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A test path as the `&str` argument the binary takes (test paths are always UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Run `vhdforge ARGS` with no stdin and return what it printed and how it exited.
pub fn vhdforge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vhdforge"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}
