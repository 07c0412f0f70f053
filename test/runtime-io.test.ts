import type { InferenceSession } from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import { IteraError } from "../src/errors.js";
import { type GenaiConfig, genaiConfigSchema } from "../src/model/genai-config.js";
import { analyseIo } from "../src/runtime/io.js";

/**
 * Input/output layouts as ONNX Runtime reports them for exports made elsewhere (symbolic head sizes,
 * fused caches, odd types). Only the metadata is hand-written here; the runtime tests with real
 * sessions are in runtime-generate.test.ts.
 */

type Dims = (number | string)[];
function session(inputs: Record<string, [string, Dims]>, outputs: Record<string, [string, Dims]>) {
  const meta = (m: Record<string, [string, Dims]>) =>
    Object.entries(m).map(([name, [type, shape]]) => ({ name, isTensor: true as const, type, shape }));
  return {
    inputNames: Object.keys(inputs),
    outputNames: Object.keys(outputs),
    inputMetadata: meta(inputs),
    outputMetadata: meta(outputs),
  } as unknown as InferenceSession;
}

function config(decoder: Record<string, unknown> = {}): GenaiConfig {
  return genaiConfigSchema.parse({
    model: {
      type: "test",
      eos_token_id: [2, 3],
      vocab_size: 10,
      context_length: 128,
      decoder: { filename: "model.onnx", num_hidden_layers: 1, ...decoder },
    },
  });
}

describe("state layout from session metadata", () => {
  it("resolves symbolic head counts and sizes of KV caches from the config", () => {
    const io = analyseIo(
      session(
        {
          input_ids: ["int64", ["batch_size", "sequence_length"]],
          attention_mask: ["int64", ["batch_size", "total_sequence_length"]],
          "past_key_values.0.key": [
            "float16",
            ["batch_size", "num_heads", "past_sequence_length", "head_dim"],
          ],
          "past_key_values.0.value": [
            "float16",
            ["batch_size", "num_heads", "past_sequence_length", "head_dim"],
          ],
        },
        {
          logits: ["float16", ["batch_size", "sequence_length", 10]],
          "present.0.key": ["float16", ["batch_size", "num_heads", "total_sequence_length", "head_dim"]],
          "present.0.value": ["float16", ["batch_size", "num_heads", "total_sequence_length", "head_dim"]],
        },
      ),
      config({ num_attention_heads: 8, num_key_value_heads: 2, head_size: 16 }),
      "model.onnx",
    );
    expect(io.states.map((s) => [s.input, s.output, s.kind, s.type, s.emptyShape, s.pastAxis])).toEqual([
      ["past_key_values.0.key", "present.0.key", "kv", "float16", [1, 2, 0, 16], 2],
      ["past_key_values.0.value", "present.0.value", "kv", "float16", [1, 2, 0, 16], 2],
    ]);
    expect(io.attentionMask?.name).toBe("attention_mask");
    expect(io.positionIds).toBeNull();
    expect(io.hasKvCache).toBe(true);
    expect(io.fixedSequence).toBeNull();
  });

  it("fused past_N caches: batch on axis 1, past on axis 3, head size from hidden_size / heads", () => {
    const io = analyseIo(
      session(
        { input_ids: ["int64", ["b", "s"]], past_0: ["float32", [2, "b", 4, "p", "d"]] },
        { logits: ["float32", ["b", "s", 10]], present_0: ["float32", [2, "b", 4, "t", "d"]] },
      ),
      config({ num_attention_heads: 4, hidden_size: 32 }),
      "model.onnx",
    );
    expect(io.states[0]).toMatchObject({
      batchAxis: 1,
      pastAxis: 3,
      emptyShape: [2, 1, 4, 0, 8],
      kind: "kv",
    });
  });

  it("a fixed step model with fixed-shape recurrent state and a fixed batch", () => {
    const io = analyseIo(
      session(
        {
          input_ids: ["int32", [1, 1]],
          "past_conv.0": ["float32", [1, 64, 3]],
        },
        { logits: ["float32", [1, 1, 10]], "present_conv.0": ["float32", [1, 64, 3]] },
      ),
      config(),
      "model.onnx",
    );
    expect(io.fixedSequence).toBe(1);
    expect(io.fixedBatch).toBe(1);
    expect(io.inputIds.type).toBe("int32");
    expect(io.states[0]).toMatchObject({ kind: "conv", pastAxis: null, emptyShape: [1, 64, 3] });
    expect(io.hasFixedState).toBe(true);
  });

  function analyseError(s: InferenceSession, c = config()): IteraError {
    try {
      analyseIo(s, c, "model.onnx");
    } catch (e) {
      expect(e).toBeInstanceOf(IteraError);
      return e as IteraError;
    }
    throw new Error("expected an IteraError");
  }

  it("a state dimension nothing can size is an error naming it", () => {
    const e = analyseError(
      session(
        {
          input_ids: ["int64", ["b", "s"]],
          "past_key_values.0.recurrent_state": ["float32", ["b", "d_state"]],
        },
        { logits: ["float32", ["b", "s", 10]], "present.0.recurrent_state": ["float32", ["b", "d_state"]] },
      ),
    );
    expect(e.message).toMatch(
      /dimension 'd_state' \(axis 1\) of state input 'past_key_values.0.recurrent_state'/,
    );
  });

  it("an unsupported tensor type is an error naming the input", () => {
    const e = analyseError(
      session(
        { input_ids: ["int64", ["b", "s"]], "past_conv.0": ["bool", ["b", 4]] },
        { logits: ["float32", ["b", "s", 10]], "present_conv.0": ["bool", ["b", 4]] },
      ),
    );
    expect(e.message).toMatch(/'past_conv.0' has type bool/);
  });

  it("a graph without the configured token input or logits output names the config field", () => {
    let e = analyseError(session({ ids: ["int64", ["b", "s"]] }, { logits: ["float32", ["b", "s", 10]] }));
    expect(e.message).toMatch(/no input 'input_ids' \(decoder\.inputs\.input_ids\)/);
    expect(e.fix).toMatch(/ids/);
    e = analyseError(session({ input_ids: ["int64", ["b", "s"]] }, { scores: ["float32", ["b", "s", 10]] }));
    expect(e.message).toMatch(/no output 'logits' \(decoder\.outputs\.logits\)/);
  });
});

describe("genai_config.json schema", () => {
  it("accepts eos_token_id as a number or a list, keeps unknown fields, and refuses bad ones by name", () => {
    expect(config().model.eos_token_id).toEqual([2, 3]);
    const parsed = genaiConfigSchema.parse({
      model: {
        type: "phi3",
        eos_token_id: 7,
        vocab_size: 10,
        context_length: 4,
        custom_thing: true,
        decoder: { filename: "m.onnx", num_hidden_layers: 2, layer_types: ["conv", "full_attention"] },
      },
      search: { top_k: 5, do_sample: true },
    });
    expect(parsed.model.eos_token_id).toBe(7);
    expect((parsed.model as Record<string, unknown>).custom_thing).toBe(true);
    const bad = genaiConfigSchema.safeParse({
      model: {
        type: "x",
        eos_token_id: -1,
        vocab_size: 10,
        context_length: 4,
        decoder: { filename: "m.onnx" },
      },
    });
    expect(bad.success).toBe(false);
    const paths = bad.error!.issues.map((i) => i.path.join("."));
    expect(paths).toContain("model.eos_token_id");
    expect(paths).toContain("model.decoder.num_hidden_layers");
  });
});
