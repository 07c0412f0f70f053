import { existsSync } from "node:fs";
import { cp, mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { registerAgentBench } from "../src/cli/agent-commands/bench.js";
import { registerRun as registerAgentRun } from "../src/cli/agent-commands/run.js";
import { registerBench } from "../src/cli/commands/bench.js";
import { registerRun } from "../src/cli/commands/run.js";
import { pickRow } from "../src/tune/pick.js";
import { hostFacts } from "../src/tune/tuned-file.js";
import { inProcessCli } from "./cli-helpers.js";
import { rowOf, tuning } from "./tune-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * Commands given no --threads take it from tuned.json: `itera run`/`itera bench` from the model
 * folder's, `itera-agent run`/`bench` from the state folder's, then the model folder's. A file made on
 * another CPU is ignored with a note; an invalid one is one clear error.
 */
const cli = inProcessCli((program) => {
  registerRun(program);
  registerBench(program);
  const agent = program.command("agent-cli");
  registerAgentRun(agent);
  registerAgentBench(agent);
});

const micro = join(import.meta.dirname, "..", "models", "itera-lite-micro");

const quickBench = "--tests tg4 -r 1 --warmup 0 --min-duration 0 --no-energy --json".split(" ");
const threadsOf = (stdout: string) => (JSON.parse(stdout) as { threads: number }[]).map((r) => r.threads);

let dir: string;
let model: string;
beforeAll(async () => {
  dir = await tempDir("itera-tune-defaults-");
  model = join(dir, "micro");
  await cp(micro, model, { recursive: true });
});
afterEach(async () => {
  await rm(join(model, "tuned.json"), { force: true });
  delete process.env.STATE_DIRECTORY;
});

const writeTuned = (path: string, t: unknown) => writeFile(path, `${JSON.stringify(t, null, 2)}\n`);

describe.skipIf(!existsSync(join(micro, "model.onnx")))("tuned.json as the default", () => {
  it("itera run and itera bench use the tuned threads and say so; an explicit --threads wins", async () => {
    await writeTuned(join(model, "tuned.json"), tuning());
    const run = await cli("run", model, "-p", "ROMEO:", "-n", "3");
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toContain(`threads 2 from ${join(model, "tuned.json")} (tuned for energy, fp32)`);
    expect(run.stderr).toMatch(/, 2 threads\]\n$/);
    const bench = await cli("bench", model, "--profile", "laptop-x64-4c", ...quickBench);
    expect(bench.code, bench.stderr).toBe(0);
    expect(threadsOf(bench.stdout)).toEqual([2]);
    expect(bench.stderr).toContain("threads 2 from");

    const explicit = await cli("bench", model, "--profile", "laptop-x64-4c", "-t", "1", ...quickBench);
    expect(threadsOf(explicit.stdout)).toEqual([1]);
    expect(explicit.stderr).not.toContain("tuned.json");
    const runExplicit = await cli("run", model, "-p", "ROMEO:", "-n", "3", "--threads", "1");
    expect(runExplicit.stderr).toMatch(/, 1 thread\]\n$/);
  });

  it("a model of another precision than the pick takes that precision's best threads from the grid", async () => {
    // The folder is fp32; the pick is int8 at 1 thread; fp32's lowest mJ/token is at 2 threads.
    await writeTuned(join(model, "tuned.json"), tuning({ pick: { precision: "int8", threads: 1 } }));
    const run = await cli("run", model, "-p", "ROMEO:", "-n", "2");
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toContain("threads 2 from");
  });

  it("a tuned step decode path is run's and bench's default; --decode given to bench wins", async () => {
    const stepped = tuning({
      grid: [
        { ...rowOf("fp32", 1, 900, 3), decode: "step" },
        { ...rowOf("fp32", 1, 800, 4), decode: "fused" },
      ],
      pick: { precision: "fp32", threads: 1, decode: "step" },
    });
    await writeTuned(join(model, "tuned.json"), stepped);
    const run = await cli("run", model, "-p", "ROMEO:", "-n", "3");
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toContain("threads 1, step decode from");
    expect(run.stderr).toMatch(/\(step decode\)/);
    const bench = await cli("bench", model, "--profile", "laptop-x64-4c", ...quickBench);
    expect((JSON.parse(bench.stdout) as { decode: string }[]).map((r) => r.decode)).toEqual(["step"]);
    const fused = await cli("bench", model, "--profile", "laptop-x64-4c", "--decode", "fused", ...quickBench);
    expect((JSON.parse(fused.stdout) as { decode: string }[]).map((r) => r.decode)).toEqual(["fused"]);
  });

  it("a tuned.json measured on another CPU is ignored with a note, not used", async () => {
    const other = tuning({ host: { ...hostFacts(), cpu_model: "Imaginary CPU 9000" } });
    await writeTuned(join(model, "tuned.json"), other);
    const bench = await cli("bench", model, "--profile", "laptop-x64-4c", ...quickBench);
    expect(bench.code, bench.stderr).toBe(0);
    expect(threadsOf(bench.stdout)).toEqual([1]); // the profile's
    expect(bench.stderr).toMatch(/tuned\.json ignored: measured on 'Imaginary CPU 9000', this host is '.+'/);
  });

  it("an invalid tuned.json is one clear error naming the file and field", async () => {
    const bad = tuning() as unknown as Record<string, unknown>;
    bad.pick = { precision: "fp32", threads: 0 };
    await writeTuned(join(model, "tuned.json"), bad);
    const run = await cli("run", model, "-p", "ROMEO:", "-n", "2");
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^error: invalid tuned\.json: pick\.threads: /);
    expect(run.stderr).toContain(`where: ${join(model, "tuned.json")}`);
    expect(run.stderr).toMatch(/fix: +run `itera tune` \(or `itera-agent tune`\) again/);
    expect(run.stdout).toBe("");
    await writeFile(join(model, "tuned.json"), "{ not json");
    const bench = await cli("bench", model, "--profile", "laptop-x64-4c", ...quickBench);
    expect(bench.code).toBe(1);
    expect(bench.stderr).toMatch(/tuned\.json is not valid JSON/);
  });

  it("itera-agent run and bench take the state folder's tuning before the model folder's", async () => {
    const state = join(dir, "state");
    await mkdir(state, { recursive: true });
    process.env.STATE_DIRECTORY = state;
    await writeTuned(join(model, "tuned.json"), tuning({ pick: { precision: "fp32", threads: 1 } }));
    await writeTuned(join(state, "tuned.json"), tuning());
    const dev = ["--model", model, "--profile", "laptop-x64-4c"];
    const run = await cli("agent-cli", "run", ...dev, "--prompt", "ROMEO:", "--max-tokens", "2");
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toContain(`threads 2 from ${join(state, "tuned.json")}`);
    const bench = await cli("agent-cli", "bench", ...dev, ...quickBench);
    expect(threadsOf(bench.stdout)).toEqual([2]);
    await rm(join(state, "tuned.json"));
    const fromBundle = await cli("agent-cli", "bench", ...dev, ...quickBench);
    expect(threadsOf(fromBundle.stdout)).toEqual([1]);
    expect(fromBundle.stderr).toContain(`threads 1 from ${join(model, "tuned.json")}`);
  });
});

describe("the pick", () => {
  const grid = [
    rowOf("fp32", 1, 960, 2.0),
    rowOf("fp32", 2, 1000, 3.5),
    rowOf("fp32", 4, 700, 5),
    rowOf("int8", 1, 952, 1.9),
  ];
  it("speed: the fewest threads within the tolerance of the fastest, then the lower energy", () => {
    expect(pickRow(grid, "speed", 0.05)).toMatchObject({ precision: "int8", threads: 1 });
    expect(pickRow(grid, "speed", 0.045)).toMatchObject({ precision: "fp32", threads: 1 });
    expect(pickRow(grid, "speed", 0)).toMatchObject({ precision: "fp32", threads: 2 });
  });
  it("energy: the lowest mJ/token; a row without an energy figure is never picked", () => {
    expect(pickRow(grid, "energy", 0.05)).toMatchObject({ precision: "int8", threads: 1 });
    const noEnergy = { ...rowOf("fp32", 3, 2000, 0), mJ_per_token: null };
    expect(pickRow([...grid, noEnergy], "energy", 0.05)).toMatchObject({ precision: "int8", threads: 1 });
    expect(() => pickRow([noEnergy], "energy", 0.05)).toThrow(/no candidate has a valid energy figure/);
  });
});
