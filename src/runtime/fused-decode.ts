/**
 * Fused greedy decoding: many greedy steps in one `session.run`.
 *
 * A small recurrent model's decode step is cheaper than the call that runs it: the Node binding
 * converts every state tensor in and out (~5 µs each) and ONNX Runtime sets up the run. For such
 * models this module wraps the model's own graph in an ONNX `Loop` whose body is the graph plus
 * ArgMax: the state stays inside ONNX Runtime between steps and one call returns up to K tokens.
 * The arithmetic is the model's own, so the tokens are exactly those of stepping it one call at a
 * time with greedy choice (the tests check this).
 *
 * Applies to graphs whose only inputs are the token ids and fixed-shape states (recurrent/conv state,
 * no KV cache, attention mask or positions) and whose weights fit comfortably in memory twice (the
 * loop is a second ONNX Runtime session); anything else decodes step by step.
 */
import { InferenceSession, Tensor } from "onnxruntime-node";
import {
  attr,
  DataType,
  Graph,
  isExternal,
  loadModel as loadOnnx,
  makeNode,
  makeValueInfo,
  tensorByteSize,
  typedToTensor,
  encodeModel,
} from "../onnx/index.js";
import type { GraphProto, ModelProto, NodeProto, ValueInfoProto } from "../onnx/types.js";
import type { ModelIo } from "./io.js";
import { intTensor } from "./tensors.js";

/** Above this many bytes of weights the per-call overhead no longer matters: keep one session. */
export const FUSED_DECODE_MAX_BYTES = 64 * 1024 * 1024;

const P = "itera.loop."; // prefix of every name this module adds, away from the model's own names

/** Why a model decodes step by step, or null when the fused loop applies. */
export function fusedDecodeUnsupported(io: ModelIo): string | null {
  if (io.states.length === 0) return "the graph carries no state";
  if (io.hasKvCache) return "the graph has a KV cache";
  if (io.attentionMask || io.positionIds) return "the graph takes an attention mask or position ids";
  if (io.fixedSequence !== null && io.fixedSequence !== 1) return "the graph takes a fixed number of tokens";
  return null;
}

function renamed(v: ValueInfoProto, name: string): ValueInfoProto {
  return { ...v, name } as ValueInfoProto;
}

/**
 * The decode loop around `model` (edited in place and returned):
 *   inputs  steps (int64 scalar), ids [batch, 1], eos_table [vocab] (int32: 1 for an end id),
 *           done [batch, 1] (int32), states...
 *   outputs ids [batch, 1], done, states..., tokens [steps run, batch, 1]
 * Each iteration feeds the ids, takes the ArgMax of the logits as the next ids, marks rows that
 * produced an end id as done, and stops early once every row is done.
 */
export function buildDecodeLoop(model: ModelProto, io: ModelIo): ModelProto {
  const g = model.graph!;
  const valueInfo = (name: string) => new Graph(g).valueInfo(name);
  const idsType = io.inputIds.type === "int32" ? DataType.INT32 : DataType.INT64;
  // logits [batch, 1, vocab] -> ids [batch, 1] in one ArgMax; other layouts through a Reshape
  const logitsRank = valueInfo(io.logits)?.type?.tensorType?.shape?.dim?.length;
  const argmax =
    logitsRank === 3
      ? [
          makeNode("ArgMax", [io.logits], [`${P}next64`], {
            attributes: [attr.int("axis", -1), attr.int("keepdims", 0)],
          }),
        ]
      : [
          makeNode("ArgMax", [io.logits], [`${P}argmax`], {
            attributes: [attr.int("axis", -1), attr.int("keepdims", 1)],
          }),
          makeNode("Reshape", [`${P}argmax`, `${P}column`], [`${P}next64`]),
        ];
  const body: NodeProto[] = [
    ...g.node,
    ...argmax,
    idsType === DataType.INT32
      ? makeNode("Cast", [`${P}next64`], [`${P}next`], { attributes: [attr.int("to", DataType.INT32)] })
      : makeNode("Identity", [`${P}next64`], [`${P}next`]),
    makeNode("Identity", [`${P}next`], [`${P}scan`]),
    // done' = done | eos_table[next]; continue while some row is not done
    makeNode("Gather", [`${P}eos_table`, `${P}next64`], [`${P}ended`]),
    makeNode("Max", [`${P}done_in`, `${P}ended`], [`${P}done_out`]),
    makeNode("ReduceMin", [`${P}done_out`], [`${P}all_done`], { attributes: [attr.int("keepdims", 0)] }),
    makeNode("Equal", [`${P}all_done`, `${P}zero`], [`${P}cond_out`]),
  ];
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
      ...stateInputs,
    ],
    output: [
      makeValueInfo(`${P}cond_out`, DataType.BOOL, []),
      makeValueInfo(`${P}next`, idsType, ["batch", 1]),
      makeValueInfo(`${P}done_out`, DataType.INT32, ["batch", 1]),
      ...stateOutputs,
      makeValueInfo(`${P}scan`, idsType, ["batch", 1]),
    ],
    valueInfo: g.valueInfo,
  } as unknown as GraphProto;

  const outer = (name: string) => `${P}in.${name}`;
  const loop = makeNode(
    "Loop",
    [`${P}steps`, `${P}true`, outer("ids"), outer("done"), ...io.states.map((s) => outer(s.input))],
    [`${P}out.ids`, `${P}out.done`, ...io.states.map((s) => `${P}out.${s.output}`), `${P}tokens`],
    { attributes: [attr.graph("body", loopBody)] },
  );
  model.graph = {
    ...g,
    node: [loop],
    initializer: [
      ...g.initializer,
      typedToTensor(`${P}true`, [], Uint8Array.of(1), DataType.BOOL),
      ...(logitsRank === 3 ? [] : [typedToTensor(`${P}column`, [2], BigInt64Array.of(-1n, 1n))]),
      typedToTensor(`${P}zero`, [], Int32Array.of(0)),
    ],
    input: [
      makeValueInfo(`${P}steps`, DataType.INT64, []),
      makeValueInfo(outer("ids"), idsType, ["batch", 1]),
      makeValueInfo(`${P}eos_table`, DataType.INT32, ["vocab"]),
      makeValueInfo(outer("done"), DataType.INT32, ["batch", 1]),
      ...stateInputs.map((v) => renamed(v, outer(v.name!))),
    ],
    output: [
      makeValueInfo(`${P}out.ids`, idsType, ["batch", 1]),
      makeValueInfo(`${P}out.done`, DataType.INT32, ["batch", 1]),
      ...stateOutputs.map((v) => renamed(v, `${P}out.${v.name}`)),
      makeValueInfo(`${P}tokens`, idsType, ["steps", "batch", 1]),
    ],
    valueInfo: [],
  } as GraphProto;
  return model;
}

export interface DecodeChunk {
  /** tokens[row][i]: the greedy token of step i (rows that ended keep producing tokens: ignore them). */
  tokens: number[][];
  /** State tensors (by state input name) after feeding the input ids and all but the last token. */
  state: Record<string, Tensor>;
}

/** A second ONNX Runtime session that runs the decode loop of a model. */
export class FusedDecoder {
  private eosTables = new Map<string, Tensor>();

  private constructor(
    /** The loop's session (public for benchmarks that time session.run). */
    readonly session: InferenceSession,
    private readonly io: ModelIo,
    private readonly vocab: number,
  ) {}

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

  /** Build the loop from the model file; null (with the reason) when the model does not qualify. */
  static async create(
    onnxPath: string,
    io: ModelIo,
    vocab: number,
    options: InferenceSession.SessionOptions,
  ): Promise<FusedDecoder | { unsupported: string }> {
    const why = fusedDecodeUnsupported(io);
    if (why) return { unsupported: why };
    // Sized before any external data is read: a large model is refused without loading it twice.
    let model = await loadOnnx(onnxPath, { externalData: "verify" });
    const bytes = model.graph!.initializer.reduce((n, t) => n + tensorByteSize(t), 0);
    if (bytes > FUSED_DECODE_MAX_BYTES)
      return { unsupported: "the weights are large: a step outweighs its call" };
    if (model.graph!.initializer.some(isExternal)) model = await loadOnnx(onnxPath);
    const session = await InferenceSession.create(encodeModel(buildDecodeLoop(model, io)), {
      ...options,
      enableProfiling: false,
    });
    return new FusedDecoder(session, io, vocab);
  }

  /**
   * Greedy-decode up to `steps` tokens per row after `ids` (the last token of each row, not yet fed),
   * stopping early once every row has produced one of `eos` (pass [] to never stop early).
   */
  async run(
    ids: readonly number[],
    state: Readonly<Record<string, Tensor>>,
    steps: number,
    eos: readonly number[],
  ): Promise<DecodeChunk> {
    const batch = ids.length;
    const feeds: Record<string, Tensor> = {
      [`${P}steps`]: new Tensor("int64", BigInt64Array.of(BigInt(steps)), []),
      [`${P}in.ids`]: intTensor(this.io.inputIds.type, ids, [batch, 1]),
      [`${P}eos_table`]: this.eosTable(eos),
      [`${P}in.done`]: new Tensor("int32", new Int32Array(batch), [batch, 1]),
    };
    for (const s of this.io.states) feeds[`${P}in.${s.input}`] = state[s.input]!;
    const out = await this.session.run(feeds);
    const next: Record<string, Tensor> = {};
    for (const s of this.io.states) next[s.input] = out[`${P}out.${s.output}`] as Tensor;
    const flat = out[`${P}tokens`] as Tensor;
    const run = flat.dims[0]!;
    const data = flat.data as BigInt64Array | Int32Array;
    const tokens = Array.from({ length: batch }, (_, r) =>
      Array.from({ length: run }, (_, i) => Number(data[i * batch + r]!)),
    );
    return { tokens, state: next };
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }
}
