/**
 * What the benchmark needs from a model, and nothing more: process a prompt of N tokens, and
 * generate tokens one at a time. runtime-engine.ts adapts the runtime (src/runtime) to it.
 */
export interface BenchModel {
  /** Positions the model can take in one sequence (null: no limit, e.g. a purely recurrent model). */
  readonly maxPositions: number | null;
  /** From a fresh state, process `n` prompt tokens and pick the first new token. */
  prefill(n: number): Promise<void>;
  /** Start a fresh sequence for generation. */
  startGeneration(): void;
  /** Generate one more token. */
  decodeOne(): Promise<void>;
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
  load(threads: number): Promise<BenchModel>;
}
