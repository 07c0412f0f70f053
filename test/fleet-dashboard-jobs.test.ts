/**
 * The dashboard's list of finished jobs of every type (issue #21): what it reads of an update's and a
 * tune's stored outcome (a real FleetStore), and in a real browser (Debian's Chromium over
 * puppeteer-core) with a real Mosquitto and the dashboard: a real `itera fleet tune` against
 * `itera fleet simulate` with each device's pick, an update stored while the page is open, a real
 * `itera fleet bench`, and a real `itera fleet update` whose canary its device rolled back
 * (test/fleet-update-helpers.ts), each appearing without a reload. Waits poll; nothing asserts on time.
 */
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  dashboardTuneJob,
  dashboardUpdateJob,
  finishedJobs,
  updateOutcomeOf,
} from "../src/fleet/dashboard-jobs.js";
import { FleetStore } from "../src/fleet/store.js";
import type { FleetUpdateOutcome } from "../src/fleet/update.js";
import type { DashboardJob } from "../src/report/dashboard-page.js";
import { expectCleanPage, TestBrowser, waitOnPage } from "./browser-helpers.js";
import { run, type start, startDashboard, startSimulatedFleet, stop } from "./cli-processes.js";
import { brokenLauncher, InstalledFleet } from "./fleet-update-helpers.js";
import { Mosquitto } from "./mqtt-helpers.js";
import { tempDir } from "./temp-dir.js";

const MODEL = resolve("models/itera-lite-micro");
const FLEET = "jobsweb";

/** An update's outcome as `itera fleet update` stores it: a canary updated, one rolled back, one offline. */
function updateOutcome(jobId: string, finishedMs: number): FleetUpdateOutcome {
  const device = (
    name: string,
    status: FleetUpdateOutcome["devices"][number]["status"],
    rolledBack: boolean,
  ) => ({
    device: name,
    profile: "rpi4",
    wave: status === "OFFLINE" ? null : 0,
    from: "1.0.0",
    status,
    details: rolledBack ? "rolled back to 1.0.0: health check failed" : null,
    running: rolledBack || status === "OFFLINE" ? "1.0.0" : "1.1.0",
    rolledBack,
    chunksSent: 3,
    bytes: 3000,
    variant: "b",
  });
  return {
    jobId,
    fleet: FLEET,
    bundleId: "bundle-1",
    version: "1.1.0",
    payload: "bundle",
    runtimeId: null,
    startedMs: finishedMs - 5000,
    finishedMs,
    result: "stopped",
    reason: "--max-failures 1 reached",
    canary: ["dev-a"],
    variant: "b",
    splitPercent: 50,
    kept: [],
    devices: [
      device("dev-a", "SUCCEEDED", false),
      device("dev-b", "FAILED", true),
      device("dev-c", "OFFLINE", false),
    ],
    anonymousBroker: false,
    warnings: [],
    refused: [],
    stats: { payloadBytes: 3000, chunks: 3, chunksSent: 9, needs: 0, resends: 0 },
  };
}

function storeUpdate(store: FleetStore, jobId: string, finishedMs: number): void {
  store.addRun({
    jobId,
    type: "update",
    fleet: FLEET,
    model: "bundle-1",
    params: {},
    startedMs: finishedMs - 5000,
    deadlineMs: finishedMs + 60_000,
  });
  store.finishJob(jobId, finishedMs, updateOutcome(jobId, finishedMs));
}

describe("finished jobs of every type, as the dashboard reads them", () => {
  let dir: string;
  let store: FleetStore;
  beforeAll(async () => {
    dir = await tempDir("itera-dashboard-jobs-");
    store = new FleetStore(join(dir, "fleet.db"));
  });
  afterAll(async () => {
    store?.close();
  });

  it("an update: its version and variant, per-device outcome counts and the rolled back devices", () => {
    storeUpdate(store, "update-1", 1_000_000);
    const [job] = finishedJobs(store, FLEET, new Map());
    expect(job).toMatchObject({
      type: "update",
      jobId: "update-1",
      subject: "version 1.1.0 (variant b)",
      devices: 3,
      succeeded: 1,
      result: "stopped",
      outcomes: { UPDATED: 1, ROLLED_BACK: 1, OFFLINE: 1 },
      rolledBack: ["dev-b"],
      report: null,
    });
    expect(job!.summary).toEqual([
      "stopped: --max-failures 1 reached",
      "OFFLINE 1, ROLLED_BACK 1, UPDATED 1",
      "rolled back: dev-b",
    ]);
    expect(updateOutcomeOf({ status: "REJECTED", rolledBack: false })).toBe("REJECTED");
  });

  it("a tune device without a result: its status and why, no pick", () => {
    expect(
      dashboardTuneJob({
        jobId: "tune-1",
        params: { objective: "speed" },
        startedMs: 1,
        finishedMs: 2,
        devices: [
          { device: "dev-x", status: "TIMED_OUT", details: "no answer before the deadline", result: null },
        ],
      }),
    ).toMatchObject({
      type: "tune",
      subject: "each device's model, objective speed",
      succeeded: 0,
      devices: 1,
      simulated: false,
      summary: ["dev-x: TIMED_OUT (no answer before the deadline)"],
      picks: [{ device: "dev-x", pick: null, tok_s: null, applied: null }],
    });
  });

  it("leaves out a job whose stored outcome it cannot read, and another fleet's and unfinished jobs", () => {
    expect(dashboardUpdateJob({ jobId: "x", version: 3 })).toBeUndefined();
    store.addRun({
      jobId: "update-2",
      type: "update",
      fleet: FLEET,
      model: "m",
      params: {},
      startedMs: 1,
      deadlineMs: 2,
    });
    store.finishJob("update-2", 2_000_000, { jobId: "update-2", note: "not an update outcome" });
    store.addRun({
      jobId: "update-3",
      type: "update",
      fleet: FLEET,
      model: "m",
      params: {},
      startedMs: 3,
      deadlineMs: 4,
    });
    store.addRun({
      jobId: "update-4",
      type: "update",
      fleet: "other",
      model: "m",
      params: {},
      startedMs: 5,
      deadlineMs: 6,
    });
    store.finishJob("update-4", 3_000_000, { ...updateOutcome("update-4", 3_000_000), fleet: "other" });
    expect(finishedJobs(store, FLEET, new Map()).map((j) => j.jobId)).toEqual(["update-1"]);
  });
});

describe("itera fleet dashboard's finished jobs in Chromium", () => {
  let dir: string;
  let broker: Mosquitto;
  let browser: TestBrowser;
  let sim: ReturnType<typeof start>;
  let dash: Awaited<ReturnType<typeof startDashboard>>;

  beforeAll(async () => {
    dir = await tempDir("itera-dashboard-jobs-web-");
    broker = await Mosquitto.create();
    sim = startSimulatedFleet({
      broker: broker.url,
      fleet: FLEET,
      model: MODEL,
      stateDir: join(dir, "agents"),
      telemetryIntervalS: 1,
    });
    dash = await startDashboard(["--broker", broker.url, "--fleet", FLEET, "--db", join(dir, "fleet.db")]);
    browser = await TestBrowser.launch();
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    for (const p of [dash?.proc, sim?.proc]) await stop(p);
    await broker?.stop();
  });

  /** `itera fleet <command>` on both simulated devices, stored in the dashboard's database, with --json. */
  const onFleet = (command: string, options: string) =>
    run(
      [
        "fleet",
        command,
        "--broker",
        broker.url,
        "--fleet",
        FLEET,
        "--devices",
        "2",
        ...options.split(" "),
      ].concat(["--db", join(dir, "fleet.db"), "--json"]),
    );

  it("lists a finished itera fleet tune with each device's pick, then an update and a benchmark, live", async () => {
    const { page, log } = await browser.open(`${dash.url}/`);
    await waitOnPage(page, () => document.querySelectorAll("#devices tbody tr").length === 2, 90_000);
    expect(await page.$eval("#no-jobs", (e) => e.hidden)).toBe(false);

    const tune = await onFleet("tune", "--discover 60 --threads 1 --test tg32 --rounds 1 --min-duration 0.2");
    expect(tune.stderr).not.toMatch(/internal error/);
    expect(tune.code).toBe(0);
    const out = JSON.parse(tune.stdout) as {
      jobId: string;
      rows: Array<{ device: string; pick: string | null; tokens_per_s: number | null }>;
    };
    expect(out.rows.map((r) => r.device)).toEqual(["sim-01-laptop-x64-4c", "sim-02-rpi4"]);

    // The page gets it from the dashboard's poll of the database the tune wrote, without a reload.
    await waitOnPage(
      page,
      () => document.querySelectorAll('#jobs tbody tr[data-type="tune"]').length === 1,
      60_000,
    );
    const row = await page.$eval('#jobs tbody tr[data-type="tune"]', (tr) => ({
      id: (tr as HTMLElement).dataset.job,
      cells: [...tr.querySelectorAll("td")].map((td) => td.textContent),
      lines: [...tr.querySelectorAll("td:last-child div div")].map((d) => d.textContent),
      links: tr.querySelectorAll("a").length,
    }));
    expect(row.id).toBe(out.jobId);
    expect(row.cells.slice(0, 2)).toEqual([out.jobId, "each device's model, objective energy"]);
    expect(row.cells.slice(3, 6)).toEqual(["2/2", "simulated meter", "tune"]);
    // One line per device: its pick (as `itera fleet tune` reports it) and that candidate's figures.
    expect(row.lines).toHaveLength(2);
    for (const [i, r] of out.rows.entries()) {
      expect(r.pick).not.toBeNull();
      expect(row.lines[i]).toContain(`${r.device}: ${r.pick} (${r.tokens_per_s!.toFixed(2)} tokens/s, `);
      expect(row.lines[i]).toMatch(/ mJ\/token\), not applied$/);
    }
    // No report page for a tune: the job id is not a link.
    expect(row.links).toBe(0);
    expect(await page.$eval("#simulated", (e) => e.hidden)).toBe(false);

    // An update finished by another process appears above it (newest first), with its outcome counts.
    const store = new FleetStore(join(dir, "fleet.db"));
    try {
      storeUpdate(store, "update-web", Date.now());
    } finally {
      store.close();
    }
    await waitOnPage(page, () => document.querySelectorAll("#jobs tbody tr").length === 2, 60_000);
    const rows = await page.$$eval("#jobs tbody tr", (trs) =>
      trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)),
    );
    expect(rows[0]).toEqual([
      "update-web",
      "version 1.1.0 (variant b)",
      expect.stringMatching(/ UTC$/),
      "1/3",
      "\u2013",
      "update",
      "stopped: --max-failures 1 reached" + "OFFLINE 1, ROLLED_BACK 1, UPDATED 1" + "rolled back: dev-b",
    ]);
    expect(rows[1]![0]).toBe(out.jobId);
    // What the page shows is what /state.json gives scripts.
    const state = (await (await fetch(`${dash.url}/state.json`)).json()) as { jobs: DashboardJob[] };
    expect(state.jobs.map((j) => [j.jobId, j.type])).toEqual([
      ["update-web", "update"],
      [out.jobId, "tune"],
    ]);

    // A benchmark beside them: its devices' generation tokens/s and mJ/token, lowest to highest, and its report link.
    const bench = await onFleet(
      "bench",
      "--model itera-lite-micro --tests pp8,tg8 --repetitions 1 --warmup 0 --min-duration 0 --timeout 120",
    );
    expect(bench.stderr).not.toMatch(/internal error/);
    expect(bench.code).toBe(0);
    const b = JSON.parse(bench.stdout) as {
      jobId: string;
      rows: Array<{ tg_tok_s: number; mj_per_token: number }>;
    };
    await waitOnPage(
      page,
      () => document.querySelectorAll('#jobs tbody tr[data-type="benchmark"]').length === 1,
      60_000,
    );
    const benchRow = await page.$eval('#jobs tbody tr[data-type="benchmark"]', (tr) => ({
      cells: [...tr.querySelectorAll("td")].map((td) => td.textContent),
      href: tr.querySelector("a")?.getAttribute("href"),
    }));
    const span = (xs: number[]) => `${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}`;
    expect(benchRow.cells[0]).toBe(b.jobId);
    expect(benchRow.cells.slice(3, 6)).toEqual(["2/2", "simulated meter", "benchmark"]);
    expect(benchRow.cells[6]).toBe(
      `${span(b.rows.map((r) => r.tg_tok_s))} tokens/s, ${span(b.rows.map((r) => r.mj_per_token))} mJ/token`,
    );
    expect(benchRow.href).toBe(`jobs/${b.jobId}/report.html`);
    expectCleanPage(log);
  }, 400_000);
});

describe("a real itera fleet update in the dashboard's finished jobs (Chromium)", () => {
  let f: InstalledFleet;
  let browser: TestBrowser;
  let dash: Awaited<ReturnType<typeof startDashboard>>;

  beforeAll(async () => {
    f = await InstalledFleet.create("dashota", ["dev-a", "dev-b"]);
    dash = await startDashboard([
      "--broker",
      f.broker.url,
      "--fleet",
      "dashota",
      "--db",
      join(f.dir, "fleet.db"),
    ]);
    browser = await TestBrowser.launch();
  }, 180_000);

  afterAll(async () => {
    await browser?.close();
    await stop(dash?.proc);
    await f?.close();
  });

  it("shows a canary rolled back by its device: the result, ROLLED_BACK and SKIPPED counts, which device", async () => {
    const { page, log } = await browser.open(`${dash.url}/`);
    await waitOnPage(page, () => document.querySelectorAll("#devices tbody tr").length === 2, 90_000);
    const b = await f.bundle("1.1.0", brokenLauncher("1.1.0"));
    const r = await f.update(b, "--canary", "1");
    expect(r.code, r.stderr).toBe(4);
    const out = JSON.parse(r.stdout) as FleetUpdateOutcome;
    expect(out.result).toBe("canary-failed");
    await waitOnPage(
      page,
      () => document.querySelectorAll('#jobs tbody tr[data-type="update"]').length === 1,
      60_000,
    );
    const cells = await page.$eval('#jobs tbody tr[data-type="update"]', (tr) =>
      [...tr.querySelectorAll("td")].map((td) => td.textContent),
    );
    expect(cells.slice(0, 2)).toEqual([out.jobId, "version 1.1.0"]);
    expect(cells.slice(3, 6)).toEqual(["0/2", "\u2013", "update"]);
    expect(cells[6]).toBe(`canary-failed: ${out.reason}` + "ROLLED_BACK 1, SKIPPED 1" + "rolled back: dev-a");
    expectCleanPage(log);
  }, 300_000);
});
