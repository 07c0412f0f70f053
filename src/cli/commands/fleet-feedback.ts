import { writeFile } from "node:fs/promises";
import type { Command } from "commander";
import { IteraError } from "../../errors.js";
import {
  DEFAULT_RETRAIN_POLICY,
  FeedbackHistory,
  type RetrainPolicy,
  type StoredFleetFeedback,
  summarizeVariants,
} from "../../fleet/feedback.js";
import { defaultFleetDb } from "../../fleet/store.js";
import { positive } from "../../protocol/options.js";
import { csvTable, markdownTable } from "../../util/table.js";
import { action, printJson } from "../run.js";

/**
 * `itera fleet feedback`: the ratings the fleet's devices sent (stored by `itera fleet watch --db`),
 * per model version, exported as JSON lines for `make finetune FEEDBACK=...` (docs/fleet.md).
 */
interface FeedbackCliOptions {
  db?: string;
  fleet?: string;
  model?: string;
  variant?: string;
  export?: string;
  json?: boolean;
}

export interface VersionSummary {
  fleet: string;
  model: string;
  quant: string;
  sha256: string;
  ratings: number;
  positive: number;
  negative: number;
  corrections: number;
}

export function summarize(rows: readonly StoredFleetFeedback[]): VersionSummary[] {
  const byVersion = new Map<string, VersionSummary>();
  for (const r of rows) {
    const key = `${r.fleet}\u0000${r.model.id}\u0000${r.model.sha256}`;
    let s = byVersion.get(key);
    if (!s) {
      s = {
        fleet: r.fleet,
        model: r.model.id,
        quant: r.model.quant,
        sha256: r.model.sha256,
        ratings: 0,
        positive: 0,
        negative: 0,
        corrections: 0,
      };
      byVersion.set(key, s);
    }
    s.ratings++;
    if (r.rating > 0) s.positive++;
    if (r.rating < 0) s.negative++;
    if (r.correction !== null) s.corrections++;
  }
  return [...byVersion.values()];
}

const pct = (x: number | null) => (x === null ? null : `${(100 * x).toFixed(1)} %`);

/** --retrain-threshold and --retrain-window (hours) of `itera fleet watch`. */
export function retrainPolicy(threshold: string | undefined, windowH: string | undefined): RetrainPolicy {
  const n =
    threshold === undefined
      ? DEFAULT_RETRAIN_POLICY.threshold
      : positive(threshold, "--retrain-threshold", true);
  const windowMs =
    windowH === undefined
      ? DEFAULT_RETRAIN_POLICY.windowMs
      : Math.round(positive(windowH, "--retrain-window") * 3_600_000);
  return { threshold: n, windowMs };
}

/** The retraining events, for `itera fleet history --events`. */
export function printEvents(
  db: string | undefined,
  fleet: string | undefined,
  format: "md" | "csv" | "json",
) {
  const history = new FeedbackHistory(db ?? defaultFleetDb());
  try {
    const events = history.events(fleet ? { fleet } : {});
    if (format === "json") return printJson(events);
    const headers = [
      "time",
      "fleet",
      "event",
      "model",
      "quant",
      "sha256",
      "negatives",
      "threshold",
      "window_h",
      "since",
    ];
    const rows = events.map((e) => [
      new Date(e.ts).toISOString(),
      e.fleet,
      e.event,
      e.model.id,
      e.model.quant,
      e.model.sha256.slice(0, 12),
      e.negatives,
      e.threshold,
      Math.round((e.window_ms / 3_600_000) * 100) / 100,
      new Date(e.since_ts).toISOString(),
    ]);
    process.stdout.write(`${format === "csv" ? csvTable(headers, rows) : markdownTable(headers, rows)}\n`);
  } finally {
    history.close();
  }
}

export function registerFleetFeedback(fleet: Command): void {
  fleet
    .command("feedback")
    .description("the devices' ratings of generations, per model version; --export writes them as JSON lines")
    .option("--db <path>", `fleet history database (default ${defaultFleetDb()})`)
    .option("--fleet <name>", "only this fleet")
    .option("--model <id>", "only this model")
    .option(
      "--variant <v>",
      "only this variant: an A/B variant's name (itera fleet update --variant), 'release <version>', a quantization (int8) or the start of the ONNX sha256 (6+ hex digits)",
    )
    .option(
      "--export <file.jsonl>",
      "write the selected feedback as JSON lines (for `make finetune FEEDBACK=...`)",
    )
    .option("--json", "JSON: the summary per model version and every rating")
    .action(
      action(async (opts: FeedbackCliOptions) => {
        const history = new FeedbackHistory(opts.db ?? defaultFleetDb());
        let rows: StoredFleetFeedback[];
        try {
          rows = history.feedback({
            ...(opts.fleet && { fleet: opts.fleet }),
            ...(opts.model && { model: opts.model }),
            ...(opts.variant && { variant: opts.variant }),
          });
        } finally {
          history.close();
        }
        if (opts.export) {
          try {
            await writeFile(opts.export, rows.map((r) => `${JSON.stringify(r)}\n`).join(""));
          } catch (e) {
            throw new IteraError(`cannot write the export: ${(e as Error).message}`, {
              where: opts.export,
              fix: "give a writable file path for --export",
            });
          }
        }
        const summary = summarize(rows);
        const { variants, comparison } = summarizeVariants(rows);
        if (opts.json) {
          printJson({
            summary,
            variants,
            comparison,
            feedback: rows,
            ...(opts.export && { exported: opts.export }),
          });
          return;
        }
        const headers = ["fleet", "model", "quant", "sha256", "ratings", "+1", "-1", "corrections"];
        process.stdout.write(
          `${markdownTable(
            headers,
            summary.map((s) => [
              s.fleet,
              s.model,
              s.quant,
              s.sha256.slice(0, 12),
              s.ratings,
              s.positive,
              s.negative,
              s.corrections,
            ]),
          )}\n`,
        );
        // A/B variants side by side: the positive rate with its 95 % interval, and whether they differ.
        process.stdout.write(
          `\n${markdownTable(
            [
              "variant",
              "devices",
              "ratings",
              "+1",
              "-1",
              "positive rate",
              "95 % interval",
              "negative rate",
              "corrections",
            ],
            variants.map((v) => [
              v.variant,
              v.devices,
              v.ratings,
              v.positive,
              v.negative,
              pct(v.positive_rate),
              v.positive_ci95 ? `${pct(v.positive_ci95.low)} – ${pct(v.positive_ci95.high)}` : null,
              pct(v.negative_rate),
              v.corrections,
            ]),
          )}\n\n${comparison}\n`,
        );
        if (opts.export) process.stderr.write(`wrote ${rows.length} ratings to ${opts.export}\n`);
      }),
    );
}
