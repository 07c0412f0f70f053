import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { IteraError } from "../errors.js";

/** How an id the tokenizer cannot decode (beyond its vocabulary, or no tokenizer at all) is written. */
export const idText = (id: number): string => `<id:${id}>`;

/**
 * tokenizer.json (Hugging Face format) through @huggingface/tokenizers, with the few calls the runtime
 * needs. A folder without tokenizer.json (most third-party exports) gets one with no vocabulary: it
 * takes token ids only, and writes every id as `<id:N>`.
 */
export class TextTokenizer {
  /** One more than the largest token id, added tokens included (0 without tokenizer.json). */
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
    /** undefined: the folder has no tokenizer.json */
    readonly tokenizer: Tokenizer | undefined,
    readonly path: string,
    /** tokenizer.json and tokenizer_config.json as parsed, for the character bound. */
    json?: { tokenizer: unknown; config: unknown },
  ) {
    let max = -1;
    let chars = 2;
    for (const [text, id] of tokenizer?.get_vocab(true) ?? []) {
      if (id > max) max = id;
      if (text.length > chars) chars = text.length;
    }
    this.vocabSize = max + 1;
    this.charsPerToken = chars;
    this.exactCharBound =
      tokenizer !== undefined && json !== undefined && !mayMergeCharacters(json.tokenizer, json.config);
  }

  /** A folder's stand-in when it has no tokenizer.json: ids only. */
  static missing(path: string): TextTokenizer {
    return new TextTokenizer(undefined, path);
  }

  /** Whether the folder has a tokenizer.json (else only token ids can be given). */
  get present(): boolean {
    return this.tokenizer !== undefined;
  }

  encode(text: string, addSpecialTokens = true): number[] {
    if (!this.tokenizer) {
      throw new IteraError(
        "the model folder has no tokenizer.json, so a text cannot be turned into token ids",
        {
          where: this.path,
          fix: "give token ids instead of text, or add the model's tokenizer.json (Hugging Face tokenizers format)",
        },
      );
    }
    return this.tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  /** The ids this tokenizer cannot decode (beyond its vocabulary): written as `<id:N>`, never as "". */
  undecodable(ids: readonly number[]): number[] {
    return ids.filter((id) => id >= this.vocabSize);
  }

  /**
   * Exact text of the ids (no clean-up of spaces, so that concatenated pieces equal the whole); an id
   * beyond the vocabulary (a tokenizer smaller than the model's logits, or none) is written `<id:N>`.
   */
  decode(ids: readonly number[], skipSpecialTokens = true): string {
    if (ids.length === 0) return "";
    let text = "";
    let run: number[] = [];
    const flush = () => {
      if (run.length === 0 || !this.tokenizer) return;
      text += this.tokenizer.decode(run, {
        skip_special_tokens: skipSpecialTokens,
        clean_up_tokenization_spaces: false,
      });
      run = [];
    };
    for (const id of ids) {
      if (id < this.vocabSize) run.push(id);
      else {
        flush();
        text += idText(id);
      }
    }
    flush();
    return text;
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

/**
 * Load `<dir>/tokenizer.json` (and tokenizer_config.json when present); a folder without one gets
 * TextTokenizer.missing (token ids only): most third-party exports ship none.
 */
export async function loadTokenizer(dir: string): Promise<TextTokenizer> {
  const path = join(dir, "tokenizer.json");
  let json: unknown;
  try {
    json = JSON.parse(await readFile(path, "utf8"));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return TextTokenizer.missing(path);
    throw new IteraError(`cannot read tokenizer.json: ${(e as Error).message}`, {
      where: path,
      fix: "repair or remove the model's tokenizer.json (Hugging Face tokenizers format)",
      cause: e,
    });
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
