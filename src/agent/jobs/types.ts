import type { JobDoc, JobType } from "../../protocol/schemas.js";

/** The document of one job type (`{type, params}`), narrowed from the protocol's union. */
export type DocOf<T extends JobType> = Extract<JobDoc, { type: T }>;

/** What a job ends with when it does not throw (a throw is FAILED with the error's message). */
export interface JobEnd {
  status: "SUCCEEDED" | "FAILED";
  /** One object per result, the job type's schema (each names this device in `device`). */
  results: object[];
  error?: string | null;
}

/** What the agent lends a running job besides its document. */
export interface JobContext {
  jobId: string;
  execNo: number;
  device: string;
  /** Publish on one of this job's own topics (through the outbox: survives a broker outage). */
  publish(kind: "need", payload: object): void;
  /** Resolves once the agent is connected and its birth is out (again after every reconnect). */
  online(): Promise<void>;
  /** Called on every (re)connect while the job runs. */
  onReconnect(listener: () => void): void;
  /**
   * End the process so that its supervisor starts `current` again (systemd Restart=always): the job
   * stays IN_PROGRESS on disk and runs again in the new process, which finishes it.
   */
  restart(reason: string): void;
}

/**
 * One job type on the agent: the agent keeps the lifecycle (queue, idempotency, deadlines, REJECTED,
 * outbox) and hands the document to the executor of its type. One file per type in src/agent/jobs/.
 */
export interface JobExecutor<T extends JobType = JobType> {
  type: T;
  /** Why this device refuses the job (REJECTED with this reason), or undefined to accept it. */
  validate(doc: DocOf<T>): string | undefined;
  /** Run the job; must stop promptly (reject) when `signal` aborts (deadline, agent stopping). */
  run(
    doc: DocOf<T>,
    progress: (details: string) => void,
    signal: AbortSignal,
    ctx: JobContext,
  ): Promise<JobEnd>;
  /** A message on this job's `chunk` topic while it runs (taken before the PUBACK: write it durably). */
  onMessage?(kind: "chunk", payload: Buffer, jobId: string): void;
}

/** Any executor, as the agent's table holds them. */
// biome-ignore lint/suspicious/noExplicitAny: the table is keyed by type; each entry gets its own doc
export type AnyExecutor = JobExecutor<any>;

/**
 * The agent's exit status when a job asks to be started again (an update switched `current`): its
 * supervisor (systemd Restart=always, the tests' loop) starts `current/itera-agent` again.
 */
export const RESTART_EXIT_CODE = 75;
