import { execFile } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import si from "systeminformation";
import { startPoller } from "../power/poller.js";

const run = promisify(execFile);

/** Where the host's state is read (fake trees in tests). */
export interface SystemPaths {
  thermalRoot?: string;
  cpuRoot?: string;
  vcgencmd?: string;
}

/** Highest temperature over /sys/class/thermal/thermal_zone*, in °C; null when none is readable. */
export function readThermalZones(root = "/sys/class/thermal"): number | null {
  let zones: string[];
  try {
    zones = readdirSync(root).filter((z) => z.startsWith("thermal_zone"));
  } catch {
    return null;
  }
  let max: number | null = null;
  for (const z of zones) {
    try {
      const milli = Number(readFileSync(join(root, z, "temp"), "utf8").trim());
      if (Number.isFinite(milli)) max = Math.max(max ?? Number.NEGATIVE_INFINITY, milli / 1000);
    } catch {
      // a zone that cannot be read is skipped
    }
  }
  return max;
}

/** Sum of the x86 per-core thermal throttle counters; null where the kernel does not expose them. */
export function readThrottleCount(root = "/sys/devices/system/cpu"): number | null {
  let total: number | null = null;
  let cpus: string[];
  try {
    cpus = readdirSync(root).filter((c) => /^cpu\d+$/.test(c));
  } catch {
    return null;
  }
  for (const c of cpus) {
    try {
      const n = Number(readFileSync(join(root, c, "thermal_throttle", "core_throttle_count"), "utf8").trim());
      if (Number.isFinite(n)) total = (total ?? 0) + n;
    } catch {
      // not exposed for this CPU
    }
  }
  return total;
}

/**
 * `vcgencmd get_throttled` → throttled=0xN. Bits 0–3 are current conditions (under-voltage, frequency
 * capped, throttled, soft temperature limit); bits 16–19 the same since boot.
 */
export function parseThrottled(text: string): number | null {
  const m = /throttled=0x([0-9a-fA-F]+)/.exec(text);
  return m ? Number.parseInt(m[1]!, 16) : null;
}

async function piThrottledNow(vcgencmd: string): Promise<boolean | null> {
  try {
    const { stdout } = await run(vcgencmd, ["get_throttled"], { timeout: 2000 });
    const bits = parseThrottled(stdout);
    return bits === null ? null : (bits & 0xf) !== 0;
  } catch {
    return null;
  }
}

export interface ResourceFigures {
  cpu_pct: number;
  rss_mb: number;
  temp_c_max: number | null;
  throttled: boolean | null;
}

/**
 * Watch this process and the host while a test runs: CPU time of the process (100% = one core busy),
 * peak RSS, the highest temperature, and whether the CPU was throttled.
 */
export class ResourceMonitor {
  private cpu0 = process.cpuUsage();
  private t0 = performance.now();
  private rss = process.memoryUsage.rss();
  private temp: number | null = null;
  private throttled: boolean | null = null;
  private count0: number | null = null;
  /** Stop asking vcgencmd once it has failed: it is not there (not a Pi). */
  private vcgencmdWorks = true;
  private stopPoller: (() => Promise<void>) | undefined;

  constructor(private readonly paths: SystemPaths = {}) {}

  async start(): Promise<void> {
    this.cpu0 = process.cpuUsage();
    this.t0 = performance.now();
    this.count0 = readThrottleCount(this.paths.cpuRoot);
    this.stopPoller = startPoller(500, () => this.sample());
  }

  private async sample(): Promise<void> {
    this.rss = Math.max(this.rss, process.memoryUsage.rss());
    let t = readThermalZones(this.paths.thermalRoot);
    if (t === null && process.platform !== "linux") t = (await si.cpuTemperature()).max ?? null;
    if (t !== null) this.temp = Math.max(this.temp ?? t, t);
    if (!this.vcgencmdWorks) return;
    const pi = await piThrottledNow(this.paths.vcgencmd ?? "vcgencmd");
    if (pi === null) this.vcgencmdWorks = false;
    else this.throttled = (this.throttled ?? false) || pi;
  }

  async stop(): Promise<ResourceFigures> {
    await this.stopPoller?.();
    await this.sample();
    const used = process.cpuUsage(this.cpu0);
    const wallUs = (performance.now() - this.t0) * 1000;
    const count1 = readThrottleCount(this.paths.cpuRoot);
    if (this.count0 !== null && count1 !== null) {
      this.throttled = (this.throttled ?? false) || count1 > this.count0;
    }
    return {
      cpu_pct: wallUs > 0 ? (100 * (used.user + used.system)) / wallUs : 0,
      rss_mb: this.rss / (1024 * 1024),
      temp_c_max: this.temp,
      throttled: this.throttled,
    };
  }
}
