//! The `vhdforge` command line.
fn main() {}
