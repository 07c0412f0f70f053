import { type BrokerOptions, endAsync } from "../protocol/connect.js";
import { type JobStatus, type TuneParams, type TuneResult, tuneResultSchema } from "../protocol/schemas.js";
import { renderTuned } from "../tune/render.js";
import { sameCandidate } from "../tune/tuned-file.js";
import { markdownTable } from "../util/table.js";
import { type BenchEvent, openRun } from "./bench.js";
import { connectCoordinator, dispatch, newJobId, resultParser } from "./dispatch.js";
import { simulatedNote } from "./report.js";
import type { FleetStore } from "./store.js";

export interface FleetTuneOptions {
  broker: BrokerOptions;
  fleet: string;
  /** Tune this many online devices (the first by id); default: every selected online device. */
  devices?: number;
  select?: Record<string, string>;
  params: TuneParams;
  timeoutS: number;
  discoverS?: number;
  store: FleetStore;
  clientId?: string;
  onEvent?: (e: BenchEvent) => void;
}

export interface TuneDeviceOutcome {
  device: string;
  profile: string;
  execNo: number;
  status: JobStatus | "SENT";
  details: string | null;
  sends: number;
  /** The device's grid and pick (null: it did not succeed). */
  result: TuneResult | null;
}

export interface FleetTuneOutcome {
  jobId: string;
  fleet: string;
  params: TuneParams;
  startedMs: number;
  finishedMs: number;
  devices: TuneDeviceOutcome[];
  anonymousBroker: boolean;
  warnings: string[];
  refused: Array<{ topic: string; reason: string }>;
}

/**
 * `itera fleet tune`: a `tune` job to the selected online devices (src/fleet/dispatch.ts: sending,
 * re-sending, deadline, de-duplication); each measures as `itera-agent tune` does and answers with its
 * tuned.json document, written on the device when the job says `apply`. Results are stored in the
 * fleet database (tune_results), the outcome as the run's summary.
 */
export async function runFleetTune(o: FleetTuneOptions): Promise<FleetTuneOutcome> {
  const startedMs = Date.now();
  const jobId = newJobId("tune", startedMs);
  const deadline = startedMs + o.timeoutS * 1000;
  const client = await connectCoordinator(o.broker, o.clientId, o.timeoutS);
  try {
    const { monitor, emit, trust, chosen } = await openRun(client, o, {
      jobId,
      type: "tune",
      fleet: o.fleet,
      model: o.params.model ?? "",
      params: o.params,
      startedMs,
      deadlineMs: deadline,
    });
    const { executions } = await dispatch<TuneResult>({
      client,
      monitor,
      fleet: o.fleet,
      store: o.store,
      jobId,
      doc: { type: "tune", params: o.params },
      deadline,
      devices: chosen,
      parseResult: resultParser(tuneResultSchema),
      // One result per device: the first element is the device's.
      storeResults: (device, execNo, results) =>
        results.every((r) => o.store.addTuneResult(jobId, o.fleet, device, execNo, r)),
      removeResults: (device, execNo) => o.store.removeTuneResults(jobId, device, execNo),
      onEvent: (e) => {
        if (e.type === "refused") trust.refuse(e.topic, e.reason);
        else emit(e);
      },
    });
    const outcome: FleetTuneOutcome = {
      jobId,
      fleet: o.fleet,
      params: o.params,
      startedMs,
      finishedMs: Date.now(),
      devices: [...executions.values()].map((e) => ({
        device: e.device,
        profile: monitor.devices.get(e.device)?.birth?.profile ?? "?",
        execNo: e.execNo,
        status: e.status,
        details: e.details,
        sends: e.sends,
        result: e.status === "SUCCEEDED" ? (e.results[0] ?? null) : null,
      })),
      anonymousBroker: await trust.anonymous,
      warnings: trust.warnings,
      refused: trust.refused,
    };
    o.store.finishJob(jobId, outcome.finishedMs, outcome);
    return outcome;
  } finally {
    await endAsync(client);
  }
}

/** One device's pick and the figures of that candidate (a summary row; `itera fleet history --tune`). */
export function tuneRow(d: {
  device: string;
  status: string;
  details: string | null;
  result: TuneResult | null;
}) {
  const t = d.result?.tuned;
  const row = t?.grid.find((r) => sameCandidate(r, t.pick));
  return {
    device: d.device,
    profile: t?.profile ?? null,
    status: d.status,
    pick: t ? `${t.pick.precision}, ${t.pick.threads} t${t.pick.decode ? `, ${t.pick.decode}` : ""}` : null,
    tokens_per_s: row?.tokens_per_s.median ?? null,
    mj_per_token: row?.mJ_per_token?.median ?? null,
    energy_method: t?.energy?.method ?? null,
    applied: d.result ? d.result.applied : null,
    details: d.status === "SUCCEEDED" ? null : d.details,
  };
}

/** One row per device of a run. */
export function tuneSummaryRows(o: FleetTuneOutcome) {
  return o.devices.map((d) => ({ ...tuneRow(d), profile: d.profile }));
}

/** The run as markdown: a summary table, then each device's grid with its pick (as `itera tune` prints it). */
export function renderTuneMarkdown(o: FleetTuneOutcome): string {
  const rows = tuneSummaryRows(o);
  const ok = rows.filter((r) => r.status === "SUCCEEDED").length;
  const p = o.params;
  const simulated = [
    ...new Set(
      rows.map((r) => r.energy_method).filter((m): m is string => m?.endsWith("-simulated") === true),
    ),
  ];
  const lines = [
    `# Fleet tune ${o.jobId}`,
    "",
    `fleet \`${o.fleet}\`, objective ${p.objective}, test ${p.test}, ${p.rounds} rounds, ` +
      `${p.apply ? "applied: each device's tuned.json written" : "report only (--apply writes tuned.json on the devices)"}; ` +
      `${ok}/${rows.length} devices succeeded in ${((o.finishedMs - o.startedMs) / 1000).toFixed(1)} s.`,
    "",
    markdownTable(
      ["device", "profile", "status", "pick", "tokens/s", "mJ/token", "method", "applied"],
      rows.map((r) => [
        r.device,
        r.profile,
        r.status,
        r.pick,
        r.tokens_per_s,
        r.mj_per_token,
        r.energy_method,
        r.applied === null ? null : r.applied ? "yes" : "no",
      ]),
    ),
    ...(simulated.length > 0 ? ["", `**${simulatedNote(simulated)}.**`] : []),
  ];
  for (const d of o.devices) {
    lines.push("", `## ${d.device} (${d.profile}): ${d.status}`, "");
    if (d.result) {
      const where = d.result.written
        ? `${d.result.written} on ${d.device}`
        : "nothing (report only: --apply writes it on the device)";
      lines.push(renderTuned(d.result.tuned, where).trimEnd());
    } else lines.push(d.details ?? "no result");
  }
  for (const w of o.warnings) lines.push("", `WARNING: ${w}`);
  return `${lines.join("\n")}\n`;
}
