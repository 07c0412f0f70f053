import { cpSync, existsSync, rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { STEP_DECODE_MAX_TOKENS } from "../src/cli/generation.js";
import { registerRun } from "../src/cli/commands/run.js";
import { InferenceSession, Tensor } from "onnxruntime-node";
import { encodeModel, loadModel as loadOnnx } from "../src/onnx/index.js";
import { buildDecodeLoop, FusedDecoder, fusedDecodeUnsupported } from "../src/runtime/fused-decode.js";
import { type LanguageModel, loadModel } from "../src/runtime/index.js";
import { inProcessCli } from "./cli-helpers.js";
import { fixtureModels, reference } from "./fixtures/runtime/models.js";
import { tempDirSync } from "./temp-dir.js";

/**
 * Fused greedy decoding (src/runtime/fused-decode.ts) against stepping one ONNX Runtime call per
 * token, on the committed house models in real sessions: the same tokens, the same stops.
 */

const micro = join("models", "itera-lite-micro");
const transformer = join("models", "transformer-tiny");

describe.skipIf(!existsSync(join(micro, "model.onnx")))("Itera-Lite micro", () => {
  let model: LanguageModel;
  beforeAll(async () => {
    model = await loadModel(micro, { threads: 1 });
  });
  afterAll(async () => {
    await model.dispose();
  });

  const both = async (prompts: string[], options: Parameters<LanguageModel["generateBatch"]>[1]) => {
    const step = await model.generateBatch(prompts, { ...options, temperature: 0, fusedDecode: false });
    const fused = await model.generateBatch(prompts, { ...options, temperature: 0 });
    return { step, fused };
  };

  it("qualifies: its only inputs are token ids and fixed-shape states", async () => {
    expect(fusedDecodeUnsupported(model.io)).toBeNull();
    expect(await model.fusedDecoder()).toBeInstanceOf(FusedDecoder);
  });

  it("gives exactly the tokens of stepping, for one prompt and for a batch of different lengths", async () => {
    for (const prompts of [["ROMEO:"], ["ROMEO:", "JULIET:\nO Romeo"]]) {
      const { step, fused } = await both(prompts, { maxTokens: 300, ignoreEos: true });
      for (let r = 0; r < prompts.length; r++) {
        expect(step[r]!.decode).toBe("step");
        expect(fused[r]!.decode).toBe("fused");
        expect(fused[r]!.ids).toEqual(step[r]!.ids);
        expect(fused[r]!.ids).toHaveLength(300);
        expect(fused[r]!.stopReason).toBe("max_tokens");
        expect(fused[r]!.timings.tokenMs).toHaveLength(299);
      }
    }
  });

  it("stops where stepping stops: a stop string, and the end-of-text token", async () => {
    const stepText = (await model.generate("ROMEO:", { maxTokens: 200, temperature: 0, ignoreEos: true }))
      .text;
    // a stop string that first appears in the middle of a fused chunk
    const stop = stepText.slice(120, 124);
    const { step, fused } = await both(["ROMEO:"], { maxTokens: 200, stop: [stop], ignoreEos: true });
    expect(fused[0]!.stopReason).toBe("stop");
    expect(fused[0]!.text).toBe(step[0]!.text);
    expect(fused[0]!.ids).toEqual(step[0]!.ids);

    const streamed: string[] = [];
    const g = await model.generate(
      "ROMEO:",
      { maxTokens: 200, temperature: 0, stop: [stop], ignoreEos: true },
      (e) => streamed.push(e.text),
    );
    expect(streamed.join("")).toBe(g.text);

    const withEos = await both(["ROMEO:"], { maxTokens: 400 });
    expect(withEos.fused[0]!.ids).toEqual(withEos.step[0]!.ids);
    expect(withEos.fused[0]!.stopReason).toBe(withEos.step[0]!.stopReason);
  });

  it("ends the loop early once every row has produced an end token", async () => {
    const fused = (await model.fusedDecoder()) as FusedDecoder;
    const state = model.newState(1).tensors;
    const run = (eos: number[]) => fused.run({ ids: [5], state, length: 0, padding: [0], steps: 40, eos });
    const free = await run([]);
    expect(free.tokens[0]).toHaveLength(40);
    // pretend the 7th greedy token ends the text: the loop must stop right after producing it
    const end = free.tokens[0]![6]!;
    const first = free.tokens[0]!.indexOf(end);
    const stopped = await run([end]);
    expect(stopped.tokens[0]).toEqual(free.tokens[0]!.slice(0, first + 1));
  });

  it("builds the same loop when the graph does not declare the logits' rank", async () => {
    const proto = await loadOnnx(join(micro, "model.onnx"));
    const logits = proto.graph!.output.find((o) => o.name === "logits")!;
    logits.type!.tensorType!.shape = undefined;
    const session = await InferenceSession.create(encodeModel(buildDecodeLoop(proto, model.io)));
    try {
      const state = model.newState(1).tensors;
      const feeds: Record<string, Tensor> = {
        "itera.loop.steps": new Tensor("int64", BigInt64Array.of(30n), []),
        "itera.loop.in.ids": new Tensor("int64", BigInt64Array.of(5n), [1, 1]),
        "itera.loop.eos_table": new Tensor("int32", new Int32Array(model.vocabSize), [model.vocabSize]),
        "itera.loop.in.done": new Tensor("int32", new Int32Array(1), [1, 1]),
      };
      for (const [name, t] of Object.entries(state)) feeds[`itera.loop.in.${name}`] = t;
      const out = await session.run(feeds);
      const tokens = Array.from(out["itera.loop.tokens"]!.data as BigInt64Array, Number);
      const fused = (await model.fusedDecoder()) as FusedDecoder;
      const chunk = await fused.run({ ids: [5], state, length: 0, padding: [0], steps: 30, eos: [] });
      expect(tokens).toEqual(chunk.tokens[0]);
    } finally {
      await session.release();
    }
  });

  it("fuses sampling and repetition penalties too (their tokens: runtime-fused-sampling.test.ts)", async () => {
    const sampled = await model.generate("ROMEO:", { maxTokens: 20, temperature: 0.8, seed: 3 });
    expect(sampled.decode).toBe("fused");
    const penalised = await model.generate("ROMEO:", {
      maxTokens: 20,
      temperature: 0,
      repetitionPenalty: 1.3,
    });
    expect(penalised.decode).toBe("fused");
    const stepped = await model.generate("ROMEO:", {
      maxTokens: 20,
      temperature: 0.8,
      seed: 3,
      fusedDecode: false,
    });
    expect(stepped.decode).toBe("step");
    expect(stepped.ids).toEqual(sampled.ids);
  });
});

describe.skipIf(!existsSync(join(micro, "model.onnx")))("when the loop cannot be built", () => {
  it("decodes step by step and says why, rather than failing", async () => {
    const dir = tempDirSync("itera-fused-");
    cpSync(micro, dir, { recursive: true });
    const model = await loadModel(dir, { threads: 1 });
    // the graph file vanishes after loading: the loop (built on first use) cannot read it
    rmSync(join(dir, "model.onnx"));
    const g = await model.generate("ROMEO:", { maxTokens: 12, temperature: 0 });
    expect(g.decode).toBe("step");
    expect(g.ids).toHaveLength(12);
    expect(await model.fusedDecoder()).toMatchObject({
      unsupported: expect.stringMatching(/could not be built/),
    });
    await model.dispose();
  });
});

describe.skipIf(!existsSync(join(transformer, "model.onnx")))("a KV-cache model", () => {
  it("decodes fused (the cache grows inside the loop) to the tokens of stepping", async () => {
    const model = await loadModel(transformer, { threads: 1 });
    try {
      expect(fusedDecodeUnsupported(model.io)).toBeNull();
      const options = { maxTokens: 120, temperature: 0, ignoreEos: true };
      const prompts = ["ROMEO:", "JULIET:\nO Romeo"];
      const fused = await model.generateBatch(prompts, options);
      const step = await model.generateBatch(prompts, { ...options, fusedDecode: false });
      for (let r = 0; r < prompts.length; r++) {
        expect(fused[r]!.decode).toBe("fused");
        expect(step[r]!.decode).toBe("step");
        expect(fused[r]!.ids).toEqual(step[r]!.ids);
        expect(fused[r]!.ids).toHaveLength(120);
      }
    } finally {
      await model.dispose();
    }
  });
});

describe.skipIf(!existsSync(join(micro, "model.onnx")))("itera run", () => {
  const itera = inProcessCli((program) => registerRun(program));

  it("--json says how it decoded; --no-fused steps one call per token, with the same tokens", async () => {
    const args = [
      "run",
      micro,
      "--prompt",
      "ROMEO:",
      "-n",
      String(STEP_DECODE_MAX_TOKENS + 1), // a run up to STEP_DECODE_MAX_TOKENS steps either way
      "--temperature",
      "0",
      "--ignore-eos",
      "--json",
    ];
    const fused = await itera(...args);
    const step = await itera(...args, "--no-fused");
    expect(fused.code).toBe(0);
    expect(step.code).toBe(0);
    const a = JSON.parse(fused.stdout) as { decode: string; ids: number[] };
    const b = JSON.parse(step.stdout) as { decode: string; ids: number[] };
    expect(a.decode).toBe("fused");
    expect(b.decode).toBe("step");
    expect(a.ids).toEqual(b.ids);
  });
});

describe("PyTorch fixtures (test/fixtures/runtime)", () => {
  /** Greedy generation of a fixture's reference prompts: how it decoded and whether it matched PyTorch. */
  const greedyOf = async (name: "recurrent" | "hybrid") => {
    const dir = join(fixtureModels(), name);
    const model = await loadModel(dir, { threads: 1 });
    try {
      const refs = reference(dir);
      const out = [];
      for (const ref of [refs.first, refs.second]) {
        const g = await model.generate(ref.input_ids, {
          maxTokens: ref.greedy_ids.length,
          temperature: 0,
          ignoreEos: true,
        });
        out.push({ decode: g.decode, ids: g.ids, expected: ref.greedy_ids });
      }
      return out;
    } finally {
      await model.dispose();
    }
  };

  it("a recurrent export and a hybrid with attention decode fused to PyTorch's greedy tokens", async () => {
    for (const name of ["recurrent", "hybrid"] as const) {
      for (const g of await greedyOf(name)) {
        expect(g.decode).toBe("fused");
        expect(g.ids).toEqual(g.expected);
      }
    }
  });
});
