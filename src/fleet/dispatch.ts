import { randomBytes } from "node:crypto";
import type { MqttClient } from "mqtt";
import type { z } from "zod";
import { type BrokerOptions, connectBroker } from "../protocol/connect.js";
import {
  type JobDoc,
  type JobRequest,
  type JobResultPayload,
  type JobStatus,
  PROTOCOL_VERSION,
  terminalStatuses,
} from "../protocol/schemas.js";
import { jobTopic } from "../protocol/topics.js";
import type { DeviceView, FleetMonitor } from "./monitor.js";
import type { FleetStore } from "./store.js";

/** One device's execution of a dispatched job, followed to its end. */
export interface Execution<R> {
  device: string;
  execNo: number;
  status: JobStatus | "SENT";
  details: string | null;
  sends: number;
  results: R[];
}

export type DispatchEvent =
  | { type: "sent"; device: string; execNo: number; resend: boolean }
  | { type: "status"; device: string; status: JobStatus; details: string | null }
  | { type: "done"; device: string; status: JobStatus }
  /** A message refused (device or job other than its topic's) or a conflicting second result. */
  | { type: "refused"; topic: string; reason: string };

export interface DispatchOptions<R> {
  client: MqttClient;
  monitor: FleetMonitor;
  fleet: string;
  store: FleetStore;
  jobId: string;
  doc: JobDoc;
  /** Epoch ms: sent to the devices (they answer TIMED_OUT past it) and when dispatch gives up. */
  deadline: number;
  devices: string[];
  /** Check one result element against the job type's schema (a malformed one makes the message invalid). */
  parseResult: (r: Record<string, unknown>) => { ok: true; value: R } | { ok: false; error: string };
  /** Keep a device's results; false when this (jobId, device, execNo) was stored before (a duplicate). */
  storeResults: (device: string, execNo: number, results: R[]) => boolean;
  /** Forget them again (two conflicting answers: neither is trusted). */
  removeResults: (device: string, execNo: number) => void;
  /**
   * The coordinator's own word on a terminal answer before it counts (e.g. an update's health check:
   * the device's new birth must name the new version). Undefined: the device's answer stands.
   */
  judge?: (
    view: DeviceView | undefined,
    r: { status: JobStatus; results: R[]; error: string | null },
  ) => { status: JobStatus; details: string | null } | undefined;
  /** After the deadline, wait this long for the devices' own TIMED_OUT answers (default 3 s). */
  graceMs?: number;
  onEvent?: (e: DispatchEvent) => void;
}

export interface DispatchStats {
  duplicateResults: number;
  conflictingResults: number;
  invalidResults: number;
  resends: number;
}

/** A new job's id: `<kind>-<UTC time>-<random>` (e.g. `bench-20261204T233128-e3d428`). */
export function newJobId(kind: string, startedMs: number): string {
  const time = new Date(startedMs).toISOString().replace(/[-:]/g, "").replace(/\..*/, "");
  return `${kind}-${time}-${randomBytes(3).toString("hex")}`;
}

/**
 * The coordinator's connection for one job run: a persistent session kept an hour past the run, so
 * that if the broker restarts (with persistence) or the link drops, results published meanwhile are
 * queued for it instead of lost.
 */
export function connectCoordinator(
  broker: BrokerOptions,
  clientId: string | undefined,
  timeoutS: number,
): Promise<MqttClient> {
  return connectBroker(broker, {
    clientId: clientId ?? `itera-coordinator-${randomBytes(4).toString("hex")}`,
    clean: false,
    sessionExpiryS: Math.ceil(timeoutS) + 3600,
  });
}

/** `parseResult` for a job type whose result elements have a zod schema. */
export function resultParser<R>(
  schema: z.ZodType<R>,
): (r: Record<string, unknown>) => { ok: true; value: R } | { ok: false; error: string } {
  return (r) => {
    const p = schema.safeParse(r);
    return p.success
      ? { ok: true, value: p.data }
      : { ok: false, error: p.error.issues[0]?.message ?? "invalid" };
  };
}

export function isTerminal(s: JobStatus | "SENT"): boolean {
  return s !== "SENT" && terminalStatuses.has(s);
}

/**
 * Send one job to chosen devices and follow every execution to its end (DESIGN.md §8), whatever the
 * job's type: each device gets the request (execNo 1); a device that comes back with a new session
 * before finishing gets it again (it answers from its record: idempotent by jobId + execNo); results
 * are checked against the type's schema, de-duplicated by (jobId, device, execNo), and a second,
 * different result for the same execution makes it FAILED (someone else publishes on that topic).
 * Statuses and results whose payload names another device or job than their topic never get here:
 * the monitor refuses them. Ends when every device is terminal, or at the deadline plus a grace.
 */
export async function dispatch<R>(o: DispatchOptions<R>): Promise<{
  executions: Map<string, Execution<R>>;
  stats: DispatchStats;
}> {
  const { client, monitor, jobId, fleet } = o;
  const emit = o.onEvent ?? (() => {});
  const executions = new Map<string, Execution<R>>();
  /** The accepted result message of each device, to tell a re-delivery from a different second result. */
  const accepted = new Map<string, string>();
  const stats: DispatchStats = { duplicateResults: 0, conflictingResults: 0, invalidResults: 0, resends: 0 };

  const request = (execNo: number): string =>
    JSON.stringify({
      v: PROTOCOL_VERSION,
      jobId,
      execNo,
      deadline: o.deadline,
      doc: o.doc,
    } satisfies JobRequest);
  const send = (device: string, resend: boolean) => {
    const e = executions.get(device)!;
    e.sends++;
    client.publish(jobTopic(fleet, device, jobId, "request"), request(e.execNo), { qos: 1 });
    emit({ type: "sent", device, execNo: e.execNo, resend });
  };

  let finish!: () => void;
  const allDone = new Promise<void>((resolve) => {
    finish = resolve;
  });
  const checkDone = () => {
    if ([...executions.values()].every((e) => isTerminal(e.status))) finish();
  };

  const onBirth = (view: DeviceView) => {
    const e = executions.get(view.device);
    if (!e || e.sends === 0 || isTerminal(e.status)) return;
    // The device came back with a new session before finishing: send the job again. A device that
    // still has it answers with its recorded status (idempotent by jobId + execNo) and never re-runs it.
    stats.resends++;
    send(view.device, true);
  };
  const onStatus = (
    device: string,
    s: { jobId: string; execNo: number; status: JobStatus; details: string | null },
  ) => {
    const e = executions.get(device);
    if (!e || s.jobId !== jobId || s.execNo !== e.execNo) return;
    if (isTerminal(e.status)) return;
    if (isTerminal(s.status)) return; // the result message carries the terminal outcome
    e.status = s.status;
    e.details = s.details;
    o.store.setExecution(jobId, fleet, device, e.execNo, s.status, s.details);
    emit({ type: "status", device, status: s.status, details: s.details });
  };
  const onResult = (device: string, r: JobResultPayload) => {
    const e = executions.get(device);
    if (!e || r.jobId !== jobId || r.execNo !== e.execNo) return;
    const topic = jobTopic(fleet, device, jobId, "result");
    const parsed: R[] = [];
    for (const [i, x] of r.results.entries()) {
      const p = o.parseResult(x);
      if (!p.ok) {
        stats.invalidResults++;
        emit({ type: "refused", topic, reason: `results.${i}: ${p.error}` });
        return;
      }
      parsed.push(p.value);
    }
    const text = JSON.stringify({ status: r.status, results: r.results, error: r.error });
    const first = accepted.get(device);
    if (first === text) {
      stats.duplicateResults++; // QoS 1 re-delivery, or the device answering a re-sent job from its record
      return;
    }
    if (first !== undefined) {
      // A device answers one execution once; two different answers on its topic mean someone else
      // can publish there. Which one is genuine cannot be known, so neither is kept.
      stats.conflictingResults++;
      if (e.status === "FAILED" && e.results.length === 0 && e.details?.startsWith("conflicting")) return;
      e.status = "FAILED";
      e.results = [];
      e.details =
        "conflicting results: two different result messages arrived on this device's topic for the same job; " +
        "neither is trusted (someone else can publish there: secure the broker, docs/fleet.md)";
      o.removeResults(device, e.execNo);
      o.store.setExecution(jobId, fleet, device, e.execNo, e.status, e.details);
      emit({ type: "refused", topic, reason: e.details });
      return;
    }
    accepted.set(device, text);
    const fresh = o.storeResults(device, r.execNo, parsed);
    if (!fresh || isTerminal(e.status)) {
      stats.duplicateResults++;
      return;
    }
    const verdict = o.judge?.(monitor.devices.get(device), {
      status: r.status,
      results: parsed,
      error: r.error,
    }) ?? { status: r.status, details: r.error };
    e.status = verdict.status;
    e.details = verdict.details;
    e.results = parsed;
    o.store.setExecution(jobId, fleet, device, e.execNo, e.status, e.details);
    emit({ type: "done", device, status: verdict.status });
    checkDone();
  };

  monitor.on("birth", onBirth);
  monitor.on("status", onStatus);
  monitor.on("result", onResult);
  try {
    for (const device of o.devices) {
      executions.set(device, { device, execNo: 1, status: "SENT", details: null, sends: 0, results: [] });
      o.store.setExecution(jobId, fleet, device, 1, "QUEUED", "sent");
      send(device, false);
    }
    if (o.devices.length === 0) finish();
    // The agents enforce the deadline themselves and answer TIMED_OUT; the grace lets that answer arrive.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      allDone,
      new Promise<void>((r) => {
        timer = setTimeout(r, Math.max(0, o.deadline - Date.now()) + (o.graceMs ?? 3000));
      }),
    ]);
    clearTimeout(timer);
  } finally {
    monitor.off("birth", onBirth);
    monitor.off("status", onStatus);
    monitor.off("result", onResult);
  }
  for (const e of executions.values()) {
    if (!isTerminal(e.status)) {
      const state = monitor.devices.get(e.device)?.state ?? "unknown";
      e.details = `no result before the deadline (last status ${e.status}${e.details ? `: ${e.details}` : ""}, device ${state})`;
      e.status = "TIMED_OUT";
      o.store.setExecution(jobId, fleet, e.device, e.execNo, "TIMED_OUT", e.details);
    }
  }
  return { executions, stats };
}
