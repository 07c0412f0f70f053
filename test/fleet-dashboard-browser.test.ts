/**
 * `itera fleet dashboard` in a real browser (Debian's Chromium over puppeteer-core), end to end with
 * the CLI as a user runs it: a real Mosquitto, `itera fleet simulate` (agent processes with simulated
 * INA219 meters), the dashboard, and `itera fleet bench` whose finished job must show up in the
 * page's history with a working link to its report. Also: the access token, an unknown report, and a
 * broker that cannot be reached (then comes up). Waits poll the page; nothing asserts on time.
 */
import type { ChildProcess } from "node:child_process";
import { mkdir, readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { drawnCharts, expectCleanPage, TestBrowser, waitOnPage } from "./browser-helpers.js";
import { run, type start, startDashboard as dashboard, startSimulatedFleet, stop } from "./cli-processes.js";
import { Mosquitto, until } from "./mqtt-helpers.js";
import { tempDir } from "./temp-dir.js";

const MODEL = resolve("models/itera-lite-micro");
const TOKEN = "s3cret";
/** Where the test saves its screenshots when asked (docs/img: `ITERA_SCREENSHOTS=docs/img`). */
const SHOTS = process.env.ITERA_SCREENSHOTS;

let dir: string;
let broker: Mosquitto;
let browser: TestBrowser;
let sim: ReturnType<typeof start>;
let dash: Awaited<ReturnType<typeof dashboard>>;
const others: ChildProcess[] = [];

beforeAll(async () => {
  dir = await tempDir("itera-dashboard-web-");
  broker = await Mosquitto.create();
  sim = startSimulatedFleet({
    broker: broker.url,
    fleet: "web",
    model: MODEL,
    stateDir: join(dir, "agents"),
    telemetryIntervalS: 0.5,
  });
  dash = await dashboard([
    "--broker",
    broker.url,
    "--fleet",
    "web",
    "--db",
    join(dir, "fleet.db"),
    "--token",
    TOKEN,
  ]);
  browser = await TestBrowser.launch();
}, 120_000);

afterAll(async () => {
  await browser?.close();
  for (const p of [dash?.proc, sim?.proc, ...others]) await stop(p);
  await broker?.stop();
});

describe("itera fleet dashboard in Chromium", () => {
  it("shows the simulated devices, then a finished fleet bench in its history with a working report link", async () => {
    const { page, log } = await browser.open(`${dash.url}/?token=${TOKEN}`);
    expect(await page.title()).toBe("Fleet web: live dashboard");
    // Both agents appear (they start while the page is open; generous wait on a busy machine).
    await waitOnPage(page, () => document.querySelectorAll("#devices tbody tr").length === 2, 90_000);
    const devices = await page.$$eval("#devices tbody tr", (rows) =>
      rows.map((r) => [...r.querySelectorAll("td")].slice(0, 4).map((td) => td.textContent)),
    );
    expect(devices.map((d) => [d[0], d[1], d[3]])).toEqual([
      ["sim-01-laptop-x64-4c", "online", "laptop-x64-4c"],
      ["sim-02-rpi4", "online", "rpi4"],
    ]);
    expect(await page.$eval("#broker", (e) => e.textContent)).toBe(`broker connected: ${broker.url}`);
    expect(await page.$eval("#no-jobs", (e) => e.hidden)).toBe(false);
    expect(await page.$eval("#no-running", (e) => e.hidden)).toBe(false);

    // Sparklines: once telemetry flows, each device's CPU % line has one point per telemetry message
    // the server kept for it (its /state.json, read between two reads of the page that agree).
    await waitOnPage(
      page,
      () => document.querySelectorAll('#devices svg[data-metric="cpu_pct"]').length === 2,
    );
    const drawn = () =>
      page.$$eval("#devices tbody tr", (rows) =>
        rows.map((r) => [
          (r as HTMLElement).dataset.device,
          r.querySelector('svg[data-metric="cpu_pct"] polyline')?.getAttribute("points")?.split(" ").length ??
            0,
        ]),
      );
    let agreed = false;
    for (let i = 0; i < 40 && !agreed; i++) {
      const before = await drawn();
      const state = (await (await fetch(`${dash.url}/state.json?token=${TOKEN}`)).json()) as {
        devices: { device: string; points: unknown[] }[];
      };
      const kept = state.devices.map((d) => [d.device, d.points.length]).sort();
      agreed =
        JSON.stringify(before) === JSON.stringify(kept) &&
        JSON.stringify(await drawn()) === JSON.stringify(kept);
      if (agreed) expect(kept.every(([, n]) => (n as number) >= 2)).toBe(true);
    }
    expect(agreed).toBe(true);
    // No benchmark yet: no tokens/s figures, so that sparkline is a dash, not an empty SVG.
    expect(await page.$$eval('#devices svg[data-metric="tok_s"]', (s) => s.length)).toBe(0);

    // Every running-job row the page ever shows is recorded, so a quick job cannot slip past a poll.
    await page.evaluate(() => {
      const seen: string[][] = [];
      (window as unknown as { seenRunning: string[][] }).seenRunning = seen;
      new MutationObserver(() => {
        for (const tr of document.querySelectorAll("#running tbody tr")) {
          seen.push([...tr.querySelectorAll("td")].map((td) => td.textContent ?? ""));
        }
      }).observe(document.querySelector("#running tbody")!, { childList: true });
    });

    const bench = await run([
      "fleet",
      "bench",
      "--broker",
      broker.url,
      "--fleet",
      "web",
      "--devices",
      "2",
      "--model",
      "itera-lite-micro",
      "--tests",
      "pp8,tg8",
      "--repetitions",
      "1",
      "--warmup",
      "0",
      "--min-duration",
      "0",
      "--timeout",
      "120",
      "--db",
      join(dir, "fleet.db"),
      "--json",
    ]);
    expect(bench.stderr).not.toMatch(/internal error/);
    expect(bench.code).toBe(0);
    const jobId = (JSON.parse(bench.stdout) as { jobId: string }).jobId;

    // The finished job appears in the history (the dashboard reads the database the bench wrote).
    await waitOnPage(page, () => document.querySelectorAll("#jobs tbody tr").length === 1, 60_000);
    const job = await page.$eval("#jobs tbody tr", (tr) => ({
      id: (tr as HTMLElement).dataset.job,
      cells: [...tr.querySelectorAll("td")].map((td) => td.textContent),
      href: tr.querySelector("a")!.href,
    }));
    expect(job.id).toBe(jobId);
    expect(job.cells[0]).toBe(jobId);
    expect(job.cells[1]).toBe("itera-lite-micro");
    expect(job.cells[3]).toBe("2/2");
    // Simulated meters are said to be simulated on the page itself.
    expect(job.cells[4]).toBe("simulated meter");
    expect(await page.$eval("#simulated", (e) => e.hidden)).toBe(false);
    expect(job.href).toBe(`${dash.url}/jobs/${jobId}/report.html?token=${TOKEN}`);
    // While it ran, it was a running job on each device (with the device's progress); now it is not.
    const seen = await page.evaluate(() => (window as unknown as { seenRunning: string[][] }).seenRunning);
    for (const device of ["sim-01-laptop-x64-4c", "sim-02-rpi4"]) {
      const rows = seen.filter((c) => c[0] === jobId && c[2] === device);
      expect(rows.length).toBeGreaterThan(0);
      expect(rows.every((c) => c[1] === "benchmark")).toBe(true);
      expect(rows.some((c) => c[3] === "IN_PROGRESS")).toBe(true);
    }
    await waitOnPage(page, () => document.querySelectorAll("#running tbody tr").length === 0);
    expect(await page.$eval("#no-running", (e) => e.hidden)).toBe(false);
    // After a benchmark the agents' telemetry carries their (simulated) energy figures.
    await waitOnPage(
      page,
      () =>
        [...document.querySelectorAll("#devices tbody tr td:nth-child(8)")].filter((td) =>
          /ina219-simulated/.test(td.textContent ?? ""),
        ).length === 2,
      60_000,
    );
    // ...and from the next message on, their tokens/s and mJ/token sparklines are drawn.
    await waitOnPage(
      page,
      () =>
        document.querySelectorAll('#devices svg[data-metric="tok_s"]').length === 2 &&
        document.querySelectorAll('#devices svg[data-metric="mj_per_token"]').length === 2,
      60_000,
    );
    if (SHOTS) {
      await mkdir(SHOTS, { recursive: true });
      // As tall as its content (fullPage grows past a short viewport).
      await page.setViewport({ width: 1100, height: 420 });
      await page.screenshot({ path: join(SHOTS, "fleet-dashboard.png"), fullPage: true });
    }

    // The link opens the job's report: not blank, no error, a chart per metric with both devices.
    const report = await browser.open(job.href);
    expect(report.status).toBe(200);
    expect(await report.page.title()).toMatch(new RegExp(`^Fleet benchmark ${jobId}: itera-lite-micro`));
    const charts = await drawnCharts(report.page);
    expect(charts).toHaveLength(7);
    expect(charts.every((c) => c.bars.length === 2)).toBe(true);
    expect(charts[0]!.bars.every((b) => b.value !== null && b.value > 0)).toBe(true);
    expect(await report.page.$eval("#simulated", (e) => e.textContent)).toMatch(
      /^simulated energy: ina219-simulated/,
    );
    expectCleanPage(report.log);
    if (SHOTS) await report.page.screenshot({ path: join(SHOTS, "fleet-report.png"), fullPage: true });
    await report.page.close();

    expectCleanPage(log);
    expect(log.requests.every((u) => u.startsWith(dash.url))).toBe(true);
    await page.close();
  }, 300_000);

  it("refuses the page without the token and says why; an unknown report is a clear page, not a blank one", async () => {
    for (const u of [`${dash.url}/`, `${dash.url}/?token=wrong`]) {
      const { page, status } = await browser.open(u);
      expect(status).toBe(401);
      expect(await page.$eval("body", (b) => b.textContent)).toMatch(/a valid \?token= is required/);
      await page.close();
    }
    const { page, status } = await browser.open(`${dash.url}/jobs/bench-nope/report.html?token=${TOKEN}`);
    expect(status).toBe(404);
    expect(await page.$eval("#error", (e) => e.textContent)).toBe(
      `no finished benchmark 'bench-nope' of fleet web in the fleet database ${join(dir, "fleet.db")}`,
    );
    // The way back keeps the token.
    expect(await page.$eval("#back", (a) => (a as HTMLAnchorElement).href)).toBe(
      `${dash.url}/?token=${TOKEN}`,
    );
    await page.close();
  }, 60_000);

  it("another program's SQLite file as --db is refused before serving, and left as it was", async () => {
    const db = join(dir, "notes.db");
    const d = new Database(db);
    d.exec("CREATE TABLE notes (text TEXT)");
    d.close();
    const before = await readFile(db);
    const r = await run([
      "fleet",
      "dashboard",
      "--broker",
      broker.url,
      "--fleet",
      "web",
      "--port",
      "0",
      "--db",
      db,
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: not an itera fleet database: its tables are notes/);
    expect((await readFile(db)).equals(before)).toBe(true);
  }, 60_000);

  it("a broker that cannot be reached: the page and the terminal say so, and both recover when it comes up", async () => {
    const later = await Mosquitto.create();
    await later.stop();
    const d = await dashboard(["--broker", later.url, "--fleet", "web", "--db", join(dir, "other.db")]);
    others.push(d.proc);
    try {
      await until(
        () => d.stderr().includes(`broker unreachable: ${later.url}`),
        "the terminal's message",
        60_000,
      );
      const { page, log } = await browser.open(`${d.url}/`);
      await waitOnPage(page, () => document.getElementById("broker")?.dataset.state === "unreachable");
      expect(await page.$eval("#broker", (e) => e.textContent)).toMatch(
        new RegExp(
          `^broker unreachable: ${later.url} \\(cannot connect to the MQTT broker: .*ECONNREFUSED.*\\); retrying$`,
        ),
      );
      expect(await page.$eval("#count", (e) => e.textContent)).toBe("0");
      await later.start();
      await waitOnPage(page, () => document.getElementById("broker")?.dataset.state === "connected", 60_000);
      expect(await page.$eval("#broker", (e) => e.textContent)).toBe(`broker connected: ${later.url}`);
      expect(d.stderr()).toContain(`dashboard: broker connected: ${later.url}`);
      expectCleanPage(log);
      await page.close();
    } finally {
      await stop(d.proc);
      await later.stop();
    }
  }, 120_000);
});
