#!/usr/bin/env bash
# Cross-build vhdforge for Windows (x86_64-pc-windows-gnu, mingw-w64) and prepare what the
# Wine smoke tests (vhdforge-cli/tests/windows_wine.rs) run it with:
#   - target/x86_64-pc-windows-gnu/debug/vhdforge.exe (the packages in PACKAGES below);
#   - next to it bcryptprimitives.dll, a shim supplying ProcessPrng, which Rust's standard
#     library imports and Wine 8 lacks (scripts/windows/prng-shim.c), and holdopen.exe, a
#     helper that holds a file open the way a running VM does (scripts/windows/holdopen.c);
#   - a private Wine prefix, target/wine-prefix, created once and then reused.
# Needs what scripts/setup.sh installs (mingw-w64, wine64, the rustup target); fails, never
# skips, when something is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

TARGET=x86_64-pc-windows-gnu
# The workspace packages built for Windows: add a crate here (e.g. hyperv-bridge) and CI
# builds it too. Lints cover the whole workspace already (.ci/run).
PACKAGES=(vhdforge-cli)

die() { echo "windows/build: $*" >&2; exit 1; }
command -v x86_64-w64-mingw32-gcc >/dev/null || die "x86_64-w64-mingw32-gcc missing: run scripts/setup.sh (gcc-mingw-w64-x86-64-win32)"
if command -v rustup >/dev/null; then
  rustup target list --installed | grep -qx "$TARGET" || die "Rust target $TARGET missing: run scripts/setup.sh (rustup target add $TARGET)"
fi
WINE=""
for w in /usr/lib/wine/wine64 wine64 wine; do
  if command -v "$w" >/dev/null 2>&1; then WINE=$(command -v "$w"); break; fi
done
[ -n "$WINE" ] || die "Wine missing: run scripts/setup.sh (wine64)"
WINESERVER=$(command -v /usr/lib/wine/wineserver || command -v wineserver) || die "wineserver missing"

target_dir=${CARGO_TARGET_DIR:-target}
out="$target_dir/$TARGET/debug"

pkg_args=()
for p in "${PACKAGES[@]}"; do pkg_args+=(-p "$p"); done
echo "windows/build: cargo build --target $TARGET ${pkg_args[*]}" >&2
timeout 3600 cargo build --target "$TARGET" "${pkg_args[@]}"

# Rebuilt only when their source changed.
build_c() { # output source extra-args...
  local o=$1 s=$2; shift 2
  if [ ! -e "$o" ] || [ "$s" -nt "$o" ]; then
    timeout 120 x86_64-w64-mingw32-gcc -O2 -Wall -o "$o.tmp.$$" "$s" "$@"
    mv -f "$o.tmp.$$" "$o"
  fi
}
build_c "$out/bcryptprimitives.dll" scripts/windows/prng-shim.c -shared -ladvapi32
build_c "$out/holdopen.exe" scripts/windows/holdopen.c -municode

# The prefix: created once (wineboot takes ~20 s), reused by every later run.
prefix="$target_dir/wine-prefix"
if [ ! -e "$prefix/system.reg" ]; then
  echo "windows/build: creating the Wine prefix $prefix" >&2
  mkdir -p "$prefix"
  prefix=$(cd "$prefix" && pwd)
  WINEPREFIX="$prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree=;mshtml=" \
    timeout 300 "$WINE" wineboot -i >/dev/null 2>&1 || true
  WINEPREFIX="$prefix" timeout 60 "$WINESERVER" -w || true
  [ -e "$prefix/system.reg" ] || die "wineboot did not create the prefix $prefix"
fi
echo "windows/build: $out/vhdforge.exe ready (sha256 $(sha256sum "$out/vhdforge.exe" | cut -c1-16)…)" >&2
