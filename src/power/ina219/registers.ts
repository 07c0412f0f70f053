import { z } from "zod";

/**
 * INA219 datasheet math (DESIGN.md §6) and the raw-register line of our bridge firmware
 * (tools/ina219-bridge, wire format in docs/energy.md):
 *
 *   $INA,<seq>,<t_us>,<shunt>,<bus>,<current>,<power>,<cal>,<rshunt_mohm>*<CK>
 *
 * seq and t_us decimal (uint32, wrapping), the five registers as 4 hex digits, rshunt_mohm decimal,
 * CK the XOR of every byte between '$' and '*' as 2 hex digits (as NMEA 0183).
 */

export interface RawRegisters {
  seq: number;
  t_us: number;
  shunt: number;
  bus: number;
  current: number;
  power: number;
  cal: number;
  rshunt_ohm: number;
}

export interface Ina219Reading {
  shunt_v: number;
  bus_v: number;
  current_a: number;
  power_w: number;
  /** OVF: the power or current calculation overflowed; current and power are meaningless. */
  overflow: boolean;
  /** CNVR: a new conversion was ready when the bus register was read. */
  conversionReady: boolean;
}

/** Two's complement of a 16-bit register value. */
export function int16(v: number): number {
  return v & 0x8000 ? v - 0x10000 : v;
}

/** Cal = trunc(0.04096 / (Current_LSB × R_shunt)) (datasheet eq. 1). */
export function calibrationFor(currentLsbA: number, rshuntOhm: number): number {
  return Math.trunc(0.04096 / (currentLsbA * rshuntOhm));
}

/**
 * Convert raw registers to physical values. The chip computes Current = Shunt × Cal / 4096, so the
 * current LSB that the stored Cal actually implies is 0.04096 / (Cal × R_shunt); Power_LSB = 20 × Current_LSB.
 * Without calibration (Cal = 0) the current and power registers read 0: use shunt / R and bus × I instead.
 */
export function convertRegisters(r: Omit<RawRegisters, "seq" | "t_us">): Ina219Reading {
  const shunt_v = int16(r.shunt) * 10e-6;
  const bus_v = (r.bus >> 3) * 4e-3;
  const overflow = (r.bus & 0x1) === 1;
  const conversionReady = (r.bus & 0x2) === 2;
  if (r.cal === 0) {
    const current_a = shunt_v / r.rshunt_ohm;
    return { shunt_v, bus_v, current_a, power_w: bus_v * current_a, overflow, conversionReady };
  }
  const currentLsb = 0.04096 / (r.cal * r.rshunt_ohm);
  return {
    shunt_v,
    bus_v,
    current_a: int16(r.current) * currentLsb,
    power_w: r.power * 20 * currentLsb,
    overflow,
    conversionReady,
  };
}

/** XOR of the characters between '$' and '*', as NMEA 0183 does. */
export function xorChecksum(body: string): number {
  let ck = 0;
  for (let i = 0; i < body.length; i++) ck ^= body.charCodeAt(i) & 0xff;
  return ck;
}

const u32 = z.coerce.number().int().min(0).max(0xffffffff);
const reg = z
  .string()
  .regex(/^[0-9A-Fa-f]{4}$/, "4 hex digits")
  .transform((h) => Number.parseInt(h, 16));

const rawFields = z.tuple([
  z.literal("INA"),
  u32,
  u32,
  reg,
  reg,
  reg,
  reg,
  reg,
  z.coerce.number().int().positive().max(1_000_000),
]);

export type RawLine =
  | { ok: true; regs: RawRegisters }
  | { ok: false; error: "checksum" | "format"; detail: string };

/** Validate and parse one raw-register line (without its line ending). */
export function parseRawLine(line: string): RawLine {
  const m = /^\$([^*]*)\*([0-9A-Fa-f]{2})$/.exec(line.trim());
  if (!m) return { ok: false, error: "format", detail: "expected $INA,...*CK" };
  const body = m[1]!;
  if (xorChecksum(body) !== Number.parseInt(m[2]!, 16)) {
    return { ok: false, error: "checksum", detail: `checksum ${m[2]} does not match` };
  }
  const r = rawFields.safeParse(body.split(","));
  if (!r.success) return { ok: false, error: "format", detail: r.error.issues[0]!.message };
  const [, seq, t_us, shunt, bus, current, power, cal, mohm] = r.data;
  return { ok: true, regs: { seq, t_us, shunt, bus, current, power, cal, rshunt_ohm: mohm / 1000 } };
}

/** Format a raw-register line (used by tests; the firmware and simulator do the same). */
export function formatRawLine(r: RawRegisters): string {
  const h = (v: number) => (v & 0xffff).toString(16).toUpperCase().padStart(4, "0");
  const body = `INA,${r.seq},${r.t_us},${h(r.shunt)},${h(r.bus)},${h(r.current)},${h(r.power)},${h(r.cal)},${Math.round(r.rshunt_ohm * 1000)}`;
  return `$${body}*${xorChecksum(body).toString(16).toUpperCase().padStart(2, "0")}`;
}
