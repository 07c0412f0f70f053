import { execFileSync } from "node:child_process";
import { join, resolve } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { LineDecoder } from "../src/power/ina219/lines.js";
import { tempDir } from "./temp-dir.js";

/**
 * The bridge firmware itself (tools/ina219-bridge), run on this PC against an emulated INA219:
 * the Arduino sketch compiled with g++ over stub Arduino/Wire headers, and the Pico's MicroPython
 * main.py under CPython with stub machine/ticks. Their lines must decode to the emulated load:
 * 0.5 A and 1.5 A at 5 V alternating every 10 samples, 10 ms apart, across the 32-bit µs wrap.
 */
const bridge = resolve(import.meta.dirname, "..", "tools", "ina219-bridge");
let dir: string;
beforeAll(async () => {
  dir = await tempDir("itera-bridge-");
});

function decode(output: string) {
  const d = new LineDecoder();
  const samples = output
    .split("\n")
    .filter((l) => l.length > 0)
    // Received as they would be: one every 10 ms, 3 ms after they were taken.
    .flatMap((l, i) => d.feed(l, 10 * i + 3));
  return { d, samples };
}

function expectEmulatedLoad(output: string, n: number) {
  const { d, samples } = decode(output);
  expect(samples).toHaveLength(n);
  expect(d.stats).toEqual({ bad_lines: 0, gaps: 0, bad_checksums: 0, overflows: 0 });
  samples.forEach((s, i) => {
    expect(s.watts).toBeCloseTo(Math.floor(i / 10) % 2 ? 7.5 : 2.5, 9);
  });
  // Evenly spaced on the device clock (10 ms), even across the counter's wrap.
  for (let i = 1; i < n; i++) expect(samples[i]!.t_ms - samples[i - 1]!.t_ms).toBeCloseTo(10, 0);
}

describe("bridge firmware", () => {
  it("the Arduino sketch prints raw-register lines the host decodes to the load", () => {
    const exe = join(dir, "host_bridge");
    execFileSync("g++", [
      "-std=c++17",
      "-Wall",
      "-Werror",
      "-I",
      join(bridge, "host-test"),
      "-o",
      exe,
      join(bridge, "host-test", "host_main.cpp"),
    ]);
    const out = execFileSync(exe, ["120"], { encoding: "utf8" });
    expect(out.split("\n")[0]).toMatch(/^\$INA,1,\d+,1388,2712,1388,04E2,1000,100\*[0-9A-F]{2}\r$/);
    expectEmulatedLoad(out, 120);
  });

  it("the Pico MicroPython script prints the same protocol", () => {
    const out = execFileSync("/usr/bin/python3", [join(bridge, "host-test", "run_pico.py"), "60"], {
      encoding: "utf8",
    });
    expectEmulatedLoad(out, 60);
  });
});
