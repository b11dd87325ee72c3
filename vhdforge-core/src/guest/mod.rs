//! Guest inspection: what lies *inside* the virtual disk — partition tables, LVM2 volumes,
//! the file systems on them, and [`volumes`], which turns a disk into the volumes a user names.
//!
//! Everything here reads through the [`DiskImage`](crate::DiskImage) seam with positional
//! reads, so it works the same on raw disks, VHD, VHDX and differencing chains. A partition
//! is a [`Window`] and a linear logical volume an [`lvm::LvWindow`]: bounds-checked byte
//! ranges of the disk, read the same way. Nothing here trusts a field of the guest's structures: every
//! offset is checked against the disk, every table size is capped, and defects are reported
//! as findings with stable `guest.*` codes instead of panics.

pub mod fs;
pub mod linux;
pub mod lvm;
pub mod partition;
pub mod registry;
pub mod text;
mod tree;
pub mod volumes;
mod window;

pub use partition::{partitions, Generation, Partition, PartitionKind, PartitionTable, Scheme};
pub use tree::GuestTree;
pub use volumes::{scan, DiskVolumes, GuestVolume, OsFamily};
pub use window::Window;
