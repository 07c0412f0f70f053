/**
 * Linear 8-bit quantization of weight matrices, per tensor or per output channel, the way
 * onnxruntime's dynamic quantizer does it: int8 weights, symmetric (zero point 0, range ±127)
 * or asymmetric (range -128..127 with a zero point), and an optional reduced 7-bit range
 * (-64..64 symmetric, -64..63 asymmetric) that avoids int16 overflow in u8×s8 kernels
 * on x64 CPUs without VNNI.
 */

/** Round half to even, as numpy.rint and std::nearbyint do. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export interface Int8Options {
  symmetric: boolean;
  reduceRange: boolean;
}

export interface Int8Range {
  qmin: number;
  qmax: number;
}

export function int8Range(opts: Int8Options): Int8Range {
  if (opts.symmetric) return opts.reduceRange ? { qmin: -64, qmax: 64 } : { qmin: -127, qmax: 127 };
  return opts.reduceRange ? { qmin: -64, qmax: 63 } : { qmin: -128, qmax: 127 };
}

/** Scale and zero point covering [min, max] (always widened to include 0, so 0 is exact). */
export function scaleZeroPoint(
  min: number,
  max: number,
  opts: Int8Options,
): { scale: number; zeroPoint: number } {
  const { qmin, qmax } = int8Range(opts);
  let lo = Math.min(min, 0);
  let hi = Math.max(max, 0);
  if (opts.symmetric) {
    const absmax = Math.max(Math.abs(lo), Math.abs(hi));
    lo = -absmax;
    hi = absmax;
  }
  // Math.fround: the scale is stored as float32, and the quantized values must be computed with it.
  const scale = Math.fround(hi > lo ? (hi - lo) / (qmax - qmin) : 1);
  const zeroPoint = opts.symmetric ? 0 : clamp(roundHalfEven(qmin - lo / scale), qmin, qmax);
  return { scale, zeroPoint };
}

/** x limited to [lo, hi]. */
export function clamp(x: number, lo: number, hi: number): number {
  return Math.max(lo, Math.min(hi, x));
}

/** An int8-quantized [K, N] matrix: one scale/zero point per tensor (length 1) or per column N. */
export interface Int8Matrix {
  data: Int8Array; // [K, N] row-major, same layout as the float input
  scales: Float32Array;
  zeroPoints: Int8Array;
  perChannel: boolean;
}

/**
 * Quantize a [K, N] row-major matrix (MatMul's B). Per-channel means one scale per output column.
 */
export function quantizeInt8(
  w: Float32Array,
  k: number,
  n: number,
  opts: Int8Options & { perChannel: boolean },
): Int8Matrix {
  if (w.length !== k * n) throw new Error(`quantizeInt8: ${w.length} values for a ${k}x${n} matrix`);
  const { qmin, qmax } = int8Range(opts);
  const channels = opts.perChannel ? n : 1;
  const mins = new Float64Array(channels).fill(Infinity);
  const maxs = new Float64Array(channels).fill(-Infinity);
  for (let r = 0; r < k; r++) {
    for (let c = 0; c < n; c++) {
      const v = w[r * n + c]!;
      const ch = opts.perChannel ? c : 0;
      if (v < mins[ch]!) mins[ch] = v;
      if (v > maxs[ch]!) maxs[ch] = v;
    }
  }
  const scales = new Float32Array(channels);
  const zeroPoints = new Int8Array(channels);
  for (let ch = 0; ch < channels; ch++) {
    const sz = scaleZeroPoint(mins[ch]!, maxs[ch]!, opts);
    scales[ch] = sz.scale;
    zeroPoints[ch] = sz.zeroPoint;
  }
  const data = new Int8Array(k * n);
  for (let r = 0; r < k; r++) {
    for (let c = 0; c < n; c++) {
      const ch = opts.perChannel ? c : 0;
      const q = roundHalfEven(w[r * n + c]! / scales[ch]!) + zeroPoints[ch]!;
      data[r * n + c] = clamp(q, qmin, qmax);
    }
  }
  return { data, scales, zeroPoints, perChannel: opts.perChannel };
}

/** The float matrix an Int8Matrix stands for: (q - zero point) * scale. */
export function dequantizeInt8(m: Int8Matrix, k: number, n: number): Float32Array {
  const out = new Float32Array(k * n);
  for (let r = 0; r < k; r++) {
    for (let c = 0; c < n; c++) {
      const ch = m.perChannel ? c : 0;
      out[r * n + c] = (m.data[r * n + c]! - m.zeroPoints[ch]!) * m.scales[ch]!;
    }
  }
  return out;
}

/** Transpose a row-major [rows, cols] matrix (Gemm transB=1 stores B as [N, K]). */
export function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = w[r * cols + c]!;
  return out;
}
