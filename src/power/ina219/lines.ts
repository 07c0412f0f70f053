import { z } from "zod";
import type { MeterHealth, PowerSample } from "../meter.js";
import { convertRegisters, parseRawLine } from "./registers.js";

/**
 * Decode the serial lines of an INA219 bridge into power samples, detecting the format line by line:
 * - raw: our raw-register protocol ($INA,...*CK), see registers.ts;
 * - json: one JSON object per line ({"t_ms":..,"bus_V":..,"current_mA":..,"power_mW":..});
 * - csv / space: with a header naming the columns, or without one as
 *   [timestamp,] bus V, shunt mV, current mA, power mW (timestamp in ms or µs, inferred when not named);
 * - adafruit: the labelled blocks of Adafruit_INA219's getcurrent example ("Bus Voltage:   5.01 V", ...).
 * Every line is validated; a bad one is counted and skipped, never thrown.
 */

export type LineFormat = "raw" | "json" | "csv" | "space" | "adafruit";
type TimeUnit = "ms" | "us";

/** What a line says, in SI units; any field may be missing. */
interface Fields {
  t?: number;
  tUnit?: TimeUnit | "unknown";
  bus_v?: number;
  shunt_v?: number;
  load_v?: number;
  current_a?: number;
  power_w?: number;
}

/** A column or key name mapped to a field and the factor to SI units. */
function columnFor(name: string): { field: keyof Fields; scale: number; unit?: TimeUnit | "unknown" } | null {
  const n = name.toLowerCase().replace(/[^a-z0-9]/g, "");
  const t = /^(t|ts|time|timestamp|millis|micros)(ms|us)?$/.exec(n);
  if (t) {
    const unit =
      t[2] === "us" || t[1] === "micros" ? "us" : t[2] === "ms" || t[1] === "millis" ? "ms" : "unknown";
    return { field: "t", scale: 1, unit };
  }
  const v = /^(bus|shunt|load)(voltage)?(v|mv)?$/.exec(n);
  if (v) {
    const field = `${v[1]}_v` as keyof Fields;
    const mv = v[3] === "mv" || (v[3] === undefined && v[1] === "shunt");
    return { field, scale: mv ? 1e-3 : 1 };
  }
  const c = /^current(ma|a)?$/.exec(n);
  if (c) return { field: "current_a", scale: c[1] === "a" ? 1 : 1e-3 };
  const p = /^power(mw|w)?$/.exec(n);
  if (p) return { field: "power_w", scale: p[1] === "w" ? 1 : 1e-3 };
  return null;
}

const finite = z.number().finite();
/** Physical sanity: the INA219 bus range is 0–32 V; anything far outside is a garbled line. */
const fieldsSchema = z.object({
  t: finite.nonnegative().optional(),
  bus_v: finite.min(-1).max(40).optional(),
  shunt_v: finite.min(-1).max(1).optional(),
  load_v: finite.min(-1).max(40).optional(),
  current_a: finite.min(-100).max(100).optional(),
  power_w: finite.min(-5000).max(5000).optional(),
});

const jsonLine = z.record(z.string(), z.unknown());
const number = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;
const adafruitLabel =
  /^(Bus Voltage|Shunt Voltage|Load Voltage|Current|Power)\s*:\s*([+-]?[0-9.]+(?:[eE][+-]?\d+)?)\s*(mV|V|mA|A|mW|W)\s*$/i;

/** Power from what a line says: the power field, else bus voltage × current. */
function powerOf(f: Fields): number | null {
  if (f.power_w !== undefined) return f.power_w;
  if (f.current_a !== undefined && f.bus_v !== undefined) return f.bus_v * f.current_a;
  if (f.current_a !== undefined && f.load_v !== undefined) return f.load_v * f.current_a;
  return null;
}

/**
 * Maps device timestamps to the host clock: offset = the smallest (receive time − device time) seen,
 * i.e. the reading with the least transport delay; a device clock that jumps back (reset) restarts it.
 */
class DeviceClock {
  private offset = Number.POSITIVE_INFINITY;
  private last = Number.NEGATIVE_INFINITY;
  toHost(devMs: number, recvMs: number): number {
    if (devMs < this.last - 1000) this.offset = Number.POSITIVE_INFINITY;
    this.last = devMs;
    this.offset = Math.min(this.offset, recvMs - devMs);
    return devMs + this.offset;
  }
}

export class LineDecoder {
  readonly stats: MeterHealth = { bad_lines: 0, gaps: 0, bad_checksums: 0, overflows: 0 };
  readonly formats: Partial<Record<LineFormat, number>> = {};
  private header: { sep: "csv" | "space"; cols: (ReturnType<typeof columnFor> | null)[] } | null = null;
  private block: Fields & { lines: number } = { lines: 0 };
  private blockRecv = 0;
  private clock = new DeviceClock();
  private unit: TimeUnit | undefined;
  /** Samples waiting until the time unit of unnamed timestamps is known. */
  private pending: { dev: number; recv: number; watts: number }[] = [];
  private lastSeq: number | undefined;
  private lastTus: number | undefined;
  private tusWraps = 0;

  constructor(opts: { timeUnit?: TimeUnit } = {}) {
    this.unit = opts.timeUnit;
  }

  /** The format seen most often so far. */
  detected(): LineFormat | undefined {
    const entries = Object.entries(this.formats) as [LineFormat, number][];
    return entries.sort((a, b) => b[1] - a[1])[0]?.[0];
  }

  /** Good samples decoded so far (all formats). */
  get goodLines(): number {
    return Object.values(this.formats).reduce((a, b) => a + (b ?? 0), 0);
  }

  /** Decode one line received at `recvMs`; returns the samples it completes (usually 0 or 1). */
  feed(rawLine: string, recvMs: number): PowerSample[] {
    const line = rawLine.replace(/\r$/, "").trim();
    if (line === "") return this.flushBlock();
    if (line.startsWith("$")) return this.raw(line, recvMs);
    if (line.startsWith("{")) return this.json(line, recvMs);
    const label = adafruitLabel.exec(line);
    if (label) return this.adafruit(label, recvMs);
    const sep = line.includes(",") ? "csv" : /\s/.test(line) ? "space" : "csv";
    const cells = (sep === "csv" ? line.split(",") : line.split(/\s+/)).map((c) => c.trim());
    if (cells.every((c) => number.test(c))) return this.row(sep, cells.map(Number), recvMs);
    const cols = cells.map(columnFor);
    if (
      cols.filter((c) => c !== null).length >= 2 &&
      cols.some((c) => c?.field === "power_w" || c?.field === "current_a")
    ) {
      this.header = { sep, cols };
      return [];
    }
    this.stats.bad_lines++;
    return [];
  }

  private accept(format: LineFormat, f: Fields, recvMs: number): PowerSample[] {
    const checked = fieldsSchema.safeParse(f);
    const watts = checked.success ? powerOf(f) : null;
    if (watts === null) {
      this.stats.bad_lines++;
      return [];
    }
    this.formats[format] = (this.formats[format] ?? 0) + 1;
    if (f.t === undefined) return [{ t_ms: recvMs, watts }];
    const unit = f.tUnit && f.tUnit !== "unknown" ? f.tUnit : this.unit;
    if (unit) return [{ t_ms: this.clock.toHost(unit === "us" ? f.t / 1000 : f.t, recvMs), watts }];
    return this.inferUnit({ dev: f.t, recv: recvMs, watts });
  }

  /** Timestamps without a unit: ms if they advance about as fast as the host clock, µs if ~1000× faster. */
  private inferUnit(s: { dev: number; recv: number; watts: number }): PowerSample[] {
    this.pending.push(s);
    const first = this.pending[0]!;
    const dRecv = s.recv - first.recv;
    if (dRecv < 50 || s.dev <= first.dev) {
      if (this.pending.length > 1000) this.pending.shift();
      return [];
    }
    this.unit = (s.dev - first.dev) / dRecv > Math.sqrt(1000) ? "us" : "ms";
    const out = this.pending.map((p) => ({
      t_ms: this.clock.toHost(this.unit === "us" ? p.dev / 1000 : p.dev, p.recv),
      watts: p.watts,
    }));
    this.pending = [];
    return out;
  }

  private raw(line: string, recvMs: number): PowerSample[] {
    const r = parseRawLine(line);
    if (!r.ok) {
      if (r.error === "checksum") this.stats.bad_checksums++;
      else this.stats.bad_lines++;
      return [];
    }
    const g = r.regs;
    if (this.lastSeq !== undefined) {
      const step = (g.seq - this.lastSeq + 0x1_0000_0000) % 0x1_0000_0000;
      // A step far beyond any plausible loss is a restarted bridge, not a gap.
      if (step > 1 && step < 100_000) this.stats.gaps += step - 1;
    }
    this.lastSeq = g.seq;
    if (this.lastTus !== undefined && g.t_us < this.lastTus && this.lastTus - g.t_us > 0x8000_0000)
      this.tusWraps++;
    this.lastTus = g.t_us;
    const reading = convertRegisters(g);
    if (reading.overflow) {
      this.stats.overflows++;
      return [];
    }
    const t = (g.t_us + this.tusWraps * 0x1_0000_0000) / 1000;
    return this.accept("raw", { t, tUnit: "ms", bus_v: reading.bus_v, power_w: reading.power_w }, recvMs);
  }

  private json(line: string, recvMs: number): PowerSample[] {
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      this.stats.bad_lines++;
      return [];
    }
    const obj = jsonLine.safeParse(value);
    if (!obj.success) {
      this.stats.bad_lines++;
      return [];
    }
    const f: Fields = {};
    for (const [k, v] of Object.entries(obj.data)) {
      const col = columnFor(k);
      if (!col || typeof v !== "number") continue;
      f[col.field] = (v * col.scale) as never;
      if (col.field === "t") f.tUnit = col.unit;
    }
    return this.accept("json", f, recvMs);
  }

  private row(sep: "csv" | "space", values: number[], recvMs: number): PowerSample[] {
    const f: Fields = {};
    if (this.header && this.header.sep === sep && this.header.cols.length === values.length) {
      this.header.cols.forEach((col, i) => {
        if (!col) return;
        f[col.field] = (values[i]! * col.scale) as never;
        if (col.field === "t") f.tUnit = col.unit;
      });
    } else if (values.length === 5 || values.length === 4) {
      // Headerless: [timestamp,] bus V, shunt mV, current mA, power mW
      const [bus, shunt, current, power] = values.slice(-4) as [number, number, number, number];
      Object.assign(f, {
        bus_v: bus,
        shunt_v: shunt / 1000,
        current_a: current / 1000,
        power_w: power / 1000,
      });
      if (values.length === 5) Object.assign(f, { t: values[0], tUnit: "unknown" });
    } else {
      this.stats.bad_lines++;
      return [];
    }
    return this.accept(sep, f, recvMs);
  }

  private adafruit(m: RegExpExecArray, recvMs: number): PowerSample[] {
    const col = columnFor(`${m[1]}${m[3]}`);
    const out: PowerSample[] = [];
    // A label seen twice without a blank line in between starts a new block.
    if (col && this.block[col.field] !== undefined) out.push(...this.flushBlock());
    if (col) {
      this.block[col.field] = (Number(m[2]) * col.scale) as never;
      this.block.lines++;
      this.blockRecv = recvMs;
    }
    return out;
  }

  private flushBlock(): PowerSample[] {
    if (this.block.lines === 0) return [];
    const { lines: _lines, ...fields } = this.block;
    this.block = { lines: 0 };
    return this.accept("adafruit", fields, this.blockRecv);
  }
}
