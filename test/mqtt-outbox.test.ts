import type { MqttClient } from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Agent, type AgentOptions } from "../src/agent/agent.js";
import { runFleetBench } from "../src/fleet/bench.js";
import { FleetMonitor } from "../src/fleet/monitor.js";
import { FleetStore } from "../src/fleet/store.js";
import { connectBroker, endAsync } from "../src/protocol/connect.js";
import { PROTOCOL_VERSION } from "../src/protocol/schemas.js";
import { jobTopic } from "../src/protocol/topics.js";
import { cpuRunner, gate, Mosquitto, sleep, testAgentOptions, until } from "./mqtt-helpers.js";
import { tempDir } from "./temp-dir.js";

const params = { model: "tiny", tests: ["tg8"], threads: [1], repetitions: 1, warmup: 0 };

let broker: Mosquitto;
const agents: Agent[] = [];
const clients: MqttClient[] = [];

beforeAll(async () => {
  broker = await Mosquitto.create();
});
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop().catch(() => {});
  for (const c of clients.splice(0)) await endAsync(c, true);
});
afterAll(async () => {
  await broker.stop();
});

function newAgent(fleet: string, device: string, stateDir: string, extra: Partial<AgentOptions> = {}): Agent {
  const agent = new Agent(
    testAgentOptions(broker.url, fleet, device, "rpi4", stateDir, {
      telemetryIntervalMs: 50,
      reconnectPeriodMs: 100,
      ...extra,
    }),
  );
  agents.push(agent);
  agent.start();
  return agent;
}

/** A collector with a persistent session, so that messages published while it reconnects are queued for it. */
async function collector(
  fleet: string,
  store: FleetStore,
): Promise<{ monitor: FleetMonitor; client: MqttClient }> {
  const client = await connectBroker(
    { url: broker.url },
    { clientId: `collector-${fleet}`, clean: false, sessionExpiryS: 600, reconnectPeriodMs: 100 },
  );
  clients.push(client);
  const monitor = new FleetMonitor(client, fleet, store);
  await monitor.subscribe();
  return { monitor, client };
}

function seqs(store: FleetStore, device: string): number[] {
  return store.telemetry({ device }).map((t) => t.seq);
}

const contiguous = (xs: number[]) => xs.every((x, i) => i === 0 || x === xs[i - 1]! + 1);

describe("store and forward over a Mosquitto restart", () => {
  it("a broker killed and restarted mid-benchmark: every result and every telemetry seq arrives, once", async () => {
    const { hold, release } = gate();
    const store = new FleetStore(":memory:");
    const started: string[] = [];
    const fleetAgents: Agent[] = [];
    for (const d of ["o-1", "o-2", "o-3"]) {
      const a = newAgent("outage", d, await tempDir("itera-agent-"), {
        runner: cpuRunner(d, "rpi4", { hold }),
      });
      await a.connected;
      fleetAgents.push(a);
    }
    let firstSeqs: Record<string, number> = {};
    const bench = runFleetBench({
      broker: { url: broker.url },
      fleet: "outage",
      devices: 3,
      params,
      timeoutS: 60,
      store,
      clientId: "coordinator-outage",
      onEvent: (e) => {
        if (e.type === "status" && e.status === "IN_PROGRESS") started.push(e.device);
      },
    });
    await until(() => new Set(started).size === 3, "all three jobs in progress");
    firstSeqs = Object.fromEntries(["o-1", "o-2", "o-3"].map((d) => [d, Math.min(...seqs(store, d))]));
    await broker.stop();
    // While the broker is down: telemetry piles up and the jobs finish; all of it waits in the outboxes.
    release();
    await until(() => fleetAgents.every((a) => a.outboxSize() >= 10), "backlog on disk");
    await broker.start();
    const outcome = await bench;
    expect(outcome.devices.map((d) => d.status)).toEqual(["SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]);
    expect(store.results({ jobId: outcome.jobId })).toHaveLength(3);

    for (const a of fleetAgents) await a.drained();
    for (const [i, d] of ["o-1", "o-2", "o-3"].entries()) {
      const last = fleetAgents[i]!.telemetrySeq!;
      const got = seqs(store, d).filter((s) => s <= last);
      // No gap from the first seq the coordinator saw up to the backlog's end.
      expect(got[0]).toBe(firstSeqs[d]);
      expect(contiguous(got)).toBe(true);
      expect(got.at(-1)!).toBeGreaterThanOrEqual(last - 40); // the coordinator left after its last result
    }
    store.close();
  });

  it("an agent restarted with a non-empty outbox sends its backlog (telemetry and a job result) without gaps", async () => {
    const store = new FleetStore(":memory:");
    const col = await collector("restart", store);
    const results: string[] = [];
    col.monitor.on("result", (_d, r) => results.push(`${r.jobId}:${r.status}`));
    const stateDir = await tempDir("itera-agent-");
    const { hold, release } = gate();
    const first = newAgent("restart", "r-1", stateDir, { runner: cpuRunner("r-1", "rpi4", { hold }) });
    await first.connected;
    const bd1 = first.bdSeq;
    const req = {
      v: PROTOCOL_VERSION,
      jobId: "rj",
      execNo: 1,
      deadline: Date.now() + 60_000,
      doc: { type: "benchmark", params },
    };
    await col.client.publishAsync(jobTopic("restart", "r-1", "rj", "request"), JSON.stringify(req), {
      qos: 1,
    });
    await until(() => seqs(store, "r-1").length >= 3, "some telemetry");

    await broker.stop();
    release();
    await until(() => first.outboxSize() >= 8, "backlog");
    await first.stop();
    agents.splice(agents.indexOf(first), 1);
    await broker.start();
    await sleep(300); // nobody publishes for this device now: the backlog is only on disk

    const second = newAgent("restart", "r-1", stateDir);
    await second.connected;
    expect(second.bdSeq).toBeGreaterThan(bd1);
    await second.drained();
    await second.stop();
    agents.splice(agents.indexOf(second), 1);
    const last = second.telemetrySeq!;
    await until(() => seqs(store, "r-1").includes(last), "all telemetry at the collector");
    const got = seqs(store, "r-1");
    expect(got[0]).toBe(0);
    expect(got).toEqual(Array.from({ length: last + 1 }, (_, i) => i));
    await until(() => results.includes("rj:SUCCEEDED"), "the job's result");
    store.close();
  });

  it("a job in progress when the agent stops runs again after the restart, and succeeds", async () => {
    const store = new FleetStore(":memory:");
    const col = await collector("rerun", store);
    const statuses: string[] = [];
    col.monitor.on("status", (_d, st) => statuses.push(st.status));
    col.monitor.on("result", (_d, r) => statuses.push(`result:${r.status}`));
    const stateDir = await tempDir("itera-agent-");
    const { hold } = gate();
    const first = newAgent("rerun", "rr-1", stateDir, { runner: cpuRunner("rr-1", "rpi4", { hold }) });
    await first.connected;
    const req = {
      v: PROTOCOL_VERSION,
      jobId: "rr",
      execNo: 1,
      deadline: Date.now() + 60_000,
      doc: { type: "benchmark", params },
    };
    await col.client.publishAsync(jobTopic("rerun", "rr-1", "rr", "request"), JSON.stringify(req), {
      qos: 1,
    });
    await until(() => statuses.includes("IN_PROGRESS"), "job in progress");
    await first.stop();
    agents.splice(agents.indexOf(first), 1);

    const runner = cpuRunner("rr-1", "rpi4");
    const second = newAgent("rerun", "rr-1", stateDir, { runner });
    await second.connected;
    await until(() => statuses.includes("result:SUCCEEDED"), "the job's result after the restart");
    expect(runner.calls).toBe(1);
    expect(statuses.filter((x) => x.startsWith("result:"))).toEqual(["result:SUCCEEDED"]);
    store.close();
  });
});
