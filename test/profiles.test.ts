import { copyFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { registerProfiles } from "../src/cli/commands/profiles.js";
import { IteraError } from "../src/errors.js";
import { loadAllProfiles, loadProfile, profilesDir } from "../src/profile/load.js";
import { inProcessCli } from "./cli-helpers.js";
import { tempDir } from "./temp-dir.js";

describe("device profiles", () => {
  it("ships the six required profiles, all valid", async () => {
    const names = (await loadAllProfiles()).map((p) => p.name);
    for (const n of ["embedded-arm64-2c", "laptop-x64-4c", "desktop-x64-12c", "rpi4", "rpi5", "rpi-zero2w"]) {
      expect(names).toContain(n);
    }
  });

  it("every shipped profile says where its thread count comes from; a user's own profile need not", async () => {
    for (const p of await loadAllProfiles()) expect(p.sources?.threads, p.name).toMatch(/\S{10,}/);
    const { sources: _s, ...own } = await loadProfile("rpi4");
    const dir = await tempDir("itera-profile-");
    await writeFile(join(dir, "mine.json"), JSON.stringify({ ...own, name: "mine" }));
    expect((await loadProfile(join(dir, "mine.json"))).threads).toBe(own.threads);
  });

  it("refuses an invalid profile naming the field", async () => {
    const good = await loadProfile("rpi4");
    const dir = await tempDir("itera-profile-");
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

describe("itera profiles with a broken profiles folder", () => {
  const cli = inProcessCli(registerProfiles, { captureConsoleLog: true });
  const shipped = profilesDir();
  afterEach(() => {
    delete process.env.ITERA_PROFILES_DIR;
  });

  it("lists the valid profiles and reports each invalid file (file, field, fix), exit 1", async () => {
    const dir = await tempDir("itera-profiles-");
    for (const n of ["rpi4", "laptop-x64-4c"])
      await copyFile(join(shipped, `${n}.json`), join(dir, `${n}.json`));
    const good = await loadProfile("rpi5");
    await writeFile(join(dir, "rpi5.json"), JSON.stringify({ ...good, threads: 0 }));
    await writeFile(join(dir, "broken.json"), "{ not json");
    process.env.ITERA_PROFILES_DIR = dir;

    const r = await cli("profiles");
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/\| laptop-x64-4c /);
    expect(r.stdout).toMatch(/\| rpi4 /);
    expect(r.stdout).not.toMatch(/rpi5|broken/);
    expect(r.stderr).toContain(
      `error: invalid device profile: field 'threads': Too small: expected number to be >0\n  where: ${join(dir, "rpi5.json")}\n  fix:   correct the field`,
    );
    expect(r.stderr).toContain(`error: device profile is not valid JSON`);
    expect(r.stderr).toContain(`  where: ${join(dir, "broken.json")}\n  fix:   fix the JSON syntax`);
    expect(r.stderr).toMatch(/2 of 4 profile files invalid; listed the 2 valid ones\n$/);

    const j = await cli("profiles", "--json");
    expect(j.code).toBe(1);
    expect((JSON.parse(j.stdout) as { name: string }[]).map((p) => p.name)).toEqual([
      "laptop-x64-4c",
      "rpi4",
    ]);

    // Detection ranks the valid ones, and still reports the broken files.
    const d = await cli("profiles", "--detect", "--json");
    expect(d.code).toBe(1);
    expect(JSON.parse(d.stdout).ranking.map((m: { profile: string }) => m.profile)).not.toContain("rpi5");
    expect(d.stderr).toContain(join(dir, "rpi5.json"));
  });

  it("a missing profiles folder is one clear error, not an internal one", async () => {
    const dir = join(tmpdir(), "itera-no-such-profiles-folder");
    process.env.ITERA_PROFILES_DIR = dir;
    const r = await cli("profiles");
    expect(r.code).toBe(1);
    expect(r.stderr).not.toMatch(/internal error/);
    expect(r.stderr).toBe(
      `error: the device profiles folder does not exist\n  where: ${dir}\n  fix:   point ITERA_PROFILES_DIR at a folder of profile .json files, or unset it to use the shipped ones\n`,
    );
  });

  it("an empty profiles folder says so", async () => {
    const dir = await tempDir("itera-profiles-empty-");
    process.env.ITERA_PROFILES_DIR = dir;
    const r = await cli("profiles", "--json");
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout).error).toMatch(/no device profiles \(\.json files\)/);
  });
});
