#!/usr/bin/env bash
# An optional reflink-capable filesystem for the copy tests: a small XFS image mounted on a loop
# device, where this machine allows it (root, loop devices, XFS in the kernel). Prints the mount
# point, or nothing. `ci/reflink.sh --remove DIR` unmounts and deletes it.
set -uo pipefail

if [ "${1:-}" = --remove ]; then
    dir=${2:?}
    umount "$dir" 2>/dev/null && rm -f "$dir.img" && rmdir "$dir" 2>/dev/null
    exit 0
fi
[ "$(id -u)" = 0 ] || exit 0
grep -qw xfs /proc/filesystems 2>/dev/null || exit 0
if ! command -v mkfs.xfs >/dev/null; then
    command -v apt-get >/dev/null || exit 0
    apt-get install -y -qq xfsprogs >/dev/null 2>&1 || exit 0
fi
dir=$(mktemp -d "${TMPDIR:-/tmp}/callfs-reflink.XXXXXX") || exit 0
if truncate -s 512M "$dir.img" && mkfs.xfs -q -m reflink=1 "$dir.img" >/dev/null 2>&1 \
        && mount -o loop "$dir.img" "$dir" 2>/dev/null; then
    echo "$dir"
else
    rm -f "$dir.img"
    rmdir "$dir" 2>/dev/null
fi
exit 0
