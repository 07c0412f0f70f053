import { stat } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import { IteraError } from "../errors.js";
import { loadModelCard } from "../model/card.js";
import { locateModelFile } from "../model/folder.js";
import { loadGenaiConfig } from "../model/genai-config.js";
import { loadModel as loadOnnx } from "../onnx/index.js";
import { weightPrecision } from "../onnx/precision.js";
import type { LanguageModel, State } from "../runtime/index.js";
import type { BenchEngine, BenchModel } from "./engine.js";

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

class RuntimeBenchModel implements BenchModel {
  private state: State;
  private next = 1;
  constructor(private readonly lm: LanguageModel) {
    this.state = lm.newState(1);
  }

  get maxPositions(): number | null {
    return this.lm.limitedContext ? this.lm.contextLength : null;
  }

  async prefill(n: number): Promise<void> {
    const out = await this.lm.forward([promptIds(n, this.lm)], this.lm.newState(1));
    this.next = argmaxLast(out.logits, out.vocab);
  }

  startGeneration(): void {
    this.state = this.lm.newState(1);
    this.next = promptIds(1, this.lm)[0]!;
  }

  async decodeOne(): Promise<void> {
    const out = await this.lm.forward([[this.next]], this.state);
    this.state = out.state;
    this.next = argmaxLast(out.logits, out.vocab);
  }

  close(): Promise<void> {
    return this.lm.dispose();
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
  return {
    model: card?.id ?? basename(resolve(dir)),
    quant: precision.label === "unknown" ? (card?.quantization.mode ?? "unknown") : precision.label,
    tokenizer,
    runtime: `onnxruntime ${env.versions.node ?? env.versions.common}`,
    contextLength: config.model.context_length,
    load: async (threads) => new RuntimeBenchModel(await loadModel(dir, { threads })),
  };
}
