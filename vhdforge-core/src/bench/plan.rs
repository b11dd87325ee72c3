//! The synthetic disk: which requests of `--request-size` hold data, computed on demand.
//!
//! The data requests are spread evenly so that `--data` of the disk holds data (the zero
//! requests are never sent, as `upload` skips zero pages). Request `k` is found by
//! arithmetic instead of a list, so a 4 TiB managed disk with 512-byte requests costs no
//! more memory than an 8 MiB one.

use std::ops::Range;

/// Parts per million of the disk that hold data: exact integer arithmetic for placement.
const PPM: u128 = 1_000_000;

/// The shape of the synthetic disk and which of its requests carry data.
#[derive(Debug, Clone)]
pub(super) struct SyntheticDisk {
    /// Disk area in bytes (the footer page follows it).
    pub disk_size: u64,
    /// Bytes per Put Page (the last request of the disk may be shorter).
    pub request_size: u64,
    /// Share of the disk holding data, in parts per million (1 to 1 000 000).
    ppm: u128,
}

impl SyntheticDisk {
    pub(super) fn new(disk_size: u64, request_size: u64, data_fraction: f64) -> SyntheticDisk {
        // The caller checked 0 < fraction ≤ 1, so this is 1..=1_000_000.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ppm = ((data_fraction * 1e6).round() as u128).clamp(1, PPM);
        SyntheticDisk {
            disk_size,
            request_size,
            ppm,
        }
    }

    /// The output stream's size: the disk area and the 512-byte footer.
    pub(super) fn output_size(&self) -> u64 {
        self.disk_size + 512
    }

    /// Requests of `request_size` that cover the disk area.
    fn slots(&self) -> u128 {
        u128::from(self.disk_size.div_ceil(self.request_size))
    }

    /// How many of them hold data.
    pub(super) fn data_requests(&self) -> u64 {
        u64::try_from(self.slots() * self.ppm / PPM).unwrap_or(u64::MAX)
    }

    /// Data request `k` (0-based, below [`Self::data_requests`]): the slot where the data
    /// share, accumulated slot by slot, reaches `k + 1` whole requests.
    pub(super) fn data_request(&self, k: u64) -> Range<u64> {
        let slot = (u128::from(k) + 1) * PPM;
        let slot = slot.div_ceil(self.ppm) - 1;
        let start = u64::try_from(slot).unwrap_or(u64::MAX) * self.request_size;
        start..(start + self.request_size).min(self.disk_size)
    }

    /// Bytes of data the disk holds (the footer not counted).
    pub(super) fn data_bytes(&self) -> u64 {
        let n = self.data_requests();
        if n == 0 {
            return 0;
        }
        // Only the last slot of the disk can be short.
        let last = self.data_request(n - 1);
        (n - 1) * self.request_size + (last.end - last.start)
    }

    /// The footer page, sent last as `upload` sends it.
    pub(super) fn footer(&self) -> Range<u64> {
        self.disk_size..self.output_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// The arithmetic placement against a plain walk that accumulates the share slot by slot.
    fn naive(disk: u64, req: u64, ppm: u128) -> Vec<u64> {
        let mut out = Vec::new();
        let mut acc = 0u128;
        for i in 0..disk.div_ceil(req) {
            acc += ppm;
            if acc >= PPM {
                acc -= PPM;
                out.push(i * req);
            }
        }
        out
    }

    #[test]
    fn placement_matches_the_plain_walk() {
        // (disk, request size, share): round shares, odd ones, a short last slot, all data.
        for (disk, req, f) in [
            (100 * MIB, 4 * MIB, 0.25),
            (8 * MIB, 4 * MIB, 1.0),
            (64 * MIB, MIB, 0.5),
            (10 * MIB + 512, 4 * MIB, 1.0),
            (37 * MIB, 512 * 1024, 0.333),
            (5 * MIB, 4 * MIB, 0.01),
        ] {
            let d = SyntheticDisk::new(disk, req, f);
            let got: Vec<u64> = (0..d.data_requests())
                .map(|k| d.data_request(k).start)
                .collect();
            assert_eq!(got, naive(disk, req, d.ppm), "{disk} {req} {f}");
            for k in 0..d.data_requests() {
                let r = d.data_request(k);
                assert!(r.start < r.end && r.end <= disk && r.start % 512 == 0);
            }
        }
        let d = SyntheticDisk::new(100 * MIB, 4 * MIB, 0.25);
        assert_eq!(d.data_requests(), 6);
        assert_eq!(d.data_request(0), 12 * MIB..16 * MIB);
        assert_eq!(d.data_bytes(), 24 * MIB);
        // A short last slot counts only its own bytes.
        let d = SyntheticDisk::new(10 * MIB + 512, 4 * MIB, 1.0);
        assert_eq!(d.data_bytes(), 10 * MIB + 512);
        assert_eq!(d.footer(), 10 * MIB + 512..10 * MIB + 1024);
    }

    #[test]
    fn huge_disks_with_tiny_requests_need_no_list() {
        // 4 TiB in 512-byte requests: 8 billion slots, placement still by arithmetic.
        let d = SyntheticDisk::new(4 << 40, 512, 0.25);
        assert_eq!(d.data_requests(), (4u64 << 40) / 512 / 4);
        let last = d.data_request(d.data_requests() - 1);
        assert_eq!(last.end, 4 << 40);
    }
}
