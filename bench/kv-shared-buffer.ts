/**
 * Issue #17, direction (a): onnxruntime-genai's past/present buffer sharing through onnxruntime-node.
 * One com.microsoft GroupQueryAttention node (transformer-tiny's sizes: 6 heads of 32) whose past
 * cache is a buffer of `capacity` positions with 8 of them used, run one token per call as a
 * stepping decoder would:
 *   shared   the same Float32Array-backed Tensor given as past_key/past_value input and as the
 *            pre-allocated present_key/present_value output (session.run(feeds, fetches));
 *   fetched  present outputs allocated by ONNX Runtime;
 *   output only  present outputs not fetched (only the attention output).
 * It checks that the shared call wrote the new position into the caller's buffer (in place) and
 * whether the returned present tensor is that buffer or a copy. Time per call, median of `reps`.
 *
 * Run (from the repository root):
 *   npx esbuild bench/kv-shared-buffer.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/itera-bench/kv-shared-buffer.mjs && \
 *   nice -n 10 node node_modules/.cache/itera-bench/kv-shared-buffer.mjs [--reps 20]
 */
import { cpus, loadavg } from "node:os";
import { performance } from "node:perf_hooks";
import { env, InferenceSession, Tensor } from "onnxruntime-node";
import { attr, DataType, encodeModel, makeNode, makeValueInfo, type ModelProto } from "../src/onnx/index.js";
import { markdownTable } from "../src/util/table.js";

const argv = process.argv.slice(2);
const reps = argv.includes("--reps") ? Number(argv[argv.indexOf("--reps") + 1]) : 20;
const HEADS = 6;
const HEAD = 32;
const USED = 8;

function gqaModel(): ModelProto {
  const f = (name: string, dims: (number | string)[]) => makeValueInfo(name, DataType.FLOAT, dims);
  const cache = ["batch", HEADS, "past", HEAD];
  return {
    irVersion: 8,
    opsetImport: [
      { domain: "", version: 17 },
      { domain: "com.microsoft", version: 1 },
    ],
    graph: {
      name: "gqa",
      node: [
        makeNode(
          "GroupQueryAttention",
          ["q", "k", "v", "past_key", "past_value", "seqlens_k", "total_sequence_length"],
          ["out", "present_key", "present_value"],
          {
            domain: "com.microsoft",
            attributes: [attr.int("num_heads", HEADS), attr.int("kv_num_heads", HEADS)],
          },
        ),
      ],
      initializer: [],
      input: [
        f("q", ["batch", 1, HEADS * HEAD]),
        f("k", ["batch", 1, HEADS * HEAD]),
        f("v", ["batch", 1, HEADS * HEAD]),
        f("past_key", cache),
        f("past_value", cache),
        makeValueInfo("seqlens_k", DataType.INT32, ["batch"]),
        makeValueInfo("total_sequence_length", DataType.INT32, []),
      ],
      output: [f("out", ["batch", 1, HEADS * HEAD]), f("present_key", cache), f("present_value", cache)],
      valueInfo: [],
    },
  } as unknown as ModelProto;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main() {
  const loadStart = loadavg()[0]!.toFixed(1);
  const session = await InferenceSession.create(encodeModel(gqaModel()), { intraOpNumThreads: 1 });
  const rows: string[][] = [];
  for (const capacity of [16, 256, 2048]) {
    const size = HEADS * capacity * HEAD;
    const key = new Tensor("float32", new Float32Array(size), [1, HEADS, capacity, HEAD]);
    const value = new Tensor("float32", new Float32Array(size), [1, HEADS, capacity, HEAD]);
    const token = new Tensor("float32", new Float32Array(HEADS * HEAD).fill(1), [1, 1, HEADS * HEAD]);
    const feeds = {
      q: token,
      k: token,
      v: token,
      past_key: key,
      past_value: value,
      seqlens_k: new Tensor("int32", Int32Array.of(USED), [1]),
      total_sequence_length: new Tensor("int32", Int32Array.of(USED + 1), []),
    };
    const kinds = {
      shared: { out: null, present_key: key, present_value: value },
      fetched: ["out", "present_key", "present_value"],
      "output only": ["out"],
    } as const;
    const times: Record<string, number[]> = Object.fromEntries(Object.keys(kinds).map((k) => [k, []]));
    let inPlace = false;
    let returnedIsBuffer = false;
    for (let r = 0; r < reps; r++) {
      for (const [kind, fetches] of Object.entries(kinds)) {
        (key.data as Float32Array).fill(0);
        const t = performance.now();
        const out = await session.run(feeds, fetches as never);
        times[kind]!.push(performance.now() - t);
        if (kind === "shared") {
          // the new position (USED) of head 0 holds the token's key: written into our buffer?
          inPlace = (key.data as Float32Array)[USED * HEAD] === 1;
          returnedIsBuffer = out.present_key?.data === key.data;
        }
      }
    }
    rows.push([
      String(capacity),
      `${((2 * size * 4) / 1e6).toFixed(2)} MB`,
      ...Object.keys(kinds).map((k) => median(times[k]!).toFixed(3)),
      inPlace ? "yes" : "no",
      returnedIsBuffer ? "the same buffer" : "a copy",
    ]);
  }
  await session.release();
  const report = [
    `Machine: ${cpus()[0]?.model ?? "unknown CPU"}, ${cpus().length} logical CPUs; Node ${process.version}; ` +
      `onnxruntime-node ${env.versions?.node ?? "?"}; load average ${loadStart} at the start, ` +
      `${loadavg()[0]!.toFixed(1)} at the end. Median ms per call of ${reps}, one GroupQueryAttention node, ${USED} positions used.`,
    "",
    markdownTable(
      [
        "capacity",
        "past K+V",
        "shared ms",
        "fetched ms",
        "output only ms",
        "shared call wrote in place",
        "returned present",
      ],
      rows,
    ),
    "",
  ].join("\n");
  process.stdout.write(`${report}\n`);
}

await main();
