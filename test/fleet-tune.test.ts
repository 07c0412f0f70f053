/**
 * `itera fleet tune` against a real Mosquitto and real agents (`itera-agent agent` processes from
 * dist/, the house model, simulated INA219 bridges on socat ptys): a tune job returns each device's
 * grid and pick, writes nothing without --apply, writes the agent's tuned.json with it, and a later
 * benchmark job that leaves the threads to the device runs with the tuned choice (the other device
 * with its profile's). A bad objective is one clear error at the coordinator and REJECTED by a device.
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runFleetBench } from "../src/fleet/bench.js";
import { renderMarkdown } from "../src/fleet/report.js";
import { startSimulation, type Simulation } from "../src/fleet/simulate.js";
import { FleetStore } from "../src/fleet/store.js";
import { type FleetTuneOutcome, renderTuneMarkdown, runFleetTune } from "../src/fleet/tune.js";
import { loadProfile } from "../src/profile/load.js";
import { hostCores } from "../src/profile/threads.js";
import { jobResultSchema, tuneParamsSchema } from "../src/protocol/schemas.js";
import { jobTopic } from "../src/protocol/topics.js";
import { readTuned, sameCandidate, TUNED_FILE } from "../src/tune/tuned-file.js";
import { Mosquitto, until } from "./mqtt-helpers.js";
import { tempDir } from "./temp-dir.js";

const CLI = resolve("dist/cli/itera.js");
const MODEL = resolve("models/itera-lite-micro");
const FLEET = "tunef";
// startSimulation gives the profiles in the shipped order.
const LAPTOP = "sim-01-laptop-x64-4c";
const PI = "sim-02-rpi4";

let broker: Mosquitto;
let sim: Simulation;
let dir: string;
let store: FleetStore;

function itera(args: string[]) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", timeout: 300_000 });
}

/** Short measurements: two thread counts at most, one round, a fraction of a second each. */
const quick = { test: "tg32", rounds: 1, min_duration_s: 0.2 };

beforeAll(async () => {
  broker = await Mosquitto.create();
  dir = await tempDir("itera-fleet-tune-");
  store = new FleetStore(join(dir, "fleet.db"));
  sim = await startSimulation({
    broker: { url: broker.url },
    fleet: FLEET,
    devices: 2,
    modelDir: MODEL,
    stateDir: join(dir, "agents"),
    telemetryIntervalS: 1,
    meter: "ina219",
    profiles: ["rpi4", "laptop-x64-4c"],
    log: () => {},
  });
});

afterAll(async () => {
  await sim?.stop();
  store?.close();
  await broker?.stop();
});

describe("itera fleet tune against a real Mosquitto and real agents", () => {
  it("returns every device's grid and pick, labels simulated energy, and writes nothing without --apply", async () => {
    const outcome: FleetTuneOutcome = await runFleetTune({
      broker: { url: broker.url },
      fleet: FLEET,
      devices: 2,
      discoverS: 120,
      params: tuneParamsSchema.parse({ ...quick, threads: [1, 2] }),
      timeoutS: 240,
      store,
    });
    expect(outcome.devices.map((d) => [d.device, d.status])).toEqual([
      [LAPTOP, "SUCCEEDED"],
      [PI, "SUCCEEDED"],
    ]);
    for (const d of outcome.devices) {
      const r = d.result!;
      expect(r.device).toBe(d.device);
      expect(r.applied).toBe(false);
      expect(r.written).toBeNull();
      const t = r.tuned;
      expect(t.objective).toBe("energy");
      expect(t.test).toBe("tg 32");
      // threads 1 and 2, each on the step path and (the house model fuses) the fused path.
      expect(t.grid.map((g) => `${g.threads} ${g.decode}`).sort()).toEqual([
        "1 fused",
        "1 step",
        "2 fused",
        "2 step",
      ]);
      for (const g of t.grid) {
        expect(g.tokens_per_s.median).toBeGreaterThan(0);
        expect(g.mJ_per_token?.median).toBeGreaterThan(0);
      }
      expect(t.grid.some((g) => sameCandidate(g, t.pick))).toBe(true);
      // The bridge is a simulator: its figures say so.
      expect(t.energy?.method).toBe("ina219-simulated");
      expect(existsSync(join(dir, "agents", d.device, TUNED_FILE))).toBe(false);
    }
    const stored = store.tuneResults({ jobId: outcome.jobId });
    expect(stored.map((s) => s.device)).toEqual([LAPTOP, PI]);
    expect(stored[0]!.result.tuned.pick).toEqual(outcome.devices[0]!.result!.tuned.pick);
    expect(store.runs().find((r) => r.jobId === outcome.jobId)?.type).toBe("tune");

    const md = renderTuneMarkdown(outcome);
    expect(md).toMatch(/2\/2 devices succeeded/);
    expect(md).toMatch(/report only/);
    expect(md).toMatch(/simulated energy: ina219-simulated figures were read from a simulated meter/);
    expect(md).toMatch(new RegExp(`## ${PI} \\(rpi4\\): SUCCEEDED`));
    expect(md.match(/◀ pick/g)).toHaveLength(2);
  });

  it("--apply writes the device's tuned.json, and a benchmark job without threads runs with it", async () => {
    const db = join(dir, "cli.db");
    // One thread count only: the pick (2 threads) differs from the profile's default (1).
    const r = itera(
      ["fleet", "tune", "--broker", broker.url, "--fleet", FLEET, "--select", `device=${PI}`].concat(
        ["--threads", "2", "--test", "tg32", "--rounds", "1", "--min-duration", "0.2", "--apply"],
        ["--objective", "speed", "--devices", "1", "--discover", "60", "--db", db, "--json"],
      ),
    );
    expect(r.stderr).not.toMatch(/internal error/);
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as FleetTuneOutcome & {
      rows: Array<{ device: string; applied: boolean }>;
    };
    expect(out.rows).toEqual([expect.objectContaining({ device: PI, applied: true })]);
    const result = out.devices[0]!.result!;
    const file = join(dir, "agents", PI, TUNED_FILE);
    expect(result.written).toBe(file);
    const onDevice = await readTuned(file);
    expect(onDevice).toEqual(result.tuned);
    expect(onDevice.pick.threads).toBe(2);
    expect(onDevice.objective).toBe("speed");
    expect(existsSync(join(dir, "agents", LAPTOP, TUNED_FILE))).toBe(false);
    // The coordinator kept it: itera fleet history --tune reads it back.
    const hist = itera(["fleet", "history", "--db", db, "--tune", "--json"]);
    expect(hist.status).toBe(0);
    const kept = JSON.parse(hist.stdout) as Array<{
      device: string;
      result: { applied: boolean; tuned: unknown };
    }>;
    expect(kept.map((k) => [k.device, k.result.applied])).toEqual([[PI, true]]);
    expect(kept[0]!.result.tuned).toEqual(onDevice);

    const bench = await runFleetBench({
      broker: { url: broker.url },
      fleet: FLEET,
      devices: 2,
      params: { model: "itera-lite-micro", tests: ["tg16"], repetitions: 1, warmup: 0, min_duration_s: 0.1 },
      timeoutS: 120,
      store,
    });
    const byDevice = new Map(bench.devices.map((d) => [d.device, d]));
    const tuned = byDevice.get(PI)!;
    expect(tuned.status).toBe("SUCCEEDED");
    expect(tuned.results.map((x) => [x.threads, x.threads_from])).toEqual([[2, "tuned"]]);
    expect(tuned.results[0]!.decode ?? "step").toBe(onDevice.pick.decode ?? "step");
    // The laptop has no tuning: its profile's threads (1), capped at this host's cores.
    const laptop = byDevice.get(LAPTOP)!;
    const profileThreads = Math.min((await loadProfile("laptop-x64-4c")).threads, hostCores());
    expect(profileThreads).not.toBe(2);
    expect(laptop.results.map((x) => [x.threads, x.threads_from])).toEqual([[profileThreads, "profile"]]);
    // The report's threads column says who chose them.
    const md = renderMarkdown(bench);
    expect(md).toMatch(new RegExp(`\\| ${PI} .*\\| 2 \\(tuned\\) +\\|`));
    expect(md).toMatch(new RegExp(`\\| ${LAPTOP} .*\\| ${profileThreads} \\(profile\\) +\\|`));

    // A job that names its threads still gets them.
    const named = await runFleetBench({
      broker: { url: broker.url },
      fleet: FLEET,
      select: { device: PI },
      params: { model: "itera-lite-micro", tests: ["tg16"], threads: [1], repetitions: 1, warmup: 0 },
      timeoutS: 120,
      store,
    });
    expect(named.devices[0]!.results.map((x) => [x.threads, x.threads_from])).toEqual([[1, "job"]]);
  });

  it("refuses a bad objective: one clear error at the coordinator, REJECTED by a device", async () => {
    const r = itera(["fleet", "tune", "--broker", broker.url, "--fleet", FLEET, "--objective", "fast"]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/invalid --objective 'fast'/);
    expect(r.stderr).toMatch(/speed, energy/);

    // A coordinator of another version sends it anyway: the device answers REJECTED, naming the field.
    const client = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
    try {
      const jobId = "tune-bad-objective";
      const results: unknown[] = [];
      client.on("message", (_t, payload) => results.push(JSON.parse(payload.toString())));
      await client.subscribeAsync(jobTopic(FLEET, PI, jobId, "result"), { qos: 1 });
      await client.publishAsync(
        jobTopic(FLEET, PI, jobId, "request"),
        JSON.stringify({
          v: 1,
          jobId,
          execNo: 1,
          deadline: Date.now() + 60_000,
          doc: { type: "tune", params: { objective: "fast" } },
        }),
        { qos: 1 },
      );
      await until(() => results.length > 0, "the device's answer", 30_000);
      const answer = jobResultSchema.parse(results[0]);
      expect(answer.status).toBe("REJECTED");
      expect(answer.error).toMatch(/objective/);
    } finally {
      await client.endAsync();
    }
  });
});
