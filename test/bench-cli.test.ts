import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { benchResultSchema } from "../src/bench/result.js";
import { registerAgentBench } from "../src/cli/agent-commands/bench.js";
import { registerAgentMeters } from "../src/cli/agent-commands/meters.js";
import { registerBench } from "../src/cli/commands/bench.js";
import { fixtureModels } from "./fixtures/runtime/models.js";
import { startSim } from "./power-sim-helper.js";
import { inProcessCli } from "./cli-helpers.js";
import { tempDir } from "./temp-dir.js";

/** `itera bench`, `itera-agent bench` and `itera-agent meters` run in-process through commander. */
const cli = inProcessCli((program) => {
  registerBench(program);
  const agent = program.command("agent-cli");
  registerAgentBench(agent);
  registerAgentMeters(agent);
});

let model: string;
let dir: string;
beforeAll(async () => {
  model = join(fixtureModels(), "gpt2-kv");
  dir = await tempDir("itera-bench-cli-");
});

const quick = ["--tests", "pp4,tg4", "-r", "2", "--warmup", "0", "--min-duration", "0", "--idle", "0"];

describe("itera bench", () => {
  it("--json prints §7 results with the tdp estimate", async () => {
    const r = await cli(
      "bench",
      model,
      "--profile",
      "desktop-x64-12c",
      "-t",
      "1",
      "--meter",
      "tdp",
      "--json",
      ...quick,
    );
    expect(r.code).toBe(0);
    const results = (JSON.parse(r.stdout) as unknown[]).map((x) => benchResultSchema.parse(x));
    expect(results.map((x) => x.test)).toEqual(["pp 4", "tg 4"]);
    expect(results[0]!.energy!.method).toBe("tdp-estimate");
    expect(r.stderr).toMatch(/energy: tdp-estimate/);
  });

  it("-o csv prints a header and one row per test", async () => {
    const r = await cli(
      "bench",
      model,
      "--profile",
      "laptop-x64-4c",
      "-t",
      "1",
      "--no-energy",
      "-o",
      "csv",
      "--quiet",
      ...quick,
    );
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/^model,quant,profile,device,threads,test,/);
  });

  it("without --profile it uses the profile that fits this host, and says which", async () => {
    const r = await cli(
      "bench",
      model,
      "-t",
      "1",
      "--no-energy",
      "--json",
      "--tests",
      "tg2",
      "-r",
      "1",
      "--warmup",
      "0",
      "--min-duration",
      "0",
    );
    expect(r.code).toBe(0);
    const [res] = (JSON.parse(r.stdout) as unknown[]).map((x) => benchResultSchema.parse(x));
    expect(r.stderr).toContain(`profile: ${res!.profile} (detected: linux-${process.arch}`);
  });

  it("bad input ends in one clear error and a non-zero exit", async () => {
    const r = await cli("bench", model, "--profile", "laptop-x64-4c", "--tests", "pp4;tg4", "--quiet");
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/^error: 'pp4;tg4' is not a benchmark test\n {2}where: --tests\n {2}fix: /m);
    const p = await cli("bench", model, "--profile", "no-such-profile", ...quick);
    expect(p.code).not.toBe(0);
    expect(p.stderr).toMatch(/no device profile 'no-such-profile'/);
    const j = await cli("bench", model, "--profile", "laptop-x64-4c", "--meter", "rapl", "--json", ...quick);
    expect(j.code).not.toBe(0);
    expect(JSON.parse(j.stdout)).toMatchObject({ error: expect.stringMatching(/RAPL/) });
  });
});

describe("itera-agent bench and meters (development mode: --model, --profile)", () => {
  it("bench reads the INA219 simulator over a pty", async () => {
    const sim = await startSim(dir, "cli", ["--format", "json", "--trace", "0:2.5", "--rate", "100"]);
    try {
      const r = await cli(
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
        sim.port,
        "-o",
        "jsonl",
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
      );
      expect(r.code).toBe(0);
      const res = benchResultSchema.parse(JSON.parse(r.stdout.trim()));
      expect(res.profile).toBe("rpi5");
      expect(res.energy!.method).toBe("ina219");
      expect(Math.abs(res.energy!.J - 2.5 * res.duration_s) / (2.5 * res.duration_s)).toBeLessThan(0.01);
    } finally {
      await sim.stop();
    }
  });

  it("bench without --model outside a bundle says what to pass", async () => {
    const r = await cli("agent-cli", "bench", "--profile", "rpi5");
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--model DIR and --profile NAME are required/);
  });

  it("meters lists every meter, available or with the reason it is not", async () => {
    const r = await cli("agent-cli", "meters", "--profile", "rpi5", "--json");
    expect(r.code).toBe(0);
    const probes = JSON.parse(r.stdout) as { meter: string; available: boolean; detail: string }[];
    expect(probes.map((p) => p.meter)).toEqual(["ina219", "pmic", "tdp", "rapl"]);
    expect(probes.find((p) => p.meter === "tdp")!.available).toBe(true);
    expect(probes.find((p) => p.meter === "ina219")).toMatchObject({
      available: false,
      detail: expect.stringMatching(/serial port/),
    });
  });
});
