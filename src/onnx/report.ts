/**
 * What `itera inspect` reports about a model: opsets, inputs/outputs, op histogram, parameters by
 * dtype, state tensors, and an estimate of FLOPs per token.
 *
 * FLOPs rules (a multiply-add counts 2):
 *   MatMul, MatMulInteger, QLinearMatMul, FusedMatMul, MatMulNBits: 2 · elements(output) · K
 *   Gemm: 2 · M · N · K (+ M · N with a bias C)
 *   Conv: 2 · elements(output) · (C_in / group) · prod(kernel) (+ elements(output) with a bias)
 *   Einsum: 2 · product of all label sizes when a label is summed over (1 · for a product without
 *           summation)
 *   com.microsoft GroupQueryAttention, MultiHeadAttention: 4 · batch · sequence · context · hidden
 *           (Q·Kᵀ and the weighted sum of V over the whole context, as the unfused MatMuls count)
 *   com.microsoft MoE, QMoE: per token, k active experts · 2 · (fc1 rows · d_model + d_model · d_ff
 *           (+ d_ff · d_model for fc3)); the dense figure (every expert) is reported beside it
 *   com.microsoft LinearAttention: batch · sequence · d_k · d_v · (2 · max(q heads, kv heads) for the
 *           read-out q·S + per kv head 2 for the update k⊗v, +1 for the decay (gated), +2 for the
 *           delta rule's Sᵀk): 5 · H · d_k · d_v per token for "gated"
 *   com.microsoft CausalConvWithState: 2 · elements(output) · prod(kernel), a depthwise Conv (its
 *           bias and fused SiLU are elementwise)
 *   Gather, com.microsoft GatherBlockQuantized: 0 (a lookup: it moves data, it does no arithmetic)
 * Everything else (elementwise ops, softmax, normalization, and so com.microsoft LinearAttentionGate,
 * QuickGelu, (Skip)SimplifiedLayerNormalization) is left out: for language models it is
 * a few percent of the total. com.microsoft Attention counts its packed QKV projection and the
 * attention over the context; EmbedLayerNormalization is a lookup (0). Ops inside If/Loop/Scan bodies
 * are not counted. Nodes whose shapes
 * cannot be inferred are listed as unresolved, never guessed.
 * "Per token" divides by the number of input ids (input_ids' elements; batch_size · sequence_length
 * when the graph has no input_ids): with the defaults (1, 1, past 0) it is the cost
 * of one decode step on an empty cache.
 */
import { pairStates, type StatePair } from "../model/state.js";
import { getAttrInt, getAttrString } from "./attributes.js";
import { type WeightPrecision, weightPrecision } from "./precision.js";
import {
  einsumSizes,
  inferShapes,
  linearAttentionDims,
  parseEinsum,
  type Shape,
  type ShapeInfo,
} from "./shapes.js";
import { dataTypeName, elementCount, tensorByteSize } from "./tensor.js";
import type { ModelProto, NodeProto, TypeProto, ValueInfoProto } from "./types.js";

/** Values of the usual symbolic dims when the user gives none. */
export const DEFAULT_DIMS: Readonly<Record<string, number>> = {
  batch_size: 1,
  sequence_length: 1,
  past_sequence_length: 0,
};

export interface TensorSignature {
  name: string;
  type: string;
  /** Dims as in the file: numbers, or the symbolic name. */
  shape: (number | string)[] | null;
}

export interface ModelReport {
  irVersion: number;
  producer: string;
  opsets: { domain: string; version: number }[];
  inputs: TensorSignature[];
  outputs: TensorSignature[];
  nodes: number;
  /** Node count per op type ("com.microsoft.Gelu" for other domains), most frequent first. */
  ops: { op: string; count: number }[];
  parameters: {
    elements: number;
    bytes: number;
    byDtype: { dtype: string; tensors: number; elements: number; bytes: number }[];
  };
  states: { pairs: StatePair[]; unpaired: string[] };
  /** the weights' precision, from their dtypes and the quantized ops holding them */
  precision: WeightPrecision;
  flops: FlopsReport;
  /** How many messages carry fields this library's schema does not name (kept as raw bytes). */
  messagesWithUnknownFields: number;
}

export interface FlopsReport {
  dims: Record<string, number>;
  tokens: number;
  total: number;
  perToken: number;
  /** the same with every expert of the MoE/QMoE ops computed (equal to total/perToken without them) */
  dense: { total: number; perToken: number };
  /** `dense`: FLOPs of the op type if every expert ran (MoE/QMoE only) */
  byOp: { op: string; nodes: number; flops: number; dense?: number }[];
  /** Counted op types whose shapes could not be inferred (their FLOPs are missing from the total). */
  unresolved: { node: string; op: string }[];
  /** Symbolic dims of graph inputs that have no value: pass them with --dim name=value. */
  missingDims: string[];
}

function signature(v: ValueInfoProto): TensorSignature {
  const t: TypeProto | undefined = v.type;
  const tensor = t?.tensorType;
  let type = "unknown";
  if (tensor) type = dataTypeName(tensor.elemType ?? 0);
  else if (t?.sequenceType) type = "sequence";
  else if (t?.mapType) type = "map";
  else if (t?.optionalType) type = "optional";
  return {
    name: v.name ?? "",
    type,
    // A dim is its symbolic name, its value, or "?" when the file gives neither.
    shape: tensor?.shape
      ? tensor.shape.dim.map((d) => d.dimParam || (Object.hasOwn(d, "dimValue") ? Number(d.dimValue) : "?"))
      : null,
  };
}

export function opName(n: NodeProto): string {
  const d = n.domain ?? "";
  return d === "" || d === "ai.onnx" ? (n.opType ?? "") : `${d}.${n.opType ?? ""}`;
}

function countUnknown(msg: unknown, seen = new Set<unknown>()): number {
  if (msg === null || typeof msg !== "object" || ArrayBuffer.isView(msg) || seen.has(msg)) return 0;
  seen.add(msg);
  let n = Object.hasOwn(msg, "$unknowns") ? 1 : 0;
  for (const v of Object.values(msg)) {
    if (Array.isArray(v)) {
      if (typeof v[0] === "object") for (const item of v) n += countUnknown(item, seen); // not float_data & co
    } else n += countUnknown(v, seen);
  }
  return n;
}

/** Update passes over the state (2 FLOPs per element each, the decay 1) per LinearAttention update rule. */
const LINEAR_ATTENTION_UPDATE: Record<string, number> = { linear: 2, gated: 3, delta: 4, gated_delta: 5 };

/**
 * FLOPs of a MoE/QMoE node: with the k active experts per token, and with every expert (dense).
 * QMoE's packed weights hold 8/bits values per byte along K.
 */
export function moeFlops(node: NodeProto, info: ShapeInfo): { active: number; dense: number } | undefined {
  const shape = (i: number): Shape | undefined => info.shapes.get(node.input[i] ?? "");
  const quantized = node.opType === "QMoE";
  const pack = quantized ? 8 / getAttrInt(node, "expert_weight_bits", 4) : 1;
  const [x, fc1, fc2] = [shape(0), shape(2), shape(quantized ? 5 : 4)];
  if (!x || fc1?.length !== 3 || fc2?.length !== 3) return undefined;
  const hidden = x[x.length - 1]!;
  const tokens = elementCount(x) / hidden;
  const [experts, fc1Rows] = fc1 as [number, number];
  const inter = fc2[2]! * pack;
  const fc3 = (node.input[quantized ? 8 : 6] ?? "") !== "";
  const perExpert = 2 * hidden * fc1Rows + 2 * inter * hidden + (fc3 ? 2 * inter * hidden : 0);
  const k = Math.min(getAttrInt(node, "k", 1), experts);
  return { active: tokens * k * perExpert, dense: tokens * experts * perExpert };
}

/** FLOPs of one node given inferred shapes; undefined when the shapes needed are unknown. */
export function nodeFlops(node: NodeProto, info: ShapeInfo): number | undefined {
  const shape = (i: number): Shape | undefined => info.shapes.get(node.input[i] ?? "");
  const out = info.shapes.get(node.output[0] ?? "");
  const op = node.opType ?? "";
  switch (op) {
    case "MatMul":
    case "MatMulInteger":
    case "FusedMatMul": {
      const a = shape(0);
      if (!a || !out) return undefined;
      const transA = op === "FusedMatMul" && getAttrInt(node, "transA", 0) === 1 && a.length >= 2;
      return 2 * elementCount(out) * (transA ? a[a.length - 2]! : a[a.length - 1]!);
    }
    case "QLinearMatMul": {
      const a = shape(0);
      return a && out ? 2 * elementCount(out) * a[a.length - 1]! : undefined;
    }
    case "MatMulNBits": {
      const k = getAttrInt(node, "K");
      return k !== undefined && out ? 2 * elementCount(out) * k : undefined;
    }
    case "Gemm": {
      const a = shape(0);
      if (!a || !out || a.length !== 2) return undefined;
      const k = getAttrInt(node, "transA", 0) ? a[0]! : a[1]!;
      return 2 * elementCount(out) * k + (node.input[2] ? elementCount(out) : 0);
    }
    case "Conv": {
      const w = shape(1);
      if (!w || !out) return undefined;
      const perOutput = elementCount(w.slice(1));
      return 2 * elementCount(out) * perOutput + (node.input[2] ? elementCount(out) : 0);
    }
    case "Einsum": {
      const eq = getAttrString(node, "equation") ?? "";
      const sizes = einsumSizes(
        eq,
        node.input.map((_, i) => shape(i)),
      );
      const parsed = parseEinsum(eq);
      if (!sizes || !parsed) return undefined;
      const all = [...sizes.values()].reduce((a, b) => a * b, 1);
      const summed = [...sizes.keys()].some((c) => !parsed.output.includes(c));
      if (parsed.inputs.length === 1) return summed ? all : 0;
      return (summed ? 2 : parsed.inputs.length - 1) * all;
    }
    case "Attention": {
      // com.microsoft Attention (GPT-2/BERT exports): the packed QKV projection it contains, then
      // Q·Kᵀ and the weighted sum of V over the context (the past plus this call's positions)
      const x = shape(0);
      const w = shape(1);
      const present = info.shapes.get(node.output[1] ?? "");
      if (x?.length !== 3 || w?.length !== 2 || out?.length !== 3) return undefined;
      const [batch, seq, hidden] = out as [number, number, number];
      const context = present?.length === 5 ? present[3]! : seq;
      return 2 * batch * seq * w[0]! * w[1]! + 4 * batch * seq * context * hidden;
    }
    case "GroupQueryAttention":
    case "MultiHeadAttention": {
      // Q·Kᵀ and the weighted sum of V over the whole context T, as the unfused MatMuls count.
      const presentKey = info.shapes.get(node.output[1] ?? "");
      const key = shape(1);
      if (out?.length !== 3) return undefined;
      const [batch, seq, hidden] = out as [number, number, number];
      const context = presentKey?.length === 4 ? presentKey[2] : key?.length === 3 ? key[1] : seq;
      return context === undefined ? undefined : 4 * batch * seq * context * hidden;
    }
    case "MoE":
    case "QMoE":
      return moeFlops(node, info)?.active;
    case "LinearAttention": {
      const d = linearAttentionDims(node, [shape(0), shape(1), shape(2)]);
      const update = LINEAR_ATTENTION_UPDATE[getAttrString(node, "update_rule") ?? "gated_delta"];
      if (!d || update === undefined) return undefined;
      return d.batch * d.seq * d.dk * d.dv * (2 * Math.max(d.qHeads, d.kvHeads) + update * d.kvHeads);
    }
    case "CausalConvWithState": {
      // the bias and the fused SiLU are elementwise: left out, as the Add after a MatMul is
      const w = shape(1);
      return w && out ? 2 * elementCount(out) * elementCount(w.slice(2)) : undefined;
    }
    case "Gather":
    case "GatherBlockQuantized":
    case "EmbedLayerNormalization":
      return 0;
    default:
      return undefined;
  }
}

const COUNTED = new Set([
  "MatMul",
  "MatMulInteger",
  "QLinearMatMul",
  "FusedMatMul",
  "MatMulNBits",
  "Gemm",
  "Conv",
  "Einsum",
  "Gather",
  "GatherBlockQuantized",
  "GroupQueryAttention",
  "MultiHeadAttention",
  "Attention",
  "EmbedLayerNormalization",
  "MoE",
  "QMoE",
  "LinearAttention",
  "CausalConvWithState",
]);

/**
 * Dim names exporters use for the usual ones: the house models' "batch"/"sequence", GPT-2's
 * onnxruntime exports' "seq_len"/"past_seq_len"/"total_seq_len", Optimum's and onnxruntime-genai's
 * "sequence_length"/"past_sequence_length"/"total_sequence_length".
 */
const DIM_ALIASES: Readonly<Record<string, readonly string[]>> = {
  batch_size: ["batch", "batch_size"],
  sequence_length: ["sequence", "seq_len", "seq_length", "sequence_length"],
  past_sequence_length: [
    "past_sequence",
    "past_seq_len",
    "past_seq_length",
    "past_length",
    "past_sequence_length",
  ],
  total_sequence_length: ["total_seq_len", "total_seq_length", "total_length", "total_sequence_length"],
};

/** The dims to infer with: the user's (under any alias), the defaults, and every alias of each. */
export function resolveDims(userDims: Record<string, number>): Record<string, number> {
  const dims: Record<string, number> = { ...userDims };
  for (const [name, aliases] of Object.entries(DIM_ALIASES)) {
    const given = aliases.find((a) => userDims[a] !== undefined);
    if (given !== undefined && dims[name] === undefined) dims[name] = userDims[given]!;
  }
  for (const [name, value] of Object.entries(DEFAULT_DIMS)) dims[name] ??= value;
  dims.total_sequence_length ??= dims.past_sequence_length! + dims.sequence_length!;
  for (const [name, aliases] of Object.entries(DIM_ALIASES))
    for (const a of aliases) if (dims[a] === undefined) dims[a] = dims[name]!;
  return dims;
}

/** Estimate FLOPs for the given dim values (defaults: batch 1, sequence 1, empty cache). */
export function estimateFlops(model: ModelProto, userDims: Record<string, number> = {}): FlopsReport {
  const graph = model.graph!;
  const all = resolveDims(userDims);
  const info = inferShapes(graph, all);
  // Report the dims the user gave, the defaults, and the aliases this graph actually uses.
  const used = new Set(
    graph.input.flatMap((i) => i.type?.tensorType?.shape?.dim.map((d) => d.dimParam ?? "") ?? []),
  );
  const dims = Object.fromEntries(
    Object.entries(all).filter(
      ([k]) =>
        userDims[k] !== undefined ||
        DEFAULT_DIMS[k] !== undefined ||
        k === "total_sequence_length" ||
        used.has(k),
    ),
  );
  const byOp = new Map<string, { nodes: number; flops: number; dense: number }>();
  const unresolved: FlopsReport["unresolved"] = [];
  for (const node of graph.node) {
    if (!COUNTED.has(node.opType ?? "")) continue;
    let f: number | undefined;
    let dense: number | undefined;
    try {
      f = nodeFlops(node, info);
      dense = node.opType === "MoE" || node.opType === "QMoE" ? moeFlops(node, info)?.dense : f;
    } catch {
      f = undefined; // attributes that break the op's schema: listed as unresolved
    }
    const op = opName(node);
    if (f === undefined) {
      unresolved.push({ node: node.name || node.output[0] || "", op });
      continue;
    }
    const entry = byOp.get(op) ?? { nodes: 0, flops: 0, dense: 0 };
    entry.nodes++;
    entry.flops += f;
    entry.dense += dense ?? f;
    byOp.set(op, entry);
  }
  const total = [...byOp.values()].reduce((a, b) => a + b.flops, 0);
  const denseTotal = [...byOp.values()].reduce((a, b) => a + b.dense, 0);
  // Per token: per input id when the graph has them, else batch_size · sequence_length.
  const ids = info.shapes.get("input_ids");
  const tokens = ids ? elementCount(ids) : (dims.batch_size ?? 1) * (dims.sequence_length ?? 1);
  const perToken = (x: number) => (tokens > 0 ? x / tokens : 0);
  return {
    dims,
    tokens,
    total,
    perToken: perToken(total),
    dense: { total: denseTotal, perToken: perToken(denseTotal) },
    byOp: [...byOp.entries()]
      .map(([op, e]) => ({
        op,
        nodes: e.nodes,
        flops: e.flops,
        ...(e.dense !== e.flops ? { dense: e.dense } : {}),
      }))
      .sort((a, b) => b.flops - a.flops),
    unresolved,
    missingDims: [...info.missingDims].sort(),
  };
}

/** The report of a decoded model (external tensors need not be loaded: only their dims are used). */
export function analyzeModel(model: ModelProto, dims: Record<string, number> = {}): ModelReport {
  const graph = model.graph!;
  const initNames = new Set(graph.initializer.map((t) => t.name ?? ""));
  const inputs = graph.input.filter((v) => !initNames.has(v.name ?? "")).map(signature);
  const outputs = graph.output.map(signature);

  const ops = new Map<string, number>();
  for (const n of graph.node) ops.set(opName(n), (ops.get(opName(n)) ?? 0) + 1);

  const byDtype = new Map<string, { tensors: number; elements: number; bytes: number }>();
  for (const t of graph.initializer) {
    const dtype = dataTypeName(t.dataType ?? 0);
    const e = byDtype.get(dtype) ?? { tensors: 0, elements: 0, bytes: 0 };
    e.tensors++;
    e.elements += elementCount(t.dims);
    e.bytes += tensorByteSize(t);
    byDtype.set(dtype, e);
  }
  const dtypes = [...byDtype.entries()]
    .map(([dtype, e]) => ({ dtype, ...e }))
    .sort((a, b) => b.bytes - a.bytes);

  return {
    irVersion: Number(model.irVersion ?? 0),
    producer: [model.producerName, model.producerVersion].filter(Boolean).join(" "),
    opsets: model.opsetImport.map((o) => ({
      domain: o.domain || "ai.onnx",
      version: Number(o.version ?? 0),
    })),
    inputs,
    outputs,
    nodes: graph.node.length,
    ops: [...ops.entries()]
      .map(([op, count]) => ({ op, count }))
      .sort((a, b) => b.count - a.count || a.op.localeCompare(b.op)),
    parameters: {
      elements: dtypes.reduce((a, b) => a + b.elements, 0),
      bytes: dtypes.reduce((a, b) => a + b.bytes, 0),
      byDtype: dtypes,
    },
    precision: weightPrecision(model),
    states: pairStates(
      inputs.map((i) => i.name),
      outputs.map((o) => o.name),
    ),
    flops: estimateFlops(model, dims),
    messagesWithUnknownFields: countUnknown(model),
  };
}
