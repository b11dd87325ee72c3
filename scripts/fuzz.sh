#!/usr/bin/env bash
# Run the fuzz targets for a while each (not part of CI; see fuzz/README.md).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # default: 60 s, every guest target
#
# Needs root (the seed builder uses loop devices and a FUSE mount), a nightly toolchain
# and cargo-fuzz (`cargo install cargo-fuzz`). Seeds are made once by fuzz/seeds from
# images the real mkfs/sfdisk/LVM/hivex tools write (fuzz/corpus/<target>, not committed);
# what a run finds goes to fuzz/artifacts/<target>/, its log to fuzz/logs/<target>.log.
# Our memory rule (under 256 MiB whatever the input) is held by -malloc_limit_mb=256: any
# allocation past it is reported with its stack as an out-of-memory crash. The resident
# limit is 256 MiB where the inputs are small; the disk-image targets keep MiB-sized inputs
# in libFuzzer's corpus under AddressSanitizer (shadow memory, quarantine), so their process
# is allowed 1 GiB in all. One process (the machine is shared: it runs under `nice`), 20 s
# per input.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
guest=(partition_table lvm_metadata fs_ext4 fs_xfs fs_fat fs_ntfs registry_hive bcd grub_cfg initramfs)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${guest[@]}"); fi

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 2; }
rustup toolchain list | grep -q '^nightly' || { echo "a nightly toolchain is missing: rustup toolchain install nightly" >&2; exit 2; }

rss_limit() {
    case "$1" in
        fs_* | partition_table | lvm_metadata) echo 1024 ;;
        *) echo 256 ;;
    esac
}

# Largest input each target is given: above its biggest seed (the smallest XFS mkfs.xfs
# makes is 16 MiB), small for the text and archive targets so mutations stay dense.
max_len() {
    case "$1" in
        fs_xfs) echo $((17 << 20)) ;;
        fs_ext4 | fs_fat | fs_ntfs | partition_table) echo $((4 << 20)) ;;
        lvm_metadata) echo $((2 << 20)) ;;
        registry_hive | bcd) echo $((256 << 10)) ;;
        *) echo $((64 << 10)) ;;
    esac
}

missing=()
for t in "${targets[@]}"; do
    [ -n "$(ls -A "fuzz/corpus/$t" 2>/dev/null)" ] || missing+=("$t")
done
if [ "${#missing[@]}" -gt 0 ]; then
    nice -n 10 cargo run -q --manifest-path fuzz/seeds/Cargo.toml --target-dir target -- fuzz/corpus "${missing[@]}"
fi

mkdir -p fuzz/logs
status=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/artifacts/$t" "fuzz/corpus/$t"
    echo "== $t: ${secs}s"
    # The corpus directory is read for seeds and receives what the run finds new.
    # A small quarantine keeps AddressSanitizer's own share of the resident set down.
    if ! (cd fuzz && ASAN_OPTIONS=quarantine_size_mb=16 nice -n 10 cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb="$(rss_limit "$t")" -malloc_limit_mb=256 \
        -max_len="$(max_len "$t")" -timeout=20 -jobs=1 -workers=1 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 \
        >"logs/$t.log" 2>&1); then
        echo "   FOUND something: see fuzz/logs/$t.log and fuzz/artifacts/$t/"
        status=1
    fi
    # With -jobs the job writes fuzz-0.log, which libFuzzer also copies into its own output.
    rm -f fuzz/fuzz-0.log
    grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs|ERROR: libFuzzer|SUMMARY' "fuzz/logs/$t.log" | sed 's/^/   /' || true
done
exit "$status"
