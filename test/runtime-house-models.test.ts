import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { cardText, methodFromCard } from "../src/runtime/eval-text.js";
import { evaluate, loadModel } from "../src/runtime/index.js";

/**
 * The committed house models (models/<id>/) against their PyTorch references: golden.json logits and
 * greedy tokens, and the evaluation figures of itera.json re-measured on the datasets they name.
 */

const houseModels = ["itera-lite-tiny", "transformer-tiny", "itera-lite-micro"];
// ITERA_HOUSE_MODELS points the suite at freshly exported folders before they are committed.
const modelsDir = process.env.ITERA_HOUSE_MODELS ?? "models";

interface Golden {
  prompt: string;
  input_ids: number[];
  logits: number[][];
  greedy_ids: number[];
  atol: number;
}

it("the house models are committed with golden.json and itera.json", () => {
  for (const id of houseModels) {
    expect(existsSync(join(modelsDir, id, "golden.json")), `${modelsDir}/${id}/golden.json`).toBe(true);
    expect(existsSync(join(modelsDir, id, "itera.json")), `${modelsDir}/${id}/itera.json`).toBe(true);
  }
});

describe.each(houseModels.filter((id) => existsSync(join(modelsDir, id, "golden.json"))))("%s", (id) => {
  const dir = join(modelsDir, id);
  const golden = () => JSON.parse(readFileSync(join(dir, "golden.json"), "utf8")) as Golden;

  it("reproduces PyTorch's logits for every prompt position (golden.json atol)", async () => {
    const g = golden();
    const model = await loadModel(dir, { threads: 1 });
    try {
      expect(model.tokenizer.encode(g.prompt, false)).toEqual(g.input_ids);
      const out = await model.forward([g.input_ids], model.newState(1));
      expect(out.positions).toBe(g.logits.length);
      let maxDiff = 0;
      g.logits.forEach((row, t) => {
        row.forEach((v, i) => {
          maxDiff = Math.max(maxDiff, Math.abs(out.logits[t * out.vocab + i]! - v));
        });
      });
      expect(maxDiff).toBeLessThanOrEqual(g.atol);
    } finally {
      await model.dispose();
    }
  });

  it("greedy generation equals PyTorch's greedy_ids", async () => {
    const g = golden();
    const model = await loadModel(dir, { threads: 1 });
    try {
      const out = await model.generate(g.input_ids, {
        maxTokens: g.greedy_ids.length,
        ignoreEos: true,
        temperature: 0,
      });
      expect(out.ids).toEqual(g.greedy_ids);
    } finally {
      await model.dispose();
    }
  });

  it("itera eval reproduces the card's nats/token within 1e-3 (its smallest evaluation, for time)", async () => {
    const model = await loadModel(dir);
    try {
      const records = [...(model.card?.evaluation ?? [])].sort((a, b) => a.tokens - b.tokens);
      expect(records.length).toBeGreaterThan(0);
      const record = records[0]!;
      const result = await evaluate(model, await cardText(record), methodFromCard(record));
      expect(result.tokens).toBe(record.tokens);
      expect(Math.abs(result.nats_per_token - record.nats_per_token)).toBeLessThan(1e-3);
    } finally {
      await model.dispose();
    }
  });
});
