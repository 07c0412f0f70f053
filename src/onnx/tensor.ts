/**
 * Tensors: ONNX element types, and conversion between TensorProto and JS typed arrays.
 * Data may sit in `rawData` (little-endian bytes) or in the typed fields (floatData, int32Data, ...);
 * both are read. Tensors written by `typedToTensor` always use `rawData`.
 */
import { endianness } from "node:os";
import { IteraError } from "../errors.js";
import { onnxType } from "./codec.js";
import type { Int64, TensorProto } from "./types.js";

/** ONNX TensorProto.DataType values. */
export const DataType = {
  UNDEFINED: 0,
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  UINT16: 4,
  INT16: 5,
  INT32: 6,
  INT64: 7,
  STRING: 8,
  BOOL: 9,
  FLOAT16: 10,
  DOUBLE: 11,
  UINT32: 12,
  UINT64: 13,
  COMPLEX64: 14,
  COMPLEX128: 15,
  BFLOAT16: 16,
  FLOAT8E4M3FN: 17,
  FLOAT8E4M3FNUZ: 18,
  FLOAT8E5M2: 19,
  FLOAT8E5M2FNUZ: 20,
  UINT4: 21,
  INT4: 22,
  FLOAT4E2M1: 23,
} as const;

// onnxruntime's names: "float32" and "float64" rather than ONNX's FLOAT and DOUBLE.
const names = new Map<number, string>(
  Object.entries(DataType).map(([k, v]) => [
    v,
    k === "FLOAT" ? "float32" : k === "DOUBLE" ? "float64" : k.toLowerCase(),
  ]),
);

/** The element type's name as onnxruntime spells it ("float32", "float16", "int8", "int64", ...). */
export function dataTypeName(dataType: number): string {
  return names.get(dataType) ?? `type${dataType}`;
}

/** Bits per element (4 for int4/uint4/float4; 0 for strings and unknown types). */
export function dataTypeBits(dataType: number): number {
  switch (dataType) {
    case DataType.UINT4:
    case DataType.INT4:
    case DataType.FLOAT4E2M1:
      return 4;
    case DataType.UINT8:
    case DataType.INT8:
    case DataType.BOOL:
    case DataType.FLOAT8E4M3FN:
    case DataType.FLOAT8E4M3FNUZ:
    case DataType.FLOAT8E5M2:
    case DataType.FLOAT8E5M2FNUZ:
      return 8;
    case DataType.UINT16:
    case DataType.INT16:
    case DataType.FLOAT16:
    case DataType.BFLOAT16:
      return 16;
    case DataType.FLOAT:
    case DataType.INT32:
    case DataType.UINT32:
      return 32;
    case DataType.DOUBLE:
    case DataType.INT64:
    case DataType.UINT64:
    case DataType.COMPLEX64:
      return 64;
    case DataType.COMPLEX128:
      return 128;
    default:
      return 0;
  }
}

export type TypedArray =
  | Float32Array
  | Float64Array
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array
  | BigUint64Array;

type TypedArrayCtor = {
  new (length: number): TypedArray;
  new (buffer: ArrayBufferLike, byteOffset?: number, length?: number): TypedArray;
  BYTES_PER_ELEMENT: number;
};

// Typed array for each element type. float16/bfloat16 are their raw 16-bit patterns (Node 20 has no
// Float16Array); bool is one byte per element; complex64 is interleaved (re, im) float32.
const arrayTypes: Partial<Record<number, TypedArrayCtor>> = {
  [DataType.FLOAT]: Float32Array,
  [DataType.DOUBLE]: Float64Array,
  [DataType.INT8]: Int8Array,
  [DataType.UINT8]: Uint8Array,
  [DataType.BOOL]: Uint8Array,
  [DataType.INT16]: Int16Array,
  [DataType.UINT16]: Uint16Array,
  [DataType.FLOAT16]: Uint16Array,
  [DataType.BFLOAT16]: Uint16Array,
  [DataType.INT32]: Int32Array,
  [DataType.UINT32]: Uint32Array,
  [DataType.INT64]: BigInt64Array,
  [DataType.UINT64]: BigUint64Array,
  [DataType.COMPLEX64]: Float32Array,
};

if (endianness() !== "LE") throw new Error("itera's ONNX library assumes a little-endian host");

/** Number of elements: the product of the dims (1 for a scalar). */
export function elementCount(dims: readonly Int64[]): number {
  let n = 1;
  for (const d of dims) n *= Number(d);
  return n;
}

/** Bytes the tensor's data takes when stored raw (4-bit types packed two per byte). */
export function tensorByteSize(t: TensorProto): number {
  return Math.ceil((elementCount(t.dims) * dataTypeBits(t.dataType ?? 0)) / 8);
}

/** True when the tensor's data lives in an external file that has not been loaded. */
export function isExternal(t: TensorProto): boolean {
  return t.dataLocation === 1;
}

function where(t: TensorProto): string {
  return `tensor "${t.name ?? ""}"`;
}

/**
 * The tensor's data as a fresh typed array (never a view into the model, so writes do not alias).
 * float16/bfloat16 come back as raw Uint16 bit patterns: see `float16ToFloat32`.
 */
export function tensorToTyped(t: TensorProto): TypedArray {
  const dataType = t.dataType ?? 0;
  const Ctor = arrayTypes[dataType];
  if (!Ctor)
    throw new IteraError(`tensors of type ${dataTypeName(dataType)} cannot be read as a typed array`, {
      where: where(t),
      fix: "read its bytes with tensorRawBytes()",
    });
  if (isExternal(t))
    throw new IteraError("the tensor's data is in an external file that was not loaded", {
      where: where(t),
      fix: "load the model with loadModel(path) (external data is loaded by default)",
    });
  const count = elementCount(t.dims) * (dataType === DataType.COMPLEX64 ? 2 : 1);
  if (t.rawData && t.rawData.byteLength > 0) {
    const raw = t.rawData;
    if (raw.byteLength !== count * Ctor.BYTES_PER_ELEMENT)
      throw new IteraError(
        `raw_data has ${raw.byteLength} bytes but dims [${t.dims.join(", ")}] need ${count * Ctor.BYTES_PER_ELEMENT}`,
        { where: where(t), fix: "the model is corrupt: re-export it" },
      );
    const copy = raw.slice(); // fresh and aligned
    return new Ctor(copy.buffer, 0, count);
  }
  const out = new Ctor(count);
  const fields = typedFieldValues(t, dataType);
  if (fields.length !== count)
    throw new IteraError(
      `the tensor holds ${fields.length} values but dims [${t.dims.join(", ")}] need ${count}`,
      {
        where: where(t),
        fix: "the model is corrupt: re-export it",
      },
    );
  if (out instanceof BigInt64Array || out instanceof BigUint64Array)
    for (let i = 0; i < count; i++) out[i] = BigInt(fields[i] as Int64);
  else for (let i = 0; i < count; i++) out[i] = Number(fields[i]);
  return out;
}

// Which typed field holds the values of each element type when raw_data is not used (onnx.proto).
function typedFieldValues(t: TensorProto, dataType: number): readonly Int64[] {
  switch (dataType) {
    case DataType.FLOAT:
    case DataType.COMPLEX64:
      return t.floatData ?? [];
    case DataType.DOUBLE:
    case DataType.COMPLEX128:
      return t.doubleData ?? [];
    case DataType.INT64:
      return t.int64Data ?? [];
    case DataType.UINT32:
    case DataType.UINT64:
      return t.uint64Data ?? [];
    default:
      return t.int32Data ?? [];
  }
}

/** The tensor's data as little-endian bytes, whatever field holds it (a fresh copy). */
export function tensorRawBytes(t: TensorProto): Uint8Array {
  if (t.rawData && t.rawData.byteLength > 0) return t.rawData.slice();
  if (isExternal(t)) tensorToTyped(t); // throws the clear error
  const typed = tensorToTyped(t);
  return new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength).slice();
}

const defaultTypes = new Map<unknown, number>([
  [Float32Array, DataType.FLOAT],
  [Float64Array, DataType.DOUBLE],
  [Int8Array, DataType.INT8],
  [Uint8Array, DataType.UINT8],
  [Int16Array, DataType.INT16],
  [Uint16Array, DataType.UINT16],
  [Int32Array, DataType.INT32],
  [Uint32Array, DataType.UINT32],
  [BigInt64Array, DataType.INT64],
  [BigUint64Array, DataType.UINT64],
]);

/**
 * A new TensorProto holding a copy of `data` in raw_data. `dataType` defaults from the array type;
 * pass it for float16/bfloat16 (Uint16Array bits), bool (Uint8Array) or packed 4-bit data (Uint8Array).
 */
export function typedToTensor(
  name: string,
  dims: readonly number[],
  data: TypedArray,
  dataType: number = defaultTypes.get(data.constructor) ?? DataType.UNDEFINED,
): TensorProto {
  const t = onnxType("TensorProto").create({ name, dims: [...dims], dataType }) as unknown as TensorProto;
  const expected = tensorByteSize(t);
  if (data.byteLength !== expected)
    throw new IteraError(
      `tensor "${name}": ${data.byteLength} bytes of data for dims [${dims.join(", ")}] of ${dataTypeName(dataType)} (need ${expected})`,
    );
  t.rawData = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
  return t;
}

/** IEEE half-precision bit patterns to float32 values. */
export function float16ToFloat32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i]!;
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) out[i] = sign * 2 ** -14 * (frac / 1024);
    else if (exp === 31) out[i] = frac ? Number.NaN : sign * Number.POSITIVE_INFINITY;
    else out[i] = sign * 2 ** (exp - 15) * (1 + frac / 1024);
  }
  return out;
}

/** float32 values to IEEE half-precision bit patterns, rounding to nearest even. */
export function float32ToFloat16(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  const f32 = new Float32Array(1);
  const u32 = new Uint32Array(f32.buffer);
  for (let i = 0; i < values.length; i++) {
    f32[0] = values[i]!;
    const x = u32[0]!;
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    const mant = x & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (mant ? 0x200 : 0);
      continue;
    }
    const e = exp - 127 + 15;
    if (e >= 31) {
      out[i] = sign | 0x7c00;
      continue;
    }
    if (e <= 0) {
      if (e < -10) {
        out[i] = sign;
        continue;
      }
      const m = mant | 0x800000;
      const shift = 14 - e;
      let half = m >>> shift;
      const rem = m & ((1 << shift) - 1);
      const mid = 1 << (shift - 1);
      if (rem > mid || (rem === mid && half & 1)) half++;
      out[i] = sign | half;
      continue;
    }
    let half = (e << 10) | (mant >>> 13);
    const rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
    out[i] = sign | half;
  }
  return out;
}
