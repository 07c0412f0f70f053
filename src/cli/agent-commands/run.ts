import type { Command } from "commander";
import { addModelOptions, agentContext, type ModelOptions } from "../../agent-host/context.js";
import { IteraError } from "../../errors.js";
import { checkThreads } from "../../profile/threads.js";
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
import { agentDefaultThreads } from "../../tune/defaults.js";
import { action, printJson } from "../run.js";

interface RunOptions extends ModelOptions {
  prompt?: string;
  ids?: string;
  maxTokens?: string;
  temperature?: string;
  topK?: string;
  topP?: string;
  seed?: string;
  threads?: string;
  json?: boolean;
}

/**
 * `itera-agent run --prompt ...`: generate text with the bundle's model, decoded as `itera run` does
 * (src/cli/generation.ts: greedy unless --temperature > 0, the model's max length, the same summary).
 */
export function registerRun(program: Command): void {
  addModelOptions(
    program
      .command("run")
      .description("generate text from a prompt with the model (streamed to stdout)")
      .option("--prompt <text>", "the prompt")
      .option("--ids <ids>", IDS_HELP)
      .option("--max-tokens <n>", MAX_TOKENS_HELP)
      .option("--temperature <t>", TEMPERATURE_HELP)
      .option("--top-k <k>", "sample among the k most likely tokens")
      .option("--top-p <p>", "sample among the most likely tokens reaching probability p")
      .option("--seed <n>", "seed of the sampler")
      .option(
        "--threads <n>",
        "intra-op threads (default: tuned.json's (itera-agent tune, itera build --tuned), else the profile's, at most this host's cores)",
      )
      .option("--json", "print one JSON object (text, ids, timings) instead of streaming"),
  ).action(
    action(async (opts: RunOptions) => {
      const t0 = performance.now();
      if ((opts.prompt === undefined) === (opts.ids === undefined)) {
        throw new IteraError(
          opts.prompt === undefined ? "no prompt given" : "both --prompt and --ids given",
          {
            fix: "give either a prompt with --prompt TEXT or token ids with --ids 1,2,3",
          },
        );
      }
      const input = opts.ids === undefined ? opts.prompt! : parseIds(opts.ids, "--ids");
      const ctx = await agentContext(opts);
      const threads =
        opts.threads === undefined
          ? await agentDefaultThreads(ctx, undefined)
          : checkThreads(positiveInt(opts.threads, "--threads"), "--threads");
      const temperature =
        opts.temperature === undefined ? DEFAULT_TEMPERATURE : number(opts.temperature, "--temperature");
      // Loaded here, not at start-up: onnxruntime's native library is only needed by commands that infer.
      const { loadModel } = await import("../../runtime/index.js");
      const model = await loadModel(ctx.modelDir, { threads });
      const loadMs = performance.now() - t0;
      if (typeof input === "string" && !model.tokenizer.present) {
        throw new IteraError("the model has no tokenizer.json, so a text prompt cannot be encoded", {
          where: model.tokenizer.path,
          fix: `give the prompt as token ids: itera-agent run --ids 1,2,3 (ids below ${model.vocabSize})`,
        });
      }
      const maxTokens =
        opts.maxTokens === undefined ? undefined : positiveInt(opts.maxTokens, "--max-tokens");
      const gen = await model.generate(
        input,
        {
          ...(maxTokens === undefined ? {} : { maxTokens }),
          fusedDecode: fusedForRun(maxTokens),
          temperature,
          ...(opts.topK === undefined ? {} : { topK: positiveInt(opts.topK, "--top-k") }),
          ...(opts.topP === undefined ? {} : { topP: number(opts.topP, "--top-p") }),
          ...(opts.seed === undefined ? {} : { seed: positiveInt(opts.seed, "--seed") }),
        },
        opts.json ? undefined : (e) => process.stdout.write(e.text),
      );
      const note = undecodableNote(model.tokenizer, gen.ids, model.vocabSize);
      if (!opts.json) {
        process.stdout.write("\n");
        if (note) process.stderr.write(`${note}\n`);
        process.stderr.write(`${summaryLine(gen, { temperature, threads })}\n`);
        return;
      }
      printJson({
        mode: ctx.mode,
        bundle: ctx.manifest?.bundle_id ?? null,
        profile: ctx.profile.name,
        threads,
        prompt: opts.prompt ?? null,
        text: gen.text,
        note,
        prompt_ids: gen.promptIds,
        ids: gen.ids,
        stop_reason: gen.stopReason,
        decode: gen.decode,
        cold_start: ctx.extraction?.extracted ?? false,
        timings: {
          // performance.now() counts from process start: these include Node's own start-up and,
          // on a cold start, the extraction of the native files and the model.
          model_loaded_ms: round(t0 + loadMs),
          first_token_ms: round(t0 + loadMs + gen.timings.ttftMs),
          load_ms: round(loadMs),
          ttft_ms: round(gen.timings.ttftMs),
          total_ms: round(gen.timings.totalMs),
        },
      });
    }),
  );
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}

function number(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n < 0)
    throw new IteraError(`${flag} must be a non-negative number, got '${text}'`);
  return n;
}

function positiveInt(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new IteraError(`${flag} must be a whole number, got '${text}'`);
  return n;
}
