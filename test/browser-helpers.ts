import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";

/**
 * A real headless Chromium (Debian's /usr/bin/chromium) that opens a page and prints its DOM after
 * the page's scripts ran. Every request of the browser goes through a local proxy that logs it, so a
 * test sees whether a page asked the network for anything.
 */
export interface BrowserResult {
  dom: string;
  /** Every request the browser made (absolute URLs, or `CONNECT host:port`), the page's own included. */
  requests: string[];
}

const CHROMIUM = "/usr/bin/chromium";

/** Chromium's own background traffic (component updates, time, accounts): not the page's. */
function isChromiumService(url: string): boolean {
  try {
    const host = new URL(url).hostname;
    return /(^|\.)(google\.com|googleapis\.com|gvt1\.com|gstatic\.com)$/.test(host);
  } catch {
    return false;
  }
}

/**
 * Serve `files` at http://report.test/<name> through a logging proxy and dump `page`'s DOM.
 * `budgetMs`: virtual time the page may run (timers, event streams) before the dump.
 */
export async function openInBrowser(
  files: Record<string, string>,
  page: string,
  { budgetMs = 2000, direct, forward }: { budgetMs?: number; direct?: string; forward?: string } = {},
): Promise<BrowserResult> {
  const requests: string[] = [];
  const proxy: Server = createServer((req, res) => {
    if (!isChromiumService(req.url ?? "")) requests.push(req.url ?? "");
    const u = new URL(req.url ?? "/", "http://report.test");
    // A live server under test (`forward`: its origin) is reached through the proxy, streams included.
    if (forward && u.origin === forward) {
      const up = request(u, { method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      up.on("error", () => res.destroy());
      res.on("close", () => up.destroy());
      req.pipe(up);
      return;
    }
    const name = decodeURIComponent(u.pathname.slice(1));
    if (u.host === "report.test" && files[name] !== undefined) {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(files[name]);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  proxy.on("connect", (req, socket) => {
    if (!isChromiumService(`https://${req.url}`)) requests.push(`CONNECT ${req.url}`);
    socket.destroy();
  });
  await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
  const port = (proxy.address() as AddressInfo).port;
  try {
    const dom = await new Promise<string>((resolve, reject) => {
      execFile(
        CHROMIUM,
        [
          "--headless=new",
          "--no-sandbox",
          "--disable-gpu",
          "--no-first-run",
          "--disable-background-networking",
          "--disable-component-update",
          "--disable-sync",
          `--proxy-server=http://127.0.0.1:${port}`,
          // Loopback too goes through the proxy, so nothing escapes the log.
          "--proxy-bypass-list=<-loopback>",
          `--virtual-time-budget=${budgetMs}`,
          "--dump-dom",
          direct ?? `http://report.test/${page}`,
        ],
        { timeout: 90_000, maxBuffer: 64 * 1024 * 1024 },
        (err, stdout) => (err ? reject(err) : resolve(stdout)),
      );
    });
    return { dom, requests };
  } finally {
    await new Promise<void>((r) => proxy.close(() => r()));
  }
}

export async function openFileInBrowser(path: string, opts?: { budgetMs?: number }): Promise<BrowserResult> {
  return openInBrowser({ "page.html": await readFile(path, "utf8") }, "page.html", opts);
}

/** The elements of a tag name in a DOM dump (e.g. how many <img> the page really created). */
export function countTags(dom: string, tag: string): number {
  return (dom.match(new RegExp(`<${tag}[\\s>/]`, "gi")) ?? []).length;
}
