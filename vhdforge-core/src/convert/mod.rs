//! Conversion of any readable image into an Azure-ready fixed VHD.
//!
//! The output's shape (size rounded up to a whole MiB, the footer) is
//! [`crate::azure::FixedVhdLayout`]; the converter, the in-place conversion and the uploader
//! all produce exactly that byte stream: the virtual disk, zero padding, then the 512-byte
//! footer.

mod clone;
mod in_place;
mod to_file;

/// What the user allows beyond Azure's rules (defined with the rules, in [`crate::azure`]).
pub use crate::azure::Policy;
pub use clone::clone_part;
pub use in_place::{convert_in_place, journal_path_for, InPlaceAction, InPlaceReport};
pub use to_file::{check_output_for, convert_to_file, ConvertOptions, ConvertReport};
