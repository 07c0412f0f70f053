import type { Command } from "commander";
import { IteraError } from "../errors.js";
import type { BrokerOptions } from "./connect.js";
import { idSchema } from "./topics.js";

/** The broker options every MQTT command takes (agent, fleet bench/watch/simulate). */
export function addBrokerOptions(cmd: Command, defaultUrl?: string): Command {
  return cmd
    .option("--broker <url>", "MQTT broker URL (mqtt://host:1883, mqtts://host:8883)", defaultUrl)
    .option("--username <name>", "MQTT username (or ITERA_MQTT_USERNAME)")
    .option("--password <secret>", "MQTT password (or ITERA_MQTT_PASSWORD, which keeps it out of `ps`)")
    .option("--ca <pem>", "CA certificate to trust (TLS)")
    .option("--cert <pem>", "client certificate (mutual TLS)")
    .option("--key <pem>", "client private key (mutual TLS)");
}

export interface BrokerCliOptions {
  broker?: string;
  username?: string;
  password?: string;
  ca?: string;
  cert?: string;
  key?: string;
}

export function brokerOptions(o: BrokerCliOptions): BrokerOptions {
  if (!o.broker) {
    throw new IteraError("no MQTT broker given", {
      fix: "pass --broker mqtt://host:1883 (start one with `itera broker`)",
    });
  }
  if (!/^(mqtts?|wss?|tcp|ssl):\/\/[^/]+/.test(o.broker)) {
    throw new IteraError(`not a broker URL: '${o.broker}'`, {
      where: "--broker",
      fix: "use mqtt://host:1883, mqtts://host:8883 or ws://host:port/mqtt",
    });
  }
  const username = o.username ?? process.env.ITERA_MQTT_USERNAME;
  const password = o.password ?? process.env.ITERA_MQTT_PASSWORD;
  return {
    url: o.broker,
    ...(username !== undefined ? { username } : {}),
    ...(password !== undefined ? { password } : {}),
    ...(o.ca ? { ca: o.ca } : {}),
    ...(o.cert ? { cert: o.cert } : {}),
    ...(o.key ? { key: o.key } : {}),
  };
}

/** Validate a fleet or device id given on the command line (a single MQTT topic level). */
export function checkId(value: string, option: string): string {
  const r = idSchema.safeParse(value);
  if (!r.success) {
    throw new IteraError(`invalid ${option} '${value}': ${r.error.issues[0]?.message}`, {
      where: option,
      fix: "use letters, digits, '_', '.', '-' (it becomes one MQTT topic level)",
    });
  }
  return value;
}

/** A positive number option (seconds, counts). */
export function positive(value: string, option: string, integer = false): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) {
    throw new IteraError(`invalid ${option} '${value}'`, {
      where: option,
      fix: `pass a positive ${integer ? "integer" : "number"}`,
    });
  }
  return n;
}
