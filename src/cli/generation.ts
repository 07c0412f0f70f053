import type { Generation } from "../runtime/index.js";

/**
 * What `itera run` and `itera-agent run` share, so that the same model, prompt and defaults give the
 * same tokens and the same closing line on both (docs/runtime.md, "Decoding by default").
 *
 * Both decode greedily unless --temperature is given: greedy is reproducible (a device's text can be
 * compared with the host's, before and after quantizing) and runs fused, many steps per ONNX Runtime
 * call. The model card's sampling settings (genai_config `search`) still apply to top-k, top-p and
 * the repetition penalty once --temperature > 0 asks for sampling.
 */
export const DEFAULT_TEMPERATURE = 0;

/** The help text of --temperature on both commands. */
export const TEMPERATURE_HELP =
  "sampling temperature (default 0: greedy, reproducible; > 0 samples with the model's top-k/top-p)";

/** The help text of --max-tokens on both commands. */
export const MAX_TOKENS_HELP = "new tokens at most (default: the model's search.max_length minus the prompt)";

/**
 * The line printed on stderr after streamed text:
 * `[24 tokens, stop: max_tokens, ttft 3.1 ms, 812.0 tokens/s (fused decode), greedy]`.
 */
export function summaryLine(g: Generation, o: { temperature: number; threads?: number }): string {
  const decodeMs = g.timings.tokenMs.reduce((a, b) => a + b, 0);
  const rate = g.timings.tokenMs.length ? ((1000 * g.timings.tokenMs.length) / decodeMs).toFixed(1) : "-";
  const how = o.temperature > 0 ? `sampled at temperature ${o.temperature}, seed ${g.seed}` : "greedy";
  return (
    `[${g.ids.length} tokens, stop: ${g.stopReason}, ttft ${g.timings.ttftMs.toFixed(1)} ms, ` +
    `${rate} tokens/s (${g.decode} decode), ${how}` +
    `${o.threads === undefined ? "" : `, ${o.threads} thread${o.threads === 1 ? "" : "s"}`}]`
  );
}
