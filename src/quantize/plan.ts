/**
 * The precision each weight gets before any measurement: `--exclude`, `--head`, `--embedding`, and
 * for fixed modes the mode itself; a weight that a format would not shrink stays fp32 with a note.
 * In auto mode, weights left out of the returned map are the ones to search.
 */
import type { Precision, QuantizeOptions } from "./options.js";
import type { LayerReport } from "./report.js";
import { type BlockParams, unsupportedReason } from "./rewrite.js";
import type { Site } from "./sites.js";

export function presetPrecisions(
  sites: Site[],
  layers: LayerReport[],
  opts: QuantizeOptions,
  params: BlockParams,
): Map<string, Precision> {
  const fixed = new Map<string, Precision>();
  for (const s of sites) {
    const layer = layers.find((l) => l.name === s.name)!;
    let p: Precision | undefined;
    if (opts.exclude.includes(s.name)) {
      p = "fp32";
      layer.note = "excluded";
    } else if (s.head && opts.head) p = opts.head;
    else if (s.kind === "embedding" && opts.embedding) p = opts.embedding;
    else if (opts.mode !== "auto") p = opts.mode;
    // a table has no activation to quantize: int8 means its 8-bit block-wise form
    if (p === "int8" && s.kind === "embedding") p = "int8-wo";
    if (p === undefined) continue;
    const why = unsupportedReason(s, p, params);
    if (why) {
      layer.note = `kept fp32: ${why}`;
      p = "fp32";
    }
    fixed.set(s.name, p);
  }
  return fixed;
}
