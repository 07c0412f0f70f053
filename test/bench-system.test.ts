import { chmod, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import type { BenchEngine, BenchModel } from "../src/bench/engine.js";
import { runBench } from "../src/bench/harness.js";
import { ResourceMonitor, readThermalZones, readThrottleCount } from "../src/bench/system.js";
import { tempDir } from "./temp-dir.js";

let dir: string;
beforeAll(async () => {
  dir = await tempDir("itera-bench-system-");
});

async function put(path: string, text: string) {
  await mkdir(join(path, ".."), { recursive: true });
  await writeFile(path, text);
}

describe("resource monitor on fake sysfs trees", () => {
  it("highest thermal zone, x86 throttle counters increasing during the test", async () => {
    const thermal = join(dir, "thermal");
    await put(join(thermal, "thermal_zone0", "temp"), "48250\n");
    await put(join(thermal, "thermal_zone1", "temp"), "61500\n");
    await put(join(thermal, "cooling_device0", "cur_state"), "0\n");
    expect(readThermalZones(thermal)).toBe(61.5);

    const cpu = join(dir, "cpu");
    await put(join(cpu, "cpu0", "thermal_throttle", "core_throttle_count"), "3\n");
    await put(join(cpu, "cpu1", "thermal_throttle", "core_throttle_count"), "4\n");
    await mkdir(join(cpu, "cpufreq"), { recursive: true });
    expect(readThrottleCount(cpu)).toBe(7);
    expect(readThrottleCount(join(dir, "none"))).toBeNull();

    const steady = new ResourceMonitor({ thermalRoot: thermal, cpuRoot: cpu, vcgencmd: join(dir, "none") });
    await steady.start();
    const a = await steady.stop();
    expect(a).toMatchObject({ temp_c_max: 61.5, throttled: false });
    expect(a.rss_mb).toBeGreaterThan(10);

    const m = new ResourceMonitor({ thermalRoot: thermal, cpuRoot: cpu, vcgencmd: join(dir, "none") });
    await m.start();
    await put(join(cpu, "cpu1", "thermal_throttle", "core_throttle_count"), "5\n");
    expect((await m.stop()).throttled).toBe(true);
  });

  it("a Raspberry Pi: vcgencmd get_throttled bits 0-3 mean throttled now", async () => {
    const bin = join(dir, "bin");
    await mkdir(bin, { recursive: true });
    await writeFile(join(bin, "vcgencmd"), '#!/bin/sh\n[ "$1" = get_throttled ] && echo throttled=0x50004\n');
    await chmod(join(bin, "vcgencmd"), 0o755);
    const m = new ResourceMonitor({
      thermalRoot: join(dir, "none"),
      cpuRoot: join(dir, "none"),
      vcgencmd: join(bin, "vcgencmd"),
    });
    await m.start();
    const r = await m.stop();
    expect(r.throttled).toBe(true);
    expect(r.temp_c_max).toBeNull();
  });
});

describe("runBench with a scripted model", () => {
  /** A model whose calls take no real work: the harness's bookkeeping is checked exactly. */
  function scripted(calls: string[], onToken?: () => void): BenchEngine {
    const model: BenchModel = {
      maxPositions: 64,
      prefill: async (n) => {
        calls.push(`pp${n}`);
      },
      generate: async (n, signal) => {
        calls.push("start");
        for (let i = 0; i < n; i++) {
          signal?.throwIfAborted();
          calls.push("tok");
          onToken?.();
        }
        return { ttftMs: 1, tokenMs: new Array<number>(n - 1).fill(1), decode: "step" };
      },
      close: async () => {
        calls.push("close");
      },
    };
    return {
      model: "m",
      quant: "int8",
      runtime: "r",
      decodePath: async (s) => (s.decode === "fused" ? "fused" : "step"),
      load: async (t) => {
        calls.push(`load t=${t}`);
        return model;
      },
    };
  }
  const ctx = { profile: "p", device: "d", agentVersion: "v", quiet: true, meter: null };

  it("warm-up, repetitions, thread sweep and token counts; no meter → energy null", async () => {
    const calls: string[] = [];
    const results = await runBench(
      {
        tests: [
          { kind: "pp", n: 5 },
          { kind: "tg", n: 3 },
        ],
        threads: [1, 2],
        repetitions: 2,
        warmup: 1,
        minDurationS: 0,
        idleS: 0,
      },
      { ...ctx, engine: scripted(calls) },
    );
    const perThread = [
      "pp5",
      "pp5",
      "pp5",
      "start",
      "tok",
      "tok",
      "tok",
      "start",
      "tok",
      "tok",
      "tok",
      "start",
      "tok",
      "tok",
      "tok",
      "close",
    ];
    expect(calls).toEqual(["load t=1", ...perThread, "load t=2", ...perThread]);
    expect(results.map((r) => [r.threads, r.test, r.tokens, r.tokens_per_s.samples.length])).toEqual([
      [1, "pp 5", 10, 2],
      [1, "tg 3", 6, 2],
      [2, "pp 5", 10, 2],
      [2, "tg 3", 6, 2],
    ]);
    expect(results.every((r) => r.energy === null)).toBe(true);
  });

  it("an abort (a job's deadline) stops before the next token with the signal's reason; the model is closed", async () => {
    const calls: string[] = [];
    const ac = new AbortController();
    const aborting = scripted(calls, () => {
      if (calls.filter((c) => c === "tok").length === 4) ac.abort(new Error("deadline"));
    });
    await expect(
      runBench(
        { tests: [{ kind: "tg", n: 3 }], threads: [1], repetitions: 5, warmup: 0, minDurationS: 0, idleS: 0 },
        { ...ctx, engine: aborting, signal: ac.signal },
      ),
    ).rejects.toThrow("deadline");
    expect(calls.filter((c) => c === "tok")).toHaveLength(4);
    expect(calls[calls.length - 1]).toBe("close");
  });

  it("a test longer than the model's context is refused before it runs", async () => {
    const calls: string[] = [];
    await expect(
      runBench(
        {
          tests: [{ kind: "tg", n: 65 }],
          threads: [1],
          repetitions: 1,
          warmup: 0,
          minDurationS: 0,
          idleS: 0,
        },
        { ...ctx, engine: scripted(calls) },
      ),
    ).rejects.toThrow(/needs 65 positions; the model takes 64/);
    expect(calls).toEqual(["load t=1", "close"]);
  });
});
