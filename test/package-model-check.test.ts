/**
 * `itera build` refuses a model that cannot run, before it writes or quantizes anything: the model
 * folder is loaded in ONNX Runtime with its tokenizer and one token is generated first. Each broken
 * input through the real CLI (dist/cli/itera.js): a clear error, a non-zero exit, an empty output
 * folder. Also `itera build --version V` reaches build (issue #15) and `itera --version` still works.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cp, readdir, readFile, truncate, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { checkModelRuns } from "../src/package/model-check.js";
import { VERSION } from "../src/version.js";
import { fixtureModel } from "./package-helpers.js";
import { tempDir } from "./temp-dir.js";

const run = promisify(execFile);
const CLI = resolve("dist/cli/itera.js");
const model = fixtureModel();
let work: string;

beforeAll(async () => {
  work = await tempDir("itera-model-check-");
});

async function itera(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [CLI, ...args], { maxBuffer: 1 << 24 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

/** A copy of the fixture model folder, broken by `damage`. */
async function broken(name: string, damage: (dir: string) => Promise<void>): Promise<string> {
  const dir = join(work, name);
  await cp(model.dir, dir, { recursive: true });
  await damage(dir);
  return dir;
}

/** A char tokenizer.json like the fixture's, grown to `entries` vocabulary entries. */
async function growTokenizer(dir: string, entries: number): Promise<void> {
  const path = join(dir, "tokenizer.json");
  const tok = JSON.parse(await readFile(path, "utf8"));
  const vocab = tok.model.vocab as Record<string, number>;
  let id = Math.max(...Object.values(vocab)) + 1;
  for (let i = 0; id < entries; i++) {
    const piece = `tok${i}`;
    if (vocab[piece] === undefined) vocab[piece] = id++;
  }
  await writeFile(path, JSON.stringify(tok));
}

/** `itera build` on a model folder: the error, and what the output folder holds afterwards. */
async function build(dir: string, ...extra: string[]) {
  const out = join(work, `out-${Math.random().toString(36).slice(2)}`);
  // rpi4: the profile's default would quantize (long work) if the check did not come first.
  const r = await itera("build", "--model", dir, "--profile", "rpi4", "--out", out, ...extra);
  return { ...r, written: await readdir(out).catch(() => []) };
}

describe("itera build refuses a model that does not run, and writes nothing", () => {
  it("the fixture itself passes the check (so each refusal below is the damage's)", async () => {
    const c = await checkModelRuns(model.dir);
    expect(c.logits).toBe(63);
    expect(c.tokenizer_vocab).toBeLessThanOrEqual(63);
    expect(c.token).toBeGreaterThanOrEqual(0);
    expect(c.token).toBeLessThan(63);
  });

  it("a truncated model.onnx", async () => {
    const dir = await broken("truncated", async (d) => {
      const size = (await readFile(join(d, "model.onnx"))).length;
      await truncate(join(d, "model.onnx"), Math.floor(size / 2));
    });
    const r = await build(dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/error: the model cannot be packaged: ONNX Runtime cannot load the graph/);
    expect(r.stderr).toContain(join(dir, "model.onnx"));
    expect(r.written).toEqual([]);
  });

  it("random bytes as model.onnx", async () => {
    const dir = await broken("random", (d) => writeFile(join(d, "model.onnx"), randomBytes(200_000)));
    const r = await build(dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/error: the model cannot be packaged: ONNX Runtime cannot load the graph/);
    expect(r.written).toEqual([]);
  });

  it("a tokenizer.json that is not JSON, and one that is JSON but no tokenizer", async () => {
    const notJson = await broken("tok-notjson", (d) => writeFile(join(d, "tokenizer.json"), '{"model": {'));
    const a = await build(notJson);
    expect(a.code).toBe(1);
    expect(a.stderr).toMatch(/error: the model cannot be packaged: cannot read tokenizer\.json/);
    expect(a.stderr).toContain(join(notJson, "tokenizer.json"));
    expect(a.written).toEqual([]);
    const notTok = await broken("tok-wrong", (d) =>
      writeFile(join(d, "tokenizer.json"), JSON.stringify({ model: { type: "NoSuchModel" } })),
    );
    const b = await build(notTok);
    expect(b.code).toBe(1);
    expect(b.stderr).toMatch(/error: the model cannot be packaged: tokenizer\.json is not a tokenizer/);
    expect(b.written).toEqual([]);
  });

  it("a tokenizer larger than the model's logits (50,295 entries for 63 logits)", async () => {
    // The config agrees with the graph (63): the tokenizer alone does not belong.
    const big = await broken("tok-big", (d) => growTokenizer(d, 50_295));
    const a = await build(big, "--json");
    expect(a.code).toBe(1);
    expect(a.stderr).toMatch(/the model cannot be packaged: the tokenizer has 50295 tokens/);
    expect(JSON.parse(a.stdout).fix).toMatch(/the tokenizer\.json the model was trained with/);
    expect(a.written).toEqual([]);
    // The config says 50,295 too: the graph's 63 logits are what counts.
    const both = await broken("tok-big-config", async (d) => {
      await growTokenizer(d, 50_295);
      const cfgPath = join(d, "genai_config.json");
      const cfg = JSON.parse(await readFile(cfgPath, "utf8"));
      cfg.model.vocab_size = 50_295;
      await writeFile(cfgPath, JSON.stringify(cfg));
    });
    const b = await build(both);
    expect(b.code).toBe(1);
    expect(b.stderr).toMatch(/the model cannot be packaged: .*(50295|50,295).*63|63.*50295/);
    expect(b.written).toEqual([]);
  });
});

describe("--version (issue #15)", () => {
  it("itera --version prints the tool's version; itera build --version V is build's option", async () => {
    const v = await itera("--version");
    expect(v.code).toBe(0);
    expect(v.stdout.trim()).toBe(VERSION);
    // The value reaches build's own check of it (before this fix: '0.1.0', exit 0, nothing built).
    const bad = await itera("build", "--version", "no/such", "--model", model.dir, "--profile", "rpi4");
    expect(bad.code).toBe(1);
    expect(bad.stdout).not.toContain(VERSION);
    expect(bad.stderr).toMatch(/--version 'no\/such' cannot name a release folder/);
    // After build's other options too.
    const after = await itera("build", "--model", model.dir, "--profile", "rpi4", "--version", "no/such");
    expect(after.stderr).toMatch(/--version 'no\/such' cannot name a release folder/);
  });
});
