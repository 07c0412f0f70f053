import { randomBytes } from "node:crypto";
import type { MqttClient } from "mqtt";
import { IteraError } from "../errors.js";
import { type BrokerOptions, connectBroker, endAsync } from "../protocol/connect.js";
import {
  type BenchmarkParams,
  type BenchResult,
  type JobRequest,
  type JobStatus,
  PROTOCOL_VERSION,
  terminalStatuses,
} from "../protocol/schemas.js";
import { jobTopic } from "../protocol/topics.js";
import { acceptsAnonymous, anonymousWarning } from "./anonymous-probe.js";
import { type DeviceView, FleetMonitor } from "./monitor.js";
import type { FleetStore } from "./store.js";

export interface FleetBenchOptions {
  broker: BrokerOptions;
  fleet: string;
  /** Benchmark this many online devices (the first by id); default: every selected online device. */
  devices?: number;
  /** Only devices whose birth matches every key=value (`profile`, `arch`, `platform`, `model`). */
  select?: Record<string, string>;
  params: BenchmarkParams;
  timeoutS: number;
  /** How long to wait for retained births when --devices is not given (or not reached). */
  discoverS?: number;
  store: FleetStore;
  shareGroup?: string;
  clientId?: string;
  onEvent?: (e: BenchEvent) => void;
}

export type BenchEvent =
  | { type: "discovered"; devices: string[] }
  | { type: "sent"; device: string; execNo: number; resend: boolean }
  | { type: "status"; device: string; status: JobStatus; details: string | null }
  | { type: "done"; device: string; status: JobStatus }
  /** A message refused (device or job other than its topic's) or a conflicting second result. */
  | { type: "refused"; topic: string; reason: string }
  | { type: "warning"; message: string };

export interface DeviceOutcome {
  device: string;
  profile: string;
  quant: string | null;
  execNo: number;
  status: JobStatus | "SENT";
  details: string | null;
  sends: number;
  results: BenchResult[];
  tempC: number | null;
  throttled: boolean | null;
}

export interface FleetBenchOutcome {
  jobId: string;
  fleet: string;
  model: string;
  params: BenchmarkParams;
  startedMs: number;
  finishedMs: number;
  devices: DeviceOutcome[];
  /** Whether the broker let an anonymous client connect (null: not probed, e.g. a stored older run). */
  anonymousBroker?: boolean | null;
  /** Things the reader of the report must know, e.g. that the broker accepts anonymous clients. */
  warnings?: string[];
  /** Messages not taken (at most 100): the topic and why. */
  refused?: Array<{ topic: string; reason: string }>;
  stats: {
    messages: number;
    invalid: number;
    /** Messages whose payload claims another device or job than their topic. */
    refused?: number;
    /** Second results for a device's job that differ from the first: neither is trusted. */
    conflictingResults?: number;
    duplicateResults: number;
    duplicateTelemetry: number;
    resends: number;
  };
}

function matches(view: DeviceView, select: Record<string, string> | undefined): boolean {
  if (!select) return true;
  const b = view.birth;
  if (!b) return false;
  return Object.entries(select).every(([k, v]) => {
    if (k === "profile") return b.profile === v;
    if (k === "arch") return b.hw.arch === v;
    if (k === "platform") return b.hw.platform === v;
    if (k === "model") return b.models.some((m) => m.id === v);
    if (k === "device") return view.device === v;
    return false;
  });
}

export const selectKeys = ["profile", "arch", "platform", "model", "device"];

/**
 * Benchmark a fleet (DESIGN.md §8): discover online devices from retained birth/state, send each a
 * benchmark job, follow every execution, re-send to a device that comes back with a new session
 * before its job finished, stop at the deadline, and return one outcome per device. Results are
 * de-duplicated by (jobId, device, execNo) and stored with telemetry in the fleet database.
 */
export async function runFleetBench(o: FleetBenchOptions): Promise<FleetBenchOutcome> {
  const startedMs = Date.now();
  const jobId = `bench-${new Date(startedMs).toISOString().replace(/[-:]/g, "").replace(/\..*/, "")}-${randomBytes(3).toString("hex")}`;
  const deadline = startedMs + o.timeoutS * 1000;
  const client = await connectBroker(o.broker, {
    clientId: o.clientId ?? `itera-coordinator-${randomBytes(4).toString("hex")}`,
    // A persistent session: if the broker restarts (with persistence) or the link drops, results
    // published meanwhile are queued for us instead of lost.
    clean: false,
    sessionExpiryS: Math.ceil(o.timeoutS) + 3600,
  });
  try {
    return await benchWith(client, o, jobId, startedMs, deadline);
  } finally {
    await endAsync(client);
  }
}

async function benchWith(
  client: MqttClient,
  o: FleetBenchOptions,
  jobId: string,
  startedMs: number,
  deadline: number,
): Promise<FleetBenchOutcome> {
  const monitor = new FleetMonitor(
    client,
    o.fleet,
    o.store,
    o.shareGroup ? { shareGroup: o.shareGroup } : {},
  );
  const emit = o.onEvent ?? (() => {});
  const warnings: string[] = [];
  const refused: Array<{ topic: string; reason: string }> = [];
  const refuse = (topic: string, reason: string) => {
    if (refused.length < 100) refused.push({ topic, reason });
    emit({ type: "refused", topic, reason });
  };
  monitor.on("refused", refuse);
  // Probed while the devices are discovered, so it costs no time.
  const anonymous = acceptsAnonymous(o.broker).then((yes) => {
    if (yes) {
      const message = anonymousWarning(o.broker.url);
      warnings.push(message);
      emit({ type: "warning", message });
    }
    return yes;
  });
  await monitor.subscribe();

  const chosen = await discover(monitor, o, deadline);
  emit({ type: "discovered", devices: chosen });

  o.store.addRun({
    jobId,
    fleet: o.fleet,
    model: o.params.model,
    params: o.params,
    startedMs,
    deadlineMs: deadline,
  });
  const executions = new Map<string, DeviceOutcome>();
  /** The accepted result message of each device, to tell a re-delivery from a different second result. */
  const accepted = new Map<string, string>();
  let duplicateResults = 0;
  let conflictingResults = 0;
  let resends = 0;

  const request = (execNo: number): string =>
    JSON.stringify({
      v: PROTOCOL_VERSION,
      jobId,
      execNo,
      deadline,
      doc: { type: "benchmark", params: o.params },
    } satisfies JobRequest);

  const send = (device: string, resend: boolean) => {
    const e = executions.get(device)!;
    e.sends++;
    client.publish(jobTopic(o.fleet, device, jobId, "request"), request(e.execNo), { qos: 1 });
    emit({ type: "sent", device, execNo: e.execNo, resend });
  };

  let finish!: () => void;
  const allDone = new Promise<void>((resolve) => {
    finish = resolve;
  });
  const checkDone = () => {
    if ([...executions.values()].every((e) => isTerminal(e.status))) finish();
  };

  monitor.on("birth", (view) => {
    const e = executions.get(view.device);
    if (!e || e.sends === 0 || isTerminal(e.status)) return;
    // The device came back with a new session before finishing: send the job again. A device that
    // still has it answers with its recorded status (idempotent by jobId + execNo) and never re-runs it.
    resends++;
    send(view.device, true);
  });
  monitor.on("status", (device, s) => {
    const e = executions.get(device);
    if (!e || s.jobId !== jobId || s.execNo !== e.execNo) return;
    if (isTerminal(e.status)) return;
    if (isTerminal(s.status)) return; // the result message carries the terminal outcome
    e.status = s.status;
    e.details = s.details;
    o.store.setExecution(jobId, o.fleet, device, e.execNo, s.status, s.details);
    emit({ type: "status", device, status: s.status, details: s.details });
  });
  monitor.on("result", (device, r) => {
    const e = executions.get(device);
    if (!e || r.jobId !== jobId || r.execNo !== e.execNo) return;
    const topic = jobTopic(o.fleet, device, jobId, "result");
    const text = JSON.stringify({ status: r.status, results: r.results, error: r.error });
    const first = accepted.get(device);
    if (first === text) {
      duplicateResults++; // QoS 1 re-delivery, or the device answering a re-sent job from its record
      return;
    }
    if (first !== undefined) {
      // A device answers one execution once; two different answers on its topic mean someone else
      // can publish there. Which one is genuine cannot be known, so neither is kept.
      conflictingResults++;
      if (e.status === "FAILED" && e.results.length === 0 && e.details?.startsWith("conflicting")) return;
      e.status = "FAILED";
      e.results = [];
      e.details =
        "conflicting results: two different result messages arrived on this device's topic for the same job; " +
        "neither is trusted (someone else can publish there: secure the broker, docs/fleet.md)";
      o.store.removeResults(jobId, device, e.execNo);
      o.store.setExecution(jobId, o.fleet, device, e.execNo, e.status, e.details);
      refuse(topic, e.details);
      return;
    }
    accepted.set(device, text);
    const fresh = o.store.addResults(jobId, o.fleet, device, r.execNo, r.results);
    if (!fresh || isTerminal(e.status)) {
      duplicateResults++;
      return;
    }
    e.status = r.status;
    e.details = r.error;
    e.results = r.results;
    o.store.setExecution(jobId, o.fleet, device, e.execNo, r.status, r.error);
    emit({ type: "done", device, status: r.status });
    checkDone();
  });

  for (const device of chosen) {
    const view = monitor.devices.get(device)!;
    executions.set(device, {
      device,
      profile: view.birth?.profile ?? "?",
      quant: view.birth?.models.find((m) => m.id === o.params.model)?.quant ?? null,
      execNo: 1,
      status: "SENT",
      details: null,
      sends: 0,
      results: [],
      tempC: null,
      throttled: null,
    });
    o.store.setExecution(jobId, o.fleet, device, 1, "QUEUED", "sent");
    send(device, false);
  }

  // The agents enforce the deadline themselves and answer TIMED_OUT; the grace lets that answer arrive.
  const graceMs = 3000;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    allDone,
    new Promise<void>((r) => {
      timer = setTimeout(r, Math.max(0, deadline - Date.now()) + graceMs);
    }),
  ]);
  clearTimeout(timer);
  const anonymousBroker = await anonymous;

  for (const e of executions.values()) {
    if (!isTerminal(e.status)) {
      const state = monitor.devices.get(e.device)?.state ?? "unknown";
      e.details = `no result before the deadline (last status ${e.status}, device ${state})`;
      e.status = "TIMED_OUT";
      o.store.setExecution(jobId, o.fleet, e.device, e.execNo, "TIMED_OUT", e.details);
    }
    const t = monitor.devices.get(e.device)?.telemetry;
    const temps = e.results.map((r) => r.temp_c_max).filter((x): x is number => x !== null);
    e.tempC = temps.length > 0 ? Math.max(...temps) : (t?.m.temp_c ?? null);
    const throttles = e.results.map((r) => r.throttled).filter((x): x is boolean => x !== null);
    e.throttled = throttles.length > 0 ? throttles.some(Boolean) : (t?.m.throttled ?? null);
  }
  const outcome: FleetBenchOutcome = {
    jobId,
    fleet: o.fleet,
    model: o.params.model,
    params: o.params,
    startedMs,
    finishedMs: Date.now(),
    devices: [...executions.values()],
    anonymousBroker,
    warnings,
    refused,
    stats: {
      messages: monitor.stats.messages,
      invalid: monitor.stats.invalid,
      refused: monitor.stats.refused,
      conflictingResults,
      duplicateResults,
      duplicateTelemetry: monitor.stats.duplicateTelemetry,
      resends,
    },
  };
  o.store.finishRun(outcome);
  return outcome;
}

/** Wait for retained births/states; returns the chosen online devices, sorted by id. */
async function discover(monitor: FleetMonitor, o: FleetBenchOptions, deadline: number): Promise<string[]> {
  const windowEnd = Math.min(deadline, Date.now() + (o.discoverS ?? (o.devices ? 30 : 2)) * 1000);
  const eligible = () =>
    [...monitor.devices.values()]
      .filter((v) => v.state === "online" && v.birth && matches(v, o.select))
      .map((v) => v.device)
      .sort();
  while (Date.now() < windowEnd) {
    if (o.devices && eligible().length >= o.devices) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const found = eligible();
  if (found.length === 0) {
    const known = [...monitor.devices.values()].map((v) => `${v.device} (${v.state})`).join(", ") || "none";
    throw new IteraError(`no online device in fleet '${o.fleet}' matches the selection`, {
      where: `${o.broker.url} itera/v1/${o.fleet}/+/birth (devices seen: ${known})`,
      fix: "start agents (`itera fleet simulate` or `itera-agent agent`), check --fleet and --select",
    });
  }
  return o.devices ? found.slice(0, o.devices) : found;
}

function isTerminal(s: JobStatus | "SENT"): boolean {
  return s !== "SENT" && terminalStatuses.has(s);
}
