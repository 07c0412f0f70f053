/**
 * A model's precision read from its graph, never from a card: which precision each weight of the
 * linear layers, embeddings and experts is stored in, by the weight's dtype or by the quantized op
 * that holds it (MatMulNBits' bits, int8 for the integer MatMuls, QMoE's expert_weight_bits). The
 * label `itera inspect` and `itera bench` show is the precision of (nearly) all those weights, or
 * "mixed" with the shares.
 */
import { getAttrInt } from "./attributes.js";
import { decodeModel } from "./codec.js";
import { readModelFile } from "./io.js";
import { DataType, elementCount } from "./tensor.js";
import type { GraphProto, ModelProto, NodeProto, TensorProto } from "./types.js";

export interface WeightPrecision {
  /** "fp32", "fp16", "bf16", "int8", "int4", ... or "mixed" */
  label: string;
  /** weight elements per precision, most first */
  byPrecision: { precision: string; elements: number; share: number }[];
}

/** A precision holding at least this share of the weights names the model ("int4"); else "mixed". */
const DOMINANT_SHARE = 0.9;

const FLOAT_NAMES: Partial<Record<number, string>> = {
  [DataType.FLOAT]: "fp32",
  [DataType.FLOAT16]: "fp16",
  [DataType.BFLOAT16]: "bf16",
  [DataType.DOUBLE]: "fp64",
};

/** Ops whose weight input (index) is an 8-bit integer matrix. */
const INT8_WEIGHT_INPUT: Readonly<Record<string, number>> = {
  MatMulInteger: 1,
  DynamicQuantizeMatMul: 1,
  MatMulIntegerToFloat: 1,
  QLinearMatMul: 3,
  QGemm: 3,
};

/** Ops whose weight input (index) is a float matrix named by its dtype. */
const FLOAT_WEIGHT_INPUT: Readonly<Record<string, number>> = {
  MatMul: 1,
  FusedMatMul: 1,
  Gemm: 1,
  Attention: 1,
  Gather: 0,
  EmbedLayerNormalization: 2,
};

export function weightPrecision(model: ModelProto): WeightPrecision {
  const graph = model.graph;
  const counts = new Map<string, number>();
  if (graph) for (const node of graph.node) countNode(node, initializers(graph), counts);
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  const byPrecision = [...counts.entries()]
    .map(([precision, elements]) => ({ precision, elements, share: total > 0 ? elements / total : 0 }))
    .sort((a, b) => b.elements - a.elements);
  const top = byPrecision[0];
  const label = !top ? "unknown" : top.share >= DOMINANT_SHARE ? top.precision : "mixed";
  return { label, byPrecision };
}

/**
 * The precision label of an .onnx file, for a model folder whose card does not say: only the graph's
 * structure is read (external weights stay on disk); "fp32" when it holds no weights it can name.
 */
export async function fileWeightPrecision(onnxPath: string): Promise<string> {
  const label = weightPrecision(decodeModel(await readModelFile(onnxPath))).label;
  return label === "unknown" ? "fp32" : label;
}

/** "int4 (91% of weights; fp32 9%)", "fp32", "mixed (int4 60%, int8 30%, fp32 10%)". */
export function describePrecision(p: WeightPrecision): string {
  const percent = (share: number) => `${(share * 100).toFixed(share < 0.01 ? 1 : 0)}%`;
  const shares = p.byPrecision.map((b) => `${b.precision} ${percent(b.share)}`);
  if (p.byPrecision.length <= 1) return p.label;
  if (p.label === "mixed") return `mixed (${shares.join(", ")})`;
  return `${p.label} (${percent(p.byPrecision[0]!.share)} of weights; ${shares.slice(1).join(", ")})`;
}

const cache = new WeakMap<GraphProto, Map<string, TensorProto>>();
function initializers(graph: GraphProto): Map<string, TensorProto> {
  let m = cache.get(graph);
  if (!m) {
    m = new Map(graph.initializer.map((t) => [t.name ?? "", t]));
    cache.set(graph, m);
  }
  return m;
}

function countNode(node: NodeProto, inits: Map<string, TensorProto>, counts: Map<string, number>): void {
  const add = (precision: string, elements: number) =>
    counts.set(precision, (counts.get(precision) ?? 0) + elements);
  const init = (i: number) => inits.get(node.input[i] ?? "");
  const op = node.opType ?? "";
  switch (op) {
    case "MatMulNBits": {
      const k = getAttrInt(node, "K") ?? 0;
      const n = getAttrInt(node, "N") ?? 0;
      add(`int${getAttrInt(node, "bits", 4)}`, k * n);
      return;
    }
    case "MatMulBnb4":
      add("int4", (getAttrInt(node, "K") ?? 0) * (getAttrInt(node, "N") ?? 0));
      return;
    case "GatherBlockQuantized": {
      // uint8 data packs 8/bits values per byte; int4 data types hold one each
      const data = init(0);
      if (!data) return;
      const bits = getAttrInt(node, "bits", 4);
      const packed = data.dataType === DataType.UINT8 ? 8 / bits : 1;
      add(`int${bits}`, elementCount(data.dims) * packed);
      return;
    }
    case "QMoE": {
      const bits = getAttrInt(node, "expert_weight_bits", 4);
      for (const i of [2, 5, 8]) {
        const w = init(i);
        if (w) add(`int${bits}`, elementCount(w.dims) * (8 / bits));
      }
      return;
    }
    case "MoE": {
      for (const i of [2, 4, 6]) {
        const w = init(i);
        const name = w && FLOAT_NAMES[w.dataType ?? 0];
        if (w && name) add(name, elementCount(w.dims));
      }
      return;
    }
  }
  const int8 = INT8_WEIGHT_INPUT[op];
  if (int8 !== undefined) {
    const w = init(int8);
    if (w) add("int8", elementCount(w.dims));
    return;
  }
  const float = FLOAT_WEIGHT_INPUT[op];
  if (float !== undefined) {
    const w = init(float);
    // a constant matrix (or embedding table): a weight; a 1-D constant is an index or a bias
    const name = w && w.dims.length >= 2 ? FLOAT_NAMES[w.dataType ?? 0] : undefined;
    if (w && name) add(name, elementCount(w.dims));
  }
}
