import { copyFile, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  attr,
  DataType,
  decodeModel,
  describePrecision,
  makeNode,
  encodeModel,
  makeValueInfo,
  type NodeProto,
  type TensorProto,
  typedToTensor,
  weightPrecision,
} from "../src/onnx/index.js";
import { readModelInput } from "../src/package/model-input.js";
import { contribModel } from "./fixtures/onnx/contrib-model.js";
import { tempDir } from "./temp-dir.js";

/** The precision label comes from the graph: the weights' dtypes and the quantized ops holding them. */
function model(nodes: NodeProto[], initializer: TensorProto[]) {
  return contribModel({
    name: "g",
    node: nodes,
    initializer,
    input: [makeValueInfo("ids", DataType.INT64, ["batch", "sequence"])],
    output: [makeValueInfo("logits", DataType.FLOAT, ["batch", "sequence", 50])],
  });
}
const table = (dtype: "f32" | "f16", rows: number, cols: number) =>
  dtype === "f32"
    ? typedToTensor("table", [rows, cols], new Float32Array(rows * cols))
    : { ...typedToTensor("table", [rows, cols], new Uint16Array(rows * cols)), dataType: DataType.FLOAT16 };
const gather = makeNode("Gather", ["table", "ids"], ["e"]);

describe("weight precision from the graph", () => {
  it("a float model is fp32, and an fp16 one fp16 (whatever a card says)", () => {
    const f32 = model(
      [gather, makeNode("MatMul", ["e", "head"], ["logits"])],
      [table("f32", 50, 64), typedToTensor("head", [64, 50], new Float32Array(64 * 50))],
    );
    expect(weightPrecision(f32)).toEqual({
      label: "fp32",
      byPrecision: [{ precision: "fp32", elements: 2 * 50 * 64, share: 1 }],
    });
    const f16 = model(
      [gather, makeNode("MatMul", ["e", "head"], ["logits"])],
      [
        table("f16", 50, 64),
        { ...typedToTensor("head", [64, 50], new Uint16Array(64 * 50)), dataType: DataType.FLOAT16 },
      ],
    );
    expect(weightPrecision(f16).label).toBe("fp16");
  });

  it("MatMulNBits counts K x N at its bits; a small float embedding beside it leaves the label int4", () => {
    const nbits = (name: string, k: number, n: number, bits: number) =>
      makeNode("MatMulNBits", ["e", `${name}_q`, `${name}_s`], [name], {
        domain: "com.microsoft",
        attributes: [attr.int("K", k), attr.int("N", n), attr.int("bits", bits), attr.int("block_size", 32)],
      });
    const int4 = model(
      [gather, nbits("logits", 64, 50, 4), nbits("big", 1024, 1024, 4)],
      [table("f32", 50, 64)],
    );
    const p = weightPrecision(int4);
    expect(p.label).toBe("int4");
    expect(p.byPrecision.map((b) => [b.precision, b.elements])).toEqual([
      ["int4", 64 * 50 + 1024 * 1024],
      ["fp32", 50 * 64],
    ]);
    expect(describePrecision(p)).toBe("int4 (100% of weights; fp32 0.3%)");

    const mixed = model(
      [gather, nbits("logits", 1024, 512, 4), makeNode("MatMulInteger", ["e", "w8"], ["y8"])],
      [table("f32", 50, 64), typedToTensor("w8", [1024, 512], new Int8Array(1024 * 512))],
    );
    const m = weightPrecision(mixed);
    expect(m.label).toBe("mixed");
    expect(describePrecision(m)).toMatch(/^mixed \((int4|int8) 50%, (int8|int4) 50%, fp32 0.3%\)$/);
  });

  it("the house model Itera-Lite micro: fp32 weights, its MoE experts included", async () => {
    const micro = decodeModel(await readFile(join("models", "itera-lite-micro", "model.onnx")));
    const p = weightPrecision(micro);
    expect(p.label).toBe("fp32");
    const moe = micro.graph!.node.filter((n) => n.opType === "MoE");
    expect(moe.length).toBeGreaterThan(0);
    const inits = new Map(micro.graph!.initializer.map((t) => [t.name, t]));
    const expertElements = moe
      .flatMap((n) => [2, 4, 6].map((i) => inits.get(n.input[i] ?? "")))
      .reduce((a, t) => a + (t ? t.dims.reduce((x, d) => x * Number(d), 1) : 0), 0);
    expect(p.byPrecision[0]!.elements).toBeGreaterThan(expertElements);
  });
});

describe("itera build's reading of a folder without a card", () => {
  it("takes the precision from the graph, not fp32", async () => {
    const dir = await tempDir("itera-precision-");
    await copyFile(join("models", "itera-lite-micro", "genai_config.json"), join(dir, "genai_config.json"));
    const f16 = model(
      [gather, makeNode("MatMul", ["e", "head"], ["logits"])],
      [
        table("f16", 50, 64),
        { ...typedToTensor("head", [64, 50], new Uint16Array(64 * 50)), dataType: DataType.FLOAT16 },
      ],
    );
    await writeFile(join(dir, "model.onnx"), encodeModel(f16));
    expect((await readModelInput(dir)).quant).toBe("fp16");
    await copyFile(join("models", "itera-lite-micro", "model.onnx"), join(dir, "model.onnx"));
    expect((await readModelInput(dir)).quant).toBe("fp32");
  });
});
