// Shared body of the fuzz targets: open the bytes, then exercise the read and map paths a
// little. Any panic, hang or huge allocation is a bug; errors are fine.
pub fn exercise(data: Vec<u8>) {
    let Ok(img) = vhdforge_core::open_bytes(data) else { return };
    let size = img.info().virtual_size;
    let mut v = Vec::new();
    let _ = img.extents(0, size.min(1 << 40), &mut v);
    let mut buf = vec![0u8; 64 << 10];
    for off in [0, size / 2, size.saturating_sub(buf.len() as u64)] {
        let n = (size - off.min(size)).min(buf.len() as u64) as usize;
        let _ = img.read_at(&mut buf[..n], off);
    }
}
