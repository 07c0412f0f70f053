/**
 * Block-wise weight quantization (2..8 bits) along K, packed exactly as onnxruntime's
 * com.microsoft.MatMulNBits and GatherBlockQuantized expect:
 * - B: uint8 [N, k_blocks, blob_size], blob_size = block_size * bits / 8; values along K packed
 *   low bits first (4-bit: element 2i in the low nibble of byte i); K zero-padded to whole blocks.
 * - scales: float32 [N, k_blocks].
 * - zero points (asymmetric only): uint8 [N, ceil(k_blocks * bits / 8)], packed the same way.
 *   Symmetric quantization omits them; the operator then uses 2^(bits-1).
 */
import { clamp, roundHalfEven } from "./linear.js";

export type Bits = 2 | 4 | 8;

export interface BlockwiseOptions {
  bits: Bits;
  blockSize: number;
  symmetric: boolean;
  /** choose each block's range among shrunk ones by least squared error (clips rare outliers) */
  searchClipping?: boolean;
}

/** Range shrink factors tried by the clipping search (1 = the full range, always a candidate). */
export const CLIP_SEARCH = [1, 0.95, 0.9, 0.85, 0.8, 0.75];

interface ScaleZero {
  scale: number;
  zp: number;
  inv: number;
}

/**
 * One block's scale and zero point for its range shrunk by `f`. Symmetric (as MLAS): the value of
 * largest magnitude, with its sign, maps to -2^(bits-1). Asymmetric: [min(0,lo), max(0,hi)] maps
 * onto 0..2^bits-1 with a rounded zero point, so that 0 is exact.
 */
function blockScale(block: Float32Array, bits: Bits, symmetric: boolean, f: number): ScaleZero {
  const levels = (1 << bits) - 1;
  const half = 1 << (bits - 1);
  let scale: number;
  let zp: number;
  if (symmetric) {
    let signedMax = 0;
    for (const v of block) if (Math.abs(v) > Math.abs(signedMax)) signedMax = v;
    scale = Math.fround((signedMax * f) / -half);
    zp = half;
  } else {
    let lo = 0;
    let hi = 0;
    for (const v of block) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    scale = Math.fround(((hi - lo) * f) / levels);
    zp = scale === 0 ? half : clamp(roundHalfEven((-lo * f) / scale), 0, levels);
  }
  return { scale, zp, inv: scale === 0 ? 0 : 1 / scale };
}

function quantizeValue(v: number, s: ScaleZero, levels: number): number {
  return clamp(roundHalfEven(v * s.inv) + s.zp, 0, levels);
}

function squaredError(block: Float32Array, s: ScaleZero, levels: number): number {
  let e = 0;
  for (const v of block) {
    const d = (quantizeValue(v, s, levels) - s.zp) * s.scale - v;
    e += d * d;
  }
  return e;
}

export interface BlockQuantized {
  /** Attributes of the operator. */
  k: number;
  n: number;
  bits: Bits;
  blockSize: number;
  kBlocks: number;
  blobSize: number;
  /** uint8 [N, kBlocks, blobSize] */
  packed: Uint8Array;
  /** float32 [N, kBlocks] */
  scales: Float32Array;
  /** uint8 [N, ceil(kBlocks*bits/8)], or null for symmetric (default zero point 2^(bits-1)). */
  zeroPoints: Uint8Array | null;
  /** The unpacked codes [N, kBlocks*blockSize] and zero points [N, kBlocks], for references and tests. */
  codes: Uint8Array;
  zeroPointValues: Uint8Array;
}

/** A block size onnxruntime accepts: a power of two, at least 16. */
export function isValidBlockSize(b: number): boolean {
  return Number.isInteger(b) && b >= 16 && (b & (b - 1)) === 0;
}

/** Pack unsigned `bits`-wide codes low bits first into bytes (count values -> ceil(count*bits/8) bytes). */
export function packBits(codes: ArrayLike<number>, bits: Bits, out: Uint8Array, outOffset = 0): void {
  const perByte = 8 / bits;
  const mask = (1 << bits) - 1;
  for (let i = 0; i < codes.length; i++) {
    const byte = outOffset + Math.floor(i / perByte);
    out[byte] = out[byte]! | ((codes[i]! & mask) << ((i % perByte) * bits));
  }
}

/** Inverse of packBits. */
export function unpackBits(bytes: Uint8Array, bits: Bits, count: number, offset = 0): Uint8Array {
  const perByte = 8 / bits;
  const mask = (1 << bits) - 1;
  const out = new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    out[i] = (bytes[offset + Math.floor(i / perByte)]! >>> ((i % perByte) * bits)) & mask;
  }
  return out;
}

/**
 * Quantize the rows of a [rows, cols] row-major matrix block-wise along cols.
 * For MatMulNBits, rows = N and cols = K (B transposed); for GatherBlockQuantized, rows are the
 * table's rows and cols its hidden size.
 */
export function quantizeRowsBlockwise(
  w: Float32Array,
  rows: number,
  cols: number,
  opts: BlockwiseOptions,
): BlockQuantized {
  if (!isValidBlockSize(opts.blockSize))
    throw new Error(`block size ${opts.blockSize} is not a power of two >= 16`);
  return quantizeRows(w, rows, cols, opts);
}

/**
 * quantizeRowsBlockwise for any block whose packed size is whole bytes, such as one block per row
 * (QMoE's per-row scales: blockSize = cols).
 */
export function quantizeRows(
  w: Float32Array,
  rows: number,
  cols: number,
  opts: BlockwiseOptions,
): BlockQuantized {
  const { bits, blockSize, symmetric } = opts;
  if (!Number.isInteger(blockSize) || blockSize < 1 || (blockSize * bits) % 8 !== 0)
    throw new Error(`block size ${blockSize} does not pack ${bits}-bit values into whole bytes`);
  if (w.length !== rows * cols)
    throw new Error(`quantizeRowsBlockwise: ${w.length} values for ${rows}x${cols}`);
  const kBlocks = Math.ceil(cols / blockSize);
  const padded = kBlocks * blockSize;
  const blobSize = (blockSize * bits) / 8;
  const levels = (1 << bits) - 1;
  const codes = new Uint8Array(rows * padded);
  const scales = new Float32Array(rows * kBlocks);
  const zeroPointValues = new Uint8Array(rows * kBlocks);

  const shrinks = opts.searchClipping ? CLIP_SEARCH : [1];
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < kBlocks; b++) {
      const start = r * cols + b * blockSize;
      const block = w.subarray(start, start + Math.min(blockSize, cols - b * blockSize));
      let best = blockScale(block, bits, symmetric, shrinks[0]!);
      let bestError = shrinks.length > 1 ? squaredError(block, best, levels) : 0;
      for (const f of shrinks.slice(1)) {
        const candidate = blockScale(block, bits, symmetric, f);
        const error = squaredError(block, candidate, levels);
        if (error < bestError) {
          best = candidate;
          bestError = error;
        }
      }
      scales[r * kBlocks + b] = best.scale;
      zeroPointValues[r * kBlocks + b] = best.zp;
      // Padding beyond `cols` holds the zero point: it dequantizes to exactly 0.
      for (let c = 0; c < blockSize; c++) {
        codes[r * padded + b * blockSize + c] = quantizeValue(c < block.length ? block[c]! : 0, best, levels);
      }
    }
  }

  const packed = new Uint8Array(rows * kBlocks * blobSize);
  for (let r = 0; r < rows; r++) {
    packBits(codes.subarray(r * padded, (r + 1) * padded), bits, packed, r * kBlocks * blobSize);
  }
  let zeroPoints: Uint8Array | null = null;
  if (!symmetric) {
    const zpBytes = Math.ceil((kBlocks * bits) / 8);
    zeroPoints = new Uint8Array(rows * zpBytes);
    for (let r = 0; r < rows; r++) {
      packBits(zeroPointValues.subarray(r * kBlocks, (r + 1) * kBlocks), bits, zeroPoints, r * zpBytes);
    }
  }
  return {
    k: cols,
    n: rows,
    bits,
    blockSize,
    kBlocks,
    blobSize,
    packed,
    scales,
    zeroPoints,
    codes,
    zeroPointValues,
  };
}

/**
 * Quantize MatMul's constant B ([K, N] row-major) for MatMulNBits: B is transposed to [N, K]
 * and each row quantized along K.
 */
export function quantizeMatMulNBits(
  b: Float32Array,
  k: number,
  n: number,
  opts: BlockwiseOptions,
): BlockQuantized {
  const bt = new Float32Array(k * n);
  for (let r = 0; r < k; r++) for (let c = 0; c < n; c++) bt[c * k + r] = b[r * n + c]!;
  return quantizeRowsBlockwise(bt, n, k, opts);
}

/** The float [rows, cols] matrix the quantized blocks stand for (padding dropped). */
export function dequantizeRows(q: BlockQuantized): Float32Array {
  const padded = q.kBlocks * q.blockSize;
  const out = new Float32Array(q.n * q.k);
  for (let r = 0; r < q.n; r++) {
    for (let c = 0; c < q.k; c++) {
      const blk = r * q.kBlocks + Math.floor(c / q.blockSize);
      out[r * q.k + c] = (q.codes[r * padded + c]! - q.zeroPointValues[blk]!) * q.scales[blk]!;
    }
  }
  return out;
}

/** Dequantized MatMul B back in its original [K, N] layout. */
export function dequantizeMatMulNBits(q: BlockQuantized): Float32Array {
  const rows = dequantizeRows(q);
  const out = new Float32Array(q.k * q.n);
  for (let r = 0; r < q.n; r++) for (let c = 0; c < q.k; c++) out[c * q.n + r] = rows[r * q.k + c]!;
  return out;
}
