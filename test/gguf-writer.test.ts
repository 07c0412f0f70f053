/**
 * The GGUF writer of bench/peers.ts, read back by an independent reader written here from the
 * format's description (ggml docs/gguf.md): header, metadata, tensor infos, offsets and alignment,
 * F32 data exact, Q8_0 blocks within half a quantization step. node-llama-cpp is not loaded here
 * (the bench's dependency only); bench/peers.ts loads these files into llama.cpp.
 */
import { describe, expect, it } from "vitest";
import {
  dequantizeQ8_0,
  encodeGguf,
  type GgufTensor,
  Q8_0_BLOCK,
  Q8_0_BLOCK_BYTES,
  quantizeQ8_0,
} from "../bench/peers/gguf-writer.js";
import { llamaGguf, llamaParameters, llamaShapeOf } from "../bench/peers/llama-shape.js";
import { float16ToFloat32 } from "../src/onnx/tensor.js";
import { createRng } from "../src/runtime/sampling.js";

interface ReadTensor {
  name: string;
  dims: number[];
  type: number;
  offset: number;
}

/** A minimal GGUF reader: what llama.cpp's gguf_init_from_file checks, on bytes in memory. */
function readGguf(bytes: Uint8Array) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let p = 0;
  const u32 = () => {
    const v = view.getUint32(p, true);
    p += 4;
    return v;
  };
  const u64 = () => {
    const v = view.getBigUint64(p, true);
    p += 8;
    return Number(v);
  };
  const str = () => {
    const n = u64();
    const s = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(p, p + n));
    p += n;
    return s;
  };
  const value = (type: number): unknown => {
    switch (type) {
      case 0:
        return view.getUint8(p++);
      case 4:
        return u32();
      case 5: {
        const v = view.getInt32(p, true);
        p += 4;
        return v;
      }
      case 6: {
        const v = view.getFloat32(p, true);
        p += 4;
        return v;
      }
      case 7:
        return view.getUint8(p++) !== 0;
      case 8:
        return str();
      case 9: {
        const elem = u32();
        const n = u64();
        return Array.from({ length: n }, () => value(elem));
      }
      default:
        throw new Error(`value type ${type} not expected from this writer`);
    }
  };
  const magic = new TextDecoder().decode(bytes.subarray(0, 4));
  p = 4;
  const version = u32();
  const tensorCount = u64();
  const kvCount = u64();
  const metadata = new Map<string, { type: number; value: unknown }>();
  for (let i = 0; i < kvCount; i++) {
    const key = str();
    const type = u32();
    metadata.set(key, { type, value: value(type) });
  }
  const tensors: ReadTensor[] = [];
  for (let i = 0; i < tensorCount; i++) {
    const name = str();
    const nDims = u32();
    const dims = Array.from({ length: nDims }, u64);
    tensors.push({ name, dims, type: u32(), offset: u64() });
  }
  const alignment = (metadata.get("general.alignment")?.value as number | undefined) ?? 32;
  const dataStart = Math.ceil(p / alignment) * alignment;
  return { magic, version, metadata, tensors, alignment, headerEnd: p, dataStart };
}

function tensorByteLength(t: ReadTensor): number {
  const n = t.dims.reduce((a, b) => a * b, 1);
  return t.type === 8 ? (n / Q8_0_BLOCK) * Q8_0_BLOCK_BYTES : 4 * n;
}

function randomValues(n: number, seed: number, scale: number): Float32Array {
  const rng = createRng(seed);
  return Float32Array.from({ length: n }, () => (rng() * 2 - 1) * scale);
}

describe("GGUF writer", () => {
  const f32: GgufTensor = { name: "a.weight", dims: [3, 5], type: "F32", data: randomValues(15, 1, 2) };
  const q8: GgufTensor = { name: "b.weight", dims: [64, 3], type: "Q8_0", data: randomValues(192, 2, 0.5) };
  const norm: GgufTensor = { name: "c.weight", dims: [7], type: "F32", data: randomValues(7, 3, 1) };
  const bytes = encodeGguf({
    metadata: {
      "general.architecture": { type: "string", value: "llama" },
      "llama.block_count": { type: "uint32", value: 3 },
      "llama.attention.layer_norm_rms_epsilon": { type: "float32", value: 1e-5 },
      "tokenizer.ggml.tokens": { type: "string[]", value: ["<unk>", "ä", "t2"] },
      "tokenizer.ggml.merges": { type: "string[]", value: [] },
      "tokenizer.ggml.token_type": { type: "int32[]", value: [2, 1, -1] },
      "tokenizer.ggml.add_bos_token": { type: "bool", value: false },
    },
    tensors: [f32, q8, norm],
  });
  const file = readGguf(bytes);

  it("writes a v3 header and every key with its type and value", () => {
    expect(file.magic).toBe("GGUF");
    expect(file.version).toBe(3);
    expect([...file.metadata.keys()]).toEqual([
      "general.architecture",
      "llama.block_count",
      "llama.attention.layer_norm_rms_epsilon",
      "tokenizer.ggml.tokens",
      "tokenizer.ggml.merges",
      "tokenizer.ggml.token_type",
      "tokenizer.ggml.add_bos_token",
    ]);
    expect(file.metadata.get("general.architecture")).toEqual({ type: 8, value: "llama" });
    expect(file.metadata.get("llama.block_count")).toEqual({ type: 4, value: 3 });
    expect(file.metadata.get("llama.attention.layer_norm_rms_epsilon")?.type).toBe(6);
    expect(file.metadata.get("llama.attention.layer_norm_rms_epsilon")?.value).toBeCloseTo(1e-5, 10);
    expect(file.metadata.get("tokenizer.ggml.tokens")).toEqual({ type: 9, value: ["<unk>", "ä", "t2"] });
    expect(file.metadata.get("tokenizer.ggml.merges")).toEqual({ type: 9, value: [] });
    expect(file.metadata.get("tokenizer.ggml.token_type")?.value).toEqual([2, 1, -1]);
    expect(file.metadata.get("tokenizer.ggml.add_bos_token")).toEqual({ type: 7, value: false });
  });

  it("places each tensor at an aligned offset, in order, and ends the file after the last one", () => {
    expect(file.tensors.map((t) => [t.name, t.dims, t.type])).toEqual([
      ["a.weight", [3, 5], 0],
      ["b.weight", [64, 3], 8],
      ["c.weight", [7], 0],
    ]);
    expect(file.dataStart % 32).toBe(0);
    // the padding between header and data is zeros
    expect([...bytes.subarray(file.headerEnd, file.dataStart)].every((b) => b === 0)).toBe(true);
    let expected = 0;
    for (const t of file.tensors) {
      expect(t.offset % file.alignment).toBe(0);
      expect(t.offset).toBe(expected);
      expected = Math.ceil((t.offset + tensorByteLength(t)) / 32) * 32;
    }
    expect(bytes.length).toBe(file.dataStart + expected);
  });

  it("stores F32 tensors bit for bit", () => {
    for (const [i, t] of [f32, norm].entries()) {
      const info = file.tensors[i === 0 ? 0 : 2]!;
      const start = file.dataStart + info.offset;
      const back = new Float32Array(bytes.slice(start, start + 4 * t.data.length).buffer);
      expect(back).toEqual(t.data);
    }
  });

  it("stores Q8_0 blocks (fp16 scale = max|x|/127, then 32 int8) within half a step of the values", () => {
    const info = file.tensors[1]!;
    const start = file.dataStart + info.offset;
    const stored = bytes.slice(start, start + tensorByteLength(info));
    const view = new DataView(stored.buffer);
    for (let b = 0; b < q8.data.length / Q8_0_BLOCK; b++) {
      const block = q8.data.subarray(b * Q8_0_BLOCK, (b + 1) * Q8_0_BLOCK);
      const amax = Math.max(...block.map(Math.abs));
      const d = float16ToFloat32(new Uint16Array([view.getUint16(b * Q8_0_BLOCK_BYTES, true)]))[0]!;
      expect(Math.abs(d - amax / 127)).toBeLessThan((amax / 127) * 1e-3);
      let maxQ = 0;
      for (let j = 0; j < Q8_0_BLOCK; j++) {
        const q = view.getInt8(b * Q8_0_BLOCK_BYTES + 2 + j);
        maxQ = Math.max(maxQ, Math.abs(q));
        // the fp16 rounding of d moves the reconstruction by at most 127 · (its relative error)
        expect(Math.abs(q * d - block[j]!)).toBeLessThanOrEqual(d / 2 + amax * 1e-3);
      }
      expect(maxQ).toBe(127);
    }
    expect(dequantizeQ8_0(stored)).toEqual(dequantizeQ8_0(quantizeQ8_0(q8.data)));
  });

  it("refuses what llama.cpp could not read", () => {
    expect(() =>
      encodeGguf({
        metadata: {},
        tensors: [{ name: "x", dims: [48, 2], type: "Q8_0", data: new Float32Array(96) }],
      }),
    ).toThrow(/multiple of 32/);
    expect(() =>
      encodeGguf({
        metadata: {},
        tensors: [{ name: "x", dims: [4, 2], type: "F32", data: new Float32Array(7) }],
      }),
    ).toThrow(/hold 8 values/);
    expect(() => encodeGguf({ metadata: {}, tensors: [f32, f32] })).toThrow(/twice/);
  });

  it("an all-zero Q8_0 block has scale 0 and zeros, not NaN", () => {
    const back = dequantizeQ8_0(quantizeQ8_0(new Float32Array(32)));
    expect([...back].every((x) => x === 0)).toBe(true);
  });
});

describe("same-shape llama of a house model", () => {
  it("transformer-tiny: its heads and sizes, a feed-forward width that matches its parameter count", async () => {
    const shape = await llamaShapeOf("models/transformer-tiny", "transformer-tiny");
    expect(shape).toMatchObject({ vocab: 66, hidden: 192, layers: 4, heads: 6, kvHeads: 6, headDim: 32 });
    expect(shape.ffn % 32).toBe(0);
    // within one 32-wide step of the feed-forward width: 3 · hidden · layers · 32 parameters
    expect(Math.abs(llamaParameters(shape) - shape.houseParameters)).toBeLessThanOrEqual(3 * 192 * 4 * 16);

    const file = readGguf(encodeGguf(llamaGguf(shape, "Q8_0")));
    const meta = (k: string) => file.metadata.get(k)?.value;
    expect(meta("general.architecture")).toBe("llama");
    expect(meta("llama.embedding_length")).toBe(192);
    expect(meta("llama.feed_forward_length")).toBe(shape.ffn);
    expect((meta("tokenizer.ggml.tokens") as string[]).length).toBe(66);
    const elements = file.tensors.reduce((a, t) => a + t.dims.reduce((x, y) => x * y, 1), 0);
    expect(elements).toBe(llamaParameters(shape));
    const byName = new Map(file.tensors.map((t) => [t.name, t]));
    expect(byName.get("token_embd.weight")).toMatchObject({ dims: [192, 66], type: 8 });
    expect(byName.get("blk.3.ffn_down.weight")).toMatchObject({ dims: [shape.ffn, 192], type: 8 });
    expect(byName.get("blk.0.attn_norm.weight")).toMatchObject({ dims: [192], type: 0 });
    // tied head, as the house model's
    expect(byName.has("output.weight")).toBe(false);
  });
});
