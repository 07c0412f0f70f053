import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { type BuildResult, buildBundle } from "../src/package/build.js";
import { tunedSchema } from "../src/tune/tuned-file.js";
import { deviceEnv, houseModel, run } from "./package-helpers.js";
import { rowOf, tuning } from "./tune-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * `itera build --tuned FILE`: the tuning travels in the bundle's model folder, its precision is the
 * build's, and the agent inside the bundle takes its threads from it.
 */
const micro = houseModel("itera-lite-micro");

let work: string;
let tunedPath: string;
let built: BuildResult;
beforeAll(async () => {
  work = await tempDir("itera-tune-build-");
  tunedPath = join(work, "tuned.json");
  await writeFile(
    tunedPath,
    JSON.stringify(tuning({ grid: [rowOf("fp32", 1, 500, 3), rowOf("fp32", 2, 500, 2)] })),
  );
  built = await buildBundle({
    model: micro.dir,
    profile: "laptop-x64-4c",
    tuned: tunedPath,
    out: join(work, "out"),
    quiet: true,
  });
});

describe.skipIf(!existsSync(join(micro.dir, "model.onnx")))("itera build --tuned", () => {
  it("embeds tuned.json in the bundle's model folder, hashed in the manifest; its precision is the build's", async () => {
    // laptop-x64-4c would quantize to int8 by default; the tuning's pick is fp32.
    expect(built.quantization.mode).toBe("fp32");
    const entry = Object.keys(built.manifest.files).find((f) => f.endsWith("/tuned.json"));
    expect(entry).toBeDefined();
    const embedded = tunedSchema.parse(JSON.parse(await readFile(join(built.dir, entry!), "utf8")));
    expect(embedded.pick).toEqual({ precision: "fp32", threads: 2 });
    // The user's model folder was not written.
    expect(existsSync(join(micro.dir, "tuned.json"))).toBe(false);
  });

  it("the agent in the bundle runs with the tuned threads and says where they came from", async () => {
    const { env } = await deviceEnv();
    const exe = join(built.dir, "itera-agent");
    const { stderr } = await run(exe, ["run", "--prompt", micro.prompt, "--max-tokens", "2"], { env });
    expect(stderr).toMatch(/threads 2 from .*tuned\.json \(tuned for energy, fp32\)/);
    expect(stderr).toMatch(/, 2 threads\]/);
  });

  it("itera-agent tune in the bundle measures the model it carries and writes the state folder's tuned.json, which run then uses", async () => {
    const { env, home } = await deviceEnv();
    const state = join(home, "state");
    const exe = join(built.dir, "itera-agent");
    const quick = ["-t", "1", "--decode", "step", "--test", "tg8", "--rounds", "1", "--min-duration", "0.2"];
    const { stdout } = await run(exe, ["tune", ...quick, "--json"], {
      env: { ...env, STATE_DIRECTORY: state },
    });
    const t = tunedSchema.parse(JSON.parse(await readFile(join(state, "tuned.json"), "utf8")));
    expect((JSON.parse(stdout) as { written: string }).written).toBe(join(state, "tuned.json"));
    expect(t.grid.map((g) => `${g.precision}/${g.threads}/${g.decode}`)).toEqual(["fp32/1/step"]);
    const { stderr } = await run(exe, ["run", "--prompt", micro.prompt, "--max-tokens", "2"], {
      env: { ...env, STATE_DIRECTORY: state },
    });
    expect(stderr).toContain(`threads 1, step decode from ${join(state, "tuned.json")}`);
  });

  it("refuses a tuned.json made for another profile, before any work", async () => {
    const other = join(work, "other.json");
    await writeFile(other, JSON.stringify(tuning({ profile: "rpi5" })));
    await expect(
      buildBundle({
        model: micro.dir,
        profile: "laptop-x64-4c",
        tuned: other,
        out: join(work, "x"),
        quiet: true,
      }),
    ).rejects.toThrow(/was tuned for profile 'rpi5', the build is for 'laptop-x64-4c'/);
    expect(existsSync(join(work, "x"))).toBe(false);
  });
});
