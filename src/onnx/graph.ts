/** Editing a graph: lookups, adding/replacing/removing nodes, dead initializers, topological order. */
import { IteraError } from "../errors.js";
import { subgraphs } from "./attributes.js";
import { onnxType } from "./codec.js";
import type {
  AttributeProto,
  GraphProto,
  ModelProto,
  NodeProto,
  TensorProto,
  ValueInfoProto,
} from "./types.js";

/** A new node. `domain` "" is the default ONNX domain; use "com.microsoft" for onnxruntime contrib ops. */
export function makeNode(
  opType: string,
  inputs: string[],
  outputs: string[],
  opts: { name?: string; domain?: string; attributes?: AttributeProto[] } = {},
): NodeProto {
  return onnxType("NodeProto").create({
    opType,
    input: inputs,
    output: outputs,
    ...(opts.name !== undefined ? { name: opts.name } : {}),
    ...(opts.domain ? { domain: opts.domain } : {}),
    attribute: opts.attributes ?? [],
  }) as unknown as NodeProto;
}

/** A graph input/output/value_info entry for a tensor; dims are numbers or symbolic names. */
export function makeValueInfo(name: string, elemType: number, dims: (number | string)[]): ValueInfoProto {
  return onnxType("ValueInfoProto").create({
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })) },
      },
    },
  }) as unknown as ValueInfoProto;
}

/** Names a subgraph reads from the enclosing scopes (used, but not defined inside it). */
export function outerReferences(g: GraphProto): Set<string> {
  const defined = new Set<string>([
    ...g.input.map((v) => v.name ?? ""),
    ...g.initializer.map((t) => t.name ?? ""),
    ...g.node.flatMap((n) => n.output),
  ]);
  const refs = new Set<string>();
  for (const n of g.node)
    for (const name of nodeReads(n)) if (name !== "" && !defined.has(name)) refs.add(name);
  return refs;
}

/** Every value a node reads: its inputs plus what its subgraphs read from outside themselves. */
export function nodeReads(node: NodeProto): string[] {
  const reads = [...node.input];
  for (const g of subgraphs(node)) reads.push(...outerReferences(g));
  return reads;
}

/** The version of an imported opset ("" = ai.onnx), or undefined when the model does not import it. */
export function opsetVersion(model: ModelProto, domain = ""): number | undefined {
  const d = domain === "ai.onnx" ? "" : domain;
  const o = model.opsetImport.find((x) => (x.domain ?? "") === d || (d === "" && x.domain === "ai.onnx"));
  return o ? Number(o.version ?? 0) : undefined;
}

/** Import an opset (e.g. "com.microsoft", 1) unless the model already imports that domain. */
export function ensureOpset(model: ModelProto, domain: string, version: number): void {
  if (opsetVersion(model, domain) !== undefined) return;
  model.opsetImport.push(onnxType("OperatorSetIdProto").create({ domain, version }) as never);
}

/**
 * The nodes ordered so that each comes after the producers of what it reads (Kahn's algorithm,
 * keeping the existing order where it is free). Names produced by none of these nodes are taken as
 * graph inputs, initializers or outer-scope values. Throws on a cycle.
 */
export function topologicalOrder(nodes: readonly NodeProto[], where = "graph"): NodeProto[] {
  const producerIndex = new Map<string, number>();
  nodes.forEach((n, i) => {
    for (const o of n.output) if (o !== "") producerIndex.set(o, i);
  });
  const dependents: number[][] = nodes.map(() => []);
  const pending = nodes.map((n, i) => {
    const deps = new Set<number>();
    for (const name of nodeReads(n)) {
      const p = producerIndex.get(name);
      if (p !== undefined && p !== i) deps.add(p);
    }
    for (const p of deps) dependents[p]!.push(i);
    return deps.size;
  });
  const order: number[] = [];
  const ready = nodes.map((_, i) => i).filter((i) => pending[i] === 0);
  for (let k = 0; k < ready.length; k++) {
    const i = ready[k]!;
    order.push(i);
    for (const d of dependents[i]!) if (--pending[d]! === 0) ready.push(d);
  }
  if (order.length !== nodes.length) {
    const stuck = nodes.filter((_, i) => pending[i]! > 0).map((n) => n.name || n.opType);
    throw new IteraError(`the graph has a cycle through ${stuck.slice(0, 5).join(", ")}`, {
      where,
      fix: "an edit connected a node to its own output; check the nodes added last",
    });
  }
  return order.map((i) => nodes[i]!);
}

/**
 * A thin editor over a GraphProto: every change is made on `proto` itself, so encoding the model
 * afterwards writes the edited graph. Lookups are computed on demand (graphs are small enough).
 */
export class Graph {
  constructor(readonly proto: GraphProto) {}

  get nodes(): NodeProto[] {
    return this.proto.node;
  }

  /** The initializer with this name, or undefined. */
  initializer(name: string): TensorProto | undefined {
    return this.proto.initializer.find((t) => t.name === name);
  }

  /** The graph input, output or value_info entry that describes this value, or undefined. */
  valueInfo(name: string): ValueInfoProto | undefined {
    const p = this.proto;
    return [...p.input, ...p.output, ...p.valueInfo].find((v) => v.name === name);
  }

  /** The node that produces a value, or undefined (graph inputs and initializers have none). */
  producer(name: string): NodeProto | undefined {
    return this.proto.node.find((n) => n.output.includes(name));
  }

  /** The nodes that read a value (directly or from inside their subgraphs). */
  consumers(name: string): NodeProto[] {
    return this.proto.node.filter((n) => nodeReads(n).includes(name));
  }

  /** Insert a node (at `index`, default the end); call `topologicalSort()` after a batch of edits. */
  addNode(node: NodeProto, index = this.proto.node.length): NodeProto {
    this.proto.node.splice(index, 0, node);
    return node;
  }

  /** Replace one node by zero or more nodes, in its place. */
  replaceNode(old: NodeProto, ...replacements: NodeProto[]): void {
    const i = this.indexOf(old);
    this.proto.node.splice(i, 1, ...replacements);
  }

  removeNode(node: NodeProto): void {
    this.proto.node.splice(this.indexOf(node), 1);
  }

  /** Add an initializer, replacing any with the same name. */
  addInitializer(t: TensorProto): TensorProto {
    const i = this.proto.initializer.findIndex((x) => x.name === t.name);
    if (i >= 0) this.proto.initializer[i] = t;
    else this.proto.initializer.push(t);
    return t;
  }

  removeInitializer(name: string): void {
    this.proto.initializer = this.proto.initializer.filter((t) => t.name !== name);
  }

  /**
   * Remove initializers no node reads and no graph output names (with their graph-input entries,
   * which models before IR 4 carry). Returns the removed names.
   */
  removeDeadInitializers(): string[] {
    const used = new Set<string>(this.proto.output.map((v) => v.name ?? ""));
    for (const n of this.proto.node) for (const name of nodeReads(n)) used.add(name);
    const dead = new Set(this.proto.initializer.map((t) => t.name ?? "").filter((name) => !used.has(name)));
    if (dead.size === 0) return [];
    this.proto.initializer = this.proto.initializer.filter((t) => !dead.has(t.name ?? ""));
    this.proto.input = this.proto.input.filter((v) => !dead.has(v.name ?? ""));
    return [...dead];
  }

  /**
   * Reorder nodes so that every node comes after the producers of what it reads (Kahn's algorithm,
   * keeping the existing order where it is free). Names produced nowhere in this graph are taken as
   * graph inputs, initializers or outer-scope values. Throws on a cycle.
   */
  topologicalSort(): void {
    this.proto.node = topologicalOrder(this.proto.node, `graph "${this.proto.name ?? ""}"`);
  }

  private indexOf(node: NodeProto): number {
    const i = this.proto.node.indexOf(node);
    if (i < 0)
      throw new Error(`node "${node.name ?? node.opType}" is not in graph "${this.proto.name ?? ""}"`);
    return i;
  }
}
