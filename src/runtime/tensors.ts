import { Tensor } from "onnxruntime-node";
import type { TensorType } from "./io.js";

/** Small tensor helpers for the runtime: integer inputs, zero states, batch merging, float16 reading. */

// Node 24 (the bundles' runtime) has Float16Array: onnxruntime-common then keeps float16 tensors in
// it, which onnxruntime-node's binding cannot read ("not enough space: expected 32, got 0" for any
// non-empty float16 input, e.g. an fp16 KV cache). Without it float16 stays in Uint16Array, as on
// Node 20. Done here, before the runtime builds its first tensor (the type check runs once).
if ("Float16Array" in globalThis) delete (globalThis as { Float16Array?: unknown }).Float16Array;

/** An int64/int32 tensor; typed arrays of the right type are used as they are (no copy). */
export function intTensor(
  type: TensorType,
  values: ArrayLike<number> | BigInt64Array | Int32Array,
  dims: readonly number[],
): Tensor {
  if (type === "int32") {
    return new Tensor(
      "int32",
      values instanceof Int32Array ? values : Int32Array.from(values as ArrayLike<number>),
      dims,
    );
  }
  if (values instanceof BigInt64Array) return new Tensor("int64", values, dims);
  const data = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) data[i] = BigInt((values as ArrayLike<number>)[i]!);
  return new Tensor("int64", data, dims);
}

export function zeros(type: TensorType, dims: readonly number[]): Tensor {
  const size = dims.reduce((a, b) => a * b, 1);
  switch (type) {
    case "float32":
      return new Tensor("float32", new Float32Array(size), dims);
    case "float16":
      return new Tensor("float16", new Uint16Array(size), dims);
    case "int32":
      return new Tensor("int32", new Int32Array(size), dims);
    case "int64":
      return new Tensor("int64", new BigInt64Array(size), dims);
  }
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 31) return frac ? Number.NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

/** The tensor's values as float32 (the tensor's own buffer when it already is float32: no copy). */
export function asFloat32(t: Tensor): Float32Array {
  if (t.type === "float32") return t.data as Float32Array;
  if (t.type === "float16") {
    // Node 24 (the bundles' runtime) has Float16Array, and onnxruntime-node gives float16 tensors
    // as one: values, not bit patterns.
    if (!(t.data instanceof Uint16Array)) return Float32Array.from(t.data as ArrayLike<number>);
    const src = t.data as Uint16Array;
    const out = new Float32Array(src.length);
    for (let i = 0; i < src.length; i++) out[i] = halfToFloat(src[i]!);
    return out;
  }
  throw new Error(`expected a float tensor, got ${t.type}`);
}

type AnyArray = Float32Array | Uint16Array | Int32Array | BigInt64Array;

/**
 * Stack per-row state tensors (each with batch 1) into one batch. Along `pastAxis` rows shorter than
 * the longest are padded with zeros at the front (left padding; the attention mask hides them).
 */
export function stackRows(rows: readonly Tensor[], batchAxis: number, pastAxis: number | null): Tensor {
  const first = rows[0]!;
  const dims = [...first.dims];
  const axis = pastAxis ?? dims.length - 1;
  const maxLen = Math.max(...rows.map((r) => r.dims[axis]!));
  const outDims = dims.map((d, i) => (i === batchAxis ? rows.length : i === axis ? maxLen : d));
  const out = zeros(first.type as TensorType, outDims);
  const outData = out.data as AnyArray;
  const inner = dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  // Outer axes are those before `axis`; the batch axis is one of them (batch comes before the past axis).
  const outerDims = outDims.slice(0, axis);
  const outerCount = outerDims.reduce((a, b) => a * b, 1) / rows.length;
  rows.forEach((row, r) => {
    const len = row.dims[axis]!;
    const data = row.data as AnyArray;
    const rowOuter = row.dims.slice(0, axis);
    for (let o = 0; o < outerCount; o++) {
      // Decompose o over the row's outer dims (batch size 1), recompose with the batch index r.
      let rem = o;
      let outIndex = 0;
      for (let a = 0; a < rowOuter.length; a++) {
        const stride = rowOuter.slice(a + 1).reduce((x, y) => x * y, 1);
        const idx = a === batchAxis ? 0 : Math.floor(rem / stride);
        rem -= idx * stride;
        outIndex = outIndex * outerDims[a]! + (a === batchAxis ? r : idx);
      }
      const src = data.subarray(o * len * inner, (o + 1) * len * inner);
      (outData as Float32Array).set(src as Float32Array, (outIndex * maxLen + (maxLen - len)) * inner);
    }
  });
  return out;
}
