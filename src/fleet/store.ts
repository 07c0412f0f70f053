import { mkdirSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import Database from "better-sqlite3";
import { IteraError } from "../errors.js";
import type {
  BenchResult,
  JobStatus,
  JobType,
  TelemetryPayload,
  TuneResult,
  UpdateResult,
} from "../protocol/schemas.js";
import type { FleetBenchOutcome } from "./bench.js";

/** Where fleet history lives unless --db says otherwise. */
export function defaultFleetDb(): string {
  const base = process.env.XDG_DATA_HOME || join(homedir(), ".local", "share");
  return join(base, "itera", "fleet.db");
}

export interface RunRecord {
  jobId: string;
  /** The job's type (`benchmark`, `update`); runs stored before jobs had types are benchmarks. */
  type?: JobType;
  fleet: string;
  model: string;
  params: unknown;
  startedMs: number;
  deadlineMs: number;
}

export interface StoredResult {
  jobId: string;
  fleet: string;
  device: string;
  execNo: number;
  result: BenchResult;
}

export interface StoredTelemetry {
  fleet: string;
  device: string;
  bdSeq: number;
  seq: number;
  ts: number;
  m: TelemetryPayload["m"];
  /** The device's A/B variant, else `release <version>` (null: telemetry stored before variants). */
  variant: string | null;
}

/** Telemetry of one A/B variant's devices, summed up (`itera fleet history --telemetry --by-variant`). */
export interface VariantTelemetry {
  variant: string | null;
  devices: number;
  messages: number;
  cpu_pct: number | null;
  tok_s: number | null;
  mj_per_token: number | null;
  temp_c_max: number | null;
  methods: string[];
}

/**
 * Fleet history in SQLite: benchmark runs, each device's job executions and results, and telemetry.
 * Primary keys are the protocol's de-duplication keys, so a message delivered twice (QoS 1 is
 * at-least-once) is stored once: results by (jobId, device, execNo), telemetry by (device, bdSeq, seq).
 */
export class FleetStore {
  private readonly db: Database.Database;
  private readonly s;

  constructor(readonly path: string) {
    try {
      if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
      this.db = new Database(path);
    } catch (e) {
      throw new IteraError(`cannot open the fleet database: ${(e as Error).message}`, {
        where: path,
        fix: "pass a writable path with --db",
      });
    }
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS runs (
        job_id TEXT PRIMARY KEY, fleet TEXT NOT NULL, model TEXT NOT NULL, params TEXT NOT NULL,
        started_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL, finished_ms INTEGER,
        summary TEXT);
      CREATE TABLE IF NOT EXISTS executions (
        job_id TEXT NOT NULL, fleet TEXT NOT NULL, device TEXT NOT NULL, exec_no INTEGER NOT NULL,
        status TEXT NOT NULL, details TEXT, updated_ms INTEGER NOT NULL,
        PRIMARY KEY (job_id, device, exec_no));
      CREATE TABLE IF NOT EXISTS results (
        job_id TEXT NOT NULL, fleet TEXT NOT NULL, device TEXT NOT NULL, exec_no INTEGER NOT NULL,
        idx INTEGER NOT NULL, test TEXT NOT NULL, threads INTEGER NOT NULL, result TEXT NOT NULL,
        PRIMARY KEY (job_id, device, exec_no, idx));
      CREATE TABLE IF NOT EXISTS telemetry (
        fleet TEXT NOT NULL, device TEXT NOT NULL, bd_seq INTEGER NOT NULL, seq INTEGER NOT NULL,
        ts INTEGER NOT NULL, cpu_pct REAL, temp_c REAL, rss_mb REAL, tok_s REAL, mj_per_token REAL,
        method TEXT, throttled INTEGER, PRIMARY KEY (fleet, device, bd_seq, seq));
      CREATE INDEX IF NOT EXISTS telemetry_ts ON telemetry (ts);
    `);
    // Databases written before runs kept their outcome, or before jobs had types: add the columns
    // (every run stored before types is a benchmark).
    const runColumns = this.db.prepare("PRAGMA table_info(runs)").all() as Array<{ name: string }>;
    if (!runColumns.some((c) => c.name === "summary"))
      this.db.exec("ALTER TABLE runs ADD COLUMN summary TEXT");
    if (!runColumns.some((c) => c.name === "type"))
      this.db.exec("ALTER TABLE runs ADD COLUMN type TEXT NOT NULL DEFAULT 'benchmark'");
    // Telemetry stored before A/B variants has none.
    const telemetryColumns = this.db.prepare("PRAGMA table_info(telemetry)").all() as Array<{ name: string }>;
    if (!telemetryColumns.some((c) => c.name === "variant"))
      this.db.exec("ALTER TABLE telemetry ADD COLUMN variant TEXT");
    // Per-type results: benchmarks in `results`, updates here (one row per device and execution).
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS update_results (
        job_id TEXT NOT NULL, fleet TEXT NOT NULL, device TEXT NOT NULL, exec_no INTEGER NOT NULL,
        from_version TEXT, to_version TEXT NOT NULL, running TEXT NOT NULL, rolled_back INTEGER NOT NULL,
        reason TEXT, result TEXT NOT NULL, PRIMARY KEY (job_id, device, exec_no));
      CREATE TABLE IF NOT EXISTS tune_results (
        job_id TEXT NOT NULL, fleet TEXT NOT NULL, device TEXT NOT NULL, exec_no INTEGER NOT NULL,
        applied INTEGER NOT NULL, result TEXT NOT NULL, PRIMARY KEY (job_id, device, exec_no));
    `);
    this.s = {
      run: this.db.prepare(
        "INSERT OR IGNORE INTO runs (job_id, type, fleet, model, params, started_ms, deadline_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
      ),
      finish: this.db.prepare("UPDATE runs SET finished_ms = ?, summary = ? WHERE job_id = ?"),
      summary: this.db.prepare("SELECT summary, type FROM runs WHERE job_id = ?"),
      lastRun: this.db.prepare(
        "SELECT job_id FROM runs WHERE summary IS NOT NULL AND type = ? ORDER BY started_ms DESC LIMIT 1",
      ),
      exec: this.db.prepare(
        `INSERT INTO executions (job_id, fleet, device, exec_no, status, details, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(job_id, device, exec_no) DO UPDATE SET status = excluded.status, details = excluded.details,
           updated_ms = excluded.updated_ms`,
      ),
      result: this.db.prepare(
        "INSERT OR IGNORE INTO results (job_id, fleet, device, exec_no, idx, test, threads, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
      ),
      removeResults: this.db.prepare("DELETE FROM results WHERE job_id = ? AND device = ? AND exec_no = ?"),
      telemetry: this.db.prepare(
        `INSERT OR IGNORE INTO telemetry (fleet, device, bd_seq, seq, ts, cpu_pct, temp_c, rss_mb, tok_s, mj_per_token,
           method, throttled, variant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
    };
  }

  addRun(r: RunRecord): void {
    this.s.run.run(
      r.jobId,
      r.type ?? "benchmark",
      r.fleet,
      r.model,
      JSON.stringify(r.params),
      r.startedMs,
      r.deadlineMs,
    );
  }

  /** Keep a finished job's outcome of any type as JSON (an update's report); see finishRun for benchmarks. */
  finishJob(jobId: string, finishedMs: number, summary: object): void {
    this.s.finish.run(finishedMs, JSON.stringify(summary), jobId);
  }

  /** A finished job's stored outcome as JSON (any type). */
  jobSummary(jobId: string): unknown {
    const row = this.s.summary.get(jobId) as { summary: string | null } | undefined;
    return row?.summary ? (JSON.parse(row.summary) as unknown) : undefined;
  }

  /** Store an update job's result for one device; false when stored before (a duplicate). */
  addUpdateResult(jobId: string, fleet: string, device: string, execNo: number, r: UpdateResult): boolean {
    return (
      this.db
        .prepare(
          `INSERT OR IGNORE INTO update_results (job_id, fleet, device, exec_no, from_version, to_version, running,
             rolled_back, reason, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(
          jobId,
          fleet,
          device,
          execNo,
          r.from,
          r.to,
          r.running,
          r.rolled_back ? 1 : 0,
          r.reason,
          JSON.stringify(r),
        ).changes > 0
    );
  }

  removeUpdateResults(jobId: string, device: string, execNo: number): void {
    this.db
      .prepare("DELETE FROM update_results WHERE job_id = ? AND device = ? AND exec_no = ?")
      .run(jobId, device, execNo);
  }

  /** Stored update results, oldest job first. */
  updateResults(
    filter: { jobId?: string; device?: string } = {},
  ): Array<{ jobId: string; device: string; execNo: number; result: UpdateResult }> {
    const { where, args } = whereClause(filter, { jobId: "job_id", device: "device" });
    return (
      this.db
        .prepare(
          `SELECT job_id, device, exec_no, result FROM update_results ${where} ORDER BY job_id, device`,
        )
        .all(...args) as Array<{ job_id: string; device: string; exec_no: number; result: string }>
    ).map((r) => ({
      jobId: r.job_id,
      device: r.device,
      execNo: r.exec_no,
      result: JSON.parse(r.result) as UpdateResult,
    }));
  }

  /** Store a tune job's result for one device (its grid and pick); false when stored before (a duplicate). */
  addTuneResult(jobId: string, fleet: string, device: string, execNo: number, r: TuneResult): boolean {
    return (
      this.db
        .prepare(
          "INSERT OR IGNORE INTO tune_results (job_id, fleet, device, exec_no, applied, result) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .run(jobId, fleet, device, execNo, r.applied ? 1 : 0, JSON.stringify(r)).changes > 0
    );
  }

  removeTuneResults(jobId: string, device: string, execNo: number): void {
    this.db
      .prepare("DELETE FROM tune_results WHERE job_id = ? AND device = ? AND exec_no = ?")
      .run(jobId, device, execNo);
  }

  /** Stored tune results, oldest job first. */
  tuneResults(
    filter: { jobId?: string; fleet?: string; device?: string } = {},
  ): Array<{ jobId: string; device: string; execNo: number; result: TuneResult }> {
    const { where, args } = whereClause(filter, { jobId: "job_id", fleet: "fleet", device: "device" });
    return (
      this.db
        .prepare(`SELECT job_id, device, exec_no, result FROM tune_results ${where} ORDER BY job_id, device`)
        .all(...args) as Array<{ job_id: string; device: string; exec_no: number; result: string }>
    ).map((r) => ({
      jobId: r.job_id,
      device: r.device,
      execNo: r.exec_no,
      result: JSON.parse(r.result) as TuneResult,
    }));
  }

  /** Mark a run finished and keep its outcome (without the results, which have their own table). */
  finishRun(outcome: FleetBenchOutcome): void {
    const summary = { ...outcome, devices: outcome.devices.map((d) => ({ ...d, results: [] })) };
    this.s.finish.run(outcome.finishedMs, JSON.stringify(summary), outcome.jobId);
  }

  /** A finished run's outcome as `itera fleet bench` returned it, results included; undefined if unknown. */
  outcome(jobId: string): FleetBenchOutcome | undefined {
    const row = this.s.summary.get(jobId) as { summary: string | null; type: JobType } | undefined;
    // Another job type's summary (an update's report) is not a benchmark outcome.
    if (!row?.summary || row.type !== "benchmark") return undefined;
    const o = JSON.parse(row.summary) as FleetBenchOutcome;
    const results = this.results({ jobId });
    for (const d of o.devices) {
      d.results = results.filter((r) => r.device === d.device && r.execNo === d.execNo).map((r) => r.result);
    }
    return o;
  }

  /** The id of the latest finished run of a type (default: benchmarks, what `fleet report` renders). */
  lastRunId(type: JobType = "benchmark"): string | undefined {
    return (this.s.lastRun.get(type) as { job_id: string } | undefined)?.job_id;
  }

  setExecution(
    jobId: string,
    fleet: string,
    device: string,
    execNo: number,
    status: JobStatus,
    details: string | null,
  ) {
    this.s.exec.run(jobId, fleet, device, execNo, status, details, Date.now());
  }

  /** Store a job's results; false if this (jobId, device, execNo) was stored before (a duplicate). */
  addResults(jobId: string, fleet: string, device: string, execNo: number, results: BenchResult[]): boolean {
    let fresh = 0;
    this.db.transaction(() => {
      results.forEach((r, i) => {
        fresh += this.s.result.run(
          jobId,
          fleet,
          device,
          execNo,
          i,
          r.test,
          r.threads,
          JSON.stringify(r),
        ).changes;
      });
    })();
    return fresh > 0 || results.length === 0;
  }

  /** Forget a job execution's results (two conflicting answers: neither is trusted). */
  removeResults(jobId: string, device: string, execNo: number): void {
    this.s.removeResults.run(jobId, device, execNo);
  }

  /** Store one telemetry message (with its device's variant label); false if it is a duplicate. */
  addTelemetry(fleet: string, device: string, t: TelemetryPayload, variant: string | null = null): boolean {
    const m = t.m;
    return (
      this.s.telemetry.run(
        fleet,
        device,
        t.bdSeq,
        t.seq,
        t.ts,
        m.cpu_pct,
        m.temp_c,
        m.rss_mb,
        m.tok_s,
        m.mj_per_token,
        m.method,
        m.throttled === null ? null : m.throttled ? 1 : 0,
        variant,
      ).changes > 0
    );
  }

  results(filter: { jobId?: string; fleet?: string; device?: string } = {}): StoredResult[] {
    const { where, args } = whereClause(filter, { jobId: "job_id", fleet: "fleet", device: "device" });
    const rows = this.db
      .prepare(
        `SELECT job_id, fleet, device, exec_no, result FROM results ${where} ORDER BY job_id, device, idx`,
      )
      .all(...args) as Array<{
      job_id: string;
      fleet: string;
      device: string;
      exec_no: number;
      result: string;
    }>;
    return rows.map((r) => ({
      jobId: r.job_id,
      fleet: r.fleet,
      device: r.device,
      execNo: r.exec_no,
      result: JSON.parse(r.result) as BenchResult,
    }));
  }

  telemetry(filter: { fleet?: string; device?: string; sinceMs?: number } = {}): StoredTelemetry[] {
    const { where, args } = whereClause(
      { fleet: filter.fleet, device: filter.device, since: filter.sinceMs },
      { fleet: "fleet", device: "device", since: "ts" },
    );
    const rows = this.db
      .prepare(`SELECT * FROM telemetry ${where} ORDER BY fleet, device, seq`)
      .all(...args) as Array<Record<string, number | string | null>>;
    return rows.map((r) => ({
      fleet: r.fleet as string,
      device: r.device as string,
      bdSeq: r.bd_seq as number,
      seq: r.seq as number,
      ts: r.ts as number,
      m: {
        cpu_pct: r.cpu_pct as number,
        temp_c: r.temp_c as number | null,
        rss_mb: r.rss_mb as number,
        tok_s: r.tok_s as number | null,
        mj_per_token: r.mj_per_token as number | null,
        method: r.method as string | null,
        throttled: r.throttled === null ? null : r.throttled === 1,
      },
      variant: (r.variant as string | null) ?? null,
    }));
  }

  /** Telemetry per variant, side by side: means of what the devices reported (nulls left out). */
  telemetryByVariant(filter: { fleet?: string; device?: string; sinceMs?: number } = {}): VariantTelemetry[] {
    const { where, args } = whereClause(
      { fleet: filter.fleet, device: filter.device, since: filter.sinceMs },
      { fleet: "fleet", device: "device", since: "ts" },
    );
    const rows = this.db
      .prepare(
        `SELECT variant, COUNT(DISTINCT fleet || '/' || device) AS devices, COUNT(*) AS messages, AVG(cpu_pct) AS cpu_pct,
           AVG(tok_s) AS tok_s, AVG(mj_per_token) AS mj_per_token, MAX(temp_c) AS temp_c_max,
           GROUP_CONCAT(DISTINCT method) AS methods
         FROM telemetry ${where} GROUP BY variant ORDER BY variant`,
      )
      .all(...args) as Array<Omit<VariantTelemetry, "methods"> & { methods: string | null }>;
    return rows.map((r) => ({ ...r, methods: r.methods ? r.methods.split(",") : [] }));
  }

  runs(): Array<RunRecord & { finishedMs: number | null }> {
    const rows = this.db.prepare("SELECT * FROM runs ORDER BY started_ms").all() as Array<{
      job_id: string;
      type: JobType;
      fleet: string;
      model: string;
      params: string;
      started_ms: number;
      deadline_ms: number;
      finished_ms: number | null;
    }>;
    return rows.map((r) => ({
      jobId: r.job_id,
      type: r.type,
      fleet: r.fleet,
      model: r.model,
      params: JSON.parse(r.params) as unknown,
      startedMs: r.started_ms,
      deadlineMs: r.deadline_ms,
      finishedMs: r.finished_ms,
    }));
  }

  executions(
    jobId: string,
  ): Array<{ device: string; execNo: number; status: JobStatus; details: string | null }> {
    return (
      this.db
        .prepare("SELECT device, exec_no, status, details FROM executions WHERE job_id = ? ORDER BY device")
        .all(jobId) as Array<{ device: string; exec_no: number; status: JobStatus; details: string | null }>
    ).map((r) => ({ device: r.device, execNo: r.exec_no, status: r.status, details: r.details }));
  }

  close(): void {
    this.db.close();
  }
}

function whereClause(
  filter: Record<string, string | number | undefined>,
  columns: Record<string, string>,
): { where: string; args: Array<string | number> } {
  const parts: string[] = [];
  const args: Array<string | number> = [];
  for (const [k, v] of Object.entries(filter)) {
    if (v === undefined) continue;
    parts.push(k === "since" ? `${columns[k]} >= ?` : `${columns[k]} = ?`);
    args.push(v);
  }
  return { where: parts.length > 0 ? `WHERE ${parts.join(" AND ")}` : "", args };
}
