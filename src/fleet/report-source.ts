import { existsSync } from "node:fs";
import Database from "better-sqlite3";
import { IteraError } from "../errors.js";
import type { FleetBenchOutcome } from "./bench.js";
import { FleetStore } from "./store.js";

/** The tables every itera fleet database has (FleetStore creates them), the way to tell one. */
const ITERA_TABLES = ["runs", "executions", "results"];

const FIX_DB =
  "pass --db with the fleet database `itera fleet bench --db` wrote (or leave --db out for the default one)";

/**
 * Open an existing fleet database to render reports from (with `create`, a missing one is made): a missing file, a file that is not SQLite,
 * or another program's SQLite database is refused before anything is written to it (opening it as a
 * FleetStore would create or add itera's tables).
 */
export function openFleetHistory(path: string, o: { create?: boolean } = {}): FleetStore {
  // A new database for a command that also stores (the dashboard's telemetry): itera's from the start.
  if (o.create && !existsSync(path)) return new FleetStore(path);
  if (!existsSync(path)) {
    throw new IteraError("no fleet database there: no benchmark has been stored in it", {
      where: path,
      fix: `run \`itera fleet bench --fleet F --model M --db ${path}\` first, or ${FIX_DB}`,
    });
  }
  let tables: string[];
  try {
    const db = new Database(path, { readonly: true, fileMustExist: true });
    try {
      tables = (
        db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as Array<{ name: string }>
      ).map((t) => t.name);
    } finally {
      db.close();
    }
  } catch (e) {
    throw new IteraError(
      `not a fleet database: the file cannot be read as SQLite (${(e as Error).message})`,
      {
        where: path,
        fix: FIX_DB,
      },
    );
  }
  const missing = ITERA_TABLES.filter((t) => !tables.includes(t));
  if (missing.length > 0) {
    throw new IteraError(
      `not an itera fleet database: ${tables.length === 0 ? "it has no tables" : `its tables are ${tables.join(", ")}`} (missing ${missing.join(", ")}); it was left as it is`,
      { where: path, fix: FIX_DB },
    );
  }
  return new FleetStore(path);
}

/** A finished benchmark of the history (the latest without `jobId`), or one clear error naming the ids there are. */
export function storedOutcome(store: FleetStore, jobId: string | undefined): FleetBenchOutcome {
  const id = jobId ?? store.lastRunId();
  const outcome = id ? store.outcome(id) : undefined;
  if (outcome) return outcome;
  const finished = store
    .runs()
    .filter((r) => (r.type ?? "benchmark") === "benchmark" && r.finishedMs !== null)
    .map((r) => r.jobId);
  const known =
    finished.length === 0
      ? "it has none yet: run `itera fleet bench --db` with this database first"
      : `pass --job with one of: ${finished.slice(-5).reverse().join(", ")}${finished.length > 5 ? ` (all: \`itera fleet history --json\`)` : ""}`;
  throw new IteraError(
    jobId === undefined
      ? "no finished fleet benchmark in this database yet"
      : `no finished fleet benchmark '${jobId}' in this database`,
    { where: store.path, fix: known },
  );
}
