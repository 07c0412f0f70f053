import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { type LanguageModel, loadModel } from "../src/runtime/index.js";
import { loadTokenizer } from "../src/runtime/tokenizer.js";
import { createServer, type Server } from "../src/serve/index.js";
import { postJson, readEvents } from "./serve-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * Long prompts on the real server with the house model models/itera-lite-micro (a character
 * tokenizer, context 4096): a prompt that cannot fit is refused by its length in characters before
 * it is tokenized or queued, the rest is tokenized in its turn, and /healthz stays responsive.
 */
const MODEL_DIR = join(import.meta.dirname, "..", "models", "itera-lite-micro");
const silent = pino({ level: "silent" });

let model: LanguageModel;
let server: Server;
let base: string;

interface ErrorBody {
  error: { code: number; message: string; where?: string; fix?: string };
}

beforeAll(async () => {
  model = await loadModel(MODEL_DIR, { threads: 1 });
  server = await createServer({
    model,
    modelDir: MODEL_DIR,
    threads: 1,
    logger: silent,
    maxTokensLimit: 1_000_000,
    queue: { maxWaitMs: 600_000, maxWaiting: 1 },
  });
  base = await server.listen("127.0.0.1", 0);
  await server.ready;
});

afterAll(async () => {
  await server?.close();
  await model?.dispose();
});

describe("the prompt's character bound", () => {
  it("the house tokenizer: exact, one token per at most 5 characters (<unk>), and sound on real text", async () => {
    const t = model.tokenizer;
    expect(t.exactCharBound).toBe(true);
    expect(t.charsPerToken).toBe(5);
    for (const text of ["ROMEO:\nWhat say you?", "<unk><unk><unk>", "é😀 \u0301x"]) {
      expect(t.encode(text).length).toBeGreaterThanOrEqual(Math.ceil(text.length / t.charsPerToken));
    }
    expect(server.engine.maxPromptChars(model)).toBe(model.contextLength * 5);
  });

  it("a tokenizer that drops whitespace or makes one unknown of a word is not exact", async () => {
    const dir = await tempDir("itera-tok-");
    const vocab = { "[UNK]": 0, a: 1, "##a": 2 };
    const wordPiece = {
      version: "1.0",
      added_tokens: [],
      normalizer: null,
      pre_tokenizer: { type: "WhitespaceSplit" },
      post_processor: null,
      decoder: null,
      model: { type: "WordPiece", unk_token: "[UNK]", continuing_subword_prefix: "##", vocab },
    };
    await writeFile(join(dir, "tokenizer.json"), JSON.stringify(wordPiece));
    const wp = await loadTokenizer(dir);
    // 10,000 characters, one token: no character bound can hold for it.
    expect(wp.encode(`${" ".repeat(9999)}a`).length).toBe(1);
    expect(wp.exactCharBound).toBe(false);
    const bpe = {
      ...wordPiece,
      model: { type: "BPE", unk_token: "[UNK]", fuse_unk: false, vocab, merges: [] },
    };
    await writeFile(join(dir, "tokenizer.json"), JSON.stringify(bpe));
    expect((await loadTokenizer(dir)).exactCharBound).toBe(false);
    await writeFile(join(dir, "tokenizer.json"), JSON.stringify({ ...bpe, pre_tokenizer: null }));
    expect((await loadTokenizer(dir)).exactCharBound).toBe(true);
  });
});

describe("long prompts on the real server", () => {
  it("eight parallel 1 MB prompts are refused by their length while /healthz answers at once", async () => {
    const huge = "ROMEO: ".repeat(Math.floor(1_000_000 / 7));
    const max = server.engine.maxPromptChars(model);
    const encode = vi.spyOn(model.tokenizer, "encode");
    const requests = Array.from({ length: 8 }, (_, i) =>
      postJson(`${base}/v1/${i % 2 ? "completions" : "generate"}`, { prompt: huge, max_tokens: 4 }),
    );
    const health: number[] = [];
    let settled = false;
    const all = Promise.all(requests).finally(() => {
      settled = true;
    });
    do {
      const t0 = performance.now();
      const h = await fetch(`${base}/healthz`);
      expect(h.status).toBe(200);
      health.push(performance.now() - t0);
    } while (!settled);
    const answers = await all;
    for (const a of answers) {
      expect(a.status).toBe(400);
      const { error } = (await a.json()) as ErrorBody;
      expect(error.where).toBe("body.prompt");
      expect(error.message).toContain(`${huge.length} characters`);
      expect(error.fix).toContain(`at most ${max} characters`);
    }
    // Refused by their length: none was tokenized.
    expect(encode).not.toHaveBeenCalled();
    encode.mockRestore();
    // Before the bound, each such prompt held the event loop for ~1.8 s while it was tokenized
    // (10.8 s for eight); a generous bound, since this machine is shared with other tests.
    expect(Math.max(...health)).toBeLessThan(5000);
    const m = await (await fetch(`${base}/metrics`)).text();
    expect(m).not.toMatch(/^itera_prompt_tokens_total [1-9]/m);
  });

  it("within the character bound but over the context: 400 in tokens, before any stream starts", async () => {
    const prompt = "a".repeat(model.contextLength + 1);
    for (const stream of [false, true]) {
      const r = await postJson(`${base}/v1/generate`, { prompt, stream });
      expect(r.status).toBe(400);
      expect(r.headers.get("content-type")).toContain("application/json");
      const { error } = (await r.json()) as ErrorBody;
      expect(error.where).toBe("body.prompt");
      expect(error.message).toContain(`${model.contextLength + 1} tokens`);
      expect(error.fix).toBe(`shorten the prompt to at most ${model.contextLength} tokens`);
    }
    // The longest prompt that fits is served.
    const fits = await postJson(`${base}/v1/generate`, {
      prompt: "a".repeat(model.contextLength - 1),
      max_tokens: 2,
    });
    expect(fits.status).toBe(200);
    expect(((await fits.json()) as { usage: { prompt_tokens: number } }).usage.prompt_tokens).toBe(
      model.contextLength - 1,
    );
  });

  it("a long prompt beyond --max-queue is refused with 503 before it is tokenized", async () => {
    const abort = new AbortController();
    // Sampled (one call per token) and far longer than the test: it holds the model.
    const holder = await postJson(
      `${base}/v1/generate`,
      { prompt: "ROMEO:", max_tokens: 1_000_000, temperature: 1, seed: 1, ignore_eos: true, stream: true },
      { signal: abort.signal },
    );
    await readEvents(holder, 1);
    try {
      const waitingAbort = new AbortController();
      const waiting = postJson(`${base}/v1/generate`, { prompt: "a" }, { signal: waitingAbort.signal }).catch(
        (e: Error) => e,
      );
      await vi.waitFor(
        async () => {
          const q = (await (await fetch(`${base}/healthz`)).json()) as { waiting: number };
          if (q.waiting !== 1) throw new Error("not queued yet");
        },
        { timeout: 30_000, interval: 20 },
      );
      // Over the context in tokens, within the character bound: it would be a 400 after encoding,
      // but the full queue refuses it first.
      const r = await postJson(`${base}/v1/generate`, { prompt: "a".repeat(model.contextLength * 4) });
      expect(r.status).toBe(503);
      expect(((await r.json()) as ErrorBody).error.message).toContain("waiting");
      waitingAbort.abort();
      await waiting;
    } finally {
      abort.abort();
    }
    await vi.waitFor(
      async () => {
        const q = (await (await fetch(`${base}/healthz`)).json()) as { generating: boolean; waiting: number };
        if (q.generating || q.waiting) throw new Error("still busy");
      },
      { timeout: 60_000, interval: 20 },
    );
  });
});
