/**
 * The small text files beside the executable in a bundle folder: the systemd unit, the installer
 * and a README. Pure functions of the bundle's facts, so they are easy to test and to read.
 */
export interface BundleFacts {
  bundleId: string;
  version: string;
  profile: string;
  platform: "linux" | "win32";
  arch: "x64" | "arm64";
  exe: string;
  modelId: string;
  quant: string;
  /** Arguments after the executable in the unit's ExecStart. */
  serviceArgs: string;
}

export const DEFAULT_PREFIX = "/opt/itera";
/** The service's cache on the device: systemd makes it (CacheDirectory) and the unit names it (ITERA_AGENT_CACHE). */
export const SERVICE_CACHE_DIR = "/var/cache/itera-agent";
export const DEFAULT_SERVICE_ARGS = "agent --config /etc/itera/agent.json";

export function systemdUnit(f: BundleFacts): string {
  return `# systemd unit for the itera agent (bundle ${f.bundleId}).
# ExecStart runs the release that ${DEFAULT_PREFIX}/current points at; its arguments were set at build
# time with \`itera build --service-args\` (default: "${DEFAULT_SERVICE_ARGS}").
[Unit]
Description=itera on-device agent (${f.modelId}, profile ${f.profile})
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
# Over-the-air updates (itera fleet update, docs/fleet.md): the agent exits 75 to be restarted into a
# new release, and the guard (written by the first update; "-": absent until then) rolls a release
# back that does not come up healthy.
ExecStartPre=-${DEFAULT_PREFIX}/update-guard ${DEFAULT_PREFIX}
ExecStart=${DEFAULT_PREFIX}/current/${f.exe} ${f.serviceArgs}
Restart=on-failure
RestartForceExitStatus=75
RestartSec=5
# The native libraries and the model are extracted here on first start (see docs/packaging.md).
CacheDirectory=itera-agent
Environment=ITERA_AGENT_CACHE=${SERVICE_CACHE_DIR}
# The MQTT agent keeps its outbox and session numbers in $STATE_DIRECTORY (/var/lib/itera-agent).
StateDirectory=itera-agent
NoNewPrivileges=yes
ProtectSystem=full
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
`;
}

/**
 * `install.sh`: checks the files (the executable, the unit, the README and the model pack), copies
 * them to releases/<version>/ and switches `current` atomically.
 */
export function installScript(f: BundleFacts, checksums: Record<string, string>): string {
  const sums = Object.entries(checksums)
    .map(([file, sha]) => `${sha}  ${file}`)
    .join("\n");
  return `#!/bin/sh
# Install bundle ${f.bundleId}: copy it to $ROOT$PREFIX/releases/${f.version}/, point
# $ROOT$PREFIX/current at it (a new symlink renamed over the old one: atomic) and install the
# systemd unit under $ROOT/etc/systemd/system. ROOT (default empty) installs into a mounted root
# file system or a test folder; PREFIX defaults to ${DEFAULT_PREFIX}.
set -eu
VERSION='${f.version}'
ROOT="\${ROOT:-}"
PREFIX="\${PREFIX:-${DEFAULT_PREFIX}}"
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
base="$ROOT$PREFIX"
release="$base/releases/$VERSION"

cd "$here"
if command -v sha256sum >/dev/null 2>&1; then
  sha256sum -c --quiet - <<'SUMS' || { echo "install.sh: bundle files do not match their checksums; not installing" >&2; exit 1; }
${sums}
SUMS
fi

mkdir -p "$base/releases"
tmp="$base/releases/.$VERSION.$$.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"
cp ${f.exe} manifest.json itera-agent.service install.sh README.txt model-pack.json "$tmp/"
cp -R model "$tmp/model"
chmod 755 "$tmp/${f.exe}" "$tmp/install.sh"
rm -rf "$release"
mv "$tmp" "$release"

link="$base/.current.$$.tmp"
ln -sfn "releases/$VERSION" "$link"
mv -Tf "$link" "$base/current"

unit_dir="$ROOT/etc/systemd/system"
mkdir -p "$unit_dir"
sed "s#${DEFAULT_PREFIX}/current#$PREFIX/current#g" itera-agent.service > "$unit_dir/.itera-agent.service.$$.tmp"
mv -f "$unit_dir/.itera-agent.service.$$.tmp" "$unit_dir/itera-agent.service"

echo "installed ${f.bundleId} in $release; $base/current -> releases/$VERSION"
if [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload
  echo "start it with: systemctl enable --now itera-agent (after writing /etc/itera/agent.json)"
fi
`;
}

export function readme(f: BundleFacts): string {
  const exe = f.platform === "win32" ? f.exe : `./${f.exe}`;
  return `itera bundle ${f.bundleId}
model ${f.modelId} (${f.quant}), device profile ${f.profile}, target ${f.platform}-${f.arch}

${f.exe}
  One executable with Node.js, the itera agent, the device profile and onnxruntime inside (the
  runtime). It runs the model pack beside it: model/ (the model folder) and model-pack.json (its
  files' sha256, signed). Nothing else needs to be installed.
  ${exe} info            what is inside, the detected hardware and power meters
  ${exe} run --prompt "Hello"
  ${exe} --help          all commands
  On first start it extracts the native libraries to ~/.cache/itera-agent/ (or $ITERA_AGENT_CACHE)
  and checks the model pack; later starts reuse both. It refuses to start if any embedded file or
  model file was changed.
${
  f.platform === "win32"
    ? "  Windows: onnxruntime.dll needs the Microsoft Visual C++ Redistributable (2015-2022, x64).\n"
    : ""
}
manifest.json
  sha256 of every file here and of every embedded asset, build information, the model card and
  (when built with --sign) an Ed25519 signature. Check it on the build host with:
    itera verify <this folder> --key <signer's public key>

${f.platform === "win32" ? "" : linuxInstall(f)}`;
}

function linuxInstall(f: BundleFacts): string {
  return `
itera-agent.service, install.sh
  sudo ./install.sh installs this bundle to ${DEFAULT_PREFIX}/releases/${f.version}/ and points
  ${DEFAULT_PREFIX}/current at it, then installs the systemd unit (not enabled: write
  /etc/itera/agent.json first, then systemctl enable --now itera-agent).
  ROOT=/mnt/sdroot ./install.sh installs into a mounted root file system instead.
`;
}
