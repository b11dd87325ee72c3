//! BCD stores (a registry hive): the boot manager's default entry and its settings, as the
//! Windows preflight reads them, without log replay.
#![no_main]
#[path = "common.rs"]
mod common;
use vhdforge_core::guest::registry::{bcd::Bcd, Hive};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(hive) = Hive::with_logs(data, &[]) else {
        return;
    };
    if let Ok(store) = Bcd::new(&hive) {
        let _ = store.boot_settings();
    }
});
