/**
 * `itera fleet update` at scale (bench/fleet.ts --update): one coordinator process (the built CLI)
 * rolls a small signed v2 bundle out to N (default 50) simulated devices over a real Mosquitto, first
 * whole (`--bundle`), then as its model pack alone (`--model-pack`), to compare the bytes per device.
 *
 * The devices are in-process agents (the real Agent: birth/state, job lifecycle, outbox on SQLite)
 * with a light update executor: it asks for every chunk on `need`, checks each chunk's sha256 and the
 * whole payload's, and answers SUCCEEDED without installing or restarting. Why not the real
 * executor: it ends its process for the supervisor to start the new release, so 50 devices would be
 * 50 agent processes (about 60 MB and a model load each) restarting on 2 cores; that measures the
 * machine, not the coordinator. The bundle carries this agent's own version, so the coordinator's
 * health check (the birth names the new version) holds without a restart.
 *
 * Measured: the rollout's wall time (the coordinator process, from start to exit, and the run's own
 * start to finish), the bytes the coordinator published to each device (request + chunks, MQTT
 * payloads, counted by a subscriber), and the coordinator's peak RSS (VmHWM of its process).
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { readdir, readFile, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import mqtt from "mqtt";
import { Agent, type AgentOptions } from "../src/agent/agent.js";
import type { DocOf, JobExecutor } from "../src/agent/jobs/types.js";
import { chunkSchema, decode, PROTOCOL_VERSION, UPDATE_CHUNK_BYTES } from "../src/protocol/schemas.js";
import { VERSION } from "../src/version.js";
import { signingKeys } from "../test/fixtures/deploy/bundle.js";
import { makePartsBundle } from "../test/fixtures/deploy/parts-bundle.js";
import type { Mosquitto } from "../test/mqtt-helpers.js";

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** The device side of an update job, minus installing and restarting (see the header). */
function lightUpdateExecutor(device: string): JobExecutor<"update"> {
  let onChunk: ((raw: Buffer) => void) | undefined;
  return {
    type: "update",
    validate: () => undefined,
    onMessage: (_kind, raw) => onChunk?.(raw),
    async run(doc: DocOf<"update">, progress, signal, ctx) {
      const p = doc.params;
      const to = String((p.manifest as { version?: unknown }).version);
      const have = new Map<number, Buffer>();
      await new Promise<void>((done, fail) => {
        signal.addEventListener("abort", () => fail(signal.reason), { once: true });
        onChunk = (raw) => {
          const d = decode(chunkSchema, raw);
          if (!d.ok || d.value.jobId !== ctx.jobId || have.has(d.value.index)) return;
          const data = Buffer.from(d.value.data, "base64");
          if (sha(data) !== d.value.sha256) return;
          have.set(d.value.index, data);
          if (have.size === p.chunks) done();
        };
        void ctx.online().then(() =>
          ctx.publish("need", {
            v: PROTOCOL_VERSION,
            jobId: ctx.jobId,
            execNo: ctx.execNo,
            missing: [[0, p.chunks - 1]],
            ts: Date.now(),
          }),
        );
      });
      onChunk = undefined;
      const payload = Buffer.concat([...Array(p.chunks).keys()].map((i) => have.get(i)!));
      if (sha(payload) !== p.payload_sha256) throw new Error("the assembled payload's sha256 differs");
      progress(`received ${p.chunks}/${p.chunks} chunks`);
      return {
        status: "SUCCEEDED",
        results: [
          {
            device,
            from: VERSION,
            to,
            running: to,
            rolled_back: false,
            bytes: p.payload_bytes,
            chunks_refused: 0,
            reason: null,
          },
        ],
      };
    },
  };
}

/**
 * N in-process agents of one fleet (devices `<fleet>-000`, ...), each with its own state folder under
 * `dir` and the job executors `jobs` gives it, started and connected.
 */
export async function startSimulatedAgents(
  broker: Mosquitto,
  dir: string,
  fleet: string,
  n: number,
  telemetryIntervalMs: number,
  jobs: (device: string) => Promise<Pick<AgentOptions, "runner" | "executors">>,
): Promise<Agent[]> {
  const agents: Agent[] = [];
  for (let i = 0; i < n; i++) {
    const device = `${fleet}-${String(i).padStart(3, "0")}`;
    const agent = new Agent({
      broker: { url: broker.url },
      fleet,
      device,
      profile: "rpi4",
      models: [{ id: "itera-lite-micro", sha256: "0".repeat(64), quant: "fp32" }],
      stateDir: join(dir, device),
      telemetryIntervalMs,
      ...(await jobs(device)),
      reconnectPeriodMs: 1000,
      log: () => {},
    });
    agent.start();
    agents.push(agent);
  }
  await Promise.all(agents.map((a) => a.connected));
  return agents;
}

/** Sum of the sizes of the files under `dir`. */
async function folderBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) total += (await stat(join(e.parentPath, e.name))).size;
  }
  return total;
}

export interface UpdateBenchResult {
  rows: Array<[string, string | number]>;
  note: string;
}

/** One `itera fleet update` (the built CLI) to the fleet `upd`: its outcome, wall time, peak RSS and what each device was sent. */
async function rollout(
  broker: Mosquitto,
  dir: string,
  how: "--bundle" | "--model-pack",
  bundle: string,
): Promise<{
  code: number | null;
  wallS: number;
  hwmKb: number;
  outcome: {
    result: string;
    startedMs: number;
    finishedMs: number;
    devices: Array<{ status: string; bytes: number }>;
    stats: { payloadBytes: number; chunks: number; chunksSent: number };
  };
  meanBytes: number;
  meanMessages: number;
}> {
  // What the coordinator publishes to each device (job request + chunks), counted at the broker.
  const sent = new Map<string, { bytes: number; messages: number }>();
  const spy = await mqtt.connectAsync(broker.url);
  spy.on("message", (topic, payload) => {
    const device = topic.split("/")[3]!;
    const s = sent.get(device) ?? { bytes: 0, messages: 0 };
    s.bytes += payload.length;
    s.messages++;
    sent.set(device, s);
  });
  await spy.subscribeAsync(["itera/v1/upd/+/jobs/+/request", "itera/v1/upd/+/jobs/+/chunk"], { qos: 1 });
  const t0 = performance.now();
  const child = spawn(
    process.execPath,
    [
      resolve("dist/cli/itera.js"),
      "fleet",
      "update",
      "--broker",
      broker.url,
      "--fleet",
      "upd",
      how,
      bundle,
      "--canary",
      "10%",
      "--timeout",
      "300",
      "--discover",
      "1",
      "--db",
      join(dir, "update.db"),
      "--json",
    ],
    { stdio: ["ignore", "pipe", "ignore"] },
  );
  let stdout = "";
  child.stdout!.on("data", (d: Buffer) => {
    stdout += d.toString();
  });
  // VmHWM is the process's peak RSS so far: the last reading before it exits is its peak.
  let hwmKb = 0;
  const poll = setInterval(() => {
    readFile(`/proc/${child.pid}/status`, "utf8")
      .then((s) => {
        hwmKb = Math.max(hwmKb, Number(/VmHWM:\s+(\d+) kB/.exec(s)?.[1] ?? 0));
      })
      .catch(() => {});
  }, 20);
  const code = await new Promise<number | null>((r) => child.once("exit", r));
  clearInterval(poll);
  const wallS = (performance.now() - t0) / 1000;
  await new Promise((r) => setTimeout(r, 500));
  spy.end(true);
  const per = [...sent.values()];
  return {
    code,
    wallS,
    hwmKb,
    outcome: JSON.parse(stdout),
    meanBytes: per.reduce((a, s) => a + s.bytes, 0) / Math.max(1, per.length),
    meanMessages: per.reduce((a, s) => a + s.messages, 0) / Math.max(1, per.length),
  };
}

export async function benchFleetUpdate(
  broker: Mosquitto,
  dir: string,
  devices: number,
  log: (s: string) => void,
): Promise<UpdateBenchResult> {
  const keys = signingKeys();
  // A v2 bundle: a 1 MiB runtime stand-in (a real one is 116 MB: see the last rows) and the real
  // model pack of models/itera-lite-micro; sent whole (--bundle), then without its runtime (--model-pack).
  const bundle = await makePartsBundle(join(dir, "bundle"), {
    version: VERSION,
    model: "",
    modelDir: resolve("models/itera-lite-micro"),
    signWith: keys.privatePem,
    runtimePad: 1024 * 1024,
  });
  const agents = await startSimulatedAgents(broker, dir, "upd", devices, 60_000, async (device) => ({
    executors: [lightUpdateExecutor(device)],
  }));
  await Promise.all(agents.map((a) => a.connected));
  log(`${devices} update devices online`);
  const whole = await rollout(broker, dir, "--bundle", bundle);
  const pack = await rollout(broker, dir, "--model-pack", bundle);
  for (const a of agents) await a.stop();
  const ok = (r: typeof whole) => r.outcome.devices.filter((d) => d.status === "SUCCEEDED").length;
  for (const [how, r] of [
    ["--bundle", whole],
    ["--model-pack", pack],
  ] as const) {
    log(`update ${how}: exit ${r.code}, ${ok(r)}/${devices} updated in ${r.wallS.toFixed(1)} s`);
  }
  const overhead = whole.meanBytes / whole.outcome.stats.payloadBytes;
  const demoBundle = resolve("demo-output/bundles/itera-lite-micro-0.1.0-laptop-x64-4c");
  const bundleBytes = await folderBytes(demoBundle).catch(() => null);
  const mb = (b: number) => `${(b / 2 ** 20).toFixed(2)} MiB`;
  const payload = (r: typeof whole) =>
    `${mb(r.outcome.stats.payloadBytes)} in ${r.outcome.stats.chunks} chunks of ${UPDATE_CHUNK_BYTES / 1024} KiB`;
  const perDevice = (r: typeof whole) => `${Math.round(r.meanBytes)} (${mb(r.meanBytes)})`;
  return {
    rows: [
      ["simulated devices (in-process agents, light update executor)", devices],
      [
        "updated (SUCCEEDED, health check passed): --bundle / --model-pack",
        `${ok(whole)} (${whole.outcome.result}) / ${ok(pack)} (${pack.outcome.result})`,
      ],
      ["--bundle payload (1 MiB runtime stand-in + the micro model pack + release files)", payload(whole)],
      ["--model-pack payload (the micro model pack + release files)", payload(pack)],
      [
        "rollout wall time: coordinator process start to exit, --bundle / --model-pack (s)",
        `${whole.wallS.toFixed(2)} / ${pack.wallS.toFixed(2)}`,
      ],
      [
        "rollout: the run's own start to finish, incl. 1 s discovery, --bundle / --model-pack (s)",
        `${((whole.outcome.finishedMs - whole.outcome.startedMs) / 1000).toFixed(2)} / ${((pack.outcome.finishedMs - pack.outcome.startedMs) / 1000).toFixed(2)}`,
      ],
      [
        "waves (canary 10 %, then waves of its size)",
        Math.ceil(devices / Math.max(1, Math.ceil(devices * 0.1))),
      ],
      ["bytes published to each device, --bundle (request + chunks, MQTT payloads; mean)", perDevice(whole)],
      [
        "bytes published to each device, --model-pack (request + chunks, MQTT payloads; mean)",
        perDevice(pack),
      ],
      [
        "payload bytes each device reported receiving, --model-pack (its result's `bytes`; mean)",
        Math.round(
          pack.outcome.devices.reduce((a, d) => a + d.bytes, 0) / Math.max(1, pack.outcome.devices.length),
        ),
      ],
      [
        "messages published to each device (mean), --bundle / --model-pack",
        `${whole.meanMessages.toFixed(1)} / ${pack.meanMessages.toFixed(1)}`,
      ],
      ["wire bytes / payload bytes (base64 + JSON framing), --bundle", overhead.toFixed(3)],
      [
        "coordinator peak RSS (VmHWM, MB), --bundle / --model-pack",
        `${(whole.hwmKb / 1024).toFixed(1)} / ${(pack.hwmKb / 1024).toFixed(1)}`,
      ],
      [
        "a whole real bundle per device (demo's itera-lite-micro laptop-x64 v1 bundle × that ratio)",
        bundleBytes === null
          ? "n/a (run `make demo` first)"
          : `${mb(bundleBytes * overhead)} (${mb(bundleBytes)} of files)`,
      ],
    ],
    note:
      "The devices share one process with the broker's other clients; the coordinator is its own process (the built CLI), so its peak RSS is its alone and includes holding the payload. " +
      "The --model-pack rows are measured transfers of the real itera-lite-micro model pack; the runtime in the --bundle rollout is a 1 MiB stand-in, so the last row (a real 122.5 MiB bundle) is its size times the measured wire ratio, not a transfer.",
  };
}
