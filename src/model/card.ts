import { join } from "node:path";
import { z } from "zod";
import { readModelJson } from "./json-file.js";

/** itera.json, the model card (docs/model-folder.md). Optional for models made elsewhere. */

export const evaluationSchema = z.looseObject({
  dataset: z.string().min(1),
  /** Relative to the datasets folder (the repository's `data/` by default, or ITERA_DATASETS). */
  file: z.string().min(1),
  split: z.string().min(1),
  /** How the text was windowed, in words, so that `itera eval` can reproduce the figure. */
  method: z.string().min(1),
  tokens: z.number().int().positive(),
  nats_per_token: z.number().nonnegative(),
  bits_per_char: z.number().nonnegative(),
  perplexity: z.number().positive(),
});

export const modelCardSchema = z.looseObject({
  schema: z.literal("itera.model/v1"),
  id: z.string().min(1),
  name: z.string().min(1),
  version: z.string().min(1),
  architecture: z.looseObject({ family: z.string().min(1) }),
  parameters: z.number().int().positive(),
  flops_per_token: z.number().nonnegative(),
  quantization: z.looseObject({ mode: z.string().min(1) }),
  tokenizer: z.looseObject({ type: z.string().min(1), vocab_size: z.number().int().positive() }),
  evaluation: z.array(evaluationSchema).default([]),
  training: z.record(z.string(), z.unknown()).optional(),
  export: z.record(z.string(), z.unknown()).optional(),
});

export type ModelCard = z.infer<typeof modelCardSchema>;
export type EvaluationRecord = z.infer<typeof evaluationSchema>;

/** Read `<dir>/itera.json` if present (undefined when absent); an invalid card is an error naming the field. */
export async function loadModelCard(dir: string): Promise<ModelCard | undefined> {
  return readModelJson(join(dir, "itera.json"), modelCardSchema, {
    optional: true,
    fix: "correct the named field (see docs/model-folder.md)",
  });
}
