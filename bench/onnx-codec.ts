/**
 * ONNX codec throughput: decode and encode of a multi-MB model (MB/s), in memory and from disk.
 * The model is built here: a stack of `layers` linear layers (MatMul + Add + Relu) with float32
 * weights in raw_data, so its size is mostly tensor bytes, as in real language models; plus the same
 * weights stored in the typed float_data field (the slow path some exporters write).
 *
 * Run (from the repository root):
 *   npx esbuild bench/onnx-codec.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/itera-bench/onnx-codec.mjs && \
 *   nice -n 10 node node_modules/.cache/itera-bench/onnx-codec.mjs [--mb 64] [--reps 5] [--append docs/benchmarks.md]
 */
import { appendFile, mkdtemp, rm } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import {
  decodeModel,
  encodeModel,
  loadModel,
  makeNode,
  type ModelProto,
  saveModel,
  type TensorProto,
  typedToTensor,
} from "../src/onnx/index.js";
import { markdownTable } from "../src/util/table.js";

const argv = process.argv.slice(2);
const arg = (name: string, fallback: number) => Number(argv[argv.indexOf(name) + 1] ?? fallback) || fallback;
const targetMb = argv.includes("--mb") ? arg("--mb", 64) : 64;
const reps = argv.includes("--reps") ? arg("--reps", 5) : 5;
const append = argv.includes("--append") ? argv[argv.indexOf("--append") + 1] : undefined;

const loadAtStart = loadavg()[0] ?? 0;
const D = 512;
const layers = Math.max(1, Math.round((targetMb * 2 ** 20) / (D * D * 4)));

function buildModel(typedFields: boolean): ModelProto {
  const initializer: TensorProto[] = [];
  const node = [];
  let x = "x";
  for (let i = 0; i < layers; i++) {
    const w = new Float32Array(D * D).map((_, k) => Math.sin(k + i));
    const t = typedToTensor(`w${i}`, [D, D], w);
    if (typedFields) {
      t.floatData = Array.from(w);
      delete t.rawData;
    }
    initializer.push(t, typedToTensor(`b${i}`, [D], new Float32Array(D).fill(i)));
    node.push(
      makeNode("MatMul", [x, `w${i}`], [`mm${i}`]),
      makeNode("Add", [`mm${i}`, `b${i}`], [`add${i}`]),
      makeNode("Relu", [`add${i}`], [`h${i}`]),
    );
    x = `h${i}`;
  }
  const io = (name: string) => ({
    name,
    type: { tensorType: { elemType: 1, shape: { dim: [{ dimParam: "batch_size" }, { dimValue: D }] } } },
  });
  return {
    irVersion: 8,
    opsetImport: [{ domain: "", version: 17 }],
    graph: { name: "bench", node, initializer, input: [io("x")], output: [io(x)], valueInfo: [] },
  };
}

/** Median seconds of `reps` runs of fn (after one warm-up run). */
async function median(fn: () => unknown): Promise<number> {
  await fn();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}

const rows: string[][] = [];
const dir = await mkdtemp(join(tmpdir(), "itera-bench-onnx-"));
try {
  for (const typed of [false, true]) {
    const bytes = encodeModel(buildModel(typed));
    const model = decodeModel(bytes);
    const label = typed ? "float_data" : "raw_data";
    const row = (operation: string, seconds: number, note = "") =>
      rows.push([
        operation,
        `${(bytes.length / 2 ** 20).toFixed(1)} MB`,
        `${(seconds * 1000).toFixed(1)} ms`,
        `${(bytes.length / 2 ** 20 / seconds).toFixed(0)} MB/s`,
        note,
      ]);
    row(
      `decode (${label})`,
      await median(() => decodeModel(bytes)),
      typed ? "every value parsed into a JS array" : "tensor bytes stay views into the input (no copy)",
    );
    row(`encode (${label})`, await median(() => encodeModel(model)));
    if (typed) continue;
    const inline = join(dir, "inline.onnx");
    const ext = join(dir, "ext.onnx");
    const io = "temp file + rename (page cache, no fsync)";
    row("saveModel, inline", await median(() => saveModel(inline, model)), io);
    row("saveModel, external data", await median(() => saveModel(ext, model, { externalData: {} })), io);
    row("loadModel, inline", await median(() => loadModel(inline)), "read + decode");
    row(
      "loadModel, external data",
      await median(() => loadModel(ext)),
      "read + decode + check + read tensors",
    );
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}

const table = markdownTable(["operation", "model", "median time", "throughput", "note"], rows);
const cpu = cpus()[0]?.model.trim() ?? "unknown CPU";
const section = [
  "",
  "## ONNX codec throughput (bench/onnx-codec.ts)",
  "",
  `Machine: ${cpu} × ${cpus().length}, Node ${process.version}; ${layers} layers of ${D}×${D} float32 weights; median of ${reps} runs after a warm-up; load average ${loadAtStart.toFixed(1)} at the start (shared machine); ${new Date().toISOString().slice(0, 10)}.`,
  "Command: `npx esbuild bench/onnx-codec.ts --bundle --platform=node --format=esm --packages=external --outfile=node_modules/.cache/itera-bench/onnx-codec.mjs && nice -n 10 node node_modules/.cache/itera-bench/onnx-codec.mjs --append docs/benchmarks.md`",
  "",
  table,
  "",
].join("\n");
console.log(section);
if (append) await appendFile(append, section);
