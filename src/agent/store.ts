import { existsSync, mkdirSync, renameSync, statSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { IteraError } from "../errors.js";
import type { FeedbackMessage } from "../protocol/feedback.js";
import type { JobRequest, JobResultPayload, JobStatus, ModelRef } from "../protocol/schemas.js";

export interface OutboxRow {
  id: number;
  topic: string;
  payload: string;
  qos: 0 | 1;
}

export interface JobRecord {
  jobId: string;
  execNo: number;
  status: JobStatus;
  details: string | null;
  request: JobRequest | null;
  result: JobResultPayload | null;
}

/** The agent found its `agent.db` unreadable at start-up, kept it aside and began a fresh one. */
export interface StoreReset {
  /** When (Unix epoch ms). */
  ts: number;
  /** What SQLite said about the old file. */
  reason: string;
  /** Where the old file is kept for inspection (`agent.db.corrupt-<time>`, with its -wal/-shm). */
  kept_as: string;
}

/** Raised by the integrity check at open: the file is a database, but a damaged one. */
class DamagedStoreError extends Error {}

/** SQLite's "not a database" and "malformed" (better-sqlite3's `code`, node:sqlite's numeric `errcode`). */
function isCorruption(e: unknown): boolean {
  if (e instanceof DamagedStoreError) return true;
  const { code, errcode } = e as { code?: unknown; errcode?: unknown };
  if (typeof code === "string" && /^SQLITE_(NOTADB|CORRUPT)/.test(code)) return true;
  return typeof errcode === "number" && [11, 26].includes(errcode & 0xff);
}

function openDatabase(path: string): Database.Database {
  const db = new Database(path);
  try {
    // `itera-agent serve` writes generations and feedback into the same file: wait for its lock.
    db.pragma("busy_timeout = 5000");
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = NORMAL");
    // A file with a valid header can still have damaged pages; find out now, not mid-job.
    const check = db.pragma("quick_check") as Record<string, unknown>[];
    const verdict = check.map((row) => String(Object.values(row)[0])).join("; ");
    if (verdict !== "ok") throw new DamagedStoreError(`integrity check failed: ${verdict.slice(0, 300)}`);
    db.exec(`
      CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload TEXT NOT NULL, qos INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT NOT NULL, exec_no INTEGER NOT NULL, status TEXT NOT NULL, details TEXT,
        request TEXT, result TEXT, updated_ms INTEGER NOT NULL, PRIMARY KEY (job_id, exec_no));
      CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS generations (
        id TEXT PRIMARY KEY, ts INTEGER NOT NULL, model TEXT NOT NULL, prompt TEXT NOT NULL, text TEXT NOT NULL);
      CREATE INDEX IF NOT EXISTS generations_ts ON generations (ts);
      CREATE TABLE IF NOT EXISTS feedback (
        generation_id TEXT PRIMARY KEY, ts INTEGER NOT NULL, rating INTEGER NOT NULL, correction TEXT,
        comment TEXT NOT NULL, queued INTEGER NOT NULL DEFAULT 0);
    `);
    return db;
  } catch (e) {
    db.close();
    throw e;
  }
}

/** Rename the database and its WAL/shared-memory files (a stale WAL must not be replayed into a new file). */
function setAside(path: string): string {
  const keptAs = `${path}.corrupt-${new Date().toISOString().replace(/[:.]/g, "-")}`;
  try {
    for (const suffix of ["-wal", "-shm", ""]) {
      if (existsSync(path + suffix)) renameSync(path + suffix, keptAs + suffix);
    }
  } catch (e) {
    throw new IteraError(
      `the agent state database is corrupt and cannot be moved aside: ${(e as Error).message}`,
      {
        where: path,
        fix: "make the state folder writable by the agent, or move agent.db away by hand",
      },
    );
  }
  return keptAs;
}

/**
 * The agent's durable state in one SQLite file (`agent.db` in the state directory):
 * counters (bdSeq, telemetry seq), the outbox of messages not yet acknowledged by the broker, and
 * the job executions it has seen (for idempotency by jobId + execNo). WAL with synchronous=NORMAL
 * survives a killed process; a power cut may lose the last few commits.
 */
export class AgentStore {
  private readonly db: Database.Database;
  private readonly stmts;
  /** Set when this open found the old file corrupt and started a fresh one. */
  readonly resetNow: StoreReset | undefined;
  private recorded = 0;

  /**
   * Opens (or creates) `<stateDir>/agent.db`. A corrupt file (not a database, or failing SQLite's
   * quick_check) is renamed to `agent.db.corrupt-<time>` and a fresh store begins: the agent must
   * come up rather than hang, and the old file stays for inspection. The event is kept in the new
   * store (`lastReset()`), so the agent reports it.
   */
  constructor(stateDir: string) {
    const path = join(stateDir, "agent.db");
    const cannotOpen = (e: unknown) =>
      new IteraError(`cannot open the agent state database: ${(e as Error).message}`, {
        where: path,
        fix: "pass a --state-dir the agent can create and write (a folder)",
      });
    if (existsSync(stateDir) && !statSync(stateDir).isDirectory()) {
      throw new IteraError("the agent state directory is not a folder", {
        where: stateDir,
        fix: "pass a --state-dir that is a folder (or does not exist yet)",
      });
    }
    let reset: StoreReset | undefined;
    try {
      mkdirSync(stateDir, { recursive: true });
      try {
        this.db = openDatabase(path);
      } catch (e) {
        if (!isCorruption(e)) throw e;
        reset = { ts: Date.now(), reason: (e as Error).message, kept_as: setAside(path) };
        this.db = openDatabase(path);
      }
    } catch (e) {
      throw e instanceof IteraError ? e : cannotOpen(e);
    }
    this.resetNow = reset;
    if (reset) {
      this.db
        .prepare("INSERT OR REPLACE INTO meta (name, value) VALUES ('store_reset', ?)")
        .run(JSON.stringify(reset));
    }
    this.stmts = {
      next: this.db.prepare(
        "INSERT INTO counters (name, value) VALUES (?, 0) ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
      ),
      get: this.db.prepare("SELECT value FROM counters WHERE name = ?"),
      add: this.db.prepare("INSERT INTO outbox (topic, payload, qos) VALUES (?, ?, ?)"),
      pending: this.db.prepare("SELECT id, topic, payload, qos FROM outbox ORDER BY id LIMIT ?"),
      remove: this.db.prepare("DELETE FROM outbox WHERE id = ?"),
      count: this.db.prepare("SELECT COUNT(*) AS n FROM outbox"),
      trim: this.db.prepare(
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE topic LIKE '%/telemetry' ORDER BY id LIMIT ?)",
      ),
      job: this.db.prepare("SELECT * FROM jobs WHERE job_id = ? AND exec_no = ?"),
      putJob: this.db.prepare(
        `INSERT INTO jobs (job_id, exec_no, status, details, request, result, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(job_id, exec_no) DO UPDATE SET status = excluded.status, details = excluded.details,
           result = excluded.result, updated_ms = excluded.updated_ms`,
      ),
      unfinished: this.db.prepare(
        "SELECT * FROM jobs WHERE status IN ('QUEUED', 'IN_PROGRESS') ORDER BY updated_ms",
      ),
    };
  }

  /** The latest time this device's store was found corrupt and started afresh (undefined: never). */
  lastReset(): StoreReset | undefined {
    const row = this.db.prepare("SELECT value FROM meta WHERE name = 'store_reset'").get() as
      | { value: string }
      | undefined;
    return row ? (JSON.parse(row.value) as StoreReset) : undefined;
  }

  /** Increment a persistent counter and return its new value (the first call returns 0). */
  next(name: "bdSeq" | "seq"): number {
    return (this.stmts.next.get(name) as { value: number }).value;
  }

  current(name: "bdSeq" | "seq"): number | undefined {
    return (this.stmts.get.get(name) as { value: number } | undefined)?.value;
  }

  /** Append a message and, in the same transaction, whatever else must be durable with it. */
  enqueue(topic: string, payload: string, qos: 0 | 1 = 1): number {
    return Number(this.stmts.add.run(topic, payload, qos).lastInsertRowid);
  }

  pending(limit = 1000): OutboxRow[] {
    return this.stmts.pending.all(limit) as OutboxRow[];
  }

  /** Drop the oldest `n` telemetry messages (never job messages); returns how many were dropped. */
  dropOldestTelemetry(n: number): number {
    return this.stmts.trim.run(n).changes;
  }

  acknowledge(id: number): void {
    this.stmts.remove.run(id);
  }

  outboxSize(): number {
    return (this.stmts.count.get() as { n: number }).n;
  }

  getJob(jobId: string, execNo: number): JobRecord | undefined {
    const row = this.stmts.job.get(jobId, execNo) as JobRow | undefined;
    return row ? toJob(row) : undefined;
  }

  putJob(job: JobRecord): void {
    this.stmts.putJob.run(
      job.jobId,
      job.execNo,
      job.status,
      job.details,
      job.request ? JSON.stringify(job.request) : null,
      job.result ? JSON.stringify(job.result) : null,
      Date.now(),
    );
  }

  /** Jobs accepted but not finished when the agent stopped: they run again after a restart. */
  unfinishedJobs(): JobRecord[] {
    return (this.stmts.unfinished.all() as JobRow[]).map(toJob);
  }

  /** A generation `itera-agent serve` answered, kept so that feedback on it can be checked and sent. */
  recordGeneration(g: StoredGeneration): void {
    this.db
      .prepare("INSERT OR REPLACE INTO generations (id, ts, model, prompt, text) VALUES (?, ?, ?, ?, ?)")
      .run(g.id, g.ts, JSON.stringify(g.model), g.prompt, g.text);
    // Bounded: the newest KEEP_GENERATIONS, plus any that has feedback (checked every 100th time).
    if (++this.recorded % 100 === 0) {
      this.db
        .prepare(
          `DELETE FROM generations WHERE id NOT IN (SELECT generation_id FROM feedback)
           AND ts < (SELECT ts FROM generations ORDER BY ts DESC LIMIT 1 OFFSET ?)`,
        )
        .run(KEEP_GENERATIONS);
    }
  }

  generation(id: string): StoredGeneration | undefined {
    const row = this.db.prepare("SELECT * FROM generations WHERE id = ?").get(id) as
      | { id: string; ts: number; model: string; prompt: string; text: string }
      | undefined;
    return row ? { ...row, model: JSON.parse(row.model) as ModelRef } : undefined;
  }

  /** Store feedback on a generation; a second rating of the same generation replaces the first. */
  putFeedback(f: StoredFeedback): void {
    this.db
      .prepare(
        `INSERT OR REPLACE INTO feedback (generation_id, ts, rating, correction, comment, queued)
         VALUES (?, ?, ?, ?, ?, 0)`,
      )
      .run(f.generationId, f.ts, f.rating, f.correction, f.comment);
  }

  /**
   * Move the feedback not yet sent into the outbox as `feedback` messages on `topic`, in one
   * transaction (a crash leaves each either unsent or in the outbox); returns how many.
   */
  queueFeedback(topic: string): number {
    const rows = this.db
      .prepare(
        `SELECT f.generation_id, f.ts, f.rating, f.correction, f.comment, g.ts AS generated_ts, g.model,
           g.prompt, g.text FROM feedback f JOIN generations g ON g.id = f.generation_id
         WHERE f.queued = 0 ORDER BY f.ts`,
      )
      .all() as Array<{
      generation_id: string;
      ts: number;
      rating: number;
      correction: string | null;
      comment: string;
      generated_ts: number;
      model: string;
      prompt: string;
      text: string;
    }>;
    if (rows.length === 0) return 0;
    const mark = this.db.prepare("UPDATE feedback SET queued = 1 WHERE generation_id = ? AND ts = ?");
    this.transaction(() => {
      for (const r of rows) {
        const message: FeedbackMessage = {
          v: 1,
          ts: r.ts,
          requestId: r.generation_id,
          rating: r.rating,
          comment: r.comment,
          model: JSON.parse(r.model) as ModelRef,
          prompt: r.prompt,
          text: r.text,
          correction: r.correction,
          generated_ts: r.generated_ts,
        };
        this.enqueue(topic, JSON.stringify(message), 1);
        mark.run(r.generation_id, r.ts);
      }
    });
    return rows.length;
  }

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  close(): void {
    this.db.close();
  }
}

/** Generations kept for feedback (older ones without feedback are removed). */
export const KEEP_GENERATIONS = 10_000;

export interface StoredGeneration {
  /** `gen-<uuid>` (/v1/generate) or `cmpl-<uuid>` (/v1/completions). */
  id: string;
  ts: number;
  model: ModelRef;
  prompt: string;
  text: string;
}

export interface StoredFeedback {
  generationId: string;
  ts: number;
  rating: 1 | -1;
  correction: string | null;
  comment: string;
}

interface JobRow {
  job_id: string;
  exec_no: number;
  status: JobStatus;
  details: string | null;
  request: string | null;
  result: string | null;
}

function toJob(r: JobRow): JobRecord {
  return {
    jobId: r.job_id,
    execNo: r.exec_no,
    status: r.status,
    details: r.details,
    request: r.request ? (JSON.parse(r.request) as JobRequest) : null,
    result: r.result ? (JSON.parse(r.result) as JobResultPayload) : null,
  };
}
