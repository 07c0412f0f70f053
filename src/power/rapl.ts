import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { IteraError } from "../errors.js";
import {
  type CounterSample,
  emptyHealth,
  latestT,
  type Meter,
  type MeterHealth,
  nowMs,
  type Readings,
  waitFor,
} from "./meter.js";
import { startPoller } from "./poller.js";

/** One top-level RAPL package domain (intel-rapl:N; its sub-zones intel-rapl:N:M are inside it). */
interface RaplDomain {
  dir: string;
  name: string;
  rangeJ: number;
}

export const RAPL_ROOT = "/sys/class/powercap";

function readNumber(path: string): number {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EACCES" || code === "EPERM") {
      throw new IteraError("RAPL energy counters are not readable by this user", {
        where: path,
        fix: "sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj (resets at reboot), or run as root",
      });
    }
    throw new IteraError(`cannot read RAPL counter: ${(e as Error).message}`, { where: path });
  }
  const v = Number(text.trim());
  if (!Number.isFinite(v) || v < 0) {
    throw new IteraError(`RAPL counter is not a non-negative number: '${text.trim()}'`, { where: path });
  }
  return v;
}

/** The package domains under `root` (default /sys/class/powercap), or a clear error when there are none. */
export function findRaplDomains(root = RAPL_ROOT): RaplDomain[] {
  let entries: string[];
  try {
    entries = readdirSync(root);
  } catch {
    throw new IteraError("no RAPL power-capping interface on this system", {
      where: root,
      fix: "RAPL exists on Intel and AMD x86 CPUs with the intel_rapl driver (modprobe intel_rapl_common); elsewhere use --meter tdp, ina219 or pmic",
    });
  }
  const dirs = entries.filter((e) => /^intel-rapl:\d+$/.test(e)).sort();
  if (dirs.length === 0) {
    throw new IteraError("no RAPL package domain (intel-rapl:N) found", {
      where: root,
      fix: "load the intel_rapl_common driver, or use another meter (--meter tdp)",
    });
  }
  return dirs.map((d) => {
    const dir = join(root, d);
    let name = d;
    try {
      name = readFileSync(join(dir, "name"), "utf8").trim() || d;
    } catch {
      // the name file is informative only
    }
    return { dir, name, rangeJ: readNumber(join(dir, "max_energy_range_uj")) / 1e6 };
  });
}

/** RAPL package energy counters (µJ, wrapping at max_energy_range_uj), summed over packages. */
export class RaplMeter implements Meter {
  readonly name = "rapl" as const;
  readonly method = "rapl" as const;
  readonly nominalRateHz: number;
  readonly uncertainty =
    "RAPL package energy: CPU package (cores, uncore, and on some CPUs DRAM) as modelled/measured by the CPU itself; excludes the rest of the board, disks, fans and PSU losses; counters update about every 1 ms";
  private domains: RaplDomain[] = [];
  private samples: CounterSample[] = [];
  private stopPoller: (() => Promise<void>) | undefined;

  constructor(private readonly opts: { root?: string; rateHz?: number } = {}) {
    this.nominalRateHz = opts.rateHz ?? 10;
  }

  private read(): CounterSample {
    return { t_ms: nowMs(), joules: this.domains.map((d) => readNumber(join(d.dir, "energy_uj")) / 1e6) };
  }

  async start(): Promise<void> {
    this.domains = findRaplDomains(this.opts.root);
    this.samples = [this.read()]; // a permission problem surfaces here, before any work
    this.stopPoller = startPoller(1000 / this.nominalRateHz, () => {
      this.samples.push(this.read());
    });
  }

  async stop(): Promise<void> {
    await this.stopPoller?.();
    this.stopPoller = undefined;
  }

  readings(): Readings {
    return { kind: "counter", samples: this.samples, range_j: this.domains.map((d) => d.rangeJ) };
  }

  /** Names of the domains being summed, e.g. ["package-0"]. */
  domainNames(): string[] {
    return this.domains.map((d) => d.name);
  }

  health(): MeterHealth {
    return emptyHealth();
  }

  sync(t_ms: number, timeoutMs = 2000): Promise<boolean> {
    return waitFor(() => latestT(this.readings()) >= t_ms, timeoutMs);
  }
}
