import { join } from "node:path";
import { beforeAll, describe, expect, it, vi } from "vitest";
import type { BenchEngine } from "../src/bench/engine.js";
import { runBench } from "../src/bench/harness.js";
import { benchResultSchema } from "../src/bench/result.js";
import { runtimeEngine } from "../src/bench/runtime-engine.js";
import { registerBench } from "../src/cli/commands/bench.js";
import { Ina219Meter } from "../src/power/ina219/meter.js";
import { TdpMeter } from "../src/power/tdp.js";
import { loadProfile } from "../src/profile/load.js";
import { inProcessCli } from "./cli-helpers.js";
import { fixtureModels } from "./fixtures/runtime/models.js";
import { type SimPty, startSim } from "./power-sim-helper.js";
import { tempDir } from "./temp-dir.js";

/**
 * A meter that fails during a benchmark: the INA219 simulator (tools/ina219-sim) behind a real
 * socat pty, unplugged (the pty closed) or reading nothing. A test without valid energy has null
 * figures and a note that says why: never 0 J, 0 mJ/token or a negative net.
 */
let model: string;
let dir: string;
beforeAll(async () => {
  model = join(fixtureModels(), "hybrid");
  dir = await tempDir("itera-meter-fails-");
});

const plan = {
  tests: [{ kind: "tg" as const, n: 8 }],
  threads: [1],
  repetitions: 2,
  warmup: 0,
  minDurationS: 0.3,
  idleS: 0.5,
};
const ctxBase = { profile: "laptop-x64-4c", device: "test-host", agentVersion: "test", quiet: true };

/**
 * The runtime engine, with the sensor unplugged after the idle baseline, before the first test:
 * the test starts once the meter has noticed (the port's close arrives asynchronously).
 */
async function unplugBeforeTests(sim: SimPty, meter: Ina219Meter): Promise<BenchEngine> {
  const engine = await runtimeEngine(model);
  return {
    ...engine,
    load: async (threads, settings) => {
      await sim.stop();
      await vi.waitFor(
        () => {
          if (!meter.health().lost) throw new Error("the meter has not noticed yet");
        },
        { timeout: 30_000, interval: 20 },
      );
      return engine.load(threads, settings);
    },
  };
}

describe("the INA219 unplugged between the idle baseline and the test", () => {
  it("no figure (null), the reason in the note; the idle baseline is kept", async () => {
    const sim = await startSim(dir, "unplug", ["--format", "raw", "--trace", "0:3", "--rate", "100"]);
    const meter = new Ina219Meter({ port: sim.port });
    try {
      await meter.start();
      const [r] = await runBench(plan, { ...ctxBase, engine: await unplugBeforeTests(sim, meter), meter });
      expect(benchResultSchema.parse(r)).toEqual(r);
      const e = r!.energy!;
      // Before: J 0, mJ_per_token 0 and net_J = −idle × duration.
      expect(e).toMatchObject({
        method: "ina219",
        J: null,
        mJ_per_token: null,
        tokens_per_J: null,
        net_J: null,
        net_mJ_per_token: null,
        net_tokens_per_J: null,
        complete: false,
      });
      expect(e.idle_w).toBeCloseTo(3, 1);
      expect(e.note).toMatch(/ina219 lost: /);
      expect(e.note).toMatch(
        /readings cover 0% of the test's [\d.]+ s: no energy figure for an incomplete window/,
      );
      // The speed figures do not depend on the meter.
      expect(r!.tokens_per_s.mean).toBeGreaterThan(0);
    } finally {
      await meter.stop();
      await sim.stop();
    }
  });

  it("with the tdp fallback: the estimate's figures, and the note says why the meter's are not used", async () => {
    const profile = await loadProfile("laptop-x64-4c");
    const sim = await startSim(dir, "unplug-fb", ["--format", "raw", "--trace", "0:3", "--rate", "100"]);
    const meter = new Ina219Meter({ port: sim.port });
    const fallback = new TdpMeter({ ...profile.power });
    try {
      await meter.start();
      await fallback.start();
      const [r] = await runBench(plan, {
        ...ctxBase,
        engine: await unplugBeforeTests(sim, meter),
        meter,
        fallback,
      });
      const e = r!.energy!;
      expect(e.method).toBe("tdp-estimate");
      expect(e.complete).toBe(true);
      expect(e.J).toBeGreaterThan(0);
      expect(e.mJ_per_token).toBeCloseTo((1000 * e.J!) / r!.tokens, 9);
      expect(e.note).toMatch(
        /ina219: readings cover 0% of the test's [\d.]+ s: no energy figure for an incomplete window; fell back to tdp-estimate/,
      );
      // The fallback's own idle baseline: its net figures are positive or withheld, never negative.
      if (e.net_J === null) expect(e.note).toMatch(/not above the idle baseline/);
      else expect(e.net_J).toBeGreaterThan(0);
    } finally {
      await meter.stop();
      await fallback.stop();
      await sim.stop();
    }
  });
});

describe("a sensor that reads no power", () => {
  it("a 0 W trace over the whole test: no figure, not 0 mJ/token; the idle baseline is no baseline", async () => {
    const sim = await startSim(dir, "zero", ["--format", "raw", "--trace", "0:0", "--rate", "100"]);
    const meter = new Ina219Meter({ port: sim.port });
    try {
      await meter.start();
      const [r] = await runBench(plan, { ...ctxBase, engine: await runtimeEngine(model), meter });
      const e = r!.energy!;
      expect(e.complete).toBe(true);
      expect(e).toMatchObject({ J: null, mJ_per_token: null, tokens_per_J: null, idle_w: null, net_J: null });
      expect(e.note).toMatch(/the meter read 0 J over the test's [\d.]+ s: no energy figure/);
    } finally {
      await meter.stop();
      await sim.stop();
    }
  });
});

describe("itera bench with a sensor unplugged mid-run", () => {
  const cli = inProcessCli((program) => registerBench(program));

  it("the table marks the test and says why under it; JSON has null figures", async () => {
    for (const format of ["md", "json"]) {
      // The bridge stops after 2 s; the tests run longer than that after the meter starts.
      const sim = await startSim(dir, `cli-${format}`, [
        ...["--format", "raw", "--trace", "0:3", "--rate", "100", "--duration", "2"],
      ]);
      try {
        const r = await cli(
          "bench",
          model,
          "--profile",
          "laptop-x64-4c",
          ...["--meter", "ina219", "--port", sim.port, "-t", "1", "--tests", "tg4"],
          ...["-r", "2", "--warmup", "0", "--min-duration", "2", "--idle", "0", "-o", format, "--quiet"],
        );
        expect(r.code).toBe(0);
        if (format === "json") {
          const [res] = (JSON.parse(r.stdout) as unknown[]).map((x) => benchResultSchema.parse(x));
          expect(res!.energy).toMatchObject({
            J: null,
            mJ_per_token: null,
            tokens_per_J: null,
            complete: false,
          });
          expect(res!.energy!.note).toMatch(/ina219 lost: .*readings cover \d+% of the test's/);
        } else {
          const lines = r.stdout.trim().split("\n");
          const row = lines.find((l) => l.includes("| tg 4"))!;
          expect(row).toContain("ina219 (incomplete: no figure)");
          const cellsOf = (line: string) => line.split("|").map((c) => c.trim());
          const header = cellsOf(lines[0]!);
          const cells = cellsOf(row);
          // mJ/tok and tok/J are blank, not 0.
          expect(cells[header.indexOf("mJ/tok")]).toBe("");
          expect(cells[header.indexOf("tok/J")]).toBe("");
          expect(lines[lines.length - 1]).toMatch(
            /^- t=1 tg 4: .*ina219 lost: .*readings cover \d+% of the test's [\d.]+ s: no energy figure/,
          );
        }
      } finally {
        await sim.stop();
      }
    }
  });
});
