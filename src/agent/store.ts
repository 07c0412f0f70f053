import { mkdirSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { IteraError } from "../errors.js";
import type { JobRequest, JobResultPayload, JobStatus } from "../protocol/schemas.js";

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

/**
 * The agent's durable state in one SQLite file (`agent.db` in the state directory):
 * counters (bdSeq, telemetry seq), the outbox of messages not yet acknowledged by the broker, and
 * the job executions it has seen (for idempotency by jobId + execNo). WAL with synchronous=NORMAL
 * survives a killed process; a power cut may lose the last few commits.
 */
export class AgentStore {
  private readonly db: Database.Database;
  private readonly stmts;

  constructor(stateDir: string) {
    const path = join(stateDir, "agent.db");
    try {
      mkdirSync(stateDir, { recursive: true });
      this.db = new Database(path);
    } catch (e) {
      throw new IteraError(`cannot open the agent state database: ${(e as Error).message}`, {
        where: path,
        fix: "pass a writable --state-dir",
      });
    }
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload TEXT NOT NULL, qos INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT NOT NULL, exec_no INTEGER NOT NULL, status TEXT NOT NULL, details TEXT,
        request TEXT, result TEXT, updated_ms INTEGER NOT NULL, PRIMARY KEY (job_id, exec_no));
    `);
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

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  close(): void {
    this.db.close();
  }
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
