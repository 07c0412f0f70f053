/**
 * `itera quantize`: read a model folder, choose a precision per weight (a fixed mode, or measured
 * mixed precision under a quality budget), rewrite the ONNX graph, measure before and after, and
 * write a complete model folder — or nothing at all when the result does not fit the budget.
 */
import { cpSync, readdirSync, writeFileSync } from "node:fs";
import { readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join, relative, resolve } from "node:path";
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
import { describePrecision, weightPrecision } from "../onnx/precision.js";
import { analyzeModel } from "../onnx/report.js";
import type { EvalOptions } from "../runtime/evaluate.js";
import { applySplit, cardText, datasetsDir, methodFromCard } from "../runtime/eval-text.js";
import { tempDirRemovedOnInterrupt } from "../util/interrupt.js";
import { checkOutputDir, writeDirAtomic } from "../util/output.js";
import { progress } from "../util/progress.js";
import { chooseMixedPrecision } from "./auto.js";
import { compareDecodeSpeed, compareLogits, promptLogits, textQuality, withModel } from "./measure.js";
import type { OptionNames, Precision, QuantizeOptions } from "./options.js";
import { moeNote, presetPrecisions } from "./plan.js";
import type { LayerReport, QuantizeReport, SizeBreakdown } from "./report.js";
import { applyPrecisions, floatStoredWeights, restoreFp16Weights } from "./rewrite.js";
import { countQuantizedNodes, findSites } from "./sites.js";

export type { QuantizeReport } from "./report.js";

/**
 * The quantizer made no model: nothing to quantize, every weight stayed fp32, or the result
 * exceeded the budget. A build asked for the profile's default embeds the fp32 model instead.
 */
export class NotQuantized extends IteraError {}

interface Texts {
  /** null: quality is not measured (`unmeasured` says why) */
  evalText: string | null;
  evalSource: string;
  /** auto mode's calibration text (null in the other modes, which need none) */
  calibText: string | null;
  calibSource: string;
  method: Pick<EvalOptions, "method" | "window" | "stride">;
  methodText: string;
  unmeasured: string | null;
}

async function readText(path: string, what: string, names: OptionNames): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (e) {
    throw new IteraError(`cannot read the ${what} text`, {
      where: path,
      fix: `give a readable UTF-8 text file with ${what === "held-out" ? names.eval : names.calib}`,
      cause: e,
    });
  }
}

/**
 * The held-out text (budget and report) and the calibration text (auto's sensitivities): `--eval` /
 * `--calib`, else the model card's evaluation dataset. A model with neither gets no text: the
 * weight-only and int8 modes need none (quality is then not measured, and said so), auto refuses.
 */
async function chooseTexts(dir: string, opts: QuantizeOptions, hasTokenizer: boolean): Promise<Texts> {
  const card = await loadModelCard(dir);
  const record = card?.evaluation[0];
  const n = opts.names;
  const given = opts.evalFile ? n.eval : opts.calibFile ? n.calib : undefined;
  if (!hasTokenizer && given) {
    throw new IteraError(
      `${given} needs the model's tokenizer.json to turn the text into tokens, and the model folder has none`,
      {
        where: join(dir, "tokenizer.json"),
        fix: `leave out ${given} (quality is then not measured), or add the model's tokenizer.json`,
      },
    );
  }
  const method = record ? methodFromCard(record) : {};
  const methodText =
    record?.method ?? "the runtime's default for the model (state carried, or sliding windows)";
  if (!hasTokenizer || (!opts.evalFile && !record)) {
    return {
      evalText: null,
      evalSource: "",
      calibText: null,
      calibSource: "",
      method,
      methodText,
      unmeasured: hasTokenizer
        ? `no held-out text: give one with ${n.eval} FILE (the model has no itera.json evaluation dataset)`
        : "the model folder has no tokenizer.json, so no text can be scored",
    };
  }
  const defaultFile = record ? join(datasetsDir(), record.file) : opts.evalFile!;
  let evalText: string;
  let evalSource: string;
  if (opts.evalFile) {
    evalText = Array.from(await readText(opts.evalFile, "held-out", opts.names))
      .slice(-opts.evalChars)
      .join("");
    evalSource = `${opts.evalFile} (last ${opts.evalChars} characters)`;
  } else {
    const held = record
      ? await cardText(record)
      : applySplit(await readText(defaultFile, "held-out", opts.names), "last 10%");
    evalText = Array.from(held).slice(0, opts.evalChars).join("");
    evalSource = `${record?.file}, ${record?.split} (first ${opts.evalChars} characters)`;
  }
  // Calibration comes from the start of the file (the training part), never from the held-out text;
  // only auto mode measures on it.
  const calibPath = opts.calibFile ?? defaultFile;
  const calibText =
    opts.mode === "auto"
      ? Array.from(await readText(calibPath, "calibration", opts.names))
          .slice(0, opts.calibChars)
          .join("")
      : null;
  return {
    evalText,
    evalSource,
    calibText,
    calibSource: `${opts.calibFile ?? record?.file ?? opts.evalFile} (first ${opts.calibChars} characters)`,
    method,
    methodText,
    unmeasured: null,
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

/**
 * Copy everything in the model folder except the ONNX graph and its external data. Synchronous, as
 * is the candidate's write into the scratch folder: an asynchronous `cp` still in flight in the
 * thread pool when SIGINT removes the folder recreates it (cp makes missing parents), and the
 * interrupted run would leave it behind (test/outputs.test.ts).
 */
function copyFolder(src: string, dst: string, skip: Set<string>): void {
  for (const entry of readdirSync(src)) {
    if (skip.has(entry)) continue;
    cpSync(join(src, entry), join(dst, entry), { recursive: true });
  }
}

export interface QuantizeUi {
  quiet?: boolean;
  /** --force: write into a folder that holds other files, replacing only the quantizer's own. */
  force?: boolean;
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
  // Before any work: never the input, never someone else's files (src/util/output.ts).
  const target = await checkOutputDir(out, {
    command: "itera quantize",
    option: opts.names.out,
    inputs: [src],
    force: ui.force,
  });
  const config = await loadGenaiConfig(src);
  const onnxName = config.model.decoder.filename;
  const onnxPath = join(src, onnxName);
  const original = await loadOnnx(onnxPath);
  const precisionBefore = weightPrecision(original);
  if (opts.mode === "fp16" && precisionBefore.label === "fp16") {
    throw new NotQuantized(
      `the model is already fp16 (${describePrecision(precisionBefore)}): --mode fp16 has nothing to do, nothing was written`,
      {
        where: onnxPath,
        fix: `use the model as it is, or choose int8 or int4 with ${opts.names.fixed}`,
        exitCode: 4,
      },
    );
  }
  const sizeBefore = sizeOf(original, await onnxFileBytes(onnxPath));
  // fp16/bf16 weights stored behind a Cast to float are read as float (and stored back as fp16 when
  // they stay unquantized); weights used in fp16 directly are quantized behind Casts (rewrite.ts).
  const storedAsFp16 = floatStoredWeights(original);
  const originalBytes = encodeModel(original);
  const graph = new Graph(original.graph!);
  const sites = findSites(graph);
  const alreadyQuantized = countQuantizedNodes(graph);
  if (sites.length === 0) {
    throw new NotQuantized(
      alreadyQuantized > 0
        ? `nothing left to quantize: the graph is already quantized (${alreadyQuantized} quantized nodes) and has no float MatMul/Gemm/Gather/MoE weights`
        : "nothing to quantize: the graph has no MatMul/Gemm with a constant 2-D float weight, no Gather on a constant float table and no com.microsoft.MoE with constant float experts",
      { where: onnxPath, fix: "quantize the original float model instead", exitCode: 2 },
    );
  }
  for (const e of opts.exclude) {
    if (!sites.some((s) => s.name === e)) {
      throw new IteraError(
        `${opts.names.exclude} names "${e}", which is not a quantizable node of the graph`,
        {
          where: onnxPath,
          fix: `quantizable nodes: ${sites.map((s) => s.name).join(", ")}`,
        },
      );
    }
  }
  const hasTokenizer = await stat(join(src, "tokenizer.json")).then(
    () => true,
    () => false,
  );
  const texts = await chooseTexts(src, opts, hasTokenizer);
  if (opts.mode === "auto" && (texts.evalText === null || texts.calibText === null)) {
    const n = opts.names;
    throw new NotQuantized(
      `${n.mixed} chooses each weight's precision by its measured loss, which needs a text: ${texts.unmeasured}`,
      {
        where: src,
        fix: hasTokenizer
          ? `give a held-out text with ${n.eval} FILE (calibration then comes from its start), or choose a fixed precision with ${n.fixed}`
          : `choose a fixed precision with ${n.fixed} (int8 or int4 need no text), or add the model's tokenizer.json`,
        exitCode: 1,
      },
    );
  }
  const srcRefs = await externalRefs(await loadOnnx(onnxPath, { externalData: "verify" }), onnxPath);
  const skip = new Set([onnxName, ...srcRefs.map((r) => relative(src, r.file))]);
  const params = {
    blockSize: opts.blockSize,
    symmetric: opts.symmetric,
    int8Symmetric: opts.int8Symmetric,
    searchClipping: opts.searchClipping,
    accuracyLevel: opts.accuracyLevel,
    moeScales: opts.moeScales,
    moeZeroPoints: opts.moeZeroPoints,
    perChannel: opts.perChannel,
    reduceRange: opts.reduceRange,
  };

  // A scratch model folder for candidate graphs (auto mode's measurements), made on first use.
  let scratch: string | undefined;
  let releaseScratch = () => {};
  try {
    const buildVariant = (choice: ReadonlyMap<string, Precision>) => {
      const m = decodeModel(originalBytes);
      applyPrecisions(m, findSites(new Graph(m.graph!)), choice, params);
      restoreFp16Weights(m, storedAsFp16);
      return m;
    };
    const qualityOf = async (choice: ReadonlyMap<string, Precision>, text: string) => {
      if (scratch === undefined) {
        ({ path: scratch, release: releaseScratch } = tempDirRemovedOnInterrupt(
          join(tmpdir(), "itera-quantize-"),
        ));
        copyFolder(src, scratch, skip);
      }
      writeFileSync(join(scratch, onnxName), encodeModel(buildVariant(choice)));
      return withModel(scratch, (m) => textQuality(m, text, texts.method));
    };

    const layers: LayerReport[] = sites.map((s) => ({
      name: s.name,
      kind: s.kind,
      head: s.head,
      shape: s.dims,
      precision: "fp32",
    }));
    const fixed = presetPrecisions(sites, layers, opts, params);

    let choice = new Map(fixed);
    let autoInfo: QuantizeReport["auto"];
    const steps = progress("quantize", 4, { quiet: ui.quiet });
    steps.update(0, "measuring the float model");
    const evalText = texts.evalText;
    const before = await withModel(src, async (m) => ({
      quality: evalText === null ? null : await textQuality(m, evalText, texts.method),
      logits: await promptLogits(m),
    }));

    if (opts.mode === "auto") {
      const calibText = texts.calibText!;
      const baseline = await withModel(src, (m) => textQuality(m, calibText, texts.method));
      const auto = await chooseMixedPrecision({
        sites,
        fixed,
        layers,
        opts,
        params,
        calibText,
        evalText: evalText!,
        calibBaseline: baseline.nats_per_token,
        heldOutBaseline: before.quality!.nats_per_token,
        quality: qualityOf,
        quiet: ui.quiet === true,
      });
      choice = auto.choice;
      autoInfo = {
        calibration: { source: texts.calibSource, chars: Array.from(calibText).length },
        baseline_nats_per_token: baseline.nats_per_token,
        rounds: auto.rounds,
        uniform: auto.uniform,
      };
    }
    for (const [i, l] of layers.entries()) {
      l.precision = choice.get(l.name) ?? "fp32";
      const note = moeNote(sites[i]!, l.precision, params);
      if (note) l.note = l.note ? `${l.note}; ${note}` : note;
    }
    const counts: Partial<Record<Precision, number>> = {};
    for (const l of layers) counts[l.precision] = (counts[l.precision] ?? 0) + 1;
    if (layers.every((l) => l.precision === "fp32")) {
      const n = opts.names;
      throw new NotQuantized(
        "no weight was quantized: every quantizable node is excluded, kept at fp32 or too sensitive",
        {
          where: onnxPath,
          fix:
            opts.mode === "auto"
              ? `raise ${n.budget}, or choose a fixed precision with ${n.fixed}`
              : `exclude fewer nodes (${n.exclude})`,
          exitCode: 2,
        },
      );
    }

    steps.update(1, "rewriting the graph");
    const finalModel = buildVariant(choice);
    let report: QuantizeReport | undefined;
    try {
      await writeDirAtomic(target, async (tmp) => {
        copyFolder(src, tmp, skip);
        const bytes = sizeOf(finalModel, 0);
        const large = Object.values(bytes.by_dtype).reduce((a, b) => a + b, 0) > 1_500_000_000;
        await saveModel(join(tmp, onnxName), finalModel, large ? { externalData: {} } : {});
        steps.update(2, "measuring the quantized model");
        const after = await withModel(tmp, async (m) => ({
          quality: evalText === null ? null : await textQuality(m, evalText, texts.method),
          logits: await promptLogits(m),
        }));
        steps.update(3, "decode speed, float and quantized alternating");
        const speed = await compareDecodeSpeed(src, tmp);
        const sizeAfter = sizeOf(finalModel, await onnxFileBytes(join(tmp, onnxName)));
        const measured =
          before.quality && after.quality ? { before: before.quality, after: after.quality } : null;
        const increase = measured
          ? relativeIncrease(measured.before.nats_per_token, measured.after.nats_per_token)
          : 0;
        // Without a text there is nothing to hold the budget against: the report says so instead.
        const within = opts.budget === null || increase <= opts.budget;
        report = {
          schema: "itera.quantization/v1",
          mode: opts.mode,
          settings: {
            block_size: opts.blockSize,
            symmetric: opts.symmetric,
            int8_symmetric: opts.int8Symmetric,
            clip_search: opts.searchClipping,
            accuracy_level: opts.accuracyLevel,
            moe_scales: opts.moeScales,
            moe_zero_points: opts.moeZeroPoints,
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
          precision: describePrecision(weightPrecision(finalModel)),
          quality: measured
            ? {
                text: {
                  source: texts.evalSource,
                  chars: Array.from(evalText!).length,
                  method: texts.methodText,
                },
                before: measured.before,
                after: measured.after,
                perplexity_increase: increase,
                bits_per_char_increase: measured.after.bits_per_char / measured.before.bits_per_char - 1,
                within_budget: within,
              }
            : null,
          ...(measured ? {} : { quality_not_measured: texts.unmeasured! }),
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
        await updateCard(tmp, report, finalModel, original, src, config);
      });
    } catch (e) {
      if (e instanceof BudgetExceeded) {
        const r = e.report;
        const q = r.quality!;
        const n = opts.names;
        throw new NotQuantized(
          `the quantized model exceeds the quality budget: perplexity +${pct(q.perplexity_increase)} > +${pct(opts.budget ?? 0)} (bits/char ${q.before.bits_per_char.toFixed(4)} -> ${q.after.bits_per_char.toFixed(4)}); nothing was written`,
          {
            where: q.text.source,
            fix:
              opts.mode === "auto"
                ? `raise ${n.budget}, or ${n.exclude} the most sensitive nodes (the report of a run with a larger ${n.budget} lists each node's sensitivity)`
                : `raise ${n.budget}, use ${n.mixed} (mixed precision within the budget) or ${n.int8}, or ${n.exclude} the most sensitive nodes`,
            exitCode: 3,
          },
        );
      }
      throw writeError(e, out, opts.names);
    }
    steps.done();
    return report!;
  } finally {
    if (scratch !== undefined) await rm(scratch, { recursive: true, force: true });
    releaseScratch();
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

function writeError(e: unknown, out: string, names: OptionNames): unknown {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === "EACCES" || code === "EROFS" || code === "ENOTDIR" || code === "EPERM" || code === "EEXIST") {
    return new IteraError(`cannot write the output folder (${code})`, {
      where: out,
      fix: `choose an ${names.out} path in a writable directory`,
      cause: e,
    });
  }
  return e;
}

/**
 * Record the quantization in the output's model card (itera.json); a folder without one gets a card
 * made from its genai_config.json and graph. `mode` is the precision read from the written graph.
 */
async function updateCard(
  dir: string,
  report: QuantizeReport,
  written: ModelProto,
  original: ModelProto,
  src: string,
  config: Awaited<ReturnType<typeof loadGenaiConfig>>,
): Promise<void> {
  const path = join(dir, "itera.json");
  const text = await readFile(path, "utf8").catch(() => undefined);
  const card = (text === undefined ? newCard(original, src, config) : JSON.parse(text)) as Record<
    string,
    unknown
  >;
  const precision = weightPrecision(written);
  card.quantization = {
    mode: precision.label,
    precision: describePrecision(precision),
    requested_mode: report.mode,
    settings: report.settings,
    counts: report.counts,
    layers: report.layers.map((l) => ({ name: l.name, precision: l.precision })),
    size: report.size,
    quality: report.quality,
    ...(report.quality_not_measured ? { quality_not_measured: report.quality_not_measured } : {}),
    agreement: report.agreement,
    speed: report.speed,
    ...(report.auto ? { auto: report.auto } : {}),
  };
  await writeFile(path, `${JSON.stringify(card, null, 2)}\n`);
}

/** A card for a folder that had none (docs/model-folder.md): what the config and the graph say. */
function newCard(
  original: ModelProto,
  src: string,
  config: Awaited<ReturnType<typeof loadGenaiConfig>>,
): Record<string, unknown> {
  const r = analyzeModel(original);
  return {
    schema: "itera.model/v1",
    id: basename(src),
    name: basename(src),
    version: "0.0.0",
    architecture: { family: config.model.type },
    parameters: Math.max(1, r.parameters.elements),
    flops_per_token: r.flops.perToken,
    quantization: { mode: "fp32" },
    tokenizer: { type: "unknown", vocab_size: config.model.vocab_size },
    evaluation: [],
    note: "written by itera quantize: the source folder had no itera.json",
  };
}
