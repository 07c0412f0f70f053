import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import type { Command } from "commander";
import { IteraError } from "../../errors.js";
import { type BenchEvent, type FleetBenchOutcome, parseSelect, runFleetBench } from "../../fleet/bench.js";
import { FeedbackHistory, summarizeVariants } from "../../fleet/feedback.js";
import { renderMarkdown, reportRow, writeReport } from "../../fleet/report.js";
import { openFleetHistory, storedOutcome } from "../../fleet/report-source.js";
import { printEvents, registerFleetFeedback, retrainPolicy } from "./fleet-feedback.js";
import { startSimulation } from "../../fleet/simulate.js";
import { registerFleetUpdate } from "./fleet-update.js";
import { registerFleetTune } from "./fleet-tune.js";
import { tuneRow } from "../../fleet/tune.js";
import { registerFleetDashboard } from "./fleet-dashboard.js";
import { defaultFleetDb, FleetStore } from "../../fleet/store.js";
import { type WatchMode, watchFleet } from "../../fleet/watch.js";
import {
  addBrokerOptions,
  type BrokerCliOptions,
  brokerOptions,
  checkId,
  positive,
} from "../../protocol/options.js";
import { benchmarkParamsSchema } from "../../protocol/schemas.js";
import { checkOutputDir, type DirTarget, writeDirAtomic } from "../../util/output.js";
import { progress } from "../../util/progress.js";
import { csvTable, markdownTable } from "../../util/table.js";
import { action, collect, printJson } from "../run.js";

interface BenchCliOptions extends BrokerCliOptions {
  fleet: string;
  devices?: string;
  select?: string[];
  model: string;
  tests: string;
  threads?: string;
  repetitions: string;
  warmup: string;
  minDuration?: string;
  timeout: string;
  discover?: string;
  out?: string;
  db?: string;
  shareGroup?: string;
  json?: boolean;
}

function list(value: string): string[] {
  return value
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

function openStore(path: string | undefined): FleetStore {
  return new FleetStore(path ?? defaultFleetDb());
}

/**
 * The --out folder, checked before any work (src/util/output.ts): new, empty, or an earlier report of
 * itera fleet (its marker) and nothing else; never the history database or a folder holding it.
 */
async function reportTarget(opts: { out?: string; db?: string }): Promise<DirTarget | undefined> {
  if (opts.out === undefined) return undefined;
  return checkOutputDir(opts.out, {
    command: "itera fleet",
    option: "--out",
    inputs: [opts.db ?? defaultFleetDb()],
  });
}

/** Print a benchmark's report (markdown, or JSON with --json) and write the files into `out`. */
async function emitReport(
  run: FleetBenchOutcome,
  opts: { json?: boolean; db?: string },
  out: DirTarget | undefined,
): Promise<void> {
  // The feedback rates per variant beside the benchmark's, as the fleet database has them now.
  const history = new FeedbackHistory(opts.db ?? defaultFleetDb());
  let outcome: FleetBenchOutcome;
  try {
    outcome = { ...run, feedback: summarizeVariants(history.feedback({ fleet: run.fleet })).variants };
  } finally {
    history.close();
  }
  let files: string[] = [];
  if (out) {
    // Written as one folder: all five files or, on failure or Ctrl-C, none.
    await writeDirAtomic(out, async (tmp) => {
      files = (await writeReport(tmp, outcome)).map((f) => join(out.dir, basename(f)));
    });
  }
  if (opts.json) printJson({ ...outcome, rows: outcome.devices.map(reportRow), files });
  else {
    process.stdout.write(renderMarkdown(outcome));
    if (files.length > 0) process.stdout.write(`\nwritten: ${files.join(", ")}\n`);
  }
}

function registerBench(fleet: Command): void {
  addBrokerOptions(
    fleet
      .command("bench")
      .description("benchmark every selected device of a fleet over MQTT and write a report")
      .requiredOption("--fleet <name>", "fleet name (topic level itera/v1/<fleet>/...)")
      .option("--devices <n>", "benchmark this many online devices (waits for them to appear)")
      .option(
        "--select <key=value>",
        "only devices whose birth matches (profile, arch, platform, model, device)",
        collect,
      )
      .requiredOption("--model <id>", "model id the devices must have (see their birth message)")
      .option("--tests <list>", "tests, comma-separated ppN / tgN", "pp64,tg128")
      .option(
        "--threads <list>",
        "thread counts, comma-separated (default: each device's tuned choice, else its profile's threads)",
      )
      .option("--repetitions <n>", "repetitions per test", "3")
      .option("--warmup <n>", "warm-up runs per test (not measured)", "1")
      .option(
        "--min-duration <s>",
        "each repetition repeats its test at least this long (default: each device profile's)",
      )
      .option("--timeout <s>", "deadline for the whole run, seconds", "300")
      .option("--discover <s>", "how long to wait for devices to announce themselves, seconds")
      .option("--out <dir>", "write report.md/.csv/.json/.html, results.json and chart.svg here")
      .option("--db <path>", `fleet history database (default ${defaultFleetDb()})`)
      .option("--share-group <name>", "receive results through a $share group (several coordinators)")
      .option("--json", "print the whole outcome as JSON"),
  ).action(
    action(async (opts: BenchCliOptions) => {
      const fleetName = checkId(opts.fleet, "--fleet");
      const parsed = benchmarkParamsSchema.safeParse({
        model: opts.model,
        tests: list(opts.tests),
        ...(opts.threads !== undefined ? { threads: list(opts.threads).map(Number) } : {}),
        repetitions: Number(opts.repetitions),
        warmup: Number(opts.warmup),
        ...(opts.minDuration !== undefined ? { min_duration_s: Number(opts.minDuration) } : {}),
      });
      if (!parsed.success) {
        const i = parsed.error.issues[0]!;
        throw new IteraError(`invalid benchmark parameter '${i.path.join(".")}': ${i.message}`, {
          where: `--${String(i.path[0])}`,
          fix: "e.g. --tests pp64,tg128 --threads 1,2 --repetitions 3",
        });
      }
      const devices = opts.devices === undefined ? undefined : positive(opts.devices, "--devices", true);
      const select = parseSelect(opts.select);
      const broker = brokerOptions(opts);
      const timeoutS = positive(opts.timeout, "--timeout");
      const discoverS = opts.discover ? positive(opts.discover, "--discover") : undefined;
      const shareGroup = opts.shareGroup ? checkId(opts.shareGroup, "--share-group") : undefined;
      const out = await reportTarget(opts);
      const store = openStore(opts.db);
      let bar: ReturnType<typeof progress> | undefined;
      let done = 0;
      const onEvent = (e: BenchEvent) => {
        if (e.type === "discovered") {
          if (devices && e.devices.length < devices) {
            process.stderr.write(`warning: only ${e.devices.length} of ${devices} devices are online\n`);
          }
          bar = progress(`fleet bench (${e.devices.length} devices)`, e.devices.length);
        } else if (e.type === "done") {
          bar?.update(++done, `${e.device} ${e.status}`);
        } else if (e.type === "sent" && e.resend) {
          process.stderr.write(`${e.device} came back: job sent again\n`);
        } else if (e.type === "refused") {
          process.stderr.write(`refused a message on ${e.topic}: ${e.reason}\n`);
        } else if (e.type === "warning") {
          process.stderr.write(`\nWARNING: ${e.message}\n\n`);
        }
      };
      try {
        const outcome = await runFleetBench({
          broker,
          fleet: fleetName,
          ...(devices ? { devices } : {}),
          ...(select ? { select } : {}),
          params: parsed.data,
          timeoutS,
          ...(discoverS ? { discoverS } : {}),
          store,
          ...(shareGroup ? { shareGroup } : {}),
          onEvent,
        });
        bar?.done();
        await emitReport(outcome, opts, out);
        if (outcome.devices.every((d) => d.status !== "SUCCEEDED")) process.exitCode = 2;
      } finally {
        store.close();
      }
    }),
  );
}

interface WatchCliOptions extends BrokerCliOptions {
  fleet: string;
  duration?: string;
  db?: string;
  clientId?: string;
  retrainThreshold?: string;
  retrainWindow?: string;
  json?: boolean;
}

function registerWatch(fleet: Command): void {
  addBrokerOptions(
    fleet
      .command("watch")
      .description("show live device state and telemetry (table on a terminal, lines otherwise)")
      .requiredOption("--fleet <name>", "fleet name")
      .option("--duration <s>", "stop after this many seconds (default: until Ctrl-C)")
      .option("--db <path>", "store telemetry and the devices' feedback in this fleet database")
      .option(
        "--client-id <id>",
        "a fixed MQTT client id: a persistent session (the broker keeps feedback while watch is away)",
      )
      .option(
        "--retrain-threshold <n>",
        "negative ratings of one model version that request a retraining (with --db)",
        "50",
      )
      .option("--retrain-window <hours>", "within this many hours", "168")
      .option("--json", "print one JSON object per event (JSON lines)"),
  ).action(
    action(async (opts: WatchCliOptions) => {
      const mode: WatchMode = opts.json ? "json" : process.stdout.isTTY ? "table" : "lines";
      const store = opts.db ? new FleetStore(opts.db) : undefined;
      const ac = new AbortController();
      const stop = () => ac.abort();
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
      try {
        await watchFleet({
          broker: brokerOptions(opts),
          fleet: checkId(opts.fleet, "--fleet"),
          mode,
          ...(store ? { store, retrain: retrainPolicy(opts.retrainThreshold, opts.retrainWindow) } : {}),
          ...(opts.clientId ? { clientId: opts.clientId } : {}),
          ...(opts.duration ? { durationS: positive(opts.duration, "--duration") } : {}),
          signal: ac.signal,
        });
      } finally {
        process.off("SIGINT", stop);
        process.off("SIGTERM", stop);
        store?.close();
      }
    }),
  );
}

interface ReportCliOptions {
  db?: string;
  job?: string;
  out?: string;
  json?: boolean;
}

function registerReport(fleet: Command): void {
  fleet
    .command("report")
    .description("render the report of a stored fleet benchmark again (default: the latest)")
    .option("--db <path>", `fleet history database (default ${defaultFleetDb()})`)
    .option("--job <id>", "the benchmark run (jobId; see `itera fleet history`)")
    .option("--out <dir>", "write report.md/.csv/.json/.html, results.json and chart.svg here")
    .option("--json", "print the outcome as JSON")
    .action(
      action(async (opts: ReportCliOptions) => {
        const out = await reportTarget(opts);
        // A missing, foreign or non-SQLite --db is refused untouched (never given itera's tables).
        const store = openFleetHistory(opts.db ?? defaultFleetDb());
        try {
          await emitReport(storedOutcome(store, opts.job), opts, out);
        } finally {
          store.close();
        }
      }),
    );
}

interface HistoryCliOptions {
  db?: string;
  telemetry?: boolean;
  tune?: boolean;
  byVariant?: boolean;
  job?: string;
  device?: string;
  fleet?: string;
  events?: boolean;
  json?: boolean;
  csv?: boolean;
}

function registerHistory(fleet: Command): void {
  fleet
    .command("history")
    .description("query the stored fleet history: results (default), runs or telemetry")
    .option("--db <path>", `fleet history database (default ${defaultFleetDb()})`)
    .option("--telemetry", "telemetry instead of benchmark results")
    .option(
      "--by-variant",
      "with --telemetry: one row per A/B variant (means of tok/s, mJ/token, CPU), side by side",
    )
    .option("--events", "the coordinator's events (retraining requested) instead of benchmark results")
    .option("--tune", "tune results (itera fleet tune): each device's pick and its figures")
    .option("--job <id>", "only this benchmark run")
    .option("--device <id>", "only this device")
    .option("--fleet <name>", "only this fleet")
    .option("--json", "JSON")
    .option("--csv", "CSV")
    .action(
      action(async (opts: HistoryCliOptions) => {
        if (opts.events)
          return printEvents(opts.db, opts.fleet, opts.json ? "json" : opts.csv ? "csv" : "md");
        const store = openStore(opts.db);
        try {
          const filter = {
            ...(opts.fleet ? { fleet: opts.fleet } : {}),
            ...(opts.device ? { device: opts.device } : {}),
          };
          let headers: string[];
          let rows: Array<Array<string | number | boolean | null>>;
          let json: unknown;
          if (opts.tune) {
            const t = store.tuneResults({ ...filter, ...(opts.job ? { jobId: opts.job } : {}) });
            json = t;
            headers = [
              "job",
              "device",
              "profile",
              "pick",
              "tok_s",
              "mj_per_token",
              "method",
              "applied",
              "measured",
            ];
            rows = t.map((x) => {
              const r = tuneRow({ device: x.device, status: "SUCCEEDED", details: null, result: x.result });
              const at = x.result.tuned.measured_at;
              return [
                x.jobId,
                x.device,
                r.profile,
                r.pick,
                r.tokens_per_s,
                r.mj_per_token,
                r.energy_method,
                r.applied,
                at,
              ];
            });
          } else if (opts.telemetry && opts.byVariant) {
            const t = store.telemetryByVariant(filter);
            json = t;
            headers = [
              "variant",
              "devices",
              "messages",
              "cpu_pct",
              "tok_s",
              "mj_per_token",
              "temp_c_max",
              "method",
            ];
            rows = t.map((x) => [
              x.variant ?? "unknown",
              x.devices,
              x.messages,
              x.cpu_pct,
              x.tok_s,
              x.mj_per_token,
              x.temp_c_max,
              x.methods.join(", ") || null,
            ]);
          } else if (opts.telemetry) {
            const t = store.telemetry(filter);
            json = t;
            headers = [
              "fleet",
              "device",
              "bdSeq",
              "seq",
              "time",
              "cpu_pct",
              "temp_c",
              "rss_mb",
              "tok_s",
              "mj_per_token",
              "method",
              "throttled",
              "variant",
            ];
            rows = t.map((x) => [
              x.fleet,
              x.device,
              x.bdSeq,
              x.seq,
              new Date(x.ts).toISOString(),
              x.m.cpu_pct,
              x.m.temp_c,
              x.m.rss_mb,
              x.m.tok_s,
              x.m.mj_per_token,
              x.m.method,
              x.m.throttled,
              x.variant,
            ]);
          } else {
            const r = store.results({ ...filter, ...(opts.job ? { jobId: opts.job } : {}) });
            json = r;
            headers = [
              "job",
              "fleet",
              "device",
              "execNo",
              "test",
              "threads",
              "tok_s",
              "ttft_ms",
              "p95_ms",
              "mj_per_token",
              "method",
              "time",
            ];
            rows = r.map((x) => [
              x.jobId,
              x.fleet,
              x.device,
              x.execNo,
              x.result.test,
              x.result.threads,
              x.result.tokens_per_s.mean,
              x.result.ttft_ms,
              x.result.latency_ms.p95,
              x.result.energy?.mJ_per_token ?? null,
              x.result.energy?.method ?? null,
              x.result.timestamp,
            ]);
          }
          if (opts.json) printJson(json);
          else if (opts.csv) process.stdout.write(`${csvTable(headers, rows)}\n`);
          else {
            process.stdout.write(`${markdownTable(headers, rows)}\n`);
          }
        } finally {
          store.close();
        }
      }),
    );
}

interface SimulateCliOptions extends BrokerCliOptions {
  fleet: string;
  devices: string;
  model: string;
  stateDir?: string;
  telemetryInterval: string;
  meter: string;
  replay?: string;
  profiles?: string;
  json?: boolean;
}

function registerSimulate(fleet: Command): void {
  addBrokerOptions(
    fleet
      .command("simulate")
      .description("start N local agents with different device profiles and simulated INA219 meters")
      .requiredOption("--fleet <name>", "fleet name")
      .option("--devices <n>", "number of agents", "3")
      .requiredOption("--model <dir>", "model folder every agent benchmarks")
      .option("--state-dir <dir>", "agents' state directories (default: a new temp dir)")
      .option("--telemetry-interval <s>", "seconds between telemetry messages", "2")
      .option(
        "--meter <name>",
        "ina219 (simulated bridge on a socat pty) or tdp (profile estimate)",
        "ina219",
      )
      .option("--profiles <list>", "only these profiles, comma-separated (default: all, in turn)")
      .option("--replay <file>", "load tests only: agents answer with recorded results")
      .option("--json", "print the started devices as JSON"),
  ).action(
    action(async (opts: SimulateCliOptions) => {
      if (opts.meter !== "ina219" && opts.meter !== "tdp") {
        throw new IteraError(`unknown simulated meter '${opts.meter}'`, {
          where: "--meter",
          fix: "use ina219 or tdp",
        });
      }
      const sim = await startSimulation({
        broker: brokerOptions(opts),
        fleet: checkId(opts.fleet, "--fleet"),
        devices: positive(opts.devices, "--devices", true),
        modelDir: opts.model,
        stateDir: opts.stateDir ?? (await mkdtemp(join(tmpdir(), "itera-sim-"))),
        telemetryIntervalS: positive(opts.telemetryInterval, "--telemetry-interval"),
        meter: opts.meter,
        ...(opts.replay ? { replay: opts.replay } : {}),
        ...(opts.profiles ? { profiles: list(opts.profiles) } : {}),
      });
      if (opts.json) printJson(sim.devices);
      const stop = () => void sim.stop();
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
      await sim.exited;
      await sim.stop();
    }),
  );
}

/** `itera fleet ...`: benchmark, watch, query and simulate fleets of devices over MQTT (DESIGN.md §8). */
export function registerFleet(program: Command): void {
  const fleet = program.command("fleet").description("benchmark and watch fleets of devices over MQTT");
  registerBench(fleet);
  registerWatch(fleet);
  registerHistory(fleet);
  registerFleetFeedback(fleet);
  registerReport(fleet);
  registerSimulate(fleet);
  registerFleetUpdate(fleet);
  registerFleetTune(fleet);
  registerFleetDashboard(fleet);
}
