/**
 * A llama-architecture model "of the same shape" as a house model folder, with random weights, as
 * GGUF for llama.cpp. Vocabulary, hidden size, layers, attention heads and head size come from the
 * folder's genai_config.json; the feed-forward width is chosen so that the llama model has the
 * house model's parameter count (read from the ONNX graph): llama's gated FFN has three matrices,
 * transformer-tiny's GELU FFN two, and Itera-Lite's parameters sit in an SSM mixer and MoE experts
 * llama does not have. The head is tied to the embedding, as in every house model.
 */
import { join } from "node:path";
import { loadGenaiConfig } from "../../src/model/genai-config.js";
import { loadModel as loadOnnx } from "../../src/onnx/io.js";
import { analyzeModel } from "../../src/onnx/report.js";
import { createRng } from "../../src/runtime/sampling.js";
import {
  type GgufFile,
  type GgufTensor,
  type GgufValue,
  Q8_0_BLOCK,
  type TensorType,
} from "./gguf-writer.js";

export interface LlamaShape {
  /** the house model's folder name */
  name: string;
  vocab: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ffn: number;
  contextLength: number;
  /** float parameters of the house model's ONNX graph */
  houseParameters: number;
  /** the house model's FLOPs per decoded token at position 0 (MoE: the experts it runs), from `itera inspect`'s rules; null where its shapes do not resolve */
  houseFlopsPerToken: number | null;
}

/** llama's parameters: embedding (tied head), per layer q/k/v/o, gate/up/down and two norms, the final norm. */
export function llamaParameters(
  s: Omit<LlamaShape, "name" | "houseParameters" | "houseFlopsPerToken">,
): number {
  const q = s.heads * s.headDim;
  const kv = s.kvHeads * s.headDim;
  const perLayer = s.hidden * (2 * q + 2 * kv) + 3 * s.hidden * s.ffn + 2 * s.hidden;
  return s.vocab * s.hidden + s.layers * perLayer + s.hidden;
}

/** Matrix FLOPs per token at position 0 (2 per multiply-add; attention over the context not counted). */
export function llamaFlopsPerToken(s: LlamaShape): number {
  const q = s.heads * s.headDim;
  const kv = s.kvHeads * s.headDim;
  return 2 * (s.layers * (s.hidden * (2 * q + 2 * kv) + 3 * s.hidden * s.ffn) + s.vocab * s.hidden);
}

/** The shape of the llama model that stands in for the house model in `dir`. */
export async function llamaShapeOf(dir: string, name: string): Promise<LlamaShape> {
  const config = await loadGenaiConfig(dir);
  const decoder = config.model.decoder;
  // one token after an empty cache: a KV-cache graph's total length is then 1
  const report = analyzeModel(await loadOnnx(join(dir, decoder.filename)), { total_sequence: 1 });
  const houseParameters = report.parameters.byDtype
    .filter((d) => d.dtype.startsWith("float") || d.dtype === "bfloat16")
    .reduce((a, d) => a + d.elements, 0);
  const hidden = decoder.hidden_size;
  const heads = decoder.num_attention_heads;
  if (hidden === undefined || heads === undefined) {
    throw new Error(
      `${dir}/genai_config.json: model.decoder needs hidden_size and num_attention_heads for a same-shape llama`,
    );
  }
  const base = {
    vocab: config.model.vocab_size,
    hidden,
    layers: decoder.num_hidden_layers,
    heads,
    kvHeads: decoder.num_key_value_heads ?? heads,
    headDim: decoder.head_size ?? hidden / heads,
    contextLength: config.model.context_length,
  };
  const withoutFfn = llamaParameters({ ...base, ffn: 0 });
  // Q8_0 needs rows that are whole blocks: ffn_down's rows are ffn long
  const ffn = Math.max(
    Q8_0_BLOCK,
    Q8_0_BLOCK * Math.round((houseParameters - withoutFfn) / (3 * hidden * base.layers) / Q8_0_BLOCK),
  );
  const flopsKnown = report.flops.unresolved.length === 0 && report.flops.missingDims.length === 0;
  return {
    name,
    ...base,
    ffn,
    houseParameters,
    houseFlopsPerToken: flopsKnown ? report.flops.perToken : null,
  };
}

/** Normal draws (Box-Muller over the seeded PRNG) scaled by `std`: weights of no meaning but realistic size. */
function randomNormal(n: number, std: number, rng: () => number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - rng()));
    const a = 2 * Math.PI * rng();
    out[i] = std * r * Math.cos(a);
    if (i + 1 < n) out[i + 1] = std * r * Math.sin(a);
  }
  return out;
}

/**
 * The GGUF content: llama hyperparameters, a placeholder vocabulary of the house model's size
 * (llama.cpp needs one to load; the bench feeds token ids), random weights. Matrices are `type`;
 * norms stay F32, as llama.cpp's own quantizer leaves 1-D tensors. The vocabulary is byte-level BPE
 * ("gpt2") without merges: node-llama-cpp tokenizes a test text at load, and a SentencePiece
 * ("llama") vocabulary without all 256 byte tokens aborts the process there (byte fallback), while
 * BPE skips bytes it has no token for.
 */
export function llamaGguf(s: LlamaShape, type: TensorType, seed = 1): GgufFile {
  const rng = createRng(seed);
  const u32 = (value: number): GgufValue => ({ type: "uint32", value });
  const tokens = Array.from({ length: s.vocab }, (_, i) => ["<unk>", "<s>", "</s>"][i] ?? `t${i}`);
  const metadata: Record<string, GgufValue> = {
    "general.architecture": { type: "string", value: "llama" },
    "general.name": { type: "string", value: `${s.name} shape (random weights)` },
    // llama_ftype: 0 all F32, 7 mostly Q8_0
    "general.file_type": u32(type === "F32" ? 0 : 7),
    "llama.context_length": u32(s.contextLength),
    "llama.embedding_length": u32(s.hidden),
    "llama.block_count": u32(s.layers),
    "llama.feed_forward_length": u32(s.ffn),
    "llama.attention.head_count": u32(s.heads),
    "llama.attention.head_count_kv": u32(s.kvHeads),
    "llama.attention.key_length": u32(s.headDim),
    "llama.attention.value_length": u32(s.headDim),
    "llama.rope.dimension_count": u32(s.headDim),
    "llama.rope.freq_base": { type: "float32", value: 10000 },
    "llama.attention.layer_norm_rms_epsilon": { type: "float32", value: 1e-5 },
    "llama.vocab_size": u32(s.vocab),
    "tokenizer.ggml.model": { type: "string", value: "gpt2" },
    "tokenizer.ggml.tokens": { type: "string[]", value: tokens },
    "tokenizer.ggml.merges": { type: "string[]", value: [] },
    "tokenizer.ggml.pre": { type: "string", value: "default" },
    // 2 unknown, 3 control, 1 normal
    "tokenizer.ggml.token_type": { type: "int32[]", value: tokens.map((_, i) => [2, 3, 3][i] ?? 1) },
    "tokenizer.ggml.unknown_token_id": u32(0),
    "tokenizer.ggml.bos_token_id": u32(1),
    "tokenizer.ggml.eos_token_id": u32(2),
    "tokenizer.ggml.add_bos_token": { type: "bool", value: false },
  };
  const q = s.heads * s.headDim;
  const kv = s.kvHeads * s.headDim;
  const matrix = (name: string, inner: number, outer: number): GgufTensor => ({
    name,
    dims: [inner, outer],
    type,
    data: randomNormal(inner * outer, 1 / Math.sqrt(inner), rng),
  });
  const norm = (name: string): GgufTensor => ({
    name,
    dims: [s.hidden],
    type: "F32",
    data: new Float32Array(s.hidden).fill(1),
  });
  const tensors: GgufTensor[] = [
    {
      name: "token_embd.weight",
      dims: [s.hidden, s.vocab],
      type,
      data: randomNormal(s.hidden * s.vocab, 1, rng),
    },
  ];
  for (let i = 0; i < s.layers; i++) {
    const b = `blk.${i}`;
    tensors.push(
      norm(`${b}.attn_norm.weight`),
      matrix(`${b}.attn_q.weight`, s.hidden, q),
      matrix(`${b}.attn_k.weight`, s.hidden, kv),
      matrix(`${b}.attn_v.weight`, s.hidden, kv),
      matrix(`${b}.attn_output.weight`, q, s.hidden),
      norm(`${b}.ffn_norm.weight`),
      matrix(`${b}.ffn_gate.weight`, s.hidden, s.ffn),
      matrix(`${b}.ffn_up.weight`, s.hidden, s.ffn),
      matrix(`${b}.ffn_down.weight`, s.ffn, s.hidden),
    );
  }
  tensors.push(norm("output_norm.weight"));
  return { metadata, tensors };
}
