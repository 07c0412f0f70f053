import { performance } from "node:perf_hooks";
import { IteraError } from "../errors.js";
import { FUSED_TOP_P_MAX, isDecoder, loopFeatures } from "./loop-features.js";
import type { ForwardResult, LanguageModel, State } from "./model.js";
import { Sampler, type SamplingOptions } from "./sampling.js";
import type { TextStream } from "./tokenizer.js";

/**
 * Text generation over a LanguageModel: encode, prefill (one call when the graph takes several
 * tokens), then decode token by token carrying the state, sampling each row with its own seeded
 * PRNG, streaming text deltas, and stopping at eos, a stop string, max tokens or the context length.
 *
 * Batches: prompts of equal token length are prefilled together in one call. Prompts of different
 * lengths are prefilled one by one and their states stacked (KV caches left-padded, hidden by the
 * attention mask; conv/recurrent states need no padding), then decoded together. A KV-cache model
 * without attention_mask can batch only prompts of equal length.
 */

export interface GenerateOptions extends SamplingOptions {
  /** New tokens at most (default: search.max_length minus the prompt, else 256). */
  maxTokens?: number;
  /** Stop when the text contains one of these (the stop string is not part of the result). */
  stop?: readonly string[];
  /** Keep going past the end-of-text token (for comparisons and benchmarks). */
  ignoreEos?: boolean;
  /** Add the tokenizer's special tokens (BOS, ...) to string prompts (default true). */
  addSpecialTokens?: boolean;
  /**
   * Decoding runs many steps per ONNX Runtime call where the model allows it (fused-decode.ts:
   * greedy or sampled, recurrent state or KV cache); false steps one call per token.
   */
  fusedDecode?: boolean;
  /**
   * Fused decoding of a KV-cache model splits each cache into the call's prefix and the chunk the
   * loop carries, so no step copies the whole cache (kv-split.ts); false concatenates the whole
   * cache every step, as before (for comparisons).
   */
  splitKv?: boolean;
  /**
   * Cached positions from which a fused call uses the split cache (default 256): below, the
   * whole-cache Concat is as cheap and the split's extra nodes per step cost more (measured,
   * docs/benchmarks.md). 0: split from the first call.
   */
  splitKvFrom?: number;
}

/** How the tokens after the first were decoded: many steps per call (greedy or sampled), or one call per token. */
export type DecodeMode = "fused" | "step";

/** Wall time a fused call aims at, so that streamed text still arrives in small pieces. */
const FUSED_CHUNK_MS = 20;
const FUSED_MAX_CHUNK = 256;
/**
 * Steps per call at least, for a KV-cache model: each call copies the whole cache a few times (the
 * loop joins prefix and chunk once, the Node binding copies the result out), so a call runs at
 * least 16 steps, and at least one per 32 cached positions, which keeps those copies a small
 * share of the steps' own reading of the cache (measured at 1,984 positions: 64 steps per call
 * took 22% less CPU per token than 16; docs/benchmarks.md).
 */
const FUSED_MIN_KV_CHUNK = 16;
/** Cached positions from which fused calls split the KV cache (generate's `splitKvFrom`). */
export const FUSED_SPLIT_KV_FROM = 256;
const FUSED_KV_POSITIONS_PER_STEP = 32;

export type StopReason = "eos" | "stop" | "max_tokens" | "context";

export interface TokenEvent {
  row: number;
  /** Index of the token among the generated ones. */
  index: number;
  id: number;
  /** New text this token completes (may be empty, held back for a partial stop string or UTF-8 sequence). */
  text: string;
}

export interface Generation {
  promptIds: number[];
  /** Generated ids (the eos token, if it ended the generation, included). */
  ids: number[];
  text: string;
  stopReason: StopReason;
  seed: number;
  decode: DecodeMode;
  timings: {
    /** Prompt tokens fed before the first generated token. */
    promptTokens: number;
    prefillMs: number;
    /** From the call to the first generated token (tokenisation and prefill included). */
    ttftMs: number;
    /** Wall time of each decode step after the first token (fused: the call's time per token). */
    tokenMs: number[];
    totalMs: number;
  };
}

export type GenerateInput = string | readonly number[];

class RowStop {
  text = "";
  emitted = 0;
  private readonly longestStop: number;

  constructor(
    readonly stream: TextStream,
    readonly stops: readonly string[],
  ) {
    this.longestStop = Math.max(0, ...stops.map((s) => s.length));
  }

  /** Length of the longest suffix of the text that begins some stop string (held back from streaming). */
  private partialStop(): number {
    let best = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.text.length); k > best; k--) {
        if (this.text.endsWith(s.slice(0, k))) {
          best = k;
          break;
        }
      }
    }
    return best;
  }

  /** Add a token; returns the text safe to emit and whether a stop string ended the text. */
  push(id: number): { text: string; stopped: boolean } {
    const piece = this.stream.push(id);
    if (this.stops.length === 0) {
      this.text += piece;
      this.emitted = this.text.length;
      return { text: piece, stopped: false };
    }
    const from = Math.max(0, this.text.length - this.longestStop);
    this.text += piece;
    let cut = -1;
    for (const s of this.stops) {
      const at = this.text.indexOf(s, from);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.text = this.text.slice(0, cut);
      return { text: this.flush(), stopped: true };
    }
    const safe = this.text.length - this.partialStop();
    const out = this.text.slice(this.emitted, safe);
    this.emitted = Math.max(this.emitted, safe);
    return { text: out, stopped: false };
  }

  flush(): string {
    const out = this.text.slice(this.emitted);
    this.emitted = this.text.length;
    return out;
  }
}

function rowLogits(result: ForwardResult, row: number): Float32Array {
  const { vocab, positions } = result;
  const start = (row * positions + positions - 1) * vocab;
  return result.logits.subarray(start, start + vocab);
}

/**
 * Refuse logits no token can be chosen from (NaN, +Infinity, or every one -Infinity): broken or
 * overflowing weights would otherwise decode as a run of arbitrary tokens. One pass over the row,
 * as cheap as its argmax.
 */
function checkLogits(model: LanguageModel, row: Float32Array, index: number): void {
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < row.length; i++) {
    const v = row[i]!;
    // NaN fails every comparison: `v > max` keeps it out of max, `!(v < Infinity)` catches it.
    if (!(v < Number.POSITIVE_INFINITY)) {
      throw nonFinite(
        model,
        `gives ${Number.isNaN(v) ? "NaN" : "+Infinity"} logits for generated token ${index + 1}`,
      );
    }
    if (v > max) max = v;
  }
  if (max === Number.NEGATIVE_INFINITY) {
    throw nonFinite(model, `gives only -Infinity logits for generated token ${index + 1}`);
  }
}

function nonFinite(model: LanguageModel, what: string): IteraError {
  return new IteraError(
    `the model ${model.dir} ${what}: its weights or arithmetic are broken (NaN/Inf initializers, an overflow in a quantized layer)`,
    {
      where: model.onnxPath,
      fix: "re-export or re-quantize the model; `itera eval` on it measures whether its predictions are finite",
    },
  );
}

/**
 * A fused chunk gives no logits: its carried state must stay finite instead (float32 states are
 * checked; of a KV cache only the positions the chunk added, from `from` on).
 */
function checkState(
  model: LanguageModel,
  tensors: Readonly<Record<string, { data: unknown; dims: readonly number[] }>>,
  index: number,
  from: number,
) {
  for (const slot of model.io.states) {
    const t = tensors[slot.input]!;
    if (!(t.data instanceof Float32Array)) continue;
    const axis = slot.pastAxis ?? 0;
    const outer = t.dims.slice(0, axis).reduce((a, b) => a * b, 1);
    const length = t.dims[axis]!;
    const inner = t.dims.slice(axis + 1).reduce((a, b) => a * b, 1);
    const start = slot.pastAxis === null ? 0 : from;
    for (let o = 0; o < outer; o++) {
      const end = (o * length + length) * inner;
      for (let i = (o * length + start) * inner; i < end; i++) {
        if (!Number.isFinite(t.data[i]!))
          throw nonFinite(model, `carries a non-finite state after generated token ${index}`);
      }
    }
  }
}

export async function generate(
  model: LanguageModel,
  inputs: readonly GenerateInput[],
  options: GenerateOptions = {},
  onToken?: (event: TokenEvent) => void,
): Promise<Generation[]> {
  const t0 = performance.now();
  const search = model.config.search ?? {};
  const prompts = inputs.map((p) =>
    typeof p === "string" ? model.tokenizer.encode(p, options.addSpecialTokens ?? true) : [...p],
  );
  const longest = Math.max(...prompts.map((p) => p.length));
  prompts.forEach((p, r) => {
    if (p.length === 0) {
      throw new IteraError(`prompt ${r + 1} is empty`, { fix: "give a prompt of at least one token" });
    }
    if (model.limitedContext && p.length >= model.contextLength) {
      throw new IteraError(
        `prompt ${r + 1} has ${p.length} tokens; the model's context is ${model.contextLength}, leaving no room to generate`,
        { where: model.dir, fix: `shorten the prompt below ${model.contextLength} tokens` },
      );
    }
    const bad = p.find((id) => !Number.isInteger(id) || id < 0 || id >= model.vocabSize);
    if (bad !== undefined) {
      throw new IteraError(
        `prompt ${r + 1} has token id ${bad}, outside the vocabulary of ${model.vocabSize}`,
        {
          where: model.dir,
          fix: "use token ids from the model's tokenizer",
        },
      );
    }
  });
  const maxTokens = options.maxTokens ?? (search.max_length ? Math.max(1, search.max_length - longest) : 256);
  const sampling: SamplingOptions = {
    temperature: options.temperature ?? (search.do_sample ? (search.temperature ?? 1) : 0),
    topK: options.topK ?? search.top_k ?? 0,
    topP: options.topP ?? search.top_p ?? 1,
    repetitionPenalty: options.repetitionPenalty ?? search.repetition_penalty ?? 1,
  };
  const baseSeed = options.seed ?? Math.floor(Math.random() * 2 ** 31);
  const samplers = prompts.map((_, r) => new Sampler({ ...sampling, seed: baseSeed + r }));
  const rows = prompts.map(() => new RowStop(model.tokenizer.stream(), options.stop ?? []));

  // Prefill: one call for equal lengths, else row by row and stack.
  let result: ForwardResult;
  let lastLogits: Float32Array[];
  if (prompts.every((p) => p.length === prompts[0]!.length)) {
    result = await model.forward(prompts, model.newState(prompts.length));
    lastLogits = prompts.map((_, r) => rowLogits(result, r));
  } else {
    const singles: ForwardResult[] = [];
    for (const p of prompts) singles.push(await model.forward([p], model.newState(1)));
    const state: State = model.stackStates(singles.map((s) => s.state));
    lastLogits = singles.map((s) => rowLogits(s, 0));
    result = { ...singles[0]!, state };
  }
  const prefillMs = performance.now() - t0;

  const generated: number[][] = prompts.map(() => []);
  const stopReasons: (StopReason | undefined)[] = prompts.map(() => undefined);
  const contexts = prompts.map((p) => [...p]);
  const tokenMs: number[] = [];
  let ttftMs = 0;
  let state = result.state;
  const loopSampling = {
    temperature: sampling.temperature!,
    topK: sampling.topK!,
    topP: sampling.topP!,
    repetitionPenalty: sampling.repetitionPenalty!,
  };
  const features = loopFeatures(loopSampling);
  // a top-p within rounding of 1 has no first crossing the loop could find (fused-decode.ts)
  const fusable = options.fusedDecode !== false && !(features.topP && loopSampling.topP > FUSED_TOP_P_MAX);
  // The split cache from the context where it pays (kv-split.ts); a generation that reaches it
  // switches loops between calls (both take and return the same whole-cache state).
  const splitFrom =
    options.splitKv === false ? Number.POSITIVE_INFINITY : (options.splitKvFrom ?? FUSED_SPLIT_KV_FROM);
  const splitAt = (length: number) => model.io.hasKvCache && length >= splitFrom;
  let fusedOrWhy = fusable ? await model.fusedDecoder(features, splitAt(longest)) : null;
  // a split loop ONNX Runtime cannot run: the whole-cache loop may still
  if (fusable && !isDecoder(fusedOrWhy) && splitAt(longest))
    fusedOrWhy = await model.fusedDecoder(features, false);
  let fused = isDecoder(fusedOrWhy) ? fusedOrWhy : null;
  let splitTried = splitAt(longest);
  const eos = options.ignoreEos ? [] : [...model.eosIds];
  // Fused decoding: the tokens the loop chose (per row), taken one per row per round.
  let chunk: number[][] = [];
  let taken = 0;
  let chunkSize = 16;
  for (;;) {
    const fromChunk = taken < (chunk[0]?.length ?? 0);
    for (let r = 0; r < prompts.length; r++) {
      if (stopReasons[r]) continue;
      if (!fromChunk) checkLogits(model, lastLogits[r]!, generated[r]!.length);
      const id = fromChunk ? chunk[r]![taken]! : samplers[r]!.next(lastLogits[r]!, contexts[r]!);
      generated[r]!.push(id);
      contexts[r]!.push(id);
      if (ttftMs === 0) ttftMs = performance.now() - t0;
      const index = generated[r]!.length - 1;
      if (model.eosIds.has(id) && !options.ignoreEos) {
        stopReasons[r] = "eos";
        const rest = rows[r]!.flush();
        if (rest) onToken?.({ row: r, index, id, text: rest });
        continue;
      }
      const { text, stopped } = rows[r]!.push(id);
      if (stopped) stopReasons[r] = "stop";
      else if (generated[r]!.length >= maxTokens) stopReasons[r] = "max_tokens";
      const tail = stopReasons[r] === "max_tokens" ? rows[r]!.flush() : "";
      onToken?.({ row: r, index, id, text: text + tail });
    }
    if (stopReasons.every((s) => s)) break;
    if (fromChunk && ++taken < chunk[0]!.length) continue;
    // Before the next call (a chunk's state is already past its tokens): room for one more position?
    if (model.limitedContext && state.length + 1 > model.contextLength) {
      stopReasons.forEach((s, r) => {
        if (!s) {
          stopReasons[r] = "context";
          const rest = rows[r]!.flush();
          if (rest) onToken?.({ row: r, index: generated[r]!.length - 1, id: -1, text: rest });
        }
      });
      break;
    }
    // Finished rows keep feeding their last token; their outputs are ignored.
    const step = performance.now();
    if (fused && !splitTried && splitAt(state.length)) {
      splitTried = true;
      const split = await model.fusedDecoder(features, true);
      if (isDecoder(split)) fused = split;
    }
    if (fused) {
      let steps = maxTokens - Math.min(...generated.filter((_, r) => !stopReasons[r]).map((g) => g.length));
      steps = Math.min(steps, chunkSize);
      if (model.limitedContext) steps = Math.min(steps, model.contextLength - state.length);
      // Each active row's generator draws what stepping would draw for these steps, in order; a row
      // that ends inside the chunk never samples again, so what it drew past its end is unused.
      let uniforms: Float64Array | undefined;
      if (features.sample) {
        uniforms = new Float64Array(steps * prompts.length);
        for (let r = 0; r < prompts.length; r++) {
          if (stopReasons[r]) continue;
          for (let i = 0; i < steps; i++) uniforms[i * prompts.length + r] = samplers[r]!.uniform();
        }
      }
      const decoded = await fused.run({
        ids: generated.map((g) => g[g.length - 1]!),
        state: state.tensors,
        length: state.length,
        padding: state.padding,
        steps,
        eos,
        ended: stopReasons.map((s) => s !== undefined),
        sampling: { ...loopSampling, uniforms, contexts: features.penalty ? contexts : undefined },
        recycle: true, // the state below replaces this one: its split-cache memory serves the next call
      });
      checkState(model, decoded.state, generated[0]!.length, state.length);
      const ran = decoded.tokens[0]!.length;
      const perToken = (performance.now() - step) / ran;
      for (let i = 0; i < ran; i++) tokenMs.push(perToken);
      const least = model.io.hasKvCache
        ? Math.max(FUSED_MIN_KV_CHUNK, Math.ceil(state.length / FUSED_KV_POSITIONS_PER_STEP))
        : 1;
      chunkSize = Math.min(FUSED_MAX_CHUNK, Math.max(least, Math.round(FUSED_CHUNK_MS / perToken)));
      // The state has consumed every chosen token but the last, as after stepping.
      state = { ...state, length: state.length + ran, tensors: decoded.state };
      chunk = decoded.tokens;
      taken = 0;
      continue;
    }
    result = await model.forward(
      generated.map((g) => [g[g.length - 1]!]),
      state,
    );
    tokenMs.push(performance.now() - step);
    state = result.state;
    lastLogits = prompts.map((_, r) => rowLogits(result, r));
  }
  fused?.recycle(state.tensors); // dropped here: its split-cache memory serves the next generation
  const totalMs = performance.now() - t0;
  return prompts.map((promptIds, r) => ({
    promptIds,
    ids: generated[r]!,
    text: rows[r]!.text,
    stopReason: stopReasons[r]!,
    seed: baseSeed + r,
    decode: fused ? "fused" : "step",
    timings: { promptTokens: promptIds.length, prefillMs, ttftMs, tokenMs, totalMs },
  }));
}
