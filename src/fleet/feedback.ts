import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import type { MqttClient } from "mqtt";
import { IteraError } from "../errors.js";
import {
  type FeedbackMessage,
  feedbackMessageSchema,
  type RetrainingEvent,
  retrainingTopic,
} from "../protocol/feedback.js";
import {
  type BirthPayload,
  birthSchema,
  decode,
  type ModelRef,
  PROTOCOL_VERSION,
  releaseOf,
} from "../protocol/schemas.js";
import { fleetFilter, parseTopic } from "../protocol/topics.js";
import { compareRates, variantLabel, wilson } from "./variants.js";

/**
 * The coordinator's side of feedback (docs/fleet.md, "Feedback and retraining"): every device's
 * ratings kept in the fleet database, and the retraining trigger.
 *
 * Policy: per fleet and model version (model id + sha256 of its ONNX file), when `threshold`
 * negative ratings (default 50) have arrived whose rating times lie within `windowMs` (default 7
 * days) of each other and after the previous request for that version, the coordinator records a
 * "retraining requested" event and publishes it retained on `itera/v1/{fleet}/_events/retraining`.
 * A generation counts once (its latest rating); a message delivered twice is stored once.
 */
export interface RetrainPolicy {
  threshold: number;
  windowMs: number;
}

export const DEFAULT_RETRAIN_POLICY: RetrainPolicy = { threshold: 50, windowMs: 7 * 24 * 3_600_000 };

export interface StoredFleetFeedback {
  fleet: string;
  device: string;
  generation_id: string;
  ts: number;
  generated_ts: number;
  rating: number;
  model: ModelRef;
  prompt: string;
  text: string;
  correction: string | null;
  comment: string;
  /** The device's A/B variant when it made the generation (from its births; null: none announced). */
  variant: string | null;
  /** The device's release version then (null: no birth seen before the rating). */
  agent_version: string | null;
}

export interface FeedbackFilter {
  fleet?: string;
  model?: string;
  /**
   * An A/B variant's name (`itera fleet update --variant`), `release <version>` (devices without
   * one), a quantization (`int8`), or the beginning of the model's sha256 (at least 6 hex digits).
   */
  variant?: string;
}

interface FeedbackRow {
  fleet: string;
  device: string;
  generation_id: string;
  ts: number;
  generated_ts: number;
  rating: number;
  model_id: string;
  model_sha256: string;
  quant: string;
  prompt: string;
  text: string;
  correction: string | null;
  comment: string;
  variant: string | null;
  agent_version: string | null;
}

/** Feedback and events in the fleet database (the same file as `FleetStore`, tables of their own). */
export class FeedbackHistory {
  private readonly db: Database.Database;

  constructor(
    readonly path: string,
    readonly policy: RetrainPolicy = DEFAULT_RETRAIN_POLICY,
  ) {
    try {
      if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
      this.db = new Database(path);
      this.db.pragma("busy_timeout = 5000");
      this.db.pragma("journal_mode = WAL");
      this.db.exec(`
        CREATE TABLE IF NOT EXISTS feedback (
          fleet TEXT NOT NULL, device TEXT NOT NULL, generation_id TEXT NOT NULL, ts INTEGER NOT NULL,
          generated_ts INTEGER NOT NULL, rating INTEGER NOT NULL, model_id TEXT NOT NULL,
          model_sha256 TEXT NOT NULL, quant TEXT NOT NULL, prompt TEXT NOT NULL, text TEXT NOT NULL,
          correction TEXT, comment TEXT NOT NULL, received_ms INTEGER NOT NULL,
          PRIMARY KEY (fleet, device, generation_id));
        CREATE INDEX IF NOT EXISTS feedback_version ON feedback (fleet, model_id, model_sha256, ts);
        CREATE TABLE IF NOT EXISTS feedback_events (
          id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, fleet TEXT NOT NULL, event TEXT NOT NULL,
          model_id TEXT NOT NULL, model_sha256 TEXT NOT NULL, until_ts INTEGER NOT NULL, payload TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS device_variants (
          fleet TEXT NOT NULL, device TEXT NOT NULL, since_ts INTEGER NOT NULL, variant TEXT,
          agent_version TEXT NOT NULL, PRIMARY KEY (fleet, device, since_ts));
      `);
      // Databases written before A/B variants: ratings stored then have none.
      const columns = this.db.prepare("PRAGMA table_info(feedback)").all() as Array<{ name: string }>;
      if (!columns.some((c) => c.name === "variant"))
        this.db.exec(
          "ALTER TABLE feedback ADD COLUMN variant TEXT; ALTER TABLE feedback ADD COLUMN agent_version TEXT",
        );
    } catch (e) {
      throw new IteraError(`cannot open the fleet database: ${(e as Error).message}`, {
        where: path,
        fix: "pass a writable path with --db",
      });
    }
  }

  /**
   * Keep one feedback message; returns whether it was new (or a newer rating of the same generation)
   * and the retraining event it triggered, if any.
   */
  add(fleet: string, device: string, m: FeedbackMessage): { stored: boolean; event?: RetrainingEvent } {
    return this.db.transaction(() => {
      const at = this.variantAt(fleet, device, m.generated_ts);
      const stored =
        this.db
          .prepare(
            `INSERT INTO feedback (fleet, device, generation_id, ts, generated_ts, rating, model_id, model_sha256,
               quant, prompt, text, correction, comment, received_ms, variant, agent_version)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (fleet, device, generation_id) DO UPDATE SET ts = excluded.ts, rating = excluded.rating,
               correction = excluded.correction, comment = excluded.comment, received_ms = excluded.received_ms
             WHERE excluded.ts > feedback.ts`,
          )
          .run(
            fleet,
            device,
            m.requestId,
            m.ts,
            m.generated_ts,
            m.rating,
            m.model.id,
            m.model.sha256,
            m.model.quant,
            m.prompt,
            m.text,
            m.correction,
            m.comment,
            Date.now(),
            at?.variant ?? null,
            at?.agent_version ?? null,
          ).changes > 0;
      if (!stored || m.rating >= 0) return { stored };
      const event = this.check(fleet, m.model, m.ts);
      return event ? { stored, event } : { stored };
    })();
  }

  /**
   * Remember a device's variant and release from its birth (a row each time they change), so that a
   * rating is counted for the variant the device ran when it generated, even if it arrives later.
   */
  noteBirth(fleet: string, device: string, birth: BirthPayload): void {
    const last = this.variantAt(fleet, device, Number.MAX_SAFE_INTEGER);
    if (last && last.variant === (birth.variant ?? null) && last.agent_version === releaseOf(birth)) return;
    this.db
      .prepare(
        "INSERT OR IGNORE INTO device_variants (fleet, device, since_ts, variant, agent_version) VALUES (?, ?, ?, ?, ?)",
      )
      .run(fleet, device, birth.ts, birth.variant ?? null, releaseOf(birth));
  }

  /** The variant and release a device announced last before `ts` (its clock), else its first known. */
  private variantAt(
    fleet: string,
    device: string,
    ts: number,
  ): { variant: string | null; agent_version: string } | undefined {
    const q = (sql: string, ...args: Array<string | number>) =>
      this.db.prepare(sql).get(...args) as { variant: string | null; agent_version: string } | undefined;
    return (
      q(
        "SELECT variant, agent_version FROM device_variants WHERE fleet = ? AND device = ? AND since_ts <= ? ORDER BY since_ts DESC LIMIT 1",
        fleet,
        device,
        ts,
      ) ??
      q(
        "SELECT variant, agent_version FROM device_variants WHERE fleet = ? AND device = ? ORDER BY since_ts LIMIT 1",
        fleet,
        device,
      )
    );
  }

  /** The policy on one model version, as of a negative rating at `ts`. */
  private check(fleet: string, model: ModelRef, ts: number): RetrainingEvent | undefined {
    const last = this.db
      .prepare(
        "SELECT MAX(until_ts) AS t FROM feedback_events WHERE fleet = ? AND model_id = ? AND model_sha256 = ? AND event = 'retraining_requested'",
      )
      .get(fleet, model.id, model.sha256) as { t: number | null };
    const from = Math.max(ts - this.policy.windowMs, last.t ?? Number.NEGATIVE_INFINITY);
    const row = this.db
      .prepare(
        `SELECT COUNT(*) AS n, MIN(ts) AS since FROM feedback WHERE fleet = ? AND model_id = ? AND model_sha256 = ?
         AND rating < 0 AND ts > ? AND ts <= ?`,
      )
      .get(fleet, model.id, model.sha256, from, ts) as { n: number; since: number | null };
    if (row.n < this.policy.threshold) return undefined;
    const event: RetrainingEvent = {
      v: PROTOCOL_VERSION,
      ts: Date.now(),
      event: "retraining_requested",
      fleet,
      model: { id: model.id, sha256: model.sha256, quant: model.quant },
      negatives: row.n,
      threshold: this.policy.threshold,
      window_ms: this.policy.windowMs,
      since_ts: row.since ?? ts,
    };
    this.db
      .prepare(
        "INSERT INTO feedback_events (ts, fleet, event, model_id, model_sha256, until_ts, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
      )
      .run(event.ts, fleet, event.event, model.id, model.sha256, ts, JSON.stringify(event));
    return event;
  }

  feedback(filter: FeedbackFilter = {}): StoredFleetFeedback[] {
    const parts: string[] = [];
    const args: Array<string | number> = [];
    if (filter.fleet) {
      parts.push("fleet = ?");
      args.push(filter.fleet);
    }
    if (filter.model) {
      parts.push("model_id = ?");
      args.push(filter.model);
    }
    if (filter.variant) {
      parts.push(
        "(variant = ? OR (variant IS NULL AND 'release ' || agent_version = ?) OR quant = ? OR (length(?) >= 6 AND substr(model_sha256, 1, length(?)) = lower(?)))",
      );
      args.push(...Array<string>(6).fill(filter.variant));
    }
    const where = parts.length > 0 ? `WHERE ${parts.join(" AND ")}` : "";
    const rows = this.db
      .prepare(`SELECT * FROM feedback ${where} ORDER BY ts, device, generation_id`)
      .all(...args) as FeedbackRow[];
    return rows.map((r) => ({
      fleet: r.fleet,
      device: r.device,
      generation_id: r.generation_id,
      ts: r.ts,
      generated_ts: r.generated_ts,
      rating: r.rating,
      model: { id: r.model_id, sha256: r.model_sha256, quant: r.quant },
      prompt: r.prompt,
      text: r.text,
      correction: r.correction,
      comment: r.comment,
      variant: r.variant,
      agent_version: r.agent_version,
    }));
  }

  events(filter: { fleet?: string } = {}): RetrainingEvent[] {
    const rows = (
      filter.fleet
        ? this.db.prepare("SELECT payload FROM feedback_events WHERE fleet = ? ORDER BY id").all(filter.fleet)
        : this.db.prepare("SELECT payload FROM feedback_events ORDER BY id").all()
    ) as Array<{ payload: string }>;
    return rows.map((r) => JSON.parse(r.payload) as RetrainingEvent);
  }

  close(): void {
    this.db.close();
  }
}

export interface FeedbackListener {
  feedback(device: string, m: FeedbackMessage, stored: boolean): void;
  retraining(event: RetrainingEvent): void;
  invalid(topic: string, error: string): void;
}

/**
 * Subscribe a coordinator's client to a fleet's feedback: each valid message is stored, and a
 * retraining event it triggers is published (retained, QoS 1) for training pipelines. Call it before
 * anything else on this client subscribes to the births (MQTT.js does not subscribe to a filter
 * twice, and the retained births come with the first subscription).
 */
export async function collectFeedback(
  client: MqttClient,
  fleet: string,
  history: FeedbackHistory,
  on: Partial<FeedbackListener> = {},
): Promise<void> {
  client.on("message", (topic, payload) => {
    const t = parseTopic(topic);
    if (t?.kind === "birth" && t.fleet === fleet && payload.byteLength > 0) {
      const b = decode(birthSchema, payload);
      if (b.ok) history.noteBirth(fleet, t.device, b.value);
      return;
    }
    if (t?.kind !== "feedback" || t.fleet !== fleet || payload.byteLength === 0) return;
    const d = decode(feedbackMessageSchema, payload);
    if (!d.ok) {
      on.invalid?.(topic, d.error);
      return;
    }
    const { stored, event } = history.add(fleet, t.device, d.value);
    on.feedback?.(t.device, d.value, stored);
    if (event) {
      client.publish(retrainingTopic(fleet), JSON.stringify(event), { qos: 1, retain: true });
      on.retraining?.(event);
    }
  });
  // Births too: each rating is counted for the variant its device announced (A/B variants).
  await client.subscribeAsync([fleetFilter(fleet, "feedback"), fleetFilter(fleet, "birth")], { qos: 1 });
}

/** One A/B variant's ratings: the positive rate among rated (+/−) generations with its 95 % Wilson interval. */
export interface VariantSummary {
  variant: string;
  devices: number;
  ratings: number;
  positive: number;
  negative: number;
  corrections: number;
  /** positive / (positive + negative); null with no +/− rating. */
  positive_rate: number | null;
  negative_rate: number | null;
  positive_ci95: { low: number; high: number } | null;
}

/** Ratings per variant (variantLabel: the variant's name, else `release <version>`), side by side. */
export function summarizeVariants(rows: readonly StoredFleetFeedback[]): {
  variants: VariantSummary[];
  comparison: string;
} {
  const by = new Map<string, VariantSummary & { deviceSet: Set<string> }>();
  for (const r of rows) {
    const label = variantLabel(r.variant, r.agent_version);
    let s = by.get(label);
    if (!s) {
      s = {
        variant: label,
        devices: 0,
        ratings: 0,
        positive: 0,
        negative: 0,
        corrections: 0,
        positive_rate: null,
        negative_rate: null,
        positive_ci95: null,
        deviceSet: new Set(),
      };
      by.set(label, s);
    }
    s.deviceSet.add(`${r.fleet}/${r.device}`);
    s.ratings++;
    if (r.rating > 0) s.positive++;
    if (r.rating < 0) s.negative++;
    if (r.correction !== null) s.corrections++;
  }
  const variants = [...by.values()]
    .sort((a, b) => a.variant.localeCompare(b.variant))
    .map(({ deviceSet, ...s }) => {
      const rated = s.positive + s.negative;
      return {
        ...s,
        devices: deviceSet.size,
        positive_rate: rated > 0 ? s.positive / rated : null,
        negative_rate: rated > 0 ? s.negative / rated : null,
        positive_ci95: wilson(s.positive, rated),
      };
    });
  const comparison = compareRates(
    variants.map((v) => ({ label: v.variant, positive: v.positive, rated: v.positive + v.negative })),
  );
  return { variants, comparison };
}
