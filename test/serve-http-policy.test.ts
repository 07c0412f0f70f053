import { request as httpRequest } from "node:http";
import { join } from "node:path";
import { brotliDecompressSync, gunzipSync } from "node:zlib";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadProfile } from "../src/profile/load.js";
import { type LanguageModel, loadModel } from "../src/runtime/index.js";
import { createServer, type Server } from "../src/serve/index.js";
import { defaultRateLimit } from "../src/serve/http-policy.js";

/**
 * The API's client policy on a real server with the real house model: the per-client rate limit
 * (429 + Retry-After), CORS only for allowed origins, and compressed answers that decode to the
 * same JSON as plain ones.
 */
const MODEL_DIR = join(import.meta.dirname, "..", "models", "itera-lite-micro");
const silent = pino({ level: "silent" });
let model: LanguageModel;
const servers: Server[] = [];

async function start(options: Partial<Parameters<typeof createServer>[0]> = {}): Promise<string> {
  const s = await createServer({
    model,
    modelDir: MODEL_DIR,
    profile: await loadProfile("laptop-x64-4c"),
    threads: 1,
    logger: silent,
    ...options,
  });
  servers.push(s);
  const url = await s.listen("127.0.0.1", 0);
  await s.ready;
  return url;
}

interface Raw {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** One request through node:http, so the bytes come back as sent (fetch would decode them). */
function raw(url: string, method: string, headers: Record<string, string>, body?: unknown): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = httpRequest(
      url,
      {
        method,
        headers: { ...headers, ...(payload !== undefined && { "content-type": "application/json" }) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}

beforeAll(async () => {
  model = await loadModel(MODEL_DIR, { threads: 1 });
});

afterAll(async () => {
  for (const s of servers) await s.close();
  await model?.dispose();
});

describe("rate limit", () => {
  it("answers 429 with Retry-After once a client passes the limit; /healthz is never limited", async () => {
    const url = await start({ rateLimit: { max: 3, windowMs: 60_000 } });
    for (let i = 0; i < 3; i++) {
      const r = await fetch(`${url}/v1/info`);
      expect(r.status).toBe(200);
      expect(r.headers.get("x-ratelimit-limit")).toBe("3");
    }
    const refused = await fetch(`${url}/v1/info`);
    expect(refused.status).toBe(429);
    const retry = Number(refused.headers.get("retry-after"));
    expect(retry).toBeGreaterThanOrEqual(1);
    expect(retry).toBeLessThanOrEqual(60);
    const body = (await refused.json()) as {
      error: { code: number; type: string; where: string; fix: string };
    };
    expect(body.error).toMatchObject({ code: 429, type: "rate_limit_error", where: "client" });
    expect(body.error.fix).toContain("Retry-After");
    // Generation is refused the same way, before any model work.
    const gen = await fetch(`${url}/v1/generate`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "ROMEO:", max_tokens: 2 }),
    });
    expect(gen.status).toBe(429);
    for (let i = 0; i < 5; i++) expect((await fetch(`${url}/healthz`)).status).toBe(200);
  });

  it("is off unless configured, and off by default on a loopback address only", async () => {
    const url = await start();
    for (let i = 0; i < 20; i++) expect((await fetch(`${url}/v1/info`)).status).toBe(200);
    expect(defaultRateLimit("127.0.0.1")).toBe(0);
    expect(defaultRateLimit("::1")).toBe(0);
    expect(defaultRateLimit("0.0.0.0")).toBeGreaterThan(0);
    expect(defaultRateLimit("192.168.1.20")).toBeGreaterThan(0);
  });
});

describe("CORS", () => {
  const allowed = "https://app.example.org";

  it("sends Access-Control headers only to allowed origins, and preflights need no API key", async () => {
    const url = await start({ corsOrigins: [allowed], apiKey: "k".repeat(32) });
    const auth = { authorization: `Bearer ${"k".repeat(32)}` };
    const ok = await raw(`${url}/v1/info`, "GET", { origin: allowed, ...auth });
    expect(ok.status).toBe(200);
    expect(ok.headers["access-control-allow-origin"]).toBe(allowed);
    expect(String(ok.headers["access-control-expose-headers"])).toContain("retry-after");

    const other = await raw(`${url}/v1/info`, "GET", { origin: "https://evil.example.net", ...auth });
    expect(other.status).toBe(200); // the server answers; the browser withholds it without the header
    expect(other.headers["access-control-allow-origin"]).toBeUndefined();

    const preflight = await raw(`${url}/v1/generate`, "OPTIONS", {
      origin: allowed,
      "access-control-request-method": "POST",
      "access-control-request-headers": "content-type, authorization",
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers["access-control-allow-origin"]).toBe(allowed);
    expect(String(preflight.headers["access-control-allow-methods"])).toContain("POST");
    expect(String(preflight.headers["access-control-allow-headers"])).toContain("authorization");

    const badPreflight = await raw(`${url}/v1/generate`, "OPTIONS", {
      origin: "https://evil.example.net",
      "access-control-request-method": "POST",
    });
    expect(badPreflight.headers["access-control-allow-origin"]).toBeUndefined();
    // The key still guards the endpoints themselves.
    expect((await raw(`${url}/v1/info`, "GET", { origin: allowed })).status).toBe(401);
  });

  it("is off by default: no Access-Control headers for any origin", async () => {
    const url = await start();
    const r = await raw(`${url}/v1/info`, "GET", { origin: allowed });
    expect(r.status).toBe(200);
    expect(r.headers["access-control-allow-origin"]).toBeUndefined();
    const preflight = await raw(`${url}/v1/generate`, "OPTIONS", {
      origin: allowed,
      "access-control-request-method": "POST",
    });
    expect(preflight.status).toBe(405);
  });
});

describe("compression", () => {
  // Greedy and long enough that the JSON (tokens array included) is well over the 1 KiB threshold.
  const body = { prompt: "ROMEO:", max_tokens: 300, temperature: 0, ignore_eos: true };
  const same = (j: { text: string; tokens: number[]; model: string }) => ({
    model: j.model,
    text: j.text,
    tokens: j.tokens,
  });

  it("compresses with gzip or brotli as the client accepts, decoding to the same JSON", async () => {
    const url = await start();
    const plain = await raw(`${url}/v1/generate`, "POST", { "accept-encoding": "identity" }, body);
    expect(plain.status).toBe(200);
    expect(plain.headers["content-encoding"]).toBeUndefined();
    const reference = JSON.parse(plain.body.toString("utf8"));
    expect(plain.body.length).toBeGreaterThan(1024);

    const gz = await raw(`${url}/v1/generate`, "POST", { "accept-encoding": "gzip" }, body);
    expect(gz.headers["content-encoding"]).toBe("gzip");
    expect(gz.body.length).toBeLessThan(plain.body.length);
    expect(same(JSON.parse(gunzipSync(gz.body).toString("utf8")))).toEqual(same(reference));

    const br = await raw(`${url}/v1/generate`, "POST", { "accept-encoding": "br" }, body);
    expect(br.headers["content-encoding"]).toBe("br");
    expect(same(JSON.parse(brotliDecompressSync(br.body).toString("utf8")))).toEqual(same(reference));

    const metrics = await raw(`${url}/metrics`, "GET", { "accept-encoding": "gzip" });
    expect(metrics.headers["content-encoding"]).toBe("gzip");
    expect(gunzipSync(metrics.body).toString("utf8")).toContain("itera_generations_total");

    // Streams are never compressed: every token must reach the client as it is generated.
    const stream = await raw(
      `${url}/v1/generate`,
      "POST",
      { "accept-encoding": "gzip" },
      { ...body, stream: true },
    );
    expect(stream.headers["content-type"]).toContain("text/event-stream");
    expect(stream.headers["content-encoding"]).toBeUndefined();
    expect(stream.body.toString("utf8")).toContain("event: done");
  });

  it("can be turned off", async () => {
    const url = await start({ compression: false });
    const r = await raw(`${url}/v1/generate`, "POST", { "accept-encoding": "gzip, br" }, body);
    expect(r.status).toBe(200);
    expect(r.headers["content-encoding"]).toBeUndefined();
    expect(JSON.parse(r.body.toString("utf8")).tokens).toHaveLength(300);
  });
});
