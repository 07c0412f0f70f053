import { join } from "node:path";
import { IteraError } from "../errors.js";
import type { OptionNames } from "../quantize/options.js";

/**
 * The model folder at each candidate precision: the folder itself for its own precision, the
 * quantizer's output (as `itera build --quant int8|int4` makes it) in `workDir` for the others. A
 * precision whose quality change is over the budget, or cannot be measured here (no held-out text),
 * is skipped, with the quantizer's reason.
 */
export interface Variant {
  precision: string;
  dir: string;
}

export interface Skipped {
  precision: string;
  reason: string;
}

/** How the quantizer's errors name `itera tune`'s options. */
const TUNE_OPTION_NAMES: OptionNames = {
  command: "itera tune",
  budget: "--quant-budget",
  mixed: "--precisions",
  int8: "--precisions int8",
  fixed: "--precisions",
  exclude: "--precisions",
  calib: "ITERA_DATASETS",
  eval: "ITERA_DATASETS",
  out: "TMPDIR",
};

export async function prepareVariants(
  modelDir: string,
  own: string,
  precisions: readonly string[],
  workDir: string,
  budget: string,
  log: (line: string) => void,
): Promise<{ variants: Variant[]; skipped: Skipped[] }> {
  const variants: Variant[] = [];
  const skipped: Skipped[] = [];
  for (const precision of precisions) {
    if (precision === own) {
      variants.push({ precision, dir: modelDir });
      continue;
    }
    if (precision !== "int8" && precision !== "int4") throw new Error(`no quantizer mode for ${precision}`);
    // Loaded only when a precision is made: the quantizer pulls in the ONNX codec and evaluation code.
    const { NotQuantized, quantizeFolder } = await import("../quantize/quantize.js");
    const { parseQuantizeOptions } = await import("../quantize/options.js");
    const out = join(workDir, `model-${precision}`);
    log(`tune: quantizing to ${precision} (budget ${budget} perplexity increase)`);
    const options = parseQuantizeOptions(
      { mode: precision, blockSize: "32", accuracyLevel: "4", budget },
      TUNE_OPTION_NAMES,
    );
    try {
      const report = await quantizeFolder(modelDir, out, options, { quiet: true });
      const change = report.quality?.perplexity_increase;
      log(
        `tune: ${precision} made${change === undefined || change === null ? " (quality not measured)" : `, perplexity +${(change * 100).toFixed(2)}%`}`,
      );
      variants.push({ precision, dir: out });
    } catch (e) {
      // Over the budget, or quality not measurable here (no held-out text): not a candidate, said so.
      if (!(e instanceof IteraError)) throw e;
      const reason =
        e instanceof NotQuantized
          ? `over the quality budget (${budget}): ${e.message}`
          : `not made: ${e.message}`;
      log(`tune: ${precision} skipped: ${reason}`);
      skipped.push({ precision, reason });
    }
  }
  if (variants.length === 0) {
    throw new IteraError("no candidate precision is within the quality budget", {
      where: modelDir,
      fix: "raise --quant-budget, or give --precisions with the folder's own precision",
    });
  }
  return { variants, skipped };
}
