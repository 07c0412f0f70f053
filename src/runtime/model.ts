import { stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { InferenceSession, type Tensor } from "onnxruntime-node";
import { IteraError } from "../errors.js";
import { type ModelCard, loadModelCard } from "../model/card.js";
import { locateModelFile } from "../model/folder.js";
import { type GenaiConfig, eosTokenIds, loadGenaiConfig } from "../model/genai-config.js";
import {
  type GenerateInput,
  type GenerateOptions,
  type Generation,
  generate,
  type TokenEvent,
} from "./generate.js";
import type { FusedDecoder } from "./fused-decode.js";
import { analyseIo, type ModelIo } from "./io.js";
import { featureKey, GREEDY, isDecoder, type LoopFeatures } from "./loop-features.js";
import { disableOrtTelemetry } from "./ort-telemetry.js";
import { asFloat32, intTensor, stackRows, zeros } from "./tensors.js";
import { loadTokenizer, type TextTokenizer } from "./tokenizer.js";

export type GraphOptimizationLevel = "disabled" | "basic" | "extended" | "all";

export interface LoadOptions {
  /** Intra-op threads (default: genai_config session_options, else ONNX Runtime's choice). */
  threads?: number;
  graphOptimizationLevel?: GraphOptimizationLevel;
  /** Default ["cpu"]. */
  executionProviders?: InferenceSession.ExecutionProviderConfig[];
  /** Write an ONNX Runtime profile (JSON trace) with this file prefix. */
  profileFilePrefix?: string;
}

/**
 * The state a model carries between calls, for a batch of rows. Rows may start with left padding
 * (KV models fed prompts of different lengths): the attention mask hides those positions.
 */
export interface State {
  readonly batch: number;
  /** Positions consumed so far, padding included (the KV cache's past length). */
  readonly length: number;
  /** Leading padded positions per row. */
  readonly padding: readonly number[];
  /** State tensors by graph input name. */
  readonly tensors: Readonly<Record<string, Tensor>>;
}

export interface ForwardResult {
  /** Row-major [batch, positions, vocab]. */
  logits: Float32Array;
  batch: number;
  /** Positions with logits: the tokens fed, or 1 when the graph returns only the last position. */
  positions: number;
  vocab: number;
  state: State;
}

const levelNames: Record<string, GraphOptimizationLevel> = {
  ORT_DISABLE_ALL: "disabled",
  ORT_ENABLE_BASIC: "basic",
  ORT_ENABLE_EXTENDED: "extended",
  ORT_ENABLE_ALL: "all",
};

/** A model folder loaded for inference: config, tokenizer, ONNX session and its input/output layout. */
export class LanguageModel {
  readonly eosIds: ReadonlySet<number>;
  readonly contextLength: number;

  constructor(
    readonly dir: string,
    readonly config: GenaiConfig,
    readonly card: ModelCard | undefined,
    readonly tokenizer: TextTokenizer,
    readonly session: InferenceSession,
    readonly io: ModelIo,
    readonly onnxPath: string,
    private readonly sessionOptions: InferenceSession.SessionOptions = {},
  ) {
    this.eosIds = new Set(eosTokenIds(config));
    this.contextLength = config.model.context_length;
  }

  get vocabSize(): number {
    return this.config.model.vocab_size;
  }

  /**
   * Whether the context length binds: KV caches and position ids stop at it; a purely recurrent
   * model can run on past it.
   */
  get limitedContext(): boolean {
    return this.io.hasKvCache || this.io.positionIds !== null;
  }

  /** Whether prompts of different lengths can share a batch (needs a mask and no fixed-shape state). */
  get canPadBatch(): boolean {
    return this.io.attentionMask !== null;
  }

  /** Empty state: zero conv/recurrent state, KV caches with past length 0. */
  newState(batch = 1): State {
    if (this.io.fixedBatch !== null && batch > this.io.fixedBatch) {
      throw new IteraError(`the graph takes batches of at most ${this.io.fixedBatch}, not ${batch}`, {
        where: this.onnxPath,
        fix: "run the prompts one at a time, or export the model with a dynamic batch axis",
      });
    }
    const tensors: Record<string, Tensor> = {};
    for (const s of this.io.states) {
      tensors[s.input] = zeros(
        s.type,
        s.emptyShape.map((d, i) => (i === s.batchAxis ? batch : d)),
      );
    }
    return { batch, length: 0, padding: new Array(batch).fill(0), tensors };
  }

  /**
   * Stack single-row states of different lengths into one batch state (KV caches left-padded);
   * the way to batch prompts of different lengths: prefill each, then decode together.
   */
  stackStates(states: readonly State[]): State {
    if (states.some((s) => s.batch !== 1)) throw new Error("stackStates takes single-row states");
    const length = Math.max(...states.map((s) => s.length));
    if (this.io.hasKvCache && !this.canPadBatch && states.some((s) => s.length !== length)) {
      throw new IteraError(
        "prompts of different lengths cannot share a batch: the model takes no attention_mask",
        {
          where: this.onnxPath,
          fix: "give prompts of equal token length, or run them one at a time",
        },
      );
    }
    const tensors: Record<string, Tensor> = {};
    for (const slot of this.io.states) {
      tensors[slot.input] = stackRows(
        states.map((s) => s.tensors[slot.input]!),
        slot.batchAxis,
        slot.pastAxis,
      );
    }
    const padding = states.map((s) => (this.io.hasKvCache ? length - s.length : 0) + s.padding[0]!);
    return { batch: states.length, length, padding, tensors };
  }

  /**
   * Run the graph on `input` (one row per batch entry, all the same length; a flat list is one row)
   * after `state`.
   * Returns the logits and the next state; the graph's present outputs become the next state's
   * tensors as they are (no copies). Graphs with a fixed sequence of 1 are stepped token by token.
   */
  async forward(
    input: readonly number[] | readonly (readonly number[])[],
    state: State,
  ): Promise<ForwardResult> {
    // A flat list is one row (batch 1).
    const ids = (typeof input[0] === "number" ? [input] : input) as readonly (readonly number[])[];
    const batch = ids.length;
    const seq = ids[0]?.length ?? 0;
    if (batch !== state.batch) throw new Error(`forward: ${batch} rows for a state of batch ${state.batch}`);
    if (seq === 0 || ids.some((r) => r.length !== seq))
      throw new Error("forward: rows must be non-empty and equal");
    if (this.limitedContext && state.length + seq > this.contextLength) {
      throw new IteraError(
        `${state.length + seq} positions exceed the model's context length of ${this.contextLength}`,
        { where: join(this.dir, "genai_config.json"), fix: "shorten the input or the generation" },
      );
    }
    const step = this.io.fixedSequence;
    if (step === null || step === seq) return this.run(ids, state);
    if (step !== 1) {
      throw new IteraError(
        `the graph takes exactly ${step} tokens per call, which the runtime does not support`,
        {
          where: this.onnxPath,
          fix: "export with a dynamic sequence axis or with one token per call",
        },
      );
    }
    let current = state;
    let out: ForwardResult | undefined;
    let logits: Float32Array | undefined;
    for (let t = 0; t < seq; t++) {
      out = await this.run(
        ids.map((r) => [r[t]!]),
        current,
      );
      current = out.state;
      if (!logits) logits = new Float32Array(batch * seq * out.vocab);
      for (let b = 0; b < batch; b++) {
        logits.set(out.logits.subarray(b * out.vocab, (b + 1) * out.vocab), (b * seq + t) * out.vocab);
      }
    }
    return { logits: logits!, batch, positions: seq, vocab: out!.vocab, state: current };
  }

  private ones: { int64: BigInt64Array; int32: Int32Array } | undefined;

  /** An all-ones mask of `size` as a view of a shared buffer: no per-step allocation when nothing is padded. */
  private onesView(size: number): BigInt64Array | Int32Array {
    if (!this.ones || this.ones.int64.length < size) {
      const n = Math.max(size, this.contextLength);
      this.ones = { int64: new BigInt64Array(n).fill(1n), int32: new Int32Array(n).fill(1) };
    }
    return this.io.attentionMask?.type === "int32"
      ? this.ones.int32.subarray(0, size)
      : this.ones.int64.subarray(0, size);
  }

  private paddedMask(padding: readonly number[], total: number): number[] {
    const mask = new Array<number>(padding.length * total).fill(1);
    padding.forEach((pad, r) => {
      mask.fill(0, r * total, r * total + pad);
    });
    return mask;
  }

  private async run(ids: readonly (readonly number[])[], state: State): Promise<ForwardResult> {
    const { io } = this;
    const batch = ids.length;
    const seq = ids[0]!.length;
    const total = state.length + seq;
    const feeds: Record<string, Tensor> = { ...state.tensors };
    feeds[io.inputIds.name] = intTensor(io.inputIds.type, ids.flat(), [batch, seq]);
    if (io.attentionMask) {
      const mask = state.padding.some((p) => p > 0)
        ? this.paddedMask(state.padding, total)
        : this.onesView(batch * total);
      feeds[io.attentionMask.name] = intTensor(io.attentionMask.type, mask, [batch, total]);
    }
    if (io.positionIds) {
      const positions = new Array<number>(batch * seq);
      for (let r = 0; r < batch; r++) {
        const start = state.length - state.padding[r]!;
        for (let t = 0; t < seq; t++) positions[r * seq + t] = start + t;
      }
      feeds[io.positionIds.name] = intTensor(io.positionIds.type, positions, [batch, seq]);
    }
    const out = await this.session.run(feeds);
    const tensors: Record<string, Tensor> = {};
    for (const s of io.states) tensors[s.input] = out[s.output] as Tensor;
    const logitsTensor = out[io.logits] as Tensor;
    const dims = logitsTensor.dims;
    const vocab = dims[dims.length - 1]!;
    const positions = dims.length === 3 ? dims[1]! : 1;
    return {
      logits: asFloat32(logitsTensor),
      batch,
      positions,
      vocab,
      state: { batch, length: total, padding: state.padding, tensors },
    };
  }

  /** Generate from one prompt (text or token ids). */
  async generate(
    prompt: GenerateInput,
    options?: GenerateOptions,
    onToken?: (e: TokenEvent) => void,
  ): Promise<Generation> {
    return (await generate(this, [prompt], options, onToken))[0]!;
  }

  /** Generate from several prompts in one batch (see generate.ts for what batches). */
  async generateBatch(
    prompts: readonly GenerateInput[],
    options?: GenerateOptions,
    onToken?: (e: TokenEvent) => void,
  ): Promise<Generation[]> {
    return generate(this, prompts, options, onToken);
  }

  private fused = new Map<string, Promise<FusedDecoder | { unsupported: string }>>();

  /**
   * The fused decoder (fused-decode.ts) for these loop features (default: greedy), built on first
   * use, or why the model decodes step by step instead. `splitKv`: KV caches split into prefix and
   * chunk (kv-split.ts; generate() asks for it from FUSED_SPLIT_KV_FROM positions), else the graph's
   * Concat of the whole cache every step.
   */
  fusedDecoder(
    features: LoopFeatures = GREEDY,
    splitKv = false,
  ): Promise<FusedDecoder | { unsupported: string }> {
    const split = splitKv && this.io.hasKvCache;
    const key = `${featureKey(features)}${split ? "+split" : ""}`;
    let fused = this.fused.get(key);
    if (!fused) {
      // A graph ONNX Runtime cannot run inside a Loop decodes step by step rather than failing.
      // Imported here: a run that decodes step by step never loads the loop's builder (nor protobufjs).
      fused = import("./fused-decode.js")
        .then(({ FusedDecoder }) =>
          FusedDecoder.create(this.onnxPath, this.io, this.vocabSize, this.sessionOptions, features, split),
        )
        .catch((e: unknown) => ({
          unsupported: `the decode loop could not be built: ${(e as Error).message}`,
        }));
      this.fused.set(key, fused);
    }
    return fused;
  }

  /** Free the native sessions. */
  async dispose(): Promise<void> {
    for (const loop of this.fused.values()) {
      const fused = await loop;
      if (isDecoder(fused)) await fused.dispose();
    }
    await this.session.release();
  }
}

/** Load a model folder (DESIGN.md §3): genai_config.json, tokenizer.json, the ONNX graph, itera.json. */
export async function loadModel(dir: string, options: LoadOptions = {}): Promise<LanguageModel> {
  const folder = resolve(dir);
  const info = await stat(folder).catch(() => undefined);
  if (!info?.isDirectory()) {
    throw new IteraError(`model folder not found: ${dir}`, {
      where: folder,
      fix: "give the path of a model folder (genai_config.json, tokenizer.json, the .onnx file)",
    });
  }
  const config = await loadGenaiConfig(folder);
  const tokenizer = await loadTokenizer(folder);
  const card = await loadModelCard(folder);
  const dec = config.model.decoder;
  // The decoder named by model.decoder.filename, inside the folder (src/model/folder.ts).
  const { onnxPath } = await locateModelFile(folder);
  const so = dec.session_options ?? {};
  const sessionOptions: InferenceSession.SessionOptions = {
    executionProviders: options.executionProviders ?? ["cpu"],
    graphOptimizationLevel:
      options.graphOptimizationLevel ??
      (so.graph_optimization_level ? levelNames[so.graph_optimization_level] : undefined) ??
      "all",
  };
  const threads = options.threads ?? so.intra_op_num_threads;
  if (threads !== undefined) sessionOptions.intraOpNumThreads = threads;
  if (so.inter_op_num_threads !== undefined) sessionOptions.interOpNumThreads = so.inter_op_num_threads;
  if (options.profileFilePrefix) {
    sessionOptions.enableProfiling = true;
    sessionOptions.profileFilePrefix = options.profileFilePrefix;
  }
  let session: InferenceSession;
  disableOrtTelemetry();
  try {
    session = await InferenceSession.create(onnxPath, sessionOptions);
  } catch (e) {
    throw new IteraError(`ONNX Runtime cannot load the graph: ${(e as Error).message}`, {
      where: onnxPath,
      fix: "check that the file is a complete ONNX model (opset supported by onnxruntime 1.30)",
      cause: e,
    });
  }
  try {
    const io = analyseIo(session, config, onnxPath);
    checkVocabulary(session, io, config, tokenizer, folder);
    return new LanguageModel(folder, config, card, tokenizer, session, io, onnxPath, sessionOptions);
  } catch (e) {
    await session.release();
    throw e;
  }
}

function checkVocabulary(
  session: InferenceSession,
  io: ModelIo,
  config: GenaiConfig,
  tokenizer: TextTokenizer,
  folder: string,
): void {
  const meta = session.outputMetadata.find((m) => m.name === io.logits);
  const graphVocab = meta?.isTensor ? meta.shape[meta.shape.length - 1] : undefined;
  const vocab = config.model.vocab_size;
  if (typeof graphVocab === "number" && graphVocab > 0 && graphVocab !== vocab) {
    throw new IteraError(`model.vocab_size is ${vocab} but the graph's logits have ${graphVocab} entries`, {
      where: join(folder, "genai_config.json"),
      fix: `set model.vocab_size to ${graphVocab}`,
    });
  }
  if (tokenizer.vocabSize > vocab) {
    throw new IteraError(
      `the tokenizer has ${tokenizer.vocabSize} tokens but the model's vocabulary has ${vocab}: they do not belong together`,
      { where: tokenizer.path, fix: "use the tokenizer.json the model was trained with" },
    );
  }
}
