/**
 * Packaging benchmark: per target, the size of the executable (Node raw vs ICU-trimmed and
 * stripped, assets raw vs stored compressed), of the runtime alone gzipped (the executable, as
 * `tar -czf` stores it) and of
 * the .tar.gz, the build time, the agent's start-up to the first generated token: cold (first run:
 * the native files and the model are extracted) and warm (they are reused), and the peak RSS of
 * warm `--version`, `info --json` and `run --max-tokens 16` (issue #18's goals). Start-up is read
 * from the agent's own `run --json` timings, which count from process start
 * (performance.timeOrigin); the wall time of the whole process is reported beside it. Peak RSS is
 * /usr/bin/time's %M; under qemu it is the qemu-aarch64 process's (emulator and guest together).
 * linux-x64 runs natively; linux-arm64 runs under qemu-aarch64 (emulated: only its ratios mean
 * anything); win32-x64 is built and measured for size only.
 *
 * Run (from the repository root):
 *   npx esbuild bench/package.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/itera-bench/package.mjs && \
 *   nice -n 10 node node_modules/.cache/itera-bench/package.mjs [--append docs/benchmarks.md] \
 *     [--model DIR] [--cold 3] [--warm 7] [--qemu-runs 2]
 * Without --model it uses models/itera-lite-micro when present, else the runtime test fixture.
 */
import { execFile } from "node:child_process";
import { createReadStream, existsSync, readFileSync } from "node:fs";
import { appendFile, cp, mkdtemp, rm, writeFile } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { promisify } from "node:util";
import { createGzip } from "node:zlib";
import type { BuildResult } from "../src/package/build.js";

// Bundled into node_modules/.cache, the sources cannot find package.json and device-profiles/ next
// to themselves: point them at the repository (run from its root) before loading them.
process.env.ITERA_VERSION ??= (
  JSON.parse(readFileSync("package.json", "utf8")) as { version: string }
).version;
process.env.ITERA_PROFILES_DIR ??= resolve("device-profiles");
const { buildBundle } = await import("../src/package/build.js");
const { loadProfile } = await import("../src/profile/load.js");
const { markdownTable } = await import("../src/util/table.js");
const { fixtureModels } = await import("../test/fixtures/runtime/models.js");

const run = promisify(execFile);
const argv = process.argv.slice(2);
const opt = (name: string, dflt: string): string =>
  argv.includes(name) ? (argv[argv.indexOf(name) + 1] ?? dflt) : dflt;
const append = argv.includes("--append") ? opt("--append", "") : undefined;
const coldRuns = Number(opt("--cold", "3"));
const warmRuns = Number(opt("--warm", "7"));
const qemuRuns = Number(opt("--qemu-runs", "2"));
const micro = resolve("models", "itera-lite-micro");
const modelDir = opt("--model", existsSync(micro) ? micro : join(fixtureModels(), "recurrent"));
const qemu = resolve("tools", "qemu", "run-arm64.sh");
const prompt = "ROMEO:";

const loadStart = loadavg()[0]!.toFixed(1);
const work = await mkdtemp(join(tmpdir(), "itera-bench-package-"));
const laptop = await loadProfile("laptop-x64-4c");
const { detect: _d, ...laptopRest } = laptop;
const winProfile = join(work, "win-x64-4c.json");
await writeFile(winProfile, JSON.stringify({ ...laptopRest, name: "win-x64-4c", platform: "win32" }));

interface Target {
  label: string;
  profile: string;
  runner: ((exe: string, args: string[], env: NodeJS.ProcessEnv) => Promise<string>) | null;
  runs: { cold: number; warm: number };
}

const native = async (exe: string, args: string[], env: NodeJS.ProcessEnv) =>
  (await run(exe, args, { env })).stdout;
const emulated = async (exe: string, args: string[], env: NodeJS.ProcessEnv) =>
  (await run(qemu, [exe, ...args], { env: { ...env, PATH: "/usr/bin:/bin" } })).stdout;

/** Peak RSS in MB of one run (/usr/bin/time %M: the largest process it waited for). */
async function peakRssMb(t: Target, exe: string, args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const cmd = t.runner === emulated ? [qemu, exe, ...args] : [exe, ...args];
  const r = await run("/usr/bin/time", ["-f", "itera-peak-rss %M", ...cmd], {
    env: { ...env, PATH: "/usr/bin:/bin" },
    maxBuffer: 16 << 20,
  });
  return Number(/itera-peak-rss (\d+)/.exec(r.stderr)?.[1]) / 1024;
}

/** Bytes of a file gzipped at tar -czf's level (6). */
async function gzippedBytes(file: string): Promise<number> {
  let n = 0;
  const gz = createReadStream(file).pipe(createGzip({ level: 6 }));
  for await (const chunk of gz) n += (chunk as Buffer).length;
  return n;
}

const targets: Target[] = [
  {
    label: "linux-x64 (laptop-x64-4c)",
    profile: "laptop-x64-4c",
    runner: native,
    runs: { cold: coldRuns, warm: warmRuns },
  },
  {
    label: "linux-arm64 (embedded-arm64-2c, qemu)",
    profile: "embedded-arm64-2c",
    runner: emulated,
    runs: { cold: 1, warm: qemuRuns },
  },
  {
    label: "win32-x64 (laptop profile, platform win32)",
    profile: winProfile,
    runner: null,
    runs: { cold: 0, warm: 0 },
  },
];

interface StartFigures {
  firstTokenMs: number[];
  wallMs: number[];
}

async function startRuns(
  exe: string,
  t: Target,
  cache: string,
  n: number,
  fresh: boolean,
): Promise<StartFigures> {
  const out: StartFigures = { firstTokenMs: [], wallMs: [] };
  for (let i = 0; i < n; i++) {
    if (fresh) await rm(cache, { recursive: true, force: true });
    const env = { PATH: "/nonexistent", HOME: work, ITERA_AGENT_CACHE: cache };
    const t0 = performance.now();
    const stdout = await t.runner!(exe, ["run", "--prompt", prompt, "--max-tokens", "1", "--json"], env);
    out.wallMs.push(performance.now() - t0);
    const r = JSON.parse(stdout) as { cold_start: boolean; timings: { first_token_ms: number } };
    if (r.cold_start !== fresh) throw new Error(`expected cold_start=${fresh}, got ${r.cold_start}`);
    out.firstTokenMs.push(r.timings.first_token_ms);
  }
  return out;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0
    ? Number.NaN
    : s.length % 2
      ? s[(s.length - 1) / 2]!
      : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const mb = (b: number) => (b / 1e6).toFixed(1);
const ms = (x: number) => (Number.isNaN(x) ? "" : x.toFixed(0));

const sizeRows: (string | number)[][] = [];
const startRows: (string | number)[][] = [];
const rssRows: (string | number)[][] = [];
const rssCommands: { name: string; args: string[]; goalMb: number }[] = [
  { name: "--version", args: ["--version"], goalMb: 48 },
  { name: "info --json", args: ["info", "--json"], goalMb: 48 },
  { name: "run --max-tokens 16", args: ["run", "--prompt", prompt, "--max-tokens", "16"], goalMb: 64 },
];
for (const t of targets) {
  process.stderr.write(`building ${t.label}...\n`);
  const b: BuildResult = await buildBundle({
    model: modelDir,
    profile: t.profile,
    quant: "fp32",
    out: join(work, "out"),
    quiet: true,
  });
  const exe = join(b.dir, t.profile === winProfile ? "itera-agent.exe" : "itera-agent");
  const runtimeGz = await gzippedBytes(exe);
  sizeRows.push([
    t.label,
    `${mb(b.sizes.node_raw)} -> ${mb(b.sizes.node_stripped)}`,
    mb(b.sizes.agent_script),
    `${mb(b.sizes.assets_raw)} -> ${mb(b.sizes.assets_stored)}`,
    mb(b.sizes.executable),
    mb(runtimeGz),
    mb(b.sizes.tarball),
    t.runner === emulated ? (runtimeGz <= 45e6 ? "yes" : "no") : "",
    b.seconds.toFixed(1),
  ]);
  if (!t.runner) continue;
  // Started from a copy of the folder: a file just written by the build maps in larger page-cache
  // folios, which inflates its RSS (--version: 63 MB in place, 42 MB for a copy of the same bytes).
  const copy = join(work, `run-${t.profile.replace(/\W/g, "_")}`);
  await cp(b.dir, copy, { recursive: true });
  const started = join(copy, "itera-agent");
  const cache = join(work, `cache-${t.profile}`);
  process.stderr.write(`starting ${t.label}: ${t.runs.cold} cold, ${t.runs.warm} warm...\n`);
  const cold = await startRuns(started, t, cache, t.runs.cold, true);
  const warm = await startRuns(started, t, cache, t.runs.warm, false);
  const c = median(cold.firstTokenMs);
  const w = median(warm.firstTokenMs);
  startRows.push([
    t.label,
    `${t.runs.cold} / ${t.runs.warm}`,
    ms(c),
    ms(w),
    (c / w).toFixed(2),
    `${ms(median(cold.wallMs))} / ${ms(median(warm.wallMs))}`,
    t.runner === native ? `${c <= 300 ? "yes" : "no"} / ${w <= 120 ? "yes" : "no"}` : "n/a (emulated)",
  ]);
  // Warm, as a device after its first run; the median of the warm runs' count.
  const env = { PATH: "/nonexistent", HOME: work, ITERA_AGENT_CACHE: cache };
  for (const rc of rssCommands) {
    const xs: number[] = [];
    for (let i = 0; i < Math.max(1, Math.min(t.runs.warm, 3)); i++)
      xs.push(await peakRssMb(t, started, rc.args, env));
    const m = median(xs);
    rssRows.push([
      t.label,
      `\`${rc.name}\``,
      xs.length,
      m.toFixed(1),
      t.runner === native ? `${rc.goalMb} MB: ${m <= rc.goalMb ? "yes" : "no"}` : "n/a (emulated)",
    ]);
  }
}
await rm(work, { recursive: true, force: true });

const machine = `${cpus()[0]?.model.trim() ?? "?"} × ${cpus().length}, host Node ${process.version}, bundles Node 24.21.0; load average ${loadStart} at the start, ${loadavg()[0]!.toFixed(1)} at the end (the machine is shared: figures scale with it)`;
const command =
  "npx esbuild bench/package.ts --bundle --platform=node --format=esm --packages=external --outfile=node_modules/.cache/itera-bench/package.mjs && nice -n 10 node node_modules/.cache/itera-bench/package.mjs --append docs/benchmarks.md";
const text = `
## Bundles: size and start-up (bench/package.ts)

Machine: ${machine}; ${new Date().toISOString().slice(0, 10)}. Model: \`${modelDir.replace(`${process.cwd()}/`, "")}\` (fp32).
Command: \`${command}\`

Sizes in MB. "node" is the embedded Node binary before -> after strip (its ICU data trimmed to
English: zeros that change the gzipped size, not this one); "assets" the embedded profile
and native add-ons raw -> as stored (brotli where it saves ≥ 10 %; the model pack lies beside the
executable); "runtime gz" the
executable alone gzipped as \`tar -czf\` stores it. Goal: runtime .tar.gz ≤ 45 MB for linux-arm64.

${markdownTable(["target", "node", "agent script", "assets", "executable", "runtime gz", ".tar.gz", "arm64 ≤ 45 MB", "build s"], sizeRows)}

Start-up to the first generated token (ms from process start, median; \`run --max-tokens 1 --json\`).
Cold: first run, extracting the native files and the model; warm: reusing them. Wall: whole process
(spawn to exit), cold / warm. Goals (x64, native, a quiet machine): cold ≤ 300 ms, warm ≤ 120 ms.

${markdownTable(["target", "runs cold / warm", "cold ms", "warm ms", "cold / warm", "wall ms", "cold ≤ 300 / warm ≤ 120"], startRows)}

Peak RSS of warm runs (MB, median; \`/usr/bin/time\` %M; under qemu the qemu-aarch64 process,
emulator and guest together, so only comparable with itself). Goals (x64): \`run --max-tokens 16\`
≤ 64 MB, \`--version\` and \`info\` ≤ 48 MB.

${markdownTable(["target", "command", "runs", "peak RSS MB", "goal"], rssRows)}
`;
process.stdout.write(text);
if (append) await appendFile(append, text);
