import { lstat, open, readlink } from "node:fs/promises";
import { isAbsolute, join } from "node:path";

/** The architecture of an ELF executable, from its header (e_ident class/data and e_machine). */
export interface ElfArch {
  bits: 32 | 64;
  machine: string;
  /** The manifest's arch, when itera builds for it. */
  arch: "arm64" | "x64" | undefined;
}

const MACHINES: Record<number, string> = { 3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64" };

export async function readElfArch(path: string): Promise<ElfArch | undefined> {
  const fh = await open(path, "r");
  try {
    const h = Buffer.alloc(20);
    const { bytesRead } = await fh.read(h, 0, 20, 0);
    if (bytesRead < 20 || h.readUInt32BE(0) !== 0x7f454c46) return undefined;
    const bits = h[4] === 2 ? 64 : 32;
    const code = h[5] === 2 ? h.readUInt16BE(18) : h.readUInt16LE(18);
    const machine = MACHINES[code] ?? `elf-machine-0x${code.toString(16)}`;
    const arch = bits === 64 && code === 0xb7 ? "arm64" : bits === 64 && code === 0x3e ? "x64" : undefined;
    return { bits, machine, arch };
  } finally {
    await fh.close();
  }
}

/**
 * Resolve a path inside a mounted root file system the way the device would: absolute symlink
 * targets (such as /bin -> usr/bin, or /usr/bin/sh -> /bin/dash) are relative to the root, not to
 * this machine. Returns the host path, or undefined when it does not exist.
 */
export async function resolveInRoot(root: string, path: string): Promise<string | undefined> {
  let pending = path.split("/").filter(Boolean);
  let resolved: string[] = [];
  for (let hops = 0; pending.length > 0; ) {
    const part = pending.shift()!;
    if (part === ".") continue;
    if (part === "..") {
      resolved.pop();
      continue;
    }
    const host = join(root, ...resolved, part);
    const s = await lstat(host).catch(() => undefined);
    if (!s) return undefined;
    if (s.isSymbolicLink()) {
      if (++hops > 40) return undefined;
      const target = await readlink(host);
      if (isAbsolute(target)) resolved = [];
      pending = [...target.split("/").filter(Boolean), ...pending];
    } else resolved.push(part);
  }
  return join(root, ...resolved);
}
