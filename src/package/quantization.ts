import { join } from "node:path";
import { IteraError } from "../errors.js";
import { loadModelCard } from "../model/card.js";
import type { DeviceProfile } from "../profile/schema.js";
import type { ModelInput } from "./model-input.js";

/**
 * `itera build --quant`: which precision the bundle's model has, and the folder that holds it.
 * - no --quant: the profile's default (`quantization`);
 * - auto: the folder's own quantization when it is already quantized, else the profile's default
 *   (int8 when the profile itself says auto);
 * - the folder already has the requested precision: it is embedded as it is (pass-through).
 * - an fp32 folder and int8/int4 asked for: the quantizer (src/quantize, as `itera quantize --mode`)
 *   writes the quantized folder into the build's work folder, and that is embedded; it refuses a
 *   result over its quality budget (`--quant-budget`, default 2 % perplexity increase).
 */
export const buildQuantModes = ["auto", "fp32", "int8", "int4"] as const;

export interface QuantizationPlan {
  mode: string;
  /** The model folder to embed (and its card) once any quantization has run. */
  prepare(
    workDir: string,
    quiet?: boolean,
  ): Promise<{ dir: string; card: Record<string, unknown> | undefined }>;
}

export async function resolveQuantization(
  model: ModelInput,
  profile: DeviceProfile,
  requested: string | undefined,
  /** The quantizer's allowed perplexity increase ("2%" by default, "none" for no limit). */
  budget?: string,
): Promise<QuantizationPlan> {
  if (requested !== undefined && !(buildQuantModes as readonly string[]).includes(requested)) {
    throw new IteraError(`unknown --quant '${requested}'`, {
      fix: `use one of: ${buildQuantModes.join(", ")}`,
    });
  }
  const profileDefault = profile.quantization === "auto" ? "int8" : profile.quantization;
  let mode = requested ?? profile.quantization;
  if (mode === "auto") mode = model.quant !== "fp32" ? model.quant : profileDefault;
  if (mode === model.quant) {
    return { mode, prepare: async () => ({ dir: model.dir, card: model.card }) };
  }
  if (model.quant !== "fp32") {
    throw new IteraError(`the model folder is already ${model.quant}; it cannot become ${mode}`, {
      where: model.dir,
      fix: `pass --quant ${model.quant} (or auto), or build from the fp32 folder`,
    });
  }
  return {
    mode,
    async prepare(workDir, quiet = false) {
      // Loaded only when needed: the quantizer pulls in the ONNX codec and the evaluation code.
      const { quantizeFolder } = await import("../quantize/quantize.js");
      const { parseQuantizeOptions } = await import("../quantize/options.js");
      const out = join(workDir, `model-${mode}`);
      // The same settings as `itera quantize --mode <mode>` with its defaults.
      const options = parseQuantizeOptions({
        mode,
        blockSize: "32",
        accuracyLevel: "4",
        ...(budget === undefined ? {} : { budget }),
      });
      const report = await quantizeFolder(model.dir, out, options, { quiet });
      const card = await loadModelCard(out);
      return {
        dir: out,
        card: card ?? { quantization: { mode: report.mode, size: report.size, quality: report.quality } },
      };
    },
  };
}
