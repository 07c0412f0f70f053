/**
 * Issue #14: every shipped profile (device-profiles/*.json) builds every house model (models/*) with
 * no options. What a default build embeds depends on the profile only through its `quantization`
 * (the lowest precision), so each house model is quantized once per distinct value, with the real
 * quantizer and the default budget, and the result is checked: within the budget on held-out text,
 * never below the profile's precision, smaller than fp32, and it runs with its tokenizer. One build
 * of each kind runs end to end through the CLI (dist/cli/itera.js) with no quantization options.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { checkModelRuns } from "../src/package/model-check.js";
import { readModelInput } from "../src/package/model-input.js";
import { profileLowest, resolveQuantization } from "../src/package/quantization.js";
import { verifyBundle } from "../src/package/verify.js";
import { loadAllProfiles } from "../src/profile/load.js";
import { tempDir } from "./temp-dir.js";

const run = promisify(execFile);
const CLI = resolve("dist/cli/itera.js");
const houseModels = ["itera-lite-micro", "itera-lite-micro-distilled", "itera-lite-tiny", "transformer-tiny"]
  .map((m) => resolve("models", m))
  .filter((d) => existsSync(join(d, "model.onnx")));
let work: string;

beforeAll(async () => {
  work = await tempDir("itera-pkg-defaults-");
});

/** Precisions from smallest to largest: a weight may end at its profile's or above, never below. */
const RANK: Record<string, number> = { int4: 0, int8: 1, "int8-wo": 1, fp16: 2, fp32: 3 };

describe("every shipped profile's default precision is one a build can meet", async () => {
  const profiles = await loadAllProfiles();
  it("the models and profiles are there", () => {
    expect(houseModels).toHaveLength(4);
    expect(profiles.map((p) => p.name)).toEqual(
      expect.arrayContaining(["rpi4", "embedded-arm64-2c", "rpi-zero2w", "desktop-x64-12c"]),
    );
  });
  // One quantization per model and distinct profile precision; the profiles sharing it are named.
  const byPrecision = new Map<string, string[]>();
  for (const p of profiles)
    byPrecision.set(p.quantization, [...(byPrecision.get(p.quantization) ?? []), p.name]);

  for (const dir of houseModels) {
    for (const [precision, names] of byPrecision) {
      it(`${dir.split("/").pop()} for ${names.join(", ")} (${precision})`, { timeout: 600_000 }, async () => {
        const profile = profiles.find((p) => p.name === names[0])!;
        const plan = await resolveQuantization(await readModelInput(dir), profile, undefined);
        const made = await plan.prepare(await mkdtemp(join(work, "q-")), true);
        const d = made.decision;
        expect(d.requested).toMatch(/the profile's default/);
        const lowest = profileLowest(profile);
        if (lowest === undefined) {
          expect(d).toMatchObject({ how: "as-is", mode: "fp32" });
          expect(made.dir).toBe(dir);
          return;
        }
        // The house models all quantize within the default budget: no fallback to fp32.
        expect(d.how).toBe("quantized");
        const m = d.measured!;
        expect(m.perplexity_increase).toBeLessThanOrEqual(0.02);
        expect(m.budget_perplexity_increase).toBe(0.02);
        expect(m.onnx_bytes_after).toBeLessThan(m.onnx_bytes_before * (lowest === "int4" ? 0.3 : 0.35));
        for (const [p, n] of Object.entries(m.counts)) {
          if ((n ?? 0) > 0) expect(RANK[p]).toBeGreaterThanOrEqual(RANK[lowest]!);
        }
        expect(m.counts[lowest === "int4" ? "int4" : "int8"]).toBeGreaterThan(0);
        const card = JSON.parse(await readFile(join(made.dir, "itera.json"), "utf8"));
        expect(card.quantization.quality.within_budget).toBe(true);
        const check = await checkModelRuns(made.dir);
        expect(check.token).toBeGreaterThanOrEqual(0);
        console.log(
          `${dir.split("/").pop()} ${precision}: ${d.mode} ${JSON.stringify(m.counts)} ${(m.onnx_bytes_after / 1e6).toFixed(3)} MB (${m.compression_ratio.toFixed(2)}x), bits/char ${(m.bits_per_char_increase * 100).toFixed(2)}%, perplexity ${(m.perplexity_increase * 100).toFixed(2)}%, ${m.seconds.toFixed(1)} s`,
        );
      });
    }
  }
});

describe("itera build with no options (the issue's command)", () => {
  it("itera-lite-micro for rpi4: mixed precision within the budget, printed and in --json", {
    timeout: 600_000,
  }, async () => {
    const out = join(work, "out");
    const micro = resolve("models", "itera-lite-micro");
    const { stdout } = await run(
      process.execPath,
      [CLI, "build", "--model", micro, "--profile", "rpi4", "--out", out, "--version", "9.9.9", "--json"],
      { maxBuffer: 1 << 24 },
    );
    const r = JSON.parse(stdout);
    expect(r.bundle_id).toBe("itera-lite-micro-9.9.9-rpi4");
    expect(r.quantization.how).toBe("quantized");
    expect(r.quantization.mode).toMatch(/^int4\+/); // int4 where it fits, higher precision elsewhere
    expect(r.quantization.measured.perplexity_increase).toBeLessThanOrEqual(0.02);
    expect(r.model_check).toMatchObject({ logits: expect.any(Number), token: expect.any(Number) });
    expect((await readdir(out)).sort()).toEqual([
      "itera-lite-micro-9.9.9-rpi4",
      "itera-lite-micro-9.9.9-rpi4.tar.gz",
    ]);
    const v = await verifyBundle(r.dir);
    expect(v.ok).toBe(true);
    const manifest = JSON.parse(await readFile(join(r.dir, "manifest.json"), "utf8"));
    expect(manifest.model.quant).toBe(r.quantization.mode);
    expect(manifest.model.card.quantization.quality.within_budget).toBe(true);
  });
});
