/**
 * What quantization cost and bought, measured with the runtime on real sessions: loss on a text
 * (bits/char, perplexity), agreement of next-token predictions with the original model on a fixed
 * prompt set, and greedy decode speed on this machine.
 */
import { type EvalOptions, evaluate, type LanguageModel, loadModel } from "../runtime/index.js";
import { argmax } from "../runtime/sampling.js";

/** Fixed prompts for top-1 agreement and logit differences (character-level friendly, varied). */
export const AGREEMENT_PROMPTS = [
  "ROMEO:\nBut soft, what light",
  "First Citizen:\nBefore we proceed any further, hear me speak.",
  "To be, or not to be, that is the question:",
  "Once upon a time there was a little girl who",
  "The king is dead; long live the",
  "KING RICHARD III:\nNow is the winter of our discontent",
];

/**
 * The prompts as token ids: encoded by the model's tokenizer, or for a folder without tokenizer.json
 * the same number of fixed id sequences (deterministic, spread over the vocabulary, no end-of-text id).
 */
export function promptIdLists(
  model: LanguageModel,
  prompts: readonly string[] = AGREEMENT_PROMPTS,
): number[][] {
  if (model.tokenizer.present) return prompts.map((p) => model.tokenizer.encode(p, false));
  return prompts.map((p, i) => {
    const ids: number[] = [];
    for (let j = 0; ids.length < Math.min(p.length, 24); j++) {
      const id = (1 + (i + 1) * 7919 + j * 104729) % model.vocabSize;
      if (!model.eosIds.has(id)) ids.push(id);
    }
    return ids;
  });
}

export interface TextQuality {
  tokens: number;
  nats_per_token: number;
  bits_per_char: number;
  perplexity: number;
}

export interface Agreement {
  prompts: number;
  positions: number;
  top1_agreement: number;
  max_abs_logit_diff: number;
}

export async function textQuality(
  model: LanguageModel,
  text: string,
  method: Pick<EvalOptions, "method" | "window" | "stride">,
): Promise<TextQuality> {
  const r = await evaluate(model, text, method);
  return {
    tokens: r.tokens,
    nats_per_token: r.nats_per_token,
    bits_per_char: r.bits_per_char,
    perplexity: r.perplexity,
  };
}

/** Logits for every position of each prompt, teacher-forced from a fresh state. */
export async function promptLogits(
  model: LanguageModel,
  prompts = AGREEMENT_PROMPTS,
): Promise<Float32Array[][]> {
  const out: Float32Array[][] = [];
  for (const ids of promptIdLists(model, prompts)) {
    const r = await model.forward([ids], model.newState(1));
    const rows: Float32Array[] = [];
    for (let i = 0; i < r.positions; i++) rows.push(r.logits.slice(i * r.vocab, (i + 1) * r.vocab));
    out.push(rows);
  }
  return out;
}

export function compareLogits(before: Float32Array[][], after: Float32Array[][]): Agreement {
  let positions = 0;
  let agree = 0;
  let maxDiff = 0;
  before.forEach((rows, p) => {
    rows.forEach((row, i) => {
      const other = after[p]![i]!;
      positions++;
      if (argmax(row) === argmax(other)) agree++;
      for (let j = 0; j < row.length; j++) maxDiff = Math.max(maxDiff, Math.abs(row[j]! - other[j]!));
    });
  });
  return {
    prompts: before.length,
    positions,
    top1_agreement: positions === 0 ? 0 : agree / positions,
    max_abs_logit_diff: maxDiff,
  };
}

export interface DecodeSpeed {
  tokens: number;
  tokens_per_s: number;
}

/** Greedy decode speed over `tokens` decode steps (after a short warm-up), from the runtime's per-step timings. */
export async function decodeSpeed(model: LanguageModel, tokens = 64): Promise<DecodeSpeed> {
  const prompt = promptIdLists(model, [AGREEMENT_PROMPTS[0]!])[0]!;
  await model.generate(prompt, { maxTokens: 8, temperature: 0, ignoreEos: true });
  const g = await model.generate(prompt, { maxTokens: tokens, temperature: 0, ignoreEos: true });
  const ms = g.timings.tokenMs.reduce((s, x) => s + x, 0);
  return {
    tokens: g.timings.tokenMs.length,
    tokens_per_s: ms > 0 ? (g.timings.tokenMs.length * 1000) / ms : 0,
  };
}

/**
 * Decode speed of two model folders measured alternately (A, B, A, B, ...) in one process, so that
 * warm-up, CPU frequency and other load affect both alike; the median of `rounds` runs each.
 */
export async function compareDecodeSpeed(
  dirA: string,
  dirB: string,
  rounds = 3,
  tokens = 64,
): Promise<{ a: DecodeSpeed; b: DecodeSpeed }> {
  const a = await loadModel(dirA);
  const b = await loadModel(dirB);
  try {
    const runsA: DecodeSpeed[] = [];
    const runsB: DecodeSpeed[] = [];
    for (let i = 0; i < rounds; i++) {
      runsA.push(await decodeSpeed(a, tokens));
      runsB.push(await decodeSpeed(b, tokens));
    }
    const median = (runs: DecodeSpeed[]) =>
      [...runs].sort((x, y) => x.tokens_per_s - y.tokens_per_s)[Math.floor(runs.length / 2)]!;
    return { a: median(runsA), b: median(runsB) };
  } finally {
    await a.dispose();
    await b.dispose();
  }
}

/** Load a folder, run `fn`, and always release the session. */
export async function withModel<T>(dir: string, fn: (m: LanguageModel) => Promise<T>): Promise<T> {
  const model = await loadModel(dir);
  try {
    return await fn(model);
  } finally {
    await model.dispose();
  }
}
