//! LVM2: the metadata text parser on the raw bytes, and the physical-volume reader (label,
//! metadata-area header, circular text, logical-volume mapping) on them as a disk.
#![no_main]
#[path = "common.rs"]
mod common;
use vhdforge_core::guest::lvm;
use vhdforge_core::guest::Window;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(root) = lvm::text::parse(data) {
        for (_, s) in root.sections() {
            let _ = s.int("seqno");
            let _ = s.str("id");
            let _ = s.section("logical_volumes");
        }
    }
    let Some(img) = common::image(data) else {
        return;
    };
    if let Ok(Some(vg)) = lvm::read_pv(&Window::whole(&*img)) {
        let pv = Window::whole(&*img);
        for lv in &vg.logical_volumes {
            if let Ok(w) = vg.lv_window(lv, &pv) {
                let mut buf = [0u8; 4096];
                let _ = w.read_at(&mut buf, 0);
            }
        }
    }
});
