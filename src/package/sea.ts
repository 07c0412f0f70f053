import { chmod, copyFile, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { inject } from "postject";
import { IteraError } from "../errors.js";
import { execTracked } from "../util/interrupt.js";
import { hostNodeBinary, SEA_FUSE } from "./node-binary.js";
import { hostTarget, type Target, targetKey } from "./target.js";

/**
 * A Node single executable application: the preparation blob (main script + assets) is made by the
 * build host's Node 24 (`--experimental-sea-config`; the blob must come from the same Node version
 * as the binary it goes into) and injected into a copy of the target's Node binary with postject
 * (resource NODE_SEA_BLOB, flipping the fuse). The V8 code cache is host-specific, so it is only
 * used when the target is the build host.
 */
// Killed on SIGINT/SIGTERM, so the blob is never written after the build's work folder is removed.
const run = execTracked;

export interface SeaInput {
  target: Target;
  /** The bundled CommonJS agent. */
  script: string;
  /** SEA asset key -> file holding the stored bytes. */
  assets: Record<string, string>;
  /** The Node binary of the target (copied, never modified). */
  nodeBinary: string;
  out: string;
  workDir: string;
  /** Node/V8 options the executable always starts with (sea-config `execArgv`, Node >= 24). */
  execArgv?: string[];
}

/**
 * V8 heap limits for a device with this much memory, or none where memory does not matter (V8's
 * defaults collect less often). On a 512 MB Pi Zero 2 W the young generation's default semi-spaces
 * (up to 16 MB each) and an old space sized for the build of V8, not the board, are what made the
 * agent's heap grow during `bench` (docs/packaging.md, "Memory and start-up": 166 -> 150 MB peak
 * on the same run, speed unchanged). The old space gets a quarter of the device's memory.
 */
export function v8HeapFlags(memoryMb: number): string[] {
  if (memoryMb > 2048) return [];
  return [`--max-old-space-size=${Math.max(64, Math.floor(memoryMb / 4))}`, "--max-semi-space-size=1"];
}

export async function makeSeaExecutable(input: SeaInput): Promise<{ blobBytes: number }> {
  const blob = join(input.workDir, "sea-prep.blob");
  const config = join(input.workDir, "sea-config.json");
  const sameAsHost = targetKey(input.target) === hostTarget().key;
  await writeFile(
    config,
    JSON.stringify({
      main: input.script,
      output: blob,
      disableExperimentalSEAWarning: true,
      useSnapshot: false,
      useCodeCache: sameAsHost,
      assets: input.assets,
      ...(input.execArgv?.length ? { execArgv: input.execArgv } : {}),
    }),
  );
  const node = await hostNodeBinary();
  try {
    await run(node, ["--experimental-sea-config", config], { cwd: input.workDir, maxBuffer: 16 << 20 });
  } catch (e) {
    throw new IteraError("Node could not make the single-executable blob", {
      where: config,
      fix: `see the output: ${(e as { stderr?: string }).stderr ?? (e as Error).message}`,
    });
  }
  await copyFile(input.nodeBinary, input.out);
  await chmod(input.out, 0o755);
  const data = await readFile(blob);
  // postject's LIEF prints harmless notes about ELF .note sections through console.warn; keep the rest.
  const warn = console.warn;
  console.warn = (...args: unknown[]) => {
    if (!/Can't find string offset for section name/.test(String(args[0]))) warn(...args);
  };
  try {
    await inject(input.out, "NODE_SEA_BLOB", data, { sentinelFuse: SEA_FUSE });
  } finally {
    console.warn = warn;
  }
  return { blobBytes: data.length };
}
