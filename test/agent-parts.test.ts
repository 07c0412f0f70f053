import { spawn } from "node:child_process";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { AGENT_ENTRY_PART } from "../src/agent-host/agent-script-asset.js";
import { bundleAgentScript } from "../src/package/agent-script.js";
import { type BuildResult, buildBundle } from "../src/package/build.js";
import { freePort, waitForPort } from "./mqtt-helpers.js";
import { deviceEnv, fixtureModel, run } from "./package-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * The agent script in parts (issue #18, docs/packaging.md "Memory and start-up"): esbuild splits it
 * at each command's import, and the executable's loader compiles only the parts a command requires.
 * The parts are checked as built; then a desktop-x64-12c bundle of the fixture model runs every
 * command with a probe preloaded into the real executable (NODE_OPTIONS=--require, which a single
 * executable honours) that lists the parts V8 compiles, what they hold and whether their code cache
 * was taken. (A flipped byte in an embedded asset still stops the split agent with exit code 3:
 * test/package-x64.test.ts.)
 */
let work: string;
let parts: string;
let built: BuildResult;
let exe: string;
const model = fixtureModel();

const probe = `"use strict";
const vm = require("node:vm");
const compile = vm.compileFunction;
const holds = { systeminformation: /node_modules\\/systeminformation\\//, fastify: /node_modules\\/fastify\\//,
  mqtt: /node_modules\\/mqtt\\//, onnxruntime: /node_modules\\/onnxruntime-common\\//, commander: /node_modules\\/commander\\//,
  protobufjs: /node_modules\\/protobufjs\\// };
vm.compileFunction = function (source, params, options) {
  const f = compile.call(this, source, params, options);
  const part = { name: String(options.filename).split("/").pop(), bytes: source.length,
    cached: options.cachedData ? !f.cachedDataRejected : null,
    holds: Object.keys(holds).filter((k) => holds[k].test(source)) };
  process.stderr.write("itera-part " + JSON.stringify(part) + "\\n");
  return f;
};
`;

interface Part {
  name: string;
  bytes: number;
  cached: boolean | null;
  holds: string[];
}

beforeAll(async () => {
  work = await tempDir("itera-agent-parts-");
  parts = join(work, "parts");
  await bundleAgentScript(parts, "0.0.0-test");
  built = await buildBundle({
    model: model.dir,
    profile: "desktop-x64-12c",
    quant: "fp32",
    out: join(work, "out"),
    quiet: true,
  });
  exe = join(built.dir, "itera-agent");
  await writeFile(join(work, "probe.cjs"), probe);
}, 300_000);

/** Run the bundle's agent with the probe; its stdout and the parts it compiled. */
async function agent(args: string[], env: NodeJS.ProcessEnv): Promise<{ stdout: string; parts: Part[] }> {
  const r = await run(exe, args, { env: { ...env, NODE_OPTIONS: `--require ${join(work, "probe.cjs")}` } });
  return { stdout: r.stdout, parts: compiled(r.stderr) };
}

const compiled = (stderr: string): Part[] =>
  [...stderr.matchAll(/^itera-part (.*)$/gm)].map((m) => JSON.parse(m[1]!) as Part);
const holding = (ps: Part[]): string[] => [...new Set(ps.flatMap((p) => p.holds))].sort();

describe("the agent script's parts, as built", () => {
  it("has no module twice and keeps only the zod it uses", async () => {
    const names = await readdir(parts);
    expect(names).toContain(AGENT_ENTRY_PART);
    // esbuild names each CommonJS module it wraps by its path: each must be in one part only.
    const seen = new Map<string, string>();
    for (const name of names) {
      const text = await readFile(join(parts, name), "utf8");
      for (const [, path] of text.matchAll(/"(node_modules\/[^"]+\.[cm]?js)"\(/g)) {
        expect(seen.get(path!), `${path} in ${name} and ${seen.get(path!)}`).toBeUndefined();
        seen.set(path!, name);
      }
      // zod's error messages in other languages (here Indonesian) are not in the agent.
      expect(text).not.toContain("Input tidak valid");
    }
    expect([...seen.keys()].some((p) => p.startsWith("node_modules/systeminformation/"))).toBe(true);
  });
});

describe("each command from the executable compiles only its own parts", () => {
  it("--version compiles no part", async () => {
    const { env } = await deviceEnv();
    const r = await agent(["--version"], env);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
    expect(r.parts).toEqual([]);
  });

  it("info: the hardware library, no ONNX Runtime, HTTP server or MQTT; every part from its code cache", async () => {
    const { env } = await deviceEnv();
    const r = await agent(["info", "--json"], env);
    const info = JSON.parse(r.stdout) as { agent: { mode: string }; profile: { name: string } };
    expect(info.agent.mode).toBe("bundle");
    expect(info.profile.name).toBe("desktop-x64-12c");
    expect(r.parts[0]?.name).toBe(AGENT_ENTRY_PART);
    expect(holding(r.parts)).toEqual(["commander", "systeminformation"]);
    expect(r.parts.every((p) => p.cached === true)).toBe(true);
  });

  it("run: generates the reference tokens without the hardware library, HTTP server, MQTT or the decode loop's ONNX codec", async () => {
    const { env } = await deviceEnv();
    const args = ["run", "--prompt", model.prompt, "--max-tokens", String(model.greedyIds.length), "--json"];
    const r = await agent(args, env);
    expect((JSON.parse(r.stdout) as { ids: number[] }).ids).toEqual(model.greedyIds);
    expect(holding(r.parts)).toEqual(["commander", "onnxruntime"]);
    // A third of the agent script at most (the parts built above: the same code, another version).
    let all = 0;
    for (const name of await readdir(parts)) all += (await readFile(join(parts, name))).length;
    expect(r.parts.reduce((n, p) => n + p.bytes, 0)).toBeLessThan(all / 3);
  });

  it("bench: a dynamic import of a CommonJS package (onnxruntime-node) keeps its named exports", async () => {
    const { env } = await deviceEnv();
    const args = "bench --tests tg4 -r 1 --warmup 0 --min-duration 0 --idle 0 --json".split(" ");
    const r = await agent(args, env);
    const report = JSON.parse(r.stdout) as { results: { runtime?: string; test: string }[] };
    expect(JSON.stringify(report)).toMatch(/onnxruntime \d+\.\d+/);
    // the fused decode loop (bench's default path) is built with the ONNX codec
    expect(holding(r.parts)).toEqual(["commander", "onnxruntime", "protobufjs", "systeminformation"]);
  });

  it("serve: the HTTP server answers from its own parts", async () => {
    const { env } = await deviceEnv();
    const port = await freePort();
    const probeEnv = { ...env, NODE_OPTIONS: `--require ${join(work, "probe.cjs")}` };
    const server = spawn(exe, ["serve", "--port", String(port)], {
      env: probeEnv,
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    server.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    try {
      await waitForPort(port, 60_000);
      const health = await fetch(`http://127.0.0.1:${port}/healthz`);
      expect([200, 503]).toContain(health.status);
    } finally {
      server.kill("SIGTERM");
      await new Promise((r) => server.once("exit", r));
    }
    expect(holding(compiled(stderr))).toEqual(expect.arrayContaining(["commander", "fastify"]));
    expect(holding(compiled(stderr))).not.toContain("mqtt");
  });

  it("help lists every command; meters, tune and agent answer their help", async () => {
    const { env } = await deviceEnv();
    const help = (await agent(["--help"], env)).stdout;
    for (const c of ["info", "run", "agent", "bench", "meters", "serve", "tune"])
      expect(help).toMatch(new RegExp(`\\n  ${c} `));
    for (const c of ["meters", "tune", "agent"]) {
      const r = await agent([c, "--help"], env);
      expect(r.stdout).toContain(`Usage: itera-agent ${c}`);
    }
    expect(holding((await agent(["agent", "--help"], env)).parts)).toContain("mqtt");
  });
});
