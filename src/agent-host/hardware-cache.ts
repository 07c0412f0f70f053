import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as z from "zod";
import type { Hardware } from "../profile/hardware.js";
import { hardwareSchema } from "../profile/hardware.js";
import { writeFileAtomic } from "../util/fs.js";
import { writableRoot } from "./extract.js";

/**
 * The agent's hardware facts, detected once per boot. Detecting them (src/profile/detect.ts) loads
 * systeminformation and runs lscpu and dmidecode: on a warm `itera-agent info` that was about 10 MB
 * of its peak memory and 150 ms (docs/packaging.md, "Memory and start-up"), for facts that do not
 * change while the machine runs. So the first detection of a boot is kept in the agent's cache
 * folder (src/agent-host/extract.ts) under the kernel's boot id, which changes at every boot; where
 * there is no boot id (not Linux) or no cache, every call detects.
 */
const BOOT_ID = "/proc/sys/kernel/random/boot_id";
const FILE = ".hardware.json"; // a dot file, as the cache record of extract.ts: beside the extraction folders

const cacheSchema = z.object({ boot_id: z.string(), hardware: hardwareSchema });

export interface BootHardware {
  hardware: Hardware;
  /** "detected" in this call, or "cached": detected earlier in this boot. */
  source: "detected" | "cached";
}

export async function hardwareOfThisBoot(): Promise<BootHardware> {
  const bootId = read(BOOT_ID)?.trim();
  let path: string | undefined;
  try {
    path = join(writableRoot(), FILE);
  } catch {
    // no writable cache folder: detect every time
  }
  if (bootId && path) {
    const cached = cacheSchema.safeParse(parseJson(read(path)));
    if (cached.success && cached.data.boot_id === bootId)
      return { hardware: cached.data.hardware, source: "cached" };
  }
  const { detectHardware } = await import("../profile/detect.js");
  const hardware = await detectHardware();
  if (bootId && path) {
    // A cache that cannot be written costs the next call a detection, nothing else.
    await writeFileAtomic(path, `${JSON.stringify({ boot_id: bootId, hardware })}\n`).catch(() => undefined);
  }
  return { hardware, source: "detected" };
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

function parseJson(text: string | undefined): unknown {
  try {
    return text === undefined ? undefined : JSON.parse(text);
  } catch {
    return undefined;
  }
}
