/**
 * Issue #15, coordinator side: nothing forged is taken for a device's result. The embedded aedes
 * broker with a Mosquitto-format password file and per-device topic rights; a result whose payload
 * names another device than its topic is refused and the genuine one is stored; two different
 * results for one job are both distrusted; the anonymous-broker warning; escaped reports.
 */
import { spawn, spawnSync } from "node:child_process";
import { chmod, readFile, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Agent } from "../src/agent/agent.js";
import { IteraError } from "../src/errors.js";
import { type FleetBenchOutcome, runFleetBench } from "../src/fleet/bench.js";
import { type EmbeddedBroker, startBroker } from "../src/fleet/broker.js";
import { parsePasswordFile, setPassword, verifyPassword } from "../src/fleet/broker-auth.js";
import { renderCsv, renderMarkdown, renderSvg } from "../src/fleet/report.js";
import { FleetStore } from "../src/fleet/store.js";
import { watchFleet } from "../src/fleet/watch.js";
import { connectBroker, endAsync, LoginRefusedError } from "../src/protocol/connect.js";
import type { BenchResult } from "../src/protocol/schemas.js";
import { jobTopic } from "../src/protocol/topics.js";
import { cpuRunner, freePort, gate, sleep, testAgentOptions, until, waitForPort } from "./mqtt-helpers.js";
import { tempDir } from "./temp-dir.js";

const CLI = resolve("dist/cli/itera.js");
const PARAMS = { model: "tiny", tests: ["tg8"], threads: [1], repetitions: 1, warmup: 0 };

let dir: string;
const PW = { coordinator: "coord-secret", "dev-a": "a-secret", "dev-b": "b-secret" };

beforeAll(async () => {
  dir = await tempDir("itera-fleet-security-");
});

function forgedResult(jobId: string, claimedDevice: string): string {
  const r: BenchResult = {
    model: "tiny",
    quant: "fp32",
    profile: "rpi4",
    device: claimedDevice,
    threads: 1,
    test: "tg8",
    repetitions: 1,
    tokens_per_s: { mean: 999_999, stdev: 0, samples: [999_999] },
    ttft_ms: 0.001,
    latency_ms: { p50: 0.001, p95: 0.001 },
    energy: null,
    cpu_pct: null,
    rss_mb: null,
    temp_c_max: null,
    throttled: null,
    agent_version: "forged",
    runtime: "forged",
    timestamp: new Date().toISOString(),
  };
  return JSON.stringify({ v: 1, jobId, execNo: 1, status: "SUCCEEDED", results: [r], error: null });
}

/** An attacker on the broker that answers every job request for `victim` at once with a forged result. */
async function forger(url: string, fleet: string, victim: string, claimedDevice: string) {
  const c = await mqtt.connectAsync(url, { protocolVersion: 4, clientId: `forger-${claimedDevice}` });
  c.on("message", (topic) => {
    const jobId = topic.split("/")[5]!;
    c.publish(jobTopic(fleet, victim, jobId, "result"), forgedResult(jobId, claimedDevice), { qos: 1 });
  });
  await c.subscribeAsync(`itera/v1/${fleet}/${victim}/jobs/+/request`, { qos: 1 });
  return c;
}

describe("the password file (Mosquitto's format)", () => {
  it("reads mosquitto_passwd's $7$ and $6$ hashes, and Mosquitto accepts the ones itera writes", async () => {
    const file = join(dir, "mixed.passwd");
    await writeFile(file, "", { mode: 0o600 });
    spawnSync("mosquitto_passwd", ["-b", file, "m7", "pw7"]);
    spawnSync("mosquitto_passwd", ["-H", "sha512", "-b", file, "m6", "pw6"]);
    expect(await setPassword(file, "itera-user", "pw-i")).toBe("added");
    const table = parsePasswordFile(await readFile(file, "utf8"), file);
    expect(table.get("m7")).toMatch(/^\$7\$/);
    expect(table.get("m6")).toMatch(/^\$6\$/);
    expect(await verifyPassword(table.get("m7")!, Buffer.from("pw7"))).toBe(true);
    expect(await verifyPassword(table.get("m6")!, Buffer.from("pw6"))).toBe(true);
    expect(await verifyPassword(table.get("m6")!, Buffer.from("pw7"))).toBe(false);
    expect(await verifyPassword(table.get("itera-user")!, Buffer.from("pw-i"))).toBe(true);

    // The same file in a real Mosquitto: itera's hash logs in, a wrong password does not.
    // Mosquitto started as root reads it as its own user.
    await chmod(dir, 0o755);
    await chmod(file, 0o644);
    const port = await freePort();
    const conf = join(dir, "mosquitto.conf");
    await writeFile(conf, `listener ${port} 127.0.0.1\nallow_anonymous false\npassword_file ${file}\n`);
    const proc = spawn("mosquitto", ["-c", conf], { stdio: "ignore" });
    try {
      await waitForPort(port);
      const url = `mqtt://127.0.0.1:${port}`;
      const ok = await connectBroker(
        { url, username: "itera-user", password: "pw-i" },
        { clientId: "itera-user", clean: true },
      );
      await endAsync(ok);
      const bad = await connectBroker(
        { url, username: "itera-user", password: "wrong" },
        { clientId: "itera-user", clean: true, reconnectPeriodMs: 0 },
      ).catch((e: unknown) => e);
      expect(bad).toBeInstanceOf(LoginRefusedError);
    } finally {
      proc.kill("SIGTERM");
    }
  });

  it("refuses a plain-text line with the line number and how to fix it", () => {
    const e = (() => {
      try {
        parsePasswordFile("coordinator:$7$101$abc$def\ndev-a:secret\n", "lab.passwd");
      } catch (err) {
        return err;
      }
    })();
    expect(e).toBeInstanceOf(IteraError);
    expect((e as IteraError).message).toMatch(/line 1/);
  });
});

describe("itera broker with a password file and per-device rights (aedes)", () => {
  let broker: EmbeddedBroker;
  const log: string[] = [];
  beforeAll(async () => {
    const file = join(dir, "lab.passwd");
    for (const [u, p] of Object.entries(PW)) await setPassword(file, u, p);
    broker = await startBroker({
      port: 0,
      host: "127.0.0.1",
      auth: { passwordFile: file, policy: { coordinators: new Set(["coordinator"]), readers: new Set() } },
      log: (l) => log.push(l),
    });
  });
  afterAll(async () => {
    await broker?.close();
  });

  it("refuses a wrong password, an anonymous client and a device using another device's client id", async () => {
    expect(broker.anonymous).toBe(false);
    const attempt = (username: string | undefined, password: string | undefined, clientId: string) =>
      connectBroker(
        {
          url: broker.url,
          ...(username !== undefined ? { username } : {}),
          ...(password !== undefined ? { password } : {}),
        },
        { clientId, clean: true, reconnectPeriodMs: 0 },
      ).then(endAsync, (e: unknown) => e);
    expect(await attempt("dev-a", "b-secret", "dev-a")).toBeInstanceOf(LoginRefusedError);
    expect(await attempt("nobody", "x", "nobody")).toBeInstanceOf(LoginRefusedError);
    expect(await attempt(undefined, undefined, "anon")).toBeInstanceOf(LoginRefusedError);
    expect(await attempt("dev-a", "a-secret", "dev-b")).toBeInstanceOf(LoginRefusedError);
    expect(await attempt("dev-a", "a-secret", "dev-a")).toBeUndefined();
    expect(log.join("\n")).toMatch(/refused login: client 'dev-a' user 'dev-a': wrong user name or password/);
    expect(log.join("\n")).toMatch(/a device's client id must be its user name/);
  });

  it("lets the coordinator's jobs through, and a device cannot publish on another device's result topic", async () => {
    const watcher = await connectBroker(
      { url: broker.url, username: "coordinator", password: PW.coordinator },
      { clientId: "watcher", clean: true },
    );
    const seen: string[] = [];
    watcher.on("message", (t) => seen.push(t));
    await watcher.subscribeAsync("itera/v1/sec/+/jobs/+/result", { qos: 1 });
    // dev-a, logged in as itself, answers dev-b's jobs with a forged result naming dev-b.
    const rogue = await mqtt.connectAsync(broker.url, {
      protocolVersion: 4,
      clientId: "dev-a",
      username: "dev-a",
      password: PW["dev-a"],
      reconnectPeriod: 0,
    });
    // It may not even read dev-b's job requests.
    const granted = await rogue.subscribeAsync("itera/v1/sec/dev-b/jobs/+/request", { qos: 1 }).then(
      () => "granted",
      (e: { packet?: { granted?: number[] } }) => e.packet?.granted,
    );
    expect(granted).toEqual([128]);
    const forged = new Promise<unknown>((res) =>
      rogue.publish(
        jobTopic("sec", "dev-b", "j-1", "result"),
        forgedResult("j-1", "dev-b"),
        { qos: 1 },
        (err) => res(err ?? "acknowledged"),
      ),
    );
    expect(await Promise.race([forged, sleep(2000).then(() => "no answer")])).not.toBe("acknowledged");
    await until(
      () => log.some((l) => l.includes("may not publish to itera/v1/sec/dev-b/jobs/j-1/result")),
      "log",
    );
    rogue.end(true);

    const agents: Agent[] = [];
    for (const d of ["dev-a", "dev-b"] as const) {
      const a = new Agent(
        testAgentOptions(broker.url, "sec", d, "rpi4", await tempDir("itera-agent-"), {
          broker: { url: broker.url, username: d, password: PW[d] },
        }),
      );
      a.start();
      await a.connected;
      agents.push(a);
    }

    const store = new FleetStore(":memory:");
    const outcome = await runFleetBench({
      broker: { url: broker.url, username: "coordinator", password: PW.coordinator },
      fleet: "sec",
      devices: 2,
      params: PARAMS,
      timeoutS: 60,
      store,
    });
    expect(outcome.devices.map((d) => [d.device, d.status])).toEqual([
      ["dev-a", "SUCCEEDED"],
      ["dev-b", "SUCCEEDED"],
    ]);
    expect(outcome.anonymousBroker).toBe(false);
    expect(outcome.warnings).toEqual([]);
    expect(seen).not.toContain("itera/v1/sec/dev-b/jobs/j-1/result");
    for (const r of store.results({ jobId: outcome.jobId })) {
      expect(r.result.device).toBe(r.device);
      expect(r.result.tokens_per_s.mean).toBeLessThan(999_999);
    }
    // A device may not send jobs: its request for dev-b is refused.
    const req = new Promise<unknown>((res) =>
      agents[0]!.client!.publish(
        jobTopic("sec", "dev-b", "j-2", "request"),
        JSON.stringify({
          v: 1,
          jobId: "j-2",
          execNo: 1,
          deadline: Date.now() + 60_000,
          doc: { type: "benchmark", params: PARAMS },
        }),
        { qos: 1 },
        (err) => res(err ?? "acknowledged"),
      ),
    );
    await Promise.race([req, sleep(1500)]);
    await until(
      () => log.some((l) => l.includes("may not publish to itera/v1/sec/dev-b/jobs/j-2/request")),
      "log",
    );
    await watcher.endAsync();
    for (const a of agents) await a.stop();
    store.close();
  });
});

/** The Mosquitto ACL of docs/fleet.md, line for line (the test checks the page still says so). */
const MOSQUITTO_ACL = [
  "user coordinator",
  "topic read itera/v1/#",
  "topic write itera/v1/+/+/jobs/+/request",
  "",
  "user telegraf",
  "topic read itera/v1/+/+/telemetry",
  "",
  "# every other user is a device whose id is its user name: its own topics only",
  "pattern write itera/v1/+/%u/state",
  "pattern write itera/v1/+/%u/birth",
  "pattern write itera/v1/+/%u/telemetry",
  "pattern write itera/v1/+/%u/feedback",
  "pattern write itera/v1/+/%u/jobs/+/status",
  "pattern write itera/v1/+/%u/jobs/+/result",
  "pattern read itera/v1/+/%u/jobs/+/request",
];

describe("Mosquitto with a password file and the ACL of docs/fleet.md", () => {
  it("runs a fleet benchmark, and a device's forged result for another device never arrives", async () => {
    const docs = await readFile("docs/fleet.md", "utf8");
    for (const line of MOSQUITTO_ACL.filter((l) => l !== "")) expect(docs).toContain(line);
    const mdir = await tempDir("itera-mosquitto-acl-");
    await chmod(mdir, 0o755); // Mosquitto started as root reads its files as its own user
    const pw = join(mdir, "passwd");
    for (const [u, p] of Object.entries(PW)) await setPassword(pw, u, p);
    await chmod(pw, 0o644);
    await writeFile(join(mdir, "acl"), `${MOSQUITTO_ACL.join("\n")}\n`, { mode: 0o644 });
    const port = await freePort();
    const conf = join(mdir, "mosquitto.conf");
    await writeFile(
      conf,
      `listener ${port} 127.0.0.1\nallow_anonymous false\npassword_file ${pw}\nacl_file ${join(mdir, "acl")}\n`,
    );
    const proc = spawn("mosquitto", ["-c", conf], { stdio: "ignore" });
    const agents: Agent[] = [];
    const store = new FleetStore(":memory:");
    try {
      await waitForPort(port);
      const url = `mqtt://127.0.0.1:${port}`;
      const watcher = await connectBroker(
        { url, username: "coordinator", password: PW.coordinator },
        { clientId: "watcher", clean: true },
      );
      const seen: string[] = [];
      watcher.on("message", (t) => seen.push(t));
      await watcher.subscribeAsync("itera/v1/msq/+/jobs/+/result", { qos: 1 });
      const rogue = await mqtt.connectAsync(url, {
        protocolVersion: 4,
        clientId: "dev-a",
        username: "dev-a",
        password: PW["dev-a"],
        reconnectPeriod: 0,
      });
      await rogue.publishAsync(jobTopic("msq", "dev-b", "j-1", "result"), forgedResult("j-1", "dev-b"), {
        qos: 1,
      });
      // Its own topic, after the forged one on the same connection: once this arrives, so would have the other.
      await rogue.publishAsync(jobTopic("msq", "dev-a", "j-0", "result"), forgedResult("j-0", "dev-a"), {
        qos: 1,
      });
      await until(() => seen.includes(jobTopic("msq", "dev-a", "j-0", "result")), "dev-a's own message");
      expect(seen).not.toContain(jobTopic("msq", "dev-b", "j-1", "result"));
      await rogue.endAsync();

      for (const d of ["dev-a", "dev-b"] as const) {
        const a = new Agent(
          testAgentOptions(url, "msq", d, "rpi4", await tempDir("itera-agent-"), {
            broker: { url, username: d, password: PW[d] },
          }),
        );
        a.start();
        await a.connected;
        agents.push(a);
      }
      const outcome = await runFleetBench({
        broker: { url, username: "coordinator", password: PW.coordinator },
        fleet: "msq",
        devices: 2,
        params: PARAMS,
        timeoutS: 60,
        store,
      });
      expect(outcome.devices.map((d) => [d.device, d.status])).toEqual([
        ["dev-a", "SUCCEEDED"],
        ["dev-b", "SUCCEEDED"],
      ]);
      expect(outcome.anonymousBroker).toBe(false);
      await watcher.endAsync();
    } finally {
      for (const a of agents) await a.stop();
      store.close();
      proc.kill("SIGTERM");
    }
  });
});

describe("on an anonymous broker (aedes)", () => {
  let broker: EmbeddedBroker;
  beforeAll(async () => {
    broker = await startBroker({ port: 0, host: "127.0.0.1" });
  });
  afterAll(async () => {
    await broker?.close();
  });

  it("refuses a result whose payload names another device than its topic, stores the genuine one, and warns", async () => {
    const { hold, release } = gate();
    const victim = new Agent(
      testAgentOptions(broker.url, "anon", "victim", "rpi4", await tempDir("itera-agent-"), {
        runner: cpuRunner("victim", "rpi4", { hold }),
      }),
    );
    victim.start();
    await victim.connected;
    // Another device of the fleet passes its own (fast) result off as the victim's, before it finishes.
    const attacker = await forger(broker.url, "anon", "victim", "attacker");
    const events: string[] = [];
    const store = new FleetStore(":memory:");
    const run = runFleetBench({
      broker: { url: broker.url },
      fleet: "anon",
      devices: 1,
      params: PARAMS,
      timeoutS: 60,
      store,
      onEvent: (e) => {
        events.push(e.type === "refused" ? `refused ${e.reason}` : e.type);
        if (e.type === "refused") release();
      },
    });
    const outcome = await run;
    const d = outcome.devices[0]!;
    expect(d.status).toBe("SUCCEEDED");
    expect(d.results[0]!.device).toBe("victim");
    expect(d.results[0]!.tokens_per_s.mean).toBeLessThan(999_999);
    expect(
      events.some((e) =>
        /refused results\.0\.device is 'attacker' but the topic is device 'victim's/.test(e),
      ),
    ).toBe(true);
    expect(outcome.stats.refused).toBe(1);
    expect(outcome.refused![0]!.topic).toBe(jobTopic("anon", "victim", outcome.jobId, "result"));
    const stored = store.results({ jobId: outcome.jobId });
    expect(stored.map((r) => [r.device, r.result.device])).toEqual([["victim", "victim"]]);
    expect(stored[0]!.result.tokens_per_s.mean).toBeLessThan(999_999);
    // The broker let the forger in: the coordinator says so.
    expect(outcome.anonymousBroker).toBe(true);
    expect(outcome.warnings!.join()).toMatch(/accepts anonymous clients/);
    expect(events).toContain("warning");
    attacker.end(true);
    await victim.stop();
    store.close();
  });

  it("distrusts both results when a fully forged one (right device id) and the genuine one both arrive", async () => {
    const victimGate = gate();
    const otherGate = gate();
    const agents = [
      new Agent(
        testAgentOptions(broker.url, "dup", "victim", "rpi4", await tempDir("itera-agent-"), {
          runner: cpuRunner("victim", "rpi4", { hold: victimGate.hold }),
        }),
      ),
      new Agent(
        testAgentOptions(broker.url, "dup", "zz-other", "rpi4", await tempDir("itera-agent-"), {
          runner: cpuRunner("zz-other", "rpi4", { hold: otherGate.hold }),
        }),
      ),
    ];
    for (const a of agents) {
      a.start();
      await a.connected;
    }
    const attacker = await forger(broker.url, "dup", "victim", "victim");
    const store = new FleetStore(":memory:");
    let forgedIn = false;
    const run = runFleetBench({
      broker: { url: broker.url },
      fleet: "dup",
      devices: 2,
      params: PARAMS,
      timeoutS: 60,
      store,
      onEvent: (e) => {
        // The forged answer came first and was taken; now let the genuine one arrive.
        if (e.type === "done" && e.device === "victim" && !forgedIn) {
          forgedIn = true;
          victimGate.release();
        }
        if (e.type === "refused") otherGate.release();
      },
    });
    const outcome = await run;
    const v = outcome.devices.find((d) => d.device === "victim")!;
    expect(v.status).toBe("FAILED");
    expect(v.results).toEqual([]);
    expect(v.details).toMatch(/conflicting results/);
    expect(outcome.stats.conflictingResults).toBe(1);
    expect(store.results({ jobId: outcome.jobId, device: "victim" })).toEqual([]);
    expect(outcome.devices.find((d) => d.device === "zz-other")!.status).toBe("SUCCEEDED");
    attacker.end(true);
    for (const a of agents) await a.stop();
    store.close();
  });

  it("fleet watch warns about the anonymous broker in its JSON lines and on stderr", async () => {
    const out: string[] = [];
    const err: string[] = [];
    await watchFleet({
      broker: { url: broker.url },
      fleet: "anon",
      mode: "json",
      durationS: 0.5,
      write: (t) => out.push(t),
      warn: (t) => err.push(t),
    });
    const warning = out
      .map((l) => JSON.parse(l) as { type: string; anonymousBroker?: boolean })
      .find((l) => l.type === "warning");
    expect(warning?.anonymousBroker).toBe(true);
    expect(err.join("")).toMatch(/WARNING: the broker mqtt:\/\/127\.0\.0\.1:\d+ accepts anonymous clients/);
  });
});

describe("the CLI", () => {
  it("itera broker says ANONYMOUS loudly without a password file and not with one; fleet watch warns only then", async () => {
    const start = (args: string[]) =>
      new Promise<{ url: string; anonymous: boolean; stderr: () => string; stop: () => void }>((res, rej) => {
        const p = spawn(process.execPath, [CLI, "broker", "--port", "0", "--json", ...args], {
          stdio: ["ignore", "pipe", "pipe"],
        });
        let out = "";
        let stderr = "";
        p.stderr!.on("data", (d: Buffer) => {
          stderr += d.toString();
        });
        p.stdout!.on("data", (d: Buffer) => {
          out += d.toString();
          if (out.includes("}")) {
            const j = JSON.parse(out) as { url: string; anonymous: boolean };
            res({ ...j, stderr: () => stderr, stop: () => p.kill("SIGTERM") });
          }
        });
        p.once("exit", (code) => rej(new Error(`broker exited ${code}: ${stderr}`)));
      });
    const anon = await start([]);
    expect(anon.anonymous).toBe(true);
    await until(() => /WARNING: anonymous broker/.test(anon.stderr()), "the broker's warning");
    const watchArgs = (url: string) => [
      "fleet",
      "watch",
      "--broker",
      url,
      "--fleet",
      "x",
      "--duration",
      "0.5",
      "--json",
    ];
    const w1 = spawnSync(process.execPath, [CLI, ...watchArgs(anon.url)], { encoding: "utf8" });
    expect(w1.status).toBe(0);
    expect(w1.stderr).toMatch(/WARNING: .*accepts anonymous clients/);
    expect(w1.stdout).toMatch(/"type":"warning","anonymousBroker":true/);
    anon.stop();

    const file = join(dir, "cli.passwd");
    const added = spawnSync(
      process.execPath,
      [CLI, "broker", "passwd", "--file", file, "--user", "coordinator", "--json"],
      {
        encoding: "utf8",
      },
    );
    expect(added.status).toBe(0);
    const { password } = JSON.parse(added.stdout) as { password: string };
    expect(password.length).toBeGreaterThanOrEqual(16);
    const secure = await start(["--password-file", file]);
    expect(secure.anonymous).toBe(false);
    expect(secure.stderr()).not.toMatch(/WARNING/);
    const w2 = spawnSync(process.execPath, [CLI, ...watchArgs(secure.url), "--username", "coordinator"], {
      encoding: "utf8",
      env: { ...process.env, ITERA_MQTT_PASSWORD: password },
    });
    expect(w2.status).toBe(0);
    expect(w2.stderr).not.toMatch(/WARNING/);
    expect(w2.stdout).not.toMatch(/"type":"warning"/);
    secure.stop();

    const missing = spawnSync(
      process.execPath,
      [CLI, "broker", "--port", "0", "--password-file", join(dir, "nope")],
      {
        encoding: "utf8",
      },
    );
    expect(missing.status).not.toBe(0);
    expect(missing.stderr).toMatch(/cannot read the password file/);
  });
});

describe("reports with device-supplied strings", () => {
  const hostile = "<img src=x onerror=alert(1)>";
  const result = JSON.parse(forgedResult("j-x", "dev|x")).results[0] as BenchResult;
  const outcome: FleetBenchOutcome = {
    jobId: "bench-x",
    fleet: "lab",
    model: "tiny`x`",
    params: PARAMS,
    startedMs: 0,
    finishedMs: 1000,
    devices: [
      {
        device: "dev-x",
        profile: hostile,
        quant: '=HYPERLINK("http://evil")',
        execNo: 1,
        status: "SUCCEEDED",
        details: null,
        sends: 1,
        results: [
          {
            ...result,
            quant: '=HYPERLINK("http://evil")',
            energy: { method: "@SUM(A1)", J: 1, mJ_per_token: 2, tokens_per_J: 3, samples: 10, rate_hz: 10 },
          } as BenchResult,
        ],
        tempC: null,
        throttled: null,
        // A version string from a birth is the device's own text: its variant label must stay inert too.
        variant: null,
        version: "1.0<img src=y onerror=alert(2)>",
      },
      {
        device: "dev-y",
        profile: "rpi4",
        quant: null,
        execNo: 1,
        status: "FAILED",
        details: "boom | </td><script>x()</script>\n# heading",
        sends: 1,
        results: [],
        tempC: null,
        throttled: null,
      },
    ],
    stats: { messages: 0, invalid: 0, duplicateResults: 0, duplicateTelemetry: 0, resends: 0 },
  };

  it("report.md escapes every device string (no HTML, no broken table), report.csv neutralises formulas", () => {
    const md = renderMarkdown(outcome);
    expect(md).not.toMatch(/<img|<script|<\/td>/);
    expect(md).toContain("&lt;img src=x onerror=alert(1)&gt;");
    expect(md).not.toMatch(/^# heading/m);
    // Every table line has exactly the header's number of cell separators (escaped pipes do not count).
    const table = md
      .split("## Per variant")[0]!
      .split("\n")
      .filter((l) => l.startsWith("|"));
    const seps = (l: string) => l.replace(/\\\|/g, "").split("|").length;
    expect(new Set(table.map(seps)).size).toBe(1);
    expect(table).toHaveLength(4);
    // The model in a code span whose fence the backtick inside cannot close.
    expect(md).toContain("model `` tiny`x` ``");

    const csv = renderCsv(outcome);
    const cells = csv.split("\n").flatMap((l) => l.split(","));
    expect(cells.some((c) => /^"?[=@+]/.test(c))).toBe(false);
    expect(csv).toContain(`"'=HYPERLINK(""http://evil"")"`);
    expect(csv).toContain("'@SUM(A1)");
    expect(renderSvg(outcome)).not.toContain("<img");
  });
});
