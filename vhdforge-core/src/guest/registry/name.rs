//! Key and value names (`docs/guest-registry.md` §4): stored either as 8-bit Latin-1 (each
//! byte one UTF-16 unit below 256, as hivex and Windows read them) or as UTF-16LE, and
//! compared case-insensitively one UTF-16 unit at a time, as Windows does.

/// Decode a stored name.
pub fn decode(bytes: &[u8], latin1: bool) -> String {
    if latin1 {
        bytes.iter().map(|&b| char::from(b)).collect()
    } else {
        utf16_lossy(bytes)
    }
}

/// Every UTF-16LE unit of `bytes` (an odd last byte dropped), unpaired surrogates as U+FFFD:
/// names are length-prefixed, so a NUL is part of the name, not its end.
pub fn utf16_lossy(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// One UTF-16 unit upcased 1:1, approximating Windows' `RtlUpcaseUnicodeChar`: a unit whose
/// uppercase is a single BMP character maps to it; a unit whose uppercase is several
/// characters (`ß`) or outside the BMP stays itself; `µ` stays itself (Windows' table keeps
/// it, Unicode maps it to Greek `Μ`).
fn upcase_unit(u: u16) -> u16 {
    if u < 0x80 {
        return u8::try_from(u).map_or(u, |b| u16::from(b.to_ascii_uppercase()));
    }
    if u == 0x00B5 {
        return u;
    }
    let Some(c) = char::from_u32(u32::from(u)) else {
        return u; // a surrogate half
    };
    let mut up = c.to_uppercase();
    match (up.next(), up.next()) {
        (Some(one), None) => u16::try_from(u32::from(one)).unwrap_or(u),
        _ => u,
    }
}

/// Whether two names are equal ignoring case the way the registry does (unit by unit).
pub fn eq_ignore_case(left: &str, right: &str) -> bool {
    let mut l = left.encode_utf16();
    let mut r = right.encode_utf16();
    loop {
        match (l.next(), r.next()) {
            (None, None) => return true,
            (Some(p), Some(q)) if upcase_unit(p) == upcase_unit(q) => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons() {
        // (case, a, b, equal?)
        let cases = [
            ("ascii case", "ControlSet001", "CONTROLSET001", true),
            ("latin-1 letters upcase", "éÿ", "ÉŸ", true),
            ("sharp s has no 1:1 uppercase", "ß", "SS", false),
            ("micro sign kept as Windows does", "µ", "Μ", false),
            ("different lengths", "abc", "abcd", false),
            ("cyrillic", "ключ", "КЛЮЧ", true),
        ];
        for (case, a, b, want) in cases {
            assert_eq!(eq_ignore_case(a, b), want, "{case}");
        }
    }

    #[test]
    fn latin1_names_decode_byte_per_char() {
        assert_eq!(decode(&[0x41, 0xE9, 0xFF], true), "Aéÿ");
        assert_eq!(decode(&[0x41, 0, 0xE9, 0], false), "Aé");
    }
}
