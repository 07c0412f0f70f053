import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { IteraError } from "../src/errors.js";
import { loadAllProfiles, loadProfile } from "../src/profile/load.js";

describe("device profiles", () => {
  it("ships the six required profiles, all valid", async () => {
    const names = (await loadAllProfiles()).map((p) => p.name);
    for (const n of ["embedded-arm64-2c", "laptop-x64-4c", "desktop-x64-12c", "rpi4", "rpi5", "rpi-zero2w"]) {
      expect(names).toContain(n);
    }
  });

  it("refuses an invalid profile naming the field", async () => {
    const good = await loadProfile("rpi4");
    const dir = await mkdtemp(join(tmpdir(), "itera-profile-"));
    const path = join(dir, "bad.json");
    await writeFile(path, JSON.stringify({ ...good, power: { ...good.power, idle_w: 99 } }));
    await expect(loadProfile(path)).rejects.toThrow(/power\.idle_w/);
    await writeFile(path, JSON.stringify({ ...good, arch: "mips" }));
    const err = await loadProfile(path).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IteraError);
    expect((err as IteraError).message).toMatch(/'arch'/);
  });

  it("refuses an unknown profile name and lists the known ones", async () => {
    await expect(loadProfile("no-such-board")).rejects.toThrow(/no device profile 'no-such-board'/);
  });
});
