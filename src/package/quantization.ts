import { IteraError } from "../errors.js";
import type { DeviceProfile } from "../profile/schema.js";
import type { ModelInput } from "./model-input.js";

/**
 * `itera build --quant`: which precision the bundle's model has, and the folder that holds it.
 * - no --quant: the profile's default (`quantization`);
 * - auto: the folder's own quantization when it is already quantized, else the profile's default
 *   (int8 when the profile itself says auto);
 * - the folder already has the requested precision: it is embedded as it is (pass-through).
 * Turning an fp32 folder into int8/int4 is the quantizer's job (`itera quantize`, src/quantize);
 * until its build entry point exists, such a request is refused with the command to run first.
 */
export const buildQuantModes = ["auto", "fp32", "int8", "int4"] as const;

export interface QuantizationPlan {
  mode: string;
  /** The model folder to embed (and its card) once any quantization has run. */
  prepare(workDir: string): Promise<{ dir: string; card: Record<string, unknown> | undefined }>;
}

export async function resolveQuantization(
  model: ModelInput,
  profile: DeviceProfile,
  requested: string | undefined,
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
  throw new IteraError(`the model folder is fp32 and the bundle asks for ${mode}`, {
    where: model.dir,
    fix:
      requested === undefined
        ? `profile '${profile.name}' defaults to ${mode}: quantize first (itera quantize ${model.dir} --mode ${mode}) and build from that folder, or pass --quant fp32`
        : `quantize first (itera quantize ${model.dir} --mode ${mode}) and build from that folder, or pass --quant fp32`,
  });
}
