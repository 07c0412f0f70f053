import { readFile } from "node:fs/promises";
import { IteraError } from "../errors.js";
import { type BenchmarkParams, type BenchResult, benchResultSchema } from "../protocol/schemas.js";

/** Progress of a running benchmark: tests done out of total, with a short note. */
export type BenchProgress = (done: number, total: number, note?: string) => void;

/**
 * What the agent's job runner needs from the benchmark code: run the requested tests and return one
 * DESIGN.md §7 result per (test, threads). Must stop promptly (reject) when `signal` aborts.
 */
export type BenchmarkRunner = (
  params: BenchmarkParams,
  onProgress: BenchProgress,
  signal: AbortSignal,
) => Promise<BenchResult[]>;

/**
 * A runner that replays benchmark results recorded earlier on a real device (a JSON array or JSON
 * lines of §7 results), re-stamped with this agent's device name and the time of the replay. It is
 * for load tests of the fleet protocol at a scale no single machine can run models for (hundreds of
 * simulated devices); each replayed result carries `replayed_from` so that nobody mistakes it for a
 * fresh measurement.
 */
export async function replayRunner(file: string, device: string): Promise<BenchmarkRunner> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    throw new IteraError(`cannot read recorded results: ${(e as Error).message}`, {
      where: file,
      fix: "pass a JSON or JSONL file of benchmark results (e.g. `itera fleet bench --out DIR` writes results.json)",
    });
  }
  const trimmed = text.trim();
  let values: unknown[];
  try {
    values = trimmed.startsWith("[")
      ? (JSON.parse(trimmed) as unknown[])
      : trimmed
          .split("\n")
          .filter((l) => l.trim() !== "")
          .map((l) => JSON.parse(l) as unknown);
  } catch (e) {
    throw new IteraError(`recorded results are not JSON: ${(e as Error).message}`, { where: file });
  }
  const recorded = values.map((v, i) => {
    const r = benchResultSchema.safeParse(v);
    if (!r.success) {
      throw new IteraError(
        `recorded result ${i + 1} is not a benchmark result: ${r.error.issues[0]?.message}`,
        {
          where: `${file} (${r.error.issues[0]?.path.join(".")})`,
        },
      );
    }
    return r.data;
  });
  if (recorded.length === 0) throw new IteraError("no recorded results to replay", { where: file });
  return async (params, onProgress, signal) => {
    signal.throwIfAborted();
    const out: BenchResult[] = [];
    // A job that leaves the threads to the device replays the recorded runs' own.
    const threadList = params.threads ?? [recorded[0]!.threads];
    const total = params.tests.length * threadList.length;
    for (const test of params.tests) {
      for (const threads of threadList) {
        const match = recorded.find((r) => r.test.replace(" ", "") === test.replace(" ", "")) ?? recorded[0]!;
        out.push({
          ...match,
          model: params.model,
          device,
          threads,
          test,
          timestamp: new Date().toISOString(),
          replayed_from: { device: match.device, timestamp: match.timestamp },
        });
        onProgress(out.length, total, test);
      }
    }
    return out;
  };
}
