import type { MqttClient } from "mqtt";
import { IteraError } from "../errors.js";
import { type BrokerOptions, endAsync } from "../protocol/connect.js";
import {
  type BenchmarkParams,
  type BenchResult,
  benchResultSchema,
  type JobStatus,
  releaseOf,
} from "../protocol/schemas.js";
import { connectCoordinator, dispatch, newJobId, resultParser } from "./dispatch.js";
import type { VariantSummary } from "./feedback.js";
import { type TrustWatch, watchTrust } from "./anonymous-probe.js";
import { type DeviceView, FleetMonitor } from "./monitor.js";
import type { FleetStore, RunRecord } from "./store.js";

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
  /** Its A/B variant and release version from its birth (absent in runs stored before variants). */
  variant?: string | null;
  version?: string | null;
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
  /**
   * The fleet's feedback per A/B variant, added when the report is rendered (from the fleet
   * database's ratings at that time; not stored with the run).
   */
  feedback?: VariantSummary[];
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

export function matches(view: DeviceView, select: Record<string, string> | undefined): boolean {
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
 * Benchmark a fleet (DESIGN.md §8): discover online devices from retained birth/state, hand the
 * benchmark job to `dispatch` (sending, re-sending, deadline, de-duplication: src/fleet/dispatch.ts),
 * and return one outcome per device with its results, stored with telemetry in the fleet database.
 */
export async function runFleetBench(o: FleetBenchOptions): Promise<FleetBenchOutcome> {
  const startedMs = Date.now();
  const jobId = newJobId("bench", startedMs);
  const deadline = startedMs + o.timeoutS * 1000;
  const client = await connectCoordinator(o.broker, o.clientId, o.timeoutS);
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
  const { monitor, emit, trust, chosen } = await openRun(client, o, {
    jobId,
    type: "benchmark",
    fleet: o.fleet,
    model: o.params.model,
    params: o.params,
    startedMs,
    deadlineMs: deadline,
  });
  const { warnings, refused, refuse, anonymous } = trust;
  const { executions, stats } = await dispatch<BenchResult>({
    client,
    monitor,
    fleet: o.fleet,
    store: o.store,
    jobId,
    doc: { type: "benchmark", params: o.params },
    deadline,
    devices: chosen,
    parseResult: resultParser(benchResultSchema),
    storeResults: (device, execNo, results) => o.store.addResults(jobId, o.fleet, device, execNo, results),
    removeResults: (device, execNo) => o.store.removeResults(jobId, device, execNo),
    onEvent: (e) => {
      if (e.type === "refused") refuse(e.topic, e.reason);
      else emit(e);
    },
  });
  const anonymousBroker = await anonymous;

  const devices: DeviceOutcome[] = [];
  for (const e of executions.values()) {
    const view = monitor.devices.get(e.device);
    const t = view?.telemetry;
    const temps = e.results.map((r) => r.temp_c_max).filter((x): x is number => x !== null);
    const throttles = e.results.map((r) => r.throttled).filter((x): x is boolean => x !== null);
    devices.push({
      device: e.device,
      profile: view?.birth?.profile ?? "?",
      quant: view?.birth?.models.find((m) => m.id === o.params.model)?.quant ?? null,
      execNo: e.execNo,
      status: e.status,
      details: e.details,
      sends: e.sends,
      results: e.results,
      tempC: temps.length > 0 ? Math.max(...temps) : (t?.m.temp_c ?? null),
      throttled: throttles.length > 0 ? throttles.some(Boolean) : (t?.m.throttled ?? null),
      variant: view?.birth?.variant ?? null,
      version: view?.birth ? releaseOf(view.birth) : null,
    });
  }
  const outcome: FleetBenchOutcome = {
    jobId,
    fleet: o.fleet,
    model: o.params.model,
    params: o.params,
    startedMs,
    finishedMs: Date.now(),
    devices,
    anonymousBroker,
    warnings,
    refused,
    stats: {
      messages: monitor.stats.messages,
      invalid: monitor.stats.invalid + stats.invalidResults,
      refused: monitor.stats.refused,
      conflictingResults: stats.conflictingResults,
      duplicateResults: stats.duplicateResults,
      duplicateTelemetry: monitor.stats.duplicateTelemetry,
      resends: stats.resends,
    },
  };
  o.store.finishRun(outcome);
  return outcome;
}

/**
 * The start of a fleet job run (bench, tune): the fleet's monitor subscribed, the broker's trust
 * watched (src/fleet/anonymous-probe.ts), the devices chosen and announced, the run recorded.
 */
export async function openRun(
  client: MqttClient,
  o: Pick<
    FleetBenchOptions,
    "fleet" | "devices" | "select" | "discoverS" | "broker" | "store" | "shareGroup"
  > & {
    onEvent?: ((e: BenchEvent) => void) | undefined;
  },
  run: RunRecord,
): Promise<{ monitor: FleetMonitor; emit: (e: BenchEvent) => void; trust: TrustWatch; chosen: string[] }> {
  const monitor = new FleetMonitor(
    client,
    o.fleet,
    o.store,
    o.shareGroup ? { shareGroup: o.shareGroup } : {},
  );
  const emit = o.onEvent ?? (() => {});
  const trust = watchTrust(monitor, o.broker, emit);
  await monitor.subscribe();
  const chosen = await discover(monitor, o, run.deadlineMs);
  emit({ type: "discovered", devices: chosen });
  o.store.addRun(run);
  return { monitor, emit, trust, chosen };
}

/**
 * Wait for retained births/states; returns the chosen devices, sorted by id: online ones, or with
 * `includeOffline` every device whose retained birth matches (an update waits for those to come back).
 */
export async function discover(
  monitor: FleetMonitor,
  o: Pick<FleetBenchOptions, "fleet" | "devices" | "select" | "discoverS" | "broker"> & {
    includeOffline?: boolean;
  },
  deadline: number,
): Promise<string[]> {
  const windowEnd = Math.min(deadline, Date.now() + (o.discoverS ?? (o.devices ? 30 : 2)) * 1000);
  const eligible = () =>
    [...monitor.devices.values()]
      .filter((v) => (o.includeOffline || v.state === "online") && v.birth && matches(v, o.select))
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

/** `--select key=value ...`: the devices a fleet command targets (shared by bench and update). */
export function parseSelect(pairs: string[] | undefined): Record<string, string> | undefined {
  if (!pairs || pairs.length === 0) return undefined;
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const m = /^([a-z]+)=(.+)$/.exec(p);
    if (!m || !selectKeys.includes(m[1]!)) {
      throw new IteraError(`invalid --select '${p}'`, {
        where: "--select",
        fix: `use key=value with key one of ${selectKeys.join(", ")} (e.g. --select profile=rpi4)`,
      });
    }
    out[m[1]!] = m[2]!;
  }
  return out;
}
