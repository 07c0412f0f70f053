import { readdir, readFile } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { IteraError } from "../errors.js";
import { type DeviceProfile, deviceProfileSchema } from "./schema.js";

/** Where the shipped profiles live: ITERA_PROFILES_DIR, else device-profiles/ at the package root. */
export function profilesDir(): string {
  if (process.env.ITERA_PROFILES_DIR) return process.env.ITERA_PROFILES_DIR;
  // src/profile/load.ts and dist/profile/load.js are both two levels below the package root.
  return resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "device-profiles");
}

/** Validate a parsed profile; `where` names the file in the error. */
export function parseProfile(value: unknown, where: string): DeviceProfile {
  const r = deviceProfileSchema.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const field = issue.path.length > 0 ? issue.path.join(".") : "(top level)";
    throw new IteraError(`invalid device profile: field '${field}': ${issue.message}`, {
      where,
      fix: "correct the field; see device-profiles/*.json and docs/ARCHITECTURE.md for the schema",
    });
  }
  return r.data;
}

/** Load a profile by name (from profilesDir()) or by path to a .json file. */
export async function loadProfile(nameOrPath: string): Promise<DeviceProfile> {
  const isPath = nameOrPath.endsWith(".json") || nameOrPath.includes("/");
  const path = isPath ? resolve(nameOrPath) : join(profilesDir(), `${nameOrPath}.json`);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    const known = await listProfileNames().catch(() => []);
    throw new IteraError(`no device profile '${nameOrPath}'`, {
      where: path,
      fix:
        known.length > 0
          ? `use one of: ${known.join(", ")} (or a path to a profile .json)`
          : "pass a path to a profile .json",
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new IteraError(`device profile is not valid JSON: ${(e as Error).message}`, {
      where: path,
      fix: "fix the JSON syntax",
    });
  }
  const profile = parseProfile(json, path);
  if (!isPath && profile.name !== nameOrPath) {
    throw new IteraError(`profile file name and 'name' differ ('${profile.name}')`, {
      where: path,
      fix: `rename the file to ${profile.name}.json or set "name": "${basename(path, ".json")}"`,
    });
  }
  return profile;
}

export async function listProfileNames(): Promise<string[]> {
  const dir = profilesDir();
  let files: string[];
  try {
    files = await readdir(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new IteraError(
      code === "ENOENT" || code === "ENOTDIR"
        ? "the device profiles folder does not exist"
        : `cannot read the device profiles folder (${code ?? (e as Error).message})`,
      {
        where: dir,
        fix: process.env.ITERA_PROFILES_DIR
          ? "point ITERA_PROFILES_DIR at a folder of profile .json files, or unset it to use the shipped ones"
          : "restore device-profiles/ from the itera package (git checkout or a fresh install), or set ITERA_PROFILES_DIR to a folder of profile .json files",
      },
    );
  }
  return files
    .filter((f) => f.endsWith(".json"))
    .map((f) => basename(f, ".json"))
    .sort();
}

/** Every profile, or the first error: for callers that need the whole set to be valid. */
export async function loadAllProfiles(): Promise<DeviceProfile[]> {
  return Promise.all((await listProfileNames()).map((n) => loadProfile(n)));
}

export interface ProfileScan {
  profiles: DeviceProfile[];
  /** One error per file that does not load: the file (where), the field and how to fix it. */
  invalid: IteraError[];
}

/**
 * Every profile file in profilesDir(), the valid ones loaded and each invalid one reported, so one
 * bad file does not hide the others (`itera profiles`). A missing or empty folder is an error.
 */
export async function scanProfiles(): Promise<ProfileScan> {
  const names = await listProfileNames();
  if (names.length === 0) {
    throw new IteraError("no device profiles (.json files) in the profiles folder", {
      where: profilesDir(),
      fix: "add profile .json files there (copy one from the itera package's device-profiles/)",
    });
  }
  const loaded = await Promise.all(
    names.map((n) =>
      loadProfile(n).then(
        (p): DeviceProfile | IteraError => p,
        (e: unknown) => {
          if (e instanceof IteraError) return e;
          throw e;
        },
      ),
    ),
  );
  return {
    profiles: loaded.filter((p): p is DeviceProfile => !(p instanceof IteraError)),
    invalid: loaded.filter((p): p is IteraError => p instanceof IteraError),
  };
}
