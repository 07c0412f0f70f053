import { join, posix } from "node:path";
import { type Manifest, manifestSchema } from "../bundle/manifest.js";
import { changedParts, unchangedFiles } from "../bundle/model-pack.js";
import { IteraError } from "../errors.js";
import { type AgentConfig, renderAgentConfig } from "./agent-config.js";
import { type BrokerNeed, brokerNeedOfBundle, brokerSource, checkBroker } from "./broker-check.js";
import { type VerifiedBundle, verifyLocally } from "./bundle.js";
import {
  archFromUname,
  type DeviceLayout,
  deviceLayout,
  MANIFEST_FILE,
  releaseLinkTarget,
} from "./layout.js";
import * as scripts from "./remote-scripts.js";
import { type FlashReport, newReport, versionOfLink } from "./report.js";
import {
  flashLockPath,
  type SshSession as Session,
  SshSession,
  type SshTarget,
  sshError,
  sshOptions,
} from "./ssh.js";
import { StepLog } from "./steps.js";
import { uploadResumable } from "./upload.js";

export interface SshFlashOptions {
  bundle: string;
  /** Public key (PEM or base64 SPKI) the bundle must be signed with. */
  trustedKey?: string;
  target: SshTarget;
  /** The device's root: "/" on a real device, a folder standing in for it in tests. */
  prefix: string;
  /** The systemctl command on the device, or null: no service manager (unit enabled by its link only). */
  systemctl: string | null;
  healthTimeoutS: number;
  /** With systemd, the unit must still be active this long after it became active. */
  healthSettleS: number;
  /** Releases kept on the device (current and previous always are). */
  keep: number;
  config?: AgentConfig;
  dryRun?: boolean;
  chunkBytes?: number;
  signal?: AbortSignal;
  onProgress?: (sent: number, total: number) => void;
  say?: (line: string) => void;
}

export interface Probe {
  machine: string;
  kernel: string;
  freeKb: number;
  current: string | null;
  /** What base/previous points at: the release an earlier, possibly unfinished, flash replaced. */
  previous: string | null;
  /** sha256 of the manifest of the release folder this bundle would be installed as, if it exists. */
  installedSha: string | null;
  missing: string[];
  staged: Map<string, number>;
  /** The agent config the bundle's unit reads, as the device has it (null: not asked for, or no file). */
  config: string | null;
  /** The current release's manifest.json on one line (null: no current release, or none there). */
  currentManifest: string | null;
}

export function parseProbe(stdout: string): Probe {
  const p: Probe = {
    machine: "",
    kernel: "",
    freeKb: Number.NaN,
    current: null,
    previous: null,
    installedSha: null,
    missing: [],
    staged: new Map(),
    config: null,
    currentManifest: null,
  };
  for (const line of stdout.split("\n")) {
    const eq = line.indexOf("=");
    if (eq < 0) continue;
    const key = line.slice(0, eq);
    const value = line.slice(eq + 1);
    if (key === "machine") p.machine = value.trim();
    else if (key === "kernel") p.kernel = value.trim();
    else if (key === "free_kb") p.freeKb = Number.parseInt(value, 10);
    else if (key === "current") p.current = value.trim() || null;
    else if (key === "previous") p.previous = value.trim() || null;
    else if (key === "installed_sha") p.installedSha = value.trim() || null;
    else if (key === "missing") p.missing.push(value.trim());
    else if (key === "config_json") p.config = value;
    else if (key === "current_manifest") p.currentManifest = value;
    else if (key === "staged") {
      const [n, ...name] = value.split(" ");
      p.staged.set(name.join(" "), Number.parseInt(n ?? "0", 10));
    }
  }
  return p;
}

/** Free space a flash needs beyond the bytes still to send: the upload is moved, not copied, into place. */
export function spaceMarginBytes(totalBytes: number): number {
  return Math.max(256 * 1024, Math.ceil(totalBytes * 0.05));
}

/**
 * The current release's manifest as the device has it, when it is a valid one for the same target
 * (else null: everything is sent). Only used to pick files to link; the device re-checks them all.
 */
export function currentManifestOf(text: string | null, b: VerifiedBundle): Manifest | null {
  if (!text) return null;
  try {
    const m = manifestSchema.safeParse(JSON.parse(text));
    if (!m.success || m.data.target.arch !== b.manifest.target.arch) return null;
    return m.data;
  } catch {
    return null;
  }
}

/** The new bundle's files the current release already has (never manifest.json), and their bytes. */
export function reusableFiles(
  b: VerifiedBundle,
  current: Manifest | null,
): { names: string[]; bytes: number } {
  const names = unchangedFiles(b.manifest, current).filter((n) => n !== MANIFEST_FILE);
  const bytes = b.files.filter((f) => names.includes(f.name)).reduce((n, f) => n + f.bytes, 0);
  return { names, bytes };
}

function checkProbe(p: Probe, b: VerifiedBundle, o: SshFlashOptions, need: BrokerNeed | null): void {
  const where = o.target.destination;
  if (p.kernel !== "Linux") {
    throw new IteraError(`the device runs '${p.kernel || "an unknown system"}', not Linux`, {
      where,
      fix: "flash Linux devices only (Raspberry Pi OS, Debian, Ubuntu)",
    });
  }
  const arch = archFromUname(p.machine);
  if (arch !== b.manifest.target.arch) {
    throw new IteraError(
      `wrong architecture: the bundle is for ${b.manifest.target.arch} but the device is ${p.machine}${
        p.machine.startsWith("armv") ? " (a 32-bit OS)" : ""
      }; nothing was copied`,
      {
        where,
        fix:
          arch === undefined
            ? "install a 64-bit OS on the device (e.g. Raspberry Pi OS 64-bit)"
            : `build a bundle for a ${arch} profile (itera build --profile ...)`,
      },
    );
  }
  if (p.missing.length > 0) {
    throw new IteraError(`the device lacks ${p.missing.join(", ")}`, {
      where,
      fix: "install GNU coreutils (and awk) on the device",
    });
  }
  checkBroker(need, o.config, p.config, (path) => (path ? `${where}:${posix.join(o.prefix, path)}` : where));
  if (p.installedSha === b.manifestSha256) return; // already there: nothing to copy
  const reuse = reusableFiles(b, currentManifestOf(p.currentManifest, b));
  const stagedBytes = b.files
    .filter((f) => !reuse.names.includes(f.name))
    .reduce((n, f) => n + Math.min(f.bytes, p.staged.get(f.name) ?? 0), 0);
  // Linked files take no space; what is still to send does, plus the margin on what is sent.
  const toSend = b.totalBytes - reuse.bytes;
  const needKb = Math.ceil((toSend - stagedBytes + spaceMarginBytes(toSend)) / 1024);
  if (!(p.freeKb >= needKb)) {
    throw new IteraError(
      `not enough free space on the device: ${p.freeKb} KiB free under ${o.prefix}, ${needKb} KiB needed; nothing was copied`,
      { where, fix: "free space on the device (old releases live in /opt/itera/releases), then flash again" },
    );
  }
}

/** `itera flash BUNDLE --ssh user@host`: every step of DESIGN §5's install, checked, with rollback. */
export async function flashOverSsh(o: SshFlashOptions): Promise<FlashReport> {
  const log = new StepLog(o.say ?? (() => {}));
  const bundle = await verifyLocally(log, o.bundle, o.trustedKey);
  try {
    return await flashVerified(o, log, bundle);
  } finally {
    await bundle.dispose();
  }
}

async function flashVerified(o: SshFlashOptions, log: StepLog, bundle: VerifiedBundle): Promise<FlashReport> {
  const m = bundle.manifest;
  const L = deviceLayout(o.prefix);
  const staging = posix.join(L.staging, `${m.version}-${bundle.manifestSha256.slice(0, 12)}`);
  const report = newReport("ssh", o.target.destination, bundle, o.dryRun === true, log.steps);
  const need = await brokerNeedOfBundle(bundle);
  const configOnDevice = need?.configPath ? posix.join(o.prefix, need.configPath) : "";
  if (o.dryRun) {
    planSteps(log, o, bundle, L, staging, need, configOnDevice);
    return report;
  }

  const session = await log.run(
    "connect",
    `connect to ${o.target.destination} (host key checked) and take the device's flash lock`,
    () => SshSession.open(o.target, flashLockPath(o.prefix)),
  );
  try {
    const probe = await log.run(
      "probe",
      "check the device's architecture, free space, current release and the agent's broker",
      async () => {
        const r = await session.script(scripts.PROBE, [
          L.base,
          staging,
          m.version,
          configOnDevice,
          ...bundle.files.map((f) => f.name),
        ]);
        if (r.code !== 0) throw scriptError("probe", r, o);
        const p = parseProbe(r.stdout);
        checkProbe(p, bundle, o, need);
        return p;
      },
      (p) => `${p.machine}, ${p.freeKb} KiB free, current: ${versionOfLink(p.current) ?? "none"}`,
    );
    report.previous = versionOfLink(probe.current);
    report.current = report.previous;
    const currentManifest = currentManifestOf(probe.currentManifest, bundle);
    report.parts = changedParts(m, currentManifest);
    // What a failure goes back to: the running release, or, when this very release is already current
    // (an earlier flash of it was cut off before its health check), the one that flash replaced.
    const fallback =
      probe.current && probe.current !== releaseLinkTarget(m.version) ? probe.current : probe.previous;

    const release = posix.join(L.releases, m.version);
    if (probe.installedSha === bundle.manifestSha256) {
      // The same build is already on the device (a repeated flash, or one cut off after its install):
      // nothing to send; its files are still checked before it is switched to.
      log.skip("copy", "copy the bundle", `release ${m.version} is already on the device, identical`);
      report.copy = {
        bytes_total: bundle.totalBytes,
        bytes_sent: 0,
        bytes_resumed: 0,
        bytes_linked: 0,
        linked: [],
      };
      await log.run(
        "verify-device",
        `check every file's sha256 in ${release} against the signed manifest`,
        async () => {
          const bad = await verifyOnDevice(session, release, bundle, o);
          if (bad.length > 0) {
            throw new IteraError(
              `the installed release ${m.version} is damaged on the device: ${bad.join(", ")}`,
              {
                where: `${o.target.destination}:${release}`,
                fix: `remove ${release} on the device (or give the build a new version) and flash again`,
              },
            );
          }
        },
      );
      log.skip("install", `install as ${release}`, "already installed");
    } else {
      const reuse = probe.current ? reusableFiles(bundle, currentManifest) : { names: [], bytes: 0 };
      await copyVerifyInstall(session, log, o, bundle, probe, reuse.names, staging, release, report);
    }

    if (o.config) {
      const json = renderAgentConfig(o.config);
      await log.run("config", `write ${L.configFile}`, async () => {
        const r = await session.script(scripts.CONFIG, [L.prefix, json]);
        if (r.code !== 0) throw scriptError("config", r, o);
      });
    }

    // From the switch on, any failure puts the previous release back.
    let healthError: string | undefined;
    try {
      await log.run("switch", `point ${L.current} at releases/${m.version} (atomic rename)`, async () => {
        const r = await session.script(scripts.SWITCH, [L.base, releaseLinkTarget(m.version)]);
        if (r.code !== 0) throw scriptError("switch", r, o);
      });
      report.current = m.version;
      await log.run(
        "unit",
        o.systemctl
          ? "install and enable itera-agent.service (systemctl)"
          : "install itera-agent.service and its multi-user.target.wants link",
        async () => {
          const r = await session.script(scripts.UNIT, [L.prefix, L.base, o.systemctl ?? ""]);
          if (r.code !== 0) throw scriptError("unit", r, o);
        },
      );
      if (o.systemctl) {
        await log.run("restart", "restart the agent", async () => {
          const r = await session.script(scripts.RESTART, [o.systemctl!]);
          if (r.code !== 0) throw scriptError("restart", r, o);
        });
      } else log.skip("restart", "restart the agent", "no service manager (--service-manager none)");
      const health = await log.run("health", "wait for the agent's health check", () =>
        healthCheck(session, L, o, m.version),
      );
      report.health = health;
      if (!health.ok) healthError = health.error;
    } catch (e) {
      if (e instanceof IteraError && e.exitCode === 3) throw e; // the connection itself is gone: nothing to roll back with
      healthError = (e as Error).message;
      report.health = { ok: false, error: healthError };
    }

    if (healthError !== undefined) {
      report.ok = false;
      report.result = "rolled-back";
      await log.run(
        "rollback",
        fallback ? `put back release ${versionOfLink(fallback)}` : "remove the failed first install",
        async () => {
          const r = await session.script(scripts.ROLLBACK, [
            L.prefix,
            L.base,
            fallback ?? "",
            m.version,
            o.systemctl ?? "",
          ]);
          if (r.code !== 0) throw scriptError("rollback", r, o);
        },
      );
      report.current = versionOfLink(fallback);
      let healthy: boolean | null = null;
      if (fallback) {
        const h = await log.run("health-previous", "check the previous release's health", () =>
          healthCheck(session, L, o, report.current!),
        );
        healthy = h.ok;
      }
      report.rollback = { to: report.current, healthy };
      report.error = new IteraError(
        `release ${m.version} failed its health check (${healthError}); rolled back to ${report.current ?? "no release"}${
          healthy === false ? " (which is not healthy either)" : ""
        }`,
        {
          where: o.target.destination,
          fix: "see the agent's log on the device (journalctl -u itera-agent) and fix the bundle",
          exitCode: 4,
        },
      ).toJSON();
    } else report.result = "installed";

    await log.run(
      "cleanup",
      `remove the upload area and keep the newest ${o.keep} releases`,
      async () => {
        const cur = report.current ? releaseLinkTarget(report.current) : "";
        const prev = report.result === "installed" && fallback ? fallback : "";
        const r = await session.script(scripts.CLEANUP, [L.base, String(o.keep), cur, prev]);
        if (r.code !== 0) throw scriptError("cleanup", r, o);
        return r.stdout
          .split("\n")
          .filter((l) => l.startsWith("pruned="))
          .map((l) => l.slice(7));
      },
      (pruned) => (pruned.length > 0 ? `pruned ${pruned.join(", ")}` : undefined),
    );
    return report;
  } finally {
    await session.close();
  }
}

/** Send the bundle to the staging folder (resuming), check it on the device, move it into releases/. */
async function copyVerifyInstall(
  session: Session,
  log: StepLog,
  o: SshFlashOptions,
  bundle: VerifiedBundle,
  probe: Probe,
  reusable: string[],
  staging: string,
  release: string,
  report: FlashReport,
): Promise<void> {
  const m = bundle.manifest;
  const files = bundle.files.map((f) => ({ ...f, localPath: join(bundle.dir, f.name) }));
  // Files the current release has byte for byte (its runtime, when only the model pack changed):
  // hard-linked on the device into the upload, not sent; verify-device checks them with the rest.
  let linked = new Set<string>();
  if (reusable.length > 0 && probe.current) {
    linked = await log.run(
      "link",
      `link the ${reusable.length} files the current release already has into ${staging}`,
      async () => {
        const r = await session.script(scripts.LINK, [
          deviceLayout(o.prefix).base,
          probe.current!,
          staging,
          ...reusable,
        ]);
        if (r.code !== 0) throw scriptError("link", r, o);
        return new Set(
          r.stdout
            .split("\n")
            .filter((l) => l.startsWith("linked="))
            .map((l) => l.slice(7)),
        );
      },
      (l) => `${[...l].join(", ")} (${bytesOf(bundle, l)} bytes not sent)`,
    );
  }
  const toSend = files.filter((f) => !linked.has(f.name));
  const sendBytes = toSend.reduce((n, f) => n + f.bytes, 0);
  const upload = await log.run(
    "copy",
    `copy ${sendBytes} bytes to ${staging} (resumable)`,
    () => uploadResumable(session, staging, toSend, probe.staged, copyOptions(o)),
    (u) =>
      `sent ${u.bytesSent} bytes${u.bytesResumed > 0 ? `, resumed after ${u.bytesResumed} bytes already there` : ""}`,
  );
  report.copy = {
    bytes_total: bundle.totalBytes,
    bytes_sent: upload.bytesSent,
    bytes_resumed: upload.bytesResumed,
    bytes_linked: bytesOf(bundle, linked),
    linked: [...linked].sort(),
  };

  await log.run(
    "verify-device",
    "check every file's sha256 on the device against the signed manifest",
    async () => {
      let bad = await verifyOnDevice(session, staging, bundle, o);
      if (bad.length === 0) return;
      // A corrupted staged prefix (e.g. a disk fault): send those files once more from byte 0.
      log.say(`[verify-device] ${bad.join(", ")} did not match; sending again`);
      const again = files.filter((f) => bad.includes(f.name));
      const r = await session.script(scripts.RESET, [staging, ...bad]);
      if (r.code !== 0) throw scriptError("reset", r, o);
      const resent = await uploadResumable(session, staging, again, new Map(), copyOptions(o));
      report.copy!.bytes_sent += resent.bytesSent;
      bad = await verifyOnDevice(session, staging, bundle, o);
      if (bad.length > 0) {
        throw new IteraError(`the copy on the device does not match the manifest: ${bad.join(", ")}`, {
          where: `${o.target.destination}:${staging}`,
          fix: "check the device's storage (SD card) and flash again",
        });
      }
    },
  );

  await log.run(
    "install",
    `install as ${release}`,
    async () => {
      const r = await session.script(scripts.INSTALL, [deviceLayout(o.prefix).base, m.version, staging]);
      if (r.stdout.includes("install=conflict")) {
        throw new IteraError(`release ${m.version} is already installed and running with different content`, {
          where: `${o.target.destination}:${release}`,
          fix: "give the new build its own version number",
        });
      }
      if (r.code !== 0) throw scriptError("install", r, o);
      return r.stdout.includes("install=reused") ? "reused" : "moved";
    },
    (how) => (how === "reused" ? "identical release already there: reused" : undefined),
  );
}

function bytesOf(b: VerifiedBundle, names: Set<string>): number {
  return b.files.filter((f) => names.has(f.name)).reduce((n, f) => n + f.bytes, 0);
}

function copyOptions(o: SshFlashOptions) {
  return {
    ...(o.chunkBytes ? { chunkBytes: o.chunkBytes } : {}),
    ...(o.signal ? { signal: o.signal } : {}),
    ...(o.onProgress ? { onProgress: o.onProgress } : {}),
  };
}

function scriptError(step: string, r: { code: number; stderr: string }, o: SshFlashOptions): IteraError {
  if (r.code === 255) return sshError(r.stderr, o.target);
  return new IteraError(`the ${step} step failed on the device: ${r.stderr.trim() || `exit ${r.code}`}`, {
    where: o.target.destination,
    fix: /Permission denied|Read-only/.test(r.stderr)
      ? "log in as root or pass --sudo (the user needs passwordless sudo)"
      : "fix the cause above and flash again",
  });
}

async function verifyOnDevice(session: Session, staging: string, b: VerifiedBundle, o: SshFlashOptions) {
  const list = b.files.map((f) => `${f.sha256}  ${f.name}`).join("\n");
  const r = await session.script(scripts.VERIFY, [staging, list]);
  if (r.code === 255) throw sshError(r.stderr, o.target);
  const ok = new Set(
    r.stdout
      .split("\n")
      .filter((l) => l.endsWith(": OK"))
      .map((l) => l.slice(0, -4)),
  );
  return b.files.map((f) => f.name).filter((n) => !ok.has(n));
}

/** Healthy: (with systemd) the unit is active and stays so, and `itera-agent info --json` answers JSON for the expected version. */
async function healthCheck(
  session: Session,
  L: DeviceLayout,
  o: SshFlashOptions,
  version: string,
): Promise<{ ok: boolean; info?: unknown; error?: string }> {
  const r = await session.script(scripts.HEALTH, [
    L.base,
    o.systemctl ?? "",
    String(o.healthTimeoutS),
    String(o.healthSettleS),
    L.serviceCache,
  ]);
  if (r.code === 255) throw sshError(r.stderr, o.target);
  const tail = r.stderr.trim().split("\n").slice(-3).join(" | ");
  if (r.code !== 0) return { ok: false, error: `exit ${r.code}${tail ? `: ${tail}` : ""}` };
  let info: unknown;
  try {
    info = JSON.parse(r.stdout);
  } catch {
    return { ok: false, error: "`itera-agent info --json` did not print JSON" };
  }
  const reported = reportedVersion(info);
  if (reported !== undefined && reported !== version) {
    return { ok: false, info, error: `the agent reports version ${reported}, expected ${version}` };
  }
  return { ok: true, info };
}

/** The release version in the agent's info (`manifest.version` or `version`), when it says. */
function reportedVersion(info: unknown): string | undefined {
  if (typeof info !== "object" || info === null) return undefined;
  const i = info as { version?: unknown; manifest?: { version?: unknown } };
  const v = i.manifest?.version ?? i.version;
  return typeof v === "string" ? v : undefined;
}

function planSteps(
  log: StepLog,
  o: SshFlashOptions,
  b: VerifiedBundle,
  L: DeviceLayout,
  staging: string,
  need: BrokerNeed | null,
  configOnDevice: string,
): void {
  const sh = (script: string, args: string[]) =>
    `ssh ${SshSession.argv(o.target, ["sh", "-s", "--", ...args]).join(" ")}  < ${script} script`;
  const m = b.manifest;
  log.plan(
    "connect",
    `connect to ${o.target.destination}: one shared connection (ControlMaster), host key checked`,
    `ssh ${sshOptions(o.target).join(" ")} -o ControlMaster=yes -- ${o.target.destination}, holding flock ${flashLockPath(o.prefix)} on the device`,
  );
  log.plan(
    "probe",
    "check architecture (uname -m = " +
      (m.target.arch === "arm64" ? "aarch64" : "x86_64") +
      "), free space (df -Pk), current release; the agent's broker: " +
      (brokerSource(need, o.config, null) ??
        `${configOnDevice} must have a "broker", else the flash is refused before copying`),
    sh("probe", [L.base, staging, m.version, configOnDevice, "..."]),
  );
  log.plan(
    "copy",
    `copy ${b.files.length} files (${b.totalBytes} bytes) into ${staging}, resuming what is already there; files the current release has byte for byte (an unchanged runtime) are hard-linked there instead (link step)`,
    `${b.files.map((f) => f.name).join(", ")}, each as: ssh ... ${SshSession.argv(o.target, scripts.appendArgv(`${staging}/FILE`)).at(-1)} < FILE from its staged size`,
  );
  log.plan(
    "verify-device",
    "sha256sum -c of every file against the signed manifest, on the device",
    sh("verify", [staging, "<checksums>"]),
  );
  log.plan(
    "install",
    `move the upload to ${posix.join(L.releases, m.version)}`,
    sh("install", [L.base, m.version, staging]),
  );
  if (o.config)
    log.plan("config", `write ${L.configFile}`, renderAgentConfig(o.config).replace(/\n\s*/g, " "));
  log.plan(
    "switch",
    `point ${L.current} at releases/${m.version}: ln -s to a temp name, then mv -T (atomic)`,
    sh("switch", [L.base, releaseLinkTarget(m.version)]),
  );
  log.plan(
    "unit",
    `install ${L.unit} and enable it`,
    o.systemctl
      ? `${o.systemctl} daemon-reload; ${o.systemctl} enable itera-agent.service`
      : `ln -s /etc/systemd/system/itera-agent.service ${L.wantsLink}`,
  );
  log.plan(
    "restart",
    "restart the agent",
    o.systemctl ? `${o.systemctl} restart itera-agent.service` : "none (no service manager)",
  );
  log.plan(
    "health",
    `wait up to ${o.healthTimeoutS}s for the agent's health`,
    `${o.systemctl ? `${o.systemctl} is-active itera-agent.service, then ` : ""}${posix.join(L.current, "itera-agent")} info --json`,
  );
  log.plan(
    "rollback",
    "only if the health check fails: put the previous release back (atomic switch, unit, restart)",
    sh("rollback", [L.prefix, L.base, "<previous>", m.version, o.systemctl ?? ""]),
  );
  log.plan(
    "cleanup",
    `remove the upload area; keep the newest ${o.keep} releases`,
    sh("cleanup", [L.base, String(o.keep), "<current>", "<previous>"]),
  );
}
