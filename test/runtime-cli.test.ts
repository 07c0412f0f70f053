import { cpSync, mkdtempSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerEval } from "../src/cli/commands/eval.js";
import { registerRun } from "../src/cli/commands/run.js";
import { applySplit } from "../src/runtime/eval-text.js";
import { evaluate, loadModel } from "../src/runtime/index.js";
import { fixtureModels, reference } from "./fixtures/runtime/models.js";
import { inProcessCli } from "./cli-helpers.js";
import { toyModelCard } from "./model-card-fixture.js";
import { tempDirSync } from "./temp-dir.js";

/** `itera run` and `itera eval` run in-process through commander, stdout and stderr captured. */
const itera = inProcessCli((program) => {
  registerRun(program);
  registerEval(program);
});

let fixtures: string;
let work: string;
const text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n".repeat(
  3,
);

beforeAll(() => {
  fixtures = fixtureModels();
  work = tempDirSync("itera-runtime-cli-");
  writeFileSync(join(work, "text.txt"), text);
});

afterAll(() => {
  delete process.env.ITERA_DATASETS;
});

describe("itera run", () => {
  it("--json gives the tokens, their text, timings and the stop reason", async () => {
    const ref = reference(join(fixtures, "gpt2-kv"));
    const r = await itera("run", join(fixtures, "gpt2-kv"), "--prompt", ref.prompt, "-n", "24", "--json");
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.ids).toEqual(ref.first.greedy_ids);
    expect(report.stop_reason).toBe("max_tokens");
    expect(report.tokens.map((t: { text: string }) => t.text).join("")).toBe(report.text);
    expect(report.timings.per_token_ms).toHaveLength(23);
    expect(report.timings.ttft_ms).toBeGreaterThan(0);
  });

  it("streams the text to stdout", async () => {
    const ref = reference(join(fixtures, "recurrent"));
    const r = await itera(
      "run",
      join(fixtures, "recurrent"),
      "--prompt",
      ref.prompt,
      "-n",
      "10",
      "--threads",
      "1",
    );
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${r.stdout.slice(0, -1)}\n`);
    expect(r.stdout.length).toBeGreaterThanOrEqual(10);
    expect(r.stderr).toMatch(/10 tokens, stop: max_tokens/);
  });

  it("sampling options and a seed reproduce the same text", async () => {
    const args = ["run", join(fixtures, "hybrid"), "-p", "To be", "-n", "16", "--temperature", "0.9"];
    const more = ["--top-k", "20", "--top-p", "0.95", "--repetition-penalty", "1.1", "--seed", "3", "--json"];
    const a = JSON.parse((await itera(...args, ...more)).stdout);
    const b = JSON.parse((await itera(...args, ...more)).stdout);
    expect(b.ids).toEqual(a.ids);
    expect(a.seed).toBe(3);
  });

  it("refuses a bad option value, naming the option", async () => {
    const r = await itera("run", join(fixtures, "gpt2-kv"), "-p", "hi", "--top-p", "2");
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/invalid option --top-p/);
  });

  it("a missing model folder is one clear error", async () => {
    const r = await itera("run", join(work, "nothing"), "-p", "hi");
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: model folder not found/);
    expect(r.stderr).toMatch(/fix:/);
  });
});

describe("itera eval", () => {
  it("--text FILE --json: nats/token, bits/char, perplexity", async () => {
    const r = await itera("eval", join(fixtures, "recurrent"), "--text", join(work, "text.txt"), "--json");
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.method).toBe("carry");
    expect(report.tokens).toBe(text.length - 1);
    expect(report.perplexity).toBeCloseTo(Math.exp(report.nats_per_token), 6);
  });

  it("reproduces the figure of the model card from the dataset it names", async () => {
    const datasets = mkdtempSync(join(work, "datasets-"));
    writeFileSync(join(datasets, "corpus.txt"), text);
    const model = await loadModel(join(fixtures, "recurrent"));
    const expected = await evaluate(model, applySplit(text, "last 40% of characters"), { method: "carry" });
    await model.dispose();
    const dir = mkdtempSync(join(work, "carded-"));
    cpSync(join(fixtures, "recurrent"), dir, { recursive: true });
    const card = toyModelCard([
      {
        dataset: "corpus-val",
        file: "corpus.txt",
        split: "last 40% of characters",
        method: "state carried across the whole text",
        tokens: expected.tokens,
        nats_per_token: expected.nats_per_token,
        bits_per_char: expected.bits_per_char,
        perplexity: expected.perplexity,
      },
    ]);
    writeFileSync(join(dir, "itera.json"), JSON.stringify(card));
    process.env.ITERA_DATASETS = datasets;
    const r = await itera("eval", dir, "--json");
    expect(r.code).toBe(0);
    const [evaluation] = JSON.parse(r.stdout).evaluations;
    expect(evaluation.tokens).toBe(expected.tokens);
    expect(Math.abs(evaluation.delta_nats_per_token)).toBeLessThan(1e-9);
    expect((await itera("eval", dir, "--tolerance", "1e-6", "--json")).code).toBe(0);

    card.evaluation[0]!.nats_per_token += 0.01;
    writeFileSync(join(dir, "itera.json"), JSON.stringify(card));
    const off = await itera("eval", dir, "--tolerance", "1e-3");
    expect(off.code).toBe(1);
    expect(off.stderr).toMatch(/corpus-val: nats\/token differs from itera\.json by more than 0\.001/);

    process.env.ITERA_DATASETS = join(work, "elsewhere");
    const missing = await itera("eval", dir);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/cannot read the evaluation dataset corpus\.txt/);
  });

  it("a missing text file, or nothing to evaluate, is one clear error", async () => {
    let r = await itera("eval", join(fixtures, "recurrent"), "--text", join(work, "missing.txt"));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot read the text file \(ENOENT\)/);
    r = await itera("eval", join(fixtures, "recurrent"));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/nothing to evaluate: no --text and no evaluation in itera\.json/);
    r = await itera(
      "eval",
      join(fixtures, "recurrent"),
      "--text",
      join(work, "text.txt"),
      "--method",
      "beam",
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/invalid option --method/);
  });

  it("applySplit follows Python's int(len(text) * fraction)", () => {
    const t = "abcdefghij".repeat(3) + "x";
    expect(applySplit(t, "last 10% of characters")).toBe(t.slice(Math.floor(t.length * 0.9)));
    expect(applySplit(t, "first 90% of characters")).toBe(t.slice(0, Math.floor(t.length * 0.9)));
    expect(applySplit(t, "all")).toBe(t);
    expect(() => applySplit(t, "the good bits")).toThrow(/cannot read the split/);
  });
});
