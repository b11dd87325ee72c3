//! Raw images: the file is the disk, byte for byte.
//!
//! The allocation map comes from the filesystem (`SEEK_DATA`/`SEEK_HOLE`): holes are
//! `Unallocated`, everything else is `Data` at the same offset.

use crate::error::{Error, Result};
use crate::finding::Finding;
use crate::image::{
    check_virtual_range, push_extent, Allocation, DiskImage, DiskType, Extent, Format, ImageInfo,
};
use crate::io::ReadAt;
use std::path::Path;
use std::sync::Arc;

/// A raw disk image.
#[derive(Debug)]
pub struct RawImage {
    src: Arc<dyn ReadAt>,
    info: ImageInfo,
    findings: Vec<Finding>,
}

impl RawImage {
    /// Treat `src` as a raw disk.
    pub fn open(src: Arc<dyn ReadAt>, path: &Path) -> Result<Self> {
        let size = src.size();
        let mut findings = Vec::new();
        if size == 0 {
            findings.push(Finding::new(
                crate::Severity::Error,
                "raw.empty",
                None,
                "empty file (0 bytes): not a disk image; check that the copy or export that produced it finished".to_string(),
            ));
        } else if let Some(f) = partition_table_finding(src.as_ref()) {
            findings.push(f);
        }
        if size % 512 != 0 {
            findings.push(Finding::new(
                crate::Severity::Warning,
                "raw.size_unaligned",
                None,
                format!("raw image is {size} bytes, not a whole number of 512-byte sectors; the last partial sector reads as zero-padded when converted"),
            ));
        }
        let info = ImageInfo {
            path: path.to_path_buf(),
            format: Format::Raw,
            disk_type: DiskType::Fixed,
            virtual_size: size,
            logical_sector_size: 512,
            physical_sector_size: 512,
            block_size: None,
            file_size: size,
            identifier: None,
            parent: None,
            parent_identifier: None,
            vhd_footer_size: None,
            creator: None,
        };
        Ok(RawImage {
            src,
            info,
            findings,
        })
    }
}

/// The MBR boot signature at bytes 510..512 of sector 0 (an MBR, or GPT's protective MBR).
const MBR_SIGNATURE: [u8; 2] = [0x55, 0xAA];
/// The GPT header's signature, at the start of LBA 1.
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";

/// A warning when nothing at the start of the file looks like a disk: no MBR boot signature
/// and no GPT header (at LBA 1 for 512- or 4096-byte sectors). A text file or an archive
/// would otherwise be "a fixed raw disk that reads fine". Only a warning: a whole-disk file
/// system or a blank disk is a legitimate raw image too. `None` when the start cannot be
/// read (too short, I/O error): then there is nothing to judge.
fn partition_table_finding(src: &dyn ReadAt) -> Option<Finding> {
    let mut sector = [0u8; 512];
    let len = src.size().min(512) as usize;
    src.read_exact_at(&mut sector[..len], 0).ok()?;
    if len == 512 && sector[510..512] == MBR_SIGNATURE {
        return None;
    }
    for lba1 in [512u64, 4096] {
        let mut sig = [0u8; 8];
        if src.read_exact_at(&mut sig, lba1).is_ok() && &sig == GPT_SIGNATURE {
            return None;
        }
    }
    let blank = sector[..len].iter().all(|&b| b == 0);
    let message = if blank {
        "no VHD/VHDX signature and no partition table (the first sector is all zeros): \
         is this a disk image? It reads as a blank raw disk"
    } else {
        "no VHD/VHDX signature and no partition table (no MBR boot signature, no GPT): \
         is this a disk image? vhdforge reads it as a raw disk, byte for byte"
    };
    Some(Finding::new(
        crate::Severity::Warning,
        "raw.no_partition_table",
        Some(0),
        message.to_string(),
    ))
}

/// Map `[start, start+length)` of a region that sits at `file_base` in `src` using the
/// source's data segments: data segments become `Data`, holes `Unallocated`.
pub fn map_file_region(
    src: &dyn ReadAt,
    file_base: u64,
    start: u64,
    length: u64,
    out: &mut Vec<Extent>,
) -> Result<()> {
    let end = start + length;
    let mut pos = start;
    while pos < end {
        let seg = src
            .next_data(file_base + pos)
            .map_err(|e| Error::io(format!("cannot map {}", src.name()), e))?;
        let Some(seg) = seg else {
            push_extent(
                out,
                Extent {
                    start: pos,
                    length: end - pos,
                    allocation: Allocation::Unallocated,
                },
            );
            break;
        };
        let data_start = (seg.start.saturating_sub(file_base)).clamp(pos, end);
        let data_end = (seg.end.saturating_sub(file_base)).clamp(data_start, end);
        if data_start > pos {
            push_extent(
                out,
                Extent {
                    start: pos,
                    length: data_start - pos,
                    allocation: Allocation::Unallocated,
                },
            );
        }
        if data_end > data_start {
            let allocation = Allocation::Data {
                layer: 0,
                file_offset: file_base + data_start,
            };
            push_extent(
                out,
                Extent {
                    start: data_start,
                    length: data_end - data_start,
                    allocation,
                },
            );
        }
        if data_end <= pos {
            // The source reported no progress; treat the rest as data rather than loop.
            let allocation = Allocation::Data {
                layer: 0,
                file_offset: file_base + pos,
            };
            push_extent(
                out,
                Extent {
                    start: pos,
                    length: end - pos,
                    allocation,
                },
            );
            break;
        }
        pos = data_end;
    }
    Ok(())
}

impl DiskImage for RawImage {
    fn info(&self) -> &ImageInfo {
        &self.info
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_virtual_range(self.info.virtual_size, offset, buf.len() as u64)?;
        self.src
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(format!("cannot read {}", self.src.name()), e).at(offset))
    }

    fn extents(&self, start: u64, length: u64, out: &mut Vec<Extent>) -> Result<()> {
        check_virtual_range(self.info.virtual_size, start, length)?;
        map_file_region(self.src.as_ref(), 0, start, length, out)
    }

    fn findings(&self) -> &[Finding] {
        &self.findings
    }

    fn own_file(&self) -> Option<&std::fs::File> {
        self.src.as_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemSource;

    #[test]
    fn what_the_first_sectors_say() {
        let mbr = {
            let mut v = vec![0u8; 4096];
            v[510..512].copy_from_slice(&MBR_SIGNATURE);
            v
        };
        let gpt4k = {
            let mut v = vec![0u8; 8192];
            v[4096..4104].copy_from_slice(GPT_SIGNATURE);
            v
        };
        // (case, content, expected finding codes)
        let cases: [(&str, Vec<u8>, &[&str]); 6] = [
            // Nothing at all: an error, not "a disk that reads fine".
            ("empty", vec![], &["raw.empty"]),
            // A text file: no MBR, no GPT.
            (
                "text",
                b"hello, world\n".repeat(100),
                &["raw.no_partition_table", "raw.size_unaligned"],
            ),
            // A blank disk: warned, it may be legitimate.
            ("zeros", vec![0u8; 4096], &["raw.no_partition_table"]),
            // An MBR (or GPT's protective MBR).
            ("mbr", mbr, &[]),
            // A GPT on 4096-byte sectors without a protective MBR.
            ("gpt 4k", gpt4k, &[]),
            // Shorter than a sector, not empty.
            (
                "tiny",
                vec![1u8; 100],
                &["raw.no_partition_table", "raw.size_unaligned"],
            ),
        ];
        for (name, data, want) in cases {
            let img = RawImage::open(Arc::new(MemSource::new(data)), Path::new("m")).unwrap();
            let got: Vec<&str> = img.findings().iter().map(|f| f.code.as_str()).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn memory_raw_is_all_data() {
        let img =
            RawImage::open(Arc::new(MemSource::new(vec![1u8; 4096])), Path::new("m")).unwrap();
        let mut v = Vec::new();
        img.extents(0, 4096, &mut v).unwrap();
        assert_eq!(
            v,
            vec![Extent {
                start: 0,
                length: 4096,
                allocation: Allocation::Data {
                    layer: 0,
                    file_offset: 0
                }
            }]
        );
        let mut b = [0u8; 16];
        img.read_at(&mut b, 4080).unwrap();
        assert!(img.read_at(&mut b, 4090).is_err());
    }

    #[test]
    fn sparse_file_holes_are_unallocated() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.raw");
        let mut f = std::fs::File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        drop(f);
        let src = crate::io::FileSource::open(&p).unwrap();
        let img = RawImage::open(Arc::new(src), &p).unwrap();
        let mut v = Vec::new();
        img.extents(0, 64 << 20, &mut v).unwrap();
        let data: u64 = v
            .iter()
            .filter(|e| e.allocation.is_data())
            .map(|e| e.length)
            .sum();
        // Filesystems allocate in blocks; tmpfs/ext4 report the 4 KiB write as one data segment.
        assert!(
            (4096..=1 << 20).contains(&data),
            "data {data} extents {v:?}"
        );
        assert_eq!(v.iter().map(|e| e.length).sum::<u64>(), 64 << 20);
    }
}
