//! `vhdforge listing check`: the Marketplace listing's images, each read by a real PNG
//! decoder (the `png` crate, header chunks only) and held against the sizes Partner Center
//! accepts, kept in one table ([`ASSET_SIZES`]) so it can follow Partner Center's rules.

use crate::error::{Error, ErrorKind, Result};
use std::io::Read as _;
use std::path::Path;

/// One kind of listing image and its exact size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AssetSize {
    /// What Partner Center calls it.
    pub kind: &'static str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Every size Partner Center accepts for a VM offer's listing images (PNG only).
pub const ASSET_SIZES: &[AssetSize] = &[
    AssetSize {
        kind: "small logo",
        width: 115,
        height: 115,
    },
    AssetSize {
        kind: "wide logo",
        width: 255,
        height: 115,
    },
    AssetSize {
        kind: "screenshot",
        width: 533,
        height: 324,
    },
];

/// The verdict on one file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AssetReport {
    /// `png`, `jpeg`, `gif`, `bmp`, `webp` or `unknown`.
    pub format: &'static str,
    /// Width and height (PNG only).
    pub width: Option<u32>,
    /// Height.
    pub height: Option<u32>,
    /// The listing image this is, when format and size fit one.
    pub kind: Option<&'static str>,
    /// Its finding code when it does not (`listing.format`, `listing.size`, `listing.png`).
    pub code: Option<&'static str>,
    /// What was found and what is required.
    pub message: String,
}

impl AssetReport {
    /// Whether Partner Center takes the file as it is.
    pub fn ok(&self) -> bool {
        self.code.is_none()
    }
}

fn required() -> String {
    ASSET_SIZES
        .iter()
        .map(|a| format!("{}×{} ({})", a.width, a.height, a.kind))
        .collect::<Vec<_>>()
        .join(", ")
}

fn sniff(head: &[u8]) -> &'static str {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        "png"
    } else if head.starts_with(&[0xff, 0xd8, 0xff]) {
        "jpeg"
    } else if head.starts_with(b"GIF8") {
        "gif"
    } else if head.starts_with(b"BM") {
        "bmp"
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        "webp"
    } else {
        "unknown"
    }
}

/// Check one listing image. A file that cannot be read is an error (`listing.unreadable`);
/// anything Partner Center would refuse is a report with a `code`.
pub fn check_asset(path: &Path) -> Result<AssetReport> {
    let unreadable = |e: std::io::Error| {
        Error::new(
            ErrorKind::Io,
            "listing.unreadable",
            format!("cannot read {}: {e}", path.display()),
        )
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "listing.unreadable",
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mut head = Vec::with_capacity(16);
    (&file)
        .take(16)
        .read_to_end(&mut head)
        .map_err(unreadable)?;
    let format = sniff(&head);
    let report = |width, height, kind, code, message| AssetReport {
        format,
        width,
        height,
        kind,
        code,
        message,
    };
    if format != "png" {
        return Ok(report(
            None,
            None,
            None,
            Some("listing.format"),
            format!(
                "{} is {}; Partner Center takes PNG only: export it as a PNG of one of {}",
                path.display(),
                if format == "unknown" {
                    "not an image format vhdforge knows".to_string()
                } else {
                    format!("a {} image", format.to_uppercase())
                },
                required()
            ),
        ));
    }
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    // Only the header chunks are read; the limit bounds what a hostile file can make the
    // decoder allocate for them.
    decoder.set_limits(png::Limits { bytes: 8 << 20 });
    let info = match decoder.read_info() {
        Ok(r) => r.info().clone(),
        Err(e) => {
            return Ok(report(
                None,
                None,
                None,
                Some("listing.png"),
                format!(
                    "{} has a PNG signature but is damaged ({e}); export it again",
                    path.display()
                ),
            ))
        }
    };
    let (w, h) = (info.width, info.height);
    Ok(match ASSET_SIZES.iter().find(|a| a.width == w && a.height == h) {
        Some(a) => report(
            Some(w),
            Some(h),
            Some(a.kind),
            None,
            format!("{}: PNG {w}×{h}, a {}", path.display(), a.kind),
        ),
        None => report(
            Some(w),
            Some(h),
            None,
            Some("listing.size"),
            format!(
                "{}: PNG {w}×{h}; Partner Center needs exactly one of {}: resize it (no scaling on their side)",
                path.display(),
                required()
            ),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(dir: &Path, name: &str, w: u32, h: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        let f = std::fs::File::create(&p).unwrap();
        let mut enc = png::Encoder::new(f, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(&vec![0x7f; (w * h * 3) as usize])
            .unwrap();
        p
    }

    #[test]
    fn sizes_formats_and_damage() {
        let d = tempfile::tempdir().unwrap();
        for a in ASSET_SIZES {
            let r = check_asset(&png(d.path(), "a.png", a.width, a.height)).unwrap();
            assert!(r.ok(), "{r:?}");
            assert_eq!(r.kind, Some(a.kind));
        }
        let r = check_asset(&png(d.path(), "b.png", 116, 115)).unwrap();
        assert_eq!(r.code, Some("listing.size"));
        assert!(
            r.message.contains("115×115") && r.message.contains("533×324"),
            "{}",
            r.message
        );
        let j = d.path().join("c.png");
        std::fs::write(
            &j,
            [0xff, 0xd8, 0xff, 0xe0, 0, 0x10, b'J', b'F', b'I', b'F'],
        )
        .unwrap();
        let r = check_asset(&j).unwrap();
        assert_eq!((r.format, r.code), ("jpeg", Some("listing.format")));
        // A truncated PNG: the decoder, not a guess, says it is damaged.
        let t = d.path().join("t.png");
        std::fs::write(
            &t,
            &std::fs::read(png(d.path(), "x.png", 115, 115)).unwrap()[..20],
        )
        .unwrap();
        assert_eq!(check_asset(&t).unwrap().code, Some("listing.png"));
        assert_eq!(
            check_asset(d.path()).unwrap_err().code(),
            "listing.unreadable"
        );
    }
}
