import type { FleetBenchOutcome } from "../fleet/bench.js";
import { threadsLabel } from "../protocol/schemas.js";
import {
  REPORT_HEADERS,
  type ReportRow,
  reportCells,
  reportRow,
  VARIANT_HEADERS,
  variantCells,
  variantRows,
} from "../fleet/report.js";
import { type Bar, barChart, color, escapeHtml, htmlPage, htmlTable } from "./html.js";

/** A device's group in the charts: its profile, and its model variant (precision) when known. */
const groupOf = (r: ReportRow) => (r.quant ? `${r.profile} · ${r.quant}` : r.profile);

/** The fleet report's title: the job, the model and the date (also chart.svg's). */
export function fleetTitle(o: FleetBenchOutcome): string {
  return `Fleet benchmark ${o.jobId}: ${o.model}, ${new Date(o.startedMs).toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

const isSimulated = (r: ReportRow) => r.energy_method?.endsWith("-simulated") ?? false;

/** Why a device has no figure: it did not succeed, or it measured no energy. */
function why(r: ReportRow, energy: boolean): string {
  if (r.status !== "SUCCEEDED") return `${r.status}${r.details ? `: ${r.details}` : ""}`;
  return energy ? "no energy figure (no meter)" : "not measured";
}

/** report.html of `itera fleet bench` / `itera fleet report`: a row per device, a chart per metric grouped by profile. */
export function renderFleetHtml(o: FleetBenchOutcome): string {
  const rows = o.devices.map(reportRow);
  const groups = [...new Set(rows.map(groupOf))].sort();
  // Grouped: devices of one profile (and variant) side by side, one colour per group.
  const ordered = [...rows].sort(
    (a, b) => groups.indexOf(groupOf(a)) - groups.indexOf(groupOf(b)) || a.device.localeCompare(b.device),
  );
  const title = fleetTitle(o);
  const ok = rows.filter((r) => r.status === "SUCCEEDED").length;
  const simulated = [...new Set(rows.filter(isSimulated).map((r) => r.energy_method!))];
  const body: string[] = [`<h1>${escapeHtml(title)}</h1>`];
  body.push(
    `<p class="muted">fleet ${escapeHtml(o.fleet)}, tests ${escapeHtml(o.params.tests.join(", "))}, threads ${escapeHtml(threadsLabel(o.params))}, ${o.params.repetitions} repetitions; <span id="succeeded">${ok}/${rows.length}</span> devices succeeded in ${((o.finishedMs - o.startedMs) / 1000).toFixed(1)} s</p>`,
  );
  if (simulated.length > 0) {
    body.push(
      `<p class="sim" id="simulated">simulated energy: ${escapeHtml(simulated.join(", "))} figures were read from a simulated meter, not measured on the device</p>`,
    );
  }
  for (const w of o.warnings ?? []) body.push(`<p class="sim">${escapeHtml(w)}</p>`);
  body.push(
    '<p class="muted">groups: ',
    groups
      .map((g, i) => `<span style="color:${color(i)}">■</span> <span class="group">${escapeHtml(g)}</span>`)
      .join(" &nbsp; "),
    "</p>",
  );

  const metrics: Array<{ title: string; value: (r: ReportRow) => number | null; energy?: boolean }> = [
    { title: "generation tokens/s (higher is better)", value: (r) => r.tg_tok_s },
    { title: "prefill tokens/s (higher is better)", value: (r) => r.pp_tok_s },
    { title: "time to first token, ms (lower is better)", value: (r) => r.ttft_ms },
    { title: "latency p95, ms (lower is better)", value: (r) => r.p95_ms },
    { title: "mJ per token (lower is better)", value: (r) => r.mj_per_token, energy: true },
    { title: "tokens per joule (higher is better)", value: (r) => r.tokens_per_j, energy: true },
    { title: "temperature °C", value: (r) => r.temp_c },
  ];
  body.push("<h2>Charts</h2>", '<div class="charts" id="charts">');
  for (const m of metrics) {
    const bars: Bar[] = ordered.map((r) => {
      const v = m.value(r);
      return {
        label: `${r.device} (${groupOf(r)})`,
        value: v,
        color: color(groups.indexOf(groupOf(r))),
        note: v === null ? why(r, m.energy === true) : m.energy ? r.energy_method : null,
        simulated: m.energy === true && isSimulated(r),
      };
    });
    body.push(`<figure>${barChart({ title: m.title, bars })}</figure>`);
  }
  body.push("</div>", "<h2>Devices</h2>");
  body.push(
    htmlTable(
      [...REPORT_HEADERS, "details"],
      // the method names a simulated meter itself ("ina219-simulated")
      ordered.map((r) => [...reportCells(r), r.details]),
      ' id="devices"',
    ),
  );
  body.push(
    '<p class="muted">tokens/s: mean over repetitions at the fastest thread count; TTFT and p95 from the generation test; mJ/token and tokens/J with the method that measured them.</p>',
  );
  // A/B variants side by side (itera fleet update --variant; a device without one: its release).
  body.push(
    "<h2>Per variant</h2>",
    htmlTable(VARIANT_HEADERS, variantRows(o).map(variantCells), ' id="variants"'),
  );
  return htmlPage({ title, body: body.join("\n") });
}
