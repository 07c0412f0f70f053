/**
 * The house models (models/*) quantized to int8 and int4 with the default budget (perplexity +2%
 * on held-out text): the command succeeds only within budget, and the result generates text.
 * Itera-Lite's MoE experts become QMoE (without them int4 would be 1.3x smaller, not > 5x).
 */
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { parseQuantizeOptions } from "../src/quantize/options.js";
import { quantizeFolder } from "../src/quantize/quantize.js";
import { loadModel } from "../src/runtime/index.js";
import { tempDir } from "./temp-dir.js";

const house = ["itera-lite-tiny", "transformer-tiny"].map((m) => resolve("models", m));
let work: string;
beforeAll(async () => {
  work = await tempDir("itera-qhouse-");
});

describe.each(house)("%s", (dir) => {
  for (const mode of ["int8", "int4"] as const) {
    it.skipIf(!existsSync(join(dir, "model.onnx")))(
      `${mode}: within the default budget, and generates text`,
      async () => {
        const out = join(work, `${mode}-${dir.split("/").pop()}`);
        const report = await quantizeFolder(
          dir,
          out,
          parseQuantizeOptions({ mode, blockSize: "32", accuracyLevel: "4", evalChars: "1500" }),
          { quiet: true },
        );
        expect(report.quality.within_budget).toBe(true);
        expect(report.quality.perplexity_increase).toBeLessThanOrEqual(0.02);
        expect(report.size.compression_ratio).toBeGreaterThan(mode === "int4" ? 5 : 3);
        expect(report.agreement.top1_agreement).toBeGreaterThan(0.9);
        // Itera-Lite's experts (most of its parameters) are quantized too: QMoE, weight-only
        for (const l of report.layers.filter((x) => x.kind === "moe"))
          expect(l.precision).toBe(mode === "int4" ? "int4" : "int8-wo");
        const fp32 = await loadModel(dir);
        const q = await loadModel(out);
        const a = await fp32.generate("ROMEO:", { maxTokens: 40, temperature: 0, ignoreEos: true });
        const b = await q.generate("ROMEO:", { maxTokens: 40, temperature: 0, ignoreEos: true });
        await fp32.dispose();
        await q.dispose();
        expect(b.ids).toHaveLength(40);
        // sensible: printable text in the model's alphabet; free-running greedy text may drift from the
        // float model's after a near-tie, so closeness is asserted teacher-forced (top-1 agreement above)
        expect(a.ids).toHaveLength(40);
        expect(b.text).toMatch(/^[\x20-\x7e\n]+$/);
      },
    );
  }
});
