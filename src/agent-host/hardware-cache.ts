import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as z from "zod";
import { type Hardware, hardwareSchema } from "../profile/hardware.js";
import { writeFileAtomic } from "../util/fs.js";
import { parseJsonWith } from "./embedded.js";
import { writableRoot } from "./extract.js";

/**
 * The agent's hardware facts, detected once per boot. Detecting them (src/profile/detect.ts) loads
 * systeminformation and runs lscpu and dmidecode: on a warm `itera-agent info` that was about 90 ms
 * and 1 MB of heap (docs/packaging.md, "Memory and start-up"), for facts that do not change while
 * the machine runs. So the first detection of a boot is kept in the agent's cache folder
 * (src/agent-host/extract.ts) under the kernel's boot id, which changes at every boot; where there is
 * no boot id (not Linux) or no cache folder, every call detects.
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
  const bootId = attempt(() => readFileSync(BOOT_ID, "utf8").trim());
  const path = attempt(() => join(writableRoot(), FILE));
  if (bootId && path) {
    // none yet, or not a cache of this schema: detect (and write it again)
    const cached = attempt(() => parseJsonWith(cacheSchema, readFileSync(path), (d) => new Error(d)));
    if (cached?.boot_id === bootId) return { hardware: cached.hardware, source: "cached" };
  }
  const { detectHardware } = await import("../profile/detect.js");
  const hardware = await detectHardware();
  if (bootId && path) {
    // A cache that cannot be written costs the next call a detection, nothing else.
    await writeFileAtomic(path, `${JSON.stringify({ boot_id: bootId, hardware })}\n`).catch(() => undefined);
  }
  return { hardware, source: "detected" };
}

/** What `f` gives, or undefined where it throws (a missing file, no writable folder). */
function attempt<T>(f: () => T): T | undefined {
  try {
    return f();
  } catch {
    return undefined;
  }
}
