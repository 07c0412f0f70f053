import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { IteraError } from "../errors.js";

/** tokenizer.json (Hugging Face format) through @huggingface/tokenizers, with the few calls the runtime needs. */
export class TextTokenizer {
  /** One more than the largest token id, added tokens included. */
  readonly vocabSize: number;

  /**
   * The most UTF-16 characters of text one token can stand for: the longest vocabulary entry (at
   * least 2: an unknown astral character is one token). A text of n characters is at least
   * n / charsPerToken tokens when `exactCharBound`, so longer texts can be refused without encoding.
   */
  readonly charsPerToken: number;
  /**
   * False when the tokenizer can drop characters or make one token of an unbounded run (whitespace
   * splitting, strip/replace/composing normalizers, fused unknowns, WordPiece's whole-word unknown),
   * or when its configuration was not given: then charsPerToken bounds nothing.
   */
  readonly exactCharBound: boolean;

  constructor(
    readonly tokenizer: Tokenizer,
    readonly path: string,
    /** tokenizer.json and tokenizer_config.json as parsed, for the character bound. */
    json?: { tokenizer: unknown; config: unknown },
  ) {
    let max = -1;
    let chars = 2;
    for (const [text, id] of tokenizer.get_vocab(true)) {
      if (id > max) max = id;
      if (text.length > chars) chars = text.length;
    }
    this.vocabSize = max + 1;
    this.charsPerToken = chars;
    this.exactCharBound = json !== undefined && !mayMergeCharacters(json.tokenizer, json.config);
  }

  encode(text: string, addSpecialTokens = true): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  /** Exact text of the ids (no clean-up of spaces, so that concatenated pieces equal the whole). */
  decode(ids: readonly number[], skipSpecialTokens = true): string {
    if (ids.length === 0) return "";
    return this.tokenizer.decode([...ids], {
      skip_special_tokens: skipSpecialTokens,
      clean_up_tokenization_spaces: false,
    });
  }

  /** A decoder that turns a stream of ids into text deltas (see TextStream). */
  stream(): TextStream {
    return new TextStream(this);
  }
}

/**
 * Incremental detokenisation: decode a few tokens of left context together with the new ones and
 * emit only the new text, so that byte-level pieces and word-boundary decoders (Metaspace, WordPiece)
 * come out right, as text-generation-inference does; text ending in an incomplete UTF-8 sequence
 * (U+FFFD) is held back until the next token completes it.
 */
export class TextStream {
  private ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;

  constructor(private readonly tokenizer: TextTokenizer) {}

  /** Add one token; returns the text it completes ("" if none yet). */
  push(id: number): string {
    this.ids.push(id);
    const prefix = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = this.tokenizer.decode(this.ids.slice(this.prefixOffset));
    if (full.length <= prefix.length || full.endsWith("\uFFFD")) return "";
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return full.slice(prefix.length);
  }
}

/** Normalizers and pre-tokenizers that can remove characters or shorten the text. */
const MERGING_TYPES = new Set([
  "Strip",
  "StripAccents",
  "Replace",
  "BertNormalizer",
  "NFC",
  "NFKC",
  "Precompiled",
  "Whitespace",
  "WhitespaceSplit",
  "BertPreTokenizer",
  "CharDelimiterSplit",
]);

/** Whether a tokenizer.json (with its tokenizer_config.json) can turn n characters into fewer than n / longest-token tokens. */
function mayMergeCharacters(tokenizer: unknown, config: unknown): boolean {
  const t = (tokenizer ?? {}) as Record<string, unknown>;
  const c = (config ?? {}) as Record<string, unknown>;
  if (c.remove_space === true || c.do_lowercase_and_remove_accent === true) return true;
  const model = (t.model ?? {}) as Record<string, unknown>;
  // WordPiece and Unigram make one unknown of a whole word or run; BPE drops unknown pieces when it
  // has no unknown token, unless byte-level (every byte is in its vocabulary).
  if (model.type !== "BPE" || model.fuse_unk === true) return true;
  if (model.unk_token == null && !JSON.stringify(t.pre_tokenizer ?? null).includes('"ByteLevel"'))
    return true;
  const added = Array.isArray(t.added_tokens) ? (t.added_tokens as Record<string, unknown>[]) : [];
  if (added.some((a) => a.lstrip === true || a.rstrip === true)) return true;
  const merging = (node: unknown): boolean => {
    if (Array.isArray(node)) return node.some(merging);
    if (node === null || typeof node !== "object") return false;
    const o = node as Record<string, unknown>;
    if (typeof o.type === "string" && MERGING_TYPES.has(o.type)) return true;
    // Split with invert keeps only the pattern's matches; "Removed" drops them.
    if (o.invert === true || String(o.behavior).toLowerCase() === "removed") return true;
    return Object.values(o).some(merging);
  };
  return merging(t.normalizer) || merging(t.pre_tokenizer);
}

/** Load `<dir>/tokenizer.json` (and tokenizer_config.json when present). */
export async function loadTokenizer(dir: string): Promise<TextTokenizer> {
  const path = join(dir, "tokenizer.json");
  let json: unknown;
  try {
    json = JSON.parse(await readFile(path, "utf8"));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new IteraError(
      code === "ENOENT"
        ? "the model folder has no tokenizer.json"
        : `cannot read tokenizer.json: ${(e as Error).message}`,
      { where: path, fix: "add the model's tokenizer.json (Hugging Face tokenizers format)", cause: e },
    );
  }
  let config: unknown = {};
  try {
    config = JSON.parse(await readFile(join(dir, "tokenizer_config.json"), "utf8"));
  } catch {
    // tokenizer_config.json is optional: tokenizer.json alone fully defines a tokenizer.
  }
  try {
    return new TextTokenizer(new Tokenizer(json as object, config as object), path, {
      tokenizer: json,
      config,
    });
  } catch (e) {
    throw new IteraError(
      `tokenizer.json is not a tokenizer @huggingface/tokenizers can load: ${(e as Error).message}`,
      {
        where: path,
        fix: "export the tokenizer with Hugging Face tokenizers (tokenizer.save('tokenizer.json'))",
        cause: e,
      },
    );
  }
}
