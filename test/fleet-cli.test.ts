/**
 * The fleet commands end to end, as `make demo` runs them: `itera broker`, `itera fleet simulate`
 * (agent processes benchmarking the house model with simulated INA219 meters on socat ptys),
 * `itera fleet bench`, `watch` and `history`, through the built CLI (dist/).
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runFleetBench } from "../src/fleet/bench.js";
import { FleetStore } from "../src/fleet/store.js";
import { until } from "./mqtt-helpers.js";
import { tempDir } from "./temp-dir.js";

const CLI = resolve("dist/cli/itera.js");
const AGENT = resolve("dist/cli/itera-agent.js");
const MODEL = resolve("models/itera-lite-micro");

function itera(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", timeout: 240_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function exited(p: ChildProcess): Promise<number | null> {
  return p.exitCode !== null || p.signalCode !== null
    ? Promise.resolve(p.exitCode)
    : new Promise((r) => p.once("exit", (code) => r(code)));
}

let dir: string;
let broker: ChildProcess;
let sim: ChildProcess;
let url = "";
let simLog = "";

beforeAll(async () => {
  dir = await tempDir("itera-fleet-cli-");
  broker = spawn(process.execPath, [CLI, "broker", "--port", "0", "--json"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  broker.stdout!.on("data", (d: Buffer) => {
    out += d.toString();
  });
  await until(() => out.includes("}"), "broker address", 60_000);
  url = (JSON.parse(out) as { url: string }).url;
  sim = spawn(
    process.execPath,
    [CLI, "fleet", "simulate", "--devices", "2", "--broker", url, "--fleet", "cli", "--model", MODEL].concat([
      "--state-dir",
      join(dir, "agents"),
      "--telemetry-interval",
      "0.3",
      "--profiles",
      "rpi4,laptop-x64-4c",
    ]),
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  sim.stderr!.on("data", (d: Buffer) => {
    simLog += d.toString();
  });
  await until(() => (simLog.match(/online \(bdSeq/g) ?? []).length === 2, "two agents online", 90_000);
});

afterAll(async () => {
  sim?.kill("SIGTERM");
  if (sim) await exited(sim);
  broker?.kill("SIGTERM");
  if (broker) await exited(broker);
});

describe("itera broker + fleet simulate + fleet bench/watch/history", () => {
  it("benchmarks the simulated fleet with simulated INA219 energy figures and writes the report", async () => {
    const out = join(dir, "report");
    const db = join(dir, "fleet.db");
    const r = itera(
      [
        "fleet",
        "bench",
        "--broker",
        url,
        "--fleet",
        "cli",
        "--devices",
        "2",
        "--model",
        "itera-lite-micro",
      ].concat(
        [
          "--tests",
          "pp16,tg16",
          "--repetitions",
          "2",
          "--warmup",
          "0",
          "--min-duration",
          "0.3",
          "--timeout",
          "120",
        ],
        ["--out", out, "--db", db, "--json"],
      ),
    );
    expect(r.stderr).not.toMatch(/internal error/);
    expect(r.status).toBe(0);
    const outcome = JSON.parse(r.stdout) as {
      rows: Array<{
        device: string;
        profile: string;
        status: string;
        tg_tok_s: number;
        mj_per_token: number;
        energy_method: string;
      }>;
    };
    expect(outcome.rows.map((x) => x.profile)).toEqual(["laptop-x64-4c", "rpi4"]);
    for (const row of outcome.rows) {
      expect(row.status).toBe("SUCCEEDED");
      expect(row.tg_tok_s).toBeGreaterThan(0);
      // fleet simulate tells each agent its INA219 is a simulator: never reported as a measurement.
      expect(row.energy_method).toBe("ina219-simulated");
      expect(row.mj_per_token).toBeGreaterThan(0);
    }
    for (const f of ["report.md", "report.csv", "report.json", "results.json", "chart.svg"])
      expect(existsSync(join(out, f))).toBe(true);
    expect(await readFile(join(out, "report.md"), "utf8")).toMatch(/2\/2 devices succeeded/);

    const hist = itera(["fleet", "history", "--db", db, "--json"]);
    expect(hist.status).toBe(0);
    expect((JSON.parse(hist.stdout) as unknown[]).length).toBe(4);
    const again = itera(["fleet", "report", "--db", db, "--out", join(dir, "again")]);
    expect(again.status).toBe(0);
    expect(await readFile(join(dir, "again", "report.csv"), "utf8")).toBe(
      await readFile(join(out, "report.csv"), "utf8"),
    );
    const none = itera(["fleet", "report", "--db", db, "--job", "bench-nope"]);
    expect(none.status).toBe(1);
    expect(none.stderr).toMatch(/no finished fleet benchmark 'bench-nope'/);
    const csv = itera(["fleet", "history", "--db", db, "--csv", "--telemetry"]);
    expect(csv.stdout.split("\n")[0]).toBe(
      "fleet,device,bdSeq,seq,time,cpu_pct,temp_c,rss_mb,tok_s,mj_per_token,method,throttled,variant",
    );
    expect(csv.stdout.trim().split("\n").length).toBeGreaterThan(2);
    // The simulated devices run no A/B variant: their telemetry is grouped by release.
    expect(csv.stdout.split("\n").some((l) => /,release [^,]+$/.test(l))).toBe(true);
  });

  it("watches live state and telemetry as JSON lines", () => {
    const r = itera(["fleet", "watch", "--broker", url, "--fleet", "cli", "--duration", "2", "--json"]);
    expect(r.status).toBe(0);
    const events = r.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { type: string; device: string });
    expect(
      events
        .filter((e) => e.type === "birth")
        .map((e) => e.device)
        .sort(),
    ).toEqual(["sim-01-laptop-x64-4c", "sim-02-rpi4"]);
    // After the benchmark, telemetry carries the device's recent generation speed and energy.
    const telemetry = events.filter((e) => e.type === "telemetry") as unknown as Array<{
      m: { tok_s: number | null; method: string | null };
    }>;
    expect(telemetry.length).toBeGreaterThan(0);
    expect(
      telemetry.every((t) => t.m.tok_s !== null && t.m.tok_s > 0 && t.m.method === "ina219-simulated"),
    ).toBe(true);
  });

  it("refuses bad input with one clear error and a non-zero exit", () => {
    const cases: Array<[string[], RegExp]> = [
      [
        ["fleet", "bench", "--broker", url, "--fleet", "cli", "--model", "m", "--tests", "pp0"],
        /invalid benchmark parameter 'tests.0'/,
      ],
      [
        ["fleet", "bench", "--broker", "localhost:1883", "--fleet", "cli", "--model", "m"],
        /not a broker URL/,
      ],
      [["fleet", "bench", "--broker", url, "--fleet", "a/b", "--model", "m"], /invalid --fleet 'a\/b'/],
      [
        ["fleet", "bench", "--broker", url, "--fleet", "cli", "--model", "m", "--select", "color=red"],
        /invalid --select/,
      ],
      [
        ["fleet", "bench", "--broker", url, "--fleet", "nobody", "--model", "m", "--discover", "0.5"],
        /no online device in fleet 'nobody'/,
      ],
      [
        ["fleet", "simulate", "--broker", url, "--fleet", "cli", "--model", MODEL, "--meter", "psu"],
        /unknown simulated meter/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = itera([...args, ...(args[1] === "bench" ? ["--db", join(dir, "bad.db")] : [])]);
      expect(r.status, args.join(" ")).toBe(1);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).toMatch(/fix: /);
    }
    const agent = spawnSync(
      process.execPath,
      [AGENT, "agent", "--broker", url, "--model", MODEL, "--profile", "rpi4", "--meter", "psu"],
      {
        encoding: "utf8",
      },
    );
    expect(agent.status).toBe(1);
    expect(agent.stderr).toMatch(/unknown meter 'psu'/);
  });

  it("runs an agent from the device settings `itera flash` writes (etc/itera/agent.json), and stops cleanly", async () => {
    const config = join(dir, "agent.json");
    await writeFile(
      config,
      JSON.stringify({ schema: "itera.agent-config/v1", fleet: "cfg", broker: url, device_id: "pi-7" }),
    );
    const agent = spawn(
      process.execPath,
      [
        AGENT,
        "agent",
        "--config",
        config,
        "--model",
        MODEL,
        "--profile",
        "rpi4",
        "--meter",
        "tdp",
        "--state-dir",
        join(dir, "pi-7"),
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let err = "";
    agent.stderr!.on("data", (d: Buffer) => {
      err += d.toString();
    });
    await until(() => err.includes("agent pi-7: online"), "the configured agent online", 60_000);
    agent.kill("SIGTERM");
    expect(await exited(agent)).toBe(0);

    await writeFile(config, JSON.stringify({ schema: "itera.agent-config/v1", broker: "ftp://x" }));
    const bad = spawnSync(
      process.execPath,
      [AGENT, "agent", "--config", config, "--model", MODEL, "--profile", "rpi4"],
      {
        encoding: "utf8",
      },
    );
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/invalid agent config: field 'broker'/);
  });

  it("an agent process killed with SIGKILL mid-job shows as lost with its bdSeq, and its job ends TIMED_OUT", async () => {
    const victim = spawn(
      process.execPath,
      [
        AGENT,
        "agent",
        "--broker",
        url,
        "--fleet",
        "kill9",
        "--device",
        "k9",
        "--model",
        MODEL,
        "--profile",
        "rpi4",
      ].concat(["--meter", "tdp", "--state-dir", join(dir, "k9")]),
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let err = "";
    victim.stderr!.on("data", (d: Buffer) => {
      err += d.toString();
    });
    await until(() => err.includes("agent k9: online"), "k9 online", 60_000);
    const bdSeq = Number(/online \(bdSeq (\d+)/.exec(err)![1]);
    const store = new FleetStore(":memory:");
    const states: Array<{ state: string; bdSeq: number }> = [];
    const outcome = await runFleetBench({
      broker: { url },
      fleet: "kill9",
      devices: 1,
      // Long enough that the kill lands mid-job.
      params: {
        model: "itera-lite-micro",
        tests: ["tg16"],
        threads: [1],
        repetitions: 3,
        warmup: 0,
        min_duration_s: 20,
      },
      timeoutS: 4,
      store,
      onEvent: (e) => {
        if (e.type === "status" && e.status === "IN_PROGRESS" && victim.exitCode === null)
          victim.kill("SIGKILL");
      },
    });
    store.close();
    expect(await exited(victim)).toBe(null);
    expect(outcome.devices[0]!.status).toBe("TIMED_OUT");
    expect(outcome.devices[0]!.details).toMatch(/device lost/);
    const watcher = await mqtt.connectAsync(url, { protocolVersion: 4 });
    watcher.on("message", (_t, p) =>
      states.push(JSON.parse(p.toString()) as { state: string; bdSeq: number }),
    );
    await watcher.subscribeAsync("itera/v1/kill9/k9/state", { qos: 1 });
    await until(() => states.length > 0, "retained state");
    expect(states[0]).toMatchObject({ state: "lost", bdSeq });
    watcher.end(true);
  });

  it("stops every agent, meter simulator and the broker on SIGTERM", async () => {
    sim.kill("SIGTERM");
    expect(await exited(sim)).toBe(0);
    const left = spawnSync("pgrep", ["-f", join(dir, "agents")], { encoding: "utf8" }).stdout.trim();
    expect(left).toBe("");
    broker.kill("SIGTERM");
    expect(await exited(broker)).toBe(0);
  });
});
