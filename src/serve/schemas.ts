import { z } from "zod";

/**
 * Request bodies of the HTTP API (docs/serve.md). Unknown fields are refused, so a misspelt option
 * (`maxTokens`, `top-k`) is a 400 rather than silently ignored. `fieldHelp` is the "how to fix" of
 * each field's 400.
 */

const MAX_SEED = 2 ** 31 - 1;
const MAX_STOPS = 16;

const tokenIds = z.array(z.number().int().nonnegative()).min(1);
const stop = z.union([z.string().min(1), z.array(z.string().min(1)).max(MAX_STOPS)]);

export function generateBodySchema(maxTokensLimit: number) {
  return z.strictObject({
    prompt: z.union([z.string().min(1), tokenIds]),
    max_tokens: z.number().int().min(1).max(maxTokensLimit).optional(),
    temperature: z.number().min(0).max(100).optional(),
    top_k: z.number().int().min(0).optional(),
    top_p: z.number().gt(0).max(1).optional(),
    repetition_penalty: z.number().gt(0).max(100).optional(),
    seed: z.number().int().min(0).max(MAX_SEED).optional(),
    stop: stop.optional(),
    ignore_eos: z.boolean().optional(),
    stream: z.boolean().default(false),
  });
}

export type GenerateBody = z.infer<ReturnType<typeof generateBodySchema>>;

/**
 * OpenAI's legacy completions request, the subset this server implements. Parameters without an
 * equivalent are accepted only at their neutral value (n 1, echo false, penalties 0, ...), which
 * some clients always send; `model` is accepted and ignored (the server has one model). Nulls mean
 * "not given", as in OpenAI's API.
 */
export function completionsBodySchema(maxTokensLimit: number) {
  return z.strictObject({
    model: z.string().nullish(),
    prompt: z.union([z.string().min(1), z.tuple([z.string().min(1)]), tokenIds]),
    max_tokens: z.number().int().min(1).max(maxTokensLimit).nullish(),
    temperature: z.number().min(0).max(2).nullish(),
    top_p: z.number().gt(0).max(1).nullish(),
    stream: z.boolean().nullish(),
    stream_options: z.strictObject({ include_usage: z.boolean().nullish() }).nullish(),
    stop: z.union([z.string().min(1), z.array(z.string().min(1)).max(4)]).nullish(),
    seed: z.number().int().min(0).max(MAX_SEED).nullish(),
    user: z.string().nullish(),
    n: z.literal(1).nullish(),
    best_of: z.literal(1).nullish(),
    echo: z.literal(false).nullish(),
    logprobs: z.null().optional(),
    presence_penalty: z.literal(0).nullish(),
    frequency_penalty: z.literal(0).nullish(),
    logit_bias: z.strictObject({}).nullish(),
    suffix: z.null().optional(),
  });
}

export type CompletionsBody = z.infer<ReturnType<typeof completionsBodySchema>>;

/** The accepted values of each field, said in the 400's `fix`. */
export function fieldHelp(maxTokensLimit: number): Record<string, string> {
  return {
    prompt: "give 'prompt' as a non-empty string or a non-empty array of token ids (integers >= 0)",
    max_tokens: `give 'max_tokens' as a whole number from 1 to ${maxTokensLimit} (the server's --max-tokens-limit)`,
    temperature: "give 'temperature' as a number >= 0 (0 = greedy; at most 100, 2 on /v1/completions)",
    top_k: "give 'top_k' as a whole number >= 0 (0 = off)",
    top_p: "give 'top_p' as a number in (0, 1] (1 = off)",
    repetition_penalty: "give 'repetition_penalty' as a number in (0, 100] (1 = off)",
    seed: `give 'seed' as a whole number from 0 to ${MAX_SEED}`,
    stop: `give 'stop' as a non-empty string or an array of them (at most ${MAX_STOPS}, 4 on /v1/completions)`,
    ignore_eos: "give 'ignore_eos' as true or false",
    stream: "give 'stream' as true or false",
    stream_options: "give 'stream_options' as {\"include_usage\": true|false}",
    model: "give 'model' as a string, or leave it out (this server has one model)",
    user: "give 'user' as a string",
    n: "leave 'n' out or set it to 1: this server returns one completion per request",
    best_of: "leave 'best_of' out or set it to 1",
    echo: "leave 'echo' out or set it to false: the prompt is not echoed",
    logprobs: "leave 'logprobs' out: log-probabilities are not returned",
    presence_penalty: "leave 'presence_penalty' out or set it to 0 (use repetition_penalty on /v1/generate)",
    frequency_penalty:
      "leave 'frequency_penalty' out or set it to 0 (use repetition_penalty on /v1/generate)",
    logit_bias: "leave 'logit_bias' out: it is not supported",
    suffix: "leave 'suffix' out: insertion is not supported",
  };
}

/** Stop strings as a list. */
export function stopList(s: string | readonly string[] | null | undefined): string[] | undefined {
  if (s === null || s === undefined) return undefined;
  return typeof s === "string" ? [s] : [...s];
}
