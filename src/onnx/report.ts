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
 *   Gather, com.microsoft GatherBlockQuantized: 0 (a lookup: it moves data, it does no arithmetic)
 * Everything else (elementwise ops, softmax, normalization) is left out: for language models it is
 * a few percent of the total. The older com.microsoft Attention op is not counted, nor ops inside
 * If/Loop/Scan bodies. Nodes whose shapes
 * cannot be inferred are listed as unresolved, never guessed.
 * "Per token" divides by batch_size · sequence_length: with the defaults (1, 1, past 0) it is the cost
 * of one decode step on an empty cache.
 */
import { pairStates, type StatePair } from "../model/state.js";
import { getAttrInt, getAttrString } from "./attributes.js";
import { einsumSizes, inferShapes, parseEinsum, type Shape, type ShapeInfo } from "./shapes.js";
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
  flops: FlopsReport;
  /** How many messages carry fields this library's schema does not name (kept as raw bytes). */
  messagesWithUnknownFields: number;
}

export interface FlopsReport {
  dims: Record<string, number>;
  tokens: number;
  total: number;
  perToken: number;
  byOp: { op: string; nodes: number; flops: number }[];
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
    case "Gather":
    case "GatherBlockQuantized":
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
]);

/** Estimate FLOPs for the given dim values (defaults: batch 1, sequence 1, empty cache). */
export function estimateFlops(model: ModelProto, userDims: Record<string, number> = {}): FlopsReport {
  const dims: Record<string, number> = { ...DEFAULT_DIMS, ...userDims };
  if (dims.total_sequence_length === undefined)
    dims.total_sequence_length = (dims.past_sequence_length ?? 0) + (dims.sequence_length ?? 1);
  const graph = model.graph!;
  const info = inferShapes(graph, dims);
  const byOp = new Map<string, { nodes: number; flops: number }>();
  const unresolved: FlopsReport["unresolved"] = [];
  for (const node of graph.node) {
    if (!COUNTED.has(node.opType ?? "")) continue;
    let f: number | undefined;
    try {
      f = nodeFlops(node, info);
    } catch {
      f = undefined; // attributes that break the op's schema: listed as unresolved
    }
    const op = opName(node);
    if (f === undefined) {
      unresolved.push({ node: node.name || node.output[0] || "", op });
      continue;
    }
    const entry = byOp.get(op) ?? { nodes: 0, flops: 0 };
    entry.nodes++;
    entry.flops += f;
    byOp.set(op, entry);
  }
  const total = [...byOp.values()].reduce((a, b) => a + b.flops, 0);
  const tokens = (dims.batch_size ?? 1) * (dims.sequence_length ?? 1);
  return {
    dims,
    tokens,
    total,
    perToken: tokens > 0 ? total / tokens : 0,
    byOp: [...byOp.entries()].map(([op, e]) => ({ op, ...e })).sort((a, b) => b.flops - a.flops),
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
    states: pairStates(
      inputs.map((i) => i.name),
      outputs.map((o) => o.name),
    ),
    flops: estimateFlops(model, dims),
    messagesWithUnknownFields: countUnknown(model),
  };
}
