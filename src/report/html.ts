/**
 * The pieces every HTML page of itera is made of (benchmark reports, fleet reports, the live
 * dashboard): escaping, a self-contained page shell and hand-written inline SVG bar charts.
 * Pages load nothing: styles and scripts are inline and the Content-Security-Policy forbids any
 * request, so a report opens offline and a hostile device string cannot call out.
 */

import type { Cell } from "../util/table.js";

/** Forbids every request; only inline styles/scripts and data: images run. */
export const PAGE_CSP =
  "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:";

/** Text or attribute value made inert: every device-supplied string goes through it. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A JSON value embedded in an inline <script>: `<` escaped so `</script>` cannot end it early. */
export function scriptJson(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, "\\u003c")
    .replace(/\u2028/g, "\\u2028")
    .replace(/\u2029/g, "\\u2029");
}

/** A number for display: null/NaN shown as the given placeholder; few digits for big values. */
export function num(x: number | null | undefined, empty = "–"): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return empty;
  const a = Math.abs(x);
  return a >= 100 ? x.toFixed(1) : a >= 10 ? x.toFixed(2) : x.toFixed(3);
}

const STYLE = `
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;max-width:1200px}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}h3{font-size:1rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3;cursor:pointer}td.n{text-align:right;font-variant-numeric:tabular-nums}
.sim{color:#b00;font-weight:bold}.why{color:#666;font-style:italic}.muted{color:#666}
.charts{display:flex;flex-wrap:wrap;gap:1rem}.charts figure{margin:0}
figcaption{font-size:.8rem;color:#555}
`;

/** Click a header to sort its table (numbers numerically); the page reads fine without it. */
const SORT_SCRIPT = `
document.querySelectorAll("table.sortable th").forEach(function(th,i){th.addEventListener("click",function(){
var tb=th.closest("table").tBodies[0];var rows=Array.prototype.slice.call(tb.rows);var up=th.dataset.dir!=="up";th.dataset.dir=up?"up":"down";
rows.sort(function(a,b){var x=a.cells[i].textContent,y=b.cells[i].textContent,nx=parseFloat(x),ny=parseFloat(y);
var c=isNaN(nx)||isNaN(ny)?x.localeCompare(y):nx-ny;return up?c:-c;});rows.forEach(function(r){tb.appendChild(r);});});});
document.documentElement.dataset.ready="1";
`;

/** Names the page as itera's own output: an existing file is replaced only when it carries it. */
export const GENERATOR_META = '<meta name="generator" content="itera">';

export function isIteraPage(text: string): boolean {
  return text.startsWith("<!doctype html>") && text.includes(GENERATOR_META);
}

/** A whole page: `body` is HTML already escaped by the caller; `script` runs after it. */
export function htmlPage(o: {
  title: string;
  body: string;
  script?: string;
  /** A live page's one allowed connection (e.g. `'self'` for its event stream); none otherwise. */
  connect?: string;
}): string {
  return [
    "<!doctype html>",
    '<html lang="en"><head><meta charset="utf-8">',
    GENERATOR_META,
    `<meta http-equiv="Content-Security-Policy" content="${PAGE_CSP}${o.connect ? `; connect-src ${o.connect}` : ""}">`,
    '<meta name="viewport" content="width=device-width,initial-scale=1">',
    `<title>${escapeHtml(o.title)}</title>`,
    `<style>${STYLE}</style>`,
    "</head><body>",
    o.body,
    `<script>${SORT_SCRIPT}${o.script ?? ""}</script>`,
    "</body></html>",
    "",
  ].join("\n");
}

/** A table: headers and cells are plain strings (escaped here); numeric cells right-aligned. */
export function htmlTable(
  headers: readonly string[],
  rows: ReadonlyArray<ReadonlyArray<Cell>>,
  attrs = "",
): string {
  const cell = (c: Cell) =>
    typeof c === "number"
      ? `<td class="n">${num(c)}</td>`
      : `<td>${escapeHtml(c == null ? "–" : String(c))}</td>`;
  return [
    `<table class="sortable"${attrs}><thead><tr>${headers.map((h) => `<th>${escapeHtml(h)}</th>`).join("")}</tr></thead><tbody>`,
    ...rows.map((r) => `<tr>${r.map(cell).join("")}</tr>`),
    "</tbody></table>",
  ].join("\n");
}

export interface Bar {
  label: string;
  value: number | null;
  /** ± spread drawn as a whisker (e.g. the stdev over repetitions). */
  err?: number | null;
  /** Shown after the value (e.g. the energy method); for a null value, why there is none. */
  note?: string | null;
  /** A simulated figure: hatched colour and the note in red. */
  simulated?: boolean;
  /** This bar's colour (e.g. its group's), else the chart's. */
  color?: string;
}

const PALETTE = ["#3b7dd8", "#d8703b", "#3ba55c", "#9b59b6", "#c0392b", "#16a085", "#7f8c8d"];
export const color = (i: number): string => PALETTE[i % PALETTE.length]!;

/**
 * A horizontal bar chart as inline SVG with a title, one labelled bar per entry, its value (± spread)
 * and note. Character widths are estimated (about 7 px at 12 px sans-serif) to size the columns.
 */
export function barChart(o: { title: string; bars: readonly Bar[]; color?: string }): string {
  const fill = o.color ?? color(0);
  const labelW = Math.max(100, Math.max(0, ...o.bars.map((b) => b.label.length)) * 7 + 12);
  const barMax = 300;
  const barH = 16;
  const texts = o.bars.map((b) =>
    b.value === null || !Number.isFinite(b.value)
      ? `n/a${b.note ? `: ${b.note}` : ""}`
      : `${num(b.value)}${b.err ? ` ± ${num(b.err)}` : ""}${b.note ? ` (${b.note})` : ""}`,
  );
  const textW = Math.max(60, ...texts.map((t) => t.length * 7));
  const width = Math.max(labelW + barMax + 12 + textW, o.title.length * 8 + 8);
  const height = 28 + o.bars.length * (barH + 6) + 4;
  const max = Math.max(0, ...o.bars.map((b) => (b.value ?? 0) + (b.err ?? 0)));
  const scale = (v: number) => (max > 0 ? (v / max) * barMax : 0);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12" role="img" class="chart">`,
    `<title>${escapeHtml(o.title)}</title>`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="4" y="16" font-weight="bold" class="chart-title">${escapeHtml(o.title)}</text>`,
  ];
  o.bars.forEach((b, i) => {
    const y = 28 + i * (barH + 6);
    // One group per bar, with its value as data (empty: no figure), so a test reads what was drawn.
    const value = b.value !== null && Number.isFinite(b.value) ? String(b.value) : "";
    parts.push(
      `<g class="bar" data-value="${value}">`,
      `<text x="4" y="${y + 12}" class="bar-label">${escapeHtml(b.label)}</text>`,
    );
    let end = labelW;
    if (b.value !== null && Number.isFinite(b.value)) {
      const w = Math.max(1, scale(b.value));
      parts.push(
        `<rect x="${labelW}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${b.color ?? fill}"${b.simulated ? ' fill-opacity="0.45" stroke="#b00" stroke-dasharray="3 2"' : ""}/>`,
      );
      end = labelW + w;
      if (b.err && b.err > 0) {
        const lo = labelW + Math.max(0, scale(b.value - b.err));
        const hi = labelW + scale(b.value + b.err);
        const m = y + barH / 2;
        parts.push(
          `<path d="M${lo.toFixed(1)} ${m}H${hi.toFixed(1)}M${lo.toFixed(1)} ${m - 4}V${m + 4}M${hi.toFixed(1)} ${m - 4}V${m + 4}" stroke="#222" fill="none"/>`,
        );
        end = Math.max(end, hi);
      }
    }
    const fillText = b.value === null ? "#888" : b.simulated ? "#b00" : "#222";
    parts.push(
      `<text x="${(end + 6).toFixed(1)}" y="${y + 12}" fill="${fillText}" class="bar-value">${escapeHtml(texts[i]!)}</text>`,
      "</g>",
    );
  });
  parts.push("</svg>");
  return parts.join("\n");
}
