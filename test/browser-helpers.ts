import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { expect } from "vitest";

const CHROMIUM = "/usr/bin/chromium";

/** The elements of a tag name in a serialized DOM (e.g. how many <img> the page really created). */
export function countTags(dom: string, tag: string): number {
  return (dom.match(new RegExp(`<${tag}[\\s>/]`, "gi")) ?? []).length;
}

/**
 * A real headless Chromium (Debian's /usr/bin/chromium) driven over the DevTools protocol
 * (puppeteer-core, which downloads no browser). Every page opened through it records console errors, uncaught page errors and failed
 * requests, and may reach only its own origin: any other request is blocked and recorded.
 */
export interface PageLog {
  consoleErrors: string[];
  pageErrors: string[];
  /** Requests to the page's own origin that failed (network error, or an HTTP status >= 400). */
  failed: string[];
  /** Requests to any other origin: blocked before they left the browser. */
  blocked: string[];
  /** Every request the page made, its own included. */
  requests: string[];
}

/** One chart of a page as drawn: its title and each bar's label and value (null: "n/a"). */
export interface DrawnChart {
  title: string;
  bars: Array<{ label: string; value: number | null }>;
}

export class TestBrowser {
  private constructor(private readonly browser: Browser) {}

  static async launch(): Promise<TestBrowser> {
    const browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        // Chromium refuses to start its sandbox as root (the CI runs as root).
        ...(process.getuid?.() === 0 ? ["--no-sandbox"] : []),
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    return new TestBrowser(browser);
  }

  /**
   * Open `url` (or, with `files`, serve them at http://report.test/<name> and open `url` there).
   * Only `url`'s origin is let through. Resolves once the page has loaded.
   */
  async open(
    url: string,
    o: { files?: Record<string, string>; width?: number } = {},
  ): Promise<{ page: Page; log: PageLog; status: number | null }> {
    const page = await this.browser.newPage();
    await page.setViewport({ width: o.width ?? 1100, height: 800 });
    const log: PageLog = { consoleErrors: [], pageErrors: [], failed: [], blocked: [], requests: [] };
    const origin = new URL(url).origin;
    page.on("console", (m) => {
      if (m.type() === "error") log.consoleErrors.push(m.text());
    });
    page.on("pageerror", (e) => log.pageErrors.push(String(e)));
    page.on("requestfailed", (r) => {
      if (!log.blocked.includes(r.url())) log.failed.push(`${r.url()}: ${r.failure()?.errorText}`);
    });
    page.on("response", (r) => {
      if (r.status() >= 400) log.failed.push(`${r.url()}: HTTP ${r.status()}`);
    });
    await page.setRequestInterception(true);
    page.on("request", (r) => {
      const u = r.url();
      log.requests.push(u);
      if (u.startsWith("data:")) return void r.continue();
      if (new URL(u).origin !== origin) {
        log.blocked.push(u);
        return void r.abort("blockedbyclient");
      }
      const name = decodeURIComponent(new URL(u).pathname.slice(1));
      if (o.files) {
        const body = o.files[name];
        return void r.respond(
          body === undefined
            ? { status: 404, body: "" }
            : { status: 200, contentType: "text/html; charset=utf-8", body },
        );
      }
      r.continue();
    });
    const res = await page.goto(url, { waitUntil: "load", timeout: 60_000 });
    return { page, log, status: res?.status() ?? null };
  }

  /** Serve one HTML text as http://report.test/page.html and open it. */
  openHtml(html: string): Promise<{ page: Page; log: PageLog; status: number | null }> {
    return this.open("http://report.test/page.html", { files: { "page.html": html } });
  }

  async close(): Promise<void> {
    await this.browser.close();
  }
}

/** Nothing went wrong in the page: no console error, no uncaught error, no failed or outside request. */
export function expectCleanPage(log: PageLog): void {
  expect(log.consoleErrors).toEqual([]);
  expect(log.pageErrors).toEqual([]);
  expect(log.failed).toEqual([]);
  expect(log.blocked).toEqual([]);
}

/** The charts on a page as the browser has them (itera's bar charts: svg.chart, one g.bar per bar). */
export function drawnCharts(page: Page): Promise<DrawnChart[]> {
  return page.$$eval("svg.chart", (svgs) =>
    svgs.map((svg) => ({
      title: svg.querySelector(".chart-title")?.textContent ?? "",
      bars: [...svg.querySelectorAll("g.bar")].map((g) => ({
        label: g.querySelector(".bar-label")?.textContent ?? "",
        value: (g as SVGGElement).dataset.value === "" ? null : Number((g as SVGGElement).dataset.value),
      })),
    })),
  );
}

/** Wait, polling the page, until `fn` holds (generous: the machine may be busy; not a timing check). */
export async function waitOnPage<T>(page: Page, fn: () => T, timeoutMs = 60_000): Promise<void> {
  await page.waitForFunction(fn, { timeout: timeoutMs, polling: 250 });
}
