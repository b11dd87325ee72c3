//! Benchmarks (see benches/README.md).
fn main() {}
