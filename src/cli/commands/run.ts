import type { Command } from "commander";
import { z } from "zod";
import { IteraError } from "../../errors.js";
import { loadGenaiConfig } from "../../model/genai-config.js";
import { describeIssues } from "../../model/json-file.js";
import { checkThreads, defaultThreads, stderrNote } from "../../profile/threads.js";
import { type Generation, loadModel } from "../../runtime/index.js";
import { modelTunedFile, tunedChoice } from "../../tune/defaults.js";
import {
  fusedForRun,
  DEFAULT_TEMPERATURE,
  IDS_HELP,
  MAX_TOKENS_HELP,
  parseIds,
  summaryLine,
  TEMPERATURE_HELP,
  undecodableNote,
} from "../generation.js";
import { action, collect, printJson } from "../run.js";

const runOptions = z.object({
  prompt: z.array(z.string()),
  ids: z.array(z.string()),
  maxTokens: z.coerce.number().int().positive().optional(),
  temperature: z.coerce.number().nonnegative().optional(),
  topK: z.coerce.number().int().nonnegative().optional(),
  topP: z.coerce.number().gt(0).lte(1).optional(),
  repetitionPenalty: z.coerce.number().positive().optional(),
  seed: z.coerce.number().int().nonnegative().optional(),
  threads: z.coerce.number().int().positive().optional(),
  stop: z.array(z.string().min(1)).optional(),
  ignoreEos: z.boolean().optional(),
  fused: z.boolean().optional(),
  json: z.boolean().optional(),
});

/** Validate command options with a schema; a bad value names the option. */
export function parseOptions<S extends z.ZodType>(schema: S, raw: unknown): z.infer<S> {
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const flag = (k: string) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
    throw new IteraError(`invalid option ${describeIssues(parsed.error).replace(/^(\w+)/, (k) => flag(k))}`, {
      fix: "see --help for the accepted values",
    });
  }
  return parsed.data;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

/** The --json report of one generation. */
export function generationReport(g: Generation, tokenText: string[]) {
  const ms = [...g.timings.tokenMs].sort((a, b) => a - b);
  const decodeMs = g.timings.tokenMs.reduce((a, b) => a + b, 0);
  return {
    prompt_tokens: g.promptIds.length,
    prompt_ids: g.promptIds,
    ids: g.ids,
    tokens: g.ids.map((id, i) => ({ id, text: tokenText[i] ?? "" })),
    text: g.text,
    stop_reason: g.stopReason,
    seed: g.seed,
    decode: g.decode,
    timings: {
      ttft_ms: g.timings.ttftMs,
      prefill_ms: g.timings.prefillMs,
      per_token_ms: g.timings.tokenMs,
      token_ms_p50: percentile(ms, 0.5),
      token_ms_p95: percentile(ms, 0.95),
      decode_tokens_per_s: ms.length > 0 ? (1000 * ms.length) / decodeMs : null,
      total_ms: g.timings.totalMs,
    },
  };
}

/**
 * `itera run` has no device profile: the model's own session_options.intra_op_num_threads, else 1
 * (what the shipped profiles measured best for the house models), never more than this host's cores.
 */
async function runThreads(dir: string, requested: number | undefined): Promise<number> {
  if (requested !== undefined) return checkThreads(requested, "--threads");
  // An unreadable folder is reported by loadModel, with its own what/where/fix.
  const config = await loadGenaiConfig(dir).catch(() => null);
  const wanted = config?.model.decoder.session_options?.intra_op_num_threads || 1;
  return defaultThreads(wanted, "the model's genai_config", stderrNote);
}

export function registerRun(program: Command): void {
  program
    .command("run")
    .description("generate text with a model folder (streams to stdout)")
    .argument("<model>", "model folder (genai_config.json, tokenizer.json, .onnx)")
    .option("-p, --prompt <text>", "prompt (repeat for a batch)", collect)
    .option("--ids <ids>", `${IDS_HELP} (repeat for a batch)`, collect)
    .option("-n, --max-tokens <n>", MAX_TOKENS_HELP)
    .option("--temperature <t>", TEMPERATURE_HELP)
    .option("--top-k <k>", "keep the k most likely tokens (0 = all)")
    .option("--top-p <p>", "nucleus sampling: keep tokens up to cumulative probability p")
    .option("--repetition-penalty <r>", "> 1 discourages repeating context tokens")
    .option("--seed <n>", "PRNG seed (reproducible sampling)")
    .option(
      "--threads <n>",
      "ONNX Runtime intra-op threads (default: the model folder's tuned.json, else its intra_op_num_threads, else 1, at most this host's cores)",
    )
    .option("--stop <s>", "stop when the text contains s (repeatable)", collect)
    .option("--ignore-eos", "keep generating past the end-of-text token")
    .option("--no-fused", "greedy decoding: one ONNX Runtime call per token, not many steps per call")
    .option("--json", "machine-readable output: tokens, timings, stop reason")
    .action(
      action(async (dir: string, raw: unknown) => {
        const opts = parseOptions(runOptions, { prompt: [], ids: [], ...(raw as object) });
        if (opts.prompt.length === 0 && opts.ids.length === 0) {
          throw new IteraError("no prompt given", {
            fix: "give a prompt with --prompt TEXT, or token ids with --ids 1,2,3",
          });
        }
        const inputs = [...opts.prompt, ...opts.ids.map((t) => parseIds(t, "--ids"))];
        // The model folder's tuned.json (itera tune) sets threads and decode path unless --threads is given.
        const tuned =
          opts.threads === undefined ? await tunedChoice([modelTunedFile(dir)], dir, stderrNote) : undefined;
        const threads = tuned?.threads ?? (await runThreads(dir, opts.threads));
        const model = await loadModel(dir, { threads });
        try {
          if (opts.prompt.length > 0 && !model.tokenizer.present) {
            throw new IteraError(
              "the model folder has no tokenizer.json, so a text prompt cannot be encoded",
              {
                where: model.tokenizer.path,
                fix: `give the prompt as token ids: itera run ${dir} --ids 1,2,3 (ids below ${model.vocabSize})`,
              },
            );
          }
          const temperature = opts.temperature ?? DEFAULT_TEMPERATURE;
          const genOptions = {
            maxTokens: opts.maxTokens,
            temperature,
            topK: opts.topK,
            topP: opts.topP,
            repetitionPenalty: opts.repetitionPenalty,
            seed: opts.seed,
            stop: opts.stop,
            ignoreEos: opts.ignoreEos,
            fusedDecode: opts.fused !== false && tuned?.decode !== "step" && fusedForRun(opts.maxTokens),
          };
          const single = inputs.length === 1;
          const pieces: string[][] = inputs.map(() => []);
          const results = await model.generateBatch(inputs, genOptions, (e) => {
            pieces[e.row]![e.index] = (pieces[e.row]![e.index] ?? "") + e.text;
            if (single && !opts.json) process.stdout.write(e.text);
          });
          if (opts.json) {
            const reports = results.map((g, r) => ({
              prompt: typeof inputs[r] === "string" ? inputs[r] : null,
              ...generationReport(g, pieces[r]!),
              note: undecodableNote(model.tokenizer, g.ids, model.vocabSize),
            }));
            printJson({ model: model.dir, ...(single ? reports[0] : { batch: reports }) });
          } else if (single) {
            process.stdout.write("\n");
            const note = undecodableNote(model.tokenizer, results[0]!.ids, model.vocabSize);
            if (note) process.stderr.write(`${note}\n`);
            process.stderr.write(`${summaryLine(results[0]!, { temperature, threads })}\n`);
          } else {
            results.forEach((g, r) => {
              process.stdout.write(`--- ${r + 1} (${g.stopReason})\n${g.text}\n`);
            });
            const note = undecodableNote(
              model.tokenizer,
              results.flatMap((g) => g.ids),
              model.vocabSize,
            );
            if (note) process.stderr.write(`${note}\n`);
          }
        } finally {
          await model.dispose();
        }
      }),
    );
}
