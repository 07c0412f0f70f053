import type { MqttClient } from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Agent } from "../src/agent/agent.js";
import { IteraError } from "../src/errors.js";
import { runFleetBench } from "../src/fleet/bench.js";
import { FleetMonitor } from "../src/fleet/monitor.js";
import { FleetStore } from "../src/fleet/store.js";
import { connectBroker, endAsync } from "../src/protocol/connect.js";
import { PROTOCOL_VERSION } from "../src/protocol/schemas.js";
import { deviceTopic, jobTopic } from "../src/protocol/topics.js";
import { Mosquitto, sleep, testAgentOptions, until } from "./mqtt-helpers.js";
import { tempDir } from "./temp-dir.js";

const params = { model: "tiny", tests: ["tg4"], threads: [1], repetitions: 1, warmup: 0 };

describe("Mosquitto with a password file and the ACL pattern itera/v1/+/%u/#", () => {
  let broker: Mosquitto;
  const users = { "dev-a": "secret-a", "dev-b": "secret-b", coordinator: "secret-c" };
  beforeAll(async () => {
    broker = await Mosquitto.create({ users, acl: ["user coordinator", "topic readwrite itera/v1/#", ""] });
  });
  afterAll(async () => {
    await broker.stop();
  });

  it("refuses a client without credentials, or with a wrong password, with one clear error", async () => {
    for (const creds of [{}, { username: "dev-a", password: "wrong" }]) {
      const err = await connectBroker(
        { url: broker.url, ...creds },
        { clientId: "dev-a", clean: true },
      ).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(IteraError);
      expect((err as IteraError).message).toMatch(/refused the login/);
    }
  });

  it("an agent whose login is refused stops with a clear fatal error instead of retrying forever", async () => {
    const agent = new Agent({
      ...testAgentOptions(broker.url, "sec", "dev-a", "rpi4", await tempDir("itera-agent-")),
      broker: { url: broker.url, username: "dev-a", password: "wrong" },
    });
    agent.start();
    await expect(agent.fatal).rejects.toThrow(/refused the login/);
    await agent.stop();
  });

  it("lets an agent publish under its own id only", async () => {
    const coord = await connectBroker(
      { url: broker.url, username: "coordinator", password: users.coordinator },
      { clientId: "coord", clean: true },
    );
    const monitor = new FleetMonitor(coord, "sec");
    const seen: string[] = [];
    coord.on("message", (topic) => seen.push(topic));
    await monitor.subscribe();

    const agent = new Agent({
      ...testAgentOptions(broker.url, "sec", "dev-a", "rpi4", await tempDir("itera-agent-")),
      broker: { url: broker.url, username: "dev-a", password: users["dev-a"] },
    });
    agent.start();
    await agent.connected;
    await until(() => monitor.devices.get("dev-a")?.birth !== undefined, "dev-a's birth");

    // The same login claiming another device's id: its messages are dropped by the broker.
    const impostor = new Agent({
      ...testAgentOptions(broker.url, "sec", "dev-b", "rpi4", await tempDir("itera-agent-")),
      broker: { url: broker.url, username: "dev-a", password: users["dev-a"] },
    });
    impostor.start();
    await impostor.connected;
    const client = agent.client!;
    await client
      .publishAsync(
        deviceTopic("sec", "dev-b", "state"),
        JSON.stringify({ v: 1, state: "online", bdSeq: 9, ts: 1 }),
        { qos: 1 },
      )
      .catch(() => {});
    // A marker published after the forged messages: once it arrives, the forged ones would have too.
    impostor.sendTelemetry();
    agent.sendTelemetry();
    await until(() => (monitor.devices.get("dev-a")?.telemetryCount ?? 0) >= 1, "dev-a telemetry");
    await sleep(200);
    expect(seen.filter((t) => t.includes("/dev-b/"))).toEqual([]);
    expect(monitor.devices.has("dev-b")).toBe(false);
    await impostor.stop();
    await agent.stop();
    await endAsync(coord);
  });
});

describe("shared subscriptions ($share) on Mosquitto", () => {
  let broker: Mosquitto;
  beforeAll(async () => {
    broker = await Mosquitto.create();
  });
  afterAll(async () => {
    await broker.stop();
  });

  it("two coordinators in one group split the job results: each gets some, none twice, together all", async () => {
    const coordinators: Array<{ client: MqttClient; got: string[] }> = [];
    for (const id of ["c1", "c2"]) {
      const client = await connectBroker({ url: broker.url }, { clientId: id, clean: true });
      const monitor = new FleetMonitor(client, "share", undefined, { shareGroup: "coordinators" });
      const got: string[] = [];
      monitor.on("result", (device, r) => got.push(`${device}/${r.jobId}`));
      await monitor.subscribe();
      coordinators.push({ client, got });
    }
    const agents: Agent[] = [];
    for (let i = 0; i < 4; i++) {
      const a = new Agent(
        testAgentOptions(broker.url, "share", `sh-${i}`, "rpi4", await tempDir("itera-agent-")),
      );
      a.start();
      await a.connected;
      agents.push(a);
    }
    const publisher = coordinators[0]!.client;
    const expected: string[] = [];
    for (let j = 0; j < 3; j++) {
      for (let i = 0; i < 4; i++) {
        const jobId = `job${j}`;
        const req = {
          v: PROTOCOL_VERSION,
          jobId,
          execNo: 1,
          deadline: Date.now() + 60_000,
          doc: { type: "benchmark", params },
        };
        await publisher.publishAsync(jobTopic("share", `sh-${i}`, jobId, "request"), JSON.stringify(req), {
          qos: 1,
        });
        expected.push(`sh-${i}/${jobId}`);
      }
    }
    const all = () => [...coordinators[0]!.got, ...coordinators[1]!.got];
    await until(() => all().length >= expected.length, "all results");
    await sleep(200);
    expect(all().sort()).toEqual(expected.sort());
    expect(new Set(all()).size).toBe(all().length);
    expect(coordinators[0]!.got.length).toBeGreaterThan(0);
    expect(coordinators[1]!.got.length).toBeGreaterThan(0);
    for (const a of agents) await a.stop();
    for (const c of coordinators) await endAsync(c.client);
  });

  it("fleet bench collects its results through a share group", async () => {
    const a = new Agent(testAgentOptions(broker.url, "solo", "so-1", "rpi4", await tempDir("itera-agent-")));
    a.start();
    await a.connected;
    const store = new FleetStore(":memory:");
    const outcome = await runFleetBench({
      broker: { url: broker.url },
      fleet: "solo",
      devices: 1,
      params,
      timeoutS: 30,
      store,
      shareGroup: "coordinators",
    });
    expect(outcome.devices[0]!.status).toBe("SUCCEEDED");
    store.close();
    await a.stop();
  });
});

describe("Mosquitto over TLS with client certificates (CN = user name, same ACL pattern)", () => {
  let broker: Mosquitto;
  beforeAll(async () => {
    broker = await Mosquitto.create({
      tls: { clients: ["dev-t", "coordinator"] },
      acl: ["user coordinator", "topic readwrite itera/v1/#", ""],
    });
  });
  afterAll(async () => {
    await broker.stop();
  });

  it("an agent connects with --ca/--cert/--key and the coordinator sees it; without a certificate it is refused", async () => {
    const coord = await connectBroker(
      { url: broker.url, ...broker.clientTls("coordinator") },
      { clientId: "coord", clean: true },
    );
    const monitor = new FleetMonitor(coord, "tls");
    await monitor.subscribe();
    const agent = new Agent({
      ...testAgentOptions(broker.url, "tls", "dev-t", "rpi4", await tempDir("itera-agent-")),
      broker: { url: broker.url, ...broker.clientTls("dev-t") },
    });
    agent.start();
    await agent.connected;
    await until(() => monitor.devices.get("dev-t")?.birth !== undefined, "birth over TLS");
    await agent.stop();
    await endAsync(coord);

    const noCert = await connectBroker(
      { url: broker.url, ca: broker.clientTls("dev-t").ca },
      { clientId: "x", clean: true, connectTimeoutMs: 3000 },
    ).catch((e: unknown) => e);
    expect(noCert).toBeInstanceOf(IteraError);
    const badCa = await connectBroker(
      { url: broker.url, ...broker.clientTls("dev-t"), ca: "/nonexistent/ca.pem" },
      { clientId: "x", clean: true },
    ).catch((e: unknown) => e);
    expect((badCa as IteraError).message).toMatch(/cannot read the TLS ca file/);
  });
});
