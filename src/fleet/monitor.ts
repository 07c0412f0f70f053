import { EventEmitter } from "node:events";
import type { MqttClient } from "mqtt";
import {
  type BirthPayload,
  birthSchema,
  decode,
  type JobResultPayload,
  type JobStatusPayload,
  jobResultSchema,
  jobStatusSchema,
  type StatePayload,
  stateSchema,
  type TelemetryPayload,
  telemetrySchema,
  releaseOf,
} from "../protocol/schemas.js";
import { fleetFilter, parseTopic, sharedFilter } from "../protocol/topics.js";
import type { FleetStore } from "./store.js";
import { variantLabel } from "./variants.js";

export interface DeviceView {
  device: string;
  state: StatePayload["state"] | "unknown";
  /** The newest session seen (from birth or state): older Last Wills are stale and ignored. */
  bdSeq: number;
  birth: BirthPayload | undefined;
  telemetry: TelemetryPayload | undefined;
  telemetryCount: number;
  lastSeenMs: number;
}

export interface MonitorEvents {
  /** A new session of a device (first sight, reconnect, or restart): not a re-delivered retained birth. */
  birth: [device: DeviceView];
  state: [device: DeviceView];
  telemetry: [device: DeviceView, t: TelemetryPayload, fresh: boolean];
  status: [device: string, s: JobStatusPayload];
  result: [device: string, r: JobResultPayload];
  invalid: [topic: string, error: string];
  /** A message refused because it claims another device or job than its topic (never stored). */
  refused: [topic: string, reason: string];
}

export interface MonitorStats {
  messages: number;
  invalid: number;
  refused: number;
  duplicateTelemetry: number;
}

/**
 * A coordinator's view of one fleet: devices (from retained state/birth), their telemetry, and job
 * status/result messages, each validated. Telemetry is de-duplicated by (device, bdSeq, seq) through
 * the store. A telemetry, status or result message whose payload names another device (or job)
 * than its topic is refused: on a broker with per-device ACLs the topic is what the device was
 * allowed to publish to, so a payload claiming otherwise is forged or misrouted. With `shareGroup`, job results come through a shared subscription, so several
 * coordinators can split them on a broker that supports `$share` (MQTT 5, e.g. Mosquitto, EMQX, HiveMQ).
 */
export class FleetMonitor extends EventEmitter<MonitorEvents> {
  readonly devices = new Map<string, DeviceView>();
  readonly stats: MonitorStats = { messages: 0, invalid: 0, refused: 0, duplicateTelemetry: 0 };
  private readonly seenTelemetry = new Set<string>();

  constructor(
    private readonly client: MqttClient,
    readonly fleet: string,
    private readonly store?: FleetStore,
    private readonly opts: { shareGroup?: string; results?: boolean } = {},
  ) {
    super();
    client.on("message", (topic, payload) => this.onMessage(topic, payload));
  }

  async subscribe(): Promise<void> {
    const f = this.fleet;
    const filters = [fleetFilter(f, "state"), fleetFilter(f, "birth"), fleetFilter(f, "telemetry")];
    if (this.opts.results !== false) {
      filters.push(fleetFilter(f, "status"));
      const results = fleetFilter(f, "result");
      filters.push(this.opts.shareGroup ? sharedFilter(this.opts.shareGroup, results) : results);
    }
    const granted = await this.client.subscribeAsync(filters, { qos: 1 });
    const refused = granted.filter((g) => g.qos > 2);
    if (refused.length > 0) {
      throw new Error(`the broker refused the subscription to ${refused.map((g) => g.topic).join(", ")}`);
    }
  }

  private view(device: string): DeviceView {
    let d = this.devices.get(device);
    if (!d) {
      d = {
        device,
        state: "unknown",
        bdSeq: -1,
        birth: undefined,
        telemetry: undefined,
        telemetryCount: 0,
        lastSeenMs: 0,
      };
      this.devices.set(device, d);
    }
    return d;
  }

  private onMessage(topic: string, payload: Buffer): void {
    this.stats.messages++;
    const t = parseTopic(topic);
    if (!t || t.fleet !== this.fleet) return;
    if (payload.byteLength === 0) return; // a cleared retained message
    const bad = (error: string) => {
      this.stats.invalid++;
      this.emit("invalid", topic, error);
    };
    const refuse = (reason: string) => {
      this.stats.refused++;
      this.emit("refused", topic, reason);
    };
    switch (t.kind) {
      case "state": {
        const d = decode(stateSchema, payload);
        if (!d.ok) {
          bad(d.error);
          return;
        }
        const v = this.view(t.device);
        // A Last Will from an older session arrives after the new birth: it is stale.
        if (d.value.bdSeq < v.bdSeq) return;
        v.bdSeq = d.value.bdSeq;
        v.state = d.value.state;
        v.lastSeenMs = Date.now();
        this.emit("state", v);
        return;
      }
      case "birth": {
        const d = decode(birthSchema, payload);
        if (!d.ok) {
          bad(d.error);
          return;
        }
        const v = this.view(t.device);
        const prev = v.birth;
        const b = d.value;
        // A retained birth delivered again is the same session; a lower bdSeq with an older
        // timestamp is a stale message; a lower bdSeq with a newer timestamp is a device whose
        // state was reset (re-flashed), which starts counting again.
        if (prev && b.bdSeq === prev.bdSeq && b.ts === prev.ts) return;
        if (prev && b.bdSeq < prev.bdSeq && b.ts <= prev.ts) return;
        v.birth = b;
        // The state topic is authoritative for its session (a retained `offline`/`lost` with the
        // same bdSeq may arrive before or after the retained birth); a newer session is online.
        if (b.bdSeq > v.bdSeq || v.state === "unknown" || (prev && b.bdSeq < prev.bdSeq)) {
          v.bdSeq = b.bdSeq;
          v.state = "online";
        }
        v.lastSeenMs = Date.now();
        this.emit("birth", v);
        return;
      }
      case "telemetry": {
        const d = decode(telemetrySchema, payload);
        if (!d.ok) {
          bad(d.error);
          return;
        }
        const mismatch = claimsOther(d.value, t.device);
        if (mismatch) {
          refuse(mismatch);
          return;
        }
        const v = this.view(t.device);
        const key = `${t.device}\u0000${d.value.bdSeq}\u0000${d.value.seq}`;
        const fresh = this.store
          ? this.store.addTelemetry(this.fleet, t.device, d.value, telemetryVariant(v, d.value))
          : !this.seenTelemetry.has(key) && Boolean(this.seenTelemetry.add(key));
        if (!fresh) this.stats.duplicateTelemetry++;
        if (fresh) v.telemetryCount++;
        if (!v.telemetry || d.value.seq >= v.telemetry.seq) v.telemetry = d.value;
        v.lastSeenMs = Date.now();
        this.emit("telemetry", v, d.value, fresh);
        return;
      }
      case "status": {
        const d = decode(jobStatusSchema, payload);
        if (!d.ok) {
          bad(d.error);
          return;
        }
        const mismatch = claimsOther(d.value, t.device, t.jobId);
        if (mismatch) {
          refuse(mismatch);
          return;
        }
        this.emit("status", t.device, d.value);
        return;
      }
      case "result": {
        const d = decode(jobResultSchema, payload);
        if (!d.ok) {
          bad(d.error);
          return;
        }
        const mismatch =
          claimsOther(d.value, t.device, t.jobId) ??
          d.value.results
            .map((r, i) =>
              r.device === t.device
                ? undefined
                : `results.${i}.device is '${r.device}' but the topic is device '${t.device}'s`,
            )
            .find((m) => m !== undefined);
        if (mismatch) {
          refuse(mismatch);
          return;
        }
        this.emit("result", t.device, d.value);
        return;
      }
      default:
        return;
    }
  }
}

/**
 * Why a payload does not belong to its topic: a `device` field (optional in the protocol) naming
 * another device, or a `jobId` other than the topic's; undefined when it matches.
 */
function claimsOther(payload: object, device: string, jobId?: string): string | undefined {
  const claimed = (payload as { device?: unknown }).device;
  if (claimed !== undefined && claimed !== device) {
    return `the payload's device is ${JSON.stringify(claimed)} but the topic is device '${device}'s`;
  }
  const job = (payload as { jobId?: unknown }).jobId;
  if (jobId !== undefined && job !== jobId) {
    return `the payload's jobId is ${JSON.stringify(job)} but the topic is job '${jobId}'`;
  }
  return undefined;
}

/**
 * A telemetry message's variant label: the one it names, else (a release without a variant) the
 * version of its session's birth; null when that birth is not known (telemetry of an older session).
 */
function telemetryVariant(v: DeviceView, t: TelemetryPayload): string | null {
  if (t.variant) return t.variant;
  return v.birth?.bdSeq === t.bdSeq ? variantLabel(v.birth.variant, releaseOf(v.birth)) : null;
}
