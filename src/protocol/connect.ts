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

export interface ConnectHooks {
  /**
   * Called with each new client before it connects, so that its listeners (or its `handleMessage`)
   * see every packet, including the queued messages a persistent session delivers with the CONNACK.
   */
  onClient?: (client: MqttClient) => void;
  /** Cancels the attempt: the pending client is ended and connectBroker rejects. */
  signal?: AbortSignal;
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

class CancelledError extends Error {}

/** Wait for the first CONNACK of a fresh client, its first error, or the caller's cancellation. */
function firstConnect(client: MqttClient, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new NoAnswerError(`no answer within ${timeoutMs} ms`)), timeoutMs);
    const done = (err?: Error) => {
      clearTimeout(timer);
      client.off("connect", onConnect);
      client.off("error", onError);
      signal?.removeEventListener("abort", onAbort);
      if (err) reject(err);
      else resolve();
    };
    const onConnect = () => done();
    const onError = (e: Error) => done(e);
    const onAbort = () => done(new CancelledError("connection attempt cancelled"));
    client.once("connect", onConnect);
    client.once("error", onError);
    if (signal?.aborted) onAbort();
    else signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * End a client for good. A client made with `manualConnect` clears its `disconnecting` flag once
 * ended, so the socket's late `close` would schedule a reconnect: a zombie client that logs in
 * again under the same client id (taking over the session and its queued messages).
 */
function endForGood(client: MqttClient, force: boolean, cb?: () => void): void {
  client.options.reconnectPeriod = 0;
  client.end(force, {}, cb);
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
  hooks: ConnectHooks = {},
): Promise<MqttClient> {
  const timeoutMs = session.connectTimeoutMs ?? 10_000;
  let lastError: unknown;
  for (const version of [5, 4] as const) {
    if (hooks.signal?.aborted) break;
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
    hooks.onClient?.(client);
    client.connect();
    try {
      await firstConnect(client, timeoutMs, hooks.signal);
      // Errors after the first connect (a broker going away) are handled by reconnecting.
      client.on("error", () => {});
      return client;
    } catch (e) {
      lastError = e;
      client.on("error", () => {}); // a late socket error of an abandoned attempt is not a crash
      endForGood(client, true);
      if (e instanceof CancelledError) break;
      // Some 3.1.1-only brokers close the connection instead of refusing MQTT 5: try 3.1.1 then too.
      if (version === 5 && (isProtocolRefusal(e) || e instanceof NoAnswerError)) continue;
      break;
    }
  }
  if (hooks.signal?.aborted) throw new CancelledError("connection attempt cancelled");
  const msg = (lastError as Error | undefined)?.message ?? "unknown error";
  // 3.1.1 code 2 / MQTT 5 0x85: the client id is refused (a device's must be its user name).
  const code = (lastError as { code?: unknown } | undefined)?.code;
  if (code === 2 || code === 133) {
    throw new LoginRefusedError(`the broker refused the client id: ${msg}`, {
      where: broker.url,
      fix: "a device logs in with its device id as user name (the broker binds the client id to it): make them equal",
    });
  }
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

/** Disconnect (DISCONNECT first unless forced) and never reconnect. */
export function endAsync(client: MqttClient, force = false): Promise<void> {
  return new Promise((resolve) => endForGood(client, force, () => resolve()));
}
