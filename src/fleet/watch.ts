import { randomBytes } from "node:crypto";
import { type BrokerOptions, connectBroker, endAsync } from "../protocol/connect.js";
import { type Cell, markdownTable } from "../util/table.js";
import { acceptsAnonymous, anonymousWarning } from "./anonymous-probe.js";
import { collectFeedback, FeedbackHistory, type RetrainPolicy } from "./feedback.js";
import { type DeviceView, FleetMonitor } from "./monitor.js";
import type { FleetStore } from "./store.js";

export type WatchMode = "table" | "lines" | "json";

export interface WatchOptions {
  broker: BrokerOptions;
  fleet: string;
  mode: WatchMode;
  store?: FleetStore;
  /** The retraining trigger for the feedback stored in `store` (default: 50 negatives in 7 days). */
  retrain?: RetrainPolicy;
  /** A fixed MQTT client id: a persistent session, so the broker keeps feedback while watch is away. */
  clientId?: string;
  /** Where the anonymous-broker warning and refused messages also go (default: stderr). */
  warn?: (text: string) => void;
  /** Stop after this long (default: until the signal aborts). */
  durationS?: number;
  signal?: AbortSignal;
  write?: (text: string) => void;
}

const headers = [
  "device",
  "state",
  "bdSeq",
  "profile",
  "cpu %",
  "temp °C",
  "rss MB",
  "tok/s",
  "mJ/token",
  "method",
  "seq",
  "age s",
];

export function deviceRow(v: DeviceView, now = Date.now()): Cell[] {
  const m = v.telemetry?.m;
  return [
    v.device,
    v.state,
    v.bdSeq,
    v.birth?.profile,
    m?.cpu_pct,
    m?.temp_c,
    m?.rss_mb,
    m?.tok_s,
    m?.mj_per_token,
    m?.method,
    v.telemetry?.seq,
    v.lastSeenMs ? Math.round((now - v.lastSeenMs) / 1000) : null,
  ];
}

export function renderDevices(devices: Iterable<DeviceView>): string {
  const rows = [...devices].sort((a, b) => a.device.localeCompare(b.device)).map((v) => deviceRow(v));
  return markdownTable(headers, rows);
}

/**
 * Live fleet state and telemetry: a table redrawn every second on a TTY, one line per event
 * otherwise, JSON lines with `json`. Telemetry is stored when a store is given.
 */
export async function watchFleet(o: WatchOptions): Promise<void> {
  const write = o.write ?? ((t: string) => process.stdout.write(t));
  const client = await connectBroker(o.broker, {
    clientId: o.clientId ?? `itera-watch-${randomBytes(4).toString("hex")}`,
    clean: o.clientId === undefined,
  });
  const monitor = new FleetMonitor(client, o.fleet, o.store);
  const line = (obj: Record<string, unknown>) => {
    if (o.mode === "json") write(`${JSON.stringify({ ts: Date.now(), ...obj })}\n`);
    else if (o.mode === "lines") {
      write(
        `${new Date().toISOString()} ${Object.entries(obj)
          .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : String(v)}`)
          .join(" ")}\n`,
      );
    }
  };
  monitor.on("state", (v) => line({ type: "state", device: v.device, state: v.state, bdSeq: v.bdSeq }));
  monitor.on("birth", (v) =>
    line({ type: "birth", device: v.device, bdSeq: v.birth?.bdSeq, profile: v.birth?.profile }),
  );
  monitor.on("telemetry", (v, t, fresh) => {
    if (fresh) line({ type: "telemetry", device: v.device, bdSeq: t.bdSeq, seq: t.seq, m: t.m });
  });
  monitor.on("status", (device, s) =>
    line({ type: "status", device, jobId: s.jobId, execNo: s.execNo, status: s.status, details: s.details }),
  );
  monitor.on("result", (device, r) =>
    line({
      type: "result",
      device,
      jobId: r.jobId,
      execNo: r.execNo,
      status: r.status,
      results: r.results.length,
    }),
  );
  monitor.on("invalid", (topic, error) => line({ type: "invalid", topic, error }));
  const warn = o.warn ?? ((t: string) => process.stderr.write(t));
  let banner = "";
  monitor.on("refused", (topic, reason) => {
    line({ type: "refused", topic, reason });
    warn(`refused a message on ${topic}: ${reason}\n`);
  });
  // With a database, watch is also the fleet's feedback collector and retraining trigger. It
  // subscribes first: its birth subscription must get the retained births (the client does not
  // subscribe twice to one filter, so after the monitor's it would see only later ones).
  const feedback = o.store ? new FeedbackHistory(o.store.path, o.retrain) : undefined;
  if (feedback) {
    await collectFeedback(client, o.fleet, feedback, {
      feedback: (device, m, stored) =>
        line({
          type: "feedback",
          device,
          generation: m.requestId,
          rating: m.rating,
          model: m.model.id,
          stored,
        }),
      retraining: (e) => {
        line({ type: "retraining_requested", ...e });
        warn(
          `retraining requested for ${e.model.id} (${e.model.sha256.slice(0, 12)}): ${e.negatives} negative ratings\n`,
        );
      },
      invalid: (topic, error) => line({ type: "invalid", topic, error }),
    });
  }
  await monitor.subscribe();
  if (await acceptsAnonymous(o.broker)) {
    const message = anonymousWarning(o.broker.url);
    line({ type: "warning", anonymousBroker: true, message });
    warn(`\nWARNING: ${message}\n\n`);
    // The redrawn table clears the screen, so it carries the warning itself.
    banner = `WARNING: anonymous broker: anyone can publish as any device (see stderr)\n`;
  }

  let redraw: NodeJS.Timeout | undefined;
  if (o.mode === "table") {
    const draw = () =>
      write(
        `\x1b[H\x1b[2J${banner}${o.fleet}: ${monitor.devices.size} devices\n\n${renderDevices(monitor.devices.values())}\n`,
      );
    draw();
    redraw = setInterval(draw, 1000);
  }
  await new Promise<void>((resolve) => {
    const timer = o.durationS ? setTimeout(resolve, o.durationS * 1000) : undefined;
    o.signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });
  clearInterval(redraw);
  await endAsync(client);
  feedback?.close();
}
