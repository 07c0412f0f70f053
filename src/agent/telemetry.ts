import { readFileSync } from "node:fs";
import { cpus } from "node:os";
import { readThermalZones, readThrottleCount } from "../bench/system.js";
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

/** Raspberry Pi firmware throttling flags (bit 2: currently throttled); null on other boards. */
export function readPiThrottled(
  path = "/sys/devices/platform/soc/soc:firmware/get_throttled",
): boolean | null {
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
  private throttleCount = readThrottleCount();
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

  /** Throttled now (Pi firmware flags) or since the last sample (x86 thermal throttle counters); null if unknown. */
  private throttled(): boolean | null {
    const pi = readPiThrottled();
    if (pi !== null) return pi;
    const count = readThrottleCount();
    const before = this.throttleCount;
    this.throttleCount = count;
    return count === null || before === null ? null : count > before;
  }

  sample(): Metrics {
    return {
      cpu_pct: round(this.cpu.sample(), 1),
      temp_c: readThermalZones(),
      rss_mb: round(process.memoryUsage().rss / 2 ** 20, 1),
      tok_s: this.recent ? round(this.recent.tok_s, 2) : null,
      mj_per_token: this.recent?.mj_per_token != null ? round(this.recent.mj_per_token, 3) : null,
      method: this.recent?.method ?? null,
      throttled: this.throttled(),
    };
  }
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
