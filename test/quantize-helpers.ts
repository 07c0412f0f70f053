/** Shared by the quantizer's tests. */
import { expect } from "vitest";
import type { BlockParams, Int8Params } from "../src/quantize/rewrite.js";

/** The quantizer's parameters the rewrite tests start from (accuracy level 0: exact float compute). */
export const BASE_PARAMS: BlockParams & Int8Params = {
  blockSize: 32,
  symmetric: false,
  int8Symmetric: true,
  accuracyLevel: 0,
  perChannel: false,
  reduceRange: false,
};

/** max |got - want| / max |want|: the error relative to the output's scale. */
export function relError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  expect(got.length).toBe(want.length);
  let maxDiff = 0;
  let maxRef = 0;
  for (let i = 0; i < want.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(got[i]! - want[i]!));
    maxRef = Math.max(maxRef, Math.abs(want[i]!));
  }
  return maxDiff / maxRef;
}
