/**
 * `itera fleet report` on bad input: a missing database, one without a finished benchmark, another
 * program's SQLite file, a file that is not SQLite, an unknown job id. Each is one clear error
 * (what, where, fix; non-zero exit) and nothing is written: no report folder, no database created,
 * the foreign file byte for byte as it was. A stored run where no device answered still renders a
 * page that says so (opened in Chromium: no error, empty charts, not blank).
 */
import { existsSync, readdirSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import Database from "better-sqlite3";
import { beforeAll, describe, expect, it } from "vitest";
import { registerFleet } from "../src/cli/commands/fleet.js";
import type { FleetBenchOutcome } from "../src/fleet/bench.js";
import { FleetStore } from "../src/fleet/store.js";
import { drawnCharts, expectCleanPage, TestBrowser } from "./browser-helpers.js";
import { inProcessCli } from "./cli-helpers.js";
import { tempDir } from "./temp-dir.js";

const cli = inProcessCli(registerFleet);

let dir: string;
beforeAll(async () => {
  dir = await tempDir("itera-fleet-report-input-");
});

/** `itera fleet report --db DB [--job ID] --out OUT`: refused with one what/where/fix error; no OUT made. */
async function refused(db: string, job?: string): Promise<string> {
  const out = join(dir, "out");
  const r = await cli("fleet", "report", "--db", db, ...(job ? ["--job", job] : []), "--out", out);
  expect(r.code).not.toBe(0);
  expect(r.stdout).toBe("");
  expect(r.stderr).not.toMatch(/internal error/);
  expect(r.stderr).toMatch(new RegExp(`^error: .+\\n  where: ${db}\\n  fix:   .+\\n$`));
  expect(existsSync(out)).toBe(false);
  return r.stderr;
}

/** A run stored as `itera fleet bench` stores it, in which the one device never answered. */
function unansweredRun(jobId: string): FleetBenchOutcome {
  return {
    jobId,
    fleet: "lab",
    model: "itera-lite-micro",
    params: { model: "itera-lite-micro", tests: ["pp8", "tg8"], threads: [1], repetitions: 1, warmup: 0 },
    startedMs: Date.UTC(2026, 11, 4, 20, 0),
    finishedMs: Date.UTC(2026, 11, 4, 20, 1),
    devices: [
      {
        device: "pi-1",
        profile: "rpi4",
        quant: null,
        execNo: 1,
        status: "TIMED_OUT",
        details: "no answer before the deadline",
        sends: 1,
        results: [],
        tempC: null,
        throttled: null,
      },
    ],
    stats: { messages: 0, invalid: 0 },
  };
}

describe("itera fleet report: bad input", () => {
  it("a missing database is not created", async () => {
    const db = join(dir, "nowhere.db");
    expect(await refused(db)).toMatch(/^error: no fleet database there/);
    expect(existsSync(db)).toBe(false);
  });

  it("a fleet database without a finished benchmark; an unknown job id names the ones there are", async () => {
    const db = join(dir, "fleet.db");
    new FleetStore(db).close();
    const empty = await refused(db);
    expect(empty).toMatch(/^error: no finished fleet benchmark in this database yet/);
    expect(empty).toMatch(/fix: {3}it has none yet: run `itera fleet bench --db` with this database first/);

    const store = new FleetStore(db);
    const run = unansweredRun("bench-20261204T200000-abc123");
    store.addRun({ ...run, deadlineMs: run.finishedMs });
    store.finishRun(run);
    store.close();
    const unknown = await refused(db, "bench-nope");
    expect(unknown).toMatch(/^error: no finished fleet benchmark 'bench-nope' in this database/);
    expect(unknown).toMatch(/fix: {3}pass --job with one of: bench-20261204T200000-abc123\n/);
  });

  it("another program's SQLite database is refused and left byte for byte as it was", async () => {
    const db = join(dir, "notes.db");
    const d = new Database(db);
    d.exec("CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('mine')");
    d.close();
    const before = await readFile(db);
    expect(await refused(db)).toMatch(
      /^error: not an itera fleet database: its tables are notes \(missing runs, executions, results\)/,
    );
    expect((await readFile(db)).equals(before)).toBe(true);
    expect(readdirSync(dir).filter((f) => f.startsWith("notes.db"))).toEqual(["notes.db"]);
  });

  it("a file that is not SQLite at all", async () => {
    const db = join(dir, "notes.txt");
    await writeFile(db, "my notes\n");
    expect(await refused(db)).toMatch(/^error: not a fleet database: the file cannot be read as SQLite/);
    expect(await readFile(db, "utf8")).toBe("my notes\n");
  });

  it("a run where no device answered renders a page that says so (Chromium: no error, empty charts)", async () => {
    const out = join(dir, "report");
    const r = await cli("fleet", "report", "--db", join(dir, "fleet.db"), "--out", out);
    expect(r.code).toBe(0);
    const browser = await TestBrowser.launch();
    try {
      const { page, log } = await browser.openHtml(await readFile(join(out, "report.html"), "utf8"));
      expectCleanPage(log);
      expect(await page.$eval("#succeeded", (e) => e.textContent)).toBe("0/1");
      const charts = await drawnCharts(page);
      expect(charts).toHaveLength(7);
      // The device's bar in each chart says why there is no figure instead of drawing 0.
      expect(charts.every((c) => c.bars.length === 1 && c.bars[0]!.value === null)).toBe(true);
      expect(await page.$eval("svg.chart .bar-value", (e) => e.textContent)).toBe(
        "n/a: TIMED_OUT: no answer before the deadline",
      );
    } finally {
      await browser.close();
    }
  }, 60_000);
});
