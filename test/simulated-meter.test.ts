import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { benchResultSchema } from "../src/bench/result.js";
import { registerAgentBench } from "../src/cli/agent-commands/bench.js";
import { registerAgentMeters } from "../src/cli/agent-commands/meters.js";
import { IteraError } from "../src/errors.js";
import { openMeter } from "../src/power/open.js";
import { benchResultSchema as wireResultSchema } from "../src/protocol/schemas.js";
import { inProcessCli } from "./cli-helpers.js";
import { fixtureModels } from "./fixtures/runtime/models.js";
import { startSim } from "./power-sim-helper.js";
import { tempDir } from "./temp-dir.js";

/** A meter the caller knows to be a simulator is labelled simulated in every figure it feeds. */
const cli = inProcessCli((program) => {
  const agent = program.command("agent-cli");
  registerAgentBench(agent);
  registerAgentMeters(agent);
});

let model: string;
let dir: string;
beforeAll(async () => {
  model = join(fixtureModels(), "gpt2-kv");
  dir = await tempDir("itera-sim-meter-");
});

const bench = (port: string, ...extra: string[]) =>
  cli(
    "agent-cli",
    "bench",
    "--model",
    model,
    "--profile",
    "rpi5",
    "-t",
    "1",
    "--meter",
    "ina219",
    "--port",
    port,
    "--tests",
    "tg8",
    "-r",
    "2",
    "--warmup",
    "0",
    "--min-duration",
    "0.3",
    "--idle",
    "0",
    ...extra,
  );

describe("--simulated-meter", () => {
  it("labels the INA219 simulator's figures ina219-simulated, with a text that says so", async () => {
    const sim = await startSim(dir, "labelled", ["--format", "json", "--trace", "0:2.5", "--rate", "100"]);
    try {
      const r = await bench(sim.port, "--simulated-meter", "-o", "jsonl");
      expect(r.code).toBe(0);
      const res = benchResultSchema.parse(JSON.parse(r.stdout.trim()));
      expect(res.energy).toMatchObject({ method: "ina219-simulated", simulated: true });
      expect(res.energy!.uncertainty).toMatch(/^SIMULATED meter/);
      // Not the real chip's accuracy claim.
      expect(res.energy!.uncertainty).not.toMatch(/±0\.5% gain/);
      // The readings are still the simulator's trace, integrated as a real meter's would be.
      expect(Math.abs(res.energy!.J - 2.5 * res.duration_s) / (2.5 * res.duration_s)).toBeLessThan(0.01);
      expect(r.stderr).toMatch(/energy: ina219-simulated \(SIMULATED meter/);
      // The wire schema keeps the flag, and older results without it still parse.
      expect(wireResultSchema.parse(res).energy).toMatchObject({ simulated: true });
      const { simulated: _s, ...older } = res.energy!;
      expect(wireResultSchema.parse({ ...res, energy: older }).energy).not.toHaveProperty("simulated");
    } finally {
      await sim.stop();
    }
  });

  it("shows the simulated method in the markdown table", async () => {
    const sim = await startSim(dir, "table", ["--format", "json", "--trace", "0:2.5", "--rate", "100"]);
    try {
      const r = await bench(sim.port, "--simulated-meter", "-o", "md");
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/\| ina219-simulated +\|/);
      expect(r.stdout).not.toMatch(/\| ina219 +\|/);
    } finally {
      await sim.stop();
    }
  });

  it("itera-agent meters probes the simulator as ina219-simulated", async () => {
    const sim = await startSim(dir, "probe", ["--format", "json", "--trace", "0:2.5", "--rate", "100"]);
    try {
      const r = await cli(
        "agent-cli",
        "meters",
        "--profile",
        "rpi5",
        "--port",
        sim.port,
        "--simulated-meter",
        "--json",
      );
      expect(r.code).toBe(0);
      const probes = JSON.parse(r.stdout) as {
        meter: string;
        available: boolean;
        method: string;
        detail: string;
      }[];
      expect(probes.find((p) => p.meter === "ina219")).toMatchObject({
        available: true,
        method: "ina219-simulated",
        detail: expect.stringMatching(/^SIMULATED meter/),
      });
    } finally {
      await sim.stop();
    }
  });

  it("is refused for a meter it cannot describe", async () => {
    await expect(openMeter({ meter: "rapl", simulated: true })).rejects.toThrow(IteraError);
    await expect(openMeter({ meter: "tdp", simulated: true })).rejects.toThrow(
      /labels a simulated INA219 bridge, not the tdp meter/,
    );
  });
});
