import { randomBytes, timingSafeEqual } from "node:crypto";
import Fastify, { type FastifyReply, type FastifyRequest } from "fastify";
import { type BrokerOptions, connectBroker, endAsync } from "../protocol/connect.js";
import { dashboardPage } from "../report/dashboard-page.js";
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
}

export function dashboardDevice(v: DeviceView): DashboardDevice {
  const m = v.telemetry?.m;
  return {
    device: v.device,
    state: v.state,
    version: v.birth?.agent.version ?? null,
    profile: v.birth?.profile ?? null,
    last_seen_ms: v.lastSeenMs,
    temp_c: m?.temp_c ?? null,
    tok_s: m?.tok_s ?? null,
    mj_per_token: m?.mj_per_token ?? null,
    method: m?.method ?? null,
  };
}

export interface DashboardOptions {
  broker: BrokerOptions;
  fleet: string;
  host: string;
  port: number;
  /** When set, the page and its event stream need `?token=` (or `Authorization: Bearer`). */
  token?: string;
  store?: FleetStore;
  signal: AbortSignal;
  /** Called with the page's address once the server listens. */
  onListening?: (url: string) => void;
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

/** `itera fleet dashboard`: a live page of a fleet's devices, updated by Server-Sent Events, until the signal aborts. */
export async function runDashboard(o: DashboardOptions): Promise<void> {
  const client = await connectBroker(o.broker, {
    clientId: `itera-dashboard-${randomBytes(4).toString("hex")}`,
    clean: true,
  });
  const monitor = new FleetMonitor(client, o.fleet, o.store, { results: false });
  const streams = new Set<FastifyReply>();
  const send = (event: string, data: unknown) => {
    const text = `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
    for (const r of streams) r.raw.write(text);
  };
  const update = (v: DeviceView) => send("device", dashboardDevice(v));
  monitor.on("birth", update);
  monitor.on("state", update);
  monitor.on("telemetry", (v) => update(v));
  await monitor.subscribe();

  const app = Fastify({ logger: false });
  const denied = (reply: FastifyReply) =>
    reply.code(401).type("text/plain").send("a valid ?token= is required (itera fleet dashboard --token)");
  app.get("/", async (req, reply) => {
    if (!tokenOk(req, o.token)) return denied(reply);
    return reply
      .type("text/html; charset=utf-8")
      .header("cache-control", "no-store")
      .send(dashboardPage({ fleet: o.fleet }));
  });
  app.get("/events", (req, reply) => {
    if (!tokenOk(req, o.token)) return denied(reply);
    reply.hijack();
    reply.raw.writeHead(200, {
      "content-type": "text/event-stream",
      "cache-control": "no-store",
      connection: "keep-alive",
    });
    reply.raw.write(
      `event: snapshot\ndata: ${JSON.stringify([...monitor.devices.values()].map(dashboardDevice))}\n\n`,
    );
    streams.add(reply);
    req.raw.on("close", () => streams.delete(reply));
  });
  // A comment every 15 s keeps proxies from closing an idle stream.
  const ping = setInterval(() => {
    for (const r of streams) r.raw.write(": ping\n\n");
  }, 15_000);
  try {
    const address = await app.listen({ host: o.host, port: o.port });
    o.onListening?.(address);
    await new Promise<void>((resolve) => {
      if (o.signal.aborted) resolve();
      else o.signal.addEventListener("abort", () => resolve(), { once: true });
    });
  } finally {
    clearInterval(ping);
    for (const r of streams) r.raw.end();
    await app.close();
    await endAsync(client);
  }
}
