/**
 * Fused decoding: many decode steps in one `session.run`.
 *
 * A small model's decode step is cheaper than the call that runs it: the Node binding converts every
 * state tensor in and out (~5 µs each, and a whole KV cache copied out of every call) and ONNX
 * Runtime sets up the run. This module wraps the model's own graph in an ONNX `Loop` whose body is
 * the graph plus the choice of the next token: the state stays inside ONNX Runtime between steps
 * and one call returns up to K tokens. The choice is greedy (ArgMax) or sampled, with the
 * distribution and draw of src/runtime/sampling.ts in float64 (repetition penalty -> temperature ->
 * top-k -> top-p -> a draw with uniform numbers made by the caller's seeded generator; sums may round
 * differently, see sampledChoice), so the tokens are those of stepping one call per token (the tests
 * check this).
 *
 * Applies to graphs whose inputs are token ids, states (fixed-shape recurrent/conv state or KV
 * caches that grow inside the loop; kv-split.ts splits a cache so that no step copies the positions
 * the call started from), and optionally attention_mask and position_ids (extended by
 * one position per step inside the loop), whose weights fit comfortably in memory twice (each loop
 * is a second ONNX Runtime session); anything else decodes step by step.
 */
import { InferenceSession, Tensor } from "onnxruntime-node";
import {
  attr,
  DataType,
  encodeModel,
  Graph,
  isExternal,
  loadModel as loadOnnx,
  makeNode,
  makeValueInfo,
  tensorByteSize,
  typedToTensor,
} from "../onnx/index.js";
import type { AttributeProto, GraphProto, ModelProto, NodeProto, ValueInfoProto } from "../onnx/types.js";
import type { ModelIo, StateSlot, TensorType } from "./io.js";
import { CacheBuffers, joinPositions, type SplitKv, splitKvAttention } from "./kv-split.js";
import { featureKey, GREEDY, type LoopFeatures } from "./loop-features.js";
import { intTensor, zeros } from "./tensors.js";

// The loop's features live apart so that a run that decodes step by step never loads this module (nor
// the ONNX codec it builds the loop with); re-exported for the callers that load it anyway.
export { FUSED_TOP_P_MAX, featureKey, GREEDY, type LoopFeatures, loopFeatures } from "./loop-features.js";

/** Above this many bytes of weights the per-call overhead no longer matters: keep one session. */
export const FUSED_DECODE_MAX_BYTES = 64 * 1024 * 1024;

/** Vocabularies above this sample step by step: the draw's bound on rounding (see FUSED_TOP_P_MAX) fails. */
export const FUSED_SAMPLING_MAX_VOCAB = 2 ** 20;

const P = "itera.loop."; // prefix of every name this module adds, away from the model's own names

/** Why a model decodes step by step, or null when the fused loop applies. */
export function fusedDecodeUnsupported(io: ModelIo): string | null {
  if (io.states.length === 0) return "the graph carries no state";
  if (io.fixedSequence !== null && io.fixedSequence !== 1) return "the graph takes a fixed number of tokens";
  return null;
}

function renamed(v: ValueInfoProto, name: string): ValueInfoProto {
  return { ...v, name } as ValueInfoProto;
}

const onnxInt = (t: TensorType) => (t === "int32" ? DataType.INT32 : DataType.INT64);

function opsetOf(model: ModelProto): number {
  const v = model.opsetImport.find((o) => !o.domain)?.version;
  return v === undefined ? 0 : Number(v);
}

/** The loop's output for a state: the whole state, or the positions the call added to a split cache. */
function stateOutput(s: StateSlot, splitSlots: ReadonlySet<string>): string {
  return splitSlots.has(s.input) ? `${P}chunk.${s.output}` : `${P}out.${s.output}`;
}

/**
 * The sampled choice of the next ids [batch, 1] (int64) from float32 `scores` [batch, vocab]: the
 * distribution of samplingDistribution and the draw of drawFrom, in float64, in as few ONNX Runtime
 * nodes per step as they allow (a node costs ONNX Runtime 2-15 thousand instructions of dispatch,
 * allocation and broadcasting, far more than the arithmetic on k values):
 *   Cast -> TopK (k, ties: lower id first, as topKIndices) -> divide by the temperature -> Softmax
 *   (subtract the top one, Exp, divide by the sum) -> CumSum (cumulative probabilities C)
 *   top-p: the last kept position is the first whose C reaches p (the first maximum of min(C, p)),
 *          and t is scaled by the kept total (C / total > u as C > u x total: renormalised)
 *   draw: the first position whose C exceeds u is the first maximum of min(C, t), t = the double
 *         just above u (drawThresholds: C >= t exactly when C > u), found by TopK with k = 1.
 * `threshold` [batch, 1] holds t per row; reads the loop's temperature, top_k and top_p inputs and
 * SAMPLING_CONSTANTS. Against sampling.ts only the rounding of the sums differs (Softmax's sum is not
 * sequential, Exp is ONNX Runtime's): a token can differ only where u lies within ~k ulps of a
 * boundary of the cumulative distribution (docs/runtime.md).
 */
export function sampledChoice(scores: string, threshold: string, next: string, topP: boolean): NodeProto[] {
  const node = (op: string, inputs: string[], outputs: string[], attributes: AttributeProto[] = []) =>
    makeNode(op, inputs, outputs, { attributes });
  const last = [attr.int("axis", -1)];
  const at1 = [attr.int("axis", 1)];
  const nodes = [
    node("Cast", [scores], [`${P}scores64`], [attr.int("to", DataType.DOUBLE)]),
    node("TopK", [`${P}scores64`, `${P}top_k`], [`${P}top_values`, `${P}top_ids`], last),
    node("Div", [`${P}top_values`, `${P}temperature`], [`${P}scaled`]),
    node("Softmax", [`${P}scaled`], [`${P}probs`], last),
    node("CumSum", [`${P}probs`, `${P}axis1`], [`${P}cum_probs`]),
  ];
  let drawAt = threshold;
  if (topP) {
    // C / kept total > u as C > u x kept total: a [batch, 1] product instead of a [batch, k] division
    nodes.push(
      node("Min", [`${P}cum_probs`, `${P}top_p`], [`${P}capped`]),
      node("TopK", [`${P}capped`, `${P}one`], [`${P}capped_top`, `${P}last_kept`], last),
      node("GatherElements", [`${P}cum_probs`, `${P}last_kept`], [`${P}kept_total`], at1),
      node("Mul", [threshold, `${P}kept_total`], [`${P}kept_threshold`]),
    );
    drawAt = `${P}kept_threshold`;
  }
  nodes.push(
    node("Min", [`${P}cum_probs`, drawAt], [`${P}reached`]),
    node("TopK", [`${P}reached`, `${P}one`], [`${P}reached_top`, `${P}pick`], last),
    node("GatherElements", [`${P}top_ids`, `${P}pick`], [next], at1),
  );
  return nodes;
}

/** The constants sampledChoice reads. */
export const SAMPLING_CONSTANTS = () => [
  typedToTensor(`${P}one`, [1], BigInt64Array.of(1n)),
  typedToTensor(`${P}axis1`, [], BigInt64Array.of(1n)),
];

/**
 * The draws' thresholds for uniform numbers u in [0, 1): each the double just above u (C > u exactly
 * when C >= it), one bit pattern up, as u is not negative.
 */
export function drawThresholds(uniforms: Float64Array): Float64Array {
  const thresholds = Float64Array.from(uniforms);
  const bits = new BigInt64Array(thresholds.buffer);
  for (let i = 0; i < bits.length; i++) bits[i] = bits[i]! + 1n;
  return thresholds;
}

/**
 * The decode loop around `model` (edited in place and returned):
 *   inputs  steps (int64 scalar), ids [batch, 1], eos_table [vocab] (int32: 1 for an end id),
 *           done [batch, 1] (int32: 1 for a row that already ended),
 *           attention_mask [batch, past + 1] and ones [batch, 1] (if the graph takes a mask),
 *           position_ids [batch, 1] (if the graph takes them), seen [batch, vocab] (bool, penalty),
 *           temperature, top_k [1], top_p, uniforms [steps, batch, 1] (sampling: each the
 *           drawThresholds of the steps' uniform numbers), penalty (penalty),
 *           states...
 *   outputs states... (of a split cache: the positions the call added), tokens [steps run, batch, 1]
 * Each iteration feeds the ids, chooses the next ids from the logits, marks rows that produced an
 * end id as done, extends mask and positions by one, and stops early once every row is done.
 */
export function buildDecodeLoop(
  model: ModelProto,
  io: ModelIo,
  features: LoopFeatures = GREEDY,
  split?: SplitKv,
): ModelProto {
  const g = model.graph!;
  const valueInfo = (name: string) => new Graph(g).valueInfo(name);
  const idsType = onnxInt(io.inputIds.type);
  const sample = features.sample;
  const topP = sample && features.topP;
  const node = (op: string, inputs: string[], outputs: string[], attributes: AttributeProto[] = []) =>
    makeNode(op, inputs, outputs, { attributes });
  const axisLast = [attr.int("axis", -1), attr.int("keepdims", 1)];
  const body: NodeProto[] = [...g.node];
  // logits [batch, 1, vocab] -> ids [batch, 1] in one ArgMax; other layouts and the sampling
  // arithmetic work on rows [batch, vocab].
  const logitsRank = valueInfo(io.logits)?.type?.tensorType?.shape?.dim?.length;
  const needRows = sample || features.penalty || logitsRank !== 3;
  if (needRows) body.push(node("Reshape", [io.logits, `${P}rows_shape`], [`${P}rows`]));
  let scores = `${P}rows`;
  if (features.penalty) {
    // As sampling.ts: seen logits divided (positive) or multiplied (negative) by the penalty in
    // float64, then rounded to float32 as a Float32Array stores them.
    body.push(
      node("Cast", [`${P}rows`], [`${P}rows64`], [attr.int("to", DataType.DOUBLE)]),
      node("Greater", [`${P}rows`, `${P}zero_f`], [`${P}positive`]),
      node("Div", [`${P}rows64`, `${P}penalty`], [`${P}divided`]),
      node("Mul", [`${P}rows64`, `${P}penalty`], [`${P}multiplied`]),
      node("Where", [`${P}positive`, `${P}divided`, `${P}multiplied`], [`${P}penalised64`]),
      node("Cast", [`${P}penalised64`], [`${P}penalised`], [attr.int("to", DataType.FLOAT)]),
      node("Where", [`${P}seen_in`, `${P}penalised`, `${P}rows`], [`${P}scores`]),
    );
    scores = `${P}scores`;
  }
  if (!sample) {
    body.push(
      needRows
        ? node("ArgMax", [scores], [`${P}next64`], axisLast)
        : node("ArgMax", [io.logits], [`${P}next64`], [attr.int("axis", -1), attr.int("keepdims", 0)]),
    );
  } else {
    body.push(
      node("Gather", [`${P}uniforms`, `${P}iter`], [`${P}threshold`], [attr.int("axis", 0)]),
      ...sampledChoice(scores, `${P}threshold`, `${P}next64`, topP),
    );
  }
  // int64 ids feed the next step as they are (one node less per step)
  const next = idsType === DataType.INT32 ? `${P}next` : `${P}next64`;
  if (idsType === DataType.INT32)
    body.push(node("Cast", [`${P}next64`], [next], [attr.int("to", DataType.INT32)]));
  body.push(
    node("Identity", [next], [`${P}scan`]),
    // done' = done | eos_table[next]; continue while some row is not done
    node("Gather", [`${P}eos_table`, `${P}next64`], [`${P}ended`]),
    node("Max", [`${P}done_in`, `${P}ended`], [`${P}done_out`]),
    node("ReduceMin", [`${P}done_out`], [`${P}all_done`], [attr.int("keepdims", 0)]),
    node("Equal", [`${P}all_done`, `${P}zero`], [`${P}cond_out`]),
  );

  // Loop-carried values besides ids, done and the states: mask, positions, seen tokens.
  const carried: { input: ValueInfoProto; output: ValueInfoProto; outer: ValueInfoProto }[] = [];
  const mask = io.attentionMask;
  if (mask) {
    const t = onnxInt(mask.type);
    body.push(node("Concat", [mask.name, `${P}ones`], [`${P}mask_out`], [attr.int("axis", 1)]));
    carried.push({
      input: makeValueInfo(mask.name, t, ["batch", "total"]),
      output: makeValueInfo(`${P}mask_out`, t, ["batch", "total_next"]),
      outer: makeValueInfo(`${P}in.mask`, t, ["batch", "total"]),
    });
  }
  const pos = io.positionIds;
  if (pos) {
    const t = onnxInt(pos.type);
    body.push(node("Add", [pos.name, `${P}one_pos`], [`${P}pos_out`]));
    carried.push({
      input: makeValueInfo(pos.name, t, ["batch", 1]),
      output: makeValueInfo(`${P}pos_out`, t, ["batch", 1]),
      outer: makeValueInfo(`${P}in.pos`, t, ["batch", 1]),
    });
  }
  if (features.penalty) {
    body.push(
      node("Equal", [`${P}vocab_ids`, `${P}next64`], [`${P}chosen`]),
      node("Or", [`${P}seen_in`, `${P}chosen`], [`${P}seen_out`]),
    );
    carried.push({
      input: makeValueInfo(`${P}seen_in`, DataType.BOOL, ["batch", "vocab"]),
      output: makeValueInfo(`${P}seen_out`, DataType.BOOL, ["batch", "vocab"]),
      outer: makeValueInfo(`${P}in.seen`, DataType.BOOL, ["batch", "vocab"]),
    });
  }

  const stateInputs = io.states.map((s) => valueInfo(s.input)!);
  const stateOutputs = io.states.map((s) => valueInfo(s.output)!);
  const loopBody = {
    name: `${g.name ?? "model"}_decode_step`,
    node: body,
    initializer: [],
    input: [
      makeValueInfo(`${P}iter`, DataType.INT64, []),
      makeValueInfo(`${P}cond_in`, DataType.BOOL, []),
      makeValueInfo(io.inputIds.name, idsType, ["batch", 1]),
      makeValueInfo(`${P}done_in`, DataType.INT32, ["batch", 1]),
      ...carried.map((c) => c.input),
      ...stateInputs,
    ],
    output: [
      makeValueInfo(`${P}cond_out`, DataType.BOOL, []),
      makeValueInfo(next, idsType, ["batch", 1]),
      makeValueInfo(`${P}done_out`, DataType.INT32, ["batch", 1]),
      ...carried.map((c) => c.output),
      ...stateOutputs,
      makeValueInfo(`${P}scan`, idsType, ["batch", 1]),
    ],
    valueInfo: g.valueInfo,
  } as unknown as GraphProto;

  const outer = (name: string) => `${P}in.${name}`;
  // A split cache (kv-split.ts): the loop carries each call's own positions from empty, the body
  // reads the prefix from here, and the loop returns the chunk alone: FusedDecoder.run joins it to
  // the prefix (a join here would be copied out of ONNX Runtime once more, into fresh memory).
  const splitSlots = new Set(split?.slots.map((s) => s.input));
  const before: NodeProto[] = [];
  if (split) {
    before.push(
      node("Shape", [outer(split.slots[0]!.input)], [`${P}prefix_shape`]),
      node("Slice", [`${P}prefix_shape`, `${P}two`, `${P}three`], [split.prefixLength]),
      node(
        "Concat",
        [`${P}zero1`, `${P}zero1`, split.prefixLength, `${P}zero1`],
        [split.prefixOffset],
        [attr.int("axis", 0)],
      ),
    );
    for (const s of split.slots) {
      before.push(
        node("Slice", [outer(s.input), `${P}zero1`, `${P}zero1`, `${P}two`], [`${P}empty.${s.input}`]),
      );
    }
  }
  const loop = makeNode(
    "Loop",
    [
      `${P}steps`,
      `${P}true`,
      outer("ids"),
      outer("done"),
      ...carried.map((c) => c.outer.name!),
      ...io.states.map((s) => (splitSlots.has(s.input) ? `${P}empty.${s.input}` : outer(s.input))),
    ],
    [
      `${P}out.ids`,
      `${P}out.done`,
      ...carried.map((c) => `${P}out.${c.outer.name}`),
      ...io.states.map((s) => stateOutput(s, splitSlots)),
      `${P}tokens`,
    ],
    { attributes: [attr.graph("body", loopBody)] },
  );
  const inputs: ValueInfoProto[] = [
    makeValueInfo(`${P}steps`, DataType.INT64, []),
    makeValueInfo(outer("ids"), idsType, ["batch", 1]),
    makeValueInfo(`${P}eos_table`, DataType.INT32, ["vocab"]),
    makeValueInfo(outer("done"), DataType.INT32, ["batch", 1]),
    ...carried.map((c) => c.outer),
  ];
  if (mask) inputs.push(makeValueInfo(`${P}ones`, onnxInt(mask.type), ["batch", 1]));
  if (features.penalty) {
    inputs.push(
      makeValueInfo(`${P}penalty`, DataType.DOUBLE, []),
      makeValueInfo(`${P}vocab_ids`, DataType.INT64, ["vocab"]),
    );
  }
  if (sample) {
    inputs.push(
      makeValueInfo(`${P}temperature`, DataType.DOUBLE, []),
      makeValueInfo(`${P}top_k`, DataType.INT64, [1]),
      makeValueInfo(`${P}uniforms`, DataType.DOUBLE, ["steps", "batch", 1]),
    );
    if (topP) inputs.push(makeValueInfo(`${P}top_p`, DataType.DOUBLE, []));
  }
  inputs.push(...stateInputs.map((v) => renamed(v, outer(v.name!))));
  model.graph = {
    ...g,
    node: [...before, loop],
    initializer: [
      ...g.initializer,
      ...(split
        ? [
            typedToTensor(`${P}zero1`, [1], BigInt64Array.of(0n)),
            typedToTensor(`${P}two`, [1], BigInt64Array.of(2n)),
            typedToTensor(`${P}three`, [1], BigInt64Array.of(3n)),
          ]
        : []),
      typedToTensor(`${P}true`, [], Uint8Array.of(1), DataType.BOOL),
      typedToTensor(`${P}zero`, [], Int32Array.of(0)),
      ...(needRows ? [typedToTensor(`${P}rows_shape`, [2], BigInt64Array.of(0n, -1n))] : []),
      ...(features.penalty ? [typedToTensor(`${P}zero_f`, [], Float32Array.of(0))] : []),
      ...(sample ? SAMPLING_CONSTANTS() : []),
      ...(pos
        ? [
            pos.type === "int32"
              ? typedToTensor(`${P}one_pos`, [], Int32Array.of(1))
              : typedToTensor(`${P}one_pos`, [], BigInt64Array.of(1n)),
          ]
        : []),
    ],
    input: inputs,
    output: [
      ...io.states.map((s, i) => renamed(stateOutputs[i]!, stateOutput(s, splitSlots))),
      makeValueInfo(`${P}tokens`, idsType, ["steps", "batch", 1]),
    ],
    valueInfo: [],
  } as GraphProto;
  return model;
}

export interface DecodeChunk {
  /** tokens[row][i]: the token chosen at step i (rows that ended keep producing tokens: ignore them). */
  tokens: number[][];
  /** State tensors (by state input name) after feeding the input ids and all but the last token. */
  state: Record<string, Tensor>;
}

/** Sampling settings of a fused call (sampling.ts semantics). */
export interface LoopSampling {
  temperature: number;
  /** 0 = the whole vocabulary. */
  topK: number;
  topP: number;
  repetitionPenalty: number;
  /** uniforms[i * batch + row]: the draw of step i for the row (from the row's seeded generator). */
  uniforms?: Float64Array;
  /** The tokens each row has seen (prompt and generated), for the repetition penalty. */
  contexts?: readonly (readonly number[])[];
}

export interface LoopRun {
  /** The last token of each row, not yet fed. */
  ids: readonly number[];
  /** State tensors by input name, after `length` positions (`padding[row]` of them left padding). */
  state: Readonly<Record<string, Tensor>>;
  length: number;
  padding: readonly number[];
  steps: number;
  /** End ids: a row that produces one is done; the call returns early once every row is. */
  eos: readonly number[];
  /** Rows that already ended (they count as done from the start). */
  ended?: readonly boolean[];
  sampling?: LoopSampling;
  /**
   * The caller will not read `state` again: the decoder may reuse the memory of split caches it
   * returned earlier for the state it returns (generate() hands each state back once).
   */
  recycle?: boolean;
}

/**
 * How a loop carries KV caches: "split" into prefix and chunk (kv-split.ts), the graph's own Concat
 * of the whole cache every step (with the reason the split does not apply), or "none" (no KV cache).
 */
export type KvCacheMode = "split" | "none" | { concat: string };

/** A second ONNX Runtime session that runs the decode loop of a model. */
export class FusedDecoder {
  private eosTables = new Map<string, Tensor>();
  private vocabIds: Tensor | undefined;

  private constructor(
    /** The loop's session (public for benchmarks that time session.run). */
    readonly session: InferenceSession,
    private readonly io: ModelIo,
    private readonly vocab: number,
    readonly features: LoopFeatures,
    /** How the loop carries KV caches: split (no per-step copy of the prefix), or plain Concat and why. */
    readonly kvCache: KvCacheMode,
    /** Input names of the split caches, whose loop output is the chunk a call added. */
    private readonly splitSlots: ReadonlySet<string> = new Set(),
  ) {
    // two calls' worth: a generation hands back each state but its last while the next call's
    // output is being written, and its last one when it ends (recycle())
    this.buffers = new CacheBuffers(2 * splitSlots.size);
  }

  private readonly buffers: CacheBuffers;

  /** 1 at each end id, 0 elsewhere: one Gather in the loop tells whether a token ends its row. */
  private eosTable(eos: readonly number[]): Tensor {
    const key = eos.join(",");
    let table = this.eosTables.get(key);
    if (!table) {
      const flags = new Int32Array(this.vocab);
      for (const id of eos) if (id >= 0 && id < this.vocab) flags[id] = 1;
      table = new Tensor("int32", flags, [this.vocab]);
      this.eosTables.set(key, table);
    }
    return table;
  }

  /** Build the loop from the model file; why not, when the model does not qualify. */
  static async create(
    onnxPath: string,
    io: ModelIo,
    vocab: number,
    options: InferenceSession.SessionOptions,
    features: LoopFeatures = GREEDY,
    /** Split KV caches into prefix and chunk where the attention allows (kv-split.ts); false: plain Concat. */
    splitKv = false,
  ): Promise<FusedDecoder | { unsupported: string }> {
    const why = fusedDecodeUnsupported(io);
    if (why) return { unsupported: why };
    if ((features.sample || features.penalty) && vocab > FUSED_SAMPLING_MAX_VOCAB)
      return { unsupported: `the vocabulary is larger than ${FUSED_SAMPLING_MAX_VOCAB} tokens` };
    // Sized before any external data is read: a large model is refused without loading it twice.
    let model = await loadOnnx(onnxPath, { externalData: "verify" });
    const bytes = model.graph!.initializer.reduce((n, t) => n + tensorByteSize(t), 0);
    if (bytes > FUSED_DECODE_MAX_BYTES)
      return { unsupported: "the weights are large: a step outweighs its call" };
    // CumSum (opset 11) carries the sampling arithmetic.
    if ((features.sample || features.penalty) && opsetOf(model) < 11)
      return {
        unsupported: `the graph's opset ${opsetOf(model)} is below 11 (CumSum, TopK with k as input)`,
      };
    if (model.graph!.initializer.some(isExternal)) model = await loadOnnx(onnxPath);
    // the body reads each prefix as the loop's own input: the outer graph's value, never copied
    const split =
      io.hasKvCache && splitKv ? splitKvAttention(model, io, (s) => `${P}in.${s.input}`) : undefined;
    const kvCache: KvCacheMode = !io.hasKvCache
      ? "none"
      : split && !("unsupported" in split)
        ? "split"
        : { concat: split?.unsupported ?? "the split cache was turned off" };
    const plan = split && !("unsupported" in split) ? split : undefined;
    const session = await InferenceSession.create(encodeModel(buildDecodeLoop(model, io, features, plan)), {
      ...options,
      enableProfiling: false,
    });
    const decoder = new FusedDecoder(
      session,
      io,
      vocab,
      features,
      kvCache,
      new Set(plan?.slots.map((s) => s.input)),
    );
    // Two steps from an empty state, once: a graph whose ops fail inside the loop only when run
    // (shapes that do not grow as the loop grows them, ...) decodes step by step instead of failing
    // mid-generation.
    try {
      const state: Record<string, Tensor> = {};
      for (const st of io.states) state[st.input] = zeros(st.type, st.emptyShape);
      await decoder.run({
        ids: [0],
        state,
        length: 0,
        padding: [0],
        steps: 2,
        eos: [],
        sampling: {
          temperature: 1,
          topK: 0,
          topP: 0.5,
          repetitionPenalty: 1.5,
          uniforms: Float64Array.of(0.5, 0.5),
          contexts: [[0]],
        },
      });
    } catch (e) {
      await session.release();
      return { unsupported: `the decode loop fails in ONNX Runtime: ${(e as Error).message}` };
    }
    return decoder;
  }

  /**
   * Decode up to `steps` tokens per row after `ids`, stopping early once every row has produced one
   * of `eos` (pass [] to never stop early).
   */
  async run(r: LoopRun): Promise<DecodeChunk> {
    const batch = r.ids.length;
    const { io, features } = this;
    const feeds: Record<string, Tensor> = {
      [`${P}steps`]: new Tensor("int64", BigInt64Array.of(BigInt(r.steps)), []),
      [`${P}in.ids`]: intTensor(io.inputIds.type, r.ids, [batch, 1]),
      [`${P}eos_table`]: this.eosTable(r.eos),
      [`${P}in.done`]: new Tensor(
        "int32",
        Int32Array.from(r.ids, (_, i) => (r.ended?.[i] ? 1 : 0)),
        [batch, 1],
      ),
    };
    if (io.attentionMask) {
      // as LanguageModel.run feeds it: ones, but zeros over each row's left padding
      const total = r.length + 1;
      const mask = new Array<number>(batch * total).fill(1);
      for (const [row, pad] of r.padding.entries()) mask.fill(0, row * total, row * total + pad);
      feeds[`${P}in.mask`] = intTensor(io.attentionMask.type, mask, [batch, total]);
      feeds[`${P}ones`] = intTensor(io.attentionMask.type, new Array<number>(batch).fill(1), [batch, 1]);
    }
    if (io.positionIds) {
      feeds[`${P}in.pos`] = intTensor(
        io.positionIds.type,
        r.padding.map((pad) => r.length - pad),
        [batch, 1],
      );
    }
    const s = r.sampling;
    if (features.sample || features.penalty) {
      if (!s) throw new Error(`the ${featureKey(features)} decode loop needs sampling settings`);
      if (features.penalty) {
        const seen = new Uint8Array(batch * this.vocab);
        s.contexts?.forEach((ids, row) => {
          for (const id of ids) if (id >= 0 && id < this.vocab) seen[row * this.vocab + id] = 1;
        });
        feeds[`${P}in.seen`] = new Tensor("bool", seen, [batch, this.vocab]);
        feeds[`${P}penalty`] = new Tensor("float64", Float64Array.of(s.repetitionPenalty), []);
        this.vocabIds ??= new Tensor(
          "int64",
          BigInt64Array.from({ length: this.vocab }, (_, i) => BigInt(i)),
          [this.vocab],
        );
        feeds[`${P}vocab_ids`] = this.vocabIds;
      }
      if (features.sample) {
        const k = s.topK > 0 && s.topK < this.vocab ? s.topK : this.vocab;
        feeds[`${P}temperature`] = new Tensor("float64", Float64Array.of(s.temperature), []);
        feeds[`${P}top_k`] = new Tensor("int64", BigInt64Array.of(BigInt(k)), [1]);
        const uniforms = s.uniforms ?? new Float64Array(r.steps * batch);
        if (uniforms.length !== r.steps * batch) throw new Error("one uniform per step and row");
        feeds[`${P}uniforms`] = new Tensor("float64", drawThresholds(uniforms), [r.steps, batch, 1]);
        if (features.topP) feeds[`${P}top_p`] = new Tensor("float64", Float64Array.of(s.topP), []);
      }
    }
    for (const st of io.states) feeds[`${P}in.${st.input}`] = r.state[st.input]!;
    const out = await this.session.run(feeds);
    const next: Record<string, Tensor> = {};
    for (const st of io.states) {
      const got = out[stateOutput(st, this.splitSlots)] as Tensor;
      next[st.input] = this.splitSlots.has(st.input)
        ? joinPositions(r.state[st.input]!, got, this.buffers)
        : got;
    }
    if (r.recycle) this.recycle(r.state);
    const flat = out[`${P}tokens`] as Tensor;
    const run = flat.dims[0]!;
    const data = flat.data as BigInt64Array | Int32Array;
    const tokens = Array.from({ length: batch }, (_, row) =>
      Array.from({ length: run }, (_, i) => Number(data[i * batch + row]!)),
    );
    return { tokens, state: next };
  }

  /**
   * The caller will not read `state` again (a state this decoder returned; anything else is left
   * alone): the memory of its split caches serves later calls.
   */
  recycle(state: Readonly<Record<string, Tensor>>): void {
    for (const st of this.io.states) {
      const t = state[st.input];
      if (t && this.splitSlots.has(st.input)) this.buffers.give(t);
    }
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }
}
