import { describe, expect, it } from "vitest";
import {
  dequantizeMatMulNBits,
  dequantizeRows,
  isValidBlockSize,
  packBits,
  quantizeMatMulNBits,
  quantizeRowsBlockwise,
  unpackBits,
} from "../src/quantize/blockwise.js";
import { float16ToFloat32, float32ToFloat16 } from "../src/onnx/index.js";
import {
  dequantizeInt8,
  quantizeInt8,
  roundHalfEven,
  scaleZeroPoint,
  transpose,
} from "../src/quantize/linear.js";
import { createRng } from "../src/runtime/sampling.js";

/** Deterministic pseudo-random floats (the sampler's seeded PRNG), so failures reproduce. */
function randomMatrix(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const r = createRng(seed);
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * r());
}

// fp16 conversion lives in src/onnx (shared with the packager); the quantizer's fp16 mode relies on it
// being bit-exact, so it is pinned down here.
const float32ToFloat16Bits = (v: number) => float32ToFloat16(Float32Array.of(v))[0]!;
const float16BitsToFloat32 = (h: number) => float16ToFloat32(Uint16Array.of(h))[0]!;

describe("fp16", () => {
  it("converts exact values, specials and rounds to nearest even", () => {
    const cases: [number, number][] = [
      [0, 0x0000],
      [-0, 0x8000],
      [1, 0x3c00],
      [-2, 0xc000],
      [65504, 0x7bff], // largest half
      [65520, 0x7c00], // rounds up to infinity
      [65519, 0x7bff],
      [Infinity, 0x7c00],
      [-Infinity, 0xfc00],
      [2 ** -14, 0x0400], // smallest normal
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // exactly half of it: ties to even (0)
      [1.5 * 2 ** -25, 0x0001],
      [3 * 2 ** -25, 0x0002], // 1.5 subnormal ulps: ties to even (2)
      [1 + 2 ** -11, 0x3c00], // halfway between 1 and next: even (1)
      [1 + 3 * 2 ** -11, 0x3c02], // halfway between 1+ulp and 1+2ulp: even
      [0.1, 0x2e66],
    ];
    for (const [v, bits] of cases) expect(float32ToFloat16Bits(v), `value ${v}`).toBe(bits);
    expect(Number.isNaN(float16BitsToFloat32(float32ToFloat16Bits(Number.NaN)))).toBe(true);
    expect(float32ToFloat16Bits(Number.NaN) & 0x7c00).toBe(0x7c00);
  });

  it("round-trips every finite half exactly", () => {
    for (let h = 0; h < 0x10000; h++) {
      if ((h & 0x7c00) === 0x7c00) continue;
      expect(float32ToFloat16Bits(float16BitsToFloat32(h))).toBe(h);
    }
  });
});

describe("int8 linear", () => {
  it("rounds half to even", () => {
    expect([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4, -2.6].map(roundHalfEven)).toEqual([
      0, 2, 2, -0, -2, -2, 2, -3,
    ]);
  });

  it("symmetric scales map the largest magnitude to ±127 (±64 reduced)", () => {
    expect(scaleZeroPoint(-2, 1, { symmetric: true, reduceRange: false })).toEqual({
      scale: Math.fround(4 / 254),
      zeroPoint: 0,
    });
    expect(scaleZeroPoint(-2, 1, { symmetric: true, reduceRange: true }).scale).toBe(Math.fround(4 / 128));
  });

  it("asymmetric ranges include zero exactly", () => {
    const { scale, zeroPoint } = scaleZeroPoint(0.5, 3, { symmetric: false, reduceRange: false });
    expect(scale).toBe(Math.fround(3 / 255));
    expect(zeroPoint).toBe(-128); // min(0.5, 0) = 0 maps to qmin
  });

  for (const perChannel of [false, true]) {
    for (const symmetric of [false, true]) {
      for (const reduceRange of [false, true]) {
        it(`quantizes within half a step (perChannel=${perChannel} symmetric=${symmetric} reduce=${reduceRange})`, () => {
          const k = 37;
          const n = 11;
          const w = randomMatrix(k * n, 7, -3, 2);
          for (let i = 0; i < k; i++) w[i * n + 3] = w[i * n + 3]! * 0.01; // one small column
          const q = quantizeInt8(w, k, n, { perChannel, symmetric, reduceRange });
          const lo = symmetric ? (reduceRange ? -64 : -127) : reduceRange ? -64 : -128;
          const hi = reduceRange ? (symmetric ? 64 : 63) : 127;
          expect(Math.min(...q.data)).toBeGreaterThanOrEqual(lo);
          expect(Math.max(...q.data)).toBeLessThanOrEqual(hi);
          const d = dequantizeInt8(q, k, n);
          for (let i = 0; i < w.length; i++) {
            const scale = q.scales[perChannel ? i % n : 0]!;
            expect(Math.abs(d[i]! - w[i]!)).toBeLessThanOrEqual(scale / 2 + 1e-7);
          }
          expect(q.scales.length).toBe(perChannel ? n : 1);
        });
      }
    }
  }

  it("transposes", () => {
    expect(Array.from(transpose(Float32Array.from([1, 2, 3, 4, 5, 6]), 2, 3))).toEqual([1, 4, 2, 5, 3, 6]);
  });
});

describe("block-wise", () => {
  it("accepts only powers of two >= 16 as block sizes", () => {
    expect([16, 32, 64, 128, 256].every(isValidBlockSize)).toBe(true);
    expect([0, 8, 24, 33, -32, 1.5].some(isValidBlockSize)).toBe(false);
  });

  it("packs 4-bit values low nibble first, 2-bit low bits first", () => {
    const out = new Uint8Array(2);
    packBits([1, 2, 3, 15], 4, out);
    expect(Array.from(out)).toEqual([0x21, 0xf3]);
    const two = new Uint8Array(1);
    packBits([1, 2, 3, 0], 2, two);
    expect(two[0]).toBe(0b00111001);
    expect(Array.from(unpackBits(out, 4, 4))).toEqual([1, 2, 3, 15]);
  });

  it("lays out B as [N, k_blocks, blob_size] with K padded by the zero point", () => {
    // K = 20 with block 16: two blocks, the second holds 4 real values and 12 padding values.
    const k = 20;
    const n = 3;
    const b = randomMatrix(k * n, 3);
    const q = quantizeMatMulNBits(b, k, n, { bits: 4, blockSize: 16, symmetric: false });
    expect(q.kBlocks).toBe(2);
    expect(q.blobSize).toBe(8);
    expect(q.packed.length).toBe(n * 2 * 8);
    expect(q.scales.length).toBe(n * 2);
    expect(q.zeroPoints!.length).toBe(n * 1); // ceil(2 * 4 / 8)
    for (let col = 0; col < n; col++) {
      // element (k=0, n=col) is the low nibble of the first byte of row col
      expect(q.packed[col * 16]! & 0x0f).toBe(q.codes[col * 32]);
      expect(q.packed[col * 16]! >>> 4).toBe(q.codes[col * 32 + 1]);
      const zp1 = q.zeroPoints![col]! >>> 4; // second block's zero point: high nibble
      expect(zp1).toBe(q.zeroPointValues[col * 2 + 1]);
      for (let pad = 20; pad < 32; pad++) expect(q.codes[col * 32 + pad]).toBe(zp1);
    }
    const d = dequantizeMatMulNBits(q);
    for (let i = 0; i < b.length; i++) {
      const blk = Math.floor(Math.floor(i / n) / 16);
      const scale = q.scales[(i % n) * 2 + blk]!;
      expect(Math.abs(d[i]! - b[i]!)).toBeLessThanOrEqual(Math.abs(scale) / 2 + 1e-7);
    }
  });

  for (const bits of [4, 8] as const) {
    for (const symmetric of [true, false]) {
      it(`${bits}-bit ${symmetric ? "symmetric" : "asymmetric"} stays within half a step`, () => {
        const rows = 5;
        const cols = 96;
        const w = randomMatrix(rows * cols, 11, -0.7, 1.3);
        const q = quantizeRowsBlockwise(w, rows, cols, { bits, blockSize: 32, symmetric });
        expect(q.zeroPoints === null).toBe(symmetric);
        const d = dequantizeRows(q);
        let maxErr = 0;
        for (let i = 0; i < w.length; i++) {
          const scale = Math.abs(q.scales[Math.floor(i / cols) * 3 + Math.floor((i % cols) / 32)]!);
          const err = Math.abs(d[i]! - w[i]!);
          expect(err).toBeLessThanOrEqual(scale / 2 + 1e-6);
          maxErr = Math.max(maxErr, err);
        }
        expect(maxErr).toBeGreaterThan(0); // the check is able to see an error at all
        if (symmetric) {
          // the value of largest magnitude in each block is reproduced exactly (it maps to -2^(bits-1))
          for (let r = 0; r < rows; r++) {
            let idx = r * cols;
            for (let c = 0; c < 32; c++)
              if (Math.abs(w[r * cols + c]!) > Math.abs(w[idx]!)) idx = r * cols + c;
            expect(d[idx]).toBeCloseTo(w[idx]!, 6);
          }
        }
      });
    }
  }

  it("the clipping search never increases a block's squared error, and lowers it around an outlier", () => {
    const rows = 8;
    const cols = 64;
    const w = randomMatrix(rows * cols, 21, -1, 1);
    w[5] = 9; // one outlier in the first block of row 0
    const err = (q: ReturnType<typeof quantizeRowsBlockwise>) => {
      const d = dequantizeRows(q);
      const perBlock = new Float64Array(rows * 2);
      for (let i = 0; i < w.length; i++) {
        const b = Math.floor(i / cols) * 2 + Math.floor((i % cols) / 32);
        perBlock[b] = perBlock[b]! + (d[i]! - w[i]!) ** 2;
      }
      return perBlock;
    };
    for (const symmetric of [false, true]) {
      const plain = err(quantizeRowsBlockwise(w, rows, cols, { bits: 4, blockSize: 32, symmetric }));
      const searched = quantizeRowsBlockwise(w, rows, cols, {
        bits: 4,
        blockSize: 32,
        symmetric,
        searchClipping: true,
      });
      const e = err(searched);
      for (let b = 0; b < e.length; b++) expect(e[b]!).toBeLessThanOrEqual(plain[b]! + 1e-12);
      expect(e.reduce((a, x) => a + x, 0)).toBeLessThan(plain.reduce((a, x) => a + x, 0));
      expect(Math.max(...searched.codes)).toBeLessThanOrEqual(15);
    }
  });

  it("all-zero blocks dequantize to zero", () => {
    const q = quantizeRowsBlockwise(new Float32Array(32), 1, 32, {
      bits: 4,
      blockSize: 16,
      symmetric: false,
    });
    expect(Array.from(dequantizeRows(q)).every((v) => v === 0)).toBe(true);
    const s = quantizeRowsBlockwise(new Float32Array(32), 1, 32, { bits: 4, blockSize: 16, symmetric: true });
    expect(Array.from(dequantizeRows(s)).every((v) => v === 0)).toBe(true);
  });
});
