import { IteraError } from "../errors.js";
import type { DeviceEntry } from "./inventory.js";
import { deviceLayout } from "./layout.js";
import { parseProbe } from "./flash-ssh.js";
import { PROBE } from "./remote-scripts.js";
import { versionOfLink } from "./report.js";
import { SshSession, type SshTarget } from "./ssh.js";

/** What `itera devices check` learns about one device. */
export interface DeviceStatus {
  name: string;
  reachable: boolean;
  machine?: string;
  installed_version?: string | null;
  free_kb?: number;
  error?: string;
}

/** Connect to an inventory device (host key checked) and read its architecture, release and free space. */
export async function checkDevice(
  d: DeviceEntry,
  opts: { prefix: string; knownHosts?: string; sudo?: boolean },
): Promise<DeviceStatus> {
  if (!d.ssh)
    return { name: d.name, reachable: false, error: "no ssh address (flashed through its SD card only)" };
  const target: SshTarget = {
    destination: d.ssh,
    ...(d.port !== undefined ? { port: d.port } : {}),
    ...(d.identity ? { identity: d.identity } : {}),
    ...(opts.knownHosts ? { knownHosts: opts.knownHosts } : {}),
    sudo: opts.sudo === true,
    connectTimeoutS: 5,
  };
  let session: SshSession | undefined;
  try {
    session = await SshSession.open(target);
    const r = await session.script(PROBE, [deviceLayout(opts.prefix).base, "", "", ""]);
    if (r.code !== 0) return { name: d.name, reachable: true, error: r.stderr.trim() || `exit ${r.code}` };
    const p = parseProbe(r.stdout);
    return {
      name: d.name,
      reachable: true,
      machine: p.machine,
      installed_version: versionOfLink(p.current),
      free_kb: p.freeKb,
    };
  } catch (e) {
    if (e instanceof IteraError) return { name: d.name, reachable: false, error: e.message };
    throw e;
  } finally {
    await session?.close();
  }
}
