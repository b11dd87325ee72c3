//! Linux guests: what boots — the boot loader's default entry and its effective kernel
//! command line ([`boot`], parsing GRUB's script language in [`script`]) — and which
//! drivers the default kernel can load before the root file system is mounted
//! ([`initramfs`], plus `modules.builtin`). `docs/guest-boot.md` states the rules followed
//! and where each comes from.

pub mod boot;
pub mod initramfs;
pub mod script;
