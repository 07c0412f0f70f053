import type { InferenceSession } from "onnxruntime-node";
import { IteraError } from "../errors.js";
import type { GenaiConfig } from "../model/genai-config.js";
import { pairStates, type StateKind } from "../model/state.js";

/**
 * What the graph's inputs and outputs are for: token ids, attention mask, position ids, logits, and
 * the state tensors (paired input -> output) with everything needed to create them empty.
 * Read from the session's metadata; names come from genai_config.json where it gives them.
 */

export type TensorType = "float32" | "float16" | "int64" | "int32";

export interface StateSlot {
  input: string;
  output: string;
  layer: number;
  kind: StateKind;
  type: TensorType;
  /** The shape of a fresh state for batch 1 (KV caches with past length 0). */
  emptyShape: number[];
  batchAxis: number;
  /** The axis that grows by one per token (KV caches); null for fixed-shape conv/recurrent state. */
  pastAxis: number | null;
}

export interface ModelIo {
  inputIds: { name: string; type: TensorType };
  attentionMask: { name: string; type: TensorType } | null;
  positionIds: { name: string; type: TensorType } | null;
  logits: string;
  states: StateSlot[];
  /** Tokens per call: null when the sequence axis is dynamic (prefill in one call), else the fixed count. */
  fixedSequence: number | null;
  /** Largest batch the graph accepts (null: any). */
  fixedBatch: number | null;
  /** Whether some state grows with the sequence (a KV cache) — decides the evaluation method. */
  hasKvCache: boolean;
  /** Whether some state has a fixed shape (recurrent/conv) — left-padding would pollute it. */
  hasFixedState: boolean;
}

type Meta = InferenceSession.ValueMetadata;
type TensorMeta = Extract<Meta, { isTensor: true }>;

const supportedTypes: readonly string[] = ["float32", "float16", "int64", "int32"];

function tensorMeta(meta: readonly Meta[], name: string, where: string): TensorMeta {
  const m = meta.find((x) => x.name === name);
  if (!m?.isTensor) throw new IteraError(`graph value '${name}' is not a tensor`, { where });
  if (!supportedTypes.includes(m.type)) {
    throw new IteraError(`graph value '${name}' has type ${m.type}, which the runtime does not support`, {
      where,
      fix: "export with float32/float16 states and int64/int32 token ids",
    });
  }
  return m;
}

/** Pair states by the genai_config templates (`past_X_names` <-> `present_X_names`, `%d` = layer). */
function pairByTemplates(
  config: GenaiConfig,
  inputs: ReadonlySet<string>,
  outputs: ReadonlySet<string>,
): { input: string; output: string; layer: number }[] {
  const dec = config.model.decoder;
  const found: { input: string; output: string; layer: number }[] = [];
  for (const [key, inTemplate] of Object.entries(dec.inputs ?? {})) {
    const m = key.match(/^past_(.*)names$/);
    if (!m || typeof inTemplate !== "string") continue;
    const outTemplate = (dec.outputs as Record<string, unknown> | undefined)?.[`present_${m[1]}names`];
    if (typeof outTemplate !== "string") continue;
    for (let layer = 0; layer < dec.num_hidden_layers; layer++) {
      const input = inTemplate.replace("%d", String(layer));
      const output = outTemplate.replace("%d", String(layer));
      if (inputs.has(input) && outputs.has(output)) found.push({ input, output, layer });
    }
  }
  return found;
}

function kindFromName(name: string, grows: boolean): StateKind {
  if (grows) return "kv";
  return /conv/.test(name) ? "conv" : "recurrent";
}

function isPastLike(dim: string): boolean {
  return /past|seq|len|total|cache/i.test(dim);
}

/** Resolve the shape of an empty state from the metadata, the config and the naming layout. */
function emptyStateShape(
  meta: TensorMeta,
  config: GenaiConfig,
  fused: boolean,
  where: string,
): { shape: number[]; batchAxis: number; pastAxis: number | null } {
  const dec = config.model.decoder;
  const rank = meta.shape.length;
  const batchAxis = fused ? 1 : 0;
  let pastAxis: number | null = null;
  meta.shape.forEach((d, axis) => {
    if (typeof d === "string" && axis !== batchAxis && !/batch/i.test(d) && isPastLike(d)) pastAxis = axis;
  });
  // KV layouts without telling names: [batch, heads, past, head] or fused [2, batch, heads, past, head].
  const layoutPast = fused ? 3 : rank === 4 ? 2 : null;
  const symbolicNonBatch = meta.shape.some((d, axis) => typeof d === "string" && axis !== batchAxis);
  if (pastAxis === null && symbolicNonBatch && layoutPast !== null) pastAxis = layoutPast;
  const heads = dec.num_key_value_heads ?? dec.num_attention_heads;
  const headSize =
    dec.head_size ??
    (dec.hidden_size && dec.num_attention_heads ? dec.hidden_size / dec.num_attention_heads : undefined);
  const shape = meta.shape.map((d, axis) => {
    if (typeof d === "number" && d >= 0) return axis === batchAxis ? 1 : d;
    if (axis === batchAxis) return 1;
    if (axis === pastAxis) return 0;
    const guess =
      layoutPast !== null
        ? axis === layoutPast - 1
          ? heads
          : axis === layoutPast + 1
            ? headSize
            : undefined
        : undefined;
    if (guess !== undefined) return guess;
    throw new IteraError(
      `cannot tell the size of dimension '${String(d)}' (axis ${axis}) of state input '${meta.name}'`,
      {
        where,
        fix: "export the state with fixed sizes, or give num_key_value_heads and head_size in genai_config.json",
      },
    );
  });
  return { shape, batchAxis, pastAxis };
}

/** Inputs of paged-attention exports (vLLM-style block tables): a layout of its own, not a state. */
const PAGED_ATTENTION_INPUTS = new Set([
  "block_table",
  "block_tables",
  "cumulative_sequence_lengths",
  "cu_seqlens",
  "cu_seqlens_q",
  "cu_seqlens_k",
  "slot_mapping",
  "seqlens",
  "context_lens",
  "max_seqlen",
]);

export function analyseIo(session: InferenceSession, config: GenaiConfig, where: string): ModelIo {
  const dec = config.model.decoder;
  const names = { ...(dec.inputs ?? {}), ...(dec.outputs ?? {}) };
  const inputNames = new Set(session.inputNames);
  const outputNames = new Set(session.outputNames);

  const inputIdsName = names.input_ids ?? "input_ids";
  if (!inputNames.has(inputIdsName)) {
    throw new IteraError(`the graph has no input '${inputIdsName}' (decoder.inputs.input_ids)`, {
      where,
      fix: `name the token input in genai_config.json decoder.inputs.input_ids; the graph's inputs are: ${session.inputNames.join(", ")}`,
    });
  }
  const logits = names.logits ?? "logits";
  if (!outputNames.has(logits)) {
    throw new IteraError(`the graph has no output '${logits}' (decoder.outputs.logits)`, {
      where,
      fix: `name the logits output in genai_config.json decoder.outputs.logits; the graph's outputs are: ${session.outputNames.join(", ")}`,
    });
  }
  const optionalInput = (name: string) =>
    inputNames.has(name)
      ? { name, type: tensorMeta(session.inputMetadata, name, where).type as TensorType }
      : null;
  const inputIdsMeta = tensorMeta(session.inputMetadata, inputIdsName, where);
  const attentionMask = optionalInput(names.attention_mask ?? "attention_mask");
  const positionIds = optionalInput(names.position_ids ?? "position_ids");

  const special = new Set([inputIdsName, attentionMask?.name, positionIds?.name]);
  const candidates = session.inputNames.filter((n) => !special.has(n));
  const byTemplate = pairByTemplates(config, new Set(candidates), outputNames);
  const templated = new Set(byTemplate.map((p) => p.input));
  const rest = candidates.filter((n) => !templated.has(n));
  const { pairs, unpaired } = pairStates(rest, session.outputNames);
  const paired = new Set(pairs.map((p) => p.input));
  const unknown = [...unpaired, ...rest.filter((n) => !paired.has(n) && !unpaired.includes(n))];
  const paged = unknown.filter((n) => PAGED_ATTENTION_INPUTS.has(n));
  if (paged.length > 0) {
    throw new IteraError(
      `the graph uses paged attention (input(s) ${paged.join(", ")}): its KV cache lives in blocks that a serving engine allocates and schedules, which this runtime does not do`,
      {
        where,
        fix: "export the decoder with a plain KV cache (past_key_values.N.key/value -> present.N.key/value), e.g. onnxruntime-genai's model builder or Optimum's text-generation-with-past export without paged attention",
      },
    );
  }
  if (unknown.length > 0) {
    throw new IteraError(`cannot pair the graph input(s) ${unknown.join(", ")} with a state output`, {
      where,
      fix: "name states past_key_values.N.* -> present.N.*, past_N -> present_N or past_conv.N -> present_conv.N (DESIGN.md §3), or give the templates in genai_config.json decoder.inputs/outputs (past_*_names / present_*_names)",
    });
  }

  const states: StateSlot[] = [...byTemplate, ...pairs].map((p) => {
    const meta = tensorMeta(session.inputMetadata, p.input, where);
    const fused = /^past_\d+$/.test(p.input) || meta.shape.length === 5;
    const { shape, batchAxis, pastAxis } = emptyStateShape(meta, config, fused, where);
    return {
      input: p.input,
      output: p.output,
      layer: p.layer,
      kind: kindFromName(p.input, pastAxis !== null),
      type: meta.type as TensorType,
      emptyShape: shape,
      batchAxis,
      pastAxis,
    };
  });
  states.sort((a, b) => a.layer - b.layer || a.input.localeCompare(b.input));

  const seqDim = inputIdsMeta.shape[1];
  const batchDim = inputIdsMeta.shape[0];
  return {
    inputIds: { name: inputIdsName, type: inputIdsMeta.type as TensorType },
    attentionMask,
    positionIds,
    logits,
    states,
    fixedSequence: typeof seqDim === "number" && seqDim > 0 ? seqDim : null,
    fixedBatch: typeof batchDim === "number" && batchDim > 0 ? batchDim : null,
    hasKvCache: states.some((s) => s.pastAxis !== null),
    hasFixedState: states.some((s) => s.pastAxis === null),
  };
}
