/**
 * Each rewritten op, run by a real onnxruntime-node session, against a dequantize-then-float
 * reference computed here.
 */
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { InferenceSession, Tensor } from "onnxruntime-node";
import { beforeAll, describe, expect, it } from "vitest";
import {
  DataType,
  float16ToFloat32,
  float32ToFloat16,
  Graph,
  loadModel,
  type ModelProto,
  saveModel,
  tensorToTyped,
} from "../src/onnx/index.js";
import {
  dequantizeMatMulNBits,
  dequantizeRows,
  quantizeMatMulNBits,
  quantizeRowsBlockwise,
} from "../src/quantize/blockwise.js";
import { dequantizeInt8, quantizeInt8, roundHalfEven, transpose } from "../src/quantize/linear.js";
import type { Precision } from "../src/quantize/options.js";
import { applyPrecisions } from "../src/quantize/rewrite.js";
import { countQuantizedNodes, findSites } from "../src/quantize/sites.js";
import { BASE_PARAMS, relError } from "./quantize-helpers.js";
import { tempDir } from "./temp-dir.js";

let dir: string;
beforeAll(async () => {
  dir = await tempDir("itera-qops-");
  execFileSync("/usr/bin/python3", [join(__dirname, "fixtures/quantize/make_graphs.py"), dir]);
});

function seq(n: number, seed: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.7 + seed) * 1.5);
}

/** [M, K] x [K, N] in float64 */
function matmul(a: ArrayLike<number>, b: ArrayLike<number>, m: number, k: number, n: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let t = 0; t < k; t++) acc += a[i * k + t]! * b[t * n + j]!;
      out[i * n + j] = acc;
    }
  return out;
}

async function quantized(file: string, choose: (site: string) => Precision, params = {}) {
  const model = await loadModel(join(dir, file));
  const sites = findSites(new Graph(model.graph!));
  const choice = new Map(sites.map((s) => [s.name, choose(s.name)]));
  const applied = applyPrecisions(model, sites, choice, { ...BASE_PARAMS, ...params });
  const out = join(dir, `${file}.${Math.random().toString(36).slice(2)}.onnx`);
  await saveModel(out, model);
  return { out, applied, model };
}

async function run(path: string, feeds: Record<string, Tensor>, optimized?: string) {
  const session = await InferenceSession.create(path, optimized ? { optimizedModelFilePath: optimized } : {});
  const r = await session.run(feeds);
  await session.release();
  return r;
}

async function floatWeight(file: string, name: string): Promise<Float32Array> {
  const g = new Graph((await loadModel(join(dir, file))).graph!);
  return tensorToTyped(g.initializer(name)!) as Float32Array;
}

function opTypes(model: ModelProto): string[] {
  return model.graph!.node.map((n) => n.opType ?? "");
}

/** DynamicQuantizeLinear as the ONNX spec defines it (uint8, range widened to include 0). */
function dynamicQuantize(x: Float32Array): { q: Uint8Array; scale: number; zp: number } {
  const lo = Math.min(0, ...x);
  const hi = Math.max(0, ...x);
  const scale = Math.fround((hi - lo) / 255);
  const zp = Math.min(255, Math.max(0, roundHalfEven(-lo / scale)));
  const q = Uint8Array.from(x, (v) => Math.min(255, Math.max(0, roundHalfEven(v / scale) + zp)));
  return { q, scale, zp };
}

const M = 6; // batch 2 x seq 3

describe("MatMul -> MatMulNBits (weight-only, accuracy level 0)", () => {
  for (const bits of [4, 8] as const) {
    for (const symmetric of [false, true]) {
      for (const blockSize of [16, 32, 64]) {
        it(`${bits}-bit ${symmetric ? "symmetric" : "asymmetric"} block ${blockSize} matches dequantize-then-float`, async () => {
          const precision: Precision = bits === 4 ? "int4" : "int8-wo";
          const { out, applied, model } = await quantized("linear.onnx", () => precision, {
            blockSize,
            symmetric,
          });
          expect(applied.map((a) => a.site)).toEqual(["fc1", "fc2"]); // the non-constant MatMul is left alone
          expect(opTypes(model).filter((o) => o === "MatMulNBits")).toHaveLength(2);
          expect(opTypes(model)).toContain("MatMul");
          const x = seq(M * 80, 1);
          const r = await run(out, {
            x: new Tensor("float32", x, [2, 3, 80]),
            a: new Tensor("float32", seq(6, 2), [2, 3]),
            b: new Tensor("float32", seq(12, 3), [3, 4]),
          });
          const opts = { bits, blockSize, symmetric };
          const w1 = dequantizeMatMulNBits(
            quantizeMatMulNBits(await floatWeight("linear.onnx", "w1"), 80, 48, opts),
          );
          const w2 = dequantizeMatMulNBits(
            quantizeMatMulNBits(await floatWeight("linear.onnx", "w2"), 48, 24, opts),
          );
          const h = matmul(x, w1, M, 80, 48).map((v) => Math.max(0, Math.fround(v)));
          const want = matmul(h, w2, M, 48, 24);
          expect(relError(r.y!.data as Float32Array, want)).toBeLessThanOrEqual(1e-5);
          // and the quantization did something: the float model's answer differs
          const wf = matmul(
            matmul(x, await floatWeight("linear.onnx", "w1"), M, 80, 48).map((v) => Math.max(0, v)),
            await floatWeight("linear.onnx", "w2"),
            M,
            48,
            24,
          );
          expect(relError(r.y!.data as Float32Array, wf)).toBeGreaterThan(1e-4);
          // the dynamic MatMul still computes a @ b
          expect(relError(r.ab!.data as Float32Array, matmul(seq(6, 2), seq(12, 3), 2, 3, 4))).toBeLessThan(
            1e-6,
          );
        });
      }
    }
  }
});

describe("MatMulNBits with the clipping search", () => {
  it("matches its own dequantized weights exactly as the plain form does", async () => {
    const { out } = await quantized("linear.onnx", () => "int4", { searchClipping: true });
    const x = seq(M * 80, 6);
    const r = await run(out, {
      x: new Tensor("float32", x, [2, 3, 80]),
      a: new Tensor("float32", seq(6, 2), [2, 3]),
      b: new Tensor("float32", seq(12, 3), [3, 4]),
    });
    const opts = { bits: 4 as const, blockSize: 32, symmetric: false, searchClipping: true };
    const w1 = dequantizeMatMulNBits(
      quantizeMatMulNBits(await floatWeight("linear.onnx", "w1"), 80, 48, opts),
    );
    const w2 = dequantizeMatMulNBits(
      quantizeMatMulNBits(await floatWeight("linear.onnx", "w2"), 48, 24, opts),
    );
    const want = matmul(
      matmul(x, w1, M, 80, 48).map((v) => Math.max(0, Math.fround(v))),
      w2,
      M,
      48,
      24,
    );
    expect(relError(r.y!.data as Float32Array, want)).toBeLessThanOrEqual(1e-5);
  });
});

describe("MatMulNBits at accuracy level 4 (int8 compute)", () => {
  it("runs, and stays close to the dequantized reference (activations quantized per block)", async () => {
    const { out } = await quantized("linear.onnx", () => "int4", { accuracyLevel: 4 });
    const x = seq(M * 80, 5);
    const r = await run(out, {
      x: new Tensor("float32", x, [2, 3, 80]),
      a: new Tensor("float32", seq(6, 2), [2, 3]),
      b: new Tensor("float32", seq(12, 3), [3, 4]),
    });
    const opts = { bits: 4 as const, blockSize: 32, symmetric: false };
    const w1 = dequantizeMatMulNBits(
      quantizeMatMulNBits(await floatWeight("linear.onnx", "w1"), 80, 48, opts),
    );
    const w2 = dequantizeMatMulNBits(
      quantizeMatMulNBits(await floatWeight("linear.onnx", "w2"), 48, 24, opts),
    );
    const want = matmul(
      matmul(x, w1, M, 80, 48).map((v) => Math.max(0, v)),
      w2,
      M,
      48,
      24,
    );
    expect(relError(r.y!.data as Float32Array, want)).toBeLessThan(0.02);
  });
});

describe("MatMul -> int8 dynamic (DynamicQuantizeLinear + MatMulInteger + Cast + Mul)", () => {
  for (const perChannel of [false, true]) {
    for (const reduceRange of [false, true]) {
      for (const symmetric of [true, false]) {
        it(`perChannel=${perChannel} reduceRange=${reduceRange} symmetric=${symmetric} matches the integer reference`, async () => {
          const params = { perChannel, reduceRange, symmetric };
          const { out, model } = await quantized("linear.onnx", (s) => (s === "fc1" ? "int8" : "fp32"), {
            perChannel,
            reduceRange,
            int8Symmetric: symmetric,
          });
          expect(opTypes(model)).toEqual(
            expect.arrayContaining(["DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "MatMul"]),
          );
          const x = seq(M * 80, 4);
          const optimized = `${out}.optimized.onnx`;
          const r = await run(
            out,
            {
              x: new Tensor("float32", x, [2, 3, 80]),
              a: new Tensor("float32", seq(6, 2), [2, 3]),
              b: new Tensor("float32", seq(12, 3), [3, 4]),
            },
            optimized,
          );
          // onnxruntime fuses the pattern into its DynamicQuantizeMatMul kernel
          expect(opTypes(await loadModel(optimized))).toContain("DynamicQuantizeMatMul");
          const w1 = quantizeInt8(await floatWeight("linear.onnx", "w1"), 80, 48, params);
          const { q, scale, zp } = dynamicQuantize(x);
          const xq = Float64Array.from(q, (v) => v - zp);
          const wq = Float64Array.from(w1.data, (v, i) => v - w1.zeroPoints[perChannel ? i % 48 : 0]!);
          const acc = matmul(xq, wq, M, 80, 48); // exact integers
          const h = acc.map((v, i) => Math.max(0, v * scale * w1.scales[perChannel ? i % 48 : 0]!));
          const want = matmul(h, await floatWeight("linear.onnx", "w2"), M, 48, 24);
          expect(relError(r.y!.data as Float32Array, want)).toBeLessThanOrEqual(1e-5);
        });
      }
    }
  }
});

describe("Gemm (transB, alpha, beta, bias)", () => {
  async function gemmReference(w: (wt: Float32Array, k: number, n: number) => Float32Array) {
    const x = seq(5 * 64, 7);
    const wt = await floatWeight("gemm.onnx", "wt"); // [40, 64], transB=1
    const bias = await floatWeight("gemm.onnx", "bias");
    const wn = await floatWeight("gemm.onnx", "w"); // [40, 16]
    const w1 = w(
      transpose(wt, 40, 64).map((v) => v * 0.5),
      64,
      40,
    );
    const h = matmul(x, w1, 5, 64, 40).map((v, i) => v + 2 * bias[i % 40]!);
    return { x, want: matmul(h, w(wn, 40, 16), 5, 40, 16) };
  }

  it("int4 block-wise matches", async () => {
    const { out, applied } = await quantized("gemm.onnx", () => "int4", { blockSize: 16 });
    expect(applied).toHaveLength(2);
    const ref = await gemmReference((w, k, n) =>
      dequantizeMatMulNBits(quantizeMatMulNBits(w, k, n, { bits: 4, blockSize: 16, symmetric: false })),
    );
    const r = await run(out, { x: new Tensor("float32", ref.x, [5, 64]) });
    expect(relError(r.y!.data as Float32Array, ref.want)).toBeLessThanOrEqual(1e-5);
  });

  it("int8 dynamic keeps the bias and transB", async () => {
    const { out } = await quantized("gemm.onnx", () => "int8", { perChannel: true, int8Symmetric: true });
    const x = seq(5 * 64, 7);
    const r = await run(out, { x: new Tensor("float32", x, [5, 64]) });
    const ref = await gemmReference((w) => w);
    // activation quantization: compare with the float model within int8 error
    expect(relError(r.y!.data as Float32Array, ref.want)).toBeLessThan(0.03);
    const opts = { perChannel: true, symmetric: true, reduceRange: false };
    const exactWeights = await gemmReference((w, k, n) => dequantizeInt8(quantizeInt8(w, k, n, opts), k, n));
    expect(relError(r.y!.data as Float32Array, exactWeights.want)).toBeLessThan(0.03);
  });
});

describe("embeddings and the output head", () => {
  for (const [precision, bits] of [
    ["int4", 4],
    ["int8-wo", 8],
  ] as const) {
    for (const symmetric of [false, true]) {
      it(`Gather -> GatherBlockQuantized ${bits}-bit ${symmetric ? "symmetric" : "asymmetric"} returns the dequantized rows`, async () => {
        const { out, model } = await quantized("embed.onnx", (s) => (s === "embed" ? precision : "fp32"), {
          symmetric,
        });
        expect(opTypes(model)).toEqual(["GatherBlockQuantized", "MatMul"]);
        const ids = [3, 0, 49, 7, 7, 12];
        const r = await run(out, { ids: new Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [2, 3]) });
        const table = dequantizeRows(
          quantizeRowsBlockwise(await floatWeight("embed.onnx", "table"), 50, 64, {
            bits,
            blockSize: 32,
            symmetric,
          }),
        );
        const rows = ids.flatMap((id) => Array.from(table.subarray(id * 64, id * 64 + 64)));
        expect(relError(r.e!.data as Float32Array, rows)).toBeLessThanOrEqual(1e-6);
        const want = matmul(rows, await floatWeight("embed.onnx", "head"), 6, 64, 50);
        expect(relError(r.logits!.data as Float32Array, want)).toBeLessThanOrEqual(1e-5);
      });
    }
  }

  it("marks the projection to the graph output as the head", async () => {
    const sites = findSites(new Graph((await loadModel(join(dir, "embed.onnx"))).graph!));
    expect(sites.map((s) => [s.name, s.kind, s.head])).toEqual([
      ["embed", "embedding", false],
      ["lm_head", "linear", true],
    ]);
  });
});

describe("fp16 weights", () => {
  it("stores weights as float16 behind a Cast and computes with the rounded weights", async () => {
    const { out, model } = await quantized("linear.onnx", () => "fp16");
    const g = new Graph(model.graph!);
    expect(g.initializer("w1")).toBeUndefined();
    expect(g.initializer("w1_fp16")!.dataType).toBe(DataType.FLOAT16);
    const x = seq(M * 80, 9);
    const r = await run(out, {
      x: new Tensor("float32", x, [2, 3, 80]),
      a: new Tensor("float32", seq(6, 2), [2, 3]),
      b: new Tensor("float32", seq(12, 3), [3, 4]),
    });
    const half = (w: Float32Array) => float16ToFloat32(float32ToFloat16(w));
    const h = matmul(x, half(await floatWeight("linear.onnx", "w1")), M, 80, 48).map((v) => Math.max(0, v));
    const want = matmul(h, half(await floatWeight("linear.onnx", "w2")), M, 48, 24);
    expect(relError(r.y!.data as Float32Array, want)).toBeLessThanOrEqual(1e-5);
  });
});

describe("weights kept at fp32", () => {
  it("when block padding would make the weight bigger, or an embedding row is not whole blocks", async () => {
    const { precisionBytes, unsupportedReason } = await import("../src/quantize/rewrite.js");
    const params = { blockSize: 32, symmetric: false, accuracyLevel: 0 };
    const site = (kind: "linear" | "embedding", dims: [number, number]) =>
      ({ name: "s", kind, head: false, dims, weightName: "w", bytes: dims[0] * dims[1] * 4 }) as never;
    // K = 4 rows of a MoE combine: one 32-value block per column holds 28 values of padding
    expect(unsupportedReason(site("linear", [4, 128]), "int4", params)).toMatch(/would not be smaller/);
    expect(precisionBytes(site("linear", [4, 128]), "int4", params)).toBeGreaterThan(4 * 128 * 4);
    expect(unsupportedReason(site("linear", [128, 4]), "int4", params)).toBeUndefined();
    expect(unsupportedReason(site("embedding", [66, 48]), "int4", params)).toMatch(
      /not a multiple of the block size/,
    );
    expect(unsupportedReason(site("embedding", [66, 64]), "int8-wo", params)).toBeUndefined();
    expect(unsupportedReason(site("linear", [4, 128]), "fp16", params)).toBeUndefined();
  });
});

describe("graphs with nothing to do", () => {
  it("finds no sites in an already quantized graph and counts its quantized nodes", async () => {
    const g = new Graph((await loadModel(join(dir, "quantized.onnx"))).graph!);
    expect(findSites(g)).toEqual([]);
    expect(countQuantizedNodes(g)).toBe(2);
  });

  it("finds no sites in a graph without weights to quantize", async () => {
    const g = new Graph((await loadModel(join(dir, "plain.onnx"))).graph!);
    expect(findSites(g)).toEqual([]);
    expect(countQuantizedNodes(g)).toBe(0);
  });
});
