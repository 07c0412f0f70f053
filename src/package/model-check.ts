import { join } from "node:path";
import { IteraError } from "../errors.js";
import { eosTokenIds, type GenaiConfig } from "../model/genai-config.js";
import { loadModel } from "../runtime/index.js";

/**
 * Before `itera build` writes or quantizes anything: the model folder must load in ONNX Runtime with
 * its tokenizer and generate a token, as the agent on the device will. A truncated or foreign
 * model.onnx, a broken tokenizer.json, or a tokenizer whose ids the model's logits cannot cover
 * (a 50,295-entry tokenizer with a 1,000-logit model) is refused here instead of on the device.
 */
export interface ModelCheck {
  prompt_tokens: number;
  /** The greedy next token after the prompt, and its text. */
  token: number;
  text: string;
  /** Entries in the tokenizer's vocabulary and in the model's logits. */
  tokenizer_vocab: number;
  logits: number;
}

const PROMPT = "The ";

/** The prompt of a model without tokenizer.json (token ids only): the first id that is not end-of-text. */
export function firstPromptId(config: GenaiConfig): number {
  const eos = new Set(eosTokenIds(config));
  let id = 0;
  while (eos.has(id)) id++;
  return id;
}

export async function checkModelRuns(dir: string): Promise<ModelCheck> {
  const refuse = (what: string, where: string, fix: string, cause?: unknown) =>
    new IteraError(`the model cannot be packaged: ${what}`, { where, fix, ...(cause ? { cause } : {}) });
  let model: Awaited<ReturnType<typeof loadModel>>;
  try {
    model = await loadModel(dir, { threads: 1 });
  } catch (e) {
    if (e instanceof IteraError) {
      throw refuse(e.message, e.where ?? dir, e.fix ?? "check the model folder (docs/model-folder.md)", e);
    }
    throw refuse(
      `it does not load (${(e as Error).message})`,
      dir,
      "check the model folder (docs/model-folder.md)",
      e,
    );
  }
  try {
    const tokenizerPath = join(dir, "tokenizer.json");
    let ids: number[];
    try {
      // Without tokenizer.json (ids only) the check feeds one id: the first that is not end-of-text.
      ids = model.tokenizer.present ? model.tokenizer.encode(PROMPT) : [firstPromptId(model.config)];
    } catch (e) {
      throw refuse(
        `the tokenizer cannot encode '${PROMPT}' (${(e as Error).message})`,
        tokenizerPath,
        "use the tokenizer.json the model was trained with",
        e,
      );
    }
    if (ids.length === 0) {
      throw refuse(
        `the tokenizer encodes '${PROMPT}' as no tokens`,
        tokenizerPath,
        "use the tokenizer.json the model was trained with",
      );
    }
    let r: Awaited<ReturnType<typeof model.forward>>;
    try {
      r = await model.forward(ids, model.newState());
    } catch (e) {
      if (e instanceof IteraError) throw refuse(e.message, e.where ?? model.onnxPath, e.fix ?? "", e);
      throw refuse(
        `ONNX Runtime cannot run it on a prompt (${(e as Error).message})`,
        model.onnxPath,
        "check that the graph takes input_ids and returns logits (docs/model-folder.md); run it with `itera run`",
        e,
      );
    }
    const tokenizerVocab = model.tokenizer.vocabSize;
    if (tokenizerVocab > r.vocab) {
      throw refuse(
        `the tokenizer has ${tokenizerVocab} entries but the model's logits only ${r.vocab}: they do not belong together`,
        tokenizerPath,
        "use the tokenizer.json the model was trained with",
      );
    }
    // The last position's logits: the greedy next token.
    const last = r.logits.subarray((r.positions - 1) * r.vocab, r.positions * r.vocab);
    let token = -1;
    let best = Number.NEGATIVE_INFINITY;
    for (let i = 0; i < last.length; i++) {
      const v = last[i]!;
      if (!Number.isFinite(v)) {
        throw refuse(
          `its logits are not finite (${v} at id ${i})`,
          model.onnxPath,
          "re-export the model; check its weights for NaN or infinity",
        );
      }
      if (v > best) {
        best = v;
        token = i;
      }
    }
    return {
      prompt_tokens: ids.length,
      token,
      // `<id:N>` for an id the tokenizer cannot decode (or when there is none)
      text: model.tokenizer.decode([token], false),
      tokenizer_vocab: tokenizerVocab,
      logits: r.vocab,
    };
  } finally {
    await model.dispose();
  }
}
