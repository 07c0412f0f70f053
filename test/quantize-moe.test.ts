/**
 * com.microsoft.MoE -> com.microsoft.QMoE, run by real onnxruntime-node sessions: the quantized
 * experts, unpacked here from the written tensors as the QMoE schema describes them, give the same
 * output as the float MoE op with those dequantized weights (tight), and stay within the error
 * the quantization can cause of the float model (loose, a bound propagated through the experts).
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { InferenceSession, Tensor } from "onnxruntime-node";
import { beforeAll, describe, expect, it } from "vitest";
import { registerQuantize } from "../src/cli/commands/quantize.js";
import {
  analyzeModel,
  attr,
  DataType,
  encodeModel,
  float16ToFloat32,
  float32ToFloat16,
  Graph,
  getAttrInt,
  getAttrString,
  loadModel,
  type ModelProto,
  makeNode,
  tensorToTyped,
  typedToTensor,
} from "../src/onnx/index.js";
import { nodeBinary } from "../src/package/node-binary.js";
import { describeLayout, expertMatrices, type MoeShape, qmoeBytes, qmoeLayout } from "../src/quantize/moe.js";
import { parseQuantizeOptions, type Precision } from "../src/quantize/options.js";
import { qMoE } from "../src/quantize/patterns.js";
import { moeNote, presetPrecisions } from "../src/quantize/plan.js";
import { type QuantizeReport, quantizeFolder } from "../src/quantize/quantize.js";
import type { LayerReport } from "../src/quantize/report.js";
import { tempDir } from "./temp-dir.js";
import {
  applyPrecisions,
  type BlockParams,
  precisionBytes,
  unsupportedReason,
} from "../src/quantize/rewrite.js";
import { countQuantizedNodes, findSites } from "../src/quantize/sites.js";
import {
  type MoeWeights,
  moeModel,
  moeReference,
  moeWeights,
  weightValues,
} from "./fixtures/onnx/moe-graph.js";
import { inProcessCli } from "./cli-helpers.js";
import { qemuRunner } from "./package-helpers.js";
import { BASE_PARAMS, relError } from "./quantize-helpers.js";

const execFileAsync = promisify(execFile);
const E = 4;
const D = 64;
const F = 128;
const TOP_K = 2;
const T = 6;
const x = weightValues(T * D, 11, 1.5);
// router logits that spread the tokens over every expert
const router = Float32Array.from({ length: T * E }, (_, i) => Math.sin(i * 1.3) * 3);
const weights = moeWeights(E, D, F);
const shape: MoeShape = { experts: E, hidden: D, inter: F, fc1Rows: F, hasFc3: false, swigluFusion: null };

async function run(model: ModelProto, xs = x, tokens = T): Promise<Float32Array> {
  const session = await InferenceSession.create(encodeModel(model), { logSeverityLevel: 4 }); // errors are thrown
  try {
    const r = await session.run({
      x: new Tensor("float32", xs, [tokens, D]),
      router_probs: new Tensor("float32", router.subarray(0, tokens * E), [tokens, E]),
    });
    return r.y!.data as Float32Array;
  } finally {
    await session.release();
  }
}

/**
 * Unpack a QMoE weight input as its schema says: uint8 [E, N, K/pack] with values low bits first
 * along K; scales [E, N] (per row) or [E, N, K/block]; zero points [E, N/pack] packed along N (per
 * row) or [E, N, K/block/pack] packed along K's blocks; no zero points: 2^(bits-1).
 */
function dequantizeQmoeInput(
  g: Graph,
  names: { weights: string; scales: string; zeroPoints: string },
  bits: number,
  block: number,
): Float32Array {
  const wt = g.initializer(names.weights)!;
  const [e, n, kPacked] = wt.dims.map(Number) as [number, number, number];
  expect(wt.dataType).toBe(DataType.UINT8);
  const w = tensorToTyped(wt) as Uint8Array;
  const scales = tensorToTyped(g.initializer(names.scales)!) as Float32Array;
  const zp = names.zeroPoints ? (tensorToTyped(g.initializer(names.zeroPoints)!) as Uint8Array) : undefined;
  const perByte = 8 / bits;
  const mask = (1 << bits) - 1;
  const k = kPacked * perByte;
  const blocks = block ? k / block : 1;
  const nibble = (bytes: Uint8Array, index: number) =>
    (bytes[Math.floor(index / perByte)]! >> ((index % perByte) * bits)) & mask;
  const out = new Float32Array(e * n * k);
  for (let ei = 0; ei < e; ei++)
    for (let r = 0; r < n; r++)
      for (let c = 0; c < k; c++) {
        const row = ei * n + r;
        const b = block ? Math.floor(c / block) : 0;
        const code = nibble(w.subarray(row * kPacked), c);
        let zero = 1 << (bits - 1);
        if (zp && block) zero = nibble(zp.subarray((row * blocks * bits) / 8), b);
        else if (zp) zero = nibble(zp.subarray((ei * n * bits) / 8), r);
        out[row * k + c] = (code - zero) * scales[row * blocks + b]!;
      }
  return out;
}

function quantizedModel(precision: Precision, params: Partial<BlockParams> = {}) {
  const model = moeModel(weights, TOP_K);
  const sites = findSites(new Graph(model.graph!));
  applyPrecisions(model, sites, new Map([["experts", precision]]), { ...BASE_PARAMS, ...params });
  return model;
}

const LAYOUTS = [
  { label: "per-row symmetric", moeScales: "row", moeZeroPoints: false, blockSize: 32 },
  { label: "per-row asymmetric", moeScales: "row", moeZeroPoints: true, blockSize: 32 },
  { label: "block 16 symmetric", moeScales: "block", moeZeroPoints: false, blockSize: 16 },
  { label: "block 32 asymmetric", moeScales: "block", moeZeroPoints: true, blockSize: 32 },
] as const;

describe("the float MoE op", () => {
  it("computes what the reference computes (top-2 of the router logits, softmax weights, SiLU)", async () => {
    const got = await run(moeModel(weights, TOP_K));
    expect(relError(got, moeReference(weights, TOP_K, x, router, T).y)).toBeLessThanOrEqual(1e-5);
  });
});

describe("MoE -> QMoE", () => {
  for (const bits of [4, 8] as const) {
    for (const layout of LAYOUTS) {
      it(`${bits}-bit ${layout.label}: matches the float MoE on the dequantized experts, and stays within the quantization bound`, async () => {
        const precision: Precision = bits === 4 ? "int4" : "int8-wo";
        const model = quantizedModel(precision, { ...layout, searchClipping: true });
        const g = new Graph(model.graph!);
        expect(g.nodes.map((n) => n.opType)).toEqual(["QMoE"]);
        const node = g.nodes[0]!;
        expect(node.domain).toBe("com.microsoft");
        expect(getAttrInt(node, "expert_weight_bits")).toBe(bits);
        expect(getAttrString(node, "quant_type")).toBe("int");
        expect(getAttrInt(node, "weights_prepacked")).toBe(0);
        expect(getAttrInt(node, "k")).toBe(TOP_K);
        expect(getAttrString(node, "activation_type")).toBe("silu");
        const block = layout.moeScales === "block" ? layout.blockSize : 0;
        expect(getAttrInt(node, "block_size")).toBe(block || undefined);
        // the float experts are gone; biases stay float
        expect(g.initializer("fc1")).toBeUndefined();
        expect(g.initializer("fc2")).toBeUndefined();
        expect(node.input[4]).toBe("fc1_bias");
        expect(node.input[7]).toBe("fc2_bias");
        const zp = (i: number) => (layout.moeZeroPoints ? node.input[i]! : "");
        expect(node.input.length).toBe(layout.moeZeroPoints ? 13 : 8);
        const fc1 = dequantizeQmoeInput(
          g,
          { weights: node.input[2]!, scales: node.input[3]!, zeroPoints: zp(11) },
          bits,
          block,
        );
        const fc2 = dequantizeQmoeInput(
          g,
          { weights: node.input[5]!, scales: node.input[6]!, zeroPoints: zp(12) },
          bits,
          block,
        );
        const dequantized: MoeWeights = { ...weights, fc1, fc2 };

        const got = await run(model);
        const onDequantized = await run(moeModel(dequantized, TOP_K));
        expect(relError(got, onDequantized)).toBeLessThanOrEqual(1e-5);

        const abs = (a: Float32Array, b: Float32Array) => a.map((v, i) => Math.abs(v - b[i]!));
        const { y, bound } = moeReference(weights, TOP_K, x, router, T, {
          fc1: abs(fc1, weights.fc1),
          fc2: abs(fc2, weights.fc2),
        });
        let worst = 0;
        for (let i = 0; i < y.length; i++) worst = Math.max(worst, Math.abs(got[i]! - y[i]!) - bound[i]!);
        expect(worst).toBeLessThanOrEqual(1e-5);
        // the weights really changed: the output differs from the float model's beyond rounding
        expect(relError(got, y)).toBeGreaterThan(bits === 4 ? 1e-3 : 1e-5);
      });
    }
  }

  it("SwiGLU experts, fused and interleaved (swiglu_fusion 1, fc1 of 2·d_ff rows): QMoE matches the float MoE on the dequantized experts", async () => {
    const swiglu = (w: MoeWeights) => {
      // the float graph of w's fc2, then fc1 and its bias replaced by the fused [E, 2·d_ff, d_model] ones
      const model = moeModel({ ...w, fc1: weights.fc1, b1: weights.b1 }, TOP_K);
      const node = model.graph!.node[0]!;
      node.attribute = node.attribute.filter((a) => a.name !== "activation_type");
      node.attribute.push(attr.string("activation_type", "swiglu"), attr.int("swiglu_fusion", 1));
      const init = model.graph!.initializer;
      init[0] = typedToTensor("fc1", [E, 2 * F, D], w.fc1);
      init[1] = typedToTensor("fc1_bias", [E, 2 * F], w.b1);
      return model;
    };
    const fused = {
      ...weights,
      fc1: weightValues(E * 2 * F * D, 8, 0.3),
      b1: weightValues(E * 2 * F, 9, 0.1),
    };
    for (const layout of [LAYOUTS[0], LAYOUTS[3]]) {
      const model = swiglu(fused);
      const [site] = findSites(new Graph(model.graph!));
      expect(site!.moe).toMatchObject({ fc1Rows: 2 * F, inter: F, swigluFusion: 1 });
      applyPrecisions(model, [site!], new Map([["experts", "int4"]]), { ...BASE_PARAMS, ...layout });
      const g = new Graph(model.graph!);
      const q = g.nodes[0]!;
      expect([q.opType, getAttrString(q, "activation_type"), getAttrInt(q, "swiglu_fusion")]).toEqual([
        "QMoE",
        "swiglu",
        1,
      ]);
      const block = layout.moeScales === "block" ? layout.blockSize : 0;
      const zp = (i: number) => (layout.moeZeroPoints ? q.input[i]! : "");
      const deq = (i: number, z: number) =>
        dequantizeQmoeInput(
          g,
          { weights: q.input[i]!, scales: q.input[i + 1]!, zeroPoints: zp(z) },
          4,
          block,
        );
      const reference = swiglu({ ...fused, fc1: deq(2, 11), fc2: deq(5, 12) });
      expect(relError(await run(model), await run(reference))).toBeLessThanOrEqual(1e-5);
    }
  });

  it("SwiGLU experts with a separate fc3 (swiglu_fusion 0), which onnxruntime's CPU QMoE refuses, stay float", async () => {
    const model = moeModel(weights, TOP_K);
    const node = model.graph!.node[0]!;
    node.attribute = node.attribute.filter((a) => a.name !== "activation_type");
    node.attribute.push(attr.string("activation_type", "swiglu"));
    node.input.push("fc3", "fc3_bias");
    model.graph!.initializer.push(
      typedToTensor("fc3", [E, F, D], weightValues(E * F * D, 8, 0.3)),
      typedToTensor("fc3_bias", [E, F], weightValues(E * F, 9, 0.1)),
    );
    const [site] = findSites(new Graph(model.graph!));
    expect(site!.weightNames).toEqual(["fc1", "fc2", "fc3"]);
    const why =
      "onnxruntime's CPU QMoE takes SwiGLU experts only fused and interleaved (swiglu_fusion 1), not swiglu_fusion 0";
    expect(unsupportedReason(site!, "int4", BASE_PARAMS)).toBe(why);
    expect(unsupportedReason(site!, "int8-wo", BASE_PARAMS)).toBe(why);
    expect(unsupportedReason(site!, "fp16", BASE_PARAMS)).toBeUndefined();
    applyPrecisions(model, [site!], new Map([["experts", "fp16"]]), BASE_PARAMS);
    expect(model.graph!.node.map((n) => n.opType).sort()).toEqual(["Cast", "Cast", "Cast", "MoE"]);
  });

  it("block-wise zero points fill whole bytes: 4-bit blocks of 16 over d_model 48 fall back to symmetric, and run", async () => {
    const w48 = moeWeights(E, 48, 64, 3);
    const s48: MoeShape = {
      experts: E,
      hidden: 48,
      inter: 64,
      fc1Rows: 64,
      hasFc3: false,
      swigluFusion: null,
    };
    const layout = qmoeLayout(s48, 4, { blockSize: 16, symmetric: false });
    expect(layout).toMatchObject({ blockSize: 16, symmetric: true });
    expect(describeLayout(layout as never)).toMatch(/symmetric: the zero points would not fill whole bytes/);
    const model = moeModel(w48, TOP_K);
    const r = qMoE(
      {
        name: "q",
        inputs: model.graph!.node[0]!.input,
        output: "y",
        attributes: { activation_type: "silu", k: TOP_K, normalize_routing_weights: 1 },
        floatAttributes: [],
        shape: s48,
        weights: { fc1: w48.fc1, fc2: w48.fc2 },
      },
      layout as never,
    );
    expect(r.initializers.map((t) => [t.name, t.dims])).toEqual([
      ["q_fc1_weights", [E, 64, 24]],
      ["q_fc1_scales", [E, 64, 3]],
      ["q_fc2_weights", [E, 48, 32]],
      ["q_fc2_scales", [E, 48, 4]],
    ]);
  });

  it("onnxruntime 1.30 rejects a fc1 of one block beside a fc2 of several (why such blocks become per-row scales)", async () => {
    const forced = { bits: 4 as const, blockSize: 64, symmetric: true, notes: [] };
    const model = moeModel(weights, TOP_K);
    const g = new Graph(model.graph!);
    const r = qMoE(
      {
        name: "q",
        inputs: g.nodes[0]!.input,
        output: "y",
        attributes: { activation_type: "silu", k: TOP_K, normalize_routing_weights: 1 },
        floatAttributes: [],
        shape,
        weights: { fc1: weights.fc1, fc2: weights.fc2 },
      },
      forced,
    );
    g.removeInitializer("fc1");
    g.removeInitializer("fc2");
    for (const t of r.initializers) g.addInitializer(typedToTensor(t.name, t.dims, t.data));
    const n = r.nodes[0]!;
    g.replaceNode(
      g.nodes[0]!,
      makeNode("QMoE", n.inputs, n.outputs, {
        domain: "com.microsoft",
        attributes: Object.entries(n.attributes).map(([k, v]) =>
          typeof v === "string" ? attr.string(k, v) : attr.int(k, v as number),
        ),
      }),
    );
    await expect(run(model)).rejects.toThrow(/fc2_experts_scales/);
    // what the quantizer does instead
    expect(qmoeLayout(shape, 4, { blockSize: 64, symmetric: true })).toMatchObject({ blockSize: 0 });
  });

  it("fp16 experts: stored as float16 behind a Cast, the MoE op unchanged", async () => {
    const model = quantizedModel("fp16");
    const g = new Graph(model.graph!);
    expect(g.nodes.map((n) => n.opType).sort()).toEqual(["Cast", "Cast", "MoE"]);
    expect(g.initializer("fc1_fp16")!.dataType).toBe(DataType.FLOAT16);
    const half = (w: Float32Array) => float16ToFloat32(float32ToFloat16(w));
    const want = await run(moeModel({ ...weights, fc1: half(weights.fc1), fc2: half(weights.fc2) }, TOP_K));
    expect(relError(await run(model), want)).toBeLessThanOrEqual(1e-6);
  });
});

describe("QMoE on ARM64 (qemu-aarch64: the devices' onnxruntime build)", () => {
  /** The quantized graph plus the float MoE on its dequantized experts, as output "y_ref". */
  function withReference(precision: Precision): ModelProto {
    const model = quantizedModel(precision);
    const g = new Graph(model.graph!);
    const q = g.nodes[0]!;
    const bits = precision === "int4" ? 4 : 8;
    const deq = (i: number) =>
      dequantizeQmoeInput(g, { weights: q.input[i]!, scales: q.input[i + 1]!, zeroPoints: "" }, bits, 0);
    g.addInitializer(typedToTensor("fc1_deq", [E, F, D], deq(2)));
    g.addInitializer(typedToTensor("fc2_deq", [E, D, F], deq(5)));
    const reference = moeModel(weights, TOP_K).graph!.node[0]!;
    reference.input = ["x", "router_probs", "fc1_deq", "fc1_bias", "fc2_deq", "fc2_bias"];
    reference.output = ["y_ref"];
    g.addNode(reference);
    model.graph!.output.push({ name: "y_ref" });
    return model;
  }

  it("4- and 8-bit experts equal the float MoE on the dequantized experts, and the x64 output", async () => {
    const dir = await tempDir("itera-qmoe-arm64-");
    try {
      const files: string[] = [];
      const x64: Float32Array[] = [];
      for (const precision of ["int4", "int8-wo"] as const) {
        const model = withReference(precision);
        files.push(join(dir, `${precision}.onnx`));
        await writeFile(files.at(-1)!, encodeModel(model));
        x64.push(await run(model));
      }
      await writeFile(join(dir, "inputs.json"), JSON.stringify({ x: [...x], router: [...router], T, D, E }));
      const script = join(dir, "run.mjs");
      await writeFile(
        script,
        `import * as ort from ${JSON.stringify(pathToFileURL(resolve("node_modules/onnxruntime-node/dist/index.js")).href)};
import { readFileSync } from "node:fs";
const [inputs, ...models] = process.argv.slice(2);
const { x, router, T, D, E } = JSON.parse(readFileSync(inputs, "utf8"));
const out = [];
for (const m of models) {
  const s = await ort.InferenceSession.create(m);
  const r = await s.run({ x: new ort.Tensor("float32", Float32Array.from(x), [T, D]), router_probs: new ort.Tensor("float32", Float32Array.from(router), [T, E]) });
  out.push({ y: [...r.y.data], y_ref: [...r.y_ref.data] });
}
console.log(JSON.stringify({ arch: process.arch, out }));
`,
      );
      const node = (await nodeBinary({ platform: "linux", arch: "arm64" })).path;
      const { stdout } = await execFileAsync(qemuRunner, [node, script, join(dir, "inputs.json"), ...files], {
        maxBuffer: 1 << 24,
      });
      const arm = JSON.parse(stdout) as { arch: string; out: { y: number[]; y_ref: number[] }[] };
      expect(arm.arch).toBe("arm64");
      arm.out.forEach((o, i) => {
        expect(relError(o.y, o.y_ref)).toBeLessThanOrEqual(1e-5);
        expect(relError(o.y, x64[i]!)).toBeLessThanOrEqual(1e-5);
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("MoE experts as quantization sites", () => {
  const model = moeModel(weights, TOP_K);
  const [site] = findSites(new Graph(model.graph!));

  it("one site per MoE node: every expert weight, shape [experts, d_ff, d_model]", () => {
    expect(site).toMatchObject({
      name: "experts",
      kind: "moe",
      head: false,
      dims: [E, F, D],
      weightNames: ["fc1", "fc2"],
      bytes: 2 * E * F * D * 4,
    });
  });

  it("bytes per precision are the QMoE tensors' bytes", () => {
    const p = { blockSize: 32, symmetric: false, accuracyLevel: 0 };
    // per row, symmetric: packed weights + one float scale per row of fc1 (F rows) and fc2 (D rows)
    expect(precisionBytes(site!, "int4", p)).toBe(E * (F * (D / 2) + D * (F / 2) + (F + D) * 4));
    expect(precisionBytes(site!, "int8-wo", p)).toBe(E * (2 * F * D + (F + D) * 4));
    const blockAsym = { ...p, moeScales: "block" as const, moeZeroPoints: true };
    expect(precisionBytes(site!, "int4", blockAsym)).toBe(
      E * (F * (D / 2 + (D / 32) * 4 + D / 64) + D * (F / 2 + (F / 32) * 4 + F / 64)),
    );
    expect(precisionBytes(site!, "fp16", p)).toBe(2 * E * F * D * 2);
    expect(qmoeBytes(shape, qmoeLayout(shape, 4, { blockSize: 0, symmetric: true }) as never)).toBe(
      precisionBytes(site!, "int4", p),
    );
  });

  it("int8 mode gives the experts 8-bit weight-only QMoE; --exclude keeps them fp32; the note names the layout", () => {
    const plan = (extra: Record<string, unknown>) => {
      const opts = parseQuantizeOptions({ mode: "int8", blockSize: "32", accuracyLevel: "0", ...extra });
      const layers: LayerReport[] = [
        { name: "experts", kind: "moe", head: false, shape: [E, F, D], precision: "fp32" },
      ];
      return { choice: presetPrecisions([site!], layers, opts, opts), layers, opts };
    };
    const int8 = plan({});
    expect(int8.choice.get("experts")).toBe("int8-wo");
    expect(moeNote(site!, "int8-wo", int8.opts)).toBe("QMoE 8-bit, per-row scales, symmetric");
    const blocked = plan({ moeScales: "block", moeZeroPoints: true });
    expect(moeNote(site!, "int4", blocked.opts)).toBe("QMoE 4-bit, block 32, asymmetric");
    const excluded = plan({ exclude: ["experts"] });
    expect(excluded.choice.get("experts")).toBe("fp32");
    expect(excluded.layers[0]!.note).toBe("excluded");
  });

  it("block sizes that do not cut d_model and d_ff into 2+ blocks give per-row scales, and say so", () => {
    const l = qmoeLayout(shape, 4, { blockSize: 64, symmetric: true });
    expect(l).toMatchObject({ blockSize: 0, symmetric: true });
    expect(describeLayout(l as never)).toBe(
      "QMoE 4-bit, per-row scales, symmetric; one scale per row: block 64 does not cut d_model 64 and d_ff 128 into 2 or more blocks each",
    );
    expect(expertMatrices({ ...shape, hasFc3: true }).map((m) => [m.role, m.n, m.k])).toEqual([
      ["fc1", F, D],
      ["fc2", D, F],
      ["fc3", F, D],
    ]);
  });

  it("an odd d_model cannot be packed 4-bit: the experts stay fp32 with the reason", async () => {
    const odd = moeModel(moeWeights(E, 63, 64, 5), TOP_K);
    const [s] = findSites(new Graph(odd.graph!));
    const p = { blockSize: 32, symmetric: false, accuracyLevel: 0 };
    expect(unsupportedReason(s!, "int4", p)).toBe("4-bit QMoE packs whole bytes per row: fc1 has K = 63");
    expect(unsupportedReason(s!, "int8-wo", p)).toBeUndefined();
    const layers: LayerReport[] = [
      { name: "experts", kind: "moe", head: false, shape: s!.dims, precision: "fp32" },
    ];
    const opts = parseQuantizeOptions({ mode: "int4", blockSize: "32", accuracyLevel: "0" });
    expect(presetPrecisions([s!], layers, opts, opts).get("experts")).toBe("fp32");
    expect(layers[0]!.note).toMatch(/^kept fp32: 4-bit QMoE packs whole bytes per row/);
  });

  it("a QMoE graph counts as quantized and offers nothing more", () => {
    const g = new Graph(quantizedModel("int4").graph!);
    expect(findSites(g)).toEqual([]);
    expect(countQuantizedNodes(g)).toBe(1);
  });

  it("MoE nodes whose experts are not constant float [E, N, K] tensors are not sites", () => {
    const m = moeModel(weights, TOP_K);
    m.graph!.initializer = m.graph!.initializer.filter((t) => t.name !== "fc2");
    m.graph!.input.push({ name: "fc2" });
    expect(findSites(new Graph(m.graph!))).toEqual([]);
    // an attribute kind QMoE could not be given (a tensor) also keeps the node as it is
    const t = moeModel(weights, TOP_K);
    t.graph!.node[0]!.attribute.push(attr.tensor("extra", typedToTensor("e", [1], new Float32Array([1]))));
    expect(findSites(new Graph(t.graph!))).toEqual([]);
  });
});

describe("a house model's experts in itera quantize (Itera-Lite micro)", () => {
  const micro = resolve("models", "itera-lite-micro");
  let work: string;
  beforeAll(async () => {
    work = await tempDir("itera-qmoe-");
  });
  const experts = (r: QuantizeReport) => r.layers.filter((l) => l.kind === "moe");

  it.skipIf(!existsSync(join(micro, "model.onnx")))(
    "--mode auto measures each MoE's sensitivity and chooses its precision within the budget; --exclude keeps one fp32",
    async () => {
      const opts = { blockSize: "32", accuracyLevel: "4", evalChars: "1500", calibChars: "1000" };
      // A budget uniform int4 does not meet here, so that auto measures each weight's sensitivity
      // (a budget all-int4 meets is taken as it is, without the per-weight search).
      const auto = await quantizeFolder(
        micro,
        join(work, "auto"),
        parseQuantizeOptions({ mode: "auto", budget: "0.5%", ...opts }),
        {
          quiet: true,
        },
      );
      expect(auto.quality.within_budget).toBe(true);
      expect(experts(auto)).toHaveLength(3);
      for (const l of experts(auto)) {
        expect(l.shape).toEqual([4, 128, 64]);
        expect(l.sensitivity?.int4).toEqual(expect.any(Number));
        if (l.precision === "int4" || l.precision === "int8-wo")
          expect(l.note).toMatch(/^QMoE (4|8)-bit, per-row scales, symmetric$/);
      }
      const name = experts(auto)[0]!.name;
      const excluded = await quantizeFolder(
        micro,
        join(work, "exclude"),
        parseQuantizeOptions({ mode: "int4", exclude: [name], ...opts }),
        { quiet: true },
      );
      expect(experts(excluded).map((l) => [l.precision, l.note])).toEqual([
        ["fp32", "excluded"],
        ["int4", "QMoE 4-bit, per-row scales, symmetric"],
        ["int4", "QMoE 4-bit, per-row scales, symmetric"],
      ]);
      const card = JSON.parse(await readFile(join(work, "exclude", "itera.json"), "utf8"));
      expect(card.quantization.layers).toContainEqual({ name, precision: "fp32" });
    },
  );

  it.skipIf(!existsSync(join(micro, "model.onnx")))(
    "itera quantize --moe-scales block --moe-zero-points: block-wise asymmetric experts; a bad layout is refused",
    async () => {
      const cli = inProcessCli(registerQuantize, { captureConsoleLog: true });
      const out = join(work, "cli-block");
      const r = await cli(
        "quantize",
        micro,
        "--out",
        out,
        "--mode",
        "int4",
        "--moe-scales",
        "block",
        "--moe-zero-points",
        "--eval-chars",
        "500",
        "--budget",
        "none",
        "--json",
      );
      expect(r.code).toBe(0);
      const report = JSON.parse(r.stdout) as QuantizeReport;
      expect([report.settings.moe_scales, report.settings.moe_zero_points]).toEqual(["block", true]);
      expect(experts(report).map((l) => l.note)).toEqual(Array(3).fill("QMoE 4-bit, block 32, asymmetric"));
      const qmoe = (await loadModel(join(out, "model.onnx"))).graph!.node.filter((n) => n.opType === "QMoE");
      expect(qmoe.map((n) => [getAttrInt(n, "block_size"), n.input.length])).toEqual(Array(3).fill([32, 13]));
      // itera inspect counts the quantized graph as the float one: QMoE's packed K read back
      const flops = async (file: string) => analyzeModel(await loadModel(file)).flops;
      const [before, after] = [await flops(join(micro, "model.onnx")), await flops(join(out, "model.onnx"))];
      expect(after.unresolved).toEqual([]);
      expect([after.perToken, after.dense.perToken]).toEqual([before.perToken, before.dense.perToken]);

      const bad = await cli("quantize", micro, "--out", join(work, "cli-bad"), "--moe-scales", "column");
      expect(bad.code).toBe(1);
      expect(bad.stderr).toMatch(/invalid --moe-scales "column": must be one of row, block/);
      expect(existsSync(join(work, "cli-bad"))).toBe(false);
    },
  );
});
