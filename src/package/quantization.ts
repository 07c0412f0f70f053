import { join } from "node:path";
import { IteraError } from "../errors.js";
import { loadModelCard } from "../model/card.js";
import type { DeviceProfile } from "../profile/schema.js";
import type { AutoLowest, OptionNames } from "../quantize/options.js";
import type { QuantizeReport } from "../quantize/report.js";
import type { ModelInput } from "./model-input.js";

/**
 * `itera build --quant`: which precision the bundle's model has, and the folder that holds it.
 * - no --quant, or auto: the profile's default. The profile's `quantization` names its lowest
 *   precision (int4, int8; `auto` means int4); an fp32 folder gets mixed precision from it: every
 *   weight at that precision when the whole model fits the quality budget, else per weight the
 *   smallest precision that keeps it within the budget, from measured sensitivity (the quantizer's
 *   `--mode auto`), up to fp32. When no weight can be quantized within the budget the fp32 model is
 *   embedded, with the reason: the default never fails on quality. A folder that is already
 *   quantized is embedded as it is; a profile saying fp32 embeds the fp32 folder.
 * - fp32 / int8 / int4: that precision for every weight; the quantizer (src/quantize, as
 *   `itera quantize --mode`) refuses a result over the budget and then nothing is built.
 */
export const buildQuantModes = ["auto", "fp32", "int8", "int4"] as const;

/** How `itera build` spells the quantizer's options in the fixes of its errors. */
export const BUILD_OPTION_NAMES: OptionNames = {
  command: "itera build",
  budget: "--quant-budget",
  mixed: "--quant auto",
  int8: "--quant int8",
  fixed: "--quant int8 or --quant int4",
  exclude: "--exclude",
  calib: "--calib",
  eval: "--eval",
  out: "--out",
};

/** The quantizer's options `itera build` passes on (its own names: --quant-budget, --exclude, --calib, --eval). */
export interface BuildQuantOptions {
  /** Allowed perplexity increase ("2%" by default, "none" for no limit). */
  budget?: string;
  exclude?: string[];
  calib?: string;
  eval?: string;
}

/** What the build did about precision: printed, in `--json`, and in the result. */
export interface QuantizationDecision {
  /** What was asked: `--quant X`, or the profile's default. */
  requested: string;
  /** The precision(s) of the embedded model: fp32, int8, int4, or the mix ("int4+int8-wo+fp32"). */
  mode: string;
  /** as-is: the folder embedded unchanged; quantized: the quantizer's output; fp32-fallback: see note. */
  how: "as-is" | "quantized" | "fp32-fallback";
  note?: string;
  /** Measured by the quantizer on held-out text (absent when nothing was quantized). */
  measured?: {
    counts: QuantizeReport["counts"];
    onnx_bytes_before: number;
    onnx_bytes_after: number;
    compression_ratio: number;
    /** null: not measured (no held-out text or no tokenizer; `held_out` says why) */
    bits_per_char_before: number | null;
    bits_per_char_after: number | null;
    bits_per_char_increase: number | null;
    perplexity_increase: number | null;
    budget_perplexity_increase: number | null;
    held_out: string;
    seconds: number;
  };
}

export interface QuantizationPlan {
  /** Whether prepare() runs the quantizer (the long part of a build). */
  quantizes: boolean;
  /** The model folder to embed (and its card) once any quantization has run, and what was done. */
  prepare(
    workDir: string,
    quiet?: boolean,
  ): Promise<{ dir: string; card: Record<string, unknown> | undefined; decision: QuantizationDecision }>;
}

/** The lowest precision a profile's `quantization` asks for (undefined: fp32, nothing to quantize). */
export function profileLowest(profile: DeviceProfile): AutoLowest | undefined {
  const q = profile.quantization;
  if (q === "fp32") return undefined;
  return q === "auto" ? "int4" : q;
}

export async function resolveQuantization(
  model: ModelInput,
  profile: DeviceProfile,
  requested: string | undefined,
  /** The quantizer's options (`itera build --quant-budget/--exclude/--calib/--eval`). */
  q: BuildQuantOptions = {},
): Promise<QuantizationPlan> {
  if (requested !== undefined && !(buildQuantModes as readonly string[]).includes(requested)) {
    throw new IteraError(`unknown --quant '${requested}'`, {
      fix: `use one of: ${buildQuantModes.join(", ")}`,
    });
  }
  const asked = requested ?? "auto";
  const requestedText =
    asked === "auto"
      ? `the profile's default (${profile.name}: ${profile.quantization})`
      : `--quant ${asked}`;
  const given = [
    q.budget !== undefined ? "--quant-budget" : undefined,
    q.exclude && q.exclude.length > 0 ? "--exclude" : undefined,
    q.calib !== undefined ? "--calib" : undefined,
    q.eval !== undefined ? "--eval" : undefined,
  ].filter((x): x is string => x !== undefined);
  const asIs = (note?: string): QuantizationPlan => {
    if (given.length > 0) {
      throw new IteraError(
        `${given.join(", ")} only ${given.length > 1 ? "apply" : "applies"} when the build quantizes; this build embeds the ${model.quant} model folder as it is`,
        {
          where: model.dir,
          fix: `leave out ${given.join(", ")}, or build an fp32 model folder with --quant int8, --quant int4 or a profile whose quantization is int8 or int4`,
        },
      );
    }
    return {
      quantizes: false,
      prepare: async () => ({
        dir: model.dir,
        card: model.card,
        decision: { requested: requestedText, mode: model.quant, how: "as-is", ...(note ? { note } : {}) },
      }),
    };
  };

  // fp16/bf16 folders (read from the graph: src/onnx/precision.ts) quantize like fp32 ones.
  const float = FLOAT_PRECISIONS.has(model.quant);
  if (asked === "auto") {
    // The folder's own quantization wins: a quantized folder is not quantized again.
    if (!float) return asIs("the model folder is already quantized");
    const lowest = profileLowest(profile);
    if (lowest === undefined) return asIs(`the profile ${profile.name} keeps fp32`);
    return quantizerPlan(model, { mode: "auto", lowest }, requestedText, q);
  }
  if (asked === model.quant) return asIs();
  if (asked === "fp32" && float) return asIs(`the model folder is ${model.quant}: embedded as it is`);
  if (!float) {
    throw new IteraError(`the model folder is already ${model.quant}; it cannot become ${asked}`, {
      where: model.dir,
      fix: `pass --quant ${model.quant} (or auto), or build from the fp32 folder`,
    });
  }
  return quantizerPlan(model, { mode: asked as "int8" | "int4" }, requestedText, q);
}

/** Precisions the quantizer starts from: weights it reads as float. */
const FLOAT_PRECISIONS = new Set(["fp32", "fp16", "bf16"]);

function quantizerPlan(
  model: ModelInput,
  what: { mode: "auto"; lowest: AutoLowest } | { mode: "int8" | "int4" },
  requestedText: string,
  q: BuildQuantOptions,
): QuantizationPlan {
  return {
    quantizes: true,
    async prepare(workDir, quiet = false) {
      // Loaded only when needed: the quantizer pulls in the ONNX codec and the evaluation code.
      const { NotQuantized, quantizeFolder } = await import("../quantize/quantize.js");
      const { parseQuantizeOptions } = await import("../quantize/options.js");
      const out = join(workDir, `model-${what.mode}`);
      // `itera quantize`'s defaults, with the build's names for the options in any error's fix.
      const options = parseQuantizeOptions(
        {
          mode: what.mode,
          ...(what.mode === "auto" ? { lowest: what.lowest } : {}),
          blockSize: "32",
          accuracyLevel: "4",
          ...(q.budget === undefined ? {} : { budget: q.budget }),
          ...(q.exclude === undefined ? {} : { exclude: q.exclude }),
          ...(q.calib === undefined ? {} : { calib: q.calib }),
          ...(q.eval === undefined ? {} : { eval: q.eval }),
        },
        BUILD_OPTION_NAMES,
      );
      let report: QuantizeReport;
      try {
        report = await quantizeFolder(model.dir, out, options, { quiet });
      } catch (e) {
        // The profile's default falls back to fp32 rather than failing: the budget is the promise,
        // the profile's precision a preference. An explicit --quant int8/int4 is refused instead.
        if (what.mode === "auto" && e instanceof NotQuantized) {
          return {
            dir: model.dir,
            card: model.card,
            decision: {
              requested: requestedText,
              mode: "fp32",
              how: "fp32-fallback",
              note: `no weight could be quantized within the budget (${e.message}); the fp32 model is embedded`,
            },
          };
        }
        throw e;
      }
      const card = await loadModelCard(out);
      return {
        dir: out,
        card: card ?? { quantization: { mode: report.mode, size: report.size, quality: report.quality } },
        decision: {
          requested: requestedText,
          mode: mixName(report.counts),
          how: "quantized",
          ...(report.auto?.uniform === false
            ? {
                note: `mixed precision from ${what.mode === "auto" ? what.lowest : what.mode} by measured sensitivity (${report.auto.rounds} verification round${report.auto.rounds === 1 ? "" : "s"})`,
              }
            : {}),
          measured: {
            counts: report.counts,
            onnx_bytes_before: report.size.before.file_bytes,
            onnx_bytes_after: report.size.after.file_bytes,
            compression_ratio: report.size.compression_ratio,
            bits_per_char_before: report.quality?.before.bits_per_char ?? null,
            bits_per_char_after: report.quality?.after.bits_per_char ?? null,
            bits_per_char_increase: report.quality?.bits_per_char_increase ?? null,
            perplexity_increase: report.quality?.perplexity_increase ?? null,
            budget_perplexity_increase: report.settings.budget_perplexity_increase,
            held_out: report.quality
              ? report.quality.text.source
              : `not measured: ${report.quality_not_measured}`,
            seconds: report.seconds,
          },
        },
      };
    },
  };
}

/** "int4", or the precisions of a mixed model, smallest first (by bytes per weight): "int4+int8-wo+fp32". */
function mixName(counts: QuantizeReport["counts"]): string {
  const order = ["int4", "int8", "int8-wo", "fp16", "fp32"] as const;
  return order.filter((p) => (counts[p] ?? 0) > 0).join("+");
}
