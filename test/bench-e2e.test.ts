import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { benchCommand, type BenchOptions } from "../src/bench/command.js";
import { runBench } from "../src/bench/harness.js";
import { benchResultSchema } from "../src/bench/result.js";
import { runtimeEngine } from "../src/bench/runtime-engine.js";
import { IteraError } from "../src/errors.js";
import { Ina219Meter } from "../src/power/ina219/meter.js";
import { TdpMeter } from "../src/power/tdp.js";
import { loadProfile } from "../src/profile/load.js";
import { fixtureModels } from "./fixtures/runtime/models.js";
import { startSim, traceEnergy } from "./power-sim-helper.js";
import { tempDir } from "./temp-dir.js";

/**
 * The benchmark end to end on a real tiny ONNX model (the runtime's hybrid fixture: attention + a
 * recurrent state) with real meters: the tdp estimate, and an INA219 read from the simulator over a
 * real socat pty.
 */
let model: string;
let dir: string;
beforeAll(async () => {
  model = join(fixtureModels(), "hybrid");
  dir = await tempDir("itera-bench-");
});

const plan = {
  tests: [
    { kind: "pp" as const, n: 8 },
    { kind: "tg" as const, n: 8 },
  ],
  threads: [1],
  repetitions: 2,
  warmup: 1,
  minDurationS: 0.3,
  idleS: 0.3,
};
const ctxBase = { profile: "laptop-x64-4c", device: "test-host", agentVersion: "test", quiet: true };

describe("bench with the INA219 simulator over a pty", () => {
  it("energy equals the trace's integral over the measured windows; mJ/token = 1000·J/tokens; §7 schema", async () => {
    // A slow ramp 3 → 9 W: where the windows fall matters, so the test checks their placement too.
    const trace: [number, number][] = [
      [0, 3],
      [20, 9],
    ];
    const sim = await startSim(dir, "ramp", [
      ...["--format", "raw", "--trace", "0:3,20:9", "--rate", "100"],
      ...["--garbage-every", "20", "--bad-checksum-every", "30"],
    ]);
    const meter = new Ina219Meter({ port: sim.port });
    const windows = new Map<string, [number, number][]>();
    try {
      await meter.start();
      const results = await runBench(plan, {
        ...ctxBase,
        engine: await runtimeEngine(model),
        meter,
        onRepetition: (r) => windows.set(r.test, [...(windows.get(r.test) ?? []), [r.t0, r.t1]]),
      });
      const badLines: number[] = [];
      for (const r of results) {
        const want = windows
          .get(r.test)!
          .reduce((a, [t0, t1]) => a + traceEnergy(trace, sim.traceTime(t0), sim.traceTime(t1)), 0);
        expect(Math.abs(r.energy!.J - want) / want).toBeLessThan(0.01);
        expect(r.energy!.complete).toBe(true);
        expect(r.energy!.mJ_per_token).toBeCloseTo((1000 * r.energy!.J) / r.tokens, 9);
        // Counted during this test only: at 100 lines/s over ≥ 0.6 s, garbage every 20th, bad checksum every 30th.
        expect(r.energy!.note).toMatch(
          /^\d+ bad lines skipped; \d+ bad checksums dropped; \d+ samples missing/,
        );
        badLines.push(Number(/^(\d+) bad lines/.exec(r.energy!.note!)![1]));
      }
      // Per test, not since the meter started: the idle baseline and warm-ups saw garbage too.
      expect(Math.min(...badLines)).toBeGreaterThanOrEqual(2);
      expect(badLines.reduce((a, b) => a + b, 0)).toBeLessThan(meter.health().bad_lines);
    } finally {
      await meter.stop();
      await sim.stop();
    }
  });

  it("a constant trace: J = P × duration, the idle baseline nets it out; results match the §7 schema", async () => {
    const sim = await startSim(dir, "bench", ["--format", "raw", "--trace", "0:4.2", "--rate", "100"]);
    const meter = new Ina219Meter({ port: sim.port });
    try {
      await meter.start();
      const results = await runBench(plan, { ...ctxBase, engine: await runtimeEngine(model), meter });
      expect(results.map((r) => r.test)).toEqual(["pp 8", "tg 8"]);
      for (const r of results) {
        expect(benchResultSchema.parse(r)).toEqual(r);
        const e = r.energy!;
        expect(e.method).toBe("ina219");
        expect(e.complete).toBe(true);
        // A constant 4.2 W trace: the energy of the measured windows is 4.2 W × their duration.
        expect(Math.abs(e.J - 4.2 * r.duration_s) / (4.2 * r.duration_s)).toBeLessThan(0.01);
        expect(e.mJ_per_token).toBeCloseTo((1000 * e.J) / r.tokens, 9);
        expect(e.tokens_per_J).toBeCloseTo(r.tokens / e.J, 9);
        // The idle baseline measured the same 4.2 W: the net energy is about zero, or not above
        // it at all, and then withheld with the reason rather than negative.
        expect(e.idle_w).toBeCloseTo(4.2, 1);
        if (e.net_J === null) expect(e.note).toMatch(/is not above the idle baseline .*: no net figures/);
        else expect(e.net_J).toBeLessThan(0.01 * e.J!);
        expect(e.rate_hz).toBeGreaterThan(20);
        expect(r.tokens).toBeGreaterThanOrEqual(2 * 8);
        expect(r.tokens_per_s.samples).toHaveLength(2);
        expect(r.duration_s).toBeGreaterThanOrEqual(0.6);
        expect(r.latency_ms.p95).toBeGreaterThanOrEqual(r.latency_ms.p50);
        expect(r.rss_mb).toBeGreaterThan(10);
        expect(r.runtime).toMatch(/^onnxruntime \d+\.\d+/);
      }
    } finally {
      await meter.stop();
      await sim.stop();
    }
  });

  it("the sensor unplugged mid-run: results flagged incomplete, or the tdp fallback used, never a crash", async () => {
    const profile = await loadProfile("laptop-x64-4c");
    for (const withFallback of [false, true]) {
      const sim = await startSim(dir, "unplug", ["--format", "raw", "--trace", "0:3", "--duration", "0.8"]);
      const meter = new Ina219Meter({ port: sim.port });
      const fallback = withFallback ? new TdpMeter({ ...profile.power }) : null;
      try {
        await meter.start();
        await fallback?.start();
        const results = await runBench(
          { ...plan, idleS: 0, repetitions: 3 },
          { ...ctxBase, engine: await runtimeEngine(model), meter, fallback },
        );
        const last = results[results.length - 1]!.energy!;
        expect(last.note).toMatch(/ina219 lost/);
        if (withFallback) {
          expect(last.method).toBe("tdp-estimate");
          expect(last.complete).toBe(true);
          expect(last.note).toMatch(/fell back to tdp-estimate/);
        } else {
          expect(last.method).toBe("ina219");
          expect(last.complete).toBe(false);
          // Part of the test's energy is not its energy: no figure, and the note says why.
          expect(last).toMatchObject({ J: null, mJ_per_token: null, tokens_per_J: null, net_J: null });
          expect(last.note).toMatch(
            /readings cover \d+% of the test's .*: no energy figure for an incomplete window/,
          );
        }
      } finally {
        await meter.stop();
        await fallback?.stop();
        await sim.stop();
      }
    }
  });
});

describe("itera bench / itera-agent bench (benchCommand)", () => {
  const base: BenchOptions = {
    tests: "pp4,tg4",
    threads: "1,2",
    repetitions: "2",
    warmup: "0",
    minDuration: "0",
    idle: "0",
    meter: "tdp",
    energy: true,
    output: "jsonl",
    quiet: true,
  };

  async function capture(fn: () => Promise<unknown>): Promise<string> {
    const write = process.stdout.write.bind(process.stdout);
    let out = "";
    process.stdout.write = ((chunk: string) => {
      out += chunk;
      return true;
    }) as typeof process.stdout.write;
    try {
      await fn();
    } finally {
      process.stdout.write = write;
    }
    return out;
  }

  it("a thread sweep with the tdp meter: one jsonl line per test × threads, saved atomically", async () => {
    const profile = await loadProfile("laptop-x64-4c");
    const save = join(dir, "out", "bench.jsonl");
    const out = await capture(() => benchCommand(model, profile, { ...base, save }));
    const lines = out
      .trim()
      .split("\n")
      .map((l) => benchResultSchema.parse(JSON.parse(l)));
    expect(lines.map((r) => `${r.threads} ${r.test}`)).toEqual(["1 pp 4", "1 tg 4", "2 pp 4", "2 tg 4"]);
    for (const r of lines) {
      expect(r.energy!.method).toBe("tdp-estimate");
      expect(r.energy!.J).toBeGreaterThan(0);
      expect(r.profile).toBe("laptop-x64-4c");
    }
    expect(await readFile(save, "utf8")).toBe(out);
  });

  it("--no-energy gives results without energy; markdown by default", async () => {
    const profile = await loadProfile("laptop-x64-4c");
    const out = await capture(() =>
      benchCommand(model, profile, { ...base, threads: "1", energy: false, output: "md" }),
    );
    expect(out).toMatch(/^\| model +\| quant +\| threads/);
    expect(out.trim().split("\n")).toHaveLength(4);
  });

  it.each([
    [{ tests: "pp0" }, /not a benchmark test/],
    [{ tests: "xx8" }, /not a benchmark test/],
    [{ threads: "0" }, /--threads must be an integer/],
    [{ output: "xml" }, /unknown output format/],
    [{ meter: "watts" }, /unknown meter/],
    [{ meter: "ina219" }, /needs a serial port/],
    [{ meter: "ina219", port: "/nonexistent/ttyACM9" }, /does not exist/],
    [{ tests: "pp100000" }, /needs 100000 positions/],
  ])("bad input %o is one clear error", async (patch, message) => {
    const profile = await loadProfile("laptop-x64-4c");
    const e = await capture(() => benchCommand(model, profile, { ...base, threads: "1", ...patch })).catch(
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(IteraError);
    expect((e as IteraError).message).toMatch(message);
  });

  it("a profile without power figures is refused for the tdp estimate", async () => {
    const profile = await loadProfile("laptop-x64-4c");
    const noPower = { ...profile, power: { ...profile.power, tdp_w: 0, idle_w: 0 } };
    await expect(benchCommand(model, noPower, { ...base, threads: "1" })).rejects.toThrow(/no TDP figure/);
  });

  it("a missing model folder is a clear error", async () => {
    const profile = await loadProfile("laptop-x64-4c");
    await expect(benchCommand(join(dir, "no-model"), profile, { ...base, energy: false })).rejects.toThrow(
      /model folder not found/,
    );
  });
});
