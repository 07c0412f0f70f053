import { markdownTable } from "../util/table.js";
import { sameCandidate, type Tuned } from "./tuned-file.js";

/** The grid as a table on stdout, the pick marked, then why it was picked and how energy was measured. */
export function renderTuned(t: Tuned, written: string): string {
  const rows = t.grid.map((r) => {
    const picked = sameCandidate(r, t.pick);
    const s = r.tokens_per_s.samples;
    return [
      r.precision,
      r.threads,
      r.decode ?? "",
      r.tokens_per_s.median,
      `${Math.min(...s).toFixed(0)}–${Math.max(...s).toFixed(0)}`,
      r.mJ_per_token === null ? "n/a" : r.mJ_per_token.median,
      picked ? "◀ pick" : "",
    ];
  });
  const energyHeader = t.energy ? `mJ/token (${t.energy.method})` : "mJ/token";
  const lines = [
    `itera tune: ${t.model}, profile ${t.profile}, ${t.test}, median of ${t.rounds} interleaved rounds, on ${t.host.cpu_model} (${t.host.cores} cores)`,
    "",
    markdownTable(["precision", "threads", "decode", "tokens/s", "range", energyHeader, "pick"], rows),
    "",
    `pick: ${t.pick.precision}, ${t.pick.threads} thread${t.pick.threads === 1 ? "" : "s"}${t.pick.decode ? `, ${t.pick.decode} decode` : ""} (${why(t)})`,
  ];
  if (t.energy) lines.push(`energy: ${t.energy.method}: ${t.energy.uncertainty}`);
  else lines.push("energy: not measured");
  for (const s of t.skipped) lines.push(`skipped ${s.precision}: ${s.reason}`);
  lines.push(`written: ${written}`);
  return `${lines.join("\n")}\n`;
}

function why(t: Tuned): string {
  if (t.objective === "energy") return "objective energy: the lowest median mJ/token of the grid";
  const pct = (t.tolerance * 100).toFixed(0);
  return `objective speed: the fewest threads within ${pct}% of the fastest median tokens/s`;
}
