import { createReadStream } from "node:fs";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { sha256 as sha256OfBytes } from "@noble/hashes/sha2.js";
import { bytesToHex, utf8ToBytes } from "@noble/hashes/utils.js";
import { removeOnInterrupt } from "./interrupt.js";

/** A sibling temp path: same directory, so that rename() is atomic. */
export function tempPathFor(path: string): string {
  return join(
    dirname(path),
    `.${basename(path)}.${process.pid}.${nodeCrypto().randomBytes(4).toString("hex")}.tmp`,
  );
}

/** Write a file so that readers see either the old content or the whole new content, never a half. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = tempPathFor(path);
  const release = removeOnInterrupt(tmp);
  try {
    await writeFile(tmp, data);
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  } finally {
    release();
  }
}

// Folders: writeDirAtomic in ./output.ts, which also checks what it may replace.

/**
 * node:crypto, loaded on first use: OpenSSL's bindings and the streams Node builds them on cost a
 * start about 9 ms and 3 MB, and the agent's warm start hashes only a few small files (below).
 */
export const nodeCrypto = () => process.getBuiltinModule("node:crypto");

/** Up to this many bytes sha256() hashes in JavaScript; OpenSSL is many times faster on more. */
const SMALL_HASH_BYTES = 256 * 1024;

export async function sha256File(path: string): Promise<string> {
  const hash = nodeCrypto().createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Hex sha256: small inputs with @noble/hashes (no node:crypto at start), large ones with OpenSSL. */
export function sha256(data: string | Uint8Array): string {
  const bytes = typeof data === "string" ? utf8ToBytes(data) : data;
  if (bytes.length <= SMALL_HASH_BYTES) return bytesToHex(sha256OfBytes(bytes));
  return nodeCrypto().createHash("sha256").update(bytes).digest("hex");
}
