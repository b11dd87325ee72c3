//! Partition type identifiers: MBR type bytes and GPT type GUIDs, and the kinds that matter
//! to guest inspection (docs/guest-partitions.md §3).
//!
//! Types are hints, not proof (a root file system or an LVM physical volume often sits in a
//! plain "Linux filesystem" partition): later layers identify content by its signature.

use serde::Serialize;
use std::fmt;
use uuid::Uuid;

/// EFI system partition.
pub const GPT_EFI_SYSTEM: Uuid = Uuid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B);
/// BIOS boot partition (GRUB's core image on a GPT disk booted by BIOS).
pub const GPT_BIOS_BOOT: Uuid = Uuid::from_u128(0x21686148_6449_6E6F_744E_656564454649);
/// Linux filesystem data.
pub const GPT_LINUX_FILESYSTEM: Uuid = Uuid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4);
/// Linux root (x86-64), from the Discoverable Partitions Specification.
pub const GPT_LINUX_ROOT_X86_64: Uuid = Uuid::from_u128(0x4F68BCE3_E8CD_4DB1_96E7_FBCAF984B709);
/// Linux swap.
pub const GPT_LINUX_SWAP: Uuid = Uuid::from_u128(0x0657FD6D_A4AB_43C4_84E5_0933C84B4F4F);
/// Linux LVM physical volume.
pub const GPT_LINUX_LVM: Uuid = Uuid::from_u128(0xE6D6D379_F507_44C2_A23C_238F2A3DF928);
/// Linux software RAID member.
pub const GPT_LINUX_RAID: Uuid = Uuid::from_u128(0xA19D880F_05FC_4D3B_A006_743F0F84911E);
/// Extended boot loader partition (`/boot`).
pub const GPT_XBOOTLDR: Uuid = Uuid::from_u128(0xBC13C2FF_59E6_4262_A352_B275FD6F7172);
/// Microsoft basic data (NTFS, FAT, exFAT volumes).
pub const GPT_MICROSOFT_BASIC_DATA: Uuid = Uuid::from_u128(0xEBD0A0A2_B9E5_4433_87C0_68B6B72699C7);
/// Microsoft reserved partition (MSR).
pub const GPT_MICROSOFT_RESERVED: Uuid = Uuid::from_u128(0xE3C9E316_0B5C_4DB8_817D_F92DF00215AE);
/// Windows recovery environment.
pub const GPT_WINDOWS_RECOVERY: Uuid = Uuid::from_u128(0xDE94BBA4_06D1_4D40_A16A_BFD50179D6AC);

/// MBR type of the protective (or hybrid) record that announces a GPT.
pub const MBR_GPT_PROTECTIVE: u8 = 0xEE;

/// True for the MBR types that announce an extended partition (CHS, LBA and Linux variants).
pub fn is_mbr_extended(t: u8) -> bool {
    matches!(t, 0x05 | 0x0F | 0x85)
}

/// What a partition's type says it holds, for the types guest inspection acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionKind {
    /// EFI system partition (FAT): the guest boots by UEFI.
    EfiSystem,
    /// BIOS boot partition: GRUB on a GPT disk booted by BIOS.
    BiosBoot,
    /// A Linux file system (generic type, or a DPS-specific one such as root x86-64, /boot).
    LinuxFilesystem,
    /// Linux swap.
    LinuxSwap,
    /// Linux LVM physical volume.
    LinuxLvm,
    /// Linux software RAID member.
    LinuxRaid,
    /// Microsoft basic data (or an MBR NTFS/FAT type).
    MicrosoftBasicData,
    /// Microsoft reserved partition (no file system).
    MicrosoftReserved,
    /// Windows recovery environment.
    WindowsRecovery,
    /// MBR extended partition: a container for logical partitions.
    Extended,
    /// MBR record announcing a GPT (protective or hybrid MBR).
    GptProtective,
    /// Anything else.
    Other,
}

impl PartitionKind {
    /// The kind of an MBR type byte.
    pub fn of_mbr(t: u8) -> Self {
        match t {
            0x83 => PartitionKind::LinuxFilesystem,
            0x82 => PartitionKind::LinuxSwap,
            0x8E => PartitionKind::LinuxLvm,
            0xFD => PartitionKind::LinuxRaid,
            0xEF => PartitionKind::EfiSystem,
            0xEE => PartitionKind::GptProtective,
            0x27 => PartitionKind::WindowsRecovery,
            0x06 | 0x07 | 0x0B | 0x0C | 0x0E => PartitionKind::MicrosoftBasicData,
            t if is_mbr_extended(t) => PartitionKind::Extended,
            _ => PartitionKind::Other,
        }
    }

    /// The kind of a GPT type GUID.
    pub fn of_gpt(g: Uuid) -> Self {
        match g {
            GPT_EFI_SYSTEM => PartitionKind::EfiSystem,
            GPT_BIOS_BOOT => PartitionKind::BiosBoot,
            GPT_LINUX_FILESYSTEM | GPT_LINUX_ROOT_X86_64 | GPT_XBOOTLDR => {
                PartitionKind::LinuxFilesystem
            }
            GPT_LINUX_SWAP => PartitionKind::LinuxSwap,
            GPT_LINUX_LVM => PartitionKind::LinuxLvm,
            GPT_LINUX_RAID => PartitionKind::LinuxRaid,
            GPT_MICROSOFT_BASIC_DATA => PartitionKind::MicrosoftBasicData,
            GPT_MICROSOFT_RESERVED => PartitionKind::MicrosoftReserved,
            GPT_WINDOWS_RECOVERY => PartitionKind::WindowsRecovery,
            _ => PartitionKind::Other,
        }
    }

    /// A human name.
    pub fn name(&self) -> &'static str {
        match self {
            PartitionKind::EfiSystem => "EFI system",
            PartitionKind::BiosBoot => "BIOS boot",
            PartitionKind::LinuxFilesystem => "Linux filesystem",
            PartitionKind::LinuxSwap => "Linux swap",
            PartitionKind::LinuxLvm => "Linux LVM",
            PartitionKind::LinuxRaid => "Linux RAID",
            PartitionKind::MicrosoftBasicData => "Microsoft basic data",
            PartitionKind::MicrosoftReserved => "Microsoft reserved",
            PartitionKind::WindowsRecovery => "Windows recovery",
            PartitionKind::Extended => "extended",
            PartitionKind::GptProtective => "GPT protective",
            PartitionKind::Other => "other",
        }
    }
}

impl fmt::Display for PartitionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type identifier exactly as the table stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionType {
    /// An MBR type byte.
    Mbr(u8),
    /// A GPT type GUID.
    Gpt(Uuid),
}

impl PartitionType {
    /// What the type says the partition holds.
    pub fn kind(&self) -> PartitionKind {
        match *self {
            PartitionType::Mbr(t) => PartitionKind::of_mbr(t),
            PartitionType::Gpt(g) => PartitionKind::of_gpt(g),
        }
    }
}

/// MBR types as two lower-case hex digits, GPT types as the upper-case GUID (as `sfdisk` prints them).
impl fmt::Display for PartitionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionType::Mbr(t) => write!(f, "{t:02x}"),
            PartitionType::Gpt(g) => write!(
                f,
                "{}",
                g.hyphenated().encode_upper(&mut Uuid::encode_buffer())
            ),
        }
    }
}

impl Serialize for PartitionType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_matches_the_spec_spelling() {
        assert_eq!(
            PartitionType::Gpt(GPT_EFI_SYSTEM).to_string(),
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
        );
        assert_eq!(PartitionType::Mbr(0x8e).to_string(), "8e");
        assert_eq!(PartitionType::Mbr(5).kind(), PartitionKind::Extended);
        assert_eq!(
            PartitionType::Gpt(GPT_LINUX_LVM).kind(),
            PartitionKind::LinuxLvm
        );
    }
}
