import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { IteraError } from "../errors.js";

/** tokenizer.json (Hugging Face format) through @huggingface/tokenizers, with the few calls the runtime needs. */
export class TextTokenizer {
  /** One more than the largest token id, added tokens included. */
  readonly vocabSize: number;

  constructor(
    readonly tokenizer: Tokenizer,
    readonly path: string,
  ) {
    let max = -1;
    for (const id of tokenizer.get_vocab(true).values()) if (id > max) max = id;
    this.vocabSize = max + 1;
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
    return new TextTokenizer(new Tokenizer(json as object, config as object), path);
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
