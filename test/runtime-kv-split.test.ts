import { existsSync } from "node:fs";
import { join } from "node:path";
import { Tensor } from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadModel as loadOnnx } from "../src/onnx/index.js";
import type { NodeProto } from "../src/onnx/types.js";
import { buildDecodeLoop, FusedDecoder } from "../src/runtime/fused-decode.js";
import { type GenerateOptions, type LanguageModel, loadModel } from "../src/runtime/index.js";
import { CacheBuffers, splitKvAttention } from "../src/runtime/kv-split.js";
import { fixtureModels } from "./fixtures/runtime/models.js";

/**
 * The split KV cache of fused decoding (src/runtime/kv-split.ts, issue #17): the loop carries only
 * the positions a call adds and reads the prefix from outside, never copying it per step. Real
 * ONNX Runtime sessions; tokens compared with stepping one call per token and with the loop that
 * concatenates the whole cache every step.
 */

const transformer = join("models", "transformer-tiny");
const fixtures = fixtureModels();

async function kvMode(dir: string): Promise<unknown> {
  const model = await loadModel(dir, { threads: 1 });
  try {
    const fused = await model.fusedDecoder(undefined, true);
    return fused instanceof FusedDecoder ? fused.kvCache : fused;
  } finally {
    await model.dispose();
  }
}

describe("which caches split", () => {
  it("the house transformer and the Optimum-named, hybrid and templated fixtures; a fused past_N cache says why not", async () => {
    if (existsSync(join(transformer, "model.onnx"))) expect(await kvMode(transformer)).toBe("split");
    for (const name of ["gpt2-kv", "hybrid", "templated"])
      expect(await kvMode(join(fixtures, name))).toBe("split");
    expect(await kvMode(join(fixtures, "gpt2-fused"))).toEqual({
      concat: "past_0 is not a [batch, heads, past, head] cache",
    });
    expect(await kvMode(join(fixtures, "recurrent"))).toBe("none");
  });

  it("the loop carries each call's own positions from empty; no step reads the prefix into a Concat", async () => {
    const model = await loadModel(join(fixtures, "gpt2-kv"), { threads: 1 });
    try {
      const built = (splitKv: boolean) => async () => {
        const onnx = await loadOnnx(model.onnxPath);
        const plan = splitKv
          ? splitKvAttention(onnx, model.io, (s) => `itera.loop.in.${s.input}`)
          : undefined;
        if (plan && "unsupported" in plan) throw new Error(plan.unsupported);
        const loop = buildDecodeLoop(onnx, model.io, undefined, plan);
        const outer = loop.graph!.node;
        const body = outer.find((n) => n.opType === "Loop")!.attribute[0]!.g!.node;
        return { outer, body, outputs: loop.graph!.output.map((o) => o.name) };
      };
      const kv = model.io.states.filter((s) => s.pastAxis !== null);
      const readers = (nodes: NodeProto[], name: string) =>
        nodes.filter((n) => n.input.includes(name)).map((n) => n.opType);

      const split = await built(true)();
      const loop = split.outer.find((n) => n.opType === "Loop")!;
      for (const s of kv) {
        // the carried value starts as an empty Slice of the prefix ...
        expect(loop.input).toContain(`itera.loop.empty.${s.input}`);
        const start = split.outer.find((n) => n.output.includes(`itera.loop.empty.${s.input}`));
        expect(start?.opType).toBe("Slice");
        // ... the body reads the prefix only for attention (Transpose -> MatMul for keys, MatMul for values) ...
        expect(
          readers(split.body, `itera.loop.in.${s.input}`).every(
            (op) => op === "Transpose" || op === "MatMul",
          ),
        ).toBe(true);
        // ... and the loop returns the chunk alone (FusedDecoder.run joins it to the prefix)
        expect(readers(split.outer, `itera.loop.chunk.${s.output}`)).toEqual([]);
        expect(split.outputs).toContain(`itera.loop.chunk.${s.output}`);
        expect(split.outputs).not.toContain(`itera.loop.out.${s.output}`);
      }
      // without the split, every step concatenates the whole carried cache
      const plain = await built(false)();
      for (const s of kv) expect(readers(plain.body, s.input)).toContain("Concat");
    } finally {
      await model.dispose();
    }
  });
});

describe("the joined cache's memory", () => {
  it("keeps the largest spare buffers it handed out, and only those", () => {
    const pool = new CacheBuffers(2);
    const positionBytes = 4 * 2 * 8; // float32, 2 heads of 8
    const handed = (positions: number) => {
      const length = (positions * positionBytes) / 4;
      return new Tensor("float32", new Float32Array(pool.take(4 * length, positionBytes), 0, length), [
        1,
        2,
        positions,
        8,
      ]);
    };
    const small = [handed(10), handed(20)];
    const large = handed(300); // rounded up to 512 positions
    for (const t of small) pool.give(t);
    pool.give(new Tensor("float32", new Float32Array(512 * 16), [1, 2, 512, 8])); // not the pool's
    expect(pool.spareBytes).toEqual([256 * positionBytes, 256 * positionBytes]);
    pool.give(large);
    expect(pool.spareBytes).toEqual([512 * positionBytes, 256 * positionBytes]);
    // a request that fits takes the first spare large enough
    const again = handed(400);
    expect((again.data as Float32Array).buffer).toBe((large.data as Float32Array).buffer);
  });

  it("a state handed back (recycle) lends its memory to the call after next; one still held is never written", async () => {
    const model = await loadModel(join(fixtures, "gpt2-kv"), { threads: 1 });
    try {
      const fused = await model.fusedDecoder(undefined, true);
      if (!(fused instanceof FusedDecoder)) throw new Error(fused.unsupported);
      const kv = model.io.states.filter((s) => s.pastAxis !== null);
      const prompt = model.newState(1);
      const first = await model.forward([[5, 9, 2, 7]], prompt);
      // three calls of 6 steps from the prompt's state, each from the state the last returned
      const chain = async (recycle: boolean) => {
        const states = [first.state.tensors];
        const tokens: number[][] = [];
        let ids = [3];
        for (let call = 0; call < 3; call++) {
          const length = 4 + 6 * call;
          const out = await fused.run({
            ids,
            state: states.at(-1)!,
            length,
            padding: [0],
            steps: 6,
            eos: [],
            recycle,
          });
          tokens.push(out.tokens[0]!);
          ids = [out.tokens[0]!.at(-1)!];
          states.push(out.state);
        }
        return { states, tokens };
      };
      const buffer = (t: unknown) => (t as { data: Float32Array }).data.buffer;
      const held = await chain(false);
      const copies = held.states.map((st) =>
        kv.map((s) => Float32Array.from(st[s.input]!.data as Float32Array)),
      );
      const handed = await chain(true);
      // the same tokens and caches either way (but the first call's, handed back and written over)
      expect(handed.tokens).toEqual(held.tokens);
      for (const i of [0, 2, 3])
        for (const [j, s] of kv.entries()) expect(handed.states[i]![s.input]!.data).toEqual(copies[i]![j]);
      for (const s of kv) {
        // handed back after the second call, the first call's memory holds the third call's cache
        expect(buffer(handed.states[3]![s.input])).toBe(buffer(handed.states[1]![s.input]));
        // without recycle, every call's cache has its own memory, and what the caller holds is intact
        const mine = new Set(held.states.slice(1).map((st) => buffer(st[s.input])));
        expect(mine.size).toBe(3);
      }
      for (const [i, st] of held.states.entries())
        for (const [j, s] of kv.entries()) expect(st[s.input]!.data).toEqual(copies[i]![j]);
    } finally {
      await model.dispose();
    }
  });
});

/** Generate split (default), with the whole-cache Concat, and stepped; all three must agree. */
async function threeWays(model: LanguageModel, prompts: string[] | number[][], options: GenerateOptions) {
  const split = await model.generateBatch(prompts, { splitKvFrom: 0, ...options });
  const concat = await model.generateBatch(prompts, { ...options, splitKv: false });
  const step = await model.generateBatch(prompts, { ...options, fusedDecode: false });
  return { split, concat, step };
}

describe.skipIf(!existsSync(join(transformer, "model.onnx")))("transformer-tiny", () => {
  let model: LanguageModel;
  beforeAll(async () => {
    model = await loadModel(transformer, { threads: 1 });
  });
  afterAll(async () => {
    await model.dispose();
  });

  it("decodes after a long prompt, over many calls, to the tokens of stepping: greedy and seeded sampling", async () => {
    const text =
      "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n";
    const long = text.repeat(8); // about 720 tokens: calls of 23+ steps, each from a longer prefix
    const settings: GenerateOptions[] = [
      { temperature: 0 },
      { temperature: 0, repetitionPenalty: 1.3 },
      { temperature: 0.9, topK: 20, topP: 0.95, seed: 3 },
    ];
    for (const s of settings) {
      const { split, concat, step } = await threeWays(model, [long], {
        ...s,
        maxTokens: 160,
        ignoreEos: true,
      });
      expect(split[0]!.decode).toBe("fused");
      expect(step[0]!.decode).toBe("step");
      expect(split[0]!.ids).toHaveLength(160);
      expect(split[0]!.ids).toEqual(step[0]!.ids);
      expect(concat[0]!.ids).toEqual(step[0]!.ids);
    }
  });

  it("switches from the whole-cache Concat to the split cache mid-generation (at 256 positions) with the tokens of stepping", async () => {
    const prompt = "ROMEO:\nBut soft, what light through yonder window breaks?\n".repeat(3); // ~170 tokens
    const options: GenerateOptions = { temperature: 0, maxTokens: 150, ignoreEos: true };
    const switched = await model.generate(prompt, options);
    const step = await model.generate(prompt, { ...options, fusedDecode: false });
    expect(switched.promptIds.length).toBeLessThan(256);
    expect(switched.promptIds.length + 150).toBeGreaterThan(256);
    expect(switched.decode).toBe("fused");
    expect(switched.ids).toEqual(step.ids);
  });

  it("a batch of prompts of different lengths (left-padded caches) decodes to the tokens of stepping", async () => {
    const prompts = ["ROMEO:", "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father"];
    for (const s of [{ temperature: 0 }, { temperature: 0.8, topK: 40, seed: 11 }] as GenerateOptions[]) {
      const { split, step } = await threeWays(model, prompts, { ...s, maxTokens: 120, ignoreEos: true });
      for (let r = 0; r < prompts.length; r++) expect(split[r]!.ids).toEqual(step[r]!.ids);
    }
  });

  it("stops at the context length where stepping stops", async () => {
    const ids = Array.from({ length: model.contextLength - 40 }, (_, i) => 1 + ((i * 7) % 60));
    const { split, step } = await threeWays(model, [ids], {
      temperature: 0,
      maxTokens: 100,
      ignoreEos: true,
    });
    expect(split[0]!.stopReason).toBe("context");
    expect(split[0]!.ids).toEqual(step[0]!.ids);
  });
});

describe("KV fixtures (a Shape of the cache read by the graph, masked_fill, a hybrid, templated names)", () => {
  for (const name of ["gpt2-kv", "hybrid", "templated"]) {
    it(`${name}: split decoding gives the tokens of stepping, greedy and sampled, one prompt and a batch`, async () => {
      const model = await loadModel(join(fixtures, name), { threads: 1 });
      try {
        const prompts = [
          [5, 9, 2, 7, 11, 3],
          [4, 4, 8],
        ];
        for (const s of [
          { temperature: 0 },
          { temperature: 1.1, topK: 0, topP: 0.9, seed: 5 },
        ] as GenerateOptions[]) {
          for (const batch of [prompts.slice(0, 1), prompts]) {
            const { split, concat, step } = await threeWays(model, batch, {
              ...s,
              maxTokens: 60,
              ignoreEos: true,
            });
            for (let r = 0; r < batch.length; r++) {
              expect(split[r]!.ids).toEqual(step[r]!.ids);
              expect(concat[r]!.ids).toEqual(step[r]!.ids);
            }
          }
        }
      } finally {
        await model.dispose();
      }
    });
  }
});
