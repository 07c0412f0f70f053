import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { MqttClient } from "mqtt";
import type { Manifest } from "../bundle/manifest.js";
import { loadVerifiedBundle } from "../deploy/bundle.js";
import { IteraError } from "../errors.js";
import { type BrokerOptions, endAsync } from "../protocol/connect.js";
import {
  chunkNeedSchema,
  decode,
  type JobStatus,
  PROTOCOL_VERSION,
  UPDATE_CHUNK_BYTES,
  type UpdateParams,
  type UpdateResult,
  updatePayloadFiles,
  updateResultSchema,
  releaseOfDevice,
} from "../protocol/schemas.js";
import { fleetFilter, jobTopic, parseTopic } from "../protocol/topics.js";
import { watchTrust } from "./anonymous-probe.js";
import { discover } from "./bench.js";
import { connectCoordinator, dispatch, type DispatchEvent, newJobId, resultParser } from "./dispatch.js";
import { FleetMonitor } from "./monitor.js";
import { splitDevices } from "./variants.js";
import type { FleetStore } from "./store.js";

export interface FleetUpdateOptions {
  broker: BrokerOptions;
  fleet: string;
  /** A bundle folder (or its .tar.gz) made by `itera build`. */
  bundle: string;
  /**
   * `--model-pack`: send every file of the (v2) bundle but its runtime executable, which each device
   * takes from its current release; a device running another runtime REJECTS the job.
   */
  payload?: UpdatePayloadKind;
  /** Checked here before anything is sent (the devices check their own trusted key). */
  trustedKey?: string;
  select?: Record<string, string>;
  /** Canary devices: a count, or a percentage of the selected devices (at least 1). */
  canary: { count: number } | { percent: number };
  /** Stop sending to further devices once this many have failed (canaries included). */
  maxFailures: number;
  /** How long a device's new release has to come back online with its version before it rolls back. */
  healthTimeoutS: number;
  /** Deadline of each wave (transfer, install, restart and health check), seconds. */
  timeoutS: number;
  discoverS?: number;
  /**
   * An A/B variant: the release is installed as this variant on `splitPercent` % of the selected
   * devices (chosen by splitDevices, the same ones on every run); the others keep what they run.
   */
  variant?: string;
  splitPercent?: number;
  /**
   * After the last wave, how long the devices that were offline when their wave came (sent the job,
   * queued by the broker for their persistent session) have to come back and update; later they are
   * reported as not updated. Default 60 s.
   */
  offlineWaitS?: number;
  store: FleetStore;
  clientId?: string;
  onEvent?: (e: UpdateEvent) => void;
}

export type UpdateEvent =
  | DispatchEvent
  | { type: "discovered"; devices: string[]; canary: string[]; kept: string[] }
  | { type: "wave"; wave: number; devices: string[] }
  /** Devices offline when their wave came: they get the job at the end (queued for their session). */
  | { type: "deferred"; wave: number; devices: string[] }
  | { type: "waiting"; devices: string[]; seconds: number }
  | { type: "chunks"; device: string; count: number }
  | { type: "warning"; message: string };

export interface UpdateDeviceOutcome {
  device: string;
  profile: string;
  /** 0: the canary wave; then 1, 2, ...; null: not sent (see status). */
  wave: number | null;
  from: string | null;
  /**
   * SKIPPED: not sent (the run stopped first, or not in the --split: it keeps its variant);
   * OFFLINE: offline from its wave to the rollout's end, not updated.
   */
  status: JobStatus | "SENT" | "SKIPPED" | "OFFLINE";
  details: string | null;
  /** The version the device runs at the end (from its result, else its latest birth). */
  running: string | null;
  rolledBack: boolean;
  chunksSent: number;
  /** Payload bytes the device received for this update (its result's; 0 when it reported none). */
  bytes: number;
  /** The A/B variant it runs at the end (null: none; grouped by its version then). */
  variant: string | null;
}

export interface FleetUpdateOutcome {
  jobId: string;
  fleet: string;
  bundleId: string;
  version: string;
  /** bundle: every file sent; model-pack: all but the runtime, which the devices already run. */
  payload: UpdatePayloadKind;
  /** The runtime id of a v2 bundle (first 16 hex of the executable's sha256); null for v1. */
  runtimeId: string | null;
  startedMs: number;
  finishedMs: number;
  /**
   * updated: every device sent the update; canary-failed: a canary failed, no other device was
   * touched; stopped: --max-failures reached; incomplete: devices offline until the end were not updated.
   */
  result: "updated" | "canary-failed" | "stopped" | "incomplete";
  reason: string | null;
  canary: string[];
  /** With --variant: its name, the split, and the selected devices that keep what they run. */
  variant: string | null;
  splitPercent: number | null;
  kept: string[];
  devices: UpdateDeviceOutcome[];
  anonymousBroker: boolean;
  warnings: string[];
  refused: Array<{ topic: string; reason: string }>;
  stats: { payloadBytes: number; chunks: number; chunksSent: number; needs: number; resends: number };
}

export type UpdatePayloadKind = NonNullable<UpdateParams["payload"]>;

/**
 * An update job's parameters and payload from a bundle checked here (signature, every file, a v2
 * bundle's model pack): its files (for `model-pack`, all but the runtime) concatenated in the
 * manifest's sorted order, cut into chunks of UPDATE_CHUNK_BYTES.
 */
export async function prepareUpdate(
  bundlePath: string,
  healthTimeoutS: number,
  trustedKey?: string,
  kind: UpdatePayloadKind = "bundle",
): Promise<{ params: UpdateParams; payload: Buffer }> {
  const bundle = await loadVerifiedBundle(bundlePath, trustedKey);
  try {
    if (kind === "model-pack" && !bundle.manifest.parts) {
      throw new IteraError("--model-pack needs an itera.bundle/v2 bundle (runtime and model pack as parts)", {
        where: `${bundlePath} (manifest schema ${bundle.manifest.schema})`,
        fix: "send this one whole with --bundle, or build the new release with `itera build --runtime BUNDLE` around the bundle the devices run",
      });
    }
    return await updatePayload(bundle.dir, bundle.manifest, healthTimeoutS, kind);
  } finally {
    await bundle.dispose();
  }
}

/**
 * The job parameters and payload of a bundle folder as it is on disk, unchecked (prepareUpdate checks
 * it first; tests use this to send what a forger would).
 */
export async function updatePayload(
  dir: string,
  manifest: Manifest,
  healthTimeoutS: number,
  kind: UpdatePayloadKind,
): Promise<{ params: UpdateParams; payload: Buffer }> {
  const names = updatePayloadFiles(manifest, kind);
  const payload = Buffer.concat(await Promise.all(names.map((n) => readFile(join(dir, n)))));
  const chunkBytes = UPDATE_CHUNK_BYTES;
  const params: UpdateParams = {
    manifest: manifest as unknown as Record<string, unknown>,
    payload_sha256: createHash("sha256").update(payload).digest("hex"),
    payload_bytes: payload.length,
    chunk_bytes: chunkBytes,
    chunks: Math.ceil(payload.length / chunkBytes),
    health_timeout_s: healthTimeoutS,
    ...(kind === "model-pack" ? { payload: kind } : {}),
  };
  return { params, payload };
}

/**
 * `itera fleet update`: a whole bundle (or, `--model-pack`, all of it but the runtime) to a fleet over
 * MQTT (docs/fleet.md "Over-the-air updates"). The bundle is checked here (signature, every file),
 * its files are concatenated in the manifest's sorted order
 * into one payload cut into chunks; each device gets an `update` job (src/fleet/dispatch.ts) and
 * asks for the chunks it lacks on `jobs/{jobId}/need`, which are sent on `jobs/{jobId}/chunk`.
 * Canary devices first; the rest, in waves of the canary's size, only when every canary came back
 * healthy (its result SUCCEEDED and its new birth naming the new version); no new wave once
 * --max-failures devices failed.
 */
export async function runFleetUpdate(o: FleetUpdateOptions): Promise<FleetUpdateOutcome> {
  const prepared = await prepareUpdate(o.bundle, o.healthTimeoutS, o.trustedKey, o.payload);
  const params: UpdateParams = o.variant ? { ...prepared.params, variant: o.variant } : prepared.params;
  const { payload } = prepared;
  const startedMs = Date.now();
  const jobId = newJobId("update", startedMs);
  const client = await connectCoordinator(o.broker, o.clientId, o.timeoutS);
  try {
    return await updateWith(client, o, jobId, startedMs, params, payload);
  } finally {
    await endAsync(client);
  }
}

async function updateWith(
  client: MqttClient,
  o: FleetUpdateOptions,
  jobId: string,
  startedMs: number,
  params: UpdateParams,
  payload: Buffer,
): Promise<FleetUpdateOutcome> {
  const m = params.manifest as Manifest;
  const emit = o.onEvent ?? (() => {});
  const monitor = new FleetMonitor(client, o.fleet, o.store);
  const { warnings, refused, refuse, anonymous } = watchTrust(monitor, o.broker, emit);

  // Chunks go only to devices this run sent the job to, for this job, as many as they ask for.
  const active = new Set<string>();
  const chunksSent = new Map<string, number>();
  let needs = 0;
  const sendChunk = (device: string, index: number) => {
    const data = payload.subarray(index * params.chunk_bytes, (index + 1) * params.chunk_bytes);
    const sha256 = createHash("sha256").update(data).digest("hex");
    client.publish(
      jobTopic(o.fleet, device, jobId, "chunk"),
      JSON.stringify({ v: PROTOCOL_VERSION, jobId, index, sha256, data: data.toString("base64") }),
      { qos: 1 },
    );
    chunksSent.set(device, (chunksSent.get(device) ?? 0) + 1);
  };
  client.on("message", (topic, raw) => {
    const t = parseTopic(topic);
    if (t?.kind !== "need" || t.fleet !== o.fleet || t.jobId !== jobId || !active.has(t.device)) return;
    const d = decode(chunkNeedSchema, raw);
    if (!d.ok || d.value.jobId !== jobId) {
      refuse(topic, d.ok ? `the payload's jobId is '${d.value.jobId}'` : d.error);
      return;
    }
    needs++;
    let count = 0;
    for (const [a, b] of d.value.missing) {
      for (let i = a; i <= Math.min(b, params.chunks - 1); i++) {
        sendChunk(t.device, i);
        count++;
      }
    }
    emit({ type: "chunks", device: t.device, count });
  });
  await monitor.subscribe();
  await client.subscribeAsync(fleetFilter(o.fleet, "need"), { qos: 1 });

  const selected = await discover(
    monitor,
    { ...o, includeOffline: true },
    Date.now() + Math.max(o.timeoutS, 1) * 1000,
  );
  const chosen = o.variant ? splitDevices(selected, o.variant, o.splitPercent ?? 100) : selected;
  const kept = selected.filter((d) => !chosen.includes(d));
  const isOnline = (d: string) => monitor.devices.get(d)?.state === "online";
  // The canary must be able to answer now: online devices first (each group sorted by id).
  const ordered = [...chosen.filter(isOnline), ...chosen.filter((d) => !isOnline(d))];
  if (!ordered.some(isOnline)) {
    throw new IteraError(`no device to update in fleet '${o.fleet}' is online`, {
      where: `${o.broker.url} itera/v1/${o.fleet}/+/state (${ordered.map((d) => `${d} ${monitor.devices.get(d)?.state}`).join(", ")})`,
      fix: "start the devices' agents (a canary must be online), or check --fleet, --select and --split",
    });
  }
  const canarySize =
    "count" in o.canary
      ? Math.min(ordered.length, Math.max(1, o.canary.count))
      : Math.min(ordered.length, Math.max(1, Math.ceil((ordered.length * o.canary.percent) / 100)));
  const canary = ordered.slice(0, canarySize);
  emit({ type: "discovered", devices: ordered, canary, kept });
  const variantOf = (d: string) => monitor.devices.get(d)?.birth?.variant ?? null;
  const fromVersion = new Map(
    selected.map((d) => [d, releaseOfDevice(monitor.devices.get(d)?.birth) ?? null]),
  );
  o.store.addRun({
    jobId,
    type: "update",
    fleet: o.fleet,
    model: m.model.id,
    params: {
      ...params,
      manifest: undefined,
      bundle_id: m.bundle_id,
      version: m.version,
      canary,
      max_failures: o.maxFailures,
      ...(o.variant ? { split_percent: o.splitPercent ?? 100, kept } : {}),
    },
    startedMs,
    deadlineMs: startedMs + o.timeoutS * 1000,
  });

  const outcomes = new Map<string, UpdateDeviceOutcome>(
    selected.map((d) => [
      d,
      {
        device: d,
        profile: monitor.devices.get(d)?.birth?.profile ?? "?",
        wave: null,
        from: fromVersion.get(d) ?? null,
        status: "SKIPPED",
        details: kept.includes(d)
          ? `not in --split ${o.splitPercent}%: keeps ${variantOf(d) ? `variant ${variantOf(d)}` : "its release"} (${fromVersion.get(d) ?? "?"})`
          : null,
        running: fromVersion.get(d) ?? null,
        rolledBack: false,
        chunksSent: 0,
        bytes: 0,
        variant: variantOf(d),
      },
    ]),
  );
  const waves: string[][] = [canary];
  for (let i = canarySize; i < ordered.length; i += canarySize) waves.push(ordered.slice(i, i + canarySize));
  let failures = 0;
  let result: FleetUpdateOutcome["result"] = "updated";
  let reason: string | null = null;
  let resends = 0;
  const deferred: string[] = [];
  const offlineSince = new Map<string, number>();
  const runWave = async (wave: number, devices: string[], timeoutS: number) => {
    for (const d of devices) active.add(d);
    const { executions, stats } = await dispatch<UpdateResult>({
      client,
      monitor,
      fleet: o.fleet,
      store: o.store,
      jobId,
      doc: { type: "update", params },
      deadline: Date.now() + timeoutS * 1000,
      devices,
      parseResult: resultParser(updateResultSchema),
      storeResults: (device, execNo, results) =>
        results.every((r) => o.store.addUpdateResult(jobId, o.fleet, device, execNo, r)),
      removeResults: (device, execNo) => o.store.removeUpdateResults(jobId, device, execNo),
      // Healthy: the device says so AND its new session's birth names the new version (and variant).
      judge: (view, r) => {
        if (r.status !== "SUCCEEDED") return undefined;
        const born = releaseOfDevice(view?.birth);
        const bornVariant = view?.birth?.variant;
        if (
          r.results[0]?.running === m.version &&
          born === m.version &&
          view?.state === "online" &&
          (params.variant === undefined || bornVariant === params.variant)
        )
          return undefined;
        return {
          status: "FAILED",
          details: `health check: the device reported success but is ${view?.state ?? "unknown"} with version ${born ?? "unknown"}${params.variant ? ` and variant ${bornVariant ?? "none"}` : ""} in its birth, not ${m.version}${params.variant ? ` as ${params.variant}` : ""}`,
        };
      },
      onEvent: (e) => (e.type === "refused" ? refuse(e.topic, e.reason) : emit(e)),
    });
    resends += stats.resends;
    for (const e of executions.values()) {
      const out = outcomes.get(e.device)!;
      const r = e.results[0];
      out.wave = wave;
      out.status = e.status;
      out.details = e.details;
      out.rolledBack = r?.rolled_back ?? false;
      out.running = r?.running ?? releaseOfDevice(monitor.devices.get(e.device)?.birth) ?? out.running;
      out.variant = r ? (r.variant ?? null) : variantOf(e.device);
      out.chunksSent = chunksSent.get(e.device) ?? 0;
      out.bytes = r?.bytes ?? 0;
    }
    return [...executions.values()];
  };
  for (const [wave, all] of waves.entries()) {
    // A device offline when its wave comes does not hold up the others: it is sent the job after
    // the last wave (its persistent session keeps it) and has until --offline-wait to come back.
    const devices = all.filter(isOnline);
    const away = all.filter((d) => !isOnline(d));
    if (away.length > 0) {
      for (const d of away) offlineSince.set(d, monitor.devices.get(d)?.lastSeenMs ?? Date.now());
      deferred.push(...away);
      emit({ type: "deferred", wave, devices: away });
    }
    if (devices.length === 0) continue;
    emit({ type: "wave", wave, devices });
    const failed = (await runWave(wave, devices, o.timeoutS)).filter((e) => e.status !== "SUCCEEDED");
    failures += failed.length;
    if (wave === 0 && failed.length > 0) {
      result = "canary-failed";
      reason = `canary ${failed.map((e) => `${e.device}: ${e.status}${e.details ? ` (${e.details})` : ""}`).join("; ")}; no other device was sent the update`;
      break;
    }
    if (failures >= o.maxFailures && failed.length > 0) {
      result = "stopped";
      reason = `${failures} device(s) failed (--max-failures ${o.maxFailures}); later devices were not sent the update`;
      break;
    }
  }
  if (result === "updated" && deferred.length > 0) {
    const waitS = o.offlineWaitS ?? 60;
    emit({ type: "waiting", devices: deferred, seconds: waitS });
    const ends = await runWave(waves.length, deferred, waitS);
    const missing: string[] = [];
    for (const e of ends) {
      if (e.status === "SUCCEEDED") continue;
      const out = outcomes.get(e.device)!;
      // Never answered and never came back: not updated, for that reason (not a failed update).
      if (e.status === "TIMED_OUT" && !isOnline(e.device)) {
        const since = offlineSince.get(e.device);
        out.status = "OFFLINE";
        out.details = `not updated: ${monitor.devices.get(e.device)?.state ?? "offline"} since ${since ? new Date(since).toISOString() : "the rollout began"} until the rollout ended (--offline-wait ${waitS} s); run the update again once it is back (its queued job is past its deadline and will be refused)`;
        missing.push(e.device);
      } else failures++;
    }
    const failedLate = ends.filter((e) => e.status !== "SUCCEEDED" && !missing.includes(e.device));
    if (missing.length > 0 || failedLate.length > 0) {
      result = failedLate.length > 0 && failures >= o.maxFailures ? "stopped" : "incomplete";
      reason = [
        missing.length > 0 ? `not updated (offline until the end): ${missing.join(", ")}` : "",
        failedLate.length > 0
          ? `failed after coming back: ${failedLate.map((e) => `${e.device}: ${e.status}`).join(", ")}`
          : "",
      ]
        .filter(Boolean)
        .join("; ");
    }
  }
  for (const out of outcomes.values()) {
    if (out.status === "SKIPPED" && !kept.includes(out.device))
      out.details = deferred.includes(out.device)
        ? `not sent: offline when its wave came, and the update stopped before the end`
        : "not sent: the update stopped before this device's wave";
  }
  const outcome: FleetUpdateOutcome = {
    jobId,
    fleet: o.fleet,
    bundleId: m.bundle_id,
    version: m.version,
    payload: params.payload ?? "bundle",
    runtimeId: m.parts?.runtime.id ?? null,
    startedMs,
    finishedMs: Date.now(),
    result,
    reason,
    canary,
    variant: o.variant ?? null,
    splitPercent: o.variant ? (o.splitPercent ?? 100) : null,
    kept,
    devices: [...outcomes.values()],
    anonymousBroker: await anonymous,
    warnings,
    refused,
    stats: {
      payloadBytes: params.payload_bytes,
      chunks: params.chunks,
      chunksSent: [...chunksSent.values()].reduce((a, b) => a + b, 0),
      needs,
      resends,
    },
  };
  o.store.finishJob(jobId, outcome.finishedMs, outcome);
  return outcome;
}

/** The report of an update as markdown. */
export function renderUpdateMarkdown(u: FleetUpdateOutcome): string {
  const lines = [
    `# Fleet update ${u.jobId}`,
    "",
    `fleet ${u.fleet}, bundle ${u.bundleId} (version ${u.version}), ${u.stats.payloadBytes} bytes in ${u.stats.chunks} chunks${u.payload === "model-pack" ? `: the model pack only (runtime ${u.runtimeId} taken from each device's current release)` : ""}`,
    `result: **${u.result}**${u.reason ? `: ${u.reason}` : ""}`,
    `canary: ${u.canary.join(", ")}`,
    ...(u.variant
      ? [
          `variant **${u.variant}** on ${u.splitPercent}% of the selected devices; ${u.kept.length > 0 ? `keeping what they run: ${u.kept.join(", ")}` : "none kept"}`,
        ]
      : []),
    "",
    "| device | profile | wave | from | status | running | variant | rolled back | chunks sent | bytes received | details |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ...u.devices.map(
      (d) =>
        `| ${d.device} | ${d.profile} | ${d.wave === null ? "-" : d.wave === 0 ? "canary" : d.wave} | ${d.from ?? "?"} | ${d.status} | ${d.running ?? "?"} | ${d.variant ?? "-"} | ${d.rolledBack ? "yes" : "no"} | ${d.chunksSent} | ${d.bytes} | ${(d.details ?? "").replace(/\|/g, "\\|")} |`,
    ),
    "",
  ];
  for (const w of u.warnings) lines.push(`WARNING: ${w}`, "");
  return `${lines.join("\n")}`;
}

/** `--canary N` or `--canary P%`. */
export function parseCanary(text: string): FleetUpdateOptions["canary"] {
  const m = /^(\d+)(%?)$/.exec(text.trim());
  const n = m ? Number(m[1]) : Number.NaN;
  if (!m || n < 1 || (m[2] === "%" && n > 100)) {
    throw new IteraError(`invalid --canary '${text}'`, {
      where: "--canary",
      fix: "give a device count (e.g. --canary 1) or a percentage of the selected devices (e.g. --canary 10%)",
    });
  }
  return m[2] === "%" ? { percent: n } : { count: n };
}
