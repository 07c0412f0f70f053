/**
 * Test helpers for the MQTT suites: a real Mosquitto on a random free port (temp config, optional
 * persistence, password file and ACL), the embedded aedes broker, and a benchmark runner that does
 * real, timed work in-process (the agent's job runner interface, independent of any model).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, readdirSync, writeFileSync } from "node:fs";
import { chmod, writeFile } from "node:fs/promises";
import { createServer, Socket } from "node:net";
import { join } from "node:path";
import type { AgentOptions } from "../src/agent/agent.js";
import type { BenchmarkRunner } from "../src/agent/runner.js";
import type { BenchResult } from "../src/protocol/schemas.js";
import { tempDir } from "./temp-dir.js";

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = new Socket();
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
      s.connect(port, "127.0.0.1");
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`port ${port} did not open`);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function until(cond: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await sleep(25);
  }
}

export interface MosquittoOptions {
  /** user -> password; turns off anonymous access and turns on the ACL. */
  users?: Record<string, string>;
  /** Extra ACL lines (the device pattern `itera/v1/+/%u/#` is always there with users). */
  acl?: string[];
  /** TLS only, with client certificates required; the certificate's CN is the user name (ACL applies). */
  tls?: { clients: string[] };
}

/** A throw-away CA, a server certificate for 127.0.0.1 and one client certificate per name (CN). */
export function makeCertificates(dir: string, clients: string[]): void {
  const ssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
  const key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  ssl(
    "req",
    "-x509",
    ...key,
    "-keyout",
    "ca.key",
    "-out",
    "ca.crt",
    "-days",
    "2",
    "-subj",
    "/CN=itera-test-ca",
  );
  const sign = (name: string, cn: string, ext?: string) => {
    ssl("req", ...key, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${cn}`);
    const extArgs = ext ? ["-extfile", ext] : [];
    ssl(
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      "ca.crt",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      `${name}.crt`,
      "-days",
      "2",
      ...extArgs,
    );
  };
  writeFileSync(join(dir, "san.cnf"), "subjectAltName=IP:127.0.0.1\n");
  sign("server", "127.0.0.1", "san.cnf");
  for (const c of clients) sign(`client-${c}`, c);
  // Mosquitto started as root reads them as the `mosquitto` user.
  for (const f of readdirSync(dir)) chmodSync(join(dir, f), 0o644);
}

/** A real Mosquitto broker with persistence in a temp dir; stop() + start() keeps its sessions. */
export class Mosquitto {
  private proc: ChildProcess | undefined;
  port = 0;
  dir = "";

  tls = false;

  get url(): string {
    return `${this.tls ? "mqtts" : "mqtt"}://127.0.0.1:${this.port}`;
  }

  /** TLS client files for one of the certificate names given at creation. */
  clientTls(name: string): { ca: string; cert: string; key: string } {
    return {
      ca: join(this.dir, "ca.crt"),
      cert: join(this.dir, `client-${name}.crt`),
      key: join(this.dir, `client-${name}.key`),
    };
  }

  static async create(opts: MosquittoOptions = {}): Promise<Mosquitto> {
    const m = new Mosquitto();
    m.dir = await tempDir("itera-mosquitto-");
    // Mosquitto started as root drops to the `mosquitto` user, which must be able to save its database.
    await chmod(m.dir, 0o777);
    m.port = await freePort();
    m.tls = opts.tls !== undefined;
    if (opts.tls) makeCertificates(m.dir, opts.tls.clients);
    const conf = [
      `listener ${m.port} 127.0.0.1`,
      ...(opts.tls
        ? [
            `cafile ${join(m.dir, "ca.crt")}`,
            `certfile ${join(m.dir, "server.crt")}`,
            `keyfile ${join(m.dir, "server.key")}`,
            "require_certificate true",
            "use_identity_as_username true",
          ]
        : []),
      "persistence true",
      `persistence_location ${m.dir}/`,
      "max_queued_messages 100000",
    ];
    if (opts.tls) {
      const acl = join(m.dir, "acl");
      await writeFile(acl, [...(opts.acl ?? []), "pattern readwrite itera/v1/+/%u/#", ""].join("\n"));
      conf.push("allow_anonymous false", `acl_file ${acl}`);
    } else if (opts.users) {
      const pw = join(m.dir, "passwd");
      await writeFile(pw, "", { mode: 0o644 });
      for (const [u, p] of Object.entries(opts.users)) execFileSync("mosquitto_passwd", ["-b", pw, u, p]);
      const acl = join(m.dir, "acl");
      await writeFile(acl, [...(opts.acl ?? []), "pattern readwrite itera/v1/+/%u/#", ""].join("\n"));
      conf.push("allow_anonymous false", `password_file ${pw}`, `acl_file ${acl}`);
    } else {
      conf.push("allow_anonymous true");
    }
    await writeFile(join(m.dir, "mosquitto.conf"), `${conf.join("\n")}\n`);
    await m.start();
    return m;
  }

  async start(): Promise<void> {
    // A second start would spawn a broker that fails on the port and leak the running one.
    if (this.proc && this.proc.exitCode === null) throw new Error("Mosquitto is already running");
    const proc = spawn("mosquitto", ["-c", join(this.dir, "mosquitto.conf")], { stdio: "ignore" });
    this.proc = proc;
    // Never outlive the test process, even when a suite fails before its afterAll.
    process.once("exit", () => proc.kill("SIGKILL"));
    await waitForPort(this.port);
  }

  /** SIGTERM: Mosquitto saves sessions, retained and queued messages to its persistence file. */
  async stop(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      p.once("exit", () => resolve());
      p.kill("SIGTERM");
    });
    this.proc = undefined;
  }
}

/**
 * A benchmark runner that really runs and times work: each "token" is a fixed small float
 * matrix-vector product, so tokens/s and latency are measured, not made up. It stands in for the
 * model runtime, which the protocol tests do not need.
 */
export function cpuRunner(
  device: string,
  profile: string,
  opts: { hold?: Promise<void> } = {},
): BenchmarkRunner & {
  calls: number;
} {
  const n = 64;
  const w = new Float32Array(n * n).map((_, i) => ((i * 7919) % 13) / 13);
  const step = (x: Float32Array) => {
    const y = new Float32Array(n);
    for (let r = 0; r < n; r++) {
      let s = 0;
      for (let c = 0; c < n; c++) s += w[r * n + c]! * x[c]!;
      y[r] = Math.tanh(s);
    }
    return y;
  };
  const run = async (
    params: Parameters<BenchmarkRunner>[0],
    onProgress: Parameters<BenchmarkRunner>[1],
    signal: AbortSignal,
  ) => {
    run.calls++;
    if (opts.hold) {
      await Promise.race([
        opts.hold,
        new Promise((_, reject) =>
          signal.addEventListener("abort", () => reject(signal.reason), { once: true }),
        ),
      ]);
    }
    const out: BenchResult[] = [];
    // A job that leaves the threads to the device: this one runs 1.
    const threadList = params.threads ?? [1];
    const total = params.tests.length * threadList.length;
    for (const test of params.tests) {
      const tokens = Number.parseInt(test.slice(2), 10);
      for (const threads of threadList) {
        const rates: number[] = [];
        const lat: number[] = [];
        for (let rep = 0; rep < params.repetitions; rep++) {
          signal.throwIfAborted();
          let x = new Float32Array(n).fill(0.5);
          const t0 = performance.now();
          for (let t = 0; t < tokens; t++) {
            const s = performance.now();
            x = step(x);
            lat.push(performance.now() - s);
          }
          rates.push((tokens * 1000) / Math.max(1e-6, performance.now() - t0));
          await new Promise((r) => setImmediate(r));
        }
        const mean = rates.reduce((a, b) => a + b, 0) / rates.length;
        const stdev = Math.sqrt(rates.reduce((a, b) => a + (b - mean) ** 2, 0) / rates.length);
        lat.sort((a, b) => a - b);
        out.push({
          model: params.model,
          quant: "fp32",
          profile,
          device,
          threads,
          test,
          repetitions: params.repetitions,
          tokens_per_s: { mean, stdev, samples: rates },
          ttft_ms: lat[0] ?? null,
          latency_ms: {
            p50: lat[Math.floor(lat.length * 0.5)] ?? 0,
            p95: lat[Math.floor(lat.length * 0.95)] ?? 0,
          },
          energy: null,
          cpu_pct: null,
          rss_mb: process.memoryUsage().rss / 2 ** 20,
          temp_c_max: null,
          throttled: null,
          agent_version: "test",
          runtime: "js-matvec",
          timestamp: new Date().toISOString(),
        });
        onProgress(out.length, total, test);
      }
    }
    return out;
  };
  run.calls = 0;
  return run;
}

export const MODEL_SHA = createHash("sha256").update("test-model").digest("hex");

/** Agent options for tests: short reconnect period, quiet log, the cpuRunner, one model. */
export function testAgentOptions(
  url: string,
  fleet: string,
  device: string,
  profile: string,
  stateDir: string,
  extra: Partial<AgentOptions> = {},
): AgentOptions {
  return {
    broker: { url },
    fleet,
    device,
    profile,
    models: [{ id: "tiny", sha256: MODEL_SHA, quant: "int8" }],
    stateDir,
    telemetryIntervalMs: 200,
    runner: cpuRunner(device, profile),
    reconnectPeriodMs: 200,
    log: () => {},
    ...extra,
  };
}

/** A gate a runner waits on: jobs stay IN_PROGRESS until release(). */
export function gate(): { hold: Promise<void>; release: () => void } {
  let release!: () => void;
  const hold = new Promise<void>((r) => {
    release = r;
  });
  return { hold, release };
}
