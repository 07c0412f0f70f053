/**
 * The on-device agent's footprint (issue #18): peak RSS and wall time of a bundle's `itera-agent`
 * per command (`--version`, `info`, `run --max-tokens 16`, a short `bench`) and the warm start to
 * the first token (`run --max-tokens 1 --json`, the agent's own timing), for one or more
 * executables measured interleaved (run i of every executable before run i+1 of any, the order
 * rotated), so that a busy machine loads them alike.
 *
 * Peak RSS is the kernel's: `/usr/bin/time -f %M` (ru_maxrss of the child) where installed, else
 * VmHWM polled from /proc/<pid>/status every 2 ms. Wall time is from spawn to exit.
 *
 * Run (from the repository root):
 *   npx esbuild bench/agent-footprint.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/itera-bench/agent-footprint.mjs && \
 *   node node_modules/.cache/itera-bench/agent-footprint.mjs [--exe LABEL=PATH ...] [--build LABEL] \
 *     [--build-memory MB] [--model models/itera-lite-micro] [--profile desktop-x64-12c] [--runs 5] \
 *     [--append docs/benchmarks.md]
 * `--build LABEL` builds a bundle of --model for --profile with this working tree first (and measures
 * it as LABEL; `--build-memory MB` also builds it for the profile with memory_mb MB, which sets the
 * V8 heap limits); `--exe` takes bundles built earlier (e.g. from an older commit) to compare against.
 *
 * `--parts` also says where a warm `run --max-tokens 16` spends its megabytes and milliseconds: a
 * preloaded probe (NODE_OPTIONS=--require, which a single executable honours) notes RSS and time
 * when Node has started, when onnxruntime's binding is dlopen'ed, when ONNX Runtime's environment
 * is made for the first session, when the session has loaded the graph, and at exit; and, per
 * command, how many of the agent script's parts it compiled and their bytes (the loader's
 * vm.Script, or vm.compileFunction in bundles built before the build made code caches after a run,
 * watched by the same kind of probe).
 *
 * (The `--post-run-cache` experiment, caches made before vs after a run through a probe, is what
 * `itera build` now does itself: compare bundles built before and after with `--exe`. It was in
 * this script up to commit 41559b5.)
 */
import { execFile, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { appendFile, cp, mkdtemp, rm, writeFile } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

const argv = process.argv.slice(2);
const opt = (name: string, dflt: string): string =>
  argv.includes(name) ? (argv[argv.indexOf(name) + 1] ?? dflt) : dflt;
const all = (name: string): string[] => argv.flatMap((a, i) => (a === name ? [argv[i + 1] ?? ""] : []));

// --- measurement ------------------------------------------------------------------------------------
const timeBin = existsSync("/usr/bin/time") ? "/usr/bin/time" : null;

interface Sample {
  rssMb: number;
  /** Peak of RssAnon (heaps, malloc; not the executable's and libraries' file pages), polled. */
  anonMb: number;
  wallMs: number;
}

/**
 * Run a command and measure it: peak RSS from /usr/bin/time (ru_maxrss) where installed, else
 * VmHWM; the anonymous part (RssAnon, what file pages do not explain) polled every 2 ms.
 */
async function measure(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<Sample> {
  const t0 = performance.now();
  const child = timeBin
    ? spawn(timeBin, ["-f", "itera-footprint %M", cmd, ...args], { env, stdio: ["ignore", "ignore", "pipe"] })
    : spawn(cmd, args, { env, stdio: ["ignore", "ignore", "pipe"] });
  let hwm = 0;
  let anon = 0;
  const timer = setInterval(() => {
    try {
      // Under /usr/bin/time the measured process is its only child.
      const pid = timeBin
        ? readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, "utf8").trim()
        : String(child.pid);
      if (!pid) return;
      const status = readFileSync(`/proc/${pid}/status`, "utf8");
      hwm = Math.max(hwm, Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0));
      anon = Math.max(anon, Number(/RssAnon:\s+(\d+)/.exec(status)?.[1] ?? 0));
    } catch {
      // exited between polls
    }
  }, 2);
  let err = "";
  child.stderr.on("data", (d: Buffer) => {
    err += d.toString();
  });
  const code = await new Promise<number | null>((r) => child.on("close", r));
  const wallMs = performance.now() - t0;
  clearInterval(timer);
  if (code !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${code}: ${err.slice(-2000)}`);
  const kb = timeBin ? Number(/itera-footprint (\d+)/.exec(err)?.[1]) : hwm;
  return { rssMb: kb / 1024, anonMb: anon / 1024, wallMs };
}

/** Run a command to its end (exit code 0 or an error) and give what it wrote on stdout and stderr. */
async function outputOf(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ out: string; err: string }> {
  const { stdout, stderr } = await execFileAsync(cmd, args, { env, maxBuffer: 64 << 20 });
  return { out: stdout, err: stderr };
}

/** The first token's time of a `run --json`, counted by the agent from its process start. */
const firstTokenOf = (out: string): number =>
  (JSON.parse(out) as { timings: { first_token_ms: number } }).timings.first_token_ms;

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const fmt = (xs: number[], digits: number): string =>
  `${median(xs).toFixed(digits)} (${Math.min(...xs).toFixed(digits)}-${Math.max(...xs).toFixed(digits)})`;

const runs = Number(opt("--runs", "5"));
const modelDir = resolve(opt("--model", "models/itera-lite-micro"));
const profile = opt("--profile", "desktop-x64-12c");
const append = argv.includes("--append") ? opt("--append", "") : undefined;
const work = await mkdtemp(join(tmpdir(), "itera-bench-footprint-"));
const exes: { label: string; path: string }[] = all("--exe").map((e) => {
  const at = e.indexOf("=");
  return { label: e.slice(0, at), path: resolve(e.slice(at + 1)) };
});
const loadStart = loadavg()[0]!.toFixed(1);

if (argv.includes("--build")) {
  process.env.ITERA_VERSION ??= (
    JSON.parse(readFileSync("package.json", "utf8")) as { version: string }
  ).version;
  process.env.ITERA_PROFILES_DIR ??= resolve("device-profiles");
  const { buildBundle } = await import("../src/package/build.js");
  const label = opt("--build", "this tree");
  const built = await buildBundle({ model: modelDir, profile, out: join(work, "out"), quiet: true });
  exes.push({ label, path: join(built.dir, "itera-agent") });
  // The same bundle as a device with this little memory gets it (the V8 heap limits of src/package/sea.ts).
  if (argv.includes("--build-memory")) {
    const mb = Number(opt("--build-memory", "512"));
    const { loadProfile } = await import("../src/profile/load.js");
    const { detect: _d, ...rest } = await loadProfile(profile);
    const file = join(work, `${profile}-${mb}mb.json`);
    await writeFile(file, JSON.stringify({ ...rest, name: `${profile}-${mb}mb`, memory_mb: mb }));
    const small = await buildBundle({ model: modelDir, profile: file, out: join(work, "out"), quiet: true });
    exes.push({ label: `${label}, memory_mb ${mb}`, path: join(small.dir, "itera-agent") });
  }
}
if (exes.length === 0) throw new Error("nothing to measure: give --exe LABEL=PATH or --build LABEL");
// Each executable is measured in a copy of its folder (the model pack beside it) made here, so that
// all have the same page-cache history: a file just written by the build maps in larger folios
// (its --version measured 63 MB, a copy of it 42 MB).
for (const [i, e] of exes.entries()) {
  const copy = join(work, `bundle-${i}`);
  await cp(dirname(e.path), copy, { recursive: true });
  e.path = join(copy, basename(e.path));
}

const commands: { name: string; args: string[] }[] = [
  { name: "--version", args: ["--version"] },
  { name: "info --json", args: ["info", "--json"] },
  {
    name: "run --max-tokens 16",
    args: ["run", "--prompt", "ROMEO:", "--max-tokens", "16", "--threads", "1"],
  },
  {
    name: "bench pp16,tg16 -r 1 --idle 0",
    args: [
      "bench",
      "--tests",
      "pp16,tg16",
      "-t",
      "1",
      "-r",
      "1",
      "--warmup",
      "0",
      "--min-duration",
      "0",
      "--idle",
      "0",
    ],
  },
];

const lines: string[] = [];
const say = (l = ""): void => {
  console.log(l);
  lines.push(l);
};

// Each executable gets its own cache folder, warmed once (the extraction is the cold start's cost,
// measured by bench/package.ts): every figure below is a warm start, as on a device after the first.
const envOf = (i: number): NodeJS.ProcessEnv => ({
  PATH: "/usr/bin:/bin",
  HOME: work,
  ITERA_AGENT_CACHE: join(work, `cache-${i}`),
  LANG: "C",
});
for (const [i, e] of exes.entries())
  await measure(e.path, ["run", "--prompt", "a", "--max-tokens", "1"], envOf(i));

const samples = new Map<string, Sample[]>();
const firstToken = ["run", "--prompt", "ROMEO:", "--max-tokens", "1", "--threads", "1"];
const firstTokenMs = new Map<number, number[]>();
for (let r = 0; r < runs; r++) {
  for (const c of commands) {
    for (let k = 0; k < exes.length; k++) {
      const i = (k + r) % exes.length; // rotate who goes first
      const s = await measure(exes[i]!.path, c.args, envOf(i));
      const key = `${c.name}\u0000${i}`;
      samples.set(key, [...(samples.get(key) ?? []), s]);
    }
  }
  // The first token of a warm start, as the agent times it from its process start (issue #18's goal).
  for (let k = 0; k < exes.length; k++) {
    const i = (k + r) % exes.length;
    const { out } = await outputOf(exes[i]!.path, [...firstToken, "--json"], envOf(i));
    firstTokenMs.set(i, [...(firstTokenMs.get(i) ?? []), firstTokenOf(out)]);
  }
}

say(`## Agent footprint per command (bench/agent-footprint.ts) — ${new Date().toISOString().slice(0, 16)}Z`);
say();
say(
  `Model ${modelDir.split("/").pop()}, profile ${profile}; ${cpus().length} × ${cpus()[0]?.model.trim()}, load average ${loadStart} at start and ${loadavg()[0]!.toFixed(1)} at the end; ${runs} warm runs each, interleaved; median (min-max). Peak RSS: ${timeBin ? "/usr/bin/time %M" : "VmHWM polled"}.`,
);
say();
say(`| command | ${exes.map((e) => `${e.label}: peak RSS MB | anon MB | wall s`).join(" | ")} |`);
say(`| --- | ${exes.map(() => "--- | --- | ---").join(" | ")} |`);
for (const c of commands) {
  const cells = exes.map((_, i) => {
    const s = samples.get(`${c.name}\u0000${i}`)!;
    const col = (f: (x: Sample) => number, digits: number) => fmt(s.map(f), digits);
    return `${col((x) => x.rssMb, 1)} | ${col((x) => x.anonMb, 1)} | ${col((x) => x.wallMs / 1000, 2)}`;
  });
  say(`| \`${c.name}\` | ${cells.join(" | ")} |`);
}
say();
say(
  `Warm start to the first token (\`${firstToken.join(" ")} --json\`, the agent's own timing from its process start), ms: ${exes.map((e, i) => `${e.label} ${fmt(firstTokenMs.get(i) ?? [], 0)}`).join("; ")}.`,
);

// --- where a run's memory and time go ---------------------------------------------------------------
const probe = `"use strict";
const fs = require("node:fs");
const note = (tag) => {
  const s = fs.readFileSync("/proc/self/status", "utf8");
  const kb = (k) => Number(new RegExp(k + ":\\\\s+(\\\\d+)").exec(s)[1]);
  process.stderr.write("itera-part " + JSON.stringify({ tag, ms: performance.now(), rss: kb("VmRSS"), anon: kb("RssAnon"), hwm: kb("VmHWM") }) + "\\n");
};
note("node");
const dlopen = process.dlopen;
process.dlopen = function (module, file, ...rest) {
  if (!/onnxruntime_binding/.test(file)) return dlopen.call(this, module, file, ...rest);
  note("script");
  const r = dlopen.call(this, module, file, ...rest);
  note("onnxruntime");
  const b = module.exports;
  const init = b.initOrtOnce;
  b.initOrtOnce = function (...a) { note("tokenizer"); return init.apply(this, a); };
  // The binding's methods are read-only: each new session gets its own loadModel that notes the first.
  let first = true;
  b.InferenceSession = new Proxy(b.InferenceSession, {
    construct(target, args) {
      const session = Reflect.construct(target, args);
      const load = session.loadModel;
      Object.defineProperty(session, "loadModel", {
        value: (...a) => {
          const r = load.apply(session, a);
          if (first) note("session");
          first = false;
          return r;
        },
      });
      return session;
    },
  });
  return r;
};
process.on("exit", () => note("exit"));
`;
const parts: { tag: string; what: string }[] = [
  {
    tag: "node",
    what: "Node 24 started (the executable's code and read-only data, V8, ICU; the loader not yet run)",
  },
  {
    tag: "script",
    what: "the agent script's parts `run` requires (compiled from their code caches), the CLI, bundle.json, the profile, the extraction check",
  },
  { tag: "onnxruntime", what: "onnxruntime's binding and library loaded (dlopen)" },
  { tag: "tokenizer", what: "genai_config.json, tokenizer.json, the model card" },
  { tag: "session", what: "ONNX Runtime's environment and the session (graph, optimizations, kernels)" },
  { tag: "exit", what: "prefill, 16 tokens (step by step), printing, exit" },
];
if (argv.includes("--parts")) {
  const probeFile = join(work, "parts-probe.cjs");
  await writeFile(probeFile, probe);
  for (const [i, e] of exes.entries()) {
    const byTag = new Map<string, { rss: number[]; anon: number[]; ms: number[]; hwm: number[] }>();
    for (let r = 0; r < runs; r++) {
      const env = { ...envOf(i), NODE_OPTIONS: `--require ${probeFile}` };
      const out = (await outputOf(e.path, commands[2]!.args, env)).err;
      let prev = { rss: 0, anon: 0, ms: 0 };
      for (const m of out.matchAll(/^itera-part (.*)$/gm)) {
        const p = JSON.parse(m[1]!) as { tag: string; ms: number; rss: number; anon: number; hwm: number };
        const acc = byTag.get(p.tag) ?? { rss: [], anon: [], ms: [], hwm: [] };
        acc.rss.push((p.rss - prev.rss) / 1024);
        acc.anon.push((p.anon - prev.anon) / 1024);
        acc.ms.push(p.ms - prev.ms);
        acc.hwm.push(p.hwm / 1024);
        byTag.set(p.tag, acc);
        prev = p;
      }
    }
    say();
    say(
      `Where a warm \`run --max-tokens 16\` of ${e.label} spends them (${runs} runs, median (min-max); MB and ms added by each part, RSS counting file pages):`,
    );
    say();
    say("| part | RSS MB | anon MB | ms | peak RSS so far MB |");
    say("| --- | --- | --- | --- | --- |");
    for (const p of parts) {
      const a = byTag.get(p.tag);
      if (!a) continue;
      say(`| ${p.what} | ${fmt(a.rss, 1)} | ${fmt(a.anon, 1)} | ${fmt(a.ms, 0)} | ${fmt(a.hwm, 1)} |`);
    }
  }
}

// --- which of the agent script's parts each command compiles ------------------------------------
const partsProbe = `"use strict";
const vm = require("node:vm");
const compile = vm.compileFunction;
const Script = vm.Script;
let parts = 0, bytes = 0, cache = 0;
const count = (source, options) => {
  parts++; bytes += source.length; cache += options.cachedData ? options.cachedData.length : 0;
};
vm.compileFunction = function (source, params, options) {
  count(source, options);
  return compile.call(this, source, params, options);
};
vm.Script = class extends Script {
  constructor(source, options) {
    super(source, options);
    count(source, options);
  }
};
process.on("exit", () => process.stderr.write("itera-compiled " + JSON.stringify({ parts, bytes, cache }) + "\\n"));
`;
if (argv.includes("--parts")) {
  const probeFile = join(work, "compiled-probe.cjs");
  await writeFile(probeFile, partsProbe);
  say();
  say("What each command compiles of the agent script (parts, their source and code cache in KB):");
  say();
  say(`| command | ${exes.map((e) => `${e.label}: parts | source KB | code cache KB`).join(" | ")} |`);
  say(`| --- | ${exes.map(() => "--- | --- | ---").join(" | ")} |`);
  for (const c of commands) {
    const cells: string[] = [];
    for (const [i, e] of exes.entries()) {
      const env = { ...envOf(i), NODE_OPTIONS: `--require ${probeFile}` };
      const { err } = await outputOf(e.path, c.args, env);
      const got = /^itera-compiled (.*)$/m.exec(err);
      const p = got ? (JSON.parse(got[1]!) as { parts: number; bytes: number; cache: number }) : undefined;
      cells.push(
        p ? `${p.parts} | ${(p.bytes / 1024).toFixed(0)} | ${(p.cache / 1024).toFixed(0)}` : "- | - | -",
      );
    }
    say(`| \`${c.name}\` | ${cells.join(" | ")} |`);
  }
}

if (append) await appendFile(append, `\n${lines.join("\n")}\n`);
await rm(work, { recursive: true, force: true });
