//! UTF-16 strings stored in disk metadata: VHD parent locators (`W2ru`/`W2ku`, little-endian),
//! the VHD header's parent name (big-endian; docs/formats.md §1.7, §1.9), VHDX parent
//! locator keys and values (little-endian; docs/formats.md §2.7) and GPT partition names.
//!
//! Two readings share one decoder: fixed-size fields are NUL-terminated and decoded leniently
//! (a name is only used to look for a file, so a stray surrogate should not hide the rest),
//! while length-prefixed strings must be exactly valid UTF-16, since a key that does not decode
//! cannot be matched against the keys the spec defines.

/// The byte order of the 16-bit code units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    /// Least significant byte first (VHD locators, VHDX, GPT).
    Little,
    /// Most significant byte first (the VHD header's parent name).
    Big,
}

/// The code units of `bytes` in `order` (an odd last byte is no unit and is dropped).
fn units(bytes: &[u8], order: ByteOrder) -> impl Iterator<Item = u16> + '_ {
    bytes.chunks_exact(2).map(move |c| match order {
        ByteOrder::Little => u16::from_le_bytes([c[0], c[1]]),
        ByteOrder::Big => u16::from_be_bytes([c[0], c[1]]),
    })
}

/// A NUL-terminated (or field-filling) string: the units before the first NUL, with invalid
/// sequences replaced by U+FFFD.
pub fn until_nul_lossy(bytes: &[u8], order: ByteOrder) -> String {
    let units: Vec<u16> = units(bytes, order).take_while(|&u| u != 0).collect();
    String::from_utf16_lossy(&units)
}

/// A little-endian string that fills `bytes` exactly: `None` when the length is odd or the
/// units are not valid UTF-16 (an unpaired surrogate).
pub fn exact_le(bytes: &[u8]) -> Option<String> {
    if bytes.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = units(bytes, ByteOrder::Little).collect();
    String::from_utf16(&units).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    fn be(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_be_bytes).collect()
    }

    #[test]
    fn until_nul_lossy_cases() {
        let cat = |a: &[u8], b: &[u8]| [a, b].concat();
        // (case, bytes, byte order, expected)
        let cases: Vec<(&str, Vec<u8>, ByteOrder, &str)> = vec![
            // A W2ru locator, NUL padded, with garbage after the NUL that must not show.
            (
                "stops at the first NUL",
                cat(&le(".\\p.vhd"), &[0, 0, b'x', 0]),
                ByteOrder::Little,
                ".\\p.vhd",
            ),
            // The VHD header's parent name is big-endian.
            (
                "big-endian",
                cat(&be("base.vhd"), &[0; 8]),
                ByteOrder::Big,
                "base.vhd",
            ),
            // A field with no NUL at all is read to its end.
            ("no NUL", le("full"), ByteOrder::Little, "full"),
            // An odd trailing byte is not half a unit.
            ("odd length", cat(&le("ab"), b"c"), ByteOrder::Little, "ab"),
            // An unpaired high surrogate becomes U+FFFD, the rest survives.
            (
                "lone surrogate",
                cat(&[0x00, 0xD8], &le("x")),
                ByteOrder::Little,
                "\u{FFFD}x",
            ),
            // Non-BMP characters (surrogate pairs) decode.
            (
                "surrogate pair",
                le("d\u{1F4BE}"),
                ByteOrder::Little,
                "d\u{1F4BE}",
            ),
            // Empty field.
            ("empty", Vec::new(), ByteOrder::Big, ""),
        ];
        for (name, bytes, order, want) in cases {
            assert_eq!(until_nul_lossy(&bytes, order), want, "{name}");
        }
    }

    #[test]
    fn exact_le_cases() {
        // (case, bytes, expected)
        let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
            // A VHDX locator key.
            ("valid", le("relative_path"), Some("relative_path")),
            // NULs are content here: the length says where the string ends.
            ("embedded NUL", le("a\0b"), Some("a\0b")),
            // Half a unit: not a string.
            ("odd length", vec![b'a', 0, b'b'], None),
            // An unpaired low surrogate is not valid UTF-16.
            ("lone surrogate", vec![0x00, 0xDC, b'a', 0], None),
            // Zero-length strings are valid.
            ("empty", Vec::new(), Some("")),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(exact_le(&bytes).as_deref(), want, "{name}");
        }
    }
}
