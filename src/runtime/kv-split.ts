/**
 * A KV cache split in two inside the fused decode loop (issue #17): the prefix the call starts
 * from, which no step copies, and the positions the call adds, which the loop carries.
 *
 * A graph that concatenates past and new position into a new present tensor copies its whole
 * cache every step: inside fused-decode.ts's Loop, transformer-tiny at 2,048 positions copied 12 MB
 * per token. Here the step graph's attention is rewritten so that each layer attends over two
 * parts: the prefix (a value of the Loop's outer graph: read, never copied, by every iteration) and
 * the chunk carried by the loop (empty at the start of a call, one position longer per step, so its
 * Concat copies at most the call's own steps). Per layer:
 *
 *   scores  = Concat(MatMul(q, prefix_k^T), MatMul(q, chunk_k^T))   (then the graph's own scale,
 *             mask and Softmax over all positions, unchanged)
 *   output  = MatMul(p[:prefix], prefix_v) + MatMul(p[prefix:], chunk_v)
 *
 * The loop returns the chunk alone; FusedDecoder.run joins prefix and chunk once per call (rather
 * than once per step) for the state it returns, in memory the caller handed back (CacheBuffers).
 * Scores and softmax are computed as before; only the p.v sum is taken in two parts, a difference
 * in the last bits of the attention output (tokens: tested equal to stepping). Applies to attention
 * exported as PyTorch writes it (Concat(past, new) -> present, Transpose -> MatMul(q, k^T) ->
 * Mul(scale) -> Add(mask) -> Softmax -> MatMul(p, v)), as the house transformer's; anything else
 * keeps the loop's plain Concat.
 *
 * The prefix's keys are read as stored: ONNX Runtime fuses Transpose -> MatMul into one MatMul with
 * a transposed B, which MLAS runs with its one-row kernel as fast as a key cache stored transposed
 * (bench/kv-attention-layouts.ts); the scale stays a Mul after the Concat, since a MatMul that
 * scales (FusedMatMul alpha != 1) leaves that kernel for SGEMM, twice as slow at 2,048 positions.
 */
import { Tensor } from "onnxruntime-node";
import { attr, getAttrInt, getAttrInts, Graph, makeNode, typedToTensor } from "../onnx/index.js";
import type { ModelProto, NodeProto } from "../onnx/types.js";
import type { ModelIo, StateSlot } from "./io.js";

const P = "itera.split."; // prefix of every name this module adds

/** Outer-graph names the rewritten step reads, for the loop built around it (fused-decode.ts). */
export interface SplitKv {
  /** The KV slots (key and value of every layer) whose loop-carried value is the call's chunk. */
  slots: StateSlot[];
  /** The body reads each slot's prefix [batch, heads, past, head] under this name. */
  prefix: (slot: StateSlot) => string;
  /** [1] int64: the prefix's length, for slicing the probabilities. */
  prefixLength: string;
  /** [4] int64: [0, 0, prefix length, 0], added to the shape of a carried chunk to give the whole cache's. */
  prefixOffset: string;
}

/** The one node reading `name`, or undefined when none or several do. */
function soleConsumer(g: Graph, name: string): NodeProto | undefined {
  const c = g.consumers(name);
  return c.length === 1 ? c[0] : undefined;
}

const isTranspose = (n: NodeProto | undefined, perm: number[]) =>
  n?.opType === "Transpose" && getAttrInts(n, "perm")?.map(Number).join() === perm.join();

interface Match {
  key: StateSlot;
  value: StateSlot;
  /** MatMul(q, k^T) over the chunk. */
  qk: NodeProto;
  /** MatMul(p, v) over the chunk. */
  pv: NodeProto;
}

/** Whether only `allowed` nodes and Shape nodes read a value. */
function readOnlyBy(g: Graph, name: string, allowed: NodeProto[]): boolean {
  return g
    .consumers(name)
    .every((n) => allowed.includes(n) || (n.opType === "Shape" && n.attribute.length === 0));
}

/**
 * Match one layer's attention on its two cache slots: key scores MatMul(q, Transpose(present_k))
 * and output MatMul(p, present_v). What lies between (scale, mask, Softmax) works on the whole
 * scores row and is left as it is; Shape nodes reading a cache are adjusted by the caller. Why not,
 * as a string.
 */
function matchAttention(g: Graph, key: StateSlot, value: StateSlot): Match | string {
  const concat = (s: StateSlot) => {
    const c = g.producer(s.output);
    const axis = c ? getAttrInt(c, "axis") : undefined;
    return c?.opType === "Concat" &&
      c.input.length === 2 &&
      c.input[0] === s.input &&
      (axis === 2 || axis === -2)
      ? c
      : undefined;
  };
  const kc = concat(key);
  const vc = concat(value);
  if (!kc || !vc) return `${key.output} or ${value.output} is not Concat(past, new) on axis 2`;
  if (!readOnlyBy(g, key.input, [kc]) || !readOnlyBy(g, value.input, [vc]))
    return "the past cache is read beside its Concat (other than by Shape)";
  const kt = g.consumers(key.output).find((n) => isTranspose(n, [0, 1, 3, 2]));
  const qk = kt ? soleConsumer(g, kt.output[0]!) : undefined;
  if (!kt || qk?.opType !== "MatMul" || qk.input[1] !== kt.output[0])
    return `${key.output} is not read by Transpose(0,1,3,2) -> MatMul(q, k^T)`;
  if (!readOnlyBy(g, key.output, [kt])) return `${key.output} is read elsewhere`;
  const pv = g.consumers(value.output).find((n) => n.opType === "MatMul" && n.input[1] === value.output);
  if (!pv || !readOnlyBy(g, value.output, [pv])) return `${value.output} is not read by one MatMul(p, v)`;
  return { key, value, qk, pv };
}

/** Each layer's attention on its two KV slots (which is key and which value: by the graph); why not. */
function matchLayers(g: Graph, io: ModelIo): Match[] | string {
  const kv = io.states.filter((s) => s.pastAxis !== null);
  const matches: Match[] = [];
  for (const layer of new Set(kv.map((s) => s.layer))) {
    const slots = kv.filter((s) => s.layer === layer);
    if (slots.length !== 2) return `layer ${layer} has ${slots.length} cache tensors, not a key and a value`;
    const [a, b] = slots as [StateSlot, StateSlot];
    const m = matchAttention(g, a, b);
    const swapped = typeof m === "string" ? matchAttention(g, b, a) : m;
    if (typeof swapped === "string") return `layer ${layer}: ${m as string}`;
    matches.push(swapped);
  }
  return matches;
}

/**
 * Rewrite the step graph of `model` (edited in place) to attend over an outer prefix and a carried
 * chunk, or say why it does not apply (the graph is then left as it was).
 */
export function splitKvAttention(
  model: ModelProto,
  io: ModelIo,
  /** The outer-scope name under which the body reads a slot's prefix. */
  prefix: (slot: StateSlot) => string,
): SplitKv | { unsupported: string } {
  const kv = io.states.filter((s) => s.pastAxis !== null);
  if (kv.length === 0) return { unsupported: "the graph has no KV cache" };
  const odd = kv.find((s) => s.pastAxis !== 2 || s.batchAxis !== 0 || s.emptyShape.length !== 4);
  if (odd) return { unsupported: `${odd.input} is not a [batch, heads, past, head] cache` };
  const opset = Number(model.opsetImport.find((o) => !o.domain)?.version ?? 0);
  if (opset < 10) return { unsupported: `the graph's opset ${opset} is below 10 (Slice with inputs)` };
  const g = new Graph(model.graph!);
  const matches = matchLayers(g, io);
  if (typeof matches === "string") return { unsupported: matches };
  const plan: SplitKv = {
    slots: kv,
    prefix,
    prefixLength: `${P}prefix_length`,
    prefixOffset: `${P}prefix_offset`,
  };
  g.addInitializer(typedToTensor(`${P}zero`, [1], BigInt64Array.of(0n)));
  g.addInitializer(typedToTensor(`${P}end`, [1], BigInt64Array.of(BigInt(Number.MAX_SAFE_INTEGER))));
  g.addInitializer(typedToTensor(`${P}last`, [1], BigInt64Array.of(-1n)));
  matches.forEach((m, i) => {
    const { key, value } = m;
    const n = (name: string) => `${P}${i}.${name}`;
    const chunkScores = m.qk.output[0]!;
    m.qk.output[0] = n("chunk_scores");
    const attended = m.pv.output[0]!;
    const probs = m.pv.input[0]!;
    m.pv.output[0] = n("chunk_out");
    m.pv.input[0] = n("p_chunk");
    // Transpose + MatMul in the body: ONNX Runtime fuses them into one MatMul reading k as it is
    g.addNode(
      makeNode("Transpose", [plan.prefix(key)], [n("prefix_kt")], {
        attributes: [attr.ints("perm", [0, 1, 3, 2])],
      }),
    );
    g.addNode(makeNode("MatMul", [m.qk.input[0]!, n("prefix_kt")], [n("prefix_scores")]));
    g.addNode(
      makeNode("Concat", [n("prefix_scores"), n("chunk_scores")], [chunkScores], {
        attributes: [attr.int("axis", -1)],
      }),
    );
    g.addNode(makeNode("Slice", [probs, `${P}zero`, plan.prefixLength, `${P}last`], [n("p_prefix")]));
    g.addNode(makeNode("Slice", [probs, plan.prefixLength, `${P}end`, `${P}last`], [n("p_chunk")]));
    g.addNode(makeNode("MatMul", [n("p_prefix"), plan.prefix(value)], [n("prefix_out")]));
    g.addNode(makeNode("Add", [n("prefix_out"), n("chunk_out")], [attended]));
  });
  // The graph's own Shape of a cache (its length, for the mask and positions) must see the whole
  // cache: the carried chunk's shape plus the prefix's length.
  for (const s of kv) {
    for (const shape of [...g.consumers(s.input), ...g.consumers(s.output)].filter(
      (n) => n.opType === "Shape",
    )) {
      const whole = shape.output[0]!;
      shape.output[0] = `${P}chunk_shape.${whole}`;
      g.addNode(makeNode("Add", [shape.output[0], plan.prefixOffset], [whole]));
    }
  }
  g.topologicalSort();
  return plan;
}

/**
 * The buffers of joined split caches. A whole cache per slot per call is megabytes of fresh memory
 * (12 MB per call for transformer-tiny at 2,048 positions), which costs as much again in page
 * faults as the copy itself; a caller that hands its previous state back (`LoopRun.recycle`) lets
 * the next call write into that memory instead. Capacities are rounded up, so that one buffer
 * serves the several calls of a generation.
 */
export class CacheBuffers {
  private readonly spare: ArrayBuffer[] = [];
  /** Buffers this pool handed out: only these are taken back. */
  private readonly ours = new WeakSet<ArrayBufferLike>();

  constructor(
    /** At most this many spare buffers are kept. */
    private readonly keep: number,
  ) {}

  /** A buffer of at least `bytes`; a new one is rounded up to 256 positions of `positionBytes` each. */
  take(bytes: number, positionBytes: number): ArrayBuffer {
    const i = this.spare.findIndex((b) => b.byteLength >= bytes);
    if (i >= 0) return this.spare.splice(i, 1)[0]!;
    const round = 256 * positionBytes;
    const buffer = new ArrayBuffer(Math.ceil(bytes / round) * round);
    this.ours.add(buffer);
    return buffer;
  }

  /**
   * Take back the buffer under a tensor this pool handed out (others are left alone); beyond `keep`
   * the smallest spares go, so that a cache outgrowing them does not leave the pool full of them.
   */
  give(t: Tensor): void {
    const buffer = (t.data as Float32Array).buffer as ArrayBuffer;
    if (!this.ours.has(buffer) || this.spare.includes(buffer)) return;
    this.spare.push(buffer);
    this.spare.sort((a, b) => b.byteLength - a.byteLength);
    this.spare.length = Math.min(this.spare.length, this.keep);
  }

  /** The spare buffers' sizes in bytes, largest first. */
  get spareBytes(): number[] {
    return this.spare.map((b) => b.byteLength);
  }
}

/**
 * [batch, heads, positions, head] caches joined along the positions (the split cache's prefix and
 * the chunk a call added), in memory from `buffers` when given, as the graph's Concat(past, new) on
 * axis 2 would.
 */
export function joinPositions(prefix: Tensor, chunk: Tensor, buffers?: CacheBuffers): Tensor {
  const [batch, heads, before, head] = prefix.dims as [number, number, number, number];
  const [cb, ch, added, cd] = chunk.dims as [number, number, number, number];
  if (chunk.type !== prefix.type || cb !== batch || ch !== heads || cd !== head)
    throw new Error(
      `cannot join a ${chunk.type} [${chunk.dims}] chunk to a ${prefix.type} [${prefix.dims}] cache`,
    );
  const from = prefix.data as Float32Array;
  const add = chunk.data as Float32Array;
  const Typed = from.constructor as Float32ArrayConstructor;
  const rows = batch * heads;
  const a = before * head;
  const b = added * head;
  const length = rows * (a + b);
  const joined = buffers
    ? new Typed(
        buffers.take(length * Typed.BYTES_PER_ELEMENT, rows * head * Typed.BYTES_PER_ELEMENT),
        0,
        length,
      )
    : new Typed(length);
  for (let r = 0; r < rows; r++) {
    joined.set(from.subarray(r * a, r * a + a), r * (a + b));
    joined.set(add.subarray(r * b, r * b + b), r * (a + b) + a);
  }
  return new Tensor(prefix.type, joined, [batch, heads, before + added, head]);
}
