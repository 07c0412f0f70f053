import type { Command } from "commander";
import { z } from "zod";
import { IteraError } from "../../errors.js";
import { describeIssues } from "../../model/json-file.js";
import { type Generation, loadModel } from "../../runtime/index.js";
import { action, collect, printJson } from "../run.js";

const runOptions = z.object({
  prompt: z.array(z.string()).min(1, "give at least one --prompt"),
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

export function registerRun(program: Command): void {
  program
    .command("run")
    .description("generate text with a model folder (streams to stdout)")
    .argument("<model>", "model folder (genai_config.json, tokenizer.json, .onnx)")
    .option("-p, --prompt <text>", "prompt (repeat for a batch)", collect)
    .option("-n, --max-tokens <n>", "new tokens at most")
    .option("--temperature <t>", "sampling temperature; 0 = greedy (default: genai_config search)")
    .option("--top-k <k>", "keep the k most likely tokens (0 = all)")
    .option("--top-p <p>", "nucleus sampling: keep tokens up to cumulative probability p")
    .option("--repetition-penalty <r>", "> 1 discourages repeating context tokens")
    .option("--seed <n>", "PRNG seed (reproducible sampling)")
    .option("--threads <n>", "ONNX Runtime intra-op threads")
    .option("--stop <s>", "stop when the text contains s (repeatable)", collect)
    .option("--ignore-eos", "keep generating past the end-of-text token")
    .option("--no-fused", "greedy decoding: one ONNX Runtime call per token, not many steps per call")
    .option("--json", "machine-readable output: tokens, timings, stop reason")
    .action(
      action(async (dir: string, raw: unknown) => {
        const opts = parseOptions(runOptions, { prompt: [], ...(raw as object) });
        const model = await loadModel(dir, opts.threads ? { threads: opts.threads } : {});
        try {
          const genOptions = {
            maxTokens: opts.maxTokens,
            temperature: opts.temperature,
            topK: opts.topK,
            topP: opts.topP,
            repetitionPenalty: opts.repetitionPenalty,
            seed: opts.seed,
            stop: opts.stop,
            ignoreEos: opts.ignoreEos,
            fusedDecode: opts.fused,
          };
          const single = opts.prompt.length === 1;
          const pieces: string[][] = opts.prompt.map(() => []);
          const results = await model.generateBatch(opts.prompt, genOptions, (e) => {
            pieces[e.row]![e.index] = (pieces[e.row]![e.index] ?? "") + e.text;
            if (single && !opts.json) process.stdout.write(e.text);
          });
          if (opts.json) {
            const reports = results.map((g, r) => ({
              prompt: opts.prompt[r],
              ...generationReport(g, pieces[r]!),
            }));
            printJson({ model: model.dir, ...(single ? reports[0] : { batch: reports }) });
          } else if (single) {
            process.stdout.write("\n");
            const g = results[0]!;
            const decode = g.timings.tokenMs.reduce((a, b) => a + b, 0);
            process.stderr.write(
              `[${g.ids.length} tokens, stop: ${g.stopReason}, ttft ${g.timings.ttftMs.toFixed(1)} ms, ` +
                `${g.timings.tokenMs.length ? ((1000 * g.timings.tokenMs.length) / decode).toFixed(1) : "-"} tokens/s (${g.decode} decode), seed ${g.seed}]\n`,
            );
          } else {
            results.forEach((g, r) => {
              process.stdout.write(`--- ${r + 1} (${g.stopReason})\n${g.text}\n`);
            });
          }
        } finally {
          await model.dispose();
        }
      }),
    );
}
