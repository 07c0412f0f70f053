import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_DECODE } from "../src/bench/engine.js";
import { isBenchOutput } from "../src/bench/render.js";
import { type BenchResult, benchResultSchema, decodePathOf } from "../src/bench/result.js";
import { runtimeEngine } from "../src/bench/runtime-engine.js";
import { registerAgentBench } from "../src/cli/agent-commands/bench.js";
import { readSavedRun, registerBenchReport } from "../src/cli/commands/bench-report.js";
import { registerBench } from "../src/cli/commands/bench.js";
import { REPORT_HEADERS, reportCells, reportRow } from "../src/fleet/report.js";
import { benchResultSchema as wireResultSchema } from "../src/protocol/schemas.js";
import { inProcessCli } from "./cli-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * `itera bench --decode auto|fused|step` and `--sample` (issue #17): tg tests run through the
 * runtime's generate(), and every row says the decode path it took, in real ONNX Runtime sessions
 * on the house models (recurrent micro, KV-cache transformer) and a graph that cannot fuse.
 */
const cli = inProcessCli((program) => {
  registerBench(program);
  registerBenchReport(program);
  registerAgentBench(program.command("agent-cli"));
});

const micro = join("models", "itera-lite-micro");
const transformer = join("models", "transformer-tiny");
/** One thread, no energy, one measured repetition: the decode path is what these tests look at. */
const quick = "--profile laptop-x64-4c -t 1 --no-energy --quiet -r 1 --warmup 0 --min-duration 0".split(" ");

let dir: string;
/** A language model with no state (logits from the current token only): the decode loop has nothing to carry. */
let stateless: string;
beforeAll(async () => {
  dir = await tempDir("itera-bench-decode-");
  stateless = join(dir, "stateless");
  execFileSync(
    "/usr/bin/python3",
    [
      "-c",
      `
import json, os, sys
import numpy as np
from onnx import TensorProto as T, helper, numpy_helper, save
V = 16
out = sys.argv[1]
os.makedirs(out)
emb = numpy_helper.from_array(np.random.default_rng(1).standard_normal((V, V)).astype(np.float32), "emb")
graph = helper.make_graph(
    [helper.make_node("Gather", ["emb", "input_ids"], ["logits"])], "stateless",
    [helper.make_tensor_value_info("input_ids", T.INT64, ["batch", "sequence"])],
    [helper.make_tensor_value_info("logits", T.FLOAT, ["batch", "sequence", V])], [emb])
m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
save(m, os.path.join(out, "model.onnx"))
json.dump({"model": {"type": "stateless", "eos_token_id": 0, "vocab_size": V, "context_length": 64,
  "decoder": {"filename": "model.onnx", "inputs": {"input_ids": "input_ids"}, "outputs": {"logits": "logits"},
  "num_hidden_layers": 1, "num_attention_heads": 1, "head_size": V, "hidden_size": V}}},
  open(os.path.join(out, "genai_config.json"), "w"))
`,
      stateless,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
});

async function benchJson(model: string, ...args: string[]): Promise<BenchResult[]> {
  const r = await cli("bench", model, ...quick, "--json", ...args);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  return (JSON.parse(r.stdout) as unknown[]).map((x) => benchResultSchema.parse(x));
}

describe.skipIf(!existsSync(join(micro, "model.onnx")))("the recurrent house model (micro)", () => {
  it("--decode auto (the default) takes the fused path, as generate() does, and every row says so", async () => {
    const results = await benchJson(micro, "--tests", "pp4,tg24");
    expect(results.map((r) => [r.test, r.decode, r.sampling])).toEqual([
      ["pp 4", "fused", null],
      ["tg 24", "fused", null],
    ]);
    expect(results[1]!.tokens).toBe(24);
  });

  it("--decode step steps one call per token, and the markdown table's decode column says step", async () => {
    const r = await cli("bench", micro, ...quick, "--tests", "tg8", "--decode", "step");
    expect(r.code).toBe(0);
    const [header, , row] = r.stdout.trim().split("\n");
    const cells = (line: string) => line.split("|").map((c) => c.trim());
    const at = cells(header!).indexOf("decode");
    expect(at).toBeGreaterThan(0);
    expect(cells(row!)[at]).toBe("step");
    expect(cells(row!)[cells(header!).indexOf("test")]).toBe("tg 8");
  });

  it("--sample decodes sampled, fused, and the rows carry the seeded setting; --save and --html keep it", async () => {
    const save = join(dir, "sampled.json");
    const html = join(dir, "sampled.html");
    const results = await benchJson(micro, "--tests", "tg16", "--sample", "--save", save, "--html", html);
    expect(results[0]).toMatchObject({ decode: "fused", sampling: { temperature: 0.8, top_k: 40, seed: 1 } });
    expect((await readSavedRun(save))[0]).toMatchObject({ decode: "fused", sampling: { top_k: 40 } });
    const page = await readFile(html, "utf8");
    expect(page).toContain("fused, sampled (T 0.8, top-k 40, seed 1)");
  });

  it("a job's deadline stops a generation between tokens with the signal's reason", async () => {
    const model = await (await runtimeEngine(micro)).load(1, DEFAULT_DECODE);
    try {
      const ac = new AbortController();
      ac.abort(new Error("deadline"));
      await expect(model.generate(32, ac.signal)).rejects.toThrow("deadline");
      expect((await model.generate(4)).decode).toBe("fused");
    } finally {
      await model.close();
    }
  });

  it("itera-agent bench takes --decode too", async () => {
    const r = await cli(
      "agent-cli",
      "bench",
      "--model",
      micro,
      ...quick,
      "--tests",
      "tg4",
      "--decode",
      "step",
      "--json",
    );
    expect(r.code).toBe(0);
    expect((JSON.parse(r.stdout) as BenchResult[])[0]!.decode).toBe("step");
  });
});

describe.skipIf(!existsSync(join(transformer, "model.onnx")))(
  "the KV-cache house model (transformer-tiny)",
  () => {
    it("auto fuses (the cache grows inside the loop); step steps; both generate every token", async () => {
      const fused = await benchJson(transformer, "--tests", "tg20");
      const step = await benchJson(transformer, "--tests", "tg20", "--decode", "step");
      expect([fused[0]!.decode, step[0]!.decode]).toEqual(["fused", "step"]);
      expect([fused[0]!.tokens, step[0]!.tokens]).toEqual([20, 20]);
    });
  },
);

describe("a model that cannot fuse", () => {
  it("--decode fused is one clear error that says why and names the options that work", async () => {
    const r = await cli("bench", stateless, ...quick, "--tests", "tg4", "--decode", "fused");
    expect(r.code).not.toBe(0);
    expect(r.stdout).toBe("");
    expect(r.stderr).toMatch(/cannot decode fused: the graph carries no state/);
    expect(r.stderr).toMatch(/where: --decode fused/);
    expect(r.stderr).toMatch(/fix: +use --decode step .* or --decode auto/);
  });

  it("--decode auto steps on it, and says step", async () => {
    const results = await benchJson(stateless, "--tests", "pp4,tg4");
    expect(results.map((r) => r.decode)).toEqual(["step", "step"]);
  });

  it("an unknown --decode is refused with the choices", async () => {
    const r = await cli("bench", stateless, ...quick, "--tests", "tg4", "--decode", "loop");
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(
      /unknown decode path 'loop'\n {2}where: --decode\n {2}fix: +use one of: auto, fused, step/,
    );
  });
});

describe("results saved before the decode field", () => {
  /** A result as `itera bench -o json --save` wrote it before --decode existed. */
  const old = {
    model: "itera-lite-micro",
    quant: "fp32",
    profile: "laptop-x64-4c",
    device: "old-host",
    threads: 1,
    test: "tg 8",
    repetitions: 1,
    warmup: 0,
    tokens: 8,
    duration_s: 0.01,
    tokens_per_s: { mean: 800, stdev: 0, samples: [800] },
    ttft_ms: 1.2,
    latency_ms: { p50: 1.1, p95: 1.5 },
    energy: null,
    cpu_pct: 100,
    rss_mb: 80,
    temp_c_max: null,
    throttled: null,
    agent_version: "0.1.0",
    runtime: "onnxruntime 1.30.0",
    timestamp: "2026-11-01T10:00:00.000Z",
  };

  it("still load, read as step, and compare with new runs in bench-report", async () => {
    const oldFile = join(dir, "old.json");
    await writeFile(oldFile, JSON.stringify([old], null, 2));
    const [loaded] = await readSavedRun(oldFile);
    expect(loaded!.decode).toBeUndefined();
    expect(decodePathOf(loaded!)).toBe("step");
    const newFile = join(dir, "new.json");
    await writeFile(
      newFile,
      JSON.stringify([{ ...old, device: "new-host", decode: "fused", sampling: null }]),
    );
    const out = join(dir, "compare.html");
    const r = await cli("bench-report", oldFile, newFile, "--html", out);
    expect(r.code).toBe(0);
    const page = await readFile(out, "utf8");
    const results = page.slice(page.indexOf('id="results"'));
    expect(results).toMatch(/<td>old<\/td><td>tg 8<\/td><td>1<\/td><td>step<\/td>/);
    expect(results).toMatch(/<td>new<\/td><td>tg 8<\/td><td>1<\/td><td>fused<\/td>/);
  });

  it("the fleet report's tg decode column: a device's fused result through the wire schema, an older agent's as step", () => {
    const device = (name: string, result: object) => ({
      device: name,
      profile: "rpi5",
      quant: "fp32",
      execNo: 1,
      status: "SUCCEEDED" as const,
      details: null,
      sends: 1,
      results: [wireResultSchema.parse(result)],
      tempC: null,
      throttled: null,
    });
    const at = REPORT_HEADERS.indexOf("tg decode");
    expect(at).toBeGreaterThan(0);
    expect(reportCells(reportRow(device("new", { ...old, decode: "fused" })))[at]).toBe("fused");
    expect(reportCells(reportRow(device("old", old)))[at]).toBe("step");
    expect(reportRow(device("pp-only", { ...old, test: "pp 8" })).tg_decode).toBeNull();
  });

  it("a markdown table saved before the decode column is still ours to replace with --save", () => {
    const before =
      "| model | quant | threads | test | t/s | ttft ms | lat p50/p95 ms | mJ/tok | tok/J | energy | cpu % | rss MB |\n| --- |";
    expect(isBenchOutput(before)).toBe(true);
    expect(isBenchOutput("| model | quant | threads | notes |")).toBe(false);
  });
});
