import { hostCores, maxThreads, THREADS_PER_CORE } from "../../profile/threads.js";
import { type BenchResult, benchResultSchema, type ModelRef } from "../../protocol/schemas.js";
import type { BenchmarkRunner } from "../runner.js";
import type { JobExecutor } from "./types.js";

/**
 * `benchmark` jobs: the device's models and thread limit are checked before the job is queued; the
 * runner (src/bench on the real model, or a replay) produces one DESIGN §7 result per test and
 * thread count, each checked against the wire schema before it is reported.
 */
export function benchmarkExecutor(o: {
  runner: BenchmarkRunner;
  models: ModelRef[];
  onResults?: (results: BenchResult[]) => void;
}): JobExecutor<"benchmark"> {
  return {
    type: "benchmark",
    validate(doc) {
      const p = doc.params;
      if (!o.models.some((m) => m.id === p.model)) {
        const have = o.models.map((m) => m.id).join(", ") || "none";
        return `model '${p.model}' is not on this device (it has: ${have})`;
      }
      // As `--threads` on the device's own commands: a count ONNX Runtime would spend minutes starting.
      const tooMany = (p.threads ?? []).filter((n) => n > maxThreads());
      if (tooMany.length > 0) {
        return `threads ${tooMany.join(", ")}: more than ${maxThreads()} (${THREADS_PER_CORE} per core; this device has ${hostCores()} cores)`;
      }
      return undefined;
    },
    async run(doc, progress, signal) {
      const results = await o.runner(
        doc.params,
        (done, total, note) => progress(`${done}/${total}${note ? ` ${note}` : ""}`),
        signal,
      );
      const checked = results.map((r, i) => {
        const c = benchResultSchema.safeParse(r);
        if (!c.success)
          throw new Error(`benchmark result ${i + 1} is malformed: ${c.error.issues[0]?.message}`);
        return c.data;
      });
      o.onResults?.(checked);
      return { status: "SUCCEEDED", results: checked };
    },
  };
}
