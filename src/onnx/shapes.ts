/**
 * Shape inference with concrete dims: once every symbolic dim has a value (batch_size=1, ...), each
 * tensor of the graph gets a concrete shape, and small integer tensors (the Shape → Gather → Concat →
 * Reshape chains exporters emit) get concrete values, so that Reshape/Expand/Slice targets resolve.
 *
 * Covered: the elementwise, normalization and activation ops (output = input shape or broadcast),
 * MatMul (+ MatMulInteger, QLinearMatMul, com.microsoft FusedMatMul/MatMulNBits), Gemm, Conv, Gather
 * (+ com.microsoft GatherBlockQuantized), DynamicQuantizeLinear, com.microsoft GroupQueryAttention,
 * MultiHeadAttention, Attention and Skip(Simplified)LayerNormalization, the state-space/linear-
 * attention ops (com.microsoft CausalConvWithState, LinearAttention, LinearAttentionGate) and the
 * mixture-of-experts ops (com.microsoft MoE, QMoE), the pools, Pad,
 * Einsum, Shape, Reshape, Flatten, (Un)Squeeze, Concat, Slice, Split, Transpose, Expand, Tile,
 * ConstantOfShape, Range, Reduce*, Constant. Where no rule applies, a value_info/graph-output shape
 * whose symbolic dims all have values is used; otherwise the value stays unknown (control flow such as
 * If/Loop/Scan, and most contrib ops beyond those named).
 */
import { findAttr, getAttrInt, getAttrInts, getAttrString } from "./attributes.js";
import { topologicalOrder } from "./graph.js";
import { DataType, elementCount, isExternal, tensorToTyped } from "./tensor.js";
import type { GraphProto, NodeProto, TensorProto, TypeProto } from "./types.js";

export type Shape = number[];

export interface ShapeInfo {
  /** Concrete shape of every value whose shape could be inferred. */
  shapes: Map<string, Shape>;
  /** Concrete contents of small integer tensors (at most MAX_VALUE_ELEMENTS elements). */
  values: Map<string, number[]>;
  /** Symbolic dims met on graph inputs that had no value (their tensors stay unknown). */
  missingDims: Set<string>;
}

const MAX_VALUE_ELEMENTS = 64;

/** The shape of a graph input/output type with symbolic dims replaced from `dims`; undefined if any is unknown. */
export function concreteShape(
  type: TypeProto | undefined,
  dims: Record<string, number>,
  missing?: Set<string>,
): Shape | undefined {
  const shape = type?.tensorType?.shape;
  if (!shape) return undefined;
  const out: Shape = [];
  for (const d of shape.dim) {
    if (d.dimParam) {
      const v = dims[d.dimParam] ?? dimExpression(d.dimParam, dims, missing);
      if (v === undefined) {
        if (!/[+-]/.test(d.dimParam)) missing?.add(d.dimParam);
        return undefined;
      }
      out.push(v);
    } else if (d.dimValue !== undefined && Object.hasOwn(d, "dimValue")) out.push(Number(d.dimValue));
    else return undefined;
  }
  return out;
}

/**
 * A dim written as a sum, as Optimum and onnxruntime exports write some ("past_sequence_length + 1",
 * "total_seq_len - 1"): each term a dim name or an integer; a term without a value is reported missing.
 */
function dimExpression(
  expr: string,
  dims: Record<string, number>,
  missing?: Set<string>,
): number | undefined {
  const terms = expr.match(/[+-]?\s*[^+\s-][^+-]*/g);
  if (!terms || terms.length < 2) return undefined;
  let total = 0;
  for (const raw of terms) {
    const sign = raw.trim().startsWith("-") ? -1 : 1;
    const name = raw.replace(/^[+-]?\s*/, "").trim();
    const v = /^\d+$/.test(name) ? Number(name) : dims[name];
    if (v === undefined) {
      missing?.add(name);
      return undefined;
    }
    total += sign * v;
  }
  return total;
}

function isIntType(t: number | undefined): boolean {
  return t === DataType.INT64 || t === DataType.INT32;
}

function tensorValue(t: TensorProto): number[] | undefined {
  if (!isIntType(t.dataType) || isExternal(t) || elementCount(t.dims) > MAX_VALUE_ELEMENTS) return undefined;
  return Array.from(tensorToTyped(t), Number);
}

/** Numpy-style broadcast of several shapes; undefined when they do not broadcast. */
export function broadcast(...shapes: Shape[]): Shape | undefined {
  const rank = Math.max(0, ...shapes.map((s) => s.length));
  const out: Shape = [];
  for (let i = 0; i < rank; i++) {
    let d = 1;
    for (const s of shapes) {
      const v = s[s.length - rank + i] ?? 1;
      if (v === 1) continue;
      if (d !== 1 && d !== v) return undefined;
      d = v;
    }
    out.push(d);
  }
  return out;
}

const SAME_SHAPE = new Set([
  "Identity",
  "Cast",
  "CastLike",
  "Relu",
  "LeakyRelu",
  "Elu",
  "Selu",
  "Gelu",
  "FastGelu",
  "QuickGelu",
  "BiasGelu",
  "Erf",
  "Sqrt",
  "Reciprocal",
  "Tanh",
  "Sigmoid",
  "HardSigmoid",
  "HardSwish",
  "Softplus",
  "Softsign",
  "Mish",
  "Neg",
  "Abs",
  "Exp",
  "Log",
  "Sin",
  "Cos",
  "Not",
  "IsNaN",
  "IsInf",
  "Sign",
  "Round",
  "Floor",
  "Ceil",
  "Clip",
  "Softmax",
  "LogSoftmax",
  "Dropout",
  "LayerNormalization",
  "SimplifiedLayerNormalization",
  "RMSNormalization",
  "BatchNormalization",
  "InstanceNormalization",
  "GroupNormalization",
  "Trilu",
  "CumSum",
  "DequantizeLinear",
  "QuantizeLinear",
  "RotaryEmbedding",
  "LinearAttentionGate",
  "MoE",
  "QMoE",
  "Celu",
  "ThresholdedRelu",
  "Shrink",
]);

const BROADCAST = new Set([
  "Add",
  "Sub",
  "Mul",
  "Div",
  "Pow",
  "Max",
  "Min",
  "Mean",
  "Sum",
  "Equal",
  "Less",
  "Greater",
  "LessOrEqual",
  "GreaterOrEqual",
  "And",
  "Or",
  "Xor",
  "Mod",
  "Where",
  "PRelu",
  "BitShift",
  "BitwiseAnd",
  "BitwiseOr",
]);

const MATMUL_LIKE = new Set(["MatMul", "MatMulInteger", "FusedMatMul"]);

/** Output shape of numpy matmul semantics (1-D operands promoted and their axis removed). */
export function matmulShape(a: Shape, b: Shape): Shape | undefined {
  if (a.length === 0 || b.length === 0) return undefined;
  const a2 = a.length === 1 ? [1, a[0]!] : a;
  const b2 = b.length === 1 ? [b[0]!, 1] : b;
  if (a2[a2.length - 1] !== b2[b2.length - 2]) return undefined;
  const batch = broadcast(a2.slice(0, -2), b2.slice(0, -2));
  if (!batch) return undefined;
  const out = [...batch];
  if (a.length > 1) out.push(a2[a2.length - 2]!);
  if (b.length > 1) out.push(b2[b2.length - 1]!);
  return out;
}

function normAxis(axis: number, rank: number): number {
  return axis < 0 ? axis + rank : axis;
}

function binaryValue(op: string, x: number, y: number): number | undefined {
  switch (op) {
    case "Add":
      return x + y;
    case "Sub":
      return x - y;
    case "Mul":
      return x * y;
    case "Div":
      return y === 0 ? undefined : Math.trunc(x / y);
    case "Max":
      return Math.max(x, y);
    case "Min":
      return Math.min(x, y);
    case "Equal":
      return x === y ? 1 : 0;
    case "Less":
      return x < y ? 1 : 0;
    case "Greater":
      return x > y ? 1 : 0;
    default:
      return undefined;
  }
}

/** Parse "ij,jk->ik" into operand label lists and output labels (implicit output: sorted once-only labels). */
export function parseEinsum(equation: string): { inputs: string[]; output: string } | undefined {
  const eq = equation.replace(/\s/g, "");
  if (eq.includes("...")) return undefined;
  const [lhs, rhs] = eq.split("->");
  const inputs = (lhs ?? "").split(",");
  let output = rhs;
  if (output === undefined) {
    const counts = new Map<string, number>();
    for (const c of inputs.join("")) counts.set(c, (counts.get(c) ?? 0) + 1);
    output = [...counts.entries()]
      .filter(([, n]) => n === 1)
      .map(([c]) => c)
      .sort()
      .join("");
  }
  return { inputs, output };
}

/** Sizes of each einsum label from the operand shapes; undefined when shapes are missing or disagree. */
export function einsumSizes(
  equation: string,
  shapes: (Shape | undefined)[],
): Map<string, number> | undefined {
  const parsed = parseEinsum(equation);
  if (!parsed) return undefined;
  const sizes = new Map<string, number>();
  for (let i = 0; i < parsed.inputs.length; i++) {
    const labels = parsed.inputs[i]!;
    const shape = shapes[i];
    if (!shape || shape.length !== labels.length) return undefined;
    for (let k = 0; k < labels.length; k++) {
      const prev = sizes.get(labels[k]!);
      const d = shape[k]!;
      if (prev !== undefined && prev !== d && prev !== 1 && d !== 1) return undefined;
      sizes.set(labels[k]!, Math.max(prev ?? 1, d));
    }
  }
  return sizes;
}

/** Infer shapes (and small integer values) through a graph for the given symbolic dim values. */
export function inferShapes(graph: GraphProto, dims: Record<string, number>): ShapeInfo {
  const shapes = new Map<string, Shape>();
  const values = new Map<string, number[]>();
  const missingDims = new Set<string>();
  const declared = new Map<string, TypeProto | undefined>();
  for (const v of [...graph.valueInfo, ...graph.output]) declared.set(v.name ?? "", v.type);

  const elemTypes = new Map<string, number | undefined>();
  for (const v of graph.input) elemTypes.set(v.name ?? "", v.type?.tensorType?.elemType);
  for (const t of graph.initializer) {
    const name = t.name ?? "";
    elemTypes.set(name, t.dataType);
    shapes.set(name, t.dims.map(Number));
    const v = tensorValue(t);
    if (v) values.set(name, v);
  }
  for (const input of graph.input) {
    const name = input.name ?? "";
    if (shapes.has(name)) continue; // an initializer listed as input (IR < 4)
    const s = concreteShape(input.type, dims, missingDims);
    if (s) shapes.set(name, s);
  }

  for (const node of topologicalOrder(graph.node)) {
    const inShapes = node.input.map((n) => (n === "" ? undefined : shapes.get(n)));
    const inValues = node.input.map((n) => values.get(n));
    let out: NodeResult;
    try {
      out = inferNode(node, inShapes, inValues, (name) => elemTypes.get(name));
    } catch {
      out = { shapes: [], values: [] }; // a node that breaks its op's schema: its outputs stay unknown
    }
    node.output.forEach((name, i) => {
      if (name === "") return;
      const shape = out.shapes[i] ?? concreteShape(declared.get(name), dims);
      if (shape) shapes.set(name, shape);
      const value = out.values[i];
      if (value && value.length <= MAX_VALUE_ELEMENTS) values.set(name, value);
    });
  }
  return { shapes, values, missingDims };
}

interface NodeResult {
  shapes: (Shape | undefined)[];
  values: (number[] | undefined)[];
}

function inferNode(
  node: NodeProto,
  s: (Shape | undefined)[],
  v: (number[] | undefined)[],
  elemType: (name: string) => number | undefined,
): NodeResult {
  const op = node.opType ?? "";
  const one = (shape: Shape | undefined, value?: number[]): NodeResult => ({
    shapes: [shape],
    values: [value],
  });
  const x = s[0];

  if (op === "Constant") {
    const t = findAttr(node, "value")?.t;
    if (t) return one(t.dims.map(Number), tensorValue(t));
    const ints = getAttrInts(node, "value_ints");
    if (ints) return one([ints.length], ints);
    const i = getAttrInt(node, "value_int");
    if (i !== undefined) return one([], [i]);
    const floats = findAttr(node, "value_floats")?.floats;
    if (floats) return one([floats.length]);
    if (findAttr(node, "value_float")) return one([]);
    return one(undefined);
  }
  if (SAME_SHAPE.has(op)) {
    const value = op === "Identity" || op === "Cast" ? v[0] : op === "Neg" ? v[0]?.map((a) => -a) : undefined;
    const shapes: (Shape | undefined)[] = [x];
    return { shapes, values: [value] };
  }
  if (BROADCAST.has(op)) {
    if (s.some((d) => d === undefined)) return one(undefined);
    const shape = broadcast(...(s as Shape[]));
    let value: number[] | undefined;
    if (shape && shape.length <= 1 && v.every((a) => a !== undefined)) {
      const n = elementCount(shape);
      const at = (a: number[], i: number) => (a.length === 1 ? a[0]! : a[i]!);
      if (op === "Where")
        value = Array.from({ length: n }, (_, i) => (at(v[0]!, i) ? at(v[1]!, i) : at(v[2]!, i)));
      else if (v.length === 2) {
        const r = Array.from({ length: n }, (_, i) => binaryValue(op, at(v[0]!, i), at(v[1]!, i)));
        if (r.every((a) => a !== undefined)) value = r as number[];
      }
    }
    return one(shape, value);
  }
  if (MATMUL_LIKE.has(op)) {
    if (!x || !s[1]) return one(undefined);
    const tA = op === "FusedMatMul" && getAttrInt(node, "transA", 0) ? swapLast(x) : x;
    const tB = op === "FusedMatMul" && getAttrInt(node, "transB", 0) ? swapLast(s[1]) : s[1];
    return one(matmulShape(tA, tB));
  }
  switch (op) {
    case "QLinearMatMul":
      return one(x && s[3] ? matmulShape(x, s[3]) : undefined);
    case "GroupQueryAttention":
    case "MultiHeadAttention":
    case "Attention":
      return attentionShapes(op, node, s);
    case "EmbedLayerNormalization": {
      // output and embedding_sum [batch, sequence, hidden] (hidden from word_embedding), mask_index [batch]
      const ids = x;
      const hidden = s[2]?.[1];
      if (ids?.length !== 2 || hidden === undefined) return { shapes: [], values: [] };
      const h = [ids[0]!, ids[1]!, hidden];
      return { shapes: [h, [ids[0]!], h], values: [] };
    }
    case "SkipLayerNormalization":
    case "SkipSimplifiedLayerNormalization":
      // output, mean, inv_std_var, input_skip_bias_sum: the first and the last have the input's shape.
      return { shapes: node.output.map((_, i) => (i === 0 || i === 3 ? x : undefined)), values: [] };
    case "DynamicQuantizeLinear":
      return { shapes: [x, [], []], values: [] };
    case "CausalConvWithState":
      return causalConvShapes(node, s);
    case "LinearAttention":
      return linearAttentionShapes(node, s);
    case "GatherBlockQuantized": {
      // com.microsoft: a Gather whose data is block-quantized along quantize_axis; with uint8 data
      // (elem type from the initializer) each byte packs 8/bits values along that axis.
      if (!x || !s[1]) return one(undefined);
      const qAxis = normAxis(getAttrInt(node, "quantize_axis", x.length - 1), x.length);
      const packed = elemType(node.input[0] ?? "") === DataType.UINT8 ? 8 / getAttrInt(node, "bits", 4) : 1;
      const data = x.map((d, i) => (i === qAxis ? d * packed : d));
      const axis = normAxis(getAttrInt(node, "gather_axis", 0), x.length);
      return one([...data.slice(0, axis), ...s[1], ...data.slice(axis + 1)]);
    }
    case "MatMulNBits": {
      const n = getAttrInt(node, "N");
      return one(x && n !== undefined ? [...x.slice(0, -1), n] : undefined);
    }
    case "Gemm": {
      if (!x || !s[1] || x.length !== 2 || s[1].length !== 2) return one(undefined);
      const m = getAttrInt(node, "transA", 0) ? x[1]! : x[0]!;
      const n = getAttrInt(node, "transB", 0) ? s[1][0]! : s[1][1]!;
      return one([m, n]);
    }
    case "Conv":
      return one(x && s[1] ? convShape(node, x, s[1]) : undefined);
    case "MaxPool":
    case "AveragePool":
    case "LpPool": {
      const kernel = getAttrInts(node, "kernel_shape");
      return one(x && kernel ? convShape(node, x, [x[1]!, 1, ...kernel]) : undefined);
    }
    case "GlobalAveragePool":
    case "GlobalMaxPool":
    case "GlobalLpPool":
      return one(x ? x.map((d, i) => (i < 2 ? d : 1)) : undefined);
    case "Pad": {
      const pads = getAttrInts(node, "pads") ?? v[1];
      if (!x || !pads) return one(undefined);
      const axes = (v[3] ?? x.map((_, i) => i)).map((a) => normAxis(a, x.length));
      const shape = [...x];
      axes.forEach((a, k) => {
        shape[a] = x[a]! + pads[k]! + pads[k + axes.length]!;
      });
      return one(shape);
    }
    case "Gather": {
      if (!x || !s[1]) return one(undefined);
      const axis = normAxis(getAttrInt(node, "axis", 0), x.length);
      const shape = [...x.slice(0, axis), ...s[1], ...x.slice(axis + 1)];
      let value: number[] | undefined;
      if (x.length === 1 && v[0] && v[1]) value = v[1].map((i) => v[0]![i < 0 ? i + x[0]! : i]!);
      return one(shape, value?.every((a) => a !== undefined) ? value : undefined);
    }
    case "Shape": {
      if (!x) return one(undefined);
      const rank = x.length;
      const start = normAxis(getAttrInt(node, "start", 0), rank);
      const endAttr = getAttrInt(node, "end");
      const end = endAttr === undefined ? rank : normAxis(endAttr, rank);
      const value = x.slice(Math.max(0, start), Math.min(rank, end));
      return one([value.length], value);
    }
    case "Size":
      return one([], x ? [elementCount(x)] : undefined);
    case "Reshape": {
      if (!x || !v[1]) return one(undefined);
      const allowZero = getAttrInt(node, "allowzero", 0) === 1;
      const target = v[1].map((d, i) => (d === 0 && !allowZero ? (x[i] ?? 0) : d));
      const known = target.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
      const shape = target.map((d) => (d === -1 ? (known === 0 ? 0 : elementCount(x) / known) : d));
      return one(shape, v[0]);
    }
    case "Flatten": {
      if (!x) return one(undefined);
      const axis = normAxis(getAttrInt(node, "axis", 1), x.length);
      return one([elementCount(x.slice(0, axis)), elementCount(x.slice(axis))]);
    }
    case "Unsqueeze": {
      const axes = getAttrInts(node, "axes") ?? v[1];
      if (!x || !axes) return one(undefined);
      const rank = x.length + axes.length;
      const set = new Set(axes.map((a) => normAxis(a, rank)));
      const shape: Shape = [];
      let k = 0;
      for (let i = 0; i < rank; i++) shape.push(set.has(i) ? 1 : x[k++]!);
      return one(shape, v[0]);
    }
    case "Squeeze": {
      if (!x) return one(undefined);
      const axes = getAttrInts(node, "axes") ?? v[1];
      const set = new Set(
        (axes ?? x.flatMap((d, i) => (d === 1 ? [i] : []))).map((a) => normAxis(a, x.length)),
      );
      return one(
        x.filter((_, i) => !set.has(i)),
        v[0],
      );
    }
    case "Concat": {
      if (s.some((d) => d === undefined) || !x) return one(undefined);
      const axis = normAxis(getAttrInt(node, "axis", 0), x.length);
      const shape = [...x];
      shape[axis] = (s as Shape[]).reduce((sum, d) => sum + (d[axis] ?? 0), 0);
      const value = x.length === 1 && v.every((a) => a !== undefined) ? (v as number[][]).flat() : undefined;
      return one(shape, value);
    }
    case "Slice":
      return sliceNode(node, x, v);
    case "Split": {
      if (!x) return one(undefined);
      const axis = normAxis(getAttrInt(node, "axis", 0), x.length);
      const count = node.output.length;
      const sizes =
        getAttrInts(node, "split") ??
        v[1] ??
        Array.from({ length: count }, (_, i) => {
          const each = Math.ceil(x[axis]! / count);
          return Math.max(0, Math.min(each, x[axis]! - i * each));
        });
      return {
        shapes: sizes.map((n) => x.map((d, i) => (i === axis ? n : d))),
        values: [],
      };
    }
    case "Transpose": {
      if (!x) return one(undefined);
      const perm = getAttrInts(node, "perm") ?? x.map((_, i) => x.length - 1 - i);
      return one(perm.map((p) => x[p]!));
    }
    case "Expand":
      return one(x && v[1] ? broadcast(x, v[1]) : undefined);
    case "Tile":
      return one(x && v[1] ? x.map((d, i) => d * v[1]![i]!) : undefined);
    case "ConstantOfShape": {
      if (!v[0]) return one(undefined);
      const fill = findAttr(node, "value")?.t;
      const f = fill ? tensorValue(fill)?.[0] : 0;
      const n = elementCount(v[0]);
      return one([...v[0]], f !== undefined && n <= MAX_VALUE_ELEMENTS ? new Array(n).fill(f) : undefined);
    }
    case "Range": {
      if (!v[0] || !v[1] || !v[2] || v[2][0] === 0) return one(undefined);
      const [start, limit, delta] = [v[0][0]!, v[1][0]!, v[2][0]!];
      const n = Math.max(0, Math.ceil((limit - start) / delta));
      return one(
        [n],
        n <= MAX_VALUE_ELEMENTS ? Array.from({ length: n }, (_, i) => start + i * delta) : undefined,
      );
    }
    case "Einsum": {
      const eq = getAttrString(node, "equation") ?? "";
      const sizes = einsumSizes(eq, s);
      const parsed = parseEinsum(eq);
      return one(sizes && parsed ? [...parsed.output].map((c) => sizes.get(c) ?? 1) : undefined);
    }
  }
  if (op.startsWith("Reduce") || op === "ArgMax" || op === "ArgMin") {
    if (!x) return one(undefined);
    const keep = getAttrInt(node, "keepdims", 1) === 1;
    const single = getAttrInt(node, "axis");
    const axes = single !== undefined ? [single] : (getAttrInts(node, "axes") ?? v[1]);
    const set = new Set(
      (axes && axes.length > 0 ? axes : x.map((_, i) => i)).map((a) => normAxis(a, x.length)),
    );
    if (axes?.length === 0 && getAttrInt(node, "noop_with_empty_axes", 0) === 1) return one(x);
    return one(keep ? x.map((d, i) => (set.has(i) ? 1 : d)) : x.filter((_, i) => !set.has(i)));
  }
  return { shapes: [], values: [] };
}

/**
 * com.microsoft attention ops (onnxruntime-genai's model builder emits GroupQueryAttention): the
 * output is [batch, sequence, heads * head_size]; GroupQueryAttention's present key/value are
 * [batch, kv_heads, past + sequence, head_size].
 */
function attentionShapes(op: string, node: NodeProto, s: (Shape | undefined)[]): NodeResult {
  const q = s[0];
  if (q?.length !== 3) return { shapes: [], values: [] };
  const [batch, seq, qHidden] = q as [number, number, number];
  if (op === "Attention") {
    const hidden = getAttrInts(node, "qkv_hidden_sizes")?.[2] ?? (s[1] ? s[1][1]! / 3 : undefined);
    // the fused cache past [2, batch, heads, past, head] grows by this call's positions into present
    const past = s[4];
    const present: Shape | undefined =
      past?.length === 5 ? [past[0]!, past[1]!, past[2]!, past[3]! + seq, past[4]!] : undefined;
    return { shapes: [hidden === undefined ? undefined : [batch, seq, hidden], present], values: [] };
  }
  if (op === "MultiHeadAttention") {
    const v = s[2];
    return { shapes: [[batch, seq, v && v.length === 3 ? v[2]! : qHidden]], values: [] };
  }
  const heads = getAttrInt(node, "num_heads", 1);
  const kvHeads = getAttrInt(node, "kv_num_heads", heads);
  const packed = !node.input[1]; // query, key and value packed in one input
  const headSize = packed ? qHidden / (heads + 2 * kvHeads) : qHidden / heads;
  const past = s[3];
  const present: Shape | undefined =
    past && past.length === 4 ? [batch, kvHeads, past[2]! + seq, headSize] : undefined;
  return { shapes: [[batch, seq, heads * headSize], present, present], values: [] };
}

/**
 * com.microsoft CausalConvWithState: the output has the input's shape; the carry state keeps
 * (k - 1)·dilation positions: [batch, channels, L] (channels-first) or [batch, L, ...channels]
 * (channels_last), as past_state has when given.
 */
function causalConvShapes(node: NodeProto, s: (Shape | undefined)[]): NodeResult {
  const [x, w, , past] = s;
  let state = past;
  if (!state && x && w && w.length >= 3) {
    const length = (w[2]! - 1) * getAttrInt(node, "dilation", 1);
    state = getAttrInt(node, "channels_last", 0) ? [x[0]!, length, ...x.slice(2)] : [x[0]!, x[1]!, length];
  }
  return { shapes: [x, state], values: [] };
}

/**
 * com.microsoft LinearAttention (state_window 0): query [B, T, q_num_heads·d_k], key [B, T, heads·d_k]
 * (kv_num_heads, or fewer heads shared as the house models' single key head), value
 * [B, T, kv_num_heads·d_v]; output [B, T, max(q_num_heads, kv_num_heads)·d_v]; state
 * [B, kv_num_heads, d_k, d_v]. d_k is taken from the query, as the operator does.
 */
export function linearAttentionDims(
  node: NodeProto,
  s: (Shape | undefined)[],
): { batch: number; seq: number; qHeads: number; kvHeads: number; dk: number; dv: number } | undefined {
  const [q, k, v] = s;
  if (q?.length !== 3 || k?.length !== 3 || v?.length !== 3) return undefined;
  const qHeads = getAttrInt(node, "q_num_heads", 1);
  const kvHeads = getAttrInt(node, "kv_num_heads", 1);
  return { batch: q[0]!, seq: q[1]!, qHeads, kvHeads, dk: q[2]! / qHeads, dv: v[2]! / kvHeads };
}

function linearAttentionShapes(node: NodeProto, s: (Shape | undefined)[]): NodeResult {
  const d = linearAttentionDims(node, s);
  if (!d) return { shapes: [], values: [] };
  const out = [d.batch, d.seq, Math.max(d.qHeads, d.kvHeads) * d.dv];
  return { shapes: [out, s[3] ?? [d.batch, d.kvHeads, d.dk, d.dv]], values: [] };
}

function swapLast(s: Shape): Shape {
  if (s.length < 2) return s;
  return [...s.slice(0, -2), s[s.length - 1]!, s[s.length - 2]!];
}

/** Output shape of Conv (w: the weight's shape) and of the pools (w: [channels, 1, ...kernel]). */
function convShape(node: NodeProto, x: Shape, w: Shape): Shape | undefined {
  const spatial = x.length - 2;
  if (spatial < 1 || w.length !== x.length) return undefined;
  const kernel = getAttrInts(node, "kernel_shape") ?? w.slice(2);
  const strides = getAttrInts(node, "strides") ?? new Array(spatial).fill(1);
  const dilations = getAttrInts(node, "dilations") ?? new Array(spatial).fill(1);
  const pads = getAttrInts(node, "pads") ?? new Array(2 * spatial).fill(0);
  const autoPad = getAttrString(node, "auto_pad") ?? "NOTSET";
  const out: Shape = [x[0]!, w[0]!];
  for (let i = 0; i < spatial; i++) {
    const inDim = x[i + 2]!;
    const stride = strides[i]!;
    if (autoPad === "SAME_UPPER" || autoPad === "SAME_LOWER") out.push(Math.ceil(inDim / stride));
    else {
      const pad = autoPad === "VALID" ? 0 : pads[i]! + pads[i + spatial]!;
      const eff = dilations[i]! * (kernel[i]! - 1) + 1;
      const round = getAttrInt(node, "ceil_mode", 0) === 1 ? Math.ceil : Math.floor;
      out.push(round((inDim + pad - eff) / stride) + 1);
    }
  }
  return out;
}

function sliceNode(node: NodeProto, x: Shape | undefined, v: (number[] | undefined)[]): NodeResult {
  const attrStarts = getAttrInts(node, "starts");
  const starts = attrStarts ?? v[1];
  const ends = attrStarts ? getAttrInts(node, "ends") : v[2];
  if (!x || !starts || !ends) return { shapes: [undefined], values: [undefined] };
  const axes = (attrStarts ? getAttrInts(node, "axes") : v[3]) ?? starts.map((_, i) => i);
  const steps = (attrStarts ? undefined : v[4]) ?? starts.map(() => 1);
  const shape = [...x];
  const ranges = x.map((d) => ({ start: 0, end: d, step: 1 }));
  axes.forEach((a, k) => {
    const axis = normAxis(a, x.length);
    const dim = x[axis]!;
    const step = steps[k]!;
    const clamp = (i: number, lo: number, hi: number) => Math.min(Math.max(i < 0 ? i + dim : i, lo), hi);
    const start = step > 0 ? clamp(starts[k]!, 0, dim) : clamp(starts[k]!, -1, dim - 1);
    const end = step > 0 ? clamp(ends[k]!, 0, dim) : clamp(ends[k]!, -1, dim - 1);
    shape[axis] = Math.max(0, Math.ceil((end - start) / step));
    ranges[axis] = { start, end, step };
  });
  let value: number[] | undefined;
  if (x.length === 1 && v[0]) {
    const r = ranges[0]!;
    value = [];
    for (let i = r.start; r.step > 0 ? i < r.end : i > r.end; i += r.step) value.push(v[0][i]!);
  }
  return { shapes: [shape], values: [value] };
}
