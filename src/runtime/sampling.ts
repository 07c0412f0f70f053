/**
 * Choosing the next token from logits: greedy, or sampling with temperature, top-k, top-p and a
 * repetition penalty, in Hugging Face's order (penalty -> temperature -> top-k -> top-p), driven by a
 * small seeded PRNG so that a seed reproduces the same text.
 */

export interface SamplingOptions {
  /** 0 (or less) = greedy. */
  temperature?: number;
  /** Keep only the k most likely tokens (0 = all). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p (1 = all). */
  topP?: number;
  /** > 1 discourages tokens already in the context (CTRL / Hugging Face semantics). */
  repetitionPenalty?: number;
  /** Seed of the PRNG; the same seed gives the same samples. */
  seed?: number;
}

/** mulberry32: a tiny, fast 32-bit PRNG with a good spread, plenty for sampling. */
export function createRng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  let bestValue = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i]!;
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}

/** In place: a token seen before has its logit divided by the penalty if positive, multiplied if negative. */
export function applyRepetitionPenalty(logits: Float32Array, seen: Iterable<number>, penalty: number): void {
  if (penalty === 1) return;
  for (const id of new Set(seen)) {
    if (id < 0 || id >= logits.length) continue;
    const v = logits[id]!;
    logits[id] = v > 0 ? v / penalty : v * penalty;
  }
}

/** Softmax of the logits (numerically stable); -Infinity becomes probability 0. */
export function softmax(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  const p = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) {
    const e = Math.exp(logits[i]! - max);
    p[i] = e;
    sum += e;
  }
  for (let i = 0; i < p.length; i++) p[i]! /= sum;
  return p;
}

/** Token ids sorted by descending logit (ties: lower id first, so results are stable). */
function rankOrder(logits: ArrayLike<number>): number[] {
  return Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
}

/** In place: set all but the k largest logits to -Infinity (k <= 0 or >= vocab: no change). */
export function topKFilter(logits: Float32Array, k: number): void {
  if (k <= 0 || k >= logits.length) return;
  const order = rankOrder(logits);
  for (let r = k; r < order.length; r++) logits[order[r]!] = -Infinity;
}

/**
 * In place: keep the smallest set of most likely tokens whose cumulative probability reaches p
 * (always at least one token); the rest become -Infinity.
 */
export function topPFilter(logits: Float32Array, p: number): void {
  if (p >= 1) return;
  const probs = softmax(logits);
  const order = rankOrder(logits);
  let cumulative = 0;
  let keep = 0;
  while (keep < order.length) {
    cumulative += probs[order[keep]!]!;
    keep++;
    if (cumulative >= p) break;
  }
  for (let r = keep; r < order.length; r++) logits[order[r]!] = -Infinity;
}

/** Draw an index from a probability vector with one uniform number u in [0, 1). */
export function drawFrom(probs: ArrayLike<number>, u: number): number {
  let cumulative = 0;
  let last = 0;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i]! <= 0) continue;
    cumulative += probs[i]!;
    last = i;
    if (u < cumulative) return i;
  }
  return last;
}

/** Picks tokens for one stream; keeps its own PRNG so that streams in a batch stay reproducible. */
export class Sampler {
  private readonly rng: () => number;
  readonly seed: number;

  constructor(readonly options: SamplingOptions = {}) {
    this.seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
    this.rng = createRng(this.seed);
  }

  get greedy(): boolean {
    return (this.options.temperature ?? 0) <= 0;
  }

  /** Choose the next token; `logits` is copied only when it must be changed. */
  next(logits: Float32Array, context: readonly number[]): number {
    const penalty = this.options.repetitionPenalty ?? 1;
    const needsCopy = penalty !== 1 || !this.greedy;
    const work = needsCopy ? Float32Array.from(logits) : logits;
    applyRepetitionPenalty(work, context, penalty);
    if (this.greedy) return argmax(work);
    const t = this.options.temperature!;
    for (let i = 0; i < work.length; i++) work[i]! /= t;
    topKFilter(work, this.options.topK ?? 0);
    topPFilter(work, this.options.topP ?? 1);
    return drawFrom(softmax(work), this.rng());
  }
}
