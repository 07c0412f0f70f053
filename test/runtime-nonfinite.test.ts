import { cpSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { registerEval } from "../src/cli/commands/eval.js";
import { STEP_DECODE_MAX_TOKENS } from "../src/cli/generation.js";
import { registerRun } from "../src/cli/commands/run.js";
import { loadModel as loadOnnx, saveModel } from "../src/onnx/io.js";
import { DataType, tensorToTyped, typedToTensor } from "../src/onnx/tensor.js";
import type { TensorProto } from "../src/onnx/types.js";
import { pino } from "pino";
import { loadModel } from "../src/runtime/index.js";
import { createServer } from "../src/serve/index.js";
import { inProcessCli } from "./cli-helpers.js";
import { tempDirSync } from "./temp-dir.js";

/**
 * Models whose weights hold NaN (copies of the house model models/itera-lite-micro with one
 * initializer poked through src/onnx) make `itera run` and `itera eval` fail with an error naming
 * the model, never print arbitrary tokens or a NaN figure with exit 0.
 */
const MICRO = join(import.meta.dirname, "..", "models", "itera-lite-micro");
const PROMPT = "ROMEO:\nWhat say";
const itera = inProcessCli((program) => {
  registerRun(program);
  registerEval(program);
});

let work: string;
/** Every embedding row NaN: the prompt's logits are NaN. */
let allNan: string;
/** Only the row of a token greedy decoding generates third: the prompt's logits are finite. */
let rowNan: string;
let cleanIds: number[];

/** Copy the model folder and set `poke(values, dims)` on the token embedding (the Gather's table). */
async function pokedCopy(
  name: string,
  poke: (values: Float32Array, dims: number[]) => void,
): Promise<string> {
  const dir = join(work, name);
  cpSync(MICRO, dir, { recursive: true });
  const path = join(dir, "model.onnx");
  const model = await loadOnnx(path);
  const g = model.graph!;
  const byName = new Map(g.initializer.map((t) => [t.name, t]));
  const table = g.node
    .filter((n) => n.opType === "Gather")
    .map((n) => byName.get(n.input[0]!))
    .find((t): t is TensorProto => t !== undefined && t.dataType === DataType.FLOAT && t.dims.length === 2)!;
  expect(table).toBeDefined();
  const dims = table.dims.map(Number);
  const values = tensorToTyped(table) as Float32Array;
  poke(values, dims);
  g.initializer[g.initializer.indexOf(table)] = typedToTensor(table.name!, dims, values);
  await saveModel(path, model);
  return dir;
}

beforeAll(async () => {
  work = tempDirSync("itera-nan-");
  writeFileSync(join(work, "text.txt"), "First Citizen:\nBefore we proceed any further, hear me speak.\n");
  const clean = await loadModel(MICRO, { threads: 1 });
  try {
    const prompt = clean.tokenizer.encode(PROMPT);
    cleanIds = (await clean.generate(PROMPT, { maxTokens: 8, temperature: 0, ignoreEos: true })).ids;
    // The third token, fed on the fourth step, must appear nowhere before it.
    expect(prompt.concat(cleanIds.slice(0, 2))).not.toContain(cleanIds[2]);
  } finally {
    await clean.dispose();
  }
  allNan = await pokedCopy("all-nan", (v) => v.fill(Number.NaN));
  rowNan = await pokedCopy("row-nan", (v, [, width]) =>
    v.fill(Number.NaN, cleanIds[2]! * width!, (cleanIds[2]! + 1) * width!),
  );
});

describe("itera run", () => {
  it("NaN weights: exit 1 with an error naming the model, not a run of arbitrary tokens", async () => {
    for (const extra of [[], ["--temperature", "1", "--seed", "3"], ["--no-fused"]]) {
      const r = await itera("run", allNan, "-p", PROMPT, "-n", "16", ...extra);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`the model ${allNan} gives NaN logits for generated token 1`);
      expect(r.stderr).toContain(`where: ${join(allNan, "model.onnx")}`);
      expect(r.stderr).toContain("fix:");
      expect(r.stdout).toBe("");
    }
  });

  it("a NaN reached mid-generation stops it there, fused (greedy) or stepped", async () => {
    const stepped = await itera("run", rowNan, "-p", PROMPT, "-n", "16", "--no-fused");
    expect(stepped.code).toBe(1);
    expect(stepped.stderr).toContain(`the model ${rowNan} gives NaN logits for generated token 4`);
    // Past STEP_DECODE_MAX_TOKENS, so that the run decodes fused.
    const fused = await itera("run", rowNan, "-p", PROMPT, "-n", String(STEP_DECODE_MAX_TOKENS + 1));
    expect(fused.code).toBe(1);
    expect(fused.stderr).toContain(`the model ${rowNan} carries a non-finite state`);
    // The clean model generates the same prompt to the end.
    const clean = await itera("run", MICRO, "-p", PROMPT, "-n", "16", "--json");
    expect(clean.code).toBe(0);
  });
});

describe("itera eval", () => {
  it("NaN weights: exit 1 and no figure, never NaN nats/token", async () => {
    for (const json of [[], ["--json"]]) {
      const r = await itera("eval", allNan, "--text", join(work, "text.txt"), ...json);
      expect(r.code).toBe(1);
      expect(r.stdout).not.toContain("nats");
      expect(r.stderr + r.stdout).toContain(`the model ${allNan} gives NaN log-probabilities`);
    }
    const clean = await itera("eval", MICRO, "--text", join(work, "text.txt"), "--json");
    expect(clean.code).toBe(0);
    expect(Number.isFinite((JSON.parse(clean.stdout) as { nats_per_token: number }).nats_per_token)).toBe(
      true,
    );
  });
});

describe("itera-agent serve", () => {
  it("NaN weights: a 500 naming the model file, as JSON and as a stream's error event", async () => {
    const model = await loadModel(allNan, { threads: 1 });
    const server = await createServer({ model, modelDir: allNan, logger: pino({ level: "silent" }) });
    try {
      const base = await server.listen("127.0.0.1", 0);
      await server.ready;
      const post = (stream: boolean) =>
        fetch(`${base}/v1/generate`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ prompt: PROMPT, max_tokens: 8, stream }),
        });
      const json = await post(false);
      expect(json.status).toBe(500);
      const { error } = (await json.json()) as { error: { message: string; where: string } };
      expect(error.message).toContain("gives NaN logits for generated token 1");
      expect(error.where).toBe(join(allNan, "model.onnx"));
      const stream = await (await post(true)).text();
      expect(stream).toContain("event: error");
      expect(stream).toContain("gives NaN logits");
      expect(stream).not.toContain("event: token");
    } finally {
      await server.close();
      await model.dispose();
    }
  });
});
