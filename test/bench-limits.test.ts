import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { registerAgentBench } from "../src/cli/agent-commands/bench.js";
import { registerBench } from "../src/cli/commands/bench.js";
import { inProcessCli } from "./cli-helpers.js";

/**
 * The limits of `itera bench` and `itera-agent bench` (src/bench/command.ts, src/bench/harness.ts):
 * tests longer than the model's context and absurd durations or counts are refused at once, with
 * where and fix, before the idle baseline or any measurement.
 */
const cli = inProcessCli((program) => {
  registerBench(program);
  registerAgentBench(program.command("agent-cli"));
});

/** A recurrent house model (context_length 4096), which the runtime would run at any length. */
const MICRO = join(import.meta.dirname, "..", "models", "itera-lite-micro");
const PROFILE = "laptop-x64-4c";
const quick = ["-t", "1", "-r", "1", "--warmup", "0", "--min-duration", "0", "--idle", "0"];

describe("tests beyond the model's context", () => {
  it("itera bench --tests pp999999 is refused before the idle baseline, naming the context", async () => {
    // With the meter on and 2 s of idle: the refusal must come before either is used.
    const r = await cli(
      "bench",
      MICRO,
      "--profile",
      PROFILE,
      "-t",
      "1",
      "--meter",
      "tdp",
      "--tests",
      "pp64,pp999999",
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("test pp999999 needs 999999 positions; the model's context_length is 4096");
    expect(r.stderr).toContain("where: --tests");
    expect(r.stderr).toContain("fix:   use tests of at most 4096 tokens for this model");
    expect(r.stderr).not.toContain("idle baseline");
    expect(r.stdout).toBe("");
  });

  it("itera-agent bench: the same for a generation test", async () => {
    const r = await cli(
      "agent-cli",
      "bench",
      "--model",
      MICRO,
      "--profile",
      PROFILE,
      "--no-energy",
      "--tests",
      "tg4097",
      ...quick,
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("test tg4097 needs 4097 positions; the model's context_length is 4096");
  });

  it("tests within the context run", async () => {
    const r = await cli(
      "bench",
      MICRO,
      "--profile",
      PROFILE,
      "--no-energy",
      "--tests",
      "pp8,tg4",
      "--json",
      ...quick,
    );
    expect(r.code).toBe(0);
    expect((JSON.parse(r.stdout) as { test: string }[]).map((x) => x.test)).toEqual(["pp 8", "tg 4"]);
  });
});

describe("bounds of durations and counts", () => {
  const cases: [string, string, RegExp][] = [
    ["--min-duration", "1e9", /--min-duration must be a number of seconds from 0 to 3600, not '1e9'/],
    ["--min-duration", "-1", /--min-duration must be a number of seconds from 0 to 3600/],
    ["--idle", "86400", /--idle must be a number of seconds from 0 to 600, not '86400'/],
    ["--repetitions", "1000000", /--repetitions must be an integer from 1 to 1000, not '1000000'/],
    ["--warmup", "101", /--warmup must be an integer from 0 to 100, not '101'/],
  ];
  for (const [flag, value, message] of cases) {
    it(`${flag} ${value} is refused with where and fix`, async () => {
      for (const command of [
        ["bench", MICRO],
        ["agent-cli", "bench", "--model", MICRO],
      ]) {
        const r = await cli(
          ...command,
          "--profile",
          PROFILE,
          "--tests",
          "pp8",
          "--meter",
          "tdp",
          flag,
          value,
        );
        expect(r.code).toBe(1);
        expect(r.stderr).toMatch(message);
        expect(r.stderr).toContain(`where: ${flag}`);
        expect(r.stderr).toMatch(new RegExp(`fix: +give ${flag} `));
        expect(r.stdout).toBe("");
      }
    });
  }
});
