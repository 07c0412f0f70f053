/**
 * fp32 vs int8 vs int4 (and int8 weight-only) for the house models: size on disk, bits/char on
 * held-out text, and decode tokens/s measured in one run, variants alternating round by round so
 * that the ratios compare like with like on a shared machine. For models with com.microsoft.MoE
 * experts, also the QMoE layouts of the experts alone (everything else fp32): per-row or block-wise
 * scales, with or without zero points, 4 and 8 bits.
 *
 * Run (from the repository root):
 *   npx esbuild bench/quantize.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/itera-bench/quantize.mjs && \
 *   nice -n 10 node node_modules/.cache/itera-bench/quantize.mjs [--append docs/benchmarks.md] [--rounds 3] [--tokens 128] [model dirs...]
 * Without model dirs it benchmarks every folder under models/.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { appendFile } from "node:fs/promises";
import { cpus, hostname, tmpdir } from "node:os";
import { basename, join } from "node:path";
import * as ort from "onnxruntime-node";
import { parseTests, runBench } from "../src/bench/harness.js";
import { runtimeEngine } from "../src/bench/runtime-engine.js";
import { Graph, loadModel } from "../src/onnx/index.js";
import { type Mode, parseQuantizeOptions } from "../src/quantize/options.js";
import { type QuantizeReport, quantizeFolder } from "../src/quantize/quantize.js";
import { findSites } from "../src/quantize/sites.js";
import { markdownTable } from "../src/util/table.js";

const argv = process.argv.slice(2);
const optionValue = (flag: string): string | undefined => {
  const i = argv.indexOf(flag);
  return i >= 0 ? argv[i + 1] : undefined;
};
const append = optionValue("--append");
const rounds = Number(optionValue("--rounds") ?? 3);
const tokens = Number(optionValue("--tokens") ?? 128);
const accuracyLevel = optionValue("--accuracy-level") ?? "4";
let models = argv.filter((a, i) => !a.startsWith("--") && !argv[i - 1]?.startsWith("--"));
if (models.length === 0) {
  models = readdirSync("models", { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => join("models", d.name));
}
// Bundled into node_modules/.cache: find the datasets from the repository root (cwd), as the docs say.

const version = (JSON.parse(readFileSync("package.json", "utf8")) as { version: string }).version;
const hostCores = cpus().length;
const modes: Mode[] = ["int8", "int8-wo", "int4"];
const work = mkdtempSync(join(tmpdir(), "itera-bench-quantize-"));

const sizeRows: (string | number)[][] = [];
const speedRows: (string | number)[][] = [];
const moeRows: (string | number)[][] = [];

interface Variant {
  label: string;
  dir: string;
  report?: QuantizeReport;
}

/** Mean decode tokens/s of each variant: every variant once per round, rounds alternating. */
async function decodeSpeeds(variants: Variant[], threads: number): Promise<Map<string, number[]>> {
  const samples = new Map<string, number[]>(variants.map((v) => [v.label, []]));
  for (let round = 0; round < rounds; round++) {
    for (const v of variants) {
      const [result] = await runBench(
        {
          tests: parseTests(`tg${tokens}`),
          threads: [threads],
          repetitions: 1,
          warmup: 1,
          minDurationS: 1,
          idleS: 0,
        },
        {
          engine: await runtimeEngine(v.dir),
          meter: null,
          profile: "host",
          device: hostname(),
          agentVersion: version,
          quiet: true,
        },
      );
      samples.get(v.label)!.push(result!.tokens_per_s.mean);
    }
  }
  return samples;
}
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/**
 * The ONNX sessions alone (no runtime around them), 1 thread: decode steps of one token with the
 * state carried, and 64-token prefills from an empty state; mean tokens/s over the rounds, the
 * files alternating within each round.
 */
async function sessionSpeeds(files: string[]): Promise<{ decode: number; prefill: number }[]> {
  const sessions = await Promise.all(
    files.map((f) => ort.InferenceSession.create(f, { intraOpNumThreads: 1, interOpNumThreads: 1 })),
  );
  const emptyState = (s: ort.InferenceSession): Record<string, ort.Tensor> =>
    Object.fromEntries(
      s.inputNames
        .filter((n) => n !== "input_ids")
        .map((n) => {
          const meta = s.inputMetadata.find((m) => m.name === n) as { shape?: (number | string)[] };
          const dims = (meta.shape ?? []).map((d) => (typeof d === "number" ? d : 1));
          return [n, new ort.Tensor("float32", new Float32Array(dims.reduce((a, b) => a * b, 1)), dims)];
        }),
    );
  const ids = (n: number) =>
    new ort.Tensor(
      "int64",
      BigInt64Array.from({ length: n }, (_, i) => BigInt(1 + ((i * 7) % 60))),
      [1, n],
    );
  const decode = async (s: ort.InferenceSession, steps = 1000) => {
    let state = emptyState(s);
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) {
      const out = await s.run({ ...state, input_ids: ids(1) });
      state = Object.fromEntries(
        Object.keys(state).map((k) => [k, out[k.replace("past_key_values.", "present.")]!]),
      );
    }
    return (steps * 1000) / (performance.now() - t0);
  };
  const prefill = async (s: ort.InferenceSession, calls = 40, length = 64) => {
    const t0 = performance.now();
    for (let i = 0; i < calls; i++) await s.run({ ...emptyState(s), input_ids: ids(length) });
    return (calls * length * 1000) / (performance.now() - t0);
  };
  const runs = sessions.map(() => ({ decode: [] as number[], prefill: [] as number[] }));
  for (let round = 0; round < rounds; round++) {
    for (const [i, s] of sessions.entries()) {
      runs[i]!.decode.push(await decode(s));
      runs[i]!.prefill.push(await prefill(s));
    }
  }
  await Promise.all(sessions.map((s) => s.release()));
  return runs.map((r) => ({ decode: mean(r.decode), prefill: mean(r.prefill) }));
}

/** QMoE layouts of the experts alone: [label, mode, --moe-scales, --moe-zero-points]. */
const MOE_LAYOUTS: [string, Mode, "row" | "block", boolean][] = [
  ["int4 per-row symmetric (default)", "int4", "row", false],
  ["int4 per-row, zero points", "int4", "row", true],
  ["int4 block 32 symmetric", "int4", "block", false],
  ["int4 block 32, zero points", "int4", "block", true],
  ["int8 per-row symmetric (default)", "int8-wo", "row", false],
  ["int8 block 32 symmetric", "int8-wo", "block", false],
];

try {
  for (const dir of models) {
    const name = basename(dir);
    const variants: Variant[] = [{ label: "fp32", dir }];
    for (const mode of modes) {
      const out = join(work, `${name}-${mode}`);
      const report = await quantizeFolder(
        dir,
        out,
        parseQuantizeOptions({ mode, blockSize: "32", accuracyLevel, budget: "none", evalChars: "20000" }),
        { quiet: true },
      );
      variants.push({ label: mode, dir: out, report });
    }
    const base = variants[1]!.report!;
    sizeRows.push([
      name,
      "fp32",
      (base.size.before.file_bytes / 1e6).toFixed(3),
      "1.00",
      base.quality.before.bits_per_char.toFixed(4),
      "",
      "",
    ]);
    for (const v of variants.slice(1)) {
      const r = v.report!;
      sizeRows.push([
        name,
        v.label,
        (r.size.after.file_bytes / 1e6).toFixed(3),
        r.size.compression_ratio.toFixed(2),
        r.quality.after.bits_per_char.toFixed(4),
        `${(r.quality.bits_per_char_increase * 100).toFixed(2)}%`,
        `${(r.agreement.top1_agreement * 100).toFixed(1)}%`,
      ]);
    }
    for (const threads of [...new Set([1, hostCores])]) {
      const samples = await decodeSpeeds(variants, threads);
      const fp32 = mean(samples.get("fp32")!);
      for (const v of variants) {
        const s = samples.get(v.label)!;
        speedRows.push([
          name,
          v.label,
          threads,
          mean(s).toFixed(1),
          Math.min(...s).toFixed(1),
          Math.max(...s).toFixed(1),
          (mean(s) / fp32).toFixed(2),
        ]);
      }
    }

    // The experts alone, in each QMoE layout (other weights excluded: fp32).
    const sites = findSites(new Graph((await loadModel(join(dir, "model.onnx"))).graph!));
    if (!sites.some((s) => s.kind === "moe")) continue;
    const others = sites.filter((s) => s.kind !== "moe").map((s) => s.name);
    const moeVariants: Variant[] = [{ label: "MoE fp32", dir }];
    for (const [label, mode, moeScales, moeZeroPoints] of MOE_LAYOUTS) {
      const out = join(work, `${name}-moe-${moeVariants.length}`);
      const report = await quantizeFolder(
        dir,
        out,
        parseQuantizeOptions({
          mode,
          blockSize: "32",
          accuracyLevel,
          budget: "none",
          evalChars: "20000",
          exclude: others,
          moeScales,
          moeZeroPoints,
        }),
        { quiet: true },
      );
      moeVariants.push({ label, dir: out, report });
    }
    const samples = await decodeSpeeds(moeVariants, 1);
    const fp32 = mean(samples.get("MoE fp32")!);
    const session = await sessionSpeeds(moeVariants.map((v) => join(v.dir, "model.onnx")));
    for (const [i, v] of moeVariants.entries()) {
      const r = v.report;
      const s = samples.get(v.label)!;
      moeRows.push([
        name,
        v.label,
        ((r ? r.size.after.file_bytes : moeVariants[1]!.report!.size.before.file_bytes) / 1e6).toFixed(3),
        (r ? r.quality.after : moeVariants[1]!.report!.quality.before).bits_per_char.toFixed(4),
        r ? `${(r.quality.bits_per_char_increase * 100).toFixed(2)}%` : "",
        mean(s).toFixed(1),
        (mean(s) / fp32).toFixed(2),
        session[i]!.decode.toFixed(0),
        (session[i]!.decode / session[0]!.decode).toFixed(2),
        session[i]!.prefill.toFixed(0),
        (session[i]!.prefill / session[0]!.prefill).toFixed(2),
      ]);
    }
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}

const machine = `${cpus()[0]?.model ?? "unknown CPU"} × ${hostCores}, Node ${process.version}`;
const text = `
## Quantization: size, bits/char and decode speed (bench/quantize.ts)

Machine: ${machine}; ${new Date().toISOString().slice(0, 10)}. Each model quantized by \`itera quantize\` (block size 32, asymmetric with the clipping search, accuracy level ${accuracyLevel}; int8 = dynamic, symmetric per-tensor weights; embeddings block-wise); bits/char on the model card's held-out split (default: the last 10 % of tinyshakespeare; first 20 000 characters); top-1 agreement with fp32 over the fixed prompt set. Decode: tg${tokens} (greedy, one token per call after the prompt), ${rounds} rounds with the variants alternating, 1 warm-up each; mean (min–max) tokens/s; ratio = variant / fp32 in the same run.
Command: \`npx esbuild bench/quantize.ts --bundle --platform=node --format=esm --packages=external --outfile=node_modules/.cache/itera-bench/quantize.mjs && nice -n 10 node node_modules/.cache/itera-bench/quantize.mjs --append docs/benchmarks.md\`

${markdownTable(["model", "variant", "ONNX MB", "smaller by", "bits/char", "bits/char change", "top-1 agreement"], sizeRows)}

${markdownTable(["model", "variant", "threads", "tokens/s", "min", "max", "vs fp32"], speedRows)}
${
  moeRows.length === 0
    ? ""
    : `
QMoE layouts: the MoE experts alone quantized (\`--exclude\` every other weight), the rest fp32; decode tg${tokens} at 1 thread through the runtime, ${rounds} rounds alternating; "session": the ONNX session alone at 1 thread (1000 one-token steps with the state carried; 40 prefills of 64 tokens from an empty state), ${rounds} rounds alternating; ratios against the fp32 MoE op in the same run.

${markdownTable(["model", "experts", "ONNX MB", "bits/char", "bits/char change", "tokens/s", "vs fp32", "session decode t/s", "vs fp32", "session pp64 t/s", "vs fp32"], moeRows)}
`
}`;
console.log(text);
if (append) await appendFile(append, text);
