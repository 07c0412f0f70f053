/**
 * Decode and encode ONNX model bytes with protobufjs reflection over the embedded schema.
 * Unknown fields are kept (protobufjs `$unknowns`) and re-emitted; int64 values become `number | bigint`.
 */
import protobuf from "protobufjs";
import { IteraError } from "../errors.js";
import { ONNX_PROTO } from "./schema.js";
import type { Int64, ModelProto } from "./types.js";

const root = protobuf.parse(ONNX_PROTO, { keepCase: false }).root;
root.resolveAll();

/** The protobufjs message type of an ONNX message, e.g. `onnxType("TensorProto")`. */
export function onnxType(name: string): protobuf.Type {
  return root.lookupType(`onnx.${name}`);
}

// protobufjs writes int64 through LongBits.from, which understands number, string and Long but
// not bigint (it would silently write 0). Teach it bigint so that exact values round-trip.
const LongBits = protobuf.util.LongBits as unknown as {
  from(v: unknown): unknown;
  new (lo: number, hi: number): unknown;
};
const longBitsFrom = LongBits.from;
LongBits.from = (v: unknown) =>
  typeof v === "bigint"
    ? new LongBits(Number(BigInt.asUintN(32, v)), Number(BigInt.asUintN(32, v >> 32n)))
    : longBitsFrom(v);

const INT64_TYPES = new Set(["int64", "uint64", "sint64", "fixed64", "sfixed64"]);

interface Plan {
  int64: { name: string; repeated: boolean }[];
  children: { name: string; repeated: boolean; plan: Plan }[];
}

// Per message type: which fields hold int64 values and which hold sub-messages.
const plans = new Map<protobuf.Type, Plan>();
function planFor(type: protobuf.Type): Plan {
  let plan = plans.get(type);
  if (plan) return plan;
  plan = { int64: [], children: [] };
  plans.set(type, plan);
  for (const field of type.fieldsArray) {
    if (INT64_TYPES.has(field.type)) {
      plan.int64.push({ name: field.name, repeated: field.repeated });
      // Absent int64 fields read their default from the prototype: make that 0, not a Long.
      if (!field.repeated) (type.ctor.prototype as Record<string, unknown>)[field.name] = 0;
    } else if (field.resolvedType instanceof protobuf.Type) {
      plan.children.push({ name: field.name, repeated: field.repeated, plan: planFor(field.resolvedType) });
    }
  }
  return plan;
}
const modelType = onnxType("ModelProto");
planFor(modelType);

function fromLong(v: unknown): Int64 {
  if (typeof v === "number" || typeof v === "bigint") return v;
  const long = v as { low: number; high: number; unsigned: boolean };
  const bits = (BigInt(long.high >>> 0) << 32n) | BigInt(long.low >>> 0);
  const exact = long.unsigned ? bits : BigInt.asIntN(64, bits);
  return exact >= BigInt(Number.MIN_SAFE_INTEGER) && exact <= BigInt(Number.MAX_SAFE_INTEGER)
    ? Number(exact)
    : exact;
}

function normalize(msg: Record<string, unknown>, plan: Plan): void {
  for (const { name, repeated } of plan.int64) {
    if (!Object.hasOwn(msg, name)) continue;
    const v = msg[name];
    if (repeated) {
      const arr = v as unknown[];
      for (let i = 0; i < arr.length; i++) arr[i] = fromLong(arr[i]);
    } else msg[name] = fromLong(v);
  }
  for (const child of plan.children) {
    if (!Object.hasOwn(msg, child.name)) continue;
    const v = msg[child.name];
    if (v == null) continue;
    if (child.repeated) for (const m of v as Record<string, unknown>[]) normalize(m, child.plan);
    else normalize(v as Record<string, unknown>, child.plan);
  }
}

/** Decode one message of the named ONNX type (e.g. a TensorProto from a .pb file). */
export function decodeMessage<T>(typeName: string, bytes: Uint8Array): T {
  const type = onnxType(typeName);
  const view = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const reader = protobuf.Reader.create(view);
  reader.discardUnknown = false;
  const msg = type.decode(reader) as unknown as Record<string, unknown>;
  normalize(msg, planFor(type));
  return msg as T;
}

/** Encode one message of the named ONNX type. */
export function encodeMessage(typeName: string, msg: object): Uint8Array {
  return onnxType(typeName).encode(msg).finish();
}

/**
 * Decode the bytes of an .onnx file. `source` names the file in error messages.
 * Throws an IteraError when the bytes are not a complete ONNX model.
 */
export function decodeModel(bytes: Uint8Array, source = "<bytes>"): ModelProto {
  const fix = "check that this is a complete .onnx file (re-export or re-download it)";
  const notOnnxFix = "pass an ONNX model (.onnx file) or a model folder";
  let model: ModelProto;
  try {
    model = decodeMessage<ModelProto>("ModelProto", bytes);
  } catch (e) {
    const reason = e instanceof Error ? e.message : String(e);
    // Every ONNX writer puts ir_version (field 1, varint: tag byte 0x08) first.
    const startsLikeOnnx = bytes[0] === 0x08;
    throw new IteraError(
      !startsLikeOnnx
        ? `not an ONNX model: the file is not ONNX protobuf data (${reason})`
        : /index out of range/.test(reason)
          ? `the ONNX file is truncated or corrupt (protobuf data ends early: ${reason})`
          : `the ONNX file is corrupt (${reason})`,
      { where: source, fix: startsLikeOnnx ? fix : notOnnxFix, cause: e },
    );
  }
  const missing = [
    Number(model.irVersion ?? 0) > 0 ? null : "ir_version",
    model.graph ? null : "graph",
    model.opsetImport.length > 0 ? null : "opset_import",
  ].filter((x) => x !== null);
  if (missing.length > 0)
    throw new IteraError(
      missing.includes("ir_version")
        ? `not an ONNX model: no ${missing.join(", ")} in the file`
        : `the ONNX file is incomplete (no ${missing.join(", ")}): it may be truncated`,
      { where: source, fix: missing.includes("ir_version") ? notOnnxFix : fix },
    );
  return model;
}

/** The largest single protobuf message protobuf implementations (onnxruntime included) accept. */
export const MAX_PROTOBUF_BYTES = 2 ** 31 - 1;

/** Encode a model to .onnx bytes. Fields the schema does not know are written back unchanged. */
export function encodeModel(model: ModelProto): Uint8Array {
  // Size the writer for the tensor bytes up front: protobufjs otherwise grows its buffer by doubling
  // (copying everything each time) and copies once more at the end; this halves encode time.
  // `_reserve` is protobufjs-internal, so it is used only when present.
  const writer = protobuf.Writer.create() as protobuf.Writer & { _reserve?: (n: number) => void };
  let estimate = 1 << 16;
  for (const t of model.graph?.initializer ?? []) estimate += t.rawData?.byteLength ?? 0;
  if (estimate > MAX_PROTOBUF_BYTES) throw tooLarge(estimate);
  writer._reserve?.(estimate);
  const shared = modelType.encode(model, writer).finish(true);
  // A view into the writer's buffer; copy when that buffer is much larger than the model (poor estimate).
  const bytes = shared.byteLength < shared.buffer.byteLength * 0.75 ? shared.slice() : shared;
  if (bytes.length > MAX_PROTOBUF_BYTES) throw tooLarge(bytes.length);
  return bytes;
}

function tooLarge(bytes: number): IteraError {
  return new IteraError(`the model is ${bytes} bytes or more, over the 2 GiB limit of one protobuf file`, {
    fix: "save it with external data (saveModel(path, model, { externalData: {} }))",
  });
}
