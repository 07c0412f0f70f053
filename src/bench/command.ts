import { hostname } from "node:os";
import type { Command } from "commander";
import { IteraError } from "../errors.js";
import type { Meter } from "../power/meter.js";
import { meterChoices, openMeter } from "../power/open.js";
import { TdpMeter, tdpOptionsFromProfile } from "../power/tdp.js";
import type { DeviceProfile, MeterName } from "../profile/schema.js";
import { checkThreads, defaultThreads, stderrNote } from "../profile/threads.js";
import { readFile } from "node:fs/promises";
import { writeFileAtomic } from "../util/fs.js";
import { checkOutputFile } from "../util/output.js";
import { VERSION } from "../version.js";
import { renderBenchHtml } from "../report/bench-page.js";
import { isIteraPage } from "../report/html.js";
import { BENCH_SAMPLING, type DecodeChoice, decodeChoices } from "./engine.js";
import { parseTests, runBench } from "./harness.js";
import { isBenchOutput, parseFormat, renderResults } from "./render.js";
import type { BenchResult } from "./result.js";
import { runtimeEngine } from "./runtime-engine.js";

/** The options `itera bench` and `itera-agent bench` share (llama-bench's, plus the meter's). */
export interface BenchOptions {
  tests?: string;
  threads?: string;
  repetitions?: string;
  warmup?: string;
  minDuration?: string;
  idle: string;
  meter: string;
  energy: boolean;
  port?: string;
  baud?: string;
  simulatedMeter?: boolean;
  pmicScale?: string;
  pmicOffset?: string;
  fallbackTdp?: boolean;
  tdpScope?: string;
  output: string;
  json?: boolean;
  save?: string;
  html?: string;
  device?: string;
  quiet?: boolean;
  /** Unset: not given (auto, unless a caller such as a tuned default fills it in). */
  decode?: string;
  sample?: boolean;
}

export function addBenchOptions(cmd: Command): Command {
  return cmd
    .option(
      "--tests <list>",
      "tests: ppN (prefill N tokens) and tgN (generate N tokens), e.g. pp64,tg128 (default: the profile's)",
    )
    .option(
      "-t, --threads <list>",
      "thread counts to sweep, e.g. 1,2,4 (default: the profile's, at most this host's cores)",
    )
    .option("-r, --repetitions <n>", "measured repetitions per test (default: the profile's)")
    .option("--warmup <n>", "unmeasured runs before each test (default: the profile's)")
    .option(
      "--min-duration <s>",
      "each repetition repeats its test for at least this long (default: the profile's)",
    )
    .option(
      "--decode <path>",
      "tg tests: auto (as generate() decodes: fused where the model fuses), fused (many steps per call) or step (one call per token) (default: auto)",
    )
    .option(
      "--sample",
      `tg tests sample (temperature ${BENCH_SAMPLING.temperature}, top-k ${BENCH_SAMPLING.topK}, seed ${BENCH_SAMPLING.seed}) instead of greedy`,
    )
    .option("--idle <s>", "seconds of idle measured first, for net energy figures (0: none)", "2")
    .option("--meter <name>", `power meter: ${meterChoices.join(", ")}`, "auto")
    .option("--no-energy", "do not measure energy")
    .option("--port <path>", "ina219: serial port of the bridge (e.g. /dev/ttyACM0)")
    .option("--baud <rate>", "ina219: baud rate of the bridge", "115200")
    .option(
      "--simulated-meter",
      "ina219: the bridge on --port is a simulator (tools/ina219-sim): figures say ina219-simulated",
    )
    .option("--pmic-scale <k>", "pmic: linear correction P = k × ΣV·I + offset")
    .option("--pmic-offset <w>", "pmic: offset of the linear correction, in W")
    .option("--fallback-tdp", "also run the tdp estimate, and use it for tests the meter did not cover")
    .option(
      "--tdp-scope <scope>",
      "tdp: CPU utilisation of the whole 'system' or of this 'process' (shared machines)",
      "system",
    )
    .option("-o, --output <format>", "md, csv, json or jsonl", "md")
    .option("--json", "same as --output json")
    .option("--save <file>", "also write the output to this file (atomically)")
    .option("--html <file>", "also write a self-contained HTML report (charts, conditions) to this file")
    .option("--device <name>", "device name in the results (default: the host name)")
    .option("--quiet", "no progress on stderr");
}

/** Upper bounds of the plan's options: a device profile's (src/profile/schema.ts), idle at most 10 minutes. */
const MAX = { repetitions: 1000, warmup: 100, minDurationS: 3600, idleS: 600 } as const;

function positiveInt(value: string, flag: string, min = 1, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `from ${min} to ${max}`;
    throw new IteraError(`${flag} must be an integer ${range}, not '${value}'`, {
      where: flag,
      fix: `give ${flag} a whole number ${range}`,
    });
  }
  return n;
}

function nonNegative(value: string, flag: string, max: number): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0 || n > max)
    throw new IteraError(`${flag} must be a number of seconds from 0 to ${max}, not '${value}'`, {
      where: flag,
      fix: `give ${flag} from 0 to ${max} (seconds)`,
    });
  return n;
}

export function parseDecode(value: string): DecodeChoice {
  if ((decodeChoices as readonly string[]).includes(value)) return value as DecodeChoice;
  throw new IteraError(`unknown decode path '${value}'`, {
    where: "--decode",
    fix: `use one of: ${decodeChoices.join(", ")}`,
  });
}

/** Benchmark a model folder under a profile; prints the results on stdout and returns them. */
export async function benchCommand(
  modelDir: string,
  profile: DeviceProfile,
  o: BenchOptions,
): Promise<BenchResult[]> {
  const format = o.json ? "json" : parseFormat(o.output);
  const plan = {
    tests: parseTests(o.tests ?? profile.bench.tests),
    // A profile's count is capped at this host's cores (with a note); a given count is only bounded.
    threads:
      o.threads === undefined
        ? [defaultThreads(profile.threads, `profile '${profile.name}'`, stderrNote)]
        : o.threads.split(",").map((t) => checkThreads(positiveInt(t.trim(), "--threads"), "--threads")),
    repetitions: o.repetitions
      ? positiveInt(o.repetitions, "--repetitions", 1, MAX.repetitions)
      : profile.bench.repetitions,
    warmup: o.warmup ? positiveInt(o.warmup, "--warmup", 0, MAX.warmup) : profile.bench.warmup,
    minDurationS: o.minDuration
      ? nonNegative(o.minDuration, "--min-duration", MAX.minDurationS)
      : profile.bench.min_duration_s,
    idleS: o.energy ? nonNegative(o.idle, "--idle", MAX.idleS) : 0,
    decode: parseDecode(o.decode ?? "auto"),
    sampling: o.sample ? BENCH_SAMPLING : null,
  };
  if (o.energy && !(meterChoices as readonly string[]).includes(o.meter)) {
    throw new IteraError(`unknown meter '${o.meter}'`, {
      where: "--meter",
      fix: `use one of: ${meterChoices.join(", ")}`,
    });
  }
  const scope = o.tdpScope ?? "system";
  if (scope !== "system" && scope !== "process") {
    throw new IteraError(`unknown --tdp-scope '${scope}'`, {
      where: "--tdp-scope",
      fix: "use system or process",
    });
  }
  const tdpScope: "system" | "process" = scope;
  // Before the benchmark: a --save path that cannot take the results fails now, not after the run;
  // an existing file is replaced only when it is an earlier benchmark output (src/util/output.ts).
  const save =
    o.save === undefined
      ? undefined
      : await checkOutputFile(o.save, {
          command: "the benchmark",
          option: "--save",
          inputs: [modelDir],
          owned: async (f) => isBenchOutput(await readFile(f, "utf8")),
        });
  const html =
    o.html === undefined
      ? undefined
      : await checkOutputFile(o.html, {
          command: "the benchmark",
          option: "--html",
          inputs: [modelDir, ...(save ? [save] : [])],
          owned: async (f) => isIteraPage(await readFile(f, "utf8")),
        });
  const engine = await runtimeEngine(modelDir);
  const log = (m: string) => {
    if (!o.quiet) process.stderr.write(`${m}\n`);
  };
  let meter: Meter | null = null;
  let fallback: Meter | null = null;
  try {
    if (o.energy) {
      ({ meter } = await openMeter({
        meter: o.meter as MeterName | "auto",
        profile,
        ...(o.port ? { port: o.port } : {}),
        baud: positiveInt(o.baud ?? "115200", "--baud"),
        ...(o.simulatedMeter ? { simulated: true } : {}),
        ...(o.pmicScale ? { pmicScale: Number(o.pmicScale) } : {}),
        ...(o.pmicOffset ? { pmicOffsetW: Number(o.pmicOffset) } : {}),
        tdpScope,
        log,
      }));
      log(`energy: ${meter.method} (${meter.uncertainty})`);
      if (o.fallbackTdp && meter.name !== "tdp") {
        fallback = new TdpMeter({ ...tdpOptionsFromProfile(profile), scope: tdpScope });
        await fallback.start();
      }
    }
    const results = await runBench(plan, {
      engine,
      meter,
      fallback,
      profile: profile.name,
      device: o.device ?? hostname(),
      agentVersion: VERSION,
      quiet: o.quiet ?? false,
    });
    const text = `${renderResults(results, format)}\n`;
    if (save) await writeFileAtomic(save, text);
    if (html) {
      const run = { label: o.device ?? hostname(), results };
      await writeFileAtomic(html, renderBenchHtml([run], { version: VERSION, generated: new Date() }));
    }
    process.stdout.write(text);
    return results;
  } finally {
    await meter?.stop();
    await fallback?.stop();
  }
}
