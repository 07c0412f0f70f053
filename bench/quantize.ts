/**
 * fp32 vs int8 vs int4 (and int8 weight-only) for the house models: size on disk, bits/char on
 * held-out text, and decode tokens/s measured in one run, variants alternating round by round so
 * that the ratios compare like with like on a shared machine.
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
import { basename, join, resolve } from "node:path";
import { parseTests, runBench } from "../src/bench/harness.js";
import { runtimeEngine } from "../src/bench/runtime-engine.js";
import { type Mode, parseQuantizeOptions } from "../src/quantize/options.js";
import { type QuantizeReport, quantizeFolder } from "../src/quantize/quantize.js";
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
process.env.ITERA_DATASETS ??= resolve("..", "shared", "datasets");
const version = (JSON.parse(readFileSync("package.json", "utf8")) as { version: string }).version;
const hostCores = cpus().length;
const modes: Mode[] = ["int8", "int8-wo", "int4"];
const work = mkdtempSync(join(tmpdir(), "itera-bench-quantize-"));

const sizeRows: (string | number)[][] = [];
const speedRows: (string | number)[][] = [];
try {
  for (const dir of models) {
    const name = basename(dir);
    const variants: { label: string; dir: string; report?: QuantizeReport }[] = [{ label: "fp32", dir }];
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
    // Decode speed: every variant once per round, rounds alternating, for each thread count.
    for (const threads of [...new Set([1, hostCores])]) {
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
      const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
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
`;
console.log(text);
if (append) await appendFile(append, text);
