import type { BenchEngine, DecodePath } from "../bench/engine.js";
import { IteraError } from "../errors.js";
import { type BenchTest, runBench } from "../bench/harness.js";
import { percentile } from "../bench/stats.js";
import type { Meter } from "../power/meter.js";
import { progress } from "../util/progress.js";
import type { GridRow } from "./tuned-file.js";
import type { Variant } from "./variants.js";

/**
 * Measure every candidate (precision × threads) with the bench harness: `rounds` rounds, each running
 * every candidate once (a fresh session, one warm-up, one measured repetition of at least
 * `minDurationS`), the order rotated each round so that slow drifts of the machine (heat, other load)
 * fall on every candidate alike. A candidate's figure is the median of its rounds.
 */
export interface MeasurePlan {
  test: BenchTest;
  threads: number[];
  rounds: number;
  minDurationS: number;
}

export interface Candidate {
  precision: string;
  threads: number;
  /** tg tests: the decode path forced for this candidate. */
  decode?: DecodePath;
  engine: BenchEngine;
}

/**
 * Every precision × threads (× decode path for tg tests: step, and fused where the model's decode
 * loop builds and runs; `decodes` narrows them).
 */
export async function candidatesOf(
  variants: readonly Variant[],
  threads: readonly number[],
  decodes: readonly DecodePath[] | null,
  engineOf: (dir: string) => Promise<BenchEngine>,
  log: (line: string) => void,
): Promise<Candidate[]> {
  const out: Candidate[] = [];
  for (const v of variants) {
    const engine = await engineOf(v.dir);
    const paths: (DecodePath | undefined)[] = [];
    for (const d of decodes ?? [undefined]) {
      if (d === undefined || (await fuses(engine, d, v.precision, log))) paths.push(d);
    }
    for (const t of threads)
      for (const d of paths) out.push({ precision: v.precision, threads: t, decode: d, engine });
  }
  return out;
}

/** Whether the engine decodes by `path` (fused needs a decode loop that builds for the model). */
async function fuses(engine: BenchEngine, path: DecodePath, precision: string, log: (l: string) => void) {
  try {
    return (await engine.decodePath({ decode: path, sampling: null })) === path;
  } catch (e) {
    if (!(e instanceof IteraError)) throw e;
    log(`tune: ${precision} has no ${path} decode: ${e.message}`);
    return false;
  }
}

export async function measureGrid(
  candidates: readonly Candidate[],
  plan: MeasurePlan,
  ctx: {
    meter: Meter | null;
    profile: string;
    device: string;
    agentVersion: string;
    quiet: boolean;
    /** Each measured candidate, beside the stderr bar (a job reports it over MQTT). */
    onProgress?: (done: number, total: number, note: string) => void;
    signal?: AbortSignal;
  },
): Promise<GridRow[]> {
  const { onProgress, ...benchCtx } = ctx;
  const tps = candidates.map(() => [] as number[]);
  const mj = candidates.map(() => [] as number[]);
  const energyMissing = candidates.map(() => false);
  const bar = progress("tune", plan.rounds * candidates.length, { quiet: ctx.quiet });
  let done = 0;
  for (let round = 0; round < plan.rounds; round++) {
    for (let k = 0; k < candidates.length; k++) {
      const i = (k + round) % candidates.length;
      const c = candidates[i]!;
      const [r] = await runBench(
        {
          tests: [plan.test],
          threads: [c.threads],
          repetitions: 1,
          warmup: 1,
          minDurationS: plan.minDurationS,
          idleS: 0,
          ...(c.decode === undefined ? {} : { decode: c.decode }),
        },
        { ...benchCtx, engine: c.engine, quiet: true },
      );
      tps[i]!.push(r!.tokens_per_s.mean);
      const e = r!.energy?.mJ_per_token;
      if (e === null || e === undefined) energyMissing[i] = true;
      else mj[i]!.push(e);
      const note = `round ${round + 1}: ${c.precision} t=${c.threads}${c.decode ? ` ${c.decode}` : ""} ${r!.tokens_per_s.mean.toFixed(0)} t/s`;
      bar.update(++done, note);
      onProgress?.(done, plan.rounds * candidates.length, note);
    }
  }
  bar.done(`${candidates.length} candidates × ${plan.rounds} rounds`);
  const summary = (xs: number[]) => ({ median: percentile(xs, 50), samples: xs });
  return candidates.map((c, i) => ({
    precision: c.precision,
    threads: c.threads,
    ...(c.decode === undefined ? {} : { decode: c.decode }),
    tokens_per_s: summary(tps[i]!),
    // A candidate with a round the meter did not cover has no energy figure: medians of a part mislead.
    mJ_per_token: energyMissing[i] || mj[i]!.length === 0 ? null : summary(mj[i]!),
  }));
}
