import { mkdtemp, readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Agent } from "../src/agent/agent.js";
import { runFleetBench } from "../src/fleet/bench.js";
import { FleetStore } from "../src/fleet/store.js";
import { reportRow, writeReport } from "../src/fleet/report.js";
import { num } from "../src/report/html.js";
import { countTags, drawnCharts, expectCleanPage, TestBrowser } from "./browser-helpers.js";
import { Mosquitto, testAgentOptions } from "./mqtt-helpers.js";
import { tempDir } from "./temp-dir.js";

/** report.html of a real fleet benchmark (Mosquitto, three agents), opened in headless Chromium. */
const HOSTILE = "<img src=x onerror=document.title='pwned'>";
const profiles = ["rpi5", HOSTILE, "rpi5"];

let broker: Mosquitto;
let dir: string;
const agents: Agent[] = [];
beforeAll(async () => {
  broker = await Mosquitto.create();
  dir = await tempDir("itera-fleet-html-");
});
afterAll(async () => {
  for (const a of agents) await a.stop().catch(() => {});
  await broker.stop();
});

describe("fleet report.html", () => {
  it("a row per device, a chart per metric grouped by profile, the job in the title, hostile strings inert", async () => {
    for (const [i, p] of profiles.entries()) {
      const stateDir = await mkdtemp(join(dir, "agent-"));
      const agent = new Agent(testAgentOptions(broker.url, "fh", `dev-${i}`, p, stateDir));
      agents.push(agent);
      agent.start();
      await agent.connected;
    }
    const outcome = await runFleetBench({
      broker: { url: broker.url },
      fleet: "fh",
      params: { model: "tiny", tests: ["pp16", "tg16"], threads: [1], repetitions: 2, warmup: 0 },
      timeoutS: 60,
      store: new FleetStore(join(dir, "fleet.db")),
      discoverS: 1,
    });
    expect(outcome.devices.map((d) => d.status)).toEqual(["SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]);
    const files = await writeReport(join(dir, "report"), outcome);
    expect(files.map((f) => f.split("/").at(-1))).toContain("report.html");

    const html = await readFile(join(dir, "report", "report.html"), "utf8");
    const browser = await TestBrowser.launch();
    let dom: string;
    try {
      const { page, log } = await browser.openHtml(html);
      expectCleanPage(log);
      expect(log.requests).toEqual(["http://report.test/page.html"]);
      dom = await page.content();
      // Seven charts, each with one bar per device (grouped: the hostile profile's dev-1 first), drawn
      // with the figures of the outcome the report was made of (null: the device measured none).
      const rows = ["dev-1", "dev-0", "dev-2"].map((id) =>
        reportRow(outcome.devices.find((d) => d.device === id)!),
      );
      const charts = await drawnCharts(page);
      const values: Array<(r: ReturnType<typeof reportRow>) => number | null> = [
        (r) => r.tg_tok_s,
        (r) => r.pp_tok_s,
        (r) => r.ttft_ms,
        (r) => r.p95_ms,
        (r) => r.mj_per_token,
        (r) => r.tokens_per_j,
        (r) => r.temp_c,
      ];
      expect(charts).toHaveLength(values.length);
      charts.forEach((c, i) => {
        expect(c.bars.map((b) => b.value)).toEqual(rows.map(values[i]!));
      });
    } finally {
      await browser.close();
    }
    expect(dom).toContain('data-ready="1"');
    expect(countTags(dom, "img")).toBe(0);
    expect(dom).not.toContain("<title>pwned</title>");
    const date = new Date(outcome.startedMs).toISOString().slice(0, 10);
    expect(dom).toMatch(new RegExp(`<title>Fleet benchmark ${outcome.jobId}: tiny, ${date} `));
    expect(dom).toMatch(new RegExp(`<h1>Fleet benchmark ${outcome.jobId}: tiny, ${date} `));
    expect(dom).toContain('<span id="succeeded">3/3</span>');
    // One table row per device; the hostile profile shown as text.
    const table = dom.slice(
      dom.indexOf('id="devices"'),
      dom.indexOf("</table>", dom.indexOf('id="devices"')),
    );
    expect(table.match(/<tr>/g)).toHaveLength(4);
    expect(table).toContain("<td>&lt;img src=x onerror=document.title='pwned'&gt;</td>");
    // A chart per metric; the groups in order (rpi5's devices side by side), each device's figures drawn.
    for (const t of [
      "generation tokens/s",
      "prefill tokens/s",
      "time to first token",
      "latency p95",
      "mJ per token",
    ]) {
      expect(dom).toContain(t);
    }
    const groups = [...dom.matchAll(/<span class="group">([^<]*)<\/span>/g)].map((m) => m[1]);
    expect(groups).toEqual(["&lt;img src=x onerror=document.title='pwned'&gt; · fp32", "rpi5 · fp32"].sort());
    const tgChart = dom.slice(
      dom.indexOf("generation tokens/s"),
      dom.indexOf("</svg>", dom.indexOf("generation tokens/s")),
    );
    for (const d of outcome.devices) {
      expect(tgChart).toContain(`>${num(reportRow(d).tg_tok_s)}<`);
    }
    const order = ["dev-1", "dev-0", "dev-2"].map((d) => tgChart.indexOf(`>${d} (`));
    expect(order.every((x) => x > 0)).toBe(true);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    // No meter on these devices: the energy charts say so instead of drawing 0.
    expect(dom).toContain("n/a: no energy figure (no meter)");

    const svg = await readFile(join(dir, "report", "chart.svg"), "utf8");
    expect(svg).toContain(`<title>Fleet benchmark ${outcome.jobId}: tiny, ${date}`);
    expect(svg).not.toContain("<img");
  }, 180_000);
});
