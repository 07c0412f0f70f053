import { existsSync } from "node:fs";
import { join } from "node:path";
import { InferenceSession, Tensor } from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DataType, encodeModel, makeValueInfo } from "../src/onnx/index.js";
import type { ModelProto } from "../src/onnx/types.js";
import {
  drawThresholds,
  FUSED_TOP_P_MAX,
  FusedDecoder,
  SAMPLING_CONSTANTS,
  sampledChoice,
} from "../src/runtime/fused-decode.js";
import type { GenerateOptions } from "../src/runtime/generate.js";
import { type LanguageModel, loadModel } from "../src/runtime/index.js";
import { createRng, drawFrom, samplingDistribution } from "../src/runtime/sampling.js";
import { fixtureModels } from "./fixtures/runtime/models.js";

/**
 * Fused decoding with sampling, repetition penalties and KV caches (src/runtime/fused-decode.ts)
 * against stepping one ONNX Runtime call per token with the TypeScript sampler (sampling.ts), in
 * real sessions on the house models and the PyTorch-built runtime fixtures: the same seed must give
 * the same tokens, the same stops and the same stop reasons.
 */

const SETTINGS: GenerateOptions[] = [
  { temperature: 0.8, topK: 40, topP: 1 },
  { temperature: 0.8, topK: 20, topP: 0.95 },
  { temperature: 1.3, topK: 0, topP: 0.9 },
  { temperature: 0.7, topK: 10, topP: 0.8, repetitionPenalty: 1.3 },
  { temperature: 0, repetitionPenalty: 1.5 },
];
const SEEDS = [1, 7, 1234];

/** Every setting and seed, one prompt and a batch, fused and stepped: the rows that differ. */
async function compare(model: LanguageModel, batch: string[], maxTokens: number) {
  const differ: string[] = [];
  let rows = 0;
  for (const s of SETTINGS) {
    for (const seed of SEEDS) {
      for (const prompts of [[batch[0]!], batch]) {
        const options = { ...s, seed, maxTokens, ignoreEos: true };
        const fused = await model.generateBatch(prompts, options);
        const step = await model.generateBatch(prompts, { ...options, fusedDecode: false });
        for (let r = 0; r < prompts.length; r++) {
          rows++;
          expect(fused[r]!.decode).toBe("fused");
          expect(step[r]!.decode).toBe("step");
          expect(fused[r]!.ids.length).toBeGreaterThan(0);
          if (JSON.stringify(fused[r]!.ids) !== JSON.stringify(step[r]!.ids)) {
            differ.push(`${JSON.stringify(s)} seed ${seed} row ${r}`);
          }
        }
      }
    }
  }
  return { differ, rows };
}

const house = (name: string) => join("models", name);

/** The loop's sampling nodes alone in a session: scores [rows, vocab] and one threshold per row in, ids out. */
async function choiceSession(topP: boolean): Promise<InferenceSession> {
  const inputs = [
    makeValueInfo("scores", DataType.FLOAT, ["rows", "vocab"]),
    makeValueInfo("threshold", DataType.DOUBLE, ["rows", 1]),
    makeValueInfo("itera.loop.temperature", DataType.DOUBLE, []),
    makeValueInfo("itera.loop.top_k", DataType.INT64, [1]),
  ];
  if (topP) inputs.push(makeValueInfo("itera.loop.top_p", DataType.DOUBLE, []));
  const model: ModelProto = {
    irVersion: 8,
    opsetImport: [{ domain: "", version: 17 }],
    graph: {
      name: "sampled_choice",
      node: sampledChoice("scores", "threshold", "next", topP),
      initializer: SAMPLING_CONSTANTS(),
      input: inputs,
      output: [makeValueInfo("next", DataType.INT64, ["rows", 1])],
      valueInfo: [],
    },
  } as ModelProto;
  return InferenceSession.create(encodeModel(model), { intraOpNumThreads: 1 });
}

/** Logit rows of several shapes: spread, peaked, tied (quantised), with tokens far below the rest. */
function logitRows(rows: number, vocab: number, seed: number): Float32Array {
  const rng = createRng(seed);
  const normal = () => Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
  const out = new Float32Array(rows * vocab);
  for (let r = 0; r < rows; r++) {
    const kind = r % 5;
    for (let i = 0; i < vocab; i++) {
      let v = normal() * (kind === 1 ? 15 : 3);
      if (kind === 2) v = Math.round(v * 2) / 2;
      if (kind === 3 && rng() < 0.3) v = -1e4;
      if (kind === 4) v = 1.5;
      out[r * vocab + i] = v;
    }
  }
  return out;
}

describe("the loop's sampling nodes against sampling.ts", () => {
  // temperature near 0 and large, top-k of 1, of all and above the vocabulary, top-p from tiny to 1
  const settings = [
    { temperature: 0.8, topK: 40, topP: 1 },
    { temperature: 0.8, topK: 20, topP: 0.95 },
    { temperature: 1.3, topK: 0, topP: 0.9 },
    { temperature: 1e-6, topK: 40, topP: 0.95 },
    { temperature: 50, topK: 1000, topP: 1 },
    { temperature: 0.7, topK: 1, topP: 0.5 },
    { temperature: 1, topK: 10, topP: 1e-9 },
  ];

  it.each([66, 997])(
    "vocabulary %i: the same token as samplingDistribution + drawFrom for every row",
    async (vocab) => {
      const rows = 1500;
      const sessions = { plain: await choiceSession(false), topP: await choiceSession(true) };
      try {
        let compared = 0;
        const differ: string[] = [];
        for (const [n, s] of settings.entries()) {
          const logits = logitRows(rows, vocab, 100 + n);
          const rng = createRng(200 + n);
          // random draws, and the ends of [0, 1)
          const uniforms = Float64Array.from({ length: rows }, (_, r) =>
            r === 0 ? 0 : r === 1 ? 1 - 2 ** -32 : rng(),
          );
          const topP = s.topP < 1;
          const feeds: Record<string, Tensor> = {
            scores: new Tensor("float32", logits, [rows, vocab]),
            threshold: new Tensor("float64", drawThresholds(uniforms), [rows, 1]),
            "itera.loop.temperature": new Tensor("float64", Float64Array.of(s.temperature), []),
            "itera.loop.top_k": new Tensor(
              "int64",
              BigInt64Array.of(BigInt(s.topK > 0 && s.topK < vocab ? s.topK : vocab)),
              [1],
            ),
          };
          if (topP) feeds["itera.loop.top_p"] = new Tensor("float64", Float64Array.of(s.topP), []);
          const out = await (topP ? sessions.topP : sessions.plain).run(feeds);
          const next = out.next!.data as BigInt64Array;
          for (let r = 0; r < rows; r++) {
            const { ids, probs } = samplingDistribution(logits.subarray(r * vocab, (r + 1) * vocab), s);
            const expected = ids[drawFrom(probs, uniforms[r]!)]!;
            compared++;
            if (Number(next[r]) !== expected)
              differ.push(`${JSON.stringify(s)} row ${r}: ${next[r]} vs ${expected}`);
          }
        }
        expect(compared).toBe(settings.length * rows);
        expect(differ).toEqual([]);
      } finally {
        await sessions.plain.release();
        await sessions.topP.release();
      }
    },
  );

  it("drawThresholds gives the double just above each u, so C >= threshold exactly when C > u", () => {
    const uniforms = Float64Array.of(0, 2 ** -40, 0.1, 0.5, 0.7, 1 - 2 ** -32);
    const thresholds = drawThresholds(uniforms);
    uniforms.forEach((u, i) => {
      const t = thresholds[i]!;
      expect(t).toBeGreaterThan(u);
      // nothing lies between them: their midpoint rounds to one of them
      expect([u, t]).toContain((u + t) / 2);
    });
  });
});

describe.each([
  ["itera-lite-micro", 200],
  ["itera-lite-tiny", 100],
  ["transformer-tiny", 100],
])("house model %s", (name, maxTokens) => {
  const dir = house(name);
  let model: LanguageModel;
  beforeAll(async () => {
    if (existsSync(join(dir, "model.onnx"))) model = await loadModel(dir, { threads: 1 });
  });
  afterAll(async () => {
    await model?.dispose();
  });

  it.skipIf(!existsSync(join(dir, "model.onnx")))(
    "sampled and penalised decoding gives the step sampler's tokens for the same seed",
    async () => {
      // prompts of different token lengths: stacked states, or a left-padded KV cache
      const { differ, rows } = await compare(model, ["ROMEO:", "JULIET:\nO Romeo, Romeo"], maxTokens);
      expect(rows).toBe(SETTINGS.length * SEEDS.length * 3);
      expect(differ).toEqual([]);
    },
    240_000,
  );
});

describe("runtime fixtures (PyTorch exports)", () => {
  it.each(["recurrent", "gpt2-kv", "gpt2-fused", "hybrid", "templated"])(
    "%s: fused sampling and greedy decoding give the stepped tokens",
    async (name) => {
      const model = await loadModel(join(fixtureModels(), name), { threads: 1 });
      try {
        // gpt2-fused takes no attention mask: its batch needs prompts of equal length
        const batch = model.canPadBatch ? ["ROMEO: hi", "To be, or not"] : ["ROMEO: hi", "To be, or"];
        const { differ } = await compare(model, batch, 40);
        expect(differ).toEqual([]);
        const greedy = { temperature: 0, maxTokens: 40, ignoreEos: true };
        const fused = await model.generateBatch(batch, greedy);
        const step = await model.generateBatch(batch, { ...greedy, fusedDecode: false });
        expect(fused.map((g) => g.ids)).toEqual(step.map((g) => g.ids));
        expect(fused[0]!.decode).toBe("fused");
      } finally {
        await model.dispose();
      }
    },
    120_000,
  );

  it("a KV model stops at its context length where stepping stops, mid-chunk", async () => {
    // the fixtures' context is 64 positions: 200 tokens cannot fit
    const model = await loadModel(join(fixtureModels(), "gpt2-kv"), { threads: 1 });
    try {
      for (const options of [
        { temperature: 0 },
        { temperature: 0.9, topK: 30, seed: 5 },
      ] as GenerateOptions[]) {
        const o = { ...options, maxTokens: 200, ignoreEos: true };
        const fused = await model.generateBatch(["ROMEO: hi", "To be, or not"], o);
        const step = await model.generateBatch(["ROMEO: hi", "To be, or not"], { ...o, fusedDecode: false });
        for (let r = 0; r < 2; r++) {
          expect(fused[r]!.decode).toBe("fused");
          expect(fused[r]!.stopReason).toBe("context");
          expect(step[r]!.stopReason).toBe("context");
          expect(fused[r]!.ids).toEqual(step[r]!.ids);
          expect(fused[r]!.text).toBe(step[r]!.text);
        }
        // the padded batch's cache holds exactly context_length positions at the end
        expect(fused[1]!.promptIds.length + fused[1]!.ids.length - 1).toBe(model.contextLength);
      }
    } finally {
      await model.dispose();
    }
  });

  it("stops where stepping stops: end-of-text and stop strings inside a chunk, per row", async () => {
    const model = await loadModel(join(fixtureModels(), "hybrid"), { threads: 1 });
    try {
      const free = await model.generate("ROMEO: hi", {
        temperature: 1,
        seed: 11,
        maxTokens: 40,
        ignoreEos: true,
      });
      const stop = free.text.slice(12, 14);
      let eosSeen = 0;
      for (const seed of [11, 12, 13, 14, 15, 16]) {
        const o: GenerateOptions = { temperature: 1, seed, maxTokens: 40, stop: [stop] };
        const prompts = ["ROMEO: hi", "To be, or not"];
        const fused = await model.generateBatch(prompts, o);
        const step = await model.generateBatch(prompts, { ...o, fusedDecode: false });
        for (let r = 0; r < 2; r++) {
          expect(fused[r]!.decode).toBe("fused");
          expect(fused[r]!.ids).toEqual(step[r]!.ids);
          expect(fused[r]!.text).toBe(step[r]!.text);
          expect(fused[r]!.stopReason).toBe(step[r]!.stopReason);
          if (step[r]!.stopReason === "eos") eosSeen++;
        }
      }
      // the random fixture's end-of-text id (0) is one of 63: some of these rows end on it
      expect(eosSeen).toBeGreaterThan(0);
    } finally {
      await model.dispose();
    }
  });
});

describe.skipIf(!existsSync(join(house("itera-lite-micro"), "model.onnx")))("limits", () => {
  it("a top-p within rounding of 1 steps (the loop could not find its cut); top-p 1 fuses", async () => {
    const model = await loadModel(house("itera-lite-micro"), { threads: 1 });
    try {
      const near = await model.generate("ROMEO:", {
        temperature: 0.8,
        topP: (1 + FUSED_TOP_P_MAX) / 2,
        seed: 2,
        maxTokens: 8,
      });
      expect(near.decode).toBe("step");
      const one = await model.generate("ROMEO:", { temperature: 0.8, topP: 1, seed: 2, maxTokens: 8 });
      expect(one.decode).toBe("fused");
      // one loop session per kind of choice, built on first use
      expect(await model.fusedDecoder({ sample: true, penalty: false, topP: false })).toBeInstanceOf(
        FusedDecoder,
      );
    } finally {
      await model.dispose();
    }
  });
});
