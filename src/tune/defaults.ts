import { join } from "node:path";
import { defaultStateDir } from "../agent/state-dir.js";
import type { DeviceProfile } from "../profile/schema.js";
import { defaultThreads, stderrNote } from "../profile/threads.js";
import { pickRow } from "./pick.js";
import { type Choice, type GridRow, type Objective, otherHost, readTuned, TUNED_FILE } from "./tuned-file.js";

/**
 * The defaults from a tuned.json (docs/tune.md) for a command given no --threads: the first of
 * `files` that exists is read (an invalid one is an error: it was meant to be used); one measured on
 * another CPU is ignored with a note. The model folder being run has one precision: its choice is
 * the best of the grid's rows at that precision by the file's objective (the pick itself when the
 * precisions match); a precision the grid lacks gets the pick's, with a note. Returns undefined when
 * no file applies (the caller's own default then holds).
 */
export async function tunedChoice(
  files: readonly string[],
  modelDir: string,
  note: (line: string) => void,
): Promise<Choice | undefined> {
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
    const row =
      rows.length === 0
        ? tuned.pick
        : precision === tuned.pick.precision
          ? tuned.pick
          : rowFor(rows, tuned.objective, tuned.tolerance);
    const how = row.decode ? `, ${row.decode} decode` : "";
    note(
      rows.length === 0
        ? `threads ${row.threads}${how} from ${file} (tuned for ${tuned.pick.precision}; this model is ${precision}, not in its grid)`
        : `threads ${row.threads}${how} from ${file} (tuned for ${tuned.objective}, ${precision})`,
    );
    return { precision, threads: row.threads, ...(row.decode ? { decode: row.decode } : {}) };
  }
  return undefined;
}

/** The tuned thread count alone (tunedChoice's), for commands whose decode path is not chosen here. */
export async function tunedThreads(
  files: readonly string[],
  modelDir: string,
  note: (line: string) => void,
): Promise<number | undefined> {
  return (await tunedChoice(files, modelDir, note))?.threads;
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

/**
 * `itera bench` and `itera-agent bench` given no -t: the tuned threads, and the tuned decode path
 * where --decode is left at auto. Without a tuning that applies the options are returned unchanged.
 */
export async function withTunedBench<O extends { threads?: string; decode?: string }>(
  o: O,
  files: readonly string[],
  modelDir: string,
): Promise<O> {
  if (o.threads !== undefined) return o;
  const c = await tunedChoice(files, modelDir, stderrNote);
  if (c === undefined) return o;
  const decode = c.decode !== undefined && (o.decode ?? "auto") === "auto" ? { decode: c.decode } : {};
  return { ...o, threads: String(c.threads), ...decode };
}
