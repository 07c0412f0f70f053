/**
 * HTTP API overhead: the same greedy generation run directly on the runtime, through POST
 * /v1/generate (JSON) and as a Server-Sent Events stream, alternated in one run; wall time per
 * generation as seen by the caller (ratios against the direct call), time to the first token seen by
 * the client, and the latency of GET /healthz and GET /metrics. Client and server share one process
 * (loopback HTTP, keep-alive), as a local client on the device would.
 *
 * Run (from the repository root):
 *   npx esbuild bench/serve.ts --bundle --platform=node --format=esm --packages=external --define:process.env.ITERA_VERSION=\"bench\" \
 *     --outfile=node_modules/.cache/itera-bench/serve.mjs && \
 *   nice -n 10 node node_modules/.cache/itera-bench/serve.mjs [--tokens 256] [--reps 5] [--append docs/benchmarks.md] [model dirs...]
 * Without model dirs: models/itera-lite-micro and models/itera-lite-tiny.
 */
import { appendFile } from "node:fs/promises";
import { cpus, loadavg } from "node:os";
import { performance } from "node:perf_hooks";
import { env } from "onnxruntime-node";
import { pino } from "pino";
import { loadModel } from "../src/runtime/index.js";
import { createServer } from "../src/serve/index.js";
import { markdownTable } from "../src/util/table.js";

const argv = process.argv.slice(2);
const flag = (name: string, fallback: string) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv.splice(i, 2)[1]! : fallback;
};
const tokens = Number(flag("--tokens", "256"));
const reps = Number(flag("--reps", "5"));
const append = flag("--append", "");
const models = argv.length > 0 ? argv : ["models/itera-lite-micro", "models/itera-lite-tiny"];
const PROMPT = "ROMEO:\nWhat say you, good friar?\n";

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const fmt = (x: number, d = 1) => x.toFixed(d);

async function time(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

const load = loadavg()[0]!.toFixed(1);
const genRows: string[][] = [];
const pollRows: string[][] = [];
for (const dir of models) {
  const model = await loadModel(dir, { threads: 1 });
  const server = await createServer({ model, modelDir: dir, threads: 1, logger: pino({ level: "silent" }) });
  const base = await server.listen("127.0.0.1", 0);
  const body = JSON.stringify({ prompt: PROMPT, max_tokens: tokens, temperature: 0, ignore_eos: true });
  const post = (b: string) =>
    fetch(`${base}/v1/generate`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: b,
    });
  const streamBody = JSON.stringify({ ...JSON.parse(body), stream: true });
  const direct: number[] = [];
  const json: number[] = [];
  const sse: number[] = [];
  const ttftDirect: number[] = [];
  const ttftSse: number[] = [];
  const greedy = { maxTokens: tokens, temperature: 0, ignoreEos: true };
  // One warm-up of each, then alternate so that drift in machine load hits every variant alike.
  await model.generate(PROMPT, greedy);
  await (await post(body)).json();
  await (await post(streamBody)).text();
  for (let r = 0; r < reps; r++) {
    direct.push(
      await time(async () => {
        const g = await model.generate(PROMPT, greedy);
        ttftDirect.push(g.timings.ttftMs);
      }),
    );
    json.push(await time(async () => (await post(body)).json()));
    sse.push(
      await time(async () => {
        const t0 = performance.now();
        const res = await post(streamBody);
        const reader = res.body!.getReader();
        let first = true;
        for (;;) {
          const { done } = await reader.read();
          if (done) break;
          if (first) ttftSse.push(performance.now() - t0);
          first = false;
        }
      }),
    );
  }
  const d = median(direct);
  const name = dir.split("/").pop()!;
  genRows.push(
    [name, "runtime (direct)", fmt(d), fmt((tokens * 1000) / d), "1.00", fmt(median(ttftDirect), 2)],
    [
      name,
      "POST /v1/generate (JSON)",
      fmt(median(json)),
      fmt((tokens * 1000) / median(json)),
      fmt(median(json) / d, 3),
      "-",
    ],
    [
      name,
      "POST /v1/generate (SSE)",
      fmt(median(sse)),
      fmt((tokens * 1000) / median(sse)),
      fmt(median(sse) / d, 3),
      fmt(median(ttftSse), 2),
    ],
  );
  for (const path of ["/healthz", "/metrics"]) {
    const ms: number[] = [];
    for (let i = 0; i < 300; i++) ms.push(await time(async () => (await fetch(`${base}${path}`)).text()));
    pollRows.push([
      name,
      `GET ${path}`,
      fmt(median(ms), 3),
      fmt([...ms].sort((a, b) => a - b)[Math.floor(ms.length * 0.95)]!, 3),
    ]);
  }
  await server.close();
  await model.dispose();
}

const lines = [
  "",
  "## HTTP API overhead (bench/serve.ts)",
  "",
  `Machine: ${cpus()[0]?.model.trim()} × ${cpus().length}, Node ${process.version}, onnxruntime-node ${env.versions.node ?? env.versions.common}; load average ${load} at start (shared machine); ${new Date().toISOString().slice(0, 10)}. One thread; greedy, ${tokens} tokens (eos ignored), median of ${reps} alternated repetitions after one warm-up each; client and server in one process over loopback.`,
  `Command: \`npx esbuild bench/serve.ts --bundle --platform=node --format=esm --packages=external --define:process.env.ITERA_VERSION=\\"bench\\" --outfile=node_modules/.cache/itera-bench/serve.mjs && nice -n 10 node node_modules/.cache/itera-bench/serve.mjs --tokens ${tokens} --reps ${reps} --append docs/benchmarks.md\``,
  "",
  "Wall ms per generation as the caller sees it (tokenisation, queue, JSON or SSE framing, HTTP included); TTFT ms: direct = the runtime's, SSE = the client's first received chunk.",
  "",
  markdownTable(["model", "path", "wall ms", "tokens/s", "vs direct", "TTFT ms"], genRows),
  "",
  "Small requests, 300 sequential on one keep-alive connection (ms):",
  "",
  markdownTable(["model", "request", "p50 ms", "p95 ms"], pollRows),
  "",
];
process.stdout.write(lines.join("\n"));
if (append) await appendFile(append, lines.join("\n"));
