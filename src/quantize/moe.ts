/**
 * Mixture-of-experts weights for com.microsoft.QMoE (onnxruntime's CPU kernel QMoECPU<float>).
 *
 * A com.microsoft.MoE node holds its float experts as initializers, each [E, N, K] (one N x K
 * matrix per expert, K the input features): fc1 [E, fusion·d_ff, d_model], fc2 [E, d_model, d_ff],
 * optional fc3 [E, d_ff, d_model]. QMoE takes them quantized to 4 or 8 bits (quant_type "int"),
 * in the raw, un-prepacked layout (weights_prepacked = 0) that quantize_matmul_4bits writes:
 * - weights: uint8 [E, N, K·bits/8], each row's K values packed low bits first (as MatMulNBits);
 * - scales: float32 [E, N] (one per row), or [E, N, K/block] with block_size;
 * - zero points (asymmetric only): uint8 [E, N·bits/8] per row (packed along N), or
 *   [E, N, (K/block)·bits/8] block-wise; without them the kernel uses 2^(bits-1).
 * test/quantize-moe.test.ts checks every layout against onnxruntime sessions.
 */
import { type Bits, dequantizeRows, packBits, quantizeRows } from "./blockwise.js";

export interface MoeShape {
  experts: number;
  /** d_model: the input and output features */
  hidden: number;
  /** d_ff: the experts' inner features */
  inter: number;
  /** rows of fc1: d_ff, or 2·d_ff with a fused SwiGLU */
  fc1Rows: number;
  hasFc3: boolean;
  /** SwiGLU experts: swiglu_fusion (0 separate fc3, 1 interleaved, 2 concatenated); null otherwise */
  swigluFusion: number | null;
}

export type ExpertRole = "fc1" | "fc2" | "fc3";

/** One [E, N, K] expert weight of a MoE node; `input` is its index among the MoE node's inputs. */
export interface ExpertMatrix {
  role: ExpertRole;
  input: number;
  n: number;
  k: number;
}

export function expertMatrices(s: MoeShape): ExpertMatrix[] {
  const out: ExpertMatrix[] = [
    { role: "fc1", input: 2, n: s.fc1Rows, k: s.hidden },
    { role: "fc2", input: 4, n: s.hidden, k: s.inter },
  ];
  if (s.hasFc3) out.push({ role: "fc3", input: 6, n: s.inter, k: s.hidden });
  return out;
}

export interface QmoeLayout {
  bits: Bits;
  /** block size along K, or 0 for one scale per row */
  blockSize: number;
  symmetric: boolean;
  /** what differs from the options asked for, and why */
  notes: string[];
}

/**
 * The QMoE layout closest to what is asked (`blockSize` 0: one scale per row), or why none exists.
 * Block-wise needs the block size to cut every K (d_model and d_ff) into 2 or more blocks
 * (onnxruntime 1.30 rejects a fc1 of a single block next to a fc2 of several); otherwise one scale
 * per row. Zero points need whole bytes of them (per row: N·bits/8; block-wise: (K/block)·bits/8);
 * otherwise symmetric.
 */
export function qmoeLayout(
  shape: MoeShape,
  bits: Bits,
  asked: { blockSize: number; symmetric: boolean },
): QmoeLayout | string {
  if (shape.swigluFusion !== null && shape.swigluFusion !== 1)
    return `onnxruntime's CPU QMoE takes SwiGLU experts only fused and interleaved (swiglu_fusion 1), not swiglu_fusion ${shape.swigluFusion}`;
  const matrices = expertMatrices(shape);
  const odd = matrices.find((m) => (m.k * bits) % 8 !== 0);
  if (odd) return `${bits}-bit QMoE packs whole bytes per row: ${odd.role} has K = ${odd.k}`;
  const notes: string[] = [];
  let block = asked.blockSize;
  if (block && !matrices.every((m) => m.k % block === 0 && m.k / block >= 2)) {
    notes.push(
      `one scale per row: block ${block} does not cut d_model ${shape.hidden} and d_ff ${shape.inter} into 2 or more blocks each`,
    );
    block = 0;
  }
  let symmetric = asked.symmetric;
  if (!symmetric && !matrices.every((m) => ((block ? m.k / block : m.n) * bits) % 8 === 0)) {
    symmetric = true;
    notes.push("symmetric: the zero points would not fill whole bytes");
  }
  return { bits, blockSize: block, symmetric, notes };
}

/** Bytes of one [E, N, K] matrix in a layout: packed weights, float32 scales, packed zero points. */
export function expertMatrixBytes(experts: number, m: ExpertMatrix, layout: QmoeLayout): number {
  const blocksPerRow = layout.blockSize ? m.k / layout.blockSize : 1;
  const zpBytesPerRow = layout.symmetric ? 0 : (blocksPerRow * layout.bits) / 8;
  return experts * m.n * ((m.k * layout.bits) / 8 + blocksPerRow * 4 + zpBytesPerRow);
}

export function qmoeBytes(shape: MoeShape, layout: QmoeLayout): number {
  return expertMatrices(shape).reduce((sum, m) => sum + expertMatrixBytes(shape.experts, m, layout), 0);
}

/** A one-line description of a layout, for the report. */
export function describeLayout(l: QmoeLayout): string {
  return [
    `QMoE ${l.bits}-bit, ${l.blockSize ? `block ${l.blockSize}` : "per-row scales"}, ${l.symmetric ? "symmetric" : "asymmetric"}`,
    ...l.notes,
  ].join("; ");
}

export interface QuantizedExperts {
  /** uint8 [E, N, K·bits/8] */
  weights: Uint8Array;
  weightDims: number[];
  scales: Float32Array;
  scaleDims: number[];
  zeroPoints: Uint8Array | null;
  zeroPointDims: number[];
  /** the float [E, N, K] the quantized experts stand for (references and tests) */
  dequantized: Float32Array;
}

/** Quantize one [E, N, K] float expert weight in a layout (each expert's rows along K). */
export function quantizeExperts(
  w: Float32Array,
  experts: number,
  n: number,
  k: number,
  layout: QmoeLayout,
  searchClipping = false,
): QuantizedExperts {
  if (w.length !== experts * n * k)
    throw new Error(`quantizeExperts: ${w.length} values for ${experts}x${n}x${k}`);
  const { bits, symmetric } = layout;
  const block = layout.blockSize || k;
  const blocksPerRow = k / block;
  const rowBytes = (k * bits) / 8;
  const weights = new Uint8Array(experts * n * rowBytes);
  const scales = new Float32Array(experts * n * blocksPerRow);
  const dequantized = new Float32Array(w.length);
  // Block-wise zero points are packed along K within a row; per-row ones along N within an expert.
  const zpPerExpert = layout.blockSize ? (n * blocksPerRow * bits) / 8 : (n * bits) / 8;
  const zeroPoints = symmetric ? null : new Uint8Array(experts * zpPerExpert);
  for (let e = 0; e < experts; e++) {
    const q = quantizeRows(w.subarray(e * n * k, (e + 1) * n * k), n, k, {
      bits,
      blockSize: block,
      symmetric,
      searchClipping,
    });
    weights.set(q.packed, e * n * rowBytes);
    scales.set(q.scales, e * n * blocksPerRow);
    dequantized.set(dequantizeRows(q), e * n * k);
    if (zeroPoints) {
      if (layout.blockSize) zeroPoints.set(q.zeroPoints!, e * zpPerExpert);
      else packBits(q.zeroPointValues, bits, zeroPoints, e * zpPerExpert);
    }
  }
  return {
    weights,
    weightDims: [experts, n, rowBytes],
    scales,
    scaleDims: layout.blockSize ? [experts, n, blocksPerRow] : [experts, n],
    zeroPoints,
    zeroPointDims: layout.blockSize ? [experts, n, (blocksPerRow * bits) / 8] : [experts, (n * bits) / 8],
    dequantized,
  };
}
