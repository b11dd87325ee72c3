//! After the upload: a blob judged by URL with the same rules as a file
//! ([`inspect_blob`]), and the read-only container SAS Partner Center asks for ([`sas`]).
//!
//! Everything here goes through the shared client ([`crate::storage`]); nothing is written
//! to the blob.

mod check;
pub mod sas;
mod source;

pub use check::{inspect_blob, merge_ranges, RemoteInspection, RemoteOptions};
pub use source::BlobSource;
