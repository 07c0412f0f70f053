import { spawn } from "node:child_process";
import { readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Script } from "node:vm";
import { beforeAll, describe, expect, it } from "vitest";
import { AGENT_ENTRY_PART } from "../src/agent-host/agent-script-asset.js";
import { bundleAgentScript } from "../src/package/agent-script.js";
import { type BuildResult, buildBundle } from "../src/package/build.js";
import { codeCachesBeforeRun, v8HeapFlags, wrapAgentPart } from "../src/package/sea.js";
import { loadProfile } from "../src/profile/load.js";
import { freePort, waitForPort } from "./mqtt-helpers.js";
import { deviceEnv, fixtureModel, run } from "./package-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * The agent script in parts (issue #18, docs/packaging.md "Memory and start-up"): esbuild splits it
 * at each command's import, and the executable's loader compiles only the parts a command requires.
 * The parts are checked as built; then a desktop-x64-12c bundle of the fixture model runs every
 * command with a probe preloaded into the real executable (NODE_OPTIONS=--require, which a single
 * executable honours) that lists the parts V8 compiles (the loader's vm.Script), what they hold and
 * whether their code cache was taken, and can keep their sources; the caches of the parts `run`
 * compiles are the ones the build's own run made after it ran. (A flipped byte in an embedded asset
 * still stops the split agent with exit code 3: test/package-x64.test.ts.)
 */
let work: string;
let parts: string;
let built: BuildResult;
let exe: string;
const model = fixtureModel();

const probe = `"use strict";
const fs = require("node:fs");
const vm = require("node:vm");
const Script = vm.Script;
const holds = { systeminformation: /node_modules\\/systeminformation\\//, fastify: /node_modules\\/fastify\\//,
  mqtt: /node_modules\\/mqtt\\//, onnxruntime: /node_modules\\/onnxruntime-common\\//, commander: /node_modules\\/commander\\//,
  protobufjs: /node_modules\\/protobufjs\\// };
const sources = process.env.ITERA_PROBE_SOURCES;
vm.Script = class extends Script {
  constructor(source, options) {
    super(source, options);
    const part = { name: String(options.filename).split("/").pop(), bytes: source.length,
      cached: options.cachedData ? !this.cachedDataRejected : null,
      cacheBytes: options.cachedData ? options.cachedData.length : 0,
      holds: Object.keys(holds).filter((k) => holds[k].test(source)) };
    if (sources) fs.writeFileSync(sources + "/" + part.name, source, "latin1");
    process.stderr.write("itera-part " + JSON.stringify(part) + "\\n");
  }
};
`;

interface Part {
  name: string;
  bytes: number;
  cached: boolean | null;
  cacheBytes: number;
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

describe("a part as the executable stores it", () => {
  it("is a CommonJS module in Node's wrapper, in ASCII; a hashbang is a comment and lines keep their numbers", () => {
    const source =
      '#!/usr/bin/env node\n"use strict";\nmodule.exports = () => {\n  throw new Error("°C");\n};\n';
    const wrapped = wrapAgentPart(source);
    expect(Buffer.from(wrapped).every((b) => b < 0x80)).toBe(true);
    // Compiled as the loader compiles it (src/agent-host/sea-loader.ts).
    const part = new Script(wrapped, { filename: "part.js", lineOffset: -1 }).runInThisContext();
    const mod = { exports: {} as unknown };
    part.call(mod.exports, mod.exports, () => undefined, mod, "/exe", "/");
    let thrown: Error | undefined;
    try {
      (mod.exports as () => void)();
    } catch (e) {
      thrown = e as Error;
    }
    expect(thrown?.message).toBe("°C");
    expect(thrown?.stack).toMatch(/part\.js:4:/);
  });
});

describe("each command from the executable compiles only its own parts", () => {
  it("--version compiles no part", async () => {
    const { env } = await deviceEnv();
    const r = await agent(["--version"], env);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
    expect(r.parts).toEqual([]);
  });

  it("info: the hardware library once per boot, no ONNX Runtime, HTTP server or MQTT; every part from its code cache", async () => {
    const { env } = await deviceEnv();
    const r = await agent(["info", "--json"], env);
    const info = JSON.parse(r.stdout) as {
      agent: { mode: string };
      profile: { name: string };
      hardware_source: string;
    };
    expect(info.agent.mode).toBe("bundle");
    expect(info.profile.name).toBe("desktop-x64-12c");
    expect(info.hardware_source).toBe("detected");
    expect(r.parts[0]?.name).toBe(AGENT_ENTRY_PART);
    expect(holding(r.parts)).toEqual(["commander", "systeminformation"]);
    expect(r.parts.every((p) => p.cached === true)).toBe(true);
    // The facts of this boot are kept (src/agent-host/hardware-cache.ts): the next info loads no hardware library.
    const again = await agent(["info", "--json"], env);
    expect((JSON.parse(again.stdout) as { hardware: unknown; hardware_source: string }).hardware_source).toBe(
      "cached",
    );
    expect(JSON.parse(again.stdout).hardware).toEqual(JSON.parse(r.stdout).hardware);
    expect(holding(again.parts)).toEqual(["commander"]);
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

  it("run: its parts' code caches were made after the build's run, with the functions it compiled on first call", async () => {
    const { env } = await deviceEnv();
    const sources = { run: await tempDir("itera-part-sources-"), info: await tempDir("itera-part-sources-") };
    const args = ["run", "--prompt", model.prompt, "--max-tokens", "1", "--json"];
    const run = (await agent(args, { ...env, ITERA_PROBE_SOURCES: sources.run })).parts;
    const info = (await agent(["info", "--json"], { ...env, ITERA_PROBE_SOURCES: sources.info })).parts;
    expect(run.every((p) => p.cached === true)).toBe(true);
    // The same parts' caches as the build makes them before anything runs: same Node, same V8 flags.
    const flags = v8HeapFlags((await loadProfile("desktop-x64-12c")).memory_mb);
    const madeBeforeRunning = async (dir: string, ps: Part[]): Promise<Map<string, number>> => {
      const caches = await codeCachesBeforeRun(
        ps.map((p) => join(dir, p.name)),
        flags,
      );
      return new Map(
        await Promise.all(ps.map(async (p, i) => [p.name, (await stat(caches[i]!)).size] as const)),
      );
    };
    const before = await madeBeforeRunning(sources.run, run);
    // A cache made after running holds what V8 compiled lazily too: the run command's part, and all
    // of run's parts together, have caches much larger than those made before running.
    const own = run.find((p) => /^run-/.test(p.name))!;
    expect(own.cacheBytes).toBeGreaterThan(1.5 * before.get(own.name)!);
    const total = (f: (p: Part) => number) => run.reduce((n, p) => n + f(p), 0);
    expect(total((p) => p.cacheBytes)).toBeGreaterThan(1.5 * total((p) => before.get(p.name)!));
    // A part only info compiles keeps the cache made before running (V8's sizes vary by a few bytes).
    const infoOnly = info.filter((p) => !before.has(p.name));
    expect(infoOnly.length).toBeGreaterThan(0);
    const infoBefore = await madeBeforeRunning(sources.info, infoOnly);
    for (const p of infoOnly) {
      const made = infoBefore.get(p.name)!;
      expect(Math.abs(p.cacheBytes - made), p.name).toBeLessThan(0.02 * made + 64);
    }
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
