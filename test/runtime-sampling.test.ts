import { describe, expect, it } from "vitest";
import {
  applyRepetitionPenalty,
  argmax,
  createRng,
  drawFrom,
  Sampler,
  samplingDistribution,
  topKIndices,
} from "../src/runtime/sampling.js";

const f32 = (xs: number[]) => Float32Array.from(xs);
const logOf = (ps: number[]) => f32(ps.map(Math.log));

describe("sampling on hand-made logits", () => {
  it("argmax takes the first of equal maxima", () => {
    expect(argmax(f32([1, 3, 3, 2]))).toBe(1);
    expect(argmax(f32([-5, -1, -2]))).toBe(1);
  });

  it("repetition penalty divides positive and multiplies negative logits of seen tokens, once each", () => {
    const logits = f32([2, -2, 1, 0.5]);
    applyRepetitionPenalty(logits, [0, 1, 1, 9], 2);
    expect(Array.from(logits)).toEqual([1, -4, 1, 0.5]);
  });

  it("top-k keeps exactly the k largest, most likely first", () => {
    const d = samplingDistribution(f32([1, 3, 2, 0]), { temperature: 1, topK: 2 });
    expect(d.ids).toEqual([1, 2]);
    expect(d.probs[0]).toBeCloseTo(Math.E / (Math.E + 1), 6);
    expect(samplingDistribution(f32([1, 3, 2, 0]), { temperature: 1, topK: 0 }).ids).toEqual([1, 2, 0, 3]);
  });

  it("top-p keeps the smallest most-likely set reaching p, at least one token", () => {
    const keep = (p: number) =>
      samplingDistribution(logOf([0.15, 0.5, 0.05, 0.3]), { temperature: 1, topP: p }).ids;
    expect(keep(0.45)).toEqual([1]);
    expect(keep(0.75)).toEqual([1, 3]);
    expect(keep(0.9)).toEqual([1, 3, 0]);
    expect(keep(1)).toEqual([1, 3, 0, 2]);
    const d = samplingDistribution(logOf([0.15, 0.5, 0.05, 0.3]), { temperature: 1, topP: 0.75 });
    expect(d.probs[0]).toBeCloseTo(0.5 / 0.8, 6);
    expect(d.probs[1]).toBeCloseTo(0.3 / 0.8, 6);
  });

  it("temperature sharpens or flattens the distribution", () => {
    const logits = logOf([0.25, 0.75]);
    expect(samplingDistribution(logits, { temperature: 1 }).probs[0]).toBeCloseTo(0.75, 6);
    // p^(1/T) renormalised: T = 0.5 squares the odds (3:1 -> 9:1)
    expect(samplingDistribution(logits, { temperature: 0.5 }).probs[0]).toBeCloseTo(0.9, 6);
  });

  it("top-k then top-p work on the renormalised top-k set", () => {
    // 0.4, 0.3, 0.2 after top-3 -> 0.444, 0.333, 0.222; top-p 0.7 keeps two -> 4/7, 3/7
    const d = samplingDistribution(logOf([0.1, 0.4, 0.2, 0.3]), { temperature: 1, topK: 3, topP: 0.7 });
    expect(d.ids).toEqual([1, 3]);
    expect(d.probs[0]).toBeCloseTo(4 / 7, 6);
  });

  it("drawFrom walks the cumulative distribution", () => {
    const probs = [0.2, 0.5, 0.3];
    expect([0, 0.1, 0.2, 0.69, 0.7, 0.999].map((u) => drawFrom(probs, u))).toEqual([0, 0, 1, 1, 2, 2]);
    expect(drawFrom([0, 1, 0], 0.5)).toBe(1);
  });

  it("the PRNG is reproducible per seed and uniform in [0, 1)", () => {
    const a = createRng(42);
    const b = createRng(42);
    const c = createRng(43);
    const xs = Array.from({ length: 1000 }, () => a());
    expect(Array.from({ length: 1000 }, () => b())).toEqual(xs);
    expect(Array.from({ length: 1000 }, () => c())).not.toEqual(xs);
    expect(xs.every((x) => x >= 0 && x < 1)).toBe(true);
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
    expect(mean).toBeGreaterThan(0.45);
    expect(mean).toBeLessThan(0.55);
  });

  it("a greedy sampler applies the repetition penalty before choosing", () => {
    expect(new Sampler({ temperature: 0 }).next(f32([3, 2.5]), [0])).toBe(0);
    expect(new Sampler({ temperature: 0, repetitionPenalty: 2 }).next(f32([3, 2.5]), [0])).toBe(1);
  });

  it("sampling with top-k 1 is greedy; the logits passed in are not changed", () => {
    const logits = f32([0.1, 2, 1.9, -1]);
    const s = new Sampler({ temperature: 1.3, topK: 1, seed: 1 });
    for (let i = 0; i < 20; i++) expect(s.next(logits, [])).toBe(1);
    expect(Array.from(logits)).toEqual(Array.from(f32([0.1, 2, 1.9, -1])));
  });

  it("samples follow the distribution (seeded, so the counts are exact run to run)", () => {
    const s = new Sampler({ temperature: 1, seed: 123 });
    const counts = [0, 0];
    for (let i = 0; i < 4000; i++) counts[s.next(logOf([0.25, 0.75]), [])]!++;
    expect(counts[1]! / 4000).toBeGreaterThan(0.72);
    expect(counts[1]! / 4000).toBeLessThan(0.78);
    const again = new Sampler({ temperature: 1, seed: 123 });
    const counts2 = [0, 0];
    for (let i = 0; i < 4000; i++) counts2[again.next(logOf([0.25, 0.75]), [])]!++;
    expect(counts2).toEqual(counts);
  });

  it("top-p with a low temperature leaves only the most likely token", () => {
    const s = new Sampler({ temperature: 0.05, topP: 0.9, seed: 5 });
    for (let i = 0; i < 20; i++) expect(s.next(logOf([0.3, 0.4, 0.3]), [])).toBe(1);
  });
});

describe("sampler candidates", () => {
  it("topKIndices equals the first k of a full ranking, ties to the lower id", () => {
    const rng = createRng(9);
    for (let trial = 0; trial < 50; trial++) {
      const logits = Float32Array.from({ length: 200 }, () => Math.round(rng() * 20) / 4);
      const full = Array.from({ length: 200 }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
      for (const k of [1, 5, 40]) expect(topKIndices(logits, k)).toEqual(full.slice(0, k));
    }
  });

  it("samples only from the top-k ∩ top-p set, in proportion", () => {
    const s = new Sampler({ temperature: 1, topK: 3, topP: 0.7, seed: 11 });
    // probabilities 0.4, 0.3, 0.2, 0.1: top-3 keeps 0.4/0.3/0.2, top-p 0.7 of those (0.44, 0.33, ...) keeps two
    const logits = logOf([0.1, 0.4, 0.2, 0.3]);
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < 4000; i++) counts[s.next(logits, [])]!++;
    expect(counts[0]).toBe(0);
    expect(counts[2]).toBe(0);
    expect(counts[1]! / 4000).toBeGreaterThan(0.53);
    expect(counts[1]! / 4000).toBeLessThan(0.61);
  });
});
