import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { IteraError } from "../errors.js";
import type { LanguageModel, State } from "./model.js";
import type { TextTokenizer } from "./tokenizer.js";

/**
 * Language-model evaluation over a long text: nats per token, bits per character and perplexity.
 *
 * Methods:
 * - "carry" (models without a KV cache: recurrent/conv state): the text is fed in windows of
 *   `window` tokens with the state carried across windows, so every token after the first is
 *   predicted from the whole text before it; the window size only changes speed.
 * - "sliding" (KV-cache models): windows of `window` tokens (default the context length) starting
 *   every `stride` tokens (default window/2), each from an empty cache; a token is scored once, in
 *   the first window that predicts it with the most context (Hugging Face's perplexity recipe).
 */

export type EvalMethod = "carry" | "sliding";

export interface EvalOptions {
  method?: EvalMethod;
  window?: number;
  stride?: number;
  /** Add the tokenizer's special tokens when encoding (default false: plain text). */
  addSpecialTokens?: boolean;
  onProgress?: (scoredTokens: number, totalTokens: number) => void;
}

export interface EvalResult {
  method: EvalMethod;
  window: number;
  stride: number | null;
  /** Tokens scored (all but the first). */
  tokens: number;
  /**
   * Source characters (code points of the evaluated text) the scored tokens cover: the text's, less
   * the first token's. bits/char divides by these, as tools/train/evaluate.py does.
   */
  chars: number;
  nats_per_token: number;
  bits_per_char: number;
  perplexity: number;
  seconds: number;
  tokens_per_s: number;
}

/** -log p(target) from one row of logits, in float64. */
function nll(logits: Float32Array, offset: number, vocab: number, target: number): number {
  let max = -Infinity;
  for (let i = 0; i < vocab; i++) if (logits[offset + i]! > max) max = logits[offset + i]!;
  let sum = 0;
  for (let i = 0; i < vocab; i++) sum += Math.exp(logits[offset + i]! - max);
  return Math.log(sum) + max - logits[offset + target]!;
}

/** Models whose graph returned the last position's logits only: their windows are stepped. */
const lastPositionOnly = new WeakSet<LanguageModel>();

async function scoreWindow(
  model: LanguageModel,
  ids: readonly number[],
  state: State,
): Promise<{ logits: Float32Array; vocab: number; state: State }> {
  const result = lastPositionOnly.has(model) ? undefined : await model.forward([ids], state);
  if (result && result.positions === ids.length) {
    return { logits: result.logits, vocab: result.vocab, state: result.state };
  }
  if (!result || result.positions === 1) {
    // The graph returns the last position's logits only: one token per call from the same state
    // gives every position's (the same figures, one call per token).
    lastPositionOnly.add(model);
    let current = state;
    let logits: Float32Array | undefined;
    let vocab = 0;
    for (let t = 0; t < ids.length; t++) {
      const step = await model.forward([[ids[t]!]], current);
      vocab = step.vocab;
      logits ??= new Float32Array(ids.length * vocab);
      logits.set(step.logits.subarray(0, vocab), t * vocab);
      current = step.state;
    }
    return { logits: logits!, vocab, state: current };
  }
  throw new IteraError(
    `the graph returns logits for ${result.positions} of the ${ids.length} positions fed, so it cannot be evaluated`,
    { where: model.onnxPath, fix: "export logits for every position (or for the last one only)" },
  );
}

/**
 * Source characters the first token covers: an added token written out in the text (the literal
 * `<unk>` wikitext uses) covers its whole content; any other token its decoded characters, at least
 * one (an unknown character's <unk> decodes to nothing).
 */
export function firstTokenChars(tokenizer: TextTokenizer, text: string, first: number): number {
  const added = tokenizer.tokenizer?.get_added_tokens_decoder().get(first)?.content;
  if (added && text.startsWith(added)) return Array.from(added).length;
  return Array.from(tokenizer.decode([first])).length || 1;
}

/**
 * Refuse a sum of log-losses that is not a number: NaN (broken weights: non-finite logits) or
 * +Infinity (a token the model gives probability 0). Checked per window, so a broken model fails
 * at its first window rather than reporting NaN nats/token after the whole text.
 */
function checkNats(model: LanguageModel, nats: number, scored: number): void {
  if (Number.isFinite(nats)) return;
  throw new IteraError(
    Number.isNaN(nats)
      ? `the model ${model.dir} gives NaN log-probabilities within its first ${scored} tokens: its logits are not finite (NaN/Inf weights, or an overflow in a quantized layer)`
      : `the model ${model.dir} gives a probability of 0 to a token of the text within its first ${scored} tokens: its loss is infinite`,
    {
      where: model.onnxPath,
      fix: Number.isNaN(nats)
        ? "re-export or re-quantize the model: no figure is reported for it"
        : "check the model's weights and its output (a -Infinity logit): no figure is reported for it",
    },
  );
}

/** What evaluating token ids gives: no characters, so no bits/char. */
export type IdsEvalResult = Omit<EvalResult, "chars" | "bits_per_char">;

export async function evaluate(
  model: LanguageModel,
  text: string,
  options: EvalOptions = {},
): Promise<EvalResult> {
  const t0 = performance.now();
  const ids = model.tokenizer.encode(text, options.addSpecialTokens ?? false);
  const r = await evaluateIds(model, ids, options, t0);
  const chars = Array.from(text).length - firstTokenChars(model.tokenizer, text, ids[0]!);
  const nats = r.nats_per_token * r.tokens;
  return { ...r, chars, bits_per_char: nats / Math.LN2 / chars };
}

/** nats/token and perplexity over token ids (a model without tokenizer.json: `itera eval --ids FILE`). */
export async function evaluateIds(
  model: LanguageModel,
  ids: readonly number[],
  options: EvalOptions = {},
  t0 = performance.now(),
): Promise<IdsEvalResult> {
  const bad = ids.find((id) => !Number.isInteger(id) || id < 0 || id >= model.vocabSize);
  if (bad !== undefined) {
    throw new IteraError(`token id ${bad} is outside the model's vocabulary of ${model.vocabSize}`, {
      where: model.dir,
      fix: `give ids from 0 to ${model.vocabSize - 1}`,
    });
  }
  if (ids.length < 2) {
    throw new IteraError(`the input has ${ids.length} token(s); evaluation needs at least 2`, {
      fix: "give a longer text (or more token ids)",
    });
  }
  const method: EvalMethod = options.method ?? (model.io.hasKvCache ? "sliding" : "carry");
  if (method === "carry" && model.limitedContext && ids.length > model.contextLength) {
    throw new IteraError(
      `carrying the state across ${ids.length} tokens exceeds the context of ${model.contextLength} of a model with a KV cache or position ids`,
      { fix: "use the sliding method (`itera eval --method sliding`)" },
    );
  }
  const bound = model.limitedContext ? model.contextLength : Number.POSITIVE_INFINITY;
  const window = options.window ?? Math.min(method === "sliding" ? model.contextLength : 512, bound);
  if (!Number.isInteger(window) || window < 1) {
    throw new IteraError(`window must be a positive integer, not ${options.window}`, {
      fix: "give a window of at least 1 token (`itera eval --window N`)",
    });
  }
  // A window asked for explicitly (or by a model card) is never silently shrunk: that would measure
  // something else than what was asked.
  if (window > bound) {
    throw new IteraError(
      `a window of ${window} tokens exceeds the model's context length of ${model.contextLength}`,
      {
        where: join(model.dir, "genai_config.json"),
        fix: `evaluate with \`itera eval --window ${model.contextLength}\` or less (a model card's method must fit context_length)`,
      },
    );
  }
  const total = ids.length - 1;
  let nats = 0;
  let scored = 0;

  if (method === "carry") {
    let state = model.newState(1);
    let pending: Float32Array | null = null;
    for (let begin = 0; begin < ids.length; begin += window) {
      const chunk = ids.slice(begin, begin + window);
      const out = await scoreWindow(model, chunk, state);
      state = out.state;
      const v = out.vocab;
      if (pending) {
        nats += nll(pending, 0, v, chunk[0]!);
        scored++;
      }
      for (let j = 0; j + 1 < chunk.length; j++) nats += nll(out.logits, j * v, v, chunk[j + 1]!);
      scored += chunk.length - 1;
      pending = out.logits.slice((chunk.length - 1) * v, chunk.length * v);
      checkNats(model, nats, scored);
      options.onProgress?.(scored, total);
    }
  } else {
    const stride = options.stride ?? Math.max(1, Math.floor(window / 2));
    let prevEnd = 0;
    for (let begin = 0; ; begin += stride) {
      const end = Math.min(begin + window, ids.length);
      const chunk = ids.slice(begin, end);
      const out = await scoreWindow(model, chunk, model.newState(1));
      for (let j = Math.max(prevEnd, begin + 1); j < end; j++) {
        nats += nll(out.logits, (j - begin - 1) * out.vocab, out.vocab, ids[j]!);
        scored++;
      }
      prevEnd = end;
      checkNats(model, nats, scored);
      options.onProgress?.(scored, total);
      if (end === ids.length) break;
    }
  }

  const seconds = (performance.now() - t0) / 1000;
  return {
    method,
    window,
    stride: method === "sliding" ? (options.stride ?? Math.max(1, Math.floor(window / 2))) : null,
    tokens: scored,
    nats_per_token: nats / scored,
    perplexity: Math.exp(nats / scored),
    seconds,
    tokens_per_s: scored / seconds,
  };
}
