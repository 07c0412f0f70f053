import { writeFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { benchResultSchema } from "../src/bench/result.js";
import { registerAgentBench } from "../src/cli/agent-commands/bench.js";
import { registerRun as registerAgentRun } from "../src/cli/agent-commands/run.js";
import { registerServe } from "../src/cli/agent-commands/serve.js";
import { registerBench } from "../src/cli/commands/bench.js";
import { registerRun } from "../src/cli/commands/run.js";
import { loadAllProfiles, loadProfile } from "../src/profile/load.js";
import { inProcessCli } from "./cli-helpers.js";
import { fixtureModels } from "./fixtures/runtime/models.js";
import { tempDir } from "./temp-dir.js";

/**
 * Thread counts (issue #14): a default never runs more threads than this host has cores, with a note
 * when the profile asks for more; an absurd explicit count is refused before ONNX Runtime starts it.
 */
const cli = inProcessCli((program) => {
  registerBench(program);
  registerRun(program);
  const agent = program.command("agent-cli");
  registerAgentBench(agent);
  registerAgentRun(agent);
  registerServe(agent);
});

const cores = availableParallelism();
const quick = ["--tests", "tg2", "-r", "1", "--warmup", "0", "--min-duration", "0", "--no-energy", "--json"];
let model: string;
let dir: string;
/** A profile for a machine one core larger than this host, asking for all its cores. */
let bigProfile: string;

beforeAll(async () => {
  model = join(fixtureModels(), "recurrent");
  dir = await tempDir("itera-threads-");
  const base = await loadProfile("desktop-x64-12c");
  bigProfile = join(dir, "big.json");
  await writeFile(
    bigProfile,
    JSON.stringify({ ...base, name: "big", cores: cores + 1, threads: cores + 1, detect: undefined }),
  );
});

const resultsOf = (stdout: string) =>
  (JSON.parse(stdout) as unknown[]).map((x) => benchResultSchema.parse(x));

describe("default thread counts", () => {
  it("the shipped profiles say where their thread count comes from", async () => {
    for (const p of await loadAllProfiles()) {
      expect(p.sources.threads.length, p.name).toBeGreaterThan(20);
      expect(p.threads, p.name).toBeLessThanOrEqual(p.cores);
    }
  });

  it("itera bench with the profile's default records no more threads than this host's cores", async () => {
    for (const name of (await loadAllProfiles()).map((p) => p.name)) {
      const r = await cli("bench", model, "--profile", name, ...quick);
      expect(r.code, r.stderr).toBe(0);
      const [res] = resultsOf(r.stdout);
      expect(res!.threads).toBeLessThanOrEqual(cores);
    }
  });

  it("a profile asking for more threads than cores runs the host's cores, with a one-line note", async () => {
    const r = await cli("bench", model, "--profile", bigProfile, ...quick);
    expect(r.code, r.stderr).toBe(0);
    expect(resultsOf(r.stdout).map((x) => x.threads)).toEqual([cores]);
    expect(r.stderr).toContain(
      `threads: profile 'big' asks for ${cores + 1}, this host has ${cores} cores: running ${cores}`,
    );
    const a = await cli("agent-cli", "bench", "--model", model, "--profile", bigProfile, ...quick);
    expect(a.code, a.stderr).toBe(0);
    expect(resultsOf(a.stdout).map((x) => x.threads)).toEqual([cores]);
    expect(a.stderr).toMatch(/threads: profile 'big' asks for/);
    const run = await cli(
      "agent-cli",
      "run",
      "--model",
      model,
      "--profile",
      bigProfile,
      "--prompt",
      "ab",
      "--max-tokens",
      "2",
      "--json",
    );
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).threads).toBe(cores);
    expect(run.stderr).toMatch(/threads: profile 'big' asks for/);
  });

  it("a profile within the host's cores runs as it says, without a note", async () => {
    const r = await cli("bench", model, "--profile", "desktop-x64-12c", ...quick);
    expect(r.code).toBe(0);
    expect(resultsOf(r.stdout).map((x) => x.threads)).toEqual([
      Math.min(cores, (await loadProfile("desktop-x64-12c")).threads),
    ]);
    expect(r.stderr).not.toMatch(/threads: /);
  });
});

describe("an absurd --threads is refused before anything starts", () => {
  const limit = 4 * cores;

  it.each([
    ["itera bench", ["bench", "MODEL", "--profile", "rpi4", "-t", "1,1024", ...quick]],
    ["itera run", ["run", "MODEL", "-p", "ab", "-n", "2", "--threads", "1024"]],
    [
      "itera-agent run",
      ["agent-cli", "run", "--model", "MODEL", "--profile", "rpi4", "--prompt", "ab", "--threads", "1024"],
    ],
    [
      "itera-agent bench",
      ["agent-cli", "bench", "--model", "MODEL", "--profile", "rpi4", "-t", "1024", ...quick],
    ],
    [
      "itera-agent serve",
      ["agent-cli", "serve", "--model", "MODEL", "--profile", "rpi4", "--port", "0", "--threads", "1024"],
    ],
  ])("%s", async (_, args) => {
    const r = await cli(...args.map((a) => (a === "MODEL" ? model : a)));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      `--threads 1024 is more than 4 threads per core on this host (${cores} cores)`,
    );
    expect(r.stderr).toContain(`fix:   give at most ${limit}`);
  });

  it("the limit itself is accepted", async () => {
    const r = await cli("run", model, "-p", "ab", "-n", "2", "--threads", String(limit), "--json");
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).ids).toHaveLength(2);
  });
});
