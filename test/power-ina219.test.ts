import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { IteraError } from "../src/errors.js";
import { LineDecoder } from "../src/power/ina219/lines.js";
import { Ina219Meter, serialPort } from "../src/power/ina219/meter.js";
import {
  calibrationFor,
  convertRegisters,
  formatRawLine,
  parseRawLine,
  xorChecksum,
} from "../src/power/ina219/registers.js";
import { integratePower } from "../src/power/integrate.js";
import { nowMs } from "../src/power/meter.js";
import { startSim, traceEnergy } from "./power-sim-helper.js";
import { tempDir } from "./temp-dir.js";

describe("INA219 datasheet math", () => {
  it("calibration: 0.1 Ω shunt, 100 µA/LSB gives 4096 (datasheet eq. 1)", () => {
    expect(calibrationFor(100e-6, 0.1)).toBe(4096);
    expect(calibrationFor(0.0001, 0.1)).toBe(4096);
    expect(calibrationFor(40e-6, 0.1)).toBe(10240); // Adafruit's 32 V / 1 A setting
  });

  it("converts shunt (signed, 10 µV), bus (bits 15..3, 4 mV), current and power (20 × current LSB)", () => {
    // 5.000 V bus, 1.000 A: shunt 100 mV = 10000 LSB; current = 10000·4096/4096; power = 10000·1250/5000
    const r = convertRegisters({
      shunt: 10000,
      bus: (1250 << 3) | 2,
      current: 10000,
      power: 2500,
      cal: 4096,
      rshunt_ohm: 0.1,
    });
    expect(r.shunt_v).toBeCloseTo(0.1, 12);
    expect(r.bus_v).toBeCloseTo(5, 12);
    expect(r.current_a).toBeCloseTo(1, 12);
    expect(r.power_w).toBeCloseTo(5, 12);
    expect(r.conversionReady).toBe(true);
    expect(r.overflow).toBe(false);
    const neg = convertRegisters({
      shunt: 0xfc18,
      bus: 1250 << 3,
      current: 0xfc18,
      power: 250,
      cal: 4096,
      rshunt_ohm: 0.1,
    });
    expect(neg.shunt_v).toBeCloseTo(-0.01, 12);
    expect(neg.current_a).toBeCloseTo(-0.1, 12);
    expect(
      convertRegisters({ shunt: 0, bus: (1250 << 3) | 1, current: 0, power: 0, cal: 4096, rshunt_ohm: 0.1 })
        .overflow,
    ).toBe(true);
  });

  it("without calibration (Cal = 0) derives current from the shunt voltage", () => {
    const r = convertRegisters({
      shunt: 5000,
      bus: 1250 << 3,
      current: 0,
      power: 0,
      cal: 0,
      rshunt_ohm: 0.1,
    });
    expect(r.current_a).toBeCloseTo(0.5, 12);
    expect(r.power_w).toBeCloseTo(2.5, 12);
  });

  it("raw lines: round trip, NMEA-style XOR checksum, bad checksum and bad format told apart", () => {
    const line = formatRawLine({
      seq: 7,
      t_us: 123456,
      shunt: 10000,
      bus: 10002,
      current: 10000,
      power: 2500,
      cal: 4096,
      rshunt_ohm: 0.1,
    });
    expect(line).toMatch(/^\$INA,7,123456,2710,2712,2710,09C4,1000,100\*[0-9A-F]{2}$/);
    expect(xorChecksum("INA")).toBe(0x49 ^ 0x4e ^ 0x41);
    const ok = parseRawLine(line);
    expect(ok.ok && ok.regs.seq === 7 && ok.regs.rshunt_ohm === 0.1).toBe(true);
    expect(parseRawLine(line.replace("2712", "2713"))).toMatchObject({ ok: false, error: "checksum" });
    const short = "INA,1,2";
    expect(parseRawLine(`$${short}*${xorChecksum(short).toString(16).padStart(2, "0")}`)).toMatchObject({
      ok: false,
      error: "format",
    });
    const body = "INA,1,2,ZZZZ,0000,0000,0000,1000,100";
    expect(parseRawLine(`$${body}*${xorChecksum(body).toString(16).padStart(2, "0")}`)).toMatchObject({
      ok: false,
      error: "format",
    });
  });
});

describe("docs/energy.md", () => {
  it("its example raw line is valid and decodes to 0.8 A at 5 V = 4 W", async () => {
    const doc = await readFile(new URL("../docs/energy.md", import.meta.url), "utf8");
    const line = /^\$INA,.*\*[0-9A-F]{2}$/m.exec(doc)![0];
    const r = parseRawLine(line);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    const v = convertRegisters(r.regs);
    expect(v.current_a).toBeCloseTo(0.8, 12);
    expect(v.bus_v).toBeCloseTo(5, 12);
    expect(v.power_w).toBeCloseTo(4, 12);
  });
});

describe("LineDecoder", () => {
  const raw = (seq: number, t_us: number, power = 2500, bus = (1250 << 3) | 2) =>
    formatRawLine({ seq, t_us, shunt: 10000, bus, current: 10000, power, cal: 4096, rshunt_ohm: 0.1 });

  it("raw: samples on the device clock, gaps counted, OVF and bad checksums dropped", () => {
    const d = new LineDecoder();
    const s = [
      ...d.feed(raw(1, 0), 1000),
      ...d.feed(raw(2, 100_000), 1100.5),
      ...d.feed(raw(5, 400_000), 1401), // seqs 3 and 4 lost
      ...d.feed(raw(6, 500_000, 2500, (1250 << 3) | 1), 1500), // overflow
      ...d.feed(raw(7, 600_000).replace(/\*..$/, "*00"), 1600),
      ...d.feed(raw(8, 700_000), 1700),
    ];
    expect(s.map((x) => x.t_ms)).toEqual([1000, 1100, 1400, 1700]);
    expect(s.every((x) => Math.abs(x.watts - 5) < 1e-9)).toBe(true);
    // seqs 3, 4 lost on the way; 7 dropped for its checksum
    expect(d.stats).toMatchObject({ gaps: 3, overflows: 1, bad_checksums: 1, bad_lines: 0 });
    expect(d.detected()).toBe("raw");
  });

  it("raw: the 32-bit µs counter wrapping does not send time backwards", () => {
    const d = new LineDecoder();
    const a = d.feed(raw(1, 0xffff_ffff - 50_000), 0);
    const b = d.feed(raw(2, 49_999), 100);
    expect(b[0]!.t_ms - a[0]!.t_ms).toBeCloseTo(100, 3);
  });

  it("CSV with a header naming units (µs), and headerless CSV with the unit inferred (ms)", () => {
    const d = new LineDecoder();
    d.feed("timestamp_us,bus_V,shunt_mV,current_mA,power_mW", 0);
    const a = [...d.feed("1000000,5.0,10.0,100.0,500.0", 10), ...d.feed("1050000,5.0,20.0,200.0,1000.0", 60)];
    expect(a.map((x) => x.watts)).toEqual([0.5, 1]);
    expect(a[1]!.t_ms - a[0]!.t_ms).toBeCloseTo(50, 9);

    const h = new LineDecoder();
    expect(h.feed("5000,5.0,10.0,100.0,500.0", 0)).toEqual([]); // unit not known yet
    const b = h.feed("5100,5.0,10.0,100.0,700.0", 100);
    expect(b.map((x) => [x.t_ms, x.watts])).toEqual([
      [0, 0.5],
      [100, 0.7],
    ]);
    expect(h.detected()).toBe("csv");
  });

  it("space-separated, JSON lines and power derived from bus × current", () => {
    const d = new LineDecoder({ timeUnit: "us" });
    expect(d.feed("2000 5.0 10.0 100.0 500.0", 5)[0]!.watts).toBe(0.5);
    expect(d.feed('{"t_ms": 10, "bus_V": 5, "current_mA": 300}', 20)[0]!.watts).toBeCloseTo(1.5, 12);
    expect(d.feed('{"power_W": 2.5}', 30)[0]).toEqual({ t_ms: 30, watts: 2.5 });
    expect(d.formats).toEqual({ space: 1, json: 2 });
  });

  it("Adafruit getcurrent blocks: one sample per block, banner lines skipped", () => {
    const d = new LineDecoder();
    const text = [
      "Hello!",
      "Measuring voltage and current with INA219 ...",
      "Bus Voltage:   5.01 V",
      "Shunt Voltage: 12.30 mV",
      "Load Voltage:  5.02 V",
      "Current:       123.00 mA",
      "Power:         616.00 mW",
      "",
      "Bus Voltage:   5.00 V",
      "Shunt Voltage: 10.00 mV",
      "Load Voltage:  5.01 V",
      "Current:       100.00 mA", // no Power line in this sketch variant: bus × current
      "Bus Voltage:   5.00 V", // a repeated label closes the previous block
    ];
    const s = text.flatMap((l, i) => d.feed(l, i));
    expect(s.map((x) => x.watts)).toEqual([0.616, 0.5]);
    expect(d.stats.bad_lines).toBe(2);
  });

  it("garbage lines are counted and skipped, never thrown", () => {
    const d = new LineDecoder();
    const junk = [
      "\x80\xf8\xfe\x00",
      "12,34,,",
      "{not json",
      '{"power_mW": "x"}',
      "1,2,3",
      "[1,2]",
      "Power: 99999999 mW",
      "",
    ];
    for (const l of junk) expect(d.feed(l, 0)).toEqual([]);
    expect(d.stats.bad_lines).toBe(junk.length - 1); // the blank line only closes the block
    expect(d.goodLines).toBe(0);
  });
});

describe("Ina219Meter through a real pty (socat + tools/ina219-sim)", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await tempDir("itera-ina219-");
  });

  // 4 W, then a ramp to 8 W, then 8 W: a trace whose integral is known exactly.
  const trace: [number, number][] = [
    [0, 4],
    [0.5, 4],
    [1.5, 8],
  ];
  const traceArg = trace.map(([t, w]) => `${t}:${w}`).join(",");

  async function measure(format: string, extra: string[] = [], rate = "50") {
    // JSON lines take the trace from a CSV file (t_s,watts with a header), the others inline.
    let traceSpec = traceArg;
    if (format === "json") {
      traceSpec = join(dir, "trace.csv");
      await writeFile(traceSpec, `t_s,watts\n${trace.map(([t, w]) => `${t},${w}`).join("\n")}\n`);
    }
    const sim = await startSim(dir, format, [
      "--format",
      format,
      "--trace",
      traceSpec,
      "--rate",
      rate,
      ...extra,
    ]);
    const meter = new Ina219Meter({ port: sim.port });
    try {
      await meter.start();
      const t0 = nowMs() + 100;
      await new Promise((r) => setTimeout(r, 1400));
      const t1 = nowMs();
      await meter.sync(t1 + 1);
      const got = integratePower((meter.readings() as { samples: never[] }).samples, t0, t1);
      const want = traceEnergy(trace, sim.traceTime(t0), sim.traceTime(t1));
      return { got, want, health: meter.health(), format: meter.format() };
    } finally {
      await meter.stop();
      await sim.stop();
    }
  }

  it.each([
    ["raw", "raw"],
    ["csv", "csv"],
    ["csv-noheader", "csv"],
    ["space", "space"],
    ["json", "json"],
  ])("%s lines give the trace's energy within 1%%", async (format, detected) => {
    const r = await measure(format);
    expect(r.format).toBe(detected);
    expect(r.got.samples).toBeGreaterThan(40);
    expect(Math.abs(r.got.joules - r.want) / r.want).toBeLessThan(0.01);
  });

  it("Adafruit example blocks (no device timestamps) within 1% at 20 Hz", async () => {
    const r = await measure("adafruit", [], "20");
    expect(r.format).toBe("adafruit");
    expect(Math.abs(r.got.joules - r.want) / r.want).toBeLessThan(0.01);
  });

  it("garbage lines, bad checksums and lost samples are counted; the energy stays right", async () => {
    const r = await measure("raw", [
      "--garbage-every",
      "5",
      "--bad-checksum-every",
      "7",
      "--drop-every",
      "11",
    ]);
    expect(r.health.bad_lines).toBeGreaterThan(3);
    expect(r.health.bad_checksums).toBeGreaterThan(3);
    expect(r.health.gaps).toBeGreaterThan(2);
    expect(Math.abs(r.got.joules - r.want) / r.want).toBeLessThan(0.01);
  });

  it("a wrong baud rate (garbled bytes) is detected and named", async () => {
    const sim = await startSim(dir, "baud", ["--format", "garbage", "--rate", "100"]);
    const meter = new Ina219Meter({ port: sim.port, baud: 115200, firstSampleTimeoutMs: 1000 });
    try {
      const e = await meter.start().catch((x: unknown) => x);
      expect(e).toBeInstanceOf(IteraError);
      expect((e as IteraError).message).toMatch(/115200 baud.*baud rate is probably wrong/);
      expect((e as IteraError).fix).toMatch(/--baud/);
    } finally {
      await meter.stop();
      await sim.stop();
    }
  });

  it("the sensor unplugged mid-run (pty closed) marks the meter lost, without a crash", async () => {
    const sim = await startSim(dir, "unplug", ["--format", "raw", "--trace", "0:3", "--duration", "1"]);
    const meter = new Ina219Meter({ port: sim.port });
    try {
      await meter.start();
      const t0 = nowMs();
      await sim.exited;
      expect(await meter.sync(nowMs() + 500, 2000)).toBe(false);
      expect(meter.health().lost?.reason).toMatch(/closed|serial port/);
      const w = integratePower((meter.readings() as { samples: never[] }).samples, t0, nowMs());
      expect(w.covered_ms).toBeLessThan(w.window_ms);
    } finally {
      await meter.stop();
      await sim.stop();
    }
  });

  it("serialport stubbed out (a bundle without the native add-on) is a clear error", async () => {
    const stub = () => {
      throw Object.assign(new Error("not embedded"), { code: "ITERA_NOT_EMBEDDED" });
    };
    await expect(serialPort(stub)).rejects.toThrow(IteraError);
    await expect(serialPort(stub)).rejects.toThrow(/serialport's native add-on is not available/);
    expect(await serialPort((api) => typeof api.list)).toBe("function");
  });

  it("a missing port and a busy port are clear errors", async () => {
    const missing = await new Ina219Meter({ port: join(dir, "nope") }).start().catch((x: unknown) => x);
    expect(missing).toBeInstanceOf(IteraError);
    expect((missing as IteraError).message).toMatch(/does not exist/);

    const sim = await startSim(dir, "busy", ["--format", "raw"]);
    const first = new Ina219Meter({ port: sim.port });
    const second = new Ina219Meter({ port: sim.port });
    try {
      await first.start();
      const busy = await second.start().catch((x: unknown) => x);
      expect(busy).toBeInstanceOf(IteraError);
      expect((busy as IteraError).message).toMatch(/busy/);
    } finally {
      await first.stop();
      await second.stop();
      await sim.stop();
    }
  });
});
