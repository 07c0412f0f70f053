import { basename, join, resolve } from "node:path";
import { runtimeEngine } from "../bench/runtime-engine.js";
import { parseTests, runBench } from "../bench/harness.js";
import { loadModelCard } from "../model/card.js";
import { loadGenaiConfig } from "../model/genai-config.js";
import type { Meter } from "../power/meter.js";
import type { DeviceProfile } from "../profile/schema.js";
import type { ModelRef } from "../protocol/schemas.js";
import { sha256File } from "../util/fs.js";
import { VERSION } from "../version.js";
import type { BenchmarkRunner } from "./runner.js";

/** What the agent announces about its model in the birth message: id, sha256 of the ONNX file, quantization. */
export async function describeModel(modelDir: string): Promise<ModelRef> {
  const dir = resolve(modelDir);
  const card = await loadModelCard(dir);
  const config = await loadGenaiConfig(dir);
  return {
    id: card?.id ?? basename(dir),
    sha256: await sha256File(join(dir, config.model.decoder.filename)),
    quant: card?.quantization.mode ?? "fp32",
  };
}

/**
 * The agent's benchmark jobs, run by the benchmark harness (src/bench) on the real model with the
 * device's power meter. The harness cannot be interrupted mid-test: on the deadline the job ends
 * TIMED_OUT at once, and the next job waits until the abandoned run has finished, so that two
 * benchmarks never share the CPU.
 */
export async function modelBenchRunner(o: {
  modelDir: string;
  profile: DeviceProfile;
  device: string;
  meter: Meter | null;
  fallback?: Meter | null;
}): Promise<BenchmarkRunner> {
  const engine = await runtimeEngine(o.modelDir);
  let busy: Promise<unknown> = Promise.resolve();
  return async (params, onProgress, signal) => {
    await busy;
    signal.throwIfAborted();
    const total = params.tests.length * params.threads.length;
    let done = 0;
    const run = runBench(
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
        onResult: (r) => onProgress(++done, total, `${r.test} threads=${r.threads}`),
      },
    );
    busy = run.catch(() => {});
    return await new Promise((resolvePromise, reject) => {
      const onAbort = () => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      run.then(
        (results) => {
          signal.removeEventListener("abort", onAbort);
          resolvePromise(results);
        },
        (e: unknown) => {
          signal.removeEventListener("abort", onAbort);
          reject(e);
        },
      );
    });
  };
}
