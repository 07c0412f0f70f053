/**
 * Fleet benchmark at scale: one coordinator and N (default 200) simulated devices on loopback with a
 * real Mosquitto. The devices are in-process agents in light mode: they answer jobs by replaying
 * benchmark results recorded at the start of this run by a real benchmark of the house model (so no
 * model runs 200 times), while everything else is the real protocol (birth/state, telemetry, job
 * lifecycle, outbox on SQLite, de-duplication and storage at the coordinator). Also measures the
 * memory of one real `itera-agent agent` process (replay mode, idle after connecting).
 *
 *   npx tsc -p . && npx esbuild bench/fleet.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/itera-bench/fleet.mjs
 *   nice -n 10 node node_modules/.cache/itera-bench/fleet.mjs [--devices 200] [--append docs/benchmarks.md]
 *
 * With --update: `itera fleet update` to --devices (default 50) simulated devices instead
 * (bench/fleet-update.ts: rollout time, bytes per device for --bundle and --model-pack, the
 * coordinator's peak RSS).
 */
import { spawn } from "node:child_process";
import { appendFile, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { cpus, tmpdir } from "node:os";
import { join, resolve } from "node:path";

// The bundle has no package.json beside it: give src/version.ts the version before it loads.
process.env.ITERA_VERSION ||= (
  JSON.parse(await readFile("package.json", "utf8")) as { version: string }
).version;
const { modelBenchRunner } = await import("../src/agent/bench-runner.js");
const { replayRunner } = await import("../src/agent/runner.js");
const { runFleetBench } = await import("../src/fleet/bench.js");
const { FleetStore } = await import("../src/fleet/store.js");
const { loadProfile } = await import("../src/profile/load.js");
const { markdownTable } = await import("../src/util/table.js");
const { Mosquitto, sleep } = await import("../test/mqtt-helpers.js");

const argv = process.argv.slice(2);
const opt = (name: string, dflt: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1]! : dflt);
const devices = Number(opt("--devices", "200"));
const append = argv.includes("--append") ? opt("--append", "") : undefined;
const MODEL = resolve("models/itera-lite-micro");
const params = {
  model: "itera-lite-micro",
  tests: ["pp64", "tg128"],
  threads: [1],
  repetitions: 3,
  warmup: 1,
};

const dir = await mkdtemp(join(tmpdir(), "itera-fleet-bench-"));
const broker = await Mosquitto.create();
const log = (s: string) => process.stderr.write(`${s}\n`);
const machine = `${cpus()[0]?.model.trim()} × ${cpus().length}, Node ${process.version}, Mosquitto 2.0 on loopback`;

// --update: `itera fleet update` to N (default 50) simulated devices instead (bench/fleet-update.ts).
if (argv.includes("--update")) {
  const { benchFleetUpdate } = await import("./fleet-update.js");
  const n = Number(opt("--devices", "50"));
  const r = await benchFleetUpdate(broker, dir, n, log);
  await broker.stop();
  await rm(dir, { recursive: true, force: true });
  const text = `\n## Fleet update: one coordinator, ${n} simulated devices (bench/fleet.ts --update)\n\nMachine: ${machine}; ${new Date().toISOString().slice(0, 10)}.\nCommand: \`npx tsc -p . && npx esbuild bench/fleet.ts --bundle --platform=node --format=esm --packages=external --outfile=node_modules/.cache/itera-bench/fleet.mjs && nice -n 10 node node_modules/.cache/itera-bench/fleet.mjs --update --devices ${n} --append docs/benchmarks.md\`\n\n${markdownTable(["what", "figure"], r.rows)}\n\n${r.note}\n`;
  process.stdout.write(text);
  if (append) await appendFile(append, text);
  process.exit(0);
}

// 1. Record real results once: the house model, benchmarked by the harness (tdp estimate meter off).
const profile = await loadProfile(resolve("device-profiles/rpi4.json"));
const real = await modelBenchRunner({ modelDir: MODEL, profile, device: "recorder", meter: null });
const recorded = await real({ ...params, min_duration_s: 0.5 }, () => {}, new AbortController().signal);
const recordedFile = join(dir, "recorded.json");
await writeFile(recordedFile, JSON.stringify(recorded));
log(`recorded ${recorded.length} results from a real run`);

// 2. N agents in one process, replaying those results.
const { startSimulatedAgents } = await import("./fleet-update.js");
const rssBefore = process.memoryUsage().rss;
const agents = await startSimulatedAgents(broker, dir, "scale", devices, 5000, async (device) => ({
  runner: await replayRunner(recordedFile, device),
}));
const rssAgents = process.memoryUsage().rss;
log(`${devices} agents online`);

// 3. One coordinator benchmarks them all.
const store = new FleetStore(join(dir, "fleet.db"));
let sentAt = 0;
const t0 = performance.now();
const outcome = await runFleetBench({
  broker: { url: broker.url },
  fleet: "scale",
  devices,
  params,
  timeoutS: 300,
  store,
  onEvent: (e) => {
    if (e.type === "discovered") sentAt = performance.now();
  },
});
const t1 = performance.now();
const ok = outcome.devices.filter((d) => d.status === "SUCCEEDED").length;
const collectS = (t1 - sentAt) / 1000;
const totalS = (t1 - t0) / 1000;
log(`${ok}/${devices} succeeded; collect ${collectS.toFixed(2)} s`);
for (const a of agents) await a.stop();
store.close();

// 4. Memory of one real agent process (replay mode), idle after connecting.
const child = spawn(
  process.execPath,
  [
    resolve("dist/cli/itera-agent.js"),
    "agent",
    "--broker",
    broker.url,
    "--fleet",
    "mem",
    "--device",
    "m1",
  ].concat([
    "--model",
    MODEL,
    "--profile",
    "rpi4",
    "--state-dir",
    join(dir, "m1"),
    "--telemetry-interval",
    "1",
    "--replay",
    recordedFile,
  ]),
  { stdio: ["ignore", "ignore", "pipe"] },
);
let childErr = "";
child.stderr!.on("data", (d: Buffer) => {
  childErr += d.toString();
});
while (!childErr.includes("online")) await sleep(100);
await sleep(5000);
const status = await readFile(`/proc/${child.pid}/status`, "utf8");
const kb = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+) kB`).exec(status)?.[1] ?? Number.NaN);
const agentRssMb = kb("VmRSS") / 1024;
const agentHwmMb = kb("VmHWM") / 1024;
child.kill("SIGTERM");
await new Promise((r) => child.once("exit", r));
await broker.stop();
await rm(dir, { recursive: true, force: true });

const rows = [
  ["devices (in-process agents, replayed results)", devices],
  ["succeeded", ok],
  ["time to collect all results after the requests (s)", collectS],
  ["whole `fleet bench` incl. connect and discovery (s)", totalS],
  ["MQTT messages received by the coordinator", outcome.stats.messages],
  ["messages/s at the coordinator (whole run)", outcome.stats.messages / totalS],
  [
    "duplicate results / telemetry dropped",
    `${outcome.stats.duplicateResults} / ${outcome.stats.duplicateTelemetry}`,
  ],
  ["memory per in-process agent (RSS growth / devices, MB)", (rssAgents - rssBefore) / 2 ** 20 / devices],
  [
    "one `itera-agent agent` process: RSS idle / peak (MB)",
    `${agentRssMb.toFixed(1)} / ${agentHwmMb.toFixed(1)}`,
  ],
];
const table = markdownTable(["what", "figure"], rows);
const text = `\n## Fleet: one coordinator, ${devices} simulated devices (bench/fleet.ts)\n\nMachine: ${machine}; ${new Date().toISOString().slice(0, 10)}. Tests ${params.tests.join(",")}, ${params.repetitions} repetitions: each device's job result carries ${recorded.length} §7 results recorded at the start of the run from a real benchmark of models/itera-lite-micro (light mode: replayed, not re-run); telemetry every 5 s.\nCommand: \`npx tsc -p . && npx esbuild bench/fleet.ts --bundle --platform=node --format=esm --packages=external --outfile=node_modules/.cache/itera-bench/fleet.mjs && nice -n 10 node node_modules/.cache/itera-bench/fleet.mjs --devices ${devices} --append docs/benchmarks.md\`\n\n${table}\n\nThe ${devices} agents share the coordinator's process and event loop, so the collection time includes their work too (each status and result written to its SQLite outbox before it is published). The agent process figure includes the ONNX Runtime the agent binary always loads (the replay mode does not run it).\n`;
process.stdout.write(text);
if (append) await appendFile(append, text);
