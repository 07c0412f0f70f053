import { describe, expect, it } from "vitest";
import {
  applyRepetitionPenalty,
  argmax,
  createRng,
  drawFrom,
  Sampler,
  softmax,
  topKFilter,
  topPFilter,
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

  it("top-k keeps exactly the k largest", () => {
    const logits = f32([1, 3, 2, 0]);
    topKFilter(logits, 2);
    expect(Array.from(logits)).toEqual([-Infinity, 3, 2, -Infinity]);
    const all = f32([1, 3, 2, 0]);
    topKFilter(all, 0);
    expect(Array.from(all)).toEqual([1, 3, 2, 0]);
  });

  it("top-p keeps the smallest most-likely set reaching p, at least one token", () => {
    const probs = [0.15, 0.5, 0.05, 0.3];
    const keep = (p: number) => {
      const l = logOf(probs);
      topPFilter(l, p);
      return Array.from(l).map((v) => v > -Infinity);
    };
    expect(keep(0.45)).toEqual([false, true, false, false]);
    expect(keep(0.75)).toEqual([false, true, false, true]);
    expect(keep(0.9)).toEqual([true, true, false, true]);
    expect(keep(1)).toEqual([true, true, true, true]);
  });

  it("softmax normalises and gives -Infinity probability 0", () => {
    const p = softmax(f32([0, Math.log(3), -Infinity]));
    expect(p[0]).toBeCloseTo(0.25, 6);
    expect(p[1]).toBeCloseTo(0.75, 6);
    expect(p[2]).toBe(0);
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
