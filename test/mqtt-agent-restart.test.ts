/**
 * The agent when interrupted, restarted or given bad input (issue #15): jobs sent while it is down
 * (and across a broker restart) run when it comes back, without a re-send; a corrupt agent.db is
 * kept aside and reported; invalid options exit at once; SIGTERM is clean in every connection state.
 * Real Mosquitto, real SQLite, the built agent CLI (dist/) on the house micro model.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { readdir } from "node:fs/promises";
import { connect, createServer, type Socket } from "node:net";
import { join, resolve } from "node:path";
import mqtt, { type MqttClient } from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Agent } from "../src/agent/agent.js";
import { AgentStore } from "../src/agent/store.js";
import {
  birthSchema,
  type JobResultPayload,
  type JobStatusPayload,
  PROTOCOL_VERSION,
} from "../src/protocol/schemas.js";
import { deviceTopic, jobTopic } from "../src/protocol/topics.js";
import { freePort, Mosquitto, testAgentOptions, until } from "./mqtt-helpers.js";
import { tempDir } from "./temp-dir.js";

const AGENT = resolve("dist/cli/itera-agent.js");
const MODEL = resolve("models/itera-lite-micro");
const FLEET = "away";

let broker: Mosquitto;
let dir: string;
const procs: ChildProcess[] = [];
const clients: MqttClient[] = [];

beforeAll(async () => {
  broker = await Mosquitto.create();
  dir = await tempDir("itera-agent-restart-");
});
afterAll(async () => {
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  for (const c of clients) c.end(true);
  await broker.stop();
});

/** A benchmark request for the given model, sent once. */
function request(jobId: string, model: string) {
  return {
    v: PROTOCOL_VERSION,
    jobId,
    execNo: 1,
    deadline: Date.now() + 120_000,
    doc: {
      type: "benchmark",
      params: { model, tests: ["pp8", "tg8"], threads: [1], repetitions: 1, warmup: 0, min_duration_s: 0 },
    },
  };
}

/**
 * A coordinator with a persistent session (as `itera fleet bench`): its listener is attached before
 * it connects, so results the broker queued for it are not missed either.
 */
async function coordinator(
  url: string,
  id: string,
): Promise<{ client: MqttClient; messages: Array<{ topic: string; json: unknown }> }> {
  const messages: Array<{ topic: string; json: unknown }> = [];
  const client = mqtt.connect(url, {
    protocolVersion: 5,
    clientId: id,
    clean: false,
    properties: { sessionExpiryInterval: 3600 },
    reconnectPeriod: 200,
  });
  clients.push(client);
  client.on("message", (topic, payload) => {
    let json: unknown = null;
    try {
      json = JSON.parse(payload.toString());
    } catch {}
    messages.push({ topic, json });
  });
  await new Promise<void>((res, rej) => {
    client.once("connect", () => res());
    client.once("error", rej);
  });
  return { client, messages };
}

const of = <T>(msgs: Array<{ topic: string; json: unknown }>, topic: string): T[] =>
  msgs.filter((m) => m.topic === topic).map((m) => m.json as T);

/** The built agent CLI; stderr collected. */
function agentCli(args: string[]): { proc: ChildProcess; err: () => string } {
  const proc = spawn(process.execPath, [AGENT, "agent", ...args], { stdio: ["ignore", "ignore", "pipe"] });
  procs.push(proc);
  let err = "";
  proc.stderr!.on("data", (d: Buffer) => {
    err += d.toString();
  });
  return { proc, err: () => err };
}

const modelArgs = ["--model", MODEL, "--profile", "rpi4", "--meter", "tdp"];

/** The exit code, or a failure if the process is still running after `ms` (a generous bound). */
function exitsWithin(p: ChildProcess, ms: number): Promise<number | null> {
  if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve(p.exitCode);
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`still running after ${ms} ms`)), ms);
    p.once("exit", (code) => {
      clearTimeout(timer);
      res(code);
    });
  });
}

/** A stack trace line, as printed for an uncaught error. */
const STACK = /^\s+at /m;

describe("jobs sent while the agent is away", () => {
  it("a stopped agent gets the job published while it was down and the one published across a broker restart, each sent once", async () => {
    const device = "dev-away";
    const stateDir = join(dir, device);
    const opts = () =>
      testAgentOptions(broker.url, FLEET, device, "rpi4", stateDir, { telemetryIntervalMs: 60_000 });
    const first = new Agent(opts());
    first.start();
    await first.connected; // subscribed with a persistent session
    await first.stop();

    const resultTopic = (jobId: string) => jobTopic(FLEET, device, jobId, "result");
    let coord = await coordinator(broker.url, "coord-away");
    await coord.client.subscribeAsync(jobTopic(FLEET, device, "+", "result"), { qos: 1 });
    await coord.client.publishAsync(
      jobTopic(FLEET, device, "before-restart", "request"),
      JSON.stringify(request("before-restart", "tiny")),
      { qos: 1 },
    );
    await coord.client.endAsync();

    await broker.stop();
    await broker.start();
    coord = await coordinator(broker.url, "coord-away");
    await coord.client.publishAsync(
      jobTopic(FLEET, device, "after-restart", "request"),
      JSON.stringify(request("after-restart", "tiny")),
      { qos: 1 },
    );

    const second = new Agent(opts());
    second.start();
    try {
      await until(
        () =>
          of(coord.messages, resultTopic("before-restart")).length > 0 &&
          of(coord.messages, resultTopic("after-restart")).length > 0,
        "both results",
        30_000,
      );
      for (const jobId of ["before-restart", "after-restart"]) {
        const result = of<JobResultPayload>(coord.messages, resultTopic(jobId))[0]!;
        expect(result.status, jobId).toBe("SUCCEEDED");
        expect(result.results.map((r) => r.test)).toEqual(["pp8", "tg8"]);
      }
    } finally {
      await second.stop();
    }
  });

  it("an agent process killed with SIGKILL gets the job published while it was down and the broker restarted", async () => {
    const device = "dev-k9";
    const args = ["--broker", broker.url, "--fleet", FLEET, "--device", device, ...modelArgs];
    const stateArgs = ["--state-dir", join(dir, device)];
    const first = agentCli([...args, ...stateArgs]);
    // "online" is printed once the broker has acknowledged the job subscription (the test below), so
    // the session it keeps takes the request. Before, a kill right after it lost the job: 90 s timeout.
    await until(() => first.err().includes(`agent ${device}: online`), "first agent online", 60_000);
    first.proc.kill("SIGKILL");
    await exitsWithin(first.proc, 10_000);

    const coord = await coordinator(broker.url, "coord-k9");
    await coord.client.subscribeAsync(jobTopic(FLEET, device, "+", "+"), { qos: 1 });
    await broker.stop();
    await broker.start();
    const jobTopicOf = (kind: "status" | "result") => jobTopic(FLEET, device, "while-down", kind);
    // The coordinator reconnects by itself; the request waits at the broker for the device's session.
    await until(() => coord.client.connected, "coordinator back", 10_000);
    await coord.client.publishAsync(
      jobTopic(FLEET, device, "while-down", "request"),
      JSON.stringify(request("while-down", "itera-lite-micro")),
      { qos: 1 },
    );

    const second = agentCli([...args, ...stateArgs]);
    await until(() => of(coord.messages, jobTopicOf("result")).length > 0, "the job's result", 90_000);
    const result = of<JobResultPayload>(coord.messages, jobTopicOf("result"))[0]!;
    expect(result.status).toBe("SUCCEEDED");
    expect(result.results.map((r) => r.test.replace(" ", ""))).toEqual(["pp8", "tg8"]);
    const statuses = of<JobStatusPayload>(coord.messages, jobTopicOf("status")).map((s) => s.status);
    expect(statuses[0]).toBe("QUEUED");
    second.proc.kill("SIGTERM");
    expect(await exitsWithin(second.proc, 30_000)).toBe(0);
    expect(second.err()).not.toMatch(STACK);
  });
});

/** MQTT control packet types by number (the high nibble of a packet's first byte). */
const PACKET_TYPES: Record<number, string> = {
  1: "CONNECT",
  2: "CONNACK",
  3: "PUBLISH",
  4: "PUBACK",
  8: "SUBSCRIBE",
  9: "SUBACK",
  12: "PINGREQ",
  13: "PINGRESP",
  14: "DISCONNECT",
};

/** Cuts a TCP byte stream into MQTT packets (type, body after the fixed header). */
function packetSplitter(onPacket: (type: number, body: Buffer) => void): (chunk: Buffer) => void {
  let pending = Buffer.alloc(0);
  return (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    for (;;) {
      // Fixed header: the type, then the remaining length in 1 to 4 bytes of 7 bits each.
      let length = 0;
      let at = 1;
      for (let shift = 0; ; shift += 7, at++) {
        if (at >= pending.length) return;
        const b = pending[at]!;
        length += (b & 0x7f) * 2 ** shift;
        if (b < 0x80) break;
      }
      const end = at + 1 + length;
      if (pending.length < end) return;
      onPacket(pending[0]! >> 4, pending.subarray(at + 1, end));
      pending = pending.subarray(end);
    }
  };
}

/**
 * A TCP relay in front of the broker that notes each MQTT packet as it passes ("agent PUBLISH
 * <topic>", "broker SUBACK"), in the order it passes them on: what the broker had received, and
 * answered, before the agent sent anything else.
 */
async function recordingRelay(
  brokerPort: number,
  events: string[],
): Promise<{ url: string; close: () => void }> {
  const sockets: Socket[] = [];
  const noter = (from: string) =>
    packetSplitter((type, body) => {
      const topic = type === 3 ? ` ${body.toString("utf8", 2, 2 + body.readUInt16BE(0))}` : "";
      events.push(`${from} ${PACKET_TYPES[type] ?? type}${topic}`);
    });
  const server = createServer((agentSide) => {
    const brokerSide = connect(brokerPort, "127.0.0.1");
    sockets.push(agentSide, brokerSide);
    const fromAgent = noter("agent");
    const fromBroker = noter("broker");
    agentSide.on("data", (d: Buffer) => {
      fromAgent(d);
      brokerSide.write(d);
    });
    brokerSide.on("data", (d: Buffer) => {
      fromBroker(d);
      agentSide.write(d);
    });
    for (const [a, b] of [
      [agentSide, brokerSide],
      [brokerSide, agentSide],
    ] as const) {
      a.on("error", () => {});
      a.on("close", () => b.destroy());
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

describe("announcing itself", () => {
  it("a new agent says it is online (log, retained state, birth) only once the broker has acknowledged its job subscription", async () => {
    // A session that never subscribed drops the jobs sent to it: an agent killed after an early
    // "online" on its first connection lost the job sent while it was down (the SIGKILL test above).
    const device = "dev-announce";
    const events: string[] = [];
    const relay = await recordingRelay(broker.port, events);
    const agent = new Agent(
      testAgentOptions(relay.url, FLEET, device, "rpi4", join(dir, device), {
        telemetryIntervalMs: 60_000,
        log: (line) => {
          if (line.includes(`agent ${device}: online`)) events.push("log online");
        },
      }),
    );
    agent.start();
    try {
      await agent.connected;
      const birth = `agent PUBLISH ${deviceTopic(FLEET, device, "birth")}`;
      await until(() => events.includes(birth) && events.includes("log online"), "birth and the online line");
      const suback = events.indexOf("broker SUBACK");
      expect(events.filter((e) => e === "agent SUBSCRIBE")).toHaveLength(1);
      expect(suback, events.join("\n")).toBeGreaterThan(events.indexOf("agent SUBSCRIBE"));
      for (const announcement of [
        `agent PUBLISH ${deviceTopic(FLEET, device, "state")}`,
        birth,
        "log online",
      ]) {
        expect(events.indexOf(announcement), `${announcement}\n${events.join("\n")}`).toBeGreaterThan(suback);
      }
    } finally {
      await agent.stop();
      relay.close();
    }
  });
});

describe("a corrupt agent.db", () => {
  it("is kept aside, a fresh store begins, and the birth message reports it", async () => {
    const device = "dev-corrupt";
    const stateDir = join(dir, device);
    mkdirSync(stateDir, { recursive: true });
    const garbage = randomBytes(64 * 1024);
    writeFileSync(join(stateDir, "agent.db"), garbage);

    const coord = await coordinator(broker.url, "coord-corrupt");
    await coord.client.subscribeAsync(deviceTopic(FLEET, device, "birth"), { qos: 1 });
    const agent = agentCli([
      "--broker",
      broker.url,
      "--fleet",
      FLEET,
      "--device",
      device,
      "--state-dir",
      stateDir,
      ...modelArgs,
    ]);
    await until(() => agent.err().includes(`agent ${device}: online`), "agent online", 60_000);
    await until(() => of(coord.messages, deviceTopic(FLEET, device, "birth")).length > 0, "birth");
    const birth = birthSchema.parse(of(coord.messages, deviceTopic(FLEET, device, "birth"))[0]);
    expect(birth.store_reset).toBeDefined();
    const keptAs = birth.store_reset!.kept_as;
    expect(keptAs).toMatch(/agent\.db\.corrupt-\d{4}-/);
    expect(birth.store_reset!.reason).toMatch(/not a database/);
    // The old bytes are kept for inspection, unchanged.
    expect(readFileSync(keptAs).equals(garbage)).toBe(true);
    expect((await readdir(stateDir)).filter((f) => f.startsWith("agent.db.corrupt-"))).toEqual([
      keptAs.split("/").pop(),
    ]);
    expect(agent.err()).toMatch(/state database was corrupt/);
    expect(agent.err()).not.toMatch(STACK);
    agent.proc.kill("SIGTERM");
    expect(await exitsWithin(agent.proc, 30_000)).toBe(0);
  });

  it("with a valid header but damaged pages is found at open; the reset stays recorded after a restart", async () => {
    const stateDir = join(dir, "store-damaged");
    const healthy = new AgentStore(stateDir);
    for (let i = 0; i < 200; i++) healthy.enqueue(`t/${i}`, JSON.stringify({ i, pad: "x".repeat(200) }));
    expect(healthy.resetNow).toBeUndefined();
    healthy.close();
    // Fold the WAL into the file, then overwrite everything after SQLite's 100-byte header.
    const path = join(stateDir, "agent.db");
    const reopened = new AgentStore(stateDir);
    expect(reopened.resetNow).toBeUndefined();
    expect(reopened.outboxSize()).toBe(200);
    reopened.close();
    rmSync(`${path}-wal`, { force: true });
    rmSync(`${path}-shm`, { force: true });
    const bytes = readFileSync(path);
    expect(bytes.length).toBeGreaterThan(4096);
    randomBytes(bytes.length - 100).copy(bytes, 100);
    writeFileSync(path, bytes);

    const fresh = new AgentStore(stateDir);
    expect(fresh.resetNow).toBeDefined();
    expect(fresh.outboxSize()).toBe(0);
    expect(readFileSync(fresh.resetNow!.kept_as).equals(bytes)).toBe(true);
    const reset = fresh.lastReset();
    fresh.close();
    const again = new AgentStore(stateDir);
    expect(again.resetNow).toBeUndefined();
    expect(again.lastReset()).toEqual(reset);
    again.close();
  });
});

describe("bad input at start-up", () => {
  it("exits non-zero at once with one clear error for a bad --telemetry-interval or a --state-dir that is a file", async () => {
    const refused = `mqtt://127.0.0.1:${await freePort()}`;
    const aFile = join(dir, "not-a-folder");
    writeFileSync(aFile, "x");
    const cases: Array<[string[], RegExp]> = [
      [["--telemetry-interval", "0"], /invalid --telemetry-interval '0'/],
      [["--telemetry-interval", "1e9"], /invalid --telemetry-interval '1e9'/],
      [["--state-dir", aFile], /state directory is not a folder/],
    ];
    for (const [extra, message] of cases) {
      const r = spawnSync(
        process.execPath,
        [AGENT, "agent", "--broker", refused, "--device", "bad-input", ...modelArgs, ...extra],
        { encoding: "utf8", timeout: 60_000, env: { ...process.env, STATE_DIRECTORY: join(dir, "bad") } },
      );
      expect(r.status, extra.join(" ")).toBe(1);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).toMatch(/fix: /);
      expect(r.stderr).not.toMatch(STACK);
      expect(r.stderr.match(/^error: /gm)).toHaveLength(1);
    }
  });
});

describe("SIGTERM in every connection state", () => {
  it("exits 0 without a stack while the broker refuses connections", async () => {
    const refused = `mqtt://127.0.0.1:${await freePort()}`;
    const a = agentCli([
      "--broker",
      refused,
      "--device",
      "term-refused",
      "--state-dir",
      join(dir, "tr"),
      ...modelArgs,
    ]);
    await until(() => (a.err().match(/retrying/g) ?? []).length >= 2, "two failed attempts", 60_000);
    a.proc.kill("SIGTERM");
    expect(await exitsWithin(a.proc, 20_000)).toBe(0);
    expect(a.err()).not.toMatch(STACK);
    expect(a.err()).not.toMatch(/TypeError|internal error/);
  });

  it("exits 0 without a stack while connecting to a broker that never answers", async () => {
    const sockets: Socket[] = [];
    const silent = createServer((s) => sockets.push(s));
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", () => r()));
    const port = (silent.address() as { port: number }).port;
    try {
      const a = agentCli([
        "--broker",
        `mqtt://127.0.0.1:${port}`,
        "--device",
        "term-silent",
        "--state-dir",
        join(dir, "ts"),
        ...modelArgs,
      ]);
      await until(() => sockets.length > 0, "the agent's connection attempt", 60_000);
      a.proc.kill("SIGTERM");
      expect(await exitsWithin(a.proc, 20_000)).toBe(0);
      expect(a.err()).not.toMatch(STACK);
    } finally {
      for (const s of sockets) s.destroy();
      silent.close();
    }
  });

  it("exits 0 without a stack after the broker went away", async () => {
    const own = await Mosquitto.create();
    try {
      const a = agentCli([
        "--broker",
        own.url,
        "--device",
        "term-lost",
        "--state-dir",
        join(dir, "tl"),
        ...modelArgs,
      ]);
      await until(() => a.err().includes("agent term-lost: online"), "online", 60_000);
      await own.stop();
      await until(() => a.err().includes("broker unreachable"), "broker loss noticed", 30_000);
      a.proc.kill("SIGTERM");
      expect(await exitsWithin(a.proc, 20_000)).toBe(0);
      expect(a.err()).not.toMatch(STACK);
    } finally {
      await own.stop();
    }
  });
});
