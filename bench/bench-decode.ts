/**
 * `itera bench`'s tg test per decode path: greedy fused, sampled fused (`--sample`), greedy step and
 * sampled step, through the benchmark harness (src/bench) exactly as `itera bench --decode ...
 * [--sample]` runs them, at one thread. The paths are interleaved round by round so that a shared
 * machine's load falls on all of them alike; ratios are medians of the per-round ratios.
 *
 * Run (from the repository root):
 *   npx esbuild bench/bench-decode.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/itera-bench/bench-decode.mjs && \
 *   nice -n 10 node node_modules/.cache/itera-bench/bench-decode.mjs [--rounds 7] [--tokens 128] \
 *     [--append docs/benchmarks.md] [model dirs...]
 * Without model dirs: models/itera-lite-micro, models/itera-lite-tiny, models/transformer-tiny.
 */
import { appendFile } from "node:fs/promises";
import { cpus, loadavg } from "node:os";
import { env } from "onnxruntime-node";
import {
  BENCH_SAMPLING,
  type BenchEngine,
  type BenchModel,
  type BenchSampling,
  type DecodeChoice,
} from "../src/bench/engine.js";
import { runBench } from "../src/bench/harness.js";
import { runtimeEngine } from "../src/bench/runtime-engine.js";
import { markdownTable } from "../src/util/table.js";

interface Path {
  name: string;
  decode: DecodeChoice;
  sampling: BenchSampling | null;
}

const PATHS: Path[] = [
  { name: "greedy fused", decode: "fused", sampling: null },
  { name: "sampled fused", decode: "fused", sampling: BENCH_SAMPLING },
  { name: "greedy step", decode: "step", sampling: null },
  { name: "sampled step", decode: "step", sampling: BENCH_SAMPLING },
];

function parseArgs(argv: string[]) {
  const args = {
    models: [] as string[],
    rounds: 7,
    tokens: 128,
    minDurationS: 1,
    append: undefined as string | undefined,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--rounds") args.rounds = Number(argv[++i]);
    else if (a === "--tokens") args.tokens = Number(argv[++i]);
    else if (a === "--min-duration") args.minDurationS = Number(argv[++i]);
    else if (a === "--append") args.append = argv[++i];
    else args.models.push(a);
  }
  if (args.models.length === 0)
    args.models = ["models/itera-lite-micro", "models/itera-lite-tiny", "models/transformer-tiny"];
  return args;
}

/** CPU time (user + system) and tokens of the generations a test times: all but each load's first, the warm-up. */
interface CpuTally {
  us: number;
  tokens: number;
}

/** `engine`, adding the CPU time of every timed generation to `tally` (process.cpuUsage around it). */
function cpuTimed(engine: BenchEngine, tally: CpuTally): BenchEngine {
  return {
    model: engine.model,
    quant: engine.quant,
    tokenizer: engine.tokenizer,
    runtime: engine.runtime,
    contextLength: engine.contextLength,
    decodePath: (settings) => engine.decodePath(settings),
    load: async (threads, settings) => {
      const model = await engine.load(threads, settings);
      let warmedUp = false;
      const timed: BenchModel = {
        maxPositions: model.maxPositions,
        prefill: (n) => model.prefill(n),
        close: () => model.close(),
        generate: async (n, signal) => {
          const start = process.cpuUsage();
          const run = await model.generate(n, signal);
          const used = process.cpuUsage(start);
          if (warmedUp) {
            tally.us += used.user + used.system;
            tally.tokens += n;
          }
          warmedUp = true;
          return run;
        },
      };
      return timed;
    },
  };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const fmt = (x: number) => x.toLocaleString("en-US", { maximumFractionDigits: 0 });
const ratio = (x: number) => `${x.toFixed(2)}x`;

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const started = new Date();
  const loadBefore = loadavg()[0]!;
  // tokens/s and p50 per-token latency per model and path, one entry per round
  const tps = new Map<string, number[]>();
  const p50 = new Map<string, number[]>();
  // CPU time per token of the timed generations (process.cpuUsage): the time other jobs take from
  // this one does not count, so these ratios hold up on a loaded machine
  const cpuPerToken = new Map<string, number[]>();
  const key = (model: string, path: Path) => `${model}\u0000${path.name}`;
  const engines = await Promise.all(args.models.map((m) => runtimeEngine(m)));
  for (let round = 0; round < args.rounds; round++) {
    for (const [m, engine] of engines.entries()) {
      for (const path of PATHS) {
        const tally: CpuTally = { us: 0, tokens: 0 };
        const [r] = await runBench(
          {
            tests: [{ kind: "tg", n: args.tokens }],
            threads: [1],
            repetitions: 1,
            warmup: 1,
            minDurationS: args.minDurationS,
            idleS: 0,
            decode: path.decode,
            sampling: path.sampling,
          },
          {
            engine: cpuTimed(engine, tally),
            meter: null,
            profile: "-",
            device: "-",
            agentVersion: "bench",
            quiet: true,
          },
        );
        const k = key(args.models[m]!, path);
        cpuPerToken.set(k, [...(cpuPerToken.get(k) ?? []), tally.us / tally.tokens]);
        tps.set(k, [...(tps.get(k) ?? []), r!.tokens_per_s.mean]);
        p50.set(k, [...(p50.get(k) ?? []), r!.latency_ms.p50]);
      }
      process.stderr.write(`round ${round + 1}/${args.rounds} ${args.models[m]}\n`);
    }
  }
  const perRound = (model: string, a: Path, b: Path) =>
    median(tps.get(key(model, a))!.map((x, i) => x / tps.get(key(model, b))![i]!));
  const [greedyFused, sampledFused, greedyStep, sampledStep] = PATHS as [Path, Path, Path, Path];
  const perRoundCpu = (model: string, a: Path, b: Path) =>
    median(cpuPerToken.get(key(model, b))!.map((x, i) => x / cpuPerToken.get(key(model, a))![i]!));
  const rows = args.models.map((model) => [
    model.replace(/^models\//, ""),
    ...PATHS.map((p) => fmt(median(tps.get(key(model, p))!))),
    median(p50.get(key(model, greedyFused))!).toFixed(3),
    median(p50.get(key(model, greedyStep))!).toFixed(3),
    median(cpuPerToken.get(key(model, greedyFused))!).toFixed(1),
    median(cpuPerToken.get(key(model, sampledFused))!).toFixed(1),
    ratio(perRound(model, sampledFused, greedyFused)),
    ratio(perRoundCpu(model, sampledFused, greedyFused)),
    ratio(perRound(model, greedyFused, greedyStep)),
    ratio(perRound(model, sampledFused, sampledStep)),
  ]);
  const table = markdownTable(
    [
      "model",
      ...PATHS.map((p) => `${p.name} tok/s`),
      "p50 ms/token greedy fused",
      "p50 ms/token greedy step",
      "CPU µs/token greedy fused",
      "CPU µs/token sampled fused",
      "sampled / greedy (fused)",
      "sampled / greedy by CPU time (fused)",
      "fused / step (greedy)",
      "fused / step (sampled)",
    ],
    rows,
  );
  const cpu = cpus();
  const text = [
    `## \`itera bench\` per decode path (bench/bench-decode.ts) — ${started.toISOString().slice(0, 16)}Z`,
    "",
    `Machine: ${cpu[0]?.model.trim()}, ${cpu.length} logical CPUs, load average ${loadBefore.toFixed(1)} at the start and ${loadavg()[0]!.toFixed(1)} at the end;`,
    `Node ${process.version}; onnxruntime-node ${env.versions.node ?? env.versions.common}; fp32; 1 thread.`,
    `Command: \`nice -n 10 node node_modules/.cache/itera-bench/bench-decode.mjs --rounds ${args.rounds} --tokens ${args.tokens} --min-duration ${args.minDurationS} ${args.models.join(" ")}\``,
    `(built with esbuild as in the file's header). Each round runs, per model, the harness's tg${args.tokens} test`,
    `(one warm-up, one repetition of at least ${args.minDurationS} s) as \`itera bench -t 1 --decode fused|step [--sample]\` does, the four paths`,
    `back to back; sampled = temperature ${BENCH_SAMPLING.temperature}, top-k ${BENCH_SAMPLING.topK}, seed ${BENCH_SAMPLING.seed}. Medians of ${args.rounds} rounds; ratios are medians of the per-round ratios.`,
    "CPU µs/token: user + system CPU time of the timed generations (warm-up excluded) per token; by CPU time, sampled / greedy is",
    "greedy's CPU time per token over sampled's, which the time other jobs take from this one does not move.",
    "",
    table,
    "",
  ].join("\n");
  process.stdout.write(`${text}\n`);
  if (args.append) await appendFile(args.append, `\n${text}`);
}

await main();
