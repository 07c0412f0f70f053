import { mkdtemp } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Agent } from "../src/agent/agent.js";
import { RunningJobs, runDashboard } from "../src/fleet/dashboard.js";
import { countTags } from "./browser-helpers.js";
import { Mosquitto, testAgentOptions } from "./mqtt-helpers.js";
import { tempDir } from "./temp-dir.js";

/** `itera fleet dashboard` against a real Mosquitto and agents, its page run by headless Chromium. */
const HOSTILE = "<img src=x onerror=document.title='pwned'>";

let broker: Mosquitto;
let dir: string;
const agents: Agent[] = [];
const ac = new AbortController();
let url: string;
let done: Promise<void>;
beforeAll(async () => {
  broker = await Mosquitto.create();
  dir = await tempDir("itera-dashboard-");
  for (const [i, p] of ["rpi5", HOSTILE].entries()) {
    const agent = new Agent(
      testAgentOptions(broker.url, "fd", `dev-${i}`, p, await mkdtemp(join(dir, "a-"))),
    );
    agents.push(agent);
    agent.start();
    await agent.connected;
  }
  let connected!: () => void;
  const brokerUp = new Promise<void>((r) => {
    connected = r;
  });
  const listening = new Promise<string>((resolve, reject) => {
    done = runDashboard({
      broker: { url: broker.url },
      fleet: "fd",
      host: "127.0.0.1",
      port: 0,
      token: "s3cret",
      signal: ac.signal,
      onListening: resolve,
      onBroker: (b) => b.state === "connected" && connected(),
    });
    done.catch(reject);
  });
  url = await listening;
  // The page is served before the broker connection is up; the stream's snapshot needs it.
  await brokerUp;
}, 60_000);
afterAll(async () => {
  ac.abort();
  await done;
  for (const a of agents) await a.stop().catch(() => {});
  await broker.stop();
});

describe("itera fleet dashboard", () => {
  it("refuses the page and the stream without the token", async () => {
    expect((await fetch(`${url}/`)).status).toBe(401);
    expect((await fetch(`${url}/events?token=wrong`)).status).toBe(401);
    expect((await fetch(`${url}/events`, { headers: { authorization: "Bearer s3cret" } })).status).toBe(200);
  });

  it("streams a snapshot of every device (state, version, profile) as Server-Sent Events", async () => {
    type Device = { device: string; state: string; profile: string; version: string };
    const snapshot = async (): Promise<Device[]> => {
      const res = await fetch(`${url}/events?token=s3cret`);
      expect(res.headers.get("content-type")).toBe("text/event-stream");
      const reader = res.body!.getReader();
      let text = "";
      while (!text.includes("\n\n")) text += new TextDecoder().decode((await reader.read()).value);
      await reader.cancel();
      const [event, data] = text.split("\n");
      expect(event).toBe("event: snapshot");
      return JSON.parse(data!.slice(6)) as Device[];
    };
    // The retained births arrive just after the subscription: ask again until both are in.
    let devices = await snapshot();
    await vi.waitFor(async () => {
      devices = await snapshot();
      expect(devices).toHaveLength(2);
    }, 20_000);
    expect(devices.map((d) => [d.device, d.state, d.profile])).toEqual([
      ["dev-0", "online", "rpi5"],
      ["dev-1", "online", HOSTILE],
    ]);
    expect(devices.every((d) => typeof d.version === "string" && d.version !== "")).toBe(true);
  });

  it("serves a self-contained page that allows only its own event stream", async () => {
    const html = await (await fetch(`${url}/?token=s3cret`)).text();
    expect(html).toContain("default-src 'none'");
    expect(html).toContain("connect-src 'self'");
    expect(html).toContain('new EventSource("events"+q)');
    expect(countTags(html.replace(/<script[\s\S]*?<\/script>/g, ""), "img")).toBe(0);
  });

  it("serves /state.json only with the token, each device with the telemetry points it kept", async () => {
    expect((await fetch(`${url}/state.json`)).status).toBe(401);
    const state = (await (await fetch(`${url}/state.json?token=s3cret`)).json()) as {
      broker: { state: string };
      devices: { device: string; points: unknown[] }[];
      running: unknown[];
    };
    expect(state.broker.state).toBe("connected");
    expect(state.devices.map((d) => d.device).sort()).toEqual(["dev-0", "dev-1"]);
    expect(state.devices.every((d) => Array.isArray(d.points))).toBe(true);
    expect(state.running).toEqual([]);
  });
});

describe("running jobs as the dashboard follows them", () => {
  const status = (jobId: string, s: "QUEUED" | "IN_PROGRESS" | "SUCCEEDED", details: string | null) => ({
    v: 1,
    jobId,
    execNo: 1,
    status: s,
    details,
    ts: 0,
  });

  it("a request, then statuses with progress; a terminal status or a result ends it", () => {
    const r = new RunningJobs();
    r.requested("dev-1", "bench-1", "benchmark", 10_000, 100);
    r.requested("dev-0", "bench-1", "benchmark", 10_000, 100);
    expect(r.list().map((j) => [j.device, j.status, j.type])).toEqual([
      ["dev-0", "SENT", "benchmark"],
      ["dev-1", "SENT", "benchmark"],
    ]);
    expect(r.status("dev-0", status("bench-1", "IN_PROGRESS", "pp8 1/2"), 200)).toBe(true);
    expect(r.list()[0]).toEqual({
      jobId: "bench-1",
      type: "benchmark",
      device: "dev-0",
      status: "IN_PROGRESS",
      details: "pp8 1/2",
      sinceMs: 100,
    });
    expect(r.status("dev-0", status("bench-1", "SUCCEEDED", null))).toBe(true);
    expect(r.finished("dev-1", "bench-1")).toBe(true);
    expect(r.finished("dev-1", "bench-1")).toBe(false);
    expect(r.list()).toEqual([]);
  });

  it("a status without its request has no type; one past its deadline is dropped", () => {
    const r = new RunningJobs(1000);
    r.status("dev-0", status("upd-1", "QUEUED", null), 50);
    expect(r.list()[0]!.type).toBeNull();
    r.requested("dev-1", "bench-2", "benchmark", 5000, 60);
    expect(r.prune(5500)).toBe(false);
    expect(r.prune(6001)).toBe(true);
    expect(r.list().map((j) => j.jobId)).toEqual(["upd-1"]);
  });
});
