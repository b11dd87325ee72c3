#!/usr/bin/env bash
# The whole test suite: installs what the tests need (scripts/setup.sh), then runs every
# test of the workspace, including the differential tests against qemu-img and libvhdi and
# the upload tests against a local Azurite (each test starts and stops its own instance),
# and the Windows build's smoke tests under Wine (vhdforge-cli/tests/windows_wine.rs), whose
# vhdforge.exe is cross-built first, here, so that no cargo build runs inside cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/windows/build.sh
scripts/debian-tree.sh   # the real Debian tree of the guest boot tests (built once, cached)
cargo test --workspace --all-targets --no-fail-fast "$@"
