import { readFile } from "node:fs/promises";
import { join } from "node:path";
import mqtt from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Agent, type AgentOptions } from "../src/agent/agent.js";
import { runFleetBench } from "../src/fleet/bench.js";
import { renderMarkdown, writeReport } from "../src/fleet/report.js";
import { FleetStore } from "../src/fleet/store.js";
import { IteraError } from "../src/errors.js";
import { cpuRunner, gate, Mosquitto, testAgentOptions, until } from "./mqtt-helpers.js";
import { tempDir } from "./temp-dir.js";

const params = { model: "tiny", tests: ["pp16", "tg16"], threads: [1], repetitions: 2, warmup: 0 };
const profiles = ["rpi4", "rpi5", "laptop-x64-4c"];

let broker: Mosquitto;
let dir: string;
const agents: Agent[] = [];

beforeAll(async () => {
  broker = await Mosquitto.create();
});
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop().catch(() => {});
});
afterAll(async () => {
  await broker.stop();
});

async function startAgent(fleet: string, device: string, profile: string, extra: Partial<AgentOptions> = {}) {
  const stateDir = extra.stateDir ?? (await tempDir("itera-agent-"));
  const agent = new Agent(testAgentOptions(broker.url, fleet, device, profile, stateDir, extra));
  agents.push(agent);
  agent.start();
  await agent.connected;
  return agent;
}

describe("fleet bench against a real Mosquitto", () => {
  it("benchmarks a 3-device fleet and writes the report (md, csv, json, svg)", async () => {
    dir = await tempDir("itera-fleet-");
    for (const [i, p] of profiles.entries()) await startAgent("f3", `dev-${i}`, p);
    // A device of another fleet and an offline one are not selected.
    await startAgent("other", "dev-x", "rpi4");
    const gone = await startAgent("f3", "dev-gone", "rpi4");
    await gone.stop();
    agents.splice(agents.indexOf(gone), 1);

    // A rogue client publishes garbage on the fleet's topics: counted as invalid, never a crash.
    const rogue = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
    const garbage = setInterval(() => {
      for (const kind of ["state", "birth", "telemetry"])
        rogue.publish(`itera/v1/f3/dev-0/${kind}`, '{"v":1,"seq":"x"}');
      rogue.publish("itera/v1/f3/dev-1/jobs/any/result", Buffer.alloc(300 * 1024, 120));
    }, 50);
    const store = new FleetStore(join(dir, "fleet.db"));
    const outcome = await runFleetBench({
      broker: { url: broker.url },
      fleet: "f3",
      params,
      timeoutS: 60,
      store,
      discoverS: 1,
    });
    clearInterval(garbage);
    rogue.end(true);
    expect(outcome.stats.invalid).toBeGreaterThan(0);
    expect(outcome.devices.map((d) => d.device)).toEqual(["dev-0", "dev-1", "dev-2"]);
    for (const d of outcome.devices) {
      expect(d.status).toBe("SUCCEEDED");
      expect(d.results.map((r) => r.test)).toEqual(["pp16", "tg16"]);
      expect(d.quant).toBe("int8");
    }
    expect(outcome.devices.map((d) => d.profile)).toEqual(profiles);

    const files = await writeReport(join(dir, "report"), outcome);
    const md = await readFile(files[0]!, "utf8");
    // No variant installed: the device's group is its release.
    expect(md).toMatch(/\| dev-1 +\| rpi5 +\| fp32 +\| release \S+ +\| SUCCEEDED/);
    const csv = (await readFile(join(dir, "report", "report.csv"), "utf8")).trim().split("\n");
    expect(csv).toHaveLength(4);
    expect(csv[0]).toMatch(
      /^device,profile,quant,variant,status,pp tok\/s,tg tok\/s,TTFT ms,p95 ms,mJ\/token/,
    );
    const json = JSON.parse(await readFile(join(dir, "report", "report.json"), "utf8")) as {
      rows: Array<{ tg_tok_s: number }>;
    };
    expect(json.rows).toHaveLength(3);
    expect(json.rows.every((r) => r.tg_tok_s > 0)).toBe(true);
    const svg = await readFile(join(dir, "report", "chart.svg"), "utf8");
    expect(svg.match(/<rect x="\d+" y="\d+" width="[\d.]+" height="18"/g)).toHaveLength(3); // three tokens/s bars; mJ/token n/a without a meter
    expect(svg).toContain("n/a");

    expect(store.results({ jobId: outcome.jobId })).toHaveLength(6);
    // The stored run renders the same report again (`itera fleet report`).
    expect(store.lastRunId()).toBe(outcome.jobId);
    expect(renderMarkdown(store.outcome(outcome.jobId)!)).toBe(renderMarkdown(outcome));
    expect(store.outcome("no-such-job")).toBeUndefined();
    expect(store.executions(outcome.jobId).map((e) => e.status)).toEqual([
      "SUCCEEDED",
      "SUCCEEDED",
      "SUCCEEDED",
    ]);
    store.close();
  });

  it("selects devices by profile and by count", async () => {
    for (const [i, p] of ["rpi4", "rpi5", "rpi4"].entries()) await startAgent("sel", `s-${i}`, p);
    const store = new FleetStore(":memory:");
    const byProfile = await runFleetBench({
      broker: { url: broker.url },
      fleet: "sel",
      select: { profile: "rpi4" },
      params,
      timeoutS: 60,
      store,
      discoverS: 1,
    });
    expect(byProfile.devices.map((d) => d.device)).toEqual(["s-0", "s-2"]);
    const two = await runFleetBench({
      broker: { url: broker.url },
      fleet: "sel",
      devices: 2,
      params,
      timeoutS: 60,
      store,
    });
    expect(two.devices.map((d) => d.device)).toEqual(["s-0", "s-1"]);
    await expect(
      runFleetBench({
        broker: { url: broker.url },
        fleet: "sel",
        select: { profile: "rpi-zero2w" },
        params,
        timeoutS: 5,
        store,
        discoverS: 0.5,
      }),
    ).rejects.toThrow(IteraError);
    store.close();
  });

  it("sends the job again to a device that comes back with a new session, and ends it SUCCEEDED", async () => {
    const { hold, release } = gate();
    const first = await startAgent("back", "phoenix", "rpi4", {
      runner: cpuRunner("phoenix", "rpi4", { hold }),
    });
    const store = new FleetStore(":memory:");
    const sends: boolean[] = [];
    const run = runFleetBench({
      broker: { url: broker.url },
      fleet: "back",
      devices: 1,
      params,
      timeoutS: 60,
      store,
      onEvent: (e) => {
        if (e.type === "sent") sends.push(e.resend);
        if (e.type === "status" && e.status === "IN_PROGRESS" && sends.length === 1) {
          // The device dies mid-job and comes back re-flashed: empty state, so it knows nothing of the job.
          first.crash();
          agents.splice(agents.indexOf(first), 1);
          void tempDir("itera-agent-").then((stateDir) =>
            startAgent("back", "phoenix", "rpi4", { stateDir }),
          );
        }
      },
    });
    const outcome = await run;
    release();
    expect(sends).toEqual([false, true]);
    expect(outcome.stats.resends).toBe(1);
    expect(outcome.devices[0]!.status).toBe("SUCCEEDED");
    expect(outcome.devices[0]!.sends).toBe(2);
    store.close();
  });

  it("an agent killed mid-job shows as lost (Last Will) and its job ends TIMED_OUT", async () => {
    const hold = new Promise<void>(() => {});
    const victim = await startAgent("kill", "victim", "rpi4", {
      runner: cpuRunner("victim", "rpi4", { hold }),
    });
    await startAgent("kill", "survivor", "rpi5");
    const store = new FleetStore(":memory:");
    const outcome = await runFleetBench({
      broker: { url: broker.url },
      fleet: "kill",
      devices: 2,
      params,
      timeoutS: 3,
      store,
      onEvent: (e) => {
        if (e.type === "status" && e.device === "victim" && e.status === "IN_PROGRESS") {
          victim.crash();
          agents.splice(agents.indexOf(victim), 1);
        }
      },
    });
    const v = outcome.devices.find((d) => d.device === "victim")!;
    expect(v.status).toBe("TIMED_OUT");
    expect(v.details).toMatch(/device lost/);
    expect(outcome.devices.find((d) => d.device === "survivor")!.status).toBe("SUCCEEDED");
    expect(renderMarkdown(outcome)).toMatch(/victim: TIMED_OUT: no result before the deadline/);
    store.close();
  });
});

it("waits for nothing when the broker is unreachable: one clear error", async () => {
  const store = new FleetStore(":memory:");
  const err = await runFleetBench({
    broker: { url: "mqtt://127.0.0.1:1" },
    fleet: "x",
    params,
    timeoutS: 5,
    store,
  }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(IteraError);
  expect((err as IteraError).message).toMatch(/cannot connect to the MQTT broker/);
  store.close();
  await until(() => true, "");
});
