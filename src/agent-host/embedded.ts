import { createRequire } from "node:module";
import type { z } from "zod";
import { IteraError } from "../errors.js";
import { sha256 } from "../util/fs.js";
import {
  BUNDLE_INDEX_ASSET,
  bundleIndexSchema,
  type RuntimeIndex,
  type StoredAsset,
} from "./bundle-index.js";

/**
 * The assets embedded in a bundle's executable (Node single executable application). `bundle.json`
 * is read first and is the root of trust; every other asset is checked against it when it is read
 * from the executable (`assetContent`): its stored bytes and its decoded content, each by sha256. A
 * changed byte in an asset that is read stops the agent (exit 3). The model and native files are read
 * only when they are extracted (src/agent-host/extract.ts), so a warm start hashes none of them: the
 * whole executable's sha256 is what `itera verify`, install.sh and `itera flash` check.
 * Outside a bundle (dev mode) `inBundle()` is false and nothing here is used.
 */
interface SeaApi {
  isSea(): boolean;
  getRawAsset(key: string): ArrayBuffer | string;
}

let seaApi: SeaApi | null | undefined;

function sea(): SeaApi | null {
  if (seaApi === undefined) {
    try {
      // Loaded lazily: `node:sea` exists only in Node >= 20 and is meaningful only inside a SEA.
      seaApi = createRequire(process.execPath)("node:sea") as SeaApi;
    } catch {
      seaApi = null;
    }
  }
  return seaApi;
}

/** True when running as the bundle's single executable. */
export function inBundle(): boolean {
  return sea()?.isSea() ?? false;
}

function rawAsset(key: string): Buffer {
  const api = sea();
  if (!api?.isSea()) throw new Error(`not a single executable: no asset ${key}`);
  let raw: ArrayBuffer | string;
  try {
    raw = api.getRawAsset(key);
  } catch (e) {
    throw new IteraError(`the executable has no embedded asset '${key}'`, {
      where: process.execPath,
      fix: "the executable is damaged or not built by `itera build`; install the bundle again",
      cause: e,
    });
  }
  // getRawAsset returns a view on the executable's own memory: no copy.
  return typeof raw === "string" ? Buffer.from(raw) : Buffer.from(raw);
}

let index: RuntimeIndex | undefined;
let indexSha256: string | undefined;

/** The runtime's index (`bundle.json`, parsed and validated; once per process). Hashes no other asset. */
export function bundleIndex(): RuntimeIndex {
  if (index) return index;
  const raw = rawAsset(BUNDLE_INDEX_ASSET);
  index = parseJsonWith(bundleIndexSchema, raw, (detail) => tampered(BUNDLE_INDEX_ASSET, detail));
  indexSha256 = sha256(raw);
  return index;
}

/** sha256 of the embedded bundle.json: the release manifest beside the executable must name it. */
export function bundleIndexSha256(): string {
  bundleIndex();
  return indexSha256!;
}

/**
 * The content of an embedded asset (decompressed): its stored bytes checked against their sha256
 * (hashed in place, on a view of the executable's memory) and the decoded content against its own.
 */
export function assetContent(key: string): Buffer {
  const entry = bundleIndex().assets[key];
  if (!entry) {
    throw new IteraError(`the bundle has no asset '${key}'`, {
      where: process.execPath,
      fix: "rebuild the bundle with `itera build`",
    });
  }
  const stored = rawAsset(key);
  const got = sha256(stored);
  if (stored.length !== entry.stored_bytes || got !== entry.stored_sha256) {
    throw tampered(key, `sha256 ${got}, expected ${entry.stored_sha256}`);
  }
  return decodeAsset(key, stored, entry);
}

/** Decode stored asset bytes and check the result's sha256 (exported for the builder's self-check). */
export function decodeAsset(key: string, stored: Buffer, entry: StoredAsset): Buffer {
  // node:zlib on first use: only an extraction (a cold start) decodes assets. One output buffer of
  // the known size (+1: zlib asks for another when the last one fills): in its default 16 KB chunks
  // onnxruntime's 46 MB library took 2,800 buffers and a copy into one (+130 ms, twice the memory).
  let content = stored;
  if (entry.encoding === "br") {
    try {
      content = process.getBuiltinModule("node:zlib").brotliDecompressSync(stored, {
        chunkSize: entry.bytes + 1,
        maxOutputLength: entry.bytes + 1, // a damaged asset fails here, not after filling memory
      });
    } catch (e) {
      throw tampered(key, `does not decode (${(e as Error).message})`);
    }
  }
  const got = sha256(content);
  if (content.length !== entry.bytes || got !== entry.sha256) {
    throw tampered(key, `decoded sha256 ${got}, expected ${entry.sha256}`);
  }
  return content;
}

/** Parse and validate JSON bytes; `fail` makes the error for "not JSON" or the first invalid field. */
export function parseJsonWith<T>(schema: z.ZodType<T>, raw: Buffer, fail: (detail: string) => Error): T {
  let json: unknown;
  try {
    json = JSON.parse(raw.toString("utf8"));
  } catch (e) {
    throw fail(`not JSON (${(e as Error).message})`);
  }
  const r = schema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw fail(`field '${issue.path.map(String).join(".")}': ${issue.message}`);
  }
  return r.data;
}

function tampered(key: string, detail: string): IteraError {
  return new IteraError(`embedded asset '${key}' does not match the bundle: ${detail}`, {
    where: process.execPath,
    fix: "the executable was changed or damaged after it was built; install the signed bundle again (`itera verify` checks it)",
    exitCode: 3,
  });
}
