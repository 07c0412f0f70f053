import { readFile } from "node:fs/promises";
import { join, posix } from "node:path";
import { IteraError } from "../errors.js";
import { type AgentConfig, agentConfigSchema } from "./agent-config.js";
import type { VerifiedBundle } from "./bundle.js";
import { UNIT_NAME } from "./layout.js";

/** Where `itera flash --broker/--fleet/--device-id` writes the agent's config, as seen on the device. */
const FLASH_CONFIG_PATH = "/etc/itera/agent.json";

/**
 * The MQTT agent exits with "no MQTT broker given" unless its ExecStart carries --broker or the config
 * it reads has one; a flash that would install such a unit is refused before anything is copied.
 */
export interface BrokerNeed {
  /** The config file the unit's agent reads (`--config PATH`, a path on the device), or null: none. */
  configPath: string | null;
}

/** What the unit's ExecStart needs from the device: null when it does not run the agent, or gives --broker itself. */
export function brokerNeedOfUnit(unit: string): BrokerNeed | null {
  const line = unit
    .split("\n")
    .map((l) => l.trim())
    .find((l) => /^ExecStart\s*=/.test(l));
  if (!line) return null;
  // systemd's prefixes (-, @, :, +, !) come before the executable; quotes around words are dropped.
  const words = line
    .replace(/^ExecStart\s*=\s*[-@:+!]*/, "")
    .split(/\s+/)
    .filter(Boolean)
    .map((w) => w.replace(/^(["'])(.*)\1$/, "$2"));
  const args = words.slice(1);
  if (args[0] !== "agent") return null;
  if (args.some((a) => a === "--broker" || a.startsWith("--broker="))) return null;
  const i = args.findIndex((a) => a === "--config" || a.startsWith("--config="));
  if (i < 0) return { configPath: null };
  const path = args[i]!.startsWith("--config=") ? args[i]!.slice("--config=".length) : args[i + 1];
  return { configPath: path && posix.isAbsolute(path) ? posix.normalize(path) : null };
}

/** The bundle's unit file (its hash was checked with the bundle) read for what its agent needs. */
export async function brokerNeedOfBundle(bundle: VerifiedBundle): Promise<BrokerNeed | null> {
  return brokerNeedOfUnit(await readFile(join(bundle.dir, UNIT_NAME), "utf8"));
}

/** True when the config text is a valid agent config (the agent's own zod schema) with a broker. */
export function configHasBroker(text: string | null): boolean {
  if (text === null) return false;
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return false;
  }
  const r = agentConfigSchema.safeParse(json);
  return r.success && r.data.broker !== undefined;
}

/** How the agent will get its broker, or undefined when it will not (then the flash must be refused). */
export function brokerSource(
  need: BrokerNeed | null,
  given: AgentConfig | undefined,
  deviceConfig: string | null,
): string | undefined {
  if (need === null) return "not needed: the unit does not run the MQTT agent without --broker";
  if (need.configPath === FLASH_CONFIG_PATH && given) {
    // The flash writes this very file, replacing what the device has.
    return given.broker !== undefined ? "--broker (written to the agent's config)" : undefined;
  }
  if (need.configPath !== null && configHasBroker(deviceConfig)) return `the device's ${need.configPath}`;
  return undefined;
}

/** Refuse a flash whose agent would exit with "no MQTT broker given"; says how it gets one otherwise. */
export function checkBroker(
  need: BrokerNeed | null,
  given: AgentConfig | undefined,
  deviceConfig: string | null,
  /** Names the device and a path on it for the error, e.g. "root@pi:/etc/itera/agent.json". */
  locate: (devicePath?: string) => string,
): string {
  const source = brokerSource(need, given, deviceConfig);
  if (source !== undefined) return source;
  const path = need?.configPath;
  throw new IteraError(
    `the bundle's service runs the MQTT agent, which needs a broker, but ${
      path ? `${path} on the device has none` : "its ExecStart gives neither --broker nor --config"
    }${given && path === FLASH_CONFIG_PATH ? " and no --broker was given" : ""}; nothing was copied`,
    {
      where: locate(path ?? undefined),
      fix: !path
        ? `rebuild the bundle with \`itera build --service-args "agent --config ${FLASH_CONFIG_PATH}"\`, then flash it with --broker URL`
        : path === FLASH_CONFIG_PATH
          ? `pass --broker mqtt://HOST:1883 (and --fleet NAME --device-id ID), or write ${FLASH_CONFIG_PATH} with a "broker" on the device first`
          : `write ${path} with a "broker" on the device first (itera flash writes only ${FLASH_CONFIG_PATH})`,
    },
  );
}
