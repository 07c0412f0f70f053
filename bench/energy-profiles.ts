/**
 * mJ/token and tokens/J of the house models under the three reference profiles (desktop, laptop,
 * embedded), with the TDP estimate of each profile, beside the reference design's figures.
 *
 * Run (from the repository root):
 *   npx esbuild bench/energy-profiles.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/itera-bench/energy-profiles.mjs && \
 *   nice -n 10 node node_modules/.cache/itera-bench/energy-profiles.mjs [--append docs/benchmarks.md] [--tests pp64,tg128] [model dirs...]
 * Without model dirs it benchmarks every folder under models/.
 */
import { readdirSync, readFileSync } from "node:fs";
import { appendFile } from "node:fs/promises";
import { cpus, hostname, loadavg } from "node:os";
import { join } from "node:path";
import { parseTests, runBench } from "../src/bench/harness.js";
import { runtimeEngine } from "../src/bench/runtime-engine.js";
import { TdpMeter, tdpOptionsFromProfile } from "../src/power/tdp.js";
import { loadProfile } from "../src/profile/load.js";
import { markdownTable } from "../src/util/table.js";

/** The reference design's TDP-based estimates, mJ/token. */
const REFERENCE: Record<string, number> = {
  "desktop-x64-12c": 4.76,
  "laptop-x64-4c": 1.07,
  "embedded-arm64-2c": 0.36,
};

const argv = process.argv.slice(2);
const optionValue = (flag: string): string | undefined => {
  const i = argv.indexOf(flag);
  return i >= 0 ? argv[i + 1] : undefined;
};
const append = optionValue("--append");
const tests = parseTests(optionValue("--tests") ?? "pp64,tg128");
let models = argv.filter((a, i) => !a.startsWith("--") && !argv[i - 1]?.startsWith("--"));
if (models.length === 0) {
  models = readdirSync("models", { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => join("models", d.name));
}
const hostCores = cpus().length;
// Bundled into node_modules/.cache: read the version and the profiles from the repository root (cwd).
const version = (JSON.parse(readFileSync("package.json", "utf8")) as { version: string }).version;
const rows: (string | number)[][] = [];
const loadBefore = loadavg()[0]!;
for (const dir of models) {
  const engine = await runtimeEngine(dir);
  const params = (JSON.parse(readFileSync(join(dir, "itera.json"), "utf8")) as { parameters: number })
    .parameters;
  for (const name of Object.keys(REFERENCE)) {
    const profile = await loadProfile(join("device-profiles", `${name}.json`));
    // Process scope: the build machine is shared, and other jobs' load is not the model's.
    const meter = new TdpMeter({ ...tdpOptionsFromProfile(profile), scope: "process" });
    await meter.start();
    try {
      const threads = Math.min(profile.threads, hostCores);
      const results = await runBench(
        {
          tests,
          threads: [threads],
          repetitions: 3,
          warmup: 1,
          minDurationS: 2,
          idleS: 2,
        },
        { engine, meter, profile: name, device: hostname(), agentVersion: version },
      );
      for (const r of results) {
        const e = r.energy!;
        rows.push([
          r.model,
          params.toLocaleString("en-US"),
          r.quant,
          name,
          threads,
          r.test,
          r.tokens_per_s.mean.toFixed(1),
          (r.cpu_pct / 100).toFixed(2),
          e.mJ_per_token!.toFixed(2),
          e.tokens_per_J!.toFixed(1),
          e.net_mJ_per_token === null ? "" : e.net_mJ_per_token.toFixed(2),
          REFERENCE[name]!.toFixed(2),
        ]);
      }
    } finally {
      await meter.stop();
    }
  }
}

const machine = `${cpus()[0]?.model ?? "unknown CPU"} × ${hostCores}, Node ${process.version}`;
const table = markdownTable(
  [
    "model",
    "params",
    "quant",
    "profile",
    "threads",
    "test",
    "t/s",
    "cores busy",
    "mJ/token",
    "tokens/J",
    "net mJ/token",
    "reference mJ/token",
  ],
  rows,
);
const text = `
## Energy per token under the reference profiles (bench/energy-profiles.ts)

Machine: ${machine}; ${new Date().toISOString().slice(0, 10)}; 1-minute load average ${loadBefore.toFixed(1)} before and ${loadavg()[0]!.toFixed(1)} after (other jobs shared the 2 cores). Each model runs here with each profile's thread count (capped at this host's cores); energy is each profile's **TDP estimate** (\`P = idle_w + (tdp_w − idle_w) × f(u)\`, u = this process's CPU time over all of this host's cores, sampled at 10 Hz (the \`--tdp-scope process\` of \`itera bench\`)) over the measured repetitions (3 × ≥ 2 s, after 1 warm-up; idle baseline 2 s for the net figure).
Command: \`npx esbuild bench/energy-profiles.ts --bundle --platform=node --format=esm --packages=external --outfile=node_modules/.cache/itera-bench/energy-profiles.mjs && nice -n 10 node node_modules/.cache/itera-bench/energy-profiles.mjs --append docs/benchmarks.md\`

${table}

What differs from the reference figures, and what these can and cannot claim:
- Same method family (TDP × utilisation), not a measurement: no meter was attached. The build machine is a shared 2-core VM, so the speed is this host's under load from other jobs, not the profile's device's; u counts this process only (on a 12-core profile, 2 busy threads here are still u ≈ 1 of this host, not 2/12). A figure here is "this run's time and utilisation priced with that profile's power constants".
- The desktop and laptop profiles use the cubic curve, the embedded one the linear curve (see each profile's sources); the reference design's curve and constants are not known to us.
- Gross mJ/token includes the profile's idle power for the whole duration; net subtracts the idle baseline measured the same way just before. With process scope the idle baseline is about the profile's idle_w, so net ≈ the dynamic part the model's CPU time adds.
- To claim a device's energy, run \`itera-agent bench\` on that device with a real meter (INA219, PMIC, RAPL) — see docs/energy.md.
`;
console.log(text);
if (append) await appendFile(append, text);
