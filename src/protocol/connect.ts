import { readFileSync } from "node:fs";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { IteraError } from "../errors.js";

/** How to reach a broker: URL (mqtt://, mqtts://, ws://), credentials and TLS files. */
export interface BrokerOptions {
  url: string;
  username?: string;
  password?: string;
  /** PEM files for TLS (mqtts://): the CA to trust, and a client certificate + key for mutual TLS. */
  ca?: string;
  cert?: string;
  key?: string;
}

export interface SessionOptions {
  clientId: string;
  /** false = persistent session: the broker keeps subscriptions and queued QoS 1 messages while away. */
  clean: boolean;
  /** MQTT 5 session expiry (s) for a persistent session. */
  sessionExpiryS?: number;
  will?: IClientOptions["will"];
  reconnectPeriodMs?: number;
  connectTimeoutMs?: number;
  keepaliveS?: number;
}

function readPem(path: string | undefined, what: string): Buffer | undefined {
  if (!path) return undefined;
  try {
    return readFileSync(path);
  } catch (e) {
    throw new IteraError(`cannot read the TLS ${what} file: ${(e as Error).message}`, {
      where: path,
      fix: `pass an existing PEM file with --${what}`,
    });
  }
}

export function clientOptions(
  broker: BrokerOptions,
  session: SessionOptions,
  version: 4 | 5,
): IClientOptions {
  return {
    protocolVersion: version,
    clientId: session.clientId,
    clean: session.clean,
    ...(version === 5 && !session.clean
      ? { properties: { sessionExpiryInterval: session.sessionExpiryS ?? 7 * 24 * 3600 } }
      : {}),
    reconnectPeriod: session.reconnectPeriodMs ?? 1000,
    connectTimeout: session.connectTimeoutMs ?? 10_000,
    keepalive: session.keepaliveS ?? 30,
    resubscribe: true,
    ...(session.will ? { will: session.will } : {}),
    ...(broker.username !== undefined ? { username: broker.username } : {}),
    ...(broker.password !== undefined ? { password: broker.password } : {}),
    ca: readPem(broker.ca, "ca"),
    cert: readPem(broker.cert, "cert"),
    key: readPem(broker.key, "key"),
  };
}

/** The broker answered the login with "not authorized" / "bad user name or password": retrying will not help. */
export class LoginRefusedError extends IteraError {}

class NoAnswerError extends Error {}

/** CONNACK codes meaning "this broker does not speak MQTT 5" (3.1.1 code 1, MQTT 5 reason 0x84). */
function isProtocolRefusal(e: unknown): boolean {
  const code = (e as { code?: unknown }).code;
  return code === 1 || code === 132;
}

function isAuthRefusal(e: unknown): boolean {
  const code = (e as { code?: unknown }).code;
  return code === 4 || code === 5 || code === 134 || code === 135;
}

/** Wait for the first CONNACK of a fresh client, or its first error. */
function firstConnect(client: MqttClient, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new NoAnswerError(`no answer within ${timeoutMs} ms`)), timeoutMs);
    const done = (err?: Error) => {
      clearTimeout(timer);
      client.off("connect", onConnect);
      client.off("error", onError);
      if (err) reject(err);
      else resolve();
    };
    const onConnect = () => done();
    const onError = (e: Error) => done(e);
    client.once("connect", onConnect);
    client.once("error", onError);
  });
}

/**
 * Connect with MQTT 5 where the broker supports it and fall back to 3.1.1 (e.g. the embedded aedes
 * broker). `prepare` runs before every connection attempt (first and reconnects), so that the
 * agent can put a fresh bdSeq into its Last Will. Resolves once connected; the client then keeps
 * reconnecting by itself. Fails with an IteraError for a refused login or an unreachable broker.
 */
export async function connectBroker(
  broker: BrokerOptions,
  session: SessionOptions,
  prepare?: (client: MqttClient | undefined, options: IClientOptions) => void,
): Promise<MqttClient> {
  const timeoutMs = session.connectTimeoutMs ?? 10_000;
  let lastError: unknown;
  for (const version of [5, 4] as const) {
    const options = clientOptions(broker, session, version);
    prepare?.(undefined, options);
    let client: MqttClient;
    try {
      client = mqtt.connect(broker.url, { ...options, manualConnect: true });
    } catch (e) {
      throw new IteraError(`invalid broker URL: ${(e as Error).message}`, {
        where: broker.url,
        fix: "use mqtt://host:1883 or mqtts://host:8883",
      });
    }
    if (prepare) client.on("reconnect", () => prepare(client, client.options));
    client.connect();
    try {
      await firstConnect(client, timeoutMs);
      // Errors after the first connect (a broker going away) are handled by reconnecting.
      client.on("error", () => {});
      return client;
    } catch (e) {
      lastError = e;
      client.end(true);
      // Some 3.1.1-only brokers close the connection instead of refusing MQTT 5: try 3.1.1 then too.
      if (version === 5 && (isProtocolRefusal(e) || e instanceof NoAnswerError)) continue;
      break;
    }
  }
  const msg = (lastError as Error | undefined)?.message ?? "unknown error";
  if (isAuthRefusal(lastError)) {
    throw new LoginRefusedError(`the broker refused the login: ${msg}`, {
      where: broker.url,
      fix: "check --username/--password (or the client certificate) and the broker's ACL",
    });
  }
  throw new IteraError(`cannot connect to the MQTT broker: ${msg}`, {
    where: broker.url,
    fix: "start the broker (e.g. `itera broker`) or correct --broker; for TLS check --ca/--cert/--key",
  });
}

/** Publish and wait for the broker's acknowledgement (PUBACK for QoS 1). */
export function publishAsync(
  client: MqttClient,
  topic: string,
  payload: string,
  opts: { qos: 0 | 1; retain?: boolean },
): Promise<void> {
  return new Promise((resolve, reject) =>
    client.publish(topic, payload, { qos: opts.qos, retain: opts.retain ?? false }, (err) =>
      err ? reject(err) : resolve(),
    ),
  );
}

export function endAsync(client: MqttClient, force = false): Promise<void> {
  return new Promise((resolve) => client.end(force, {}, () => resolve()));
}
