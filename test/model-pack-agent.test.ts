import { readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { manifestSchema, signManifest } from "../src/bundle/manifest.js";
import { type BuildResult, buildBundle } from "../src/package/build.js";
import { verifyBundle } from "../src/package/verify.js";
import { signingKeys } from "./fixtures/deploy/bundle.js";
import { deviceEnv, fixtureModel, run } from "./package-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * A real laptop-x64-4c bundle and a second one built with `--runtime` (issue #18): the same runtime,
 * byte for byte, with another model pack; the agent runs its release's model pack and refuses
 * (exit 3) a pack that is not the one its release's manifest names, or a manifest of another runtime.
 */
let work: string;
let first: BuildResult;
let second: BuildResult;
const model = fixtureModel();
const keys = signingKeys();

interface RunJson {
  ids: number[];
}

beforeAll(async () => {
  work = await tempDir("itera-model-pack-agent-");
  const key = join(work, "signing.key");
  await writeFile(key, keys.privatePem, { mode: 0o600 });
  const common = { model: model.dir, profile: "laptop-x64-4c", quant: "fp32", sign: key, quiet: true };
  first = await buildBundle({ ...common, out: join(work, "out"), version: "0.1.0" });
  second = await buildBundle({ ...common, out: join(work, "out"), version: "0.2.0", runtime: first.dir });
}, 600_000);

async function copyRelease(from: string, name: string): Promise<string> {
  const dest = join(work, name);
  await rm(dest, { recursive: true, force: true });
  await run("cp", ["-a", from, dest]);
  return dest;
}

async function refusal(exe: string, args: string[]): Promise<{ code: number; stderr: string }> {
  const { env } = await deviceEnv();
  return (await run(exe, args, { env }).then(
    () => ({ code: 0, stderr: "" }),
    (e: unknown) => e,
  )) as { code: number; stderr: string };
}

describe("a bundle's runtime and model pack (real executable)", () => {
  it("--runtime reuses the runtime byte for byte; both bundles verify with both signatures", async () => {
    expect(second.runtime).toEqual({ id: first.runtime.id, reused_from: first.dir });
    expect(second.manifest.parts!.runtime).toEqual(first.manifest.parts!.runtime);
    expect(second.manifest.files["itera-agent"]).toEqual(first.manifest.files["itera-agent"]);
    expect(second.self_check).toMatch(/^started/);
    // The same model files signed by the same key: the same pack, byte for byte (no build time in it).
    expect(second.manifest.parts!.model_pack).toEqual(first.manifest.parts!.model_pack);
    expect(first.parts.model_pack_bytes).toBe(first.manifest.parts!.model_pack.bytes);
    expect(first.parts.model_pack_bytes).toBeLessThan(first.parts.runtime_bytes / 20);
    for (const b of [first, second]) {
      expect(await verifyBundle(b.dir, keys.publicPem)).toMatchObject({
        ok: true,
        parts: { runtime: { ok: true }, model_pack: { signature: "valid", ok: true } },
      });
    }
    // The executable embeds no model file: only the profile, the native add-ons and bundle.json.
    expect(Object.keys(first.manifest.assets).filter((k) => k.startsWith("model"))).toEqual([]);
  });

  it("the agent loads its release's model pack and reports its release's manifest", async () => {
    const { env } = await deviceEnv();
    const args = ["run", "--prompt", model.prompt, "--max-tokens", String(model.greedyIds.length), "--json"];
    for (const b of [first, second]) {
      const out = JSON.parse((await run(join(b.dir, "itera-agent"), args, { env })).stdout) as RunJson;
      expect(out.ids).toEqual(model.greedyIds);
      const info = JSON.parse((await run(join(b.dir, "itera-agent"), ["info", "--json"], { env })).stdout);
      expect(info.manifest.version).toBe(b.manifest.version);
      expect(info.model_dir).toBe(join(b.dir, "model"));
    }
  });

  it("refuses (exit 3) a changed model file, another release's model pack, and a manifest of another runtime", async () => {
    // A model byte changed on the device (same size): found by the first start's hash of the pack.
    const changed = await copyRelease(first.dir, "changed");
    const config = join(changed, "model", "genai_config.json");
    const text = await readFile(config, "utf8");
    await writeFile(config, text.replace('"', "'"));
    const a = await refusal(join(changed, "itera-agent"), ["info"]);
    expect(a.code).toBe(3);
    expect(a.stderr).toMatch(/the installed model pack does not match the release: sha256 /);

    // Another validly signed model pack (another card) beside this release's manifest.
    const swapped = await copyRelease(first.dir, "swapped");
    const pack = JSON.parse(await readFile(join(swapped, "model-pack.json"), "utf8"));
    pack.model.card = { note: "another pack" };
    await writeFile(join(swapped, "model-pack.json"), JSON.stringify(signManifest(pack, keys.privatePem)));
    const b = await refusal(join(swapped, "itera-agent"), ["info"]);
    expect(b.code).toBe(3);
    expect(b.stderr).toMatch(/model-pack\.json is not the model pack the manifest names/);

    // A manifest (validly signed) that names another runtime build.
    const foreign = await copyRelease(first.dir, "foreign");
    const m = manifestSchema.parse(JSON.parse(await readFile(join(foreign, "manifest.json"), "utf8")));
    m.parts!.runtime.index_sha256 = "0".repeat(64);
    await writeFile(join(foreign, "manifest.json"), JSON.stringify(signManifest(m, keys.privatePem)));
    const c = await refusal(join(foreign, "itera-agent"), ["info"]);
    expect(c.code).toBe(3);
    expect(c.stderr).toMatch(/it names another runtime than this executable/);

    // No model pack at all: no fallback.
    const bare = await copyRelease(first.dir, "bare");
    await rm(join(bare, "model-pack.json"));
    const d = await refusal(join(bare, "itera-agent"), ["info"]);
    expect(d.code).toBe(3);
    expect(d.stderr).toMatch(/the release has no model-pack\.json beside the executable/);
  });

  it("still refuses a changed embedded asset (exit 3)", async () => {
    const copy = await copyRelease(first.dir, "tampered-asset");
    const exe = await readFile(join(copy, "itera-agent"));
    const at = exe.indexOf(Buffer.from('"name": "laptop-x64-4c"'));
    expect(at).toBeGreaterThan(0);
    exe[at + 10] = exe[at + 10]! ^ 0x01;
    await writeFile(join(copy, "itera-agent"), exe);
    const r = await refusal(join(copy, "itera-agent"), ["info"]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/embedded asset 'profile\.json' does not match the bundle/);
  });
});
