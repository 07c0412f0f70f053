import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import mqtt from "mqtt";
import type { BrokerOptions } from "../protocol/connect.js";
import type { FleetMonitor } from "./monitor.js";

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

/** What a coordinator run learns about the broker's trust: the warnings and the refused messages. */
export interface TrustWatch {
  warnings: string[];
  refused: Array<{ topic: string; reason: string }>;
  /** Record a refused message (the first 100 are kept) and report it. */
  refuse(topic: string, reason: string): void;
  /** Whether the broker accepted an anonymous client (probed once, in the background). */
  anonymous: Promise<boolean>;
}

type TrustEvent = { type: "refused"; topic: string; reason: string } | { type: "warning"; message: string };

/**
 * Watch a run's trust, as `fleet bench` and `fleet update` both do: the monitor's refused messages
 * are kept and reported, and the anonymous probe runs while devices are discovered (so it costs no
 * time); a broker that accepts anonymous clients adds a warning.
 */
export function watchTrust(
  monitor: FleetMonitor,
  broker: BrokerOptions,
  emit: (e: TrustEvent) => void,
): TrustWatch {
  const warnings: string[] = [];
  const refused: Array<{ topic: string; reason: string }> = [];
  const refuse = (topic: string, reason: string) => {
    if (refused.length < 100) refused.push({ topic, reason });
    emit({ type: "refused", topic, reason });
  };
  monitor.on("refused", refuse);
  const anonymous = acceptsAnonymous(broker).then((yes) => {
    if (yes) {
      const message = anonymousWarning(broker.url);
      warnings.push(message);
      emit({ type: "warning", message });
    }
    return yes;
  });
  return { warnings, refused, refuse, anonymous };
}
