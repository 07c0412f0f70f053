import { readdirSync, readFileSync } from "node:fs";
import { cpus } from "node:os";
import type { BenchResult, TelemetryPayload } from "../protocol/schemas.js";

type Metrics = TelemetryPayload["m"];

/** CPU utilisation since the previous call, from the kernel's per-core time counters. */
export class CpuSampler {
  private last = totals();
  sample(): number {
    const now = totals();
    const busy = now.busy - this.last.busy;
    const all = now.all - this.last.all;
    this.last = now;
    return all > 0 ? Math.min(100, Math.max(0, (100 * busy) / all)) : 0;
  }
}

function totals(): { busy: number; all: number } {
  let busy = 0;
  let all = 0;
  for (const c of cpus()) {
    const t = c.times;
    const sum = t.user + t.nice + t.sys + t.idle + t.irq;
    all += sum;
    busy += sum - t.idle;
  }
  return { busy, all };
}

/** Highest thermal-zone temperature (Linux sysfs, millidegrees); null where the OS exposes none. */
export function readTemperatureC(root = "/sys/class/thermal"): number | null {
  let max: number | null = null;
  let zones: string[];
  try {
    zones = readdirSync(root).filter((z) => z.startsWith("thermal_zone"));
  } catch {
    return null;
  }
  for (const z of zones) {
    try {
      const milli = Number.parseInt(readFileSync(`${root}/${z}/temp`, "utf8").trim(), 10);
      if (Number.isFinite(milli)) max = Math.max(max ?? -Infinity, milli / 1000);
    } catch {
      // a zone that cannot be read (permissions, sensor asleep) is skipped
    }
  }
  return max;
}

/** Raspberry Pi firmware throttling flags (bit 2: currently throttled); null on other boards. */
export function readThrottled(path = "/sys/devices/platform/soc/soc:firmware/get_throttled"): boolean | null {
  try {
    const flags = Number.parseInt(readFileSync(path, "utf8").trim(), 16);
    return Number.isFinite(flags) ? (flags & 0x4) !== 0 : null;
  } catch {
    return null;
  }
}

/**
 * The agent's live metrics: CPU, temperature, memory, and the throughput and energy of its most
 * recent generation run (tokens/s and mJ/token with the method that measured them).
 */
export class TelemetrySampler {
  private readonly cpu = new CpuSampler();
  private recent: { tok_s: number; mj_per_token: number | null; method: string | null } | undefined;

  /** Remember the latest generation figures from benchmark results (the last `tg` test wins). */
  noteResults(results: BenchResult[]): void {
    const gen = results.filter((r) => r.test.startsWith("tg"));
    const last = gen.at(-1) ?? results.at(-1);
    if (!last) return;
    this.recent = {
      tok_s: last.tokens_per_s.mean,
      mj_per_token: last.energy?.mJ_per_token ?? null,
      method: last.energy?.method ?? null,
    };
  }

  sample(): Metrics {
    return {
      cpu_pct: round(this.cpu.sample(), 1),
      temp_c: readTemperatureC(),
      rss_mb: round(process.memoryUsage().rss / 2 ** 20, 1),
      tok_s: this.recent ? round(this.recent.tok_s, 2) : null,
      mj_per_token: this.recent?.mj_per_token != null ? round(this.recent.mj_per_token, 3) : null,
      method: this.recent?.method ?? null,
      throttled: readThrottled(),
    };
  }
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
