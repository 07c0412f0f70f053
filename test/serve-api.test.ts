import { cp, writeFile } from "node:fs/promises";
import { join } from "node:path";
import Fastify from "fastify";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { type LanguageModel, loadModel } from "../src/runtime/index.js";
import { fixtureModels, reference } from "./fixtures/runtime/models.js";
import { loadProfile } from "../src/profile/load.js";
import { createServer, type Server } from "../src/serve/index.js";
import { EventStream } from "../src/serve/sse.js";
import { metricValue, parseSse, postJson, readEvents } from "./serve-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * The HTTP API on a real server (random free port) with the real house model
 * models/itera-lite-micro in ONNX Runtime: answers are compared with the runtime's own generations.
 */
const MODEL_DIR = join(import.meta.dirname, "..", "models", "itera-lite-micro");
const PROMPT = "ROMEO:\nWhat say";
/** max_tokens of a generation far longer than any test waits for (the servers that take it allow it). */
const LONG = 1_000_000;
const silent = pino({ level: "silent" });

let model: LanguageModel;
let server: Server;
let base: string;

async function start(
  options: Partial<Parameters<typeof createServer>[0]> = {},
): Promise<{ server: Server; base: string }> {
  const s = await createServer({
    model,
    modelDir: MODEL_DIR,
    profile: await loadProfile("laptop-x64-4c"),
    threads: 1,
    logger: silent,
    ...options,
  });
  const url = await s.listen("127.0.0.1", 0);
  await s.ready;
  return { server: s, base: url };
}

/** Start a long greedy stream that holds the model until `abort` is called; resolves after its first token. */
async function holdModel(url: string, maxTokens = 2000): Promise<AbortController> {
  const abort = new AbortController();
  // Sampled, so decoded one call per token: greedy decoding of this model runs fused, and 2000
  // greedy tokens would be over in a fraction of a second.
  const r = await postJson(
    `${url}/v1/generate`,
    { prompt: PROMPT, max_tokens: maxTokens, temperature: 1, seed: 1, ignore_eos: true, stream: true },
    { signal: abort.signal },
  );
  await readEvents(r, 1);
  return abort;
}

interface QueueState {
  generating: boolean;
  waiting: number;
}

/** Wait until the server's queue (as /healthz reports it) satisfies `ok`. */
async function until(url: string, ok: (q: QueueState) => boolean): Promise<void> {
  await vi.waitFor(
    async () => {
      const q = (await (await fetch(`${url}/healthz`)).json()) as QueueState;
      if (!ok(q)) throw new Error(`queue: ${JSON.stringify(q)}`);
    },
    { timeout: 60_000, interval: 20 },
  );
}

/** Wait until no generation runs or waits (after a cancelled one). */
const idle = (url: string) => until(url, (q) => !q.generating && q.waiting === 0);

beforeAll(async () => {
  model = await loadModel(MODEL_DIR, { threads: 1 });
  ({ server, base } = await start({ maxTokensLimit: 4000 }));
});

afterAll(async () => {
  await server?.close();
  await model?.dispose();
});

describe("health and info", () => {
  it("GET /healthz: 200 with the model loaded", async () => {
    const r = await fetch(`${base}/healthz`);
    expect(r.status).toBe(200);
    const body = (await r.json()) as Record<string, unknown>;
    expect(body).toMatchObject({
      status: "ok",
      model_loaded: true,
      model: "itera-lite-micro",
      generating: false,
    });
    expect(r.headers.get("x-request-id")).toBeTruthy();
  });

  it("HEAD works on GET paths; a client's x-request-id is returned", async () => {
    const head = await fetch(`${base}/healthz`, { method: "HEAD" });
    expect(head.status).toBe(200);
    const r = await fetch(`${base}/healthz`, { headers: { "x-request-id": "abc-123" } });
    expect(r.headers.get("x-request-id")).toBe("abc-123");
  });

  it("GET /healthz is 503 while the model loads, generation too (Retry-After), then 200", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const s = await createServer({
      model: async () => {
        await gate;
        return loadModel(MODEL_DIR, { threads: 1 });
      },
      modelDir: MODEL_DIR,
      logger: silent,
    });
    try {
      const url = await s.listen("127.0.0.1", 0);
      const loading = await fetch(`${url}/healthz`);
      expect(loading.status).toBe(503);
      expect(await loading.json()).toMatchObject({ status: "loading", model_loaded: false });
      const gen = await postJson(`${url}/v1/generate`, { prompt: "a" });
      expect(gen.status).toBe(503);
      expect(Number(gen.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect(((await gen.json()) as { error: { type: string } }).error.type).toBe("unavailable_error");
      release();
      await s.ready;
      expect((await fetch(`${url}/healthz`)).status).toBe(200);
    } finally {
      await s.close();
    }
  });

  it("a model that fails to load: `ready` rejects, /healthz and generation answer 503 saying so", async () => {
    const broken = await tempDir("itera-serve-broken-");
    await cp(MODEL_DIR, broken, { recursive: true });
    await writeFile(join(broken, "model.onnx"), "not an ONNX file");
    const s = await createServer({ model: () => loadModel(broken), modelDir: broken, logger: silent });
    try {
      const url = await s.listen("127.0.0.1", 0);
      await expect(s.ready).rejects.toThrow("ONNX Runtime cannot load the graph");
      const health = await fetch(`${url}/healthz`);
      expect(health.status).toBe(503);
      expect(await health.json()).toMatchObject({ status: "failed", model_loaded: false });
      const gen = await postJson(`${url}/v1/generate`, { prompt: "a" });
      expect(gen.status).toBe(503);
      expect(((await gen.json()) as { error: { message: string } }).error.message).toContain(
        "the model failed to load",
      );
    } finally {
      await s.close();
    }
  });

  it("GET /v1/info: model card, profile, runtime and hardware", async () => {
    const r = await fetch(`${base}/v1/info`);
    expect(r.status).toBe(200);
    const info = (await r.json()) as {
      agent: { version: string; mode: string };
      runtime: { onnxruntime: string };
      model: { id: string; sha256: string; status: string; context_length: number; card: { id: string } };
      profile: { name: string };
      hardware: { cpu: { cores: number } };
      server: { max_tokens_limit: number; threads: number };
    };
    expect(info.model).toMatchObject({ id: "itera-lite-micro", status: "ready", context_length: 4096 });
    expect(info.model.card.id).toBe("itera-lite-micro");
    expect(info.model.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(info.profile.name).toBe("laptop-x64-4c");
    expect(info.runtime.onnxruntime).toMatch(/^1\.\d+/);
    expect(info.hardware.cpu.cores).toBeGreaterThan(0);
    expect(info.server).toMatchObject({ max_tokens_limit: 4000, threads: 1 });
    expect(info.agent.mode).toBe("dev");
  });
});

describe("POST /v1/generate", () => {
  it("greedy output equals the runtime's greedy output for the same prompt", async () => {
    const own = await model.generate(PROMPT, { maxTokens: 40, temperature: 0 });
    const r = await postJson(`${base}/v1/generate`, { prompt: PROMPT, max_tokens: 40, temperature: 0 });
    expect(r.status).toBe(200);
    const body = (await r.json()) as {
      text: string;
      tokens: number[];
      stop_reason: string;
      usage: { prompt_tokens: number; completion_tokens: number };
      timings: Record<string, number | null>;
    };
    expect(body.text).toBe(own.text);
    expect(body.tokens).toEqual(own.ids);
    expect(body.stop_reason).toBe(own.stopReason);
    expect(body.usage).toEqual({ prompt_tokens: own.promptIds.length, completion_tokens: own.ids.length });
    expect(body.timings.ttft_ms).toBeGreaterThan(0);
    expect(body.timings.tokens_per_s).toBeGreaterThan(0);
    expect(Object.keys(body.timings).sort()).toEqual(
      [
        "decode_ms",
        "prefill_ms",
        "prefill_tokens_per_s",
        "queue_ms",
        "tokens_per_s",
        "total_ms",
        "ttft_ms",
      ].sort(),
    );
  });

  it("seeded sampling equals the runtime's with the same options; token-id prompts work", async () => {
    const opts = { maxTokens: 30, temperature: 0.9, topK: 10, topP: 0.9, repetitionPenalty: 1.2, seed: 11 };
    const own = await model.generate(PROMPT, opts);
    const r = await postJson(`${base}/v1/generate`, {
      prompt: model.tokenizer.encode(PROMPT, true),
      max_tokens: 30,
      temperature: 0.9,
      top_k: 10,
      top_p: 0.9,
      repetition_penalty: 1.2,
      seed: 11,
    });
    const body = (await r.json()) as { text: string; seed: number };
    expect(body.text).toBe(own.text);
    expect(body.seed).toBe(11);
  });

  it("without max_tokens: the model's default (search.max_length minus the prompt), within the server's limit", async () => {
    const { server: s, base: url } = await start({ maxTokensLimit: 7 });
    try {
      const capped = await postJson(`${url}/v1/generate`, {
        prompt: PROMPT,
        temperature: 0,
        ignore_eos: true,
      });
      expect(((await capped.json()) as { tokens: number[] }).tokens).toHaveLength(7);
    } finally {
      await s.close();
    }
    const maxLength = model.config.search!.max_length!;
    const prompt = new Array(maxLength - 5).fill(model.tokenizer.encode("a", false)[0]);
    const r = await postJson(`${base}/v1/generate`, { prompt, temperature: 0, ignore_eos: true });
    expect(((await r.json()) as { tokens: number[] }).tokens).toHaveLength(5);
  });

  it("stops at a stop string, which is cut from the text", async () => {
    const own = await model.generate(PROMPT, { maxTokens: 60, temperature: 0, ignoreEos: true });
    const stop = own.text.slice(10, 12);
    const r = await postJson(`${base}/v1/generate`, {
      prompt: PROMPT,
      max_tokens: 60,
      temperature: 0,
      ignore_eos: true,
      stop: [stop],
    });
    const body = (await r.json()) as { text: string; stop_reason: string };
    expect(body.stop_reason).toBe("stop");
    expect(body.text).toBe(own.text.slice(0, own.text.indexOf(stop)));
  });

  it("stream: one SSE event per token, then `done`; the events concatenate to the same text", async () => {
    const own = await model.generate(PROMPT, { maxTokens: 50, temperature: 0, ignoreEos: true });
    const r = await postJson(`${base}/v1/generate`, {
      prompt: PROMPT,
      max_tokens: 50,
      temperature: 0,
      ignore_eos: true,
      stream: true,
    });
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const events = parseSse(await r.text());
    const tokens = events.filter((e) => e.event === "token").map((e) => JSON.parse(e.data));
    expect(tokens).toHaveLength(50);
    expect(tokens.map((t) => t.id)).toEqual(own.ids);
    expect(tokens.map((t) => t.index)).toEqual([...Array(50).keys()]);
    expect(tokens.map((t) => t.text).join("")).toBe(own.text);
    const last = events.at(-1)!;
    expect(last.event).toBe("done");
    const done = JSON.parse(last.data);
    expect(done.text).toBe(own.text);
    expect(done.stop_reason).toBe("max_tokens");
    expect(done.timings.tokens_per_s).toBeGreaterThan(0);
  });
});

describe("Server-Sent Events", () => {
  it("a silent stream sends keep-alive comments, which a client's parser skips", async () => {
    const app = Fastify();
    let stream: EventStream | undefined;
    app.get("/quiet", async (_request, reply) => {
      stream = new EventStream(reply, 10);
      stream.send({ n: 1 }, "first");
      return reply;
    });
    const url = await app.listen({ host: "127.0.0.1", port: 0 });
    try {
      const r = await fetch(`${url}/quiet`);
      expect(r.headers.get("content-type")).toMatch(/^text\/event-stream/);
      const reader = r.body!.getReader();
      const decoder = new TextDecoder();
      let text = "";
      // Read until a heartbeat has come after the event; nothing else is sent meanwhile.
      while (!text.includes(": keep-alive\n\n")) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`the stream ended without a heartbeat: ${text}`);
        text += decoder.decode(value);
      }
      stream!.end();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += decoder.decode(value);
      }
      expect(text.startsWith('event: first\ndata: {"n":1}\n\n: keep-alive\n\n')).toBe(true);
      expect(parseSse(text)).toEqual([{ event: "first", data: '{"n":1}' }]);
    } finally {
      await app.close();
    }
  });
});

describe("POST /v1/completions (OpenAI subset)", () => {
  it("answers OpenAI's shape; greedy text equals the runtime's", async () => {
    const own = await model.generate(PROMPT, { maxTokens: 16, temperature: 0 });
    const r = await postJson(`${base}/v1/completions`, { model: "anything", prompt: PROMPT, temperature: 0 });
    expect(r.status).toBe(200);
    const body = (await r.json()) as {
      id: string;
      object: string;
      model: string;
      choices: { text: string; index: number; finish_reason: string; logprobs: null }[];
      usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
    };
    expect(body.id).toMatch(/^cmpl-/);
    expect(body.object).toBe("text_completion");
    expect(body.model).toBe("itera-lite-micro");
    expect(body.choices).toEqual([
      {
        text: own.text,
        index: 0,
        logprobs: null,
        finish_reason: own.stopReason === "eos" ? "stop" : "length",
      },
    ]);
    expect(body.usage.completion_tokens).toBe(own.ids.length);
    expect(body.usage.total_tokens).toBe(own.promptIds.length + own.ids.length);
  });

  it("streams OpenAI chunks ending with finish_reason and [DONE]", async () => {
    const own = await model.generate(PROMPT, { maxTokens: 24, temperature: 0 });
    const r = await postJson(`${base}/v1/completions`, {
      prompt: [PROMPT],
      max_tokens: 24,
      temperature: 0,
      stream: true,
    });
    const events = parseSse(await r.text());
    expect(events.every((e) => e.event === undefined)).toBe(true);
    expect(events.at(-1)!.data).toBe("[DONE]");
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e.data));
    expect(chunks.map((c) => c.choices[0].text).join("")).toBe(own.text);
    expect(chunks.at(-1).choices[0].finish_reason).toBe(own.stopReason === "eos" ? "stop" : "length");
    expect(chunks.slice(0, -1).every((c) => c.choices[0].finish_reason === null)).toBe(true);
  });

  it("GET /v1/models lists the one model; stream_options.include_usage adds a usage chunk", async () => {
    const models = (await (await fetch(`${base}/v1/models`)).json()) as {
      object: string;
      data: { id: string }[];
    };
    expect(models.object).toBe("list");
    expect(models.data.map((m) => m.id)).toEqual(["itera-lite-micro"]);
    const r = await postJson(`${base}/v1/completions`, {
      prompt: PROMPT,
      max_tokens: 5,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    const events = parseSse(await r.text());
    const usage = JSON.parse(events.at(-2)!.data) as {
      choices: unknown[];
      usage: { completion_tokens: number };
    };
    expect(usage.choices).toEqual([]);
    expect(usage.usage.completion_tokens).toBeLessThanOrEqual(5);
    expect(usage.usage.completion_tokens).toBeGreaterThan(0);
  });
});

describe("bad requests: 400 naming the field", () => {
  const cases: [string, string, unknown, string][] = [
    ["missing prompt", "/v1/generate", { max_tokens: 5 }, "body.prompt"],
    ["prompt of the wrong type", "/v1/generate", { prompt: 42 }, "body.prompt"],
    ["empty prompt", "/v1/generate", { prompt: "" }, "body.prompt"],
    ["max_tokens 0", "/v1/generate", { prompt: "a", max_tokens: 0 }, "body.max_tokens"],
    ["max_tokens above the limit", "/v1/generate", { prompt: "a", max_tokens: 4001 }, "body.max_tokens"],
    ["negative temperature", "/v1/generate", { prompt: "a", temperature: -1 }, "body.temperature"],
    ["top_p 0", "/v1/generate", { prompt: "a", top_p: 0 }, "body.top_p"],
    ["fractional top_k", "/v1/generate", { prompt: "a", top_k: 1.5 }, "body.top_k"],
    ["seed as a string", "/v1/generate", { prompt: "a", seed: "x" }, "body.seed"],
    ["an empty stop string", "/v1/generate", { prompt: "a", stop: ["ok", ""] }, "body.stop.1"],
    ["stream not a boolean", "/v1/generate", { prompt: "a", stream: "yes" }, "body.stream"],
    ["a misspelt field", "/v1/generate", { prompt: "a", maxTokens: 5 }, "body.maxTokens"],
    ["a token id outside the vocabulary", "/v1/generate", { prompt: [1, 2, 66] }, "body.prompt"],
    ["a negative token id", "/v1/generate", { prompt: [1, -2] }, "body.prompt.1"],
    ["a prompt longer than the context", "/v1/generate", { prompt: "a".repeat(4097) }, "body.prompt"],
    ["a JSON array body", "/v1/generate", [1, 2], "body"],
    ["n > 1 on completions", "/v1/completions", { prompt: "a", n: 2 }, "body.n"],
    ["logprobs on completions", "/v1/completions", { prompt: "a", logprobs: 5 }, "body.logprobs"],
    ["two prompts on completions", "/v1/completions", { prompt: ["a", "b"] }, "body.prompt"],
    [
      "temperature above 2 on completions",
      "/v1/completions",
      { prompt: "a", temperature: 2.5 },
      "body.temperature",
    ],
  ];
  it.each(cases)("%s", async (_name, path, body, where) => {
    const r = await postJson(`${base}${path}`, body);
    expect(r.status).toBe(400);
    expect(r.headers.get("content-type")).toMatch(/^application\/json/);
    const { error } = (await r.json()) as {
      error: { code: number; type: string; message: string; where: string; fix: string };
    };
    expect(error).toMatchObject({ code: 400, type: "invalid_request_error", where });
    expect(error.message.length).toBeGreaterThan(0);
    expect(error.fix.length).toBeGreaterThan(0);
    const field = where.split(".")[1];
    if (field) expect(`${error.message} ${error.fix}`).toContain(field);
  });

  it("says which field is missing, and which one a misspelt field meant", async () => {
    const missing = (await (await postJson(`${base}/v1/generate`, { max_tokens: 5 })).json()) as {
      error: { message: string };
    };
    expect(missing.error.message).toBe("missing field 'prompt'");
    const misspelt = (await (
      await postJson(`${base}/v1/generate`, { prompt: "a", maxTokens: 5 })
    ).json()) as {
      error: { message: string; fix: string };
    };
    expect(misspelt.error.message).toBe("unknown field 'maxTokens'");
    expect(misspelt.error.fix).toBe("write 'max_tokens' for 'maxTokens'");
  });

  it("invalid JSON: 400 on the body", async () => {
    const r = await postJson(`${base}/v1/generate`, '{"prompt": "a",');
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { where: string } }).error.where).toBe("body");
  });

  it("a body that is not JSON: 415 naming Content-Type", async () => {
    const r = await fetch(`${base}/v1/generate`, {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: "hello",
    });
    expect(r.status).toBe(415);
    expect(((await r.json()) as { error: { where: string } }).error.where).toBe("header.content-type");
  });

  it("a body over 1 MiB: 413", async () => {
    const r = await postJson(`${base}/v1/generate`, { prompt: "a".repeat(1100 * 1024) });
    expect(r.status).toBe(413);
    expect(((await r.json()) as { error: { where: string } }).error.where).toBe("body");
  });

  it("no body: 400 on the body", async () => {
    const r = await fetch(`${base}/v1/generate`, { method: "POST" });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { where: string; fix: string } }).error).toMatchObject({
      where: "body",
    });
  });
});

describe("API key", () => {
  it("with apiKey set, everything but /healthz needs `Authorization: Bearer <key>`", async () => {
    const key = "k".repeat(32);
    const { server: s, base: url } = await start({ apiKey: key });
    try {
      expect((await fetch(`${url}/healthz`)).status).toBe(200);
      const none = await postJson(`${url}/v1/generate`, { prompt: "a", max_tokens: 2 });
      expect(none.status).toBe(401);
      expect(none.headers.get("www-authenticate")).toBe("Bearer");
      expect(((await none.json()) as { error: { type: string; message: string } }).error).toMatchObject({
        type: "authentication_error",
        message: "this server needs an API key",
      });
      const wrong = await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${key}x` } });
      expect(wrong.status).toBe(401);
      const ok = await postJson(
        `${url}/v1/generate`,
        { prompt: "a", max_tokens: 2 },
        { headers: { authorization: `Bearer ${key}` } },
      );
      expect(ok.status).toBe(200);
      const m = await (await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${key}` } })).text();
      expect(metricValue(m, "itera_http_requests_total", { status_code: "401" })).toBe(2);
    } finally {
      await s.close();
    }
  });
});

describe("unknown routes", () => {
  it("404 with the list of endpoints", async () => {
    const r = await fetch(`${base}/v1/nope`);
    expect(r.status).toBe(404);
    const { error } = (await r.json()) as { error: { type: string; where: string; fix: string } };
    expect(error).toMatchObject({ type: "not_found_error", where: "/v1/nope" });
    expect(error.fix).toContain("POST /v1/generate");
  });

  it("404 for chat completions says to use /v1/completions", async () => {
    const r = await postJson(`${base}/v1/chat/completions`, { messages: [] });
    expect(r.status).toBe(404);
    expect(((await r.json()) as { error: { fix: string } }).error.fix).toContain("use POST /v1/completions");
  });

  it("405 with Allow for a known path and the wrong method", async () => {
    const r = await fetch(`${base}/v1/generate`);
    expect(r.status).toBe(405);
    expect(r.headers.get("allow")).toBe("POST");
  });
});

describe("GET /metrics", () => {
  it("exposes the counters, histograms and process metrics, and they increase", async () => {
    const scrape = async () => {
      const r = await fetch(`${base}/metrics`);
      expect(r.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
      return r.text();
    };
    const before = await scrape();
    for (const name of [
      "itera_http_requests_total",
      "itera_generated_tokens_total",
      "itera_prompt_tokens_total",
      "itera_generation_duration_seconds",
      "itera_time_to_first_token_seconds",
      "itera_tokens_per_second",
      "itera_queue_waiting",
      "itera_model_info",
      "process_cpu_user_seconds_total",
      "process_resident_memory_bytes",
      "nodejs_eventloop_lag_seconds",
    ]) {
      expect(before).toContain(`# TYPE ${name} `);
    }
    const okGenerate = { method: "POST", route: "/v1/generate", status_code: "200" };
    const r = await postJson(`${base}/v1/generate`, {
      prompt: PROMPT,
      max_tokens: 20,
      ignore_eos: true,
      temperature: 0,
    });
    const body = (await r.json()) as { usage: { prompt_tokens: number }; timings: { tokens_per_s: number } };
    await postJson(`${base}/v1/generate`, { prompt: 5 });
    const after = await scrape();
    const delta = (name: string, labels: Record<string, string> = {}) =>
      metricValue(after, name, labels) - metricValue(before, name, labels);
    expect(delta("itera_generated_tokens_total")).toBe(20);
    expect(delta("itera_prompt_tokens_total")).toBe(body.usage.prompt_tokens);
    expect(delta("itera_http_requests_total", okGenerate)).toBe(1);
    expect(delta("itera_http_requests_total", { route: "/v1/generate", status_code: "400" })).toBe(1);
    expect(delta("itera_generations_total", { endpoint: "generate", outcome: "max_tokens" })).toBe(1);
    expect(delta("itera_generation_duration_seconds_count")).toBe(1);
    expect(delta("itera_time_to_first_token_seconds_count")).toBe(1);
    expect(metricValue(after, "itera_tokens_per_second")).toBeCloseTo(body.timings.tokens_per_s, 1);
    expect(
      metricValue(after, "itera_model_info", { model: "itera-lite-micro", profile: "laptop-x64-4c" }),
    ).toBe(1);
  });
});

describe("a KV-cache model (the GPT-2 fixture exported from PyTorch)", () => {
  it("greedy tokens equal PyTorch's; a prompt that fills the context is a 400 before any stream starts", async () => {
    const dir = join(fixtureModels(), "gpt2-kv");
    const ref = reference(dir);
    const kv = await loadModel(dir, { threads: 1 });
    const s = await createServer({ model: kv, modelDir: dir, logger: silent });
    try {
      const url = await s.listen("127.0.0.1", 0);
      const r = await postJson(`${url}/v1/generate`, {
        prompt: ref.first.input_ids,
        max_tokens: ref.first.greedy_ids.length,
        temperature: 0,
        ignore_eos: true,
      });
      expect(((await r.json()) as { tokens: number[] }).tokens).toEqual(ref.first.greedy_ids);
      const full = await postJson(`${url}/v1/generate`, {
        prompt: new Array(kv.contextLength).fill(1),
        stream: true,
      });
      expect(full.status).toBe(400);
      const { error } = (await full.json()) as { error: { where: string; message: string } };
      expect(error.where).toBe("body.prompt");
      expect(error.message).toContain("leaving no room to generate");
      const atLimit = await postJson(`${url}/v1/generate`, {
        prompt: new Array(kv.contextLength - 1).fill(1),
        max_tokens: 5,
        temperature: 0,
        ignore_eos: true,
      });
      expect(((await atLimit.json()) as { stop_reason: string }).stop_reason).toBe("context");
    } finally {
      await s.close();
      await kv.dispose();
    }
  });
});

describe("one generation at a time", () => {
  it("concurrent requests are serialised: each answer equals the same request run alone", async () => {
    const requests = [1, 2, 3, 4].map((seed) => ({
      prompt: `${PROMPT} ${seed}`,
      max_tokens: 40,
      temperature: 1,
      seed,
      ignore_eos: true,
    }));
    const alone = [];
    for (const q of requests) {
      alone.push(
        (await model.generate(q.prompt, { maxTokens: 40, temperature: 1, seed: q.seed, ignoreEos: true }))
          .text,
      );
    }
    // A long stream holds the model: the four must wait in the queue, not run beside it.
    const holderAbort = await holdModel(base);
    const answers = Promise.all(requests.map((q) => postJson(`${base}/v1/generate`, q)));
    await until(base, (q) => q.generating && q.waiting === 4);
    holderAbort.abort();
    const done = await answers;
    const bodies = (await Promise.all(done.map((a) => a.json()))) as {
      text: string;
      timings: { queue_ms: number };
    }[];
    expect(done.map((a) => a.status)).toEqual([200, 200, 200, 200]);
    expect(bodies.map((b) => b.text)).toEqual(alone);
    expect(bodies.every((b) => b.timings.queue_ms > 0)).toBe(true);
    await idle(base);
  });

  it("a full queue answers 503 with Retry-After; a client that leaves gives up its place or its generation", async () => {
    const { server: s, base: url } = await start({
      queue: { maxWaitMs: 600_000, maxWaiting: 1 },
      maxTokensLimit: LONG,
    });
    try {
      const runningAbort = await holdModel(url, LONG);
      // The second waits in the queue...
      const waitingAbort = new AbortController();
      const waiting = postJson(`${url}/v1/generate`, { prompt: "a" }, { signal: waitingAbort.signal }).catch(
        (e: Error) => e,
      );
      await until(url, (q) => q.waiting === 1);
      // ...so the third finds the queue full.
      const full = await postJson(`${url}/v1/generate`, { prompt: "a" });
      expect(full.status).toBe(503);
      expect(Number(full.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      const { error } = (await full.json()) as { error: { type: string; message: string } };
      expect(error.type).toBe("unavailable_error");
      expect(error.message).toContain("waiting");
      // The waiting client leaves: its place is freed without it ever running.
      waitingAbort.abort();
      expect(await waiting).toBeInstanceOf(Error);
      await until(url, (q) => q.waiting === 0);
      // The streaming client leaves: its generation stops long before its tokens run out.
      runningAbort.abort();
      await idle(url);
      const m = await (await fetch(`${url}/metrics`)).text();
      expect(metricValue(m, "itera_generations_total", { outcome: "cancelled" })).toBe(1);
      expect(metricValue(m, "itera_generated_tokens_total")).toBeLessThan(LONG);
      expect(metricValue(m, "itera_queue_rejected_total", { reason: "full" })).toBe(1);
      expect(metricValue(m, "itera_http_requests_total", { route: "/v1/generate", status_code: "499" })).toBe(
        2,
      );
      // The model is free again.
      const after = await postJson(`${url}/v1/generate`, { prompt: "a", max_tokens: 3 });
      expect(after.status).toBe(200);
    } finally {
      await s.close();
    }
  });

  it("a client that leaves a JSON (non-streaming) request cancels its generation", async () => {
    const { server: s, base: url } = await start({ maxTokensLimit: LONG });
    try {
      const abort = new AbortController();
      const pending = postJson(
        `${url}/v1/generate`,
        { prompt: PROMPT, max_tokens: LONG, temperature: 1, seed: 1, ignore_eos: true },
        { signal: abort.signal },
      ).catch((e: Error) => e);
      await until(url, (q) => q.generating);
      abort.abort();
      expect(await pending).toBeInstanceOf(Error);
      await idle(url);
      const m = await (await fetch(`${url}/metrics`)).text();
      expect(metricValue(m, "itera_generations_total", { outcome: "cancelled" })).toBe(1);
      expect(metricValue(m, "itera_generated_tokens_total")).toBeLessThan(LONG);
    } finally {
      await s.close();
    }
  });

  it("closing the server ends the streams in progress with a 503 error event, and resolves", async () => {
    const { server: s, base: url } = await start({ maxTokensLimit: LONG });
    const r = await postJson(`${url}/v1/generate`, {
      prompt: PROMPT,
      max_tokens: LONG,
      temperature: 1,
      seed: 1,
      ignore_eos: true,
      stream: true,
    });
    await until(url, (q) => q.generating);
    await s.close();
    const events = parseSse(await r.text());
    expect(events.length).toBeGreaterThan(0);
    expect(events.length).toBeLessThan(LONG);
    expect(events.slice(0, -1).every((e) => e.event === "token")).toBe(true);
    expect(events.at(-1)!.event).toBe("error");
    expect(JSON.parse(events.at(-1)!.data)).toMatchObject({
      error: { code: 503, type: "unavailable_error" },
    });
  });

  it("a request that would wait longer than the limit gets 503 (limit 0: never wait)", async () => {
    const { server: s, base: url } = await start({
      queue: { maxWaitMs: 0, maxWaiting: 8 },
      maxTokensLimit: 1_000_000,
    });
    try {
      const abort = await holdModel(url, 1_000_000);
      const refused = await postJson(`${url}/v1/completions`, { prompt: "a" });
      expect(refused.status).toBe(503);
      expect(refused.headers.get("retry-after")).toMatch(/^\d+$/);
      expect(((await refused.json()) as { error: { message: string } }).error.message).toContain("busy");
      abort.abort();
      await idle(url);
      const m = await (await fetch(`${url}/metrics`)).text();
      expect(metricValue(m, "itera_queue_rejected_total", { reason: "timeout" })).toBe(1);
    } finally {
      await s.close();
    }
  });
});
