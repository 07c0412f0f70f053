/**
 * `--mode auto`: measure each weight's sensitivity (the loss increase on the calibration text when
 * only that weight is quantized), choose per weight the smallest precision that keeps the predicted
 * total within the budget, and verify the combination on the held-out text.
 */
import { progress } from "../util/progress.js";
import type { TextQuality } from "./measure.js";
import type { AutoLowest, Precision, QuantizeOptions } from "./options.js";
import type { LayerReport } from "./report.js";
import { type BlockParams, precisionBytes, unsupportedReason } from "./rewrite.js";
import { choosePrecisions, type LayerChoice } from "./select.js";
import type { Site } from "./sites.js";

export interface AutoContext {
  sites: Site[];
  /** precisions fixed by options (not searched) */
  fixed: ReadonlyMap<string, Precision>;
  /** sensitivities are recorded here */
  layers: LayerReport[];
  opts: QuantizeOptions;
  params: BlockParams;
  calibText: string;
  evalText: string;
  /** nats/token of the float model on each text */
  calibBaseline: number;
  heldOutBaseline: number;
  /** quality of the model with these precisions on a text */
  quality: (choice: ReadonlyMap<string, Precision>, text: string) => Promise<TextQuality>;
  quiet: boolean;
}

/**
 * Candidate precisions of a weight, smallest first, from the lowest asked for; fp32 (increase 0) is
 * always the last resort. int8 (dynamic, int8 activations) exists only for MatMul/Gemm weights:
 * embedding tables and MoE experts take the 8-bit weight-only form (plan.ts).
 */
export function candidatesFrom(lowest: AutoLowest, site: Site): Precision[] {
  if (lowest === "int4") return ["int4", "int8-wo"];
  return site.kind === "linear" ? ["int8", "int8-wo"] : ["int8-wo"];
}

/** Perplexity ratio 1 + b is a loss increase of ln(1 + b) nats per token. */
export const budgetNats = (budget: number | null) => Math.log(1 + (budget ?? Number.POSITIVE_INFINITY));

export async function chooseMixedPrecision(
  ctx: AutoContext,
): Promise<{ choice: Map<string, Precision>; rounds: number; uniform: boolean }> {
  const { opts, params } = ctx;
  const free = ctx.sites.filter((s) => !ctx.fixed.has(s.name));
  const candidates = (s: Site) =>
    candidatesFrom(opts.lowest, s).filter((p) => !unsupportedReason(s, p, params));
  // Every weight at its lowest precision is the smallest model there is: when it already fits the
  // budget on the held-out text, no per-weight measurement can improve on it (one evaluation
  // instead of one per weight and precision).
  if (opts.budget !== null && free.length > 0) {
    const lowest = new Map(ctx.fixed);
    for (const s of free) lowest.set(s.name, candidates(s)[0] ?? "fp32");
    const q = await ctx.quality(lowest, ctx.evalText);
    if (Math.exp(q.nats_per_token - ctx.heldOutBaseline) - 1 <= opts.budget) {
      for (const s of free) {
        if (candidates(s).length === 0) {
          ctx.layers.find((l) => l.name === s.name)!.note =
            `kept fp32: ${unsupportedReason(s, "int8-wo", params)}`;
        }
      }
      return { choice: lowest, rounds: 0, uniform: true };
    }
  }
  // Below this a weight's int4 increase is noise-level: its int8 form is not worth a measurement.
  const negligible = budgetNats(opts.budget ?? 0.02) / (20 * Math.max(1, free.length));
  const bar = progress(
    "sensitivity",
    free.reduce((n, s) => n + candidates(s).length, 0),
    { quiet: ctx.quiet },
  );
  let done = 0;
  const choices: LayerChoice<Precision>[] = [];
  for (const s of free) {
    const layer = ctx.layers.find((l) => l.name === s.name)!;
    if (candidates(s).length === 0) layer.note = `kept fp32: ${unsupportedReason(s, "int8-wo", params)}`;
    layer.sensitivity = {};
    const options: LayerChoice<Precision>["options"] = [];
    let previous: number | undefined;
    for (const p of candidates(s)) {
      // Credited with the smaller precision's (upper-bound) increase when that is already negligible.
      const skip = previous !== undefined && previous <= negligible;
      const delta = skip
        ? previous!
        : (await ctx.quality(new Map([...ctx.fixed, [s.name, p]]), ctx.calibText)).nats_per_token -
          ctx.calibBaseline;
      if (!skip) layer.sensitivity[p] = delta;
      options.push({
        precision: p,
        bytes: precisionBytes(s, p, params),
        deltaLoss: delta,
      });
      previous = delta;
      bar.update(++done, s.name);
    }
    options.push({ precision: "fp32", bytes: s.bytes, deltaLoss: 0 });
    choices.push({ name: s.name, options });
  }
  bar.done();
  // Verify on the held-out text; when weights interact worse than the sum of their increases
  // predicts, halve the budget used for the choice and choose again.
  let factor = 1;
  let rounds = 0;
  for (;;) {
    rounds++;
    const choice = new Map([
      ...ctx.fixed,
      ...choosePrecisions(choices, budgetNats(opts.budget) * factor).choice,
    ]);
    if (opts.budget === null || rounds >= 4) return { choice, rounds, uniform: false };
    const q = await ctx.quality(choice, ctx.evalText);
    if (Math.exp(q.nats_per_token - ctx.heldOutBaseline) - 1 <= opts.budget)
      return { choice, rounds, uniform: false };
    factor /= 2;
  }
}
