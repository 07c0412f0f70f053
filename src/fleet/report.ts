import { join } from "node:path";
import { writeFileAtomic } from "../util/fs.js";
import { type Cell, csvTable, markdownTable } from "../util/table.js";
import { type BenchResult, threadsLabel } from "../protocol/schemas.js";
import type { DeviceOutcome, FleetBenchOutcome } from "./bench.js";
import { fleetTitle, renderFleetHtml } from "../report/fleet-page.js";
import { variantLabel } from "./variants.js";

/** One report row per device (the issue's columns); null where the device could not measure it. */
export interface ReportRow {
  device: string;
  profile: string;
  quant: string | null;
  /** Its A/B variant, or `release <version>` (src/fleet/variants.ts). */
  variant: string;
  status: string;
  pp_tok_s: number | null;
  tg_tok_s: number | null;
  /** How the tg test decoded (fused: many steps per call; step: one call per token); null without one. */
  tg_decode: "fused" | "step" | null;
  ttft_ms: number | null;
  p95_ms: number | null;
  mj_per_token: number | null;
  energy_method: string | null;
  tokens_per_j: number | null;
  temp_c: number | null;
  throttled: boolean | null;
  details: string | null;
  /** The generation test's thread count and who chose it (job, tuned, profile; null: an older agent). */
  threads: number | null;
  threads_from: string | null;
}

const pick = (results: BenchResult[], kind: "pp" | "tg") => results.filter((r) => r.test.startsWith(kind));
/** The fastest thread count's figure for a kind of test (what a device can do at best). */
const best = (results: BenchResult[]) =>
  results.reduce<BenchResult | undefined>(
    (a, r) => (!a || r.tokens_per_s.mean > a.tokens_per_s.mean ? r : a),
    undefined,
  );

/** A device's word on its decode path, read leniently: agents from before the field stepped. */
function decodeOf(r: BenchResult): "fused" | "step" | null {
  const d = (r as { decode?: unknown }).decode;
  return d === undefined ? "step" : d === "fused" || d === "step" ? d : null;
}

export function reportRow(d: DeviceOutcome): ReportRow {
  const pp = best(pick(d.results, "pp"));
  const tg = best(pick(d.results, "tg"));
  const gen = tg ?? pp;
  return {
    device: d.device,
    profile: d.profile,
    quant: gen?.quant ?? d.quant,
    variant: variantLabel(d.variant, d.version),
    status: d.status,
    pp_tok_s: pp?.tokens_per_s.mean ?? null,
    tg_tok_s: tg?.tokens_per_s.mean ?? null,
    tg_decode: tg ? decodeOf(tg) : null,
    ttft_ms: (tg ?? pp)?.ttft_ms ?? null,
    p95_ms: gen?.latency_ms.p95 ?? null,
    mj_per_token: gen?.energy?.mJ_per_token ?? null,
    energy_method: gen?.energy?.method ?? null,
    tokens_per_j: gen?.energy?.tokens_per_J ?? null,
    temp_c: d.tempC,
    throttled: d.throttled,
    details: d.status === "SUCCEEDED" ? null : d.details,
    threads: gen?.threads ?? null,
    threads_from: gen?.threads_from ?? null,
  };
}

/** The columns of a fleet report's table (md, csv and the HTML page). */
export const REPORT_HEADERS = [
  "device",
  "profile",
  "quant",
  "variant",
  "status",
  "pp tok/s",
  "tg tok/s",
  "TTFT ms",
  "p95 ms",
  "mJ/token",
  "method",
  "tokens/J",
  "temp °C",
  "throttled",
  // last, so that readers of the columns before it (scripts on report.csv) find them where they were
  "tg decode",
  "threads",
];

/** One device's row of the report's table, in REPORT_HEADERS' order. */
export function reportCells(r: ReportRow): Cell[] {
  return [
    r.device,
    r.profile,
    r.quant,
    r.variant,
    r.status,
    r.pp_tok_s,
    r.tg_tok_s,
    r.ttft_ms,
    r.p95_ms,
    r.mj_per_token,
    r.energy_method,
    r.tokens_per_j,
    r.temp_c,
    r.throttled === null ? null : r.throttled ? "yes" : "no",
    r.tg_decode,
    r.threads === null ? null : `${r.threads}${r.threads_from ? ` (${r.threads_from})` : ""}`,
  ];
}

/** One A/B variant's devices side by side with the others: means over its succeeded devices. */
export interface VariantRow {
  variant: string;
  devices: number;
  succeeded: number;
  pp_tok_s: number | null;
  tg_tok_s: number | null;
  mj_per_token: number | null;
  tokens_per_j: number | null;
  energy_methods: string[];
  /** The variant's generations rated +1 or −1 in the fleet's feedback, and the share of +1 (null: none). */
  feedback_rated: number | null;
  feedback_positive_rate: number | null;
}

const mean = (xs: Array<number | null>) => {
  const v = xs.filter((x): x is number => x !== null);
  return v.length > 0 ? v.reduce((a, b) => a + b, 0) / v.length : null;
};

/** The report's rows grouped by variant (each device's group: variantLabel). */
export function variantRows(o: FleetBenchOutcome): VariantRow[] {
  const rows = o.devices.map(reportRow);
  return [...new Set(rows.map((r) => r.variant))].sort().map((variant) => {
    const all = rows.filter((r) => r.variant === variant);
    const ok = all.filter((r) => r.status === "SUCCEEDED");
    const fb = o.feedback?.find((f) => f.variant === variant);
    return {
      variant,
      devices: all.length,
      succeeded: ok.length,
      pp_tok_s: mean(ok.map((r) => r.pp_tok_s)),
      tg_tok_s: mean(ok.map((r) => r.tg_tok_s)),
      mj_per_token: mean(ok.map((r) => r.mj_per_token)),
      tokens_per_j: mean(ok.map((r) => r.tokens_per_j)),
      energy_methods: [...new Set(ok.map((r) => r.energy_method).filter((m): m is string => m !== null))],
      feedback_rated: fb ? fb.positive + fb.negative : null,
      feedback_positive_rate: fb?.positive_rate ?? null,
    };
  });
}

/** The columns of the per-variant table (md and the HTML page). */
export const VARIANT_HEADERS = [
  "variant",
  "devices",
  "succeeded",
  "pp tok/s",
  "tg tok/s",
  "mJ/token",
  "tokens/J",
  "method",
  "rated",
  "+1 rate",
];

export function variantCells(v: VariantRow): Cell[] {
  return [
    v.variant,
    v.devices,
    v.succeeded,
    v.pp_tok_s,
    v.tg_tok_s,
    v.mj_per_token,
    v.tokens_per_j,
    v.energy_methods.join(", ") || null,
    v.feedback_rated,
    v.feedback_positive_rate === null ? null : `${(100 * v.feedback_positive_rate).toFixed(1)} %`,
  ];
}

/** The energy methods in these rows that came from a simulated meter (`<method>-simulated`). */
function simulatedMethods(rows: ReportRow[]): string[] {
  return [...new Set(rows.map((r) => r.energy_method).filter((m) => m?.endsWith("-simulated")))] as string[];
}

/** Said wherever simulated energy figures appear, so nobody takes them for measurements. */
export function simulatedNote(methods: string[]): string {
  return `simulated energy: ${methods.join(", ")} figures were read from a simulated meter (tools/ina219-sim), not measured on the device`;
}

/**
 * Text for Markdown that stays text: no HTML (a profile named `<img src=x onerror=...>`), no table
 * cell breaks or links, one line. Every device-supplied string in report.md goes through it.
 */
export function mdText(s: string): string {
  // `_` stays: ids and statuses (TIMED_OUT) are full of it, and emphasis is harmless.
  return s
    .replace(/[\r\n\t]+/g, " ")
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/[\\`*[\]|~]/g, (c) => `\\${c}`);
}

/** An inline code span that no backtick inside can close early (CommonMark: a longer fence). */
function mdCode(s: string): string {
  const t = s.replace(/[\r\n]+/g, " ");
  const longest = Math.max(0, ...(t.match(/`+/g) ?? []).map((run) => run.length));
  const fence = "`".repeat(longest + 1);
  return longest > 0 ? `${fence} ${t} ${fence}` : `${fence}${t}${fence}`;
}

function mdRow(r: ReportRow): ReportRow {
  const t = (s: string | null) => (s === null ? null : mdText(s));
  return {
    ...r,
    device: mdText(r.device),
    profile: mdText(r.profile),
    quant: t(r.quant),
    variant: mdText(r.variant),
    status: mdText(r.status),
    energy_method: t(r.energy_method),
    details: t(r.details),
  };
}

export function renderMarkdown(o: FleetBenchOutcome): string {
  const rows = o.devices.map(reportRow).map(mdRow);
  const simulated = simulatedMethods(rows);
  const ok = rows.filter((r) => r.status === "SUCCEEDED").length;
  const failures = rows.filter((r) => r.details).map((r) => `- ${r.device}: ${r.status}: ${r.details}`);
  return [
    `# Fleet benchmark ${o.jobId}`,
    "",
    `fleet ${mdCode(o.fleet)}, model ${mdCode(o.model)}, tests ${o.params.tests.join(", ")}, threads ${threadsLabel(o.params)}, ` +
      `${o.params.repetitions} repetitions; ${ok}/${rows.length} devices succeeded in ${((o.finishedMs - o.startedMs) / 1000).toFixed(1)} s.`,
    "",
    markdownTable(REPORT_HEADERS, rows.map(reportCells)),
    "",
    "## Per variant",
    "",
    markdownTable(
      VARIANT_HEADERS,
      variantRows(o).map((v) => variantCells({ ...v, variant: mdText(v.variant) })),
    ),
    "",
    "A device's variant is the one its release was installed as (`itera fleet update --variant`), else `release <version>`; figures are means over its succeeded devices; rated and +1 rate: its generations rated in the fleet's feedback (`itera fleet feedback` has the intervals).",
    "",
    "tokens/s: mean over repetitions at the fastest thread count; TTFT and p95 from the generation test; " +
      "mJ/token and tokens/J with the method that measured them (empty: the device has no meter); " +
      "threads: the generation test's, and who chose them (job: --threads; tuned: the device's tuned.json; profile: its profile's).",
    ...(simulated.length > 0 ? ["", `**${simulatedNote(simulated)}.**`] : []),
    ...(failures.length > 0 ? ["", "## Not succeeded", "", ...failures] : []),
    "",
  ].join("\n");
}

export function renderCsv(o: FleetBenchOutcome): string {
  const rows = o.devices.map(reportRow);
  return `${csvTable(
    [...REPORT_HEADERS, "details"],
    rows.map((r) => [...reportCells(r), r.details]),
  )}\n`;
}

export function renderJson(o: FleetBenchOutcome): string {
  return `${JSON.stringify({ ...o, rows: o.devices.map(reportRow), variants: variantRows(o) }, null, 2)}\n`;
}

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** Horizontal bar charts (tokens/s and mJ/token per device) as a self-contained SVG. */
export function renderSvg(o: FleetBenchOutcome): string {
  const rows = o.devices.map(reportRow);
  const panels: Array<{
    title: string;
    values: Array<number | null>;
    color: string;
    suffix?: Array<string | null>;
  }> = [
    {
      title: "generation tokens/s (higher is better)",
      values: rows.map((r) => r.tg_tok_s ?? r.pp_tok_s),
      color: "#3b7dd8",
    },
    {
      title: "mJ per token (lower is better)",
      values: rows.map((r) => r.mj_per_token),
      color: "#d8703b",
      // Each energy figure names its method, so a simulated one says so on the chart too.
      suffix: rows.map((r) => r.energy_method),
    },
  ];
  const simulated = simulatedMethods(rows);
  // The label column fits the longest "device (profile)" (about 7 px per character at 12 px sans-serif).
  const labels = rows.map((r) => `${r.device} (${r.profile})`);
  const label = Math.max(120, Math.ceil(Math.max(0, ...labels.map((l) => l.length)) * 7) + 12);
  const barMax = 360;
  const barH = 18;
  const suffixW = Math.max(0, ...rows.map((r) => (r.energy_method?.length ?? 0) + 3)) * 7;
  const note = simulated.length > 0 ? simulatedNote(simulated) : "";
  // The chart says what it shows (job, model, date) in a heading above the panels.
  const chartTitle = fleetTitle(o);
  const top = 30;
  const width = Math.max(label + barMax + 90 + suffixW, note.length * 7 + 8, chartTitle.length * 8 + 8);
  const panelH = 30 + rows.length * (barH + 6);
  const parts: string[] = [];
  panels.forEach((p, pi) => {
    const y0 = top + pi * (panelH + 20);
    const max = Math.max(0, ...p.values.map((v) => v ?? 0));
    parts.push(`<text x="4" y="${y0 + 18}" font-weight="bold">${esc(p.title)}</text>`);
    rows.forEach((_row, i) => {
      const y = y0 + 30 + i * (barH + 6);
      const v = p.values[i];
      parts.push(`<text x="4" y="${y + 13}">${esc(labels[i]!)}</text>`);
      if (v === null || v === undefined) {
        parts.push(`<text x="${label}" y="${y + 13}" fill="#888">n/a</text>`);
        return;
      }
      const w = max > 0 ? Math.max(1, (v / max) * barMax) : 1;
      parts.push(`<rect x="${label}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${p.color}"/>`);
      const method = p.suffix?.[i];
      parts.push(
        `<text x="${(label + w + 4).toFixed(1)}" y="${y + 13}">${v < 10 ? v.toFixed(3) : v.toFixed(1)}${method ? ` (${esc(method)})` : ""}</text>`,
      );
    });
  });
  if (simulated.length > 0) {
    const y = top + panels.length * (panelH + 20) + 4;
    parts.push(`<text x="4" y="${y}" fill="#b00" font-weight="bold">${esc(note)}</text>`);
  }
  const height = top + panels.length * (panelH + 20) + (simulated.length > 0 ? 16 : 0);
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<title>${esc(chartTitle)}</title>`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="4" y="20" font-size="15" font-weight="bold">${esc(chartTitle)}</text>`,
    ...parts,
    "</svg>",
    "",
  ].join("\n");
}

/** Write report.md, report.csv, report.json, results.json (raw §7 results), chart.svg and report.html into `dir`. */
export async function writeReport(dir: string, o: FleetBenchOutcome): Promise<string[]> {
  const files: Array<[string, string]> = [
    ["report.md", renderMarkdown(o)],
    ["report.csv", renderCsv(o)],
    ["report.json", renderJson(o)],
    [
      "results.json",
      `${JSON.stringify(
        o.devices.flatMap((d) => d.results),
        null,
        2,
      )}\n`,
    ],
    ["chart.svg", renderSvg(o)],
    ["report.html", renderFleetHtml(o)],
  ];
  for (const [name, text] of files) await writeFileAtomic(join(dir, name), text);
  return files.map(([name]) => join(dir, name));
}
