import { arch, cpus, platform, totalmem } from "node:os";
import type { IClientOptions, MqttClient } from "mqtt";
import {
  type BrokerOptions,
  connectBroker,
  endAsync,
  LoginRefusedError,
  publishAsync,
} from "../protocol/connect.js";
import {
  type BirthPayload,
  decode,
  type JobRequest,
  type JobResultPayload,
  type JobStatus,
  jobRequestSchema,
  type ModelRef,
  PROTOCOL_VERSION,
  salvageExecNo,
  type StatePayload,
  terminalStatuses,
} from "../protocol/schemas.js";
import { deviceTopic, jobTopic, parseTopic } from "../protocol/topics.js";
import { VERSION } from "../version.js";
import { Outbox } from "./outbox.js";
import { benchmarkExecutor } from "./jobs/benchmark.js";
import type { AnyExecutor, JobContext } from "./jobs/types.js";
import type { BenchmarkRunner } from "./runner.js";
import { type JobRecord, AgentStore } from "./store.js";
import { TelemetrySampler } from "./telemetry.js";

/** Job requests are small; anything bigger is refused before parsing. */
export const MAX_REQUEST_BYTES = 64 * 1024;

export interface AgentOptions {
  broker: BrokerOptions;
  fleet: string;
  /** Device id: also the MQTT client id, so the broker's ACL can bind it to the login. */
  device: string;
  profile: string;
  models: ModelRef[];
  /** The A/B variant of the running release (recorded when it was installed), announced in birth and telemetry. */
  variant?: string;
  /** The installed release's version, when it is not the agent's own (a bundle's manifest), announced in the birth. */
  release?: string;
  stateDir: string;
  /** The store of `stateDir`, when the caller opened it first (to fail on a bad folder early). */
  store?: AgentStore;
  telemetryIntervalMs: number;
  /** Runs `benchmark` jobs (shorthand for its executor in `executors`). */
  runner?: BenchmarkRunner;
  /** One executor per job type this device accepts (src/agent/jobs/); other types are REJECTED. */
  executors?: AnyExecutor[];
  sessionExpiryS?: number;
  reconnectPeriodMs?: number;
  /**
   * Most messages kept on disk while the broker is away (default 100 000, a few tens of MB). Beyond
   * it the oldest telemetry is dropped (a gap in seq, logged); job statuses and results never are.
   */
  maxOutbox?: number;
  log?: (line: string) => void;
}

/**
 * The on-device MQTT agent (DESIGN.md §8). It announces itself (state + birth, retained, with a
 * birth/death sequence number bdSeq that the Last Will repeats), sends telemetry, and runs benchmark
 * jobs one at a time. Everything it publishes except the retained announcements goes through the
 * on-disk outbox, so nothing is lost while the broker is away or the agent restarts.
 */
export class Agent {
  private readonly store: AgentStore;
  private readonly outbox: Outbox;
  private readonly sampler = new TelemetrySampler();
  private mqtt: MqttClient | undefined;
  private attemptBdSeq = 0;
  private lastSeq: number | undefined;
  private sessionBdSeq = 0;
  private telemetryTimer: NodeJS.Timeout | undefined;
  private readonly queue: JobRequest[] = [];
  private running = false;
  private current: AbortController | undefined;
  private currentJob: { jobId: string; executor: AnyExecutor } | undefined;
  private readonly executors = new Map<string, AnyExecutor>();
  private readonly reconnectListeners = new Set<() => void>();
  private onlineWaiters: Array<() => void> = [];
  private isOnline = false;
  private restartWith!: (reason: string) => void;
  /** Resolves when a job asks for the process to end and be started again by its supervisor. */
  readonly restartRequested: Promise<string>;
  private stopping = false;
  /** Cancels a connection attempt in progress and the wait between attempts, on stop. */
  private readonly connectAbort = new AbortController();
  private connecting: Promise<void> = Promise.resolve();
  private pumping: Promise<void> = Promise.resolve();
  private stopped: Promise<void> | undefined;
  private readonly log: (line: string) => void;
  private connectedOnce!: () => void;
  private failed!: (e: Error) => void;
  /** Resolves on the first successful connection. */
  readonly connected: Promise<void>;
  /** Rejects if the agent cannot go on (e.g. the broker refuses its login). */
  readonly fatal: Promise<never>;

  constructor(private readonly opts: AgentOptions) {
    this.store = opts.store ?? new AgentStore(opts.stateDir);
    this.outbox = new Outbox(this.store);
    this.log = opts.log ?? ((line) => process.stderr.write(`${line}\n`));
    this.connected = new Promise((resolve) => {
      this.connectedOnce = resolve;
    });
    this.fatal = new Promise((_, reject) => {
      this.failed = reject;
    });
    this.fatal.catch(() => {});
    this.restartRequested = new Promise((resolve) => {
      this.restartWith = resolve;
    });
    if (opts.runner) {
      const bench = benchmarkExecutor({
        runner: opts.runner,
        models: opts.models,
        onResults: (r) => this.sampler.noteResults(r),
      });
      this.executors.set(bench.type, bench);
    }
    for (const e of opts.executors ?? []) this.executors.set(e.type, e);
    this.sessionBdSeq = this.store.current("bdSeq") ?? 0;
    this.lastSeq = this.store.current("seq");
    const reset = this.store.resetNow;
    if (reset) {
      this.log(
        `agent ${opts.device}: the state database was corrupt (${reset.reason}); kept it as ${reset.kept_as} and started a fresh one (its unsent messages and job records are in the old file)`,
      );
    }
  }

  get client(): MqttClient | undefined {
    return this.mqtt;
  }

  get bdSeq(): number {
    return this.sessionBdSeq;
  }

  /** The last telemetry seq this device produced (undefined before the first). */
  get telemetrySeq(): number | undefined {
    return this.lastSeq;
  }

  outboxSize(): number {
    return this.outbox.size();
  }

  /** Start telemetry and job recovery at once; connect in the background (retrying until it works). */
  start(): void {
    for (const job of this.store.unfinishedJobs()) {
      if (job.request) this.queue.push(job.request);
    }
    this.telemetryTimer = setInterval(() => this.sendTelemetry(), this.opts.telemetryIntervalMs);
    this.connecting = this.connectLoop();
    if (this.queue.length > 0) void this.pump();
  }

  private topic(kind: "state" | "birth" | "telemetry"): string {
    return deviceTopic(this.opts.fleet, this.opts.device, kind);
  }

  private statePayload(state: StatePayload["state"], bdSeq: number): string {
    return JSON.stringify({ v: PROTOCOL_VERSION, state, bdSeq, ts: Date.now() } satisfies StatePayload);
  }

  /** Before every connection attempt: a new bdSeq, persisted, and a Last Will that carries it. */
  private prepare = (_client: MqttClient | undefined, options: IClientOptions): void => {
    if (this.stopping) return; // the store may be closed; this client is being ended anyway
    this.attemptBdSeq = this.store.next("bdSeq");
    options.will = {
      topic: this.topic("state"),
      payload: Buffer.from(this.statePayload("lost", this.attemptBdSeq)),
      qos: 1,
      retain: true,
    };
  };

  /**
   * Job requests are taken in `handleMessage`, set before the client connects: a persistent session's
   * queued requests arrive right after the CONNACK, before connectBroker() returns. MQTT.js sends the
   * PUBACK only after it, so a request is on disk (QUEUED) before the broker forgets it; while the
   * agent stops, no PUBACK is sent and the broker keeps the request for the next session.
   */
  private readonly listen = (client: MqttClient): void => {
    client.handleMessage = (packet, done) => {
      if (this.stopping) {
        done(new Error("agent stopping: the request stays at the broker"));
        return;
      }
      const payload = typeof packet.payload === "string" ? Buffer.from(packet.payload) : packet.payload;
      this.onMessage(packet.topic, payload);
      done();
    };
  };

  private async connectLoop(): Promise<void> {
    while (!this.stopping) {
      let client: MqttClient;
      try {
        client = await connectBroker(
          this.opts.broker,
          {
            clientId: this.opts.device,
            clean: false,
            sessionExpiryS: this.opts.sessionExpiryS ?? 7 * 24 * 3600,
            reconnectPeriodMs: this.opts.reconnectPeriodMs ?? 1000,
          },
          this.prepare,
          { onClient: this.listen, signal: this.connectAbort.signal },
        );
      } catch (e) {
        if (this.stopping) return;
        if (e instanceof LoginRefusedError) {
          this.failed(e);
          return;
        }
        this.log(`agent ${this.opts.device}: ${(e as Error).message}; retrying`);
        await new Promise<void>((resolve) => {
          const signal = this.connectAbort.signal;
          const wake = () => {
            clearTimeout(timer);
            signal.removeEventListener("abort", wake);
            resolve();
          };
          const timer = setTimeout(wake, this.opts.reconnectPeriodMs ?? 1000);
          signal.addEventListener("abort", wake, { once: true });
        });
        continue;
      }
      if (this.stopping) {
        await endAsync(client, true);
        return;
      }
      // From here on the client reconnects by itself: never make a second one with the same id.
      this.mqtt = client;
      client.on("connect", () => void this.onConnected(client).catch(() => {}));
      client.on("offline", () => {
        this.isOnline = false;
        this.log(`agent ${this.opts.device}: broker unreachable, buffering to disk`);
      });
      try {
        await this.onConnected(client);
      } catch (e) {
        // Lost again before subscribing: the `connect` handler subscribes on the next connection.
        this.log(`agent ${this.opts.device}: ${(e as Error).message}; retrying`);
      }
      this.outbox.attach(client);
      this.connectedOnce();
      return;
    }
  }

  private async onConnected(client: MqttClient): Promise<void> {
    if (this.stopping) return;
    this.sessionBdSeq = this.attemptBdSeq;
    // Subscribed (SUBACK) before announcing: whoever sees "online" or the birth may publish a job at
    // once (dispatch re-sends on a birth), and a session that has never subscribed drops it. A crash
    // right after an early "online" on the first connection lost every job sent while it was down.
    const refused = await client
      .subscribeAsync(
        [
          jobTopic(this.opts.fleet, this.opts.device, "+", "request"),
          jobTopic(this.opts.fleet, this.opts.device, "+", "chunk"),
        ],
        { qos: 1 },
      )
      .then(
        () => undefined,
        (e: Error & { code?: unknown }) => {
          // A lost connection: the next `connect` does it all again. A refusal (ACL) is announced as before.
          if (typeof e.code !== "number") throw e;
          return e;
        },
      );
    if (this.stopping) return;
    const birth: BirthPayload = {
      v: PROTOCOL_VERSION,
      bdSeq: this.sessionBdSeq,
      ts: Date.now(),
      agent: { version: VERSION, node: process.version },
      hw: {
        platform: platform(),
        arch: arch(),
        cpus: cpus().length,
        memory_mb: Math.round(totalmem() / 2 ** 20),
        cpu_model: cpus()[0]?.model ?? "unknown",
      },
      profile: this.opts.profile,
      models: this.opts.models,
      ...(this.opts.variant ? { variant: this.opts.variant } : {}),
      ...(this.opts.release ? { release: this.opts.release } : {}),
    };
    // Retained with the birth, so a coordinator sees it whenever it looks, not only at the event.
    const reset = this.store.lastReset();
    if (reset) birth.store_reset = { ...reset };
    // Retained announcements are re-sent on every connect, so they need no outbox.
    client.publish(this.topic("state"), this.statePayload("online", this.sessionBdSeq), {
      qos: 1,
      retain: true,
    });
    client.publish(this.topic("birth"), JSON.stringify(birth), { qos: 1, retain: true });
    this.log(
      `agent ${this.opts.device}: online (bdSeq ${this.sessionBdSeq}, MQTT ${client.options.protocolVersion})`,
    );
    if (refused) throw refused;
    this.isOnline = true;
    for (const w of this.onlineWaiters.splice(0)) w();
    for (const l of this.reconnectListeners) l();
  }

  sendTelemetry(): void {
    if (this.stopping) return;
    const max = this.opts.maxOutbox ?? 100_000;
    const excess = this.outbox.size() + 1 - max;
    if (excess > 0) {
      const dropped = this.store.dropOldestTelemetry(excess);
      if (dropped > 0)
        this.log(`agent ${this.opts.device}: outbox full (${max}): dropped the ${dropped} oldest telemetry`);
    }
    // Feedback that `itera-agent serve` stored in this state folder leaves with the telemetry (docs/fleet.md).
    this.store.queueFeedback(deviceTopic(this.opts.fleet, this.opts.device, "feedback"));
    const seq = this.store.next("seq");
    this.lastSeq = seq;
    this.outbox.publish(this.topic("telemetry"), {
      v: PROTOCOL_VERSION,
      ts: Date.now(),
      bdSeq: this.sessionBdSeq,
      seq,
      m: this.sampler.sample(),
      ...(this.opts.variant ? { variant: this.opts.variant } : {}),
    });
  }

  private onMessage(topic: string, payload: Buffer): void {
    try {
      this.handleRequest(topic, payload);
    } catch (e) {
      // A bad message must never take the agent down: log it and go on.
      this.log(`agent ${this.opts.device}: error handling ${topic}: ${(e as Error).message}`);
    }
  }

  private handleRequest(topic: string, payload: Buffer): void {
    const t = parseTopic(topic);
    if (t?.kind === "chunk" && t.device === this.opts.device && t.fleet === this.opts.fleet) {
      // Only the running job takes its chunks; others are dropped (the device asks for what it lacks).
      const job = this.currentJob;
      if (job && job.jobId === t.jobId) job.executor.onMessage?.("chunk", payload, t.jobId);
      return;
    }
    if (t?.kind !== "request" || t.device !== this.opts.device || t.fleet !== this.opts.fleet) {
      this.log(`agent ${this.opts.device}: ignoring message on ${topic}`);
      return;
    }
    const d = decode(jobRequestSchema, payload, MAX_REQUEST_BYTES);
    if (!d.ok) {
      const execNo = payload.byteLength <= MAX_REQUEST_BYTES ? salvageExecNo(payload) : 0;
      this.announce(t.jobId, execNo, "REJECTED", d.error);
      return;
    }
    const req = d.value;
    if (req.jobId !== t.jobId) {
      this.announce(
        t.jobId,
        req.execNo,
        "REJECTED",
        `jobId '${req.jobId}' differs from the topic's '${t.jobId}'`,
      );
      return;
    }
    const known = this.store.getJob(req.jobId, req.execNo);
    if (known) {
      // Idempotent: a repeated request gets the recorded answer and never runs twice.
      this.announce(known.jobId, known.execNo, known.status, known.details, known.result ?? undefined);
      return;
    }
    if (req.deadline <= Date.now()) {
      this.record(req, "TIMED_OUT", "the deadline passed before the job started");
      return;
    }
    const executor = this.executors.get(req.doc.type);
    if (!executor) {
      const have = [...this.executors.keys()].join(", ") || "none";
      this.record(req, "REJECTED", `this device does not run '${req.doc.type}' jobs (it runs: ${have})`);
      return;
    }
    const refusal = executor.validate(req.doc);
    if (refusal !== undefined) {
      this.record(req, "REJECTED", refusal);
      return;
    }
    this.record(req, "QUEUED", null);
    this.queue.push(req);
    void this.pump();
  }

  /** Record a job's new status durably, then publish it (and the result, once terminal). */
  private record(req: JobRequest, status: JobStatus, details: string | null, results: object[] = []): void {
    const result: JobResultPayload | null = terminalStatuses.has(status)
      ? {
          v: PROTOCOL_VERSION,
          jobId: req.jobId,
          execNo: req.execNo,
          status,
          results: results as JobResultPayload["results"],
          error: details,
        }
      : null;
    const job: JobRecord = { jobId: req.jobId, execNo: req.execNo, status, details, request: req, result };
    this.store.transaction(() => {
      this.store.putJob(job);
      this.announce(req.jobId, req.execNo, status, details, result ?? undefined);
    });
  }

  private announce(
    jobId: string,
    execNo: number,
    status: JobStatus,
    details: string | null,
    result?: JobResultPayload,
  ): void {
    const { fleet, device } = this.opts;
    this.outbox.publish(jobTopic(fleet, device, jobId, "status"), {
      v: PROTOCOL_VERSION,
      jobId,
      execNo,
      status,
      details,
      ts: Date.now(),
    });
    if (terminalStatuses.has(status)) {
      this.outbox.publish(
        jobTopic(fleet, device, jobId, "result"),
        result ?? { v: PROTOCOL_VERSION, jobId, execNo, status, results: [], error: details },
      );
    }
  }

  /** Run queued jobs one at a time; the returned promise (also kept for stop()) ends when the queue is empty. */
  private pump(): Promise<void> {
    if (this.running) return this.pumping;
    this.running = true;
    this.pumping = (async () => {
      try {
        while (this.queue.length > 0 && !this.stopping) await this.runJob(this.queue.shift()!);
      } finally {
        this.running = false;
      }
    })();
    return this.pumping;
  }

  private async runJob(req: JobRequest): Promise<void> {
    const left = req.deadline - Date.now();
    if (left <= 0) {
      this.record(req, "TIMED_OUT", "the deadline passed while the job was queued");
      return;
    }
    this.record(req, "IN_PROGRESS", null);
    const executor = this.executors.get(req.doc.type);
    if (!executor) {
      // Recorded by an agent that ran this type; this one (another release) does not.
      this.record(req, "FAILED", `this agent does not run '${req.doc.type}' jobs`);
      return;
    }
    const ac = new AbortController();
    this.current = ac;
    this.currentJob = { jobId: req.jobId, executor };
    const timer = setTimeout(() => ac.abort(new Error("deadline")), left);
    try {
      const end = await executor.run(
        req.doc,
        (details: string) => this.announce(req.jobId, req.execNo, "IN_PROGRESS", details),
        ac.signal,
        this.jobContext(req),
      );
      if (this.stopping) return;
      this.record(req, end.status, end.error ?? null, end.results);
    } catch (e) {
      if (this.stopping) return; // stays IN_PROGRESS on disk: it runs again after the restart
      if (ac.signal.aborted)
        this.record(req, "TIMED_OUT", `the deadline passed while the ${req.doc.type} job ran`);
      else this.record(req, "FAILED", (e as Error).message);
    } finally {
      clearTimeout(timer);
      this.current = undefined;
      this.currentJob = undefined;
      this.reconnectListeners.clear();
    }
  }

  private jobContext(req: JobRequest): JobContext {
    const { fleet, device } = this.opts;
    return {
      jobId: req.jobId,
      execNo: req.execNo,
      device,
      publish: (kind, payload) => this.outbox.publish(jobTopic(fleet, device, req.jobId, kind), payload),
      online: () =>
        this.isOnline ? Promise.resolve() : new Promise<void>((r) => this.onlineWaiters.push(r)),
      // Forgotten when the job ends (runJob clears them; one job runs at a time).
      onReconnect: (l) => this.reconnectListeners.add(l),
      restart: (reason) => {
        this.log(`agent ${device}: restarting: ${reason}`);
        this.restartWith(reason);
      },
    };
  }

  /** Resolves once every message published so far has been acknowledged by the broker. */
  drained(): Promise<void> {
    return this.outbox.drained();
  }

  /**
   * Graceful stop, in any connection state (connected, connecting, broker unreachable): cancel the
   * connection attempt and the job, announce `offline` if connected (so no Last Will fires),
   * disconnect, close the store. Unacknowledged messages and unfinished jobs stay on disk.
   */
  stop(): Promise<void> {
    this.stopped ??= this.shutdown();
    return this.stopped;
  }

  private async shutdown(): Promise<void> {
    this.stopping = true;
    clearInterval(this.telemetryTimer);
    this.current?.abort(new Error("agent stopping"));
    this.connectAbort.abort();
    await this.connecting;
    // A runner that ignores the abort must not hold the stop; it finds the store closed and ends.
    await Promise.race([this.pumping, new Promise((r) => setTimeout(r, 5000).unref())]);
    const client = this.mqtt;
    if (client?.connected) {
      await Promise.race([
        publishAsync(client, this.topic("state"), this.statePayload("offline", this.sessionBdSeq), {
          qos: 1,
          retain: true,
        }).catch(() => {}),
        new Promise((r) => setTimeout(r, 2000)),
      ]);
    }
    this.outbox.detach();
    if (client) await endAsync(client, !client.connected);
    this.store.close();
  }

  /** Simulate a crash: drop the TCP connection without DISCONNECT (the broker sends the Last Will). */
  crash(): void {
    this.stopping = true;
    this.stopped = Promise.resolve();
    clearInterval(this.telemetryTimer);
    this.current?.abort(new Error("agent crashed"));
    this.connectAbort.abort();
    this.outbox.detach();
    this.mqtt?.stream.destroy();
    if (this.mqtt) void endAsync(this.mqtt, true);
    this.store.close();
  }
}
