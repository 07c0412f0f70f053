import { IteraError } from "../errors.js";
import { energyFigures, integrateWindow, type WindowEnergy } from "../power/integrate.js";
import { emptyHealth, type Meter, type MeterHealth } from "../power/meter.js";
import { progress } from "../util/progress.js";
import type {
  BenchEngine,
  BenchModel,
  BenchSampling,
  DecodeChoice,
  DecodePath,
  DecodeSettings,
} from "./engine.js";
import type { BenchResult, EnergyResult } from "./result.js";
import { percentile, mean, stdev } from "./stats.js";
import { ResourceMonitor, type SystemPaths } from "./system.js";

/**
 * `pp N`: process a prompt of N tokens; `tg N`: generate N tokens after a one-token prompt, through
 * the runtime's generate() (fused or step, as the plan's decode says).
 */
export interface BenchTest {
  kind: "pp" | "tg";
  n: number;
}

/** Parse "pp64,tg128" or "pp 64" (the profile writes pp64). */
export function parseTests(spec: string | readonly string[]): BenchTest[] {
  const items = (typeof spec === "string" ? spec.split(",") : spec).map((s) => s.trim()).filter(Boolean);
  if (items.length === 0)
    throw new IteraError("no benchmark tests given", { where: "--tests", fix: "e.g. --tests pp64,tg128" });
  return items.map((s) => {
    const m = /^(pp|tg)\s*(\d+)$/.exec(s);
    if (!m || Number(m[2]) < 1) {
      throw new IteraError(`'${s}' is not a benchmark test`, {
        where: "--tests",
        fix: "a test is ppN (prefill N prompt tokens) or tgN (generate N tokens), e.g. pp64,tg128",
      });
    }
    return { kind: m[1] as "pp" | "tg", n: Number(m[2]) };
  });
}

export interface BenchPlan {
  tests: BenchTest[];
  threads: number[];
  repetitions: number;
  warmup: number;
  /** Each repetition repeats its test until it has lasted this long, so slow meters see enough samples. */
  minDurationS: number;
  /** Seconds of idle measured before the tests for the net figures (0: none). */
  idleS: number;
  /** How tg tests decode (default auto: what generate() does for the model, fused where it fuses). */
  decode?: DecodeChoice;
  /** Seeded sampling for tg tests (default null: greedy). */
  sampling?: BenchSampling | null;
}

export interface BenchContext {
  engine: BenchEngine;
  /** The power meter, started; null to benchmark without energy. */
  meter: Meter | null;
  /** A started meter used for the windows the main meter did not cover (e.g. tdp when the INA219 is lost). */
  fallback?: Meter | null;
  profile: string;
  device: string;
  agentVersion: string;
  quiet?: boolean;
  system?: SystemPaths;
  /** Called with each result as soon as it is ready. */
  onResult?: (r: BenchResult) => void;
  /** Called after each measured repetition with its window on the host clock (live telemetry, checks). */
  onRepetition?: (rep: { threads: number; test: string; t0: number; t1: number; tokens: number }) => void;
  /** Stops the run before the next prompt or token (a job's deadline); the signal's reason is thrown. */
  signal?: AbortSignal;
}

interface Run {
  tokens: number;
  /** Time to the first token of this run. */
  ttftMs: number;
  /** pp: the run's prefill time; tg: each token's time (a fused call's time divided by its tokens). */
  latenciesMs: number[];
  /** tg: the path the generation took. */
  decode?: DecodePath;
}

async function runOnce(model: BenchModel, test: BenchTest, signal?: AbortSignal): Promise<Run> {
  signal?.throwIfAborted();
  if (test.kind === "pp") {
    const t0 = performance.now();
    await model.prefill(test.n);
    const dt = performance.now() - t0;
    return { tokens: test.n, ttftMs: dt, latenciesMs: [dt] };
  }
  const g = await model.generate(test.n, signal);
  return { tokens: test.n, ttftMs: g.ttftMs, latenciesMs: [g.ttftMs, ...g.tokenMs], decode: g.decode };
}

/** A row says one decode path: a generation that took another than the one found up front is a bug, not a figure. */
function checkDecode(run: Run, expected: DecodePath): void {
  if (run.decode !== undefined && run.decode !== expected) {
    throw new Error(`a tg test decoded ${run.decode}, not ${expected} as the model's decode path said`);
  }
}

function sumWindows(ws: WindowEnergy[]): WindowEnergy {
  return {
    joules: ws.reduce((a, w) => a + w.joules, 0),
    samples: ws.reduce((a, w) => a + w.samples, 0),
    covered_ms: ws.reduce((a, w) => a + w.covered_ms, 0),
    window_ms: ws.reduce((a, w) => a + w.window_ms, 0),
    max_gap_ms: Math.max(0, ...ws.map((w) => w.max_gap_ms)),
  };
}

/** Data-quality remarks about a meter since `before` (the start of a test). */
function healthNote(meter: Meter, before: MeterHealth): string[] {
  const now = meter.health();
  const h = {
    bad_lines: now.bad_lines - before.bad_lines,
    bad_checksums: now.bad_checksums - before.bad_checksums,
    gaps: now.gaps - before.gaps,
    overflows: now.overflows - before.overflows,
    lost: now.lost,
  };
  const notes: string[] = [];
  if (h.bad_lines) notes.push(`${h.bad_lines} bad lines skipped`);
  if (h.bad_checksums) notes.push(`${h.bad_checksums} bad checksums dropped`);
  if (h.gaps) notes.push(`${h.gaps} samples missing (sequence gaps)`);
  if (h.overflows) notes.push(`${h.overflows} overflowed samples dropped`);
  if (h.lost) notes.push(`${meter.name} lost: ${h.lost.reason}`);
  return notes;
}

/** Energy of a test's windows from `meter`, or from the fallback when the meter did not cover them. */
async function energyOf(
  ctx: BenchContext,
  windows: { t0: number; t1: number }[],
  tokens: number,
  idle: Map<Meter, number | null>,
  healthBefore: MeterHealth | null,
): Promise<EnergyResult | null> {
  const primary = ctx.meter;
  if (!primary) return null;
  const last = windows[windows.length - 1]!.t1;
  const figure = async (m: Meter) => {
    await m.sync(last);
    const w = sumWindows(windows.map(({ t0, t1 }) => integrateWindow(m.readings(), t0, t1)));
    const f = energyFigures({
      method: m.method,
      window: w,
      tokens,
      idle_w: idle.get(m) ?? null,
      uncertainty: m.uncertainty,
    });
    return m.simulated ? { ...f, simulated: true } : f;
  };
  let source = primary;
  let f = await figure(primary);
  const notes = healthNote(primary, healthBefore ?? emptyHealth());
  // No valid figure from the meter (incomplete or no energy): the fallback's, saying why.
  if (f.J === null && ctx.fallback) {
    notes.push(`${primary.name}: ${f.withheld.join("; ")}; fell back to ${ctx.fallback.method}`);
    source = ctx.fallback;
    f = await figure(source);
  }
  notes.push(...f.withheld);
  if (f.J !== null && idle.has(source) && idle.get(source) === null) {
    notes.push("the idle baseline had no valid reading: no net figures");
  }
  const { duration_s: _d, withheld: _w, ...rest } = f;
  return { ...rest, note: notes.length > 0 ? notes.join("; ") : null };
}

/** Average power over `seconds` of doing nothing, from each meter; null where the readings fall short. */
async function measureIdle(meters: Meter[], seconds: number): Promise<Map<Meter, number | null>> {
  const out = new Map<Meter, number | null>();
  if (seconds <= 0 || meters.length === 0) return out;
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const t1 = performance.now();
  for (const m of meters) {
    await m.sync(t1);
    const f = energyFigures({
      method: m.method,
      window: integrateWindow(m.readings(), t0, t1),
      tokens: 0,
      uncertainty: "",
    });
    out.set(m, f.J === null ? null : f.J / f.duration_s);
  }
  return out;
}

/**
 * Run the plan: for each thread count, load the model, and for each test run the warm-up and the
 * repetitions, measuring speed, latency, resources and energy per test. Live progress on stderr.
 */
export async function runBench(plan: BenchPlan, ctx: BenchContext): Promise<BenchResult[]> {
  // Before the idle baseline and any load: a test beyond the context would run for minutes or
  // exhaust memory (a recurrent model takes any length) before measuring anything meaningful.
  const context = ctx.engine.contextLength;
  const beyond = plan.tests.find((t) => context !== undefined && t.n > context);
  if (beyond && context !== undefined) {
    throw new IteraError(
      `test ${beyond.kind}${beyond.n} needs ${beyond.n} positions; the model's context_length is ${context}`,
      { where: "--tests", fix: `use tests of at most ${context} tokens for this model` },
    );
  }
  // Before the idle baseline too: a forced fused path the model cannot take is refused at once.
  const settings: DecodeSettings = { decode: plan.decode ?? "auto", sampling: plan.sampling ?? null };
  const decode = await ctx.engine.decodePath(settings);
  const sampling = settings.sampling && {
    temperature: settings.sampling.temperature,
    top_k: settings.sampling.topK,
    seed: settings.sampling.seed,
  };
  const meters = [ctx.meter, ctx.fallback].filter((m): m is Meter => m != null);
  if (meters.length > 0 && plan.idleS > 0 && !ctx.quiet) {
    process.stderr.write(`measuring the idle baseline for ${plan.idleS} s (stay idle)\n`);
  }
  const idle = await measureIdle(meters, plan.idleS);
  const total = plan.threads.length * plan.tests.length * (plan.warmup + plan.repetitions);
  const bar = progress("bench", total, { quiet: ctx.quiet ?? false });
  let done = 0;
  const results: BenchResult[] = [];
  for (const threads of plan.threads) {
    const model = await ctx.engine.load(threads, settings);
    try {
      for (const test of plan.tests) {
        if (model.maxPositions !== null && test.n > model.maxPositions) {
          throw new IteraError(
            `test ${test.kind}${test.n} needs ${test.n} positions; the model takes ${model.maxPositions}`,
            {
              where: "--tests",
              fix: `use N ≤ ${model.maxPositions} for this model`,
            },
          );
        }
        const label = `t=${threads} ${test.kind}${test.n}`;
        for (let w = 0; w < plan.warmup; w++) {
          checkDecode(await runOnce(model, test, ctx.signal), decode);
          bar.update(++done, `${label} warm-up`);
        }
        const healthBefore = ctx.meter?.health() ?? null;
        const monitor = new ResourceMonitor(ctx.system);
        await monitor.start();
        const windows: { t0: number; t1: number }[] = [];
        const tps: number[] = [];
        const ttft: number[] = [];
        const latencies: number[] = [];
        let tokensAll = 0;
        for (let r = 0; r < plan.repetitions; r++) {
          const t0 = performance.now();
          let tokens = 0;
          do {
            const run = await runOnce(model, test, ctx.signal);
            checkDecode(run, decode);
            if (tokens === 0) ttft.push(run.ttftMs);
            tokens += run.tokens;
            latencies.push(...run.latenciesMs);
          } while (performance.now() - t0 < plan.minDurationS * 1000);
          const t1 = performance.now();
          windows.push({ t0, t1 });
          ctx.onRepetition?.({ threads, test: `${test.kind} ${test.n}`, t0, t1, tokens });
          tps.push(tokens / ((t1 - t0) / 1000));
          tokensAll += tokens;
          bar.update(++done, `${label} ${mean(tps).toFixed(1)} t/s`);
        }
        const resources = await monitor.stop();
        const result: BenchResult = {
          model: ctx.engine.model,
          quant: ctx.engine.quant,
          profile: ctx.profile,
          device: ctx.device,
          threads,
          test: `${test.kind} ${test.n}`,
          decode,
          sampling,
          repetitions: plan.repetitions,
          warmup: plan.warmup,
          tokens: tokensAll,
          duration_s: windows.reduce((a, w) => a + (w.t1 - w.t0), 0) / 1000,
          tokens_per_s: { mean: mean(tps), stdev: stdev(tps), samples: tps },
          ttft_ms: mean(ttft),
          latency_ms: { p50: percentile(latencies, 50), p95: percentile(latencies, 95) },
          energy: await energyOf(ctx, windows, tokensAll, idle, healthBefore),
          ...resources,
          agent_version: ctx.agentVersion,
          runtime: ctx.engine.runtime,
          ...(ctx.engine.tokenizer === undefined ? {} : { tokenizer: ctx.engine.tokenizer }),
          timestamp: new Date().toISOString(),
        };
        results.push(result);
        ctx.onResult?.(result);
      }
    } finally {
      await model.close();
    }
  }
  bar.done(`${results.length} results`);
  return results;
}
