import { readFile } from "node:fs/promises";
import { homedir, hostname } from "node:os";
import { join } from "node:path";
import type { Command } from "commander";
import { Agent } from "../../agent/agent.js";
import { AgentStore } from "../../agent/store.js";
import { IteraError } from "../../errors.js";
import { describeModel, modelBenchRunner } from "../../agent/bench-runner.js";
import { RESTART_EXIT_CODE } from "../../agent/jobs/types.js";
import { installedVariant, settleHealthyUpdate, updateExecutor } from "../../agent/jobs/update.js";
import { tuneExecutor } from "../../agent/jobs/tune.js";
import type { AnyExecutor } from "../../agent/jobs/types.js";
import { type BenchmarkRunner, replayRunner } from "../../agent/runner.js";
import { addModelOptions, agentContext, type ModelOptions } from "../../agent-host/context.js";
import { runningRelease } from "../../agent-host/release.js";
import { type AgentConfig, agentConfigSchema } from "../../deploy/agent-config.js";
import { type MeterOptions, meterChoices, openMeter } from "../../power/open.js";
import type { Meter } from "../../power/meter.js";
import {
  addBrokerOptions,
  type BrokerCliOptions,
  brokerOptions,
  checkId,
  positive,
} from "../../protocol/options.js";
import { action } from "../run.js";

interface AgentCliOptions extends BrokerCliOptions, ModelOptions {
  config?: string;
  fleet?: string;
  device?: string;
  stateDir?: string;
  telemetryInterval: string;
  meter: string;
  port?: string;
  baud?: string;
  simulatedMeter?: boolean;
  replay?: string;
  installRoot: string;
  trustedKey?: string;
}

/** Longest --telemetry-interval: a day (Node's timers overflow past about 24.8 days anyway). */
const MAX_TELEMETRY_INTERVAL_S = 86_400;

/** systemd's StateDirectory= (STATE_DIRECTORY), else the XDG state folder. */
function defaultStateDir(): string {
  if (process.env.STATE_DIRECTORY) return process.env.STATE_DIRECTORY.split(":")[0]!;
  const base = process.env.XDG_STATE_HOME || join(homedir(), ".local", "state");
  return join(base, "itera-agent");
}

/** The device's settings written by `itera flash` (etc/itera/agent.json): fleet, broker, device id. */
async function readAgentConfig(path: string): Promise<AgentConfig> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(path, "utf8"));
  } catch (e) {
    throw new IteraError(`cannot read the agent config: ${(e as Error).message}`, {
      where: path,
      fix: "write it with `itera flash --fleet F --broker URL --device-id ID`, or pass --broker/--fleet/--device",
    });
  }
  const r = agentConfigSchema.safeParse(json);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new IteraError(`invalid agent config: field '${i.path.join(".") || "(top level)"}': ${i.message}`, {
      where: path,
      fix: "correct the field (schema itera.agent-config/v1: fleet, broker, device_id)",
    });
  }
  return r.data;
}

/**
 * `itera-agent agent`: connect to the fleet's broker, announce the device, send telemetry and run
 * benchmark jobs (DESIGN.md §8) until SIGINT/SIGTERM, which ends with a clean `offline` state.
 */
export function registerAgent(program: Command): void {
  addBrokerOptions(
    addModelOptions(
      program
        .command("agent")
        .description("run as a fleet agent over MQTT: state, telemetry and benchmark jobs")
        .option(
          "--config <file>",
          "device settings written by `itera flash` (fleet, broker, device_id); options override it",
        )
        .option(
          "--fleet <name>",
          "fleet name (topic level itera/v1/<fleet>/...; default: the config's, else 'default')",
        )
        .option("--device <id>", "device id, also the MQTT client id (default: the host name)")
        .option(
          "--state-dir <dir>",
          `outbox, counters and jobs (default $STATE_DIRECTORY, else ${defaultStateDir()})`,
        )
        .option("--telemetry-interval <s>", "seconds between telemetry messages", "10")
        .option("--meter <name>", `power meter for benchmark jobs: ${meterChoices.join(", ")}`, "auto")
        .option("--port <tty>", "serial port of the INA219 bridge")
        .option("--baud <n>", "baud rate of the INA219 bridge")
        .option(
          "--simulated-meter",
          "the INA219 bridge on --port is a simulator (tools/ina219-sim): its figures say ina219-simulated",
        )
        .option(
          "--install-root <dir>",
          "where update jobs install releases (opt/itera/releases, current, previous under it)",
          "/",
        )
        .option(
          "--trusted-key <file>",
          "Ed25519 public key (.pub) an update's bundle must be signed by (without it: any valid signature)",
        )
        .option(
          "--replay <file>",
          "load tests only: answer jobs with results recorded earlier (marked replayed_from)",
        ),
    ),
  ).action(
    action(async (opts: AgentCliOptions) => {
      // Listened for from the start: a stop during start-up (model loading) is as clean as later.
      let signalled = false;
      const stopped = new Promise<void>((resolve) => {
        const stop = () => {
          signalled = true;
          resolve();
        };
        process.once("SIGINT", stop);
        process.once("SIGTERM", stop);
      });
      // Every option is checked before anything is opened, so a bad one exits at once (systemd restarts).
      const telemetryS = positive(opts.telemetryInterval, "--telemetry-interval");
      // Below 0.1 s it floods the outbox; Node's timers overflow past 2^31 ms and fire every millisecond.
      if (telemetryS < 0.1 || telemetryS > MAX_TELEMETRY_INTERVAL_S) {
        throw new IteraError(`invalid --telemetry-interval '${opts.telemetryInterval}': out of range`, {
          where: "--telemetry-interval",
          fix: `pass a number of seconds from 0.1 to ${MAX_TELEMETRY_INTERVAL_S}`,
        });
      }
      const baud = opts.baud ? positive(opts.baud, "--baud", true) : undefined;
      if (!(meterChoices as readonly string[]).includes(opts.meter)) {
        throw new IteraError(`unknown meter '${opts.meter}'`, {
          where: "--meter",
          fix: `use one of ${meterChoices.join(", ")}`,
        });
      }
      const config = opts.config ? await readAgentConfig(opts.config) : undefined;
      const broker = brokerOptions({ ...opts, broker: opts.broker ?? config?.broker });
      const device = checkId(opts.device ?? config?.device_id ?? hostname().split(".")[0]!, "--device");
      const fleet = checkId(opts.fleet ?? config?.fleet ?? "default", "--fleet");
      // The store before the model and meter: a bad --state-dir fails in milliseconds.
      const stateDir = opts.stateDir ?? defaultStateDir();
      const trustedKey = opts.trustedKey
        ? await (await import("../../package/verify.js")).readTrustedKeyFile(opts.trustedKey)
        : undefined;
      const store = new AgentStore(stateDir);
      let meter: Meter | null = null;
      let agent: Agent | undefined;
      try {
        const ctx = await agentContext(opts);
        const model = await describeModel(ctx.modelDir);
        let runner: BenchmarkRunner;
        // Tune jobs measure the real model: not in a replaying load-test agent.
        const measuring: AnyExecutor[] = [];
        if (opts.replay) {
          runner = await replayRunner(opts.replay, device);
        } else {
          const mo: MeterOptions = {
            meter: opts.meter as MeterOptions["meter"],
            profile: ctx.profile,
            ...(opts.port ? { port: opts.port } : {}),
            ...(baud ? { baud } : {}),
            ...(opts.simulatedMeter ? { simulated: true } : {}),
            log: (m) => process.stderr.write(`${m}\n`),
          };
          meter = (await openMeter(mo)).meter;
          const onDevice = { modelDir: ctx.modelDir, profile: ctx.profile, device, meter, stateDir };
          const log = (line: string) => process.stderr.write(`${line}\n`);
          runner = await modelBenchRunner({ ...onDevice, log });
          measuring.push(tuneExecutor({ ...onDevice, models: [model], log }));
        }
        agent = new Agent({
          broker,
          fleet,
          device,
          profile: ctx.profile.name,
          models: [model],
          // The A/B variant its release was installed as (itera fleet update --variant).
          ...((v) => (v ? { variant: v } : {}))(installedVariant(opts.installRoot)),
          release: runningRelease(),
          stateDir,
          store,
          telemetryIntervalMs: telemetryS * 1000,
          runner,
          executors: [
            updateExecutor({ installRoot: opts.installRoot, device, ...(trustedKey ? { trustedKey } : {}) }),
            ...measuring,
          ],
        });
        if (signalled) return;
        agent.start();
        void agent.connected.then(() => settleHealthyUpdate(opts.installRoot)).catch(() => {});
        const restart = await Promise.race([
          stopped.then(() => undefined),
          agent.fatal,
          agent.restartRequested,
        ]);
        // An update switched `current`: exit with the code its supervisor restarts on (docs/fleet.md).
        if (restart !== undefined) process.exitCode = RESTART_EXIT_CODE;
      } finally {
        // Whatever failed, nothing may keep the process alive (a meter's poller, the store).
        if (agent) await agent.stop();
        else store.close();
        await meter?.stop();
      }
    }),
  );
}
