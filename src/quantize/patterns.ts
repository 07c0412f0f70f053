/**
 * The replacement subgraphs the quantizer writes, independent of how a graph is stored:
 * each function takes a float weight and returns the nodes and initializers that stand in
 * for the original node, with the same input and output names.
 */
import { quantizeMatMulNBits, quantizeRowsBlockwise, type Bits } from "./blockwise.js";
import { float32ToFloat16 } from "../onnx/index.js";
import { quantizeInt8 } from "./linear.js";
import { type ExpertRole, expertMatrices, type MoeShape, type QmoeLayout, quantizeExperts } from "./moe.js";

export type TensorData = Float32Array | Uint16Array | Uint8Array | Int8Array | BigInt64Array;
export type TensorType = "float32" | "float16" | "uint8" | "int8" | "int64";

export interface TensorSpec {
  name: string;
  type: TensorType;
  dims: number[];
  data: TensorData;
}

export type AttributeValue = number | string | number[];

export interface NodeSpec {
  name: string;
  opType: string;
  domain: string; // "" for the default ONNX domain
  inputs: string[];
  outputs: string[];
  attributes: Record<string, AttributeValue>;
  /** attributes whose numbers are floats (the rest are ints) */
  floatAttributes?: string[];
}

export interface Replacement {
  nodes: NodeSpec[];
  initializers: TensorSpec[];
}

/** ONNX TensorProto.DataType codes used by Cast. */
export const ONNX_FLOAT = 1;

/** A MatMul-like site: output = input @ weight (+ bias), weight [K, N] row-major float32. */
export interface LinearSite {
  name: string;
  input: string;
  output: string;
  weight: Float32Array;
  k: number;
  n: number;
  bias?: Float32Array;
}

function node(
  name: string,
  opType: string,
  inputs: string[],
  outputs: string[],
  attributes: Record<string, AttributeValue> = {},
  domain = "",
): NodeSpec {
  return { name, opType, domain, inputs, outputs, attributes };
}

/** output = matmulOut + bias, or just matmulOut renamed when there is no bias. */
function withBias(site: LinearSite, matmulOut: string, out: Replacement): Replacement {
  if (!site.bias) return out;
  out.initializers.push({ name: `${site.name}_bias`, type: "float32", dims: [site.n], data: site.bias });
  out.nodes.push(node(`${site.name}_add_bias`, "Add", [matmulOut, `${site.name}_bias`], [site.output]));
  return out;
}

export interface Int8DynamicOptions {
  perChannel: boolean;
  symmetric: boolean;
  reduceRange: boolean;
}

/**
 * int8 dynamic quantization: DynamicQuantizeLinear (uint8 activations) + MatMulInteger (int8
 * weights) + Cast + Mul by a_scale*b_scale: the pattern onnxruntime fuses into DynamicQuantizeMatMul.
 */
export function int8DynamicMatMul(site: LinearSite, opts: Int8DynamicOptions): Replacement {
  const q = quantizeInt8(site.weight, site.k, site.n, opts);
  const p = site.name;
  const scaleDims = opts.perChannel ? [site.n] : [];
  const mmOut = site.bias ? `${p}_matmul_out` : site.output;
  const out: Replacement = {
    initializers: [
      { name: `${p}_weight_quantized`, type: "int8", dims: [site.k, site.n], data: q.data },
      { name: `${p}_weight_scale`, type: "float32", dims: scaleDims, data: q.scales },
      { name: `${p}_weight_zero_point`, type: "int8", dims: scaleDims, data: q.zeroPoints },
    ],
    nodes: [
      node(
        `${p}_quantize_input`,
        "DynamicQuantizeLinear",
        [site.input],
        [`${p}_in_q`, `${p}_in_scale`, `${p}_in_zp`],
      ),
      node(
        `${p}_matmul_integer`,
        "MatMulInteger",
        [`${p}_in_q`, `${p}_weight_quantized`, `${p}_in_zp`, `${p}_weight_zero_point`],
        [`${p}_int32`],
      ),
      node(`${p}_cast`, "Cast", [`${p}_int32`], [`${p}_float`], { to: ONNX_FLOAT }),
      node(`${p}_scale_mul`, "Mul", [`${p}_in_scale`, `${p}_weight_scale`], [`${p}_scale`]),
      node(`${p}_output_mul`, "Mul", [`${p}_float`, `${p}_scale`], [mmOut]),
    ],
  };
  return withBias(site, mmOut, out);
}

export interface BlockwiseSiteOptions {
  bits: Bits;
  blockSize: number;
  symmetric: boolean;
  searchClipping?: boolean;
  accuracyLevel: number;
}

/** Weight-only block-wise quantization: com.microsoft.MatMulNBits. */
export function matMulNBits(site: LinearSite, opts: BlockwiseSiteOptions): Replacement {
  const q = quantizeMatMulNBits(site.weight, site.k, site.n, opts);
  const p = site.name;
  const mmOut = site.bias ? `${p}_matmul_out` : site.output;
  const initializers: TensorSpec[] = [
    { name: `${p}_B`, type: "uint8", dims: [site.n, q.kBlocks, q.blobSize], data: q.packed },
    { name: `${p}_scales`, type: "float32", dims: [site.n, q.kBlocks], data: q.scales },
  ];
  const inputs = [site.input, `${p}_B`, `${p}_scales`];
  if (q.zeroPoints) {
    initializers.push({
      name: `${p}_zero_points`,
      type: "uint8",
      dims: [site.n, q.zeroPoints.length / site.n],
      data: q.zeroPoints,
    });
    inputs.push(`${p}_zero_points`);
  }
  const out: Replacement = {
    initializers,
    nodes: [
      node(
        `${p}_matmul_nbits`,
        "MatMulNBits",
        inputs,
        [mmOut],
        {
          K: site.k,
          N: site.n,
          bits: opts.bits,
          block_size: opts.blockSize,
          accuracy_level: opts.accuracyLevel,
        },
        "com.microsoft",
      ),
    ],
  };
  return withBias(site, mmOut, out);
}

/** An embedding lookup: output = table[indices], table [rows, cols] row-major float32. */
export interface GatherSite {
  name: string;
  indices: string;
  output: string;
  table: Float32Array;
  rows: number;
  cols: number;
}

/**
 * Embedding table quantized block-wise along the hidden axis: com.microsoft.GatherBlockQuantized
 * on uint8 data (4-bit values packed low nibble first), which dequantizes only the gathered rows.
 */
export function gatherBlockQuantized(
  site: GatherSite,
  opts: Omit<BlockwiseSiteOptions, "accuracyLevel">,
): Replacement {
  const q = quantizeRowsBlockwise(site.table, site.rows, site.cols, opts);
  const p = site.name;
  // The operator reads the unpadded row: pack each row's codes without the block padding.
  const rowBytes = (site.cols * opts.bits) / 8;
  const data = new Uint8Array(site.rows * rowBytes);
  for (let r = 0; r < site.rows; r++) {
    data.set(
      q.packed.subarray(r * q.kBlocks * q.blobSize, r * q.kBlocks * q.blobSize + rowBytes),
      r * rowBytes,
    );
  }
  const initializers: TensorSpec[] = [
    { name: `${p}_data`, type: "uint8", dims: [site.rows, rowBytes], data },
    { name: `${p}_scales`, type: "float32", dims: [site.rows, q.kBlocks], data: q.scales },
  ];
  const inputs = [`${p}_data`, site.indices, `${p}_scales`];
  if (q.zeroPoints) {
    initializers.push({
      name: `${p}_zero_points`,
      type: "uint8",
      dims: [site.rows, q.zeroPoints.length / site.rows],
      data: q.zeroPoints,
    });
    inputs.push(`${p}_zero_points`);
  }
  return {
    initializers,
    nodes: [
      node(
        `${p}_gather_block_quantized`,
        "GatherBlockQuantized",
        inputs,
        [site.output],
        { bits: opts.bits, block_size: opts.blockSize, gather_axis: 0, quantize_axis: 1 },
        "com.microsoft",
      ),
    ],
  };
}

/** A com.microsoft.MoE node with constant float experts. */
export interface MoeSite {
  name: string;
  /** the MoE node's inputs: input, router_probs, fc1, fc1 bias, fc2, fc2 bias[, fc3, fc3 bias] */
  inputs: string[];
  output: string;
  /** the MoE node's attributes (activation_type, k, normalize_routing_weights, ...), kept as they are */
  attributes: Record<string, AttributeValue>;
  floatAttributes: string[];
  shape: MoeShape;
  /** float [E, N, K] expert weights by role */
  weights: Partial<Record<ExpertRole, Float32Array>>;
}

/**
 * Weight-only quantized experts: com.microsoft.QMoE with the MoE node's attributes and biases,
 * 4- or 8-bit integer experts in the raw layout (weights_prepacked = 0), see moe.ts.
 */
export function qMoE(site: MoeSite, layout: QmoeLayout, searchClipping = false): Replacement {
  const p = site.name;
  const { experts } = site.shape;
  const initializers: TensorSpec[] = [];
  // QMoE inputs: input, router_probs, then (weights, scales, bias) for fc1, fc2, fc3, then the zero points.
  const inputs = [site.inputs[0]!, site.inputs[1]!, ...Array<string>(12).fill("")];
  for (const m of expertMatrices(site.shape)) {
    const q = quantizeExperts(site.weights[m.role]!, experts, m.n, m.k, layout, searchClipping);
    const slot = 2 + 3 * (m.input / 2 - 1);
    initializers.push(
      { name: `${p}_${m.role}_weights`, type: "uint8", dims: q.weightDims, data: q.weights },
      { name: `${p}_${m.role}_scales`, type: "float32", dims: q.scaleDims, data: q.scales },
    );
    inputs[slot] = `${p}_${m.role}_weights`;
    inputs[slot + 1] = `${p}_${m.role}_scales`;
    inputs[slot + 2] = site.inputs[m.input + 1] ?? "";
    if (q.zeroPoints) {
      initializers.push({
        name: `${p}_${m.role}_zero_points`,
        type: "uint8",
        dims: q.zeroPointDims,
        data: q.zeroPoints,
      });
      inputs[11 + (m.input / 2 - 1)] = `${p}_${m.role}_zero_points`;
    }
  }
  while (inputs[inputs.length - 1] === "") inputs.pop();
  const quantAttributes: Record<string, AttributeValue> = {
    expert_weight_bits: layout.bits,
    quant_type: "int",
    weights_prepacked: 0,
    ...(layout.blockSize ? { block_size: layout.blockSize } : {}),
  };
  return {
    initializers,
    nodes: [
      {
        ...node(
          `${p}_qmoe`,
          "QMoE",
          inputs,
          [site.output],
          { ...site.attributes, ...quantAttributes },
          "com.microsoft",
        ),
        floatAttributes: site.floatAttributes,
      },
    ],
  };
}

/** fp16 storage: the initializer is stored as float16 and cast back to float32 once, at load. */
export function fp16Weight(name: string, values: Float32Array, dims: number[]): Replacement {
  const stored = `${name}_fp16`;
  return {
    initializers: [{ name: stored, type: "float16", dims, data: float32ToFloat16(values) }],
    nodes: [node(`${name}_cast_fp32`, "Cast", [stored], [name], { to: ONNX_FLOAT })],
  };
}
