import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { pruneCache } from "../src/agent-host/extract.js";
import { manifestSchema } from "../src/bundle/manifest.js";
import { changedParts, unchangedFiles } from "../src/bundle/model-pack.js";
import { checkModelPack } from "../src/package/model-pack.js";
import { verifyBundle } from "../src/package/verify.js";
import { signingKeys } from "./fixtures/deploy/bundle.js";
import { makePartsBundle } from "./fixtures/deploy/parts-bundle.js";
import { tempDir } from "./temp-dir.js";

/** The v2 manifest's parts, the model pack's own signature and files, and the agent's cache pruning. */
let work: string;
const keys = signingKeys();
const other = signingKeys();
let v1: string;
let v2: string;
let runtimeB: string;

beforeAll(async () => {
  work = await tempDir("itera-model-pack-");
  const o = { signWith: keys.privatePem, runtimePad: 1000 };
  v1 = await makePartsBundle(join(work, "a"), { ...o, version: "0.1.0", model: "weights one" });
  v2 = await makePartsBundle(join(work, "b"), { ...o, version: "0.2.0", model: "weights two" });
  runtimeB = await makePartsBundle(join(work, "c"), {
    ...o,
    version: "0.3.0",
    model: "weights two",
    runtimeFlavour: "b",
  });
});

const manifestOf = async (dir: string) =>
  manifestSchema.parse(JSON.parse(await readFile(join(dir, "manifest.json"), "utf8")));

describe("bundle manifest v2: runtime and model pack as parts", () => {
  it("reads v1 manifests (no parts) and refuses a v2 one without parts", async () => {
    const m = await manifestOf(v1);
    const { parts: _parts, ...rest } = m;
    expect(manifestSchema.safeParse({ ...rest, schema: "itera.bundle/v1" }).success).toBe(true);
    const noParts = manifestSchema.safeParse({ ...rest, schema: "itera.bundle/v2" });
    expect(noParts.success).toBe(false);
    expect(noParts.error?.issues[0]?.path).toEqual(["parts"]);
    expect(manifestSchema.safeParse({ ...m, schema: "itera.bundle/v1" }).success).toBe(false);
  });

  it("tells which parts changed between two releases, and which files a device already has", async () => {
    const [a, b, c] = [await manifestOf(v1), await manifestOf(v2), await manifestOf(runtimeB)];
    expect(a.parts!.runtime.id).toBe(b.parts!.runtime.id);
    expect(changedParts(b, a)).toEqual({ runtime: false, model_pack: true });
    expect(unchangedFiles(b, a)).toEqual([
      "README.txt",
      "install.sh",
      "itera-agent",
      "itera-agent.service",
      "model/genai_config.json",
    ]);
    // Same model files, another runtime: the pack (no build time in it) is the same, byte for byte.
    expect(changedParts(c, b)).toEqual({ runtime: true, model_pack: false });
    expect(changedParts(b, null)).toEqual({ runtime: true, model_pack: true });
  });

  it("verify checks both signatures and the pack's files; a tampered or foreign pack fails", async () => {
    const ok = await verifyBundle(v2, keys.publicPem);
    expect(ok).toMatchObject({
      ok: true,
      parts: {
        runtime: { ok: true },
        model_pack: { id: "fixture", quant: "fp32", signature: "valid", ok: true },
      },
    });
    expect(await checkModelPack(v2, await manifestOf(v2), keys.publicPem)).toEqual({
      ok: true,
      signature: "valid",
      problems: [],
    });
    // A pack alone (a model-only update): its own signature, by the trusted key.
    expect((await checkModelPack(v2, undefined, keys.publicPem)).ok).toBe(true);
    expect(await checkModelPack(v2, undefined, other.publicPem)).toMatchObject({
      ok: false,
      signature: "untrusted-key",
    });
    // Another release's pack beside this manifest.
    const mixed = join(work, "mixed");
    await rm(mixed, { recursive: true, force: true });
    await makePartsBundle(join(work, "m"), {
      signWith: keys.privatePem,
      version: "0.9.0",
      model: "weights one",
    });
    const pack = await checkModelPack(join(work, "m", "parts-0.9.0-laptop-x64-4c"), await manifestOf(v2));
    expect(pack.ok).toBe(false);
    expect(pack.problems.join("\n")).toMatch(/model-pack\.json is not the model pack the manifest names/);
    expect(pack.problems.join("\n")).toMatch(/model\/model\.onnx differs between the bundle manifest/);
    // A model byte changed after signing.
    await writeFile(join(v1, "model", "model.onnx"), "weights One");
    const bad = await verifyBundle(v1, keys.publicPem);
    expect(bad.ok).toBe(false);
    expect(bad.parts?.model_pack.ok).toBe(false);
    expect(bad.problems).toContain("model pack: model/model.onnx does not match the model pack's sha256");
  });
});

describe("the agent's extraction cache keeps the current and the previous runtime's folder", () => {
  it("prunes older folders it made, and never one it did not make", async () => {
    const root = join(work, "cache");
    await mkdir(root, { recursive: true });
    const key = (c: string) => c.repeat(32);
    const made = async (k: string) => {
      await mkdir(join(root, k, "native"), { recursive: true });
      await writeFile(join(root, k, ".complete"), k);
    };
    for (const c of ["a", "b", "c"]) {
      await made(key(c));
      await new Promise((r) => setTimeout(r, 20)); // c is the most recently completed
    }
    // Not the agent's: a 32-hex name without its stamp, one whose stamp names another folder, a file.
    await mkdir(join(root, key("d")));
    await mkdir(join(root, key("e")));
    await writeFile(join(root, key("e"), ".complete"), key("a"));
    await writeFile(join(root, "notes.txt"), "mine\n");

    // A new runtime f starts on a cache from before pruning: c, the newest, counts as the previous one.
    expect(pruneCache(root, key("f")).sort()).toEqual([key("a"), key("b")]);
    expect((await readdir(root)).sort()).toEqual(
      [".itera-agent-cache.json", key("c"), key("d"), key("e"), "notes.txt"].sort(),
    );
    expect(JSON.parse(await readFile(join(root, ".itera-agent-cache.json"), "utf8"))).toEqual({
      current: key("f"),
      previous: key("c"),
    });
  });

  it("keeps the previous runtime's folder when a new runtime starts, and drops the one before", async () => {
    const root = join(work, "cache2");
    await mkdir(root, { recursive: true });
    const key = (c: string) => c.repeat(32);
    const start = async (c: string) => {
      const pruned = pruneCache(root, key(c));
      await mkdir(join(root, key(c), "native"), { recursive: true });
      await writeFile(join(root, key(c), ".complete"), key(c));
      return pruned;
    };
    expect(await start("a")).toEqual([]);
    expect(await start("a")).toEqual([]); // the same runtime again: nothing is even listed
    expect(await start("b")).toEqual([]); // a is now the previous one: kept for a rollback
    expect(await start("c")).toEqual([key("a")]);
    expect((await readdir(root)).filter((n) => n.length === 32).sort()).toEqual([key("b"), key("c")]);
    // A rollback to b keeps c as the previous one.
    expect(await start("b")).toEqual([]);
    expect((await readdir(root)).filter((n) => n.length === 32).sort()).toEqual([key("b"), key("c")]);
  });
});
