import type { Command } from "commander";
import { IteraError } from "../../errors.js";
import { type BenchEvent, parseSelect } from "../../fleet/bench.js";
import { defaultFleetDb, FleetStore } from "../../fleet/store.js";
import { renderTuneMarkdown, runFleetTune, tuneSummaryRows } from "../../fleet/tune.js";
import {
  addBrokerOptions,
  type BrokerCliOptions,
  brokerOptions,
  checkId,
  positive,
} from "../../protocol/options.js";
import { tuneParamsSchema } from "../../protocol/schemas.js";
import { addTuneMeasureOptions, fraction } from "../../tune/command.js";
import { objectives } from "../../tune/tuned-file.js";
import { progress } from "../../util/progress.js";
import { action, collect, printJson } from "../run.js";

interface TuneCliOptions extends BrokerCliOptions {
  fleet: string;
  devices?: string;
  select?: string[];
  model?: string;
  objective: string;
  threads?: string;
  precisions?: string;
  decode: string;
  test: string;
  rounds: string;
  minDuration: string;
  tolerance: string;
  apply?: boolean;
  timeout: string;
  discover?: string;
  db?: string;
  json?: boolean;
}

const items = (value: string) =>
  value
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");

function tolerance(value: string): number {
  const r = fraction.safeParse(value);
  if (!r.success) {
    throw new IteraError(`invalid --tolerance '${value}'`, {
      where: "--tolerance",
      fix: "give a percentage or a fraction from 0 to 1, e.g. --tolerance 5% or --tolerance 0.05",
    });
  }
  return r.data;
}

/** The job's parameters from the options, each refused with the option that set it. */
function tuneParams(opts: TuneCliOptions) {
  if (!(objectives as readonly string[]).includes(opts.objective)) {
    throw new IteraError(`invalid --objective '${opts.objective}'`, {
      where: "--objective",
      fix: `use one of ${objectives.join(", ")} (energy: lowest mJ/token; speed: fewest threads within --tolerance of the fastest)`,
    });
  }
  const flags: Record<string, string> = {
    model: "--model",
    threads: "--threads",
    precisions: "--precisions",
    decode: "--decode",
    test: "--test",
    rounds: "--rounds",
    min_duration_s: "--min-duration",
    tolerance: "--tolerance",
  };
  const parsed = tuneParamsSchema.safeParse({
    ...(opts.model !== undefined ? { model: opts.model } : {}),
    objective: opts.objective,
    ...(opts.threads !== undefined ? { threads: items(opts.threads).map(Number) } : {}),
    ...(opts.precisions !== undefined ? { precisions: items(opts.precisions) } : {}),
    decode: items(opts.decode),
    test: opts.test,
    rounds: Number(opts.rounds),
    min_duration_s: Number(opts.minDuration),
    tolerance: tolerance(opts.tolerance),
    apply: opts.apply === true,
  });
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    const flag = flags[String(i.path[0])] ?? String(i.path[0]);
    throw new IteraError(`invalid ${flag}: ${i.message}`, {
      where: flag,
      fix: "e.g. --threads 1,2 --decode fused,step --test tg64 --rounds 3 --min-duration 1 --tolerance 5%",
    });
  }
  return parsed.data;
}

/** `itera fleet tune`: run `itera-agent tune` on every selected device as a job, optionally applying the pick. */
export function registerFleetTune(fleet: Command): void {
  addBrokerOptions(
    addTuneMeasureOptions(fleet.command("tune"))
      .description(
        "tune threads × decode path on every selected device over MQTT (as itera-agent tune); --apply keeps each device's pick in its tuned.json",
      )
      .requiredOption("--fleet <name>", "fleet name (topic level itera/v1/<fleet>/...)")
      .option("--devices <n>", "tune this many online devices (waits for them to appear)")
      .option(
        "--select <key=value>",
        "only devices whose birth matches (profile, arch, platform, model, device)",
        collect,
      )
      .option("--model <id>", "model id the devices must have (default: the one each runs)")
      .option("--precisions <list>", "precisions to measure (a device measures the one its model has)")
      .option(
        "--apply",
        "write each device's pick to its tuned.json (its run, bench, serve and benchmark jobs use it)",
      )
      .option("--timeout <s>", "deadline for the whole run, seconds", "900")
      .option("--discover <s>", "how long to wait for devices to announce themselves, seconds")
      .option("--db <path>", `fleet history database (default ${defaultFleetDb()})`)
      .option("--json", "print the whole outcome as JSON"),
  ).action(
    action(async (opts: TuneCliOptions) => {
      const fleetName = checkId(opts.fleet, "--fleet");
      const params = tuneParams(opts);
      const devices = opts.devices === undefined ? undefined : positive(opts.devices, "--devices", true);
      const select = parseSelect(opts.select);
      const broker = brokerOptions(opts);
      const timeoutS = positive(opts.timeout, "--timeout");
      const discoverS = opts.discover ? positive(opts.discover, "--discover") : undefined;
      const store = new FleetStore(opts.db ?? defaultFleetDb());
      let bar: ReturnType<typeof progress> | undefined;
      let done = 0;
      const onEvent = (e: BenchEvent) => {
        if (e.type === "discovered")
          bar = progress(`fleet tune (${e.devices.length} devices)`, e.devices.length);
        else if (e.type === "status" && e.details) process.stderr.write(`${e.device}: ${e.details}\n`);
        else if (e.type === "done") bar?.update(++done, `${e.device} ${e.status}`);
        else if (e.type === "sent" && e.resend)
          process.stderr.write(`${e.device} came back: job sent again\n`);
        else if (e.type === "refused") process.stderr.write(`refused a message on ${e.topic}: ${e.reason}\n`);
        else if (e.type === "warning") process.stderr.write(`\nWARNING: ${e.message}\n\n`);
      };
      try {
        const outcome = await runFleetTune({
          broker,
          fleet: fleetName,
          ...(devices ? { devices } : {}),
          ...(select ? { select } : {}),
          params,
          timeoutS,
          ...(discoverS ? { discoverS } : {}),
          store,
          onEvent,
        });
        bar?.done();
        if (opts.json) printJson({ ...outcome, rows: tuneSummaryRows(outcome) });
        else process.stdout.write(renderTuneMarkdown(outcome));
        if (outcome.devices.every((d) => d.status !== "SUCCEEDED")) process.exitCode = 2;
      } finally {
        store.close();
      }
    }),
  );
}
