import { z } from "zod";
import { tuneResultSchema } from "../protocol/schemas.js";
import type { DashboardJob, DashboardTunePick } from "../report/dashboard-page.js";
import type { FleetBenchOutcome } from "./bench.js";
import { reportRow } from "./report.js";
import type { FleetStore } from "./store.js";
import { tuneRow } from "./tune.js";

/**
 * The dashboard's list of finished jobs of every type (benchmark, update, tune), each with what
 * matters for it, read from the fleet database's runs and their stored outcomes.
 */

const isSimulated = (m: string | null | undefined) => m?.endsWith("-simulated") === true;

/** Lowest and highest of the figures that are there (null: none). */
function range(xs: Array<number | null>): [number, number] | null {
  const v = xs.filter((x): x is number => x !== null);
  return v.length === 0 ? null : [Math.min(...v), Math.max(...v)];
}

function rangeText(r: [number, number], digits: number, unit: string): string {
  const [lo, hi] = r.map((x) => x.toFixed(digits));
  return lo === hi ? `${lo} ${unit}` : `${lo}–${hi} ${unit}`;
}

/** A finished benchmark of the fleet as its row shows it, with the link to its report. */
export function dashboardJob(o: FleetBenchOutcome): DashboardJob {
  const rows = o.devices.map(reportRow);
  const methods = o.devices.flatMap((d) => d.results.map((r) => r.energy?.method ?? ""));
  const tokS = range(rows.map((r) => r.tg_tok_s ?? r.pp_tok_s));
  const mj = range(rows.map((r) => r.mj_per_token));
  const figures = [tokS && rangeText(tokS, 2, "tokens/s"), mj && rangeText(mj, 2, "mJ/token")];
  return {
    type: "benchmark",
    jobId: o.jobId,
    subject: o.model,
    startedMs: o.startedMs,
    finishedMs: o.finishedMs,
    devices: o.devices.length,
    succeeded: o.devices.filter((d) => d.status === "SUCCEEDED").length,
    simulated: methods.some(isSimulated),
    summary: [figures.filter((x) => x).join(", ") || "no figures (no device succeeded)"],
    report: `jobs/${encodeURIComponent(o.jobId)}/report.html`,
    tok_s: tokS,
    mj_per_token: mj,
  };
}

// Stored outcomes are read leniently (a run may come from another itera version): only what is shown.
const updateSummarySchema = z.looseObject({
  jobId: z.string(),
  version: z.string(),
  variant: z.string().nullable().optional(),
  result: z.string(),
  reason: z.string().nullable().optional(),
  startedMs: z.number(),
  finishedMs: z.number(),
  devices: z.array(z.looseObject({ device: z.string(), status: z.string(), rolledBack: z.boolean() })),
});

/** A device's end of an update: UPDATED, ROLLED_BACK, else its job status (REJECTED, OFFLINE, SKIPPED, ...). */
export function updateOutcomeOf(d: { status: string; rolledBack: boolean }): string {
  return d.rolledBack ? "ROLLED_BACK" : d.status === "SUCCEEDED" ? "UPDATED" : d.status;
}

/** A finished update: its version (and variant), the rollout's result, per-device outcome counts. */
export function dashboardUpdateJob(summary: unknown): DashboardJob | undefined {
  const p = updateSummarySchema.safeParse(summary);
  if (!p.success) return undefined;
  const u = p.data;
  const outcomes: Record<string, number> = {};
  for (const d of u.devices) {
    const k = updateOutcomeOf(d);
    outcomes[k] = (outcomes[k] ?? 0) + 1;
  }
  const rolledBack = u.devices.filter((d) => d.rolledBack).map((d) => d.device);
  const counts = Object.entries(outcomes)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, n]) => `${k} ${n}`)
    .join(", ");
  return {
    type: "update",
    jobId: u.jobId,
    subject: `version ${u.version}${u.variant ? ` (variant ${u.variant})` : ""}`,
    startedMs: u.startedMs,
    finishedMs: u.finishedMs,
    devices: u.devices.length,
    succeeded: outcomes.UPDATED ?? 0,
    simulated: false,
    summary: [
      `${u.result}${u.reason ? `: ${u.reason}` : ""}`,
      counts || "no device selected",
      ...(rolledBack.length > 0 ? [`rolled back: ${rolledBack.join(", ")}`] : []),
    ],
    report: null,
    version: u.version,
    variant: u.variant ?? null,
    result: u.result,
    outcomes,
    rolledBack,
  };
}

const tuneSummarySchema = z.looseObject({
  jobId: z.string(),
  params: z.looseObject({ model: z.string().optional(), objective: z.string() }),
  startedMs: z.number(),
  finishedMs: z.number(),
  devices: z.array(
    z.looseObject({
      device: z.string(),
      status: z.string(),
      details: z.string().nullable(),
      result: tuneResultSchema.nullable(),
    }),
  ),
});

/** A finished tune: each device's pick with that candidate's figures (or why it has none). */
export function dashboardTuneJob(summary: unknown): DashboardJob | undefined {
  const p = tuneSummarySchema.safeParse(summary);
  if (!p.success) return undefined;
  const t = p.data;
  const picks: DashboardTunePick[] = t.devices.map((d) => {
    const r = tuneRow(d);
    return {
      device: d.device,
      status: d.status,
      pick: r.pick,
      tok_s: r.tokens_per_s,
      mj_per_token: r.mj_per_token,
      method: r.energy_method,
      applied: r.applied,
      details: r.details,
    };
  });
  const figure = (x: number | null, unit: string) => (x === null ? [] : [`${x.toFixed(2)} ${unit}`]);
  return {
    type: "tune",
    jobId: t.jobId,
    subject: `${t.params.model ?? "each device's model"}, objective ${t.params.objective}`,
    startedMs: t.startedMs,
    finishedMs: t.finishedMs,
    devices: t.devices.length,
    succeeded: t.devices.filter((d) => d.status === "SUCCEEDED").length,
    simulated: picks.some((x) => isSimulated(x.method)),
    summary: picks.map((x) => {
      if (x.pick === null) return `${x.device}: ${x.status}${x.details ? ` (${x.details})` : ""}`;
      const figs = [...figure(x.tok_s, "tokens/s"), ...figure(x.mj_per_token, "mJ/token")];
      const applied = x.applied ? "applied" : "not applied";
      return `${x.device}: ${x.pick}${figs.length > 0 ? ` (${figs.join(", ")})` : ""}, ${applied}`;
    }),
    report: null,
    picks,
  };
}

/** How many finished jobs the page lists (the newest). */
export const FINISHED_JOBS_SHOWN = 50;

/**
 * The fleet's finished jobs, the last finished first, from the fleet database. A finished job never changes, so
 * each is read once into `seen`; a job whose stored outcome cannot be read is left out.
 */
export function finishedJobs(
  store: FleetStore,
  fleet: string,
  seen: Map<string, DashboardJob>,
): DashboardJob[] {
  const finished = store
    .runs()
    .filter((r) => r.fleet === fleet && r.finishedMs !== null)
    .sort((a, b) => (b.finishedMs ?? 0) - (a.finishedMs ?? 0))
    .slice(0, FINISHED_JOBS_SHOWN);
  for (const r of finished) {
    if (seen.has(r.jobId)) continue;
    const type = r.type ?? "benchmark";
    let job: DashboardJob | undefined;
    if (type === "benchmark") {
      const outcome = store.outcome(r.jobId);
      job = outcome && dashboardJob(outcome);
    } else if (type === "update") job = dashboardUpdateJob(store.jobSummary(r.jobId));
    else if (type === "tune") job = dashboardTuneJob(store.jobSummary(r.jobId));
    if (job) seen.set(r.jobId, job);
  }
  // Jobs no longer among the shown ones are forgotten: a dashboard left running does not grow.
  const shown = new Set(finished.map((r) => r.jobId));
  for (const id of seen.keys()) if (!shown.has(id)) seen.delete(id);
  return finished.flatMap((r) => seen.get(r.jobId) ?? []);
}
