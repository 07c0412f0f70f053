import { basename, join, resolve } from "node:path";
import { runtimeEngine } from "../bench/runtime-engine.js";
import { parseTests, runBench } from "../bench/harness.js";
import { loadModelCard } from "../model/card.js";
import { loadGenaiConfig } from "../model/genai-config.js";
import { fileWeightPrecision } from "../onnx/precision.js";
import type { Meter } from "../power/meter.js";
import type { DeviceProfile } from "../profile/schema.js";
import type { ModelRef } from "../protocol/schemas.js";
import { sha256File } from "../util/fs.js";
import { VERSION } from "../version.js";
import type { BenchmarkRunner } from "./runner.js";

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
 * The agent's benchmark jobs, run by the benchmark harness (src/bench) on the real model with the
 * device's power meter. On the job's deadline the harness stops before its next prompt or token.
 */
export async function modelBenchRunner(o: {
  modelDir: string;
  profile: DeviceProfile;
  device: string;
  meter: Meter | null;
  fallback?: Meter | null;
}): Promise<BenchmarkRunner> {
  const engine = await runtimeEngine(o.modelDir);
  return async (params, onProgress, signal) => {
    const total = params.tests.length * params.threads.length;
    let done = 0;
    return runBench(
      {
        tests: parseTests(params.tests),
        threads: params.threads,
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
        onResult: (r) => onProgress(++done, total, `${r.test} threads=${r.threads}`),
      },
    );
  };
}
