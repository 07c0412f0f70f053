import { createHash } from "node:crypto";
import { IteraError } from "../errors.js";

/**
 * A/B variants of a fleet (docs/fleet.md, "A/B variants"): which devices get a variant, how a
 * device's group is named in reports, and whether two rates differ by more than chance.
 */

/**
 * The devices that get variant `variant` with `--split P%`: the selected devices ranked by
 * sha256(variant, device id), the first round(P % of them) (at least one). Deterministic: a rerun
 * (a retry after a failure, say) picks the same devices, and another variant's split picks others.
 */
export function splitDevices(devices: readonly string[], variant: string, percent: number): string[] {
  const rank = (d: string) => createHash("sha256").update(`${variant}\u0000${d}`).digest("hex");
  const n = Math.min(devices.length, Math.max(1, Math.round((devices.length * percent) / 100)));
  return [...devices]
    .sort((a, b) => rank(a).localeCompare(rank(b)))
    .slice(0, n)
    .sort();
}

/** `--split P%` (or P): the share of the selected devices that gets the variant. */
export function parseSplit(text: string): number {
  const m = /^(\d+(?:\.\d+)?)%?$/.exec(text.trim());
  const p = m ? Number(m[1]) : Number.NaN;
  if (!m || !(p > 0) || p > 100) {
    throw new IteraError(`invalid --split '${text}'`, {
      where: "--split",
      fix: "give the share of the selected devices that gets the variant, above 0 and at most 100 (e.g. --split 50%)",
    });
  }
  return p;
}

/**
 * A device's group in per-variant reports: its variant's name, or, for a release installed without
 * one, `release <version>` (so the devices an A/B split left alone form the other group).
 */
export function variantLabel(variant: string | null | undefined, version: string | null | undefined): string {
  if (variant) return variant;
  return version ? `release ${version}` : "unknown";
}

/** A 95 % Wilson score interval of `k` successes in `n` trials (null for n = 0). */
export function wilson(k: number, n: number, z = 1.96): { low: number; high: number } | null {
  if (n === 0) return null;
  const p = k / n;
  const d = 1 + (z * z) / n;
  const centre = (p + (z * z) / (2 * n)) / d;
  const half = (z * Math.sqrt((p * (1 - p)) / n + (z * z) / (4 * n * n))) / d;
  return { low: Math.max(0, centre - half), high: Math.min(1, centre + half) };
}

/** Fewer rated generations than this per variant: its rate is shown, but not compared. */
export const MIN_RATINGS_TO_COMPARE = 30;

/**
 * Whether the positive rates of variants differ by more than chance: with too few ratings, or
 * overlapping 95 % Wilson intervals, they cannot be told apart (and the text says so).
 */
export function compareRates(groups: Array<{ label: string; positive: number; rated: number }>): string {
  if (groups.length < 2) return "one variant only: nothing to compare";
  const few = groups.filter((g) => g.rated < MIN_RATINGS_TO_COMPARE);
  if (few.length > 0) {
    return `too few ratings to compare (${few.map((g) => `${g.label}: ${g.rated}`).join(", ")}; at least ${MIN_RATINGS_TO_COMPARE} rated generations per variant)`;
  }
  const ranked = groups
    .map((g) => ({ ...g, ci: wilson(g.positive, g.rated)! }))
    .sort((a, b) => b.positive / b.rated - a.positive / a.rated);
  const [best, next] = [ranked[0]!, ranked[1]!];
  if (best.ci.low > next.ci.high) {
    return `${best.label} has the highest positive rate; its 95 % interval does not overlap ${next.label}'s`;
  }
  return `the 95 % intervals of ${best.label} and ${next.label} overlap: the difference may be chance`;
}
