/** The report of `itera quantize` (printed, `--json`, and written into itera.json). */
import type { Agreement, TextQuality } from "./measure.js";
import type { Precision, QuantizeOptions } from "./options.js";

export interface SizeBreakdown {
  /** bytes of the ONNX file(s) on disk */
  file_bytes: number;
  /** bytes of initializer data by element type ("float", "float16", "int8", "uint8", ...) */
  by_dtype: Record<string, number>;
}

export interface LayerReport {
  name: string;
  kind: "linear" | "embedding" | "moe";
  head: boolean;
  /** linear [K, N]; embedding [rows, cols]; moe [experts, d_ff, d_model] */
  shape: number[];
  precision: Precision;
  /** auto mode: measured loss increase (nats/token on the calibration text) per candidate precision */
  sensitivity?: Partial<Record<Precision, number>>;
  note?: string;
}

export interface QuantizeReport {
  schema: "itera.quantization/v1";
  mode: QuantizeOptions["mode"];
  settings: {
    block_size: number;
    symmetric: boolean;
    int8_symmetric: boolean;
    clip_search: boolean;
    accuracy_level: number;
    moe_scales: QuantizeOptions["moeScales"];
    moe_zero_points: boolean;
    per_channel: boolean;
    reduce_range: boolean;
    exclude: string[];
    head: Precision | null;
    embedding: Precision | null;
    budget_perplexity_increase: number | null;
  };
  source: string;
  already_quantized_nodes: number;
  layers: LayerReport[];
  counts: Partial<Record<Precision, number>>;
  size: { before: SizeBreakdown; after: SizeBreakdown; compression_ratio: number };
  /** the written graph's precision (src/onnx/precision.ts), e.g. "int4 (95% of weights; fp32 5%)" */
  precision: string;
  /** null: not measured (no held-out text or no tokenizer): `quality_not_measured` says why */
  quality: {
    text: { source: string; chars: number; method: string };
    before: TextQuality;
    after: TextQuality;
    perplexity_increase: number;
    bits_per_char_increase: number;
    within_budget: boolean;
  } | null;
  quality_not_measured?: string;
  agreement: Agreement;
  speed: { decode_tokens: number; before_tokens_per_s: number; after_tokens_per_s: number; ratio: number };
  auto?: {
    calibration: { source: string; chars: number };
    baseline_nats_per_token: number;
    rounds: number;
    /** every searched weight at the lowest precision fitted the budget: no per-weight search was run */
    uniform?: boolean;
  };
  seconds: number;
}
