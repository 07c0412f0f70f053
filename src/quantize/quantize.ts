/**
 * `itera quantize`: read a model folder, choose a precision per weight (a fixed mode, or measured
 * mixed precision under a quality budget), rewrite the ONNX graph, measure before and after, and
 * write a complete model folder — or nothing at all when the result does not fit the budget.
 */
import { constants } from "node:fs";
import { access, cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { IteraError } from "../errors.js";
import { loadModelCard } from "../model/card.js";
import { loadGenaiConfig } from "../model/genai-config.js";
import {
  dataTypeName,
  decodeModel,
  encodeModel,
  externalRefs,
  Graph,
  loadModel as loadOnnx,
  type ModelProto,
  saveModel,
  tensorByteSize,
} from "../onnx/index.js";
import type { EvalOptions } from "../runtime/evaluate.js";
import { applySplit, cardText, datasetsDir, methodFromCard } from "../runtime/eval-text.js";
import { writeDirAtomic } from "../util/fs.js";
import { progress } from "../util/progress.js";
import {
  type Agreement,
  compareLogits,
  compareDecodeSpeed,
  promptLogits,
  type TextQuality,
  textQuality,
  withModel,
} from "./measure.js";
import type { Precision, QuantizeOptions } from "./options.js";
import { applyPrecisions, precisionBytes, unsupportedReason } from "./rewrite.js";
import { choosePrecisions, type LayerChoice } from "./select.js";
import { countQuantizedNodes, findSites, type Site } from "./sites.js";

export interface SizeBreakdown {
  /** bytes of the ONNX file(s) on disk */
  file_bytes: number;
  /** bytes of initializer data by element type ("float", "float16", "int8", "uint8", ...) */
  by_dtype: Record<string, number>;
}

export interface LayerReport {
  name: string;
  kind: "linear" | "embedding";
  head: boolean;
  shape: [number, number];
  precision: Precision;
  /** auto mode: measured loss increase (nats/token on the calibration text) per candidate precision */
  sensitivity?: Partial<Record<Precision, number>>;
  note?: string;
}

export interface QuantizeReport {
  schema: "itera.quantization/v1";
  mode: QuantizeOptions["mode"];
  settings: {
    block_size: number;
    symmetric: boolean;
    accuracy_level: number;
    per_channel: boolean;
    reduce_range: boolean;
    exclude: string[];
    head: Precision | null;
    embedding: Precision | null;
    budget_perplexity_increase: number | null;
  };
  source: string;
  already_quantized_nodes: number;
  layers: LayerReport[];
  counts: Partial<Record<Precision, number>>;
  size: { before: SizeBreakdown; after: SizeBreakdown; compression_ratio: number };
  quality: {
    text: { source: string; chars: number; method: string };
    before: TextQuality;
    after: TextQuality;
    perplexity_increase: number;
    bits_per_char_increase: number;
    within_budget: boolean;
  };
  agreement: Agreement;
  speed: { decode_tokens: number; before_tokens_per_s: number; after_tokens_per_s: number; ratio: number };
  auto?: { calibration: { source: string; chars: number }; baseline_nats_per_token: number; rounds: number };
  seconds: number;
}

interface Texts {
  evalText: string;
  evalSource: string;
  calibText: string;
  calibSource: string;
  method: Pick<EvalOptions, "method" | "window" | "stride">;
  methodText: string;
}

async function readText(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (e) {
    throw new IteraError(`cannot read the ${what} text`, {
      where: path,
      fix: `give a readable UTF-8 text file with --${what === "held-out" ? "eval" : "calib"}`,
      cause: e,
    });
  }
}

/** The held-out text (budget and report) and the calibration text (auto's sensitivities). */
async function chooseTexts(dir: string, opts: QuantizeOptions): Promise<Texts> {
  const card = await loadModelCard(dir);
  const record = card?.evaluation[0];
  const defaultFile = join(datasetsDir(), record?.file ?? "tinyshakespeare.txt");
  let evalText: string;
  let evalSource: string;
  if (opts.evalFile) {
    evalText = Array.from(await readText(opts.evalFile, "held-out"))
      .slice(-opts.evalChars)
      .join("");
    evalSource = `${opts.evalFile} (last ${opts.evalChars} characters)`;
  } else {
    const held = record
      ? await cardText(record)
      : applySplit(await readText(defaultFile, "held-out"), "last 10%");
    evalText = Array.from(held).slice(0, opts.evalChars).join("");
    evalSource = `${record?.file ?? "tinyshakespeare.txt"}, ${record?.split ?? "last 10% of characters"} (first ${opts.evalChars} characters)`;
  }
  // Calibration comes from the start of the file (the training part), never from the held-out text.
  const calibPath = opts.calibFile ?? defaultFile;
  const calibText = Array.from(await readText(calibPath, "calibration"))
    .slice(0, opts.calibChars)
    .join("");
  const method = record ? methodFromCard(record) : {};
  return {
    evalText,
    evalSource,
    calibText,
    calibSource: `${opts.calibFile ?? record?.file ?? "tinyshakespeare.txt"} (first ${opts.calibChars} characters)`,
    method,
    methodText: record?.method ?? "the runtime's default for the model (state carried, or sliding windows)",
  };
}

function sizeOf(model: ModelProto, fileBytes: number): SizeBreakdown {
  const by: Record<string, number> = {};
  for (const t of model.graph!.initializer) {
    const k = dataTypeName(t.dataType ?? 0);
    by[k] = (by[k] ?? 0) + tensorByteSize(t);
  }
  return { file_bytes: fileBytes, by_dtype: by };
}

async function onnxFileBytes(path: string): Promise<number> {
  const model = await loadOnnx(path, { externalData: "verify" });
  const files = new Set((await externalRefs(model, path)).map((r) => r.file));
  let total = (await stat(path)).size;
  for (const f of files) total += (await stat(f)).size;
  return total;
}

const relativeIncrease = (before: number, after: number) => Math.exp(after - before) - 1;

/** Copy everything in the model folder except the ONNX graph and its external data. */
async function copyFolder(src: string, dst: string, skip: Set<string>): Promise<void> {
  for (const entry of await readdir(src)) {
    if (skip.has(entry)) continue;
    await cp(join(src, entry), join(dst, entry), { recursive: true });
  }
}

export interface QuantizeUi {
  quiet?: boolean;
}

export async function quantizeFolder(
  input: string,
  output: string,
  opts: QuantizeOptions,
  ui: QuantizeUi = {},
): Promise<QuantizeReport> {
  const t0 = Date.now();
  const src = resolve(input);
  const out = resolve(output);
  if (!(await stat(src).catch(() => undefined))?.isDirectory()) {
    throw new IteraError(`model folder not found: ${input}`, {
      where: src,
      fix: "give the path of a model folder (genai_config.json, tokenizer.json, the .onnx file)",
    });
  }
  if (out === src) {
    throw new IteraError("the output folder is the input folder", {
      where: out,
      fix: "write the quantized model to a new folder with --out",
    });
  }
  await checkWritableParent(out);
  const config = await loadGenaiConfig(src);
  const onnxName = config.model.decoder.filename;
  const onnxPath = join(src, onnxName);
  const original = await loadOnnx(onnxPath);
  const originalBytes = encodeModel(original);
  const graph = new Graph(original.graph!);
  const sites = findSites(graph);
  const alreadyQuantized = countQuantizedNodes(graph);
  if (sites.length === 0) {
    throw new IteraError(
      alreadyQuantized > 0
        ? `nothing left to quantize: the graph is already quantized (${alreadyQuantized} quantized nodes) and has no float MatMul/Gemm/Gather weights`
        : "nothing to quantize: the graph has no MatMul/Gemm with a constant 2-D float weight and no Gather on a constant float table",
      { where: onnxPath, fix: "quantize the original float model instead", exitCode: 2 },
    );
  }
  for (const e of opts.exclude) {
    if (!sites.some((s) => s.name === e)) {
      throw new IteraError(`--exclude names "${e}", which is not a quantizable node of the graph`, {
        where: onnxPath,
        fix: `quantizable nodes: ${sites.map((s) => s.name).join(", ")}`,
      });
    }
  }
  const texts = await chooseTexts(src, opts);
  const srcRefs = await externalRefs(await loadOnnx(onnxPath, { externalData: "verify" }), onnxPath);
  const skip = new Set([onnxName, ...srcRefs.map((r) => relative(src, r.file))]);
  const params = {
    blockSize: opts.blockSize,
    symmetric: opts.symmetric,
    accuracyLevel: opts.accuracyLevel,
    perChannel: opts.perChannel,
    reduceRange: opts.reduceRange,
  };

  // A scratch model folder for candidate graphs (auto mode's sensitivity runs).
  const scratch = await mkdtemp(join(tmpdir(), "itera-quantize-"));
  try {
    await copyFolder(src, scratch, skip);
    const buildVariant = (choice: ReadonlyMap<string, Precision>) => {
      const m = decodeModel(originalBytes);
      applyPrecisions(m, findSites(new Graph(m.graph!)), choice, params);
      return m;
    };
    const qualityOf = async (choice: ReadonlyMap<string, Precision>, text: string) => {
      await writeFile(join(scratch, onnxName), encodeModel(buildVariant(choice)));
      return withModel(scratch, (m) => textQuality(m, text, texts.method));
    };

    const layers: LayerReport[] = sites.map((s) => ({
      name: s.name,
      kind: s.kind,
      head: s.head,
      shape: s.dims,
      precision: "fp32",
    }));
    const fixed = new Map<string, Precision>();
    for (const s of sites) {
      const layer = layers.find((l) => l.name === s.name)!;
      let p: Precision | undefined;
      if (opts.exclude.includes(s.name)) {
        p = "fp32";
        layer.note = "excluded";
      } else if (s.head && opts.head) p = opts.head;
      else if (s.kind === "embedding" && opts.embedding) p = opts.embedding;
      if (p === undefined && opts.mode !== "auto") {
        const base: Precision = opts.mode;
        p = s.kind === "embedding" && base === "int8" ? "int8-wo" : base;
      }
      if (p === "int8" && s.kind === "embedding") p = "int8-wo"; // tables have no activation to quantize
      if (p !== undefined) {
        const why = unsupportedReason(s, p, params);
        if (why) {
          layer.note = `kept fp32: ${why}`;
          p = "fp32";
        }
        fixed.set(s.name, p);
      }
    }

    let choice = new Map(fixed);
    let autoInfo: QuantizeReport["auto"];
    const before = await withModel(src, async (m) => ({
      quality: await textQuality(m, texts.evalText, texts.method),
      logits: await promptLogits(m),
    }));

    if (opts.mode === "auto") {
      const free = sites.filter((s) => !fixed.has(s.name));
      const baseline = await withModel(src, (m) => textQuality(m, texts.calibText, texts.method));
      const candidates = (s: Site): Precision[] =>
        (["int4", "int8-wo"] as Precision[]).filter((p) => !unsupportedReason(s, p, params));
      const total = free.reduce((n, s) => n + candidates(s).length, 0);
      const negligibleNats = Math.log(1 + (opts.budget ?? 0.02)) / (20 * Math.max(1, free.length));
      const bar = progress("sensitivity", total, { quiet: ui.quiet });
      let done = 0;
      const choices: LayerChoice<Precision>[] = [];
      for (const s of free) {
        const layer = layers.find((l) => l.name === s.name)!;
        layer.sensitivity = {};
        const options: LayerChoice<Precision>["options"] = [];
        let previous: number | undefined;
        for (const p of candidates(s)) {
          // When the smaller precision already costs next to nothing, the larger one is not measured:
          // it is credited with the same (upper-bound) increase and never needed.
          const negligible = previous !== undefined && previous <= negligibleNats;
          const delta = negligible
            ? previous!
            : (await qualityOf(new Map([...fixed, [s.name, p]]), texts.calibText)).nats_per_token -
              baseline.nats_per_token;
          if (!negligible) layer.sensitivity[p] = delta;
          options.push({
            precision: p,
            bytes: precisionBytes(s, p, opts.blockSize, opts.symmetric),
            deltaLoss: delta,
          });
          previous = delta;
          bar.update(++done, s.name);
        }
        options.push({ precision: "fp32", bytes: s.bytes, deltaLoss: 0 });
        choices.push({ name: s.name, options });
      }
      bar.done();
      // Budget in nats: perplexity ratio 1+b is a loss increase of ln(1+b). Verify on held-out text
      // and tighten when layers interact worse than their sum predicts.
      const budgetNats = Math.log(1 + (opts.budget ?? Number.POSITIVE_INFINITY));
      let factor = 1;
      let rounds = 0;
      for (;;) {
        rounds++;
        const sel = choosePrecisions(choices, budgetNats * factor);
        choice = new Map([...fixed, ...sel.choice]);
        if (opts.budget === null || rounds >= 4) break;
        const q = await qualityOf(choice, texts.evalText);
        if (relativeIncrease(before.quality.nats_per_token, q.nats_per_token) <= opts.budget) break;
        factor /= 2;
      }
      autoInfo = {
        calibration: { source: texts.calibSource, chars: Array.from(texts.calibText).length },
        baseline_nats_per_token: baseline.nats_per_token,
        rounds,
      };
    }
    for (const l of layers) l.precision = choice.get(l.name) ?? "fp32";
    const counts: Partial<Record<Precision, number>> = {};
    for (const l of layers) counts[l.precision] = (counts[l.precision] ?? 0) + 1;
    if (layers.every((l) => l.precision === "fp32")) {
      throw new IteraError(
        "no weight was quantized: every quantizable node is excluded, kept at fp32 or too sensitive",
        {
          where: onnxPath,
          fix: opts.mode === "auto" ? "raise --budget, or choose a fixed --mode" : "exclude fewer nodes",
          exitCode: 2,
        },
      );
    }

    const finalModel = buildVariant(choice);
    const sizeBefore = sizeOf(original, await onnxFileBytes(onnxPath));
    let report: QuantizeReport | undefined;
    try {
      await writeDirAtomic(out, async (tmp) => {
        await copyFolder(src, tmp, skip);
        const bytes = sizeOf(finalModel, 0);
        const large = Object.values(bytes.by_dtype).reduce((a, b) => a + b, 0) > 1_500_000_000;
        await saveModel(join(tmp, onnxName), finalModel, large ? { externalData: {} } : {});
        const after = await withModel(tmp, async (m) => ({
          quality: await textQuality(m, texts.evalText, texts.method),
          logits: await promptLogits(m),
        }));
        const speed = await compareDecodeSpeed(src, tmp);
        const sizeAfter = sizeOf(finalModel, await onnxFileBytes(join(tmp, onnxName)));
        const increase = relativeIncrease(before.quality.nats_per_token, after.quality.nats_per_token);
        const within = opts.budget === null || increase <= opts.budget;
        report = {
          schema: "itera.quantization/v1",
          mode: opts.mode,
          settings: {
            block_size: opts.blockSize,
            symmetric: opts.symmetric,
            accuracy_level: opts.accuracyLevel,
            per_channel: opts.perChannel,
            reduce_range: opts.reduceRange,
            exclude: opts.exclude,
            head: opts.head ?? null,
            embedding: opts.embedding ?? null,
            budget_perplexity_increase: opts.budget,
          },
          source: src,
          already_quantized_nodes: alreadyQuantized,
          layers,
          counts,
          size: {
            before: sizeBefore,
            after: sizeAfter,
            compression_ratio: sizeBefore.file_bytes / sizeAfter.file_bytes,
          },
          quality: {
            text: {
              source: texts.evalSource,
              chars: Array.from(texts.evalText).length,
              method: texts.methodText,
            },
            before: before.quality,
            after: after.quality,
            perplexity_increase: increase,
            bits_per_char_increase: after.quality.bits_per_char / before.quality.bits_per_char - 1,
            within_budget: within,
          },
          agreement: compareLogits(before.logits, after.logits),
          speed: {
            decode_tokens: speed.b.tokens,
            before_tokens_per_s: speed.a.tokens_per_s,
            after_tokens_per_s: speed.b.tokens_per_s,
            ratio: speed.b.tokens_per_s / speed.a.tokens_per_s,
          },
          ...(autoInfo ? { auto: autoInfo } : {}),
          seconds: (Date.now() - t0) / 1000,
        };
        if (!within) throw new BudgetExceeded(report);
        await updateCard(tmp, report);
      });
    } catch (e) {
      if (e instanceof BudgetExceeded) {
        const r = e.report;
        throw new IteraError(
          `the quantized model exceeds the quality budget: perplexity +${pct(r.quality.perplexity_increase)} > +${pct(opts.budget ?? 0)} (bits/char ${r.quality.before.bits_per_char.toFixed(4)} -> ${r.quality.after.bits_per_char.toFixed(4)}); nothing was written`,
          {
            where: r.quality.text.source,
            fix: "raise --budget, use --mode auto (mixed precision within the budget) or int8, or --exclude the most sensitive nodes",
            exitCode: 3,
          },
        );
      }
      throw writeError(e, out);
    }
    return report!;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

class BudgetExceeded extends Error {
  constructor(readonly report: QuantizeReport) {
    super("budget exceeded");
  }
}

function pct(x: number): string {
  return `${(x * 100).toFixed(2)}%`;
}

/** Fail before any work when the output's parent cannot hold a new folder. */
async function checkWritableParent(out: string): Promise<void> {
  const parent = dirname(out);
  try {
    await mkdir(parent, { recursive: true });
    await access(parent, constants.W_OK);
  } catch (e) {
    throw writeError(e, out);
  }
}

function writeError(e: unknown, out: string): unknown {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === "EACCES" || code === "EROFS" || code === "ENOTDIR" || code === "EPERM" || code === "EEXIST") {
    return new IteraError(`cannot write the output folder (${code})`, {
      where: out,
      fix: "choose an --out path in a writable directory",
      cause: e,
    });
  }
  return e;
}

/** Record the quantization in the output's model card (itera.json), when the model has one. */
async function updateCard(dir: string, report: QuantizeReport): Promise<void> {
  const path = join(dir, "itera.json");
  const text = await readFile(path, "utf8").catch(() => undefined);
  if (text === undefined) return;
  const card = JSON.parse(text) as Record<string, unknown>;
  card.quantization = {
    mode: report.mode,
    settings: report.settings,
    counts: report.counts,
    layers: report.layers.map((l) => ({ name: l.name, precision: l.precision })),
    size: report.size,
    quality: report.quality,
    agreement: report.agreement,
    speed: report.speed,
    ...(report.auto ? { auto: report.auto } : {}),
  };
  await writeFile(path, `${JSON.stringify(card, null, 2)}\n`);
}
