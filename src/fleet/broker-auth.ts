import { createHash, pbkdf2, randomBytes, timingSafeEqual } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { IteraError } from "../errors.js";
import { isRetrainingTopic } from "../protocol/feedback.js";
import { idSchema, parseTopic } from "../protocol/topics.js";

const pbkdf2Async = promisify(pbkdf2);

/**
 * Logins and topic rights of the embedded broker (`itera broker --password-file`).
 *
 * The password file is Mosquitto's (`mosquitto_passwd`): one `user:hash` per line, the hash either
 * `$7$<iterations>$<salt b64>$<PBKDF2-HMAC-SHA512 b64>` (Mosquitto 2) or `$6$<salt b64>$<SHA-512(password
 * + salt) b64>` (Mosquitto 1.x); `#` comments and blank lines are ignored. So one file serves both
 * brokers, and `itera broker passwd` writes the `$7$` form Mosquitto reads.
 *
 * Rights follow the user name, as the Mosquitto ACL in docs/fleet.md does: a coordinator user may
 * publish job requests and read the whole `itera/v1/` tree; a reader (Telegraf) may only read; every
 * other user is a device whose id is its user name: it may publish only its own state, birth,
 * telemetry, feedback and job status/results, and read only its own subtree.
 */

/** PBKDF2 iterations of hashes `itera broker passwd` writes (Mosquitto reads the count from the hash). */
export const PBKDF2_ITERATIONS = 100_000;

export type PasswordTable = Map<string, string>;

/** Parse a Mosquitto password file; throws an IteraError naming the line for anything else. */
export function parsePasswordFile(text: string, where: string): PasswordTable {
  const table: PasswordTable = new Map();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const colon = line.indexOf(":");
    const user = colon > 0 ? line.slice(0, colon) : "";
    const hash = colon > 0 ? line.slice(colon + 1) : "";
    if (!user || !parseHash(hash)) {
      throw new IteraError(`line ${i + 1} is not 'user:$7$...' or 'user:$6$...' (a hashed password)`, {
        where,
        fix: "add users with `itera broker passwd --file FILE --user NAME` (or mosquitto_passwd); plain-text passwords are not accepted",
      });
    }
    table.set(user, hash);
  });
  return table;
}

type ParsedHash =
  | { kind: 7; iterations: number; salt: Buffer; hash: Buffer }
  | { kind: 6; salt: Buffer; hash: Buffer };

function parseHash(s: string): ParsedHash | undefined {
  const p = s.split("$");
  const b64 = (x: string | undefined) =>
    x && /^[A-Za-z0-9+/]+=*$/.test(x) ? Buffer.from(x, "base64") : undefined;
  if (p.length === 5 && p[0] === "" && p[1] === "7") {
    const iterations = Number(p[2]);
    const salt = b64(p[3]);
    const hash = b64(p[4]);
    if (!Number.isInteger(iterations) || iterations < 1 || !salt || hash?.length !== 64) return undefined;
    return { kind: 7, iterations, salt, hash };
  }
  if (p.length === 4 && p[0] === "" && p[1] === "6") {
    const salt = b64(p[2]);
    const hash = b64(p[3]);
    if (!salt || hash?.length !== 64) return undefined;
    return { kind: 6, salt, hash };
  }
  return undefined;
}

/** Whether `password` matches a stored hash (constant-time comparison of the digests). */
export async function verifyPassword(stored: string, password: Buffer): Promise<boolean> {
  const h = parseHash(stored);
  if (!h) return false;
  const digest =
    h.kind === 7
      ? await pbkdf2Async(password, h.salt, h.iterations, 64, "sha512")
      : createHash("sha512").update(password).update(h.salt).digest();
  return timingSafeEqual(digest, h.hash);
}

/** A `$7$` (PBKDF2-HMAC-SHA512) hash as Mosquitto 2 writes and reads it. */
export async function hashPassword(password: string, iterations = PBKDF2_ITERATIONS): Promise<string> {
  const salt = randomBytes(12);
  const hash = await pbkdf2Async(Buffer.from(password, "utf8"), salt, iterations, 64, "sha512");
  return `$7$${iterations}$${salt.toString("base64")}$${hash.toString("base64")}`;
}

/**
 * Add or replace one user in a password file (created with mode 600 if missing). The user must be a
 * valid topic level, since a device's user name is its device id.
 */
export async function setPassword(
  file: string,
  user: string,
  password: string,
): Promise<"added" | "replaced"> {
  if (!idSchema.safeParse(user).success) {
    throw new IteraError(`invalid user name '${user}'`, {
      where: "--user",
      fix: "use letters, digits, '_', '.', '-' (a device's user name is its device id)",
    });
  }
  let text = "";
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") {
      throw new IteraError(`cannot read the password file: ${(e as Error).message}`, {
        where: file,
        fix: "check the path and its permissions",
      });
    }
  }
  parsePasswordFile(text, file); // refuse to rewrite a file we do not understand
  const line = `${user}:${await hashPassword(password)}`;
  const lines = text.split(/\r?\n/).filter((l) => l !== "");
  const at = lines.findIndex((l) => l.startsWith(`${user}:`));
  if (at >= 0) lines[at] = line;
  else lines.push(line);
  await writeFile(file, `${lines.join("\n")}\n`, { mode: 0o600 });
  return at >= 0 ? "replaced" : "added";
}

export interface AccessPolicy {
  /** Users that publish job requests and read everything under itera/v1/. */
  coordinators: ReadonlySet<string>;
  /** Users that may only read (e.g. Telegraf). */
  readers: ReadonlySet<string>;
}

export type Role = "coordinator" | "reader" | "device";

export function roleOf(user: string, policy: AccessPolicy): Role {
  if (policy.coordinators.has(user)) return "coordinator";
  if (policy.readers.has(user)) return "reader";
  return "device";
}

/** Whether `user` may publish to `topic` (a concrete topic, no wildcards). */
export function mayPublish(user: string, topic: string, policy: AccessPolicy): boolean {
  // The coordinator's retraining request is a fleet-level topic, not a device's.
  if (isRetrainingTopic(topic)) return roleOf(user, policy) === "coordinator";
  const t = parseTopic(topic);
  if (!t) return false;
  const role = roleOf(user, policy);
  // Job requests and an update's chunks come from the coordinator only; `need` from the device.
  if (role === "coordinator") return t.kind === "request" || t.kind === "chunk";
  if (role === "reader") return false;
  return t.device === user && t.kind !== "request" && t.kind !== "chunk";
}

/** Whether `user` may subscribe to `filter` (wildcards allowed). */
export function maySubscribe(user: string, filter: string, policy: AccessPolicy): boolean {
  const role = roleOf(user, policy);
  const p = filter.split("/");
  if (p[0] !== "itera" || p[1] !== "v1") return false;
  if (role !== "device") return true;
  // A device reads only itera/v1/<fleet or +>/<its id>/...: no wildcard may stand for the device level.
  return (
    p.length >= 5 && p[3] === user && p[2] !== undefined && (p[2] === "+" || idSchema.safeParse(p[2]).success)
  );
}

/** Whether a message on `topic` may be delivered to `user` (guards subscriptions a session inherited). */
export function mayReceive(user: string, topic: string, policy: AccessPolicy): boolean {
  if (roleOf(user, policy) !== "device") return topic.startsWith("itera/v1/");
  const t = parseTopic(topic);
  return t !== undefined && t.device === user;
}
