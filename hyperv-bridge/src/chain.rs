//! A disk's chain facts (format, type, sizes, parent) read from its files with vhdforge-core,
//! the same reader prep converts with, so the inventory describes exactly what prep will read.
//! Files are opened read-only; nothing is written.

use crate::plan::model::{ChainElement, DiskFormat, DiskKind};
use std::path::Path;
use vhdforge_core::{open, DiskImage, DiskType, Format, OpenOptions};

/// The chain from `leaf` down to its base, leaf first. A chain that cannot be opened (a moved
/// parent, a damaged file) gives the files that could be read, then one element carrying the
/// error, so the planner reports `hyperv.chain_broken` with vhdforge-core's own message.
pub fn chain_from_files(leaf: &Path) -> Vec<ChainElement> {
    match open(leaf, &OpenOptions::default()) {
        Ok(image) => {
            let mut out = Vec::new();
            let mut cur: Option<&dyn DiskImage> = Some(image.as_ref());
            while let Some(img) = cur {
                out.push(element(img));
                cur = img.parent();
            }
            out
        }
        Err(e) => vec![ChainElement {
            path: leaf.display().to_string(),
            format: None,
            kind: None,
            size: None,
            file_size: None,
            logical_sector_size: None,
            physical_sector_size: None,
            parent_path: None,
            error: Some(e.to_string()),
        }],
    }
}

fn element(img: &dyn DiskImage) -> ChainElement {
    let i = img.info();
    ChainElement {
        path: i.path.display().to_string(),
        format: match i.format {
            Format::Vhd => Some(DiskFormat::Vhd),
            Format::Vhdx => Some(DiskFormat::Vhdx),
            // A raw file is no Hyper-V disk; the schema has no name for it.
            Format::Raw => None,
        },
        kind: Some(match i.disk_type {
            DiskType::Fixed => DiskKind::Fixed,
            DiskType::Dynamic => DiskKind::Dynamic,
            DiskType::Differencing => DiskKind::Differencing,
        }),
        size: Some(i.virtual_size),
        file_size: Some(i.file_size),
        logical_sector_size: Some(i.logical_sector_size),
        physical_sector_size: Some(i.physical_sector_size),
        parent_path: i.parent.as_ref().map(|p| p.display().to_string()),
        error: None,
    }
}
