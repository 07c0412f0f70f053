/**
 * Peer comparison: greedy decode tokens/s of itera (generate(): its default decode, fused where it
 * fuses, and stepped one call per token) against llama.cpp (node-llama-cpp, its prebuilt CPU
 * binaries) on llama-architecture GGUF models of the same shape as each house model, written here
 * with random weights in F32 and Q8_0 (bench/peers/llama-shape.ts). Batch 1, a fixed prompt of token
 * ids, then N tokens ignoring end-of-text; every engine measured once per round, rounds interleaved
 * (the order rotated each round), ratios itera / llama.cpp taken per round, medians reported.
 *
 * Run (from the repository root; node-llama-cpp is a devDependency, used by this bench only):
 *   npx esbuild bench/peers.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/itera-bench/peers.mjs && \
 *   nice -n 10 node node_modules/.cache/itera-bench/peers.mjs [--rounds 7] [--threads 1,2] [--tokens 128] \
 *     [--prompt-tokens 16] [--run-limit 10] [--json] [--append docs/benchmarks.md] [model dirs...]
 * --run-limit S: a llama.cpp run still going after S seconds stops there (counted as "cut").
 * Without model dirs: models/itera-lite-micro, models/itera-lite-tiny, models/transformer-tiny.
 */
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { appendFile, writeFile } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { basename, join } from "node:path";
import { getLlama, type LlamaContextSequence, LlamaLogLevel, type Token } from "node-llama-cpp";
import { env as ortEnv } from "onnxruntime-node";
import { type LanguageModel, loadModel } from "../src/runtime/index.js";
import { markdownTable } from "../src/util/table.js";
import { encodeGguf, type TensorType } from "./peers/gguf-writer.js";
import {
  type LlamaShape,
  llamaFlopsPerToken,
  llamaGguf,
  llamaParameters,
  llamaShapeOf,
} from "./peers/llama-shape.js";

const NODE_LLAMA_CPP_VERSION = "3.21.1";
const DEFAULT_MODELS = ["models/itera-lite-micro", "models/itera-lite-tiny", "models/transformer-tiny"];

interface Args {
  models: string[];
  threads: number[];
  rounds: number;
  tokens: number;
  promptTokens: number;
  /** seconds after which a llama.cpp run stops early (its rate then from the tokens it made) */
  runLimit: number;
  json: boolean;
  append?: string;
}

function parseArgs(argv: string[]): Args {
  const args: Args = {
    models: [],
    threads: [1, 2],
    rounds: 7,
    tokens: 128,
    promptTokens: 16,
    runLimit: 10,
    json: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const next = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === "--threads") args.threads = next().split(",").map(Number);
    else if (a === "--rounds") args.rounds = Number(next());
    else if (a === "--tokens") args.tokens = Number(next());
    else if (a === "--prompt-tokens") args.promptTokens = Number(next());
    else if (a === "--run-limit") args.runLimit = Number(next());
    else if (a === "--json") args.json = true;
    else if (a === "--append") args.append = next();
    else if (a.startsWith("-")) throw new Error(`unknown option ${a}`);
    else args.models.push(a);
  }
  if (args.models.length === 0) args.models = DEFAULT_MODELS;
  for (const t of args.threads) {
    if (!Number.isInteger(t) || t < 1) throw new Error(`--threads: ${t} is not a thread count`);
    // ggml's threads spin-wait for each other: more of them than CPUs collapses llama.cpp's speed
    if (t > cpus().length) throw new Error(`--threads: ${t} is more than this host's ${cpus().length} CPUs`);
  }
  if (!(args.rounds >= 1 && args.tokens >= 2 && args.promptTokens >= 1 && args.runLimit > 0)) {
    throw new Error(
      "--rounds must be at least 1, --tokens at least 2, --prompt-tokens at least 1, --run-limit above 0",
    );
  }
  return args;
}

/**
 * A temp folder removed on SIGINT/SIGTERM. Not src/util/interrupt.ts: node-llama-cpp's imports
 * register signal-exit's listener, and that module stands aside for another listener (so the
 * process would ignore the signal); this bench owns its signals instead.
 */
function tempDirRemovedOnSignal(prefix: string): { path: string; release: () => void } {
  const path = mkdtempSync(prefix);
  const onSignal = (sig: NodeJS.Signals) => {
    rmSync(path, { recursive: true, force: true });
    process.exit(sig === "SIGINT" ? 130 : 143);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  return {
    path,
    release: () => {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    },
  };
}

const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

interface RunResult {
  /** decode tokens/s after the first generated token, by the wall clock */
  tokensPerSecond: number;
  /**
   * the same steps per second of this process's CPU time (all its threads): less moved by other
   * jobs on a shared machine than the wall clock, but it counts spinning threads as work
   */
  tokensPerCpuSecond: number;
  /** how it decoded */
  mode: string;
  /** whether the time limit cut it short */
  cut: boolean;
}

/** CPU seconds this process has used (user + system, every thread). */
const cpuSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

const ENGINES = ["itera", "itera-step", "llama.cpp-f32", "llama.cpp-q8_0"] as const;

/** One way of decoding one model at one thread count: a generation of `tokens` new tokens, timed. */
interface Engine {
  model: string;
  threads: number;
  engine: (typeof ENGINES)[number];
  run(): Promise<RunResult>;
}

function iteraEngine(
  name: string,
  model: LanguageModel,
  threads: number,
  prompt: number[],
  tokens: number,
  fusedDecode: boolean,
): Engine {
  return {
    model: name,
    threads,
    engine: fusedDecode ? "itera" : "itera-step",
    async run() {
      // maxTokens counts the first token (from the prefill): `tokens` decode steps follow it
      let cpuAtFirst = 0;
      const g = await model.generate(
        prompt,
        { maxTokens: tokens + 1, ignoreEos: true, temperature: 0, fusedDecode },
        (e) => {
          if (e.index === 0) cpuAtFirst = cpuSeconds();
        },
      );
      const cpu = cpuSeconds() - cpuAtFirst;
      if (g.ids.length !== tokens + 1)
        throw new Error(`itera ${name}: ${g.ids.length} tokens, not ${tokens + 1}`);
      const t = g.timings;
      return {
        tokensPerSecond: (1000 * t.tokenMs.length) / (t.totalMs - t.ttftMs),
        tokensPerCpuSecond: t.tokenMs.length / cpu,
        mode: g.decode,
        cut: false,
      };
    },
  };
}

function llamaEngine(
  name: string,
  type: TensorType,
  sequence: LlamaContextSequence,
  threads: number,
  prompt: number[],
  tokens: number,
  runLimitMs: number,
): Engine {
  return {
    model: name,
    threads,
    engine: type === "F32" ? "llama.cpp-f32" : "llama.cpp-q8_0",
    async run() {
      await sequence.clearHistory();
      // the first token comes from the prompt's evaluation; each later one from one decode step
      const at: number[] = [];
      // ggml's threads wait for each other by spinning: on an oversubscribed machine two threads can
      // fall to a few tokens/s, so a run stops after the time limit (its rate from what it decoded)
      let cut = false;
      let cpuAtFirst = 0;
      for await (const _ of sequence.evaluate(prompt as Token[], { temperature: 0 })) {
        const now = performance.now();
        at.push(now);
        if (at.length === 1) cpuAtFirst = cpuSeconds();
        if (at.length === tokens + 1) break;
        if (at.length >= 3 && now - at[0]! > runLimitMs) {
          cut = true;
          break;
        }
      }
      if (at.length < 3) throw new Error(`llama.cpp ${name}: ${at.length} tokens, not ${tokens + 1}`);
      const steps = at.length - 1;
      const cpu = cpuSeconds() - cpuAtFirst;
      return {
        tokensPerSecond: (1000 * steps) / (at[steps]! - at[0]!),
        tokensPerCpuSecond: steps / cpu,
        mode: "step",
        cut,
      };
    },
  };
}

interface ShapeRow extends LlamaShape {
  llamaParameters: number;
  llamaFlopsPerToken: number;
  ggufBytes: { f32: number; q8_0: number };
}

interface Ratios {
  iteraVsF32: number;
  iteraVsQ8_0: number;
  stepVsF32: number;
  stepVsQ8_0: number;
}

interface ResultRow {
  model: string;
  threads: number;
  iteraMode: string;
  /** medians of decode tokens/s over the rounds */
  tokensPerSecond: Record<Engine["engine"], number>;
  /** llama.cpp runs (of the rounds) stopped by the time limit */
  cut: { f32: number; q8_0: number };
  /** medians over the rounds of each round's ratio */
  ratios: Ratios;
  /** the same by CPU time */
  perCpuSecond: Record<Engine["engine"], number>;
  cpuRatios: Ratios;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const loadStart = loadavg()[0]!;
  const started = new Date();
  const temp = tempDirRemovedOnSignal(join(tmpdir(), "itera-peers-"));
  const disposers: (() => Promise<void>)[] = [];
  try {
    const llama = await getLlama({
      build: "never",
      gpu: false,
      logLevel: LlamaLogLevel.error,
      maxThreads: Math.max(...args.threads),
    });
    const shapes: ShapeRow[] = [];
    const engines: Engine[] = [];
    for (const dir of args.models) {
      const name = basename(dir);
      const shape = await llamaShapeOf(dir, name);
      const ggufBytes = { f32: 0, q8_0: 0 };
      const contexts: { type: TensorType; sequence: (threads: number) => Promise<LlamaContextSequence> }[] =
        [];
      for (const type of ["F32", "Q8_0"] as const) {
        const path = join(temp.path, `${name}-${type.toLowerCase()}.gguf`);
        await writeFile(path, encodeGguf(llamaGguf(shape, type)));
        ggufBytes[type === "F32" ? "f32" : "q8_0"] = statSync(path).size;
        process.stderr.write(`peers: wrote ${path}\n`);
        const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
        disposers.push(() => model.dispose());
        contexts.push({
          type,
          sequence: async (threads) => {
            const context = await model.createContext({
              contextSize: args.promptTokens + args.tokens + 64,
              sequences: 1,
              threads: { ideal: threads, min: threads },
            });
            disposers.push(() => context.dispose());
            return context.getSequence();
          },
        });
      }
      shapes.push({
        ...shape,
        llamaParameters: llamaParameters(shape),
        llamaFlopsPerToken: llamaFlopsPerToken(shape),
        ggufBytes,
      });
      for (const threads of args.threads) {
        const model = await loadModel(dir, { threads });
        disposers.push(() => model.dispose());
        // a fixed prompt of token ids: the house tokenizer's ids of a Shakespeare line, repeated for
        // long contexts (--prompt-tokens 1984: decode speed with a full KV cache)
        const line =
          "ROMEO:\nWhat light through yonder window breaks? It is the east, and Juliet is the sun.\n";
        const text = line.repeat(Math.ceil(args.promptTokens / 60));
        const prompt = model.tokenizer.encode(text, false).slice(0, args.promptTokens);
        if (prompt.length < args.promptTokens)
          throw new Error(`${dir}: the prompt has only ${prompt.length} tokens`);
        engines.push(iteraEngine(name, model, threads, prompt, args.tokens, true));
        engines.push(iteraEngine(name, model, threads, prompt, args.tokens, false));
        for (const c of contexts) {
          const sequence = await c.sequence(threads);
          engines.push(
            llamaEngine(name, c.type, sequence, threads, prompt, args.tokens, 1000 * args.runLimit),
          );
        }
      }
    }

    // Round 0 warms up (itera builds its decode-loop sessions, llama.cpp its graphs): not recorded.
    // Within a round the engines of one model and thread count run back to back, starting with a
    // different one each round, so that load from other jobs falls on all of them alike.
    const speeds = new Map<Engine, number[]>(engines.map((e) => [e, []]));
    const cpuSpeeds = new Map<Engine, number[]>(engines.map((e) => [e, []]));
    const modes = new Map<Engine, string>();
    const cuts = new Map<Engine, number>(engines.map((e) => [e, 0]));
    const groups = [...new Set(engines.map((e) => `${e.model}/${e.threads}`))].map((k) =>
      engines.filter((e) => `${e.model}/${e.threads}` === k),
    );
    const runs = (args.rounds + 1) * engines.length;
    let done = 0;
    for (let round = 0; round <= args.rounds; round++) {
      for (const group of groups) {
        for (let i = 0; i < group.length; i++) {
          const e = group[(i + round) % group.length]!;
          const r = await e.run();
          if (round > 0) speeds.get(e)!.push(r.tokensPerSecond);
          if (round > 0) cpuSpeeds.get(e)!.push(r.tokensPerCpuSecond);
          if (round > 0 && r.cut) cuts.set(e, cuts.get(e)! + 1);
          modes.set(e, r.mode);
          done++;
        }
        process.stderr.write(
          `peers: round ${round}/${args.rounds}${round === 0 ? " (warm-up)" : ""} ${group[0]!.model} threads=${group[0]!.threads} ` +
            `(${done}/${runs} runs) ${group.map((e) => `${e.engine} ${speeds.get(e)!.at(-1)?.toFixed(0) ?? "-"}`).join(", ")}\n`,
        );
      }
    }

    const results: ResultRow[] = groups.map((group) => {
      const get = (engine: Engine["engine"]) => group.find((e) => e.engine === engine)!;
      const summary = (by: Map<Engine, number[]>) => {
        const s = (engine: Engine["engine"]) => by.get(get(engine))!;
        const ratio = (a: Engine["engine"], b: Engine["engine"]) => median(s(a).map((x, i) => x / s(b)[i]!));
        return {
          medians: Object.fromEntries(ENGINES.map((e) => [e, median(s(e))])) as Record<
            Engine["engine"],
            number
          >,
          ratios: {
            iteraVsF32: ratio("itera", "llama.cpp-f32"),
            iteraVsQ8_0: ratio("itera", "llama.cpp-q8_0"),
            stepVsF32: ratio("itera-step", "llama.cpp-f32"),
            stepVsQ8_0: ratio("itera-step", "llama.cpp-q8_0"),
          },
        };
      };
      const wall = summary(speeds);
      const cpu = summary(cpuSpeeds);
      return {
        model: group[0]!.model,
        threads: group[0]!.threads,
        iteraMode: modes.get(get("itera")) ?? "?",
        cut: { f32: cuts.get(get("llama.cpp-f32"))!, q8_0: cuts.get(get("llama.cpp-q8_0"))! },
        tokensPerSecond: wall.medians,
        ratios: wall.ratios,
        perCpuSecond: cpu.medians,
        cpuRatios: cpu.ratios,
      };
    });
    const loadEnd = loadavg()[0]!;
    const machine = `${cpus()[0]?.model ?? "unknown CPU"}, ${cpus().length} logical CPUs; Node ${process.version}`;
    const command =
      `node node_modules/.cache/itera-bench/peers.mjs ${process.argv.slice(2).join(" ")}`.trim();

    if (args.json) {
      const out = {
        date: started.toISOString(),
        machine,
        onnxruntime: ortEnv.versions?.node ?? null,
        nodeLlamaCpp: NODE_LLAMA_CPP_VERSION,
        llamaCppRelease: llama.llamaCppRelease,
        loadAverage: { start: loadStart, end: loadEnd },
        rounds: args.rounds,
        tokens: args.tokens,
        promptTokens: args.promptTokens,
        shapes,
        results,
      };
      process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    }
    const report = renderReport(args, shapes, results, {
      started,
      machine,
      command,
      loadStart,
      loadEnd,
      llamaCpp: `${llama.llamaCppRelease.repo} ${llama.llamaCppRelease.release}`,
    });
    if (!args.json) process.stdout.write(`${report}\n`);
    if (args.append) await appendFile(args.append, `\n${report}`);
  } finally {
    for (const dispose of disposers.reverse()) await dispose();
    rmSync(temp.path, { recursive: true, force: true });
    temp.release();
  }
}

/** The two measures reported: the wall clock, and CPU time (steadier on a shared machine). */
interface Measure {
  intro: string;
  unit: string;
  medians: (r: ResultRow) => Record<Engine["engine"], number>;
  ratios: (r: ResultRow) => Ratios;
  showCuts: boolean;
}

const MEASURES: Measure[] = [
  {
    intro:
      "Decode tokens/s (medians over the rounds) and itera / llama.cpp (median of the per-round ratios; above 1: itera faster). " +
      "`itera`: generate()'s default decode (`fused`: many steps per ONNX Runtime call); `itera step`: one call per token " +
      "(`fusedDecode: false`). By the wall clock:",
    unit: "tok/s",
    medians: (r) => r.tokensPerSecond,
    ratios: (r) => r.ratios,
    showCuts: true,
  },
  {
    intro:
      "The same decode steps per second of the process's CPU time (user + system, all threads; from the first generated " +
      "token on): less moved by other jobs than the wall clock, but a thread that spin-waits counts as working:",
    unit: "tok/CPU-s",
    medians: (r) => r.perCpuSecond,
    ratios: (r) => r.cpuRatios,
    showCuts: false,
  },
];

/** One row per model and thread count: the four engines' medians, then itera's ratios to llama.cpp. */
function speedTable(results: ResultRow[], { unit, medians, ratios, showCuts }: Measure): string {
  const x = (r: number) => `${r.toFixed(2)}x`;
  const cutNote = (n: number) => (showCuts && n ? ` (${n} runs cut)` : "");
  return markdownTable(
    [
      "model",
      "threads",
      `itera ${unit}`,
      `itera step ${unit}`,
      `llama.cpp f32 ${unit}`,
      `llama.cpp q8_0 ${unit}`,
      "itera / f32",
      "itera / q8_0",
      "step / f32",
      "step / q8_0",
    ],
    results.map((r) => {
      const m = medians(r);
      const q = ratios(r);
      return [
        r.model,
        r.threads,
        `${m.itera.toFixed(0)} (${r.iteraMode})`,
        m["itera-step"].toFixed(0),
        `${m["llama.cpp-f32"].toFixed(0)}${cutNote(r.cut.f32)}`,
        `${m["llama.cpp-q8_0"].toFixed(0)}${cutNote(r.cut.q8_0)}`,
        x(q.iteraVsF32),
        x(q.iteraVsQ8_0),
        x(q.stepVsF32),
        x(q.stepVsQ8_0),
      ];
    }),
  );
}

function renderReport(
  args: Args,
  shapes: ShapeRow[],
  results: ResultRow[],
  run: {
    started: Date;
    machine: string;
    command: string;
    loadStart: number;
    loadEnd: number;
    llamaCpp: string;
  },
): string {
  const k = (n: number) => `${(n / 1000).toFixed(0)}k`;
  return [
    `## Peers: itera vs llama.cpp (bench/peers.ts) — ${run.started.toISOString().slice(0, 16)}Z`,
    "",
    `Machine: ${run.machine}; onnxruntime-node ${ortEnv.versions?.node ?? "?"}; node-llama-cpp ${NODE_LLAMA_CPP_VERSION} ` +
      `(${run.llamaCpp}, prebuilt CPU binaries). Load average ${run.loadStart.toFixed(1)} at the start, ` +
      `${run.loadEnd.toFixed(1)} at the end (other jobs share the CPUs).`,
    `Command: \`${run.command}\` (built with esbuild as in the file's header). ${args.rounds} rounds after a warm-up round; ` +
      `batch 1, greedy, a ${args.promptTokens}-token prompt, then ${args.tokens} decode steps timed from the first generated token, end-of-text ignored; ` +
      `a llama.cpp run still going after ${args.runLimit} s stops there and counts the steps it made ("cut").`,
    "",
    "The llama models (random weights, tied head, F32 norms):",
    "",
    markdownTable(
      [
        "house model",
        "vocab",
        "hidden",
        "layers",
        "heads × size (kv)",
        "llama FFN",
        "house params",
        "llama params",
        "house MFLOP/token",
        "llama MFLOP/token",
        "GGUF f32 / q8_0 bytes",
      ],
      shapes.map((s) => [
        s.name,
        s.vocab,
        s.hidden,
        s.layers,
        `${s.heads} × ${s.headDim} (${s.kvHeads})`,
        s.ffn,
        k(s.houseParameters),
        k(s.llamaParameters),
        s.houseFlopsPerToken === null ? "n/a" : (s.houseFlopsPerToken / 1e6).toFixed(2),
        (s.llamaFlopsPerToken / 1e6).toFixed(2),
        `${s.ggufBytes.f32} / ${s.ggufBytes.q8_0}`,
      ]),
    ),
    "",
    ...MEASURES.flatMap((m) => [m.intro, "", speedTable(results, m), ""]),
  ].join("\n");
}

await main();
