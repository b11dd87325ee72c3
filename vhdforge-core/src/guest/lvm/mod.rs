//! LVM2 physical volumes: the label, the newest committed text metadata, and the volume
//! group it describes, with linear logical volumes readable as [`LvWindow`]s
//! (docs/guest-partitions.md §4).
//!
//! Only what is needed to read a guest is interpreted: linear segments (one or more per LV)
//! on the PV being read. Every other segment type (striped over several PVs, mirror, RAID,
//! thin, cache, snapshot ...) is reported as such, never guessed; an LV with one is not
//! readable. Segments on a PV that was not given are reported as missing.

pub mod label;
pub mod mda;
pub mod text;

use super::Window;
use crate::error::{Error, ErrorKind, Result};
use crate::finding::{Finding, Findings};
use serde::Serialize;
use text::{Section, Value};

/// Largest text metadata read (real VGs use a few KiB; the default area is about 1 MiB).
pub const MAX_METADATA_BYTES: u64 = 1 << 20;
/// Most metadata areas looked at per PV (LVM writes one or two).
pub const MAX_METADATA_AREAS: usize = 4;
/// Most logical volumes and segments taken from one VG.
pub const MAX_LVS: usize = 4096;

/// A metadata area is unusable (bad header, checksum, bounds).
pub const CODE_METADATA_AREA: &str = "guest.lvm.metadata_area";
/// The text metadata cannot be parsed or lacks required fields.
pub const CODE_METADATA_SYNTAX: &str = "guest.lvm.metadata_syntax";
/// An LV segment of a type vhdforge does not map (it is reported, not guessed).
pub const CODE_SEGMENT_UNSUPPORTED: &str = "guest.lvm.segment_unsupported";
/// An LV segment lies on a PV that was not given.
pub const CODE_PV_MISSING: &str = "guest.lvm.pv_missing";
/// An LV segment points outside the PV.
pub const CODE_SEGMENT_BOUNDS: &str = "guest.lvm.segment_bounds";

/// LVM's CRC-32: the reflected IEEE polynomial, register seeded with 0xF597A6CF, no final XOR.
pub fn lvm_crc(data: &[u8]) -> u32 {
    let mut crc: u32 = 0xF597_A6CF;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// How an LV segment maps its extents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SegmentMap {
    /// Linear: extents continue on one PV from `pe`.
    Linear {
        /// The PV's name in the metadata (`pv0`).
        pv: String,
        /// First physical extent.
        pe: u64,
    },
    /// Anything else, by its metadata type name (`striped` with several stripes, `raid1`, `thin` ...).
    Unsupported {
        /// The `type` field.
        segment_type: String,
    },
}

/// One segment of a logical volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Segment {
    /// First logical extent it covers.
    pub start_extent: u64,
    /// Extents it covers.
    pub extent_count: u64,
    /// Where the extents are.
    pub map: SegmentMap,
}

/// A logical volume as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogicalVolume {
    /// Its name (`root`).
    pub name: String,
    /// LVM UUID (dashed).
    pub uuid: String,
    /// Has the `VISIBLE` flag (internal sub-volumes of RAID/thin do not).
    pub visible: bool,
    /// Size in bytes (sum of its segments).
    pub size_bytes: u64,
    /// Its segments in logical order.
    pub segments: Vec<Segment>,
}

/// A volume group as the newest metadata on one PV describes it.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeGroup {
    /// VG name.
    pub name: String,
    /// VG UUID.
    pub uuid: String,
    /// Metadata sequence number (higher is newer).
    pub seqno: u64,
    /// Extent size in bytes.
    pub extent_size_bytes: u64,
    /// UUID of the PV that was read.
    pub pv_uuid: String,
    /// The name the metadata gives that PV (`pv0`), if it lists it.
    pub pv_name: Option<String>,
    /// Where extents start on that PV, in bytes.
    pub pe_start_bytes: u64,
    /// Extents on that PV.
    pub pe_count: u64,
    /// Logical volumes.
    pub logical_volumes: Vec<LogicalVolume>,
    /// What was odd.
    pub findings: Vec<Finding>,
}

/// A logical volume made readable: its linear segments mapped onto windows of the disk.
#[derive(Debug, Clone)]
pub struct LvWindow<'a> {
    /// (first LV byte, the disk bytes it maps to), in LV order, contiguous.
    pieces: Vec<(u64, Window<'a>)>,
    len: u64,
}

impl LvWindow<'_> {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// True for an empty LV.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The disk ranges the LV is made of, in LV order (file systems own a copy of them).
    pub fn windows(&self) -> impl Iterator<Item = Window<'_>> + '_ {
        self.pieces.iter().map(|(_, w)| *w)
    }
    /// Read `buf.len()` bytes at `offset` of the LV, across segments as needed.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::guest::window::read_across_pieces(
            self.pieces.len(),
            |i| self.pieces[i].0,
            |i| self.pieces[i].1.len(),
            |i, part, within| self.pieces[i].1.read_at(part, within),
            (self.len, "logical volume"),
            buf,
            offset,
        )
    }
}

impl VolumeGroup {
    /// The LV named `name`.
    pub fn lv(&self, name: &str) -> Option<&LogicalVolume> {
        self.logical_volumes.iter().find(|l| l.name == name)
    }

    /// Map `lv` onto `pv` (the window of the PV this VG was read from). Fails when a segment
    /// is not linear or lies on another PV or outside this one.
    pub fn lv_window<'a>(&self, lv: &LogicalVolume, pv: &Window<'a>) -> Result<LvWindow<'a>> {
        let e = self.extent_size_bytes;
        let mut pieces = Vec::with_capacity(lv.segments.len());
        let mut len = 0u64;
        for s in &lv.segments {
            let fail = |code, msg: String| {
                Error::new(
                    ErrorKind::Unsupported,
                    code,
                    format!("logical volume {}/{}: {msg}", self.name, lv.name),
                )
            };
            let SegmentMap::Linear { pv: pv_name, pe } = &s.map else {
                return Err(fail(
                    CODE_SEGMENT_UNSUPPORTED,
                    format!(
                        "segment at extent {} is {:?}, which vhdforge does not read",
                        s.start_extent, s.map
                    ),
                ));
            };
            if self.pv_name.as_deref() != Some(pv_name.as_str()) {
                return Err(fail(
                    CODE_PV_MISSING,
                    format!(
                        "segment at extent {} lies on {pv_name}, a PV that was not given",
                        s.start_extent
                    ),
                ));
            }
            let bytes = s.extent_count.checked_mul(e);
            let at = pe
                .checked_mul(e)
                .and_then(|o| o.checked_add(self.pe_start_bytes));
            let (Some(bytes), Some(at)) = (bytes, at) else {
                return Err(fail(CODE_SEGMENT_BOUNDS, "segment size overflows".into()));
            };
            if s.start_extent.checked_mul(e) != Some(len) {
                return Err(fail(
                    CODE_SEGMENT_BOUNDS,
                    format!(
                        "segment at extent {} leaves a gap or overlaps the previous one",
                        s.start_extent
                    ),
                ));
            }
            let w = pv.sub(at, bytes).map_err(|_| fail(CODE_SEGMENT_BOUNDS, format!("segment at extent {} maps to bytes {at:#x}+{bytes:#x}, beyond the PV's {:#x} bytes", s.start_extent, pv.len())))?;
            pieces.push((len, w));
            len += bytes;
        }
        Ok(LvWindow { pieces, len })
    }
}

/// Read `pv` as an LVM2 physical volume: `None` when it carries no LVM2 label. Damaged
/// metadata is an `Ok` with findings, or an `Err` only for I/O failures.
pub fn read_pv(pv: &Window<'_>) -> Result<Option<VolumeGroup>> {
    let mut found = None;
    for i in 0..label::LABEL_SCAN_SECTORS {
        let mut sector = [0u8; 512];
        if (i + 1) * 512 > pv.len() {
            break;
        }
        pv.read_at(&mut sector, i * 512)?;
        if let Some(l) = label::parse(&sector, i) {
            found = Some(l);
            break;
        }
    }
    let Some(label) = found else { return Ok(None) };
    let mut findings = Findings::default();
    // The newest committed metadata among the areas (normally one, or two identical).
    let mut best: Option<(u64, Section)> = None;
    for &(off, _) in label.metadata_areas.iter().take(MAX_METADATA_AREAS) {
        match read_text(pv, off)? {
            Ok(text) => match text::parse(&text) {
                Ok(tree) => {
                    let seq = vg_section(&tree)
                        .and_then(|(_, v)| v.int("seqno"))
                        .unwrap_or(-1);
                    let seq = u64::try_from(seq).unwrap_or(0);
                    if best.as_ref().is_none_or(|(s, _)| seq > *s) {
                        best = Some((seq, tree));
                    }
                }
                Err(e) => findings.error(CODE_METADATA_SYNTAX, Some(pv.start() + off), e),
            },
            Err(e) => findings.error(CODE_METADATA_AREA, Some(pv.start() + off), e),
        }
    }
    let Some((_, tree)) = best else {
        findings.error(
            CODE_METADATA_AREA,
            Some(pv.start()),
            format!(
                "PV {} has no readable metadata area; its logical volumes cannot be found",
                label.pv_uuid
            ),
        );
        return Ok(Some(empty_vg(&label, findings)));
    };
    Ok(Some(volume_group(&tree, &label, findings)))
}

fn empty_vg(label: &label::Label, findings: Findings) -> VolumeGroup {
    VolumeGroup {
        name: String::new(),
        uuid: String::new(),
        seqno: 0,
        extent_size_bytes: 0,
        pv_uuid: label.pv_uuid.clone(),
        pv_name: None,
        pe_start_bytes: label.data_areas.first().map_or(0, |d| d.0),
        pe_count: 0,
        logical_volumes: Vec::new(),
        findings: findings.0,
    }
}

/// The committed text of the metadata area at `off`, or why it is unusable.
fn read_text(pv: &Window<'_>, off: u64) -> Result<std::result::Result<Vec<u8>, String>> {
    if off
        .checked_add(mda::MDA_HEADER_SIZE)
        .is_none_or(|e| e > pv.len())
    {
        return Ok(Err(format!("metadata area at {off:#x} is beyond the PV")));
    }
    let mut hb = [0u8; 512];
    pv.read_at(&mut hb, off)?;
    let h = match mda::check(&hb, off) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    if h.committed.flags.get() & mda::RAW_LOCN_IGNORED != 0 {
        return Ok(Err(format!("metadata area at {off:#x} is marked ignored")));
    }
    if h.committed.size.get() > MAX_METADATA_BYTES {
        return Ok(Err(format!(
            "metadata text of {} bytes exceeds the {MAX_METADATA_BYTES}-byte limit",
            h.committed.size.get()
        )));
    }
    let pieces = match mda::text_pieces(&h) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let mut text = Vec::new();
    for (p_off, p_len) in pieces {
        let Some(at) = off
            .checked_add(p_off)
            .filter(|a| a.checked_add(p_len).is_some_and(|e| e <= pv.len()))
        else {
            return Ok(Err(format!(
                "metadata text at {off:#x}+{p_off:#x} is beyond the PV"
            )));
        };
        text.extend(pv.read_vec(at, p_len, MAX_METADATA_BYTES)?);
    }
    let computed = lvm_crc(&text);
    if computed != h.committed.checksum.get() {
        return Ok(Err(format!(
            "metadata text checksum is {:#010x}, its bytes give {computed:#010x}",
            h.committed.checksum.get()
        )));
    }
    if let Some(nul) = text.iter().position(|&b| b == 0) {
        text.truncate(nul);
    }
    Ok(Ok(text))
}

/// The top-level section naming the VG (the only section at the top).
fn vg_section(tree: &Section) -> Option<(&str, &Section)> {
    tree.sections().next()
}

fn uint(s: &Section, key: &str) -> Option<u64> {
    s.int(key).and_then(|v| u64::try_from(v).ok())
}

fn volume_group(tree: &Section, label: &label::Label, mut findings: Findings) -> VolumeGroup {
    let mut vg = empty_vg(label, Findings::default());
    let Some((name, s)) = vg_section(tree) else {
        findings.error(
            CODE_METADATA_SYNTAX,
            None,
            "LVM metadata has no volume-group section",
        );
        vg.findings = findings.0;
        return vg;
    };
    vg.name = name.to_string();
    vg.uuid = s.str("id").unwrap_or_default().to_string();
    vg.seqno = uint(s, "seqno").unwrap_or(0);
    vg.extent_size_bytes = uint(s, "extent_size").unwrap_or(0).saturating_mul(512);
    if vg.extent_size_bytes == 0 {
        findings.error(
            CODE_METADATA_SYNTAX,
            None,
            format!("volume group {name} has no valid extent_size"),
        );
    }
    // Match this PV by UUID, not by the device name recorded when it was created.
    if let Some((pv_name, pv)) = s.section("physical_volumes").and_then(|p| {
        p.sections()
            .find(|(_, pv)| pv.str("id") == Some(label.pv_uuid.as_str()))
    }) {
        vg.pv_name = Some(pv_name.to_string());
        vg.pe_start_bytes = uint(pv, "pe_start").unwrap_or(0).saturating_mul(512);
        vg.pe_count = uint(pv, "pe_count").unwrap_or(0);
    } else {
        findings.error(
            CODE_METADATA_SYNTAX,
            None,
            format!(
                "volume group {name} does not list this PV ({})",
                label.pv_uuid
            ),
        );
    }
    for (lv_name, lv) in s
        .section("logical_volumes")
        .map(|l| l.sections().take(MAX_LVS).collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let visible = lv
            .list("status")
            .is_some_and(|l| l.contains(&Value::Str("VISIBLE".into())));
        let mut segments = Vec::new();
        for (_, seg) in lv.sections().take(MAX_LVS) {
            let (Some(start_extent), Some(extent_count)) =
                (uint(seg, "start_extent"), uint(seg, "extent_count"))
            else {
                findings.error(CODE_METADATA_SYNTAX, None, format!("logical volume {name}/{lv_name} has a segment without start_extent/extent_count"));
                continue;
            };
            let ty = seg.str("type").unwrap_or("");
            let stripes = seg.list("stripes").unwrap_or_default();
            let map = match (ty, uint(seg, "stripe_count"), stripes) {
                ("striped" | "linear", Some(1) | None, [Value::Str(pv), Value::Int(pe)])
                    if *pe >= 0 =>
                {
                    SegmentMap::Linear {
                        pv: pv.clone(),
                        pe: (*pe).unsigned_abs(),
                    }
                }
                _ => {
                    let segment_type = if ty == "striped" {
                        format!(
                            "striped ({} stripes)",
                            uint(seg, "stripe_count").unwrap_or(0)
                        )
                    } else {
                        ty.to_string()
                    };
                    findings.warning(CODE_SEGMENT_UNSUPPORTED, None, format!("logical volume {name}/{lv_name} has a `{segment_type}` segment; vhdforge reads only linear volumes and does not read this one"));
                    SegmentMap::Unsupported { segment_type }
                }
            };
            segments.push(Segment {
                start_extent,
                extent_count,
                map,
            });
        }
        segments.sort_by_key(|s| s.start_extent);
        let extents: u64 = segments
            .iter()
            .map(|s| s.extent_count)
            .fold(0, u64::saturating_add);
        vg.logical_volumes.push(LogicalVolume {
            name: lv_name.to_string(),
            uuid: lv.str("id").unwrap_or_default().to_string(),
            visible,
            size_bytes: extents.saturating_mul(vg.extent_size_bytes),
            segments,
        });
    }
    vg.findings = findings.0;
    vg
}

#[cfg(test)]
mod tests;
