/**
 * What the benchmark needs from a model, and nothing more: process a prompt of N tokens, and
 * generate N tokens as the runtime's generate() does. runtime-engine.ts adapts the runtime
 * (src/runtime) to it.
 */

/** How tg tests decode: as generate() would for the model (auto), or one path forced. */
export const decodeChoices = ["auto", "fused", "step"] as const;
export type DecodeChoice = (typeof decodeChoices)[number];

/** The path generation actually took: many steps per ONNX Runtime call, or one call per token. */
export type DecodePath = "fused" | "step";

/** Seeded sampling for tg tests (null: greedy, what `itera run` does by default). */
export interface BenchSampling {
  temperature: number;
  /** 0: the whole vocabulary. */
  topK: number;
  seed: number;
}

/** `--sample`: the usual chat setting, seeded so that runs draw the same tokens. */
export const BENCH_SAMPLING: BenchSampling = { temperature: 0.8, topK: 40, seed: 1 };

/** What a tg test decodes with. */
export interface DecodeSettings {
  decode: DecodeChoice;
  sampling: BenchSampling | null;
}

export const DEFAULT_DECODE: DecodeSettings = { decode: "auto", sampling: null };

/** One generation of a tg test, timed as generate() times it. */
export interface GenerationRun {
  /** From the call to the first generated token (the one-token prompt's prefill included). */
  ttftMs: number;
  /** Each later token's time; a fused call's time divided by the tokens it produced. */
  tokenMs: number[];
  decode: DecodePath;
}

export interface BenchModel {
  /** Positions the model can take in one sequence (null: no limit, e.g. a purely recurrent model). */
  readonly maxPositions: number | null;
  /** From a fresh state, process `n` prompt tokens and pick the first new token. */
  prefill(n: number): Promise<void>;
  /**
   * From a fresh one-token prompt, generate `n` tokens with the settings the model was loaded with;
   * the signal's reason is thrown before the next token once it aborts.
   */
  generate(n: number, signal?: AbortSignal): Promise<GenerationRun>;
  close(): Promise<void>;
}

export interface BenchEngine {
  /** The model's id (model card) or folder name. */
  readonly model: string;
  /** The weights' precision read from the graph (src/onnx/precision.ts), e.g. "int4", "fp16", "mixed". */
  readonly quant: string;
  /**
   * Whether the model folder has a tokenizer.json. The tests' prompts are synthetic token ids either
   * way (deterministic, inside the vocabulary, never an end-of-text id): false says no text was possible.
   */
  readonly tokenizer?: boolean;
  /** e.g. "onnxruntime 1.30.0". */
  readonly runtime: string;
  /** genai_config.json's context_length: no test may need more positions (unset: not checked). */
  readonly contextLength?: number;
  /**
   * The path tg tests will decode by with these settings, found before anything is measured; an
   * IteraError when `fused` is forced on a model that cannot fuse.
   */
  decodePath(settings: DecodeSettings): Promise<DecodePath>;
  load(threads: number, settings: DecodeSettings): Promise<BenchModel>;
}
