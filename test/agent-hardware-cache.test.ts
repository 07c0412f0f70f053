import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hardwareOfThisBoot } from "../src/agent-host/hardware-cache.js";
import { tempDir } from "./temp-dir.js";

/**
 * The agent's hardware facts are detected once per boot (src/agent-host/hardware-cache.ts): kept in
 * the agent's cache folder under the kernel's boot id, re-detected for another boot id or a file
 * that is not a valid cache.
 */
const bootId = (await readFile("/proc/sys/kernel/random/boot_id", "utf8")).trim();
let cache: string;
const saved = process.env.ITERA_AGENT_CACHE;

beforeAll(async () => {
  cache = await tempDir("itera-hw-cache-");
  process.env.ITERA_AGENT_CACHE = cache;
});
afterAll(() => {
  if (saved === undefined) delete process.env.ITERA_AGENT_CACHE;
  else process.env.ITERA_AGENT_CACHE = saved;
});

const file = () => join(cache, ".hardware.json");
const stored = async () =>
  JSON.parse(await readFile(file(), "utf8")) as { boot_id: string; hardware: { cpu: { brand: string } } };

describe("hardware facts per boot", () => {
  it("detects on the first call, keeps the facts under this boot's id, and answers from them after", async () => {
    const first = await hardwareOfThisBoot();
    expect(first.source).toBe("detected");
    expect(first.hardware.cpu.cores).toBeGreaterThan(0);
    expect(await stored()).toEqual({ boot_id: bootId, hardware: first.hardware });
    // Planted facts of this boot are what the next call answers: it did not detect again.
    const planted = {
      boot_id: bootId,
      hardware: { ...first.hardware, cpu: { ...first.hardware.cpu, brand: "planted" } },
    };
    await writeFile(file(), JSON.stringify(planted));
    const second = await hardwareOfThisBoot();
    expect(second.source).toBe("cached");
    expect(second.hardware.cpu.brand).toBe("planted");
  });

  it("detects again after a reboot (another boot id) and for a file that is not a cache of this schema", async () => {
    const { hardware } = await hardwareOfThisBoot();
    for (const content of [
      JSON.stringify({ boot_id: "an-earlier-boot", hardware }),
      "{ not json",
      JSON.stringify({ boot_id: bootId, hardware: { ...hardware, memory_mb: "lots" } }),
    ]) {
      await writeFile(file(), content);
      const again = await hardwareOfThisBoot();
      expect(again.source).toBe("detected");
      expect((await stored()).boot_id).toBe(bootId);
      expect((await stored()).hardware.cpu.brand).not.toBe("planted");
    }
  });
});
