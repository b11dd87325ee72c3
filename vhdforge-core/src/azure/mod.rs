//! Azure's rules and the one image shape Azure takes: a fixed VHD whose virtual size is a
//! whole number of MiB, with the 512-byte footer last (`docs/formats.md §3`,
//! `docs/azure-page-blob.md §6`).
//!
//! - [`rules`]: each rule as a typed [`Rule`]; `check` reports them as findings.
//! - [`Policy`]: which rules the user waived; decided on the typed rule, never on a code string.
//! - [`FixedVhdLayout`]: the byte stream `convert`, `convert --in-place` and `upload` all
//!   produce (disk, zero padding, footer), built by one constructor that applies the rules.

mod layout;
mod policy;
pub mod rules;

pub use layout::{FixedVhdLayout, FooterSource};
pub use policy::Policy;
pub use rules::{
    assess, readiness, round_up_mib, sector_rule, size_rule, Breach, Rule, GIB, MARKETPLACE_OS_MAX,
    MARKETPLACE_OS_MIN, MAX_PAGE_BLOB, MAX_VIRTUAL_SIZE, MIB, MIN_VIRTUAL_SIZE, OS_DISK_SOFT_LIMIT,
};
