//! Initramfs images: concatenated cpio members (newc, odc, dracut's early cpio), each
//! possibly gzip/xz/zstd/lzma compressed, read as a guest file would be.
#![no_main]
#[path = "common.rs"]
mod common;
use vhdforge_core::guest::linux::initramfs;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut f = common::MemFile::new(data);
    let _ = initramfs::read_initramfs(&mut f);
    let text = String::from_utf8_lossy(data);
    let _ = initramfs::parse_modules_builtin(&text);
    for l in text.lines().take(100) {
        let _ = initramfs::module_name(l);
    }
});
