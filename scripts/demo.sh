#!/usr/bin/env bash
# The main job end to end on a built-in sample, on this machine only:
#   1. build a sample disk: a 2 GiB dynamic VHDX holding ~32 MiB of data (made with qemu-img,
#      the way a Hyper-V disk is mostly empty)
#   2. `vhdforge check` it (not Azure-ready: exit 1), `vhdforge convert` it to a fixed VHD,
#      `vhdforge check` the result (exit 0)
#   3. start a local Azurite (the Azure Storage emulator) on 127.0.0.1
#   4. `vhdforge upload` the VHD as a page blob, `vhdforge verify --full` it; then upload the
#      VHDX directly (converted on the fly, no temporary file) and verify that too
#   5. stop Azurite and remove the scratch folder
# Everything it needs is installed by scripts/setup.sh (called first).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

scripts/setup.sh
echo "== building vhdforge (release)"
cargo build --release --quiet -p vhdforge-cli
V="$ROOT/target/release/vhdforge"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/vhdforge-demo.XXXXXX")"
cleanup() {
  "$ROOT/scripts/azurite.sh" stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== 1. sample disk: 2 GiB dynamic VHDX with scattered data"
truncate -s 2G "$WORK/sample.raw"
for mib in 0 1 100 512 513 1024 1500 2047; do
  head -c 5M /dev/urandom | dd of="$WORK/sample.raw" bs=1M seek="$mib" conv=notrunc status=none
done
qemu-img convert -f raw -O vhdx "$WORK/sample.raw" "$WORK/sample.vhdx"
rm "$WORK/sample.raw"
"$V" info "$WORK/sample.vhdx"

echo
echo "== 2. check (expect: not Azure-ready), convert, check again"
"$V" check "$WORK/sample.vhdx" >/dev/null && { echo "unexpected: a VHDX passed check" >&2; exit 1; } || echo "check: exit $? (not Azure-ready, as expected)"
"$V" convert "$WORK/sample.vhdx" "$WORK/sample.vhd"
"$V" check "$WORK/sample.vhd" | tail -1
du -h --apparent-size "$WORK/sample.vhd" | sed 's/^/apparent size: /'
du -h "$WORK/sample.vhd" | sed 's/^/on disk:       /'

echo
echo "== 3. local Azurite"
PORT="$(scripts/azurite.sh start)"
echo "Azurite blob service on 127.0.0.1:$PORT"
# Azurite's well-known development account (public, documented; not a secret).
export AZURE_STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:$PORT/devstoreaccount1;"
BASE="http://127.0.0.1:$PORT/devstoreaccount1/images"

echo
echo "== 4. upload + verify the converted VHD"
"$V" upload --create-container "$WORK/sample.vhd" "$BASE/sample.vhd"
"$V" verify --full "$WORK/sample.vhd" "$BASE/sample.vhd"
echo
echo "== 4b. upload the VHDX directly (converted on the fly), JSON summary"
"$V" upload --json "$WORK/sample.vhdx" "$BASE/sample-direct.vhd"
"$V" verify --full "$WORK/sample.vhdx" "$BASE/sample-direct.vhd"

echo
echo "== done: convert, upload and verify all succeeded; stopping Azurite"
