import { IteraError } from "../errors.js";
import type { GridRow, Objective } from "./tuned-file.js";

/**
 * The choice from a measured grid (docs/tune.md, "How the pick is made"); medians of interleaved
 * rounds, so one disturbed round does not decide.
 * - speed: the fastest median, except that any candidate within `tolerance` of it counts as as fast
 *   (the noise between rounds is of that size): among those the fewest threads, then the lowest mJ/token.
 * - energy: the lowest median mJ/token of the grid; equal figures go to the fewer threads.
 */
export function pickRow(grid: readonly GridRow[], objective: Objective, tolerance: number): GridRow {
  if (grid.length === 0) throw new Error("pickRow: empty grid");
  const energy = (r: GridRow) => r.mJ_per_token?.median ?? Number.POSITIVE_INFINITY;
  if (objective === "energy") {
    const measured = grid.filter((r) => r.mJ_per_token !== null);
    if (measured.length === 0) {
      throw new IteraError("no candidate has a valid energy figure, so none can be picked for energy", {
        where: "--objective energy",
        fix: "use --objective speed, or a --meter that measures on this host (itera-agent meters)",
      });
    }
    return [...measured].sort((a, b) => energy(a) - energy(b) || a.threads - b.threads)[0]!;
  }
  const fastest = Math.max(...grid.map((r) => r.tokens_per_s.median));
  const asFast = grid.filter((r) => r.tokens_per_s.median >= fastest * (1 - tolerance));
  return [...asFast].sort(
    (a, b) => a.threads - b.threads || energy(a) - energy(b) || b.tokens_per_s.median - a.tokens_per_s.median,
  )[0]!;
}
