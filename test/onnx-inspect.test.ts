import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFile, mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inspectPath, parseDims, registerInspect } from "../src/cli/commands/inspect.js";
import { IteraError } from "../src/errors.js";
import { locateModelFile } from "../src/model/folder.js";
import {
  attr,
  DataType,
  decodeModel,
  encodeModel,
  inferShapes,
  type ModelProto,
  makeNode,
  makeValueInfo,
  typedToTensor,
} from "../src/onnx/index.js";
import { analyzeModel } from "../src/onnx/report.js";
import { inProcessCli } from "./cli-helpers.js";
import { buildFixtures } from "./fixtures/onnx/build.js";
import { contribModel } from "./fixtures/onnx/contrib-model.js";

const exec = promisify(execFile);
let dir: string;
const models = ["tiny_gpt.onnx", "contrib_ops.onnx", "external/mlp.onnx"] as const;
const expectedFile = (m: string) => join(dir, m.replace(/\.onnx$/, ".expected.json"));

beforeAll(async () => {
  dir = await buildFixtures("tiny_gpt", "contrib_ops", "external_data", "flops", "genai_ops", "gpt2_contrib");
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("inspect: parameters and ops", () => {
  it.each(models)("%s: parameter counts, bytes and op histogram match the onnx package", async (m) => {
    const expected = JSON.parse(await readFile(expectedFile(m), "utf8"));
    const r = await inspectPath(join(dir, m));
    const elements = Object.fromEntries(r.parameters.byDtype.map((d) => [d.dtype, d.elements]));
    const bytes = Object.fromEntries(r.parameters.byDtype.map((d) => [d.dtype, d.bytes]));
    expect(elements).toEqual(expected.elements_by_dtype);
    expect(bytes).toEqual(expected.bytes_by_dtype);
    expect(Object.fromEntries(r.ops.map((o) => [o.op, o.count]))).toEqual(expected.op_histogram);
    expect(r.nodes).toBe(
      Object.values(expected.op_histogram as Record<string, number>).reduce((a, b) => a + b),
    );
  });

  it("the PyTorch export's float32 parameters are exactly the PyTorch model's parameters", async () => {
    const expected = JSON.parse(await readFile(expectedFile("tiny_gpt.onnx"), "utf8"));
    const { vocab, d, layers, ff } = expected.config;
    // embedding + per layer (2 LayerNorms, qkv, proj, fc1, fc2 with biases) + final LayerNorm + lm_head
    const byHand =
      vocab * d +
      layers * (4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d)) +
      2 * d +
      d * vocab;
    expect(expected.torch_parameters).toBe(byHand);
    const r = await inspectPath(join(dir, "tiny_gpt.onnx"));
    expect(r.parameters.elements).toBe(byHand);
    expect(r.parameters.bytes).toBe(byHand * 4);
    expect(r.opsets).toEqual([{ domain: "ai.onnx", version: 17 }]);
  });

  it("reports the com.microsoft opset and the kept unknown fields", async () => {
    const r = await inspectPath(join(dir, "contrib_ops.onnx"));
    expect(r.opsets).toEqual([
      { domain: "ai.onnx", version: 17 },
      { domain: "com.microsoft", version: 1 },
    ]);
    expect(r.messagesWithUnknownFields).toBe(2);
  });

  it("lists the external data file, and hashes the model file", async () => {
    const path = join(dir, "external/mlp.onnx");
    const r = await inspectPath(path);
    expect(r.externalData).toEqual([{ file: join(dir, "external/mlp.onnx.data"), bytes: 38912 }]);
    expect(r.sha256).toBe(
      createHash("sha256")
        .update(await readFile(path))
        .digest("hex"),
    );
  });
});

describe("inspect: inputs and outputs", () => {
  it.each(models)("%s: names, types and shapes agree with onnxruntime", async (m) => {
    const path = join(dir, m);
    const r = await inspectPath(path);
    const session = await ort.InferenceSession.create(path, { logSeverityLevel: 3 });
    try {
      expect(r.inputs.map((i) => i.name)).toEqual(session.inputNames);
      expect(r.outputs.map((o) => o.name)).toEqual(session.outputNames);
      const meta = (list: readonly ort.InferenceSession.ValueMetadata[]) =>
        list.map((v) => (v.isTensor ? { name: v.name, type: v.type, shape: v.shape } : { name: v.name }));
      expect(r.inputs).toEqual(meta(session.inputMetadata));
      expect(r.outputs).toEqual(meta(session.outputMetadata));
    } finally {
      await session.release();
    }
  });

  it("pairs the KV-cache state tensors", async () => {
    const r = await inspectPath(join(dir, "tiny_gpt.onnx"));
    expect(r.states.unpaired).toEqual([]);
    expect(r.states.pairs.map((p) => [p.input, p.output, p.layer, p.kind])).toEqual([
      ["past_key_values.0.key", "present.0.key", 0, "kv"],
      ["past_key_values.0.value", "present.0.value", 0, "kv"],
      ["past_key_values.1.key", "present.1.key", 1, "kv"],
      ["past_key_values.1.value", "present.1.value", 1, "kv"],
    ]);
  });
});

describe("inspect: FLOPs", () => {
  // flops.py: Gather 50x16, MatMul 16x32, Reshape, Gemm 32x8 + bias, Einsum bsd,de->bse with E 16x4,
  // Conv 6x3x3x3 stride 2 pad 1 on a 3x10x10 image (output 6x5x5) with bias.
  const byHand = (b: number, s: number) => ({
    MatMul: 2 * b * s * 16 * 32,
    Gemm: 2 * b * s * 32 * 8 + b * s * 8,
    Einsum: 2 * b * s * 16 * 4,
    Conv: 2 * b * 6 * 5 * 5 * (3 * 3 * 3) + b * 6 * 5 * 5,
    Gather: 0,
  });

  it.each([
    [{}, 1, 1],
    [{ batch_size: 2, sequence_length: 5 }, 2, 5],
  ])("matches the hand count for dims %j", async (dims, b, s) => {
    const r = await inspectPath(join(dir, "flops.onnx"), dims);
    const hand = byHand(b, s);
    expect(Object.fromEntries(r.flops.byOp.map((o) => [o.op, o.flops]))).toEqual(hand);
    const total = Object.values(hand).reduce((a, c) => a + c, 0);
    expect(r.flops.total).toBe(total);
    expect(r.flops.perToken).toBe(total / (b * s));
    expect(r.flops.unresolved).toEqual([]);
  });

  it("counts the transformer's matmuls, attention included, for a cached decode step", async () => {
    const expected = JSON.parse(await readFile(expectedFile("tiny_gpt.onnx"), "utf8"));
    const { vocab, d, heads, layers, ff } = expected.config;
    const flops = (s: number, past: number) => {
      const t = past + s;
      const perLayer =
        2 * s * d * 3 * d + 2 * heads * s * t * (d / heads) * 2 + 2 * s * d * d + 2 * 2 * s * d * ff;
      return layers * perLayer + 2 * s * d * vocab;
    };
    const step = await inspectPath(join(dir, "tiny_gpt.onnx"), { past_sequence_length: 7 });
    expect(step.flops.total).toBe(flops(1, 7));
    expect(step.flops.unresolved).toEqual([]);
    const prefill = await inspectPath(join(dir, "tiny_gpt.onnx"), { sequence_length: 4 });
    expect(prefill.flops.total).toBe(flops(4, 0));
    expect(prefill.flops.perToken).toBe(flops(4, 0) / 4);
  });

  it("names symbolic dims without a value and leaves their nodes unresolved, not guessed", async () => {
    const model = decodeModel(await readFile(join(dir, "flops.onnx")));
    const image = model.graph!.input.find((i) => i.name === "image")!;
    image.type!.tensorType!.shape!.dim[0] = { dimParam: "n_images" };
    const r = analyzeModel(model);
    expect(r.flops.missingDims).toEqual(["n_images"]);
    expect(r.flops.unresolved).toEqual([{ node: "out_conv", op: "Conv" }]);
    expect(r.flops.byOp.map((o) => o.op)).not.toContain("Conv");
    expect(analyzeModel(model, { n_images: 1 }).flops.total).toBe(
      (await inspectPath(join(dir, "flops.onnx"))).flops.total,
    );
  });

  it("infers the output shapes onnxruntime produces for the PyTorch export", async () => {
    const path = join(dir, "tiny_gpt.onnx");
    const [b, s, past] = [2, 3, 4];
    const session = await ort.InferenceSession.create(path, { logSeverityLevel: 3 });
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor("int64", new BigInt64Array(b * s).fill(1n), [b, s]),
    };
    for (const name of session.inputNames.filter((n) => n.startsWith("past_")))
      feeds[name] = new ort.Tensor("float32", new Float32Array(b * 4 * past * 8), [b, 4, past, 8]);
    const out = await session.run(feeds);
    await session.release();
    const model = decodeModel(await readFile(path));
    const info = inferShapes(model.graph!, { batch_size: b, sequence_length: s, past_sequence_length: past });
    for (const name of Object.keys(out)) expect(info.shapes.get(name), name).toEqual(out[name]!.dims);
  });

  it.each([
    [1, 3, 4],
    [2, 1, 5],
  ])(
    "follows GroupQueryAttention & co. like onnxruntime (batch %i, sequence %i, past %i)",
    async (b, s, past) => {
      const path = join(dir, "genai_ops.onnx");
      const session = await ort.InferenceSession.create(path, { logSeverityLevel: 3 });
      const cache = () =>
        new ort.Tensor("float32", new Float32Array(b * 2 * past * 8).fill(0.1), [b, 2, past, 8]);
      const out = await session.run({
        input_ids: new ort.Tensor("int64", new BigInt64Array(b * s).fill(3n), [b, s]),
        "past_key_values.0.key": cache(),
        "past_key_values.0.value": cache(),
        seqlens_k: new ort.Tensor("int32", new Int32Array(b).fill(past + s - 1), [b]),
        total_sequence_length: new ort.Tensor("int32", new Int32Array([past + s]), []),
      });
      await session.release();
      const dims = { batch_size: b, sequence_length: s, past_sequence_length: past };
      const info = inferShapes(decodeModel(await readFile(path)).graph!, dims);
      for (const name of Object.keys(out)) expect(info.shapes.get(name), name).toEqual(out[name]!.dims);
      const r = await inspectPath(path, dims);
      expect(r.flops.unresolved).toEqual([]);
      // packed QKV 32x64, output projection 32x32, lm_head 32x64; attention: 4 heads x 8 over past + s positions
      expect(Object.fromEntries(r.flops.byOp.map((o) => [o.op, o.flops]))).toEqual({
        MatMul: 2 * b * s * (32 * 64 + 32 * 32 + 32 * 64),
        "com.microsoft.GroupQueryAttention": 4 * b * s * (past + s) * 32,
        Gather: 0,
      });
      expect(r.states.pairs.map((p) => p.output)).toEqual(["present.0.key", "present.0.value"]);
    },
  );

  it.each([
    [1, 1, 0],
    [1, 3, 4],
    [2, 2, 5],
  ])(
    "follows a GPT-2 export's EmbedLayerNormalization, Attention and SkipLayerNormalization like onnxruntime (batch %i, seq_len %i, past_seq_len %i)",
    async (b, s, past) => {
      const path = join(dir, "gpt2_contrib.onnx");
      const session = await ort.InferenceSession.create(path, { logSeverityLevel: 3 });
      const feeds: Record<string, ort.Tensor> = {
        input_ids: new ort.Tensor("int32", new Int32Array(b * s).fill(3), [b, s]),
        position_ids: new ort.Tensor(
          "int32",
          Int32Array.from({ length: b * s }, (_, i) => past + (i % s)),
          [b, s],
        ),
        attention_mask: new ort.Tensor("float32", new Float32Array(b * (past + s)).fill(1), [b, past + s]),
      };
      for (const i of [0, 1])
        feeds[`past_${i}`] = new ort.Tensor("float32", new Float32Array(2 * b * 4 * past * 8).fill(0.1), [
          2,
          b,
          4,
          past,
          8,
        ]);
      const out = await session.run(feeds);
      await session.release();
      // the GPT-2 export's own dim names, given as the usual ones (aliases resolve both ways)
      const r = await inspectPath(path, { batch_size: b, sequence_length: s, past_sequence_length: past });
      const info = inferShapes(decodeModel(await readFile(path)).graph!, r.flops.dims);
      for (const name of Object.keys(out)) expect(info.shapes.get(name), name).toEqual(out[name]!.dims);
      expect(r.flops.unresolved).toEqual([]);
      expect(r.flops.missingDims).toEqual([]);
      // per layer: packed QKV 32x96 inside Attention, attention of 4 heads x 8 over past + s positions,
      // proj 32x32, fc1 32x128, fc2 128x32; lm_head 32x64
      const context = past + s;
      expect(Object.fromEntries(r.flops.byOp.map((o) => [o.op, o.flops]))).toEqual({
        MatMul: 2 * b * s * (2 * (32 * 32 + 32 * 128 + 128 * 32) + 32 * 64),
        "com.microsoft.Attention": 2 * (2 * b * s * 32 * 96 + 4 * b * s * context * 32),
        "com.microsoft.EmbedLayerNormalization": 0,
      });
      expect(r.flops.perToken).toBe(r.flops.total / (b * s));
    },
  );

  it("knows the dim names exporters use: --dim seq_len=4 is sequence_length=4, and sums like 'past_sequence_length + 1'", async () => {
    const path = join(dir, "gpt2_contrib.onnx");
    const viaAlias = await inspectPath(path, { seq_len: 4, past_seq_len: 2 });
    const viaName = await inspectPath(path, { sequence_length: 4, past_sequence_length: 2 });
    expect(viaAlias.flops.total).toBe(viaName.flops.total);
    expect(viaAlias.flops.dims.total_seq_len).toBe(6);
    const model = decodeModel(await readFile(path));
    const mask = model.graph!.input.find((i) => i.name === "attention_mask")!;
    mask.type!.tensorType!.shape!.dim[1] = { dimParam: "past_sequence_length + sequence_length" };
    const info = inferShapes(model.graph!, { batch_size: 2, sequence_length: 3, past_sequence_length: 5 });
    expect(info.shapes.get("attention_mask")).toEqual([2, 8]);
    mask.type!.tensorType!.shape!.dim[1] = { dimParam: "unknown_len + 1" };
    const missing = inferShapes(model.graph!, { batch_size: 1 });
    expect(missing.shapes.get("attention_mask")).toBeUndefined();
    expect([...missing.missingDims]).toContain("unknown_len");
  });

  it("reports a node that breaks its op's schema as unresolved instead of failing", async () => {
    const model = decodeModel(await readFile(join(dir, "flops.onnx")));
    const gemm = model.graph!.node.find((n) => n.opType === "Gemm")!;
    gemm.attribute.push(attr.string("transA", "yes"));
    const r = analyzeModel(model);
    expect(r.flops.unresolved).toEqual([{ node: "out_gemm", op: "Gemm" }]);
    expect(r.flops.byOp.map((o) => o.op)).toEqual(["Conv", "MatMul", "Einsum", "Gather"]);
  });

  it("refuses a malformed --dim", () => {
    expect(parseDims(["batch_size=2", "x=0"])).toEqual({ batch_size: 2, x: 0 });
    expect(() => parseDims(["batch_size"])).toThrow(IteraError);
    expect(() => parseDims(["batch_size=-1"])).toThrow(/invalid --dim/);
  });
});

describe("model folders", () => {
  it("follows genai_config.json, else takes the folder's only .onnx file", async () => {
    const a = join(dir, "folder-config");
    await mkdir(a, { recursive: true });
    await copyFile(join(dir, "tiny_gpt.onnx"), join(a, "decoder.onnx"));
    await copyFile(join(dir, "flops.onnx"), join(a, "other.onnx"));
    await writeFile(
      join(a, "genai_config.json"),
      JSON.stringify({ model: { decoder: { filename: "decoder.onnx" } } }),
    );
    expect(await locateModelFile(a)).toEqual({
      onnxPath: join(a, "decoder.onnx"),
      folder: a,
      via: "genai_config.json",
    });
    const r = await inspectPath(a);
    expect(r.states.pairs).toHaveLength(4);

    const b = join(dir, "folder-single");
    await mkdir(b, { recursive: true });
    await copyFile(join(dir, "flops.onnx"), join(b, "model.onnx"));
    expect((await locateModelFile(b)).via).toBe("only .onnx in folder");
  });

  it("explains a folder it cannot use", async () => {
    const two = join(dir, "folder-two");
    await mkdir(two, { recursive: true });
    await copyFile(join(dir, "flops.onnx"), join(two, "a.onnx"));
    await copyFile(join(dir, "flops.onnx"), join(two, "b.onnx"));
    await expect(locateModelFile(two)).rejects.toThrow(/2 \.onnx files \(a\.onnx, b\.onnx\)/);

    const badConfig = join(dir, "folder-bad-config");
    await mkdir(badConfig, { recursive: true });
    await writeFile(
      join(badConfig, "genai_config.json"),
      JSON.stringify({ model: { decoder: { filename: "gone.onnx" } } }),
    );
    await expect(locateModelFile(badConfig)).rejects.toThrow(
      /names the decoder "gone.onnx", which is not in the folder/,
    );

    await writeFile(join(badConfig, "genai_config.json"), JSON.stringify({ model: { decoder: {} } }));
    await expect(locateModelFile(badConfig)).rejects.toThrow(/model\.decoder\.filename/);

    await writeFile(
      join(badConfig, "genai_config.json"),
      JSON.stringify({ model: { decoder: { filename: "../x.onnx" } } }),
    );
    await expect(locateModelFile(badConfig)).rejects.toThrow(/outside the model folder/);
  });
});

describe("itera inspect (built CLI)", () => {
  const cli = join(process.cwd(), "dist/cli/itera.js");
  const run = async (...args: string[]) =>
    exec(process.execPath, [cli, "inspect", ...args]).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({
        code: e.code,
        stdout: e.stdout,
        stderr: e.stderr,
      }),
    );

  // `make test` builds dist/ first. Rebuild only when dist/ is older than this command's sources
  // (a lone `npx vitest run` of this file): rewriting dist/ under other CLI tests would race them.
  beforeAll(async () => {
    const built = await stat(join(process.cwd(), "dist/cli/commands/inspect.js")).catch(() => undefined);
    const sources = [
      "src/cli/commands/inspect.ts",
      "src/model/folder.ts",
      ...(await readdir("src/onnx")).map((f) => `src/onnx/${f}`),
    ];
    const newest = Math.max(...(await Promise.all(sources.map(async (f) => (await stat(f)).mtimeMs))));
    if (built && built.mtimeMs >= newest) return;
    await exec("npx", ["tsc", "-p", "."]).catch(() => {
      // tsc exits non-zero when another part of the tree does not type-check, yet still emits dist/.
    });
  });

  it("prints a table and --json", async () => {
    const table = await run(join(dir, "tiny_gpt.onnx"));
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/parameters: 23,360/);
    expect(table.stdout).toMatch(/\| past_key_values\.1\.value \| present\.1\.value \|\s+1 \| kv/);
    const json = await run(join(dir, "tiny_gpt.onnx"), "--json", "--dim", "past_sequence_length=7");
    expect(json.code).toBe(0);
    const r = JSON.parse(json.stdout);
    expect(r.parameters.elements).toBe(23360);
    expect(r.flops.dims.past_sequence_length).toBe(7);
  });

  it("gives one clear error and a non-zero exit for each bad input", async () => {
    const text = join(dir, "notes.onnx");
    await writeFile(text, "hello, this is not a model\n");
    const bytes = await readFile(join(dir, "tiny_gpt.onnx"));
    const truncated = join(dir, "truncated.onnx");
    await writeFile(truncated, bytes.subarray(0, Math.floor(bytes.length / 2)));
    const empty = join(dir, "empty-folder");
    await mkdir(empty, { recursive: true });
    const cases: [string, RegExp][] = [
      [text, /error: not an ONNX model/],
      [truncated, /error: the ONNX file is truncated or corrupt/],
      [join(dir, "no-such.onnx"), /error: no such model file or folder/],
      [empty, /error: the folder holds no model: no genai_config.json and no \.onnx file/],
    ];
    for (const [path, message] of cases) {
      const r = await run(path);
      expect(r.code, path).toBe(1);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).toContain(`where: ${path}`);
      expect(r.stderr).toMatch(/fix: +\S/);
      expect(r.stderr).not.toMatch(/internal error|at .*\.js:\d+/);
      expect(r.stdout).toBe("");
    }
    const badDim = await run(join(dir, "tiny_gpt.onnx"), "--dim", "seq");
    expect(badDim.code).toBe(1);
    expect(badDim.stderr).toMatch(/invalid --dim "seq"/);
  });
});

describe("inspect: quantized graphs (the quantizer's patterns)", () => {
  // ids -> com.microsoft GatherBlockQuantized (4-bit table 50x16 packed in uint8 [50, 8])
  //     -> DynamicQuantizeLinear -> MatMulInteger (int8 16x32) -> Cast -> Mul by the scales
  //     -> com.microsoft MatMulNBits (K=32, N=8, 4 bits, block 16) -> y [batch_size, sequence_length, 8]
  function quantizedModel(): ModelProto {
    const bytes = (n: number, seed: number) =>
      Uint8Array.from({ length: n }, (_, i) => (i * 37 + seed) % 251);
    const initializer = [
      typedToTensor("table_q", [50, 8], bytes(400, 1)),
      typedToTensor("table_scales", [50, 1], new Float32Array(50).fill(0.05)),
      typedToTensor(
        "w8",
        [16, 32],
        Int8Array.from(bytes(512, 2), (b) => (b % 200) - 100),
      ),
      typedToTensor("w8_scale", [], new Float32Array([0.01])),
      typedToTensor("w4", [8, 2, 8], bytes(128, 3)),
      typedToTensor("w4_scales", [16], new Float32Array(16).fill(0.02)),
    ];
    const node = [
      makeNode("GatherBlockQuantized", ["table_q", "ids", "table_scales"], ["emb"], {
        domain: "com.microsoft",
        attributes: [
          attr.int("bits", 4),
          attr.int("block_size", 16),
          attr.int("gather_axis", 0),
          attr.int("quantize_axis", 1),
        ],
      }),
      makeNode("DynamicQuantizeLinear", ["emb"], ["emb_q", "emb_scale", "emb_zp"]),
      makeNode("MatMulInteger", ["emb_q", "w8", "emb_zp"], ["h_int"]),
      makeNode("Cast", ["h_int"], ["h_f"], { attributes: [attr.int("to", DataType.FLOAT)] }),
      makeNode("Mul", ["emb_scale", "w8_scale"], ["h_scale"]),
      makeNode("Mul", ["h_f", "h_scale"], ["h"]),
      makeNode("MatMulNBits", ["h", "w4", "w4_scales"], ["y"], {
        domain: "com.microsoft",
        attributes: [attr.int("K", 32), attr.int("N", 8), attr.int("bits", 4), attr.int("block_size", 16)],
      }),
    ];
    return contribModel({
      name: "quantized",
      node,
      initializer,
      input: [makeValueInfo("ids", DataType.INT64, ["batch_size", "sequence_length"])],
      output: [makeValueInfo("y", DataType.FLOAT, ["batch_size", "sequence_length", 8])],
    });
  }

  it("infers the shapes onnxruntime computes, and counts their FLOPs", async () => {
    const model = quantizedModel();
    const session = await ort.InferenceSession.create(encodeModel(model), { logSeverityLevel: 3 });
    const [b, s] = [2, 3];
    const out = await session.run({
      ids: new ort.Tensor("int64", BigInt64Array.from([1n, 2n, 3n, 4n, 5n, 49n]), [b, s]),
    });
    await session.release();
    const info = inferShapes(model.graph!, { batch_size: b, sequence_length: s });
    expect(info.shapes.get("y")).toEqual(out.y!.dims);
    expect(info.shapes.get("emb")).toEqual([b, s, 16]);
    expect(info.shapes.get("h")).toEqual([b, s, 32]);
    const r = analyzeModel(model, { batch_size: b, sequence_length: s });
    expect(r.flops.unresolved).toEqual([]);
    expect(Object.fromEntries(r.flops.byOp.map((o) => [o.op, o.flops]))).toEqual({
      MatMulInteger: 2 * b * s * 16 * 32,
      "com.microsoft.MatMulNBits": 2 * b * s * 32 * 8,
      "com.microsoft.GatherBlockQuantized": 0,
    });
    expect(Object.fromEntries(r.parameters.byDtype.map((d) => [d.dtype, d.elements]))).toEqual({
      uint8: 400 + 128,
      float32: 50 + 1 + 16,
      int8: 512,
    });
  });
});

describe("inspect: convolutional graphs", () => {
  it("infers Pad, Conv, MaxPool (ceil mode), GlobalAveragePool and Flatten shapes as onnxruntime computes them", async () => {
    const w = (name: string, dims: number[]) =>
      typedToTensor(
        name,
        dims,
        Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, (_, i) => Math.sin(i)),
      );
    const outputs = ["padded", "c1", "pooled", "c2", "gap", "flat", "y"];
    const model: ModelProto = {
      irVersion: 8,
      opsetImport: [{ domain: "", version: 17 }],
      graph: {
        name: "cnn",
        node: [
          makeNode("Pad", ["image", "pads"], ["padded"]),
          makeNode("Conv", ["padded", "k1"], ["c1"], { attributes: [attr.ints("strides", [2, 2])] }),
          makeNode("MaxPool", ["c1"], ["pooled"], {
            attributes: [
              attr.ints("kernel_shape", [3, 3]),
              attr.ints("strides", [2, 2]),
              attr.int("ceil_mode", 1),
            ],
          }),
          makeNode("Conv", ["pooled", "k2", "b2"], ["c2"]),
          makeNode("GlobalAveragePool", ["c2"], ["gap"]),
          makeNode("Flatten", ["gap"], ["flat"]),
          makeNode("Gemm", ["flat", "w3"], ["y"], { attributes: [attr.int("transB", 1)] }),
        ],
        initializer: [
          typedToTensor("pads", [8], BigInt64Array.from([0n, 0n, 1n, 2n, 0n, 0n, 1n, 2n])),
          w("k1", [4, 3, 3, 3]),
          w("k2", [5, 4, 1, 1]),
          w("b2", [5]),
          w("w3", [2, 5]),
        ],
        input: [makeValueInfo("image", DataType.FLOAT, ["batch_size", 3, 11, 12])],
        output: outputs.map((name) => ({ name })), // no declared types: shapes come from inference only
        valueInfo: [],
      },
    };
    const session = await ort.InferenceSession.create(encodeModel(model), { logSeverityLevel: 3 });
    const out = await session.run({
      image: new ort.Tensor("float32", new Float32Array(2 * 3 * 11 * 12), [2, 3, 11, 12]),
    });
    await session.release();
    const info = inferShapes(model.graph!, { batch_size: 2 });
    for (const name of outputs) expect(info.shapes.get(name), name).toEqual(out[name]!.dims);
    // c1 [2,4,6,7] from the padded [2,3,13,16]; pooled [2,4,3,3]; c2 [2,5,3,3] (1x1 conv with bias); y [2,2]
    const r = analyzeModel(model, { batch_size: 2 });
    expect(Object.fromEntries(r.flops.byOp.map((o) => [o.op, o.flops]))).toEqual({
      Conv: 2 * (2 * 4 * 6 * 7) * 27 + (2 * (2 * 5 * 3 * 3) * 4 + 2 * 5 * 3 * 3),
      Gemm: 2 * 2 * 2 * 5,
    });
  });
});

describe("inspect: state-space, linear-attention and mixture-of-experts ops (com.microsoft)", () => {
  // conv:   x [b, s, 12] + past_conv [b, 3, 12] -> CausalConvWithState (channels last, kernel 4, bias, silu)
  // linear: a [b, s, 2] -> LinearAttentionGate; q [b, s, 1·4], k [b, s, 2·4], v [b, s, 2·3], past_state
  //         [b, 2, 4, 3] -> LinearAttention (gated, 1 query head, 2 kv heads) -> y [b, s, 2·3] -> QuickGelu
  // moe:    h [tokens, 8], router [tokens, 4] -> SimplifiedLayerNormalization -> MoE (4 experts, d_ff 16, top 2)
  //         and QMoE (4-bit, the same sizes) -> SkipSimplifiedLayerNormalization of the two
  const [C, KERNEL, DK, DV, HKV, D, F, E, TOP] = [12, 4, 4, 3, 2, 8, 16, 4, 2];
  const floats = (name: string, dims: number[]) =>
    typedToTensor(
      name,
      dims,
      Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, (_, i) => Math.sin(i) * 0.3),
    );
  const model = contribModel({
    name: "ops",
    node: [
      makeNode("CausalConvWithState", ["x", "conv_w", "conv_b", "past_conv"], ["conv_y", "present_conv"], {
        domain: "com.microsoft",
        attributes: [attr.string("activation", "silu"), attr.int("channels_last", 1)],
      }),
      makeNode("LinearAttentionGate", ["a", "dt_bias", "decay_scale"], ["g"], { domain: "com.microsoft" }),
      makeNode("LinearAttention", ["q", "k", "v", "past_state", "g"], ["la_y", "present_state"], {
        domain: "com.microsoft",
        attributes: [
          attr.string("update_rule", "gated"),
          attr.int("q_num_heads", 1),
          attr.int("kv_num_heads", HKV),
          attr.float("scale", 1),
        ],
      }),
      makeNode("QuickGelu", ["la_y"], ["la_act"], {
        domain: "com.microsoft",
        attributes: [attr.float("alpha", 1)],
      }),
      makeNode("SimplifiedLayerNormalization", ["h", "norm_w"], ["h_norm"], {
        attributes: [attr.int("axis", -1), attr.float("epsilon", 1e-5)],
      }),
      makeNode("MoE", ["h_norm", "router", "fc1", "fc1_b", "fc2", "fc2_b"], ["moe_y"], {
        domain: "com.microsoft",
        attributes: [
          attr.string("activation_type", "silu"),
          attr.int("k", TOP),
          attr.int("normalize_routing_weights", 1),
        ],
      }),
      makeNode(
        "QMoE",
        ["h_norm", "router", "q_fc1", "q_fc1_s", "fc1_b", "q_fc2", "q_fc2_s", "fc2_b"],
        ["qmoe_y"],
        {
          domain: "com.microsoft",
          attributes: [
            attr.string("activation_type", "silu"),
            attr.int("k", TOP),
            attr.int("normalize_routing_weights", 1),
            attr.int("expert_weight_bits", 4),
            attr.int("weights_prepacked", 0),
          ],
        },
      ),
      makeNode("SkipSimplifiedLayerNormalization", ["moe_y", "qmoe_y", "norm_w"], ["sum_norm"], {
        domain: "com.microsoft",
        attributes: [attr.float("epsilon", 1e-5)],
      }),
    ],
    initializer: [
      floats("conv_w", [C, 1, KERNEL]),
      floats("conv_b", [C]),
      floats("dt_bias", [HKV]),
      typedToTensor("decay_scale", [HKV], new Float32Array([-0.5, -1])),
      floats("norm_w", [D]),
      floats("fc1", [E, F, D]),
      floats("fc1_b", [E, F]),
      floats("fc2", [E, D, F]),
      floats("fc2_b", [E, D]),
      typedToTensor(
        "q_fc1",
        [E, F, D / 2],
        Uint8Array.from({ length: E * F * (D / 2) }, (_, i) => (i * 37) % 256),
      ),
      typedToTensor("q_fc1_s", [E, F], new Float32Array(E * F).fill(0.02)),
      typedToTensor(
        "q_fc2",
        [E, D, F / 2],
        Uint8Array.from({ length: E * D * (F / 2) }, (_, i) => (i * 53) % 256),
      ),
      typedToTensor("q_fc2_s", [E, D], new Float32Array(E * D).fill(0.02)),
    ],
    input: [
      makeValueInfo("x", DataType.FLOAT, ["batch_size", "sequence_length", C]),
      makeValueInfo("past_conv", DataType.FLOAT, ["batch_size", KERNEL - 1, C]),
      makeValueInfo("a", DataType.FLOAT, ["batch_size", "sequence_length", HKV]),
      makeValueInfo("q", DataType.FLOAT, ["batch_size", "sequence_length", DK]),
      makeValueInfo("k", DataType.FLOAT, ["batch_size", "sequence_length", HKV * DK]),
      makeValueInfo("v", DataType.FLOAT, ["batch_size", "sequence_length", HKV * DV]),
      makeValueInfo("past_state", DataType.FLOAT, ["batch_size", HKV, DK, DV]),
      makeValueInfo("h", DataType.FLOAT, ["tokens", D]),
      makeValueInfo("router", DataType.FLOAT, ["tokens", E]),
    ],
    output: [
      "conv_y",
      "present_conv",
      "g",
      "la_y",
      "present_state",
      "la_act",
      "moe_y",
      "qmoe_y",
      "sum_norm",
    ].map(
      (name) => ({ name }), // no declared types: shapes come from inference only
    ),
  });

  it("infers the shapes onnxruntime computes", async () => {
    const [b, s, tokens] = [2, 3, 5];
    const feed = (dims: number[]) =>
      new ort.Tensor(
        "float32",
        Float32Array.from({ length: dims.reduce((x, y) => x * y, 1) }, (_, i) => Math.cos(i * 0.3)),
        dims,
      );
    const session = await ort.InferenceSession.create(encodeModel(model), { logSeverityLevel: 3 });
    const out = await session.run({
      x: feed([b, s, C]),
      past_conv: feed([b, KERNEL - 1, C]),
      a: feed([b, s, HKV]),
      q: feed([b, s, DK]),
      k: feed([b, s, HKV * DK]),
      v: feed([b, s, HKV * DV]),
      past_state: feed([b, HKV, DK, DV]),
      h: feed([tokens, D]),
      router: feed([tokens, E]),
    });
    await session.release();
    const info = inferShapes(model.graph!, { batch_size: b, sequence_length: s, tokens });
    for (const o of model.graph!.output) expect(info.shapes.get(o.name!), o.name).toEqual(out[o.name!]!.dims);
  });

  it("counts their FLOPs by hand: active experts and every expert, the recurrence, the depthwise conv", () => {
    const [b, s, tokens] = [2, 3, 5];
    const r = analyzeModel(model, { batch_size: b, sequence_length: s, tokens });
    expect(r.flops.unresolved).toEqual([]);
    const perExpertToken = 2 * D * F + 2 * F * D;
    const moeActive = tokens * TOP * perExpertToken;
    const moeDense = tokens * E * perExpertToken;
    // gated: per element of each kv head's [d_k, d_v] state 2 (read-out) + 2 (k⊗v) + 1 (decay)
    const linearAttention = b * s * DK * DV * (2 * HKV + 3 * HKV);
    const conv = 2 * (b * s * C) * KERNEL; // bias and SiLU: elementwise, left out
    expect(r.flops.byOp).toEqual([
      { op: "com.microsoft.MoE", nodes: 1, flops: moeActive, dense: moeDense },
      { op: "com.microsoft.QMoE", nodes: 1, flops: moeActive, dense: moeDense },
      { op: "com.microsoft.LinearAttention", nodes: 1, flops: linearAttention },
      { op: "com.microsoft.CausalConvWithState", nodes: 1, flops: conv },
    ]);
    const total = 2 * moeActive + linearAttention + conv;
    expect(r.flops.total).toBe(total);
    expect(r.flops.dense).toEqual({
      total: total + 2 * (moeDense - moeActive),
      perToken: (total + 2 * (moeDense - moeActive)) / (b * s),
    });
    expect(r.flops.perToken).toBe(total / (b * s));
  });

  it("counts the house model Itera-Lite tiny as its model card does (active experts and all four)", async () => {
    const dir = join(__dirname, "..", "models", "itera-lite-tiny");
    const card = JSON.parse(await readFile(join(dir, "itera.json"), "utf8"));
    const r = await inspectPath(dir);
    expect(r.flops.unresolved).toEqual([]);
    expect(r.flops.missingDims).toEqual([]);
    expect(r.flops.perToken).toBe(card.architecture.active_flops_per_token);
    expect(r.flops.dense.perToken).toBe(card.flops_per_token);
    // by hand, 5 layers: top-2 of 4 experts (d_model 128, d_ff 256); 8 heads of a 16 x 32 state
    // (gated); a 288-channel conv of kernel 4
    const byOp = Object.fromEntries(r.flops.byOp.map((o) => [o.op, o]));
    expect(byOp["com.microsoft.MoE"]).toMatchObject({
      flops: 5 * 2 * (2 * 128 * 256 * 2),
      dense: 5 * 4 * (2 * 128 * 256 * 2),
    });
    expect(byOp["com.microsoft.LinearAttention"]!.flops).toBe(5 * 16 * 32 * (2 * 8 + 3 * 8));
    expect(byOp["com.microsoft.CausalConvWithState"]!.flops).toBe(5 * 2 * 288 * 4);

    const cli = inProcessCli(registerInspect, { captureConsoleLog: true });
    const table = await cli("inspect", dir);
    expect(table.code).toBe(0);
    expect(table.stdout).toContain("FLOPs per token: 2,501,376 (total 2,501,376 for ");
    expect(table.stdout).toContain("FLOPs per token with every expert (dense MoE): 3,812,096");
    expect(table.stdout).toMatch(/\| com\.microsoft\.MoE +\| +5 \| +1310720 \| +2621440 \|/);
  });

  it("counts per input id, with the house models' dim names (batch, sequence) as aliases", () => {
    const ids = contribModel({
      name: "ids",
      node: [makeNode("Gather", ["table", "input_ids"], ["emb"]), makeNode("MatMul", ["emb", "w"], ["y"])],
      initializer: [floats("table", [10, D]), floats("w", [D, 5])],
      input: [makeValueInfo("input_ids", DataType.INT64, ["batch", "sequence"])],
      output: [{ name: "y" }],
    });
    const step = analyzeModel(ids).flops;
    expect(step.missingDims).toEqual([]);
    expect([step.tokens, step.perToken]).toEqual([1, 2 * D * 5]);
    const prefill = analyzeModel(ids, { sequence_length: 4 }).flops;
    expect([prefill.dims.sequence, prefill.tokens, prefill.total]).toEqual([4, 4, 4 * 2 * D * 5]);
    expect(analyzeModel(ids, { sequence: 6, batch: 2 }).flops.tokens).toBe(12);
  });
});
