/**
 * Feedback from a device's HTTP API to the coordinator's store, and the retraining trigger (issue
 * #20): the built CLIs (`itera-agent serve` and `itera-agent agent` on one state folder, `itera
 * fleet watch --db`, `itera fleet feedback`, `itera fleet history --events`), a real Mosquitto
 * restarted in the middle, the real house micro model.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import Database from "better-sqlite3";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mayPublish } from "../src/fleet/broker-auth.js";
import { FeedbackHistory } from "../src/fleet/feedback.js";
import type { FeedbackMessage, RetrainingEvent } from "../src/protocol/feedback.js";
import { retrainingTopic } from "../src/protocol/feedback.js";
import { deviceTopic } from "../src/protocol/topics.js";
import { freePort, Mosquitto, until } from "./mqtt-helpers.js";
import { postJson } from "./serve-helpers.js";
import { tempDir } from "./temp-dir.js";

const AGENT = resolve("dist/cli/itera-agent.js");
const ITERA = resolve("dist/cli/itera.js");
const MODEL = resolve("models/itera-lite-micro");
const run = promisify(execFile);

let broker: Mosquitto;
let dir: string;
const procs: ChildProcess[] = [];

beforeAll(async () => {
  broker = await Mosquitto.create();
  dir = await tempDir("itera-fleet-feedback-");
});

afterAll(async () => {
  for (const p of procs) if (p.exitCode === null) p.kill("SIGKILL");
  await broker?.stop();
});

/** A built CLI as a process; stdout lines and stderr kept. */
function cli(script: string, args: string[]) {
  const proc = spawn(process.execPath, [script, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  procs.push(proc);
  const out = { stdout: "", stderr: "" };
  proc.stdout!.on("data", (d: Buffer) => {
    out.stdout += d.toString();
  });
  proc.stderr!.on("data", (d: Buffer) => {
    out.stderr += d.toString();
  });
  return {
    proc,
    out,
    lines: () =>
      out.stdout
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l)),
  };
}

async function stop(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null) return;
  await new Promise((r) => {
    p.once("exit", r);
    p.kill("SIGTERM");
  });
}

/** Sample a sqlite file without holding it open. */
function query<T>(file: string, sql: string): T[] {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare(sql).all() as T[];
  } finally {
    db.close();
  }
}

describe("feedback from the HTTP API to the coordinator", () => {
  it("a rating posted to serve while the broker is down reaches the coordinator's store after the restart", async () => {
    const state = join(dir, "device-state");
    const db = join(dir, "fleet.db");
    const port = await freePort();
    const watch = cli(ITERA, [
      "fleet",
      "watch",
      "--broker",
      broker.url,
      "--fleet",
      "lab",
      "--db",
      db,
      "--json",
      "--client-id",
      "coord-1",
    ]);
    const agent = cli(AGENT, [
      "agent",
      "--broker",
      broker.url,
      "--fleet",
      "lab",
      "--device",
      "dev-1",
      "--state-dir",
      state,
      "--telemetry-interval",
      "0.3",
      "--model",
      MODEL,
      "--profile",
      "rpi4",
      "--meter",
      "tdp",
    ]);
    const serve = cli(AGENT, [
      "serve",
      "--port",
      String(port),
      "--state-dir",
      state,
      "--model",
      MODEL,
      "--profile",
      "rpi4",
      "--log-level",
      "warn",
    ]);
    const base = `http://127.0.0.1:${port}`;
    await until(
      () => watch.lines().some((l) => l.type === "birth" && l.device === "dev-1"),
      "the agent's birth",
      60_000,
    );
    let ready = false;
    while (!ready) {
      ready = await fetch(`${base}/healthz`)
        .then((r) => r.ok)
        .catch(() => false);
      if (!ready) await new Promise((r) => setTimeout(r, 100));
    }

    const g = (await (
      await postJson(`${base}/v1/generate`, { prompt: "ROMEO:", max_tokens: 16, temperature: 0 })
    ).json()) as { id: string; text: string };

    await broker.stop();
    const correction = "ROMEO:\nBut soft, what light through yonder window breaks?";
    const r = await postJson(`${base}/v1/feedback`, { generation_id: g.id, rating: -1, correction });
    expect(r.status).toBe(201);
    // The agent moves it into its outbox with the next telemetry tick; nothing can leave yet.
    const outbox = join(state, "agent.db");
    await until(
      () =>
        query<{ n: number }>(outbox, "SELECT COUNT(*) AS n FROM outbox WHERE topic LIKE '%/feedback'")[0]!
          .n === 1,
      "the feedback in the agent's outbox",
    );
    expect(watch.lines().some((l) => l.type === "feedback")).toBe(false);

    await broker.start();
    await until(
      () => watch.lines().some((l) => l.type === "feedback"),
      "the feedback at the coordinator",
      60_000,
    );
    await until(
      () =>
        query<{ n: number }>(outbox, "SELECT COUNT(*) AS n FROM outbox WHERE topic LIKE '%/feedback'")[0]!
          .n === 0,
      "the outbox acknowledged",
    );

    const exported = join(dir, "feedback.jsonl");
    const { stdout } = await run(process.execPath, [
      ITERA,
      "fleet",
      "feedback",
      "--db",
      db,
      "--model",
      "itera-lite-micro",
      "--export",
      exported,
      "--json",
    ]);
    const answer = JSON.parse(stdout) as {
      summary: Array<{ model: string; negative: number; corrections: number }>;
      feedback: Array<{
        device: string;
        generation_id: string;
        rating: number;
        text: string;
        correction: string;
        prompt: string;
      }>;
    };
    expect(answer.feedback).toHaveLength(1);
    expect(answer.feedback[0]).toMatchObject({
      device: "dev-1",
      generation_id: g.id,
      rating: -1,
      prompt: "ROMEO:",
      text: g.text,
      correction,
    });
    expect(answer.summary).toMatchObject([{ model: "itera-lite-micro", negative: 1, corrections: 1 }]);
    const lines = (await readFile(exported, "utf8"))
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(lines).toEqual(answer.feedback);
    // Another model or variant selects nothing.
    const none = JSON.parse(
      (await run(process.execPath, [ITERA, "fleet", "feedback", "--db", db, "--variant", "int4", "--json"]))
        .stdout,
    ) as { feedback: unknown[] };
    expect(none.feedback).toEqual([]);

    for (const p of [serve.proc, agent.proc, watch.proc]) await stop(p);
  }, 180_000);
});

const model = { id: "itera-lite-micro", sha256: "a".repeat(64), quant: "fp32" };
const message = (i: number, rating: 1 | -1, ts: number): FeedbackMessage => ({
  v: 1,
  ts,
  requestId: `gen-${i}`,
  rating,
  comment: "",
  model,
  prompt: "ROMEO:",
  text: "x",
  correction: null,
  generated_ts: ts - 1,
});

describe("the retraining trigger", () => {
  it("fires at the threshold of negative ratings within the window, not before, and once", () => {
    const h = new FeedbackHistory(":memory:", { threshold: 50, windowMs: 3_600_000 });
    const t0 = 1_700_000_000_000;
    // Positive ratings and negatives outside the window do not count.
    for (let i = 0; i < 20; i++)
      expect(h.add("lab", "d1", message(1000 + i, 1, t0 + i)).event).toBeUndefined();
    for (let i = 0; i < 10; i++)
      expect(h.add("lab", "d1", message(2000 + i, -1, t0 - 7_200_000 + i)).event).toBeUndefined();
    for (let i = 0; i < 49; i++) {
      expect(h.add("lab", "d1", message(i, -1, t0 + 1000 + i)).event).toBeUndefined();
      // A message delivered twice is stored once and counts once.
      expect(h.add("lab", "d1", message(i, -1, t0 + 1000 + i))).toEqual({ stored: false });
    }
    // The same generation id on another device is another generation; another model version counts apart.
    const other = { ...message(0, -1, t0 + 1100), model: { ...model, sha256: "b".repeat(64) } };
    expect(h.add("lab", "d2", other).event).toBeUndefined();
    expect(h.events()).toEqual([]);
    const fired = h.add("lab", "d1", message(49, -1, t0 + 2000)).event;
    expect(fired).toMatchObject({
      event: "retraining_requested",
      fleet: "lab",
      negatives: 50,
      threshold: 50,
      model,
    });
    expect(fired!.since_ts).toBe(t0 + 1000);
    // Counting starts again after a request: the 51st negative does not fire a second one.
    expect(h.add("lab", "d1", message(50, -1, t0 + 2001)).event).toBeUndefined();
    expect(h.events()).toHaveLength(1);
    h.close();
  });

  it("the coordinator records the event, shows it in `fleet history --events` and publishes it retained", async () => {
    const db = join(dir, "trigger.db");
    const watch = cli(ITERA, [
      "fleet",
      "watch",
      "--broker",
      broker.url,
      "--fleet",
      "tr",
      "--db",
      db,
      "--json",
      "--retrain-threshold",
      "3",
    ]);
    // Its anonymous-broker warning comes after every subscription is made.
    await until(() => watch.lines().some((l) => l.type === "warning"), "watch subscribed", 30_000);
    const device = mqtt.connect(broker.url, { clientId: "tr-dev", protocolVersion: 5 });
    await new Promise((r) => device.once("connect", r));
    const topic = deviceTopic("tr", "dev-9", "feedback");
    const now = Date.now();
    const send = async (i: number, rating: 1 | -1) => {
      await device.publishAsync(topic, JSON.stringify(message(i, rating, now + i)), { qos: 1 });
      await until(
        () => watch.lines().filter((l) => l.type === "feedback").length >= i + 1,
        `feedback ${i}`,
        30_000,
      );
    };
    await send(0, -1);
    await send(1, 1);
    await send(2, -1);
    expect(watch.lines().some((l) => l.type === "retraining_requested")).toBe(false);
    const history = async () =>
      JSON.parse(
        (await run(process.execPath, [ITERA, "fleet", "history", "--db", db, "--events", "--json"])).stdout,
      ) as RetrainingEvent[];
    expect(await history()).toEqual([]);
    await send(3, -1);
    await until(() => watch.lines().some((l) => l.type === "retraining_requested"), "the event", 30_000);
    const events = await history();
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({
      event: "retraining_requested",
      fleet: "tr",
      negatives: 3,
      threshold: 3,
      model,
    });
    // A training pipeline subscribing later still gets it (retained).
    const pipeline = mqtt.connect(broker.url, { clientId: "tr-pipeline" });
    const got = await new Promise<RetrainingEvent>((res) => {
      pipeline.on("message", (_t, p) => res(JSON.parse(p.toString()) as RetrainingEvent));
      pipeline.subscribe(retrainingTopic("tr"), { qos: 1 });
    });
    expect(got).toEqual(events[0]);
    // On a broker with logins, only a coordinator may publish it (itera broker's rights, as the Mosquitto ACL).
    const policy = { coordinators: new Set(["coordinator"]), readers: new Set(["telegraf"]) };
    expect(mayPublish("coordinator", retrainingTopic("tr"), policy)).toBe(true);
    expect(mayPublish("dev-9", retrainingTopic("tr"), policy)).toBe(false);
    expect(mayPublish("telegraf", retrainingTopic("tr"), policy)).toBe(false);
    const table = (await run(process.execPath, [ITERA, "fleet", "history", "--db", db, "--events"])).stdout;
    expect(table).toContain("retraining_requested");
    await device.endAsync();
    await pipeline.endAsync();
    await stop(watch.proc);
  }, 120_000);
});
