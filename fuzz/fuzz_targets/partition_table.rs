//! Partition tables (MBR with extended/logical chains, GPT with its backup) and the volume
//! scan behind `volumes` and `preflight`: LVM labels, file-system identification, the OS
//! classification, then the whole preflight runner on whatever was found.
#![no_main]
#[path = "common.rs"]
mod common;
use vhdforge_core::guest;
use vhdforge_core::preflight::{run_image, OsChoice};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some(img) = common::image(data) else {
        return;
    };
    if let Ok(table) = guest::partitions(&*img) {
        for p in &table.partitions {
            let _ = p.window(&*img);
        }
    }
    let _ = guest::scan(&img);
    let _ = run_image(&img, OsChoice::Auto);
});
