import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, mkdir, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { IteraError } from "../errors.js";
import { loadAllProfiles } from "../profile/load.js";
import type { DeviceProfile } from "../profile/schema.js";
import type { BrokerOptions } from "../protocol/connect.js";

const here = dirname(fileURLToPath(import.meta.url));
/** The package root: src/fleet and dist/fleet are both two levels below it. */
const root = resolve(here, "..", "..");

/** The built agent entry point (dist/cli/itera-agent.js). */
function agentEntry(): string {
  const path = join(root, "dist", "cli", "itera-agent.js");
  if (!existsSync(path)) {
    throw new IteraError("the agent is not built", {
      where: path,
      fix: "run `npm run build` (or `make build`)",
    });
  }
  return path;
}

export interface SimulateOptions {
  broker: BrokerOptions;
  fleet: string;
  devices: number;
  modelDir: string;
  stateDir: string;
  telemetryIntervalS: number;
  /** "ina219": each agent reads a simulated INA219 (tools/ina219-sim behind a socat pty); "tdp": the profile's estimate. */
  meter: "ina219" | "tdp";
  replay?: string;
  /** Only these profiles (default: every shipped profile, in turn). */
  profiles?: string[];
  log?: (line: string) => void;
}

export interface SimulatedDevice {
  device: string;
  profile: string;
  meter: string;
  pid: number | undefined;
}

export interface Simulation {
  devices: SimulatedDevice[];
  /** Resolves when every agent process has exited. */
  exited: Promise<void>;
  stop(): Promise<void>;
}

function waitExit(p: ChildProcess): Promise<void> {
  return p.exitCode !== null || p.signalCode !== null
    ? Promise.resolve()
    : new Promise((r) => p.once("exit", () => r()));
}

/**
 * Start a simulated INA219 bridge for one device: the simulator (tools/ina219-sim) writing the
 * register stream of a constant load at the profile's TDP into a real pseudo-terminal made by socat.
 */
async function startIna219(
  dir: string,
  profile: DeviceProfile,
): Promise<{ port: string; proc: ChildProcess }> {
  const sim = join(root, "tools", "ina219-sim", "ina219_sim.py");
  const port = join(dir, "ina219.tty");
  // socat's EXEC address treats ',' and ':' specially: run the simulator through a script.
  const script = join(dir, "ina219.sh");
  await writeFile(
    script,
    `#!/bin/sh\nexec /usr/bin/python3 '${sim}' --format raw --trace 0:${profile.power.tdp_w}\n`,
  );
  await chmod(script, 0o755);
  const proc = spawn("socat", [`PTY,link=${port},raw,echo=0`, `EXEC:${script}`], {
    stdio: ["ignore", "ignore", "inherit"],
  });
  for (let i = 0; i < 500 && !existsSync(port); i++) await new Promise((r) => setTimeout(r, 10));
  if (!existsSync(port)) {
    proc.kill("SIGTERM");
    throw new IteraError("socat did not create the simulated INA219 port", {
      where: port,
      fix: "install socat (apt-get install socat) or use --meter tdp",
    });
  }
  return { port, proc };
}

/**
 * Start N local agents (`itera-agent agent`), each with a different device profile (the shipped
 * profiles in turn) and its own state directory, all benchmarking the same model folder.
 */
export async function startSimulation(o: SimulateOptions): Promise<Simulation> {
  const entry = agentEntry();
  const all = await loadAllProfiles();
  const profiles = o.profiles ? all.filter((p) => o.profiles!.includes(p.name)) : all;
  if (profiles.length === 0) throw new IteraError("no matching device profile", { where: "--profiles" });
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const children: ChildProcess[] = [];
  const helpers: ChildProcess[] = [];
  const devices: SimulatedDevice[] = [];
  try {
    for (let i = 0; i < o.devices; i++) {
      const profile = profiles[i % profiles.length]!;
      const device = `sim-${String(i + 1).padStart(2, "0")}-${profile.name}`;
      const dir = join(o.stateDir, device);
      await mkdir(dir, { recursive: true });
      const meterArgs: string[] = [];
      if (!o.replay) {
        if (o.meter === "ina219") {
          const bridge = await startIna219(dir, profile);
          helpers.push(bridge.proc);
          // Told, not guessed: the agent labels these figures ina219-simulated.
          meterArgs.push("--meter", "ina219", "--port", bridge.port, "--simulated-meter");
        } else meterArgs.push("--meter", "tdp");
      }
      const args = [
        entry,
        "agent",
        "--broker",
        o.broker.url,
        "--fleet",
        o.fleet,
        "--device",
        device,
        "--model",
        o.modelDir,
        "--profile",
        profile.name,
        "--state-dir",
        dir,
        "--telemetry-interval",
        String(o.telemetryIntervalS),
        ...meterArgs,
        ...(o.replay ? ["--replay", o.replay] : []),
        ...(o.broker.ca ? ["--ca", o.broker.ca] : []),
        ...(o.broker.cert ? ["--cert", o.broker.cert] : []),
        ...(o.broker.key ? ["--key", o.broker.key] : []),
      ];
      const env = {
        ...process.env,
        ...(o.broker.username ? { ITERA_MQTT_USERNAME: o.broker.username } : {}),
        ...(o.broker.password ? { ITERA_MQTT_PASSWORD: o.broker.password } : {}),
      };
      const child = spawn(process.execPath, args, { stdio: ["ignore", "inherit", "inherit"], env });
      children.push(child);
      const meter = o.replay ? "replay" : o.meter === "ina219" ? "ina219-simulated" : o.meter;
      devices.push({ device, profile: profile.name, meter, pid: child.pid });
      log(`started ${device} (profile ${profile.name}, meter ${meter}, pid ${child.pid})`);
    }
  } catch (e) {
    for (const c of [...children, ...helpers]) c.kill("SIGTERM");
    throw e;
  }
  const exited = Promise.all(children.map(waitExit)).then(() => {});
  return {
    devices,
    exited,
    stop: async () => {
      for (const c of children) if (c.exitCode === null) c.kill("SIGTERM");
      await exited;
      for (const h of helpers) if (h.exitCode === null) h.kill("SIGTERM");
      await Promise.all(helpers.map(waitExit));
    },
  };
}
