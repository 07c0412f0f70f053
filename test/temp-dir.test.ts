import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import setupRunTmpdir from "./global-setup-tmpdir.js";
import { removeTempDirs, tempDir, tempDirSync } from "./temp-dir.js";

describe("tempDir (test/temp-dir.ts)", () => {
  it("makes fresh folders under the temp folder and removes them, with what is inside", async () => {
    const a = await tempDir("itera-temp-dir-test-");
    const b = tempDirSync("itera-temp-dir-test-");
    expect(a).not.toBe(b);
    expect(dirname(a)).toBe(tmpdir());
    expect(basename(b)).toMatch(/^itera-temp-dir-test-.{6}$/);
    mkdirSync(join(a, "state", "deep"), { recursive: true });
    writeFileSync(join(a, "state", "deep", "agent.db"), "x");
    await removeTempDirs();
    expect(existsSync(a)).toBe(false);
    expect(existsSync(b)).toBe(false);
    await removeTempDirs(); // twice: nothing left to do
  });
});

describe("the run's own TMPDIR (test/global-setup-tmpdir.ts)", () => {
  const outer = process.env.TMPDIR;
  afterEach(() => {
    process.env.TMPDIR = outer;
    vi.restoreAllMocks();
  });

  it("points TMPDIR at a new folder, lists what was left there, removes it and restores TMPDIR", () => {
    const stderr = vi.spyOn(process.stderr, "write").mockImplementation(() => true);
    const root = tmpdir();
    const teardown = setupRunTmpdir();
    const dir = process.env.TMPDIR!;
    expect(dirname(dir)).toBe(root);
    expect(basename(dir)).toMatch(new RegExp(`^itera-vitest-${process.pid}-`));
    expect(tmpdir()).toBe(dir);
    mkdirSync(join(dir, "itera-agent-forgotten"));
    writeFileSync(join(dir, "itera-flash-0123.lock"), "");
    teardown();
    expect(existsSync(dir)).toBe(false);
    expect(process.env.TMPDIR).toBe(outer);
    const printed = stderr.mock.calls.map((c) => String(c[0])).join("");
    expect(printed).toMatch(/2 entries left behind by the tests/);
    expect(printed).toContain("  itera-agent-forgotten\n  itera-flash-0123.lock\n");
  });

  it("prints nothing when the tests left nothing", () => {
    const stderr = vi.spyOn(process.stderr, "write").mockImplementation(() => true);
    setupRunTmpdir()();
    expect(stderr).not.toHaveBeenCalled();
  });

  it("removes the folder of an earlier run whose process is gone, never one of a live run", () => {
    const stderr = vi.spyOn(process.stderr, "write").mockImplementation(() => true);
    // Above the kernel's largest pid (4194304): no process can have it.
    const dead = join(tmpdir(), "itera-vitest-999999999-AbCdEf");
    const live = join(tmpdir(), `itera-vitest-${process.pid}-AbCdEf`);
    mkdirSync(join(dead, "itera-agent-x"), { recursive: true });
    mkdirSync(live);
    try {
      setupRunTmpdir()();
      expect(existsSync(dead)).toBe(false);
      expect(existsSync(live)).toBe(true);
      expect(stderr.mock.calls.map((c) => String(c[0])).join("")).toContain(`removed ${dead}, left by a run`);
    } finally {
      // Named by hand (a live run's name, which tempDir cannot make): removed by hand.
      rmSync(live, { recursive: true, force: true });
    }
  });
});
