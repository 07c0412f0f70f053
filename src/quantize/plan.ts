/**
 * The precision each weight gets before any measurement: `--exclude`, `--head`, `--embedding`, and
 * for fixed modes the mode itself; a weight that a format would not shrink stays fp32 with a note.
 * In auto mode, weights left out of the returned map are the ones to search.
 * Mixture-of-experts weights have no int8-activation kernel (QMoE is weight-only): int8 means
 * their 8-bit weight-only form, as for embedding tables.
 */
import type { Precision, QuantizeOptions } from "./options.js";
import type { LayerReport } from "./report.js";
import { describeLayout } from "./moe.js";
import { type BlockParams, moeLayout, unsupportedReason } from "./rewrite.js";
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
    // a table has no activation to quantize, QMoE has no int8 kernel: int8 means 8-bit weight-only
    if (p === "int8" && s.kind !== "linear") p = "int8-wo";
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

/** The report's note for a moe site at its final precision: the QMoE layout it gets, and why. */
export function moeNote(site: Site, p: Precision, params: BlockParams): string | undefined {
  if (site.kind !== "moe" || p === "fp32" || p === "fp16") return undefined;
  const layout = moeLayout(site, p, params);
  return typeof layout === "string" ? undefined : describeLayout(layout);
}
