import { IteraError } from "../errors.js";
import { type Cell, csvTable, markdownTable } from "../util/table.js";
import { type BenchResult, decodeLabel } from "./result.js";

export const benchFormats = ["md", "csv", "json", "jsonl"] as const;
export type BenchFormat = (typeof benchFormats)[number];

export function parseFormat(value: string): BenchFormat {
  if ((benchFormats as readonly string[]).includes(value)) return value as BenchFormat;
  throw new IteraError(`unknown output format '${value}'`, {
    where: "--output",
    fix: `use one of: ${benchFormats.join(", ")}`,
  });
}

const fmt = (x: number | null | undefined, digits: number): string =>
  x === null || x === undefined || !Number.isFinite(x) ? "" : x.toFixed(digits);

/** The llama-bench style table: one row per test, t/s as mean ± stdev. */
export function renderMarkdown(results: readonly BenchResult[]): string {
  const rows: Cell[][] = results.map((r) => [
    r.model,
    r.quant,
    r.threads,
    r.test,
    decodeLabel(r),
    `${fmt(r.tokens_per_s.mean, 2)} ± ${fmt(r.tokens_per_s.stdev, 2)}`,
    fmt(r.ttft_ms, 1),
    `${fmt(r.latency_ms.p50, 2)} / ${fmt(r.latency_ms.p95, 2)}`,
    r.energy ? fmt(r.energy.mJ_per_token, 2) : "",
    r.energy ? fmt(r.energy.tokens_per_J, 2) : "",
    r.energy ? `${r.energy.method}${energyFlag(r)}` : "",
    fmt(r.cpu_pct, 0),
    fmt(r.rss_mb, 0),
  ]);
  const table = markdownTable(
    [
      "model",
      "quant",
      "threads",
      "test",
      "decode",
      "t/s",
      "ttft ms",
      "lat p50/p95 ms",
      "mJ/tok",
      "tok/J",
      "energy",
      "cpu %",
      "rss MB",
    ],
    rows,
  );
  // A blank energy cell is explained under the table, so "no figure" is never read as 0.
  const why = results
    .filter((r) => energyFlag(r) !== "")
    .map((r) => `- t=${r.threads} ${r.test}: ${r.energy?.note ?? "no energy figure"}`);
  if (results.some((r) => r.tokenizer === false)) {
    why.push(
      "- no tokenizer.json: the prompts are synthetic token ids (deterministic, inside the vocabulary)",
    );
  }
  return why.length > 0 ? `${table}\n\n${why.join("\n")}` : table;
}

/** Marks an energy cell whose figures are missing: no energy at all, or no net figures beside an idle baseline. */
function energyFlag(r: BenchResult): string {
  const e = r.energy;
  if (!e) return "";
  if (e.J === null) return e.complete ? " (no figure)" : " (incomplete: no figure)";
  if (e.idle_w !== null && e.net_J === null) return " (no net figure)";
  return "";
}

/** Every field flattened to dotted column names (tokens_per_s.mean, energy.J, ...). */
function flatten(value: unknown, prefix = "", out: Record<string, Cell> = {}): Record<string, Cell> {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else if (Array.isArray(value)) {
    out[prefix] = value.join(" ");
  } else {
    out[prefix] = value as Cell;
  }
  return out;
}

export function renderCsv(results: readonly BenchResult[]): string {
  const flat = results.map((r) => flatten(r));
  const headers = [...new Set(flat.flatMap((f) => Object.keys(f)))];
  return csvTable(
    headers,
    flat.map((f) => headers.map((h) => f[h])),
  );
}

/**
 * Whether a file's text is a benchmark output in any of the formats (an md table with this header,
 * csv with the result's columns, a json array or jsonl lines of results): `--save` replaces only such
 * a file, never someone else's.
 */
export function isBenchOutput(text: string): boolean {
  const first = text.split("\n", 1)[0] ?? "";
  const mdHeader = renderMarkdown([]).split("\n", 1)[0]!;
  const cells = (line: string) =>
    line
      .split("|")
      .map((c) => c.trim())
      .filter((c) => c !== "");
  // tables saved before the decode column are ours too
  const before = cells(mdHeader).filter((c) => c !== "decode");
  if ([cells(mdHeader), before].some((h) => cells(first).join("|") === h.join("|"))) return true;
  const csv = first.split(",");
  if (["model", "test", "threads", "tokens_per_s.mean"].every((h) => csv.includes(h))) return true;
  const isResult = (v: unknown) =>
    typeof v === "object" && v !== null && "test" in v && "tokens_per_s" in v && "model" in v;
  try {
    const v: unknown = JSON.parse(text);
    if (Array.isArray(v)) return v.every(isResult);
  } catch {
    // not one JSON value: maybe JSON lines
  }
  const lines = text.split("\n").filter((l) => l.trim() !== "");
  try {
    return lines.length > 0 && lines.every((l) => isResult(JSON.parse(l)));
  } catch {
    return false;
  }
}

export function renderResults(results: readonly BenchResult[], format: BenchFormat): string {
  switch (format) {
    case "md":
      return renderMarkdown(results);
    case "csv":
      return renderCsv(results);
    case "json":
      return JSON.stringify(results, null, 2);
    case "jsonl":
      return results.map((r) => JSON.stringify(r)).join("\n");
  }
}
