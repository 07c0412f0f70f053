/**
 * The runtime: run any ONNX language-model folder (DESIGN.md §3) with ONNX Runtime — recurrent
 * state or KV caches, sampling, streaming, batches — and evaluate it on text.
 */
export { type EvalOptions, type EvalResult, evaluate, evaluateIds, type IdsEvalResult } from "./evaluate.js";
export type { GenerateInput, GenerateOptions, Generation, StopReason, TokenEvent } from "./generate.js";
export type { ModelIo, StateSlot } from "./io.js";
export {
  type ForwardResult,
  type GraphOptimizationLevel,
  LanguageModel,
  type LoadOptions,
  loadModel,
  type State,
} from "./model.js";
export { Sampler, type SamplingOptions } from "./sampling.js";
export { idText, TextStream, TextTokenizer } from "./tokenizer.js";
