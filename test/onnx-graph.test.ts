import { copyFile, mkdir, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IteraError } from "../src/errors.js";
import {
  attr,
  DataType,
  decodeModel,
  encodeModel,
  ensureOpset,
  float16ToFloat32,
  float32ToFloat16,
  Graph,
  getAttrFloat,
  loadModel,
  makeNode,
  makeValueInfo,
  type ModelProto,
  opsetVersion,
  saveModel,
  type TypedArray,
  tensorToTyped,
  typedToTensor,
} from "../src/onnx/index.js";
import { buildFixtures } from "./fixtures/onnx/build.js";

let dir: string;
beforeAll(async () => {
  dir = await buildFixtures("external_data", "contrib_ops");
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const x = new Float32Array(Array.from({ length: 2 * 64 }, (_, i) => Math.sin(i) * 0.5));
async function runMlp(model: string | Uint8Array): Promise<Float32Array> {
  const session =
    typeof model === "string"
      ? await ort.InferenceSession.create(model, { logSeverityLevel: 3 })
      : await ort.InferenceSession.create(model, { logSeverityLevel: 3 });
  try {
    const out = await session.run({ x: new ort.Tensor("float32", x, [2, 64]) });
    return out.y!.data as Float32Array;
  } finally {
    await session.release();
  }
}

describe("graph edits", () => {
  it("replaces Gemm by MatMul + Add, drops dead initializers, sorts, saves with external data; onnxruntime agrees", async () => {
    const src = join(dir, "external/mlp.onnx");
    const reference = await runMlp(src);
    const model = await loadModel(src);
    const g = new Graph(model.graph!);
    const gemm = g.nodes.find((n) => n.opType === "Gemm")!;
    // New nodes first in the list, in the wrong order: topologicalSort must fix it.
    g.replaceNode(gemm);
    g.addNode(makeNode("Add", ["y_mm", "fc2.bias2"], ["y"], { name: "bias2" }), 0);
    g.addNode(makeNode("MatMul", ["h2", "fc2.weight"], ["y_mm"], { name: "mm2" }), 0);
    const bias = tensorToTyped(g.initializer("fc2.bias")!) as Float32Array;
    g.addInitializer(typedToTensor("fc2.bias2", [10], bias));
    expect(g.removeDeadInitializers().sort()).toEqual(["fc2.bias", "unused_int8"]);
    expect(g.consumers("h2").map((n) => n.name)).toEqual(["mm2"]);
    expect(g.producer("y")?.name).toBe("bias2");
    g.topologicalSort();
    expect(g.nodes.map((n) => n.opType)).toEqual(["MatMul", "Add", "Relu", "MatMul", "Add"]);

    const outDir = join(dir, "edited");
    const out = join(outDir, "model.onnx");
    await saveModel(out, model, { externalData: { threshold: 100 } });
    // The in-memory model is left as it was: data still inline, nothing marked external.
    expect(
      model.graph!.initializer.every((t) => t.dataLocation !== 1 && (t.rawData?.byteLength ?? 0) > 0),
    ).toBe(true);
    const saved = decodeModel(await readFile(out));
    const external = saved.graph!.initializer.filter((t) => t.dataLocation === 1);
    expect(external.map((t) => t.name).sort()).toEqual(["fc1.bias", "fc1.weight", "fc2.weight"]);
    for (const t of external) {
      const offset = Number(t.externalData?.find((e) => e.key === "offset")?.value);
      expect(offset % 4096).toBe(0);
    }
    expect((await stat(join(outDir, "model.onnx.data"))).size).toBeGreaterThan(38000);
    const edited = await runMlp(out);
    expect(edited.length).toBe(reference.length);
    for (let i = 0; i < edited.length; i++) expect(edited[i]).toBeCloseTo(reference[i]!, 4);

    // Saved inline, then reloaded: identical outputs to the external-data save.
    const inline = join(outDir, "inline.onnx");
    await saveModel(inline, await loadModel(out));
    expect(await runMlp(inline)).toEqual(edited);
  });

  it("adds a com.microsoft node and its opset; onnxruntime runs it", async () => {
    const model = await loadModel(join(dir, "external/mlp.onnx"));
    const g = new Graph(model.graph!);
    const relu = g.nodes.find((n) => n.opType === "Relu")!;
    g.replaceNode(relu, makeNode("Gelu", relu.input, relu.output, { domain: "com.microsoft", name: "gelu" }));
    ensureOpset(model, "com.microsoft", 1);
    ensureOpset(model, "com.microsoft", 1);
    expect(opsetVersion(model, "com.microsoft")).toBe(1);
    expect(model.opsetImport.length).toBe(2);
    g.proto.output.push(makeValueInfo("h2", DataType.FLOAT, ["batch_size", 128]));
    const session = await ort.InferenceSession.create(encodeModel(model), { logSeverityLevel: 3 });
    expect(session.outputNames).toEqual(["y", "h2"]);
    expect(session.outputMetadata[1]).toEqual({
      name: "h2",
      isTensor: true,
      type: "float32",
      shape: ["batch_size", 128],
    });
    const h2 = (await session.run({ x: new ort.Tensor("float32", x, [2, 64]) })).h2!.data as Float32Array;
    await session.release();
    // Gelu(v) < 0 for some v < 0, where Relu gave 0: the contrib op really ran.
    expect(h2.some((v) => v < 0)).toBe(true);
    const y = await runMlp(encodeModel(model));
    expect(y.length).toBe(20);
    expect(y).not.toEqual(await runMlp(join(dir, "external/mlp.onnx")));
  });

  it("moves tensors held in float_data to external data too, and leaves the model as it was", async () => {
    const src = join(dir, "contrib_ops.onnx");
    const model = await loadModel(src);
    const before = encodeModel(model);
    const out = join(dir, "contrib-ext/model.onnx");
    await saveModel(out, model, { externalData: { threshold: 8, align: 64 } });
    expect(Buffer.compare(Buffer.from(encodeModel(model)), Buffer.from(before))).toBe(0);
    const saved = decodeModel(await readFile(out));
    const b = saved.graph!.initializer.find((t) => t.name === "B")!;
    expect(b.dataLocation).toBe(1);
    expect(b.floatData).toEqual([]);
    const fp16 = saved.graph!.initializer.find((t) => t.name === "unused_fp16")!;
    expect(fp16.dataLocation).toBe(1);
    // Small integer tensors stay inline: onnxruntime needs Slice's starts/ends while inferring shapes.
    const ends = saved.graph!.initializer.find((t) => t.name === "ends")!;
    expect(ends.dataLocation ?? 0).toBe(0);
    expect(tensorToTyped(ends)).toEqual(new BigInt64Array([2n ** 63n - 1n]));
    const feeds = { X: new ort.Tensor("float32", x.subarray(0, 32), [2, 16]) };
    const run = async (m: string) => {
      const session = await ort.InferenceSession.create(m, { logSeverityLevel: 3 });
      const r = await session.run(feeds);
      await session.release();
      return [r.Y!.data, r.big_out!.data];
    };
    expect(await run(out)).toEqual(await run(src));
  });

  it("keeps initializers read only inside subgraphs (If branches), and orders their producers first", async () => {
    const branch = (name: string, op: string) => ({
      name,
      node: [makeNode(op, ["x", "outer_w"], [`${name}_out`])],
      initializer: [],
      input: [],
      output: [makeValueInfo(`${name}_out`, DataType.FLOAT, [2])],
      valueInfo: [],
    });
    const model: ModelProto = {
      irVersion: 8,
      opsetImport: [{ domain: "", version: 17 }],
      graph: {
        name: "if",
        // The If comes first although it reads outer_w, which the Identity after it produces.
        node: [
          makeNode("If", ["cond"], ["y"], {
            attributes: [
              attr.graph("then_branch", branch("then", "Add")),
              attr.graph("else_branch", branch("else", "Mul")),
            ],
          }),
          makeNode("Identity", ["w"], ["outer_w"]),
        ],
        initializer: [
          typedToTensor("w", [2], new Float32Array([10, 20])),
          typedToTensor("dead", [1], new Float32Array([1])),
        ],
        input: [makeValueInfo("cond", DataType.BOOL, []), makeValueInfo("x", DataType.FLOAT, [2])],
        output: [makeValueInfo("y", DataType.FLOAT, [2])],
        valueInfo: [],
      },
    };
    const g = new Graph(model.graph!);
    expect(g.consumers("outer_w").map((n) => n.opType)).toEqual(["If"]);
    expect(g.removeDeadInitializers()).toEqual(["dead"]);
    g.topologicalSort();
    expect(g.nodes.map((n) => n.opType)).toEqual(["Identity", "If"]);
    const session = await ort.InferenceSession.create(encodeModel(model), { logSeverityLevel: 3 });
    const run = async (cond: boolean) =>
      (
        await session.run({
          cond: new ort.Tensor("bool", new Uint8Array([cond ? 1 : 0]), []),
          x: new ort.Tensor("float32", new Float32Array([1, 2]), [2]),
        })
      ).y!.data;
    expect(await run(true)).toEqual(new Float32Array([11, 22]));
    expect(await run(false)).toEqual(new Float32Array([10, 40]));
    await session.release();
  });

  it("refuses a cycle", async () => {
    const model = await loadModel(join(dir, "external/mlp.onnx"));
    const g = new Graph(model.graph!);
    g.nodes[0]!.input[0] = "y";
    expect(() => g.topologicalSort()).toThrow(/the graph has a cycle/);
  });

  it("builds attributes that read back", () => {
    const n = makeNode("FusedMatMul", ["a", "b"], ["c"], {
      domain: "com.microsoft",
      attributes: [
        attr.float("alpha", 0.5),
        attr.int("transB", 1),
        attr.ints("perm", [0, 2n ** 62n]),
        attr.string("s", "hé"),
      ],
    });
    const bytes = encodeModel({
      irVersion: 8,
      opsetImport: [{ domain: "", version: 17 }],
      graph: { node: [n], initializer: [], input: [], output: [], valueInfo: [] },
    });
    const back = decodeModel(bytes).graph!.node[0]!;
    expect(getAttrFloat(back, "alpha")).toBe(0.5);
    expect(back.attribute.map((a) => a.name)).toEqual(["alpha", "transB", "perm", "s"]);
    expect(back.attribute[2]!.ints).toEqual([0, 2n ** 62n]);
    expect(new TextDecoder().decode(back.attribute[3]!.s)).toBe("hé");
  });
});

describe("tensors", () => {
  it.each<[TypedArray, number]>([
    [new Float32Array([1.5, -2, 3e-8]), DataType.FLOAT],
    [new Float64Array([Math.PI, -1]), DataType.DOUBLE],
    [new Int8Array([-128, 0, 127]), DataType.INT8],
    [new Uint8Array([0, 255, 7]), DataType.UINT8],
    [new Int32Array([-(2 ** 31), 2 ** 31 - 1]), DataType.INT32],
    [new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n]), DataType.INT64],
    [new Uint16Array([0x3c00, 0xc000]), DataType.FLOAT16],
  ])("%o survives typedToTensor -> encode -> decode -> tensorToTyped", (data, dataType) => {
    const t = typedToTensor("t", [data.length], data, dataType);
    expect(t.dataType).toBe(dataType);
    const model = decodeModel(
      encodeModel({
        irVersion: 8,
        opsetImport: [{ domain: "", version: 17 }],
        graph: { node: [], initializer: [t], input: [], output: [], valueInfo: [] },
      }),
    );
    expect(tensorToTyped(model.graph!.initializer[0]!)).toEqual(data);
  });

  it("refuses data that does not fit the dims", () => {
    expect(() => typedToTensor("t", [2, 2], new Float32Array(3))).toThrow(/need 16/);
  });

  it("converts float16 like numpy does", async () => {
    const model = await loadModel(join(dir, "contrib_ops.onnx"));
    const bits = tensorToTyped(
      model.graph!.initializer.find((t) => t.name === "unused_fp16")!,
    ) as Uint16Array;
    expect(float32ToFloat16(float16ToFloat32(bits))).toEqual(bits);
    expect([...float32ToFloat16(new Float32Array([1, -2, 65504, 1e6, 2 ** -24, 0.1]))]).toEqual([
      0x3c00, 0xc000, 0x7bff, 0x7c00, 0x0001, 0x2e66,
    ]);
  });
});

describe("external data validation", () => {
  async function copyMlp(name: string): Promise<string> {
    const d = join(dir, name);
    await mkdir(d, { recursive: true });
    await copyFile(join(dir, "external/mlp.onnx"), join(d, "mlp.onnx"));
    await copyFile(join(dir, "external/mlp.onnx.data"), join(d, "mlp.onnx.data"));
    return join(d, "mlp.onnx");
  }

  it("names a truncated data file", async () => {
    const path = await copyMlp("ext-truncated");
    await truncate(join(dir, "ext-truncated/mlp.onnx.data"), 1000);
    await expect(loadModel(path)).rejects.toThrow(/runs past the end of mlp.onnx.data \(1000 bytes\)/);
    await expect(loadModel(path, { externalData: "verify" })).rejects.toThrow(IteraError);
  });

  it("names a missing data file", async () => {
    const path = await copyMlp("ext-missing");
    await rm(join(dir, "ext-missing/mlp.onnx.data"));
    await expect(loadModel(path)).rejects.toThrow(/external data file mlp.onnx.data is missing/);
  });

  it("refuses a location outside the model folder", async () => {
    const path = await copyMlp("ext-escape");
    const model = decodeModel(await readFile(path));
    const t = model.graph!.initializer.find((x) => x.dataLocation === 1)!;
    t.externalData!.find((e) => e.key === "location")!.value = "../external/mlp.onnx.data";
    await writeFile(path, encodeModel(model));
    await expect(loadModel(path)).rejects.toThrow(/points outside the model's folder/);
  });

  it("will not save a model whose external data was not loaded", async () => {
    const model = await loadModel(join(dir, "external/mlp.onnx"), { externalData: "verify" });
    await expect(saveModel(join(dir, "nope.onnx"), model)).rejects.toThrow(
      /external data that was not loaded/,
    );
    await expect(stat(join(dir, "nope.onnx"))).rejects.toThrow();
  });
});
