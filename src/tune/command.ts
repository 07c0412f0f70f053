import { hostname, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { rm } from "node:fs/promises";
import type { Command } from "commander";
import { z } from "zod";
import { parseTests } from "../bench/harness.js";
import { runtimeEngine } from "../bench/runtime-engine.js";
import { IteraError } from "../errors.js";
import { describeIssues } from "../model/json-file.js";
import { locateModelFile } from "../model/folder.js";
import type { Meter } from "../power/meter.js";
import { meterChoices, openMeter } from "../power/open.js";
import type { DeviceProfile, MeterName } from "../profile/schema.js";
import { writeFileAtomic } from "../util/fs.js";
import { tempDirRemovedOnInterrupt } from "../util/interrupt.js";
import { checkOutputFile } from "../util/output.js";
import { VERSION } from "../version.js";
import { decodeCandidates, precisionCandidates, threadCandidates } from "./candidates.js";
import { candidatesOf, measureGrid } from "./measure.js";
import { pickRow } from "./pick.js";
import { renderTuned } from "./render.js";
import {
  hostFacts,
  type Objective,
  objectives,
  readTuned,
  TUNED_SCHEMA,
  type Tuned,
  tunedSchema,
} from "./tuned-file.js";
import { prepareVariants } from "./variants.js";

/** The options `itera tune` and `itera-agent tune` share. */
export interface TuneOptions {
  objective: string;
  threads?: string;
  precisions?: string;
  quantBudget: string;
  test: string;
  rounds: string;
  minDuration: string;
  tolerance: string;
  decode: string;
  meter: string;
  energy: boolean;
  port?: string;
  baud: string;
  simulatedMeter?: boolean;
  tdpScope: string;
  out?: string;
  force?: boolean;
  json?: boolean;
  quiet?: boolean;
}

/** What is measured and how the pick is made: options of `itera tune`, `itera-agent tune` and `itera fleet tune`. */
export function addTuneMeasureOptions(cmd: Command): Command {
  return cmd
    .option("--objective <o>", "what the pick optimises: speed (tokens/s) or energy (mJ/token)", "energy")
    .option(
      "-t, --threads <list>",
      "thread counts to measure (default: 1 to min(the measured machine's cores, the profile's cores))",
    )
    .option("--test <test>", "what is measured: tgN (generate N tokens) or ppN (prefill N tokens)", "tg64")
    .option("--rounds <n>", "interleaved rounds; each candidate's figure is the median of its rounds", "3")
    .option("--min-duration <s>", "each measurement repeats its test for at least this long", "1")
    .option("--tolerance <pct>", "speed: candidates within this of the fastest count as as fast", "5%")
    .option(
      "--decode <list>",
      "tg tests: decode paths to measure, fused (many steps per call) and/or step (one call per token)",
      "fused,step",
    );
}

export function addTuneOptions(cmd: Command, outHelp: string): Command {
  return addTuneMeasureOptions(cmd)
    .option(
      "--precisions <list>",
      "precisions to measure (default: the folder's own and, for a float folder, down to the profile's lowest)",
    )
    .option("--quant-budget <pct>", "allowed perplexity increase of a quantized candidate", "2%")
    .option("--meter <name>", `power meter: ${meterChoices.join(", ")}`, "auto")
    .option("--no-energy", "do not measure energy (then --objective speed)")
    .option("--port <path>", "ina219: serial port of the bridge")
    .option("--baud <rate>", "ina219: baud rate of the bridge", "115200")
    .option("--simulated-meter", "ina219: the bridge on --port is a simulator: figures say ina219-simulated")
    .option(
      "--tdp-scope <scope>",
      "tdp: CPU utilisation of this 'process' (default: other load is not charged to a candidate) or the whole 'system'",
      "process",
    )
    .option("--out <file>", outHelp)
    .option("--force", "replace an existing --out file")
    .option("--json", "print the tuned.json document")
    .option("--quiet", "no progress on stderr");
}

/** `5%` or `0.05`: a fraction from 0 to 1 (`--tolerance`, `--quant-budget`). */
export const fraction = z
  .string()
  .transform((s) => (s.trim().endsWith("%") ? Number(s.trim().slice(0, -1)) / 100 : Number(s)))
  .pipe(z.number().min(0).max(1));

const optionsSchema = z.object({
  objective: z.enum(objectives),
  rounds: z.coerce.number().int().min(1).max(100),
  minDuration: z.coerce.number().min(0).max(600),
  tolerance: fraction,
  baud: z.coerce.number().int().positive(),
  tdpScope: z.enum(["system", "process"]),
  meter: z.enum(meterChoices),
});

function parse(o: TuneOptions) {
  const r = optionsSchema.safeParse(o);
  if (!r.success) {
    const field = String(r.error.issues[0]?.path[0] ?? "");
    const flag = `--${field.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
    throw new IteraError(`invalid ${flag}: ${describeIssues(r.error)}`, {
      where: flag,
      fix: "see --help for the accepted values",
    });
  }
  if (r.data.objective === "energy" && !o.energy) {
    throw new IteraError("--objective energy needs energy figures, and --no-energy was given", {
      where: "--no-energy",
      fix: "pass --objective speed with --no-energy, or leave --no-energy out",
    });
  }
  return r.data;
}

/** What one tuning measures and how it picks (checked options of `itera tune`, or a `tune` job's params). */
export interface TunePlan {
  objective: Objective;
  tolerance: number;
  /** One test, e.g. tg64. */
  test: string;
  /** Thread counts as given (comma-separated), undefined: 1..min(host cores, profile cores). */
  threads?: string | undefined;
  precisions?: string | undefined;
  decode: string;
  quantBudget: string;
  rounds: number;
  minDurationS: number;
  /** The agent runs the model it carries: its precision was chosen by `itera build`, not here. */
  ownPrecisionOnly?: boolean;
}

/** What a tuning is lent: a started meter (null: no energy), progress lines and a stop signal. */
export interface TuneIo {
  meter: Meter | null;
  log: (line: string) => void;
  quiet: boolean;
  /** Each measured candidate (done of total) with a short note: a job's progress over MQTT. */
  onProgress?: (done: number, total: number, note: string) => void;
  /** Stops before the next measurement (a job's deadline); the signal's reason is thrown. */
  signal?: AbortSignal;
}

/**
 * Measure the candidates of `plan` on this host and pick by its objective: the tuned.json document,
 * not written. Quantized candidates live in a temp folder removed at the end (and on signals).
 */
export async function measureTuning(
  modelDir: string,
  profile: DeviceProfile,
  plan: TunePlan,
  io: TuneIo,
): Promise<Tuned> {
  const [test] = parseTests(plan.test);
  if (!test || plan.test.includes(",")) {
    throw new IteraError(`--test takes one test, not '${plan.test}'`, {
      where: "--test",
      fix: "e.g. --test tg64",
    });
  }
  const threads = threadCandidates(profile, plan.threads);
  const decodes = test.kind === "tg" ? decodeCandidates(plan.decode) : null;
  const engine = await runtimeEngine(modelDir);
  const precisions = precisionCandidates(engine.quant, profile, plan.precisions, plan.ownPrecisionOnly);
  const { path: work, release } = tempDirRemovedOnInterrupt(join(tmpdir(), "itera-tune-"));
  try {
    const { variants, skipped } = await prepareVariants(
      modelDir,
      engine.quant,
      precisions,
      work,
      plan.quantBudget,
      io.log,
    );
    const candidates = await candidatesOf(
      variants,
      threads,
      decodes,
      async (dir) => (dir === modelDir ? engine : runtimeEngine(dir)),
      io.log,
    );
    io.log(
      `tune: ${candidates.length} candidates (${variants.map((v) => v.precision).join(", ")} × threads ${threads.join(", ")}${decodes ? ` × decode ${[...new Set(candidates.map((c) => c.decode))].join(", ")}` : ""}), ${plan.rounds} rounds`,
    );
    const grid = await measureGrid(
      candidates,
      { test, threads, rounds: plan.rounds, minDurationS: plan.minDurationS },
      {
        meter: io.meter,
        profile: profile.name,
        device: hostname(),
        agentVersion: VERSION,
        quiet: io.quiet,
        ...(io.onProgress ? { onProgress: io.onProgress } : {}),
        ...(io.signal ? { signal: io.signal } : {}),
      },
    );
    const pick = pickRow(grid, plan.objective, plan.tolerance);
    return tunedSchema.parse({
      schema: TUNED_SCHEMA,
      model: engine.model,
      profile: profile.name,
      objective: plan.objective,
      tolerance: plan.tolerance,
      host: hostFacts(),
      test: `${test.kind} ${test.n}`,
      rounds: plan.rounds,
      energy: io.meter ? { method: io.meter.method, uncertainty: io.meter.uncertainty } : null,
      skipped,
      grid,
      pick: {
        precision: pick.precision,
        threads: pick.threads,
        ...(pick.decode === undefined ? {} : { decode: pick.decode }),
      },
      itera_version: VERSION,
      runtime: engine.runtime,
      measured_at: new Date().toISOString(),
    });
  } finally {
    await rm(work, { recursive: true, force: true });
    release();
  }
}

/**
 * `itera tune` / `itera-agent tune`: measure (measureTuning), write tuned.json to `out` (checked
 * before any work: an existing file is replaced only with --force, or when `replaceOwn` and it is an
 * earlier tuned.json) and print the grid.
 */
export async function tuneCommand(
  modelDir: string,
  profile: DeviceProfile,
  o: TuneOptions,
  where: {
    out: string;
    replaceOwn: boolean;
    /** The agent runs the model it carries: its precision was chosen by `itera build`, not here. */
    ownPrecisionOnly?: boolean;
  },
): Promise<Tuned> {
  const p = parse(o);
  const { onnxPath } = await locateModelFile(resolve(modelDir));
  const out = await checkOutputFile(where.out, {
    command: "itera tune",
    option: "--out",
    inputs: [onnxPath],
    force: o.force === true,
    ...(where.replaceOwn
      ? {
          owned: async (f: string) =>
            await readTuned(f)
              .then(() => true)
              .catch(() => false),
        }
      : {}),
  });
  const log = (line: string) => {
    if (!o.quiet) process.stderr.write(`${line}\n`);
  };
  let meter: Meter | null = null;
  try {
    if (o.energy) {
      ({ meter } = await openMeter({
        meter: p.meter as MeterName | "auto",
        profile,
        ...(o.port ? { port: o.port } : {}),
        baud: p.baud,
        ...(o.simulatedMeter ? { simulated: true } : {}),
        tdpScope: p.tdpScope,
        log,
      }));
      log(`energy: ${meter.method} (${meter.uncertainty})`);
    }
    const tuned = await measureTuning(
      modelDir,
      profile,
      {
        objective: p.objective,
        tolerance: p.tolerance,
        test: o.test,
        threads: o.threads,
        precisions: o.precisions,
        decode: o.decode,
        quantBudget: o.quantBudget,
        rounds: p.rounds,
        minDurationS: p.minDuration,
        ...(where.ownPrecisionOnly ? { ownPrecisionOnly: true } : {}),
      },
      { meter, log, quiet: o.quiet === true },
    );
    await writeFileAtomic(out, `${JSON.stringify(tuned, null, 2)}\n`);
    process.stdout.write(
      o.json ? `${JSON.stringify({ ...tuned, written: out }, null, 2)}\n` : renderTuned(tuned, out),
    );
    return tuned;
  } finally {
    await meter?.stop();
  }
}
