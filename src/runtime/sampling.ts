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

/** Token ids sorted by descending logit (ties: lower id first, so results are stable). */
function rankOrder(logits: ArrayLike<number>): number[] {
  return Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
}

/** The k largest logits' ids, largest first (ties: lower id first), without sorting the vocabulary. */
export function topKIndices(logits: ArrayLike<number>, k: number): number[] {
  const ids: number[] = [];
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i]!;
    if (ids.length === k && v <= logits[ids[k - 1]!]!) continue;
    let at = ids.length === k ? k - 1 : ids.length;
    while (at > 0 && logits[ids[at - 1]!]! < v) at--;
    ids.splice(at, 0, i);
    if (ids.length > k) ids.pop();
  }
  return ids;
}

/**
 * The distribution sampling draws from: softmax(logits / temperature) over the top-k tokens
 * (k = 0: all), cut to the smallest most-likely set whose probability reaches top-p (at least one
 * token), renormalised. Ids come most likely first. Works on the candidates only, so that a large
 * vocabulary is not sorted per token when top-k is set.
 */
export function samplingDistribution(
  logits: ArrayLike<number>,
  options: Pick<SamplingOptions, "temperature" | "topK" | "topP">,
): { ids: number[]; probs: number[] } {
  const k = options.topK ?? 0;
  const candidates = k > 0 && k < logits.length ? topKIndices(logits, k) : rankOrder(logits);
  const t = options.temperature ?? 1;
  const top = logits[candidates[0]!]! / t;
  const weights = candidates.map((i) => Math.exp(logits[i]! / t - top));
  const sum = weights.reduce((a, b) => a + b, 0);
  let keep = weights.length;
  const p = options.topP ?? 1;
  if (p < 1) {
    let cumulative = 0;
    for (keep = 0; keep < weights.length; ) {
      cumulative += weights[keep]! / sum;
      keep++;
      if (cumulative >= p) break;
    }
  }
  const kept = weights.slice(0, keep);
  const keptSum = kept.reduce((a, b) => a + b, 0);
  return { ids: candidates.slice(0, keep), probs: kept.map((w) => w / keptSum) };
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

  /** The generator's next uniform number: what `next` draws with (fused decoding draws ahead). */
  uniform(): number {
    return this.rng();
  }

  get greedy(): boolean {
    return (this.options.temperature ?? 0) <= 0;
  }

  /** Choose the next token; `logits` is copied only when it must be changed. */
  next(logits: Float32Array, context: readonly number[]): number {
    const penalty = this.options.repetitionPenalty ?? 1;
    const work = penalty !== 1 ? Float32Array.from(logits) : logits;
    applyRepetitionPenalty(work, context, penalty);
    if (this.greedy) return argmax(work);
    const { ids, probs } = samplingDistribution(work, this.options);
    return ids[drawFrom(probs, this.rng())]!;
  }
}
