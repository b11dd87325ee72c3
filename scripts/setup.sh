#!/usr/bin/env bash
# Install everything vhdforge's tests and demo need on a fresh Debian/Ubuntu machine:
#   - the oracles: qemu-img (qemu-utils) and libvhdi (vhdiinfo, vhdimount, python3-libvhdi);
#     sfdisk, partx, sgdisk and lvm2 for the guest partition/volume tests; e2fsprogs,
#     xfsprogs and dosfstools for the guest file-system tests; man-db, openssl, script and
#     losetup for the CLI and security tests
#   - Azurite 3.37 (npm) for the upload tests, under .tools/ in the repo
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
command -v mcopy >/dev/null 2>&1 || need_apt+=(mtools)  # fills the Gen2 Windows test disk's ESP without a vfat mount
# Used by CLI and security tests: man pages, a self-signed TLS server, a pseudo-terminal,
# loop devices, curl (Azurite's readiness probe).
command -v man >/dev/null 2>&1 || need_apt+=(man-db)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v script >/dev/null 2>&1 || need_apt+=(bsdutils)
command -v losetup >/dev/null 2>&1 || need_apt+=(mount)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${need_apt[*]} (apt-get)" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ -x scripts/azurite.sh ]; then
  scripts/azurite.sh install
fi
