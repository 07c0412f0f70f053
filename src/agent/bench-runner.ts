import { basename, join, resolve } from "node:path";
import { runtimeEngine } from "../bench/runtime-engine.js";
import { parseTests, runBench } from "../bench/harness.js";
import { loadModelCard } from "../model/card.js";
import { loadGenaiConfig } from "../model/genai-config.js";
import { fileWeightPrecision } from "../onnx/precision.js";
import type { Meter } from "../power/meter.js";
import type { DeviceProfile } from "../profile/schema.js";
import { defaultThreads, stderrNote } from "../profile/threads.js";
import type { BenchmarkParams, BenchResult, ModelRef } from "../protocol/schemas.js";
import { agentTunedFiles, tunedChoice } from "../tune/defaults.js";
import type { DecodePath } from "../bench/engine.js";
import { defaultStateDir } from "./state-dir.js";
import { sha256File } from "../util/fs.js";
import { VERSION } from "../version.js";
import type { BenchmarkRunner } from "./runner.js";

type ThreadsFrom = NonNullable<BenchResult["threads_from"]>;

/** What the agent announces about its model in the birth message: id, sha256 of the ONNX file, quantization (the card's, else the graph's). */
export async function describeModel(modelDir: string): Promise<ModelRef> {
  const dir = resolve(modelDir);
  const card = await loadModelCard(dir);
  const config = await loadGenaiConfig(dir);
  const onnx = join(dir, config.model.decoder.filename);
  return {
    id: card?.id ?? basename(dir),
    sha256: await sha256File(onnx),
    quant: card?.quantization.mode ?? (await fileWeightPrecision(onnx)),
  };
}

/**
 * The threads (and decode path) of a benchmark job: the job's own, else the device's tuned choice
 * (the state folder's tuned.json, then the bundle's: what `itera-agent bench` uses), else the
 * profile's threads capped at this host's cores; `from` says which.
 */
export async function jobThreads(
  params: Pick<BenchmarkParams, "threads">,
  o: { modelDir: string; profile: DeviceProfile; stateDir?: string | undefined },
  note: (line: string) => void,
): Promise<{ threads: number[]; decode?: DecodePath; from: ThreadsFrom }> {
  if (params.threads !== undefined) return { threads: params.threads, from: "job" };
  const files = agentTunedFiles(o.stateDir ?? defaultStateDir(), o.modelDir);
  const tuned = await tunedChoice(files, o.modelDir, note);
  if (tuned !== undefined) {
    return { threads: [tuned.threads], ...(tuned.decode ? { decode: tuned.decode } : {}), from: "tuned" };
  }
  const profile = defaultThreads(o.profile.threads, `profile '${o.profile.name}'`, note);
  return { threads: [profile], from: "profile" };
}

/**
 * The agent's benchmark jobs, run by the benchmark harness (src/bench) on the real model with the
 * device's power meter. On the job's deadline the harness stops before its next prompt or token.
 */
export async function modelBenchRunner(o: {
  modelDir: string;
  profile: DeviceProfile;
  device: string;
  meter: Meter | null;
  fallback?: Meter | null;
  /** The agent's state folder, where a tune job or `itera-agent tune` writes tuned.json. */
  stateDir?: string;
  log?: (line: string) => void;
}): Promise<BenchmarkRunner> {
  const engine = await runtimeEngine(o.modelDir);
  return async (params, onProgress, signal) => {
    const chosen = await jobThreads(params, o, o.log ?? stderrNote);
    const total = params.tests.length * chosen.threads.length;
    let done = 0;
    const results = await runBench(
      {
        tests: parseTests(params.tests),
        threads: chosen.threads,
        ...(chosen.decode ? { decode: chosen.decode } : {}),
        repetitions: params.repetitions,
        warmup: params.warmup,
        minDurationS: params.min_duration_s ?? o.profile.bench.min_duration_s,
        idleS: 0,
      },
      {
        engine,
        meter: o.meter,
        ...(o.fallback ? { fallback: o.fallback } : {}),
        profile: o.profile.name,
        device: o.device,
        agentVersion: VERSION,
        quiet: true,
        signal,
        onResult: (r) => onProgress(++done, total, `${r.test} threads=${r.threads} (${chosen.from})`),
      },
    );
    return results.map((r) => ({ ...r, threads_from: chosen.from }));
  };
}
