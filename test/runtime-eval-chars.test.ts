import { afterAll, beforeAll, expect, it } from "vitest";
import { evaluate, firstTokenChars } from "../src/runtime/evaluate.js";
import { type LanguageModel, loadModel } from "../src/runtime/index.js";

/**
 * bits/char divides by SOURCE characters of the evaluated text (those the scored tokens cover), not by
 * decoded ones: the literal `<unk>` wikitext writes is one token covering 5 characters, an unknown
 * character one token covering 1 (tools/train/evaluate.py uses the same definition).
 */

let model: LanguageModel;
beforeAll(async () => {
  model = await loadModel("models/itera-lite-micro");
});
afterAll(async () => {
  await model.dispose();
});

it("the literal <unk> is one token of 5 source characters; an unknown character one of 1", () => {
  const tok = model.tokenizer;
  const literal = "<unk> ab";
  const unknown = "é ab";
  expect(tok.encode(literal, false)).toHaveLength(4);
  expect(tok.encode(literal, false)[0]).toBe(0);
  expect(firstTokenChars(tok, literal, 0)).toBe(5);
  expect(tok.encode(unknown, false)[0]).toBe(0);
  expect(firstTokenChars(tok, unknown, 0)).toBe(1);
  expect(firstTokenChars(tok, "ab", tok.encode("ab", false)[0]!)).toBe(1);
});

it.each([
  ["<unk> = Robert <unk> = é@ 3", 5],
  ["é = Robert <unk> = <unk> x", 1],
  ["ROMEO: <unk> <unk>", 1],
])("bits/char of %j counts its source characters less the first token's", async (text, first) => {
  const result = await evaluate(model, text, { method: "carry" });
  const ids = model.tokenizer.encode(text, false);
  const sourceChars = Array.from(text).length;
  expect(ids.length).toBeLessThan(sourceChars); // the literal <unk>s are single tokens
  expect(result.tokens).toBe(ids.length - 1);
  expect(result.chars).toBe(sourceChars - first);
  const nats = result.nats_per_token * result.tokens;
  expect(result.bits_per_char).toBeCloseTo(nats / Math.LN2 / (sourceChars - first), 12);
});
