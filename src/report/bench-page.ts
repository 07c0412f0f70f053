import { type BenchResult, decodeLabel } from "../bench/result.js";
import { type Bar, barChart, color, escapeHtml, htmlPage, htmlTable, num } from "./html.js";

/** One benchmark run in a report: its results (one per test × thread count) and a name for it. */
export interface BenchRun {
  label: string;
  results: readonly BenchResult[];
}

const uniq = (xs: ReadonlyArray<string | null>): string =>
  [...new Set(xs.filter((x): x is string => x !== null && x !== ""))].join(", ") || "–";

/** Why a result has no energy figure (never shown as 0). */
export function energyWhy(r: BenchResult): string | null {
  const e = r.energy;
  if (!e) return "energy not measured";
  if (e.mJ_per_token === null)
    return e.note ?? (e.complete ? "the meter gave no figure" : "incomplete readings");
  return null;
}

const isSimulated = (r: BenchResult) =>
  r.energy?.simulated === true || (r.energy?.method.endsWith("-simulated") ?? false);

/** The tests in the order they first appear (pp before tg as run). */
const testsOf = (runs: readonly BenchRun[]) => [
  ...new Set(runs.flatMap((r) => r.results.map((x) => x.test))),
];

/** The bars of one test across runs and thread counts. */
function barsFor(
  runs: readonly BenchRun[],
  test: string,
  value: (r: BenchResult) => Omit<Bar, "label">,
): Bar[] {
  const many = runs.length > 1;
  return runs.flatMap((run) =>
    run.results
      .filter((r) => r.test === test)
      .map((r) => ({ label: `${many ? `${run.label} · ` : ""}t=${r.threads}`, ...value(r) })),
  );
}

/** A self-contained HTML report of one or more benchmark runs (`itera bench --html`, `itera bench-report`). */
export function renderBenchHtml(
  runs: readonly BenchRun[],
  o: { version: string; generated: Date; title?: string },
): string {
  const all = runs.flatMap((r) => r.results);
  const title =
    o.title ??
    `Benchmark of ${uniq(all.map((r) => r.model))} on ${uniq(all.map((r) => r.device))} (${uniq(all.map((r) => r.profile))})`;
  const simulated = [...new Set(all.filter(isSimulated).map((r) => r.energy!.method))];
  const body: string[] = [`<h1>${escapeHtml(title)}</h1>`];
  body.push(
    `<p class="muted">generated ${escapeHtml(o.generated.toISOString())} by itera ${escapeHtml(o.version)}; ${runs.length} run(s), ${all.length} result(s)</p>`,
  );
  if (simulated.length > 0) {
    body.push(
      `<p class="sim" id="simulated">simulated energy: ${escapeHtml(simulated.join(", "))} figures were read from a simulated meter, not measured on the device</p>`,
    );
  }

  body.push("<h2>Conditions</h2>");
  body.push(
    htmlTable(
      [
        "run",
        "machine",
        "profile",
        "model",
        "precision",
        "decode path",
        "runtime",
        "date",
        "version",
        "threads",
        "repetitions",
      ],
      runs.map((run) => {
        const rs = run.results;
        const dates = rs.map((r) => r.timestamp).sort();
        return [
          run.label,
          uniq(rs.map((r) => r.device)),
          uniq(rs.map((r) => r.profile)),
          uniq(rs.map((r) => r.model)),
          uniq(rs.map((r) => r.quant)),
          uniq(rs.map(decodeLabel)),
          uniq(rs.map((r) => r.runtime)),
          dates.length > 0
            ? `${dates[0]}${dates.length > 1 && dates.at(-1) !== dates[0] ? ` – ${dates.at(-1)}` : ""}`
            : "–",
          uniq(rs.map((r) => r.agent_version)),
          uniq(rs.map((r) => String(r.threads))),
          uniq(rs.map((r) => String(r.repetitions))),
        ];
      }),
      ' id="conditions"',
    ),
  );
  if (all.some((r) => r.tokenizer === false)) {
    body.push(
      '<p class="muted">no tokenizer.json: the prompts are synthetic token ids (deterministic, inside the vocabulary)</p>',
    );
  }

  const tests = testsOf(runs);
  const figure = (svg: string, caption: string) =>
    `<figure>${svg}<figcaption>${escapeHtml(caption)}</figcaption></figure>`;
  body.push("<h2>Speed</h2>", '<div class="charts" id="speed">');
  tests.forEach((test, i) => {
    body.push(
      figure(
        barChart({
          title: `${test}: tokens/s (higher is better)`,
          color: color(i),
          bars: barsFor(runs, test, (r) => ({ value: r.tokens_per_s.mean, err: r.tokens_per_s.stdev })),
        }),
        "mean ± stdev over the repetitions",
      ),
    );
  });
  body.push("</div>", "<h2>Latency</h2>", '<div class="charts" id="latency">');
  for (const test of tests) {
    body.push(
      figure(
        barChart({
          title: `${test}: time to first token, ms (lower is better)`,
          color: color(2),
          bars: barsFor(runs, test, (r) => ({ value: r.ttft_ms })),
        }),
        "prefill of the prompt and the first generated token",
      ),
      figure(
        barChart({
          title: `${test}: latency per token p50 / p95, ms`,
          color: color(3),
          bars: barsFor(runs, test, (r) => ({
            value: r.latency_ms.p50,
            note: `p95 ${num(r.latency_ms.p95)}`,
          })),
        }),
        "bar: median; p95 after it",
      ),
    );
  }
  body.push("</div>", "<h2>Energy</h2>", '<div class="charts" id="energy">');
  const energyBar = (r: BenchResult, v: number | null | undefined): Omit<Bar, "label"> => ({
    value: v ?? null,
    note: v === null || v === undefined ? energyWhy(r) : `${r.energy!.method}`,
    simulated: isSimulated(r),
  });
  for (const test of tests) {
    body.push(
      figure(
        barChart({
          title: `${test}: mJ per token (lower is better)`,
          color: color(1),
          bars: barsFor(runs, test, (r) => energyBar(r, r.energy?.mJ_per_token)),
        }),
        "gross energy over the test divided by its tokens; the method in brackets",
      ),
      figure(
        barChart({
          title: `${test}: tokens per joule (higher is better)`,
          color: color(5),
          bars: barsFor(runs, test, (r) => energyBar(r, r.energy?.tokens_per_J)),
        }),
        "the method in brackets; n/a says why there is no figure",
      ),
    );
  }
  body.push("</div>");

  body.push("<h2>All results</h2>");
  body.push(
    htmlTable(
      [
        ...(runs.length > 1 ? ["run"] : []),
        "test",
        "threads",
        "decode",
        "tokens/s",
        "± stdev",
        "TTFT ms",
        "p50 ms",
        "p95 ms",
        "mJ/token",
        "tokens/J",
        "net mJ/token",
        "energy method",
        "uncertainty",
        "energy note",
        "CPU %",
        "RSS MB",
        "temp °C",
        "throttled",
      ],
      runs.flatMap((run) =>
        run.results.map((r) => [
          ...(runs.length > 1 ? [run.label] : []),
          r.test,
          String(r.threads),
          decodeLabel(r),
          r.tokens_per_s.mean,
          r.tokens_per_s.stdev,
          r.ttft_ms,
          r.latency_ms.p50,
          r.latency_ms.p95,
          r.energy?.mJ_per_token ?? null,
          r.energy?.tokens_per_J ?? null,
          r.energy?.net_mJ_per_token ?? null,
          r.energy ? `${r.energy.method}${isSimulated(r) ? " (simulated)" : ""}` : null,
          r.energy?.uncertainty ?? null,
          energyWhy(r) ?? r.energy?.note ?? null,
          r.cpu_pct,
          r.rss_mb,
          r.temp_c_max,
          r.throttled === null ? null : r.throttled ? "yes" : "no",
        ]),
      ),
      ' id="results"',
    ),
  );
  return htmlPage({ title, body: body.join("\n") });
}
