import { availableParallelism } from "node:os";
import { IteraError } from "../errors.js";
import type { DeviceProfile } from "../profile/schema.js";
import {
  type CounterSample,
  emptyHealth,
  latestT,
  type Meter,
  type MeterHealth,
  nowMs,
  waitFor,
} from "./meter.js";
import { startPoller } from "./poller.js";
import { type CpuTimes, readCpuTimes, utilisation } from "./proc-stat.js";

export type PowerCurve = "linear" | "cubic";

/**
 * DESIGN.md §6: P = idle_w + (tdp_w − idle_w) × f(u). Linear is CodeCarbon's cpu_load model; cubic
 * follows dynamic power ∝ f·V² when the governor scales frequency (and voltage) with load.
 */
export function tdpPower(u: number, p: { idle_w: number; tdp_w: number; curve: PowerCurve }): number {
  const f = p.curve === "cubic" ? u ** 3 : u;
  return p.idle_w + (p.tdp_w - p.idle_w) * f;
}

export interface TdpOptions {
  idle_w: number;
  tdp_w: number;
  curve: PowerCurve;
  /** Sampling rate of /proc/stat; at least 10 Hz. */
  rateHz?: number;
  /** Root of the proc filesystem (a fake tree in tests). */
  procRoot?: string;
  /**
   * Whose utilisation: the whole system (/proc/stat; right on a device that runs only the model) or
   * this process's CPU time over all cores (CodeCarbon's process mode; for shared machines).
   */
  scope?: "system" | "process";
}

/** CPU time of this process against wall time × cores, in the same busy/total form as /proc/stat. */
function processTimes(): CpuTimes {
  const u = process.cpuUsage();
  return { busy: u.user + u.system, total: performance.now() * 1000 * availableParallelism() };
}

/** The power figures of a profile, or a clear error when it has none usable. */
export function tdpOptionsFromProfile(profile: DeviceProfile, where = `profile ${profile.name}`): TdpOptions {
  const p = profile.power;
  if (!(p.tdp_w > 0)) {
    throw new IteraError(`profile '${profile.name}' has no TDP figure (power.tdp_w = ${p.tdp_w})`, {
      where,
      fix: "set power.tdp_w and power.idle_w (watts, with their sources) in the profile, or use a real meter",
    });
  }
  return { idle_w: p.idle_w, tdp_w: p.tdp_w, curve: p.curve };
}

/**
 * The TDP estimate as an energy counter: every tick the utilisation over the last interval gives the
 * average power of that interval, and its energy is added. Integrating the counter over a window is then
 * exact with respect to the model (no trapezoid error on a piecewise-constant power).
 */
export class TdpMeter implements Meter {
  readonly name = "tdp" as const;
  readonly method = "tdp-estimate" as const;
  readonly nominalRateHz: number;
  readonly uncertainty: string;
  private samples: CounterSample[] = [];
  private stopPoller: (() => Promise<void>) | undefined;
  private last: { t: number; cpu: CpuTimes; joules: number } | undefined;

  constructor(private readonly opts: TdpOptions) {
    this.nominalRateHz = Math.max(10, opts.rateHz ?? 10);
    this.uncertainty =
      `model estimate, not a measurement: P = ${opts.idle_w} + (${opts.tdp_w} − ${opts.idle_w}) × ` +
      `${opts.curve === "cubic" ? "u³" : "u"} W with u ` +
      (opts.scope === "process"
        ? "this process's CPU time over all cores (other processes not counted); "
        : "the whole-system CPU utilisation from /proc/stat (other processes' load included); ") +
      "ignores memory, I/O and board losses; error easily ±30%";
  }

  async start(): Promise<void> {
    const cpu = this.readLoad(); // fails now, clearly, when /proc/stat is missing
    this.last = { t: nowMs(), cpu, joules: 0 };
    this.samples = [{ t_ms: this.last.t, joules: [0] }];
    this.stopPoller = startPoller(1000 / this.nominalRateHz, () => this.tick());
  }

  private tick(): void {
    const prev = this.last!;
    const cpu = this.readLoad();
    const t = nowMs();
    const watts = tdpPower(utilisation(prev.cpu, cpu), this.opts);
    const joules = prev.joules + (watts * (t - prev.t)) / 1000;
    this.last = { t, cpu, joules };
    this.samples.push({ t_ms: t, joules: [joules] });
  }

  private readLoad(): CpuTimes {
    return this.opts.scope === "process" ? processTimes() : readCpuTimes(this.opts.procRoot);
  }

  async stop(): Promise<void> {
    await this.stopPoller?.();
    this.stopPoller = undefined;
  }

  readings() {
    return { kind: "counter" as const, samples: this.samples, range_j: [Number.POSITIVE_INFINITY] };
  }

  health(): MeterHealth {
    return emptyHealth();
  }

  sync(t_ms: number, timeoutMs = 2000): Promise<boolean> {
    return waitFor(() => latestT(this.readings()) >= t_ms, timeoutMs);
  }
}
