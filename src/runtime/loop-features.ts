/**
 * What a fused decode loop (fused-decode.ts) does after the model's step, and which settings ask for
 * which loop. Kept apart from fused-decode.ts, which builds the loop with the ONNX codec (protobufjs):
 * a run that decodes step by step loads only this (docs/packaging.md, "Memory and start-up").
 */
import type { LoopSampling } from "./fused-decode.js";

/**
 * Top-p values above this decode step by step: the loop finds the cut as the first cumulative
 * share >= p, which float64 rounding (at most ~2 x vocab x 2^-53) guarantees to exist only below it.
 */
export const FUSED_TOP_P_MAX = 1 - 2 ** -30;

/** What the loop body does after the model's step. */
export interface LoopFeatures {
  /** Draw from the distribution (temperature > 0) rather than take the ArgMax. */
  sample: boolean;
  /** Apply a repetition penalty to tokens seen so far (a seen-token mask carried through the loop). */
  penalty: boolean;
  /** Cut the distribution to top-p (only when sampling). */
  topP: boolean;
}

export const GREEDY: LoopFeatures = { sample: false, penalty: false, topP: false };

export function featureKey(f: LoopFeatures): string {
  return `${f.sample ? "sample" : "greedy"}${f.penalty ? "+penalty" : ""}${f.sample && f.topP ? "+top-p" : ""}`;
}

/** The features of the loop that decodes with these settings (temperature <= 0: greedy). */
export function loopFeatures(
  s: Pick<LoopSampling, "temperature" | "topP" | "repetitionPenalty">,
): LoopFeatures {
  const sample = s.temperature > 0;
  return { sample, penalty: s.repetitionPenalty !== 1, topP: sample && s.topP < 1 };
}

/** A built loop rather than the reason there is none (what FusedDecoder.create answers). */
export function isDecoder<T extends object>(x: T | { unsupported: string } | null): x is T {
  return x !== null && !("unsupported" in x);
}
