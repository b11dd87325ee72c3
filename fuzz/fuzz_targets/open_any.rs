//! Any bytes through format detection and the matching parser.
#![no_main]
#[path = "common.rs"]
mod common;
libfuzzer_sys::fuzz_target!(|data: &[u8]| common::exercise(data.to_vec()));
