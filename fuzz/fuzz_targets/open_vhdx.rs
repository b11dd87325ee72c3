//! The VHDX parser: the input gets the `vhdxfile` signature so detection picks VHDX.
#![no_main]
#[path = "common.rs"]
mod common;
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut d = data.to_vec();
    if d.len() < 8 {
        d.resize(8, 0);
    }
    d[..8].copy_from_slice(b"vhdxfile");
    common::exercise(d);
});
