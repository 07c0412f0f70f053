/**
 * itera's ONNX library: decode/encode .onnx files without losing anything, and a small typed API
 * for the quantizer and the packager.
 *
 *   const model = await loadModel("model.onnx");           // external data loaded and validated
 *   const g = new Graph(model.graph!);
 *   const w = tensorToTyped(g.initializer("W")!);           // Float32Array, BigInt64Array, ...
 *   g.addInitializer(typedToTensor("W_q", [64, 64], int8s));
 *   g.replaceNode(node, makeNode("MatMulNBits", [...], [...], { domain: "com.microsoft" }));
 *   g.removeDeadInitializers(); g.topologicalSort();
 *   await saveModel("out/model.onnx", model, { externalData: {} });
 */
export {
  AttributeType,
  attr,
  findAttr,
  getAttrFloat,
  getAttrInt,
  getAttrInts,
  getAttrString,
  getAttrTensor,
  subgraphs,
} from "./attributes.js";
export { decodeMessage, decodeModel, encodeMessage, encodeModel, MAX_PROTOBUF_BYTES } from "./codec.js";
export {
  ensureOpset,
  Graph,
  makeNode,
  makeValueInfo,
  nodeReads,
  opsetVersion,
  outerReferences,
  topologicalOrder,
} from "./graph.js";
export {
  allTensors,
  type ExternalRef,
  externalRefs,
  type LoadOptions,
  loadModel,
  modelFromBytes,
  readModelFile,
  type SaveOptions,
  saveModel,
} from "./io.js";
export {
  DataType,
  dataTypeBits,
  dataTypeName,
  elementCount,
  float16ToFloat32,
  float32ToFloat16,
  isExternal,
  type TypedArray,
  tensorByteSize,
  tensorRawBytes,
  tensorToTyped,
  typedToTensor,
} from "./tensor.js";
export {
  analyzeModel,
  DEFAULT_DIMS,
  estimateFlops,
  type FlopsReport,
  type ModelReport,
  nodeFlops,
} from "./report.js";
export {
  describePrecision,
  fileWeightPrecision,
  type WeightPrecision,
  weightPrecision,
} from "./precision.js";
export { inferShapes, type Shape, type ShapeInfo } from "./shapes.js";
export type * from "./types.js";
