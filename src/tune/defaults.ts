import { join } from "node:path";
import { defaultStateDir } from "../agent/state-dir.js";
import type { DeviceProfile } from "../profile/schema.js";
import { defaultThreads, stderrNote } from "../profile/threads.js";
import { pickRow } from "./pick.js";
import { type GridRow, type Objective, otherHost, readTuned, TUNED_FILE } from "./tuned-file.js";

/**
 * The default thread count from a tuned.json (docs/tune.md), for commands given no --threads: the
 * first of `files` that exists is read (an invalid one is an error: it was meant to be used); one
 * measured on another CPU is ignored with a note. The model folder being run has one precision: the
 * threads are the best of the grid's rows at that precision by the file's objective (the pick itself
 * when the precisions match); a precision the grid lacks gets the pick's threads, with a note.
 * Returns undefined when no file applies (the caller's own default then holds).
 */
export async function tunedThreads(
  files: readonly string[],
  modelDir: string,
  note: (line: string) => void,
): Promise<number | undefined> {
  for (const file of files) {
    const tuned = await readTuned(file, { optional: true });
    if (tuned === undefined) continue;
    const other = otherHost(tuned.host);
    if (other !== undefined) {
      note(`tuned: ${file} ignored: ${other} (run itera tune on this host)`);
      return undefined;
    }
    // Loaded only when a tuning applies: the ONNX codec is not for every agent start.
    const [{ locateModelFile }, { fileWeightPrecision }] = await Promise.all([
      import("../model/folder.js"),
      import("../onnx/precision.js"),
    ]);
    const precision = await fileWeightPrecision((await locateModelFile(modelDir)).onnxPath);
    const rows = tuned.grid.filter((r) => r.precision === precision);
    if (rows.length === 0) {
      note(
        `threads ${tuned.pick.threads} from ${file} (tuned for ${tuned.pick.precision}; this model is ${precision}, not in its grid)`,
      );
      return tuned.pick.threads;
    }
    const row =
      precision === tuned.pick.precision
        ? rows.find((r) => r.threads === tuned.pick.threads)!
        : rowFor(rows, tuned.objective, tuned.tolerance);
    note(`threads ${row.threads} from ${file} (tuned for ${tuned.objective}, ${precision})`);
    return row.threads;
  }
  return undefined;
}

/** Where a model folder's tuning lives (`itera tune`'s default --out; `itera build --tuned` puts it there). */
export function modelTunedFile(modelDir: string): string {
  return join(modelDir, TUNED_FILE);
}

/** The agent's tuned.json (`itera-agent tune`'s default --out): the state folder's, before the bundle's. */
export function agentTunedFiles(stateDir: string, modelDir: string): string[] {
  return [join(stateDir, TUNED_FILE), modelTunedFile(modelDir)];
}

/** The best row at one precision; for energy without a figure at that precision, the fastest. */
function rowFor(rows: GridRow[], objective: Objective, tolerance: number): GridRow {
  const energy = rows.some((r) => r.mJ_per_token !== null);
  return pickRow(rows, objective === "energy" && !energy ? "speed" : objective, tolerance);
}

/**
 * The threads of `itera-agent run`, `bench` and `serve` when no --threads is given: the tuning in the
 * agent's state folder (`itera-agent tune`), else the bundle's (`itera build --tuned`), else the
 * profile's count capped at this host's cores.
 */
export async function agentDefaultThreads(
  ctx: { modelDir: string; profile: DeviceProfile },
  stateDir: string | undefined,
): Promise<number> {
  const files = agentTunedFiles(stateDir ?? defaultStateDir(), ctx.modelDir);
  return (
    (await tunedThreads(files, ctx.modelDir, stderrNote)) ??
    defaultThreads(ctx.profile.threads, `profile '${ctx.profile.name}'`, stderrNote)
  );
}
