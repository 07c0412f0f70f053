import { describe, expect, it } from "vitest";
import {
  energyFigures,
  integrateCounters,
  integratePower,
  integrateWindow,
  unwrapCounter,
} from "../src/power/integrate.js";
import type { PowerSample } from "../src/power/meter.js";

/** Samples of p(t) (t in ms) at the given times. */
const trace = (times: number[], p: (t: number) => number): PowerSample[] =>
  times.map((t) => ({ t_ms: t, watts: p(t) }));
const every = (from: number, to: number, step: number) =>
  Array.from({ length: Math.floor((to - from) / step) + 1 }, (_, i) => from + i * step);

describe("integratePower (trapezoid on the samples' own timestamps, clipped to the window)", () => {
  it("constant power: P × duration exactly", () => {
    const r = integratePower(
      trace(every(0, 10_000, 100), () => 5),
      1000,
      6000,
    );
    expect(r.joules).toBeCloseTo(25, 12);
    expect(r.samples).toBe(51);
    expect(r.covered_ms).toBe(5000);
  });

  it("a ramp is integrated exactly, edges interpolated between samples", () => {
    // p = 2 + t_s W; ∫ from 0.55 s to 2.53 s = 2·1.98 + (2.53² − 0.55²)/2
    const r = integratePower(
      trace(every(0, 5000, 100), (t) => 2 + t / 1000),
      550,
      2530,
    );
    expect(r.joules).toBeCloseTo(2 * 1.98 + (2.53 ** 2 - 0.55 ** 2) / 2, 10);
  });

  it("a step between two samples becomes a linear rise between them", () => {
    // 1 W up to 1000 ms, 3 W from 1100 ms: 1·1.0 + (1+3)/2·0.1 + 3·0.9 = 3.9 J
    const r = integratePower(
      trace(every(0, 2000, 100), (t) => (t <= 1000 ? 1 : 3)),
      0,
      2000,
    );
    expect(r.joules).toBeCloseTo(3.9, 12);
  });

  it("irregular sampling of a linear trace is exact", () => {
    const times = [0, 13, 70, 71, 333, 334.5, 901, 1500, 1502, 2999, 3000];
    const r = integratePower(
      trace(times, (t) => 4 - t / 1000),
      50,
      2950,
    );
    // ∫ (4 − t) dt from 0.05 to 2.95 s
    expect(r.joules).toBeCloseTo(4 * 2.9 - (2.95 ** 2 - 0.05 ** 2) / 2, 10);
    expect(r.samples).toBe(7);
  });

  it("unsorted samples are sorted first", () => {
    const s = trace([300, 0, 200, 100], () => 2);
    expect(integratePower(s, 0, 300).joules).toBeCloseTo(0.6, 12);
  });

  it("a gap is bridged linearly and reported as the longest interval", () => {
    const times = [...every(0, 1000, 100), ...every(2000, 3000, 100)];
    const r = integratePower(
      trace(times, () => 2),
      500,
      2500,
    );
    expect(r.joules).toBeCloseTo(4, 12);
    expect(r.max_gap_ms).toBe(1000);
  });

  it("a window beyond the readings counts only what was covered", () => {
    const r = integratePower(
      trace(every(0, 1000, 100), () => 2),
      500,
      2000,
    );
    expect(r.joules).toBeCloseTo(1, 12);
    expect(r.covered_ms).toBe(500);
    expect(r.window_ms).toBe(1500);
    expect(integratePower([], 0, 10).joules).toBe(0);
  });
});

describe("energy counters", () => {
  it("unwraps a counter that restarts at zero", () => {
    expect(unwrapCounter([90, 95, 3, 10, 2], 100)).toEqual([90, 95, 103, 110, 202]);
  });

  it("differences wrapped counters, interpolating at the edges, summing packages", () => {
    // package 0: 30 W wrapping at 100 J; package 1: 10 W wrapping at 1000 J, starting at 995 J
    const samples = every(0, 5000, 1000).map((t) => ({
      t_ms: t,
      joules: [(30 * t) / 1000 - 100 * Math.floor((30 * t) / 1000 / 100), (995 + (10 * t) / 1000) % 1000],
    }));
    expect(samples.map((s) => s.joules[0])).toEqual([0, 30, 60, 90, 20, 50]);
    const r = integrateCounters(samples, [100, 1000], 500, 4500);
    expect(r.joules).toBeCloseTo(30 * 4 + 10 * 4, 9);
    const viaReadings = integrateWindow({ kind: "counter", samples, range_j: [100, 1000] }, 500, 4500);
    expect(viaReadings.joules).toBeCloseTo(160, 9);
  });
});

describe("energyFigures", () => {
  it("mJ/token, tokens/J, idle baseline and net figures", () => {
    const w = integratePower(
      trace(every(0, 2000, 100), () => 3),
      0,
      2000,
    ); // 6 J over 2 s
    const f = energyFigures({ method: "ina219", window: w, tokens: 120, idle_w: 1, uncertainty: "u" });
    expect(f.J).toBeCloseTo(6, 12);
    expect(f.mJ_per_token).toBeCloseTo((1000 * 6) / 120, 9);
    expect(f.tokens_per_J).toBeCloseTo(20, 9);
    expect(f.net_J).toBeCloseTo(4, 12);
    expect(f.net_mJ_per_token).toBeCloseTo((1000 * 4) / 120, 9);
    expect(f.net_tokens_per_J).toBeCloseTo(30, 9);
    expect(f.samples).toBe(21);
    expect(f.rate_hz).toBeCloseTo(10.5, 9);
    expect(f.complete).toBe(true);
  });

  it("no idle baseline: no net figures; partial coverage: not complete", () => {
    const w = integratePower(
      trace(every(0, 1000, 100), () => 3),
      0,
      2000,
    );
    const f = energyFigures({ method: "tdp-estimate", window: w, tokens: 0, uncertainty: "u" });
    expect(f.net_J).toBeNull();
    expect(f.mJ_per_token).toBeNull();
    expect(f.complete).toBe(false);
  });

  it("a window the readings miss (the sensor unplugged): no figure at all, never 0 J or a negative net", () => {
    // Readings stopped at 1 s; the test ran from 2 s to 4 s: the INA219 unplugged before it.
    const w = integratePower(
      trace(every(0, 1000, 10), () => 3),
      2000,
      4000,
    );
    expect(w.joules).toBe(0);
    const f = energyFigures({ method: "ina219", window: w, tokens: 128, idle_w: 3, uncertainty: "u" });
    expect(f).toMatchObject({
      J: null,
      mJ_per_token: null,
      tokens_per_J: null,
      net_J: null,
      net_mJ_per_token: null,
      net_tokens_per_J: null,
      idle_w: 3,
      complete: false,
    });
    expect(f.withheld).toEqual([
      "readings cover 0% of the test's 2.00 s: no energy figure for an incomplete window",
    ]);
    // Half covered: half the energy is no estimate of the whole either.
    const half = energyFigures({
      method: "ina219",
      window: integratePower(
        trace(every(0, 3000, 10), () => 3),
        2000,
        4000,
      ),
      tokens: 128,
      uncertainty: "u",
    });
    expect(half.J).toBeNull();
    expect(half.withheld[0]).toMatch(/^readings cover 50% of the test's 2\.00 s/);
  });

  it("a meter that reads no energy over a covered window: no figure", () => {
    const w = integratePower(
      trace(every(0, 2000, 10), () => 0),
      0,
      2000,
    );
    const f = energyFigures({ method: "ina219", window: w, tokens: 64, idle_w: 1, uncertainty: "u" });
    expect(f.complete).toBe(true);
    expect(f.J).toBeNull();
    expect(f.mJ_per_token).toBeNull();
    expect(f.net_J).toBeNull();
    expect(f.withheld).toEqual(["the meter read 0 J over the test's 2.00 s: no energy figure"]);
  });

  it("a test not above the idle baseline: gross figures, no net ones, and why", () => {
    const w = integratePower(
      trace(every(0, 2000, 10), () => 2.5),
      0,
      2000,
    );
    const f = energyFigures({ method: "ina219", window: w, tokens: 100, idle_w: 2.6, uncertainty: "u" });
    expect(f.J).toBeCloseTo(5, 9);
    expect(f.mJ_per_token).toBeCloseTo(50, 9);
    expect(f).toMatchObject({ net_J: null, net_mJ_per_token: null, net_tokens_per_J: null, idle_w: 2.6 });
    expect(f.withheld).toEqual([
      "the test's mean power 2.500 W is not above the idle baseline 2.600 W: no net figures",
    ]);
    // Above it: the net figures, nothing withheld.
    const above = energyFigures({ method: "ina219", window: w, tokens: 100, idle_w: 2, uncertainty: "u" });
    expect(above.net_J).toBeCloseTo(1, 9);
    expect(above.withheld).toEqual([]);
  });
});
