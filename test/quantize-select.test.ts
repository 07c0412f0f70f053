import { describe, expect, it } from "vitest";
import { IteraError } from "../src/errors.js";
import { parseBudget, parseQuantizeOptions } from "../src/quantize/options.js";
import { choosePrecisions, type LayerChoice } from "../src/quantize/select.js";

type P = "int4" | "int8" | "fp32";
const layer = (name: string, d4: number, d8: number, size = 1000): LayerChoice<P> => ({
  name,
  options: [
    { precision: "int4", bytes: size / 8, deltaLoss: d4 },
    { precision: "int8", bytes: size / 4, deltaLoss: d8 },
    { precision: "fp32", bytes: size, deltaLoss: 0 },
  ],
});

describe("choosePrecisions", () => {
  it("keeps everything at the smallest precision when it fits the budget", () => {
    const s = choosePrecisions([layer("a", 0.001, 0), layer("b", 0.002, 0)], 0.01);
    expect([...s.choice.values()]).toEqual(["int4", "int4"]);
    expect(s.predictedDelta).toBeCloseTo(0.003);
  });

  it("upgrades the most sensitive layer first and stops once within budget", () => {
    const s = choosePrecisions(
      [layer("a", 0.001, 0.0005), layer("b", 0.05, 0.001), layer("c", 0.002, 0.001)],
      0.01,
    );
    expect(s.choice.get("b")).toBe("int8");
    expect(s.choice.get("a")).toBe("int4");
    expect(s.choice.get("c")).toBe("int4");
    expect(s.predictedDelta).toBeLessThanOrEqual(0.01);
  });

  it("goes to full precision when even int8 is too lossy, and ignores negative (noise) deltas", () => {
    const s = choosePrecisions([layer("a", 0.2, 0.1), layer("b", -0.01, -0.02)], 0.05);
    expect(s.choice.get("a")).toBe("fp32");
    expect(s.choice.get("b")).toBe("int4");
    expect(s.predictedDelta).toBe(0);
  });

  it("prefers the upgrade that buys the most loss per byte", () => {
    // same gain, but "big" costs 10x the bytes to upgrade
    const s = choosePrecisions([layer("big", 0.02, 0, 10000), layer("small", 0.02, 0, 1000)], 0.025);
    expect(s.choice.get("small")).toBe("int8");
    expect(s.choice.get("big")).toBe("int4");
  });
});

describe("options", () => {
  const base = { mode: "int4", blockSize: "32", accuracyLevel: "0" };
  it("parses budgets", () => {
    expect(parseBudget("2%")).toBeCloseTo(0.02);
    expect(parseBudget("0.05")).toBeCloseTo(0.05);
    expect(parseBudget("none")).toBeNull();
    expect(() => parseBudget("lots")).toThrow(IteraError);
    expect(() => parseBudget("-1%")).toThrow(/budget/);
  });

  it("accepts good options and splits --exclude lists", () => {
    const o = parseQuantizeOptions({ ...base, exclude: ["fc1,fc2", "head"], budget: "5%" });
    expect(o.blockSize).toBe(32);
    expect(o.exclude).toEqual(["fc1", "fc2", "head"]);
    expect(o.budget).toBeCloseTo(0.05);
    // defaults as onnxruntime's quantizers: asymmetric block-wise, symmetric int8
    expect([o.symmetric, o.int8Symmetric]).toEqual([false, true]);
    const sym = parseQuantizeOptions({ ...base, symmetric: true });
    expect([sym.symmetric, sym.int8Symmetric]).toEqual([true, true]);
    const asym = parseQuantizeOptions({ ...base, symmetric: false });
    expect([asym.symmetric, asym.int8Symmetric]).toEqual([false, false]);
    expect(o.searchClipping).toBe(true);
    expect(parseQuantizeOptions({ ...base, clipSearch: false }).searchClipping).toBe(false);
  });

  it("refuses a bad mode, block size or accuracy level with the option named", () => {
    expect(() => parseQuantizeOptions({ ...base, mode: "int3" })).toThrow(/--mode "int3".*int8, int4/);
    for (const bs of ["24", "8", "0", "abc", "48"]) {
      expect(() => parseQuantizeOptions({ ...base, blockSize: bs })).toThrow(
        /--block-size.*power of two >= 16/,
      );
    }
    expect(() => parseQuantizeOptions({ ...base, accuracyLevel: "7" })).toThrow(/--accuracy-level/);
    expect(() => parseQuantizeOptions({ ...base, head: "int3" })).toThrow(/--head/);
    expect(() => parseQuantizeOptions({ ...base, moeScales: "column" })).toThrow(
      /invalid --moe-scales "column": must be one of row, block/,
    );
  });

  it("MoE experts default to per-row symmetric QMoE (onnxruntime's fast path)", () => {
    const o = parseQuantizeOptions(base);
    expect([o.moeScales, o.moeZeroPoints]).toEqual(["row", false]);
    const b = parseQuantizeOptions({ ...base, moeScales: "block", moeZeroPoints: true });
    expect([b.moeScales, b.moeZeroPoints]).toEqual(["block", true]);
  });
});
