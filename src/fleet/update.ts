import { createHash, randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { MqttClient } from "mqtt";
import { loadVerifiedBundle } from "../deploy/bundle.js";
import { IteraError } from "../errors.js";
import { type BrokerOptions, connectBroker, endAsync } from "../protocol/connect.js";
import {
  chunkNeedSchema,
  decode,
  type JobStatus,
  PROTOCOL_VERSION,
  UPDATE_CHUNK_BYTES,
  type UpdateParams,
  type UpdateResult,
  updateResultSchema,
} from "../protocol/schemas.js";
import { fleetFilter, jobTopic, parseTopic } from "../protocol/topics.js";
import { watchTrust } from "./anonymous-probe.js";
import { discover } from "./bench.js";
import { dispatch, type DispatchEvent } from "./dispatch.js";
import { FleetMonitor } from "./monitor.js";
import type { FleetStore } from "./store.js";

export interface FleetUpdateOptions {
  broker: BrokerOptions;
  fleet: string;
  /** A bundle folder (or its .tar.gz) made by `itera build`. */
  bundle: string;
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
  store: FleetStore;
  clientId?: string;
  onEvent?: (e: UpdateEvent) => void;
}

export type UpdateEvent =
  | DispatchEvent
  | { type: "discovered"; devices: string[]; canary: string[] }
  | { type: "wave"; wave: number; devices: string[] }
  | { type: "chunks"; device: string; count: number }
  | { type: "warning"; message: string };

export interface UpdateDeviceOutcome {
  device: string;
  profile: string;
  /** 0: the canary wave; then 1, 2, ... */
  wave: number | null;
  from: string | null;
  status: JobStatus | "SENT" | "SKIPPED";
  details: string | null;
  /** The version the device runs at the end (from its result, else its latest birth). */
  running: string | null;
  rolledBack: boolean;
  chunksSent: number;
}

export interface FleetUpdateOutcome {
  jobId: string;
  fleet: string;
  bundleId: string;
  version: string;
  startedMs: number;
  finishedMs: number;
  /** updated: every device; canary-failed: a canary failed, no other device was touched; stopped: --max-failures reached. */
  result: "updated" | "canary-failed" | "stopped";
  reason: string | null;
  canary: string[];
  devices: UpdateDeviceOutcome[];
  anonymousBroker: boolean;
  warnings: string[];
  refused: Array<{ topic: string; reason: string }>;
  stats: { payloadBytes: number; chunks: number; chunksSent: number; needs: number; resends: number };
}

/**
 * An update job's parameters and payload from a bundle checked here (signature, every file): its
 * files concatenated in the manifest's sorted order, cut into chunks of UPDATE_CHUNK_BYTES.
 */
export async function prepareUpdate(
  bundlePath: string,
  healthTimeoutS: number,
  trustedKey?: string,
): Promise<{ params: UpdateParams; payload: Buffer }> {
  const bundle = await loadVerifiedBundle(bundlePath, trustedKey);
  let payload: Buffer;
  try {
    const names = Object.keys(bundle.manifest.files).sort();
    payload = Buffer.concat(await Promise.all(names.map((n) => readFile(join(bundle.dir, n)))));
  } finally {
    await bundle.dispose();
  }
  const chunkBytes = UPDATE_CHUNK_BYTES;
  const params: UpdateParams = {
    manifest: bundle.manifest as unknown as Record<string, unknown>,
    payload_sha256: createHash("sha256").update(payload).digest("hex"),
    payload_bytes: payload.length,
    chunk_bytes: chunkBytes,
    chunks: Math.ceil(payload.length / chunkBytes),
    health_timeout_s: healthTimeoutS,
  };
  return { params, payload };
}

/**
 * `itera fleet update`: a whole bundle to a fleet over MQTT (docs/fleet.md "Updates"). The bundle is
 * checked here (signature, every file), its files are concatenated in the manifest's sorted order
 * into one payload cut into chunks; each device gets an `update` job (src/fleet/dispatch.ts) and
 * asks for the chunks it lacks on `jobs/{jobId}/need`, which are sent on `jobs/{jobId}/chunk`.
 * Canary devices first; the rest, in waves of the canary's size, only when every canary came back
 * healthy (its result SUCCEEDED and its new birth naming the new version); no new wave once
 * --max-failures devices failed.
 */
export async function runFleetUpdate(o: FleetUpdateOptions): Promise<FleetUpdateOutcome> {
  const { params, payload } = await prepareUpdate(o.bundle, o.healthTimeoutS, o.trustedKey);
  const startedMs = Date.now();
  const jobId = `update-${new Date(startedMs).toISOString().replace(/[-:]/g, "").replace(/\..*/, "")}-${randomBytes(3).toString("hex")}`;
  const client = await connectBroker(o.broker, {
    clientId: o.clientId ?? `itera-coordinator-${randomBytes(4).toString("hex")}`,
    clean: false,
    sessionExpiryS: Math.ceil(o.timeoutS) + 3600,
  });
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
  const m = params.manifest as { version: string; bundle_id: string; model: { id: string } };
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

  const chosen = await discover(monitor, o, Date.now() + Math.max(o.timeoutS, 1) * 1000);
  const canarySize =
    "count" in o.canary
      ? Math.min(chosen.length, Math.max(1, o.canary.count))
      : Math.min(chosen.length, Math.max(1, Math.ceil((chosen.length * o.canary.percent) / 100)));
  const canary = chosen.slice(0, canarySize);
  emit({ type: "discovered", devices: chosen, canary });
  const fromVersion = new Map(chosen.map((d) => [d, monitor.devices.get(d)?.birth?.agent.version ?? null]));
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
    },
    startedMs,
    deadlineMs: startedMs + o.timeoutS * 1000,
  });

  const outcomes = new Map<string, UpdateDeviceOutcome>(
    chosen.map((d) => [
      d,
      {
        device: d,
        profile: monitor.devices.get(d)?.birth?.profile ?? "?",
        wave: null,
        from: fromVersion.get(d) ?? null,
        status: "SKIPPED",
        details: null,
        running: fromVersion.get(d) ?? null,
        rolledBack: false,
        chunksSent: 0,
      },
    ]),
  );
  const waves: string[][] = [canary];
  for (let i = canarySize; i < chosen.length; i += canarySize) waves.push(chosen.slice(i, i + canarySize));
  let failures = 0;
  let result: FleetUpdateOutcome["result"] = "updated";
  let reason: string | null = null;
  let resends = 0;
  for (const [wave, devices] of waves.entries()) {
    emit({ type: "wave", wave, devices });
    for (const d of devices) active.add(d);
    const { executions, stats } = await dispatch<UpdateResult>({
      client,
      monitor,
      fleet: o.fleet,
      store: o.store,
      jobId,
      doc: { type: "update", params },
      deadline: Date.now() + o.timeoutS * 1000,
      devices,
      parseResult: (r) => {
        const p = updateResultSchema.safeParse(r);
        return p.success
          ? { ok: true, value: p.data }
          : { ok: false, error: p.error.issues[0]?.message ?? "invalid" };
      },
      storeResults: (device, execNo, results) =>
        results.every((r) => o.store.addUpdateResult(jobId, o.fleet, device, execNo, r)),
      removeResults: (device, execNo) => o.store.removeUpdateResults(jobId, device, execNo),
      // Healthy: the device says so AND its new session's birth names the new version.
      judge: (view, r) => {
        if (r.status !== "SUCCEEDED") return undefined;
        const born = view?.birth?.agent.version;
        if (r.results[0]?.running === m.version && born === m.version && view?.state === "online")
          return undefined;
        return {
          status: "FAILED",
          details: `health check: the device reported success but is ${view?.state ?? "unknown"} with version ${born ?? "unknown"} in its birth, not ${m.version}`,
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
      out.running = r?.running ?? monitor.devices.get(e.device)?.birth?.agent.version ?? out.running;
      out.chunksSent = chunksSent.get(e.device) ?? 0;
      if (e.status !== "SUCCEEDED") failures++;
    }
    const failed = [...executions.values()].filter((e) => e.status !== "SUCCEEDED");
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
  for (const out of outcomes.values()) {
    if (out.status === "SKIPPED") out.details = "not sent: the update stopped before this device's wave";
  }
  const outcome: FleetUpdateOutcome = {
    jobId,
    fleet: o.fleet,
    bundleId: m.bundle_id,
    version: m.version,
    startedMs,
    finishedMs: Date.now(),
    result,
    reason,
    canary,
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
    `fleet ${u.fleet}, bundle ${u.bundleId} (version ${u.version}), ${u.stats.payloadBytes} bytes in ${u.stats.chunks} chunks`,
    `result: **${u.result}**${u.reason ? `: ${u.reason}` : ""}`,
    `canary: ${u.canary.join(", ")}`,
    "",
    "| device | profile | wave | from | status | running | rolled back | chunks sent | details |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ...u.devices.map(
      (d) =>
        `| ${d.device} | ${d.profile} | ${d.wave === null ? "-" : d.wave === 0 ? "canary" : d.wave} | ${d.from ?? "?"} | ${d.status} | ${d.running ?? "?"} | ${d.rolledBack ? "yes" : "no"} | ${d.chunksSent} | ${(d.details ?? "").replace(/\|/g, "\\|")} |`,
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
