/**
 * Meter overhead: what measuring energy costs the device being measured.
 * - the tdp meter's /proc/stat sampler at 10 Hz: CPU time of this process with and without it;
 * - one /proc/stat read, one INA219 line decoded (raw and CSV), one window integrated;
 * - the ina219 meter receiving 100 lines/s from the simulator over a real socat pty, beside a plain
 *   fs.ReadStream of the same pty (what any Node reader of a tty costs).
 *
 * Run (from the repository root):
 *   npx esbuild bench/power.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/itera-bench/power.mjs && \
 *   nice -n 10 node node_modules/.cache/itera-bench/power.mjs [--append docs/benchmarks.md] [--seconds 5]
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createReadStream, existsSync } from "node:fs";
import { appendFile, mkdtemp, rm } from "node:fs/promises";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { Ina219Meter } from "../src/power/ina219/meter.js";
import { LineDecoder } from "../src/power/ina219/lines.js";
import { formatRawLine } from "../src/power/ina219/registers.js";
import { integratePower } from "../src/power/integrate.js";
import { readCpuTimes } from "../src/power/proc-stat.js";
import { TdpMeter } from "../src/power/tdp.js";
import { markdownTable } from "../src/util/table.js";

const argv = process.argv.slice(2);
const seconds = Number(argv[argv.indexOf("--seconds") + 1] ?? 5) || 5;
const append = argv.includes("--append") ? argv[argv.indexOf("--append") + 1] : undefined;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** CPU time (ms) this process spends over `ms` of wall time while `setup` runs something. */
async function cpuOver(ms: number, setup: () => Promise<() => Promise<void>>): Promise<number> {
  const stop = await setup();
  const c0 = process.cpuUsage();
  await sleep(ms);
  const c = process.cpuUsage(c0);
  await stop();
  return (c.user + c.system) / 1000;
}

/** Mean µs per call of `fn` over `n` calls. */
function perCallUs(n: number, fn: (i: number) => void): number {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) fn(i);
  return ((performance.now() - t0) * 1000) / n;
}

const rows: (string | number)[][] = [];
const ms = seconds * 1000;

const idleCpu = await cpuOver(ms, async () => async () => {});
const tdpCpu = await cpuOver(ms, async () => {
  const m = new TdpMeter({ idle_w: 3, tdp_w: 15, curve: "linear" });
  await m.start();
  return () => m.stop();
});
rows.push(["idle process (baseline)", `${((100 * idleCpu) / ms).toFixed(3)} % of a core`, ""]);
rows.push([
  "tdp meter, /proc/stat at 10 Hz",
  `${((100 * tdpCpu) / ms).toFixed(3)} % of a core`,
  `${((100 * (tdpCpu - idleCpu)) / ms).toFixed(3)} % above baseline`,
]);

rows.push(["one /proc/stat read + parse", `${perCallUs(20000, () => readCpuTimes()).toFixed(1)} µs`, ""]);
const raw = Array.from({ length: 1000 }, (_, i) =>
  formatRawLine({
    seq: i + 1,
    t_us: i * 10000,
    shunt: 8000,
    bus: 10002,
    current: 8000,
    power: 2000,
    cal: 4096,
    rshunt_ohm: 0.1,
  }),
);
const rawDecoder = new LineDecoder();
rows.push([
  "decode one raw $INA line",
  `${perCallUs(100000, (i) => rawDecoder.feed(raw[i % 1000]!, i * 10)).toFixed(2)} µs`,
  "",
]);
const csvDecoder = new LineDecoder({ timeUnit: "ms" });
rows.push([
  "decode one CSV line",
  `${perCallUs(100000, (i) => csvDecoder.feed(`${i * 10},5.0,80.0,800.0,4000.0`, i * 10)).toFixed(2)} µs`,
  "",
]);
const samples = Array.from({ length: 100_000 }, (_, i) => ({ t_ms: i * 10, watts: 4 + Math.sin(i) }));
rows.push([
  "integrate a window of 100k samples",
  `${(perCallUs(20, () => integratePower(samples, 5, 999_000)) / 1000).toFixed(2)} ms`,
  "",
]);

// The ina219 meter fed 100 lines/s by the simulator through a real pty.
if (existsSync("/usr/bin/socat")) {
  const dir = await mkdtemp(join(tmpdir(), "itera-bench-power-"));
  const port = join(dir, "tty");
  const socat: ChildProcess = spawn(
    "socat",
    [
      `PTY,link=${port},raw,echo=0`,
      "EXEC:/usr/bin/python3 tools/ina219-sim/ina219_sim.py --format raw --rate 100",
    ],
    { stdio: "ignore" },
  );
  while (!existsSync(port)) await sleep(10);
  // Node's floor for reading a tty: a plain fs.ReadStream on the same pty, doing nothing with the bytes.
  const stream = createReadStream(port);
  stream.on("data", () => {});
  await sleep(300);
  const floorCpu = await cpuOver(ms, async () => async () => {});
  stream.destroy();
  rows.push([
    "plain fs.ReadStream of the same pty (Node's floor)",
    `${((100 * floorCpu) / ms).toFixed(3)} % of a core`,
    `${((100 * (floorCpu - idleCpu)) / ms).toFixed(3)} % above baseline`,
  ]);
  const m = new Ina219Meter({ port });
  await m.start();
  const before = m.readings().samples.length;
  const inaCpu = await cpuOver(ms, async () => async () => {});
  const got = m.readings().samples.length - before;
  await m.stop();
  socat.kill("SIGTERM");
  await rm(dir, { recursive: true, force: true });
  rows.push([
    `ina219 meter, ${(got / seconds).toFixed(0)} lines/s over a pty`,
    `${((100 * inaCpu) / ms).toFixed(3)} % of a core`,
    `${((100 * (inaCpu - idleCpu)) / ms).toFixed(3)} % above baseline`,
  ]);
}

const machine = `${cpus()[0]?.model ?? "unknown CPU"} × ${cpus().length}, Node ${process.version}`;
const table = markdownTable(["what", "cost", "note"], rows);
const text = `\n## Meter overhead (bench/power.ts)\n\nMachine: ${machine}; ${seconds} s per CPU figure; ${new Date().toISOString().slice(0, 10)}.\nCommand: \`npx esbuild bench/power.ts --bundle --platform=node --format=esm --packages=external --outfile=node_modules/.cache/itera-bench/power.mjs && nice -n 10 node node_modules/.cache/itera-bench/power.mjs --append docs/benchmarks.md\`\n\n${table}\n`;
console.log(text);
if (append) await appendFile(append, text);
