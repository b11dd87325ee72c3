#!/usr/bin/env bash
# Install everything vhdforge's tests and demo need on a fresh Debian/Ubuntu machine:
#   - the oracles: qemu-img (qemu-utils) and libvhdi (vhdiinfo, vhdimount, python3-libvhdi);
#     sfdisk, partx, sgdisk and lvm2 for the guest partition/volume tests; e2fsprogs,
#     xfsprogs, btrfs-progs, dosfstools, mtools and ntfs-3g/wimtools for the guest file-system
#     and clone tests; hivex for the registry tests; debootstrap, cpio, xz and zstd for the
#     guest boot tests (scripts/debian-tree.sh builds the Debian tree); man-db, openssl,
#     script and losetup for the CLI, HTTPS and security tests
#   - Azurite 3.37 (npm) for the upload tests, under .tools/ in the repo
#   - the Windows build and its smoke tests: mingw-w64 (cross C toolchain and linker), the
#     x86_64-pc-windows-gnu Rust target (rustup), and Wine 8 (wine64) to run the .exe
# Idempotent: does nothing that is already done. Needs root (or sudo) for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v qemu-img >/dev/null 2>&1 || need_apt+=(qemu-utils)
command -v vhdiinfo >/dev/null 2>&1 || need_apt+=(libvhdi-utils)
/usr/bin/python3 -c 'import pyvhdi' >/dev/null 2>&1 || need_apt+=(python3-libvhdi)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
# Partition-table oracles for the guest tests: sfdisk/partx (util-linux), sgdisk; LVM tools.
command -v sfdisk >/dev/null 2>&1 || need_apt+=(fdisk)
command -v sgdisk >/dev/null 2>&1 || need_apt+=(gdisk)
command -v partx >/dev/null 2>&1 || need_apt+=(util-linux)
command -v pvcreate >/dev/null 2>&1 || need_apt+=(lvm2)
# File-system oracles for the guest file-system tests (mkfs, debugfs; blkid comes with util-linux).
command -v mkfs.ext4 >/dev/null 2>&1 && command -v debugfs >/dev/null 2>&1 || need_apt+=(e2fsprogs)
command -v mkfs.xfs >/dev/null 2>&1 || need_apt+=(xfsprogs)
command -v mkfs.fat >/dev/null 2>&1 || need_apt+=(dosfstools)
command -v hivexregedit >/dev/null 2>&1 && command -v hivexsh >/dev/null 2>&1 || need_apt+=(libhivex-bin libwin-hivex-perl)
command -v mkntfs >/dev/null 2>&1 && command -v wimapply >/dev/null 2>&1 || need_apt+=(ntfs-3g wimtools)
# Guest boot tests: a real Debian tree (debootstrap) and initramfs fixtures (cpio, xz, zstd).
for t in debootstrap:debootstrap cpio:cpio xz:xz-utils zstd:zstd; do command -v "${t%%:*}" >/dev/null 2>&1 || need_apt+=("${t#*:}"); done
command -v mcopy >/dev/null 2>&1 || need_apt+=(mtools)
command -v mkfs.btrfs >/dev/null 2>&1 || need_apt+=(btrfs-progs)
# Used by CLI and security tests: man pages, a self-signed TLS server, a pseudo-terminal,
# loop devices, curl (Azurite's readiness probe).
command -v man >/dev/null 2>&1 || need_apt+=(man-db)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v script >/dev/null 2>&1 || need_apt+=(bsdutils)
command -v losetup >/dev/null 2>&1 || need_apt+=(mount)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# Races around temporary files, made deterministic by delaying or failing one system call
# (redteam_rt12_cli.rs); unshare (util-linux) gives the convert its own PID namespace.
command -v strace >/dev/null 2>&1 || need_apt+=(strace)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
# The Windows cross-build (scripts/windows/build.sh) and the Wine smoke tests.
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || need_apt+=(gcc-mingw-w64-x86-64-win32)
[ -x /usr/lib/wine/wine64 ] || command -v wine64 >/dev/null 2>&1 || need_apt+=(wine64)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${need_apt[*]} (apt-get)" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1 &&
  ! rustup target list --installed | grep -qx x86_64-pc-windows-gnu; then
  echo "setup: rustup target add x86_64-pc-windows-gnu" >&2
  rustup target add x86_64-pc-windows-gnu
fi

if [ -x scripts/azurite.sh ]; then
  scripts/azurite.sh install
fi
