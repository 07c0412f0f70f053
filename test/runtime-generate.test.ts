import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type LanguageModel, loadModel } from "../src/runtime/index.js";
import { type FixtureName, fixtureModels, type Reference, reference } from "./fixtures/runtime/models.js";

/**
 * Real ONNX Runtime sessions on tiny models exported from PyTorch by fixtures/runtime/make_models.py:
 * GPT-2 with separate and fused KV caches, an LFM2-style conv/recurrent + attention hybrid, and an
 * Itera-Lite-style recurrent step model (one token per call); "templated" is gpt2-kv with names no
 * convention knows (tokens, scores, cache_in.N.k -> cache_out.N.k), given by genai_config.json.
 */

const names: FixtureName[] = ["gpt2-kv", "gpt2-fused", "hybrid", "recurrent", "templated"];
const models = new Map<FixtureName, { model: LanguageModel; ref: Reference }>();

beforeAll(async () => {
  const dir = fixtureModels();
  for (const name of names) {
    models.set(name, {
      model: await loadModel(join(dir, name), { threads: 1 }),
      ref: reference(join(dir, name)),
    });
  }
});

afterAll(async () => {
  for (const { model } of models.values()) await model.dispose();
});

function get(name: FixtureName) {
  return models.get(name)!;
}

describe.each(names)("%s", (name) => {
  it("finds and pairs the state, and sizes the empty state", () => {
    const { model } = get(name);
    const kinds = model.io.states.map((s) => s.kind);
    const expected = {
      "gpt2-kv": ["kv", "kv", "kv", "kv"],
      templated: ["kv", "kv", "kv", "kv"],
      "gpt2-fused": ["kv", "kv"],
      hybrid: ["conv", "recurrent", "kv", "kv"],
      recurrent: ["conv", "recurrent", "conv", "recurrent"],
    }[name];
    expect(kinds).toEqual(expected);
    const state = model.newState(2);
    for (const slot of model.io.states) {
      const dims = state.tensors[slot.input]!.dims;
      expect(dims[slot.batchAxis]).toBe(2);
      if (slot.pastAxis !== null) expect(dims[slot.pastAxis]).toBe(0);
    }
    expect(model.io.fixedSequence).toBe(name === "recurrent" ? 1 : null);
  });

  it("greedy generation equals PyTorch's, for two prompts", async () => {
    const { model, ref } = get(name);
    for (const case_ of [ref.first, ref.second]) {
      const g = await model.generate(case_.input_ids, {
        maxTokens: case_.greedy_ids.length,
        ignoreEos: true,
      });
      expect(g.ids).toEqual(case_.greedy_ids);
      expect(g.stopReason).toBe("max_tokens");
    }
  });

  it("encodes the prompt as PyTorch did and reproduces its last-position logits", async () => {
    const { model, ref } = get(name);
    expect(model.tokenizer.encode(ref.prompt)).toEqual(ref.first.input_ids);
    const out = await model.forward(ref.first.input_ids, model.newState(1));
    const last = Array.from(out.logits.subarray((out.positions - 1) * out.vocab, out.positions * out.vocab));
    const maxDiff = Math.max(...last.map((v, i) => Math.abs(v - ref.first.last_logits[i]!)));
    expect(maxDiff).toBeLessThan(1e-4);
  });

  it("prefill then decode equals stepping token by token (logits within 1e-4)", async () => {
    const { model, ref } = get(name);
    const ids = [...ref.first.input_ids, ...ref.first.greedy_ids.slice(0, 6)];
    const split = ref.first.input_ids.length;
    const prefill = await model.forward([ids.slice(0, split)], model.newState(1));
    const decode = await model.forward([ids.slice(split)], prefill.state);
    let state = model.newState(1);
    const stepped: Float32Array[] = [];
    for (const id of ids) {
      const out = await model.forward([[id]], state);
      state = out.state;
      stepped.push(out.logits);
    }
    const v = prefill.vocab;
    const together = [prefill, decode].flatMap((r) =>
      Array.from({ length: r.positions }, (_, t) => r.logits.subarray(t * v, (t + 1) * v)),
    );
    expect(together).toHaveLength(ids.length);
    let maxDiff = 0;
    together.forEach((row, t) => {
      for (let i = 0; i < v; i++) maxDiff = Math.max(maxDiff, Math.abs(row[i]! - stepped[t]![i]!));
    });
    expect(maxDiff).toBeLessThan(1e-4);
  });

  it("greedy generation is deterministic, and a batch equals its rows run alone", async () => {
    const { model, ref } = get(name);
    const a = await model.generate(ref.prompt, { maxTokens: 12, ignoreEos: true });
    const b = await model.generate(ref.prompt, { maxTokens: 12, ignoreEos: true });
    expect(b.ids).toEqual(a.ids);
    expect(b.text).toBe(a.text);
    if (name === "gpt2-fused") return; // no attention_mask: batches only of equal length (tested below)
    const [first, second] = await model.generateBatch([ref.prompt, ref.second_prompt], {
      maxTokens: 12,
      ignoreEos: true,
    });
    expect(first!.ids).toEqual(ref.first.greedy_ids.slice(0, 12));
    expect(second!.ids).toEqual(ref.second.greedy_ids.slice(0, 12));
  });

  it("seeded sampling is reproducible and different seeds differ", async () => {
    const { model, ref } = get(name);
    const opts = { maxTokens: 20, temperature: 1.5, ignoreEos: true };
    const a = await model.generate(ref.prompt, { ...opts, seed: 7 });
    const b = await model.generate(ref.prompt, { ...opts, seed: 7 });
    const c = await model.generate(ref.prompt, { ...opts, seed: 8 });
    expect(b.ids).toEqual(a.ids);
    expect(c.ids).not.toEqual(a.ids);
    expect(a.seed).toBe(7);
  });
});

describe("batches", () => {
  it("a fused-cache model without attention_mask batches prompts of equal length and refuses others", async () => {
    const { model, ref } = get("gpt2-fused");
    const [x, y] = await model.generateBatch([ref.first.input_ids, ref.first.input_ids], {
      maxTokens: 8,
      ignoreEos: true,
    });
    expect(x!.ids).toEqual(ref.first.greedy_ids.slice(0, 8));
    expect(y!.ids).toEqual(x!.ids);
    await expect(model.generateBatch([ref.prompt, ref.second_prompt], { maxTokens: 4 })).rejects.toThrow(
      /different lengths cannot share a batch/,
    );
  });
});
