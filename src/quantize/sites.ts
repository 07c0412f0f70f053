/**
 * Where a graph can be quantized: MatMul and Gemm with a constant 2-D float weight (linear layers),
 * Gather on a constant 2-D float table (embeddings) and com.microsoft.MoE with constant float
 * experts (all of one node's expert weights are one site: QMoE takes them at one precision).
 * Also what is already quantized.
 */
import {
  AttributeType,
  DataType,
  type Graph,
  getAttrFloat,
  getAttrInt,
  getAttrString,
  type NodeProto,
  type TensorProto,
  tensorToTyped,
  float16ToFloat32,
} from "../onnx/index.js";
import { transpose } from "./linear.js";
import { expertMatrices, type MoeShape } from "./moe.js";

export type SiteKind = "linear" | "embedding" | "moe";

export interface Site {
  /** unique name: the node's name, or op type and index when the node has none */
  name: string;
  node: NodeProto;
  kind: SiteKind;
  /** the projection to the graph's logits (an output head) */
  head: boolean;
  /** linear: [K, N]; embedding: [rows, cols]; moe: [experts, d_ff, d_model] */
  dims: number[];
  /** the float weight (moe: fc1) */
  weightName: string;
  /** every float weight the site quantizes (moe: fc1, fc2 and fc3 when present) */
  weightNames: string[];
  /** moe: the experts' shape */
  moe?: MoeShape;
  /** float32 bytes of the weights */
  bytes: number;
  /**
   * linear/embedding: the weight's element type when it is used as float16/bfloat16 directly (the
   * activations are too): the quantized form then runs in float32 between Casts.
   */
  halfType?: number;
}

/** A float initializer's values as float32 (float16 and bfloat16 widened exactly). */
export function floatValues(t: TensorProto): Float32Array {
  const v = tensorToTyped(t);
  if (t.dataType === DataType.FLOAT16) return float16ToFloat32(v as Uint16Array);
  if (t.dataType === DataType.BFLOAT16) {
    const bits = new Uint32Array(v.length);
    for (let i = 0; i < v.length; i++) bits[i] = (v as Uint16Array)[i]! << 16;
    return new Float32Array(bits.buffer);
  }
  return v as Float32Array;
}

/** Ops that mean a graph (or part of it) is quantized already. */
export const QUANTIZED_OPS = new Set([
  "MatMulNBits",
  "MatMulInteger",
  "DynamicQuantizeLinear",
  "DynamicQuantizeMatMul",
  "MatMulIntegerToFloat",
  "GatherBlockQuantized",
  "QuantizeLinear",
  "DequantizeLinear",
  "QLinearMatMul",
  "QGemm",
  "MatMulBnb4",
  "QMoE",
]);

const HALF_TYPES = new Set<number>([DataType.FLOAT16, DataType.BFLOAT16]);

function floatMatrix(t: TensorProto | undefined): [number, number] | undefined {
  if (!t || (t.dataType !== DataType.FLOAT && !HALF_TYPES.has(t.dataType ?? 0)) || t.dims.length !== 2)
    return undefined;
  return [Number(t.dims[0]), Number(t.dims[1])];
}

/** The element type of a half-precision weight (fp16/bf16 models), or undefined for float32. */
function halfType(t: TensorProto | undefined): { halfType?: number } {
  return t && HALF_TYPES.has(t.dataType ?? 0) ? { halfType: t.dataType! } : {};
}

export function nodeLabel(node: NodeProto, index: number): string {
  return node.name && node.name.length > 0 ? node.name : `${node.opType}_${index}`;
}

/** Whether a value reaches a graph output directly or through an Add (bias) / Reshape. */
function feedsGraphOutput(g: Graph, value: string, outputs: Set<string>): boolean {
  if (outputs.has(value)) return true;
  const consumers = g.consumers(value);
  return (
    consumers.length === 1 &&
    ["Add", "Reshape"].includes(consumers[0]!.opType ?? "") &&
    outputs.has(consumers[0]!.output[0] ?? "")
  );
}

export function findSites(g: Graph): Site[] {
  const outputs = new Set(g.proto.output.map((o) => o.name ?? ""));
  const sites: Site[] = [];
  g.nodes.forEach((node, index) => {
    const op = node.opType ?? "";
    if (node.domain === "com.microsoft" && op === "MoE") {
      const site = moeSite(g, node, index);
      if (site) sites.push(site);
      return;
    }
    if ((node.domain ?? "") !== "" && node.domain !== "ai.onnx") return;
    if (op === "MatMul" || op === "Gemm") {
      const weightName = node.input[1] ?? "";
      const dims = floatMatrix(g.initializer(weightName));
      if (!dims) return;
      if (op === "Gemm" && getAttrInt(node, "transA", 0) !== 0) return;
      if (op === "Gemm" && node.input[2] && !gemmBias(g, node, dims)) return;
      const kn: [number, number] =
        op === "Gemm" && getAttrInt(node, "transB", 0) !== 0 ? [dims[1], dims[0]] : dims;
      sites.push({
        name: nodeLabel(node, index),
        node,
        kind: "linear",
        head: feedsGraphOutput(g, node.output[0] ?? "", outputs),
        dims: kn,
        weightName,
        weightNames: [weightName],
        bytes: dims[0] * dims[1] * 4,
        ...halfType(g.initializer(weightName)),
      });
    } else if (op === "Gather" && getAttrInt(node, "axis", 0) === 0) {
      const weightName = node.input[0] ?? "";
      const dims = floatMatrix(g.initializer(weightName));
      if (!dims) return;
      sites.push({
        name: nodeLabel(node, index),
        node,
        kind: "embedding",
        head: false,
        dims,
        weightName,
        weightNames: [weightName],
        bytes: dims[0] * dims[1] * 4,
        ...halfType(g.initializer(weightName)),
      });
    }
  });
  return sites;
}

/** MoE inputs: input, router_probs, fc1, fc1 bias, fc2, fc2 bias, fc3, fc3 bias (QMoE has no more). */
const MOE_INPUTS = 8;

/** Attribute kinds a MoE node's attributes may have to be copied onto its QMoE. */
export const COPIED_ATTRIBUTES = new Set<number>([
  AttributeType.INT,
  AttributeType.FLOAT,
  AttributeType.STRING,
  AttributeType.INTS,
  AttributeType.FLOATS,
]);

/**
 * A MoE node whose expert weights are constant float [E, N, K] initializers of consistent shapes
 * (fc1 [E, d_ff or 2·d_ff, d_model], fc2 [E, d_model, d_ff], fc3 [E, d_ff, d_model]); else undefined.
 */
function moeSite(g: Graph, node: NodeProto, index: number): Site | undefined {
  if (node.input.length > MOE_INPUTS) return undefined;
  // QMoE takes the MoE's attributes as they are: only the kinds the rewrite copies
  if (node.attribute.some((a) => !COPIED_ATTRIBUTES.has(a.type ?? 0))) return undefined;
  const dims = (i: number) => {
    const t = g.initializer(node.input[i] ?? "");
    return t && t.dataType === DataType.FLOAT && t.dims.length === 3 ? t.dims.map(Number) : undefined;
  };
  const fc1 = dims(2);
  const fc2 = dims(4);
  if (!fc1 || !fc2) return undefined;
  const [experts, fc1Rows, hidden] = fc1 as [number, number, number];
  const inter = fc2[2]!;
  const hasFc3 = (node.input[6] ?? "") !== "";
  const swigluFusion =
    getAttrString(node, "activation_type") === "swiglu" ? getAttrInt(node, "swiglu_fusion", 0) : null;
  const shape: MoeShape = { experts, hidden, inter, fc1Rows, hasFc3, swigluFusion };
  if (fc1Rows !== inter && fc1Rows !== 2 * inter) return undefined;
  for (const m of expertMatrices(shape)) {
    const d = dims(m.input);
    if (!d || d[0] !== experts || d[1] !== m.n || d[2] !== m.k) return undefined;
  }
  const weightNames = expertMatrices(shape).map((m) => node.input[m.input]!);
  return {
    name: nodeLabel(node, index),
    node,
    kind: "moe",
    head: false,
    dims: [experts, inter, hidden],
    weightName: weightNames[0]!,
    weightNames,
    moe: shape,
    bytes: expertMatrices(shape).reduce((sum, m) => sum + experts * m.n * m.k * 4, 0),
  };
}

/** A Gemm's bias as a length-N vector scaled by beta, or undefined if it is not a constant of that shape. */
function gemmBias(g: Graph, node: NodeProto, weightDims: [number, number]): Float32Array | undefined {
  const t = g.initializer(node.input[2] ?? "");
  if (!t || t.dataType !== DataType.FLOAT) return undefined;
  const n = getAttrInt(node, "transB", 0) !== 0 ? weightDims[0] : weightDims[1];
  const values = tensorToTyped(t) as Float32Array;
  const beta = getAttrFloat(node, "beta", 1);
  if (values.length === n) return values.map((v) => v * beta);
  if (values.length === 1) return new Float32Array(n).fill(values[0]! * beta);
  return undefined;
}

/** A linear site's weight as [K, N] row-major (Gemm's transB and alpha applied) and its bias. */
export function linearWeights(g: Graph, site: Site): { weight: Float32Array; bias?: Float32Array } {
  const node = site.node;
  const [k, n] = site.dims as [number, number];
  const raw = floatValues(g.initializer(site.weightName)!);
  if (node.opType !== "Gemm") return { weight: raw };
  let weight = getAttrInt(node, "transB", 0) !== 0 ? transpose(raw, n, k) : raw;
  const alpha = getAttrFloat(node, "alpha", 1);
  if (alpha !== 1) weight = weight.map((v) => v * alpha);
  const bias = node.input[2]
    ? gemmBias(g, node, getAttrInt(node, "transB", 0) !== 0 ? [n, k] : [k, n])
    : undefined;
  return bias ? { weight, bias } : { weight };
}

export function countQuantizedNodes(g: Graph): number {
  return g.nodes.filter((n) => QUANTIZED_OPS.has(n.opType ?? "")).length;
}
