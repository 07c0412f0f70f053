import { existsSync } from "node:fs";
import { cp, mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { registerAgentTune } from "../src/cli/agent-commands/tune.js";
import { registerTune } from "../src/cli/commands/tune.js";
import { type Choice, type GridRow, sameCandidate, tunedSchema } from "../src/tune/tuned-file.js";
import { inProcessCli } from "./cli-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * `itera tune` on real ONNX Runtime sessions of Itera-Lite micro, small grids and few tokens: the grid
 * has every candidate, and the pick follows the objective from the figures it printed (no timing
 * threshold: whatever this machine measured, the chosen row must be the best one of them).
 */
const cli = inProcessCli((program) => {
  registerTune(program);
  registerAgentTune(program.command("agent-cli"));
});

const micro = join(import.meta.dirname, "..", "models", "itera-lite-micro");
const laptop = ["tune", micro, "--profile", "laptop-x64-4c"];
const small = ["--test", "tg8", "--rounds", "2", "--min-duration", "0.2", "--quiet"];

let dir: string;
beforeAll(async () => {
  dir = await tempDir("itera-tune-test-");
});

describe.skipIf(!existsSync(join(micro, "model.onnx")))("itera tune", () => {
  it("measures every precision × threads candidate and picks the lowest mJ/token for --objective energy", async () => {
    const out = join(dir, "energy.json");
    // A private TMPDIR: the quantized candidate's temp folder is made there, and must be gone after.
    const scratch = join(dir, "scratch");
    await mkdir(scratch);
    const tmp = process.env.TMPDIR;
    process.env.TMPDIR = scratch;
    const r = await cli(
      ...laptop,
      "--threads",
      "1,2",
      "--decode",
      "step",
      "--out",
      out,
      "--json",
      ...small,
    ).finally(() => {
      if (tmp === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = tmp;
    });
    expect(r.code, r.stderr).toBe(0);
    const { written, ...doc } = JSON.parse(r.stdout) as { written: string };
    expect(written).toBe(out);
    const printed = tunedSchema.parse(doc);
    const onDisk = tunedSchema.parse(JSON.parse(await readFile(out, "utf8")));
    expect(onDisk).toEqual(printed);
    // laptop-x64-4c allows int8: the fp32 folder's own precision and the quantized one, each at 1 and 2 threads.
    expect(printed.grid.map((g) => `${g.precision}/${g.threads}/${g.decode}`).sort()).toEqual([
      "fp32/1/step",
      "fp32/2/step",
      "int8/1/step",
      "int8/2/step",
    ]);
    for (const g of printed.grid) {
      expect(g.tokens_per_s.samples).toHaveLength(2);
      expect(g.mJ_per_token?.samples).toHaveLength(2);
    }
    expect(printed.energy?.method).toBe("tdp-estimate");
    const lowest = Math.min(...printed.grid.map((g) => g.mJ_per_token!.median));
    const chosen = row(printed.grid, printed.pick);
    expect(chosen.mJ_per_token!.median).toBe(lowest);
    expect((await readdir(scratch)).filter((n) => n.startsWith("itera-tune-"))).toEqual([]);
  });

  it("measures both decode paths; --objective speed --tolerance 0 picks the most tokens/s, marked in the table", async () => {
    const out = join(dir, "speed.json");
    const r = await cli(
      ...laptop,
      "--precisions",
      "fp32",
      "--threads",
      "1,2",
      "--objective",
      "speed",
      "--tolerance",
      "0",
      "--out",
      out,
      ...small,
    );
    expect(r.code, r.stderr).toBe(0);
    const t = tunedSchema.parse(JSON.parse(await readFile(out, "utf8")));
    expect(t.grid.map((g) => `${g.threads}/${g.decode}`).sort()).toEqual([
      "1/fused",
      "1/step",
      "2/fused",
      "2/step",
    ]);
    const fastest = Math.max(...t.grid.map((g) => g.tokens_per_s.median));
    expect(row(t.grid, t.pick).tokens_per_s.median).toBe(fastest);
    const marked = r.stdout.split("\n").filter((l) => l.includes("◀ pick"));
    expect(marked).toHaveLength(1);
    expect(marked[0]).toMatch(new RegExp(`^\\| fp32 +\\| +${t.pick.threads} \\| ${t.pick.decode} +\\|`));
    expect(r.stdout).toMatch(/mJ\/token \(tdp-estimate\)/);
    expect(r.stdout).toMatch(/energy: tdp-estimate: model estimate, not a measurement/);
  });

  it("refuses an existing --out unless --force, before measuring anything", async () => {
    const out = join(dir, "mine.json");
    await writeFile(out, "my notes\n");
    const one = [...laptop, "--precisions", "fp32", "-t", "1", "--out", out];
    const r = await cli(...one, ...small);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--out exists .* not overwritten/);
    expect(r.stderr).toMatch(/--force/);
    expect(await readFile(out, "utf8")).toBe("my notes\n");
    const forced = await cli(...one, "--force", "--objective", "speed", ...small);
    expect(forced.code, forced.stderr).toBe(0);
    expect(tunedSchema.parse(JSON.parse(await readFile(out, "utf8"))).pick).toMatchObject({
      precision: "fp32",
      threads: 1,
    });
  });

  it("writes <model>/tuned.json by default, replaces its own earlier one there, and itera run then uses it", async () => {
    const copy = join(dir, "micro");
    await cp(micro, copy, { recursive: true });
    const args = ["tune", copy, "--profile", "laptop-x64-4c", "--precisions", "fp32", "-t", "1", ...small];
    expect((await cli(...args)).code).toBe(0);
    const first = tunedSchema.parse(JSON.parse(await readFile(join(copy, "tuned.json"), "utf8")));
    const again = await cli(...args);
    expect(again.code, again.stderr).toBe(0);
    const second = tunedSchema.parse(JSON.parse(await readFile(join(copy, "tuned.json"), "utf8")));
    expect(second.measured_at > first.measured_at).toBe(true);
    // A file there that is not a tuned.json is the user's: refused.
    await writeFile(join(copy, "tuned.json"), "{}");
    const refused = await cli(...args);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/not overwritten/);
    expect(await readFile(join(copy, "tuned.json"), "utf8")).toBe("{}");
  });

  it("skips a precision whose quality cannot be measured here, saying why, and measures the rest", async () => {
    const empty = join(dir, "no-datasets");
    await mkdir(empty);
    process.env.ITERA_DATASETS = empty;
    const out = join(dir, "skipped.json");
    const r = await cli(
      ...laptop,
      "-t",
      "1",
      "--decode",
      "step",
      "--objective",
      "speed",
      "--out",
      out,
      ...small,
    ).finally(() => delete process.env.ITERA_DATASETS);
    expect(r.code, r.stderr).toBe(0);
    const t = tunedSchema.parse(JSON.parse(await readFile(out, "utf8")));
    expect(t.grid.map((g) => g.precision)).toEqual(["fp32"]);
    expect(t.skipped).toHaveLength(1);
    expect(t.skipped[0]!.precision).toBe("int8");
    expect(t.skipped[0]!.reason).toMatch(/^not made: .*evaluation dataset/);
    expect(r.stdout).toMatch(/^skipped int8: not made: /m);
  });

  it("refuses a precision the profile does not allow, naming the ones it does", async () => {
    const r = await cli(...laptop, "--precisions", "int4", "--out", join(dir, "x.json"), ...small);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--precisions int4: not a precision profile 'laptop-x64-4c' allows/);
    expect(r.stderr).toMatch(/give some of: fp32, int8/);
    expect(existsSync(join(dir, "x.json"))).toBe(false);
  });

  it("itera-agent tune writes tuned.json into the agent's state folder", async () => {
    const state = join(dir, "state");
    const r = await cli(
      "agent-cli",
      "tune",
      "--model",
      micro,
      "--profile",
      "embedded-arm64-2c",
      "--state-dir",
      state,
      "--precisions",
      "fp32",
      "--threads",
      "1",
      "--objective",
      "speed",
      ...small,
    );
    expect(r.code, r.stderr).toBe(0);
    const t = tunedSchema.parse(JSON.parse(await readFile(join(state, "tuned.json"), "utf8")));
    expect(t.profile).toBe("embedded-arm64-2c");
    expect(r.stdout).toContain(`written: ${join(state, "tuned.json")}`);
  });
});

function row(grid: GridRow[], pick: Choice): GridRow {
  const r = grid.find((g) => sameCandidate(g, pick));
  if (!r) throw new Error("the pick is not in the grid");
  return r;
}
