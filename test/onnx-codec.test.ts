import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  DataType,
  decodeMessage,
  decodeModel,
  encodeMessage,
  encodeModel,
  getAttrInts,
  loadModel,
  type NodeProto,
  tensorToTyped,
} from "../src/onnx/index.js";
import { buildFixtures } from "./fixtures/onnx/build.js";

let dir: string;
beforeAll(async () => {
  dir = await buildFixtures("tiny_gpt", "contrib_ops", "external_data");
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("decode/encode", () => {
  it.each(["tiny_gpt.onnx", "contrib_ops.onnx", "external/mlp.onnx"])(
    "%s: encode(decode(bytes)) reproduces the original bytes exactly",
    async (file) => {
      const bytes = await readFile(join(dir, file));
      const model = decodeModel(bytes);
      const again = encodeModel(model);
      expect(Buffer.compare(Buffer.from(again), bytes)).toBe(0);
      expect(decodeModel(again)).toEqual(model);
    },
  );

  it("tells a truncated file from one that is not ONNX", async () => {
    const bytes = await readFile(join(dir, "tiny_gpt.onnx"));
    expect(() => decodeModel(bytes.subarray(0, bytes.length - 100), "m.onnx")).toThrow(
      /the ONNX file is truncated or corrupt/,
    );
    // Cut right after the graph (fields are written in number order: graph 7, opset_import 8).
    const model = decodeModel(bytes);
    const opsets = encodeModel({
      ...model,
      graph: undefined,
      irVersion: undefined,
      producerName: undefined,
      producerVersion: undefined,
    } as never);
    expect(() => decodeModel(bytes.subarray(0, bytes.length - opsets.length), "m.onnx")).toThrow(
      /the ONNX file is incomplete \(no opset_import\): it may be truncated/,
    );
    expect(() => decodeModel(new Uint8Array(0), "empty.onnx")).toThrow(
      /not an ONNX model: no ir_version, graph, opset_import/,
    );
    expect(() => decodeModel(new TextEncoder().encode('{"model": 1}'), "x.json")).toThrow(
      /not an ONNX model/,
    );
  });

  it("keeps fields the schema does not know, on nodes and on the model", async () => {
    const model = decodeModel(await readFile(join(dir, "contrib_ops.onnx")));
    const unknownOf = (m: object) => (m as { $unknowns?: Uint8Array[] }).$unknowns;
    expect(unknownOf(model)?.map((u) => [...u])).toEqual([[0xc0, 0x3e, 0x07]]);
    expect(unknownOf(model.graph!.node[0]!)?.map((u) => [...u])).toEqual([[0xc0, 0x3e, 0x07]]);
  });

  it("keeps a known field sent with an unexpected wire type as raw bytes, and writes it back", () => {
    // NodeProto: input "a", then field 4 (op_type, a string) as a varint: tag 0x20, value 5.
    const bytes = new Uint8Array([0x0a, 0x01, 0x61, 0x20, 0x05]);
    const node = decodeMessage<NodeProto>("NodeProto", bytes);
    expect(node.input).toEqual(["a"]);
    expect(Object.hasOwn(node, "opType")).toBe(false);
    expect([...encodeMessage("NodeProto", node)]).toEqual([...bytes]);
  });

  it("reads int64 beyond 2^53 exactly, as bigint", async () => {
    const model = decodeModel(await readFile(join(dir, "contrib_ops.onnx")));
    const g = model.graph!;
    const ends = g.initializer.find((t) => t.name === "ends")!;
    expect(ends.int64Data).toEqual([2n ** 63n - 1n]);
    expect(tensorToTyped(ends)).toEqual(new BigInt64Array([2n ** 63n - 1n]));
    const constant = g.node.find((n) => n.opType === "Constant")!;
    expect(constant.attribute[0]!.ints).toEqual([2n ** 63n - 1n, -(2n ** 63n), 3]);
    expect(getAttrInts(constant, "value_ints")?.[2]).toBe(3);
  });

  it("reads initializers from raw_data and from the typed fields", async () => {
    const model = decodeModel(await readFile(join(dir, "contrib_ops.onnx")));
    const expected = JSON.parse(await readFile(join(dir, "contrib_ops.expected.json"), "utf8"));
    const g = model.graph!;
    const w = g.initializer.find((t) => t.name === "W")!;
    const b = g.initializer.find((t) => t.name === "B")!;
    expect(w.rawData?.byteLength).toBe(16 * 8 * 4);
    expect(b.floatData?.length).toBe(8);
    expect([...tensorToTyped(w)]).toEqual(expected.W);
    expect([...tensorToTyped(b)]).toEqual(expected.B);
    const fp16 = g.initializer.find((t) => t.name === "unused_fp16")!;
    expect(fp16.dataType).toBe(DataType.FLOAT16);
    expect(tensorToTyped(fp16)).toBeInstanceOf(Uint16Array);
  });

  it("loads external data and matches the values onnx wrote", async () => {
    const model = await loadModel(join(dir, "external/mlp.onnx"));
    const expected = JSON.parse(await readFile(join(dir, "external/mlp.expected.json"), "utf8"));
    const bias = model.graph!.initializer.find((t) => t.name === "fc1.bias")!;
    expect(bias.dataLocation).toBe(0);
    expect([...tensorToTyped(bias)]).toEqual(expected["fc1.bias"]);
  });

  it("re-encoded models give onnxruntime identical outputs", async () => {
    const src = join(dir, "tiny_gpt.onnx");
    const reencoded = encodeModel(decodeModel(await readFile(src)));
    const a = await ort.InferenceSession.create(src);
    const b = await ort.InferenceSession.create(reencoded);
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor("int64", BigInt64Array.from([5n, 7n, 11n]), [1, 3]),
    };
    for (const name of a.inputNames.filter((n) => n.startsWith("past_")))
      feeds[name] = new ort.Tensor("float32", new Float32Array(4 * 2 * 8).fill(0.25), [1, 4, 2, 8]);
    const ra = await a.run(feeds);
    const rb = await b.run(feeds);
    for (const name of a.outputNames) expect(rb[name]!.data).toEqual(ra[name]!.data);
    await a.release();
    await b.release();
  });
});
