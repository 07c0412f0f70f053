import { z } from "zod";

/**
 * One benchmark result (DESIGN.md §7): one object per test × thread count. Extra fields beyond §7
 * (tokens, duration_s, warmup, energy.complete/uncertainty/note, meter_health) say how it was measured.
 */
const nullableNumber = z.number().nullable();

export const energyResultSchema = z.object({
  /** DESIGN.md §6's methods; `<method>-simulated` when the meter read a simulator (then `simulated` is true). */
  method: z.string(),
  /** Null (with every figure from it) when the meter gave no valid energy for the test: `note` says why. */
  J: nullableNumber,
  mJ_per_token: nullableNumber,
  tokens_per_J: nullableNumber,
  idle_w: nullableNumber,
  net_J: nullableNumber,
  net_mJ_per_token: nullableNumber,
  net_tokens_per_J: nullableNumber,
  samples: z.number().int().nonnegative(),
  rate_hz: z.number().nonnegative(),
  /** False when the meter's readings did not cover every repetition (e.g. the sensor was unplugged). */
  complete: z.boolean(),
  uncertainty: z.string(),
  /** Fallbacks and data-quality remarks (bad lines, gaps, a lost sensor). */
  note: z.string().nullable(),
  /** True when the readings came from a simulator, not this device (absent in older results: measured). */
  simulated: z.boolean().optional(),
});

export const benchResultSchema = z.object({
  model: z.string(),
  quant: z.string(),
  profile: z.string(),
  device: z.string(),
  threads: z.number().int().positive(),
  test: z.string().regex(/^(pp|tg) \d+$/),
  /**
   * How the run's tg tests decoded (pp rows carry the run's path; their prefill is one call either
   * way): fused = many steps per ONNX Runtime call, step = one call per token. Older results have
   * none: they stepped (decodePathOf reads them so).
   */
  decode: z.enum(["fused", "step"]).optional(),
  /** The seeded sampling of the tg tests; null or absent: greedy. */
  sampling: z
    .object({ temperature: z.number(), top_k: z.number().int().nonnegative(), seed: z.number().int() })
    .nullable()
    .optional(),
  repetitions: z.number().int().positive(),
  warmup: z.number().int().nonnegative(),
  /** Tokens processed over all repetitions (a repetition repeats its test until the minimum duration); energy per token divides by it. */
  tokens: z.number().int().positive(),
  duration_s: z.number().nonnegative(),
  tokens_per_s: z.object({ mean: z.number(), stdev: z.number(), samples: z.array(z.number()) }),
  ttft_ms: z.number(),
  latency_ms: z.object({ p50: z.number(), p95: z.number() }),
  energy: energyResultSchema.nullable(),
  cpu_pct: z.number(),
  rss_mb: z.number(),
  temp_c_max: nullableNumber,
  throttled: z.boolean().nullable(),
  agent_version: z.string(),
  runtime: z.string(),
  /** False: the model folder has no tokenizer.json (the prompts are synthetic token ids in every case). */
  tokenizer: z.boolean().optional(),
  timestamp: z.string(),
});

export type EnergyResult = z.infer<typeof energyResultSchema>;
export type BenchResult = z.infer<typeof benchResultSchema>;

/** The decode path of a result: results from before the field existed stepped one call per token. */
export function decodePathOf(r: Pick<BenchResult, "decode">): "fused" | "step" {
  return r.decode ?? "step";
}

/** How a result decoded, in words for tables: `fused`, `step`, `fused, sampled (T 0.8, top-k 40, seed 1)`. */
export function decodeLabel(r: Pick<BenchResult, "decode" | "sampling">): string {
  const s = r.sampling;
  return s
    ? `${decodePathOf(r)}, sampled (T ${s.temperature}, top-k ${s.top_k}, seed ${s.seed})`
    : decodePathOf(r);
}
