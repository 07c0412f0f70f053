import { performance } from "node:perf_hooks";
import type { GenerateOptions, LanguageModel, StopReason } from "../runtime/index.js";
import { type ApiError, badRequest, unavailable } from "./errors.js";
import type { ServeMetrics } from "./metrics.js";
import { abortError, QueueRejected, type TurnQueue } from "./queue.js";

/**
 * The one model behind the API: loading state, prompt checks, a turn in the queue, generation that
 * stops when the request's signal aborts (the client left), and the figures every endpoint reports
 * and the metrics record.
 */
/** A prompt (text or token ids) with the runtime's generation options. */
export interface GenerationRequest extends GenerateOptions {
  prompt: string | readonly number[];
}

export interface TokenDelta {
  index: number;
  id: number;
  text: string;
}

export interface GenerationResult {
  text: string;
  ids: number[];
  promptTokens: number;
  stopReason: StopReason;
  seed: number;
  timings: {
    queue_ms: number;
    prefill_ms: number;
    /** Prompt tokens per second of prefill. */
    prefill_tokens_per_s: number | null;
    /** From the start of the turn to the first token (queue wait excluded). */
    ttft_ms: number;
    decode_ms: number;
    /** Tokens after the first per second of decoding; null with fewer than two tokens. */
    tokens_per_s: number | null;
    total_ms: number;
  };
}

export interface RunHooks {
  /** The turn has begun (a stream sends its headers now, so queue errors can still be plain JSON). */
  onStart?: () => void;
  onToken?: (delta: TokenDelta) => void;
}

type ModelState =
  | { status: "loading"; since: number }
  | { status: "ready"; model: LanguageModel; loadMs: number }
  | { status: "failed"; error: Error };

const round = (x: number) => Math.round(x * 100) / 100;

/** Room for characters a tokenizer may drop (whitespace, accents) in the prompt's character bound. */
const MERGE_ROOM = 4;

export class Engine {
  private state: ModelState = { status: "loading", since: performance.now() };

  constructor(
    readonly metrics: ServeMetrics,
    readonly queue: TurnQueue,
    /** The server's bound on new tokens, also on the default when a request gives none. */
    readonly maxTokensLimit: number,
  ) {}

  get status(): ModelState["status"] {
    return this.state.status;
  }

  get loadMs(): number | null {
    return this.state.status === "ready" ? this.state.loadMs : null;
  }

  /** The model, or null while loading / after a failed load. */
  get loaded(): LanguageModel | null {
    return this.state.status === "ready" ? this.state.model : null;
  }

  setModel(model: LanguageModel): void {
    const since = this.state.status === "loading" ? this.state.since : performance.now();
    this.state = { status: "ready", model, loadMs: performance.now() - since };
  }

  setFailed(error: Error): void {
    this.state = { status: "failed", error };
  }

  /** The model for a request: 503 while it loads. */
  model(): LanguageModel {
    if (this.state.status === "ready") return this.state.model;
    if (this.state.status === "loading") {
      throw unavailable(
        "the model is still loading",
        2,
        "retry after the time in Retry-After; GET /healthz says when it is ready",
      );
    }
    throw unavailable(`the model failed to load: ${this.state.error.message}`, 60, "see the server's log");
  }

  /** The most prompt tokens the model takes (a model bounded by its context needs a position to generate). */
  private tokenLimit(model: LanguageModel): number {
    return model.limitedContext ? model.contextLength - 1 : model.contextLength;
  }

  /**
   * The most characters a text prompt may have: one token stands for at most `charsPerToken`
   * characters, so a longer text cannot fit the context whatever it encodes to. A tokenizer that can
   * drop characters (whitespace splitting, stripping) gets MERGE_ROOM times the room, a server limit.
   */
  maxPromptChars(model: LanguageModel): number {
    const t = model.tokenizer;
    return this.tokenLimit(model) * t.charsPerToken * (t.exactCharBound ? 1 : MERGE_ROOM);
  }

  private tooLong(model: LanguageModel, tokens: number): ApiError {
    const limit = this.tokenLimit(model);
    return badRequest(
      `the prompt has ${tokens} tokens; the model's context is ${model.contextLength}${
        model.limitedContext ? ", leaving no room to generate" : ""
      }`,
      "body.prompt",
      `shorten the prompt to at most ${limit} tokens`,
    );
  }

  /**
   * The checks that cost nothing, made before the request queues: a text prompt's length in
   * characters against maxPromptChars (never tokenized when longer), token ids against the context
   * and the vocabulary.
   */
  checkPrompt(model: LanguageModel, prompt: string | readonly number[]): void {
    if (typeof prompt === "string") {
      const max = this.maxPromptChars(model);
      if (prompt.length > max) {
        throw badRequest(
          `the prompt has ${prompt.length} characters, more than the ${max} that can fit the model's context of ${model.contextLength} tokens`,
          "body.prompt",
          `shorten the prompt to at most ${max} characters (at most ${this.tokenLimit(model)} tokens)`,
        );
      }
      return;
    }
    this.checkIds(model, prompt);
  }

  private checkIds(model: LanguageModel, ids: readonly number[]): void {
    if (ids.length === 0)
      throw badRequest("the prompt encodes to no tokens", "body.prompt", "give a non-empty prompt");
    if (ids.length > this.tokenLimit(model)) throw this.tooLong(model, ids.length);
    const bad = ids.find((id) => id >= model.vocabSize);
    if (bad !== undefined) {
      throw badRequest(
        `prompt token id ${bad} is outside the model's vocabulary of ${model.vocabSize}`,
        "body.prompt",
        `use token ids below ${model.vocabSize} (from the model's tokenizer)`,
      );
    }
  }

  /**
   * Token ids of a prompt that passed checkPrompt, refused with 400 when they do not fit. A text
   * prompt is encoded in the request's turn, after a pause that lets the event loop answer what
   * arrived meanwhile (health checks).
   */
  async promptIds(
    model: LanguageModel,
    prompt: string | readonly number[],
    signal: AbortSignal,
  ): Promise<number[]> {
    if (typeof prompt !== "string") return [...prompt];
    await new Promise((resolve) => setImmediate(resolve));
    if (signal.aborted) throw abortError(signal);
    const ids = model.tokenizer.encode(prompt, true);
    this.checkIds(model, ids);
    return ids;
  }

  /**
   * Generate for one request in its turn. Throws ApiError (400/503) before the turn starts, Cancelled (or the abort reason)
   * when `signal` aborts (the generation stops at its next token).
   */
  async run(
    endpoint: string,
    request: GenerationRequest,
    signal: AbortSignal,
    hooks: RunHooks = {},
  ): Promise<GenerationResult> {
    const model = this.model();
    const { prompt, ...options } = request;
    this.checkPrompt(model, prompt);
    let ids: number[] = [];
    let generated = 0;
    let turnStart = 0;
    let firstTokenMs: number | undefined;
    try {
      // Encoding waits for the turn: requests beyond --max-queue are refused before any costly work.
      const { value: gen, waitedMs } = await this.queue.run(async () => {
        ids = await this.promptIds(model, prompt, signal);
        // The runtime's default (search.max_length minus the prompt, else 256), within the server's bound.
        const maxLength = model.config.search?.max_length;
        options.maxTokens ??= Math.min(
          this.maxTokensLimit,
          maxLength ? Math.max(1, maxLength - ids.length) : 256,
        );
        turnStart = performance.now();
        hooks.onStart?.();
        return model.generate(ids, options, (e) => {
          // Throwing here ends the runtime's decode loop: the way to cancel between tokens.
          if (signal.aborted) throw abortError(signal);
          generated = e.index + 1;
          firstTokenMs ??= performance.now() - turnStart;
          hooks.onToken?.({ index: e.index, id: e.id, text: e.text });
        });
      }, signal);
      this.metrics.observeQueueWait(waitedMs);
      const decodeMs = gen.timings.tokenMs.reduce((a, b) => a + b, 0);
      const steps = gen.timings.tokenMs.length;
      const result: GenerationResult = {
        text: gen.text,
        ids: gen.ids,
        promptTokens: ids.length,
        stopReason: gen.stopReason,
        seed: gen.seed,
        timings: {
          queue_ms: round(waitedMs),
          prefill_ms: round(gen.timings.prefillMs),
          prefill_tokens_per_s:
            gen.timings.prefillMs > 0 ? round((ids.length * 1000) / gen.timings.prefillMs) : null,
          ttft_ms: round(gen.timings.ttftMs),
          decode_ms: round(decodeMs),
          tokens_per_s: steps > 0 && decodeMs > 0 ? round((steps * 1000) / decodeMs) : null,
          total_ms: round(gen.timings.totalMs),
        },
      };
      this.metrics.observeGeneration({
        endpoint,
        outcome: gen.stopReason,
        promptTokens: ids.length,
        generatedTokens: gen.ids.length,
        ttftMs: gen.timings.ttftMs,
        totalMs: gen.timings.totalMs,
        ...(result.timings.tokens_per_s !== null && { tokensPerS: result.timings.tokens_per_s }),
      });
      return result;
    } catch (e) {
      if (e instanceof QueueRejected) {
        this.metrics.countRejected(e.reason);
        throw unavailable(
          e.reason === "full"
            ? `${this.queue.limits.maxWaiting} requests are already waiting for the model`
            : `the model stayed busy for longer than the queue's limit of ${this.queue.limits.maxWaitMs / 1000} s`,
          e.retryAfterS,
          "retry after the time in Retry-After",
        );
      }
      if (turnStart > 0) {
        this.metrics.observeGeneration({
          endpoint,
          outcome: signal.aborted ? "cancelled" : "error",
          promptTokens: ids.length,
          generatedTokens: generated,
          ...(firstTokenMs !== undefined && { ttftMs: firstTokenMs }),
          totalMs: performance.now() - turnStart,
        });
      }
      throw e;
    }
  }
}
