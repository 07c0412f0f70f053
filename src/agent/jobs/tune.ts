import { join } from "node:path";
import type { Meter } from "../../power/meter.js";
import { hostCores, maxThreads, THREADS_PER_CORE } from "../../profile/threads.js";
import type { DeviceProfile } from "../../profile/schema.js";
import type { ModelRef, TuneParams, TuneResult } from "../../protocol/schemas.js";
import { measureTuning } from "../../tune/command.js";
import { TUNED_FILE } from "../../tune/tuned-file.js";
import { writeFileAtomic } from "../../util/fs.js";
import type { JobExecutor } from "./types.js";

/**
 * `tune` jobs (`itera fleet tune`): the measurement of `itera-agent tune` (src/tune: threads × decode
 * path of the model the device carries, interleaved rounds, medians, pick by the objective) with the
 * agent's own meter, progress as job statuses. With `apply` the result becomes the agent's tuned.json
 * (its state folder's, where `itera-agent run/bench/serve` and later benchmark jobs read it);
 * without it the device only reports.
 */
export function tuneExecutor(o: {
  modelDir: string;
  profile: DeviceProfile;
  models: ModelRef[];
  device: string;
  /** The agent's started meter (null: none; then only --objective speed can pick). */
  meter: Meter | null;
  stateDir: string;
  log?: (line: string) => void;
}): JobExecutor<"tune"> {
  return {
    type: "tune",
    validate(doc) {
      const p = doc.params;
      if (p.model !== undefined && !o.models.some((m) => m.id === p.model)) {
        const have = o.models.map((m) => m.id).join(", ") || "none";
        return `model '${p.model}' is not on this device (it has: ${have})`;
      }
      const tooMany = (p.threads ?? []).filter((n) => n > maxThreads());
      if (tooMany.length > 0) {
        return `threads ${tooMany.join(", ")}: more than ${maxThreads()} (${THREADS_PER_CORE} per core; this device has ${hostCores()} cores)`;
      }
      if (p.objective === "energy" && o.meter === null) {
        return "objective energy needs a power meter, and this agent runs without one (objective speed measures without)";
      }
      return undefined;
    },
    async run(doc, progress, signal, ctx) {
      const p: TuneParams = doc.params;
      const log = o.log ?? (() => {});
      const tuned = await measureTuning(
        o.modelDir,
        o.profile,
        {
          objective: p.objective,
          tolerance: p.tolerance,
          test: p.test.replace(" ", ""),
          threads: p.threads?.join(","),
          precisions: p.precisions?.join(","),
          decode: (p.decode ?? ["fused", "step"]).join(","),
          // The device measures the model it carries: nothing is quantized, no budget applies.
          quantBudget: "2%",
          rounds: p.rounds,
          minDurationS: p.min_duration_s,
          ownPrecisionOnly: true,
        },
        {
          meter: o.meter,
          log: (line) => log(`agent ${o.device}: ${line}`),
          quiet: true,
          onProgress: (done, total, note) => progress(`${done}/${total} ${note}`),
          signal,
        },
      );
      let written: string | null = null;
      if (p.apply) {
        written = join(o.stateDir, TUNED_FILE);
        await writeFileAtomic(written, `${JSON.stringify(tuned, null, 2)}\n`);
        log(`agent ${o.device}: tune job ${ctx.jobId}: wrote ${written}`);
      }
      const result: TuneResult = { device: o.device, tuned, applied: written !== null, written };
      return { status: "SUCCEEDED", results: [result] };
    },
  };
}
