import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { z } from "zod";
import { IteraError } from "../errors.js";
import {
  emptyHealth,
  latestT,
  type Meter,
  type MeterHealth,
  nowMs,
  type PowerSample,
  type Readings,
  waitFor,
} from "./meter.js";
import { startPoller } from "./poller.js";

const run = promisify(execFile);

/** One line of `vcgencmd pmic_read_adc`: ` VDD_CORE_A current(7)=0.75012000A` or `... volt(15)=0.89V`. */
const pmicLine = z
  .string()
  .regex(/^\s*([A-Z0-9_]+)_([AV])\s+(?:current|volt)\(\d+\)=([0-9.eE+-]+)[AV]\s*$/)
  .transform((l) => {
    const m = /^\s*([A-Z0-9_]+)_([AV])\s+\S+=([0-9.eE+-]+)[AV]\s*$/.exec(l)!;
    return { rail: m[1]!, unit: m[2] as "A" | "V", value: Number(m[3]) };
  })
  .refine((r) => Number.isFinite(r.value) && r.value >= 0, "not a non-negative number");

export interface PmicReading {
  /** Σ V×I over the rails that have both a voltage and a current, before correction. */
  rail_w: number;
  rails: { rail: string; volts: number; amps: number; watts: number }[];
  /** Lines that were neither a rail reading nor blank. */
  bad_lines: number;
}

/** Pair `<RAIL>_V` and `<RAIL>_A` lines by rail name (their ADC channel numbers do not correspond). */
export function parsePmicAdc(text: string): PmicReading {
  const volts = new Map<string, number>();
  const amps = new Map<string, number>();
  let bad = 0;
  for (const line of text.split(/\r?\n/)) {
    if (line.trim() === "") continue;
    const r = pmicLine.safeParse(line);
    if (!r.success) {
      bad++;
      continue;
    }
    (r.data.unit === "V" ? volts : amps).set(r.data.rail, r.data.value);
  }
  const rails = [...amps.entries()]
    .filter(([rail]) => volts.has(rail))
    .map(([rail, a]) => ({ rail, volts: volts.get(rail)!, amps: a, watts: volts.get(rail)! * a }));
  return { rail_w: rails.reduce((s, r) => s + r.watts, 0), rails, bad_lines: bad };
}

export interface PmicOptions {
  /** Linear correction P = scale × ΣV·I + offset_w (the PMIC misses 5 V loads and conversion losses). */
  scale?: number;
  offset_w?: number;
  /** The vcgencmd executable (a fake one on PATH in tests). */
  vcgencmd?: string;
  rateHz?: number;
}

/** Raspberry Pi 5 board power from the PMIC's ADCs, polled with `vcgencmd pmic_read_adc`. */
export class PmicMeter implements Meter {
  readonly name = "pmic" as const;
  readonly method = "pmic" as const;
  readonly nominalRateHz: number;
  readonly uncertainty: string;
  private samples: PowerSample[] = [];
  private stats = emptyHealth();
  private stopPoller: (() => Promise<void>) | undefined;

  constructor(private readonly opts: PmicOptions = {}) {
    this.nominalRateHz = opts.rateHz ?? 5;
    const corr =
      opts.scale !== undefined || opts.offset_w !== undefined
        ? `corrected as ${opts.scale ?? 1} × ΣV·I + ${opts.offset_w ?? 0} W; `
        : "uncorrected: reads low by roughly 10–20% plus ~0.5 W; ";
    this.uncertainty = `Pi 5 PMIC rail ADCs (Σ V×I over paired rails); ${corr}excludes USB/5 V peripherals and PSU losses; each reading costs a vcgencmd call (~10 ms)`;
  }

  /** One reading now; throws a clear error when vcgencmd is missing or says nothing usable. */
  async readOnce(): Promise<PowerSample> {
    const exe = this.opts.vcgencmd ?? "vcgencmd";
    let stdout: string;
    try {
      ({ stdout } = await run(exe, ["pmic_read_adc"], { timeout: 2000 }));
    } catch (e) {
      throw new IteraError(`'${exe} pmic_read_adc' failed: ${(e as Error).message.split("\n")[0]}`, {
        where: exe,
        fix: "the pmic meter needs a Raspberry Pi 5 with vcgencmd (package raspi-utils) and access to /dev/vcio (group video); otherwise use --meter ina219 or tdp",
      });
    }
    const r = parsePmicAdc(stdout);
    this.stats.bad_lines += r.bad_lines;
    if (r.rails.length === 0) {
      throw new IteraError("'vcgencmd pmic_read_adc' printed no paired rail readings (this is not a Pi 5?)", {
        where: exe,
        fix: "use --meter ina219 or tdp on this board",
      });
    }
    const watts = (this.opts.scale ?? 1) * r.rail_w + (this.opts.offset_w ?? 0);
    return { t_ms: nowMs(), watts };
  }

  async start(): Promise<void> {
    this.samples = [await this.readOnce()];
    this.stopPoller = startPoller(1000 / this.nominalRateHz, async () => {
      try {
        this.samples.push(await this.readOnce());
      } catch {
        this.stats.bad_lines++;
      }
    });
  }

  async stop(): Promise<void> {
    await this.stopPoller?.();
    this.stopPoller = undefined;
  }

  readings(): Readings {
    return { kind: "power", samples: this.samples };
  }

  health(): MeterHealth {
    return { ...this.stats };
  }

  sync(t_ms: number, timeoutMs = 3000): Promise<boolean> {
    return waitFor(() => latestT(this.readings()) >= t_ms, timeoutMs);
  }
}
