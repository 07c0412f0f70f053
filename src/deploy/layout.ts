import { posix } from "node:path";
import { IteraError } from "../errors.js";
import { SERVICE_CACHE_DIR } from "../package/bundle-files.js";

/**
 * Where a bundle lives on a device (the same under a --prefix test root, a mounted SD card, or /):
 *   opt/itera/releases/<version>/   one folder per installed release
 *   opt/itera/current               symlink -> releases/<version> (relative, so it works under any root)
 *   opt/itera/previous              symlink -> the release the last switch replaced (what a rollback restores)
 *   opt/itera/.staging/<key>/       where an upload lands before it is verified and moved into releases/
 *   etc/systemd/system/itera-agent.service (+ multi-user.target.wants/ link when enabled)
 *   etc/itera/agent.json            the agent's fleet, broker and device id
 *   opt/itera/update-pending        an over-the-air update waiting for its health check (key=value lines)
 *   opt/itera/update-outcome        what the update guard did (a rollback), for the agent to report
 *   opt/itera/update-guard          the rollback guard its supervisor runs before each start (sh)
 *   var/cache/itera-agent           the service's cache (the unit's CacheDirectory and ITERA_AGENT_CACHE):
 *                                   the native files it extracts on its first start
 */
export const UNIT_NAME = "itera-agent.service";
export const AGENT_FILE = "itera-agent";
export const MANIFEST_FILE = "manifest.json";

export interface DeviceLayout {
  prefix: string;
  base: string;
  releases: string;
  current: string;
  previous: string;
  staging: string;
  unitDir: string;
  unit: string;
  wantsLink: string;
  configFile: string;
  updatePending: string;
  updateOutcome: string;
  updateGuard: string;
  serviceCache: string;
}

export function deviceLayout(prefix: string): DeviceLayout {
  const p = (...parts: string[]) => posix.join(prefix, ...parts);
  return {
    prefix,
    base: p("opt/itera"),
    releases: p("opt/itera/releases"),
    current: p("opt/itera/current"),
    previous: p("opt/itera/previous"),
    staging: p("opt/itera/.staging"),
    unitDir: p("etc/systemd/system"),
    unit: p("etc/systemd/system", UNIT_NAME),
    wantsLink: p("etc/systemd/system/multi-user.target.wants", UNIT_NAME),
    configFile: p("etc/itera/agent.json"),
    updatePending: p("opt/itera/update-pending"),
    updateOutcome: p("opt/itera/update-outcome"),
    updateGuard: p("opt/itera/update-guard"),
    serviceCache: p(SERVICE_CACHE_DIR),
  };
}

/** What the unit's enable link points at on the device itself (absolute, like `systemctl enable`). */
export const UNIT_LINK_TARGET = `/etc/systemd/system/${UNIT_NAME}`;

/** `current` points here, relative to opt/itera. */
export function releaseLinkTarget(version: string): string {
  return `releases/${version}`;
}

/** Map `uname -m` (or an ELF machine) to the manifest's arch; undefined when itera has no build for it. */
export function archFromUname(machine: string): "arm64" | "x64" | undefined {
  const m = machine.trim();
  if (m === "aarch64" || m === "arm64" || m === "aarch64_be") return "arm64";
  if (m === "x86_64" || m === "amd64") return "x64";
  return undefined;
}

/** A prefix must be absolute and plain (it is passed to remote shell scripts as a quoted argument). */
export function checkPrefix(prefix: string): string {
  if (!posix.isAbsolute(prefix) || prefix.split("/").includes("..")) {
    throw new IteraError(`invalid --prefix '${prefix}'`, {
      fix: "give an absolute path without '..', e.g. / (a real device) or /tmp/fake-root (a test root)",
    });
  }
  return posix.normalize(prefix);
}
