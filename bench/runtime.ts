/**
 * Runtime benchmark: prefill and decode tokens/s of model folders per thread count, decode speed
 * against the context position, batched decode, prefill-in-one-call versus stepping as a ratio
 * measured in the same run, and where a decode step's wall time goes (ONNX Runtime kernels,
 * ONNX Runtime framework, JavaScript outside session.run).
 *
 * Run (from the repository root):
 *   npx esbuild bench/runtime.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/itera-bench/runtime.mjs && \
 *   nice -n 10 node node_modules/.cache/itera-bench/runtime.mjs [--append docs/benchmarks.md] [model dirs...]
 * Without model dirs it benchmarks every folder under models/. `--kv-split` runs only the KV-cache
 * context sweep: fused greedy decode with the split cache (kv-split.ts) against the whole-cache
 * Concat, interleaved (run it as `node --expose-gc ...` to collect garbage between runs).
 */
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { appendFile, mkdtemp } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, relative } from "node:path";
import { performance } from "node:perf_hooks";
import type { InferenceSession } from "onnxruntime-node";
import { env } from "onnxruntime-node";
import { FusedDecoder, loopFeatures } from "../src/runtime/fused-decode.js";
import { type LanguageModel, loadModel, type State } from "../src/runtime/index.js";
import { argmax } from "../src/runtime/sampling.js";
import { markdownTable } from "../src/util/table.js";

interface Args {
  models: string[];
  threads: number[];
  contexts: number[];
  batches: number[];
  decodeTokens: number;
  repetitions: number;
  append?: string;
  /** Only the KV-cache context sweep: fused greedy decode with the split cache against the whole-cache Concat. */
  kvSplit: boolean;
}

function parseArgs(argv: string[]): Args {
  const args: Args = {
    models: [],
    threads: [1, 2],
    contexts: [64, 256, 1024, 2048],
    batches: [1, 4, 8],
    decodeTokens: 256,
    repetitions: 3,
    kvSplit: false,
  };
  const list = (v: string) => v.split(",").map(Number);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const next = () => argv[++i]!;
    if (a === "--threads") args.threads = list(next());
    else if (a === "--contexts") args.contexts = list(next());
    else if (a === "--batches") args.batches = list(next());
    else if (a === "--decode-tokens") args.decodeTokens = Number(next());
    else if (a === "--repetitions") args.repetitions = Number(next());
    else if (a === "--append") args.append = next();
    else if (a === "--kv-split") args.kvSplit = true;
    else args.models.push(a);
  }
  if (args.models.length === 0) {
    args.models = readdirSync("models", { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .map((d) => join("models", d.name));
  }
  return args;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Decode tokens/s of a generation: the tokens after the first over the time after the first. */
/** CPU time (user + system, all threads) since `start`, in µs. */
const cpuUs = (start: NodeJS.CpuUsage) => {
  const c = process.cpuUsage(start);
  return c.user + c.system;
};
const rate = (g: { timings: { tokenMs: number[]; totalMs: number; ttftMs: number } }) =>
  (1000 * g.timings.tokenMs.length) / (g.timings.totalMs - g.timings.ttftMs);

/** Count the wall time spent inside session.run (the rest of a step is JavaScript). */
function instrument(session: InferenceSession): {
  runMs: (skipFirst?: boolean) => number;
  reset: () => void;
} {
  const original = session.run.bind(session);
  let calls: number[] = [];
  (session as { run: unknown }).run = async (...a: Parameters<InferenceSession["run"]>) => {
    const t = performance.now();
    try {
      return await (original as (...x: unknown[]) => ReturnType<InferenceSession["run"]>)(...a);
    } finally {
      calls.push(performance.now() - t);
    }
  };
  return {
    runMs: (skipFirst = false) => calls.slice(skipFirst ? 1 : 0).reduce((x, y) => x + y, 0),
    reset: () => {
      calls = [];
    },
  };
}

/** Feed `count` tokens one call at a time from `state`; greedy, as a decode loop does. */
async function decode(model: LanguageModel, state: State, count: number, first: number[]) {
  let s = state;
  let next = first;
  for (let i = 0; i < count; i++) {
    const out = await model.forward(
      next.map((id) => [id]),
      s,
    );
    s = out.state;
    next = next.map((_, r) => argmax(out.logits.subarray(r * out.vocab, (r + 1) * out.vocab)));
  }
  return s;
}

function promptIds(model: LanguageModel, n: number): number[] {
  const text = "ROMEO:\nWhat light through yonder window breaks? It is the east, and Juliet is the sun.\n";
  const ids = model.tokenizer.encode(text.repeat(Math.ceil(n / 20) + 1), false);
  return ids.slice(0, n);
}

interface Row {
  model: string;
  threads: number;
  prefillTokens: number;
  prefillOneCall: number | null;
  prefillStepped: number;
  decode: number;
  jsShare: number;
  /** Sampled decode through generate() (temperature, top-k, the card's top-p; streamed text). */
  generate: number;
  generateMode: string;
  /** The same sampling stepped one call per token. */
  generateStep: number;
  /** Median over runs of sampled / greedy tokens/s, each pair measured back to back. */
  sampledVsGreedy: number;
  /** The same pairs by CPU time per token (process.cpuUsage): time other jobs take from this one does not count. */
  sampledVsGreedyCpu: number;
  generateJsShare: number;
  /** Greedy decode through generate(): many steps per call where the model allows it (fused-decode.ts). */
  greedy: number;
  greedyMode: string;
  greedyJsShare: number;
  kernelShare: number | null;
  /** Kernels ONNX Runtime runs per decode step (after its graph optimisations). */
  nodesPerRun: number | null;
}

/** Sum kernel time and whole-run time from an ONNX Runtime profile (Chrome trace JSON). */
function profileShares(file: string): { kernelUs: number; runUs: number; nodesPerRun: number } {
  const events = JSON.parse(readFileSync(file, "utf8")) as { cat: string; name: string; dur: number }[];
  let kernelUs = 0;
  let runUs = 0;
  let kernels = 0;
  let runs = 0;
  for (const e of events) {
    if (e.cat === "Node" && e.name.endsWith("_kernel_time")) {
      kernelUs += e.dur;
      kernels++;
    }
    if (e.cat === "Session" && e.name === "model_run") {
      runUs += e.dur;
      runs++;
    }
  }
  return { kernelUs, runUs, nodesPerRun: runs ? kernels / runs : 0 };
}

async function benchModel(dir: string, threads: number, args: Args, rows: Row[], extra: string[][]) {
  const profDir = await mkdtemp(join(tmpdir(), "itera-prof-"));
  const model = await loadModel(dir, { threads });
  const name = model.card?.id ?? relative(".", dir);
  try {
    const timer = instrument(model.session);
    const p = Math.min(128, Math.floor(model.contextLength / 2));
    const ids = promptIds(model, p);

    // Prefill: whole prompt in one call versus one token per call, same run.
    const oneCall: number[] = [];
    const stepped: number[] = [];
    for (let r = 0; r < args.repetitions; r++) {
      if (model.io.fixedSequence === null) {
        const t = performance.now();
        await model.forward([ids], model.newState(1));
        oneCall.push((1000 * p) / (performance.now() - t));
      }
      const t = performance.now();
      let s = model.newState(1);
      for (const id of ids) s = (await model.forward([[id]], s)).state;
      stepped.push((1000 * p) / (performance.now() - t));
    }

    // Decode: single stream after a short prompt; JS share from timing session.run.
    const decodeSpeeds: number[] = [];
    let jsShare = 0;
    const n = Math.min(args.decodeTokens, model.limitedContext ? model.contextLength - 9 : args.decodeTokens);
    for (let r = 0; r < args.repetitions; r++) {
      const pre = await model.forward([ids.slice(0, 8)], model.newState(1));
      timer.reset();
      const t = performance.now();
      await decode(model, pre.state, n, [ids[8]!]);
      const wall = performance.now() - t;
      decodeSpeeds.push((1000 * n) / wall);
      jsShare = 1 - timer.runMs() / wall;
    }

    // Through generate(), interleaved run by run so that load from other jobs falls on all alike:
    // greedy, sampled (temperature 0.8, top-k 40, the card's top-p, seeded) fused where the model
    // allows it (fused-decode.ts), and the same sampling stepped one call per token (fusedDecode: false).
    const greedySpeeds: number[] = [];
    const sampledSpeeds: number[] = [];
    const sampledStepSpeeds: number[] = [];
    const cpuRatios: number[] = [];
    let greedyMode = "step";
    let sampledMode = "step";
    let greedyJsShare = 0;
    let generateJsShare = 0;
    const sampling = { temperature: 0.8, topK: 40 };
    const search = model.config.search ?? {};
    const sampledLoop = await model.fusedDecoder(
      loopFeatures({
        ...sampling,
        topP: search.top_p ?? 1,
        repetitionPenalty: search.repetition_penalty ?? 1,
      }),
    );
    const greedyLoop = await model.fusedDecoder();
    const greedyTimer = greedyLoop instanceof FusedDecoder ? instrument(greedyLoop.session) : timer;
    const sampledTimer = sampledLoop instanceof FusedDecoder ? instrument(sampledLoop.session) : timer;
    const generated = model.limitedContext ? n + 1 : Math.max(n, Math.min(2048, args.decodeTokens * 8));
    // JavaScript share of the decode: wall time from the first token to the end, less the loop's
    // calls (fused) or every session.run after the prefill (stepped)
    const decodeJsShare = (g: { timings: { totalMs: number; ttftMs: number } }, t: typeof timer) =>
      1 - (t === timer ? timer.runMs(true) : t.runMs()) / (g.timings.totalMs - g.timings.ttftMs);
    for (let r = 0; r <= args.repetitions; r++) {
      const common = { maxTokens: generated, ignoreEos: true };
      timer.reset();
      greedyTimer.reset();
      const greedyCpu = process.cpuUsage();
      const greedy = await model.generate(ids.slice(0, 8), { ...common, temperature: 0 }, () => {});
      const greedyCpuUs = cpuUs(greedyCpu);
      const greedyShare = decodeJsShare(greedy, greedyTimer);
      timer.reset();
      sampledTimer.reset();
      const sampledCpu = process.cpuUsage();
      const sampled = await model.generate(ids.slice(0, 8), { ...common, ...sampling, seed: r }, () => {});
      const sampledCpuUs = cpuUs(sampledCpu);
      const sampledShare = decodeJsShare(sampled, sampledTimer);
      const stepped = await model.generate(
        ids.slice(0, 8),
        { ...common, ...sampling, seed: r, fusedDecode: false },
        () => {},
      );
      greedyMode = greedy.decode;
      sampledMode = sampled.decode;
      // the first round builds the loop sessions: a warm-up, not measured
      if (r === 0) continue;
      greedySpeeds.push(rate(greedy));
      sampledSpeeds.push(rate(sampled));
      sampledStepSpeeds.push(rate(stepped));
      cpuRatios.push(greedyCpuUs / greedy.ids.length / (sampledCpuUs / sampled.ids.length));
      greedyJsShare = greedyShare;
      generateJsShare = sampledShare;
    }

    // Kernel share of session.run, from an ONNX Runtime profile of one more decode run.
    let kernelShare: number | null = null;
    let nodesPerRun: number | null = null;
    {
      const profiled = await loadModel(dir, { threads, profileFilePrefix: join(profDir, "decode") });
      const pre = await profiled.forward([ids.slice(0, 8)], profiled.newState(1));
      await decode(profiled, pre.state, Math.min(n, 128), [ids[8]!]);
      profiled.session.endProfiling();
      await profiled.dispose();
      // onnxruntime-node does not return the profile's path: it is the prefix plus a timestamp.
      const file = readdirSync(profDir).find((f) => f.startsWith("decode") && f.endsWith(".json"));
      if (file) {
        const shares = profileShares(join(profDir, file));
        if (shares.runUs > 0) kernelShare = shares.kernelUs / shares.runUs;
        nodesPerRun = Math.round(shares.nodesPerRun);
      }
    }

    rows.push({
      model: name,
      threads,
      prefillTokens: p,
      prefillOneCall: oneCall.length ? median(oneCall) : null,
      prefillStepped: median(stepped),
      decode: median(decodeSpeeds),
      jsShare,
      generate: median(sampledSpeeds),
      generateMode: sampledMode,
      generateStep: median(sampledStepSpeeds),
      sampledVsGreedy: median(sampledSpeeds.map((x, i) => x / greedySpeeds[i]!)),
      sampledVsGreedyCpu: median(cpuRatios),
      generateJsShare,
      greedy: median(greedySpeeds),
      greedyMode,
      greedyJsShare,
      kernelShare,
      nodesPerRun,
    });

    // Decode speed against the context position: 64 tokens decoded after the state holds c tokens,
    // as a ratio to the first context measured (in the same run).
    let base: number | undefined;
    const contexts = [...args.contexts];
    // A model bounded by its context also gets the last position that leaves room for 64 tokens.
    const last = model.contextLength - 64;
    if (model.limitedContext && last > 0 && !contexts.includes(last) && contexts.some((c) => c > last)) {
      contexts.splice(
        contexts.findIndex((c) => c > last),
        0,
        last,
      );
    }
    // Fill a state to each context first, then time decoding from every context in interleaved
    // rounds, so that load from other jobs falls on all contexts alike (median per context).
    const filled: { c: number; state: State; first: number; fill: number[] }[] = [];
    for (const c of contexts) {
      if (model.limitedContext && c + 64 > model.contextLength) continue;
      const fill = promptIds(model, c);
      let s = model.newState(1);
      if (model.io.fixedSequence === null) s = (await model.forward([fill], s)).state;
      else for (const id of fill) s = (await model.forward([[id]], s)).state;
      filled.push({ c, state: s, first: fill[0]!, fill });
    }
    // a recurrent state does not grow: longer runs, so that each one outlasts the timer's noise
    const tokens = model.limitedContext ? 64 : 256;
    const speeds: number[][] = filled.map(() => []);
    // the same tokens greedy through generate() after a prompt of c tokens: fused where it applies
    const generateSpeeds: number[][] = filled.map(() => []);
    let generateMode = "step";
    for (let r = 0; r < Math.max(9, args.repetitions); r++) {
      for (const [i, f] of filled.entries()) {
        const t = performance.now();
        await decode(model, f.state, tokens, [f.first]);
        speeds[i]!.push((1000 * tokens) / (performance.now() - t));
        const g = await model.generate(f.fill, { maxTokens: tokens + 1, ignoreEos: true, temperature: 0 });
        generateSpeeds[i]!.push(rate(g));
        generateMode = g.decode;
      }
    }
    let generateBase: number | undefined;
    for (const c of contexts) {
      const i = filled.findIndex((f) => f.c === c);
      if (i < 0) {
        extra.push([name, String(threads), String(c), "beyond context", "1", "", "", "", ""]);
        continue;
      }
      const speed = median(speeds[i]!);
      base ??= speed;
      const viaGenerate = median(generateSpeeds[i]!);
      generateBase ??= viaGenerate;
      extra.push([
        name,
        String(threads),
        String(c),
        speed.toFixed(0),
        "1",
        `${(speed / base).toFixed(2)}x`,
        `${viaGenerate.toFixed(0)} (${generateMode})`,
        `${(viaGenerate / generateBase).toFixed(2)}x`,
        "",
      ]);
    }

    // Batched decode: B streams of 64 tokens each; aggregate tokens/s.
    for (const b of args.batches) {
      if (b === 1 || (model.io.fixedBatch !== null && b > model.io.fixedBatch)) continue;
      const rowsIds = Array.from({ length: b }, (_, r) => ids.slice(r, r + 8));
      const pre = await model.forward(rowsIds, model.newState(b));
      const steps = model.limitedContext ? Math.min(64, model.contextLength - 8) : 64;
      const t = performance.now();
      await decode(
        model,
        pre.state,
        steps,
        rowsIds.map((r) => r[0]!),
      );
      const stepped = (1000 * steps * b) / (performance.now() - t);
      // The same streams greedy through generate(): fused where the model allows it.
      const greedy = await model.generateBatch(rowsIds, {
        maxTokens: 4 * steps,
        ignoreEos: true,
        temperature: 0,
      });
      const g = greedy[0]!;
      const greedyRate = (1000 * g.timings.tokenMs.length * b) / (g.timings.totalMs - g.timings.ttftMs);
      extra.push([
        name,
        String(threads),
        "8",
        stepped.toFixed(0),
        String(b),
        "",
        "",
        "",
        `${greedyRate.toFixed(0)} (${g.decode})`,
      ]);
    }
  } finally {
    await model.dispose();
    rmSync(profDir, { recursive: true, force: true });
  }
}

/**
 * KV-cache decode speed against the context (issue #17): greedy generate() after a prompt of c
 * tokens, fused, with the cache split into prefix and chunk (kv-split.ts) and with the whole cache
 * concatenated every step (`splitKv: false`, as before), interleaved run by run and context by
 * context; whether both gave the same tokens.
 */
async function benchKvSplit(dir: string, threads: number, args: Args, out: string[][]) {
  const model = await loadModel(dir, { threads });
  const name = model.card?.id ?? relative(".", dir);
  try {
    const tokens = 64;
    const contexts = args.contexts.map((c) => Math.min(c, model.contextLength - tokens));
    const speeds = contexts.map(() => ({
      split: [] as number[],
      concat: [] as number[],
      splitCpu: [] as number[],
      concatCpu: [] as number[],
      same: true,
    }));
    const mode = await model.fusedDecoder(undefined, true);
    const kv = mode instanceof FusedDecoder ? mode.kvCache : mode.unsupported;
    for (let r = 0; r < Math.max(1, args.repetitions); r++) {
      for (const [i, c] of contexts.entries()) {
        const prompt = promptIds(model, c);
        const options = { maxTokens: tokens + 1, ignoreEos: true, temperature: 0 };
        // alternate which goes first, so that neither always runs right after the prefill
        const order = r % 2 === 0 ? [true, false] : [false, true];
        const ids: Record<string, number[]> = {};
        for (const splitKv of order) {
          // Under --expose-gc, a collection first: the garbage of the run before (a 2,048-position
          // run leaves tens of MB) is not collected during whichever run comes next.
          (globalThis as { gc?: () => void }).gc?.();
          // CPU time of the decode too: on a shared machine it moves less with the load than wall time
          let cpuAtFirst: NodeJS.CpuUsage | undefined;
          const g = await model.generate(prompt, { ...options, splitKv }, (e) => {
            if (e.index === 0) cpuAtFirst = process.cpuUsage();
          });
          const cpu = process.cpuUsage(cpuAtFirst);
          speeds[i]![splitKv ? "split" : "concat"].push(rate(g));
          speeds[i]![splitKv ? "splitCpu" : "concatCpu"].push(
            (1e6 * (g.ids.length - 1)) / (cpu.user + cpu.system),
          );
          ids[String(splitKv)] = g.ids;
        }
        if (ids.true!.join() !== ids.false!.join()) speeds[i]!.same = false;
      }
    }
    const m = (i: number, k: "split" | "concat" | "splitCpu" | "concatCpu") => median(speeds[i]![k]);
    for (const [i, c] of contexts.entries()) {
      const cells = (k: "split" | "concat") => [
        m(i, k).toFixed(0),
        `${(m(i, k) / m(0, k)).toFixed(2)}x`,
        m(i, `${k}Cpu`).toFixed(0),
        `${(m(i, `${k}Cpu`) / m(0, `${k}Cpu`)).toFixed(2)}x`,
      ];
      out.push([
        name,
        String(threads),
        String(c),
        ...cells("concat"),
        ...cells("split"),
        `${(m(i, "split") / m(i, "concat")).toFixed(2)}x`,
        `${(m(i, "splitCpu") / m(i, "concatCpu")).toFixed(2)}x`,
        speeds[i]!.same ? "yes" : "NO",
        typeof kv === "string" ? kv : `concat (${kv.concat})`,
      ]);
    }
  } finally {
    await model.dispose();
  }
}

async function mainKvSplit(args: Args) {
  const loadStart = loadavg()[0]!.toFixed(1);
  const out: string[][] = [];
  for (const dir of args.models) {
    for (const threads of args.threads) {
      process.stderr.write(`bench --kv-split ${dir} threads=${threads}\n`);
      await benchKvSplit(dir, threads, args, out);
    }
  }
  const command =
    `node ${[...process.execArgv, "node_modules/.cache/itera-bench/runtime.mjs", ...process.argv.slice(2)].join(" ")}`.trim();
  const report = [
    `Machine: ${cpus()[0]?.model ?? "unknown CPU"}, ${cpus().length} logical CPUs; Node ${process.version}; ` +
      `onnxruntime-node ${env.versions?.node ?? "?"}; load average ${loadStart} at the start, ` +
      `${loadavg()[0]!.toFixed(1)} at the end. Command: \`${command}\`. Greedy generate() after a prompt of ` +
      `\`context\` tokens, 64 tokens, fused; medians of ${args.repetitions} interleaved rounds.`,
    "",
    markdownTable(
      [
        "model",
        "threads",
        "context",
        "whole-cache Concat tok/s",
        "vs first",
        "tok/CPU-s",
        "vs first",
        "split cache tok/s",
        "vs first",
        "tok/CPU-s",
        "vs first",
        "split / Concat",
        "(CPU)",
        "same tokens",
        "cache",
      ],
      out,
    ),
    "",
  ].join("\n");
  process.stdout.write(`${report}\n`);
  if (args.append) await appendFile(args.append, `\n${report}`);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.kvSplit) return mainKvSplit(args);
  const loadStart = loadavg()[0]!.toFixed(1);
  const rows: Row[] = [];
  const extra: string[][] = [];
  for (const dir of args.models) {
    for (const threads of args.threads) {
      process.stderr.write(`bench ${dir} threads=${threads}\n`);
      await benchModel(dir, threads, args, rows, extra);
    }
  }
  const cpu = cpus()[0]?.model ?? "unknown CPU";
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  const command =
    `node node_modules/.cache/itera-bench/runtime.mjs ${process.argv.slice(2).join(" ")}`.trim();
  const report = [
    `## Runtime (bench/runtime.ts) — ${new Date().toISOString().slice(0, 16)}Z`,
    "",
    `Machine: ${cpu}, ${cpus().length} logical CPUs; Node ${process.version}; onnxruntime-node ${env.versions?.node ?? "?"}; ` +
      `load average ${loadStart} at the start, ${loadavg()[0]!.toFixed(1)} at the end (other jobs share the CPUs: absolute figures ` +
      "move with the load, ratios within a run less so).",
    `Command: \`${command}\` (built with esbuild as in the file's header). Medians of ${args.repetitions} runs; fp32.`,
    "",
    "Prefill of a prompt in one call versus one token per call (same run); single-stream decode as a bare forward loop " +
      "(greedy); through generate() greedy and sampled (temperature 0.8, top-k 40, the card's top-p 0.95, seeded; streamed text), " +
      "interleaved run by run (`fused`: many steps per session.run, src/runtime/fused-decode.ts; `step`: one call per token), " +
      "the same sampling stepped (`fusedDecode: false`), and sampled / greedy as the median of back-to-back pairs, by tokens/s and by CPU time " +
      "per token (process.cpuUsage, whole generate() calls: the time other jobs take from this one does not count); where a decode step's time goes " +
      "(JavaScript outside session.run; ONNX Runtime kernels as a share of session.run, from its profiler — the rest of " +
      "session.run is ONNX Runtime's per-node framework work and the Node binding):",
    "",
    markdownTable(
      [
        "model",
        "threads",
        "prompt",
        "prefill tok/s (one call)",
        "prefill tok/s (stepped)",
        "one-call / stepped",
        "decode tok/s",
        "JS outside session.run",
        "greedy generate() tok/s",
        "JS outside session.run (greedy)",
        "sampled generate() tok/s",
        "JS outside session.run (sampled)",
        "sampled, stepped tok/s",
        "sampled / greedy",
        "sampled / greedy (CPU time)",
        "kernels / session.run",
        "kernels per step",
      ],
      rows.map((r) => [
        r.model,
        r.threads,
        r.prefillTokens,
        r.prefillOneCall === null ? "n/a (1 token per call)" : r.prefillOneCall.toFixed(0),
        r.prefillStepped.toFixed(0),
        r.prefillOneCall === null ? "n/a" : `${(r.prefillOneCall / r.prefillStepped).toFixed(2)}x`,
        r.decode.toFixed(0),
        pct(r.jsShare),
        `${r.greedy.toFixed(0)} (${r.greedyMode})`,
        pct(r.greedyJsShare),
        `${r.generate.toFixed(0)} (${r.generateMode})`,
        pct(r.generateJsShare),
        r.generateStep.toFixed(0),
        `${r.sampledVsGreedy.toFixed(2)}x`,
        `${r.sampledVsGreedyCpu.toFixed(2)}x`,
        r.kernelShare === null ? "n/a" : pct(r.kernelShare),
        r.nodesPerRun ?? "n/a",
      ]),
    ),
    "",
    "Decode tokens/s after the state holds `context` tokens (batch 1; 64 tokens per run for KV-cache models, 256 for " +
      "recurrent ones; median of at least 9 runs, the contexts interleaved run by run): a bare forward loop (one call per token) " +
      "and greedy generate() after a prompt of `context` tokens (fused where it applies; its time from the first token on), " +
      "and aggregate decode tokens/s of batches (64 steps after an 8-token prompt; greedy generate(): 256 tokens per stream):",
    "",
    markdownTable(
      [
        "model",
        "threads",
        "context",
        "decode tok/s",
        "batch",
        "vs first context",
        "greedy generate() tok/s after context",
        "vs first context (generate)",
        "greedy generate() tok/s",
      ],
      extra,
    ),
    "",
  ].join("\n");
  process.stdout.write(`${report}\n`);
  if (args.append) {
    if (!existsSync(args.append)) {
      await appendFile(
        args.append,
        "# Benchmarks\n\nMeasured figures, each with the command that reproduces it and the machine it ran on.\n" +
          "Speed comparisons are ratios measured in one run; tests never assert on time.\n",
      );
    }
    await appendFile(args.append, `\n${report}`);
  }
}

await main();
