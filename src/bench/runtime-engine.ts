import { stat } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import { IteraError } from "../errors.js";
import { loadModelCard } from "../model/card.js";
import { locateModelFile } from "../model/folder.js";
import { loadGenaiConfig } from "../model/genai-config.js";
import { loadModel as loadOnnx } from "../onnx/index.js";
import { weightPrecision } from "../onnx/precision.js";
import type { GenerateOptions, LanguageModel } from "../runtime/index.js";
import type { BenchEngine, BenchModel, DecodePath, DecodeSettings, GenerationRun } from "./engine.js";

/** Index of the largest of the last position's logits. */
function argmaxLast(logits: Float32Array, vocab: number): number {
  const row = logits.subarray(logits.length - vocab);
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

/** Prompt tokens spread over the vocabulary, never an end-of-text id (benchmarks must not stop early). */
function promptIds(n: number, model: LanguageModel): number[] {
  const ids: number[] = [];
  for (let i = 0; ids.length < n; i++) {
    const id = (1 + i * 7919) % model.vocabSize;
    if (!model.eosIds.has(id)) ids.push(id);
  }
  return ids;
}

/** The options generate() decodes a tg test with: explicit, so that a config's `search` defaults change nothing. */
function generateOptions(n: number, settings: DecodeSettings): GenerateOptions {
  const s = settings.sampling;
  return {
    maxTokens: n,
    ignoreEos: true,
    temperature: s?.temperature ?? 0,
    topK: s?.topK ?? 0,
    topP: 1,
    repetitionPenalty: 1,
    seed: s?.seed ?? 0,
    // auto and fused: fused where the model fuses, as generate() does by default
    fusedDecode: settings.decode !== "step",
  };
}

class RuntimeBenchModel implements BenchModel {
  constructor(
    private readonly lm: LanguageModel,
    private readonly settings: DecodeSettings,
  ) {}

  get maxPositions(): number | null {
    return this.lm.limitedContext ? this.lm.contextLength : null;
  }

  async prefill(n: number): Promise<void> {
    const out = await this.lm.forward([promptIds(n, this.lm)], this.lm.newState(1));
    // the first new token is chosen, as after any prompt
    argmaxLast(out.logits, out.vocab);
  }

  async generate(n: number, signal?: AbortSignal): Promise<GenerationRun> {
    const g = await this.lm.generate(promptIds(1, this.lm), generateOptions(n, this.settings), () =>
      signal?.throwIfAborted(),
    );
    if (g.ids.length !== n) {
      throw new IteraError(`the model generated ${g.ids.length} of ${n} tokens (${g.stopReason})`, {
        where: this.lm.dir,
        fix: `use tg tests of fewer tokens for this model`,
      });
    }
    if (this.settings.decode === "fused" && g.decode !== "fused") {
      throw new IteraError(`${this.lm.dir} decoded step by step although --decode fused was asked`, {
        where: this.lm.onnxPath,
        fix: "use --decode auto (fused where the model fuses) or --decode step",
      });
    }
    return { ttftMs: g.timings.ttftMs, tokenMs: g.timings.tokenMs, decode: g.decode };
  }

  close(): Promise<void> {
    return this.lm.dispose();
  }
}

/**
 * The path generate() takes for this model with these settings: fused when the runtime builds a
 * decode loop for the sampling's loop features (src/runtime/fused-decode.ts), else step.
 */
async function generationPath(lm: LanguageModel, settings: DecodeSettings): Promise<DecodePath> {
  if (settings.decode === "step") return "step";
  const { FusedDecoder, loopFeatures } = await import("../runtime/fused-decode.js");
  const features = loopFeatures({
    temperature: settings.sampling?.temperature ?? 0,
    topP: 1,
    repetitionPenalty: 1,
  });
  const fused = await lm.fusedDecoder(features);
  if (fused instanceof FusedDecoder) return "fused";
  if (settings.decode === "fused") {
    throw new IteraError(`${lm.dir} cannot decode fused: ${fused.unsupported}`, {
      where: "--decode fused",
      fix: "use --decode step (one call per token) or --decode auto (fused where the model fuses)",
    });
  }
  return "step";
}

/** The decode path of the model at `dir`, from a model loaded for the question and freed. */
async function probePath(
  dir: string,
  settings: DecodeSettings,
  load: (dir: string, o: { threads: number }) => Promise<LanguageModel>,
): Promise<DecodePath> {
  if (settings.decode === "step") return "step";
  const lm = await load(dir, { threads: 1 });
  try {
    return await generationPath(lm, settings);
  } finally {
    await lm.dispose();
  }
}

/**
 * The runtime (src/runtime) behind the benchmark interface, for a model folder. ONNX Runtime is
 * imported here, when a benchmark starts, so that every other agent command starts without it.
 */
export async function runtimeEngine(dir: string): Promise<BenchEngine> {
  const [{ env }, { loadModel }] = await Promise.all([
    import("onnxruntime-node"),
    import("../runtime/index.js"),
  ]);
  // The folder and its genai_config.json are checked now, before a meter opens or idle is measured.
  const info = await stat(resolve(dir)).catch(() => undefined);
  if (!info?.isDirectory()) {
    throw new IteraError(`model folder not found: ${dir}`, {
      where: resolve(dir),
      fix: "give the path of a model folder (genai_config.json, tokenizer.json, the .onnx file)",
    });
  }
  const card = await loadModelCard(resolve(dir));
  const config = await loadGenaiConfig(resolve(dir));
  // The precision the weights are stored in, read from the graph: a card may not say (or be wrong).
  const { onnxPath } = await locateModelFile(resolve(dir));
  const precision = weightPrecision(await loadOnnx(onnxPath, { externalData: "verify" }));
  const tokenizer = await stat(join(resolve(dir), "tokenizer.json")).then(
    () => true,
    () => false,
  );
  const paths = new Map<string, Promise<DecodePath>>();
  return {
    model: card?.id ?? basename(resolve(dir)),
    quant: precision.label === "unknown" ? (card?.quantization.mode ?? "unknown") : precision.label,
    tokenizer,
    runtime: `onnxruntime ${env.versions.node ?? env.versions.common}`,
    contextLength: config.model.context_length,
    decodePath: (settings) => {
      // One probe per kind of loop: a harness called many times (bench/, itera tune) loads it once.
      const key = `${settings.decode}/${settings.sampling ? "sampled" : "greedy"}`;
      let path = paths.get(key);
      if (!path) {
        path = probePath(dir, settings, loadModel);
        paths.set(key, path);
      }
      return path;
    },
    load: async (threads, settings) => new RuntimeBenchModel(await loadModel(dir, { threads }), settings),
  };
}
