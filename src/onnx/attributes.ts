/** Node attributes: build them with `attr.*`, read them with `getAttr*`. */
import { IteraError } from "../errors.js";
import { onnxType } from "./codec.js";
import type { AttributeProto, GraphProto, Int64, NodeProto, TensorProto } from "./types.js";

/** ONNX AttributeProto.AttributeType values. */
export const AttributeType = {
  UNDEFINED: 0,
  FLOAT: 1,
  INT: 2,
  STRING: 3,
  TENSOR: 4,
  GRAPH: 5,
  FLOATS: 6,
  INTS: 7,
  STRINGS: 8,
  TENSORS: 9,
  GRAPHS: 10,
  SPARSE_TENSOR: 11,
  SPARSE_TENSORS: 12,
  TYPE_PROTO: 13,
  TYPE_PROTOS: 14,
} as const;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

function make(fields: Partial<AttributeProto>): AttributeProto {
  return onnxType("AttributeProto").create(fields) as unknown as AttributeProto;
}

/** Attribute constructors, e.g. `attr.int("axis", 1)`, `attr.ints("perm", [0, 2, 1])`. */
export const attr = {
  float: (name: string, f: number) => make({ name, type: AttributeType.FLOAT, f }),
  int: (name: string, i: Int64) => make({ name, type: AttributeType.INT, i }),
  string: (name: string, s: string) => make({ name, type: AttributeType.STRING, s: utf8.encode(s) }),
  tensor: (name: string, t: TensorProto) => make({ name, type: AttributeType.TENSOR, t }),
  graph: (name: string, g: GraphProto) => make({ name, type: AttributeType.GRAPH, g }),
  floats: (name: string, floats: number[]) => make({ name, type: AttributeType.FLOATS, floats }),
  ints: (name: string, ints: Int64[]) => make({ name, type: AttributeType.INTS, ints }),
  strings: (name: string, strings: string[]) =>
    make({ name, type: AttributeType.STRINGS, strings: strings.map((s) => utf8.encode(s)) }),
};

/** The named attribute of a node, or undefined. */
export function findAttr(node: NodeProto, name: string): AttributeProto | undefined {
  return node.attribute.find((a) => a.name === name);
}

function typed(node: NodeProto, name: string, type: number): AttributeProto | undefined {
  const a = findAttr(node, name);
  if (a && a.type !== type)
    throw new IteraError(
      `attribute "${name}" of node "${node.name ?? ""}" (${node.opType}) has type ${a.type}, expected ${type}`,
      {
        fix: "the model does not follow the operator's schema: re-export it",
      },
    );
  return a;
}

export function getAttrInt(node: NodeProto, name: string, fallback: number): number;
export function getAttrInt(node: NodeProto, name: string): number | undefined;
/** An INT attribute as a number (`fallback` when absent). */
export function getAttrInt(node: NodeProto, name: string, fallback?: number): number | undefined {
  const a = typed(node, name, AttributeType.INT);
  return a ? Number(a.i ?? 0) : fallback;
}

export function getAttrFloat(node: NodeProto, name: string, fallback: number): number;
export function getAttrFloat(node: NodeProto, name: string): number | undefined;
/** A FLOAT attribute (`fallback` when absent). */
export function getAttrFloat(node: NodeProto, name: string, fallback?: number): number | undefined {
  const a = typed(node, name, AttributeType.FLOAT);
  return a ? (a.f ?? 0) : fallback;
}

/** An INTS attribute as numbers, or undefined. Values beyond 2^53 keep their sign and magnitude class. */
export function getAttrInts(node: NodeProto, name: string): number[] | undefined {
  return typed(node, name, AttributeType.INTS)?.ints?.map(Number);
}

/** A STRING attribute decoded as UTF-8, or undefined. */
export function getAttrString(node: NodeProto, name: string): string | undefined {
  const a = typed(node, name, AttributeType.STRING);
  return a ? fromUtf8.decode(a.s ?? new Uint8Array()) : undefined;
}

/** A TENSOR attribute, or undefined. */
export function getAttrTensor(node: NodeProto, name: string): TensorProto | undefined {
  return typed(node, name, AttributeType.TENSOR)?.t;
}

/** Every subgraph held by a node's attributes (If branches, Loop/Scan bodies). */
export function subgraphs(node: NodeProto): GraphProto[] {
  const out: GraphProto[] = [];
  for (const a of node.attribute) {
    if (a.g) out.push(a.g);
    if (a.graphs) out.push(...a.graphs);
  }
  return out;
}
