import { join } from "node:path";
import { z } from "zod";
import { readModelJson } from "./json-file.js";

/**
 * genai_config.json in onnxruntime-genai's format (DESIGN.md §3, docs/model-folder.md).
 * Known fields are typed; unknown ones are kept (`looseObject`) so that configs written by newer
 * model builders still load.
 */

const tokenId = z.number().int().nonnegative();

/** Input and output names; `*_names` entries are templates with `%d` for the layer index. */
const nameTemplates = z.looseObject({
  input_ids: z.string().optional(),
  attention_mask: z.string().optional(),
  position_ids: z.string().optional(),
  logits: z.string().optional(),
  past_key_names: z.string().optional(),
  past_value_names: z.string().optional(),
  present_key_names: z.string().optional(),
  present_value_names: z.string().optional(),
  past_names: z.string().optional(),
  present_names: z.string().optional(),
  past_conv_names: z.string().optional(),
  present_conv_names: z.string().optional(),
});

const graphOptimizationLevel = z.enum([
  "ORT_DISABLE_ALL",
  "ORT_ENABLE_BASIC",
  "ORT_ENABLE_EXTENDED",
  "ORT_ENABLE_ALL",
]);

export const sessionOptionsSchema = z.looseObject({
  log_id: z.string().optional(),
  intra_op_num_threads: z.number().int().nonnegative().optional(),
  inter_op_num_threads: z.number().int().nonnegative().optional(),
  graph_optimization_level: graphOptimizationLevel.optional(),
  enable_cpu_mem_arena: z.boolean().optional(),
  enable_mem_pattern: z.boolean().optional(),
  provider_options: z.array(z.record(z.string(), z.unknown())).optional(),
});

export const decoderSchema = z.looseObject({
  filename: z.string().min(1),
  session_options: sessionOptionsSchema.optional(),
  inputs: nameTemplates.optional(),
  outputs: nameTemplates.optional(),
  num_hidden_layers: z.number().int().positive(),
  num_attention_heads: z.number().int().positive().optional(),
  num_key_value_heads: z.number().int().positive().optional(),
  head_size: z.number().int().positive().optional(),
  hidden_size: z.number().int().positive().optional(),
  /** Per layer, e.g. LFM2's ["conv", "full_attention", ...]. */
  layer_types: z.array(z.string()).optional(),
});

export const searchSchema = z.looseObject({
  max_length: z.number().int().positive().optional(),
  min_length: z.number().int().nonnegative().optional(),
  do_sample: z.boolean().optional(),
  temperature: z.number().nonnegative().optional(),
  top_k: z.number().int().nonnegative().optional(),
  top_p: z.number().gt(0).lte(1).optional(),
  repetition_penalty: z.number().positive().optional(),
  num_beams: z.number().int().positive().optional(),
  num_return_sequences: z.number().int().positive().optional(),
  early_stopping: z.boolean().optional(),
  past_present_share_buffer: z.boolean().optional(),
});

export const genaiConfigSchema = z.looseObject({
  model: z.looseObject({
    type: z.string().min(1),
    bos_token_id: tokenId.optional(),
    eos_token_id: z.union([tokenId, z.array(tokenId).min(1)]),
    pad_token_id: tokenId.optional(),
    vocab_size: z.number().int().positive(),
    context_length: z.number().int().positive(),
    decoder: decoderSchema,
  }),
  search: searchSchema.optional(),
});

export type GenaiConfig = z.infer<typeof genaiConfigSchema>;
export type DecoderConfig = z.infer<typeof decoderSchema>;
export type SearchConfig = z.infer<typeof searchSchema>;

/** eos_token_id as a list (the format allows a number or an array). */
export function eosTokenIds(config: GenaiConfig): number[] {
  const eos = config.model.eos_token_id;
  return Array.isArray(eos) ? eos : [eos];
}

/** Read and validate `<dir>/genai_config.json`; every failure names the file and the field. */
export async function loadGenaiConfig(dir: string): Promise<GenaiConfig> {
  return readModelJson(join(dir, "genai_config.json"), genaiConfigSchema, {
    fix: "correct the named field (format: onnxruntime-genai's genai_config.json, see docs/model-folder.md)",
    missingFix: "point at a model folder in onnxruntime-genai's layout (docs/model-folder.md)",
  });
}
