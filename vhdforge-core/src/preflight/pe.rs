//! The one fact both preflights need from a PE/COFF executable (an EFI loader, the Windows
//! kernel): its `Machine` field. `MZ` at 0, the PE header's offset (`e_lfanew`) at 0x3C,
//! `PE\0\0` there, then the 16-bit machine type (x86-64 is 0x8664, Arm64 0xAA64).

/// The PE machine type from an executable's first bytes, or why they are not a PE image.
pub fn machine(head: &[u8]) -> Result<u16, &'static str> {
    if head.get(..2) != Some(b"MZ") {
        return Err("no MZ signature");
    }
    let at = head
        .get(0x3C..0x40)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or("shorter than a DOS header")?;
    let at = usize::try_from(at).map_err(|_| "PE header offset out of range")?;
    let pe = head
        .get(at..at.saturating_add(6))
        .ok_or("PE header offset beyond the bytes read")?;
    if &pe[..4] != b"PE\0\0" {
        return Err("no PE signature");
    }
    Ok(u16::from_le_bytes([pe[4], pe[5]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pe(machine_type: u16, at: u32) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..2].copy_from_slice(b"MZ");
        h[0x3C..0x40].copy_from_slice(&at.to_le_bytes());
        let a = at as usize;
        h[a..a + 4].copy_from_slice(b"PE\0\0");
        h[a + 4..a + 6].copy_from_slice(&machine_type.to_le_bytes());
        h
    }

    #[test]
    fn machine_is_read_from_a_sound_header_and_what_is_wrong_is_named() {
        assert_eq!(machine(&pe(0x8664, 0x80)), Ok(0x8664));
        // AArch64's BOOTAA64.EFI renamed.
        assert_eq!(machine(&pe(0xAA64, 0x40)), Ok(0xAA64));
        assert_eq!(machine(b"#!grub"), Err("no MZ signature"));
        assert_eq!(machine(b"MZ"), Err("shorter than a DOS header"));
        let mut far = pe(0x8664, 0x80);
        far[0x3C..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(machine(&far), Err("PE header offset beyond the bytes read"));
        // The header may not run past the end either.
        let mut short = pe(0x8664, 0x80);
        short.truncate(0x84);
        assert_eq!(
            machine(&short),
            Err("PE header offset beyond the bytes read")
        );
        let mut bad = pe(0x8664, 0x80);
        bad[0x80] = b'X';
        assert_eq!(machine(&bad), Err("no PE signature"));
    }
}
