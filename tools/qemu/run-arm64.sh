#!/bin/sh
# Run an ARM64 (aarch64) Linux executable on an x86-64 Linux host under qemu-aarch64 (user mode).
#
#   tools/qemu/run-arm64.sh ./firmware-bundles/<bundle>/itera-agent info --json
#
# Needs: qemu-user (qemu-aarch64), libc6-arm64-cross and libstdc++6-arm64-cross (the target's
# dynamic loader and C/C++ libraries under /usr/aarch64-linux-gnu), util-linux `unshare`, and root
# (for the private mount namespace). Environment: QEMU_SYSROOT (default /usr/aarch64-linux-gnu),
# QEMU_CPUS (default 2).
#
# Why the mounts: user-mode qemu shows the guest the host's /proc and /sys. onnxruntime's CPU
# detection (cpuinfo) parses /proc/cpuinfo and /sys/devices/system/cpu as an ARM kernel would
# write them and crashes on an x86 /proc/cpuinfo. Inside a private mount namespace (`unshare -m`,
# so nothing changes for the rest of the machine) this script binds an ARM /proc/cpuinfo and a CPU
# folder with `possible` and `present` over the host's, then runs qemu.
set -eu
if [ "$#" -lt 1 ]; then
  echo "usage: $0 EXECUTABLE [ARGS...]" >&2
  exit 64
fi
sysroot="${QEMU_SYSROOT:-/usr/aarch64-linux-gnu}"
cpus="${QEMU_CPUS:-2}"
command -v qemu-aarch64 >/dev/null 2>&1 || { echo "$0: qemu-aarch64 not found (apt-get install qemu-user)" >&2; exit 69; }
[ -e "$sysroot/lib/ld-linux-aarch64.so.1" ] || { echo "$0: no aarch64 sysroot at $sysroot (apt-get install libc6-arm64-cross libstdc++6-arm64-cross)" >&2; exit 69; }

fake=$(mktemp -d "${TMPDIR:-/tmp}/itera-qemu-arm64.XXXXXX")
trap 'rm -rf "$fake"' EXIT INT TERM
mkdir -p "$fake/cpu"
last=$((cpus - 1))
echo "0-$last" > "$fake/cpu/possible"
echo "0-$last" > "$fake/cpu/present"
echo "0-$last" > "$fake/cpu/online"
i=0
: > "$fake/cpuinfo"
while [ "$i" -lt "$cpus" ]; do
  # A Cortex-A72 (Raspberry Pi 4 class) as an arm64 kernel reports it.
  cat >> "$fake/cpuinfo" <<CPU
processor	: $i
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

CPU
  i=$((i + 1))
done

status=0
unshare -m sh -c '
  set -e
  fake=$1; sysroot=$2; shift 2
  mount --bind "$fake/cpuinfo" /proc/cpuinfo
  mount --bind "$fake/cpu" /sys/devices/system/cpu
  exec qemu-aarch64 -L "$sysroot" "$@"
' sh "$fake" "$sysroot" "$@" || status=$?
exit "$status"
