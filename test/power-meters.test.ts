import { chmod, mkdir, writeFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { IteraError } from "../src/errors.js";
import { integrateWindow } from "../src/power/integrate.js";
import { openMeter } from "../src/power/open.js";
import { parsePmicAdc, PmicMeter } from "../src/power/pmic.js";
import { parseProcStat, utilisation } from "../src/power/proc-stat.js";
import { findRaplDomains, RaplMeter } from "../src/power/rapl.js";
import { TdpMeter, tdpPower } from "../src/power/tdp.js";
import { loadProfile } from "../src/profile/load.js";
import { tempDir } from "./temp-dir.js";

/** Real `vcgencmd pmic_read_adc` output of a Raspberry Pi 5 under load, as published in the
 * README of the RPi5-power project on GitHub (12 current/voltage rail pairs plus EXT5V and BATT). */
const PI5_PMIC_OUTPUT = ` 3V7_WL_SW_A current(0)=0.00000000A
   3V3_SYS_A current(1)=0.06245952A
   1V8_SYS_A current(2)=0.16102850A
  DDR_VDD2_A current(3)=0.00780744A
  DDR_VDDQ_A current(4)=0.00000000A
   1V1_SYS_A current(5)=0.17566740A
    0V8_SW_A current(6)=0.32791250A
  VDD_CORE_A current(7)=10.87674000A
   3V3_DAC_A current(17)=0.00036630A
   3V3_ADC_A current(18)=0.00042735A
   0V8_AON_A current(16)=0.00579975A
      HDMI_A current(22)=0.01367520A
 3V7_WL_SW_V volt(8)=3.79999600V
   3V3_SYS_V volt(9)=3.30632200V
   1V8_SYS_V volt(10)=1.79828900V
  DDR_VDD2_V volt(11)=1.10292900V
  DDR_VDDQ_V volt(12)=0.60476130V
   1V1_SYS_V volt(13)=1.10439400V
    0V8_SW_V volt(14)=0.80256330V
  VDD_CORE_V volt(15)=0.89745940V
   3V3_DAC_V volt(20)=3.30494200V
   3V3_ADC_V volt(21)=3.30219400V
   0V8_AON_V volt(19)=0.79736190V
      HDMI_V volt(23)=5.07056000V
     EXT5V_V volt(24)=5.06788000V
      BATT_V volt(25)=3.01110800V
`;

const pairs: [number, number][] = [
  [0, 3.799996],
  [0.06245952, 3.306322],
  [0.1610285, 1.798289],
  [0.00780744, 1.102929],
  [0, 0.6047613],
  [0.1756674, 1.104394],
  [0.3279125, 0.8025633],
  [10.87674, 0.8974594],
  [0.0003663, 3.304942],
  [0.00042735, 3.302194],
  [0.00579975, 0.7973619],
  [0.0136752, 5.07056],
];
const PI5_RAIL_W = pairs.reduce((s, [a, v]) => s + a * v, 0);

let dir: string;
beforeAll(async () => {
  dir = await tempDir("itera-meters-");
});

describe("tdp estimate", () => {
  it("P = idle + (tdp − idle) × f(u), linear or cubic", () => {
    const p = { idle_w: 2, tdp_w: 10, curve: "linear" as const };
    expect(tdpPower(0, p)).toBe(2);
    expect(tdpPower(0.5, p)).toBe(6);
    expect(tdpPower(1, p)).toBe(10);
    expect(tdpPower(0.5, { ...p, curve: "cubic" })).toBe(3);
  });

  it("parses /proc/stat: idle and iowait are not busy", () => {
    const a = parseProcStat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n")!;
    const b = parseProcStat("cpu  200 0 100 900 100 0 0 0 0 0\n")!;
    expect(a).toEqual({ busy: 150, total: 1000 });
    expect(utilisation(a, b)).toBeCloseTo(150 / 300, 12);
    expect(utilisation(a, a)).toBe(0);
    expect(parseProcStat("intr 1 2 3")).toBeNull();
  });

  it("a meter on an idle fake /proc integrates to idle_w × duration exactly", async () => {
    const proc = join(dir, "proc-idle");
    await mkdir(proc, { recursive: true });
    await writeFile(join(proc, "stat"), "cpu  100 0 50 800 50 0 0 0 0 0\n");
    const m = new TdpMeter({ idle_w: 3, tdp_w: 9, curve: "linear", procRoot: proc });
    await m.start();
    await new Promise((r) => setTimeout(r, 350));
    await m.stop();
    const s = m.readings().samples;
    expect(s.length).toBeGreaterThanOrEqual(3);
    const w = integrateWindow(m.readings(), s[0]!.t_ms, s[s.length - 1]!.t_ms);
    expect(w.joules).toBeCloseTo((3 * (s[s.length - 1]!.t_ms - s[0]!.t_ms)) / 1000, 9);
    expect(m.nominalRateHz).toBeGreaterThanOrEqual(10);
    expect(m.method).toBe("tdp-estimate");
  });

  it("a busy real /proc/stat reads above idle", async () => {
    const m = new TdpMeter({ idle_w: 1, tdp_w: 11, curve: "linear" });
    await m.start();
    const until = performance.now() + 300;
    let x = 0;
    while (performance.now() < until) x += Math.sqrt(x + 1); // keep a core busy
    await m.sync(performance.now());
    await m.stop();
    const s = m.readings().samples;
    const w = integrateWindow(m.readings(), s[0]!.t_ms, s[s.length - 1]!.t_ms);
    expect(w.joules / ((s[s.length - 1]!.t_ms - s[0]!.t_ms) / 1000)).toBeGreaterThan(1.5);
    expect(x).toBeGreaterThan(0);
  });

  it("process scope: this process's CPU time, not the rest of the machine's", async () => {
    const m = new TdpMeter({ idle_w: 1, tdp_w: 11, curve: "linear", scope: "process" });
    await m.start();
    await new Promise((r) => setTimeout(r, 300));
    const mid = performance.now();
    const c0 = process.cpuUsage();
    let x = 0;
    while (performance.now() < mid + 1000) x += Math.sqrt(x + 1); // one core busy (as far as the machine lets it)
    const end = performance.now();
    const used = process.cpuUsage(c0);
    const cpuMs = (used.user + used.system) / 1000;
    await m.sync(end + 150);
    await m.stop();
    const r = m.readings();
    const s = r.samples;
    const idleW = integrateWindow(r, s[0]!.t_ms, mid).joules / ((mid - s[0]!.t_ms) / 1000);
    const busyW = integrateWindow(r, mid, end).joules / ((end - mid) / 1000);
    // What the CPU time this process actually got says, whatever else shares the machine.
    const expected = 1 + (10 * cpuMs) / ((end - mid) * availableParallelism());
    expect(Math.abs(busyW - expected)).toBeLessThan(0.25 * (expected - 1) + 0.1);
    expect(idleW).toBeLessThan(busyW);
    expect(m.uncertainty).toMatch(/this process's CPU time/);
    expect(x).toBeGreaterThan(0);
  });

  it("a missing /proc/stat and a profile without a TDP figure are clear errors", async () => {
    await expect(
      new TdpMeter({ idle_w: 1, tdp_w: 2, curve: "linear", procRoot: join(dir, "none") }).start(),
    ).rejects.toThrow(/cannot read CPU times/);
    const profile = await loadProfile("rpi5");
    const noPower = { ...profile, power: { ...profile.power, tdp_w: 0, idle_w: 0 } };
    await expect(openMeter({ meter: "tdp", profile: noPower })).rejects.toThrow(/no TDP figure/);
    await expect(openMeter({ meter: "tdp" })).rejects.toThrow(/needs a device profile/);
  });
});

describe("rapl (fake powercap tree)", () => {
  async function fakeRapl(name: string, values: Record<string, number>) {
    const root = join(dir, name);
    for (const [zone, uj] of Object.entries(values)) {
      await mkdir(join(root, zone), { recursive: true });
      await writeFile(join(root, zone, "name"), zone.includes(":0:") ? "core" : `package-${zone.slice(-1)}`);
      await writeFile(join(root, zone, "energy_uj"), `${uj}\n`);
      await writeFile(join(root, zone, "max_energy_range_uj"), "262143328850\n");
    }
    return root;
  }
  const RANGE = 262143328850;

  it("sums package counters, differencing with wrap-around; sub-zones are not double-counted", async () => {
    const root = await fakeRapl("rapl-ok", {
      "intel-rapl:0": RANGE - 1_000_000,
      "intel-rapl:0:0": 5,
      "intel-rapl:1": 50,
    });
    expect(findRaplDomains(root).map((d) => d.name)).toEqual(["package-0", "package-1"]);
    const m = new RaplMeter({ root, rateHz: 50 });
    await m.start();
    await writeFile(join(root, "intel-rapl:0", "energy_uj"), "4000000\n"); // wrapped: +5 J
    await writeFile(join(root, "intel-rapl:1", "energy_uj"), "2000050\n"); // +2 J
    await m.sync(performance.now() + 50);
    await m.stop();
    const s = m.readings().samples;
    const w = integrateWindow(m.readings(), s[0]!.t_ms, s[s.length - 1]!.t_ms);
    expect(w.joules).toBeCloseTo(7, 9);
  });

  it("no powercap tree, no package domain, unreadable counters: clear errors", async () => {
    expect(() => findRaplDomains(join(dir, "absent"))).toThrow(/no RAPL power-capping interface/);
    const empty = join(dir, "rapl-empty");
    await mkdir(join(empty, "dtpm"), { recursive: true });
    expect(() => findRaplDomains(empty)).toThrow(/no RAPL package domain/);
    const root = await fakeRapl("rapl-perm", { "intel-rapl:0": 1 });
    await chmod(join(root, "intel-rapl:0", "energy_uj"), 0o400);
    await chmod(dir, 0o755); // mkdtemp made it 0700: let the unprivileged uid reach the tree
    // Root reads anything: drop to an unprivileged effective uid (this test runs in its own fork).
    process.seteuid!(65534);
    let e: unknown;
    try {
      e = await new RaplMeter({ root }).start().catch((x: unknown) => x);
    } finally {
      process.seteuid!(0);
    }
    expect(e).toBeInstanceOf(IteraError);
    expect((e as IteraError).message).toMatch(/not readable/);
    expect((e as IteraError).fix).toMatch(/sudo chmod a\+r .*energy_uj.*run as root/);
  });
});

describe("pmic (Raspberry Pi 5 vcgencmd pmic_read_adc)", () => {
  it("pairs _V and _A rails by name in real output and sums V × I", () => {
    const r = parsePmicAdc(PI5_PMIC_OUTPUT);
    expect(r.rails).toHaveLength(12);
    expect(r.rail_w).toBeCloseTo(PI5_RAIL_W, 9);
    expect(r.rails.find((x) => x.rail === "VDD_CORE")!.watts).toBeCloseTo(10.87674 * 0.8974594, 9);
    expect(r.bad_lines).toBe(0);
    expect(parsePmicAdc("FOO_A current(1)=0.5A\nbad line\n").rails).toHaveLength(0);
  });

  async function fakeVcgencmd(name: string, body: string): Promise<string> {
    const bin = join(dir, name);
    await mkdir(bin, { recursive: true });
    await writeFile(join(bin, "vcgencmd"), `#!/bin/sh\n${body}\n`);
    await chmod(join(bin, "vcgencmd"), 0o755);
    return bin;
  }

  it("polls a vcgencmd found on PATH, with an optional linear correction", async () => {
    const data = join(dir, "pmic.txt");
    await writeFile(data, PI5_PMIC_OUTPUT);
    const bin = await fakeVcgencmd("bin-ok", `[ "$1" = pmic_read_adc ] || exit 2\ncat '${data}'`);
    const oldPath = process.env.PATH;
    process.env.PATH = `${bin}:${oldPath}`;
    try {
      const m = new PmicMeter({ scale: 1.1451, offset_w: 0.5879, rateHz: 20 });
      await m.start();
      await m.sync(performance.now() + 100);
      await m.stop();
      const s = m.readings().samples as { watts: number }[];
      expect(s.length).toBeGreaterThanOrEqual(2);
      for (const x of s) expect(x.watts).toBeCloseTo(1.1451 * PI5_RAIL_W + 0.5879, 9);
    } finally {
      process.env.PATH = oldPath;
    }
  });

  it("a missing vcgencmd or output without rails is a clear error", async () => {
    await expect(new PmicMeter({ vcgencmd: join(dir, "no-vcgencmd") }).start()).rejects.toThrow(
      /pmic_read_adc' failed/,
    );
    const bin = await fakeVcgencmd("bin-bad", "echo 'error=1 error_msg=\"Command not registered\"'");
    await expect(new PmicMeter({ vcgencmd: join(bin, "vcgencmd") }).start()).rejects.toThrow(
      /no paired rail readings/,
    );
  });
});

describe("auto: the profile's order of preference", () => {
  it("falls back past meters that cannot start, saying why", async () => {
    const profile = await loadProfile("rpi5"); // ina219, pmic, tdp
    const logs: string[] = [];
    const { meter, skipped } = await openMeter({
      meter: "auto",
      profile,
      vcgencmd: join(dir, "no-vcgencmd"),
      log: (m) => logs.push(m),
    });
    await meter.stop();
    expect(meter.name).toBe("tdp");
    expect(skipped).toHaveLength(2);
    expect(skipped[0]).toMatch(/^ina219: .*serial port/);
    expect(skipped[1]).toMatch(/^pmic: /);
    expect(logs).toHaveLength(2);
  });

  it("when nothing can start, one error lists every reason", async () => {
    const profile = await loadProfile("rpi5");
    const onlyPmic = { ...profile, power: { ...profile.power, meters: ["pmic" as const] } };
    await expect(openMeter({ meter: "auto", profile: onlyPmic, vcgencmd: join(dir, "x") })).rejects.toThrow(
      /no power meter could be started/,
    );
  });
});
