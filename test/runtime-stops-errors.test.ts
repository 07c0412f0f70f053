import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IteraError } from "../src/errors.js";
import { DataType, decodeModel, encodeModel, makeValueInfo } from "../src/onnx/index.js";
import { evaluate, type LanguageModel, loadModel } from "../src/runtime/index.js";
import { fixtureModels, type Reference, reference } from "./fixtures/runtime/models.js";
import { tempDirSync } from "./temp-dir.js";

let fixtures: string;
let work: string;
let kv: LanguageModel;
let kvRef: Reference;
let hybrid: LanguageModel;
let recurrent: LanguageModel;

beforeAll(async () => {
  fixtures = fixtureModels();
  work = tempDirSync("itera-runtime-");
  kv = await loadModel(join(fixtures, "gpt2-kv"), { threads: 1 });
  kvRef = reference(join(fixtures, "gpt2-kv"));
  hybrid = await loadModel(join(fixtures, "hybrid"), { threads: 1 });
  recurrent = await loadModel(join(fixtures, "recurrent"), { threads: 1 });
});

afterAll(async () => {
  await Promise.all([kv.dispose(), hybrid.dispose(), recurrent.dispose()]);
});

// biome-ignore lint/suspicious/noExplicitAny: the tests edit arbitrary JSON documents
type Json = Record<string, any>;

/** A copy of a fixture folder with genai_config.json / tokenizer.json edited. */
function variant(name: string, edit: { config?: (c: Json) => unknown; tokenizer?: (t: Json) => unknown }) {
  const dir = mkdtempSync(join(work, `${name}-`));
  cpSync(join(fixtures, name), dir, { recursive: true });
  for (const [file, fn] of [
    ["genai_config.json", edit.config],
    ["tokenizer.json", edit.tokenizer],
  ] as const) {
    if (!fn) continue;
    const json = JSON.parse(readFileSync(join(dir, file), "utf8"));
    const out = fn(json);
    writeFileSync(join(dir, file), typeof out === "string" ? out : JSON.stringify(out ?? json));
  }
  return dir;
}

describe("stopping", () => {
  it("stops at eos (the hybrid's greedy text reaches token 0) and leaves it out of the text", async () => {
    const ref = reference(join(fixtures, "hybrid"));
    const eosAt = ref.first.greedy_ids.indexOf(0);
    expect(eosAt).toBeGreaterThan(0);
    const streamed: string[] = [];
    const g = await hybrid.generate(ref.prompt, { maxTokens: 30 }, (e) => streamed.push(e.text));
    expect(g.stopReason).toBe("eos");
    expect(g.ids).toEqual(ref.first.greedy_ids.slice(0, eosAt + 1));
    expect(g.text).toBe(hybrid.tokenizer.decode(ref.first.greedy_ids.slice(0, eosAt)));
    expect(streamed.join("")).toBe(g.text);
  });

  it("stops at any id of an eos_token_id array", async () => {
    const stopId = kvRef.first.greedy_ids[4]!;
    const dir = variant("gpt2-kv", {
      config: (c) => {
        c.model.eos_token_id = [62, stopId];
      },
    });
    const model = await loadModel(dir);
    try {
      const g = await model.generate(kvRef.prompt, { maxTokens: 20 });
      expect(g.stopReason).toBe("eos");
      expect(g.ids).toEqual(kvRef.first.greedy_ids.slice(0, 5));
    } finally {
      await model.dispose();
    }
  });

  it("stops at a stop string, cuts it off, and never streams part of it", async () => {
    const full = kv.tokenizer.decode(kvRef.first.greedy_ids);
    const stop = full.slice(5, 8);
    const streamed: string[] = [];
    const g = await kv.generate(kvRef.prompt, { maxTokens: 20, stop: ["@@", stop] }, (e) =>
      streamed.push(e.text),
    );
    expect(g.stopReason).toBe("stop");
    expect(g.text).toBe(full.slice(0, 5));
    expect(g.ids).toEqual(kvRef.first.greedy_ids.slice(0, 8));
    expect(streamed.join("")).toBe(full.slice(0, 5));
  });

  it("stops at max tokens and streams every token's text", async () => {
    const streamed: string[] = [];
    const g = await kv.generate(kvRef.prompt, { maxTokens: 7 }, (e) => streamed.push(e.text));
    expect(g.stopReason).toBe("max_tokens");
    expect(g.ids).toHaveLength(7);
    expect(streamed.join("")).toBe(kv.tokenizer.decode(g.ids));
    expect(g.timings.tokenMs).toHaveLength(6);
  });

  it("stops at the context length of a KV model", async () => {
    const g = await kv.generate(kvRef.prompt, { maxTokens: 500, ignoreEos: true });
    expect(g.stopReason).toBe("context");
    // every position of the context was fed; the last token is predicted from the full context
    expect(g.promptIds.length + g.ids.length - 1).toBe(kv.contextLength);
  });

  it("a purely recurrent model runs past context_length (nothing in it is bounded by it)", async () => {
    const g = await recurrent.generate("ROMEO:", {
      maxTokens: recurrent.contextLength + 20,
      ignoreEos: true,
    });
    expect(g.stopReason).toBe("max_tokens");
    expect(g.ids).toHaveLength(recurrent.contextLength + 20);
  });
});

describe("evaluation", () => {
  const text = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n";

  it("carrying the state: the window changes nothing", async () => {
    const short = text.slice(0, 60);
    const a = await evaluate(hybrid, short, { method: "carry", window: 7 });
    const b = await evaluate(hybrid, short, { method: "carry", window: 30 });
    expect(a.tokens).toBe(short.length - 1);
    expect(Math.abs(a.nats_per_token - b.nats_per_token)).toBeLessThan(1e-5);
    expect(a.perplexity).toBeCloseTo(Math.exp(a.nats_per_token), 9);
    expect(a.bits_per_char).toBeCloseTo(a.nats_per_token / Math.LN2, 9); // one char per token
    // past the context a model with a KV cache cannot carry its state
    await expect(evaluate(hybrid, text, { method: "carry" })).rejects.toThrow(/exceeds the context of 64/);
  });

  it("sliding windows: one window covering the text equals carrying the state; shorter windows score each token once", async () => {
    const short = text.slice(0, 60);
    const carry = await evaluate(kv, short, { method: "carry" });
    const one = await evaluate(kv, short, { method: "sliding", window: 64 });
    expect(Math.abs(carry.nats_per_token - one.nats_per_token)).toBeLessThan(1e-5);
    const windows = await evaluate(kv, text, { method: "sliding", window: 16, stride: 8 });
    expect(windows.tokens).toBe(text.length - 1);
    expect(windows.method).toBe("sliding");
    expect(Number.isFinite(windows.nats_per_token)).toBe(true);
  });

  it("a window larger than a KV model's context is refused, not shrunk", async () => {
    await expect(evaluate(kv, text, { method: "sliding", window: 128 })).rejects.toThrow(
      /a window of 128 tokens exceeds the model's context length of 64/,
    );
    // a recurrent model takes any window
    expect((await evaluate(recurrent, text, { window: 1000 })).tokens).toBe(text.length - 1);
  });

  it("defaults to carry for recurrent models and sliding for KV models", async () => {
    expect((await evaluate(recurrent, text)).method).toBe("carry");
    expect((await evaluate(kv, text)).method).toBe("sliding");
  });
});

describe("bad input: one clear IteraError each", () => {
  async function loadError(dir: string): Promise<IteraError> {
    const e = await loadModel(dir).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(IteraError);
    return e as IteraError;
  }

  it("a missing folder", async () => {
    const e = await loadError(join(work, "no-such-model"));
    expect(e.message).toMatch(/model folder not found/);
  });

  it("a folder without genai_config.json", async () => {
    const dir = variant("gpt2-kv", {});
    rmSync(join(dir, "genai_config.json"));
    const e = await loadError(dir);
    expect(e.message).toMatch(/genai_config\.json/);
    expect(e.where).toBe(join(dir, "genai_config.json"));
  });

  it("genai_config.json that is not JSON", async () => {
    const e = await loadError(variant("gpt2-kv", { config: () => "{ model: " }));
    expect(e.message).toMatch(/not valid JSON/);
  });

  it("a bad field in genai_config.json is named", async () => {
    let e = await loadError(
      variant("gpt2-kv", {
        config: (c) => {
          c.model.context_length = "long";
        },
      }),
    );
    expect(e.message).toMatch(/model\.context_length/);
    e = await loadError(
      variant("gpt2-kv", {
        config: (c) => {
          delete c.model.eos_token_id;
        },
      }),
    );
    expect(e.message).toMatch(/model\.eos_token_id/);
  });

  it("the ONNX file named in the config is missing", async () => {
    const e = await loadError(
      variant("gpt2-kv", {
        config: (c) => {
          c.model.decoder.filename = "decoder.onnx";
        },
      }),
    );
    expect(e.message).toMatch(/names the decoder "decoder\.onnx", which is not in the folder/);
    expect(e.fix).toMatch(/model\.decoder\.filename/);
  });

  it("a decoder file outside the folder", async () => {
    const e = await loadError(
      variant("gpt2-kv", {
        config: (c) => {
          c.model.decoder.filename = "../gpt2-fused/model.onnx";
        },
      }),
    );
    expect(e.message).toMatch(/points outside the model folder/);
  });

  it("an itera.json with a bad field is named", async () => {
    const dir = variant("gpt2-kv", {});
    writeFileSync(
      join(dir, "itera.json"),
      JSON.stringify({ schema: "itera.model/v1", id: "x", parameters: "many" }),
    );
    const e = await loadError(dir);
    expect(e.message).toMatch(/invalid itera\.json: .*parameters/);
    expect(e.where).toBe(join(dir, "itera.json"));
  });

  it("a missing tokenizer.json: the model loads for token ids, and a text prompt is one clear error", async () => {
    const dir = variant("gpt2-kv", {});
    rmSync(join(dir, "tokenizer.json"));
    const m = await loadModel(dir, { threads: 1 });
    try {
      const e = await m.generate("ROMEO").then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(e).toBeInstanceOf(IteraError);
      expect((e as IteraError).message).toMatch(
        /no tokenizer\.json, so a text cannot be turned into token ids/,
      );
      expect((e as IteraError).where).toBe(join(dir, "tokenizer.json"));
      const ids = kvRef.first.input_ids;
      const g = await m.generate(ids, { maxTokens: 4 });
      expect(g.ids).toHaveLength(4);
    } finally {
      await m.dispose();
    }
  });

  it("a tokenizer whose vocabulary does not fit the model", async () => {
    const e = await loadError(
      variant("gpt2-kv", {
        tokenizer: (t) => {
          for (let i = 0; i < 10; i++) t.model.vocab[`extra${i}`] = 63 + i;
        },
      }),
    );
    expect(e.message).toMatch(/tokenizer has 73 tokens but the model's vocabulary has 63/);
  });

  it("vocab_size that disagrees with the graph", async () => {
    const e = await loadError(
      variant("gpt2-kv", {
        config: (c) => {
          c.model.vocab_size = 100;
        },
      }),
    );
    expect(e.message).toMatch(/model\.vocab_size is 100 but the graph's logits have 63/);
  });

  it("a state layout it cannot pair", async () => {
    const e = await loadError(join(fixtures, "unpaired"));
    expect(e.message).toMatch(/cannot pair the graph input\(s\) past_key_values\.0\.conv_state/);
    expect(e.where).toBe(join(fixtures, "unpaired", "model.onnx"));
  });

  it("a paged-attention graph: says what the layout is and how to export one that runs", async () => {
    const dir = variant("gpt2-kv", {});
    const path = join(dir, "model.onnx");
    const model = decodeModel(readFileSync(path));
    model.graph!.input.push(
      makeValueInfo("block_table", DataType.INT32, ["batch_size", "max_blocks"]),
      makeValueInfo("cumulative_sequence_lengths", DataType.INT32, ["batch_plus_one"]),
    );
    writeFileSync(path, encodeModel(model));
    const e = await loadError(dir);
    expect(e.message).toMatch(/uses paged attention \(input\(s\) block_table, cumulative_sequence_lengths\)/);
    expect(e.fix).toMatch(/plain KV cache/);
    expect(e.where).toBe(path);
  });

  it("a prompt longer than the context", async () => {
    const long = "a".repeat(kv.contextLength + 5);
    await expect(kv.generate(long)).rejects.toThrow(/has 69 tokens; the model's context is 64/);
    await expect(kv.generate(long)).rejects.toBeInstanceOf(IteraError);
  });

  it("token ids outside the vocabulary", async () => {
    await expect(kv.generate([1, 2, 500])).rejects.toThrow(/token id 500, outside the vocabulary of 63/);
  });
});
