import { join } from "node:path";
import Database from "better-sqlite3";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentStore } from "../src/agent/store.js";
import { loadProfile } from "../src/profile/load.js";
import { feedbackMessageSchema } from "../src/protocol/feedback.js";
import { decode } from "../src/protocol/schemas.js";
import { type LanguageModel, loadModel } from "../src/runtime/index.js";
import { createServer, type Server } from "../src/serve/index.js";
import { parseSse, postJson } from "./serve-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * POST /v1/feedback on a real server with the real house model and a real agent store: generations
 * get ids, ratings are validated, stored in agent.db and become outbox messages of the protocol's
 * feedback schema.
 */
const MODEL_DIR = join(import.meta.dirname, "..", "models", "itera-lite-micro");
const TOPIC = "itera/v1/lab/dev-1/feedback";
let model: LanguageModel;
let dir: string;
let store: AgentStore;
let server: Server;
let base: string;

beforeAll(async () => {
  model = await loadModel(MODEL_DIR, { threads: 1 });
  dir = await tempDir("itera-feedback-");
  store = new AgentStore(dir);
  server = await createServer({
    model,
    modelDir: MODEL_DIR,
    profile: await loadProfile("laptop-x64-4c"),
    threads: 1,
    logger: pino({ level: "silent" }),
    feedback: store,
  });
  base = await server.listen("127.0.0.1", 0);
  await server.ready;
});

afterAll(async () => {
  await server?.close();
  store?.close();
  await model?.dispose();
});

interface ErrorBody {
  error: { code: number; type: string; message: string; where: string; fix: string };
}

function outboxFeedback() {
  return store
    .pending()
    .filter((r) => r.topic === TOPIC)
    .map((r) => {
      const d = decode(feedbackMessageSchema, Buffer.from(r.payload));
      if (!d.ok) throw new Error(d.error);
      return d.value;
    });
}

describe("POST /v1/feedback", () => {
  it("rates a generation by its id; the rating and correction reach the outbox as a feedback message", async () => {
    const g = (await (
      await postJson(`${base}/v1/generate`, { prompt: "ROMEO:", max_tokens: 12, temperature: 0 })
    ).json()) as { id: string; text: string };
    expect(g.id).toMatch(/^gen-[0-9a-f-]{36}$/);
    const r = await postJson(`${base}/v1/feedback`, {
      generation_id: g.id,
      rating: -1,
      correction: "ROMEO:\nI take thee at thy word.",
    });
    expect(r.status).toBe(201);
    expect(await r.json()).toMatchObject({ generation_id: g.id, rating: -1, stored: true });

    expect(store.queueFeedback(TOPIC)).toBe(1);
    expect(store.queueFeedback(TOPIC)).toBe(0); // queued once
    const [m] = outboxFeedback();
    expect(m).toMatchObject({
      requestId: g.id,
      rating: -1,
      prompt: "ROMEO:",
      text: g.text,
      correction: "ROMEO:\nI take thee at thy word.",
      model: { id: "itera-lite-micro" },
    });
    expect(m!.model.sha256).toMatch(/^[0-9a-f]{64}$/);

    // Rating again replaces the first rating and is sent again.
    expect((await postJson(`${base}/v1/feedback`, { generation_id: g.id, rating: 1 })).status).toBe(201);
    expect(store.queueFeedback(TOPIC)).toBe(1);
    expect(outboxFeedback().map((f) => f.rating)).toEqual([-1, 1]);
  });

  it("/v1/completions ids and a stream's final id work too", async () => {
    const c = (await (
      await postJson(`${base}/v1/completions`, { prompt: "JULIET:", max_tokens: 4, temperature: 0 })
    ).json()) as { id: string };
    expect(c.id).toMatch(/^cmpl-/);
    expect((await postJson(`${base}/v1/feedback`, { generation_id: c.id, rating: 1 })).status).toBe(201);

    const s = await postJson(`${base}/v1/generate`, {
      prompt: "KING:",
      max_tokens: 4,
      temperature: 0,
      stream: true,
    });
    const done = parseSse(await s.text()).find((e) => e.event === "done")!;
    const id = (JSON.parse(done.data) as { id: string }).id;
    expect(id).toMatch(/^gen-/);
    expect(store.generation(id)?.prompt).toBe("KING:");
    expect((await postJson(`${base}/v1/feedback`, { generation_id: id, rating: -1 })).status).toBe(201);
  });

  it("refuses an unknown generation and bad fields with a 400 that says how to fix", async () => {
    const unknown = await postJson(`${base}/v1/feedback`, { generation_id: "gen-nope", rating: 1 });
    expect(unknown.status).toBe(400);
    const u = (await unknown.json()) as ErrorBody;
    expect(u.error).toMatchObject({ type: "invalid_request_error", where: "body.generation_id" });
    expect(u.error.message).toContain("gen-nope");
    expect(u.error.fix).toContain("/v1/generate");

    const g = (await (
      await postJson(`${base}/v1/generate`, { prompt: "ROMEO:", max_tokens: 2, temperature: 0 })
    ).json()) as { id: string };
    const cases: Array<[unknown, string, string]> = [
      [{ generation_id: g.id, rating: 2 }, "body.rating", "1 (good) or -1 (bad)"],
      [{ generation_id: g.id, rating: "bad" }, "body.rating", "1 (good) or -1 (bad)"],
      [{ generation_id: g.id }, "body.rating", "1 (good) or -1 (bad)"],
      [{ generation_id: g.id, rating: 1, correction: "" }, "body.correction", "the text the model should"],
      [{ generation_id: g.id, rating: 1, score: 1 }, "body.score", "remove 'score'"],
      [{ rating: 1 }, "body.generation_id", "'id' a /v1/generate"],
    ];
    for (const [body, where, fix] of cases) {
      const r = await postJson(`${base}/v1/feedback`, body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      const e = (await r.json()) as ErrorBody;
      expect(e.error.where).toBe(where);
      expect(e.error.fix).toContain(fix);
    }
    // Nothing of the refused requests was stored.
    expect(store.queueFeedback(TOPIC)).toBe(2); // only the two ratings of the previous test
  });

  it("is a 404 with a fix on a server without a store", async () => {
    const s = await createServer({ model, modelDir: MODEL_DIR, logger: pino({ level: "silent" }) });
    const url = await s.listen("127.0.0.1", 0);
    await s.ready;
    try {
      const g = (await (
        await postJson(`${url}/v1/generate`, { prompt: "ROMEO:", max_tokens: 2, temperature: 0 })
      ).json()) as { id: string };
      expect(g.id).toMatch(/^gen-/);
      const r = await postJson(`${url}/v1/feedback`, { generation_id: g.id, rating: 1 });
      expect(r.status).toBe(404);
      expect(((await r.json()) as ErrorBody).error.fix).toContain("--no-feedback");
    } finally {
      await s.close();
    }
  });
});

describe("agent.db", () => {
  it("a database written before feedback existed opens with its outbox, counters and jobs intact", async () => {
    const old = await tempDir("itera-feedback-old-");
    // The schema as it was before the generations and feedback tables.
    const db = new Database(join(old, "agent.db"));
    db.exec(`
      CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
      CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload TEXT NOT NULL, qos INTEGER NOT NULL);
      CREATE TABLE jobs (job_id TEXT NOT NULL, exec_no INTEGER NOT NULL, status TEXT NOT NULL, details TEXT,
        request TEXT, result TEXT, updated_ms INTEGER NOT NULL, PRIMARY KEY (job_id, exec_no));
      CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
      INSERT INTO counters VALUES ('bdSeq', 41);
      INSERT INTO outbox (topic, payload, qos) VALUES ('itera/v1/lab/d/telemetry', '{"seq":7}', 1);
      INSERT INTO jobs VALUES ('j1', 1, 'QUEUED', NULL, NULL, NULL, 1);
    `);
    db.close();
    const s = new AgentStore(old);
    expect(s.resetNow).toBeUndefined();
    expect(s.next("bdSeq")).toBe(42);
    expect(s.pending().map((r) => r.payload)).toEqual(['{"seq":7}']);
    expect(s.unfinishedJobs().map((j) => j.jobId)).toEqual(["j1"]);
    s.recordGeneration({
      id: "gen-1",
      ts: 1,
      model: { id: "m", sha256: "0".repeat(64), quant: "fp32" },
      prompt: "p",
      text: "t",
    });
    s.putFeedback({ generationId: "gen-1", ts: 2, rating: 1, correction: null, comment: "" });
    expect(s.queueFeedback("itera/v1/lab/d/feedback")).toBe(1);
    s.close();
  });
});
