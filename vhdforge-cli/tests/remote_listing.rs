//! `vhdforge listing check` (issue 14): the listing images Partner Center takes, judged
//! by a PNG decoder; a wrong size or a JPEG fails naming the required sizes.

mod remote_support;

use remote_support::{run, vhdforge};
use std::path::{Path, PathBuf};

fn png(dir: &Path, name: &str, w: u32, h: u32) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    let mut enc = png::Encoder::new(f, w, h);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(&vec![0x40; (w * h * 4) as usize])
        .unwrap();
    p
}

#[test]
fn listing_images_are_checked_for_format_and_size() {
    let d = tempfile::tempdir().unwrap();
    let good = [
        png(d.path(), "small.png", 115, 115),
        png(d.path(), "wide.png", 255, 115),
        png(d.path(), "shot.png", 533, 324),
    ];
    let (code, out, err) = run(vhdforge().args(["listing", "check"]).args(&good));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("small logo") && out.contains("wide logo") && out.contains("screenshot"),
        "{out}"
    );

    let big = png(d.path(), "big.png", 1280, 720);
    let jpeg = d.path().join("logo.jpg");
    std::fs::write(
        &jpeg,
        [
            0xff, 0xd8, 0xff, 0xe0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 1,
        ],
    )
    .unwrap();
    let (code, out, _) = run(vhdforge()
        .args(["listing", "check", "--json"])
        .args(&good)
        .arg(&big)
        .arg(&jpeg));
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 5);
    assert!(files[..3].iter().all(|f| f["ok"] == true));
    assert_eq!(files[3]["code"], "listing.size");
    assert_eq!(
        (files[3]["width"].as_u64(), files[3]["height"].as_u64()),
        (Some(1280), Some(720))
    );
    assert!(files[3]["message"].as_str().unwrap().contains("533×324"));
    assert_eq!(files[4]["code"], "listing.format");
    assert_eq!(files[4]["format"], "jpeg");
    assert!(files[4]["message"].as_str().unwrap().contains("PNG"));
    assert_eq!(v["sizes"].as_array().unwrap().len(), 3);

    let (code, out, _) = run(vhdforge()
        .args(["listing", "check", "--json"])
        .arg(d.path().join("missing.png")));
    assert_eq!(code, 2);
    assert!(out.contains("listing.unreadable"), "{out}");
}
