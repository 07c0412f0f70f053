import { randomBytes, timingSafeEqual } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import Fastify, { type FastifyReply, type FastifyRequest } from "fastify";
import type { MqttClient } from "mqtt";
import { type BrokerOptions, connectBroker, endAsync } from "../protocol/connect.js";
import {
  type DashboardBroker,
  type DashboardJob,
  type DashboardPoint,
  type DashboardRunningJob,
  dashboardPage,
  missingReportPage,
} from "../report/dashboard-page.js";
import {
  decode,
  type JobStatusPayload,
  jobRequestSchema,
  releaseOf,
  type TelemetryPayload,
  terminalStatuses,
} from "../protocol/schemas.js";
import { fleetFilter, parseTopic } from "../protocol/topics.js";
import { renderFleetHtml } from "../report/fleet-page.js";
import { finishedJobs } from "./dashboard-jobs.js";
import { type DeviceView, FleetMonitor } from "./monitor.js";
import type { FleetStore } from "./store.js";

/** What the dashboard shows of a device (sent to the page as JSON; the page writes it as text). */
export interface DashboardDevice {
  device: string;
  state: string;
  version: string | null;
  profile: string | null;
  last_seen_ms: number;
  temp_c: number | null;
  tok_s: number | null;
  mj_per_token: number | null;
  method: string | null;
  /** The device's recent telemetry, oldest first (at most SPARKLINE_POINTS), drawn as sparklines. */
  points: DashboardPoint[];
}

/** How many telemetry points per device the server keeps for the page's sparklines. */
export const SPARKLINE_POINTS = 60;

export function dashboardDevice(v: DeviceView, points: DashboardPoint[] = []): DashboardDevice {
  const m = v.telemetry?.m;
  return {
    device: v.device,
    state: v.state,
    version: v.birth ? releaseOf(v.birth) : null,
    profile: v.birth?.profile ?? null,
    last_seen_ms: v.lastSeenMs,
    temp_c: m?.temp_c ?? null,
    tok_s: m?.tok_s ?? null,
    mj_per_token: m?.mj_per_token ?? null,
    method: m?.method ?? null,
    points,
  };
}

/** The figures of one telemetry message a sparkline draws. */
export function dashboardPoint(t: TelemetryPayload): DashboardPoint {
  return { ts: t.ts, cpu_pct: t.m.cpu_pct, tok_s: t.m.tok_s, mj_per_token: t.m.mj_per_token };
}

/**
 * Jobs in flight per (job, device), as the broker shows them: a request (which names the job's type
 * and deadline), then the device's QUEUED/IN_PROGRESS statuses; a terminal status or a result ends it.
 * An execution past its deadline (plus grace) whose device never answered is dropped, not kept forever.
 */
export class RunningJobs {
  private readonly jobs = new Map<string, DashboardRunningJob & { deadline: number | null }>();

  constructor(private readonly graceMs = 30_000) {}

  private key(jobId: string, device: string): string {
    return `${jobId}\u0000${device}`;
  }

  /** A request sent to a device (seen on `jobs/{jobId}/request`). */
  requested(device: string, jobId: string, type: string, deadline: number, now = Date.now()): void {
    const k = this.key(jobId, device);
    const prev = this.jobs.get(k);
    this.jobs.set(k, {
      jobId,
      type,
      device,
      status: prev?.status ?? "SENT",
      details: prev?.details ?? null,
      sinceMs: prev?.sinceMs ?? now,
      deadline,
    });
  }

  /** A device's status; true when the list changed. A terminal status removes the execution. */
  status(device: string, s: JobStatusPayload, now = Date.now()): boolean {
    const k = this.key(s.jobId, device);
    if (terminalStatuses.has(s.status)) return this.jobs.delete(k);
    const prev = this.jobs.get(k);
    this.jobs.set(k, {
      jobId: s.jobId,
      type: prev?.type ?? null,
      device,
      status: s.status,
      details: s.details,
      sinceMs: prev?.sinceMs ?? now,
      deadline: prev?.deadline ?? null,
    });
    return true;
  }

  /** A device's result: its execution is finished. */
  finished(device: string, jobId: string): boolean {
    return this.jobs.delete(this.key(jobId, device));
  }

  /** Drop executions past their deadline and grace; true when any went. */
  prune(now = Date.now()): boolean {
    let changed = false;
    for (const [k, j] of this.jobs) {
      if (j.deadline !== null && now > j.deadline + this.graceMs) changed = this.jobs.delete(k) || changed;
    }
    return changed;
  }

  /** Oldest first. */
  list(): DashboardRunningJob[] {
    return [...this.jobs.values()]
      .sort((a, b) => a.sinceMs - b.sinceMs || a.device.localeCompare(b.device))
      .map(({ deadline: _, ...j }) => j);
  }
}

/** The broker's address as shown on the page and the terminal: never its password. */
export function shownBrokerUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString().replace(/\/$/, "");
  } catch {
    return url;
  }
}

export interface DashboardOptions {
  broker: BrokerOptions;
  fleet: string;
  host: string;
  port: number;
  /** When set, the page and its event stream need `?token=` (or `Authorization: Bearer`). */
  token?: string;
  /** Telemetry is stored here (--db). */
  store?: FleetStore;
  /** The fleet history whose finished jobs (benchmark, update, tune) the page lists; benchmarks link their report. */
  history?: FleetStore;
  /** How often the history is read again for newly finished jobs (another process writes it). */
  historyPollMs?: number;
  /** How long to wait between attempts while the broker cannot be reached. */
  retryMs?: number;
  signal: AbortSignal;
  /** Called with the page's address once the server listens. */
  onListening?: (url: string) => void;
  /** Called when the broker connection changes (connected, unreachable). */
  onBroker?: (b: DashboardBroker) => void;
}

function tokenOk(req: FastifyRequest, token: string | undefined): boolean {
  if (token === undefined) return true;
  const q = (req.query as { token?: unknown }).token;
  const auth = req.headers.authorization;
  const given = typeof q === "string" ? q : auth?.startsWith("Bearer ") ? auth.slice(7) : "";
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * `itera fleet dashboard`: a live page of a fleet's devices and its running and finished jobs, updated by
 * Server-Sent Events, until the signal aborts. The page is served at once; a broker that cannot be
 * reached is shown on it (and retried) instead of leaving the page blank.
 */
export async function runDashboard(o: DashboardOptions): Promise<void> {
  const streams = new Set<FastifyReply>();
  const send = (event: string, data: unknown) => {
    const text = `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
    for (const r of streams) r.raw.write(text);
  };
  let broker: DashboardBroker = { state: "connecting", url: shownBrokerUrl(o.broker.url), error: null };
  const setBroker = (state: DashboardBroker["state"], error: string | null) => {
    if (broker.state === state && broker.error === error) return;
    broker = { ...broker, state, error };
    send("broker", broker);
    o.onBroker?.(broker);
  };

  // Finished jobs of every type, newest first; each is read once (a finished job never changes).
  const seen = new Map<string, DashboardJob>();
  let jobs: DashboardJob[] = [];
  const readJobs = () => {
    if (!o.history) return;
    let next: DashboardJob[];
    try {
      next = finishedJobs(o.history, o.fleet, seen);
    } catch {
      return; // busy or being migrated by another process: read again on the next poll
    }
    if (JSON.stringify(next) !== JSON.stringify(jobs)) {
      jobs = next;
      send("jobs", jobs);
    }
  };
  readJobs();

  // Each device's recent telemetry for its sparklines, and the jobs in flight.
  const points = new Map<string, DashboardPoint[]>();
  const deviceRow = (v: DeviceView) => dashboardDevice(v, points.get(v.device) ?? []);
  const running = new RunningJobs();
  const sendRunning = () => send("running", running.list());

  let client: MqttClient | undefined;
  let monitor: FleetMonitor | undefined;
  const connect = async () => {
    while (!o.signal.aborted && !client) {
      try {
        client = await connectBroker(
          o.broker,
          {
            clientId: `itera-dashboard-${randomBytes(4).toString("hex")}`,
            clean: true,
            connectTimeoutMs: 5000,
          },
          undefined,
          { signal: o.signal },
        );
      } catch (e) {
        if (o.signal.aborted) return;
        setBroker("unreachable", (e as Error).message);
        await sleep(o.retryMs ?? 5000, undefined, { signal: o.signal }).catch(() => {});
      }
    }
    if (!client) return;
    // The client reconnects by itself; the page says when it is cut off.
    client.on("connect", () => setBroker("connected", null));
    client.on("offline", () => setBroker("unreachable", "connection lost; reconnecting"));
    // Plain (not shared) subscriptions: the dashboard only watches, it takes no result from a coordinator.
    monitor = new FleetMonitor(client, o.fleet, o.store);
    const update = (v: DeviceView) => send("device", deviceRow(v));
    monitor.on("birth", update);
    monitor.on("state", update);
    monitor.on("telemetry", (v, t, fresh) => {
      if (fresh) {
        const kept = points.get(v.device) ?? [];
        kept.push(dashboardPoint(t));
        if (kept.length > SPARKLINE_POINTS) kept.shift();
        points.set(v.device, kept);
      }
      update(v);
    });
    monitor.on("status", (device, s) => running.status(device, s) && sendRunning());
    monitor.on("result", (device, r) => running.finished(device, r.jobId) && sendRunning());
    // A job's request names its type and deadline (the device's statuses do not).
    client.on("message", (topic, payload) => {
      const t = parseTopic(topic);
      if (t?.kind !== "request" || t.fleet !== o.fleet) return;
      const d = decode(jobRequestSchema, payload);
      if (!d.ok || d.value.jobId !== t.jobId) return;
      running.requested(t.device, t.jobId, d.value.doc.type, d.value.deadline);
      sendRunning();
    });
    await monitor.subscribe();
    await client.subscribeAsync(fleetFilter(o.fleet, "request"), { qos: 1 });
    setBroker("connected", null);
  };

  // On shutdown every connection goes, a browser's kept-alive ones too (else close() waits for them).
  const app = Fastify({ logger: false, forceCloseConnections: true });
  const denied = (reply: FastifyReply) =>
    reply.code(401).type("text/plain").send("a valid ?token= is required (itera fleet dashboard --token)");
  const html = (reply: FastifyReply, page: string) =>
    reply.type("text/html; charset=utf-8").header("cache-control", "no-store").send(page);
  app.get("/", async (req, reply) => {
    if (!tokenOk(req, o.token)) return denied(reply);
    return html(reply, dashboardPage({ fleet: o.fleet, broker, jobs, running: running.list() }));
  });
  // What the page's stream carries, at once, for scripts and checks (`--json` of a live page).
  app.get("/state.json", async (req, reply) => {
    if (!tokenOk(req, o.token)) return denied(reply);
    const devices = monitor ? [...monitor.devices.values()].map(deviceRow) : [];
    return reply.header("cache-control", "no-store").send({ broker, devices, running: running.list(), jobs });
  });
  app.get<{ Params: { id: string } }>("/jobs/:id/report.html", async (req, reply) => {
    if (!tokenOk(req, o.token)) return denied(reply);
    const outcome = o.history?.outcome(req.params.id);
    if (!outcome || outcome.fleet !== o.fleet) {
      return html(
        reply.code(404),
        missingReportPage({ fleet: o.fleet, jobId: req.params.id, db: o.history?.path }),
      );
    }
    return html(reply, renderFleetHtml(outcome));
  });
  app.get("/events", (req, reply) => {
    if (!tokenOk(req, o.token)) return denied(reply);
    reply.hijack();
    reply.raw.writeHead(200, {
      "content-type": "text/event-stream",
      "cache-control": "no-store",
      connection: "keep-alive",
    });
    const devices = monitor ? [...monitor.devices.values()].map(deviceRow) : [];
    reply.raw.write(`event: snapshot\ndata: ${JSON.stringify(devices)}\n\n`);
    reply.raw.write(`event: running\ndata: ${JSON.stringify(running.list())}\n\n`);
    reply.raw.write(`event: broker\ndata: ${JSON.stringify(broker)}\n\n`);
    reply.raw.write(`event: jobs\ndata: ${JSON.stringify(jobs)}\n\n`);
    streams.add(reply);
    req.raw.on("close", () => streams.delete(reply));
  });
  // A comment every 15 s keeps proxies from closing an idle stream.
  const ping = setInterval(() => {
    for (const r of streams) r.raw.write(": ping\n\n");
  }, 15_000);
  const poll = setInterval(() => {
    readJobs();
    if (running.prune()) sendRunning();
  }, o.historyPollMs ?? 2000);
  let connecting: Promise<void> | undefined;
  try {
    const address = await app.listen({ host: o.host, port: o.port });
    o.onListening?.(address);
    // A refused subscription is shown like an unreachable broker: the page says what went wrong.
    connecting = connect().catch((e: Error) => setBroker("unreachable", e.message));
    await new Promise<void>((resolve) => {
      if (o.signal.aborted) resolve();
      else o.signal.addEventListener("abort", () => resolve(), { once: true });
    });
  } finally {
    clearInterval(ping);
    clearInterval(poll);
    for (const r of streams) r.raw.end();
    await app.close();
    await connecting?.catch(() => {});
    if (client) await endAsync(client);
  }
}
