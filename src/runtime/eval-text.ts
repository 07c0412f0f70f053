import { readFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { IteraError } from "../errors.js";
import type { EvaluationRecord } from "../model/card.js";
import type { EvalOptions } from "./evaluate.js";

/**
 * The text an evaluation runs on: the datasets folder, a split described in words as model cards
 * do ("last 10% of characters"), and the windowing method a card names.
 */

/** ITERA_DATASETS, else the repository's own `data/` (docs/model-folder.md; tools/train/data.py reads the same). */
export function datasetsDir(): string {
  if (process.env.ITERA_DATASETS) return resolve(process.env.ITERA_DATASETS);
  const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
  return resolve(repoRoot, "data");
}

/**
 * Apply a split described as "first|last N% of characters" (or "all"/"whole"): the boundary is
 * floor(length × fraction) in characters (code points), as Python's int(len(text) * 0.9) does.
 */
export function applySplit(text: string, split: string): string {
  const s = split.trim().toLowerCase();
  if (s === "" || s === "all" || s === "whole" || s.startsWith("whole text") || s.startsWith("all of"))
    return text;
  const m = s.match(/^(first|last)\s+(\d+(?:\.\d+)?)\s*%/);
  if (!m) {
    throw new IteraError(`cannot read the split '${split}'`, {
      fix: "describe it as 'first N% of characters', 'last N% of characters' or 'all'",
    });
  }
  const chars = Array.from(text);
  const percent = Number(m[2]);
  if (m[1] === "last") {
    const boundary = Math.floor(chars.length * ((100 - percent) / 100));
    return chars.slice(boundary).join("");
  }
  return chars.slice(0, Math.floor(chars.length * (percent / 100))).join("");
}

/** Read the evaluation method out of a card's words: "state carried ..." or "sliding windows of N with stride M". */
export function methodFromCard(record: EvaluationRecord): Pick<EvalOptions, "method" | "window" | "stride"> {
  const text = record.method.toLowerCase();
  const number = (re: RegExp) => {
    const m = text.match(re);
    return m ? Number(m[1]) : undefined;
  };
  if (/sliding|stride/.test(text)) {
    return {
      method: "sliding",
      window: number(/windows?\s+of\s+(\d+)/),
      stride: number(/stride\s+(?:of\s+)?(\d+)/),
    };
  }
  if (/carr(y|ied)|recurren|whole text/.test(text)) {
    return { method: "carry", window: number(/windows?\s+of\s+(\d+)/) };
  }
  throw new IteraError(`cannot tell the evaluation method from '${record.method}'`, {
    where: "itera.json evaluation[].method",
    fix: "say 'state carried across the whole text' or 'sliding windows of N with stride M'",
  });
}

/** The text a card's evaluation record was measured on. */
export async function cardText(record: EvaluationRecord, dir = datasetsDir()): Promise<string> {
  const path = join(dir, record.file);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    throw new IteraError(`cannot read the evaluation dataset ${record.file}`, {
      where: path,
      fix: "set ITERA_DATASETS to the folder that holds the datasets (default: the repository's data/)",
      cause: e,
    });
  }
  return applySplit(text, record.split);
}
