//! LVM reader tests on PVs built in memory: the ring's wrap-around, the newest of two
//! metadata areas, segment types that are reported instead of read, and a proptest that
//! damaged labels, headers and text never panic.

use super::*;
use crate::image::DiskImage;
use proptest::prelude::*;

const PV_UUID: &str = "Dn8ACF4ij20rpVCos6UPAk78zar0IAmd";
const PV_LEN: usize = 8 << 20;
const AREA: u64 = 64 << 10;

fn put_u32(d: &mut [u8], off: usize, v: u32) {
    d[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(d: &mut [u8], off: usize, v: u64) {
    d[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn metadata(seqno: u64, root_segments: &str) -> String {
    format!(
        r#"vg0 {{
id = "vgid"
seqno = {seqno}
extent_size = 2048
physical_volumes {{
pv0 {{
id = "{}"
device = "/dev/sda2"
pe_start = 2048
pe_count = 7
}}
}}
logical_volumes {{
root {{
id = "rootid"
status = ["READ", "WRITE", "VISIBLE"]
{root_segments}
}}
}}
}}
contents = "Text Format Volume Group"
"#,
        label::dashed_uuid(PV_UUID.as_bytes())
    )
}

const TWO_LINEAR: &str = r#"segment_count = 2
segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 3] }
segment2 { start_extent = 2 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv0", 0] }"#;

/// A PV with its label in sector 1, one metadata area at 4 KiB whose committed text starts
/// at `text_offset` in the area (wrapping when it runs past the end), extents from 1 MiB.
fn pv(text: &str, text_offset: u64) -> Vec<u8> {
    let mut d = vec![0u8; PV_LEN];
    let s = &mut d[512..1024];
    s[..8].copy_from_slice(label::LABEL_ID);
    put_u64(s, 8, 1);
    put_u32(s, 20, 32);
    s[24..32].copy_from_slice(label::LABEL_TYPE);
    s[32..64].copy_from_slice(PV_UUID.as_bytes());
    put_u64(s, 64, PV_LEN as u64);
    put_u64(s, 72, 1 << 20); // data area
                             // {0,0} ends the data list at 88; the metadata list follows at 104.
    put_u64(s, 104, 4096);
    put_u64(s, 112, AREA);
    let c = lvm_crc(&s[20..]);
    put_u32(s, 16, c);
    let t = text.as_bytes();
    let len = t.len() as u64;
    let first = len.min(AREA - text_offset) as usize;
    let base = 4096usize;
    d[base + text_offset as usize..base + text_offset as usize + first]
        .copy_from_slice(&t[..first]);
    d[base + 512..base + 512 + t.len() - first].copy_from_slice(&t[first..]);
    let h = &mut d[base..base + 512];
    h[4..20].copy_from_slice(mda::MDA_MAGIC);
    put_u32(h, 20, 1);
    put_u64(h, 24, 4096);
    put_u64(h, 32, AREA);
    put_u64(h, 40, text_offset);
    put_u64(h, 48, len);
    put_u32(h, 56, lvm_crc(t));
    let c = lvm_crc(&h[4..]);
    put_u32(h, 0, c);
    // Each extent (1 MiB) starts with its physical extent number.
    for pe in 0..7u8 {
        d[(1 << 20) + (pe as usize) * (1 << 20)] = b'A' + pe;
    }
    d
}

fn read(d: Vec<u8>) -> (Box<dyn DiskImage>, Option<VolumeGroup>) {
    let img = crate::open_bytes(d).unwrap();
    let vg = read_pv(&Window::whole(img.as_ref())).unwrap();
    (img, vg)
}

// LVM's CRC is proven against labels and metadata pvcreate/vgcreate wrote in
// tests/guest_lvm.rs: a wrong CRC would reject them.
#[test]
fn a_two_segment_linear_lv_reads_its_extents_in_logical_order() {
    let (img, vg) = read(pv(&metadata(3, TWO_LINEAR), 512));
    let vg = vg.unwrap();
    assert!(vg.findings.is_empty(), "{:?}", vg.findings);
    assert_eq!(
        (vg.name.as_str(), vg.seqno, vg.extent_size_bytes),
        ("vg0", 3, 1 << 20)
    );
    assert_eq!(vg.pv_name.as_deref(), Some("pv0"));
    let root = vg.lv("root").unwrap();
    assert_eq!(root.size_bytes, 3 << 20);
    let w = vg.lv_window(root, &Window::whole(img.as_ref())).unwrap();
    let mut b = [0u8; 1];
    for (le, want) in [(0u64, b'D'), (1, b'E'), (2, b'A')] {
        w.read_at(&mut b, le << 20).unwrap();
        assert_eq!(b[0], want, "extent {le}");
    }
    assert!(w.read_at(&mut b, 3 << 20).is_err());
}

#[test]
fn text_wrapping_round_the_ring_is_joined() {
    let text = metadata(9, TWO_LINEAR);
    // Start 100 bytes before the area's end: the rest continues right after the header.
    let (_, vg) = read(pv(&text, AREA - 100));
    let vg = vg.unwrap();
    assert!(vg.findings.is_empty(), "{:?}", vg.findings);
    assert_eq!(vg.seqno, 9);
}

#[test]
fn unsupported_segments_are_reported_and_not_read() {
    let thin = r#"segment1 { start_extent = 0 extent_count = 2 type = "thin" thin_pool = "pool" device_id = 1 }"#;
    let striped = r#"segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 2 stripe_size = 128 stripes = ["pv0", 0, "pv1", 0] }"#;
    for (seg, name) in [(thin, "thin"), (striped, "striped (2 stripes)")] {
        let (img, vg) = read(pv(&metadata(1, seg), 512));
        let vg = vg.unwrap();
        assert_eq!(
            vg.findings
                .iter()
                .map(|f| f.code.as_str())
                .collect::<Vec<_>>(),
            [CODE_SEGMENT_UNSUPPORTED]
        );
        let root = vg.lv("root").unwrap();
        assert_eq!(
            root.segments[0].map,
            SegmentMap::Unsupported {
                segment_type: name.into()
            }
        );
        let e = vg
            .lv_window(root, &Window::whole(img.as_ref()))
            .unwrap_err();
        assert_eq!(e.code(), CODE_SEGMENT_UNSUPPORTED);
    }
}

#[test]
fn segments_on_another_pv_or_past_this_one_are_refused() {
    let other = r#"segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv1", 0] }"#;
    let past = r#"segment1 { start_extent = 0 extent_count = 100 type = "striped" stripe_count = 1 stripes = ["pv0", 0] }"#;
    for (seg, code) in [(other, CODE_PV_MISSING), (past, CODE_SEGMENT_BOUNDS)] {
        let (img, vg) = read(pv(&metadata(1, seg), 512));
        let vg = vg.unwrap();
        let e = vg
            .lv_window(vg.lv("root").unwrap(), &Window::whole(img.as_ref()))
            .unwrap_err();
        assert_eq!(e.code(), code);
    }
}

#[test]
fn damaged_text_is_a_finding() {
    let mut d = pv(&metadata(1, TWO_LINEAR), 512);
    d[4096 + 600] ^= 1;
    let (_, vg) = read(d);
    let codes: Vec<_> = vg
        .unwrap()
        .findings
        .iter()
        .map(|f| f.code.as_str())
        .collect();
    assert_eq!(codes, [CODE_METADATA_AREA, CODE_METADATA_AREA]);
}

#[test]
fn no_label_is_not_a_pv() {
    let (_, vg) = read(vec![0u8; 1 << 20]);
    assert!(vg.is_none());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Bytes changed in the label, the area header and the text never panic; when the
    /// checksums are recomputed the parser and the mapping run on the damaged values too.
    #[test]
    fn mutated_pvs_never_panic(flips in proptest::collection::vec((prop::sample::select(vec![512usize, 4096, 4096 + 512]), 0usize..512, any::<u8>()), 1..10), reseal in any::<bool>()) {
        let mut d = pv(&metadata(1, TWO_LINEAR), 512);
        for (base, off, v) in flips {
            d[base + off] = v;
        }
        if reseal {
            let c = lvm_crc(&d[512 + 20..1024]);
            put_u32(&mut d, 512 + 16, c);
            let len = u64::from_le_bytes(d[4096 + 48..4096 + 56].try_into().unwrap()).min(4096) as usize;
            let c = lvm_crc(&d[4096 + 512..4096 + 512 + len]);
            put_u32(&mut d, 4096 + 56, c);
            let c = lvm_crc(&d[4096 + 4..4096 + 512]);
            put_u32(&mut d, 4096, c);
        }
        let (img, vg) = read(d);
        if let Some(vg) = vg {
            for lv in &vg.logical_volumes {
                if let Ok(w) = vg.lv_window(lv, &Window::whole(img.as_ref())) {
                    let mut b = [0u8; 16];
                    let _ = w.read_at(&mut b, 0);
                }
            }
        }
    }
}
