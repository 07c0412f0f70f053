import mqtt, { type MqttClient } from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Agent, type AgentOptions } from "../src/agent/agent.js";
import { AgentStore } from "../src/agent/store.js";
import { type JobResultPayload, type JobStatusPayload, PROTOCOL_VERSION } from "../src/protocol/schemas.js";
import { deviceTopic, jobTopic } from "../src/protocol/topics.js";
import { cpuRunner, gate, Mosquitto, testAgentOptions, until } from "./mqtt-helpers.js";
import { tempDir } from "./temp-dir.js";

const FLEET = "lab";
const params = { model: "tiny", tests: ["pp8", "tg8"], threads: [1], repetitions: 2, warmup: 0 };

let broker: Mosquitto;
const agents: Agent[] = [];
const clients: MqttClient[] = [];

beforeAll(async () => {
  broker = await Mosquitto.create();
});
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop().catch(() => {});
  for (const c of clients.splice(0)) c.end(true);
});
afterAll(async () => {
  await broker.stop();
});

async function newAgent(device: string, extra: Partial<AgentOptions> = {}): Promise<Agent> {
  const stateDir = extra.stateDir ?? (await tempDir("itera-agent-"));
  const agent = new Agent(
    testAgentOptions(broker.url, FLEET, device, "rpi4", stateDir, { telemetryIntervalMs: 60_000, ...extra }),
  );
  agents.push(agent);
  agent.start();
  await agent.connected;
  return agent;
}

/** A plain MQTT client recording every message on the fleet's topics. */
async function observer(): Promise<{
  client: MqttClient;
  messages: Array<{ topic: string; json: unknown; retain: boolean }>;
}> {
  const client = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
  clients.push(client);
  const messages: Array<{ topic: string; json: unknown; retain: boolean }> = [];
  client.on("message", (topic, payload, packet) => {
    let json: unknown = null;
    try {
      json = JSON.parse(payload.toString());
    } catch {}
    messages.push({ topic, json, retain: packet.retain });
  });
  await client.subscribeAsync(`itera/v1/${FLEET}/#`, { qos: 1 });
  return { client, messages };
}

const statuses = (msgs: Array<{ topic: string; json: unknown }>, device: string, jobId: string) =>
  msgs
    .filter((m) => m.topic === jobTopic(FLEET, device, jobId, "status"))
    .map((m) => m.json as JobStatusPayload);
const results = (msgs: Array<{ topic: string; json: unknown }>, device: string, jobId: string) =>
  msgs
    .filter((m) => m.topic === jobTopic(FLEET, device, jobId, "result"))
    .map((m) => m.json as JobResultPayload);

describe("agent over a real Mosquitto", () => {
  it("announces state and birth with a new bdSeq on every connect; a dropped socket leaves the Last Will with that bdSeq", async () => {
    const obs = await observer();
    const agent = await newAgent("dev-lwt");
    const bd = agent.bdSeq;
    await until(() => obs.messages.some((m) => m.topic.endsWith("dev-lwt/birth")), "birth");
    const birth = obs.messages.find((m) => m.topic.endsWith("dev-lwt/birth"))!.json as {
      bdSeq: number;
      profile: string;
    };
    expect(birth.bdSeq).toBe(bd);
    expect(birth.profile).toBe("rpi4");
    const online = obs.messages.find((m) => m.topic.endsWith("dev-lwt/state"))!.json as {
      state: string;
      bdSeq: number;
    };
    expect(online).toMatchObject({ state: "online", bdSeq: bd });

    agent.crash();
    await until(
      () =>
        obs.messages.some(
          (m) => m.topic.endsWith("dev-lwt/state") && (m.json as { state: string }).state === "lost",
        ),
      "Last Will",
    );
    const lost = obs.messages.filter((m) => m.topic.endsWith("dev-lwt/state")).at(-1)!.json as {
      bdSeq: number;
    };
    expect(lost.bdSeq).toBe(bd);

    // The retained state a newcomer sees is `lost` too.
    const late = await observer();
    await until(
      () => late.messages.some((m) => m.topic === deviceTopic(FLEET, "dev-lwt", "state")),
      "retained state",
    );
    expect(late.messages.find((m) => m.topic === deviceTopic(FLEET, "dev-lwt", "state"))!).toMatchObject({
      retain: true,
      json: { state: "lost", bdSeq: bd },
    });
  });

  it("runs a job QUEUED -> IN_PROGRESS -> SUCCEEDED and answers a duplicate with the recorded status, without re-running", async () => {
    const obs = await observer();
    const runner = cpuRunner("dev-job", "rpi4");
    await newAgent("dev-job", { runner });
    const req = {
      v: PROTOCOL_VERSION,
      jobId: "j1",
      execNo: 1,
      deadline: Date.now() + 60_000,
      doc: { type: "benchmark", params },
    };
    await obs.client.publishAsync(jobTopic(FLEET, "dev-job", "j1", "request"), JSON.stringify(req), {
      qos: 1,
    });
    await until(() => results(obs.messages, "dev-job", "j1").length === 1, "result");
    const seen = statuses(obs.messages, "dev-job", "j1").map((s) => s.status);
    expect(seen[0]).toBe("QUEUED");
    expect(seen).toContain("IN_PROGRESS");
    expect(seen.at(-1)).toBe("SUCCEEDED");
    const r = results(obs.messages, "dev-job", "j1")[0]!;
    expect(r.status).toBe("SUCCEEDED");
    expect(r.results.map((x) => x.test)).toEqual(["pp8", "tg8"]);
    expect(r.results[0]!.tokens_per_s.mean).toBeGreaterThan(0);

    await obs.client.publishAsync(jobTopic(FLEET, "dev-job", "j1", "request"), JSON.stringify(req), {
      qos: 1,
    });
    await until(() => results(obs.messages, "dev-job", "j1").length === 2, "answer to the duplicate");
    expect(results(obs.messages, "dev-job", "j1")[1]).toEqual(r);
    expect(runner.calls).toBe(1);
  });

  it("answers TIMED_OUT past the deadline, both before and during the run", async () => {
    const obs = await observer();
    const { hold, release } = gate();
    await newAgent("dev-late", { runner: cpuRunner("dev-late", "rpi4", { hold }) });
    const past = {
      v: 1,
      jobId: "late1",
      execNo: 1,
      deadline: Date.now() - 1,
      doc: { type: "benchmark", params },
    };
    await obs.client.publishAsync(jobTopic(FLEET, "dev-late", "late1", "request"), JSON.stringify(past), {
      qos: 1,
    });
    const soon = {
      v: 1,
      jobId: "late2",
      execNo: 1,
      deadline: Date.now() + 500,
      doc: { type: "benchmark", params },
    };
    await obs.client.publishAsync(jobTopic(FLEET, "dev-late", "late2", "request"), JSON.stringify(soon), {
      qos: 1,
    });
    await until(() => results(obs.messages, "dev-late", "late2").length === 1, "late2 result");
    release();
    expect(results(obs.messages, "dev-late", "late1")[0]).toMatchObject({ status: "TIMED_OUT", results: [] });
    expect(results(obs.messages, "dev-late", "late2")[0]!.status).toBe("TIMED_OUT");
    expect(statuses(obs.messages, "dev-late", "late2").map((s) => s.status)).toContain("IN_PROGRESS");
  });

  it("rejects malformed, invalid, oversized and unknown-model requests with details, and keeps working", async () => {
    const obs = await observer();
    await newAgent("dev-bad");
    const topic = (id: string) => jobTopic(FLEET, "dev-bad", id, "request");
    await obs.client.publishAsync(topic("b1"), "{not json", { qos: 1 });
    await obs.client.publishAsync(
      topic("b2"),
      JSON.stringify({
        v: 1,
        jobId: "b2",
        execNo: 3,
        deadline: Date.now() + 60_000,
        doc: { type: "benchmark", params: { ...params, tests: ["xx9"] } },
      }),
      { qos: 1 },
    );
    await obs.client.publishAsync(topic("b3"), JSON.stringify({ v: 1, pad: "x".repeat(100_000) }), {
      qos: 1,
    });
    await obs.client.publishAsync(
      topic("b4"),
      JSON.stringify({
        v: 1,
        jobId: "b4",
        execNo: 1,
        deadline: Date.now() + 60_000,
        doc: { type: "benchmark", params: { ...params, model: "other" } },
      }),
      { qos: 1 },
    );
    await obs.client.publishAsync(
      topic("b5"),
      JSON.stringify({
        v: 1,
        jobId: "zz",
        execNo: 1,
        deadline: Date.now() + 60_000,
        doc: { type: "benchmark", params },
      }),
      { qos: 1 },
    );
    for (const id of ["b1", "b2", "b3", "b4", "b5"]) {
      await until(() => results(obs.messages, "dev-bad", id).length === 1, `answer to ${id}`);
      expect(results(obs.messages, "dev-bad", id)[0]!.status).toBe("REJECTED");
    }
    expect(results(obs.messages, "dev-bad", "b1")[0]!.error).toMatch(/not JSON/);
    expect(results(obs.messages, "dev-bad", "b2")[0]).toMatchObject({ execNo: 3 });
    expect(results(obs.messages, "dev-bad", "b2")[0]!.error).toMatch(/doc\.params\.tests\.0/);
    expect(results(obs.messages, "dev-bad", "b3")[0]!.error).toMatch(/too large/);
    expect(results(obs.messages, "dev-bad", "b4")[0]!.error).toMatch(/model 'other' is not on this device/);
    expect(results(obs.messages, "dev-bad", "b5")[0]!.error).toMatch(/differs from the topic/);

    // More threads than 4 per core: refused as `--threads` is on the device's own commands.
    const threads = {
      v: 1,
      jobId: "b7",
      execNo: 1,
      deadline: Date.now() + 60_000,
      doc: { type: "benchmark", params: { ...params, threads: [1, 1024] } },
    };
    await obs.client.publishAsync(topic("b7"), JSON.stringify(threads), { qos: 1 });
    await until(() => results(obs.messages, "dev-bad", "b7").length === 1, "b7");
    expect(results(obs.messages, "dev-bad", "b7")[0]!.status).toBe("REJECTED");
    expect(results(obs.messages, "dev-bad", "b7")[0]!.error).toMatch(
      /^threads 1024: more than \d+ \(4 per core; this device has \d+ cores\)$/,
    );

    // Still alive: a valid job afterwards succeeds.
    const ok = {
      v: 1,
      jobId: "b6",
      execNo: 1,
      deadline: Date.now() + 60_000,
      doc: { type: "benchmark", params },
    };
    await obs.client.publishAsync(topic("b6"), JSON.stringify(ok), { qos: 1 });
    await until(() => results(obs.messages, "dev-bad", "b6").length === 1, "b6");
    expect(results(obs.messages, "dev-bad", "b6")[0]!.status).toBe("SUCCEEDED");
  });
});

it("caps the outbox while the broker is away by dropping the oldest telemetry, never job messages", async () => {
  const stateDir = await tempDir("itera-agent-");
  const agent = new Agent(
    testAgentOptions("mqtt://127.0.0.1:1", "lab", "capped", "rpi4", stateDir, {
      telemetryIntervalMs: 60_000,
      maxOutbox: 5,
      reconnectPeriodMs: 60_000,
    }),
  );
  agent.start();
  for (let i = 0; i < 20; i++) agent.sendTelemetry();
  expect(agent.outboxSize()).toBe(5);
  expect(agent.telemetrySeq).toBe(19);
  await agent.stop();

  const store = new AgentStore(await tempDir("itera-agent-"));
  store.enqueue("itera/v1/lab/x/jobs/j/status", "{}");
  for (let i = 0; i < 3; i++) store.enqueue("itera/v1/lab/x/telemetry", "{}");
  expect(store.dropOldestTelemetry(10)).toBe(3);
  expect(store.pending().map((r) => r.topic)).toEqual(["itera/v1/lab/x/jobs/j/status"]);
  store.close();
});
