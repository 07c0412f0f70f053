/**
 * Which quantized embedding lookup to use: com.microsoft.GatherBlockQuantized (int4 / int8, block 32)
 * against DequantizeLinear (int8, one scale per row) + Gather, with the float Gather as reference.
 * Checks each result against the dequantized table, then times single-token lookups (decode) and
 * 64-token lookups (prefill), the variants alternating in one run.
 *
 * Run (from the repository root):
 *   npx esbuild bench/quantize-embedding.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/itera-bench/quantize-embedding.mjs && \
 *   nice -n 10 node node_modules/.cache/itera-bench/quantize-embedding.mjs [--append docs/benchmarks.md] [--rows 4096] [--cols 256]
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { appendFile } from "node:fs/promises";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { InferenceSession, Tensor } from "onnxruntime-node";
import {
  attr,
  decodeModel,
  encodeModel,
  Graph,
  loadModel,
  makeNode,
  type ModelProto,
  saveModel,
  tensorToTyped,
  typedToTensor,
} from "../src/onnx/index.js";
import { quantizeInt8 } from "../src/quantize/linear.js";
import { applyPrecisions } from "../src/quantize/rewrite.js";
import { findSites } from "../src/quantize/sites.js";
import { markdownTable } from "../src/util/table.js";

const argv = process.argv.slice(2);
const optionValue = (flag: string): string | undefined => {
  const i = argv.indexOf(flag);
  return i >= 0 ? argv[i + 1] : undefined;
};
const append = optionValue("--append");
const rows = Number(optionValue("--rows") ?? 4096);
const cols = Number(optionValue("--cols") ?? 256);
const work = mkdtempSync(join(tmpdir(), "itera-bench-embed-"));

function variant(base: Uint8Array, edit: (m: ModelProto) => void): ModelProto {
  const m = decodeModel(base);
  edit(m);
  return m;
}

/** DequantizeLinear(int8 table, per-row scale, axis 0) -> Gather: dequantizes the whole table per call. */
function dequantizeThenGather(m: ModelProto): void {
  const g = new Graph(m.graph!);
  const table = tensorToTyped(g.initializer("table")!) as Float32Array;
  // per-row = per output channel of the transposed view: quantize [cols, rows] per column
  const t = new Float32Array(table.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = table[r * cols + c]!;
  const q = quantizeInt8(t, cols, rows, { perChannel: true, symmetric: true, reduceRange: false });
  const data = new Int8Array(table.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) data[r * cols + c] = q.data[c * rows + r]!;
  g.removeInitializer("table");
  g.addInitializer(typedToTensor("table_q", [rows, cols], data));
  g.addInitializer(typedToTensor("table_scale", [rows], q.scales));
  g.addInitializer(typedToTensor("table_zp", [rows], q.zeroPoints));
  const gather = g.nodes[0]!;
  g.replaceNode(
    gather,
    makeNode("DequantizeLinear", ["table_q", "table_scale", "table_zp"], ["table"], {
      name: "dq",
      attributes: [attr.int("axis", 0)],
    }),
    gather,
  );
}

try {
  execFileSync("/usr/bin/python3", [
    "test/fixtures/quantize/make_graphs.py",
    work,
    "--table",
    String(rows),
    String(cols),
  ]);
  const base = encodeModel(await loadModel(join(work, "table.onnx")));
  const params = { blockSize: 32, symmetric: false, accuracyLevel: 0, perChannel: false, reduceRange: false };
  const gbq = (p: "int4" | "int8-wo") => (m: ModelProto) => {
    const sites = findSites(new Graph(m.graph!));
    applyPrecisions(m, sites, new Map([["embed", p]]), params);
  };
  const variants: [string, ModelProto][] = [
    ["float Gather", variant(base, () => {})],
    ["GatherBlockQuantized int4", variant(base, gbq("int4"))],
    ["GatherBlockQuantized int8", variant(base, gbq("int8-wo"))],
    ["DequantizeLinear int8 + Gather", variant(base, dequantizeThenGather)],
  ];
  const sessions: [string, InferenceSession, number][] = [];
  for (const [name, m] of variants) {
    const path = join(work, `${sessions.length}.onnx`);
    await saveModel(path, m);
    const bytes = m.graph!.initializer.reduce((s, t) => s + (t.rawData?.byteLength ?? 0), 0);
    sessions.push([name, await InferenceSession.create(path), bytes]);
  }
  const ids = (n: number) =>
    new Tensor(
      "int64",
      BigInt64Array.from({ length: n }, (_, i) => BigInt((i * 7919) % rows)),
      [1, n],
    );
  // correctness: every variant against the float table within its quantization error
  const reference = (await sessions[0]![1].run({ ids: ids(64) })).e!.data as Float32Array;
  const maxErr: number[] = [];
  for (const [, s] of sessions) {
    const got = (await s.run({ ids: ids(64) })).e!.data as Float32Array;
    maxErr.push(got.reduce((m, v, i) => Math.max(m, Math.abs(v - reference[i]!)), 0));
  }
  const timings = sessions.map(() => ({ decode: [] as number[], prefill: [] as number[] }));
  for (let round = 0; round < 5; round++) {
    for (const [i, [, s]] of sessions.entries()) {
      for (const [key, n, reps] of [
        ["decode", 1, 400],
        ["prefill", 64, 100],
      ] as const) {
        const feed = { ids: ids(n) };
        await s.run(feed);
        const t0 = performance.now();
        for (let r = 0; r < reps; r++) await s.run(feed);
        timings[i]![key].push(((performance.now() - t0) * 1000) / reps);
      }
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const table = markdownTable(
    ["lookup", "table MB", "max abs error", "1 token µs", "64 tokens µs", "1 token vs float"],
    sessions.map(([name, , bytes], i) => [
      name,
      (bytes / 1e6).toFixed(3),
      maxErr[i]!.toExponential(2),
      median(timings[i]!.decode).toFixed(1),
      median(timings[i]!.prefill).toFixed(1),
      (median(timings[i]!.decode) / median(timings[0]!.decode)).toFixed(2),
    ]),
  );
  for (const [, s] of sessions) await s.release();
  const text = `
## Quantized embedding lookup (bench/quantize-embedding.ts)

Machine: ${cpus()[0]?.model ?? "unknown CPU"} × ${cpus().length}, Node ${process.version}, onnxruntime-node 1.30; ${new Date().toISOString().slice(0, 10)}. Table ${rows} × ${cols} float32; median of 5 alternating rounds (400 single-token calls, 100 calls of 64 tokens each), µs per session.run.
Command: \`npx esbuild bench/quantize-embedding.ts --bundle --platform=node --format=esm --packages=external --outfile=node_modules/.cache/itera-bench/quantize-embedding.mjs && nice -n 10 node node_modules/.cache/itera-bench/quantize-embedding.mjs --append docs/benchmarks.md\`

${table}
`;
  console.log(text);
  if (append) await appendFile(append, text);
} finally {
  rmSync(work, { recursive: true, force: true });
}
