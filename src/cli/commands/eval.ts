import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { Command } from "commander";
import { z } from "zod";
import { IteraError } from "../../errors.js";
import {
  type EvalResult,
  evaluate,
  evaluateIds,
  type LanguageModel,
  loadModel,
} from "../../runtime/index.js";
import { applySplit, cardText, datasetsDir, methodFromCard } from "../../runtime/eval-text.js";
import { type Progress, progress } from "../../util/progress.js";
import { markdownTable } from "../../util/table.js";
import { parseIds } from "../generation.js";
import { action, printJson } from "../run.js";
import { parseOptions } from "./run.js";

const evalOptions = z.object({
  text: z.string().min(1).optional(),
  ids: z.string().min(1).optional(),
  split: z.string().optional(),
  maxChars: z.coerce.number().int().positive().optional(),
  window: z.coerce.number().int().positive().optional(),
  stride: z.coerce.number().int().positive().optional(),
  method: z.enum(["carry", "sliding"]).optional(),
  threads: z.coerce.number().int().positive().optional(),
  tolerance: z.coerce.number().nonnegative().optional(),
  json: z.boolean().optional(),
});

type EvalCliOptions = z.infer<typeof evalOptions>;

async function runOne(model: LanguageModel, text: string, label: string, opts: Partial<EvalCliOptions>) {
  let bar: Progress | undefined;
  const result = await evaluate(model, text, {
    method: opts.method,
    window: opts.window,
    stride: opts.stride,
    onProgress: (done, total) => {
      bar ??= progress(`eval ${label}`, total);
      bar.update(done, "tokens");
    },
  });
  bar?.done(`tokens, ${result.nats_per_token.toFixed(4)} nats/token`);
  return result;
}

function row(
  label: string,
  r: Omit<EvalResult, "chars" | "bits_per_char"> & { bits_per_char?: number },
  reported?: number,
) {
  return [
    label,
    r.method + (r.stride ? ` ${r.window}/${r.stride}` : ` ${r.window}`),
    r.tokens,
    r.nats_per_token.toFixed(4),
    // token ids have no characters: no bits/char
    r.bits_per_char === undefined ? "" : r.bits_per_char.toFixed(4),
    r.perplexity.toFixed(3),
    reported === undefined ? "" : reported.toFixed(4),
    reported === undefined ? "" : (r.nats_per_token - reported).toExponential(2),
    r.tokens_per_s.toFixed(0),
  ];
}

const header = [
  "text",
  "method",
  "tokens",
  "nats/token",
  "bits/char",
  "perplexity",
  "card",
  "delta",
  "tokens/s",
];

export function registerEval(program: Command): void {
  program
    .command("eval")
    .description(
      "nats/token, bits/char and perplexity of a model over a text (default: the card's evaluations)",
    )
    .argument("<model>", "model folder")
    .option("--text <file>", "text file to evaluate (default: each evaluation in itera.json)")
    .option(
      "--ids <file>",
      "evaluate token ids instead of text (whitespace- or comma-separated; for a model without tokenizer.json)",
    )
    .option("--split <words>", "part of --text: 'last 10% of characters', 'first 90% of characters', 'all'")
    .option("--max-chars <n>", "evaluate only the first n characters")
    .option("--window <n>", "tokens per call (carry) or per window (sliding)")
    .option("--stride <n>", "sliding windows: start a window every n tokens (default window/2)")
    .option("--method <m>", "carry (state across windows) | sliding (fresh KV cache per window)")
    .option("--threads <n>", "ONNX Runtime intra-op threads")
    .option("--tolerance <nats>", "with the card's evaluations: fail (exit 1) when a figure differs by more")
    .option("--json", "machine-readable output")
    .action(
      action(async (dir: string, raw: unknown) => {
        const opts = parseOptions(evalOptions, raw);
        const model = await loadModel(dir, opts.threads ? { threads: opts.threads } : {});
        try {
          const clip = (t: string) => (opts.maxChars ? Array.from(t).slice(0, opts.maxChars).join("") : t);
          if (opts.ids) {
            if (opts.text || opts.split || opts.maxChars) {
              throw new IteraError(
                "--ids takes the ids as they are: --text, --split and --max-chars do not apply",
                {
                  fix: "give either --ids FILE or --text FILE",
                },
              );
            }
            const path = resolve(opts.ids);
            const content = await readFile(path, "utf8").catch((e) => {
              throw new IteraError(`cannot read the ids file (${(e as NodeJS.ErrnoException).code})`, {
                where: path,
                fix: "give an existing file of token ids with --ids",
              });
            });
            let bar: Progress | undefined;
            const result = await evaluateIds(model, parseIds(content, path), {
              method: opts.method,
              window: opts.window,
              stride: opts.stride,
              onProgress: (done, total) => {
                bar ??= progress(`eval ${opts.ids}`, total);
                bar.update(done, "tokens");
              },
            });
            bar?.done(`tokens, ${result.nats_per_token.toFixed(4)} nats/token`);
            if (opts.json) return printJson({ model: model.dir, ids: path, bits_per_char: null, ...result });
            console.log(markdownTable(header, [row(opts.ids, result)]));
            return;
          }
          if (!model.tokenizer.present) {
            throw new IteraError("the model folder has no tokenizer.json, so a text cannot be evaluated", {
              where: model.tokenizer.path,
              fix: `give the text as token ids: itera eval ${dir} --ids FILE (ids separated by spaces or commas)`,
            });
          }
          if (opts.text) {
            const path = resolve(opts.text);
            const content = await readFile(path, "utf8").catch((e) => {
              throw new IteraError(`cannot read the text file (${(e as NodeJS.ErrnoException).code})`, {
                where: path,
                fix: "give an existing UTF-8 text file with --text",
              });
            });
            const text = clip(opts.split ? applySplit(content, opts.split) : content);
            const result = await runOne(model, text, opts.text, opts);
            if (opts.json)
              return printJson({ model: model.dir, text: path, split: opts.split ?? "all", ...result });
            console.log(markdownTable(header, [row(opts.text, result)]));
            return;
          }
          const records = model.card?.evaluation ?? [];
          if (records.length === 0) {
            throw new IteraError("nothing to evaluate: no --text and no evaluation in itera.json", {
              where: model.dir,
              fix: "pass --text FILE",
            });
          }
          const results = [];
          for (const record of records) {
            const text = clip(await cardText(record));
            const fromCard = methodFromCard(record);
            const result = await runOne(model, text, record.dataset, {
              ...opts,
              method: opts.method ?? fromCard.method,
              window: opts.window ?? fromCard.window,
              stride: opts.stride ?? fromCard.stride,
            });
            results.push({ record, result });
          }
          if (opts.json) {
            printJson({
              model: model.dir,
              datasets: datasetsDir(),
              evaluations: results.map(({ record, result }) => ({
                dataset: record.dataset,
                file: record.file,
                split: record.split,
                reported_nats_per_token: record.nats_per_token,
                delta_nats_per_token: result.nats_per_token - record.nats_per_token,
                ...result,
              })),
            });
          } else {
            console.log(
              markdownTable(
                header,
                results.map(({ record, result }) => row(record.dataset, result, record.nats_per_token)),
              ),
            );
          }
          const tolerance = opts.tolerance;
          const off = results.filter(
            ({ record, result }) =>
              tolerance !== undefined && Math.abs(result.nats_per_token - record.nats_per_token) > tolerance,
          );
          if (off.length > 0) {
            throw new IteraError(
              `${off.map(({ record }) => record.dataset).join(", ")}: nats/token differs from itera.json by more than ${tolerance}`,
              {
                where: join(model.dir, "itera.json"),
                fix: "re-measure the card's figures with the model folder's tokenizer.json and graph",
              },
            );
          }
        } finally {
          await model.dispose();
        }
      }),
    );
}
