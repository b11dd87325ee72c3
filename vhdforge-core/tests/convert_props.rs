//! Property tests of the converter on random sparse raw images: what comes out reads back
//! equal to the source plus zero padding, with a valid footer, and only non-zero pages are
//! written.

use proptest::prelude::*;
use std::io::{Seek, SeekFrom, Write};
use vhdforge_core::convert::{convert_to_file, ConvertOptions, Policy};
use vhdforge_core::format::vhd::footer::HardDiskFooter;
use vhdforge_core::progress::NoProgress;

const MIB: u64 = 1 << 20;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn converted_output_equals_source_plus_zero_padding(
        size in (20 * MIB)..(26 * MIB),
        runs in prop::collection::vec((0u64..(26 * MIB), 1usize..300_000, any::<u8>()), 0..10),
        threads in 1usize..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("in.raw");
        let mut src = std::fs::File::create(&src_path).unwrap();
        src.set_len(size).unwrap();
        let mut expected = vec![0u8; size as usize];
        for (off, len, seed) in runs {
            if off >= size { continue; }
            let len = (len as u64).min(size - off) as usize;
            let data = fixtures::raw::pattern(u64::from(seed) + off, len);
            src.seek(SeekFrom::Start(off)).unwrap();
            src.write_all(&data).unwrap();
            expected[off as usize..off as usize + len].copy_from_slice(&data);
        }
        drop(src);
        let image = vhdforge_core::open(&src_path, &Default::default()).unwrap();
        let out = dir.path().join("out.vhd");
        let opts = ConvertOptions { policy: Policy { unique_id: Some([9; 16]), time_stamp: Some(77), ..Policy::default() }, force: false, threads, no_clone: true };
        let report = convert_to_file(image.as_ref(), &out, &opts, &NoProgress).unwrap();
        let disk = size.div_ceil(MIB) * MIB;
        prop_assert_eq!(report.output_size, disk + 512);
        prop_assert_eq!(report.padded_bytes, disk - size);
        let got = std::fs::read(&out).unwrap();
        prop_assert_eq!(got.len() as u64, disk + 512);
        prop_assert!(got[..size as usize] == expected[..], "content differs");
        prop_assert!(got[size as usize..disk as usize].iter().all(|&b| b == 0), "padding not zero");
        let footer = HardDiskFooter::from_bytes(got[disk as usize..].try_into().unwrap());
        prop_assert_eq!(footer.current_size.get(), disk);
        prop_assert_eq!(footer.original_size.get(), disk);
        prop_assert_eq!(footer.disk_type.get(), 2);
        prop_assert_eq!(footer.checksum.get(), footer.compute_checksum());
        prop_assert_eq!(footer.unique_id, [9; 16]);
        // Footer round trip: bytes -> struct -> bytes.
        prop_assert_eq!(&footer.to_bytes()[..], &got[disk as usize..]);
        // Written bytes are exactly the non-zero 4 KiB pages of the source.
        let nonzero_pages = expected.chunks(4096).filter(|c| c.iter().any(|&b| b != 0)).map(|c| c.len() as u64).sum::<u64>();
        prop_assert_eq!(report.data_bytes_written, nonzero_pages);
    }
}
