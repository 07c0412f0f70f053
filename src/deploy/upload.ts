import { createReadStream } from "node:fs";
import { posix } from "node:path";
import { IteraError } from "../errors.js";
import { appendArgv, RESET } from "./remote-scripts.js";
import { type SshSession, sshError } from "./ssh.js";

export interface UploadFile {
  name: string;
  bytes: number;
  localPath: string;
}

export interface UploadResult {
  /** Bytes sent in this run. */
  bytesSent: number;
  /** Bytes already on the device from an earlier, interrupted run (not sent again). */
  bytesResumed: number;
}

/**
 * Default upload chunk. Each chunk is one ssh exec (~40 ms over the shared connection, and a fresh
 * channel window), so small chunks are slow (bench/flash.ts); an interruption loses nothing either way,
 * because whatever reached the device stays and the next run resumes from the staged size.
 */
export const DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024;

/**
 * Send files into the device's staging folder so that an interrupted copy resumes where it stopped.
 * Each file is appended in chunks (`cat >> file` over the shared ssh connection); a chunk counts as
 * sent only when the device's `cat` exited 0. The next run asks the device for the staged sizes and
 * sends only the missing tail of each file (bytes on the device are a prefix of the file, because the
 * stream is ordered); a staged file longer than expected is sent again. The hashes are checked
 * afterwards on the device, so a bad prefix is caught there and re-sent.
 */
export async function uploadResumable(
  session: SshSession,
  staging: string,
  files: UploadFile[],
  staged: Map<string, number>,
  opts: {
    chunkBytes?: number;
    signal?: AbortSignal;
    onProgress?: (sent: number, total: number) => void;
  } = {},
): Promise<UploadResult> {
  const chunk = opts.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  const tooLong = files.filter((f) => (staged.get(f.name) ?? 0) > f.bytes).map((f) => f.name);
  if (tooLong.length > 0) {
    const r = await session.script(RESET, [staging, ...tooLong]);
    if (r.code !== 0) throw new IteraError(`cannot reset staged files on the device: ${r.stderr.trim()}`);
    for (const name of tooLong) staged.set(name, 0);
  }
  const bytesResumed = files.reduce((n, f) => n + (staged.get(f.name) ?? 0), 0);
  const toSend = files.reduce((n, f) => n + f.bytes, 0) - bytesResumed;
  let bytesSent = 0;
  opts.onProgress?.(0, toSend);
  for (const f of files) {
    let offset = staged.get(f.name) ?? 0;
    const remotePath = posix.join(staging, f.name);
    // An empty file still has to exist on the device.
    if (f.bytes === 0 && !staged.has(f.name)) {
      const r = await session.exec(appendArgv(remotePath), { stdin: "" });
      if (r.code !== 0) throw uploadError(session, r, f.name);
    }
    while (offset < f.bytes) {
      opts.signal?.throwIfAborted();
      const end = Math.min(f.bytes, offset + chunk);
      const stream = createReadStream(f.localPath, { start: offset, end: end - 1 });
      const before = bytesSent;
      stream.on("data", (d) => {
        bytesSent += (d as Buffer).length;
        opts.onProgress?.(bytesSent, toSend);
      });
      const r = await session.exec(appendArgv(remotePath), {
        stdin: stream,
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      if (r.code !== 0) throw uploadError(session, r, f.name);
      bytesSent = before + (end - offset);
      offset = end;
    }
  }
  return { bytesSent, bytesResumed };
}

function uploadError(session: SshSession, r: { code: number; stderr: string }, name: string): IteraError {
  if (r.code === 255) return sshError(r.stderr, session.target);
  const full = /No space left/i.test(r.stderr);
  return new IteraError(`copying ${name} to the device failed: ${r.stderr.trim() || `exit ${r.code}`}`, {
    where: session.target.destination,
    fix: full
      ? "free space on the device; run the same flash again to resume the copy"
      : "run the same flash again: the copy resumes where it stopped",
  });
}
