import type { CounterSample, PowerSample, Readings } from "./meter.js";

/** The energy a meter saw over one window [t0, t1] (ms on the host's monotonic clock). */
export interface WindowEnergy {
  joules: number;
  /** Samples whose timestamp lies inside the window. */
  samples: number;
  /** Milliseconds of the window that lie between the first and the last reading (the rest is not counted). */
  covered_ms: number;
  window_ms: number;
  /** Longest interval between consecutive readings that overlaps the window. */
  max_gap_ms: number;
}

/** Linear interpolation of y at t between (ta, ya) and (tb, yb). */
function lerp(ta: number, ya: number, tb: number, yb: number, t: number): number {
  return tb === ta ? ya : ya + ((yb - ya) * (t - ta)) / (tb - ta);
}

/**
 * A piecewise-linear signal through (t, y) points sorted by t, integrated (or sampled) over a window:
 * the window is clipped to [first t, last t], its edges interpolated between the neighbouring points.
 */
function clipPoints(ts: readonly number[], ys: readonly number[], t0: number, t1: number) {
  const n = ts.length;
  const inside = ts.filter((t) => t >= t0 && t <= t1).length;
  let maxGap = 0;
  for (let i = 1; i < n; i++) {
    if (ts[i]! > t0 && ts[i - 1]! < t1) maxGap = Math.max(maxGap, ts[i]! - ts[i - 1]!);
  }
  if (n === 0) return { points: [] as [number, number][], inside, maxGap };
  const a = Math.max(t0, ts[0]!);
  const b = Math.min(t1, ts[n - 1]!);
  if (!(a < b)) return { points: [] as [number, number][], inside, maxGap };
  const at = (t: number): number => {
    // Binary search for the last point with ts <= t.
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (ts[mid]! <= t) lo = mid;
      else hi = mid - 1;
    }
    if (lo >= n - 1) return ys[n - 1]!;
    return lerp(ts[lo]!, ys[lo]!, ts[lo + 1]!, ys[lo + 1]!, t);
  };
  const points: [number, number][] = [[a, at(a)]];
  for (let i = 0; i < n; i++) if (ts[i]! > a && ts[i]! < b) points.push([ts[i]!, ys[i]!]);
  points.push([b, at(b)]);
  return { points, inside, maxGap };
}

/** The samples in time order (meters append in order: copy and sort only when they are not). */
function inTimeOrder<T extends { t_ms: number }>(samples: readonly T[]): readonly T[] {
  for (let i = 1; i < samples.length; i++) {
    if (samples[i]!.t_ms < samples[i - 1]!.t_ms) return [...samples].sort((x, y) => x.t_ms - y.t_ms);
  }
  return samples;
}

/** Trapezoidal integral of power (W) on the samples' own timestamps, clipped to [t0, t1]; joules. */
export function integratePower(samples: readonly PowerSample[], t0: number, t1: number): WindowEnergy {
  const sorted = inTimeOrder(samples);
  const { points, inside, maxGap } = clipPoints(
    sorted.map((s) => s.t_ms),
    sorted.map((s) => s.watts),
    t0,
    t1,
  );
  let joules = 0;
  for (let i = 1; i < points.length; i++) {
    const [ta, pa] = points[i - 1]!;
    const [tb, pb] = points[i]!;
    joules += ((pa + pb) / 2) * ((tb - ta) / 1000);
  }
  const covered = points.length > 1 ? points[points.length - 1]![0] - points[0]![0] : 0;
  return { joules, samples: inside, covered_ms: covered, window_ms: t1 - t0, max_gap_ms: maxGap };
}

/**
 * Undo wrap-around of an energy counter that restarts at zero after `range` (RAPL's
 * max_energy_range_uj): a decrease between consecutive readings means one wrap.
 */
export function unwrapCounter(values: readonly number[], range: number): number[] {
  const out: number[] = [];
  let offset = 0;
  for (let i = 0; i < values.length; i++) {
    if (i > 0 && values[i]! < values[i - 1]!) offset += range;
    out.push(values[i]! + offset);
  }
  return out;
}

/**
 * Energy from cumulative counters over [t0, t1]: each counter unwrapped, interpolated linearly at the
 * window's edges (clipped to the readings), differenced, and the counters summed.
 */
export function integrateCounters(
  samples: readonly CounterSample[],
  ranges: readonly number[],
  t0: number,
  t1: number,
): WindowEnergy {
  const sorted = inTimeOrder(samples);
  const ts = sorted.map((s) => s.t_ms);
  let joules = 0;
  let clip = clipPoints(ts, ts, t0, t1);
  for (let k = 0; k < ranges.length; k++) {
    const cumulative = unwrapCounter(
      sorted.map((s) => s.joules[k] ?? 0),
      ranges[k]!,
    );
    clip = clipPoints(ts, cumulative, t0, t1);
    if (clip.points.length > 1) joules += clip.points[clip.points.length - 1]![1] - clip.points[0]![1];
  }
  const p = clip.points;
  const covered = p.length > 1 ? p[p.length - 1]![0] - p[0]![0] : 0;
  return { joules, samples: clip.inside, covered_ms: covered, window_ms: t1 - t0, max_gap_ms: clip.maxGap };
}

/** Energy over [t0, t1] from whatever a meter recorded. */
export function integrateWindow(r: Readings, t0: number, t1: number): WindowEnergy {
  return r.kind === "power"
    ? integratePower(r.samples, t0, t1)
    : integrateCounters(r.samples, r.range_j, t0, t1);
}

/** The energy figures of DESIGN.md §6/§7 for one measured window. */
export interface EnergyFigures {
  method: string;
  /** Null, as every figure below, when the window has no valid energy: `withheld` says why. */
  J: number | null;
  mJ_per_token: number | null;
  tokens_per_J: number | null;
  /** Idle baseline power, when one was measured; the net figures subtract idle_w × duration. */
  idle_w: number | null;
  net_J: number | null;
  net_mJ_per_token: number | null;
  net_tokens_per_J: number | null;
  samples: number;
  rate_hz: number;
  duration_s: number;
  /** False when the readings did not cover the whole window (e.g. the sensor was unplugged). */
  complete: boolean;
  uncertainty: string;
  /**
   * Why figures are null though a meter ran: readings that miss part of the window or show no
   * energy (no J and nothing derived from it), or a test not above the idle baseline (no net
   * figures). Empty when every figure that could be computed is there.
   */
  withheld: string[];
}

/** Readings may start or end up to this share of the window (or 1 ms) away from its edges. */
const COVERAGE_TOLERANCE = 0.02;

export function energyFigures(opts: {
  method: string;
  window: WindowEnergy;
  tokens: number;
  idle_w?: number | null;
  uncertainty: string;
}): EnergyFigures {
  const { window: w, tokens } = opts;
  const duration_s = w.window_ms / 1000;
  const complete = w.window_ms - w.covered_ms <= Math.max(1, COVERAGE_TOLERANCE * w.window_ms);
  const withheld: string[] = [];
  // Part of a window is not an estimate of the whole, and a meter that saw no energy (a sensor
  // unplugged, a counter that stopped) measured nothing: no figure rather than 0 or a lower bound.
  let J: number | null = w.joules;
  if (!complete) {
    const pct = w.window_ms > 0 ? (100 * w.covered_ms) / w.window_ms : 0;
    withheld.push(
      `readings cover ${pct.toFixed(0)}% of the test's ${duration_s.toFixed(2)} s: no energy figure for an incomplete window`,
    );
    J = null;
  } else if (!(w.joules > 0)) {
    withheld.push(
      `the meter read ${w.joules} J over the test's ${duration_s.toFixed(2)} s: no energy figure`,
    );
    J = null;
  }
  const perToken = (e: number | null) => (e !== null && tokens > 0 ? (1000 * e) / tokens : null);
  const perJoule = (e: number | null) => (e !== null && e > 0 ? tokens / e : null);
  const idle = opts.idle_w ?? null;
  let net: number | null = null;
  if (J !== null && idle !== null) {
    // Net of idle at or below zero is noise around the baseline (or a baseline measured under
    // load): no energy can be attributed to the test.
    const n = J - idle * duration_s;
    if (n > 0) net = n;
    else {
      withheld.push(
        `the test's mean power ${(J / duration_s).toFixed(3)} W is not above the idle baseline ${idle.toFixed(3)} W: no net figures`,
      );
    }
  }
  return {
    method: opts.method,
    J,
    mJ_per_token: perToken(J),
    tokens_per_J: perJoule(J),
    idle_w: idle,
    net_J: net,
    net_mJ_per_token: perToken(net),
    net_tokens_per_J: perJoule(net),
    samples: w.samples,
    rate_hz: duration_s > 0 ? w.samples / duration_s : 0,
    duration_s,
    complete,
    uncertainty: opts.uncertainty,
    withheld,
  };
}
