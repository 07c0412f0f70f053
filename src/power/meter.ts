import type { MeterName } from "../profile/schema.js";

/** How a real meter obtains a figure (DESIGN.md §6). */
export type MeasuredMethod = "ina219" | "pmic" | "rapl" | "tdp-estimate";
/**
 * How a figure was obtained; carried by every energy figure. `<method>-simulated`: the meter read a
 * simulator (e.g. tools/ina219-sim on a pty), never this device's power.
 */
export type EnergyMethod = MeasuredMethod | `${MeasuredMethod}-simulated`;

/** An instantaneous power reading; `t_ms` is on the host's monotonic clock (performance.now()). */
export interface PowerSample {
  t_ms: number;
  watts: number;
}

/** A cumulative energy reading: one value per counter (e.g. one per RAPL package), each in joules. */
export interface CounterSample {
  t_ms: number;
  joules: number[];
}

/** What a meter has recorded so far: power samples, or energy counters that may wrap at `range_j`. */
export type Readings =
  | { kind: "power"; samples: readonly PowerSample[] }
  | { kind: "counter"; samples: readonly CounterSample[]; range_j: number[] };

/** Data-quality counters a meter keeps while it runs; reported beside every figure. */
export interface MeterHealth {
  /** Lines (or command outputs) that failed validation and were skipped. */
  bad_lines: number;
  /** Samples missing in the sensor's own sequence numbering. */
  gaps: number;
  /** Lines whose checksum did not match; dropped. */
  bad_checksums: number;
  /** Samples the sensor flagged as overflowed (INA219 OVF); dropped. */
  overflows: number;
  /** Set when the meter stopped delivering before it was stopped (e.g. the serial port closed). */
  lost?: { at_ms: number; reason: string };
}

/**
 * One power meter. Start it once, run the workload, and ask for the readings of any window
 * with `integrateWindow` (src/power/integrate.ts); `sync()` waits until the meter has a reading at or
 * after a given time so that a window's right edge is covered.
 */
export interface Meter {
  readonly name: MeterName;
  readonly method: EnergyMethod;
  /** Nominal sampling rate; the measured rate is reported per window. */
  readonly nominalRateHz: number;
  /** What the figures from this meter can and cannot claim. */
  readonly uncertainty: string;
  /** True when the readings come from a simulator (the agent was told so; never guessed from data). */
  readonly simulated?: boolean;
  start(): Promise<void>;
  stop(): Promise<void>;
  readings(): Readings;
  health(): MeterHealth;
  /** Resolve once a reading at or after `t_ms` exists (or the meter is lost / `timeoutMs` passes). */
  sync(t_ms: number, timeoutMs?: number): Promise<boolean>;
}

/** What a simulated meter's figures claim, in place of the real meter's accuracy. */
export const SIMULATED_UNCERTAINTY =
  "SIMULATED meter: the readings come from a simulator (e.g. tools/ina219-sim on a pseudo-terminal), " +
  "not from measuring this device; the figures test the measuring path and say nothing about real energy use";

/**
 * The same meter, labelled simulated: method `<method>-simulated` and a text that says so, in every
 * figure, row and message it feeds. For a meter whose source the caller knows to be a simulator.
 */
export function simulatedMeter(inner: Meter): Meter {
  if (inner.simulated) return inner;
  return {
    name: inner.name,
    method: `${inner.method as MeasuredMethod}-simulated`,
    nominalRateHz: inner.nominalRateHz,
    uncertainty: SIMULATED_UNCERTAINTY,
    simulated: true,
    start: () => inner.start(),
    stop: () => inner.stop(),
    readings: () => inner.readings(),
    health: () => inner.health(),
    sync: (t_ms, timeoutMs) => inner.sync(t_ms, timeoutMs),
  };
}

export function emptyHealth(): MeterHealth {
  return { bad_lines: 0, gaps: 0, bad_checksums: 0, overflows: 0 };
}

/** The host's monotonic clock in ms, the time base of every sample. */
export function nowMs(): number {
  return performance.now();
}

/** Wait until `has()` is true, polling; false if `timeoutMs` passes first or `giveUp()` turns true. */
export async function waitFor(
  has: () => boolean,
  timeoutMs: number,
  giveUp: () => boolean = () => false,
): Promise<boolean> {
  const deadline = nowMs() + timeoutMs;
  while (!has()) {
    if (giveUp() || nowMs() > deadline) return has();
    await new Promise((r) => setTimeout(r, 10));
  }
  return true;
}

/** Time of the latest reading (−∞ when there is none): what `sync()` waits on. */
export function latestT(r: Readings): number {
  const s = r.samples;
  return s.length > 0 ? s[s.length - 1]!.t_ms : Number.NEGATIVE_INFINITY;
}
