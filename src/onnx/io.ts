/**
 * Model files: load (with external data files, validated) and save atomically, optionally moving
 * large tensors into an external data file as onnxruntime and onnxruntime-genai expect.
 */
import { type FileHandle, mkdir, open, readFile, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, isAbsolute, relative, resolve, sep } from "node:path";
import { IteraError } from "../errors.js";
import { tempPathFor, writeFileAtomic } from "../util/fs.js";
import { decodeModel, encodeModel } from "./codec.js";
import { DataType, elementCount, tensorByteSize, tensorRawBytes } from "./tensor.js";
import type { GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto } from "./types.js";

const EXTERNAL = 1;

/** Every TensorProto in the model: initializers, sparse initializers, attribute tensors, in all graphs. */
export function* allTensors(model: ModelProto): Generator<TensorProto> {
  const graphs: GraphProto[] = [];
  if (model.graph) graphs.push(model.graph);
  for (const ti of model.trainingInfo ?? []) {
    if (ti.initialization) graphs.push(ti.initialization);
    if (ti.algorithm) graphs.push(ti.algorithm);
  }
  function* fromNodes(nodes: NodeProto[]): Generator<TensorProto> {
    for (const n of nodes)
      for (const a of n.attribute) {
        if (a.t) yield a.t;
        if (a.tensors) yield* a.tensors;
        for (const sp of [a.sparseTensor, ...(a.sparseTensors ?? [])]) {
          if (sp?.values) yield sp.values;
          if (sp?.indices) yield sp.indices;
        }
        if (a.g) graphs.push(a.g);
        if (a.graphs) graphs.push(...a.graphs);
      }
  }
  for (const f of model.functions ?? []) yield* fromNodes(f.node);
  for (let i = 0; i < graphs.length; i++) {
    const g = graphs[i]!;
    yield* g.initializer;
    for (const s of g.sparseInitializer ?? []) {
      if (s.values) yield s.values;
      if (s.indices) yield s.indices;
    }
    yield* fromNodes(g.node);
  }
}

export interface ExternalRef {
  tensor: TensorProto;
  /** Absolute path of the data file. */
  file: string;
  offset: number;
  length: number;
}

function entry(list: StringStringEntryProto[] | undefined, key: string): string | undefined {
  return list?.find((e) => e.key === key)?.value;
}

/**
 * Where each external tensor's bytes are, checked against the files: the location must be a relative
 * path inside the model's folder, and offset + length must lie within the file and match the dims.
 */
export async function externalRefs(model: ModelProto, modelPath: string): Promise<ExternalRef[]> {
  const dir = dirname(resolve(modelPath));
  const refs: ExternalRef[] = [];
  const sizes = new Map<string, number>();
  for (const t of allTensors(model)) {
    if (t.dataLocation !== EXTERNAL) continue;
    const name = `tensor "${t.name ?? ""}"`;
    const fail = (what: string, fix: string): never => {
      throw new IteraError(`${name}: ${what}`, { where: modelPath, fix });
    };
    const location = entry(t.externalData, "location");
    if (!location) fail("external data without a location", "the model is corrupt: re-export it");
    const file = resolve(dir, location!);
    const rel = relative(dir, file);
    if (isAbsolute(location!) || rel.startsWith(`..${sep}`) || rel === "..")
      fail(
        `external data location "${location}" points outside the model's folder`,
        "external data files must sit beside the model file (relative paths only)",
      );
    let size = sizes.get(file);
    if (size === undefined) {
      try {
        size = (await stat(file)).size;
      } catch {
        fail(
          `its external data file ${location} is missing`,
          `copy ${location} next to ${basename(modelPath)} (it ships with the model)`,
        );
      }
      sizes.set(file, size!);
    }
    const offset = Number(entry(t.externalData, "offset") ?? "0");
    const expected = tensorByteSize(t);
    const length = Number(entry(t.externalData, "length") ?? String(size! - offset));
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0)
      fail(`invalid external data offset/length (${offset}/${length})`, "the model is corrupt: re-export it");
    if (offset + length > size!)
      fail(
        `external data [${offset}, ${offset + length}) runs past the end of ${location} (${size} bytes)`,
        `${location} is truncated or belongs to another model: copy it again`,
      );
    if (length !== expected)
      fail(
        `external data holds ${length} bytes but dims [${t.dims.join(", ")}] need ${expected}`,
        `${location} belongs to another version of the model: copy it again`,
      );
    refs.push({ tensor: t, file, offset, length });
  }
  return refs;
}

/** Read every external tensor's bytes into rawData, making the model self-contained in memory. */
async function loadExternal(refs: ExternalRef[]): Promise<void> {
  const byFile = new Map<string, ExternalRef[]>();
  for (const r of refs) byFile.set(r.file, [...(byFile.get(r.file) ?? []), r]);
  for (const [file, list] of byFile) {
    const fh = await open(file, "r");
    try {
      for (const r of list) {
        const bytes = new Uint8Array(r.length);
        const { bytesRead } = await fh.read(bytes, 0, r.length, r.offset);
        if (bytesRead !== r.length) throw new IteraError(`short read from ${file}`, { where: file });
        r.tensor.rawData = bytes;
        r.tensor.dataLocation = 0;
        r.tensor.externalData = [];
      }
    } finally {
      await fh.close();
    }
  }
}

export interface LoadOptions {
  /**
   * "load" (default): read external data into the tensors. "verify": only check that every external
   * tensor's file, offset and length are valid (cheap; tensor data stays unavailable).
   */
  externalData?: "load" | "verify";
}

/** The bytes of an .onnx file, with one clear error when it cannot be read. */
export async function readModelFile(path: string): Promise<Uint8Array> {
  try {
    return await readFile(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new IteraError(
      code === "ENOENT" ? "no such model file" : `cannot read the model file (${code ?? String(e)})`,
      { where: path, fix: "pass the path of an .onnx file or of a model folder", cause: e },
    );
  }
}

/**
 * Decode an .onnx file's bytes and resolve its external data relative to `path`
 * (for callers that also need the bytes, e.g. to hash them).
 */
export async function modelFromBytes(
  bytes: Uint8Array,
  path: string,
  opts: LoadOptions = {},
): Promise<ModelProto> {
  const model = decodeModel(bytes, path);
  const refs = await externalRefs(model, path);
  if ((opts.externalData ?? "load") === "load") await loadExternal(refs);
  return model;
}

/** Read and decode an .onnx file; external data is resolved relative to the file. */
export async function loadModel(path: string, opts: LoadOptions = {}): Promise<ModelProto> {
  return modelFromBytes(await readModelFile(path), path, opts);
}

export interface SaveOptions {
  /**
   * Move tensors of at least `threshold` bytes (default 1024; integer tensors of up to 64 elements
   * always stay inline) into one data file `location` beside
   * the model (default "<model file name>.data"), each starting at a multiple of `align` bytes
   * (default 4096, so that onnxruntime can memory-map them).
   */
  externalData?: { location?: string; threshold?: number; align?: number };
}

// The fields that hold (or locate) a tensor's data, saved and restored around an external-data save.
const DATA_FIELDS = [
  "rawData",
  "floatData",
  "int32Data",
  "int64Data",
  "doubleData",
  "uint64Data",
  "externalData",
  "dataLocation",
] as const;

function hasTypedData(t: TensorProto): boolean {
  return DATA_FIELDS.slice(1, 6).some((k) => ((t[k] as unknown[] | undefined)?.length ?? 0) > 0);
}

function isShapeLike(t: TensorProto): boolean {
  return (t.dataType === DataType.INT64 || t.dataType === DataType.INT32) && elementCount(t.dims) <= 64;
}

/** Remember a tensor's data fields (own properties only); the returned function puts them back. */
function snapshot(t: TensorProto): () => void {
  const fields = t as unknown as Record<string, unknown>;
  const kept = DATA_FIELDS.filter((k) => Object.hasOwn(t, k)).map((k) => [k, fields[k]] as const);
  return () => {
    for (const k of DATA_FIELDS) delete fields[k];
    for (const [k, v] of kept) fields[k] = v;
  };
}

async function writeAll(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.byteLength; )
    done += (await fh.write(bytes, done, bytes.byteLength - done)).bytesWritten;
}

/**
 * Encode and write a model atomically (temp file, then rename; the data file first). The model
 * object is left as it was. Tensors whose data is in an unloaded external file cannot be saved.
 */
export async function saveModel(path: string, model: ModelProto, opts: SaveOptions = {}): Promise<void> {
  for (const t of allTensors(model))
    if (t.dataLocation === EXTERNAL)
      throw new IteraError(`tensor "${t.name ?? ""}" still refers to external data that was not loaded`, {
        where: path,
        fix: "load the model with loadModel(path) (externalData: 'load') before saving it elsewhere",
      });
  if (!opts.externalData) return writeFileAtomic(path, encodeModel(model));

  const location = opts.externalData.location ?? `${basename(path)}.data`;
  if (isAbsolute(location) || location.includes("/") || location.includes("\\"))
    throw new IteraError(`external data location "${location}" must be a plain file name`, {
      fix: "the data file is written beside the model file",
    });
  const threshold = opts.externalData.threshold ?? 1024;
  const align = opts.externalData.align ?? 4096;
  // Tensors in raw_data, and tensors in the typed fields (float_data, ...), move alike; small integer
  // tensors stay inline: onnxruntime reads them (Reshape shapes, Slice starts) while inferring shapes,
  // and cannot do so from external data.
  const moved = [...allTensors(model)].filter(
    (t) =>
      !isShapeLike(t) && (t.rawData?.byteLength || (hasTypedData(t) ? tensorByteSize(t) : 0)) >= threshold,
  );

  const dataPath = resolve(dirname(path), location);
  await mkdir(dirname(dataPath), { recursive: true });
  const tmp = tempPathFor(dataPath);
  const saved = moved.map((t) => snapshot(t));
  const fh = await open(tmp, "w");
  try {
    let offset = 0;
    for (const t of moved) {
      const raw = t.rawData?.byteLength ? t.rawData : tensorRawBytes(t);
      const start = Math.ceil(offset / align) * align;
      if (start > offset) await writeAll(fh, new Uint8Array(start - offset));
      await writeAll(fh, raw);
      offset = start + raw.byteLength;
      for (const key of DATA_FIELDS) delete (t as unknown as Record<string, unknown>)[key];
      t.externalData = [
        { key: "location", value: location },
        { key: "offset", value: String(start) },
        { key: "length", value: String(raw.byteLength) },
      ];
      t.dataLocation = EXTERNAL;
    }
    await fh.close();
    const bytes = encodeModel(model);
    await rename(tmp, dataPath);
    await writeFileAtomic(path, bytes);
  } catch (e) {
    await fh.close().catch(() => {});
    await rm(tmp, { force: true });
    throw e;
  } finally {
    for (const restore of saved) restore();
  }
}
