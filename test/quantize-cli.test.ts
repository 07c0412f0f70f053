/**
 * `itera quantize` end to end on small model folders (random-weight GPT-2 and recurrent fixtures):
 * outputs that onnxruntime loads and runs, the report, the budget, and every bad input.
 */
import { execFile, execFileSync } from "node:child_process";
import { cp, mkdir, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { IteraError } from "../src/errors.js";
import { loadModel as loadOnnx } from "../src/onnx/index.js";
import { parseQuantizeOptions } from "../src/quantize/options.js";
import { type QuantizeReport, quantizeFolder } from "../src/quantize/quantize.js";
import { OUTPUT_MARKER } from "../src/util/output.js";
import { datasetsDir } from "../src/runtime/eval-text.js";
import { loadModel } from "../src/runtime/index.js";
import { toyModelCard } from "./model-card-fixture.js";
import { tempDir } from "./temp-dir.js";

let work: string;
const CLI = resolve("dist/cli/itera.js");

beforeAll(async () => {
  work = await tempDir("itera-qcli-");
  execFileSync("/usr/bin/python3", [
    join(__dirname, "fixtures/runtime/make_models.py"),
    join(work, "models"),
  ]);
  execFileSync("/usr/bin/python3", [
    join(__dirname, "fixtures/quantize/make_graphs.py"),
    join(work, "graphs"),
  ]);
});

const model = (name: string) => join(work, "models", name);
// The fixtures have no itera.json: the held-out text (and auto's calibration, its start) is given.
const TEXT = resolve("data/tinyshakespeare.txt");
const options = (o: Record<string, unknown>) =>
  parseQuantizeOptions({
    eval: TEXT,
    blockSize: "32",
    accuracyLevel: "0",
    evalChars: "600",
    calibChars: "300",
    budget: "none",
    ...o,
  });

async function ops(dir: string): Promise<string[]> {
  return (await loadOnnx(join(dir, "model.onnx"))).graph!.node.map((n) => n.opType ?? "");
}

async function expectError(p: Promise<unknown>, message: RegExp, exitCode = 1): Promise<IteraError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(IteraError);
  expect((e as IteraError).message).toMatch(message);
  expect((e as IteraError).exitCode).toBe(exitCode);
  return e as IteraError;
}

/** A model folder around one of the fixture graphs. */
async function folderWith(graph: string, name: string): Promise<string> {
  const dir = join(work, name);
  await cp(model("gpt2-kv"), dir, { recursive: true });
  await cp(join(work, "graphs", graph), join(dir, "model.onnx"));
  return dir;
}

describe("fixed modes", () => {
  for (const [mode, fixture, expected] of [
    ["int4", "gpt2-kv", ["MatMulNBits", "GatherBlockQuantized"]],
    ["int8", "recurrent", ["DynamicQuantizeLinear", "MatMulInteger", "GatherBlockQuantized"]],
    ["int8-wo", "hybrid", ["MatMulNBits", "GatherBlockQuantized"]],
    ["fp16", "gpt2-fused", ["Cast"]],
  ] as const) {
    it(`${mode} on ${fixture}: a full model folder that onnxruntime loads and generates with`, async () => {
      const out = join(work, `out-${mode}-${fixture}`);
      const report = await quantizeFolder(model(fixture), out, options({ mode }), { quiet: true });
      // the source's files, and a card (itera.json) made for a folder that had none
      // ... and the marker that makes it recognisable as this command's output (src/util/output.ts)
      expect((await readdir(out)).sort()).toEqual(
        [...(await readdir(model(fixture))), "itera.json", OUTPUT_MARKER].sort(),
      );
      expect(await readFile(join(out, "tokenizer.json"), "utf8")).toBe(
        await readFile(join(model(fixture), "tokenizer.json"), "utf8"),
      );
      expect(await ops(out)).toEqual(expect.arrayContaining([...expected]));
      expect(report.size.after.file_bytes).toBe((await stat(join(out, "model.onnx"))).size);
      expect(report.size.compression_ratio).toBeGreaterThan(mode === "fp16" ? 1.4 : 2);
      expect(report.size.before.by_dtype.float32).toBeGreaterThan(report.size.after.by_dtype.float32 ?? 0);
      expect(report.quality.before.bits_per_char).toBeGreaterThan(0);
      expect(report.quality.after.tokens).toBe(report.quality.before.tokens);
      expect(report.agreement.positions).toBeGreaterThan(50);
      expect(report.agreement.top1_agreement).toBeGreaterThan(0.5);
      expect(report.speed.before_tokens_per_s).toBeGreaterThan(0);
      expect(report.speed.after_tokens_per_s).toBeGreaterThan(0);
      const lm = await loadModel(out);
      const g = await lm.generate("ROMEO:", { maxTokens: 12, temperature: 0, ignoreEos: true });
      await lm.dispose();
      expect(g.ids).toHaveLength(12);
    });
  }

  it("keeps the output head at a higher precision when asked, and honours --exclude", async () => {
    const out = join(work, "out-head");
    const report = await quantizeFolder(
      model("gpt2-kv"),
      out,
      options({ mode: "int4", head: "int8-wo", exclude: ["/layers.0/mlp/fc/MatMul"] }),
      { quiet: true },
    );
    const byName = new Map(report.layers.map((l) => [l.name, l]));
    expect(byName.get("/head/MatMul")!.precision).toBe("int8-wo");
    expect(byName.get("/layers.0/mlp/fc/MatMul")!.precision).toBe("fp32");
    expect(byName.get("/layers.0/mlp/out/MatMul")!.precision).toBe("int4");
    expect((await ops(out)).filter((o) => o === "MatMul")).toHaveLength(
      (await ops(model("gpt2-kv"))).filter((o) => o === "MatMul").length - (report.counts.int4 ?? 0) + 1,
    );
  });

  it("writes the report into itera.json's quantization field", async () => {
    const src = join(work, "with-card");
    await cp(model("recurrent"), src, { recursive: true });
    const card = toyModelCard([
      {
        dataset: "tinyshakespeare-val",
        file: "tinyshakespeare.txt",
        split: "last 10% of characters",
        method: "state carried across the whole text",
        tokens: 111540,
        nats_per_token: 1.9,
        bits_per_char: 2.74,
        perplexity: 6.7,
      },
    ]);
    await writeFile(join(src, "itera.json"), JSON.stringify(card));
    const out = join(work, "out-card");
    const report = await quantizeFolder(src, out, options({ mode: "int8-wo" }), { quiet: true });
    const written = JSON.parse(await readFile(join(out, "itera.json"), "utf8"));
    expect(written.id).toBe("toy");
    // the precision read from the written graph (8-bit weights); the mode asked for beside it
    expect(written.quantization.mode).toBe("int8");
    expect(written.quantization.requested_mode).toBe("int8-wo");
    expect(written.quantization.size.compression_ratio).toBeCloseTo(report.size.compression_ratio, 6);
    expect(written.quantization.quality.after.bits_per_char).toBeCloseTo(
      report.quality.after.bits_per_char,
      6,
    );
    expect(report.quality.text.method).toBe("state carried across the whole text");
    // the source card is untouched
    expect(JSON.parse(await readFile(join(src, "itera.json"), "utf8")).quantization).toEqual({
      mode: "fp32",
    });
  });
});

describe("quality budget", () => {
  it("fails and writes nothing when the result exceeds the budget", async () => {
    const out = join(work, "over-budget", "model");
    const e = await expectError(
      quantizeFolder(model("gpt2-kv"), out, options({ mode: "int4", budget: "0.01%" }), { quiet: true }),
      /exceeds the quality budget: perplexity \+[\d.]+% > \+0\.01%.*nothing was written/,
      3,
    );
    expect(e.fix).toMatch(/--mode auto/);
    expect(await stat(out).catch(() => undefined)).toBeUndefined();
    // no temp folder left behind, nor the parent folder the quantizer made for the output
    expect(await stat(join(work, "over-budget")).catch(() => undefined)).toBeUndefined();
  });

  it("auto: every weight at int4 when that fits the budget, else a per-weight search", async () => {
    // A text for the fixture without a model card: calibration from its start, held-out its end.
    const text = join(work, "auto-text.txt");
    const source = await readFile(join(datasetsDir(), "tinyshakespeare.txt"), "utf8");
    await writeFile(text, source.slice(0, 6000));
    // The whole model at int4 fits a generous budget: that is the result, with no per-weight search.
    const uniform = await quantizeFolder(
      model("gpt2-kv"),
      join(work, "out-auto-uniform"),
      options({ mode: "auto", budget: "100%", eval: text, calib: text }),
      { quiet: true },
    );
    expect(uniform.auto).toMatchObject({ rounds: 0, uniform: true });
    expect(uniform.layers.every((l) => l.precision === "int4" && l.sensitivity === undefined)).toBe(true);
    const increase = uniform.quality.perplexity_increase;
    expect(increase).toBeGreaterThan(0);
    expect(increase).toBeLessThanOrEqual(1);
    // A budget below that increase: all-int4 no longer fits, so each weight is measured and the
    // result is a verified mix within the budget, or nothing when every weight costs too much alone
    // (the micro house model's mixed result: quantize-moe.test.ts, package-defaults.test.ts).
    const out = join(work, "out-auto");
    const r = await quantizeFolder(
      model("gpt2-kv"),
      out,
      options({ mode: "auto", budget: String(increase * 0.9), eval: text, calib: text }),
      { quiet: true },
    ).catch((e: unknown) => e);
    if (r instanceof IteraError) {
      expect(r.message).toMatch(/no weight was quantized|exceeds the quality budget/);
      expect(r.fix).toMatch(/raise --budget/);
      expect(await stat(out).catch(() => undefined)).toBeUndefined();
    } else {
      const report = r as QuantizeReport;
      expect(report.auto).toMatchObject({ uniform: false });
      expect(report.auto!.rounds).toBeGreaterThanOrEqual(1);
      expect(report.quality.perplexity_increase).toBeLessThanOrEqual(increase * 0.9);
      expect(report.layers.every((l) => l.sensitivity?.int4 !== undefined)).toBe(true);
    }
  });
});

describe("bad input", () => {
  it("a missing model folder", async () => {
    await expectError(
      quantizeFolder(join(work, "nope"), join(work, "x"), options({ mode: "int8" })),
      /model folder not found/,
    );
  });

  it("a folder without genai_config.json", async () => {
    const dir = join(work, "empty");
    await mkdir(dir, { recursive: true });
    await expectError(quantizeFolder(dir, join(work, "x"), options({ mode: "int8" })), /genai_config\.json/);
  });

  it("a file that is not ONNX", async () => {
    const dir = join(work, "not-onnx");
    await cp(model("gpt2-kv"), dir, { recursive: true });
    await writeFile(join(dir, "model.onnx"), "this is not a protobuf model at all\n".repeat(20));
    await expectError(quantizeFolder(dir, join(work, "x"), options({ mode: "int8" })), /./);
  });

  it("a graph with nothing to quantize, and one already quantized", async () => {
    await expectError(
      quantizeFolder(await folderWith("plain.onnx", "plain"), join(work, "x"), options({ mode: "int4" })),
      /nothing to quantize/,
      2,
    );
    const e = await expectError(
      quantizeFolder(
        await folderWith("quantized.onnx", "quantized"),
        join(work, "x"),
        options({ mode: "int4" }),
      ),
      /already quantized \(2 quantized nodes\)/,
      2,
    );
    expect(e.where).toMatch(/model\.onnx$/);
  });

  it("quantizing a quantized output again is refused, and the output is not touched", async () => {
    const out = join(work, "out-int4-gpt2-kv");
    const before = await readFile(join(out, "model.onnx"));
    await expectError(
      quantizeFolder(out, join(work, "again"), options({ mode: "int4" })),
      /already quantized/,
      2,
    );
    expect(Buffer.compare(before, await readFile(join(out, "model.onnx")))).toBe(0);
  });

  it("a partly quantized graph: only the float weights left are quantized, the rest is reported", async () => {
    const partly = join(work, "partly");
    await quantizeFolder(model("gpt2-kv"), partly, options({ mode: "int8-wo", exclude: ["/head/MatMul"] }), {
      quiet: true,
    });
    const again = join(work, "partly-again");
    const report = await quantizeFolder(partly, again, options({ mode: "int4" }), { quiet: true });
    expect(report.layers.map((l) => [l.name, l.precision])).toEqual([["/head/MatMul", "int4"]]);
    expect(report.already_quantized_nodes).toBeGreaterThan(8);
    const lm = await loadModel(again);
    await lm.dispose();
  });

  it("a model with external data: read, and not copied stale into the output", async () => {
    const { saveModel } = await import("../src/onnx/index.js");
    const dir = join(work, "external");
    await cp(model("recurrent"), dir, { recursive: true });
    await saveModel(join(dir, "model.onnx"), await loadOnnx(join(model("recurrent"), "model.onnx")), {
      externalData: { location: "model.onnx.data", threshold: 256 },
    });
    const out = join(work, "external-out");
    const report = await quantizeFolder(dir, out, options({ mode: "int4" }), { quiet: true });
    expect(await readdir(out)).not.toContain("model.onnx.data");
    expect(report.size.before.file_bytes).toBeGreaterThan((await stat(join(dir, "model.onnx"))).size);
    const lm = await loadModel(out);
    await lm.dispose();
  });

  it("--exclude naming no quantizable node", async () => {
    await expectError(
      quantizeFolder(model("gpt2-kv"), join(work, "x"), options({ mode: "int8", exclude: ["fc9"] })),
      /--exclude names "fc9"/,
    );
  });

  it("an output folder that cannot be written", async () => {
    const file = join(work, "a-file");
    await writeFile(file, "x");
    const e = await expectError(
      quantizeFolder(model("gpt2-kv"), join(file, "out"), options({ mode: "int8" })),
      /a-file is a file, not a folder/,
    );
    expect(e.fix).toMatch(/--out/);
  });

  it("an unreadable held-out or calibration text", async () => {
    const e = await expectError(
      quantizeFolder(
        model("gpt2-kv"),
        join(work, "x"),
        options({ mode: "int8", eval: join(work, "no.txt") }),
      ),
      /cannot read the held-out text/,
    );
    expect(e.fix).toMatch(/--eval/);
    await expectError(
      quantizeFolder(
        model("gpt2-kv"),
        join(work, "x"),
        options({ mode: "auto", calib: join(work, "no.txt") }),
      ),
      /cannot read the calibration text/,
    );
    expect(await stat(join(work, "x")).catch(() => undefined)).toBeUndefined();
  });

  it("the output folder is the input folder", async () => {
    await expectError(
      quantizeFolder(model("gpt2-kv"), model("gpt2-kv"), options({ mode: "int8" })),
      /--out is the input .*never writes over its input/,
    );
  });
});

describe("the command line", () => {
  function itera(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((done) => {
      execFile(process.execPath, [CLI, ...args], (err, stdout, stderr) => {
        done({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
      });
    });
  }

  it("prints the report as JSON", async () => {
    const out = join(work, "cli-json");
    const r = await itera([
      "quantize",
      model("gpt2-kv"),
      "--out",
      out,
      "--mode",
      "int8",
      "--budget",
      "none",
      "--eval-chars",
      "500",
      "--json",
    ]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.schema).toBe("itera.quantization/v1");
    expect(report.counts.int8).toBeGreaterThan(0);
    expect((await stat(join(out, "model.onnx"))).isFile()).toBe(true);
  });

  it("refuses a bad mode and a bad block size with a clear message and a non-zero exit", async () => {
    const bad = await itera(["quantize", model("gpt2-kv"), "--out", join(work, "y"), "--mode", "int3"]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/invalid --mode "int3"/);
    const bs = await itera([
      "quantize",
      model("gpt2-kv"),
      "--out",
      join(work, "y"),
      "--mode",
      "int4",
      "--block-size",
      "24",
    ]);
    expect(bs.code).not.toBe(0);
    expect(bs.stderr).toMatch(/--block-size "24".*power of two >= 16/);
    const missing = await itera(["quantize", join(work, "nope"), "--out", join(work, "y")]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/model folder not found/);
    expect(await stat(join(work, "y")).catch(() => undefined)).toBeUndefined();
  });
});
