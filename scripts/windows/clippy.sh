#!/usr/bin/env bash
# Lint the Windows build: everything `cargo build --target x86_64-pc-windows-gnu` compiles
# (the library, the CLI, the fixtures) and the library's unit tests, with the Windows-only
# code (#[cfg(windows)]) included. The integration tests and benches drive Linux processes
# (libc, /proc, loop devices) and are not built for Windows. A crate added to the Windows
# build (scripts/windows/build.sh PACKAGES) is covered by --workspace already.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=x86_64-pc-windows-gnu
cargo clippy --target "$TARGET" --workspace --exclude vhdforge-benches --lib --bins -- -D warnings
# --profile test: the library with cfg(test), i.e. its unit tests, without the integration tests.
cargo clippy --target "$TARGET" -p vhdforge-core --lib --profile test -- -D warnings
