import { readFile } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { Aedes, type AedesOptions, type AuthenticateError } from "aedes";
import { IteraError } from "../errors.js";
import {
  type AccessPolicy,
  mayPublish,
  mayReceive,
  maySubscribe,
  type PasswordTable,
  parsePasswordFile,
  roleOf,
  verifyPassword,
} from "./broker-auth.js";

export interface EmbeddedBroker {
  host: string;
  port: number;
  url: string;
  /** True when any client may connect without a password (and publish anything). */
  anonymous: boolean;
  close(): Promise<void>;
}

export interface BrokerAuthOptions {
  /** Mosquitto-format password file (see broker-auth.ts); re-read on every login, so edits apply at once. */
  passwordFile: string;
  policy: AccessPolicy;
}

export interface BrokerStartOptions {
  port: number;
  host: string;
  /** Without it the broker is anonymous: every client may publish anything (demos only). */
  auth?: BrokerAuthOptions;
  /** Refused logins, publishes and subscriptions, one line each (default: nowhere). */
  log?: (line: string) => void;
}

/**
 * An embedded MQTT 3.1.1 broker (aedes on a plain TCP server) for demos, tests and small labs.
 * Sessions, retained messages and queued QoS 1 messages live in memory only: they are lost when the
 * broker stops, and it has no TLS or `$share`. With `auth`, logins are checked against a password
 * file and each user's topics are limited by its role (broker-auth.ts). Production fleets use
 * Mosquitto, EMQX or HiveMQ (docs/fleet.md).
 */
export async function startBroker(opts: BrokerStartOptions): Promise<EmbeddedBroker> {
  const auth = opts.auth;
  // Fail at start-up on a missing or malformed file rather than refusing every login later.
  if (auth) await loadPasswords(auth.passwordFile);
  const aedes = await Aedes.createBroker(auth ? authHooks(auth, opts.log ?? (() => {})) : {});
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    aedes.handle(socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (e: NodeJS.ErrnoException) =>
      reject(
        new IteraError(`cannot listen on ${opts.host}:${opts.port}: ${e.code ?? e.message}`, {
          where: "itera broker",
          fix:
            e.code === "EADDRINUSE"
              ? "choose another --port (or stop the process using it)"
              : "check --host/--port",
        }),
      ),
    );
    server.listen(opts.port, opts.host, () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  return {
    host: opts.host,
    port,
    url: `mqtt://${opts.host}:${port}`,
    anonymous: !auth,
    close: () =>
      new Promise<void>((resolve) => {
        aedes.close(() => server.close(() => resolve()));
        // Open client sockets keep server.close() waiting; the broker is closing anyway.
        for (const s of sockets) s.destroy();
      }),
  };
}

async function loadPasswords(file: string): Promise<PasswordTable> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    throw new IteraError(`cannot read the password file: ${(e as Error).message}`, {
      where: file,
      fix: "create it with `itera broker passwd --file FILE --user NAME` (or mosquitto_passwd)",
    });
  }
  return parsePasswordFile(text, file);
}

function authError(message: string, returnCode: 2 | 4 | 5): AuthenticateError {
  return Object.assign(new Error(message), { returnCode }) as AuthenticateError;
}

/** aedes hooks: password check, a device's client id bound to its user name, per-role topic rights. */
function authHooks(auth: BrokerAuthOptions, log: (line: string) => void): AedesOptions {
  const users = new WeakMap<object, string>();
  const userOf = (client: object | null) => (client ? users.get(client) : undefined);
  return {
    authenticate: (client, username, password, done) => {
      const who = `client '${client.id}' user '${username ?? ""}'`;
      if (username === undefined || password === undefined) {
        log(`refused login: ${who}: no user name or password (anonymous logins are off)`);
        done(authError("not authorized", 5), false);
        return;
      }
      loadPasswords(auth.passwordFile)
        .then(async (table) => {
          const stored = table.get(username);
          if (!stored || !(await verifyPassword(stored, password))) {
            log(`refused login: ${who}: wrong user name or password`);
            done(authError("bad user name or password", 4), false);
            return;
          }
          // A device may not take over another client's session (and its queued jobs) by its id.
          if (roleOf(username, auth.policy) === "device" && client.id !== username) {
            log(`refused login: ${who}: a device's client id must be its user name`);
            done(authError("identifier rejected", 2), false);
            return;
          }
          users.set(client, username);
          done(null, true);
        })
        .catch((e: unknown) => {
          log(`refused login: ${who}: ${(e as Error).message}`);
          done(authError("server unavailable", 5), false);
        });
    },
    authorizePublish: (client, packet, done) => {
      const user = userOf(client);
      // client is null for messages the broker itself publishes ($SYS).
      if (client === null || (user !== undefined && mayPublish(user, packet.topic, auth.policy))) {
        done(null);
        return;
      }
      log(`refused publish: user '${user ?? ""}' may not publish to ${packet.topic}`);
      done(new Error(`not authorized to publish to ${packet.topic}`));
    },
    authorizeSubscribe: (client, sub, done) => {
      const user = userOf(client);
      if (user !== undefined && maySubscribe(user, sub.topic, auth.policy)) {
        done(null, sub);
        return;
      }
      log(`refused subscription: user '${user ?? ""}' may not read ${sub.topic}`);
      done(null, null); // SUBACK 0x80 for this filter; the connection stays
    },
    authorizeForward: (client, packet) => {
      const user = userOf(client);
      return user !== undefined && mayReceive(user, packet.topic, auth.policy) ? packet : null;
    },
  };
}
