/**
 * The POSIX sh scripts a flash runs on the device, one per step. They are fixed text sent on ssh's
 * stdin (`sh -s -- ARGS`); every value (paths, versions, the systemctl command) arrives only as a
 * quoted positional argument, so nothing a user types is ever parsed as shell code.
 * They need a POSIX sh and GNU coreutils (sha256sum, `mv -T`), as on Raspberry Pi OS and Debian.
 */

/** Shared helpers: the atomic switch of `current` and the unit install. */
const COMMON = `
set -eu
UNIT=itera-agent.service
# Point base/current at a release atomically: make the new link under a temp name, then rename it
# over the old one (rename(2) is atomic, so a reader sees the old or the new release, never none).
switch_current() {
  set_link "$1" current "$2"
}
# base/NAME -> TARGET, replaced atomically (also used for base/previous).
set_link() {
  tmp="$1/.$2.tmp.$$"
  rm -f -- "$tmp"
  ln -s -- "$3" "$tmp"
  mv -T -f -- "$tmp" "$1/$2"
}
# Copy the current release's unit into etc/systemd/system (temp name, then rename).
install_unit() {
  unitdir="$1/etc/systemd/system"
  mkdir -p -- "$unitdir"
  cp -- "$2/current/$UNIT" "$unitdir/.$UNIT.tmp"
  chmod 0644 -- "$unitdir/.$UNIT.tmp"
  mv -f -- "$unitdir/.$UNIT.tmp" "$unitdir/$UNIT"
}
`;

/**
 * args: base staging version config FILE... -> key=value lines: machine, kernel, free_kb, current, previous,
 * installed_sha (of releases/<version>/manifest.json, when that release is there), missing, staged,
 * config_json (the agent config file CONFIG, when given and there, on one line).
 */
export const PROBE = `${COMMON}
base=$1; staging=$2; version=$3; config=$4; shift 4
echo "machine=$(uname -m)"
echo "kernel=$(uname -s)"
d=$base
while [ ! -d "$d" ]; do d=$(dirname -- "$d"); done
echo "free_kb=$(df -Pk -- "$d" | awk 'NR==2 {print $4}')"
if [ -L "$base/current" ]; then echo "current=$(readlink -- "$base/current")"; fi
if [ -L "$base/previous" ]; then echo "previous=$(readlink -- "$base/previous")"; fi
if [ -n "$version" ] && [ -f "$base/releases/$version/manifest.json" ]; then
  echo "installed_sha=$(sha256sum < "$base/releases/$version/manifest.json" | cut -d ' ' -f 1)"
fi
for tool in sha256sum readlink df awk; do
  command -v "$tool" >/dev/null 2>&1 || echo "missing=$tool"
done
# The atomic switch needs mv -T (GNU coreutils; BusyBox mv lacks it): try it on two scratch links.
t=$(mktemp -d 2>/dev/null || echo "")
if [ -n "$t" ] && ln -s a "$t/x" && ln -s b "$t/y" && mv -T -f "$t/y" "$t/x" 2>/dev/null && [ "$(readlink "$t/x")" = b ]; then :; else echo "missing=mv -T"; fi
if [ -n "$t" ]; then rm -rf -- "$t"; fi
for f in "$@"; do
  if [ -f "$staging/$f" ]; then echo "staged=$(wc -c < "$staging/$f" | tr -d ' ') $f"; fi
done
# JSON strings cannot hold raw newlines, so flattening them to spaces keeps the JSON's meaning.
if [ -n "$config" ] && [ -f "$config" ]; then echo "config_json=$(head -c 65536 -- "$config" | tr '\\r\\n' '  ')"; fi
# The current release's manifest: which of the new bundle's files the device already has (same sha256).
if [ -L "$base/current" ] && [ -f "$base/current/manifest.json" ]; then
  echo "current_manifest=$(head -c 4194304 -- "$base/current/manifest.json" | tr '\\r\\n' '  ')"
fi
`;

/**
 * args: base current-link-target staging FILE... -> linked=FILE lines: each file hard-linked from the
 * current release into the staging folder (a file the new release shares with it byte for byte, the
 * runtime of a model-only update). A file that cannot be linked is left for the upload; the device
 * checks every staged file's sha256 afterwards, linked or sent.
 */
export const LINK = `${COMMON}
base=$1; cur=$2; staging=$3; shift 3
for f in "$@"; do
  src="$base/$cur/$f"
  if [ -f "$src" ] && [ ! -L "$src" ]; then
    mkdir -p -- "$(dirname -- "$staging/$f")"
    rm -f -- "$staging/$f"
    if ln -- "$src" "$staging/$f" 2>/dev/null; then echo "linked=$f"; fi
  fi
done
`;

/** The device-side argv of one upload chunk: append stdin to a staged file (a resume appends the rest). */
export function appendArgv(path: string): string[] {
  return ["sh", "-c", 'mkdir -p -- "$(dirname -- "$1")" && exec cat >> "$1"', "sh", path];
}

/** args: staging FILE... -> removes staged files that must be sent again from byte 0. */
export const RESET = `${COMMON}
staging=$1; shift
for f in "$@"; do rm -f -- "$staging/$f"; done
`;

/** args: staging checksum-list -> sha256sum -c output ("name: OK" / "name: FAILED"). */
export const VERIFY = `
set -u
cd -- "$1" || exit 2
printf '%s\\n' "$2" | sha256sum -c - 2>/dev/null
`;

/** args: base version staging -> install=moved|reused|conflict; moves the staged upload into releases/. */
export const INSTALL = `${COMMON}
base=$1; version=$2; staging=$3
rel="$base/releases/$version"
mkdir -p -- "$base/releases"
cur=""
if [ -L "$base/current" ]; then cur=$(readlink -- "$base/current"); fi
chmod 0755 -- "$staging/itera-agent"
if [ -f "$staging/install.sh" ]; then chmod 0755 -- "$staging/install.sh"; fi
if [ -d "$rel" ]; then
  if [ -f "$rel/manifest.json" ] && [ "$(sha256sum < "$rel/manifest.json")" = "$(sha256sum < "$staging/manifest.json")" ]; then
    rm -rf -- "$staging"
    echo "install=reused"
    exit 0
  fi
  if [ "$cur" = "releases/$version" ]; then echo "install=conflict"; exit 3; fi
  rm -rf -- "$rel"
fi
mv -- "$staging" "$rel"
echo "install=moved"
`;

/** args: prefix json -> writes etc/itera/agent.json (temp name, then rename). */
export const CONFIG = `${COMMON}
dir="$1/etc/itera"
mkdir -p -- "$dir"
printf '%s\\n' "$2" > "$dir/.agent.json.tmp"
chmod 0644 -- "$dir/.agent.json.tmp"
mv -f -- "$dir/.agent.json.tmp" "$dir/agent.json"
`;

/**
 * args: base link-target -> current points at the new release; base/previous remembers the release it
 * replaced, so a later flash can still roll back if this one is interrupted before its health check.
 */
export const SWITCH = `${COMMON}
old=""
if [ -L "$1/current" ]; then old=$(readlink -- "$1/current"); fi
if [ -n "$old" ] && [ "$old" != "$2" ]; then set_link "$1" previous "$old"; fi
switch_current "$1" "$2"
`;

/** args: prefix base systemctl|"" -> installs the unit and enables it (systemctl, or the wants link). */
export const UNIT = `${COMMON}
prefix=$1; base=$2; systemctl=$3
install_unit "$prefix" "$base"
if [ -n "$systemctl" ]; then
  "$systemctl" daemon-reload
  "$systemctl" enable "$UNIT"
else
  mkdir -p -- "$prefix/etc/systemd/system/multi-user.target.wants"
  ln -sfn "/etc/systemd/system/$UNIT" "$prefix/etc/systemd/system/multi-user.target.wants/$UNIT"
fi
`;

/** args: systemctl */
export const RESTART = `${COMMON}
"$1" restart "$UNIT"
`;

/**
 * args: base systemctl|"" timeout_s settle_s service_cache -> the agent's \`info --json\` on stdout.
 * With systemd: the unit must become active and still be active settle_s later (a crash loop is not).
 * \`info\` runs with the service's cache when there is one, as the service does: it reuses what the
 * service extracted on its start instead of unpacking onnxruntime again into the ssh user's home.
 */
export const HEALTH = `
set -u
base=$1; systemctl=$2; timeout_s=$3; settle_s=$4; service_cache=$5
UNIT=itera-agent.service
if [ -n "$systemctl" ]; then
  i=0
  until "$systemctl" is-active --quiet "$UNIT"; do
    i=$((i + 1))
    if [ "$i" -ge "$timeout_s" ]; then echo "the service is not active after $timeout_s s" >&2; exit 4; fi
    sleep 1
  done
  if [ "$settle_s" -gt 0 ]; then
    sleep "$settle_s"
    if ! "$systemctl" is-active --quiet "$UNIT"; then echo "the service stopped within $settle_s s of starting" >&2; exit 4; fi
  fi
  if [ -z "\${ITERA_AGENT_CACHE:-}" ] && [ -d "$service_cache" ]; then
    ITERA_AGENT_CACHE=$service_cache; export ITERA_AGENT_CACHE
  fi
fi
if command -v timeout >/dev/null 2>&1; then
  exec timeout "$timeout_s" "$base/current/itera-agent" info --json
fi
exec "$base/current/itera-agent" info --json
`;

/**
 * args: prefix base previous-link-target|"" failed-version systemctl|""
 * Puts back the previous release (or, on a first install, removes the failed one entirely).
 */
export const ROLLBACK = `${COMMON}
prefix=$1; base=$2; prev=$3; failed=$4; systemctl=$5
unitdir="$prefix/etc/systemd/system"
if [ -n "$prev" ] && [ -d "$base/$prev" ]; then
  switch_current "$base" "$prev"
  rm -f -- "$base/previous"
  if [ -f "$base/current/$UNIT" ]; then install_unit "$prefix" "$base"; fi
  if [ -n "$systemctl" ]; then
    "$systemctl" daemon-reload
    "$systemctl" restart "$UNIT"
  fi
  echo "rollback=previous"
else
  if [ -n "$systemctl" ]; then "$systemctl" disable --now "$UNIT" || true; fi
  rm -f -- "$base/current" "$base/previous" "$unitdir/multi-user.target.wants/$UNIT" "$unitdir/$UNIT"
  if [ -n "$systemctl" ]; then "$systemctl" daemon-reload; fi
  echo "rollback=none"
fi
if [ "releases/$failed" != "$prev" ]; then rm -rf -- "$base/releases/$failed"; fi
`;

/** args: base keep current previous -> drops the upload area and releases beyond the newest KEEP. */
export const CLEANUP = `${COMMON}
base=$1; keep=$2; cur=$3; prev=$4
rm -rf -- "$base/.staging"
n=0
for r in $(ls -1t -- "$base/releases"); do
  n=$((n + 1))
  if [ "releases/$r" = "$cur" ] || [ "releases/$r" = "$prev" ]; then continue; fi
  if [ "$n" -gt "$keep" ]; then rm -rf -- "$base/releases/$r"; echo "pruned=$r"; fi
done
`;
