import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import mqtt from "mqtt";
import type { BrokerOptions } from "../protocol/connect.js";

/**
 * Whether the broker accepts a client without any credentials (no user name, password or client
 * certificate). Such a broker lets anyone publish on any device's topics, so a coordinator cannot
 * tell a device's result from a forged one. Connects once with MQTT 3.1.1 (every broker speaks it)
 * and a throw-away clean session; a refused login, a TLS handshake that wants a certificate, or no
 * answer all count as "not anonymous".
 */
export async function acceptsAnonymous(broker: BrokerOptions, timeoutMs = 5000): Promise<boolean> {
  let ca: Buffer | undefined;
  try {
    ca = broker.ca ? readFileSync(broker.ca) : undefined;
  } catch {
    return false; // the coordinator's own connection reports an unreadable --ca
  }
  const client = mqtt.connect(broker.url, {
    protocolVersion: 4,
    clientId: `itera-anon-probe-${randomBytes(4).toString("hex")}`,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: timeoutMs,
    ...(ca ? { ca } : {}),
  });
  return new Promise<boolean>((resolve) => {
    let settled = false;
    const finish = (accepted: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      client.end(true);
      resolve(accepted);
    };
    const timer = setTimeout(() => finish(false), timeoutMs + 500);
    client.once("connect", () => finish(true));
    client.on("error", () => finish(false));
    client.once("close", () => finish(false));
  });
}

/** The warning a coordinator prints (stderr) and records (--json, report) for an anonymous broker. */
export function anonymousWarning(url: string): string {
  return (
    `the broker ${url} accepts anonymous clients: anyone who can reach it can publish on any device's ` +
    "topics, so a forged job result cannot be told from a genuine one; run it with a password file and " +
    "per-device ACL (`itera broker --password-file FILE`, or Mosquitto: docs/fleet.md)"
  );
}
