/**
 * A GGUF v3 writer (llama.cpp's model file format, ggml's docs/gguf.md): header, typed metadata
 * key/values, tensor infos and tensor data, each tensor at a multiple of the alignment. Tensors are
 * written as F32 or Q8_0 (blocks of 32 values: an fp16 scale, then 32 int8). Only what bench/peers.ts
 * needs to hand llama.cpp a model of a given shape; it writes what it is given, it checks nothing
 * llama.cpp would check about an architecture.
 */
import { float16ToFloat32, float32ToFloat16 } from "../../src/onnx/tensor.js";

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian uint32
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** gguf_type: the value types of metadata. */
export const GgufValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;

/** ggml_type numbers of the tensor types written here. */
export const GgmlType = { F32: 0, Q8_0: 8 } as const;
export type TensorType = keyof typeof GgmlType;

export const Q8_0_BLOCK = 32;
/** Bytes of one Q8_0 block: fp16 scale + 32 int8. */
export const Q8_0_BLOCK_BYTES = 2 + Q8_0_BLOCK;

/** A metadata value with its GGUF type made explicit (JavaScript numbers do not say uint32 or float32). */
export type GgufValue =
  | { type: "uint32"; value: number }
  | { type: "int32"; value: number }
  | { type: "float32"; value: number }
  | { type: "bool"; value: boolean }
  | { type: "string"; value: string }
  | { type: "string[]"; value: readonly string[] }
  | { type: "float32[]"; value: readonly number[] }
  | { type: "int32[]"; value: readonly number[] };

export interface GgufTensor {
  name: string;
  /** ggml order: dims[0] is the innermost (row length), as llama.cpp names them (ne0, ne1, ...). */
  dims: readonly number[];
  type: TensorType;
  data: Float32Array;
}

export interface GgufFile {
  metadata: ReadonlyMap<string, GgufValue> | Record<string, GgufValue>;
  tensors: readonly GgufTensor[];
  /** general.alignment; written as a key when it is not the default 32. */
  alignment?: number;
}

/** Q8_0 as ggml quantizes it: per block d = max|x| / 127, q = round(x / d). */
export function quantizeQ8_0(values: Float32Array): Uint8Array {
  if (values.length % Q8_0_BLOCK !== 0) {
    throw new Error(`Q8_0 needs a multiple of ${Q8_0_BLOCK} values per tensor, got ${values.length}`);
  }
  const blocks = values.length / Q8_0_BLOCK;
  const out = new Uint8Array(blocks * Q8_0_BLOCK_BYTES);
  const view = new DataView(out.buffer);
  const scale = new Float32Array(1);
  for (let b = 0; b < blocks; b++) {
    let amax = 0;
    for (let j = 0; j < Q8_0_BLOCK; j++) amax = Math.max(amax, Math.abs(values[b * Q8_0_BLOCK + j]!));
    scale[0] = amax / 127;
    const d = scale[0]!;
    const inv = d ? 1 / d : 0;
    const o = b * Q8_0_BLOCK_BYTES;
    view.setUint16(o, float32ToFloat16(scale)[0]!, true);
    // ggml rounds half away from zero (roundf)
    for (let j = 0; j < Q8_0_BLOCK; j++) {
      const x = values[b * Q8_0_BLOCK + j]! * inv;
      view.setInt8(o + 2 + j, Math.sign(x) * Math.round(Math.abs(x)));
    }
  }
  return out;
}

/** Q8_0 bytes back to values (what llama.cpp computes with). */
export function dequantizeQ8_0(bytes: Uint8Array): Float32Array {
  const blocks = bytes.length / Q8_0_BLOCK_BYTES;
  const out = new Float32Array(blocks * Q8_0_BLOCK);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let b = 0; b < blocks; b++) {
    const o = b * Q8_0_BLOCK_BYTES;
    const d = float16ToFloat32(new Uint16Array([view.getUint16(o, true)]))[0]!;
    for (let j = 0; j < Q8_0_BLOCK; j++) out[b * Q8_0_BLOCK + j] = d * view.getInt8(o + 2 + j);
  }
  return out;
}

/** A tensor's bytes in the file. */
export function tensorBytes(t: GgufTensor): Uint8Array {
  const elements = t.dims.reduce((a, b) => a * b, 1);
  if (elements !== t.data.length) {
    throw new Error(
      `tensor ${t.name}: dims [${t.dims.join(", ")}] hold ${elements} values, data has ${t.data.length}`,
    );
  }
  if (t.type === "Q8_0") {
    if (t.dims[0]! % Q8_0_BLOCK !== 0) {
      throw new Error(
        `tensor ${t.name}: Q8_0 rows must be a multiple of ${Q8_0_BLOCK} long, got ${t.dims[0]}`,
      );
    }
    return quantizeQ8_0(t.data);
  }
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/** Appends little-endian values to a growing buffer. */
class ByteWriter {
  private buf = new Uint8Array(1 << 16);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  /** Reserve `size` bytes at the end, write them with `set(view, offset)`, move past them. */
  private put(size: number, set: (view: DataView, at: number) => void): void {
    this.reserve(size);
    set(this.view, this.length);
    this.length += size;
  }

  u8(v: number): void {
    this.put(1, (d, at) => d.setUint8(at, v));
  }
  u32(v: number): void {
    this.put(4, (d, at) => d.setUint32(at, v, true));
  }
  i32(v: number): void {
    this.put(4, (d, at) => d.setInt32(at, v, true));
  }
  f32(v: number): void {
    this.put(4, (d, at) => d.setFloat32(at, v, true));
  }
  u64(v: number): void {
    this.put(8, (d, at) => d.setBigUint64(at, BigInt(v), true));
  }
  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  /** gguf_string: uint64 length, then UTF-8 bytes without a terminator. */
  string(s: string): void {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
  padTo(alignment: number): void {
    const pad = (alignment - (this.length % alignment)) % alignment;
    this.reserve(pad);
    this.buf.fill(0, this.length, this.length + pad);
    this.length += pad;
  }
  result(): Uint8Array {
    return this.buf.slice(0, this.length);
  }
}

type Scalar = "uint32" | "int32" | "float32" | "bool" | "string";

/** Each scalar type's gguf_type and how its value is written (arrays are of these). */
const SCALARS: Record<Scalar, { id: number; write: (w: ByteWriter, v: unknown) => void }> = {
  uint32: { id: GgufValueType.UINT32, write: (w, v) => w.u32(v as number) },
  int32: { id: GgufValueType.INT32, write: (w, v) => w.i32(v as number) },
  float32: { id: GgufValueType.FLOAT32, write: (w, v) => w.f32(v as number) },
  bool: { id: GgufValueType.BOOL, write: (w, v) => w.u8(v ? 1 : 0) },
  string: { id: GgufValueType.STRING, write: (w, v) => w.string(v as string) },
};

/** A value's type, then the value; an array: ARRAY, its element type, its length, the elements. */
function writeValue(w: ByteWriter, v: GgufValue): void {
  if (v.type.endsWith("[]")) {
    const element = SCALARS[v.type.slice(0, -2) as Scalar];
    const items = v.value as readonly unknown[];
    w.u32(GgufValueType.ARRAY);
    w.u32(element.id);
    w.u64(items.length);
    for (const item of items) element.write(w, item);
    return;
  }
  const scalar = SCALARS[v.type as Scalar];
  w.u32(scalar.id);
  scalar.write(w, v.value);
}

/** The whole file in memory (the bench's models are a few MB). */
export function encodeGguf(file: GgufFile): Uint8Array {
  const alignment = file.alignment ?? GGUF_DEFAULT_ALIGNMENT;
  const metadata = new Map(file.metadata instanceof Map ? file.metadata : Object.entries(file.metadata));
  if (alignment !== GGUF_DEFAULT_ALIGNMENT)
    metadata.set("general.alignment", { type: "uint32", value: alignment });
  const names = new Set<string>();
  for (const t of file.tensors) {
    if (names.has(t.name)) throw new Error(`tensor ${t.name} appears twice`);
    names.add(t.name);
  }
  const data = file.tensors.map(tensorBytes);

  const w = new ByteWriter();
  w.u32(GGUF_MAGIC);
  w.u32(GGUF_VERSION);
  w.u64(file.tensors.length);
  w.u64(metadata.size);
  for (const [key, value] of metadata) {
    w.string(key);
    writeValue(w, value);
  }
  // offsets are relative to the start of the data section; each tensor starts aligned
  let offset = 0;
  for (const [i, t] of file.tensors.entries()) {
    w.string(t.name);
    w.u32(t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(GgmlType[t.type]);
    w.u64(offset);
    offset += data[i]!.length;
    offset += (alignment - (offset % alignment)) % alignment;
  }
  w.padTo(alignment);
  for (const d of data) {
    w.bytes(d);
    w.padTo(alignment);
  }
  return w.result();
}
