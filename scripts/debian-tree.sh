#!/usr/bin/env bash
# Build, once, a real Debian bookworm root tree for the guest boot tests: minbase plus
# openssh-server, waagent, cloud-init and linux-image-cloud-amd64 (whose package hooks run
# update-initramfs, so the initramfs is the one Debian really ships), and a grub.cfg written
# by grub-mkconfig inside the tree.
#
# The tree is cached in $VHDFORGE_DEBIAN_TREE (default target/guest-cache/debian-bookworm);
# a tree with its `.vhdforge-complete` marker is reused, so reruns are instant. A failed or
# interrupted build leaves only a `*.partial-*` directory, never a half tree under the final
# name. Needs root (debootstrap, chroot) and Debian's mirror (DEBIAN_MIRROR to override).
# Bounded: each step (debootstrap, apt-get, grub-mkconfig) is killed after
# VHDFORGE_DEBIAN_TIMEOUT seconds (default 1500). A failed build keeps its log beside the tree.
set -euo pipefail
cd "$(dirname "$0")/.."

tree="${VHDFORGE_DEBIAN_TREE:-$PWD/target/guest-cache/debian-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
limit="${VHDFORGE_DEBIAN_TIMEOUT:-1500}"

if [ -f "$tree/.vhdforge-complete" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "debian-tree: needs root (debootstrap and chroot); run as root or with sudo" >&2
  exit 2
fi
command -v debootstrap >/dev/null 2>&1 || {
  echo "debian-tree: debootstrap is missing; run scripts/setup.sh (or apt-get install debootstrap)" >&2
  exit 2
}

mkdir -p "$(dirname "$tree")"
work="$(mktemp -d "$tree.partial-XXXXXX")"
chmod 755 "$work"
cleanup() {
  # Unmount whatever this run mounted, deepest first, before the tree can be removed.
  for m in "$work/proc" "$work/sys" "$work/dev"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m" || true
  done
  if [ ! -f "$work/.vhdforge-complete" ]; then
    rm -rf --one-file-system "$work"
  fi
}
trap cleanup EXIT
start=$(date +%s)
echo "debian-tree: building $tree (debootstrap bookworm from $mirror; about 5 minutes)" >&2

timeout "$limit" debootstrap --variant=minbase bookworm "$work" "$mirror" >"$work.log" 2>&1 || {
  echo "debian-tree: debootstrap failed; last lines of its log:" >&2
  tail -20 "$work.log" >&2
  exit 2
}

mount -t proc proc "$work/proc"
# No service may start inside the chroot while packages are configured.
printf '#!/bin/sh\nexit 101\n' >"$work/usr/sbin/policy-rc.d"
chmod 755 "$work/usr/sbin/policy-rc.d"
# The kernel's postinst asks where to install GRUB unless told; the tree has no disk.
in_chroot() { timeout "$limit" chroot "$work" env DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }
# The console line Azure's preparation guide asks for, so grub-mkconfig writes it into grub.cfg.
mkdir -p "$work/etc/default/grub.d"
cat >"$work/etc/default/grub.d/50-vhdforge-azure.cfg" <<'EOF'
GRUB_CMDLINE_LINUX="console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0 rootdelay=300"
GRUB_TIMEOUT=1
EOF
in_chroot apt-get install -y -q --no-install-recommends \
  linux-image-cloud-amd64 initramfs-tools openssh-server waagent cloud-init \
  grub2-common grub-pc-bin grub-efi-amd64-bin >>"$work.log" 2>&1 || {
  echo "debian-tree: apt-get install in the chroot failed; last lines of its log:" >&2
  tail -20 "$work.log" >&2
  exit 2
}
ls "$work"/boot/initrd.img-* >/dev/null 2>&1 || {
  echo "debian-tree: no /boot/initrd.img-* after installing the kernel: update-initramfs did not run" >&2
  exit 2
}

# grub-mkconfig asks grub-probe which device and file system hold / and /boot; a chroot on a
# host directory has no such device, so a stand-in answers as a one-partition ext4 disk would.
# The script itself, its 10_linux template and the resulting grub.cfg are Debian's own.
mv "$work/usr/sbin/grub-probe" "$work/usr/sbin/grub-probe.real"
cat >"$work/usr/sbin/grub-probe" <<'EOF'
#!/bin/sh
for a in "$@"; do
  case "$a" in
    --target=device) echo /dev/sda1; exit 0 ;;
    --target=fs) echo ext2; exit 0 ;;
    --target=fs_uuid) echo 0a1b2c3d-4e5f-4061-8293-a4b5c6d7e8f9; exit 0 ;;
    --target=partuuid) echo 11111111-01; exit 0 ;;
    --target=abstraction | --target=hints_string) exit 0 ;;
    --target=partmap) echo msdos; exit 0 ;;
    --target=drive) echo '(hd0,msdos1)'; exit 0 ;;
    --target=compatibility_hint) echo hd0,msdos1; exit 0 ;;
  esac
done
exit 0
EOF
chmod 755 "$work/usr/sbin/grub-probe"
mkdir -p "$work/boot/grub"
in_chroot grub-mkconfig -o /boot/grub/grub.cfg >>"$work.log" 2>&1 || {
  echo "debian-tree: grub-mkconfig failed; last lines of its log:" >&2
  tail -20 "$work.log" >&2
  exit 2
}
mv "$work/usr/sbin/grub-probe.real" "$work/usr/sbin/grub-probe"
rm -f "$work/usr/sbin/policy-rc.d"
in_chroot apt-get clean >/dev/null 2>&1 || true
umount -l "$work/proc"

touch "$work/.vhdforge-complete"
rm -f "$work.log"
[ -e "$tree" ] && rm -rf --one-file-system "$tree"
mv "$work" "$tree"
work="$tree"
echo "debian-tree: done in $(($(date +%s) - start)) s: $tree" >&2
