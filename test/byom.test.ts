/**
 * Bring your own model (issue #16): decoder-only folders as third parties ship them — GPT-2 with
 * com.microsoft Attention and a fused cache, an Optimum-named KV cache with fp16 GroupQueryAttention
 * returning the last position's logits only (both without tokenizer.json or itera.json), and the
 * conv + KV hybrid — inspect, run with ids, eval, bench, quantize to int8 and int4 (and the result
 * runs), and one build for laptop-x64-4c whose bundle runs with ids. Real ONNX Runtime sessions.
 */
import { execFile, execFileSync } from "node:child_process";
import { cp, readFile, stat, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { loadModel as loadOnnx } from "../src/onnx/index.js";
import { weightPrecision } from "../src/onnx/precision.js";
import { parseQuantizeOptions } from "../src/quantize/options.js";
import { quantizeFolder } from "../src/quantize/quantize.js";
import { evaluateIds, type LanguageModel, loadModel } from "../src/runtime/index.js";
import { undecodableNote } from "../src/cli/generation.js";
import { fixtureModels } from "./fixtures/runtime/models.js";
import { tempDir } from "./temp-dir.js";

const CLI = resolve("dist/cli/itera.js");
let work: string;
let flops: Record<string, number>;
const dir = (name: string) => join(work, name);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}
function itera(args: string[], exe = process.execPath, pre: string[] = [CLI]): Promise<Run> {
  return new Promise((done) => {
    execFile(exe, [...pre, ...args], { maxBuffer: 1 << 26, timeout: 240_000 }, (e, stdout, stderr) => {
      done({ code: e ? Number((e as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}
const json = (r: Run) => {
  if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout);
};

/** Greedy ids by hand: forward one token at a time, argmax of the logits (no generate()). */
async function greedyByHand(model: LanguageModel, prompt: number[], n: number): Promise<number[]> {
  let r = await model.forward([prompt], model.newState(1));
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const row = r.logits.subarray((r.positions - 1) * r.vocab, r.positions * r.vocab);
    let best = 0;
    for (let j = 1; j < row.length; j++) if (row[j]! > row[best]!) best = j;
    out.push(best);
    r = await model.forward([[best]], r.state);
  }
  return out;
}

const IDS = Array.from({ length: 90 }, (_, i) => (1 + i * 37) % 60);

beforeAll(async () => {
  work = await tempDir("itera-byom-");
  execFileSync("/usr/bin/python3", [join(__dirname, "fixtures/runtime/make_byom.py"), work]);
  flops = JSON.parse(await readFile(join(work, "flops.json"), "utf8"));
  await cp(join(fixtureModels(), "hybrid"), dir("hybrid"), { recursive: true });
  // GPT-2 with the 63-entry character tokenizer: ids 63 (the model has 64 logits) cannot be decoded
  await cp(dir("gpt2-attn"), dir("gpt2-attn-tok"), { recursive: true });
  await cp(join(dir("hybrid"), "tokenizer.json"), join(dir("gpt2-attn-tok"), "tokenizer.json"));
  await writeFile(join(work, "ids.txt"), IDS.join(" "));
}, 120_000);

describe("inspect", () => {
  it("counts FLOPs through Attention and GroupQueryAttention as by hand", async () => {
    for (const name of ["gpt2-attn", "gqa-fp16"]) {
      const r = json(await itera(["inspect", dir(name), "--json"]));
      expect(r.flops.perToken).toBe(flops[name]);
    }
    const fp16 = json(await itera(["inspect", dir("gqa-fp16"), "--json"]));
    expect(fp16.precision.label).toBe("fp16");
    const hybrid = json(await itera(["inspect", dir("hybrid"), "--json"]));
    expect(hybrid.flops.perToken).toBeGreaterThan(0);
  });
});

describe("token ids without a tokenizer", () => {
  it("itera run --ids gives the greedy ids with and without a tokenizer; text needs a tokenizer", async () => {
    for (const name of ["gpt2-attn", "gqa-fp16", "hybrid"]) {
      const r = json(await itera(["run", dir(name), "--ids", "1,2,3", "-n", "6", "--json"]));
      const model = await loadModel(dir(name));
      try {
        expect(r.prompt_ids).toEqual([1, 2, 3]);
        expect(r.ids).toEqual(await greedyByHand(model, [1, 2, 3], 6));
        if (name === "hybrid") {
          expect(r.text).toBe(model.tokenizer.decode(r.ids));
          expect(r.text).not.toContain("<id:");
        } else {
          expect(r.text).toBe(r.ids.map((id: number) => `<id:${id}>`).join(""));
          expect(r.note).toMatch(/no tokenizer\.json/);
        }
      } finally {
        await model.dispose();
      }
    }
    const text = await itera(["run", dir("gpt2-attn"), "-p", "hello"]);
    expect(text.code).toBe(1);
    expect(text.stderr).toMatch(/no tokenizer\.json, so a text prompt cannot be encoded/);
    expect(text.stderr).toMatch(/fix: +give the prompt as token ids: itera run .* --ids 1,2,3/);
    const bad = await itera(["run", dir("gpt2-attn"), "--ids", "1,x"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/'x' is not a token id/);
  });

  it("ids beyond a smaller tokenizer decode as <id:N> with a warning, never as nothing", async () => {
    const model = await loadModel(dir("gpt2-attn-tok"));
    try {
      expect(model.tokenizer.vocabSize).toBe(63);
      expect(model.tokenizer.decode([45, 63, 46])).toBe(
        `${model.tokenizer.decode([45])}<id:63>${model.tokenizer.decode([46])}`,
      );
      const stream = model.tokenizer.stream();
      expect([45, 63, 46].map((id) => stream.push(id)).join("")).toBe(model.tokenizer.decode([45, 63, 46]));
      expect(undecodableNote(model.tokenizer, [45, 63], model.vocabSize)).toMatch(
        /token id\(s\) 63 are beyond the tokenizer's 63 entries \(the model has 64\)/,
      );
      expect(undecodableNote(model.tokenizer, [45, 46], model.vocabSize)).toBeNull();
    } finally {
      await model.dispose();
    }
  });

  it("itera eval --ids, also for a graph that returns the last position's logits only", async () => {
    for (const name of ["gqa-fp16", "gpt2-attn"]) {
      const model = await loadModel(dir(name));
      let byHand = 0;
      try {
        // every position from the empty state, one token per call
        let state = model.newState(1);
        for (let t = 0; t + 1 < IDS.length; t++) {
          const r = await model.forward([[IDS[t]!]], state);
          state = r.state;
          const row = Array.from(r.logits.subarray(0, r.vocab));
          const max = Math.max(...row);
          byHand += Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0)) + max - row[IDS[t + 1]!]!;
        }
        const lib = await evaluateIds(model, IDS, { method: "carry" });
        expect(lib.nats_per_token).toBeCloseTo(byHand / (IDS.length - 1), 4);
      } finally {
        await model.dispose();
      }
      const cli = json(
        await itera(["eval", dir(name), "--ids", join(work, "ids.txt"), "--method", "carry", "--json"]),
      );
      expect(cli.tokens).toBe(IDS.length - 1);
      expect(cli.nats_per_token).toBeCloseTo(byHand / (IDS.length - 1), 4);
      expect(cli.bits_per_char).toBeNull();
    }
    const text = await itera(["eval", dir("gqa-fp16"), "--text", join(work, "ids.txt")]);
    expect(text.code).toBe(1);
    expect(text.stderr).toMatch(/fix: +give the text as token ids: itera eval .* --ids FILE/);
  });
});

describe("bench", () => {
  it("runs on synthetic ids, labels the precision from the graph and says when there is no tokenizer", async () => {
    const args = ["--tests", "pp8,tg8", "-t", "1", "-r", "1", "--warmup", "0", "--no-energy"];
    const fp16 = json(await itera(["bench", dir("gqa-fp16"), ...args, "-o", "json"]));
    expect(fp16[0]).toMatchObject({ quant: "fp16", tokenizer: false });
    expect(fp16.every((r: { tokens_per_s: { mean: number } }) => r.tokens_per_s.mean > 0)).toBe(true);
    const md = await itera(["bench", dir("gpt2-attn"), ...args, "-o", "md"]);
    expect(md.code).toBe(0);
    expect(md.stdout).toMatch(/\| gpt2-attn +\| fp32 /);
    expect(md.stdout).toMatch(/no tokenizer\.json: the prompts are synthetic token ids/);
  });
});

describe("quantize without house data", () => {
  it("int8 and int4 of every layout run, the quality is said to be unmeasured, the card comes from the graph", async () => {
    for (const name of ["gpt2-attn", "gqa-fp16", "hybrid"]) {
      for (const mode of ["int8", "int4"] as const) {
        const out = join(work, "q", `${name}-${mode}`);
        // in-process (the command line's own paths are checked below and in the other tests)
        const opts = parseQuantizeOptions({ mode, blockSize: "32", accuracyLevel: "4" });
        const r = await quantizeFolder(dir(name), out, opts, { quiet: true });
        expect(r.quality).toBeNull();
        expect(r.quality_not_measured).toMatch(
          name === "hybrid" ? /give one with --eval FILE/ : /no tokenizer\.json/,
        );
        const graph = await loadOnnx(join(out, "model.onnx"));
        expect(graph.graph!.node.map((n) => n.opType)).toContain(
          mode === "int4" ? "MatMulNBits" : "DynamicQuantizeLinear",
        );
        const card = JSON.parse(await readFile(join(out, "itera.json"), "utf8"));
        expect(card.note).toMatch(/had no itera\.json/);
        expect(card.quantization.quality).toBeNull();
        expect(card.quantization.quality_not_measured).toBe(r.quality_not_measured);
        // the label is the written graph's: Attention's packed QKV stays fp32 in GPT-2 (mixed)
        expect(card.quantization.mode).toBe(weightPrecision(graph).label);
        expect(card.quantization.mode).toBe(name === "gpt2-attn" ? "mixed" : mode);
        const model = await loadModel(out);
        try {
          expect(await greedyByHand(model, [1, 2, 3], 4)).toHaveLength(4);
        } finally {
          await model.dispose();
        }
      }
    }
    const human = await itera(["quantize", dir("gqa-fp16"), "--out", join(work, "q", "h"), "--mode", "int4"]);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/quality NOT measured: the model folder has no tokenizer\.json/);
    expect(human.stdout).toMatch(/: int4; budget not checked/);
    const run = json(await itera(["run", join(work, "q", "h"), "--ids", "1,2,3", "-n", "4", "--json"]));
    expect(run.ids).toHaveLength(4);
  });

  it("--eval measures the quality and checks the budget; auto without a text is refused", async () => {
    const text = join(resolve("data"), "tinyshakespeare.txt");
    const r = json(
      await itera([
        "quantize",
        dir("hybrid"),
        "--out",
        join(work, "q", "hybrid-eval"),
        "--mode",
        "int8",
        "--eval",
        text,
        "--eval-chars",
        "400",
        "--budget",
        "none",
        "--quiet",
        "--json",
      ]),
    );
    expect(r.quality.before.bits_per_char).toBeGreaterThan(0);
    expect(r.quality_not_measured).toBeUndefined();
    const auto = await itera([
      "quantize",
      dir("gqa-fp16"),
      "--out",
      join(work, "q", "auto"),
      "--mode",
      "auto",
    ]);
    expect(auto.code).toBe(1);
    expect(auto.stderr).toMatch(
      /--mode auto chooses each weight's precision by its measured loss, which needs a text/,
    );
    expect(auto.stderr).toMatch(/fix: +choose a fixed precision with --mode/);
    const evalNoTokenizer = await itera([
      "quantize",
      dir("gpt2-attn"),
      "--out",
      join(work, "q", "x"),
      "--eval",
      text,
    ]);
    expect(evalNoTokenizer.code).toBe(1);
    expect(evalNoTokenizer.stderr).toMatch(/--eval needs the model's tokenizer\.json/);
  });

  it("fp16 models quantize, and --mode fp16 of an fp16 model says it already is (exit 4)", async () => {
    const again = await itera([
      "quantize",
      dir("gqa-fp16"),
      "--out",
      join(work, "q", "fp16"),
      "--mode",
      "fp16",
    ]);
    expect(again.code).toBe(4);
    expect(again.stderr).toMatch(/the model is already fp16 .*nothing was written/);
    expect(await stat(join(work, "q", "fp16")).catch(() => undefined)).toBeUndefined();
    // itera's own fp16 form (float16 weights behind Casts) quantizes too, and what stays float is fp16 again
    const half = join(work, "q", "hybrid-fp16");
    json(await itera(["quantize", dir("hybrid"), "--out", half, "--mode", "fp16", "--quiet", "--json"]));
    const q = json(
      await itera([
        "quantize",
        half,
        "--out",
        join(work, "q", "hybrid-fp16-int4"),
        "--mode",
        "int4",
        "--embedding",
        "fp32",
        "--quiet",
        "--json",
      ]),
    );
    expect(q.layers.filter((l: { precision: string }) => l.precision === "int4").length).toBeGreaterThan(0);
    expect(q.size.after.by_dtype.float16).toBeGreaterThan(0); // the embedding table, fp16 as in the source
    const run = json(
      await itera(["run", join(work, "q", "hybrid-fp16-int4"), "--ids", "1,2,3", "-n", "4", "--json"]),
    );
    expect(run.ids).toHaveLength(4);
  });
});

describe("build", () => {
  it("a folder without tokenizer.json builds for laptop-x64-4c (int8) and its bundle runs with ids", {
    timeout: 300_000,
  }, async () => {
    const out = join(work, "bundles");
    const b = json(
      await itera([
        "build",
        "--model",
        dir("gqa-fp16"),
        "--profile",
        "laptop-x64-4c",
        "--quant",
        "int8",
        "--out",
        out,
        "--json",
      ]),
    );
    expect(b.model_check.tokenizer_vocab).toBe(0);
    expect(b.model_check.text).toBe(`<id:${b.model_check.token}>`);
    const exe = join(out, "gqa-fp16-0.0.0-laptop-x64-4c", "itera-agent");
    const bundled = json(
      await itera(["run", "--ids", "1,2,3", "--max-tokens", "5", "--threads", "1", "--json"], exe, []),
    );
    const host = json(
      await itera(["run", join(work, "q", "gqa-fp16-int8"), "--ids", "1,2,3", "-n", "5", "--json"]),
    );
    expect(bundled.ids).toEqual(host.ids);
    const text = await itera(["run", "--prompt", "hi", "--threads", "1"], exe, []);
    expect(text.code).toBe(1);
    expect(text.stderr).toMatch(/fix: +give the prompt as token ids: itera-agent run --ids 1,2,3/);
  });
});
