//! The xfs reader on the bytes as a volume: first through `fs::open` (identification, as
//! every caller reaches it), then directly, so inputs without a clean signature still
//! reach the parser; then a bounded walk that lists, stats, resolves and reads.
#![no_main]
#[path = "common.rs"]
mod common;
use vhdforge_core::guest::fs::{self, XfsFs};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some(vol) = common::volume(data) else {
        return;
    };
    if let Ok(f) = fs::open(vol.clone()) {
        common::walk(f.as_ref());
    }
    if let Ok(f) = XfsFs::open(vol) {
        common::walk(&f);
    }
});
