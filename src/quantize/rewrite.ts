/**
 * Apply a precision per site to a model: each quantized site's node is replaced by its
 * replacement subgraph (patterns.ts), fp16 weights are stored as float16 behind a Cast, and
 * weights nothing reads any more are dropped.
 */
import {
  type AttributeProto,
  AttributeType,
  attr,
  DataType,
  ensureOpset,
  getAttrInt,
  Graph,
  makeNode,
  type ModelProto,
  type NodeProto,
  tensorToTyped,
  typedToTensor,
} from "../onnx/index.js";
import type { Precision, QuantizeOptions } from "./options.js";
import {
  type AttributeValue,
  fp16Weight,
  gatherBlockQuantized,
  int8DynamicMatMul,
  matMulNBits,
  type NodeSpec,
  qMoE,
  type Replacement,
  type TensorSpec,
  type TensorType,
} from "./patterns.js";
import { expertMatrices, type QmoeLayout, qmoeBytes, qmoeLayout } from "./moe.js";
import { floatValues, linearWeights, type Site } from "./sites.js";

const tensorTypes: Record<TensorType, number> = {
  float32: DataType.FLOAT,
  float16: DataType.FLOAT16,
  uint8: DataType.UINT8,
  int8: DataType.INT8,
  int64: DataType.INT64,
};

function toAttribute(name: string, v: AttributeValue, isFloat: boolean): AttributeProto {
  if (typeof v === "string") return attr.string(name, v);
  if (Array.isArray(v)) return isFloat ? attr.floats(name, v) : attr.ints(name, v);
  return isFloat ? attr.float(name, v) : attr.int(name, v);
}

function toNode(spec: NodeSpec): NodeProto {
  const floats = new Set(spec.floatAttributes ?? []);
  return makeNode(spec.opType, spec.inputs, spec.outputs, {
    name: spec.name,
    domain: spec.domain,
    attributes: Object.entries(spec.attributes).map(([k, v]) => toAttribute(k, v, floats.has(k))),
  });
}

function toTensor(spec: TensorSpec) {
  return typedToTensor(spec.name, spec.dims, spec.data, tensorTypes[spec.type]);
}

export type BlockParams = Pick<QuantizeOptions, "blockSize" | "symmetric" | "accuracyLevel"> &
  Partial<Pick<QuantizeOptions, "moeScales" | "moeZeroPoints">> & {
    searchClipping?: boolean;
  };
export type Int8Params = Pick<QuantizeOptions, "perChannel" | "reduceRange" | "int8Symmetric">;

/** The QMoE layout of a moe site at an integer precision (int8 means QMoE's 8-bit weight-only). */
export function moeLayout(site: Site, precision: Precision, params: BlockParams): QmoeLayout | string {
  return qmoeLayout(site.moe!, precision === "int4" ? 4 : 8, {
    blockSize: params.moeScales === "block" ? params.blockSize : 0,
    symmetric: params.moeZeroPoints !== true,
  });
}

/** Bytes a weight of `site` takes at a precision (packed data + scales + zero points). */
export function precisionBytes(site: Site, p: Precision, params: BlockParams): number {
  const { blockSize, symmetric } = params;
  const elements = site.bytes / 4;
  if (p === "fp32") return elements * 4;
  if (p === "fp16") return elements * 2;
  if (site.kind === "moe") {
    const layout = moeLayout(site, p, params);
    return typeof layout === "string" ? site.bytes : qmoeBytes(site.moe!, layout);
  }
  const [a, b] = site.dims as [number, number];
  if (p === "int8") return elements + (b + b) * 4; // per-channel worst case
  const bits = p === "int4" ? 4 : 8;
  const rows = site.kind === "linear" ? b : a;
  const cols = site.kind === "linear" ? a : b;
  const kBlocks = Math.ceil(cols / blockSize);
  return (
    rows *
    ((kBlocks * blockSize * bits) / 8 + kBlocks * 4 + (symmetric ? 0 : Math.ceil((kBlocks * bits) / 8)))
  );
}

/** Why a site should not take a precision, or undefined when it can. */
export function unsupportedReason(site: Site, precision: Precision, params: BlockParams): string | undefined {
  if (precision === "fp32" || precision === "fp16") return undefined;
  if (site.kind === "moe") {
    const layout = moeLayout(site, precision, params);
    if (typeof layout === "string") return layout;
  }
  const cols = site.dims[1]!;
  if (site.kind === "embedding" && cols % params.blockSize !== 0) {
    return `hidden size ${cols} is not a multiple of the block size ${params.blockSize}`;
  }
  if (precisionBytes(site, precision, params) >= site.bytes) {
    return `${precision} would not be smaller than fp32 for a ${site.dims.join("x")} weight (block padding)`;
  }
  return undefined;
}

/** A node's INT/FLOAT/STRING/INTS/FLOATS attributes as pattern values (sites.ts admits no others). */
function attributeValues(node: NodeProto): { values: Record<string, AttributeValue>; floats: string[] } {
  const values: Record<string, AttributeValue> = {};
  const floats: string[] = [];
  const text = new TextDecoder();
  for (const a of node.attribute) {
    const name = a.name ?? "";
    if (a.type === AttributeType.INT) values[name] = Number(a.i ?? 0);
    else if (a.type === AttributeType.FLOAT) {
      values[name] = a.f ?? 0;
      floats.push(name);
    } else if (a.type === AttributeType.STRING) values[name] = text.decode(a.s ?? new Uint8Array());
    else if (a.type === AttributeType.INTS) values[name] = (a.ints ?? []).map(Number);
    else if (a.type === AttributeType.FLOATS) {
      values[name] = a.floats ?? [];
      floats.push(name);
    } else throw new Error(`attribute ${name} of ${node.opType} has a type the quantizer does not copy`);
  }
  return { values, floats };
}

/** The replacement subgraph for one site at an integer precision. */
function replacementFor(
  g: Graph,
  site: Site,
  precision: Exclude<Precision, "fp32" | "fp16">,
  params: BlockParams & Int8Params,
  uniq: string,
): Replacement {
  const node = site.node;
  if (site.kind === "moe") {
    const layout = moeLayout(site, precision, params) as QmoeLayout;
    const { values, floats } = attributeValues(node);
    const weights = Object.fromEntries(
      expertMatrices(site.moe!).map((m) => [
        m.role,
        tensorToTyped(g.initializer(node.input[m.input]!)!) as Float32Array,
      ]),
    );
    return qMoE(
      {
        name: uniq,
        inputs: node.input,
        output: node.output[0]!,
        attributes: values,
        floatAttributes: floats,
        shape: site.moe!,
        weights,
      },
      layout,
      params.searchClipping === true,
    );
  }
  // A weight used in fp16/bf16 directly: the quantized op runs in float32 between two Casts.
  const half = site.halfType;
  const output = half === undefined ? node.output[0]! : `${uniq}/float_out`;
  const castBack = (r: Replacement): Replacement => {
    if (half === undefined) return r;
    const cast = (name: string, input: string, out: string, to: number): NodeSpec => ({
      name,
      opType: "Cast",
      domain: "",
      inputs: [input],
      outputs: [out],
      attributes: { to },
    });
    const nodes = [...r.nodes, cast(`${uniq}/cast_out`, output, node.output[0]!, half)];
    if (site.kind === "linear")
      nodes.unshift(cast(`${uniq}/cast_in`, node.input[0]!, `${uniq}/float_in`, DataType.FLOAT));
    return { nodes, initializers: r.initializers };
  };
  if (site.kind === "embedding") {
    const table = floatValues(g.initializer(site.weightName)!);
    return castBack(
      gatherBlockQuantized(
        {
          name: uniq,
          indices: node.input[1]!,
          output,
          table,
          rows: site.dims[0]!,
          cols: site.dims[1]!,
        },
        {
          bits: precision === "int4" ? 4 : 8,
          blockSize: params.blockSize,
          symmetric: params.symmetric,
          searchClipping: params.searchClipping === true,
        },
      ),
    );
  }
  const { weight, bias } = linearWeights(g, site);
  const linear = {
    name: uniq,
    input: half === undefined ? node.input[0]! : `${uniq}/float_in`,
    output,
    weight,
    k: site.dims[0]!,
    n: site.dims[1]!,
    ...(bias ? { bias } : {}),
  };
  if (precision === "int8") {
    return castBack(
      int8DynamicMatMul(linear, {
        perChannel: params.perChannel,
        reduceRange: params.reduceRange,
        symmetric: params.int8Symmetric,
      }),
    );
  }
  return castBack(
    matMulNBits(linear, {
      bits: precision === "int4" ? 4 : 8,
      blockSize: params.blockSize,
      symmetric: params.symmetric,
      searchClipping: params.searchClipping === true,
      accuracyLevel: params.accuracyLevel,
    }),
  );
}

export interface Applied {
  site: string;
  precision: Precision;
}

/**
 * Rewrite `model` in place. `sites` must come from findSites on this model's graph; sites not in
 * `choice` (or at fp32) are left alone.
 */
export function applyPrecisions(
  model: ModelProto,
  sites: Site[],
  choice: ReadonlyMap<string, Precision>,
  params: BlockParams & Int8Params,
): Applied[] {
  const g = new Graph(model.graph!);
  const applied: Applied[] = [];
  const fp16Done = new Set<string>();
  const usedNames = new Set(g.nodes.map((n) => n.name ?? ""));
  let contrib = false;
  // Quantized replacements first: they read the float weights, which fp16 storage then replaces.
  for (const site of sites) {
    const precision = choice.get(site.name) ?? "fp32";
    if (precision === "fp32" || precision === "fp16") continue;
    let uniq = site.name.replace(/[^A-Za-z0-9_.]/g, "_");
    while (usedNames.has(`${uniq}_q`)) uniq = `${uniq}_`;
    usedNames.add(`${uniq}_q`);
    const r = replacementFor(g, site, precision, params, `${uniq}_q`);
    for (const t of r.initializers) g.addInitializer(toTensor(t));
    g.replaceNode(site.node, ...r.nodes.map(toNode));
    contrib ||= r.nodes.some((n) => n.domain === "com.microsoft");
    applied.push({ site: site.name, precision });
  }
  g.removeDeadInitializers();
  for (const site of sites) {
    if (choice.get(site.name) !== "fp16") continue;
    // The weight itself becomes float16; a Cast restores float32 under the original name.
    for (const name of site.weightNames) {
      const t = g.initializer(name);
      // a weight already in half precision stays as it is
      if (!t || fp16Done.has(name) || t.dataType !== DataType.FLOAT) continue;
      const r = fp16Weight(name, tensorToTyped(t) as Float32Array, t.dims.map(Number));
      g.removeInitializer(name);
      for (const i of r.initializers) g.addInitializer(toTensor(i));
      for (const n of r.nodes) g.addNode(toNode(n), 0);
      fp16Done.add(name);
    }
    applied.push({ site: site.name, precision: "fp16" });
  }
  if (contrib) ensureOpset(model, "com.microsoft", 1);
  g.topologicalSort();
  return applied;
}

/**
 * fp16/bf16 weights stored behind a `Cast` to float (itera's own fp16 output, bf16 exports for CPUs):
 * each becomes a float32 initializer under the Cast's output name, so that the quantizer finds and
 * reads it like any float weight. Returns the names of those that were float16 (restoreFp16Weights
 * stores them as float16 again when they stay unquantized). Rewrites `model` in place.
 */
export function floatStoredWeights(model: ModelProto): Set<string> {
  const g = new Graph(model.graph!);
  const outputs = new Set(model.graph!.output.map((o) => o.name ?? ""));
  const fp16 = new Set<string>();
  for (const node of [...g.nodes]) {
    if (node.opType !== "Cast" || (node.domain ?? "") !== "") continue;
    if (getAttrInt(node, "to", 0) !== DataType.FLOAT || outputs.has(node.output[0] ?? "")) continue;
    const t = g.initializer(node.input[0] ?? "");
    if (!t || (t.dataType !== DataType.FLOAT16 && t.dataType !== DataType.BFLOAT16) || t.dims.length < 2)
      continue;
    const name = node.output[0]!;
    g.addInitializer(typedToTensor(name, t.dims.map(Number), floatValues(t), DataType.FLOAT));
    g.removeNode(node);
    if (t.dataType === DataType.FLOAT16) fp16.add(name);
  }
  g.removeDeadInitializers();
  return fp16;
}

/** Store the float32 weights named here (fp16 in the source, left unquantized) as float16 again. */
export function restoreFp16Weights(model: ModelProto, names: ReadonlySet<string>): void {
  const g = new Graph(model.graph!);
  let changed = false;
  for (const name of names) {
    const t = g.initializer(name);
    if (!t || t.dataType !== DataType.FLOAT) continue;
    const r = fp16Weight(name, tensorToTyped(t) as Float32Array, t.dims.map(Number));
    g.removeInitializer(name);
    for (const i of r.initializers) g.addInitializer(toTensor(i));
    for (const n of r.nodes) g.addNode(toNode(n), 0);
    changed = true;
  }
  if (changed) g.topologicalSort();
}
