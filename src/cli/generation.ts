import { IteraError } from "../errors.js";
import type { Generation, TextTokenizer } from "../runtime/index.js";

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

/**
 * Up to this many tokens a run decodes one ONNX Runtime call per token: building the fused decode
 * loop (src/runtime/fused-decode.ts, a second session) costs about 5 MB and as long as ~100 steps of
 * itera-lite-micro (docs/packaging.md, "Memory and start-up"), which a short run never earns back.
 */
export const STEP_DECODE_MAX_TOKENS = 128;

/** Whether a run of at most `maxTokens` (undefined: the model's limit) decodes fused; the tokens are the same either way. */
export function fusedForRun(maxTokens: number | undefined): boolean {
  return maxTokens === undefined || maxTokens > STEP_DECODE_MAX_TOKENS;
}

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

/** The help text of --ids on both commands. */
export const IDS_HELP =
  "the prompt as token ids (1,2,3 or space-separated) instead of text: for a model without tokenizer.json";

/** Token ids given as text: comma- and/or whitespace-separated non-negative integers. */
export function parseIds(text: string, where: string): number[] {
  const parts = text.split(/[\s,]+/).filter((p) => p !== "");
  const ids = parts.map(Number);
  const bad = parts.find((p, i) => !/^\d+$/.test(p) || !Number.isSafeInteger(ids[i]));
  if (bad !== undefined || ids.length === 0) {
    throw new IteraError(
      bad === undefined ? "no token ids given" : `'${bad}' is not a token id (a whole number from 0)`,
      { where, fix: "give token ids as whole numbers separated by commas or spaces, e.g. 1,2,3" },
    );
  }
  return ids;
}

/**
 * What to say on stderr about the ids a generation's text could not spell out: every one when the
 * folder has no tokenizer.json, else those beyond a tokenizer smaller than the model's logits; both
 * are written `<id:N>` in the text, never as "".
 */
export function undecodableNote(
  tokenizer: TextTokenizer,
  ids: readonly number[],
  modelVocab: number,
): string | null {
  if (!tokenizer.present) return "note: the model folder has no tokenizer.json: tokens are written as <id:N>";
  const beyond = [...new Set(tokenizer.undecodable(ids))];
  if (beyond.length === 0) return null;
  const listed = beyond.slice(0, 8).join(", ") + (beyond.length > 8 ? ", ..." : "");
  return `warning: token id(s) ${listed} are beyond the tokenizer's ${tokenizer.vocabSize} entries (the model has ${modelVocab}): written as <id:N>`;
}
