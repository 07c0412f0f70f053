/**
 * Issue #17: which cache layout makes a decode step's attention MatMuls cheapest in ONNX Runtime's
 * CPU kernels (MLAS), for transformer-tiny's sizes (6 heads of 32, one query position). Each form
 * runs `steps` times inside one ONNX `Loop` whose body reads the cache from the outer graph, as
 * the split KV cache's body does (src/runtime/kv-split.ts); a ReduceMax and an Add per step keep the
 * result live (the `none` row: that overhead alone). One intra-op thread; CPU and wall time per
 * step, medians of `reps` interleaved calls.
 *
 *   q·kᵀ  Transpose(K) -> MatMul   as kv-split.ts writes it (ONNX Runtime fuses it to FusedMatMul transB)
 *         FusedMatMul transB       the fused form written out
 *         FusedMatMul transB alpha the same with the 1/sqrt(d) scale folded in (alpha != 1)
 *         MatMul, K stored [h, d, n] the cache kept transposed: a plain M = 1 MatMul
 *         Transpose once, outside the loop, then MatMul in the body
 *   p·v   MatMul(p, V); FusedMatMul(p, Vᵀ stored [h, d, n], transB)
 *
 * Run (from the repository root):
 *   npx esbuild bench/kv-attention-layouts.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/itera-bench/kv-attention-layouts.mjs && \
 *   nice -n 10 node node_modules/.cache/itera-bench/kv-attention-layouts.mjs [--contexts 64,2048] [--reps 15]
 */
import { cpus, loadavg } from "node:os";
import { performance } from "node:perf_hooks";
import { env, InferenceSession, Tensor } from "onnxruntime-node";
import {
  attr,
  DataType,
  encodeModel,
  makeNode,
  makeValueInfo,
  type ModelProto,
  type NodeProto,
} from "../src/onnx/index.js";
import { markdownTable } from "../src/util/table.js";

const argv = process.argv.slice(2);
const option = (name: string, fallback: string) =>
  argv.includes(name) ? argv[argv.indexOf(name) + 1]! : fallback;
const contexts = option("--contexts", "64,2048").split(",").map(Number);
const reps = Number(option("--reps", "15"));
const steps = 64;
const HEADS = 6;
const HEAD = 32;
/** ONNX 17 and ONNX Runtime's contrib ops (FusedMatMul). */
const OPSETS = [
  { domain: "", version: 17 },
  { domain: "com.microsoft", version: 1 },
];

interface Form {
  name: string;
  /** The body's nodes from `a` (q or p) and `c` (the cache as fed) to `s`. */
  body: NodeProto[];
  /** Nodes of the outer graph, before the loop (they may replace `c` by `ct`). */
  outer?: NodeProto[];
  /** The first operand: q [1, h, 1, d] or p [1, h, 1, n]. */
  a: "q" | "p";
  /** The cache as fed: [1, h, n, d], or transposed [1, h, d, n]. */
  transposed: boolean;
}

const transpose = (from: string, to: string) =>
  makeNode("Transpose", [from], [to], { attributes: [attr.ints("perm", [0, 1, 3, 2])] });
const fused = (a: string, alpha?: number) =>
  makeNode("FusedMatMul", [a, "c"], ["s"], {
    domain: "com.microsoft",
    attributes: [attr.int("transB", 1), ...(alpha === undefined ? [] : [attr.float("alpha", alpha)])],
  });

const forms: Form[] = [
  {
    name: "none (loop and ReduceMax only)",
    body: [makeNode("Identity", ["q"], ["s"])],
    a: "q",
    transposed: false,
  },
  {
    name: "q·kᵀ: Transpose(K) -> MatMul (kv-split.ts)",
    body: [transpose("c", "kt"), makeNode("MatMul", ["q", "kt"], ["s"])],
    a: "q",
    transposed: false,
  },
  { name: "q·kᵀ: FusedMatMul transB", body: [fused("q")], a: "q", transposed: false },
  {
    name: "q·kᵀ: FusedMatMul transB, alpha 1/√32",
    body: [fused("q", 1 / Math.sqrt(HEAD))],
    a: "q",
    transposed: false,
  },
  {
    name: "q·kᵀ: MatMul, K stored [h, d, n]",
    body: [makeNode("MatMul", ["q", "c"], ["s"])],
    a: "q",
    transposed: true,
  },
  {
    name: "q·kᵀ: Transpose(K) once before the loop, MatMul",
    outer: [transpose("c", "ct")],
    body: [makeNode("MatMul", ["q", "ct"], ["s"])],
    a: "q",
    transposed: false,
  },
  { name: "p·v: MatMul(p, V)", body: [makeNode("MatMul", ["p", "c"], ["s"])], a: "p", transposed: false },
  { name: "p·v: FusedMatMul(p, V stored [h, d, n], transB)", body: [fused("p")], a: "p", transposed: true },
];

function loopModel(form: Form, n: number): ModelProto {
  const f = (name: string, dims: (number | string)[]) => makeValueInfo(name, DataType.FLOAT, dims);
  const body = {
    name: "step",
    node: [
      ...form.body,
      makeNode("ReduceMax", ["s"], ["m"], { attributes: [attr.int("keepdims", 0)] }),
      makeNode("Add", ["acc_in", "m"], ["acc_out"]),
      makeNode("Identity", ["cond_in"], ["cond_out"]),
    ],
    initializer: [],
    input: [
      makeValueInfo("iter", DataType.INT64, []),
      makeValueInfo("cond_in", DataType.BOOL, []),
      f("acc_in", []),
    ],
    output: [makeValueInfo("cond_out", DataType.BOOL, []), f("acc_out", [])],
    valueInfo: [],
  };
  return {
    irVersion: 8,
    opsetImport: OPSETS,
    graph: {
      name: "attention_step",
      node: [
        ...(form.outer ?? []),
        makeNode("Loop", ["steps", "cond", "acc0"], ["acc"], { attributes: [attr.graph("body", body)] }),
      ],
      initializer: [],
      input: [
        makeValueInfo("steps", DataType.INT64, []),
        makeValueInfo("cond", DataType.BOOL, []),
        f("acc0", []),
        f(form.a, form.a === "q" ? [1, HEADS, 1, HEAD] : [1, HEADS, 1, n]),
        f("c", form.transposed ? [1, HEADS, HEAD, n] : [1, HEADS, n, HEAD]),
      ],
      output: [f("acc", [])],
      valueInfo: [],
    },
  } as unknown as ModelProto;
}

const random = (dims: number[]) =>
  new Tensor(
    "float32",
    Float32Array.from({ length: dims.reduce((x, y) => x * y, 1) }, () => Math.random() - 0.5),
    dims,
  );

interface Case {
  form: Form;
  n: number;
  session: InferenceSession;
  feeds: Record<string, Tensor>;
  cpu: number[];
  wall: number[];
}

async function main() {
  const loadStart = loadavg()[0]!.toFixed(1);
  const cases: Case[] = [];
  for (const n of contexts) {
    for (const form of forms) {
      const session = await InferenceSession.create(encodeModel(loopModel(form, n)), {
        intraOpNumThreads: 1,
        interOpNumThreads: 1,
        logSeverityLevel: 3,
      });
      const feeds: Record<string, Tensor> = {
        steps: new Tensor("int64", BigInt64Array.of(BigInt(steps)), []),
        cond: new Tensor("bool", Uint8Array.of(1), []),
        acc0: new Tensor("float32", Float32Array.of(0), []),
        [form.a]: random(form.a === "q" ? [1, HEADS, 1, HEAD] : [1, HEADS, 1, n]),
        c: random(form.transposed ? [1, HEADS, HEAD, n] : [1, HEADS, n, HEAD]),
      };
      await session.run(feeds); // warm-up
      cases.push({ form, n, session, feeds, cpu: [], wall: [] });
    }
  }
  for (let r = 0; r < reps; r++) {
    process.stderr.write(`round ${r + 1}/${reps}\r`);
    for (const c of cases) {
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      await c.session.run(c.feeds);
      const wall = performance.now() - t0;
      const cpu = process.cpuUsage(cpu0);
      c.wall.push((1000 * wall) / steps);
      c.cpu.push((cpu.user + cpu.system) / steps);
    }
  }
  process.stderr.write("\n");
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[xs.length >> 1]!;
  const rows = cases.map((c) => [
    c.form.name,
    String(c.n),
    median(c.cpu).toFixed(1),
    median(c.wall).toFixed(1),
  ]);
  for (const c of cases) await c.session.release();
  process.stdout.write(
    [
      `Machine: ${cpus()[0]?.model ?? "unknown CPU"}, ${cpus().length} logical CPUs; Node ${process.version}; ` +
        `onnxruntime-node ${env.versions?.node ?? "?"}; load average ${loadStart} at the start, ` +
        `${loadavg()[0]!.toFixed(1)} at the end. ${HEADS} heads of ${HEAD}, one query position, ${steps} ` +
        `steps per call, 1 thread, medians of ${reps} interleaved calls.`,
      "",
      markdownTable(["form", "positions", "CPU µs per step", "wall µs per step"], rows),
      "",
    ].join("\n"),
  );
}

await main();
