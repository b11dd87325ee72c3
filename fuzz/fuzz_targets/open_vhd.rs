//! The VHD parser: the input gets a `conectix` cookie at its end so detection picks VHD.
#![no_main]
#[path = "common.rs"]
mod common;
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut d = data.to_vec();
    if d.len() < 512 {
        d.resize(512, 0);
    }
    let n = d.len();
    d[n - 512..n - 504].copy_from_slice(b"conectix");
    common::exercise(d);
});
