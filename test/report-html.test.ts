import { readFile, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type BenchResult, benchResultSchema } from "../src/bench/result.js";
import { registerAgentBench } from "../src/cli/agent-commands/bench.js";
import { registerBench } from "../src/cli/commands/bench.js";
import { registerBenchReport } from "../src/cli/commands/bench-report.js";
import { num } from "../src/report/html.js";
import { VERSION } from "../src/version.js";
import { countTags, type DrawnChart, drawnCharts, expectCleanPage, TestBrowser } from "./browser-helpers.js";
import { inProcessCli } from "./cli-helpers.js";
import { startSim } from "./power-sim-helper.js";
import { tempDir } from "./temp-dir.js";

/** `itera bench --html`, `itera-agent bench --html` and `itera bench-report`, opened in a real headless Chromium. */
const cli = inProcessCli((program) => {
  registerBench(program);
  registerBenchReport(program);
  registerAgentBench(program.command("agent-cli"));
});

const model = resolve(import.meta.dirname, "..", "models", "itera-lite-tiny");
const HOSTILE = "<img src=x onerror=document.title='pwned'>";
const quick = [
  "--tests",
  "pp8,tg8",
  "-r",
  "2",
  "--warmup",
  "0",
  "--min-duration",
  "0",
  "--idle",
  "0",
  "--quiet",
];

/**
 * The charts a bench report must draw, from the results it was made of: per test, tokens/s, TTFT,
 * p50 latency, mJ/token and tokens/J, one bar per run × thread count (null where nothing was measured).
 */
function benchCharts(runs: Array<{ label: string; results: BenchResult[] }>): DrawnChart[] {
  const tests = [...new Set(runs.flatMap((r) => r.results.map((x) => x.test)))];
  const chart = (test: string, title: string, value: (r: BenchResult) => number | null | undefined) => ({
    title: `${test}: ${title}`,
    bars: runs.flatMap((run) =>
      run.results
        .filter((r) => r.test === test)
        .map((r) => ({
          label: `${runs.length > 1 ? `${run.label} · ` : ""}t=${r.threads}`,
          value: value(r) ?? null,
        })),
    ),
  });
  return [
    ...tests.map((t) => chart(t, "tokens/s (higher is better)", (r) => r.tokens_per_s.mean)),
    ...tests.flatMap((t) => [
      chart(t, "time to first token, ms (lower is better)", (r) => r.ttft_ms),
      chart(t, "latency per token p50 / p95, ms", (r) => r.latency_ms.p50),
    ]),
    ...tests.flatMap((t) => [
      chart(t, "mJ per token (lower is better)", (r) => r.energy?.mJ_per_token),
      chart(t, "tokens per joule (higher is better)", (r) => r.energy?.tokens_per_J),
    ]),
  ];
}

let browser: TestBrowser;
let dir: string;
let simRun: BenchResult[];
let plainRun: BenchResult[];
beforeAll(async () => {
  dir = await tempDir("itera-report-html-");
  browser = await TestBrowser.launch();
  // Run A: the agent's bench on a simulated INA219 (its figures must say simulated), a hostile device name.
  const sim = await startSim(dir, "html", ["--format", "json", "--trace", "0:2.5", "--rate", "100"]);
  try {
    const a = await cli(
      "agent-cli",
      "bench",
      "--model",
      model,
      "--profile",
      "rpi5",
      "-t",
      "1",
      "--meter",
      "ina219",
      "--port",
      sim.port,
      "--simulated-meter",
      "--device",
      HOSTILE,
      "-o",
      "json",
      "--save",
      join(dir, "sim-run.json"),
      "--html",
      join(dir, "sim-run.html"),
      ...quick,
    );
    expect(a.stderr).toBe("");
    expect(a.code).toBe(0);
  } finally {
    await sim.stop();
  }
  // Run B: no energy at all, two thread counts, saved as jsonl.
  const b = await cli(
    "bench",
    model,
    "--profile",
    "desktop-x64-12c",
    "-t",
    "1,2",
    "--no-energy",
    "-o",
    "jsonl",
    "--save",
    join(dir, "plain.jsonl"),
    ...quick,
  );
  expect(b.code).toBe(0);
  simRun = (JSON.parse(await readFile(join(dir, "sim-run.json"), "utf8")) as unknown[]).map((x) =>
    benchResultSchema.parse(x),
  );
  plainRun = (await readFile(join(dir, "plain.jsonl"), "utf8"))
    .trim()
    .split("\n")
    .map((l) => benchResultSchema.parse(JSON.parse(l)));
}, 120_000);
afterAll(async () => {
  await browser?.close();
});

describe("HTML benchmark reports in Chromium", () => {
  it("itera-agent bench --html: figures, conditions, simulated energy, the hostile device name as text, no request", async () => {
    const html = await readFile(join(dir, "sim-run.html"), "utf8");
    const { page, log } = await browser.openHtml(html);
    // No console or page error, and the browser asked for the page and nothing else (an <img src=x> would have fetched /x).
    expectCleanPage(log);
    expect(log.requests).toEqual(["http://report.test/page.html"]);
    const dom = await page.content();
    expect(dom).toContain('data-ready="1"'); // the page's script ran
    expect(dom).toContain("default-src 'none'");
    expect(countTags(dom, "img")).toBe(0);
    expect(dom).toContain("&lt;img src=x onerror=document.title='pwned'&gt;");
    expect(dom).not.toContain("<title>pwned</title>");
    expect(dom).toMatch(/<title>Benchmark of itera-lite-tiny on &lt;img src=x/);
    // Conditions: machine, profile, model, precision, version.
    const conditions = dom.slice(
      dom.indexOf('id="conditions"'),
      dom.indexOf("</table>", dom.indexOf('id="conditions"')),
    );
    for (const s of ["rpi5", "itera-lite-tiny", simRun[0]!.quant, VERSION, simRun[0]!.runtime]) {
      expect(conditions).toContain(s);
    }
    // Each test's tokens/s with its spread, TTFT, and mJ/token with its method, as measured.
    expect(simRun.map((r) => r.test)).toEqual(["pp 8", "tg 8"]);
    for (const r of simRun) {
      expect(dom).toContain(`${r.test}: tokens/s (higher is better)`);
      expect(dom).toContain(`${num(r.tokens_per_s.mean)} ± ${num(r.tokens_per_s.stdev)}`);
      expect(dom).toContain(`>${num(r.ttft_ms)}<`);
      expect(r.energy!.method).toBe("ina219-simulated");
      expect(dom).toContain(`${num(r.energy!.mJ_per_token)} (ina219-simulated)`);
      expect(dom).toContain(`${num(r.energy!.tokens_per_J)} (ina219-simulated)`);
    }
    expect(dom).toMatch(/<p class="sim" id="simulated">simulated energy: ina219-simulated/);
    expect(dom).toContain(simRun[0]!.energy!.uncertainty.replace(/&/g, "&amp;").slice(0, 40));
    // Every chart drawn from the results (bars and values as the browser has them).
    expect(await page.title()).toMatch(/^Benchmark of itera-lite-tiny on <img src=x/);
    expect(await drawnCharts(page)).toEqual(benchCharts([{ label: "sim-run", results: simRun }]));
    expect(await page.$eval("#simulated", (e) => e.textContent)).toMatch(
      /^simulated energy: ina219-simulated/,
    );
  }, 120_000);

  it("itera bench-report compares saved runs; absent energy says why", async () => {
    const out = join(dir, "compare.html");
    const r = await cli("bench-report", join(dir, "sim-run.json"), join(dir, "plain.jsonl"), "--html", out);
    expect(r.code).toBe(0);
    const { page, log } = await browser.openHtml(await readFile(out, "utf8"));
    expectCleanPage(log);
    expect(log.requests).toEqual(["http://report.test/page.html"]);
    const dom = await page.content();
    expect(countTags(dom, "img")).toBe(0);
    // Every run × thread count has its bar, labelled by its file.
    for (const label of ["sim-run · t=1", "plain · t=1", "plain · t=2"]) expect(dom).toContain(`>${label}<`);
    for (const p of plainRun)
      expect(dom).toContain(`${num(p.tokens_per_s.mean)} ± ${num(p.tokens_per_s.stdev)}`);
    expect(dom).toContain("n/a: energy not measured");
    // The conditions table has one row per run, with both profiles.
    const conditions = dom.slice(
      dom.indexOf('id="conditions"'),
      dom.indexOf("</table>", dom.indexOf('id="conditions"')),
    );
    expect(conditions.match(/<tr>/g)).toHaveLength(3);
    expect(conditions).toContain("desktop-x64-12c");
    expect(conditions).toContain("rpi5");
    const charts = await drawnCharts(page);
    expect(charts).toEqual(
      benchCharts([
        { label: "sim-run", results: simRun },
        { label: "plain", results: plainRun },
      ]),
    );
    // Two runs, three run × thread bars per test: 2 tests × 5 charts.
    expect(charts).toHaveLength(10);
    expect(charts.every((c) => c.bars.length === 3)).toBe(true);
    // A file that is not a benchmark output is refused, and an existing foreign file is not overwritten.
    await writeFile(join(dir, "notes.txt"), "my notes\n");
    const bad = await cli("bench-report", join(dir, "notes.txt"), "--html", join(dir, "x.html"));
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/not a benchmark saved as json or jsonl/);
    const foreign = await cli("bench-report", join(dir, "plain.jsonl"), "--html", join(dir, "notes.txt"));
    expect(foreign.code).not.toBe(0);
    expect(await readFile(join(dir, "notes.txt"), "utf8")).toBe("my notes\n");
  }, 120_000);

  it("the CDP page log catches console errors, page errors and outside requests (control)", async () => {
    const { log } = await browser.openHtml(
      '<!doctype html><img src="http://cdn.test/x.png"><img src=x><script>console.error("boom");undefinedFn();</script>',
    );
    expect(log.blocked).toEqual(["http://cdn.test/x.png"]);
    expect(log.failed).toEqual(["http://report.test/x: HTTP 404"]);
    expect(log.consoleErrors).toContain("boom");
    expect(log.pageErrors.join()).toMatch(/undefinedFn is not defined/);
  }, 60_000);
});
