import { describe, expect, it } from "vitest";
import { parseTests } from "../src/bench/harness.js";
import { parseFormat, renderResults } from "../src/bench/render.js";
import { type BenchResult, benchResultSchema } from "../src/bench/result.js";
import { mean, percentile, stdev } from "../src/bench/stats.js";
import { parseThrottled, readThermalZones } from "../src/bench/system.js";

const result = (over: Partial<BenchResult> = {}): BenchResult => ({
  model: "itera-lite",
  quant: "int8",
  profile: "rpi5",
  device: "pi5-a",
  threads: 4,
  test: "tg 128",
  repetitions: 3,
  warmup: 1,
  tokens: 384,
  duration_s: 3.2,
  tokens_per_s: { mean: 120.5, stdev: 2.25, samples: [118, 121, 122.5] },
  ttft_ms: 9.5,
  latency_ms: { p50: 8.2, p95: 9.9 },
  energy: {
    method: "ina219",
    J: 19.2,
    mJ_per_token: 50,
    tokens_per_J: 20,
    idle_w: 2.7,
    net_J: 10.56,
    net_mJ_per_token: 27.5,
    net_tokens_per_J: 36.36,
    samples: 320,
    rate_hz: 100,
    complete: true,
    uncertainty: "±1%",
    note: null,
  },
  cpu_pct: 380,
  rss_mb: 210,
  temp_c_max: 61.5,
  throttled: false,
  agent_version: "0.1.0",
  runtime: "onnxruntime 1.30.0",
  timestamp: "2026-11-26T05:00:00.000Z",
  ...over,
});

describe("statistics", () => {
  it("mean, sample stdev, interpolated percentiles", () => {
    expect(mean([1, 2, 3, 4])).toBe(2.5);
    expect(stdev([2, 4, 4, 4, 5, 5, 7, 9])).toBeCloseTo(Math.sqrt(32 / 7), 12);
    expect(stdev([5])).toBe(0);
    expect(percentile([1, 2, 3, 4, 5], 50)).toBe(3);
    expect(percentile([10, 20], 95)).toBeCloseTo(19.5, 12);
    expect(percentile([3, 1, 2], 0)).toBe(1);
    expect(Number.isNaN(percentile([], 50))).toBe(true);
  });
});

describe("tests and formats", () => {
  it("parses pp/tg tests from the CLI list or the profile", () => {
    expect(parseTests("pp64, tg128")).toEqual([
      { kind: "pp", n: 64 },
      { kind: "tg", n: 128 },
    ]);
    expect(parseTests(["pp 8"])).toEqual([{ kind: "pp", n: 8 }]);
    expect(() => parseTests("")).toThrow(/no benchmark tests/);
    expect(() => parseTests("pp")).toThrow(/not a benchmark test/);
    expect(parseFormat("jsonl")).toBe("jsonl");
    expect(() => parseFormat("yaml")).toThrow(/unknown output format/);
  });

  it("renders md (llama-bench style), csv (flattened), json and jsonl", () => {
    const rs = [result(), result({ test: "pp 64", energy: null, temp_c_max: null })];
    const md = renderResults(rs, "md").split("\n");
    expect(md[0]).toMatch(/^\| model +\| quant +\| threads \| test +\| decode +\| t\/s/);
    expect(md[2]).toContain("120.50 ± 2.25");
    expect(md[2]).toContain("50.00");
    expect(md).toHaveLength(4);

    const csv = renderResults(rs, "csv").split("\n");
    const header = csv[0]!.split(",");
    expect(header).toContain("tokens_per_s.mean");
    expect(header).toContain("energy.mJ_per_token");
    expect(header).toContain("latency_ms.p95");
    const row = csv[1]!.split(",");
    expect(row[header.indexOf("energy.mJ_per_token")]).toBe("50");
    expect(row[header.indexOf("tokens_per_s.samples")]).toBe("118 121 122.5");
    expect(csv[2]!.split(",")[header.indexOf("energy.J")]).toBe("");

    const json = JSON.parse(renderResults(rs, "json")) as unknown[];
    expect(json.map((r) => benchResultSchema.parse(r))).toEqual(rs);
    const jsonl = renderResults(rs, "jsonl").split("\n");
    expect(jsonl.map((l) => JSON.parse(l))).toEqual(rs);
  });
});

describe("system readings", () => {
  it("vcgencmd get_throttled bits", () => {
    expect(parseThrottled("throttled=0x50005\n")).toBe(0x50005);
    expect(parseThrottled("throttled=0x0")).toBe(0);
    expect(parseThrottled("error")).toBeNull();
  });

  it("no thermal zones: temperature unknown (null), not zero", () => {
    expect(readThermalZones("/nonexistent/thermal")).toBeNull();
  });
});
