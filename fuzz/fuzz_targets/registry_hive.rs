//! The registry hive reader: the input is a primary hive file, optionally followed by a log
//! (the first 4 bytes, little-endian, give the primary's length). Opens it with log replay,
//! walks every key, decodes every value and reads the BCD settings. Errors are fine; any
//! panic, hang or oversized allocation is a bug.
#![no_main]
use vhdforge_core::guest::registry::{bcd::Bcd, Hive};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (primary, log) = match data.get(..4) {
        Some(n) => {
            let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
            let rest = &data[4..];
            rest.split_at(n.min(rest.len()))
        }
        None => (data, &[][..]),
    };
    let logs: Vec<&[u8]> = if log.is_empty() {
        Vec::new()
    } else {
        vec![log]
    };
    let Ok(hive) = Hive::with_logs(primary, &logs) else {
        return;
    };
    let _ = hive.walk(&mut |_, key| {
        for v in key.values()? {
            let _ = v.data();
        }
        Ok(())
    });
    let _ = hive.key("CurrentControlSet\\Control\\Terminal Server");
    if let Ok(store) = Bcd::new(&hive) {
        let _ = store.boot_settings();
    }
    let _ = hive.to_file_bytes();
});
