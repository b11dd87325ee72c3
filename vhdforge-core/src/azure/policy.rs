//! What the user allows beyond Azure's rules.

use super::rules::Rule;

/// What the user allows beyond Azure's rules, and the footer identity to write.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Convert 4096-byte-sector images although the guest will then see 512-byte sectors.
    pub allow_4k_sectors: bool,
    /// Produce images outside Azure's 20 MiB – 32 767 GiB range.
    pub allow_any_size: bool,
    /// Unique id for the footer (default: a fresh random one).
    pub unique_id: Option<[u8; 16]>,
    /// Footer time stamp in seconds since 2000-01-01 (default: now).
    pub time_stamp: Option<u32>,
}

impl Policy {
    /// True when the user waived `rule`: the size range with `allow_any_size`, the sector
    /// rule with `allow_4k_sectors`. Every other rule is what makes the output a fixed VHD
    /// at all, so it cannot be waived.
    pub fn allows(&self, rule: Rule) -> bool {
        match rule {
            Rule::TooSmall | Rule::TooLarge => self.allow_any_size,
            Rule::SectorSize => self.allow_4k_sectors,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_flag_waives_only_its_rules() {
        let none = Policy::default();
        let any_size = Policy {
            allow_any_size: true,
            ..Policy::default()
        };
        let sectors = Policy {
            allow_4k_sectors: true,
            ..Policy::default()
        };
        // (rule, waived by allow_any_size, waived by allow_4k_sectors)
        let cases = [
            (Rule::TooSmall, true, false),
            (Rule::TooLarge, true, false),
            (Rule::SectorSize, false, true),
            (Rule::NotFixedVhd, false, false),
            (Rule::SizeUnaligned, false, false),
            (Rule::FileLength, false, false),
            (Rule::Footer511, false, false),
        ];
        for (rule, by_size, by_sectors) in cases {
            assert!(!none.allows(rule), "{rule:?} waived by default");
            assert_eq!(any_size.allows(rule), by_size, "{rule:?}");
            assert_eq!(sectors.allows(rule), by_sectors, "{rule:?}");
        }
    }
}
