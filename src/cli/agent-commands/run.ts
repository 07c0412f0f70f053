import type { Command } from "commander";
import { addModelOptions, agentContext, type ModelOptions } from "../../agent-host/context.js";
import { IteraError } from "../../errors.js";
import { action, printJson } from "../run.js";

interface RunOptions extends ModelOptions {
  prompt: string;
  maxTokens: string;
  temperature?: string;
  topK?: string;
  topP?: string;
  seed?: string;
  threads?: string;
  json?: boolean;
}

/** `itera-agent run --prompt ...`: generate text with the bundle's model (greedy unless --temperature > 0). */
export function registerRun(program: Command): void {
  addModelOptions(
    program
      .command("run")
      .description("generate text from a prompt with the model (streamed to stdout)")
      .requiredOption("--prompt <text>", "the prompt")
      .option("--max-tokens <n>", "new tokens at most", "64")
      .option("--temperature <t>", "sampling temperature; 0 = greedy (default)")
      .option("--top-k <k>", "sample among the k most likely tokens")
      .option("--top-p <p>", "sample among the most likely tokens reaching probability p")
      .option("--seed <n>", "seed of the sampler")
      .option("--threads <n>", "intra-op threads (default: the profile's)")
      .option("--json", "print one JSON object (text, ids, timings) instead of streaming"),
  ).action(
    action(async (opts: RunOptions) => {
      const t0 = performance.now();
      const ctx = await agentContext(opts);
      const threads =
        opts.threads === undefined ? ctx.profile.threads : positiveInt(opts.threads, "--threads");
      // Loaded here, not at start-up: onnxruntime's native library is only needed by commands that infer.
      const { loadModel } = await import("../../runtime/index.js");
      const model = await loadModel(ctx.modelDir, { threads });
      const loadMs = performance.now() - t0;
      const gen = await model.generate(
        opts.prompt,
        {
          maxTokens: positiveInt(opts.maxTokens, "--max-tokens"),
          temperature: opts.temperature === undefined ? 0 : number(opts.temperature, "--temperature"),
          ...(opts.topK === undefined ? {} : { topK: positiveInt(opts.topK, "--top-k") }),
          ...(opts.topP === undefined ? {} : { topP: number(opts.topP, "--top-p") }),
          ...(opts.seed === undefined ? {} : { seed: positiveInt(opts.seed, "--seed") }),
        },
        opts.json ? undefined : (e) => process.stdout.write(e.text),
      );
      if (!opts.json) {
        process.stdout.write("\n");
        return;
      }
      printJson({
        mode: ctx.mode,
        bundle: ctx.manifest?.bundle_id ?? null,
        profile: ctx.profile.name,
        threads,
        prompt: opts.prompt,
        text: gen.text,
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
